package taxiiserver_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/services/mirror/internal/taxiiserver"
)

func standard(t *testing.T, maxPage int, bundles ...string) *fixture {
	t.Helper()
	return start(t, taxiiserver.Options{Mode: taxiiserver.ModeStandard, MaxPage: maxPage},
		bundles...)
}

func TestDiscoveryRootAndCollections(t *testing.T) {
	f := standard(t, 0, ics181, enterprise, labFeed)
	disc := decode[struct {
		Default  string   `json:"default"`
		APIRoots []string `json:"api_roots"`
	}](t, f.get("/taxii2/").mustOK(t, "discovery"))
	if want := f.ts.URL + "/api/v21/"; disc.Default != want ||
		!slices.Equal(disc.APIRoots, []string{want}) {
		t.Fatalf("discovery default %q roots %v, want %q", disc.Default, disc.APIRoots, want)
	}
	root := decode[struct {
		Versions         []string `json:"versions"`
		MaxContentLength int      `json:"max_content_length"`
	}](t, f.get("/api/v21/").mustOK(t, "api root"))
	if !slices.Equal(root.Versions, []string{taxiiAccept}) || root.MaxContentLength <= 0 {
		t.Fatalf("api root versions %v, max_content_length %d", root.Versions,
			root.MaxContentLength)
	}
	type coll struct {
		ID         string   `json:"id"`
		Title      string   `json:"title"`
		MediaTypes []string `json:"media_types"`
		CanRead    bool     `json:"can_read"`
		CanWrite   bool     `json:"can_write"`
	}
	list := decode[struct{ Collections []coll }](t, f.get("/api/v21/collections/").
		mustOK(t, "collections"))
	var got []string
	for _, c := range list.Collections {
		got = append(got, c.ID+" "+c.Title)
		if !c.CanRead || c.CanWrite || len(c.MediaTypes) == 0 {
			t.Errorf("collection %s: can_read %v can_write %v media_types %v", c.ID,
				c.CanRead, c.CanWrite, c.MediaTypes)
		}
	}
	// ICS names itself with its x-mitre-collection object, enterprise has none and gets MITRE's
	// id by its file name, and an unknown bundle gets an id derived from its file name.
	want := []string{icsID + " ICS ATT&CK", enterpriseID + " Enterprise ATT&CK"}
	if len(got) != 3 || !slices.Equal(got[:2], want) || !strings.HasSuffix(got[2], " lab-feed") {
		t.Fatalf("collections %v, want %v and lab-feed", got, want)
	}
	one := decode[coll](t, f.get("/api/v21/collections/"+icsID+"/").mustOK(t, "collection"))
	if one.ID != icsID || one.Title != "ICS ATT&CK" {
		t.Fatalf("collection resource %+v", one)
	}
}

func TestAcceptHeader(t *testing.T) {
	f := standard(t, 0, ics181)
	tests := []struct {
		name   string
		accept string
		want   int
	}{
		{"taxii 2.1", "application/taxii+json;version=2.1", http.StatusOK},
		{"taxii 2.1 with space", "application/taxii+json; version=2.1", http.StatusOK},
		{"taxii without version", "application/taxii+json", http.StatusOK},
		{"any", "*/*", http.StatusOK},
		{"application wildcard", "application/*", http.StatusOK},
		{"list with one match", "text/html, application/taxii+json;version=2.1;q=0.5",
			http.StatusOK},
		{"no header", "", http.StatusOK},
		{"taxii 2.0", "application/vnd.oasis.taxii+json; version=2.0", http.StatusNotAcceptable},
		{"taxii other version", "application/taxii+json;version=2.0", http.StatusNotAcceptable},
		{"plain json", "application/json", http.StatusNotAcceptable},
		{"html", "text/html", http.StatusNotAcceptable},
		{"refused by q=0", "application/taxii+json;version=2.1;q=0", http.StatusNotAcceptable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, path := range []string{"/taxii2/", "/api/v21/collections/",
				objectsPath(icsID, nil)} {
				r := f.getAccept(path, tt.accept)
				if r.status != tt.want {
					t.Fatalf("GET %s with Accept %q: status %d, want %d", path, tt.accept,
						r.status, tt.want)
				}
				if r.header.Get("Content-Type") != taxiiAccept {
					t.Fatalf("content type %q", r.header.Get("Content-Type"))
				}
				if tt.want != http.StatusOK {
					e := decode[struct{ Title, HTTPStatus string }](t, r)
					if e.Title == "" {
						t.Fatalf("406 without a TAXII error title: %s", r.body)
					}
				}
			}
		})
	}
}

func TestErrors(t *testing.T) {
	f := standard(t, 0, ics181)
	objID := "attack-pattern--00000000-0000-4000-8000-000000000000"
	tests := []struct {
		name string
		path string
		want int
	}{
		{"unknown collection", "/api/v21/collections/nope/", http.StatusNotFound},
		{"unknown collection objects", "/api/v21/collections/nope/objects/",
			http.StatusNotFound},
		{"unknown object", "/api/v21/collections/" + icsID + "/objects/" + objID + "/",
			http.StatusNotFound},
		{"versions of unknown object", "/api/v21/collections/" + icsID + "/objects/" + objID +
			"/versions/", http.StatusNotFound},
		{"release root in standard mode", "/api/v21/attack-18.1/", http.StatusNotFound},
		{"unknown resource", "/api/v21/collections/" + icsID + "/status/", http.StatusNotFound},
		{"outside the API", "/stix/", http.StatusNotFound},
		{"limit zero", objectsPath(icsID, url.Values{"limit": {"0"}}), http.StatusBadRequest},
		{"limit not a number", objectsPath(icsID, url.Values{"limit": {"ten"}}),
			http.StatusBadRequest},
		{"added_after malformed", objectsPath(icsID, url.Values{"added_after": {"yesterday"}}),
			http.StatusBadRequest},
		{"next not ours", objectsPath(icsID, url.Values{"next": {"2"}}), http.StatusBadRequest},
		{"match version malformed", objectsPath(icsID, url.Values{"match[version]": {"newest"}}),
			http.StatusBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := f.get(tt.path)
			if r.status != tt.want {
				t.Fatalf("GET %s: status %d, want %d: %s", tt.path, r.status, tt.want, r.body)
			}
			e := decode[struct {
				Title      string `json:"title"`
				HTTPStatus string `json:"http_status"`
			}](t, r)
			if e.Title == "" || e.HTTPStatus != strconv.Itoa(tt.want) {
				t.Fatalf("error body %s", r.body)
			}
		})
	}
	req, _ := http.NewRequest(http.MethodPost, f.ts.URL+objectsPath(icsID, nil),
		strings.NewReader("{}"))
	resp, err := f.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST objects: status %d, want 405", resp.StatusCode)
	}
}

func TestPagingReachesEveryObjectOnce(t *testing.T) {
	tests := []struct {
		name      string
		maxPage   int
		limit     string
		wantPages int
	}{
		{"limit 1", 1000, "1", icsObjects},
		{"limit 7", 1000, "7", 6},
		{"limit equal to size", 1000, "41", 1},
		{"limit above size", 1000, "500", 1},
		{"no limit uses max page", 10, "", 5},
		{"limit capped at max page", 10, "25", 5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := standard(t, tt.maxPage, ics181)
			q := url.Values{}
			if tt.limit != "" {
				q.Set("limit", tt.limit)
			}
			path := objectsPath(icsID, nil)
			objs, pages := f.pageAll(path, q)
			if pages != tt.wantPages {
				t.Errorf("pages %d, want %d", pages, tt.wantPages)
			}
			seen := map[string]bool{}
			for _, o := range objs {
				id := metaOf(t, o).ID
				if seen[id] {
					t.Fatalf("object %s served twice", id)
				}
				seen[id] = true
			}
			if len(seen) != icsObjects {
				t.Fatalf("served %d objects, want %d", len(seen), icsObjects)
			}
		})
	}
}

func TestDateHeadersAndManifest(t *testing.T) {
	f := standard(t, 0, ics181)
	var lastOfPrevious string
	q := url.Values{"limit": {"10"}}
	for page := 1; ; page++ {
		objs := f.get(objectsPath(icsID, nil)+"?"+q.Encode()).mustOK(t, "objects")
		man := f.get("/api/v21/collections/"+icsID+"/manifest/?"+q.Encode()).
			mustOK(t, "manifest")
		env := decode[envelope](t, objs)
		records := decode[struct {
			More    bool             `json:"more"`
			Next    string           `json:"next"`
			Objects []manifestRecord `json:"objects"`
		}](t, man)
		if len(records.Objects) != len(env.Objects) || records.Next != env.Next {
			t.Fatalf("page %d: manifest %d records next %q, objects %d next %q", page,
				len(records.Objects), records.Next, len(env.Objects), env.Next)
		}
		for i, rec := range records.Objects {
			m := metaOf(t, env.Objects[i])
			version := m.Modified
			if version == "" { // a marking definition has no modified
				version = m.Created
			}
			if rec.ID != m.ID || rec.Version != version ||
				rec.MediaType != "application/stix+json;version=2.1" {
				t.Fatalf("page %d record %d: %+v for object %+v", page, i, rec, m)
			}
			if i > 0 && rec.DateAdded <= records.Objects[i-1].DateAdded {
				t.Fatalf("page %d: date_added not increasing at %d", page, i)
			}
		}
		first, last := records.Objects[0].DateAdded,
			records.Objects[len(records.Objects)-1].DateAdded
		for _, r := range []response{objs, man} {
			if r.header.Get("X-TAXII-Date-Added-First") != first ||
				r.header.Get("X-TAXII-Date-Added-Last") != last {
				t.Fatalf("page %d: headers %q..%q, want %q..%q", page,
					r.header.Get("X-TAXII-Date-Added-First"),
					r.header.Get("X-TAXII-Date-Added-Last"), first, last)
			}
		}
		if first <= lastOfPrevious {
			t.Fatalf("page %d starts at %s, not after the previous page's %s", page, first,
				lastOfPrevious)
		}
		lastOfPrevious = last
		if !*env.More {
			break
		}
		q.Set("next", env.Next)
	}
	// added_after set to the date of the fourth object returns everything after it.
	man := decode[struct{ Objects []manifestRecord }](t,
		f.get("/api/v21/collections/"+icsID+"/manifest/").mustOK(t, "manifest"))
	after := decode[envelope](t, f.get(objectsPath(icsID,
		url.Values{"added_after": {man.Objects[3].DateAdded}})).mustOK(t, "added_after"))
	if len(after.Objects) != icsObjects-4 || metaOf(t, after.Objects[0]).ID != man.Objects[4].ID {
		t.Fatalf("added_after: %d objects, want %d starting at %s", len(after.Objects),
			icsObjects-4, man.Objects[4].ID)
	}
}

func TestFilters(t *testing.T) {
	f := standard(t, 0, ics181, labFeed)
	ics := fileObjects(t, ics181)
	idA, idB := metaOf(t, ics[5]).ID, metaOf(t, ics[30]).ID
	lab := fileObjects(t, labFeed)
	dc := metaOf(t, lab[1]) // lab-feed holds two versions of this data component
	labID := labCollectionID(t, f)
	tests := []struct {
		name       string
		collection string
		q          url.Values
		wantIDs    []string // checked as a set when set
		wantCount  int
		wantVer    []string // modified of every object, in order, when set
	}{
		{"type", icsID, url.Values{"match[type]": {"attack-pattern"}}, nil, 6, nil},
		{"two types as a comma list", icsID,
			url.Values{"match[type]": {"attack-pattern,x-mitre-tactic"}}, nil, 9, nil},
		{"two types repeated", icsID,
			url.Values{"match[type]": {"attack-pattern", "x-mitre-tactic"}}, nil, 9, nil},
		{"ids", icsID, url.Values{"match[id]": {idA + "," + idB}}, []string{idA, idB}, 2, nil},
		{"id and type that excludes it", icsID,
			url.Values{"match[id]": {idA}, "match[type]": {"campaign"}}, nil, 0, nil},
		{"spec_version 2.1", icsID, url.Values{"match[spec_version]": {"2.1"}}, nil, icsObjects,
			nil},
		{"spec_version 2.0", icsID, url.Values{"match[spec_version]": {"2.0"}}, nil, 0, nil},
		{"version default last", labID, url.Values{"match[id]": {dc.ID}}, nil, 1,
			[]string{dc.Modified}},
		{"version first", labID, url.Values{"match[id]": {dc.ID}, "match[version]": {"first"}},
			nil, 1, []string{metaOf(t, lab[0]).Modified}},
		{"version all", labID, url.Values{"match[id]": {dc.ID}, "match[version]": {"all"}}, nil,
			2, []string{metaOf(t, lab[0]).Modified, dc.Modified}},
		{"version timestamp", labID, url.Values{"match[id]": {dc.ID},
			"match[version]": {metaOf(t, lab[0]).Modified}}, nil, 1,
			[]string{metaOf(t, lab[0]).Modified}},
		{"object without id is served", labID, url.Values{}, nil, 3, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := decode[envelope](t, f.get(objectsPath(tt.collection, tt.q)).mustOK(t, "objects"))
			if len(env.Objects) != tt.wantCount {
				t.Fatalf("%d objects, want %d: %s", len(env.Objects), tt.wantCount, tt.q.Encode())
			}
			var ids, vers []string
			for _, o := range env.Objects {
				m := metaOf(t, o)
				ids, vers = append(ids, m.ID), append(vers, m.Modified)
			}
			if tt.wantIDs != nil {
				slices.Sort(ids)
				want := slices.Sorted(slices.Values(tt.wantIDs))
				if !slices.Equal(ids, want) {
					t.Fatalf("ids %v, want %v", ids, want)
				}
			}
			if tt.wantVer != nil && !slices.Equal(vers, tt.wantVer) {
				t.Fatalf("versions %v, want %v", vers, tt.wantVer)
			}
			if tt.wantCount == 0 && (env.Objects != nil || f.get(objectsPath(tt.collection,
				tt.q)).header.Get("X-TAXII-Date-Added-First") != "") {
				t.Fatalf("empty result must have no objects and no date headers: %+v", env)
			}
		})
	}
}

// labCollectionID finds the derived id of the lab-feed collection.
func labCollectionID(t *testing.T, f *fixture) string {
	t.Helper()
	list := decode[struct{ Collections []struct{ ID, Title string } }](t,
		f.get("/api/v21/collections/").mustOK(t, "collections"))
	for _, c := range list.Collections {
		if c.Title == "lab-feed" {
			return c.ID
		}
	}
	t.Fatal("no lab-feed collection")
	return ""
}

func TestObjectsAreServedByteForByte(t *testing.T) {
	f := standard(t, 0, ics181, enterprise)
	for _, file := range []struct{ path, collection string }{{ics181, icsID},
		{enterprise, enterpriseID}} {
		raws := fileObjects(t, file.path)
		served, _ := f.pageAll(objectsPath(file.collection, nil), url.Values{})
		if len(served) != len(raws) {
			t.Fatalf("%s: served %d objects, file has %d", file.path, len(served), len(raws))
		}
		for i := range raws {
			if !bytes.Equal(served[i], raws[i]) {
				t.Fatalf("%s object %d differs from the file:\n%s\n---\n%s", file.path, i,
					served[i], raws[i])
			}
		}
	}
}

func TestObjectAndVersions(t *testing.T) {
	f := standard(t, 0, ics181, labFeed)
	lab := fileObjects(t, labFeed)
	dc := metaOf(t, lab[1])
	base := "/api/v21/collections/" + labCollectionID(t, f) + "/objects/" + dc.ID + "/"
	env := decode[envelope](t, f.get(base).mustOK(t, "object"))
	if len(env.Objects) != 1 || !bytes.Equal(env.Objects[0], lab[1]) {
		t.Fatalf("object: %d objects, want the latest version", len(env.Objects))
	}
	all := decode[envelope](t, f.get(base+"?match[version]=all").mustOK(t, "object all"))
	if len(all.Objects) != 2 {
		t.Fatalf("object with match[version]=all: %d versions, want 2", len(all.Objects))
	}
	vers := decode[struct {
		More     bool     `json:"more"`
		Versions []string `json:"versions"`
	}](t, f.get(base+"versions/").mustOK(t, "versions"))
	if vers.More || !slices.Equal(vers.Versions, []string{metaOf(t, lab[0]).Modified,
		dc.Modified}) {
		t.Fatalf("versions %+v", vers)
	}
}

func TestStandardModeServesLatestRelease(t *testing.T) {
	f := standard(t, 0, ics180, ics181)
	objs, _ := f.pageAll(objectsPath(icsID, nil), url.Values{})
	want := fileObjects(t, ics181)
	if len(objs) != len(want) || !bytes.Equal(objs[0], want[0]) {
		t.Fatalf("served %d objects, want the %d of release 18.1", len(objs), len(want))
	}
	disc := decode[struct {
		APIRoots []string `json:"api_roots"`
	}](t, f.get("/taxii2/"))
	if len(disc.APIRoots) != 1 {
		t.Fatalf("standard mode lists %v, want the default root only", disc.APIRoots)
	}
}

func TestDuplicateBundleIsRejected(t *testing.T) {
	srv := taxiiserver.New(taxiiserver.Options{})
	_, err := srv.Load([]string{ics181, ics181})
	if !errors.Is(err, taxiiserver.ErrDuplicateCollection) {
		t.Fatalf("loading one bundle twice: %v, want ErrDuplicateCollection", err)
	}
	if _, err := srv.Load([]string{filepath.Join(t.TempDir(), "missing.json")}); err == nil {
		t.Fatal("loading a missing file succeeded")
	}
	bad := filepath.Join(t.TempDir(), "bad.json")
	if err := os.WriteFile(bad, []byte(`{"type":"bundle","objects":{}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Load([]string{bad}); !errors.Is(err, taxiiserver.ErrBadBundle) {
		t.Fatalf("loading a bundle whose objects is not a list: %v, want ErrBadBundle", err)
	}
}

// TestReloadDatesOnlyNewVersions swaps the ICS bundle from 18.0 to 18.1 under the same path, as
// an operator would, and checks that added_after then finds exactly the new versions.
func TestReloadDatesOnlyNewVersions(t *testing.T) {
	dir := t.TempDir()
	live := filepath.Join(dir, "ics-attack.json.gz")
	copyFile(t, ics180, live)
	f := standard(t, 0, filepath.Join(dir, "*.json.gz"))
	before := decode[struct{ Objects []manifestRecord }](t,
		f.get("/api/v21/collections/"+icsID+"/manifest/").mustOK(t, "manifest 18.0"))
	first := f.get(objectsPath(icsID, nil)).mustOK(t, "objects 18.0")
	checkpoint := first.header.Get("X-TAXII-Date-Added-Last")

	copyFile(t, ics181, live)
	rep, err := f.srv.Reload()
	if err != nil {
		t.Fatal(err)
	}
	if rep.Objects != icsObjects {
		t.Fatalf("reload report: %d objects, want %d", rep.Objects, icsObjects)
	}
	after := decode[envelope](t, f.get(objectsPath(icsID,
		url.Values{"added_after": {checkpoint}})).mustOK(t, "added_after"))
	if len(after.Objects) != icsChanged {
		t.Fatalf("added_after the 18.0 checkpoint: %d objects, want the %d new versions",
			len(after.Objects), icsChanged)
	}
	old := fileObjects(t, ics180)
	oldVersion := map[string]string{}
	for _, o := range old {
		m := metaOf(t, o)
		oldVersion[m.ID] = m.Modified
	}
	for _, o := range after.Objects {
		if m := metaOf(t, o); oldVersion[m.ID] == m.Modified {
			t.Fatalf("unchanged object %s returned after the checkpoint", m.ID)
		}
	}
	// Unchanged objects keep the date_added they had.
	now := decode[struct{ Objects []manifestRecord }](t,
		f.get("/api/v21/collections/"+icsID+"/manifest/").mustOK(t, "manifest 18.1"))
	dates := map[string]string{}
	for _, r := range before.Objects {
		dates[r.ID+r.Version] = r.DateAdded
	}
	kept := 0
	for _, r := range now.Objects {
		if d, ok := dates[r.ID+r.Version]; ok {
			kept++
			if d != r.DateAdded {
				t.Fatalf("%s kept its version but its date_added moved from %s to %s", r.ID, d,
					r.DateAdded)
			}
		}
	}
	if kept != icsObjects-icsChanged {
		t.Fatalf("%d objects kept their date, want %d", kept, icsObjects-icsChanged)
	}
}

func TestDatesAreStableAcrossRestarts(t *testing.T) {
	manifest := func() []manifestRecord {
		f := standard(t, 0, ics181)
		return decode[struct{ Objects []manifestRecord }](t,
			f.get("/api/v21/collections/"+icsID+"/manifest/").mustOK(t, "manifest")).Objects
	}
	a, b := manifest(), manifest()
	if len(a) != icsObjects || !slices.Equal(a, b) {
		t.Fatalf("two servers on the same file gave different manifests (%d, %d records)",
			len(a), len(b))
	}
}

func TestStatsAndRequestLog(t *testing.T) {
	var log bytes.Buffer
	f := start(t, taxiiserver.Options{RequestLog: &log}, ics181)
	f.get("/taxii2/")
	f.get("/api/v21/collections/")
	f.get(objectsPath(icsID, nil))
	f.getAccept("/api/v21/collections/", "text/html")
	st := decode[taxiiserver.Stats](t, f.getAccept("/mirror/stats", ""))
	if st.Requests != 4 || st.ByPath["/api/v21/collections/"] != 2 ||
		st.ByStatus[http.StatusNotAcceptable] != 1 || st.Loads != 1 {
		t.Fatalf("stats %+v", st)
	}
	lines := strings.Split(strings.TrimSpace(log.String()), "\n")
	if len(lines) != 4 {
		t.Fatalf("request log has %d lines, want 4:\n%s", len(lines), log.String())
	}
	var rec taxiiserver.RequestRecord
	if err := json.Unmarshal([]byte(lines[2]), &rec); err != nil || rec.Status != 200 ||
		rec.Path != objectsPath(icsID, nil) || rec.Bytes == 0 {
		t.Fatalf("request log line %q: %+v, %v", lines[2], rec, err)
	}
	req, _ := http.NewRequest(http.MethodDelete, f.ts.URL+"/mirror/stats", nil)
	resp, err := f.ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st := f.srv.Stats(); st.Requests != 0 || len(st.ByPath) != 0 {
		t.Fatalf("stats after reset %+v", st)
	}
	resp, err = f.ts.Client().Post(f.ts.URL+"/mirror/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if st := f.srv.Stats(); resp.StatusCode != http.StatusOK || st.Loads != 2 {
		t.Fatalf("POST /mirror/reload: status %d, loads %d", resp.StatusCode, st.Loads)
	}
}
