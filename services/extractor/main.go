// Command extractor reads every STIX object of a TAXII 2.1 server (or of STIX bundle files) and
// publishes each new version, unchanged, to the JetStream raw stream.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/attack-etl/attack-etl/shared/service"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/extractor/internal/publish"
	"github.com/attack-etl/attack-etl/services/extractor/internal/sync"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := Main(ctx, os.Args[1:])
	stop()
	// A stop signal that let the page in hand finish is a clean stop: the next run goes on
	// from what the stream holds.
	if errors.Is(err, pflag.ErrHelp) || errors.Is(err, sync.ErrStopped) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "extractor:", config.RedactText(err.Error()))
		os.Exit(1)
	}
}

// Keys returns the configuration keys the extractor reads.
func Keys() []config.Key { return config.Join(config.Common, config.NATS, config.Extractor) }

// version is the build's version, set by the linker (-X main.version=...).
var version = "dev"

// settings are the extractor's parsed settings.
type settings struct {
	cfg   *config.Values
	full  bool
	watch time.Duration
}

// loadSettings reads the configuration, with --full and --watch as short forms of EXTRACT_FULL
// and EXTRACT_WATCH.
// It returns service.ErrHealthy after a successful --healthcheck.
func loadSettings(args []string) (*settings, *zap.Logger, error) {
	var full bool
	var watch string
	cfg, log, err := service.Setup("extractor", Keys(), args, func(fs *pflag.FlagSet) {
		fs.BoolVar(&full, "full", false,
			"Re-read every collection whole, ignoring checkpoints (same as EXTRACT_FULL=true).")
		fs.StringVar(&watch, "watch", "",
			"Keep polling, waiting this interval (such as 6h) between runs (same as EXTRACT_WATCH).")
	})
	if err != nil {
		return nil, nil, err
	}
	s := &settings{cfg: cfg, full: full}
	if !full {
		if s.full, err = cfg.Bool("EXTRACT_FULL"); err != nil {
			return nil, nil, err
		}
	}
	if watch != "" {
		if s.watch, err = time.ParseDuration(watch); err != nil {
			return nil, nil, fmt.Errorf("--watch %q is not a duration (such as 6h): %w", watch,
				err)
		}
	} else if s.watch, err = cfg.Duration("EXTRACT_WATCH"); err != nil {
		return nil, nil, err
	}
	return s, log, nil
}

// Main runs the extractor with command-line arguments args until the run (or, in watch mode,
// ctx) ends. It returns an error unless every object was acknowledged by JetStream. When ctx
// ends during a run, the page in hand is finished (its acks awaited) within SHUTDOWN_GRACE.
func Main(ctx context.Context, args []string) error {
	s, log, err := loadSettings(args)
	if errors.Is(err, service.ErrHealthy) {
		return nil
	}
	if err != nil {
		return err
	}
	cfg := s.cfg
	defer func() { _ = log.Sync() }()
	log.Info("extractor starting", zap.String("version", version),
		zap.Any("settings", cfg.Redacted()), zap.Bool("full", s.full),
		zap.Duration("watch", s.watch))

	grace, err := cfg.Duration("SHUTDOWN_GRACE")
	if err != nil {
		return err
	}
	reg := ops.NewRegistry()
	metrics := ops.NewMetrics(reg)
	src, err := newSource(cfg, log, metrics)
	if err != nil {
		return err
	}
	maxObj, err := cfg.Int("MAX_OBJECT_BYTES")
	if err != nil {
		return err
	}
	trust, err := cfg.Bool("TAXII_TRUST_ADDED_AFTER")
	if err != nil {
		return err
	}
	sopts, err := bus.StreamOptionsFrom(cfg)
	if err != nil {
		return err
	}

	// work outlives a stop signal by SHUTDOWN_GRACE, so that the page in hand is finished.
	work, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	go func() {
		select {
		case <-ctx.Done():
		case <-work.Done():
			return
		}
		t := time.NewTimer(grace)
		defer t.Stop()
		select {
		case <-t.C:
			log.Warn("shutdown grace over; abandoning the page in hand",
				zap.Duration("grace", grace))
			stopWork()
		case <-work.Done():
		}
	}()

	// Ready once connected to NATS; the connection is made after the server starts, so that
	// /healthz answers while the first connection is retried.
	var conn atomic.Pointer[nats.Conn]
	opsSrv, err := ops.Serve(ctx, cfg.String("METRICS_ADDR"), reg,
		func(c context.Context) error { return ops.NATSConnected(conn.Load())(c) })
	if err != nil {
		return err
	}
	defer func() {
		opsSrv.MarkStopping()
		stop, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = opsSrv.Shutdown(stop)
	}()
	if opsSrv.Enabled() {
		log.Info("serving /metrics, /healthz and /readyz", zap.String("addr", opsSrv.Addr()))
	}

	nc, err := bus.Connect(ctx, bus.OptionsFrom(cfg, "extractor"), log)
	if err != nil {
		return err
	}
	conn.Store(nc)
	// A message carries headers beside the object: keep 16 KiB of the server's payload limit
	// for them, so that an object that passes MAX_OBJECT_BYTES is never refused by NATS.
	if limit := int(nc.MaxPayload()) - 16<<10; maxObj > limit {
		log.Warn("MAX_OBJECT_BYTES exceeds what the NATS server accepts; lowered",
			zap.Int("max_object_bytes", maxObj), zap.Int("lowered_to", limit),
			zap.Int64("nats_max_payload", nc.MaxPayload()))
		maxObj = limit
	}
	defer func() {
		// A deliberate close is no disconnection worth a warning.
		nc.SetDisconnectErrHandler(nil)
		nc.Close()
	}()
	// An ack that never comes (a server lost mid-publish) fails its message after a minute
	// instead of hanging the run.
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(publish.DefaultInFlight*2),
		jetstream.WithPublishAsyncTimeout(time.Minute))
	if err != nil {
		return fmt.Errorf("JetStream: %w", err)
	}
	if err := bus.EnsureStreams(work, js, sopts); err != nil {
		return err
	}
	var cps *sync.Checkpoints
	if trust && src.checkpoints() {
		if cps, err = sync.OpenCheckpoints(work, js, sopts.Replicas); err != nil {
			return err
		}
	}
	pub := publish.New(js, bus.StreamRaw, publish.DefaultInFlight)
	stopping := func() bool { return ctx.Err() != nil }

	for {
		o := sync.Options{RunID: newRunID(), Full: s.full, TrustAddedAfter: trust,
			MaxObjectBytes: maxObj, Replicas: sopts.Replicas, Stopping: stopping}
		syncer := sync.New(js, pub, cps, o, events(log, metrics))
		err := runOnce(work, log, src, syncer, o.RunID, metrics)
		if ctx.Err() != nil {
			log.Info("extractor stopping", zap.String("why", ctx.Err().Error()))
			if s.watch > 0 && errors.Is(err, sync.ErrStopped) {
				return nil
			}
			return err
		}
		if s.watch <= 0 {
			return err
		}
		if err != nil {
			log.Error("run failed; trying again at the next interval",
				zap.String("error", config.RedactText(err.Error())), zap.Duration("wait", s.watch))
		}
		log.Info("waiting for the next run", zap.Duration("wait", s.watch))
		select {
		case <-ctx.Done():
			log.Info("extractor stopping", zap.String("why", ctx.Err().Error()))
			return nil
		case <-time.After(s.watch):
		}
	}
}

// runOnce syncs every collection of the source once and logs the run's summary.
func runOnce(ctx context.Context, log *zap.Logger, src origin, syncer *sync.Syncer,
	runID string, m *ops.Metrics) error {
	start := time.Now()
	reqs0 := src.requests()
	log.Info("run starting", zap.String("run_id", runID), zap.String("source", src.name()))
	cols, info, err := src.collections(ctx)
	if err != nil {
		return fmt.Errorf("list collections of %s: %w", src.name(), err)
	}
	var tot sync.Stats
	var errs []error
	for _, c := range cols {
		r0 := src.requests()
		st, err := syncer.Sync(ctx, c)
		fields := []zap.Field{
			zap.String("collection", c.Key), zap.String("collection_id", c.ID),
			zap.String("title", c.Title), zap.String("mode", st.Mode), zap.Int("held", st.Held),
			zap.Int("served", st.Served), zap.Int("new", st.New),
			zap.Int("unchanged", st.Unchanged), zap.Int("older", st.Older),
			zap.Int("rejected", st.Rejected), zap.Int("acked", st.Acked),
			zap.Int("duplicates", st.Duplicates), zap.Int("failed", st.Failed),
			zap.Int("pages", st.Pages), zap.Int64("requests", src.requests()-r0),
			zap.Bool("synced_event", st.Synced), zap.Duration("held_took", st.HeldTook),
			zap.Duration("took", st.Took),
		}
		if st.AddedAfter != "" || st.Checkpoint != "" {
			fields = append(fields, zap.String("added_after", st.AddedAfter),
				zap.String("checkpoint", st.Checkpoint))
		}
		if errors.Is(err, sync.ErrStopped) {
			log.Info("collection stopped after the page in hand", fields...)
			errs = append(errs, fmt.Errorf("collection %s: %w", c.Key, err))
			break
		}
		if err != nil {
			log.Error("collection failed", append(fields,
				zap.String("error", config.RedactText(err.Error())))...)
			errs = append(errs, fmt.Errorf("collection %s: %w", c.Key, err))
			if ctx.Err() != nil {
				break
			}
			continue
		}
		log.Info("collection synced", fields...)
		m.LastSync.WithLabelValues(c.Key).SetToCurrentTime()
		tot.Served += st.Served
		tot.New += st.New
		tot.Unchanged += st.Unchanged
		tot.Older += st.Older
		tot.Rejected += st.Rejected
		tot.Acked += st.Acked
		tot.Duplicates += st.Duplicates
	}
	log.Info("run finished", zap.String("run_id", runID), zap.String("source", src.name()),
		zap.Strings("api_roots", info.roots), zap.Strings("releases", info.releases),
		zap.Int("collections", len(cols)), zap.Int64("requests", src.requests()-reqs0),
		zap.Int("served", tot.Served), zap.Int("new", tot.New),
		zap.Int("unchanged", tot.Unchanged), zap.Int("older", tot.Older),
		zap.Int("rejected", tot.Rejected), zap.Int("acked", tot.Acked),
		zap.Int("duplicates", tot.Duplicates), zap.Int("failed_collections", len(errs)),
		zap.Duration("took", time.Since(start)))
	return errors.Join(errs...)
}

// events turns the syncer's events into log lines and metrics.
func events(log *zap.Logger, m *ops.Metrics) sync.Events {
	return sync.Events{
		Page: func(c sync.Collection, p sync.PageStats) {
			log.Info("page published", zap.String("collection", c.Key), zap.Int("page", p.Number),
				zap.Int("objects", p.Objects), zap.Int("new", p.New), zap.Int("total", p.Total))
			m.Fetched.WithLabelValues(c.Key).Add(float64(p.Objects))
			m.Published.WithLabelValues(c.Key, ops.OutcomeNew).Add(float64(p.New))
			m.Published.WithLabelValues(c.Key, ops.OutcomeUnchanged).Add(float64(p.Unchanged))
			m.Published.WithLabelValues(c.Key, ops.OutcomeRejected).Add(float64(p.Rejected))
		},
		Warn: func(c sync.Collection, msg string, err error) {
			log.Warn(msg, zap.String("collection", c.Key),
				zap.String("error", config.RedactText(err.Error())))
		},
		DeadLetter: func(c sync.Collection, kind bus.Kind) {
			m.DeadLettered.WithLabelValues(sync.Stage, string(kind)).Inc()
		},
	}
}

// newRunID returns a new run id: the UTC time and 6 random hex digits.
func newRunID() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}
