// Package pipeline runs the transformer over JetStream: the durable pull consumer of the live
// path, and the replay of every raw object kept in the raw stream. Both hand each raw message to
// the same resolve.Resolver, publish its documents asynchronously, wait for JetStream's acks,
// and only then ack the raw messages.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/ops"
)

// stallWait is how long an asynchronous publish waits for room among the unacked publishes
// (a re-emission can add hundreds of documents to one batch) before it fails.
const stallWait = 30 * time.Second

// Config shapes a pipeline.
type Config struct {
	// Durable is the name of the durable consumer on the raw stream.
	Durable string
	// BatchSize is the number of raw messages fetched at once.
	BatchSize int
	// AckWait and MaxDeliver configure the consumer's redelivery.
	AckWait    time.Duration
	MaxDeliver int
	// FetchWait is the longest wait for a batch to fill; 2s when zero.
	FetchWait time.Duration
	// Workers is the number of raw messages transformed at once; 32 when zero. Each waits on
	// key-value round trips more than on the CPU, so more workers than cores pay.
	Workers int
	// Grace is how long the batch in hand may take to finish after a stop; 20s when zero.
	Grace time.Duration
	// Progress is the interval of progress log lines; 5s when zero.
	Progress time.Duration
	// Metrics receives the transformer's attack_etl_* metrics; nil records none.
	Metrics *ops.Metrics
	// HoldDelay is how long a held relationship (resolve.Result.Held) waits before it is
	// delivered again; 2s when zero.
	HoldDelay time.Duration
}

// Pipeline moves raw messages through a Resolver to the flattened stream.
type Pipeline struct {
	js    jetstream.JetStream
	res   *resolve.Resolver
	cfg   Config
	log   *zap.Logger
	stats *Stats

	// mu guards unsettled: the stream sequences of the raw messages left for redelivery,
	// which hold control events back until they are acked or dead-lettered.
	mu        sync.Mutex
	unsettled map[uint64]bool
}

// New returns a pipeline. The resolver's store and raw source must be ready.
func New(js jetstream.JetStream, res *resolve.Resolver, cfg Config, log *zap.Logger) *Pipeline {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 500
	}
	if cfg.FetchWait <= 0 {
		cfg.FetchWait = 2 * time.Second
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 32
	}
	if cfg.Grace <= 0 {
		cfg.Grace = 20 * time.Second
	}
	if cfg.Progress <= 0 {
		cfg.Progress = 5 * time.Second
	}
	return &Pipeline{js: js, res: res, cfg: cfg, log: log, stats: newStats(),
		unsettled: map[uint64]bool{}}
}

// Stats returns a copy of the counters.
func (p *Pipeline) Stats() Snapshot { return p.stats.Snapshot() }

// ConsumerConfig returns the durable consumer's configuration: raw objects and control events,
// explicit acks.
func (p *Pipeline) ConsumerConfig() jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:        p.cfg.Durable,
		Description:    "Transformer: raw STIX objects and control events to flattened documents.",
		FilterSubjects: []string{bus.RawFilter(""), bus.CtlFilter()},
		AckPolicy:      jetstream.AckExplicitPolicy,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		AckWait:        p.cfg.AckWait,
		MaxDeliver:     p.cfg.MaxDeliver,
		// Held relationships stay pending until redelivered, so leave room for a whole
		// domain's worth of them beside the batches in flight.
		MaxAckPending: max(40*p.cfg.BatchSize, 20000),
	}
}

// Run consumes the raw stream until ctx ends. On a stop it fetches no more, finishes the batch in
// hand within the grace period (what is not finished stays unacked and is redelivered), and
// returns nil.
func (p *Pipeline) Run(ctx context.Context) error {
	cons, err := p.js.CreateOrUpdateConsumer(ctx, bus.StreamRaw, p.ConsumerConfig())
	if err != nil {
		return fmt.Errorf("create consumer %s on %s: %w", p.cfg.Durable, bus.StreamRaw, err)
	}
	stop := p.progress(ctx, "transforming")
	defer stop()
	if m := p.cfg.Metrics; m != nil {
		lagCtx, cancelLag := context.WithCancel(ctx)
		defer cancelLag()
		go m.WatchConsumerLag(lagCtx, cons, ops.DefaultLagInterval, nil)
	}
	for ctx.Err() == nil {
		msgs, err := p.fetch(ctx, cons)
		if err != nil {
			if ctx.Err() != nil {
				break
			}
			p.log.Warn("fetch from the raw stream failed; retrying", zap.Error(err))
			sleep(ctx, time.Second)
			continue
		}
		if len(msgs) == 0 {
			continue
		}
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.Grace)
		p.handle(hctx, msgs, false)
		cancel()
	}
	p.log.Info("stopping: fetching ended and the batch in hand was settled",
		zap.String("consumer", p.cfg.Durable))
	return nil
}

// Replay re-transforms the latest raw message of every object kept in the raw stream (an
// ordered consumer delivering the last message per subject) and returns when it reached the
// end of the stream as it was when the replay started. Nothing is acked: the live consumer's
// position is untouched. It returns an error when a message could not be transformed or
// published, so that the replay is run again.
func (p *Pipeline) Replay(ctx context.Context) error {
	if err := p.replay(ctx); err != nil {
		return err
	}
	if n := p.stats.Snapshot().Retried; n > 0 {
		return fmt.Errorf("replay: %d raw objects failed (see the log); run the replay again", n)
	}
	return nil
}

func (p *Pipeline) replay(ctx context.Context) error {
	oc, err := p.js.OrderedConsumer(ctx, bus.StreamRaw, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.RawFilter("")},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return fmt.Errorf("create replay consumer on %s: %w", bus.StreamRaw, err)
	}
	stop := p.progress(ctx, "replaying")
	defer stop()
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("replay stopped: %w", err)
		}
		msgs, err := p.fetch(ctx, oc)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			return fmt.Errorf("replay fetch: %w", err)
		}
		if len(msgs) == 0 {
			info, err := oc.Info(ctx)
			if err != nil {
				return fmt.Errorf("replay consumer info: %w", err)
			}
			if info.NumPending == 0 {
				return nil
			}
			continue
		}
		p.handle(ctx, msgs, true)
		meta, err := msgs[len(msgs)-1].Metadata()
		if err == nil && meta.NumPending == 0 {
			return nil
		}
	}
}

// fetch returns the next batch, empty after FetchWait without messages.
func (p *Pipeline) fetch(ctx context.Context, c jetstream.Consumer) ([]jetstream.Msg, error) {
	fctx, cancel := context.WithTimeout(ctx, p.cfg.FetchWait)
	defer cancel()
	batch, err := c.Fetch(p.cfg.BatchSize, jetstream.FetchContext(fctx))
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) {
			return nil, nil
		}
		return nil, err
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if err := batch.Error(); err != nil && len(msgs) == 0 &&
		!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) &&
		!errors.Is(err, context.Canceled) {
		return nil, err
	}
	return msgs, nil
}

// item is one raw message of a batch and what became of it.
type item struct {
	msg  jetstream.Msg
	raw  resolve.RawMsg
	ctl  bool
	res  resolve.Result
	err  error
	futs []jetstream.PubAckFuture
	fail error
	held bool
}

// handle transforms a batch, publishes the documents, dead letters and control events, waits
// for every publish ack and then acks (live) each raw message whose publishes all succeeded.
// A message whose transformation or publish failed is left for redelivery, or dead-lettered
// with its last error once it was delivered MaxDeliver times.
func (p *Pipeline) handle(ctx context.Context, msgs []jetstream.Msg, replay bool) {
	if m := p.cfg.Metrics; m != nil {
		start := time.Now()
		defer func() {
			m.BatchDuration.WithLabelValues(ops.StageTransformer).Observe(
				time.Since(start).Seconds())
			m.BatchSize.WithLabelValues(ops.StageTransformer).Observe(float64(len(msgs)))
		}()
	}
	items := make([]*item, len(msgs))
	for i, m := range msgs {
		items[i] = &item{msg: m, ctl: bus.IsCtlSubject(m.Subject()),
			raw: resolve.RawMsg{Subject: m.Subject(), Header: m.Headers(), Data: m.Data()}}
		meta, err := m.Metadata()
		if err == nil && !replay && (p.cfg.MaxDeliver <= 0 ||
			int(meta.NumDelivered) < p.cfg.MaxDeliver-1) {
			// Holding uses deliveries: the last two are kept for real failures.
			items[i].raw.Stored = meta.Timestamp
			items[i].raw.MoreToCome = meta.NumPending > 0
		}
		if err == nil && !replay && meta.NumDelivered > 1 {
			items[i].raw.Redelivered = true
			if p.cfg.Metrics != nil {
				p.cfg.Metrics.ObserveDelivery(ops.StageTransformer, meta.NumDelivered)
			}
		}
	}
	p.transform(ctx, items)
	settled := 0
	for i, it := range items {
		switch {
		case it.ctl:
			// A control event (such as "synced") must follow every document before it: wait
			// for the earlier publishes, settle the earlier messages, and hold the event back
			// while any earlier message, of this batch or an earlier one, waits for
			// redelivery.
			await(ctx, items[settled:i])
			for _, e := range items[settled:i] {
				p.settle(ctx, e, replay)
			}
			settled = i
			if held := p.heldBack(it); held != "" {
				it.fail = fmt.Errorf("control event held back: %s", held)
				continue
			}
			p.forward(it, replay)
		case it.err != nil:
			it.fail = it.err
		case it.res.Dead != nil:
			if err := bus.PublishDeadLetter(ctx, p.js, *it.res.Dead); err != nil {
				it.fail = err
			}
		case it.res.Held:
			it.held = true
		default:
			for _, out := range it.res.Outputs {
				msg := nats.NewMsg(out.Subject)
				msg.Header = out.Header
				if replay {
					msg.Header.Set(bus.HeaderReplay, "true")
				}
				msg.Data = out.Body
				f, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(out.MsgID),
					jetstream.WithStallWait(stallWait))
				if err != nil {
					it.fail = fmt.Errorf("publish %s: %w", out.Subject, err)
					break
				}
				it.futs = append(it.futs, f)
			}
		}
	}
	await(ctx, items[settled:])
	for _, it := range items[settled:] {
		p.settle(ctx, it, replay)
	}
}

// await waits for the publish acks of the items, recording the first failure of each.
func await(ctx context.Context, items []*item) {
	for _, it := range items {
		for _, f := range it.futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				if it.fail == nil {
					it.fail = fmt.Errorf("publish %s: %w", f.Msg().Subject, err)
				}
			case <-ctx.Done():
				if it.fail == nil {
					it.fail = fmt.Errorf("publish %s: %w", f.Msg().Subject, ctx.Err())
				}
			}
		}
		it.futs = nil
	}
}

// heldBack says why a control event must wait: earlier messages wait for redelivery; "" when
// nothing holds it back.
func (p *Pipeline) heldBack(ctl *item) string {
	var own uint64
	if meta, err := ctl.msg.Metadata(); err == nil {
		own = meta.Sequence.Stream
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for seq := range p.unsettled {
		if seq < own || own == 0 {
			n++
		}
	}
	if n > 0 {
		return fmt.Sprintf("%d earlier messages wait for redelivery", n)
	}
	return ""
}

// transform runs the resolver over the batch's raw objects, several at once.
func (p *Pipeline) transform(ctx context.Context, items []*item) {
	work := make(chan *item)
	var wg sync.WaitGroup
	for range min(p.cfg.Workers, len(items)) {
		wg.Go(func() {
			for it := range work {
				it.res, it.err = p.res.Process(ctx, it.raw)
			}
		})
	}
	for _, it := range items {
		if !it.ctl {
			work <- it
		}
	}
	close(work)
	wg.Wait()
}

// forward publishes a control event unchanged to the flattened stream, after the documents of
// the messages before it.
func (p *Pipeline) forward(it *item, replay bool) {
	if replay {
		return
	}
	coll, event, ok := bus.ParseCtlSubject(it.raw.Subject)
	if !ok {
		coll, event = "_", "unknown"
	}
	msg := nats.NewMsg(bus.FlatCtlSubject(coll, event))
	for k, vs := range it.raw.Header {
		if k != jetstream.MsgIDHeader {
			msg.Header[k] = vs
		}
	}
	msg.Data = it.raw.Data
	id := "flatctl:" + it.raw.Subject
	if meta, err := it.msg.Metadata(); err == nil {
		id += ":" + strconv.FormatUint(meta.Sequence.Stream, 10)
	}
	f, err := p.js.PublishMsgAsync(msg, jetstream.WithMsgID(id),
		jetstream.WithStallWait(stallWait))
	if err != nil {
		it.fail = fmt.Errorf("forward %s: %w", it.raw.Subject, err)
		return
	}
	it.futs = append(it.futs, f)
}

// errHeld marks a held message as unsettled.
var errHeld = errors.New("relationship held until its ends are known")

// settle acks or retries one message and counts it.
func (p *Pipeline) settle(ctx context.Context, it *item, replay bool) {
	meta, _ := it.msg.Metadata()
	if !replay && meta != nil {
		seq := meta.Sequence.Stream
		defer func() {
			p.mu.Lock()
			defer p.mu.Unlock()
			if it.fail != nil {
				p.unsettled[seq] = true
			} else {
				delete(p.unsettled, seq)
			}
		}()
	}
	if it.held && it.fail == nil && !replay {
		// A relationship waiting for an end: not a failure, but unsettled, so that a control
		// event after it waits too.
		delay := p.cfg.HoldDelay
		if delay <= 0 {
			delay = 2 * time.Second
		}
		_ = it.msg.NakWithDelay(delay)
		p.stats.add(func(s *Snapshot) { s.Held++ })
		it.fail = errHeld
		return
	}
	if it.fail != nil && !replay {
		if meta == nil || p.cfg.MaxDeliver <= 0 || int(meta.NumDelivered) < p.cfg.MaxDeliver {
			p.log.Warn("raw message failed; it will be redelivered",
				zap.String("subject", it.raw.Subject), zap.Error(it.fail))
			_ = it.msg.NakWithDelay(time.Second)
			p.stats.add(func(s *Snapshot) { s.Retried++ })
			return
		}
		dl := bus.DeadLetter{Stage: resolve.Stage, Kind: bus.KindExhausted,
			Reason: it.fail.Error(), Subject: it.raw.Subject,
			StixID: it.raw.Header.Get(bus.HeaderStixID), Deliveries: meta.NumDelivered,
			Header: it.raw.Header, Body: it.raw.Data}
		if err := bus.PublishDeadLetter(ctx, p.js, dl); err != nil {
			p.log.Warn("dead-letter failed; the message will be redelivered",
				zap.String("subject", it.raw.Subject), zap.Error(err))
			_ = it.msg.NakWithDelay(time.Second)
			return
		}
		it.res = resolve.Result{Dead: &dl}
		it.fail = nil
	}
	if it.fail != nil {
		p.log.Warn("replay of a raw message failed", zap.String("subject", it.raw.Subject),
			zap.Error(it.fail))
		p.stats.add(func(s *Snapshot) { s.Retried++ })
		return
	}
	if !replay {
		if err := it.msg.Ack(); err != nil {
			p.log.Warn("ack failed; the message will be redelivered",
				zap.String("subject", it.raw.Subject), zap.Error(err))
		}
	}
	p.stats.add(func(s *Snapshot) {
		s.Messages++
		switch {
		case it.ctl:
			s.Forwarded++
		case it.res.Dead != nil:
			s.DeadLettered++
			s.PerKind[string(it.res.Dead.Kind)]++
		default:
			s.Transformed++
			s.PerType[it.res.Type]++
			s.ReEmitted += it.res.ReEmitted
		}
	})
	if m := p.cfg.Metrics; m != nil && !it.ctl {
		if it.res.Dead != nil {
			m.Transformed.WithLabelValues(typeLabel(it), ops.OutcomeDeadLettered).Inc()
			m.DeadLettered.WithLabelValues(ops.StageTransformer, string(it.res.Dead.Kind)).Inc()
		} else {
			m.Transformed.WithLabelValues(it.res.Type, ops.OutcomeOK).Inc()
		}
	}
	if it.res.Dead != nil {
		p.log.Warn("raw message dead-lettered", zap.String("subject", it.raw.Subject),
			zap.String("kind", string(it.res.Dead.Kind)), zap.String("reason", it.res.Dead.Reason))
	}
}

// typeLabel returns the STIX type a raw message claims in its header, as a metric label for
// an object whose own type could not be read; "unknown" when it claims none.
func typeLabel(it *item) string {
	if t := it.raw.Header.Get(bus.HeaderStixType); t != "" && len(t) <= 64 {
		return t
	}
	return "unknown"
}

// progress logs the counters every Progress interval until the returned stop is called.
func (p *Pipeline) progress(ctx context.Context, what string) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(p.cfg.Progress)
		defer t.Stop()
		last := 0
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				s := p.stats.Snapshot()
				if s.Messages == last {
					continue
				}
				p.log.Info(what, zap.Int("messages", s.Messages),
					zap.Int("transformed", s.Transformed), zap.Int("re_emitted", s.ReEmitted),
					zap.Int("held", s.Held),
					zap.Int("dead_lettered", s.DeadLettered),
					zap.Float64("per_second", float64(s.Messages-last)/p.cfg.Progress.Seconds()))
				last = s.Messages
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
