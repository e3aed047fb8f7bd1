package consume_test

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/attack-etl/attack-etl/services/loader/internal/consume"
	"github.com/attack-etl/attack-etl/services/loader/internal/fixture"
	"github.com/attack-etl/attack-etl/shared/document"
)

// attackDir holds the real ATT&CK bundles outside the repository (ATTACK_DIR overrides).
func attackDir() string {
	if d := os.Getenv("ATTACK_DIR"); d != "" {
		return d
	}
	return "/work/shared/attack"
}

func bundleDocs(t *testing.T, file, collection, runID string) []document.Document {
	t.Helper()
	f, err := os.Open(filepath.Join(attackDir(), file))
	if err != nil {
		t.Skipf("real bundles not available: %v", err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		Objects []json.RawMessage `json:"objects"`
	}
	if err := json.NewDecoder(zr).Decode(&b); err != nil {
		t.Fatal(err)
	}
	out := make([]document.Document, 0, len(b.Objects))
	for _, o := range b.Objects {
		d, err := fixture.Build(o, collection, runID)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, d)
	}
	return out
}

// TestRealReleases loads ATT&CK 18.0 (enterprise, ics) and then all of 18.1 (enterprise,
// mobile, ics) as full syncs with three loaders, and checks the 28,986 documents of 18.1, the
// documents 18.1 no longer serves flagged, and equality with a clean 18.1 load by one loader.
func TestRealReleases(t *testing.T) {
	if os.Getenv("LOADER_REAL_RELEASES") == "" {
		t.Skip("loads about 57,000 documents (1-5 minutes); set LOADER_REAL_RELEASES=1 to run")
	}
	type bundle struct{ file, coll string }
	r180 := []bundle{{"enterprise-attack-18.0.json.gz", "enterprise-attack"},
		{"ics-attack-18.0.json.gz", "ics-attack"}}
	r181 := []bundle{{"enterprise-attack-18.1.json.gz", "enterprise-attack"},
		{"mobile-attack-18.1.json.gz", "mobile-attack"}, {"ics-attack-18.1.json.gz", "ics-attack"}}
	e := newEnv(t)
	ctx := context.Background()
	obs, err := e.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: consume.SyncBucket})
	if err != nil {
		t.Fatal(err)
	}
	sync := func(bs []bundle, run string) int {
		ids := map[string]bool{}
		for _, b := range bs {
			docs := bundleDocs(t, b.file, b.coll, run)
			e.publish(docs, run)
			var served []string
			for _, d := range docs {
				served = append(served, d.ID)
				ids[d.ID] = true
			}
			name := run + "/" + b.coll
			if _, err := obs.PutBytes(ctx, name, []byte(strings.Join(served, "\n"))); err != nil {
				t.Fatal(err)
			}
			ev, _ := json.Marshal(consume.Synced{RunID: run, Collection: b.coll, Full: true,
				Count: len(served), IDsObject: name})
			e.publishRaw("stix.flat."+b.coll+"._ctl.synced", ev, "", b.coll, run)
		}
		return len(ids)
	}
	opts := consume.Options{Durable: "loader", BatchSize: 500, BatchWait: 500 * time.Millisecond}
	n180 := sync(r180, "run-18.0")
	start := time.Now()
	cs, stop := e.loaders(3, opts, nil)
	fixture.Eventually(t, 5*time.Minute, "18.0 loaded", func() bool { return e.pending() == 0 })
	t.Logf("18.0 (%d ids) loaded by 3 loaders in %s", n180, time.Since(start))
	stop()
	unique := sync(r181, "run-18.1")
	start = time.Now()
	cs2, stop := e.loaders(3, opts, nil)
	fixture.Eventually(t, 5*time.Minute, "18.1 loaded", func() bool { return e.pending() == 0 })
	t.Logf("18.1 loaded over 18.0 by 3 new loaders in %s", time.Since(start))
	stop()
	cs = append(cs, cs2...)
	if unique != 28986 {
		t.Fatalf("18.1 holds %d distinct ids, want 28986", unique)
	}
	for i, c := range cs {
		if c.Snapshot().Documents == 0 {
			t.Errorf("loader %d wrote nothing", i)
		}
	}
	s := e.store()
	notFlagged := bson.D{{Key: "removed_from_source", Value: bson.D{{Key: "$exists", Value: false}}}}
	n, err := s.Collection().CountDocuments(ctx, notFlagged)
	if err != nil || n != 28986 {
		t.Errorf("%d current documents (%v), want 28986", n, err)
	}
	flagged, err := s.Collection().CountDocuments(ctx, bson.D{{Key: "removed_from_source",
		Value: bson.D{{Key: "$exists", Value: true}}}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("flagged as removed from source: %d", flagged)
	if flagged == 0 {
		t.Errorf("nothing flagged; 18.0 has objects 18.1 lacks")
	}

	// A clean 18.1 load by one loader into another collection gives the same current documents.
	clean := &env{t: t, js: e.js, coll: e.coll + "_clean"}
	var all []document.Document
	for _, b := range r181 {
		all = append(all, bundleDocs(t, b.file, b.coll, "clean")...)
	}
	cleanStore := clean.store()
	for i := 0; i < len(all); i += 1000 {
		if _, _, err := cleanStore.Write(ctx, all[i:min(i+1000, len(all))]); err != nil {
			t.Fatal(err)
		}
	}
	got, want := contents(t, s), contents(t, cleanStore)
	diff := 0
	for id, w := range want {
		g := got[id]
		if g != w {
			diff++
			if diff <= 3 {
				t.Errorf("%s differs from a clean load:\n got %s\nwant %s", id, g, w)
			}
		}
	}
	if diff > 0 {
		t.Errorf("%d of %d documents differ from a clean 18.1 load", diff, len(want))
	}
}
