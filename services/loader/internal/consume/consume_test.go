package consume_test

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/attack-etl/attack-etl/services/loader/internal/consume"
	"github.com/attack-etl/attack-etl/services/loader/internal/fixture"
	"github.com/attack-etl/attack-etl/services/loader/internal/report"
	"github.com/attack-etl/attack-etl/services/loader/internal/store"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/localstack"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

var (
	mongo   *localstack.Stack
	binDir  string
	collSeq atomic.Int64
)

func TestMain(m *testing.M) {
	flag.Parse()
	if testing.Short() {
		fmt.Println("skipped with -short: these tests need FerretDB")
		os.Exit(0)
	}
	dir, err := os.MkdirTemp("", "loader-consume-test")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	_ = os.Chmod(dir, 0o755) // PostgreSQL runs as its own user
	binDir, _ = filepath.Abs("../../../../.local/bin")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	mongo, err = localstack.Start(ctx, localstack.Options{Dir: dir, BinDir: binDir, Mongo: true})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start FerretDB:", err)
		os.Exit(1)
	}
	code := m.Run()
	mongo.Stop()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// env is one test's NATS server, JetStream and collection.
type env struct {
	t    *testing.T
	js   jetstream.JetStream
	coll string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := localstack.Start(ctx, localstack.Options{Dir: dir, BinDir: binDir, NATS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Stop)
	nc, err := nats.Connect(s.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.EnsureStreams(ctx, js, bus.StreamOptions{DLQMaxAge: time.Hour}); err != nil {
		t.Fatal(err)
	}
	return &env{t: t, js: js, coll: fmt.Sprintf("objects_%d", collSeq.Add(1))}
}

func (e *env) store() *store.Store {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := store.Open(ctx, store.Options{URI: mongo.MongoURI, Database: "loadertest",
		Collection: e.coll})
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = s.Close(context.Background()) })
	return s
}

func (e *env) publish(docs []document.Document, runID string) {
	e.t.Helper()
	for _, d := range docs {
		b, err := json.Marshal(d)
		if err != nil {
			e.t.Fatal(err)
		}
		m := nats.NewMsg(bus.FlatSubject(d.Collections[0], d.Type))
		m.Data = b
		m.Header.Set(bus.HeaderStixID, d.ID)
		m.Header.Set(bus.HeaderCollection, d.Collections[0])
		m.Header.Set(bus.HeaderRunID, runID)
		m.Header.Set(bus.HeaderSyncMode, "full")
		if _, err := e.js.PublishMsgAsync(m); err != nil {
			e.t.Fatal(err)
		}
	}
	select {
	case <-e.js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		e.t.Fatal("publishes not acked within a minute")
	}
}

func (e *env) publishRaw(subject string, body []byte, id, coll, runID string) {
	e.t.Helper()
	m := nats.NewMsg(subject)
	m.Data = body
	m.Header.Set(bus.HeaderStixID, id)
	m.Header.Set(bus.HeaderCollection, coll)
	m.Header.Set(bus.HeaderRunID, runID)
	m.Header.Set(bus.HeaderSyncMode, "full")
	if _, err := e.js.PublishMsg(context.Background(), m); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) pending() uint64 {
	e.t.Helper()
	s, err := e.js.Stream(context.Background(), bus.StreamFlat)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.Msgs
}

// loaders starts n consumers on the shared durable, each with its own store; stop ends them.
func (e *env) loaders(n int, o consume.Options, wrap func(consume.Writer) consume.Writer) (
	[]*consume.Consumer, func()) {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var out []*consume.Consumer
	log := zaptest.NewLogger(e.t, zaptest.Level(zap.WarnLevel))
	for i := range n {
		s := e.store()
		var w consume.Writer = s
		if wrap != nil {
			w = wrap(s)
		}
		rec := report.New(s.Database(), e.coll)
		c, err := consume.New(ctx, e.js, w, rec, log.With(zap.Int("loader", i)), o)
		if err != nil {
			e.t.Fatal(err)
		}
		out = append(out, c)
		wg.Go(func() { _ = c.Run(ctx) })
	}
	stop := func() {
		cancel()
		wg.Wait()
	}
	e.t.Cleanup(stop)
	return out, stop
}

// contents reads every stored document without provenance, for comparisons.
func contents(t *testing.T, s *store.Store) map[string]string {
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

// reference writes the documents with one store in file order, one at a time, into a fresh
// collection, and returns the stored contents.
func reference(t *testing.T, docs []document.Document) map[string]string {
	t.Helper()
	e := &env{t: t, coll: fmt.Sprintf("objects_ref_%d", collSeq.Add(1))}
	s := e.store()
	for _, d := range docs {
		if _, _, err := s.Write(context.Background(), []document.Document{d}); err != nil {
			t.Fatal(err)
		}
	}
	return contents(t, s)
}

func allDocs(t *testing.T) []document.Document {
	t.Helper()
	docs, err := fixture.Docs("", nil)
	if err != nil {
		t.Fatal(err)
	}
	return docs
}

func TestLoadersShareOneDurable(t *testing.T) {
	e := newEnv(t)
	docs := allDocs(t)
	e.publish(docs, "run-1")
	cs, stop := e.loaders(3, consume.Options{Durable: "loader", BatchSize: 10,
		BatchWait: 200 * time.Millisecond}, nil)
	fixture.Eventually(t, 90*time.Second, "every message acked", func() bool {
		return e.pending() == 0
	})
	stop()
	s := e.store()
	got, want := contents(t, s), reference(t, docs)
	if len(got) != len(want) {
		t.Fatalf("stored %d documents, want %d", len(got), len(want))
	}
	if !reflect.DeepEqual(got, want) {
		for id := range want {
			if got[id] != want[id] {
				t.Errorf("%s differs:\n got %s\nwant %s", id, got[id], want[id])
			}
		}
	}
	for i, c := range cs {
		if c.Snapshot().Documents == 0 {
			t.Errorf("loader %d wrote nothing", i)
		}
	}
	pairs := map[string]bool{}
	for _, d := range docs {
		pairs[d.Collections[0]+"|"+d.ID] = true
	}
	rec := report.New(s.Database(), e.coll)
	run, err := rec.Get(context.Background(), "run-1")
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, n := range run.Counts {
		total += n
	}
	if total != int64(len(pairs)) || run.Counts["failed"] != 0 {
		t.Errorf("report counts %v: total %d, want %d and no failures", run.Counts, total,
			len(pairs))
	}

	// A second run of the same data reports nothing added or changed, and no errors.
	e.publish(docs, "run-2")
	_, stop2 := e.loaders(2, consume.Options{Durable: "loader", BatchSize: 50,
		BatchWait: 200 * time.Millisecond}, nil)
	fixture.Eventually(t, 90*time.Second, "re-run acked", func() bool { return e.pending() == 0 })
	stop2()
	run2, err := rec.Get(context.Background(), "run-2")
	if err != nil {
		t.Fatal(err)
	}
	for o, n := range run2.Counts {
		if o != string(store.Unchanged) && o != string(store.OutOfDate) && n > 0 {
			t.Errorf("re-run reported %d %s", n, o)
		}
	}
	if run2.Counts[string(store.Unchanged)] == 0 {
		t.Errorf("re-run reported nothing unchanged: %v", run2.Counts)
	}
	if !reflect.DeepEqual(contents(t, s), want) {
		t.Errorf("re-run changed the stored documents")
	}
}

func TestMongoOutageRetriesAndAcksNothing(t *testing.T) {
	e := newEnv(t)
	docs, err := fixture.Docs("", func(r fixture.Row) bool { return r.Collection == "ics-attack" })
	if err != nil {
		t.Fatal(err)
	}
	docs = docs[:120]
	// The loader's store is opened before the outage; its writes then fail.
	cs, stop := e.loaders(1, consume.Options{Durable: "loader", BatchSize: 50,
		BatchWait: 200 * time.Millisecond, RetryMax: 300 * time.Millisecond}, nil)
	ref := reference(t, docs)
	mongo.FerretDB.Stop(5 * time.Second)
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			_ = mongo.FerretDB.Start(context.Background())
		}
	})
	e.publish(docs, "run-outage")
	fixture.Eventually(t, 60*time.Second, "loader retried", func() bool {
		return cs[0].Snapshot().Retries >= 3
	})
	if n := e.pending(); n != uint64(len(docs)) {
		t.Fatalf("%d messages left during the outage, want all %d (nothing acked)", n, len(docs))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := mongo.FerretDB.Start(ctx); err != nil {
		t.Fatal(err)
	}
	restarted = true
	fixture.Eventually(t, 90*time.Second, "every message acked after the outage", func() bool {
		return e.pending() == 0
	})
	stop()
	if got, want := contents(t, e.store()), ref; !reflect.DeepEqual(got, want) {
		t.Errorf("after the outage %d documents stored, want %d equal to a clean load", len(got),
			len(want))
	}
}

// failing makes the writes of one id fail as a server refusal would.
type failing struct {
	consume.Writer
	id string
}

func (f failing) Write(ctx context.Context, docs []document.Document) ([]store.Result,
	store.Stats, error) {
	res, st, err := f.Writer.Write(ctx, docs)
	for i, d := range docs {
		if err == nil && d.ID == f.id {
			res[i] = store.Result{Outcome: store.Failed, Err: fmt.Errorf("refused %s", d.ID)}
		}
	}
	return res, st, err
}

func TestDeadLetters(t *testing.T) {
	e := newEnv(t)
	docs, err := fixture.Docs("", func(r fixture.Row) bool { return r.Collection == "ics-attack" })
	if err != nil {
		t.Fatal(err)
	}
	docs = docs[:5]
	e.publish(docs, "run-dlq")
	e.publishRaw(bus.FlatSubject("ics-attack", "attack-pattern"), []byte(`{"_id": "x`),
		"attack-pattern--broken", "ics-attack", "run-dlq")
	bad := docs[2].ID
	_, stop := e.loaders(1, consume.Options{Durable: "loader", BatchSize: 10,
		BatchWait: 200 * time.Millisecond, MaxDeliver: 2},
		func(w consume.Writer) consume.Writer { return failing{Writer: w, id: bad} })
	fixture.Eventually(t, 60*time.Second, "every message settled", func() bool {
		return e.pending() == 0
	})
	stop()
	dlq, err := e.js.Stream(context.Background(), bus.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]string{}
	for seq := uint64(1); seq <= 2; seq++ {
		m, err := dlq.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatalf("dead letter %d: %v", seq, err)
		}
		kinds[m.Header.Get(bus.HeaderStixID)] = m.Header.Get(bus.HeaderDLQKind) + " " +
			m.Header.Get(bus.HeaderDLQReason)
	}
	tests := []struct {
		name, id, kind, reason string
	}{
		{"malformed JSON at once", "attack-pattern--broken", string(bus.KindNotJSON), ""},
		{"refused on every delivery", bad, string(bus.KindExhausted), "refused " + bad},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := kinds[tc.id]
			if !strings.HasPrefix(got, tc.kind) || !strings.Contains(got, tc.reason) {
				t.Errorf("dead letter of %s = %q, want kind %s with %q", tc.id, got, tc.kind,
					tc.reason)
			}
		})
	}
	rec := report.New(e.store().Database(), e.coll)
	run, err := rec.Get(context.Background(), "run-dlq")
	if err != nil {
		t.Fatal(err)
	}
	if run.Counts["failed"] != 2 || run.Counts["added"] != 4 {
		t.Errorf("report counts %v, want 2 failed and 4 added", run.Counts)
	}
}

func TestFullSyncPruning(t *testing.T) {
	e := newEnv(t)
	docs, err := fixture.Docs("", func(r fixture.Row) bool { return r.Collection == "ics-attack" })
	if err != nil {
		t.Fatal(err)
	}
	docs = docs[:10]
	e.publish(docs, "run-a")
	ctx := context.Background()
	obs, err := e.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{Bucket: consume.SyncBucket})
	if err != nil {
		t.Fatal(err)
	}
	var served []string
	for _, d := range docs[3:] {
		served = append(served, d.ID)
	}
	body := []byte(strings.Join(served, "\n"))
	if _, err := obs.PutBytes(ctx, "run-b/ics-attack", body); err != nil {
		t.Fatal(err)
	}
	ev := func(full bool) []byte {
		b, _ := json.Marshal(consume.Synced{RunID: "run-b", Collection: "ics-attack", Full: full,
			Count: len(served), IDsObject: "run-b/ics-attack"})
		return b
	}
	// An incremental sync never flags; the full sync flags the three ids it did not serve.
	e.publishRaw("stix.flat.ics-attack._ctl.synced", ev(false), "", "ics-attack", "run-b")
	e.publishRaw("stix.flat.ics-attack._ctl.synced", ev(true), "", "ics-attack", "run-b")
	_, stop := e.loaders(1, consume.Options{Durable: "loader", BatchSize: 100,
		BatchWait: 200 * time.Millisecond}, nil)
	fixture.Eventually(t, 60*time.Second, "every message settled", func() bool {
		return e.pending() == 0
	})
	stop()
	s := e.store()
	n, err := s.Collection().CountDocuments(ctx, bson.D{{Key: store.FieldRemoved,
		Value: bson.D{{Key: "$exists", Value: true}}}})
	if err != nil || n != 3 {
		t.Fatalf("%d documents flagged (%v), want 3", n, err)
	}
}

// slow delays every write, as a long write on a busy database would.
type slow struct {
	consume.Writer
	delay time.Duration
}

func (s slow) Write(ctx context.Context, docs []document.Document) ([]store.Result,
	store.Stats, error) {
	time.Sleep(s.delay)
	return s.Writer.Write(ctx, docs)
}

func TestLongWriteKeepsMessagesInProgress(t *testing.T) {
	e := newEnv(t)
	docs, err := fixture.Docs("", func(r fixture.Row) bool { return r.Collection == "ics-attack" })
	if err != nil {
		t.Fatal(err)
	}
	docs = docs[:20]
	e.publish(docs, "run-slow")
	// Each write takes three ack waits; without in-progress signals JetStream would hand the
	// batch to another loader meanwhile.
	cs, stop := e.loaders(2, consume.Options{Durable: "loader", BatchSize: 50,
		BatchWait: 200 * time.Millisecond, AckWait: time.Second},
		func(w consume.Writer) consume.Writer { return slow{Writer: w, delay: 3 * time.Second} })
	fixture.Eventually(t, 60*time.Second, "every message acked", func() bool {
		return e.pending() == 0
	})
	stop()
	var msgs int64
	for _, c := range cs {
		msgs += c.Snapshot().Messages
	}
	if msgs != int64(len(docs)) {
		t.Errorf("loaders received %d messages, want %d (no redelivery)", msgs, len(docs))
	}
}

func TestNATSRestartMidRun(t *testing.T) {
	srv := stacktest.JetStream(t)
	s, js := srv.Stack, srv.JS
	e := &env{t: t, js: js, coll: fmt.Sprintf("objects_%d", collSeq.Add(1))}
	docs := allDocs(t)
	e.publish(docs, "run-nats")
	ref := reference(t, docs)
	cs, stop := e.loaders(2, consume.Options{Durable: "loader", BatchSize: 10,
		BatchWait: 200 * time.Millisecond, AckWait: 5 * time.Second},
		func(w consume.Writer) consume.Writer {
			return slow{Writer: w, delay: 100 * time.Millisecond}
		})
	fixture.Eventually(t, 30*time.Second, "some documents written", func() bool {
		return cs[0].Snapshot().Documents+cs[1].Snapshot().Documents > 20
	})
	s.NATS.Stop(5 * time.Second)
	if err := s.NATS.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	fixture.Eventually(t, 120*time.Second, "every message acked after the restart", func() bool {
		info, err := js.Stream(context.Background(), bus.StreamFlat)
		if err != nil {
			return false
		}
		st, err := info.Info(context.Background())
		return err == nil && st.State.Msgs == 0
	})
	stop()
	if got := contents(t, e.store()); !reflect.DeepEqual(got, ref) {
		t.Errorf("after the NATS restart %d documents stored, want %d equal to a clean load",
			len(got), len(ref))
	}
}
