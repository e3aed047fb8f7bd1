package runner

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
)

// watcher follows the pipeline's progress through JetStream's consumer and stream state.
type watcher struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	log *zap.Logger
}

func newWatcher(ctx context.Context, url string, cfg *config.Values,
	log *zap.Logger) (*watcher, error) {
	o := bus.OptionsFrom(cfg, "etlctl")
	o.URL = url
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	nc, err := bus.Connect(cctx, o, log)
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	so, err := bus.StreamOptionsFrom(cfg)
	if err != nil {
		nc.Close()
		return nil, err
	}
	if err := bus.EnsureStreams(ctx, js, so); err != nil {
		nc.Close()
		return nil, err
	}
	return &watcher{nc: nc, js: js, log: log}, nil
}

func (w *watcher) close() { w.nc.Close() }

// pollDone polls cond every half second until it reports done twice in a row, alive reports a
// dead stage, or ctx ends. It logs progress every ten seconds.
func (w *watcher) pollDone(ctx context.Context, alive func() error,
	cond func(context.Context) (bool, string, error)) error {
	streak := 0
	lastLog := time.Now()
	for {
		if err := alive(); err != nil {
			return err
		}
		done, progress, err := cond(ctx)
		if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
			return err
		}
		if done {
			streak++
			if streak >= 2 {
				return nil
			}
		} else {
			streak = 0
		}
		if time.Since(lastLog) > 10*time.Second {
			w.log.Info("waiting", zap.String("progress", progress))
			lastLog = time.Now()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// waitConsumerDrained waits until the durable consumer on the raw stream has nothing pending
// and nothing unacknowledged.
func (w *watcher) waitConsumerDrained(ctx context.Context, alive func() error,
	durable string) error {
	return w.pollDone(ctx, alive, func(ctx context.Context) (bool, string, error) {
		c, err := w.js.Consumer(ctx, bus.StreamRaw, durable)
		if err != nil {
			return false, "consumer " + durable + " not created yet", err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return false, "", fmt.Errorf("consumer %s: %w", durable, err)
		}
		return info.NumPending == 0 && info.NumAckPending == 0,
			fmt.Sprintf("%s: %d pending, %d unacked", durable, info.NumPending,
				info.NumAckPending), nil
	})
}

// waitFlatDrained waits until the work-queue stream of flattened documents is empty, which
// happens only when a loader acked every document after MongoDB took it.
//
// TODO(etlctl): when every loader keeps failing (MongoDB unreachable, a wrong URI), this waits
// until ETL_RUN_TIMEOUT with only a count of waiting documents, because the loaders' reasons
// are in their own logs; the run should read the loaders' readiness or last error and say it.
func (w *watcher) waitFlatDrained(ctx context.Context, alive func() error,
	durable string) error {
	return w.pollDone(ctx, alive, func(ctx context.Context) (bool, string, error) {
		s, err := w.js.Stream(ctx, bus.StreamFlat)
		if err != nil {
			return false, "", fmt.Errorf("stream %s: %w", bus.StreamFlat, err)
		}
		info, err := s.Info(ctx)
		if err != nil {
			return false, "", fmt.Errorf("stream %s: %w", bus.StreamFlat, err)
		}
		return info.State.Msgs == 0, fmt.Sprintf("%s: %d documents waiting for %s",
			bus.StreamFlat, info.State.Msgs, durable), nil
	})
}

// deadLetters returns how many messages the dead-letter stream holds.
func (w *watcher) deadLetters(ctx context.Context) (uint64, error) {
	s, err := w.js.Stream(ctx, bus.StreamDLQ)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", bus.StreamDLQ, err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("stream %s: %w", bus.StreamDLQ, err)
	}
	return info.State.Msgs, nil
}
