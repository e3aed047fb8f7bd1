// Command loader writes the flattened documents of the STIX_FLAT stream to MongoDB: a durable
// pull consumer shared by every loader replica, version-guarded writes, acks only after MongoDB
// acknowledged, and a change report per run.
package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/pflag"

	"github.com/attack-etl/attack-etl/shared/service"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/loader/internal/consume"
	"github.com/attack-etl/attack-etl/services/loader/internal/report"
	"github.com/attack-etl/attack-etl/services/loader/internal/store"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "loader:", config.RedactText(err.Error()))
		os.Exit(1)
	}
}

// settings are the loader's parsed configuration.
type settings struct {
	mongoURI, db, coll string
	mode               store.Mode
	concurrency        int
	swapMin            int
	memory             bool
	consume            consume.Options
	progress           time.Duration
}

// atLeast returns an error naming the key when n is below least.
func atLeast(key string, n, least int) error {
	if n < least {
		return fmt.Errorf("%s is %d; it must be at least %d", key, n, least)
	}
	return nil
}

// swapOption turns LOADER_SWAP_MIN (0 is off) into store.Options.SwapMin (0 is the default).
func swapOption(n int) int {
	if n == 0 {
		return -1
	}
	return n
}

func readSettings(c *config.Values) (settings, error) {
	s := settings{mongoURI: c.String("MONGO_URI"), db: c.String("DB_NAME"),
		coll: c.String("COLLECTION_NAME")}
	var err error
	errs := func(e error) {
		if e != nil {
			err = errors.Join(err, e)
		}
	}
	var e error
	if e = store.CheckURI(s.mongoURI); e != nil {
		errs(fmt.Errorf("MONGO_URI %s: %w", config.RedactURL(s.mongoURI), e))
	}
	s.mode, e = store.ParseMode(c.String("LOADER_WRITE_MODE"))
	errs(e)
	s.concurrency, e = c.Int("LOADER_CONCURRENCY")
	errs(e)
	errs(atLeast("LOADER_CONCURRENCY", s.concurrency, 1))
	s.swapMin, e = c.Int("LOADER_SWAP_MIN")
	errs(e)
	errs(atLeast("LOADER_SWAP_MIN", s.swapMin, 0))
	s.memory, e = c.Bool("LOADER_MEMORY")
	errs(e)
	o := consume.Options{Stream: bus.StreamFlat, Durable: c.String("LOADER_DURABLE")}
	o.BatchSize, e = c.Int("LOADER_BATCH_SIZE")
	errs(e)
	errs(atLeast("LOADER_BATCH_SIZE", o.BatchSize, 1))
	o.RewriteBatchSize, e = c.Int("LOADER_REWRITE_BATCH_SIZE")
	errs(e)
	errs(atLeast("LOADER_REWRITE_BATCH_SIZE", o.RewriteBatchSize, 1))
	o.BatchWait, e = c.Duration("LOADER_BATCH_WAIT")
	errs(e)
	o.AckWait, e = c.Duration("LOADER_ACK_WAIT")
	errs(e)
	o.MaxDeliver, e = c.Int("LOADER_MAX_DELIVER")
	errs(e)
	o.RetryMax, e = c.Duration("LOADER_RETRY_MAX")
	errs(e)
	o.Grace, e = c.Duration("SHUTDOWN_GRACE")
	errs(e)
	for _, part := range c.Strings("LOADER_BACKOFF") {
		d, perr := time.ParseDuration(part)
		if perr != nil {
			errs(fmt.Errorf("LOADER_BACKOFF %q: %w", part, perr))
			continue
		}
		o.BackOff = append(o.BackOff, d)
	}
	if len(o.BackOff) >= o.MaxDeliver && o.MaxDeliver > 0 {
		errs(fmt.Errorf("LOADER_BACKOFF has %d delays; LOADER_MAX_DELIVER (%d) must be larger",
			len(o.BackOff), o.MaxDeliver))
	}
	s.progress, e = c.Duration("LOADER_PROGRESS_EVERY")
	errs(e)
	s.consume = o
	return s, err
}

func run(ctx context.Context, args []string) error {
	cfg, log, err := service.Setup("loader", config.Join(config.Common, config.NATS,
		config.Loader), args)
	if errors.Is(err, service.ErrHealthy) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	set, err := readSettings(cfg)
	if err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	log.Info("loader starting", zap.Any("settings", cfg.Redacted()))

	reg := ops.NewRegistry()
	metrics := ops.NewMetrics(reg)
	set.consume.Metrics = metrics
	var ready atomic.Pointer[ops.Check]
	opsSrv, err := ops.Serve(ctx, cfg.String("METRICS_ADDR"), reg, func(ctx context.Context) error {
		if c := ready.Load(); c != nil {
			return (*c)(ctx)
		}
		return errors.New("starting")
	})
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = opsSrv.Shutdown(stopCtx)
	}()
	if opsSrv.Enabled() {
		log.Info("serving metrics and health", zap.String("addr", opsSrv.Addr()))
	}

	st, err := openStore(ctx, log, set)
	if err != nil {
		return err
	}
	defer func() { _ = st.Close(context.Background()) }()
	rec := report.New(st.Database(), set.coll)
	if err := rec.EnsureIndexes(ctx); err != nil {
		log.Warn("change report index not created", zap.String("error",
			config.RedactText(err.Error())))
	}

	nc, err := bus.Connect(ctx, bus.OptionsFrom(cfg, "loader"), log)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	so, err := bus.StreamOptionsFrom(cfg)
	if err != nil {
		return err
	}
	if err := bus.EnsureStreams(ctx, js, so); err != nil {
		return err
	}
	cons, err := consume.New(ctx, js, st, rec, log, set.consume)
	if err != nil {
		return err
	}
	log.Info("consuming flattened documents", zap.String("stream", set.consume.Stream),
		zap.String("consumer", set.consume.Durable), zap.Int("batch_size", set.consume.BatchSize),
		zap.String("write_mode", string(st.Mode())))

	check := ops.AllOf(ops.NATSConnected(nc), st.Ping)
	ready.Store(&check)
	start := time.Now()
	done := make(chan struct{})
	go func() {
		defer close(done)
		progress(ctx, log, cons, set.progress, start)
	}()
	lagDone := make(chan struct{})
	go func() {
		defer close(lagDone)
		metrics.WatchConsumerLag(ctx, cons, 0, nil)
	}()
	err = cons.Run(ctx)
	opsSrv.MarkStopping()
	<-done
	<-lagDone
	summary(log, cons, rec, st, start)
	return err
}

// openStore connects to MongoDB, retrying with back-off until it answers or ctx ends, and
// creates the indexes. A malformed MONGO_URI was refused by readSettings before.
func openStore(ctx context.Context, log *zap.Logger, set settings) (*store.Store, error) {
	uri := config.RedactURL(set.mongoURI)
	wait := 500 * time.Millisecond
	var st *store.Store
	for attempt := 1; ; attempt++ {
		var err error
		st, err = store.Open(ctx, store.Options{URI: set.mongoURI, Database: set.db,
			Collection: set.coll, Mode: set.mode, Concurrency: set.concurrency,
			NoMemory: !set.memory, SwapMin: swapOption(set.swapMin)})
		if err == nil {
			break
		}
		if errors.Is(err, store.ErrBadMode) || errors.Is(err, store.ErrBadURI) {
			return nil, err
		}
		log.Warn("cannot reach MongoDB; retrying", zap.String("uri", uri),
			zap.Int("attempt", attempt), zap.Duration("wait", wait),
			zap.String("error", config.RedactText(err.Error())))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to MongoDB at %s: %w", uri, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, set.consume.RetryMax)
	}
	log.Info("connected to MongoDB", zap.String("uri", uri), zap.String("database", set.db),
		zap.String("collection", set.coll), zap.String("ferretdb", st.FerretDB()),
		zap.String("write_mode", string(st.Mode())))
	t0 := time.Now()
	rep, err := st.EnsureIndexes(ctx)
	if err != nil {
		_ = st.Close(context.Background())
		return nil, err
	}
	log.Info("indexes ready", zap.String("collection", set.coll),
		zap.Strings("indexes", rep.Created), zap.Duration("took", time.Since(t0)))
	if rep.TextSkipped {
		log.Info("text index skipped", zap.String("collection", set.coll),
			zap.String("reason", config.RedactText(rep.TextError)))
	}
	if set.memory {
		t0 = time.Now()
		n, err := st.Warm(ctx)
		if err != nil {
			log.Warn("stored versions not read; every write will ask MongoDB",
				zap.String("error", config.RedactText(err.Error())))
		} else {
			log.Info("stored versions read", zap.String("collection", set.coll),
				zap.Int("documents", n), zap.Duration("took", time.Since(t0)))
		}
	}
	return st, nil
}

func outcomeFields(m map[store.Outcome]int64) []zap.Field {
	var f []zap.Field
	for _, o := range store.Outcomes {
		if n := m[o]; n > 0 {
			f = append(f, zap.Int64(string(o), n))
		}
	}
	return f
}

func progress(ctx context.Context, log *zap.Logger, cons *consume.Consumer, every time.Duration,
	start time.Time) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	var last int64
	lastAt := start
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c := cons.Snapshot()
			if c.Messages == last {
				continue
			}
			rate := float64(c.Messages-last) / now.Sub(lastAt).Seconds()
			last, lastAt = c.Messages, now
			fields := []zap.Field{zap.Int64("messages", c.Messages),
				zap.Int64("documents", c.Documents), zap.Float64("per_second", rate),
				zap.Int64("batches", c.Batches), zap.Int64("conflicts", c.Conflicts),
				zap.Int64("guarded_writes", c.Writes), zap.Int64("swapped", c.Swapped),
				zap.Int64("dead_lettered", c.DeadLettered),
				zap.Int64("outage_retries", c.Retries)}
			log.Info("loading", append(fields, outcomeFields(c.Outcomes)...)...)
		}
	}
}

func summary(log *zap.Logger, cons *consume.Consumer, rec *report.Recorder, st *store.Store,
	start time.Time) {
	c := cons.Snapshot()
	took := time.Since(start)
	fields := []zap.Field{zap.Int64("messages", c.Messages), zap.Int64("documents", c.Documents),
		zap.Int64("written", c.Documents), zap.Int64("swapped", c.Swapped),
		zap.Int64("dead_lettered", c.DeadLettered), zap.Int64("pruned", c.Pruned),
		zap.Duration("took", took)}
	log.Info("loader stopped", append(fields, outcomeFields(c.Outcomes)...)...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	local := rec.Local()
	for _, run := range slices.Sorted(maps.Keys(local)) {
		f := []zap.Field{zap.String("run", run), zap.String("report",
			st.Database().Name()+"."+rec.RunsCollection())}
		for _, o := range slices.Sorted(maps.Keys(local[run])) {
			f = append(f, zap.Int64("this_loader_"+o, local[run][o]))
		}
		if r, err := rec.Get(ctx, run); err == nil {
			var parts []string
			for _, o := range store.Outcomes {
				parts = append(parts, fmt.Sprintf("%s=%d", o, r.Counts[string(o)]))
			}
			f = append(f, zap.String("all_loaders", strings.Join(parts, " ")))
		}
		log.Info("change report", f...)
	}
}
