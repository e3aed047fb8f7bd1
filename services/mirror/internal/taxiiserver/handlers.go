package taxiiserver

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"strconv"
	"strings"
)

// Media types of TAXII 2.1.
const (
	// ContentType is the media type of every TAXII response of the server.
	ContentType = "application/taxii+json;version=2.1"
	// taxiiType is the media type without parameters.
	taxiiType = "application/taxii+json"
	// stixMediaType is what the collections announce they hold.
	stixMediaType = "application/stix+json;version=2.1"
)

// apiPrefix is the path of the API roots, without the trailing slash.
const apiPrefix = "/api/v21"

// route answers one request.
func (s *Server) route(w http.ResponseWriter, r *http.Request) {
	path := r.URL.Path
	switch {
	case path == "/healthz":
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
		return
	case strings.HasPrefix(path, controlPrefix):
		s.control(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, http.StatusMethodNotAllowed, "Method Not Allowed",
			"this TAXII server is read-only and answers GET and HEAD only")
		return
	}
	if !acceptsTAXII(r.Header.Values("Accept")) {
		writeError(w, http.StatusNotAcceptable, "Not Acceptable",
			"this server only answers "+ContentType+"; the Accept header does not allow it")
		return
	}
	if path == "/taxii2" || path == "/taxii2/" {
		s.discovery(w, r)
		return
	}
	rest, ok := strings.CutPrefix(path, apiPrefix)
	if !ok || (rest != "" && rest[0] != '/') {
		writeError(w, http.StatusNotFound, "Not Found", "no TAXII resource at "+path)
		return
	}
	var segs []string
	for _, seg := range strings.Split(rest, "/") {
		if seg != "" {
			segs = append(segs, seg)
		}
	}
	cat := s.cat.Load()
	rootName := ""
	if len(segs) > 0 && strings.HasPrefix(segs[0], releaseRootPrefix) {
		rootName, segs = segs[0], segs[1:]
	}
	root, ok := cat.roots[rootName]
	if !ok {
		writeError(w, http.StatusNotFound, "API Root Not Found",
			"no API root "+apiPrefix+"/"+rootName+"/ on this server")
		return
	}
	if len(segs) == 0 {
		s.apiRoot(w, root)
		return
	}
	if segs[0] != "collections" || len(segs) > 5 {
		writeError(w, http.StatusNotFound, "Not Found", "no TAXII resource at "+path)
		return
	}
	if len(segs) == 1 {
		s.collections(w, root)
		return
	}
	c, ok := root.byID[segs[1]]
	if !ok {
		writeError(w, http.StatusNotFound, "Collection Not Found",
			"no collection "+segs[1]+" in API root "+apiPrefix+"/"+rootName)
		return
	}
	switch {
	case len(segs) == 2:
		writeJSON(w, http.StatusOK, collectionResource(c))
	case len(segs) == 3 && segs[2] == "objects":
		s.objects(w, r, c, "")
	case len(segs) == 3 && segs[2] == "manifest":
		s.manifest(w, r, c)
	case len(segs) == 4 && segs[2] == "objects":
		s.objects(w, r, c, segs[3])
	case len(segs) == 5 && segs[2] == "objects" && segs[4] == "versions":
		s.versions(w, r, c, segs[3])
	default:
		writeError(w, http.StatusNotFound, "Not Found", "no TAXII resource at "+path)
	}
}

// acceptsTAXII reports whether the Accept header values allow application/taxii+json with
// version 2.1: that type with version=2.1 or without version, application/* or */*, with a q
// above zero. A request without Accept accepts anything, as HTTP says.
func acceptsTAXII(values []string) bool {
	if len(values) == 0 {
		return true
	}
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			if strings.TrimSpace(item) == "" {
				continue
			}
			mt, params, err := mime.ParseMediaType(item)
			if err != nil {
				continue
			}
			if q, ok := params["q"]; ok {
				if f, err := strconv.ParseFloat(q, 64); err != nil || f <= 0 {
					continue
				}
			}
			switch mt {
			case "*/*", "application/*":
				return true
			case taxiiType:
				if ver, ok := params["version"]; !ok || ver == "2.1" {
					return true
				}
			}
		}
	}
	return false
}

// taxiiError is the TAXII 2.1 error message resource.
type taxiiError struct {
	Title       string `json:"title"`
	Description string `json:"description,omitempty"`
	HTTPStatus  string `json:"http_status"`
}

// writeError answers with a TAXII error message.
func writeError(w http.ResponseWriter, status int, title, description string) {
	writeJSON(w, status, taxiiError{Title: title, Description: description,
		HTTPStatus: strconv.Itoa(status)})
}

// writeJSON answers with a JSON document as TAXII.
func writeJSON(w http.ResponseWriter, status int, v any) {
	body, err := marshal(v)
	if err != nil {
		status = http.StatusInternalServerError
		body = []byte(`{"title":"Internal Server Error","http_status":"500"}`)
	}
	w.Header().Set("Content-Type", ContentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// marshal encodes v as JSON without escaping &, < and > (titles such as "ICS ATT&CK").
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// writeQueryError answers a failed page selection.
func writeQueryError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrPageNotFound):
		writeError(w, http.StatusNotFound, "Invalid URL Query Parameters", err.Error())
	default:
		writeError(w, http.StatusBadRequest, "Bad Request", err.Error())
	}
}

// baseURL returns the scheme and host the client used.
func baseURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host
}

// discovery answers GET /taxii2/.
func (s *Server) discovery(w http.ResponseWriter, r *http.Request) {
	cat := s.cat.Load()
	base := baseURL(r)
	roots := make([]string, 0, len(cat.order))
	for _, name := range cat.order {
		roots = append(roots, rootURL(base, name))
	}
	writeJSON(w, http.StatusOK, struct {
		Title       string   `json:"title"`
		Description string   `json:"description"`
		Default     string   `json:"default"`
		APIRoots    []string `json:"api_roots"`
	}{s.opts.Title, "TAXII 2.1 server of STIX bundle files (" + string(s.opts.Mode) + " mode)",
		rootURL(base, ""), roots})
}

// rootURL returns the URL of an API root.
func rootURL(base, name string) string {
	if name == "" {
		return base + apiPrefix + "/"
	}
	return base + apiPrefix + "/" + name + "/"
}

// apiRoot answers GET /api/v21/.
func (s *Server) apiRoot(w http.ResponseWriter, root *apiRoot) {
	writeJSON(w, http.StatusOK, struct {
		Title            string   `json:"title"`
		Description      string   `json:"description"`
		Versions         []string `json:"versions"`
		MaxContentLength int      `json:"max_content_length"`
	}{root.title, "STIX bundle files served as TAXII 2.1 collections",
		[]string{ContentType}, MaxContentLength})
}

// collectionJSON is the TAXII 2.1 collection resource.
type collectionJSON struct {
	ID          string   `json:"id"`
	Title       string   `json:"title"`
	Description string   `json:"description,omitempty"`
	CanRead     bool     `json:"can_read"`
	CanWrite    bool     `json:"can_write"`
	MediaTypes  []string `json:"media_types"`
}

// collectionResource describes a collection.
func collectionResource(c *Collection) collectionJSON {
	return collectionJSON{ID: c.ID, Title: c.Title, Description: c.Description, CanRead: true,
		MediaTypes: []string{stixMediaType}}
}

// collections answers GET /api/v21/collections/.
func (s *Server) collections(w http.ResponseWriter, root *apiRoot) {
	out := struct {
		Collections []collectionJSON `json:"collections,omitempty"`
	}{}
	for _, c := range root.collections {
		out.Collections = append(out.Collections, collectionResource(c))
	}
	writeJSON(w, http.StatusOK, out)
}

// selectPage parses the query and selects the page by the server's mode.
func (s *Server) selectPage(r *http.Request, c *Collection, objectID string) (page, error) {
	q, err := parseQuery(r.URL.Query())
	if err != nil {
		return page{}, err
	}
	if objectID != "" {
		q.ids = map[string]bool{objectID: true}
	}
	if s.opts.Mode == ModeMITRE {
		return mitrePage(c, q)
	}
	return standardPage(c, q, s.opts.MaxPage)
}

// setDateHeaders sets X-TAXII-Date-Added-First and -Last from the page's first and last objects.
func (s *Server) setDateHeaders(w http.ResponseWriter, p page) {
	if len(p.items) == 0 {
		return
	}
	w.Header().Set("X-TAXII-Date-Added-First", formatDate(p.items[0], s.opts.Mode))
	w.Header().Set("X-TAXII-Date-Added-Last", formatDate(p.items[len(p.items)-1], s.opts.Mode))
}

// objects answers GET .../objects/ and, with an object id, GET .../objects/{id}/.
func (s *Server) objects(w http.ResponseWriter, r *http.Request, c *Collection, objectID string) {
	if objectID != "" {
		if _, ok := c.byID[objectID]; !ok {
			writeError(w, http.StatusNotFound, "Object Not Found",
				"no object "+objectID+" in collection "+c.ID)
			return
		}
	}
	p, err := s.selectPage(r, c, objectID)
	if err != nil {
		writeQueryError(w, err)
		return
	}
	size := 64
	for _, o := range p.items {
		size += len(o.Raw) + 1
	}
	var buf bytes.Buffer
	buf.Grow(size)
	buf.WriteByte('{')
	writePaging(&buf, p)
	// MITRE's server always sends the objects list; a spec-following server omits it when empty.
	if len(p.items) > 0 || s.opts.Mode == ModeMITRE {
		if buf.Len() > 1 {
			buf.WriteByte(',')
		}
		buf.WriteString(`"objects":[`)
		for i, o := range p.items {
			if i > 0 {
				buf.WriteByte(',')
			}
			buf.Write(o.Raw)
		}
		buf.WriteByte(']')
	}
	buf.WriteByte('}')
	s.setDateHeaders(w, p)
	writeBody(w, buf.Bytes())
}

// writePaging writes the more and next members of an envelope, manifest or versions resource.
func writePaging(buf *bytes.Buffer, p page) {
	if !p.paged {
		return
	}
	if p.more {
		buf.WriteString(`"more":true`)
	} else {
		buf.WriteString(`"more":false`)
	}
	if p.next != "" {
		next, _ := json.Marshal(p.next)
		buf.WriteString(`,"next":`)
		buf.Write(next)
	}
}

// writeBody answers 200 with a TAXII body.
func writeBody(w http.ResponseWriter, body []byte) {
	w.Header().Set("Content-Type", ContentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

// manifestRecord is one entry of a TAXII 2.1 manifest.
type manifestRecord struct {
	ID        string `json:"id"`
	DateAdded string `json:"date_added"`
	Version   string `json:"version"`
	MediaType string `json:"media_type"`
}

// manifest answers GET .../manifest/ with the same paging and filters as objects.
func (s *Server) manifest(w http.ResponseWriter, r *http.Request, c *Collection) {
	p, err := s.selectPage(r, c, "")
	if err != nil {
		writeQueryError(w, err)
		return
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	writePaging(&buf, p)
	records := make([]manifestRecord, 0, len(p.items))
	for _, o := range p.items {
		if o.ID == "" {
			continue // an object without id has no manifest entry
		}
		records = append(records, manifestRecord{ID: o.ID, DateAdded: formatDate(o, s.opts.Mode),
			Version: o.Version(), MediaType: o.MediaType()})
	}
	if len(records) > 0 || s.opts.Mode == ModeMITRE {
		if buf.Len() > 1 {
			buf.WriteByte(',')
		}
		body, _ := marshal(records)
		buf.WriteString(`"objects":`)
		buf.Write(body)
	}
	buf.WriteByte('}')
	s.setDateHeaders(w, p)
	writeBody(w, buf.Bytes())
}

// versions answers GET .../objects/{id}/versions/: every version of the object, oldest first,
// after added_after and match[spec_version]. The list is never paged (more is always false):
// an ATT&CK object has one version per collection.
func (s *Server) versions(w http.ResponseWriter, r *http.Request, c *Collection, objectID string) {
	idx, ok := c.byID[objectID]
	if !ok {
		writeError(w, http.StatusNotFound, "Object Not Found",
			"no object "+objectID+" in collection "+c.ID)
		return
	}
	q, err := parseQuery(r.URL.Query())
	if err != nil {
		writeQueryError(w, err)
		return
	}
	q.versions = map[string]bool{"all": true}
	p := page{paged: true}
	var list []string
	for _, i := range idx {
		o := &c.Objects[i]
		if q.hasAddedAfter && !o.DateAdded.After(q.addedAfter) || !q.matches(o) {
			continue
		}
		p.items = append(p.items, o)
		list = append(list, o.Version())
	}
	var buf bytes.Buffer
	buf.WriteByte('{')
	writePaging(&buf, p)
	if len(list) > 0 {
		body, _ := json.Marshal(list)
		buf.WriteString(`,"versions":`)
		buf.Write(body)
	}
	buf.WriteByte('}')
	s.setDateHeaders(w, p)
	writeBody(w, buf.Bytes())
}

// control answers the server's own paths: GET /mirror/stats (DELETE resets the counts) and
// POST /mirror/reload.
func (s *Server) control(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.URL.Path == "/mirror/stats" && r.Method == http.MethodGet:
		body, _ := json.Marshal(s.Stats())
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	case r.URL.Path == "/mirror/stats" && r.Method == http.MethodDelete:
		s.stats.reset()
		w.WriteHeader(http.StatusNoContent)
	case r.URL.Path == "/mirror/reload" && r.Method == http.MethodPost:
		report, err := s.Reload()
		if err != nil {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusInternalServerError)
			body, _ := json.Marshal(map[string]string{"error": err.Error()})
			_, _ = w.Write(body)
			return
		}
		body, _ := json.Marshal(report)
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(body)
	default:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusNotFound)
		_, _ = w.Write([]byte(`{"error":"unknown control path or method"}` + "\n"))
	}
}
