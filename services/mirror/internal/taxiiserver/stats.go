package taxiiserver

import (
	"encoding/json"
	"io"
	"maps"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// RequestRecord describes one answered request; it is also the line format of the request log.
type RequestRecord struct {
	Time   time.Time     `json:"time"`
	Method string        `json:"method"`
	Path   string        `json:"path"`
	Query  string        `json:"query,omitempty"`
	Status int           `json:"status"`
	Bytes  int64         `json:"bytes"`
	Took   time.Duration `json:"took_ns"`
}

// Stats holds the request counts of a server. Requests to /mirror/ itself are not counted.
type Stats struct {
	// Requests counts every TAXII request answered, whatever its status.
	Requests int64 `json:"requests"`
	// ByPath counts requests per URL path.
	ByPath map[string]int64 `json:"by_path"`
	// ByStatus counts requests per HTTP status.
	ByStatus map[int]int64 `json:"by_status"`
	// Loads counts successful loads and reloads of the bundles.
	Loads int64 `json:"loads"`
}

// stats counts requests and writes the request log.
type stats struct {
	requests atomic.Int64
	reloads  atomic.Int64

	mu       sync.Mutex
	byPath   map[string]int64
	byStatus map[int]int64
	log      io.Writer
}

func newStats(log io.Writer) *stats {
	return &stats{byPath: map[string]int64{}, byStatus: map[int]int64{}, log: log}
}

// count adds one request and appends it to the request log.
func (s *stats) count(r RequestRecord) {
	s.requests.Add(1)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.byPath[r.Path]++
	s.byStatus[r.Status]++
	if s.log != nil {
		line, err := json.Marshal(r)
		if err == nil {
			// A failing log write must not fail the request; the file is a test aid.
			_, _ = s.log.Write(append(line, '\n'))
		}
	}
}

// snapshot copies the counts.
func (s *stats) snapshot() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Stats{Requests: s.requests.Load(), ByPath: maps.Clone(s.byPath),
		ByStatus: maps.Clone(s.byStatus), Loads: s.reloads.Load()}
}

// reset sets the request counts to zero.
func (s *stats) reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests.Store(0)
	clear(s.byPath)
	clear(s.byStatus)
}

// controlPrefix starts the server's own, non-TAXII paths.
const controlPrefix = "/mirror/"

// isControlPath reports whether a path is one of the server's own, uncounted paths.
func isControlPath(path string) bool {
	return strings.HasPrefix(path, controlPrefix) || path == "/healthz"
}
