package resolve_test

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/services/transformer/internal/rawtest"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/document"
)

var fixedNow = func() time.Time { return time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC) }

// final is what the loader keeps of one id: the document with the greatest rev, with the
// collections and domains of every copy merged.
type final struct {
	doc         document.Document
	collections []string
	domains     []string
}

// feed runs every message through a fresh resolver whose raw source holds all of them, as the
// raw stream does, and returns what the loader would keep per id, and the documents per
// (collection, id) emitted last for the object itself.
func feed(t testing.TB, msgs []resolve.RawMsg) (map[string]*final, int) {
	t.Helper()
	raw := resolve.NewMemRaw()
	for _, m := range msgs {
		raw.Add(m)
	}
	r := &resolve.Resolver{Store: resolve.NewMemStore(), Raw: raw, SchemaVersion: 1, Now: fixedNow}
	out := map[string]*final{}
	emitted := 0
	for _, m := range msgs {
		res, err := r.Process(context.Background(), m)
		if err != nil {
			t.Fatalf("process %s: %v", m.Subject, err)
		}
		if res.Dead != nil {
			t.Fatalf("%s dead-lettered: %s", m.Subject, res.Dead.Reason)
		}
		for _, o := range res.Outputs {
			emitted++
			f, ok := out[o.Doc.ID]
			if !ok {
				f = &final{doc: *o.Doc}
				out[o.Doc.ID] = f
			} else if o.Doc.Rev > f.doc.Rev {
				f.doc = *o.Doc
			}
			f.collections = document.SortedUnion(f.collections, o.Doc.Collections)
			f.domains = document.SortedUnion(f.domains, o.Doc.Domains)
		}
	}
	return out, emitted
}

func reversed(msgs []resolve.RawMsg) []resolve.RawMsg {
	r := slices.Clone(msgs)
	slices.Reverse(r)
	return r
}

// canonical renders what a stored document says, without the per-copy fields.
func canonical(t testing.TB, f *final) string {
	t.Helper()
	d := f.doc
	d.Collections, d.Domains = f.collections, f.domains
	d.Provenance = document.Provenance{} // per copy: source and run of the copy that won
	b, err := json.Marshal(d)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func compareOrders(t *testing.T, msgs []resolve.RawMsg) map[string]*final {
	t.Helper()
	fwd, n1 := feed(t, msgs)
	rev, n2 := feed(t, reversed(msgs))
	t.Logf("%d raw messages, %d ids; %d documents emitted forward, %d reversed",
		len(msgs), len(fwd), n1, n2)
	if len(fwd) != len(rev) {
		t.Fatalf("forward gives %d ids, reversed %d", len(fwd), len(rev))
	}
	diffs := 0
	for id, f := range fwd {
		r, ok := rev[id]
		if !ok {
			t.Errorf("%s missing in reversed order", id)
			continue
		}
		if a, b := canonical(t, f), canonical(t, r); a != b {
			diffs++
			if diffs <= 3 {
				t.Errorf("%s differs by order:\nforward  %s\nreversed %s", id, a, b)
			}
		}
	}
	if diffs > 0 {
		t.Errorf("%d of %d documents depend on the order", diffs, len(fwd))
	}
	return fwd
}

func TestOrderIndependenceSlice(t *testing.T) {
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	got := compareOrders(t, msgs)

	// Every relationship of the slice has both ends in the slice: all must be resolved.
	rels := 0
	for id, f := range got {
		d := f.doc
		if d.Type != "relationship" {
			continue
		}
		rels++
		if d.SourceName == "" || d.TargetName == "" || d.SourceType == "" || d.TargetType == "" {
			t.Errorf("%s: ends not resolved: source %q/%q target %q/%q", id, d.SourceType,
				d.SourceName, d.TargetType, d.TargetName)
		}
	}
	if rels == 0 {
		t.Fatal("the slice has no relationship")
	}
	// T1143 is revoked by T1564.001 (a revoked-by relationship of the slice).
	var revoked int
	for _, f := range got {
		if f.doc.Revoked && f.doc.Type == "attack-pattern" {
			revoked++
			if f.doc.RevokedBy == "" || f.doc.Active {
				t.Errorf("%s (%s): revoked_by %q, active %v", f.doc.ID, f.doc.AttackID,
					f.doc.RevokedBy, f.doc.Active)
			}
		}
	}
	if revoked == 0 {
		t.Fatal("the slice has no revoked technique")
	}
}

// realForward is the forward feed of the real bundles, shared by the tests that need it.
var realForward struct {
	once sync.Once
	msgs []resolve.RawMsg
	docs map[string]*final
	err  error
}

// realBundles returns the real 18.1 bundles and their forward feed, skipping the test when the
// bundles are absent or in short mode.
func realBundles(t *testing.T) ([]resolve.RawMsg, map[string]*final) {
	t.Helper()
	if testing.Short() {
		t.Skip("short mode")
	}
	msgs, ok, err := rawtest.Real()
	if !ok {
		t.Skip("real bundles absent in " + rawtest.AttackDir)
	}
	if err != nil {
		t.Fatal(err)
	}
	realForward.once.Do(func() {
		realForward.msgs = msgs
		realForward.docs, _ = feed(t, msgs)
	})
	return realForward.msgs, realForward.docs
}

func TestOrderIndependenceRealBundles(t *testing.T) {
	msgs, got := realBundles(t)
	rev, _ := feed(t, reversed(msgs))
	diffs := 0
	for id, f := range got {
		r, ok := rev[id]
		if !ok || canonical(t, f) != canonical(t, r) {
			diffs++
			if diffs <= 3 {
				t.Errorf("%s differs by order", id)
			}
		}
	}
	if diffs > 0 {
		t.Errorf("%d of %d documents depend on the order", diffs, len(got))
	}
	if len(got) != 28986 {
		t.Errorf("got %d ids, want 28986", len(got))
	}
	unresolved := 0
	for _, f := range got {
		if f.doc.Type == "relationship" && (f.doc.SourceName == "" || f.doc.TargetName == "") {
			unresolved++
		}
	}
	if unresolved > 0 {
		t.Errorf("%d relationships have an unresolved end", unresolved)
	}
}

// panicStore panics on every call, standing in for a bug in the resolver's code.
type panicStore struct{ resolve.Store }

func (panicStore) PutSummary(context.Context, string, flatten.Summary) (flatten.Summary, bool,
	error) {
	panic("boom")
}

func TestPanicBecomesDeadLetter(t *testing.T) {
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	r := &resolve.Resolver{Store: panicStore{resolve.NewMemStore()}, Raw: resolve.NewMemRaw()}
	var m resolve.RawMsg
	for _, x := range msgs {
		if x.Header.Get(bus.HeaderStixType) == "malware" {
			m = x
			break
		}
	}
	res, err := r.Process(context.Background(), m)
	if err != nil {
		t.Fatal(err)
	}
	if res.Dead == nil || res.Dead.Kind != bus.KindInvalid ||
		!strings.HasPrefix(res.Dead.Reason, "transformer panic: boom") ||
		string(res.Dead.Body) != string(m.Data) || res.Dead.Stage != "transformer" {
		t.Errorf("dead letter: %+v", res.Dead)
	}
}

// TestRedeliveryReEmits checks that a redelivered object re-emits its relationships even
// though its summary is already stored: the first delivery may have failed to publish them.
func TestRedeliveryReEmits(t *testing.T) {
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	raw := resolve.NewMemRaw()
	byID := map[string]resolve.RawMsg{}
	for _, m := range msgs {
		raw.Add(m)
		byID[m.Header.Get(bus.HeaderStixID)] = m
	}
	var rel resolve.RawMsg
	for _, m := range msgs {
		if m.Header.Get(bus.HeaderStixType) == "relationship" {
			rel = m
			break
		}
	}
	d, err := flatten.Flatten(rel.Data, flatten.Options{})
	if err != nil {
		t.Fatal(err)
	}
	target := byID[d.TargetRef]
	r := &resolve.Resolver{Store: resolve.NewMemStore(), Raw: raw, Now: fixedNow}
	ctx := context.Background()
	steps := []struct {
		name        string
		msg         resolve.RawMsg
		redelivered bool
		reEmitted   int
	}{
		{"relationship before its target", rel, false, 0},
		{"target: first delivery re-emits", target, false, 1},
		{"target again: nothing changed", target, false, 0},
		{"target redelivered: re-emits again", target, true, 1},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			m := s.msg
			m.Redelivered = s.redelivered
			res, err := r.Process(ctx, m)
			if err != nil || res.Dead != nil {
				t.Fatalf("%v %+v", err, res.Dead)
			}
			if res.ReEmitted != s.reEmitted {
				t.Errorf("re-emitted %d, want %d", res.ReEmitted, s.reEmitted)
			}
		})
	}
}

// TestHoldWaitsForEnds checks that a young relationship with an unknown end is held (nothing
// published), that the end's arrival re-emits it resolved, and that an old one, or any one
// when holding is off, is published half resolved rather than held for ever.
func TestHoldWaitsForEnds(t *testing.T) {
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	byID := map[string]resolve.RawMsg{}
	var rel resolve.RawMsg
	for _, m := range msgs {
		byID[m.Header.Get(bus.HeaderStixID)] = m
		if rel.Subject == "" && m.Header.Get(bus.HeaderStixType) == "relationship" {
			rel = m
		}
	}
	d, err := flatten.Flatten(rel.Data, flatten.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := fixedNow()
	tests := []struct {
		name       string
		hold       time.Duration
		stored     time.Time
		moreToCome bool
		wantHeld   bool
	}{
		{"young relationship waits", 15 * time.Second, now.Add(-time.Second), true, true},
		{"old relationship is published", 15 * time.Second, now.Add(-time.Minute), true, false},
		{"nothing more to come: published", 15 * time.Second, now.Add(-time.Second), false,
			false},
		{"holding off", 0, now.Add(-time.Second), true, false},
		{"unknown storage time is published", 15 * time.Second, time.Time{}, true, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			raw := resolve.NewMemRaw()
			for _, m := range msgs {
				m.Stored = tt.stored
				raw.Add(m)
			}
			r := &resolve.Resolver{Store: resolve.NewMemStore(), Raw: raw, Now: fixedNow,
				Hold: tt.hold}
			ctx := context.Background()
			m := rel
			m.Stored, m.MoreToCome = tt.stored, tt.moreToCome
			res, err := r.Process(ctx, m)
			if err != nil || res.Dead != nil {
				t.Fatalf("%v %+v", err, res.Dead)
			}
			if res.Held != tt.wantHeld || (len(res.Outputs) == 0) != tt.wantHeld {
				t.Fatalf("held = %v with %d outputs, want held %v", res.Held, len(res.Outputs),
					tt.wantHeld)
			}
			// The ends arrive: the last one re-emits the relationship fully resolved.
			var last resolve.Result
			for _, end := range []string{d.SourceRef, d.TargetRef} {
				em := byID[end]
				em.Stored, em.MoreToCome = tt.stored, tt.moreToCome
				if last, err = r.Process(ctx, em); err != nil {
					t.Fatal(err)
				}
			}
			if last.ReEmitted != 1 {
				t.Fatalf("the second end re-emitted %d documents, want 1", last.ReEmitted)
			}
			re := last.Outputs[len(last.Outputs)-1].Doc
			if re.SourceName == "" || re.TargetName == "" {
				t.Fatalf("re-emitted relationship not resolved: %q -> %q", re.SourceName,
					re.TargetName)
			}
		})
	}
}
