package store_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/attack-etl/attack-etl/services/loader/internal/fixture"
	"github.com/attack-etl/attack-etl/services/loader/internal/store"
	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/localstack"
)

var (
	mongoURI string
	collSeq  atomic.Int64
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("skipped with -short: these tests need FerretDB")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "loader-store-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = os.Chmod(dir, 0o755) // PostgreSQL runs as its own user
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	bin, _ := filepath.Abs("../../../../.local/bin")
	s, err := localstack.Start(ctx, localstack.Options{Dir: dir, BinDir: bin, Mongo: true})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start FerretDB:", err)
		os.Exit(1)
	}
	mongoURI = s.MongoURI
	code := m.Run()
	s.Stop()
	if os.Getenv("KEEP_STACK") == "" {
		_ = os.RemoveAll(dir)
	}
	os.Exit(code)
}

// open returns a store on a fresh collection; name reuses one for several stores.
func open(t testing.TB, mode store.Mode, name string) *store.Store {
	t.Helper()
	return openWith(t, store.Options{Mode: mode, Collection: name, Concurrency: 4})
}

// openWith opens a store with the options on the test server and database; an empty
// collection name means a fresh collection.
func openWith(t testing.TB, o store.Options) *store.Store {
	t.Helper()
	if o.Collection == "" {
		o.Collection = newName()
	}
	o.URI, o.Database = mongoURI, "loadertest"
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := store.Open(ctx, o)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func newName() string { return fmt.Sprintf("objects_%d", collSeq.Add(1)) }

// realDocs returns the fixture documents by id, each id's versions and copies in file order.
func realDocs(t testing.TB) map[string][]document.Document {
	t.Helper()
	docs, err := fixture.Docs("run-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string][]document.Document{}
	for _, d := range docs {
		out[d.ID] = append(out[d.ID], d)
	}
	return out
}

// pick returns the first id whose documents satisfy cond.
func pick(t testing.TB, all map[string][]document.Document,
	cond func([]document.Document) bool) []document.Document {
	t.Helper()
	ids := make([]string, 0, len(all))
	for id := range all {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if cond(all[id]) {
			return all[id]
		}
	}
	t.Fatal("no fixture document fits")
	return nil
}

func twoVersions(ds []document.Document) bool {
	return len(ds) == 2 && ds[0].Rev != ds[1].Rev && ds[0].Type == "attack-pattern"
}

func twoCollections(ds []document.Document) bool {
	return len(ds) == 2 && ds[0].Collections[0] != ds[1].Collections[0]
}

// storedDoc reads one stored document as a map (so that fields the struct lacks show).
func storedDoc(t testing.TB, s *store.Store, id string) bson.M {
	t.Helper()
	var m bson.M
	err := s.Collection().FindOne(context.Background(), bson.D{{Key: "_id", Value: id}}).Decode(&m)
	if err != nil {
		t.Fatalf("read %s: %v", id, err)
	}
	return m
}

// content returns a stored document without its provenance, as JSON, for comparisons.
func content(t testing.TB, s *store.Store) map[string]string {
	t.Helper()
	cur, err := s.Collection().Find(context.Background(), bson.D{})
	if err != nil {
		t.Fatal(err)
	}
	var all []bson.M
	if err := cur.All(context.Background(), &all); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, m := range all {
		delete(m, "provenance")
		b, _ := json.Marshal(m)
		out[m["_id"].(string)] = string(b)
	}
	return out
}

func write(t testing.TB, s *store.Store, docs ...document.Document) []store.Result {
	t.Helper()
	res, _, err := s.Write(context.Background(), docs)
	if err != nil {
		t.Fatalf("write: %v", err)
	}
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("write %s: %v", docs[i].ID, r.Err)
		}
	}
	return res
}

func TestWriteDecisions(t *testing.T) {
	all := realDocs(t)
	vers := pick(t, all, twoVersions) // 18.0 then 18.1
	old, cur := vers[0], vers[1]
	copies := pick(t, all, twoCollections)
	stub := cur
	stub.Description, stub.Revoked, stub.Active, stub.RevokedBy = "", true, false, "attack-pattern--x"
	stub.STIXModified = "2030-01-01T00:00:00.000Z"
	if err := stub.Seal(""); err != nil {
		t.Fatal(err)
	}
	major := cur
	major.Version, major.STIXModified = "9.0", "2030-01-01T00:00:00.000Z"
	if err := major.Seal(""); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		before  []document.Document
		doc     document.Document
		want    store.Outcome
		wantRev string
		check   func(t *testing.T, m bson.M)
	}{
		{name: "new id is inserted", doc: cur, want: store.Added, wantRev: cur.Rev},
		{name: "same version again is unchanged", before: []document.Document{cur}, doc: cur,
			want: store.Unchanged, wantRev: cur.Rev},
		{name: "older version after newer is out of date", before: []document.Document{cur},
			doc: old, want: store.OutOfDate, wantRev: cur.Rev},
		{name: "newer version replaces older", before: []document.Document{old}, doc: cur,
			want: store.Minor, wantRev: cur.Rev},
		{name: "major version rise", before: []document.Document{cur}, doc: major,
			want: store.Major, wantRev: major.Rev},
		{name: "same version from another collection is merged",
			before: []document.Document{copies[0]}, doc: copies[1], want: store.Merged,
			wantRev: copies[0].Rev, check: func(t *testing.T, m bson.M) {
				if got := fmt.Sprint(m["collections"]); got != "[enterprise-attack mobile-attack]" {
					t.Errorf("collections = %s", got)
				}
			}},
		{name: "revoked stub fully replaces a rich document", before: []document.Document{cur},
			doc: stub, want: store.Revoked, wantRev: stub.Rev, check: func(t *testing.T, m bson.M) {
				if _, ok := m["description"]; ok {
					t.Errorf("stale description kept: %.40v", m["description"])
				}
				if m["revoked"] != true {
					t.Errorf("revoked = %v", m["revoked"])
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := open(t, store.ModeAuto, "")
			for _, b := range tc.before {
				write(t, s, b)
			}
			res := write(t, s, tc.doc)
			if res[0].Outcome != tc.want {
				t.Errorf("outcome = %s, want %s", res[0].Outcome, tc.want)
			}
			m := storedDoc(t, s, tc.doc.ID)
			if m["_rev"] != tc.wantRev {
				t.Errorf("stored _rev = %v, want %v", m["_rev"], tc.wantRev)
			}
			if !strings.Contains(fmt.Sprint(m["provenance"]), "loaded_at") {
				t.Errorf("loaded_at not set")
			}
			if tc.check != nil {
				tc.check(t, m)
			}
		})
	}
}

// permutations returns every order of the items.
func permutations[T any](items []T) [][]T {
	if len(items) <= 1 {
		return [][]T{slices.Clone(items)}
	}
	var out [][]T
	for i := range items {
		rest := slices.Concat(items[:i], items[i+1:])
		for _, p := range permutations(rest) {
			out = append(out, append([]T{items[i]}, p...))
		}
	}
	return out
}

func TestArrivalOrderIndependence(t *testing.T) {
	all := realDocs(t)
	vers := pick(t, all, twoVersions)
	copies := pick(t, all, twoCollections)
	// A third copy of the newer version as another collection serves it.
	other := vers[1]
	other.Collections = []string{"mobile-attack"}
	other.Domains = []string{"mobile-attack"}
	items := []document.Document{vers[0], vers[1], other, copies[0], copies[1]}
	var want map[string]string
	for i, p := range permutations(items) {
		if i%7 != 0 { // 120 orders; every seventh keeps the test short but varied
			continue
		}
		for _, oneBatch := range []bool{false, true} {
			s := open(t, store.ModeAuto, "")
			if oneBatch {
				write(t, s, p...)
			} else {
				for _, d := range p {
					write(t, s, d)
				}
			}
			got := content(t, s)
			if want == nil {
				want = got
				if !strings.Contains(want[vers[1].ID], `"enterprise-attack","mobile-attack"`) {
					t.Fatalf("collections not merged: %s", want[vers[1].ID])
				}
				continue
			}
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("order %d (one batch %v) differs:\n got %v\nwant %v", i, oneBatch, got,
					want)
			}
		}
	}
}

func TestConcurrentStoresSameNewIDs(t *testing.T) {
	docs, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	name := newName()
	stores := []*store.Store{open(t, store.ModeAuto, name), open(t, store.ModeAuto, name),
		open(t, store.ModeAuto, name)}
	var wg sync.WaitGroup
	errs := make(chan error, len(stores))
	outcomes := make([]map[store.Outcome]int, len(stores))
	for i, s := range stores {
		wg.Go(func() {
			res, _, err := s.Write(context.Background(), docs)
			if err != nil {
				errs <- err
				return
			}
			outcomes[i] = map[store.Outcome]int{}
			for _, r := range res {
				if r.Err != nil {
					errs <- r.Err
				}
				outcomes[i][r.Outcome]++
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatalf("concurrent write failed: %v", err)
	}
	added := 0
	for _, o := range outcomes {
		added += o[store.Added]
	}
	if added != len(docs) {
		t.Errorf("added %d in total over the stores, want %d (outcomes %v)", added, len(docs),
			outcomes)
	}
	n, err := stores[0].Collection().CountDocuments(context.Background(), bson.D{})
	if err != nil || n != int64(len(docs)) {
		t.Fatalf("stored %d documents (%v), want %d", n, err, len(docs))
	}
}

// TestConcurrentChangesOfOneDocument has several stores change the same stored documents at
// once, as loaders sharing a consumer do when copies of one object from several collections, or
// versions of one relationship, arrive together: two merge their collection into the stored
// version, one writes a newer version (swapped in bulk). Every document must end at the newer
// version with every collection. On FerretDB, whose updates read and then write by _id, this
// needs the locks: without them some merges are undone (7 to 29 of 200 documents lost one in
// trials).
func TestConcurrentChangesOfOneDocument(t *testing.T) {
	docs, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	docs = docs[:200]
	name := newName()
	write(t, openWith(t, store.Options{Collection: name}), docs...)
	newer := make([]document.Document, len(docs))
	for i, d := range docs {
		m := d.Modified.Add(time.Hour)
		d.Modified, d.STIXModified = &m, m.Format("2006-01-02T15:04:05.000Z")
		if err := d.Seal(""); err != nil {
			t.Fatal(err)
		}
		newer[i] = d
	}
	copies := func(src []document.Document, coll string) []document.Document {
		out := make([]document.Document, len(src))
		for i, d := range src {
			d.Collections = []string{coll}
			out[i] = d
		}
		return out
	}
	writers := [][]document.Document{copies(docs, "a"), copies(newer, "b"), copies(docs, "c")}
	var wg sync.WaitGroup
	for _, w := range writers {
		s := openWith(t, store.Options{Collection: name, SwapMin: 20})
		wg.Go(func() {
			for start := 0; start < len(w); start += 25 {
				res, _, err := s.Write(context.Background(), w[start:min(start+25, len(w))])
				if err != nil {
					t.Error(err)
					return
				}
				for _, r := range res {
					if r.Err != nil {
						t.Error(r.Err)
					}
				}
			}
		})
	}
	wg.Wait()
	want := []any{"a", "b", "c", "ics-attack"}
	lost := 0
	for i, d := range newer {
		m := storedDoc(t, writersStore(t, name), d.ID)
		cols, _ := m["collections"].(bson.A)
		if m["_rev"] != newer[i].Rev || !slices.Equal([]any(cols), want) {
			if lost == 0 {
				t.Errorf("%s: _rev %v collections %v, want %s and %v", d.ID, m["_rev"], cols,
					newer[i].Rev, want)
			}
			lost++
		}
	}
	if lost > 0 {
		t.Errorf("%d of %d documents lost a change", lost, len(docs))
	}
}

// TestLocks shows how a store meets the lock of a document another store is changing: it
// waits for a live one and takes over one a dead store left behind.
func TestLocks(t *testing.T) {
	all := realDocs(t)
	pair := pick(t, all, twoCollections)
	tests := []struct {
		name string
		// at is the age of the lock found; release is when its holder lets it go (0: never).
		at       time.Duration
		release  time.Duration
		wantWait bool
	}{
		{"a live lock is waited for", 0, 300 * time.Millisecond, true},
		{"a dead store's lock is taken over", 10 * time.Minute, 0, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := newName()
			s := openWith(t, store.Options{Collection: name, LockTTL: time.Minute})
			write(t, s, pair[0])
			locks := s.Database().Collection(name + "_locks")
			ctx := context.Background()
			_, err := locks.InsertOne(ctx, bson.D{{Key: "_id", Value: pair[0].ID},
				{Key: "owner", Value: "another"}, {Key: "at", Value: time.Now().Add(-tc.at)}})
			if err != nil {
				t.Fatal(err)
			}
			if tc.release > 0 {
				time.AfterFunc(tc.release, func() {
					_, _ = locks.DeleteOne(ctx, bson.D{{Key: "_id", Value: pair[0].ID}})
				})
			}
			res, st, err := s.Write(ctx, []document.Document{pair[1]})
			if err != nil || res[0].Err != nil {
				t.Fatalf("write: %v %v", err, res[0].Err)
			}
			if res[0].Outcome != store.Merged {
				t.Errorf("outcome %s, want %s", res[0].Outcome, store.Merged)
			}
			if (st.LockWaits > 0) != tc.wantWait {
				t.Errorf("%d lock waits, want some: %v", st.LockWaits, tc.wantWait)
			}
			if n, _ := locks.CountDocuments(ctx, bson.D{}); n != 0 {
				t.Errorf("%d locks left after the write", n)
			}
			cols, _ := storedDoc(t, s, pair[0].ID)["collections"].(bson.A)
			if len(cols) != 2 {
				t.Errorf("collections %v, want both copies'", cols)
			}
		})
	}
}

func writersStore(t testing.TB, name string) *store.Store {
	t.Helper()
	return openWith(t, store.Options{Collection: name, NoMemory: true})
}

func TestBulkInsertRetriesOnlyDuplicates(t *testing.T) {
	docs, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	docs = docs[:100]
	name := newName()
	s := open(t, store.ModeAuto, name)
	var pre []document.Document
	for i := 0; i < len(docs); i += 4 {
		pre = append(pre, docs[i])
	}
	// Another store (another loader) wrote some of them: this one does not remember them.
	write(t, open(t, store.ModeAuto, name), pre...)
	res, st, err := s.Write(context.Background(), docs)
	if err != nil {
		t.Fatal(err)
	}
	if st.Conflicts != len(pre) || st.Inserted != len(docs)-len(pre) {
		t.Errorf("conflicts %d inserted %d, want %d and %d", st.Conflicts, st.Inserted, len(pre),
			len(docs)-len(pre))
	}
	if st.Writes != 0 {
		t.Errorf("%d writes on the conflict path, want none (all unchanged)", st.Writes)
	}
	for i, r := range res {
		want := store.Added
		if i%4 == 0 {
			want = store.Unchanged
		}
		if r.Outcome != want {
			t.Errorf("%s: %s, want %s", docs[i].ID, r.Outcome, want)
		}
	}
}

func TestBulkModeOneStatement(t *testing.T) {
	all := realDocs(t)
	vers := pick(t, all, twoVersions)
	copies := pick(t, all, twoCollections)
	s := open(t, store.ModeBulk, "")
	store.SetBulkChunk(s, 1) // FerretDB hangs on an update command with many statements
	write(t, s, vers[0], copies[0])
	res := write(t, s, vers[1], copies[1])
	if res[0].Outcome != store.Minor || res[1].Outcome != store.Merged {
		t.Fatalf("outcomes %v %v, want new_minor and merged", res[0].Outcome, res[1].Outcome)
	}
	if m := storedDoc(t, s, vers[1].ID); m["_rev"] != vers[1].Rev {
		t.Errorf("stored _rev %v, want %v", m["_rev"], vers[1].Rev)
	}
}

func TestPrune(t *testing.T) {
	all := realDocs(t)
	copies := pick(t, all, twoCollections)
	ics, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	s := open(t, store.ModeAuto, "")
	write(t, s, ics[:10]...)
	write(t, s, copies...)
	served := map[string]struct{}{}
	for _, d := range ics[2:10] {
		served[d.ID] = struct{}{}
	}
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	res, err := s.Prune(context.Background(), "ics-attack", store.Served{IDs: served}, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Flagged) != 2 || res.Checked != 10 {
		t.Fatalf("prune = %+v, want 2 flagged of 10", res)
	}
	if m := storedDoc(t, s, ics[0].ID); m[store.FieldRemoved] == nil {
		t.Errorf("%s not flagged", ics[0].ID)
	}
	if m := storedDoc(t, s, ics[5].ID); m[store.FieldRemoved] != nil {
		t.Errorf("served %s flagged", ics[5].ID)
	}
	// A full sync of mobile without the shared object detaches it from mobile only.
	res, err = s.Prune(context.Background(), "mobile-attack", store.Served{}, at)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Detached) != 1 || len(res.Flagged) != 0 {
		t.Fatalf("prune mobile = %+v, want 1 detached", res)
	}
	if got := fmt.Sprint(storedDoc(t, s, copies[0].ID)["collections"]); got != "[enterprise-attack]" {
		t.Errorf("collections after detach = %s", got)
	}
	// Served again unchanged by full syncs: a held id gets its collection back, a flagged one
	// loses its flag; a published one is left to its message.
	again := []struct {
		name, collection string
		served, held     []string
		want             []string
	}{
		{"published copy is left to its message", "mobile-attack",
			[]string{copies[0].ID}, nil, nil},
		{"held copy gets its collection back", "mobile-attack",
			[]string{copies[0].ID}, []string{copies[0].ID}, []string{copies[0].ID}},
		{"flagged and served loses its flag", "ics-attack",
			[]string{ics[1].ID}, nil, []string{ics[1].ID}},
	}
	for _, tc := range again {
		set := func(ids []string) map[string]struct{} {
			m := map[string]struct{}{}
			for _, id := range ids {
				m[id] = struct{}{}
			}
			return m
		}
		res, err := s.Prune(context.Background(), tc.collection,
			store.Served{IDs: set(tc.served), Held: set(tc.held)}, at)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(res.Restored, tc.want) {
			t.Errorf("%s: restored %v, want %v", tc.name, res.Restored, tc.want)
		}
	}
	if got := fmt.Sprint(storedDoc(t, s, copies[0].ID)["collections"]); got !=
		"[enterprise-attack mobile-attack]" {
		t.Errorf("collections after a held copy was served again = %s", got)
	}
	if m := storedDoc(t, s, ics[1].ID); m[store.FieldRemoved] != nil {
		t.Errorf("flag of %s kept after a full sync served it again", ics[1].ID)
	}
	// Served again through a message: the flag is cleared.
	res2 := write(t, s, ics[0])
	if res2[0].Outcome != store.Merged {
		t.Errorf("re-served flagged document: %s, want merged", res2[0].Outcome)
	}
	if m := storedDoc(t, s, ics[0].ID); m[store.FieldRemoved] != nil {
		t.Errorf("flag kept after the object was served again")
	}
}

func TestEnsureIndexesIdempotent(t *testing.T) {
	s := open(t, store.ModeAuto, "")
	for i := range 2 {
		rep, err := s.EnsureIndexes(context.Background())
		if err != nil {
			t.Fatalf("round %d: %v", i, err)
		}
		if !rep.TextSkipped {
			t.Errorf("round %d: text index not reported skipped on FerretDB", i)
		}
		if len(rep.Created) < 18 {
			t.Errorf("round %d: %d indexes, want at least 18", i, len(rep.Created))
		}
	}
	if s.FerretDB() == "" || s.Mode() != store.ModeSingle {
		t.Errorf("FerretDB %q mode %s: want FerretDB detected and single mode", s.FerretDB(),
			s.Mode())
	}
}

func TestStaleMemoryStaysRight(t *testing.T) {
	all := realDocs(t)
	vers := pick(t, all, twoVersions)
	ics, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	name := newName()
	a, b := open(t, store.ModeAuto, name), open(t, store.ModeAuto, name)
	// a remembers the old version; b stores the new one behind a's back.
	write(t, a, vers[0], ics[0])
	write(t, b, vers[1])
	tests := []struct {
		name string
		run  func() store.Outcome
		want store.Outcome
		id   string
	}{
		{"replace planned from stale memory misses and re-reads", func() store.Outcome {
			return write(t, a, vers[1])[0].Outcome
		}, store.Unchanged, vers[1].ID},
		{"older version from stale memory is out of date", func() store.Outcome {
			return write(t, a, vers[0])[0].Outcome
		}, store.OutOfDate, vers[0].ID},
		{"pruning by another store is seen", func() store.Outcome {
			_, err := b.Prune(context.Background(), "ics-attack", store.Served{}, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			return write(t, a, ics[0])[0].Outcome
		}, store.Merged, ics[0].ID},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := tc.run(); got != tc.want {
				t.Errorf("outcome %s, want %s", got, tc.want)
			}
			if m := storedDoc(t, a, tc.id); m[store.FieldRemoved] != nil {
				t.Errorf("%s still flagged", tc.id)
			}
		})
	}
	if m := storedDoc(t, a, vers[1].ID); m["_rev"] != vers[1].Rev {
		t.Errorf("stored _rev %v, want the newer %v", m["_rev"], vers[1].Rev)
	}
}

func TestManyConflictsRereadTheCollection(t *testing.T) {
	docs, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	name := newName()
	write(t, open(t, store.ModeAuto, name), docs...)
	again := slices.Clone(docs)
	newer := again[7]
	newer.STIXModified, newer.Version = "2030-01-01T00:00:00.000Z", "9.0"
	if err := newer.Seal(""); err != nil {
		t.Fatal(err)
	}
	again[7] = newer
	b := open(t, store.ModeAuto, name) // another loader, knowing nothing yet
	res, st, err := b.Write(context.Background(), again)
	if err != nil {
		t.Fatal(err)
	}
	if st.Warms != 1 || st.Reads != 0 {
		t.Errorf("warms %d reads %d, want one whole re-read and no id reads", st.Warms, st.Reads)
	}
	for i, r := range res {
		want := store.Unchanged
		if i == 7 {
			want = store.Major
		}
		if r.Outcome != want || r.Err != nil {
			t.Errorf("%s: %s %v, want %s", again[i].ID, r.Outcome, r.Err, want)
		}
	}
	if m := storedDoc(t, b, newer.ID); m["_rev"] != newer.Rev {
		t.Errorf("stored _rev %v, want %v", m["_rev"], newer.Rev)
	}
}

func icsOnly(r fixture.Row) bool { return r.Collection == "ics-attack" }

func TestEnsureIndexesRaceWithAnotherLoader(t *testing.T) {
	name := newName()
	s, other := open(t, store.ModeAuto, name), open(t, store.ModeAuto, name)
	raced := false
	// Another loader creates the first index between this one's listing and its creation:
	// FerretDB then drops this one's connection.
	store.SetBeforeCreate(s, func(index string) {
		if raced {
			return
		}
		raced = true
		field := strings.TrimSuffix(index, "_1")
		_, err := other.Collection().Indexes().CreateOne(context.Background(), mongo.IndexModel{
			Keys: bson.D{{Key: field, Value: 1}}, Options: options.Index().SetName(index)})
		if err != nil {
			t.Errorf("create %s from the other loader: %v", index, err)
		}
	})
	rep, err := s.EnsureIndexes(context.Background())
	if err != nil {
		t.Fatalf("index creation racing another loader: %v", err)
	}
	if !raced || len(rep.Created) < 18 {
		t.Errorf("raced %v, indexes %v", raced, rep.Created)
	}
}

// rewritten returns copies of the documents as a replay with a raised schema version makes
// them: same content, a greater _rev.
func rewritten(t testing.TB, docs []document.Document) []document.Document {
	t.Helper()
	out := make([]document.Document, len(docs))
	for i, d := range docs {
		d.Provenance.SchemaVersion++
		if err := d.Seal(""); err != nil {
			t.Fatal(err)
		}
		out[i] = d
	}
	return out
}

func TestSwapRewritesInBulk(t *testing.T) {
	ics, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		// meddle runs between the first load and the rewrite, on another store; it returns
		// the id it changed and the rev that must stay.
		meddle     func(t *testing.T, other *store.Store) (string, string)
		swapMin    int
		wantSwaps  int
		wantMinors int
	}{
		{name: "every document of a replay is swapped", swapMin: 50, wantSwaps: len(ics),
			wantMinors: len(ics)},
		{name: "below the threshold each takes a replaceOne", swapMin: len(ics) + 1,
			wantSwaps: 0, wantMinors: len(ics)},
		{name: "a newer version written meanwhile by another loader stays", swapMin: 50,
			meddle: func(t *testing.T, other *store.Store) (string, string) {
				newer := ics[3]
				newer.STIXModified, newer.Version = "2030-01-01T00:00:00.000Z", "9.0"
				if err := newer.Seal(""); err != nil {
					t.Fatal(err)
				}
				write(t, other, newer)
				return newer.ID, newer.Rev
			}, wantSwaps: len(ics) - 1, wantMinors: len(ics) - 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			name := newName()
			ctx := context.Background()
			s := openWith(t, store.Options{Collection: name, SwapMin: tc.swapMin})
			write(t, s, ics...)
			keepID, keepRev := "", ""
			if tc.meddle != nil {
				keepID, keepRev = tc.meddle(t, open(t, store.ModeAuto, name))
			}
			again := rewritten(t, ics)
			res, st, err := s.Write(ctx, again)
			if err != nil {
				t.Fatal(err)
			}
			if st.Swapped != tc.wantSwaps {
				t.Errorf("swapped %d, want %d", st.Swapped, tc.wantSwaps)
			}
			minors := 0
			for i, r := range res {
				switch {
				case r.Err != nil:
					t.Errorf("%s: %v", again[i].ID, r.Err)
				case r.Outcome == store.Minor:
					minors++
				case again[i].ID == keepID && r.Outcome == store.OutOfDate:
				default:
					t.Errorf("%s: outcome %s", again[i].ID, r.Outcome)
				}
			}
			if minors != tc.wantMinors {
				t.Errorf("%d new_minor outcomes, want %d", minors, tc.wantMinors)
			}
			n, err := s.Collection().CountDocuments(ctx, bson.D{})
			if err != nil {
				t.Fatal(err)
			}
			if n != int64(len(ics)) {
				t.Errorf("%d documents stored, want %d", n, len(ics))
			}
			for _, d := range again {
				want := d.Rev
				if d.ID == keepID {
					want = keepRev
				}
				if m := storedDoc(t, s, d.ID); m["_rev"] != want {
					t.Errorf("%s: stored _rev %v, want %v", d.ID, m["_rev"], want)
				}
			}
		})
	}
}

func TestReplayKeepsWhatPruningDid(t *testing.T) {
	copies := pick(t, realDocs(t), twoCollections) // enterprise and mobile copies of one id
	ics, err := fixture.Docs("run-1", icsOnly)
	if err != nil {
		t.Fatal(err)
	}
	gone := ics[5] // the ICS sync will no longer serve it
	for _, tc := range []struct {
		name    string
		swapMin int
	}{{"swapped", 1}, {"one by one", -1}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			s := openWith(t, store.Options{SwapMin: tc.swapMin})
			first := slices.Concat(copies, ics)
			write(t, s, first...)
			served := map[string]struct{}{}
			for _, d := range ics {
				if d.ID != gone.ID {
					served[d.ID] = struct{}{}
				}
			}
			now := time.Now().UTC().Truncate(time.Millisecond)
			if _, err := s.Prune(ctx, "mobile-attack", store.Served{}, now); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Prune(ctx, "ics-attack", store.Served{IDs: served}, now); err != nil {
				t.Fatal(err)
			}
			replay := rewritten(t, first)
			for i := range replay {
				replay[i].Replayed = true
			}
			for _, r := range write(t, s, replay...) {
				if r.Outcome != store.Minor && r.Outcome != store.Merged {
					t.Errorf("replay outcome %s", r.Outcome)
				}
			}
			m := storedDoc(t, s, copies[0].ID)
			if got := fmt.Sprint(m["collections"]); got != "[enterprise-attack]" {
				t.Errorf("detached collection came back: collections %s", got)
			}
			m = storedDoc(t, s, gone.ID)
			if m[store.FieldRemoved] == nil {
				t.Errorf("%s lost its removed_from_source flag in the replay", gone.ID)
			}
			if m["_rev"] != replay[len(copies)+5].Rev {
				t.Errorf("%s not rewritten: _rev %v", gone.ID, m["_rev"])
			}
			// A new version from the source clears the flag, as before.
			back := gone
			back.STIXModified = "2030-01-01T00:00:00.000Z"
			if err := back.Seal(""); err != nil {
				t.Fatal(err)
			}
			write(t, s, back)
			if m := storedDoc(t, s, gone.ID); m[store.FieldRemoved] != nil {
				t.Errorf("a new version from the source kept the flag")
			}
		})
	}
}
