// Package consume runs the loader's side of JetStream: batches from the durable pull consumer
// on the flattened stream, writes through a Writer, and acks each message only after its write
// was acknowledged (or found unnecessary). It keeps long writes in progress, retries the batch
// while the database is unreachable, dead-letters malformed documents and exhausted messages,
// and prunes after full syncs.
package consume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/loader/internal/report"
	"github.com/attack-etl/attack-etl/services/loader/internal/store"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/ops"
)

// Stage names the loader in dead letters.
const Stage = "loader"

// SyncBucket is the JetStream object store holding the ids served by each full sync.
const SyncBucket = "STIX_SYNCS"

// Writer stores documents; *store.Store implements it.
type Writer interface {
	// Write stores a batch; an error means the batch could not be finished (an outage).
	Write(ctx context.Context, docs []document.Document) ([]store.Result, store.Stats, error)
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
	// Prune flags the documents of a collection that its full sync no longer served, and
	// restores those it served again.
	Prune(ctx context.Context, collection string, served store.Served,
		at time.Time) (store.PruneResult, error)
}

// Recorder keeps the change report; *report.Recorder implements it.
type Recorder interface {
	// Record stores the outcomes of a batch.
	Record(ctx context.Context, entries []report.Entry) error
	// Touch records that a run happened, for runs that change nothing.
	Touch(ctx context.Context, runID string) error
}

// Options configures a Consumer.
type Options struct {
	// Stream and Durable name the stream and the shared durable consumer.
	Stream, Durable string
	// BatchSize is the most messages per batch; BatchWait the longest wait to fill one.
	BatchSize int
	BatchWait time.Duration
	// RewriteBatchSize is the most messages per batch while the writer swaps replacements in
	// bulk (a mass rewrite such as a replay): each such batch costs FerretDB one scan of the
	// collection whatever its size, so larger batches rewrite faster. Default 5000.
	RewriteBatchSize int
	// AckWait, MaxDeliver and BackOff shape the consumer's redelivery.
	AckWait    time.Duration
	MaxDeliver int
	BackOff    []time.Duration
	// RetryMax is the longest wait between attempts while the database is unreachable.
	RetryMax time.Duration
	// Grace is how long a batch in hand may take after shutdown began.
	Grace time.Duration
	// Metrics, when set, receives the attack_etl_* counters of the loader.
	Metrics *ops.Metrics
}

func (o *Options) defaults() {
	if o.Stream == "" {
		o.Stream = bus.StreamFlat
	}
	if o.Durable == "" {
		o.Durable = "loader"
	}
	if o.BatchSize <= 0 {
		o.BatchSize = 500
	}
	if o.RewriteBatchSize <= 0 {
		o.RewriteBatchSize = max(5000, o.BatchSize)
	}
	if o.BatchWait <= 0 {
		o.BatchWait = time.Second
	}
	if o.AckWait <= 0 {
		o.AckWait = time.Minute
	}
	if o.MaxDeliver <= 0 {
		o.MaxDeliver = 10
	}
	if o.RetryMax <= 0 {
		o.RetryMax = 30 * time.Second
	}
	if o.Grace <= 0 {
		o.Grace = 20 * time.Second
	}
}

// Counters are what a consumer did so far.
type Counters struct {
	Messages, Documents, Batches, DeadLettered, Retries, Pruned int64
	Outcomes                                                    map[store.Outcome]int64
	// Conflicts counts documents that took the conflict path; Writes the guarded writes;
	// Swapped the replacements written by a bulk delete and insert.
	Conflicts, Writes, Swapped int64
}

// Consumer is one loader's view of the shared durable consumer.
type Consumer struct {
	js   jetstream.JetStream
	cons jetstream.Consumer
	w    Writer
	rec  Recorder
	log  *zap.Logger
	o    Options
	// ackWait is the consumer's effective ack wait (the first back-off when back-off is set).
	ackWait time.Duration

	// rewriting is set while the last batch's replacements were swapped in bulk; the next
	// fetch then asks for RewriteBatchSize messages.
	rewriting atomic.Bool

	mu sync.Mutex
	c  Counters
}

// ConsumerConfig returns the durable consumer's configuration.
func ConsumerConfig(o Options) jetstream.ConsumerConfig {
	o.defaults()
	return jetstream.ConsumerConfig{
		Durable:       o.Durable,
		Description:   "Loaders writing flattened documents to MongoDB; every replica shares it.",
		FilterSubject: bus.FlatFilter(),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       o.AckWait,
		MaxDeliver:    o.MaxDeliver,
		BackOff:       o.BackOff,
		MaxAckPending: max(20000, 4*o.BatchSize, 2*o.RewriteBatchSize),
		DeliverPolicy: jetstream.DeliverAllPolicy,
	}
}

// New creates or updates the durable consumer and returns a Consumer on it. rec may be nil.
func New(ctx context.Context, js jetstream.JetStream, w Writer, rec Recorder, log *zap.Logger,
	o Options) (*Consumer, error) {
	o.defaults()
	cons, err := js.CreateOrUpdateConsumer(ctx, o.Stream, ConsumerConfig(o))
	if err != nil {
		return nil, fmt.Errorf("create consumer %s on %s: %w", o.Durable, o.Stream, err)
	}
	ackWait := o.AckWait
	if info := cons.CachedInfo(); info != nil && info.Config.AckWait > 0 {
		ackWait = info.Config.AckWait
	}
	return &Consumer{js: js, cons: cons, w: w, rec: rec, log: log, o: o, ackWait: ackWait,
		c: Counters{Outcomes: map[store.Outcome]int64{}}}, nil
}

// Info returns the durable consumer's state (for the backlog gauges).
func (c *Consumer) Info(ctx context.Context) (*jetstream.ConsumerInfo, error) {
	info, err := c.cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("info of consumer %s: %w", c.o.Durable, err)
	}
	return info, nil
}

// Snapshot returns a copy of the counters.
func (c *Consumer) Snapshot() Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.c
	out.Outcomes = make(map[store.Outcome]int64, len(c.c.Outcomes))
	for k, v := range c.c.Outcomes {
		out.Outcomes[k] = v
	}
	return out
}

// Run fetches and handles batches until ctx ends; the batch in hand is then finished within
// the grace period, or left unacked for another loader. It returns nil on shutdown.
func (c *Consumer) Run(ctx context.Context) error {
	for ctx.Err() == nil {
		size := c.o.BatchSize
		if c.rewriting.Load() {
			size = c.o.RewriteBatchSize
		}
		batch, err := c.cons.Fetch(size, jetstream.FetchMaxWait(c.o.BatchWait))
		if err != nil {
			c.log.Warn("fetch from consumer failed; trying again", zap.String("consumer",
				c.o.Durable), zap.Error(err))
			sleep(ctx, time.Second)
			continue
		}
		var msgs []jetstream.Msg
		for m := range batch.Messages() {
			msgs = append(msgs, m)
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) &&
			!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, nats.ErrTimeout) {
			c.log.Debug("fetch ended early", zap.Error(err))
		}
		if len(msgs) > 0 {
			c.Handle(ctx, msgs)
		}
	}
	return nil
}

// Handle processes one batch of messages: control events, documents, acks.
func (c *Consumer) Handle(ctx context.Context, msgs []jetstream.Msg) {
	work, cancel := graceContext(ctx, c.o.Grace)
	defer cancel()
	stop := c.keepInProgress(work, msgs)
	defer stop()

	var (
		docs    []document.Document
		docMsgs []jetstream.Msg
		ctl     []jetstream.Msg
		entries []report.Entry
	)
	for _, m := range msgs {
		if isControl(m.Subject()) {
			ctl = append(ctl, m)
			continue
		}
		var d document.Document
		err := json.Unmarshal(m.Data(), &d)
		if err == nil && (d.ID == "" || d.Rev == "" || d.Type == "") {
			err = errors.New("document lacks _id, type or _rev")
		}
		// Only pruning flags a document; a replay keeps the stored lists and flag.
		d.Removed = nil
		d.Replayed = m.Headers().Get(bus.HeaderReplay) == "true"
		if err != nil {
			kind := bus.KindNotJSON
			if json.Valid(m.Data()) {
				kind = bus.KindInvalid
			}
			if c.deadLetter(work, m, kind, err.Error()) {
				entries = append(entries, entryOf(m, d, store.Failed, err.Error()))
			}
			continue
		}
		docs = append(docs, d)
		docMsgs = append(docMsgs, m)
	}
	c.count(func(k *Counters) {
		k.Messages += int64(len(msgs))
		k.Batches++
	})
	if m := c.o.Metrics; m != nil {
		m.BatchSize.WithLabelValues(Stage).Observe(float64(len(msgs)))
		for _, msg := range msgs {
			if md, err := msg.Metadata(); err == nil {
				m.ObserveDelivery(Stage, md.NumDelivered)
			}
		}
	}
	if len(docs) > 0 {
		t0 := time.Now()
		res, ok := c.write(ctx, work, docs)
		if !ok {
			return // shutting down during an outage: left unacked for another loader
		}
		if m := c.o.Metrics; m != nil {
			m.BatchDuration.WithLabelValues(Stage).Observe(time.Since(t0).Seconds())
		}
		entries = append(entries, c.settle(work, docMsgs, docs, res)...)
	}
	if c.rec != nil && len(entries) > 0 {
		if err := c.rec.Record(work, entries); err != nil {
			c.log.Warn("change report not recorded", zap.Int("entries", len(entries)),
				zap.String("error", config.RedactText(err.Error())))
		}
	}
	// Control events after the batch's documents, so a sync's last documents are in first.
	for _, m := range ctl {
		c.control(work, m)
	}
}

// write stores the documents, retrying with back-off while the database is unreachable. It
// returns false when shutdown began before the batch could be written.
func (c *Consumer) write(ctx, work context.Context, docs []document.Document) ([]store.Result,
	bool) {
	wait := min(500*time.Millisecond, c.o.RetryMax)
	start := time.Now()
	for attempt := 1; ; attempt++ {
		t0 := time.Now()
		res, st, err := c.w.Write(work, docs)
		if err == nil {
			c.rewriting.Store(st.Swapped > 0)
			c.count(func(k *Counters) {
				k.Conflicts += int64(st.Conflicts)
				k.Writes += int64(st.Writes)
				k.Swapped += int64(st.Swapped)
			})
			c.log.Debug("batch written", zap.Int("documents", len(docs)),
				zap.Int("inserted", st.Inserted), zap.Int("conflicts", st.Conflicts),
				zap.Int("swapped", st.Swapped), zap.Int("guarded_writes", st.Writes),
				zap.Int("lock_waits", st.LockWaits),
				zap.Duration("took", time.Since(t0)))
			if attempt > 1 {
				c.log.Info("MongoDB writes succeed again; batch written",
					zap.Int("documents", len(docs)), zap.Int("attempts", attempt),
					zap.Duration("took", time.Since(start)))
			}
			return res, true
		}
		if ctx.Err() != nil || work.Err() != nil {
			c.log.Warn("shutting down before the batch was written; left unacked",
				zap.Int("documents", len(docs)), zap.String("error", config.RedactText(err.Error())))
			return nil, false
		}
		pctx, cancel := context.WithTimeout(work, 5*time.Second)
		pingErr := c.w.Ping(pctx)
		cancel()
		if pingErr == nil && attempt >= 2 {
			// The database answers but the batch keeps failing: write the documents one by
			// one so that the failure is pinned on the documents that cause it.
			c.log.Warn("batch write keeps failing while MongoDB answers; writing one by one",
				zap.Int("documents", len(docs)), zap.String("error",
					config.RedactText(err.Error())))
			return c.writeEach(work, docs), true
		}
		c.count(func(k *Counters) { k.Retries++ })
		if m := c.o.Metrics; m != nil {
			m.Retries.WithLabelValues(Stage, "mongo_unreachable").Inc()
		}
		c.log.Warn("MongoDB write failed; retrying the batch, its messages stay unacked",
			zap.Int("attempt", attempt), zap.Duration("wait", wait),
			zap.Int("documents", len(docs)), zap.String("error", config.RedactText(err.Error())))
		if !sleep(ctx, wait) {
			c.log.Warn("shutting down during a MongoDB outage; batch left unacked",
				zap.Int("documents", len(docs)))
			return nil, false
		}
		wait = min(wait*2, c.o.RetryMax)
	}
}

func (c *Consumer) writeEach(ctx context.Context, docs []document.Document) []store.Result {
	out := make([]store.Result, len(docs))
	for i, d := range docs {
		res, _, err := c.w.Write(ctx, []document.Document{d})
		if err != nil {
			out[i] = store.Result{Outcome: store.Failed, Err: err}
			continue
		}
		out[i] = res[0]
	}
	return out
}

// settle acks what was written, and naks or dead-letters what failed. It returns the report
// entries of the documents that reached a final outcome.
func (c *Consumer) settle(ctx context.Context, msgs []jetstream.Msg, docs []document.Document,
	res []store.Result) []report.Entry {
	var entries []report.Entry
	for i, m := range msgs {
		r := res[i]
		if r.Err == nil {
			if err := m.Ack(); err != nil {
				c.log.Warn("ack failed; the message will be redelivered",
					zap.String("id", docs[i].ID), zap.Error(err))
			}
			entries = append(entries, entryOf(m, docs[i], r.Outcome, ""))
			c.count(func(k *Counters) {
				k.Documents++
				k.Outcomes[r.Outcome]++
			})
			if m := c.o.Metrics; m != nil {
				m.Loaded.WithLabelValues(string(r.Outcome)).Inc()
			}
			continue
		}
		delivered := uint64(1)
		if md, err := m.Metadata(); err == nil {
			delivered = md.NumDelivered
		}
		reason := config.RedactText(r.Err.Error())
		if int(delivered) >= c.o.MaxDeliver {
			if c.deadLetterKind(ctx, m, docs[i].ID, bus.KindExhausted, reason, delivered) {
				entries = append(entries, entryOf(m, docs[i], store.Failed, reason))
			}
			continue
		}
		delay := c.backoff(delivered)
		c.log.Warn("document not written; redelivering later", zap.String("id", docs[i].ID),
			zap.Uint64("delivery", delivered), zap.Duration("delay", delay),
			zap.String("error", reason))
		_ = m.NakWithDelay(delay)
	}
	return entries
}

// backoff is the redelivery delay after a failed delivery.
func (c *Consumer) backoff(delivered uint64) time.Duration {
	if n := len(c.o.BackOff); n > 0 {
		return c.o.BackOff[min(int(delivered)-1, n-1)]
	}
	d := time.Second << min(delivered, 6)
	return min(d, time.Minute)
}

func (c *Consumer) deadLetter(ctx context.Context, m jetstream.Msg, kind bus.Kind,
	reason string) bool {
	var delivered uint64
	if md, err := m.Metadata(); err == nil {
		delivered = md.NumDelivered
	}
	return c.deadLetterKind(ctx, m, m.Headers().Get(bus.HeaderStixID), kind, reason, delivered)
}

// deadLetterKind publishes a dead letter and then terminates the message; when the publish
// fails the message is left to be redelivered. It reports whether the message was settled.
func (c *Consumer) deadLetterKind(ctx context.Context, m jetstream.Msg, id string, kind bus.Kind,
	reason string, delivered uint64) bool {
	err := bus.PublishDeadLetter(ctx, c.js, bus.DeadLetter{Stage: Stage, Kind: kind,
		Reason: reason, Subject: m.Subject(), StixID: id, Deliveries: delivered,
		Header: m.Headers(), Body: m.Data()})
	if err != nil {
		c.log.Error("dead letter not stored; the message will be redelivered",
			zap.String("id", id), zap.Error(err))
		_ = m.NakWithDelay(c.backoff(delivered))
		return false
	}
	_ = m.Term()
	c.count(func(k *Counters) {
		k.DeadLettered++
		k.Outcomes[store.Failed]++
	})
	if mt := c.o.Metrics; mt != nil {
		mt.DeadLettered.WithLabelValues(Stage, string(kind)).Inc()
		mt.Loaded.WithLabelValues(string(store.Failed)).Inc()
	}
	c.log.Warn("message dead-lettered", zap.String("id", id), zap.String("kind", string(kind)),
		zap.String("subject", m.Subject()), zap.String("reason", reason))
	return true
}

// keepInProgress tells JetStream every third of the ack wait that the batch is still being
// worked on, until the returned function is called.
func (c *Consumer) keepInProgress(ctx context.Context, msgs []jetstream.Msg) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(max(c.ackWait/3, 100*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
			}
		}
	})
	return func() {
		close(done)
		wg.Wait()
	}
}

func (c *Consumer) count(f func(*Counters)) {
	c.mu.Lock()
	f(&c.c)
	c.mu.Unlock()
}

func entryOf(m jetstream.Msg, d document.Document, o store.Outcome, detail string) report.Entry {
	run := m.Headers().Get(bus.HeaderRunID)
	if run == "" {
		run = d.Provenance.RunID
	}
	coll := m.Headers().Get(bus.HeaderCollection)
	if coll == "" && len(d.Collections) > 0 {
		coll = d.Collections[0]
	}
	id := d.ID
	if id == "" {
		id = m.Headers().Get(bus.HeaderStixID)
	}
	if id == "" {
		if md, err := m.Metadata(); err == nil {
			id = fmt.Sprintf("seq:%d", md.Sequence.Stream)
		}
	}
	return report.Entry{RunID: run, Collection: coll, StixID: id, Outcome: string(o),
		Detail: detail}
}

// isControl reports whether a subject is a control event: stix.flat.<collection>._ctl.<event>.
func isControl(subject string) bool {
	t := strings.Split(subject, ".")
	return len(t) >= 5 && t[3] == "_ctl"
}

// graceContext returns a context that outlives ctx by grace, so that the batch in hand can be
// finished after shutdown began.
func graceContext(ctx context.Context, grace time.Duration) (context.Context,
	context.CancelFunc) {
	work, cancel := context.WithCancel(context.WithoutCancel(ctx))
	stop := context.AfterFunc(ctx, func() {
		t := time.AfterFunc(grace, cancel)
		context.AfterFunc(work, func() { t.Stop() })
	})
	return work, func() {
		stop()
		cancel()
	}
}

// sleep waits for d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
