// Package taxiitest is a small TAXII 2.1 server for tests: it serves in-memory collections in
// a standard mode (opaque next tokens, dates of addition, a largest page) or in a mode that
// behaves like MITRE's attack-taxii.mitre.org (whole collection without limit, page-number next,
// added_after and date headers taken from each object's created), and lets a test inject
// faults before any request is answered.
package taxiitest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Collection is a served collection.
type Collection struct {
	ID, Title string
	// Objects are served byte for byte.
	Objects []json.RawMessage
	// Added is each object's date of addition in standard mode; nil dates the objects one
	// second apart from 2020-01-01.
	Added []time.Time
}

// Server is a test TAXII 2.1 server. Change its fields only before the first request or under
// Lock.
type Server struct {
	*httptest.Server
	sync.Mutex
	// Root is the API root path, "/api/v21/" by default.
	Root string
	// MITRE switches to MITRE's behaviour.
	MITRE bool
	// MaxPage is the largest page in standard mode (default 1000).
	MaxPage     int
	Collections []*Collection
	// Fault, when set, sees every request first; returning true means it answered.
	Fault func(w http.ResponseWriter, r *http.Request) bool
	// JSDates sends X-TAXII-Date-Added-* in JavaScript Date.toString() form.
	JSDates bool

	requests atomic.Int64
	cache    map[cacheKey][]entry
	logMu    sync.Mutex
	log      []string
}

// New starts a server with the collections.
func New(cols ...*Collection) *Server {
	s := &Server{Root: "/api/v21/", MaxPage: 1000, Collections: cols}
	s.Server = httptest.NewServer(http.HandlerFunc(s.serve))
	return s
}

// RootURL returns the API root's URL.
func (s *Server) RootURL() string { return s.URL + s.Root }

// Requests returns the number of requests served.
func (s *Server) Requests() int64 { return s.requests.Load() }

// Log returns the request URIs served so far.
func (s *Server) Log() []string {
	s.logMu.Lock()
	defer s.logMu.Unlock()
	return append([]string(nil), s.log...)
}

// Bundle reads a STIX bundle file (plain or gzipped) into a collection.
func Bundle(path, id, title string) (*Collection, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	if len(b) > 2 && b[0] == 0x1f && b[1] == 0x8b {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		if b, err = io.ReadAll(zr); err != nil {
			return nil, err
		}
	}
	var env struct {
		Objects []json.RawMessage `json:"objects"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return nil, fmt.Errorf("bundle %s: %w", path, err)
	}
	return &Collection{ID: id, Title: title, Objects: env.Objects}, nil
}

const mediaType = "application/taxii+json;version=2.1"

func (s *Server) write(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", mediaType)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) serve(w http.ResponseWriter, r *http.Request) {
	s.requests.Add(1)
	s.logMu.Lock()
	s.log = append(s.log, r.URL.RequestURI())
	s.logMu.Unlock()
	s.Lock()
	defer s.Unlock()
	if s.Fault != nil && s.Fault(w, r) {
		return
	}
	if !strings.Contains(r.Header.Get("Accept"), "application/taxii+json") {
		http.Error(w, "not acceptable", http.StatusNotAcceptable)
		return
	}
	p := r.URL.Path
	switch {
	case p == "/taxii2/":
		s.write(w, map[string]any{"title": "test", "default": s.Root, "api_roots": []string{s.Root}})
	case p == s.Root:
		s.write(w, map[string]any{"title": "root", "versions": []string{mediaType},
			"max_content_length": 100 << 20})
	case p == s.Root+"collections/":
		var cols []map[string]any
		for _, c := range s.Collections {
			cols = append(cols, map[string]any{"id": c.ID, "title": c.Title, "can_read": true,
				"can_write": false, "media_types": []string{"application/stix+json;version=2.1"}})
		}
		s.write(w, map[string]any{"collections": cols})
	case strings.HasPrefix(p, s.Root+"collections/") && strings.HasSuffix(p, "/objects/"):
		id := strings.TrimSuffix(strings.TrimPrefix(p, s.Root+"collections/"), "/objects/")
		for _, c := range s.Collections {
			if c.ID == id {
				s.objects(w, r, c)
				return
			}
		}
		http.Error(w, "no such collection", http.StatusNotFound)
	default:
		http.Error(w, "not found", http.StatusNotFound)
	}
}

// cacheKey names a collection's entries in one mode; replacing a collection (a new pointer)
// or switching modes makes a new key.
type cacheKey struct {
	col   *Collection
	mitre bool
}

type entry struct {
	raw   json.RawMessage
	added time.Time
}

func (s *Server) entries(c *Collection) []entry {
	k := cacheKey{c, s.MITRE}
	if e, ok := s.cache[k]; ok && len(e) == len(c.Objects) {
		return e
	}
	out := make([]entry, len(c.Objects))
	base := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	for i, o := range c.Objects {
		e := entry{raw: o, added: base.Add(time.Duration(i) * time.Second)}
		if s.MITRE {
			var m struct{ Created string }
			_ = json.Unmarshal(o, &m)
			e.added, _ = time.Parse(time.RFC3339Nano, m.Created)
		} else if i < len(c.Added) {
			e.added = c.Added[i]
		}
		out[i] = e
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].added.Before(out[j].added) })
	if s.cache == nil {
		s.cache = map[cacheKey][]entry{}
	}
	s.cache[k] = out
	return out
}

func (s *Server) objects(w http.ResponseWriter, r *http.Request, c *Collection) {
	q := r.URL.Query()
	all := s.entries(c)
	aa := q.Get("added_after")
	tok := q.Get("next")
	if !s.MITRE && tok != "" {
		// A standard next token carries the filter of the listing it continues.
		tok, aa, _ = strings.Cut(tok, "@")
	}
	if aa != "" {
		t, err := time.Parse(time.RFC3339Nano, aa)
		if err != nil {
			http.Error(w, "bad added_after", http.StatusBadRequest)
			return
		}
		var kept []entry
		for _, e := range all {
			if e.added.After(t) {
				kept = append(kept, e)
			}
		}
		all = kept
	}
	limit, _ := strconv.Atoi(q.Get("limit"))
	start := 0
	switch {
	case s.MITRE:
		if limit <= 0 {
			limit = len(all) + 1
		}
		if n, err := strconv.Atoi(q.Get("next")); err == nil && n > 1 {
			start = (n - 1) * limit
		}
	default:
		if limit <= 0 || limit > s.MaxPage {
			limit = s.MaxPage
		}
		if tok != "" {
			n, err := strconv.Atoi(strings.TrimPrefix(tok, "offset-"))
			if err != nil {
				http.Error(w, "bad next", http.StatusBadRequest)
				return
			}
			start = n
		}
	}
	start = min(start, len(all))
	end := min(start+limit, len(all))
	page := all[start:end]
	var b bytes.Buffer
	fmt.Fprintf(&b, `{"more": %t`, end < len(all))
	if end < len(all) {
		next := "offset-" + strconv.Itoa(end)
		if aa != "" {
			next += "@" + aa
		}
		if s.MITRE {
			next = strconv.Itoa(start/limit + 2)
		}
		fmt.Fprintf(&b, `, "next": %q`, next)
	}
	// The objects are written byte for byte, so that a test can check the client keeps them.
	b.WriteString(`, "objects": [`)
	for i, e := range page {
		if i > 0 {
			b.WriteString(",\n")
		}
		b.Write(e.raw)
	}
	b.WriteString("]}")
	if len(page) > 0 {
		w.Header().Set("X-TAXII-Date-Added-First", s.date(page[0].added))
		w.Header().Set("X-TAXII-Date-Added-Last", s.date(page[len(page)-1].added))
	}
	w.Header().Set("Content-Type", mediaType)
	_, _ = w.Write(b.Bytes())
}

func (s *Server) date(t time.Time) string {
	if s.JSDates {
		return t.UTC().Format("Mon Jan 02 2006 15:04:05 GMT-0700") +
			" (Coordinated Universal Time)"
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z")
}
