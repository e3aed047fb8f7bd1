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

// stallAfter is how long the documents waiting for the loaders may stay as many before the
// progress line quotes the loaders' last warnings.
const stallAfter = 20 * time.Second

// waitFlatDrained waits until the loaders' durable consumer has delivered, and seen acked,
// every flattened document (bus.FlatBacklog), which happens only when MongoDB took them all.
// When the count does not move for stallAfter, the progress line adds what stalled returns (the
// loaders' last warnings), so that a run whose loaders cannot write says why.
func (w *watcher) waitFlatDrained(ctx context.Context, alive func() error,
	durable string, stalled func() string) error {
	last, since := uint64(0), time.Now()
	return w.pollDone(ctx, alive, func(ctx context.Context) (bool, string, error) {
		n, err := bus.FlatBacklog(ctx, w.js, durable)
		if err != nil {
			return false, "consumer " + durable + " not created yet", err
		}
		progress := fmt.Sprintf("%s: %d documents waiting for %s", bus.StreamFlat, n, durable)
		if n != last {
			last, since = n, time.Now()
		} else if n > 0 && time.Since(since) > stallAfter {
			if why := stalled(); why != "" {
				progress += fmt.Sprintf("; none written for %s; %s",
					time.Since(since).Round(time.Second), why)
			}
		}
		return n == 0, progress, nil
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
