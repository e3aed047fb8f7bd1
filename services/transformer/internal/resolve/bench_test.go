package resolve_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/services/transformer/internal/rawtest"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
)

func enterprise(b *testing.B) []resolve.RawMsg {
	b.Helper()
	path := filepath.Join(rawtest.AttackDir, rawtest.Bundles[0].File)
	msgs, err := rawtest.Msgs(path, rawtest.Bundles[0].Collection)
	if err != nil {
		b.Skipf("real enterprise bundle absent: %v", err)
	}
	return msgs
}

// BenchmarkFlatten measures the pure mapping of the real enterprise bundle (objects/s).
func BenchmarkFlatten(b *testing.B) {
	msgs := enterprise(b)
	opts := flatten.Options{Collection: "enterprise-attack", SchemaVersion: 1}
	b.ResetTimer()
	n := 0
	for b.Loop() {
		for _, m := range msgs {
			d, err := flatten.Flatten(m.Data, opts)
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Seal(""); err != nil {
				b.Fatal(err)
			}
			n++
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "objects/s")
}

// BenchmarkResolve measures the whole transformation of the real enterprise bundle with the
// resolver and an in-memory store (objects/s, re-emissions included in the work).
func BenchmarkResolve(b *testing.B) {
	msgs := enterprise(b)
	ctx := context.Background()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		raw := resolve.NewMemRaw()
		for _, m := range msgs {
			raw.Add(m)
		}
		r := &resolve.Resolver{Store: resolve.NewMemStore(), Raw: raw, SchemaVersion: 1}
		for _, m := range msgs {
			if _, err := r.Process(ctx, m); err != nil {
				b.Fatal(err)
			}
			n++
		}
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "objects/s")
}
