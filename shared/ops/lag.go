package ops

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// ConsumerInfoer is the part of jetstream.Consumer the lag poller uses.
type ConsumerInfoer interface {
	Info(ctx context.Context) (*jetstream.ConsumerInfo, error)
}

// DefaultLagInterval is how often WatchConsumerLag polls when given no interval.
const DefaultLagInterval = 5 * time.Second

// WatchConsumerLag sets ConsumerPending and ConsumerAckPending from the consumer's info now and
// then every interval, until ctx is done. It blocks: run it in its own goroutine. A failed poll
// leaves the gauges as they were and is passed to onErr (which may be nil); the next poll tries
// again.
func (m *Metrics) WatchConsumerLag(ctx context.Context, c ConsumerInfoer, every time.Duration,
	onErr func(error)) {
	if every <= 0 {
		every = DefaultLagInterval
	}
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		if err := m.PollConsumerLag(ctx, c, every); err != nil && onErr != nil &&
			ctx.Err() == nil {
			onErr(err)
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// PollConsumerLag reads the consumer's info once, waiting at most timeout, and sets the gauges
// labelled with its stream and name.
func (m *Metrics) PollConsumerLag(ctx context.Context, c ConsumerInfoer,
	timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	info, err := c.Info(ctx)
	if err != nil {
		return fmt.Errorf("consumer info for lag: %w", err)
	}
	m.ConsumerPending.WithLabelValues(info.Stream, info.Name).Set(float64(info.NumPending))
	m.ConsumerAckPending.WithLabelValues(info.Stream, info.Name).Set(float64(info.NumAckPending))
	return nil
}
