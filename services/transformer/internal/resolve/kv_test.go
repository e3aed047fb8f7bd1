package resolve_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

func openKV(t *testing.T) *resolve.KVStore {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kv, err := resolve.OpenKV(ctx, stacktest.JetStream(t).JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

// TestKVStoreConcurrentWriters checks the optimistic concurrency: writers racing on one key
// lose no update.
func TestKVStoreConcurrentWriters(t *testing.T) {
	kv := openKV(t)
	ctx := context.Background()
	const id = "attack-pattern--0f4a0c76-ab2d-4cb0-85d3-3f0efb8cba0d"
	var wg sync.WaitGroup
	for i := range 24 {
		wg.Go(func() {
			ref := fmt.Sprintf("enterprise-attack/relationship--%02d", i)
			if err := kv.AddRef(ctx, id, ref); err != nil {
				t.Error(err)
			}
		})
		wg.Go(func() {
			s := flatten.Summary{Type: "attack-pattern", Name: "T",
				Modified:    fmt.Sprintf("2020-01-01T00:00:%02d.000000000Z", i%10),
				Collections: []string{fmt.Sprintf("c%02d", i)}}
			if _, _, err := kv.PutSummary(ctx, id, s); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	refs, err := kv.Refs(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 24 {
		t.Errorf("%d refs after 24 concurrent adds", len(refs))
	}
	s, err := kv.Summary(ctx, id)
	if err != nil || s == nil {
		t.Fatalf("summary: %v %v", s, err)
	}
	if s.Modified != "2020-01-01T00:00:09.000000000Z" || len(s.Collections) != 24 {
		t.Errorf("summary kept %s with %d collections, want the newest with 24", s.Modified,
			len(s.Collections))
	}
}

func TestKVStoreSummaryVersions(t *testing.T) {
	kv := openKV(t)
	ctx := context.Background()
	const id = "tool--0f4a0c76-ab2d-4cb0-85d3-3f0efb8cba0d"
	v1 := flatten.Summary{Type: "tool", Name: "A", Modified: "2020-01-01T00:00:00.000000000Z",
		Collections: []string{"enterprise-attack"}}
	v2 := v1
	v2.Name, v2.Modified = "B", "2021-01-01T00:00:00.000000000Z"
	v2s2 := v2
	v2s2.Name, v2s2.Schema = "B2", 2
	v1ics := v1
	v1ics.Collections = []string{"ics-attack"}
	steps := []struct {
		name        string
		put         flatten.Summary
		changed     bool
		wantName    string
		collections int
	}{
		{"new object", v1, true, "A", 1},
		{"same version again", v1, false, "A", 1},
		{"same version from another collection", v1ics, false, "A", 2},
		{"newer version", v2, true, "B", 2},
		{"older version late", v1, false, "B", 2},
		{"same version, newer schema, new name", v2s2, true, "B2", 2},
		{"same version, older schema", v2, false, "B2", 2},
	}
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			stored, changed, err := kv.PutSummary(ctx, id, s.put)
			if err != nil {
				t.Fatal(err)
			}
			if changed != s.changed || stored.Name != s.wantName ||
				len(stored.Collections) != s.collections {
				t.Errorf("changed %v name %q collections %v; want %v %q %d", changed,
					stored.Name, stored.Collections, s.changed, s.wantName, s.collections)
			}
		})
	}
	rb := flatten.RevokedBy{By: "tool--1", Relationship: "relationship--1",
		Modified: "2020-01-01T00:00:00.000000000Z"}
	for i, want := range []bool{true, false} {
		changed, err := kv.PutRevokedBy(ctx, id, rb)
		if err != nil || changed != want {
			t.Errorf("PutRevokedBy #%d: changed %v err %v, want %v", i, changed, err, want)
		}
	}
	got, err := kv.RevokedBy(ctx, id)
	if err != nil || got == nil || got.By != "tool--1" {
		t.Errorf("RevokedBy: %+v %v", got, err)
	}
}

// TestSnapshot checks that a replay's snapshot starts from what the bucket holds and writes
// through what changes.
func TestSnapshot(t *testing.T) {
	kv := openKV(t)
	ctx := context.Background()
	const id = "tool--0f4a0c76-ab2d-4cb0-85d3-3f0efb8cba0d"
	v1 := flatten.Summary{Type: "tool", Name: "A", Modified: "2020-01-01T00:00:00.000000000Z",
		Collections: []string{"enterprise-attack"}}
	if _, _, err := kv.PutSummary(ctx, id, v1); err != nil {
		t.Fatal(err)
	}
	if err := kv.AddRef(ctx, id, "enterprise-attack/relationship--1"); err != nil {
		t.Fatal(err)
	}
	rb := flatten.RevokedBy{By: "tool--2", Relationship: "relationship--2",
		Modified: "2020-01-01T00:00:00.000000000Z"}
	if _, err := kv.PutRevokedBy(ctx, id, rb); err != nil {
		t.Fatal(err)
	}
	snap, err := resolve.NewSnapshot(ctx, kv)
	if err != nil {
		t.Fatal(err)
	}
	if snap.Len() != 3 {
		t.Errorf("snapshot holds %d keys, want 3", snap.Len())
	}
	if s, _ := snap.Summary(ctx, id); s == nil || s.Name != "A" {
		t.Errorf("summary from the snapshot: %+v", s)
	}
	if l, _ := snap.RevokedBy(ctx, id); l == nil || l.By != "tool--2" {
		t.Errorf("link from the snapshot: %+v", l)
	}
	if _, changed, err := snap.PutSummary(ctx, id, v1); err != nil || changed {
		t.Errorf("same summary again: changed %v, err %v", changed, err)
	}
	v2 := v1
	v2.Name, v2.Modified = "B", "2021-01-01T00:00:00.000000000Z"
	if _, changed, err := snap.PutSummary(ctx, id, v2); err != nil || !changed {
		t.Errorf("newer summary: changed %v, err %v", changed, err)
	}
	if s, _ := kv.Summary(ctx, id); s == nil || s.Name != "B" {
		t.Errorf("newer summary not written through: %+v", s)
	}
	if err := snap.AddRef(ctx, id, "ics-attack/relationship--3"); err != nil {
		t.Fatal(err)
	}
	refs, err := kv.Refs(ctx, id)
	if err != nil || len(refs) != 2 {
		t.Errorf("refs in the bucket after a new one: %v %v", refs, err)
	}
	if refs, _ := snap.Refs(ctx, id); len(refs) != 2 {
		t.Errorf("refs in the snapshot: %v", refs)
	}
}
