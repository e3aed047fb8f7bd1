// Package taxiiserver serves STIX bundle files as TAXII 2.1 collections: discovery, API roots,
// collections, objects, manifests and versions, with paging and filters, in a standard mode
// that follows the specification and a mode that reproduces attack-taxii.mitre.org.
//
// Each object is served with the exact bytes it has in its bundle file. The server counts the
// requests it answers (GET /mirror/stats) and can re-read its bundles without restarting.
package taxiiserver

import (
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"
)

// MaxContentLength is the max_content_length the API roots announce. The server accepts no
// request bodies; the figure only tells clients the size of resource the roots handle.
const MaxContentLength = 100 << 20

// Options configures a Server.
type Options struct {
	// Mode is ModeStandard or ModeMITRE.
	Mode Mode
	// MaxPage is the largest page in standard mode, and the page size without limit.
	MaxPage int
	// Title is the discovery title.
	Title string
	// RequestLog, when set, receives one JSON line per request (see RequestRecord).
	RequestLog io.Writer
	// OnRequest, when set, is called after each request, for example to log it.
	OnRequest func(RequestRecord)
	// OnLoad, when set, is called after each load or reload, for example to log it.
	OnLoad func(LoadReport, error)
}

// Server is a TAXII 2.1 server of bundle files; it is an http.Handler.
type Server struct {
	opts  Options
	cat   atomic.Pointer[catalog]
	stats *stats

	loadMu sync.Mutex
	items  []string // the bundle list the last successful load read
}

// New returns a server with no collections; call Load before serving.
func New(opts Options) *Server {
	if opts.Mode == "" {
		opts.Mode = ModeStandard
	}
	if opts.MaxPage <= 0 {
		opts.MaxPage = 1000
	}
	if opts.Title == "" {
		opts.Title = "attack-etl mirror"
	}
	s := &Server{opts: opts, stats: newStats(opts.RequestLog)}
	s.cat.Store(&catalog{roots: map[string]*apiRoot{"": {byID: map[string]*Collection{}}},
		order: []string{""}})
	return s
}

// Mode returns the server's mode.
func (s *Server) Mode() Mode { return s.opts.Mode }

// Load reads the bundle files and glob patterns in items and starts serving them, replacing
// what was served before. On error the server keeps serving the previous bundles. In standard
// mode an object version served before keeps its date_added (see dateByArrival).
func (s *Server) Load(items []string) (LoadReport, error) {
	report, err := s.load(items)
	if s.opts.OnLoad != nil {
		s.opts.OnLoad(report, err)
	}
	return report, err
}

// load does the work of Load.
func (s *Server) load(items []string) (LoadReport, error) {
	s.loadMu.Lock()
	defer s.loadMu.Unlock()
	start := time.Now()
	paths, err := ExpandBundles(items)
	if err != nil {
		return LoadReport{}, fmt.Errorf("load bundles: %w", err)
	}
	colls, err := loadAll(paths)
	if err != nil {
		return LoadReport{}, fmt.Errorf("load bundles: %w", err)
	}
	var prev *catalog
	if s.items != nil {
		prev = s.cat.Load()
	}
	cat, report, err := buildCatalog(colls, s.opts.Mode, prev)
	if err != nil {
		return LoadReport{}, fmt.Errorf("load bundles: %w", err)
	}
	s.cat.Store(cat)
	s.items = append([]string(nil), items...)
	s.stats.reloads.Add(1)
	report.Took = time.Since(start)
	return report, nil
}

// Reload re-reads the bundle list of the last successful Load, such as after a bundle file was
// replaced.
func (s *Server) Reload() (LoadReport, error) {
	s.loadMu.Lock()
	items := s.items
	s.loadMu.Unlock()
	if items == nil {
		return LoadReport{}, ErrNotLoaded
	}
	return s.Load(items)
}

// Stats returns the request counts so far.
func (s *Server) Stats() Stats { return s.stats.snapshot() }

// ServeHTTP answers one request and counts it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	rec := &recorder{ResponseWriter: w, status: http.StatusOK}
	s.route(rec, r)
	record := RequestRecord{Time: start.UTC(), Method: r.Method, Path: r.URL.Path,
		Query: r.URL.RawQuery, Status: rec.status, Bytes: rec.bytes, Took: time.Since(start)}
	if !isControlPath(r.URL.Path) {
		s.stats.count(record)
	}
	if s.opts.OnRequest != nil {
		s.opts.OnRequest(record)
	}
}

// recorder keeps the status and size of a response.
type recorder struct {
	http.ResponseWriter
	status int
	bytes  int64
	wrote  bool
}

// WriteHeader records the status.
func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.status, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

// Write records the size.
func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	n, err := r.ResponseWriter.Write(b)
	r.bytes += int64(n)
	return n, err
}
