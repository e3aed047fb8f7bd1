package taxiiserver_test

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/mirror/internal/taxiiserver"
)

// attackDir holds the full ATT&CK releases on the development machine; tests that need them
// skip when it is absent, so the repository's tests pass without it.
const attackDir = "/work/shared/attack"

// enterpriseObjects is the object count of enterprise-attack-18.1 (see attackDir's README).
const enterpriseObjects = 24771

func realBundle(t testing.TB, name string) string {
	t.Helper()
	path := filepath.Join(attackDir, name)
	if _, err := os.Stat(path); err != nil {
		t.Skipf("%s not available: %v", path, err)
	}
	return path
}

// TestRealEnterprisePagesThroughEveryObject pages through the full enterprise 18.1 bundle in
// both modes and checks every object arrives exactly once.
func TestRealEnterprisePagesThroughEveryObject(t *testing.T) {
	path := realBundle(t, "enterprise-attack-18.1.json.gz")
	tests := []struct {
		name      string
		mode      taxiiserver.Mode
		limit     string
		wantPages int
	}{
		{"standard default page", taxiiserver.ModeStandard, "", 25},
		{"standard limit 5000 capped at 1000", taxiiserver.ModeStandard, "5000", 25},
		{"mitre whole collection", taxiiserver.ModeMITRE, "", 1},
		{"mitre page numbers", taxiiserver.ModeMITRE, "10000", 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, taxiiserver.Options{Mode: tt.mode, MaxPage: 1000}, path)
			q := url.Values{}
			if tt.limit != "" {
				q.Set("limit", tt.limit)
			}
			objs, pages := f.pageAll(objectsPath(enterpriseID, nil), q)
			seen := make(map[string]bool, len(objs))
			for _, o := range objs {
				seen[metaOf(t, o).ID] = true
			}
			if len(objs) != enterpriseObjects || len(seen) != enterpriseObjects ||
				pages != tt.wantPages {
				t.Fatalf("%d objects, %d distinct ids, %d pages; want %d once each in %d pages",
					len(objs), len(seen), pages, enterpriseObjects, tt.wantPages)
			}
		})
	}
}

// TestRealLoadFigures loads the three 18.1 bundles and reports the load time and the heap they
// take; it asserts only the object counts (speed targets live in benchmarks).
func TestRealLoadFigures(t *testing.T) {
	var paths []string
	for _, name := range []string{"enterprise-attack-18.1.json.gz",
		"mobile-attack-18.1.json.gz", "ics-attack-18.1.json.gz"} {
		paths = append(paths, realBundle(t, name))
	}
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	srv := taxiiserver.New(taxiiserver.Options{})
	start := time.Now()
	rep, err := srv.Load(paths)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	runtime.GC()
	runtime.ReadMemStats(&after)
	if rep.Objects != 24771+2535+1826 {
		t.Fatalf("loaded %d objects, want 29,132", rep.Objects)
	}
	t.Logf("loaded %d objects of 3 bundles in %v; live heap %.1f MiB", rep.Objects, took,
		float64(after.HeapAlloc-before.HeapAlloc)/(1<<20))
	runtime.KeepAlive(srv)
}

// BenchmarkObjectsPage measures serving one 1000-object page of the real enterprise bundle.
func BenchmarkObjectsPage(b *testing.B) {
	path := realBundle(b, "enterprise-attack-18.1.json.gz")
	srv := taxiiserver.New(taxiiserver.Options{MaxPage: 1000})
	if _, err := srv.Load([]string{path}); err != nil {
		b.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, objectsPath(enterpriseID,
		url.Values{"limit": {strconv.Itoa(1000)}}), nil)
	req.Header.Set("Accept", taxiiAccept)
	var bytes int
	for b.Loop() {
		w := httptest.NewRecorder()
		srv.ServeHTTP(w, req)
		if w.Code != http.StatusOK {
			b.Fatalf("status %d", w.Code)
		}
		bytes = w.Body.Len()
	}
	b.SetBytes(int64(bytes))
}

// BenchmarkLoadEnterprise measures loading the real enterprise bundle.
func BenchmarkLoadEnterprise(b *testing.B) {
	path := realBundle(b, "enterprise-attack-18.1.json.gz")
	for b.Loop() {
		srv := taxiiserver.New(taxiiserver.Options{})
		if _, err := srv.Load([]string{path}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestRealReleaseSwap replaces a real 18.0 bundle by its 18.1 under the same path and checks
// that in standard mode added_after the 18.0 checkpoint returns exactly the new versions (the
// counts of attackDir's README), and that in MITRE mode it returns none of them.
func TestRealReleaseSwap(t *testing.T) {
	tests := []struct {
		name, domain, collection string
		mode                     taxiiserver.Mode
		want                     int
	}{
		{"ics standard", "ics-attack", icsID, taxiiserver.ModeStandard, 28},
		{"ics mitre", "ics-attack", icsID, taxiiserver.ModeMITRE, 0},
		{"enterprise standard", "enterprise-attack", enterpriseID, taxiiserver.ModeStandard, 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := realBundle(t, tt.domain+"-18.0.json.gz")
			next := realBundle(t, tt.domain+"-18.1.json.gz")
			live := filepath.Join(t.TempDir(), tt.domain+".json.gz")
			copyFile(t, old, live)
			f := start(t, taxiiserver.Options{Mode: tt.mode}, live)
			// The checkpoint is the newest date_added: the last page's last header (in MITRE
			// mode the newest created, as objects are in created order).
			q := url.Values{"limit": {"1000"}}
			var checkpoint string
			for {
				r := f.get(objectsPath(tt.collection, q)).mustOK(t, "objects")
				checkpoint = r.header.Get("X-TAXII-Date-Added-Last")
				env := decode[envelope](t, r)
				if !*env.More {
					break
				}
				q.Set("next", env.Next)
			}
			copyFile(t, next, live)
			if _, err := f.srv.Reload(); err != nil {
				t.Fatal(err)
			}
			objs, _ := f.pageAll(objectsPath(tt.collection, nil),
				url.Values{"added_after": {checkpoint}, "limit": {"1000"}})
			if len(objs) != tt.want {
				t.Fatalf("added_after %s after the swap: %d objects, want %d", checkpoint,
					len(objs), tt.want)
			}
		})
	}
}
