package e2e

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack"
)

// benchRow is one line of the benchmark table.
type benchRow struct {
	stage   string
	objects int
	took    time.Duration
	peakRSS int64
}

func (r benchRow) rate() float64 { return float64(r.objects) / r.took.Seconds() }

// waitConsumerIdle waits until a durable consumer of the raw stream has nothing pending.
func (e *env) waitConsumerIdle(durable string, timeout time.Duration) {
	e.t.Helper()
	js := e.js()
	waitFor(e.t, timeout, "consumer "+durable+" to drain", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c, err := js.Consumer(ctx, bus.StreamRaw, durable)
		if err != nil {
			return false, err.Error()
		}
		info, err := c.Info(ctx)
		if err != nil {
			return false, err.Error()
		}
		return info.NumPending == 0 && info.NumAckPending == 0,
			fmt.Sprintf("%d pending, %d unacked", info.NumPending, info.NumAckPending)
	})
}

// waitFlatEmpty waits until every flattened document was loaded and acked.
func (e *env) waitFlatEmpty(timeout time.Duration) {
	e.t.Helper()
	waitFor(e.t, timeout, "the loaders to finish the flat stream", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		n, err := bus.FlatBacklog(ctx, e.js(), "loader")
		if err != nil {
			return false, err.Error()
		}
		return n == 0, fmt.Sprintf("%d documents waiting", n)
	})
}

// stopAll stops stage processes and forgets them, so their peak memory can be read.
func (e *env) stopStages(ps ...*localstack.Proc) {
	for _, p := range ps {
		p.Stop(30 * time.Second)
	}
}

// BenchmarkPipeline runs the real binaries on the three 18.1 bundles and measures, per stage,
// objects per second and peak memory: extraction, transformation and loading with one loader,
// a replay with a bumped schema version, and loading with one and with three loaders. With
// BENCH_OUT set, the table is written there as Markdown (make bench writes docs/benchmarks.md).
func BenchmarkPipeline(b *testing.B) {
	files := bundles(b, "18.1")
	const objects, documents = 29132, 28986
	var rows []benchRow
	for range b.N {
		rows = nil
		e := newEnv(b)
		e.startMirror("standard", files...)
		tr := e.start("transformer", "transformer", nil)
		ld := e.start("loader", "loader", nil)

		start := time.Now()
		res := e.run(20*time.Minute, "extractor", nil)
		if res.code != 0 {
			b.Fatalf("extractor exited %d: %s", res.code, tailText(res.stderr, 20))
		}
		extract := time.Since(start)
		e.waitConsumerIdle("transformer", 20*time.Minute)
		transform := time.Since(start)
		e.waitFlatEmpty(30 * time.Minute)
		load := time.Since(start)
		e.stopStages(tr, ld)
		rows = append(rows,
			benchRow{"extractor (TAXII → JetStream)", objects, extract, res.maxRSS},
			benchRow{"transformer (from extraction start)", objects, transform, tr.MaxRSS()},
			benchRow{"loader ×1 (from extraction start, empty database)", documents, load,
				ld.MaxRSS()})

		// A replay with a bumped schema rewrites every document through one loader (on
		// FerretDB, in bulk deletes and inserts of up to LOADER_REWRITE_BATCH_SIZE).
		ld = e.start("loader-replay", "loader", nil)
		start = time.Now()
		res = e.run(20*time.Minute, "transformer", []string{"TRANSFORMER_SCHEMA_VERSION=99"},
			"--replay")
		if res.code != 0 {
			b.Fatalf("replay exited %d: %s", res.code, tailText(res.stderr, 20))
		}
		replayed := time.Since(start)
		e.waitFlatEmpty(60 * time.Minute)
		rewrite := time.Since(start)
		e.stopStages(ld)
		rows = append(rows,
			benchRow{"transformer --replay (raw stream → flat stream)", objects, replayed,
				res.maxRSS},
			benchRow{"replay end to end (every document rewritten, 1 loader)", documents,
				rewrite, ld.MaxRSS()})

		// Load only: fill the flat stream by a replay, then time N loaders into an empty
		// database.
		for _, n := range []int{1, 3} {
			db := fmt.Sprintf("bench%d", n)
			// A schema of its own per round, or JetStream would drop the documents as
			// duplicates of the previous round's.
			res = e.run(20*time.Minute, "transformer", []string{
				fmt.Sprintf("TRANSFORMER_SCHEMA_VERSION=%d", 10+n)}, "--replay")
			if res.code != 0 {
				b.Fatalf("replay exited %d: %s", res.code, tailText(res.stderr, 20))
			}
			var ls []*localstack.Proc
			start = time.Now()
			for i := range n {
				ls = append(ls, e.start(fmt.Sprintf("loader-%s-%d", db, i), "loader",
					[]string{"DB_NAME=" + db}))
			}
			e.waitFlatEmpty(30 * time.Minute)
			took := time.Since(start)
			e.stopStages(ls...)
			var peak int64
			for _, l := range ls {
				peak = max(peak, l.MaxRSS())
			}
			rows = append(rows, benchRow{fmt.Sprintf("loader ×%d only (empty database, start-up "+
				"included)", n), documents, took, peak})
		}
	}
	for i, r := range rows {
		b.ReportMetric(r.rate(), fmt.Sprintf("step%d_%s_objects/s", i+1,
			strings.Fields(r.stage)[0]))
	}
	writeBenchTable(b, rows)
}

func writeBenchTable(b *testing.B, rows []benchRow) {
	var s strings.Builder
	fmt.Fprintf(&s, "# Benchmarks\n\nMeasured by `make bench` (BenchmarkPipeline in "+
		"tests/e2e/bench_test.go) on %s, %d cores, Go %s, with nats-server and FerretDB v1.24.2 "+
		"over PostgreSQL as local processes, on the three ATT&CK 18.1 bundles (29,132 objects, "+
		"28,986 documents). Times run from the start of the step; peak memory is the process's "+
		"maximum resident set size.\n\n", time.Now().UTC().Format("2006-01-02"), runtime.NumCPU(),
		runtime.Version())
	s.WriteString("| step | objects | seconds | objects/s | peak memory |\n" +
		"| --- | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		mem := "—"
		if r.peakRSS > 0 {
			mem = fmt.Sprintf("%.0f MiB", float64(r.peakRSS)/(1<<20))
		}
		fmt.Fprintf(&s, "| %s | %d | %.1f | %.0f | %s |\n", r.stage, r.objects, r.took.Seconds(),
			r.rate(), mem)
	}
	b.Log("\n" + s.String())
	if out := os.Getenv("BENCH_OUT"); out != "" {
		if err := os.WriteFile(out, []byte(s.String()), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}
