package taxiiserver_test

import (
	"net/http"
	"net/url"
	"path/filepath"
	"slices"
	"strconv"
	"testing"

	"github.com/attack-etl/attack-etl/services/mirror/internal/taxiiserver"
)

func mitre(t *testing.T, bundles ...string) *fixture {
	t.Helper()
	// MaxPage must not apply in MITRE mode: MITRE's server has no page cap.
	return start(t, taxiiserver.Options{Mode: taxiiserver.ModeMITRE, MaxPage: 5}, bundles...)
}

// TestMITREWholeCollectionWithoutLimit reproduces attack-taxii.mitre.org answering a request
// without limit with the whole collection, no more and no next, ordered by created.
func TestMITREWholeCollectionWithoutLimit(t *testing.T) {
	f := mitre(t, ics181)
	r := f.get(objectsPath(icsID, nil)).mustOK(t, "objects")
	env := decode[envelope](t, r)
	if len(env.Objects) != icsObjects || env.More != nil || env.Next != "" {
		t.Fatalf("%d objects, more %v, next %q; want %d objects and no paging fields",
			len(env.Objects), env.More, env.Next, icsObjects)
	}
	var created []string
	for _, o := range env.Objects {
		created = append(created, metaOf(t, o).Created)
	}
	if !slices.IsSorted(created) {
		t.Fatalf("objects not in created order: %v", created)
	}
	// The date headers are the created of the first and last object.
	if r.header.Get("X-TAXII-Date-Added-First") != created[0] ||
		r.header.Get("X-TAXII-Date-Added-Last") != created[len(created)-1] {
		t.Fatalf("headers %q..%q, want %q..%q", r.header.Get("X-TAXII-Date-Added-First"),
			r.header.Get("X-TAXII-Date-Added-Last"), created[0], created[len(created)-1])
	}
	man := decode[struct {
		More    *bool            `json:"more"`
		Objects []manifestRecord `json:"objects"`
	}](t, f.get("/api/v21/collections/"+icsID+"/manifest/").mustOK(t, "manifest"))
	if man.More != nil || len(man.Objects) != icsObjects {
		t.Fatalf("manifest: more %v, %d records", man.More, len(man.Objects))
	}
	for i, rec := range man.Objects {
		if rec.DateAdded != created[i] {
			t.Fatalf("manifest record %d: date_added %s, want created %s", i, rec.DateAdded,
				created[i])
		}
	}
	empty := decode[map[string]any](t, f.get(objectsPath(icsID,
		url.Values{"match[type]": {"no-such-type"}})).mustOK(t, "empty"))
	if objs, ok := empty["objects"].([]any); !ok || len(objs) != 0 {
		t.Fatalf("an empty MITRE envelope keeps an empty objects list: %v", empty)
	}
}

// TestMITREPageNumbers reproduces the Workbench TAXII server's PaginationService: limit alone
// gives page 0 and next "1"; next=N gives items [N*limit, N*limit+limit); a page past the end
// is 404.
func TestMITREPageNumbers(t *testing.T) {
	tests := []struct {
		name      string
		limit     int
		wantNexts []string
	}{
		{"limit 10", 10, []string{"1", "2", "3", "4", ""}},
		{"limit 41", 41, []string{""}},
		{"limit 20", 20, []string{"1", "2", ""}},
		{"limit above size", 100, []string{""}},
	}
	f := mitre(t, ics181)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := url.Values{"limit": {strconv.Itoa(tt.limit)}}
			var nexts []string
			seen := map[string]bool{}
			for {
				env := decode[envelope](t, f.get(objectsPath(icsID, q)).mustOK(t, "page"))
				if env.More == nil {
					t.Fatal("a page with limit has no more field")
				}
				nexts = append(nexts, env.Next)
				for _, o := range env.Objects {
					seen[metaOf(t, o).ID] = true
				}
				if !*env.More {
					break
				}
				q.Set("next", env.Next)
			}
			if !slices.Equal(nexts, tt.wantNexts) || len(seen) != icsObjects {
				t.Fatalf("next tokens %q, want %q; %d objects seen", nexts, tt.wantNexts,
					len(seen))
			}
		})
	}
	past := f.get(objectsPath(icsID, url.Values{"limit": {"10"}, "next": {"5"}}))
	if past.status != http.StatusNotFound {
		t.Fatalf("page past the end: status %d, want 404", past.status)
	}
	bad := f.get(objectsPath(icsID, url.Values{"limit": {"10"}, "next": {"abc"}}))
	if bad.status != http.StatusBadRequest {
		t.Fatalf("next that is not a number: status %d, want 400", bad.status)
	}
}

// TestMITREAddedAfterUsesCreated reproduces MITRE's added_after filtering on created: after the
// release upgrade, added_after the last checkpoint misses every modified object.
func TestMITREAddedAfterUsesCreated(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "ics-attack-18.1.json.gz")
	copyFile(t, ics180, live) // the 18.0 content, as the server held it before the release
	f := mitre(t, live)
	first := f.get(objectsPath(icsID, nil)).mustOK(t, "objects 18.0")
	checkpoint := first.header.Get("X-TAXII-Date-Added-Last")
	copyFile(t, ics181, live)
	if _, err := f.srv.Reload(); err != nil {
		t.Fatal(err)
	}
	after := decode[envelope](t, f.get(objectsPath(icsID,
		url.Values{"added_after": {checkpoint}})).mustOK(t, "added_after"))
	if len(after.Objects) != 0 {
		t.Fatalf("added_after %s: %d objects; MITRE's created-based filter returns none",
			checkpoint, len(after.Objects))
	}
	all := decode[envelope](t, f.get(objectsPath(icsID, nil)).mustOK(t, "objects 18.1"))
	served := map[string]bool{}
	for _, o := range all.Objects {
		served[string(o)] = true
	}
	for i, o := range fileObjects(t, ics181) {
		if !served[string(o)] {
			t.Fatalf("after the reload object %d of 18.1 is not served", i)
		}
	}
	// A checkpoint in the middle returns exactly the objects created after it.
	var created []string
	for _, o := range all.Objects {
		created = append(created, metaOf(t, o).Created)
	}
	mid := created[len(created)/2]
	want := 0
	for _, c := range created {
		if c > mid {
			want++
		}
	}
	got := decode[envelope](t, f.get(objectsPath(icsID,
		url.Values{"added_after": {mid}})).mustOK(t, "added_after mid"))
	if len(got.Objects) != want || want == 0 {
		t.Fatalf("added_after %s: %d objects, want %d", mid, len(got.Objects), want)
	}
}

// TestMITREReleaseRoots reproduces the per-release API roots MITRE's server lists in discovery
// since June 2026, beside /api/v21/ which serves the latest release.
func TestMITREReleaseRoots(t *testing.T) {
	f := mitre(t, ics181, enterprise, ics180)
	disc := decode[struct {
		Default  string   `json:"default"`
		APIRoots []string `json:"api_roots"`
	}](t, f.get("/taxii2/").mustOK(t, "discovery"))
	base := f.ts.URL + "/api/v21/"
	want := []string{base, base + "attack-18.0/", base + "attack-18.1/"}
	if disc.Default != base || !slices.Equal(disc.APIRoots, want) {
		t.Fatalf("discovery default %q roots %v, want %q %v", disc.Default, disc.APIRoots, base,
			want)
	}
	tests := []struct {
		name        string
		root        string
		collections []string
		icsFile     string
	}{
		{"latest", "/api/v21/", []string{icsID, enterpriseID}, ics181},
		{"release 18.0", "/api/v21/attack-18.0/", []string{icsID}, ics180},
		{"release 18.1", "/api/v21/attack-18.1/", []string{icsID, enterpriseID}, ics181},
		{"release 18.1 without slash", "/api/v21/attack-18.1", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f.get(tt.root).mustOK(t, "api root")
			if tt.collections == nil {
				return
			}
			list := decode[struct{ Collections []struct{ ID string } }](t,
				f.get(tt.root+"collections/").mustOK(t, "collections"))
			var ids []string
			for _, c := range list.Collections {
				ids = append(ids, c.ID)
			}
			if !slices.Equal(ids, tt.collections) {
				t.Fatalf("collections %v, want %v", ids, tt.collections)
			}
			env := decode[envelope](t, f.get(tt.root+"collections/"+icsID+"/objects/").
				mustOK(t, "objects"))
			wantObjs := fileObjects(t, tt.icsFile)
			if len(env.Objects) != len(wantObjs) {
				t.Fatalf("%d objects, want %d", len(env.Objects), len(wantObjs))
			}
			coll := metaOf(t, wantObjs[0]) // the x-mitre-collection object differs by release
			for _, o := range env.Objects {
				if m := metaOf(t, o); m.ID == coll.ID && m.Modified != coll.Modified {
					t.Fatalf("collection object modified %s, want %s", m.Modified, coll.Modified)
				}
			}
		})
	}
	if r := f.get("/api/v21/attack-9.9/"); r.status != http.StatusNotFound {
		t.Fatalf("unknown release root: status %d, want 404", r.status)
	}
	if r := f.get("/api/v21/attack-18.0/collections/" + enterpriseID + "/"); r.status !=
		http.StatusNotFound {
		t.Fatalf("collection missing from a release: status %d, want 404", r.status)
	}
}
