package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/services/transformer/internal/pipeline"
	"github.com/attack-etl/attack-etl/services/transformer/internal/rawtest"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
	"github.com/attack-etl/attack-etl/shared/ops"
)

// startJetStream starts a private nats-server and returns a JetStream handle with the streams.
func startJetStream(t testing.TB) jetstream.JetStream {
	t.Helper()
	return stacktest.JetStream(t).JS
}

func publishRaw(t testing.TB, js jetstream.JetStream, msgs []resolve.RawMsg) {
	t.Helper()
	ctx := context.Background()
	for _, m := range msgs {
		msg := nats.NewMsg(m.Subject)
		msg.Header = m.Header
		msg.Data = m.Data
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatalf("publish %s: %v", m.Subject, err)
		}
	}
}

// newPipeline returns a pipeline on the key-value store, or on a snapshot of it (as a replay
// runs) when snapshot is set.
func newPipeline(t testing.TB, js jetstream.JetStream, schema int,
	snapshot bool) *pipeline.Pipeline {
	t.Helper()
	ctx := context.Background()
	kv, err := resolve.OpenKV(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	var store resolve.Store = kv
	if snapshot {
		if store, err = resolve.NewSnapshot(ctx, kv); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := resolve.NewStreamRaw(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	res := &resolve.Resolver{Store: store, Raw: raw, SchemaVersion: schema, MaxBytes: 900000}
	return pipeline.New(js, res, pipeline.Config{Durable: "transformer", BatchSize: 50,
		AckWait: 30 * time.Second, MaxDeliver: 3, FetchWait: 300 * time.Millisecond,
		Progress: time.Second}, zap.NewNop())
}

func newPipelineWithMetrics(t testing.TB, js jetstream.JetStream) (*pipeline.Pipeline,
	*prometheus.Registry) {
	t.Helper()
	ctx := context.Background()
	store, err := resolve.OpenKV(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := resolve.NewStreamRaw(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	res := &resolve.Resolver{Store: store, Raw: raw, SchemaVersion: 1, MaxBytes: 900000}
	return pipeline.New(js, res, pipeline.Config{Durable: "transformer", BatchSize: 50,
		AckWait: 30 * time.Second, MaxDeliver: 3, FetchWait: 300 * time.Millisecond,
		Metrics: ops.NewMetrics(reg)}, zap.NewNop()), reg
}

// counterSum adds up a counter's series, only those whose outcome label is outcome when it is
// not empty.
func counterSum(t *testing.T, reg *prometheus.Registry, name, outcome string) int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	sum := 0.0
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			match := outcome == ""
			for _, l := range m.GetLabel() {
				if l.GetName() == "outcome" && l.GetValue() == outcome {
					match = true
				}
			}
			if match {
				sum += m.GetCounter().GetValue()
			}
		}
	}
	return int(sum)
}

// flatState reads every message of the flattened stream: the greatest-rev document per id
// (what the loader keeps), the control subjects seen, and the message count.
func flatState(t *testing.T, js jetstream.JetStream) (map[string]document.Document, []string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := js.Stream(ctx, bus.StreamFlat)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]document.Document{}
	var ctl []string
	n := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := s.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		n++
		if _, _, ok := bus.ParseFlatCtlSubject(m.Subject); ok {
			ctl = append(ctl, m.Subject)
			continue
		}
		var d document.Document
		if err := json.Unmarshal(m.Data, &d); err != nil {
			t.Fatalf("flat message %d: %v", seq, err)
		}
		if old, ok := docs[d.ID]; !ok || d.Rev > old.Rev {
			docs[d.ID] = d
		}
	}
	return docs, ctl, n
}

func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func dlqCount(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), bus.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestLiveAndReplay runs the consumer loop on a real nats-server over the in-repo real slice,
// with bad messages and a control event among them, then replays with a raised schema.
func TestLiveAndReplay(t *testing.T) {
	js := startJetStream(t)
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	// Relationships first: their ends arrive later and must be filled in by re-emission.
	var rels, others []resolve.RawMsg
	for _, m := range msgs {
		if m.Header.Get(bus.HeaderStixType) == "relationship" {
			rels = append(rels, m)
		} else {
			others = append(others, m)
		}
	}
	publishRaw(t, js, rels)
	bad := []resolve.RawMsg{
		{Subject: bus.RawSubject("enterprise-attack", "broken"), Header: nats.Header{},
			Data: []byte("{not json")},
		{Subject: bus.RawSubject("enterprise-attack", "noid"), Header: nats.Header{},
			Data: []byte(`{"type":"attack-pattern","modified":"2020-01-01T00:00:00Z"}`)},
	}
	publishRaw(t, js, bad)

	ctx, cancel := context.WithCancel(context.Background())
	p, reg := newPipelineWithMetrics(t, js)
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()

	publishRaw(t, js, others)
	ctlMsg := nats.NewMsg(bus.CtlSubject("enterprise-attack", "synced"))
	ctlMsg.Header.Set(bus.HeaderRunID, "run-1")
	ctlMsg.Data = []byte(`{"objects":76}`)
	if _, err := js.PublishMsg(context.Background(), ctlMsg); err != nil {
		t.Fatal(err)
	}

	ids := map[string]bool{}
	for _, m := range msgs {
		ids[m.Header.Get(bus.HeaderStixID)] = true
	}
	waitFor(t, "every message handled", func() bool {
		s := p.Stats()
		return s.Messages == len(msgs)+len(bad)+1
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run returned %v after a stop", err)
	}

	docs, ctl, _ := flatState(t, js)
	if len(docs) != len(ids) {
		t.Errorf("%d documents on the flattened stream, want %d", len(docs), len(ids))
	}
	for id, d := range docs {
		if d.Type == "relationship" && (d.SourceName == "" || d.TargetName == "") {
			t.Errorf("%s: end not resolved after re-emission: %q -> %q", id, d.SourceName,
				d.TargetName)
		}
	}
	if len(ctl) != 1 || ctl[0] != "stix.flat.enterprise-attack._ctl.synced" {
		t.Errorf("control events forwarded: %v", ctl)
	}
	if n := dlqCount(t, js); n != 2 {
		t.Errorf("%d dead letters, want 2", n)
	}
	s := p.Stats()
	if s.DeadLettered != 2 || s.PerKind[string(bus.KindNotJSON)] != 1 || s.ReEmitted == 0 {
		t.Errorf("stats: %+v", s)
	}
	if ok := counterSum(t, reg, "attack_etl_objects_transformed_total", "ok"); ok != len(msgs) {
		t.Errorf("objects_transformed_total{outcome=ok} = %d, want %d", ok, len(msgs))
	}
	if dl := counterSum(t, reg, "attack_etl_dead_letters_total", ""); dl != len(bad) {
		t.Errorf("dead_letters_total = %d, want %d", dl, len(bad))
	}
	cons, err := js.Consumer(context.Background(), bus.StreamRaw, "transformer")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every raw message acked", func() bool {
		info, err := cons.Info(context.Background())
		return err == nil && info.NumAckPending == 0 && info.NumPending == 0
	})

	// Replay with a raised schema version: every kept raw object gives a schema-2 document,
	// and each replaces (greater rev) the live one.
	rp := newPipeline(t, js, 2, true)
	rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer rcancel()
	if err := rp.Replay(rctx); err != nil {
		t.Fatal(err)
	}
	rs := rp.Stats()
	if rs.Transformed != len(msgs) || rs.DeadLettered != len(bad) {
		t.Errorf("replay: %d transformed, %d dead-lettered; want %d and %d", rs.Transformed,
			rs.DeadLettered, len(msgs), len(bad))
	}
	after, _, _ := flatState(t, js)
	for id, d := range after {
		if d.Provenance.SchemaVersion != 2 {
			t.Errorf("%s: schema %d after replay", id, d.Provenance.SchemaVersion)
			break
		}
		if d.Rev <= docs[id].Rev {
			t.Errorf("%s: replayed rev %q not greater than %q", id, d.Rev, docs[id].Rev)
			break
		}
		if d.Type == "relationship" && d.TargetName != docs[id].TargetName {
			t.Errorf("%s: replay changed the target name", id)
		}
	}
}

// failingStore fails every call, standing in for an unreachable key-value store.
type failingStore struct{ resolve.Store }

func (failingStore) PutSummary(context.Context, string, flatten.Summary) (flatten.Summary, bool,
	error) {
	return flatten.Summary{}, false, errors.New("key-value store unreachable")
}

// TestStoreFailureRetriedThenDeadLettered checks that a message whose transformation keeps
// failing is redelivered, then dead-lettered with the last error after MaxDeliver deliveries,
// and that a control event behind it is not forwarded before it is settled.
func TestStoreFailureRetriedThenDeadLettered(t *testing.T) {
	js := startJetStream(t)
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	var m resolve.RawMsg
	for _, x := range msgs {
		if x.Header.Get(bus.HeaderStixType) == "malware" {
			m = x
			break
		}
	}
	publishRaw(t, js, []resolve.RawMsg{m})
	synced := nats.NewMsg(bus.CtlSubject("enterprise-attack", "synced"))
	synced.Data = []byte(`{}`)
	if _, err := js.PublishMsg(context.Background(), synced); err != nil {
		t.Fatal(err)
	}
	raw, err := resolve.NewStreamRaw(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	res := &resolve.Resolver{Store: failingStore{resolve.NewMemStore()}, Raw: raw}
	p := pipeline.New(js, res, pipeline.Config{Durable: "transformer", BatchSize: 10,
		AckWait: 10 * time.Second, MaxDeliver: 3, FetchWait: 200 * time.Millisecond},
		zap.NewNop())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	// The control event is settled once: forwarded after the failing object was
	// dead-lettered, or (if its own deliveries ran out first) dead-lettered itself.
	waitFor(t, "the dead letter and the control event", func() bool {
		st := p.Stats()
		return st.DeadLettered+st.Forwarded == 2
	})
	cancel()
	<-done
	if st := p.Stats(); st.Forwarded == 1 {
		flat, err := js.Stream(context.Background(), bus.StreamFlat)
		if err != nil {
			t.Fatal(err)
		}
		fwd, err := flat.GetLastMsgForSubject(context.Background(),
			bus.FlatCtlSubject("enterprise-attack", "synced"))
		if err != nil {
			t.Fatal(err)
		}
		dlq, err := js.Stream(context.Background(), bus.StreamDLQ)
		if err != nil {
			t.Fatal(err)
		}
		first, err := dlq.GetMsg(context.Background(), 1)
		if err != nil {
			t.Fatal(err)
		}
		if fwd.Time.Before(first.Time) {
			t.Errorf("control event forwarded at %v, before the failing object was settled "+
				"at %v", fwd.Time, first.Time)
		}
	}
	s, err := js.Stream(context.Background(), bus.StreamDLQ)
	if err != nil {
		t.Fatal(err)
	}
	dl, err := s.GetMsg(context.Background(), 1)
	if err != nil {
		t.Fatal(err)
	}
	if dl.Header.Get(bus.HeaderDLQKind) != string(bus.KindExhausted) ||
		dl.Header.Get(bus.HeaderDLQDeliveries) != "3" ||
		!strings.Contains(dl.Header.Get(bus.HeaderDLQReason), "unreachable") ||
		string(dl.Data) != string(m.Data) {
		t.Errorf("dead letter headers %v", dl.Header)
	}
	if st := p.Stats(); st.Retried < 2 {
		t.Errorf("stats %+v: want at least the 2 redeliveries of the failing object", st)
	}
}
