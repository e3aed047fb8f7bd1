package e2e

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack"
)

// pipeline is one running set of stages on an env.
type pipeline struct {
	e           *env
	transformer *localstack.Proc
	loaders     []*localstack.Proc
	extractor   *localstack.Proc
}

// startPipeline starts the project's TAXII server on the bundles, the transformer and n loaders,
// and the extractor in the background.
func startPipeline(e *env, loaders int, files []string, extra ...string) *pipeline {
	e.t.Helper()
	if e.mirror == nil {
		e.startMirror("standard", files...)
	}
	p := &pipeline{e: e}
	p.transformer = e.start("transformer", "transformer", extra)
	for i := range loaders {
		p.loaders = append(p.loaders, e.start(fmt.Sprintf("loader-%d", i+1), "loader", extra))
	}
	p.extractor = e.start("extractor", "extractor", extra)
	return p
}

// finish waits for the extractor to succeed and for every document to be loaded.
func (p *pipeline) finish(timeout time.Duration) {
	p.e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	code, err := p.extractor.Wait(ctx)
	if err != nil || code != 0 {
		p.e.t.Fatalf("extractor: exit %d, %v", code, err)
	}
	p.e.waitConsumerIdle("transformer", timeout)
	p.e.waitFlatEmpty(timeout)
}

// flatAcked returns how many flattened documents loaders have acked so far (the stream is a
// work queue, so acked messages leave it).
func (e *env) flatAcked() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.js().Stream(ctx, bus.StreamFlat)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.LastSeq - info.State.Msgs
}

// flatPublished returns how many flattened documents the transformer has published so far.
func (e *env) flatPublished() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.js().Stream(ctx, bus.StreamFlat)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0
	}
	return info.State.LastSeq
}

var (
	cleanOnce sync.Once
	cleanDocs map[string]bson.M
)

// cleanRun returns the documents of a clean run on the three 18.1 bundles with one loader, the
// reference every crash and outage test must end equal to.
func cleanRun(t *testing.T) map[string]bson.M {
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	attackDir(t) // skips without the real bundles, before the Once is spent
	cleanOnce.Do(func() {
		files := bundles(t, "18.1")
		e := newEnv(t)
		p := startPipeline(e, 1, files)
		p.finish(20 * time.Minute)
		cleanDocs = allDocs(t, e.collection())
	})
	if len(cleanDocs) != 28986 {
		t.Fatalf("the clean run holds %d documents, want 28986", len(cleanDocs))
	}
	return cleanDocs
}

// sameDocuments fails the test unless got equals the clean run's documents, document for
// document.
func sameDocuments(t *testing.T, got, want map[string]bson.M) {
	t.Helper()
	if len(got) != len(want) {
		t.Errorf("%d documents, want %d", len(got), len(want))
	}
	var diffs []string
	for id, w := range want {
		g, ok := got[id]
		switch {
		case !ok:
			diffs = append(diffs, "missing "+id)
		case !reflect.DeepEqual(g, w):
			diffs = append(diffs, fmt.Sprintf("differs %s:\n got  %v\n want %v", id, g, w))
		}
	}
	for id := range got {
		if _, ok := want[id]; !ok {
			diffs = append(diffs, "extra "+id)
		}
	}
	if len(diffs) > 0 {
		sort.Strings(diffs)
		t.Errorf("%d documents differ from a clean run; first: %s", len(diffs),
			strings.Join(diffs[:min(3, len(diffs))], "\n"))
	}
}

// TestThreeLoadersSideBySide loads the three 18.1 domains with three loaders sharing one
// durable consumer: the result equals a single loader's, and each loader wrote some.
func TestThreeLoadersSideBySide(t *testing.T) {
	want := cleanRun(t)
	e := newEnv(t)
	p := startPipeline(e, 3, bundles(t, "18.1"), "LOADER_BATCH_SIZE=200")
	p.finish(20 * time.Minute)
	sameDocuments(t, allDocs(t, e.collection()), want)
	for _, l := range p.loaders {
		l.Stop(30 * time.Second)
		if wrote := loaderWrote(t, l.LogPath); wrote == 0 {
			t.Errorf("%s wrote nothing", l.Name)
		}
	}
}

// TestCrashRecovery kills stages with SIGKILL in the middle of a run, restarts them, and checks
// that the database ends equal to a clean run's, with nothing lost and nothing duplicated.
func TestCrashRecovery(t *testing.T) {
	want := cleanRun(t)
	tests := []struct {
		name    string
		kill    []string
		trigger func(e *env) bool
	}{
		{"extractor", []string{"extractor"}, func(e *env) bool { return e.rawLastSeq() > 8000 }},
		{"transformer", []string{"transformer"}, func(e *env) bool { return e.flatPublished() > 8000 }},
		{"loader", []string{"loader-1"}, func(e *env) bool { return e.flatAcked() > 8000 }},
		{"all three", []string{"extractor", "transformer", "loader-1"},
			func(e *env) bool { return e.flatAcked() > 5000 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			p := startPipeline(e, 2, bundles(t, "18.1"))
			waitFor(t, 10*time.Minute, "mid-run", func() (bool, string) {
				return tt.trigger(e), fmt.Sprintf("raw %d, flat %d, acked %d", e.rawLastSeq(),
					e.flatPublished(), e.flatAcked())
			})
			procs := map[string]*localstack.Proc{"extractor": p.extractor,
				"transformer": p.transformer, "loader-1": p.loaders[0]}
			for _, name := range tt.kill {
				procs[name].Kill()
			}
			t.Logf("killed %v at raw %d, flat %d, acked %d", tt.kill, e.rawLastSeq(),
				e.flatPublished(), e.flatAcked())
			ctx := context.Background()
			for _, name := range tt.kill {
				if err := procs[name].Start(ctx); err != nil {
					t.Fatal(err)
				}
			}
			p.finish(20 * time.Minute)
			sameDocuments(t, allDocs(t, e.collection()), want)
		})
	}
}

// TestOutages stops the Mongo-wire server for a while, and restarts nats-server, in the middle
// of a run; both runs end equal to a clean run.
func TestOutages(t *testing.T) {
	want := cleanRun(t)
	t.Run("mongo-wire server stopped for 15s", func(t *testing.T) {
		e := newEnv(t)
		p := startPipeline(e, 2, bundles(t, "18.1"), "LOADER_RETRY_MAX=3s")
		waitFor(t, 10*time.Minute, "mid-run", func() (bool, string) {
			return e.flatAcked() > 5000, fmt.Sprintf("acked %d", e.flatAcked())
		})
		e.stack.FerretDB.Stop(10 * time.Second)
		time.Sleep(15 * time.Second) // the outage itself, not a wait for a condition
		if err := e.stack.FerretDB.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		p.finish(20 * time.Minute)
		sameDocuments(t, allDocs(t, e.collection()), want)
	})
	t.Run("nats-server restarted", func(t *testing.T) {
		e := newEnv(t)
		p := startPipeline(e, 2, bundles(t, "18.1"))
		waitFor(t, 10*time.Minute, "mid-run", func() (bool, string) {
			return e.flatAcked() > 5000, fmt.Sprintf("acked %d", e.flatAcked())
		})
		e.stack.NATS.Stop(10 * time.Second)
		time.Sleep(3 * time.Second) // the outage itself
		if err := e.stack.NATS.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		p.finish(20 * time.Minute)
		sameDocuments(t, allDocs(t, e.collection()), want)
	})
}

// TestReleaseUpgradeFlagsRemovedObjects loads 18.0, then 18.1 with a full sync: the database
// equals a clean 18.1 load, plus the objects 18.1 no longer serves, which are flagged.
func TestReleaseUpgradeFlagsRemovedObjects(t *testing.T) {
	want := cleanRun(t)
	dir := attackDir(t)
	old := []string{dir + "/enterprise-attack-18.0.json.gz", dir + "/mobile-attack-18.1.json.gz",
		dir + "/ics-attack-18.0.json.gz"}
	e := newEnv(t)
	p := startPipeline(e, 2, old)
	p.finish(20 * time.Minute)
	e.mirror.Stop(5 * time.Second)
	e.startMirror("standard", bundles(t, "18.1")...)
	res := e.run(10*time.Minute, "extractor", nil, "--full")
	if res.code != 0 {
		t.Fatalf("full sync exited %d: %s", res.code, tailText(res.stderr, 20))
	}
	e.waitConsumerIdle("transformer", 10*time.Minute)
	e.waitFlatEmpty(20 * time.Minute)

	c := e.collection()
	flagged := flaggedIDs(t, c)
	if len(flagged) != 2 {
		t.Errorf("%d documents flagged removed_from_source, want the 2 relationships only 18.0 has",
			len(flagged))
	}
	got := allDocs(t, c)
	for _, id := range flagged {
		if _, inNew := want[id]; inNew {
			t.Errorf("%s is flagged but 18.1 serves it", id)
		}
		delete(got, id)
	}
	sameDocuments(t, got, want)
}

// loaderWrote reads how many documents a loader wrote from its summary log line.
func loaderWrote(t *testing.T, logPath string) int {
	t.Helper()
	return countInLog(t, logPath, "documents")
}

// TestGracefulShutdown sends SIGTERM to each stage in the middle of a run: each exits 0 within
// its grace period, and once restarted the run ends with all 28,986 documents, equal to a clean
// run's.
func TestGracefulShutdown(t *testing.T) {
	want := cleanRun(t)
	e := newEnv(t)
	p := startPipeline(e, 2, bundles(t, "18.1"), "SHUTDOWN_GRACE=10s")
	stages := []struct {
		proc    *localstack.Proc
		trigger func() bool
	}{
		{p.extractor, func() bool { return e.rawLastSeq() > 6000 }},
		{p.transformer, func() bool { return e.flatPublished() > 9000 }},
		{p.loaders[0], func() bool { return e.flatAcked() > 9000 }},
	}
	for _, s := range stages {
		waitFor(t, 10*time.Minute, s.proc.Name+" mid-run", func() (bool, string) {
			return s.trigger(), fmt.Sprintf("raw %d, flat %d, acked %d", e.rawLastSeq(),
				e.flatPublished(), e.flatAcked())
		})
		s.proc.Stop(20 * time.Second)
		if code, done := s.proc.ExitCode(); !done || code != 0 {
			t.Errorf("%s: exit %d after SIGTERM, want 0", s.proc.Name, code)
		}
		if err := s.proc.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	p.finish(20 * time.Minute)
	sameDocuments(t, allDocs(t, e.collection()), want)
}

// TestServedAgainRestoresDocuments loads mobile and ICS 18.1, then runs a full sync against an
// ICS collection that lacks five objects both domains serve and five only ICS serves: the
// first lose ics-attack from their collections, the others are flagged. A full sync of the
// whole collection again publishes nothing (every version is held), yet the pruning it ends
// with gives the ten documents back their collection and clears the flags: the database equals
// the first load's.
func TestServedAgainRestoresDocuments(t *testing.T) {
	files := bundles(t, "18.1", "mobile", "ics")
	e := newEnv(t)
	p := startPipeline(e, 1, files)
	p.finish(20 * time.Minute)
	want := allDocs(t, e.collection())

	_, mobileIDs := bundleIndex(t, files[0])
	var shared, own []string
	thin := filepath.Join(e.dir, "thin", "ics-attack-18.1.json")
	writeBundleWithout(t, files[1], thin, func(id string) bool {
		if strings.HasPrefix(id, "x-mitre-data-component--") && mobileIDs[id] && len(shared) < 5 {
			shared = append(shared, id)
			return true
		}
		if strings.HasPrefix(id, "attack-pattern--") && !mobileIDs[id] && len(own) < 5 {
			own = append(own, id)
			return true
		}
		return false
	})
	fullSync := func(bundle string) {
		e.mirror.Stop(5 * time.Second)
		e.startMirror("standard", files[0], bundle)
		res := e.run(10*time.Minute, "extractor", nil, "--full")
		if res.code != 0 {
			t.Fatalf("full sync exited %d: %s", res.code, tailText(res.stderr, 20))
		}
		e.waitConsumerIdle("transformer", 10*time.Minute)
		e.waitFlatEmpty(10 * time.Minute)
	}
	fullSync(thin)
	got := allDocs(t, e.collection())
	for _, id := range shared {
		if cols := fmt.Sprint(got[id]["collections"]); cols != "[mobile-attack]" {
			t.Errorf("%s not served by ics-attack any more: collections %s", id, cols)
		}
	}
	slices.Sort(own)
	if flagged := flaggedIDs(t, e.collection()); !slices.Equal(flagged, own) {
		t.Errorf("flagged %v, want the ICS-only objects left out %v", flagged, own)
	}
	seq := e.rawLastSeq()
	runs := e.docCount("objects_runs")
	fullSync(files[1])
	if n := e.rawPublished(seq); n != 0 {
		t.Errorf("the second full sync published %d objects, want none (all held)", n)
	}
	if n := e.docCount("objects_runs") - runs; n != 1 {
		t.Errorf("%d new run reports after a sync that published nothing, want 1", n)
	}
	if flagged := flaggedIDs(t, e.collection()); len(flagged) > 0 {
		t.Errorf("still flagged after the collection served them again: %v", flagged)
	}
	sameDocuments(t, allDocs(t, e.collection()), want)
}

// docCount counts the documents of a collection in the test's database.
func (e *env) docCount(name string) int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := e.collection().Database().Collection(name).CountDocuments(ctx, bson.D{})
	if err != nil {
		e.t.Fatal(err)
	}
	return n
}

// flaggedIDs returns the sorted ids of the documents flagged removed_from_source (which
// allDocs leaves out).
func flaggedIDs(t *testing.T, c *mongo.Collection) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cur, err := c.Find(ctx, bson.D{{Key: "removed_from_source", Value: bson.D{
		{Key: "$exists", Value: true}}}}, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		t.Fatal(err)
	}
	var docs []struct {
		ID string `bson:"_id"`
	}
	if err := cur.All(ctx, &docs); err != nil {
		t.Fatal(err)
	}
	ids := make([]string, len(docs))
	for i, d := range docs {
		ids[i] = d.ID
	}
	slices.Sort(ids)
	return ids
}

// writeBundleWithout writes the bundle src to dst as plain JSON without the objects drop
// chooses.
func writeBundleWithout(t *testing.T, src, dst string, drop func(id string) bool) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	var b map[string]any
	if err := json.NewDecoder(zr).Decode(&b); err != nil {
		t.Fatal(err)
	}
	var kept []any
	for _, o := range b["objects"].([]any) {
		if id, _ := o.(map[string]any)["id"].(string); !drop(id) {
			kept = append(kept, o)
		}
	}
	b["objects"] = kept
	out, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dst, out, 0o644); err != nil {
		t.Fatal(err)
	}
}
