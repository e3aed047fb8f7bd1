package resolve_test

import (
	"context"
	"testing"

	"github.com/attack-etl/attack-etl/services/transformer/internal/rawtest"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/document"
)

// checkCopies transforms every message with every other already known (so that the ends are
// resolved alike for each copy) and checks that the copies of one id, served by several
// collections as STIX 2.0 and 2.1, have the same content hash.
func checkCopies(t *testing.T, msgs []resolve.RawMsg) (ids int) {
	t.Helper()
	raw := resolve.NewMemRaw()
	for _, m := range msgs {
		raw.Add(m)
	}
	r := &resolve.Resolver{Store: resolve.NewMemStore(), Raw: raw, SchemaVersion: 1, Now: fixedNow}
	ctx := context.Background()
	// A first pass fills the store; the second gives each copy's final document.
	for _, m := range msgs {
		if _, err := r.Process(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	hashes := map[string]map[string]string{}
	for _, m := range msgs {
		res, err := r.Process(ctx, m)
		if err != nil || res.Dead != nil {
			t.Fatalf("%s: %v %+v", m.Subject, err, res.Dead)
		}
		d := res.Outputs[0].Doc
		h, err := document.ContentHash(*d)
		if err != nil {
			t.Fatal(err)
		}
		if hashes[d.ID] == nil {
			hashes[d.ID] = map[string]string{}
		}
		hashes[d.ID][d.Collections[0]] = h
	}
	for id, byColl := range hashes {
		if len(byColl) < 2 {
			continue
		}
		ids++
		var first string
		for coll, h := range byColl {
			if first == "" {
				first = h
			} else if h != first {
				t.Errorf("%s: content hash differs between collections: %v (%s)", id, byColl, coll)
				break
			}
		}
	}
	return ids
}

func TestCopiesHashEqualSlice(t *testing.T) {
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	if n := checkCopies(t, msgs); n < 40 {
		t.Errorf("only %d ids served by several collections in the slice, want 43", n)
	}
}

func TestCopiesHashEqualRealBundles(t *testing.T) {
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
	if n := checkCopies(t, msgs); n != 132 {
		t.Errorf("%d ids served by several collections, want 132", n)
	}
}
