package taxii_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/extractor/internal/taxii"
	"github.com/attack-etl/attack-etl/services/extractor/internal/taxiitest"
)

const collID = "x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09"

// slice returns the real ICS objects of the 18.1 test slice.
func slice(t *testing.T) *taxiitest.Collection {
	t.Helper()
	c, err := taxiitest.Bundle("../../testdata/ics-18.1-slice.json", collID, "ICS ATT&CK")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func fastOpts() taxii.Options {
	return taxii.Options{Timeout: 2 * time.Second, Retries: 3, RetryBase: time.Millisecond}
}

// readAll pages through the collection and returns the pages.
func readAll(ctx context.Context, c *taxii.Client, root string, q taxii.ObjectsQuery) (
	[]*taxii.Page, error) {
	var pages []*taxii.Page
	err := c.Objects(ctx, root, collID, q, func(p *taxii.Page) error {
		pages = append(pages, p)
		return nil
	})
	return pages, err
}

func TestObjectsPaging(t *testing.T) {
	tests := []struct {
		name      string
		mitre     bool
		maxPage   int
		limit     int
		wantPages int
		wantNext  []string
	}{
		{name: "MITRE server answers the whole collection when no limit is sent", mitre: true,
			wantPages: 1},
		{name: "MITRE server pages with page-number next tokens", mitre: true, limit: 7,
			wantPages: 5, wantNext: []string{"2", "3", "4", "5", ""}},
		{name: "standard server caps the page at its largest size", maxPage: 10, wantPages: 3,
			wantNext: []string{"offset-10", "offset-20", ""}},
		{name: "standard server honours a smaller limit", maxPage: 1000, limit: 15,
			wantPages: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := taxiitest.New(slice(t))
			defer srv.Close()
			srv.MITRE = tc.mitre
			if tc.maxPage > 0 {
				srv.MaxPage = tc.maxPage
			}
			c, err := taxii.New(srv.RootURL(), fastOpts())
			if err != nil {
				t.Fatal(err)
			}
			pages, err := readAll(context.Background(), c, srv.RootURL(),
				taxii.ObjectsQuery{Limit: tc.limit})
			if err != nil {
				t.Fatal(err)
			}
			if len(pages) != tc.wantPages {
				t.Fatalf("pages = %d, want %d", len(pages), tc.wantPages)
			}
			total := 0
			for i, p := range pages {
				total += len(p.Objects)
				if tc.wantNext != nil && p.Next != tc.wantNext[i] {
					t.Errorf("page %d next = %q, want %q", i+1, p.Next, tc.wantNext[i])
				}
			}
			if total != 30 {
				t.Errorf("objects = %d, want 30", total)
			}
			if got := c.Requests(); got != int64(tc.wantPages) {
				t.Errorf("requests = %d, want %d", got, tc.wantPages)
			}
			for _, u := range srv.Log() {
				if strings.Contains(u, "next=") && strings.Contains(u, "added_after=") {
					t.Errorf("request %s sends next together with added_after", u)
				}
			}
		})
	}
}

func TestObjectsKeepRawBytes(t *testing.T) {
	col := slice(t)
	srv := taxiitest.New(col)
	defer srv.Close()
	c, err := taxii.New(srv.RootURL(), fastOpts())
	if err != nil {
		t.Fatal(err)
	}
	pages, err := readAll(context.Background(), c, srv.RootURL(), taxii.ObjectsQuery{})
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range pages[0].Objects {
		if string(o) != string(col.Objects[i]) {
			t.Fatalf("object %d differs from the bytes the server sent", i)
		}
	}
}

func TestAddedAfterOnlyOnFirstRequest(t *testing.T) {
	srv := taxiitest.New(slice(t))
	defer srv.Close()
	srv.MaxPage = 4
	c, err := taxii.New(srv.RootURL(), fastOpts())
	if err != nil {
		t.Fatal(err)
	}
	// The standard test server dates objects one second apart from 2020-01-01.
	pages, err := readAll(context.Background(), c, srv.RootURL(),
		taxii.ObjectsQuery{AddedAfter: "2020-01-01T00:00:19Z"})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range pages {
		n += len(p.Objects)
	}
	if n != 10 {
		t.Errorf("objects after the checkpoint = %d, want 10", n)
	}
	log := srv.Log()
	if !strings.Contains(log[0], "added_after=") {
		t.Errorf("first request %s lacks added_after", log[0])
	}
	for _, u := range log[1:] {
		if strings.Contains(u, "added_after=") || !strings.Contains(u, "next=") {
			t.Errorf("later request %s must page with next alone", u)
		}
	}
	if got := pages[len(pages)-1].DateAddedLast; got != "2020-01-01T00:00:29.000Z" {
		t.Errorf("X-TAXII-Date-Added-Last = %q", got)
	}
}

// fault answers the first n requests with h, then lets the server answer.
func fault(n int64, h http.HandlerFunc) func(http.ResponseWriter, *http.Request) bool {
	var seen atomic.Int64
	return func(w http.ResponseWriter, r *http.Request) bool {
		if seen.Add(1) > n {
			return false
		}
		h(w, r)
		return true
	}
}

func TestFaults(t *testing.T) {
	html := func(status int) http.HandlerFunc {
		return func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/html; charset=utf-8")
			w.WriteHeader(status)
			fmt.Fprint(w, "<html><body><h1>Access denied by proxy</h1></body></html>")
		}
	}
	tests := []struct {
		name  string
		fault func(http.ResponseWriter, *http.Request) bool
		// wantErr is nil when the request must succeed after retries.
		wantErr      error
		wantText     []string
		wantRequests int64
		minWait      time.Duration
	}{
		{name: "strict media types: 406 means no TAXII 2.1, not retried",
			fault: fault(99, func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "only application/taxii+json;version=2.0", http.StatusNotAcceptable)
			}),
			wantErr: taxii.ErrNotTAXII21, wantText: []string{"406", "version=2.0"},
			wantRequests: 1},
		{name: "HTML page with status 200 is an error quoting the body, not a JSON panic",
			fault: fault(99, html(http.StatusOK)), wantErr: taxii.ErrNotTAXII,
			wantText: []string{"text/html", "Access denied by proxy"}, wantRequests: 1},
		{name: "HTML error page with 403 names the status and the body start",
			fault: fault(99, html(http.StatusForbidden)), wantErr: taxii.ErrStatus,
			wantText: []string{"403", "Access denied"}, wantRequests: 1},
		{name: "429 with Retry-After is waited for, then the request succeeds",
			fault: fault(1, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "rate limited", http.StatusTooManyRequests)
			}),
			wantRequests: 2, minWait: time.Second},
		{name: "503 with Retry-After is waited for, then the request succeeds",
			fault: fault(1, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "maintenance", http.StatusServiceUnavailable)
			}),
			wantRequests: 2, minWait: time.Second},
		{name: "502 twice is retried with back-off, then the request succeeds",
			fault: fault(2, func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "bad gateway", http.StatusBadGateway)
			}),
			wantRequests: 3},
		{name: "500 for ever gives up naming the URL, the status and the body start",
			fault: fault(99, func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "database is down", http.StatusInternalServerError)
			}),
			wantErr:      taxii.ErrStatus,
			wantText:     []string{"/api/v21/collections/", "500", "database is down", "4 attempts"},
			wantRequests: 4},
		{name: "server stalls past the time-out, the retry succeeds",
			fault: fault(1, func(_ http.ResponseWriter, r *http.Request) {
				select {
				case <-r.Context().Done():
				case <-time.After(5 * time.Second):
				}
			}),
			wantRequests: 2},
		{name: "body cut off before Content-Length is retried",
			fault: fault(1, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/taxii+json;version=2.1")
				w.Header().Set("Content-Length", "5000")
				fmt.Fprint(w, `{"collections": [{"id": "x`)
			}),
			wantRequests: 2},
		{name: "truncated JSON with a 200 is retried",
			fault: fault(1, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/taxii+json;version=2.1")
				fmt.Fprint(w, `{"collections": [{"id": "x`)
			}),
			wantRequests: 2},
		{name: "401 is not retried and names the status",
			fault: fault(99, func(w http.ResponseWriter, _ *http.Request) {
				http.Error(w, "login required", http.StatusUnauthorized)
			}),
			wantErr: taxii.ErrStatus, wantText: []string{"401", "login required"},
			wantRequests: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := taxiitest.New(slice(t))
			defer srv.Close()
			srv.Fault = tc.fault
			o := fastOpts()
			o.Timeout = 300 * time.Millisecond
			var waited time.Duration
			o.OnRetry = func(r taxii.Retry) { waited += r.Wait }
			c, err := taxii.New(srv.RootURL(), o)
			if err != nil {
				t.Fatal(err)
			}
			cols, err := c.Collections(context.Background(), srv.RootURL())
			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("want success after retries, got %v", err)
			case tc.wantErr == nil && len(cols) != 1:
				t.Fatalf("collections = %d, want 1", len(cols))
			case tc.wantErr != nil && !errors.Is(err, tc.wantErr):
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
			for _, s := range tc.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
			if got := srv.Requests(); got != tc.wantRequests {
				t.Errorf("requests = %d, want %d", got, tc.wantRequests)
			}
			if waited < tc.minWait {
				t.Errorf("waited %s before retrying, want at least Retry-After %s", waited,
					tc.minWait)
			}
		})
	}
}

// envelope writes a TAXII envelope.
func envelope(w http.ResponseWriter, more bool, next string, objs ...string) {
	w.Header().Set("Content-Type", "application/taxii+json;version=2.1")
	env := map[string]any{"more": more, "objects": rawList(objs)}
	if next != "" {
		env["next"] = next
	}
	_ = json.NewEncoder(w).Encode(env)
}

func rawList(objs []string) []json.RawMessage {
	out := make([]json.RawMessage, len(objs))
	for i, o := range objs {
		out[i] = json.RawMessage(o)
	}
	return out
}

func obj(n int) string {
	return fmt.Sprintf(`{"type":"indicator","id":"indicator--00000000-0000-4000-8000-%012d",`+
		`"modified":"2020-01-01T00:00:00Z"}`, n)
}

func TestPagingGuards(t *testing.T) {
	tests := []struct {
		name     string
		handler  func(w http.ResponseWriter, page int)
		maxPages int
		wantErr  error
	}{
		{name: "server repeats the same next token", wantErr: taxii.ErrLoop,
			handler: func(w http.ResponseWriter, page int) {
				envelope(w, true, "same", obj(page))
			}},
		{name: "server ignores next and sends the first page again", wantErr: taxii.ErrLoop,
			handler: func(w http.ResponseWriter, page int) {
				envelope(w, true, fmt.Sprint(page+1), obj(1), obj(2))
			}},
		{name: "server never ends: the page cap stops the run", wantErr: taxii.ErrPageCap,
			maxPages: 3, handler: func(w http.ResponseWriter, page int) {
				envelope(w, true, fmt.Sprint(page+1), obj(page))
			}},
		{name: "server says more but sends no next", wantErr: taxii.ErrNoNext,
			handler: func(w http.ResponseWriter, page int) {
				envelope(w, true, "", obj(page))
			}},
		{name: "server sends next as a JSON number", handler: func(w http.ResponseWriter,
			page int) {
			w.Header().Set("Content-Type", "application/taxii+json;version=2.1")
			if page < 3 {
				fmt.Fprintf(w, `{"more": true, "next": %d, "objects": [%s]}`, page+1, obj(page))
				return
			}
			fmt.Fprintf(w, `{"more": false, "objects": [%s]}`, obj(page))
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := taxiitest.New()
			defer srv.Close()
			var page atomic.Int64
			srv.Fault = func(w http.ResponseWriter, _ *http.Request) bool {
				tc.handler(w, int(page.Add(1)))
				return true
			}
			c, err := taxii.New(srv.RootURL(), fastOpts())
			if err != nil {
				t.Fatal(err)
			}
			_, err = readAll(context.Background(), c, srv.RootURL(),
				taxii.ObjectsQuery{MaxPages: tc.maxPages})
			if tc.wantErr == nil && err != nil {
				t.Fatalf("want success, got %v", err)
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("error = %v, want %v", err, tc.wantErr)
			}
		})
	}
}

func TestResolve(t *testing.T) {
	tests := []struct {
		name         string
		path         string
		discovery    string
		wantRoots    int
		wantSkipped  int
		wantRequests int64
	}{
		{name: "API root URL skips discovery: one request lists collections",
			path: "/api/v21/", wantRoots: 1, wantRequests: 1},
		{name: "API root URL without trailing slash", path: "/api/v21", wantRoots: 1,
			wantRequests: 1},
		{name: "discovery URL names a default root", path: "/taxii2/", wantRoots: 1,
			wantRequests: 2},
		{name: "discovery lists an API root that answers 404: logged and skipped",
			path: "/taxii2/", discovery: `{"title":"t","api_roots":["/gone/","/api/v21/"]}`,
			wantRoots: 1, wantSkipped: 1, wantRequests: 3},
		{name: "discovery default answers 404: the next listed root is read",
			path:      "/taxii2/",
			discovery: `{"title":"t","default":"/gone/","api_roots":["/gone/","/api/v21/"]}`,
			wantRoots: 1, wantSkipped: 1, wantRequests: 3},
		{name: "MITRE discovery lists one pinned root per release beside the latest: " +
			"only the default is read",
			path: "/taxii2/", discovery: `{"title":"t","default":"/api/v21/","api_roots":` +
				`["/api/v21/","/api/v21/attack-18.0/","/api/v21/attack-18.1/"]}`,
			wantRoots: 1, wantRequests: 2},
		{name: "a discovery URL at another path is found after the 404 of collections",
			path: "/discover/", discovery: `{"title":"t","api_roots":["/api/v21/"]}`,
			wantRoots: 1, wantRequests: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			srv := taxiitest.New(slice(t))
			defer srv.Close()
			if tc.discovery != "" {
				srv.Fault = func(w http.ResponseWriter, r *http.Request) bool {
					if r.URL.Path != tc.path {
						return false
					}
					w.Header().Set("Content-Type", "application/taxii+json;version=2.1")
					fmt.Fprint(w, tc.discovery)
					return true
				}
			}
			c, err := taxii.New(srv.URL+tc.path, fastOpts())
			if err != nil {
				t.Fatal(err)
			}
			roots, skipped, err := c.Resolve(context.Background(), srv.URL+tc.path)
			if err != nil {
				t.Fatal(err)
			}
			if len(roots) != tc.wantRoots || len(skipped) != tc.wantSkipped {
				t.Fatalf("roots %d skipped %d, want %d and %d", len(roots), len(skipped),
					tc.wantRoots, tc.wantSkipped)
			}
			if roots[0].URL != srv.RootURL() || len(roots[0].Collections) != 1 {
				t.Errorf("root %s with %d collections", roots[0].URL, len(roots[0].Collections))
			}
			if got := c.Requests(); got != tc.wantRequests {
				t.Errorf("requests = %d, want %d (%v)", got, tc.wantRequests, srv.Log())
			}
		})
	}
}

func TestRetiredServerFailsFast(t *testing.T) {
	for _, u := range []string{"https://cti-taxii.mitre.org/taxii/",
		"https://CTI-TAXII.mitre.org:443/stix/collections/95ecc380-afe9-11e4-9b6c-751b66dd541e/"} {
		t.Run(u, func(t *testing.T) {
			_, err := taxii.New(u, taxii.Options{})
			if !errors.Is(err, taxii.ErrRetired) {
				t.Fatalf("error = %v, want ErrRetired", err)
			}
			if !strings.Contains(err.Error(), "https://attack-taxii.mitre.org/api/v21/") {
				t.Errorf("error %q gives no hint to the TAXII 2.1 URL", err)
			}
		})
	}
}

func TestReleaseOf(t *testing.T) {
	tests := []struct{ name, url, want string }{
		{"MITRE pinned release root", "https://attack-taxii.mitre.org/api/v21/attack-18.1/",
			"18.1"},
		{"pinned root without slash", "https://attack-taxii.mitre.org/api/v21/attack-18.0",
			"18.0"},
		{"latest root", "https://attack-taxii.mitre.org/api/v21/", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := taxii.ReleaseOf(tc.url); got != tc.want {
				t.Errorf("ReleaseOf(%q) = %q, want %q", tc.url, got, tc.want)
			}
		})
	}
}

func TestParseDate(t *testing.T) {
	want := time.Date(2020, 2, 20, 22, 10, 20, 0, time.UTC)
	tests := []struct {
		name, in string
		want     time.Time
		wantErr  bool
	}{
		{name: "RFC 3339 without fraction", in: "2020-02-20T22:10:20Z", want: want},
		{name: "RFC 3339 with milliseconds", in: "2020-02-20T22:10:20.000Z", want: want},
		{name: "RFC 3339 with microseconds", in: "2020-02-20T22:10:20.123456Z",
			want: want.Add(123456 * time.Microsecond)},
		{name: "RFC 3339 with an offset", in: "2020-02-20T23:10:20+01:00", want: want},
		{name: "MITRE's JavaScript Date.toString() form",
			in: "Thu Feb 20 2020 22:10:20 GMT+0000 (Coordinated Universal Time)", want: want},
		{name: "JavaScript form in another zone",
			in:   "Thu Feb 20 2020 23:10:20 GMT+0100 (Central European Standard Time)",
			want: want},
		{name: "garbage", in: "yesterday", wantErr: true},
		{name: "empty", in: "", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := taxii.ParseDate(tc.in)
			if tc.wantErr {
				if !errors.Is(err, taxii.ErrBadDate) {
					t.Fatalf("ParseDate(%q) error = %v, want ErrBadDate", tc.in, err)
				}
				return
			}
			if err != nil || !got.Equal(tc.want) {
				t.Fatalf("ParseDate(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestDefaultRate(t *testing.T) {
	tests := []struct {
		name, host string
		want       float64
	}{
		{"MITRE's published limit", "attack-taxii.mitre.org", taxii.MITRERequestsPerMinute},
		{"MITRE with a port", "attack-taxii.mitre.org:443", taxii.MITRERequestsPerMinute},
		{"any other server", "127.0.0.1:8000", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := taxii.DefaultRequestsPerMinute(tc.host); got != tc.want {
				t.Errorf("DefaultRequestsPerMinute(%q) = %v, want %v", tc.host, got, tc.want)
			}
		})
	}
	// 50 requests per 10 minutes since June 2026: the default with its burst stays below.
	if n := taxii.MITRERequestsPerMinute*10 + 5; n > 50 {
		t.Errorf("default allows %v requests in 10 minutes, MITRE allows 50", n)
	}
}

func TestRateLimit(t *testing.T) {
	srv := taxiitest.New(slice(t))
	defer srv.Close()
	o := fastOpts()
	o.RequestsPerMinute = 600 // one request per 100 ms, burst 1
	c, err := taxii.New(srv.RootURL(), o)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for range 4 {
		if _, err := c.Collections(context.Background(), srv.RootURL()); err != nil {
			t.Fatal(err)
		}
	}
	// Four requests at 10 a second need at least three gaps of 100 ms.
	if took := time.Since(start); took < 290*time.Millisecond {
		t.Errorf("4 requests took %s, the limit allows no less than 300ms", took)
	}
}
