package taxiiserver_test

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"github.com/attack-etl/attack-etl/services/mirror/internal/taxiiserver"
)

// Collection ids of the ATT&CK domains, as MITRE's server names them.
const (
	enterpriseID = "x-mitre-collection--1f5f1533-f617-4ca8-9ab4-6a02367fa019"
	icsID        = "x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09"
	taxiiAccept  = "application/taxii+json;version=2.1"
)

// Real slices of ATT&CK in testdata (see testdata/make_testdata.py).
var (
	ics181     = filepath.Join("testdata", "ics-attack-18.1.json.gz")
	ics180     = filepath.Join("testdata", "ics-attack-18.0.json.gz")
	enterprise = filepath.Join("testdata", "enterprise-attack-18.1.json.gz")
	labFeed    = filepath.Join("testdata", "lab-feed.json")
)

// icsObjects is the number of objects of each ICS slice; icsChanged those whose modified
// differs between the 18.0 and 18.1 slices.
const (
	icsObjects = 41
	icsChanged = 7
)

// fixture is a running test server.
type fixture struct {
	t   *testing.T
	srv *taxiiserver.Server
	ts  *httptest.Server
}

// start serves the bundles with the given options.
func start(t *testing.T, opts taxiiserver.Options, bundles ...string) *fixture {
	t.Helper()
	srv := taxiiserver.New(opts)
	if _, err := srv.Load(bundles); err != nil {
		t.Fatalf("load %v: %v", bundles, err)
	}
	ts := httptest.NewServer(srv)
	t.Cleanup(ts.Close)
	return &fixture{t: t, srv: srv, ts: ts}
}

// response is a finished HTTP exchange.
type response struct {
	status int
	header http.Header
	body   []byte
}

// get requests a path with the TAXII Accept header.
func (f *fixture) get(path string) response {
	f.t.Helper()
	return f.getAccept(path, taxiiAccept)
}

// getAccept requests a path with the given Accept header; empty sends none.
func (f *fixture) getAccept(path, accept string) response {
	f.t.Helper()
	req, err := http.NewRequest(http.MethodGet, f.ts.URL+path, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := f.ts.Client().Do(req)
	if err != nil {
		f.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		f.t.Fatalf("read %s: %v", path, err)
	}
	return response{status: resp.StatusCode, header: resp.Header, body: body}
}

// mustOK fails unless the response is 200 with the TAXII content type.
func (r response) mustOK(t *testing.T, what string) response {
	t.Helper()
	if r.status != http.StatusOK {
		t.Fatalf("%s: status %d, body %s", what, r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != taxiiAccept {
		t.Fatalf("%s: content type %q", what, ct)
	}
	return r
}

// envelope is a TAXII envelope or manifest with the raw objects kept.
type envelope struct {
	More    *bool             `json:"more"`
	Next    string            `json:"next"`
	Objects []json.RawMessage `json:"objects"`
}

// decode reads a JSON body.
func decode[T any](t *testing.T, r response) T {
	t.Helper()
	var v T
	if err := json.Unmarshal(r.body, &v); err != nil {
		t.Fatalf("decode %s: %v", r.body, err)
	}
	return v
}

// meta holds the fields tests look at.
type meta struct {
	ID       string `json:"id"`
	Type     string `json:"type"`
	Created  string `json:"created"`
	Modified string `json:"modified"`
}

// metaOf decodes an object's fields.
func metaOf(t *testing.T, raw json.RawMessage) meta {
	t.Helper()
	var m meta
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatalf("decode object: %v", err)
	}
	return m
}

// manifestRecord is one manifest entry.
type manifestRecord struct {
	ID        string `json:"id"`
	DateAdded string `json:"date_added"`
	Version   string `json:"version"`
	MediaType string `json:"media_type"`
}

// objectsPath returns the objects path of a collection in the default root with a query.
func objectsPath(collection string, q url.Values) string {
	p := "/api/v21/collections/" + collection + "/objects/"
	if len(q) > 0 {
		p += "?" + q.Encode()
	}
	return p
}

// fileObjects returns the raw objects of a bundle file, byte for byte as in the file.
func fileObjects(t *testing.T, path string) []json.RawMessage {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(data))
		if err != nil {
			t.Fatal(err)
		}
		if data, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	var b struct {
		Objects []json.RawMessage `json:"objects"`
	}
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatal(err)
	}
	return b.Objects
}

// copyFile copies src to dst, replacing dst.
func copyFile(t *testing.T, src, dst string) {
	t.Helper()
	data, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// pageAll follows next while more is true and returns every object and the pages read.
func (f *fixture) pageAll(path string, q url.Values) ([]json.RawMessage, int) {
	f.t.Helper()
	var all []json.RawMessage
	pages := 0
	for {
		env := decode[envelope](f.t, f.get(path+"?"+q.Encode()).mustOK(f.t, path))
		pages++
		all = append(all, env.Objects...)
		if env.More == nil || !*env.More {
			if env.Next != "" {
				f.t.Fatalf("page %d: next %q with more false", pages, env.Next)
			}
			return all, pages
		}
		if env.Next == "" {
			f.t.Fatalf("page %d: more without next", pages)
		}
		if pages > 100000 {
			f.t.Fatal("paging does not end")
		}
		q.Set("next", env.Next)
	}
}
