package pipeline_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/transformer/internal/rawtest"
)

// BenchmarkRealNATS publishes the three real 18.1 bundles to a private nats-server, then
// measures the live consumer over them (first load: summaries, reverse index, re-emissions)
// and a replay with a raised schema version, both in raw objects per second. Run it with
// -benchtime=1x.
func BenchmarkRealNATS(b *testing.B) {
	msgs, ok, err := rawtest.Real()
	if !ok {
		b.Skip("real bundles absent in " + rawtest.AttackDir)
	}
	if err != nil {
		b.Fatal(err)
	}
	js := startJetStream(b)
	ctx := context.Background()
	for _, m := range msgs {
		msg := nats.NewMsg(m.Subject)
		msg.Header, msg.Data = m.Header, m.Data
		if _, err := js.PublishMsgAsync(msg, jetstream.WithStallWait(time.Minute)); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(2 * time.Minute):
		b.Fatal("publishing the raw bundles timed out")
	}
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if i == 0 {
			lctx, cancel := context.WithCancel(ctx)
			p := newPipeline(b, js, 0, false)
			done := make(chan error, 1)
			start := time.Now()
			go func() { done <- p.Run(lctx) }()
			waitFor(b, "the live consumer to handle every raw object", func() bool {
				return p.Stats().Messages >= len(msgs)
			})
			took := time.Since(start)
			cancel()
			<-done
			s := p.Stats()
			b.ReportMetric(float64(len(msgs))/took.Seconds(), "live-objects/s")
			b.ReportMetric(float64(s.ReEmitted), "live-re-emitted")
		}
		rp := newPipeline(b, js, 2+i, true)
		start := time.Now()
		if err := rp.Replay(ctx); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(rp.Stats().Messages)/time.Since(start).Seconds(), "replay-objects/s")
	}
}
