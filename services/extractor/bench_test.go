package main

import (
	"context"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/extractor/internal/taxiitest"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

// benchExtract runs the whole extractor against a TAXII server that serves the real enterprise
// bundle (24,771 objects) and reports objects per second. With purge, every iteration starts
// from an empty stream and publishes every object; without, every iteration finds every version
// held and publishes nothing.
func benchExtract(b *testing.B, mitre, purge bool) {
	col := realBundle(b, "enterprise", "18.1")
	ns := stacktest.JetStream(b)
	srv := taxiitest.New(col)
	defer srv.Close()
	srv.MITRE = mitre
	ctx := context.Background()
	a := args(ns.URL, "--taxii-api-url", srv.RootURL(), "--log-level", "error")
	if !purge {
		if err := Main(ctx, a); err != nil {
			b.Fatal(err)
		}
	}
	stream, err := ns.JS.Stream(ctx, bus.StreamRaw)
	if err != nil {
		b.Fatal(err)
	}
	var took time.Duration
	for b.Loop() {
		if purge {
			b.StopTimer()
			if err := stream.Purge(ctx); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
		}
		start := time.Now()
		if err := Main(ctx, a); err != nil {
			b.Fatal(err)
		}
		took += time.Since(start)
	}
	b.ReportMetric(float64(len(col.Objects)*b.N)/took.Seconds(), "objects/s")
}

// BenchmarkExtractNew measures a first sync: every object published and acked.
func BenchmarkExtractNew(b *testing.B) {
	b.Run("standard pages of 1000", func(b *testing.B) { benchExtract(b, false, true) })
	b.Run("MITRE whole collection", func(b *testing.B) { benchExtract(b, true, true) })
}

// BenchmarkExtractUnchanged measures a sync that finds nothing new.
func BenchmarkExtractUnchanged(b *testing.B) {
	benchExtract(b, true, false)
}
