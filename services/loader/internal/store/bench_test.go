package store_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/loader/internal/fixture"
	"github.com/attack-etl/attack-etl/services/loader/internal/store"
	"github.com/attack-etl/attack-etl/shared/document"
)

const (
	benchDocs  = 25000
	benchBatch = 500
)

// load writes docs in batches, the batches shared out over the stores, and returns the time.
func load(b *testing.B, stores []*store.Store, docs []document.Document) time.Duration {
	b.Helper()
	batches := make(chan []document.Document)
	var wg sync.WaitGroup
	start := time.Now()
	for _, s := range stores {
		wg.Go(func() {
			for batch := range batches {
				if _, _, err := s.Write(context.Background(), batch); err != nil {
					b.Error(err)
				}
			}
		})
	}
	for i := 0; i < len(docs); i += benchBatch {
		batches <- docs[i:min(i+benchBatch, len(docs))]
	}
	close(batches)
	wg.Wait()
	return time.Since(start)
}

// BenchmarkLoad measures first-load throughput of ~25k realistic documents into FerretDB on
// PostgreSQL, with one store and with three stores writing at once (three loaders), with and
// without the query indexes.
func BenchmarkLoad(b *testing.B) {
	docs := fixture.Synthetic(benchDocs, "enterprise-attack", "bench")
	cases := []struct {
		name    string
		stores  int
		indexes bool
	}{
		{"one-store/indexes", 1, true},
		{"three-stores/indexes", 3, true},
		{"one-store/no-indexes", 1, false},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				name := newName()
				var stores []*store.Store
				for range tc.stores {
					stores = append(stores, open(b, store.ModeAuto, name))
				}
				if tc.indexes {
					if _, err := stores[0].EnsureIndexes(context.Background()); err != nil {
						b.Fatal(err)
					}
				}
				took := load(b, stores, docs)
				b.ReportMetric(float64(len(docs))/took.Seconds(), "docs/s")
			}
		})
	}
}

// BenchmarkConflictPath measures the conflict path on 2,000 stored documents: a re-run that
// changes nothing by a loader that has no memory of them (a failed bulk insert, then one read
// per batch), the same by a loader that warmed its memory first (Warm's time included), and
// newer versions of every document, as a replay writes them: swapped in bulk (one delete and
// one insert per batch, with and without the query indexes) and one guarded replacement each
// (single-statement commands, 4 at once).
func BenchmarkConflictPath(b *testing.B) {
	const n = 2000
	docs := fixture.Synthetic(n, "enterprise-attack", "bench")
	newer := make([]document.Document, len(docs))
	for i, d := range docs {
		d.STIXModified = "2026-01-01T00:00:00.000Z"
		d.Version = "1.3"
		if err := d.Seal(""); err != nil {
			b.Fatal(err)
		}
		newer[i] = d
	}
	cases := []struct {
		name    string
		second  []document.Document
		warm    bool
		indexes bool
		swapMin int
	}{
		{"unchanged/cold", docs, false, true, 0},
		{"unchanged/warm", docs, true, true, 0},
		{"replaced/swap/indexes", newer, false, true, 0},
		{"replaced/swap/no-indexes", newer, false, false, 0},
		{"replaced/one-by-one/indexes", newer, false, true, -1},
	}
	for _, tc := range cases {
		b.Run(tc.name, func(b *testing.B) {
			for range b.N {
				name := newName()
				first := open(b, store.ModeAuto, name)
				if tc.indexes {
					if _, err := first.EnsureIndexes(context.Background()); err != nil {
						b.Fatal(err)
					}
				}
				load(b, []*store.Store{first}, docs)
				// another loader: no memory of them
				s := openWith(b, store.Options{Collection: name, SwapMin: tc.swapMin})
				start := time.Now()
				if tc.warm {
					if _, err := s.Warm(context.Background()); err != nil {
						b.Fatal(err)
					}
				}
				load(b, []*store.Store{s}, tc.second)
				b.ReportMetric(float64(n)/time.Since(start).Seconds(), "docs/s")
			}
		})
	}
}
