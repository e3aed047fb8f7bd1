// Command transformer turns raw STIX objects from the STIX_RAW stream into flattened documents
// on the STIX_FLAT stream. With --replay it re-transforms every raw object kept in STIX_RAW and
// exits when it reached the end, without contacting any TAXII server.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/attack-etl/attack-etl/shared/service"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/transformer/internal/pipeline"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "transformer:", config.RedactText(err.Error()))
		os.Exit(1)
	}
}

// run wires the transformer: configuration, logging, NATS, streams, the resolver's store and
// the pipeline; it returns when ctx ends (live) or the replay is done.
func run(ctx context.Context, args []string) error {
	var replay bool
	cfg, log, err := service.Setup("transformer",
		config.Join(config.Common, config.NATS, config.Transformer), args,
		func(fs *pflag.FlagSet) {
			fs.BoolVar(&replay, "replay", false,
				"re-transform every raw object kept in STIX_RAW, publish the documents and exit")
		})
	if errors.Is(err, service.ErrHealthy) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	settings, err := settingsFrom(cfg)
	if err != nil {
		return err
	}
	log.Info("starting", zap.Bool("replay", replay), zap.Any("settings", cfg.Redacted()),
		zap.Int("schema_version", settings.schema))

	nc, err := bus.Connect(ctx, bus.OptionsFrom(cfg, "transformer"), log)
	if err != nil {
		return err
	}
	defer nc.Close()
	reg := ops.NewRegistry()
	settings.pipeline.Metrics = ops.NewMetrics(reg)
	opsSrv, err := ops.Serve(ctx, cfg.String("METRICS_ADDR"), reg, ops.NATSConnected(nc))
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
	go func() {
		<-ctx.Done()
		opsSrv.MarkStopping()
	}()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		return fmt.Errorf("open JetStream: %w", err)
	}
	if err := bus.EnsureStreams(ctx, js, settings.streams); err != nil {
		return err
	}
	store, err := resolve.OpenKV(ctx, js, settings.streams.Replicas)
	if err != nil {
		return err
	}
	raw, err := resolve.NewStreamRaw(ctx, js)
	if err != nil {
		return err
	}
	res := &resolve.Resolver{Store: store, Raw: raw, SchemaVersion: settings.schema,
		MaxBytes: settings.maxBytes}
	if !replay {
		res.Hold = settings.hold
	}
	if replay {
		start := time.Now()
		snap, err := resolve.NewSnapshot(ctx, store)
		if err != nil {
			return err
		}
		res.Store = snap
		log.Info("read the resolver's bucket for the replay", zap.String("bucket", resolve.Bucket),
			zap.Int("keys", snap.Len()), zap.Duration("took", time.Since(start)))
	}
	p := pipeline.New(js, res, settings.pipeline, log)

	if replay {
		err = p.Replay(ctx)
		logSummary(log, "replay done", p.Stats())
		if err != nil {
			return err
		}
		s := p.Stats()
		fmt.Printf("replay: %d raw objects, %d documents, %d dead-lettered in %s (%.0f objects/s)\n",
			s.Messages, s.Transformed+s.ReEmitted, s.DeadLettered, s.Took.Round(time.Millisecond),
			s.Rate())
		return nil
	}
	err = p.Run(ctx)
	logSummary(log, "stopped", p.Stats())
	return err
}

// settings are the parsed values main needs.
type settings struct {
	streams  bus.StreamOptions
	pipeline pipeline.Config
	schema   int
	maxBytes int
	hold     time.Duration
}

func settingsFrom(cfg *config.Values) (settings, error) {
	var s settings
	var err error
	if s.streams, err = bus.StreamOptionsFrom(cfg); err != nil {
		return s, err
	}
	if s.maxBytes, err = cfg.Int("MAX_OBJECT_BYTES"); err != nil {
		return s, err
	}
	s.pipeline.Durable = cfg.String("TRANSFORMER_DURABLE")
	if s.pipeline.BatchSize, err = cfg.Int("TRANSFORMER_BATCH_SIZE"); err != nil {
		return s, err
	}
	if s.pipeline.MaxDeliver, err = cfg.Int("TRANSFORMER_MAX_DELIVER"); err != nil {
		return s, err
	}
	if s.pipeline.AckWait, err = cfg.Duration("TRANSFORMER_ACK_WAIT"); err != nil {
		return s, err
	}
	if s.pipeline.Grace, err = cfg.Duration("SHUTDOWN_GRACE"); err != nil {
		return s, err
	}
	if s.hold, err = cfg.Duration("TRANSFORMER_HOLD_UNRESOLVED"); err != nil {
		return s, err
	}
	// A held relationship comes back after each delay; the hold is spread over the deliveries
	// the pipeline lets it use (all but the last two, which are kept for real failures).
	s.pipeline.HoldDelay = max(s.hold/time.Duration(max(s.pipeline.MaxDeliver-2, 1)), time.Second)
	s.schema = document.SchemaVersion
	if v := cfg.String("TRANSFORMER_SCHEMA_VERSION"); v != "" {
		if s.schema, err = strconv.Atoi(v); err != nil || s.schema < 1 || s.schema > 9999 {
			return s, fmt.Errorf("TRANSFORMER_SCHEMA_VERSION %q: want a number from 1 to 9999", v)
		}
	}
	return s, nil
}

func logSummary(log *zap.Logger, msg string, s pipeline.Snapshot) {
	log.Info(msg, zap.Int("messages", s.Messages), zap.Int("transformed", s.Transformed),
		zap.Any("per_type", s.PerType), zap.Int("re_emitted", s.ReEmitted),
		zap.Int("dead_lettered", s.DeadLettered), zap.Any("per_kind", s.PerKind),
		zap.Int("forwarded", s.Forwarded), zap.Int("retried", s.Retried),
		zap.Int("held", s.Held), zap.Duration("took", s.Took), zap.Float64("per_second", s.Rate()))
}
