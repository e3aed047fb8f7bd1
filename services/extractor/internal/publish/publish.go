// Package publish stores messages on JetStream asynchronously, with a bounded number in flight,
// and waits for every acknowledgement, counting what was stored, what JetStream dropped as a
// duplicate and what failed.
package publish

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// DefaultInFlight is the number of unacknowledged publishes allowed at once.
const DefaultInFlight = 512

// Result counts the outcome of a batch of publishes.
type Result struct {
	// Acked counts messages JetStream stored, Duplicates those it acknowledged as already held
	// (same Nats-Msg-Id within its duplicate window), Failed those it did not acknowledge.
	Acked, Duplicates, Failed int
	// Err joins the first few failures, nil when none failed.
	Err error
}

// Add adds another result's counts.
func (r *Result) Add(o Result) {
	r.Acked += o.Acked
	r.Duplicates += o.Duplicates
	r.Failed += o.Failed
	r.Err = errors.Join(r.Err, o.Err)
}

// Publisher publishes batches of messages. It is safe for concurrent use only when every
// caller's batches may share the in-flight budget.
type Publisher struct {
	js       jetstream.JetStream
	stream   string
	inFlight int
}

// New returns a Publisher of messages bound for stream (JetStream refuses a message whose
// subject belongs to another stream), allowing inFlight publishes at once (DefaultInFlight when
// 0).
func New(js jetstream.JetStream, stream string, inFlight int) *Publisher {
	if inFlight <= 0 {
		inFlight = DefaultInFlight
	}
	return &Publisher{js: js, stream: stream, inFlight: inFlight}
}

// maxErrs bounds the failures kept in Result.Err.
const maxErrs = 5

// PublishAll publishes msgs and returns when each was acknowledged or failed, or ctx ended (the
// messages still waiting count as failed). Messages carry their own Nats-Msg-Id header.
func (p *Publisher) PublishAll(ctx context.Context, msgs []*nats.Msg) Result {
	var res Result
	var errs []error
	fail := func(err error) {
		res.Failed++
		if len(errs) < maxErrs {
			errs = append(errs, err)
		}
	}
	window := make(chan jetstream.PubAckFuture, p.inFlight)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for f := range window {
			select {
			case ack := <-f.Ok():
				if ack.Duplicate {
					res.Duplicates++
				} else {
					res.Acked++
				}
			case err := <-f.Err():
				fail(fmt.Errorf("publish %s: %w", f.Msg().Subject, err))
			case <-ctx.Done():
				fail(fmt.Errorf("publish %s: %w", f.Msg().Subject, ctx.Err()))
			}
		}
	}()
	sent := 0
	var sendErrs []error
	for _, m := range msgs {
		if ctx.Err() != nil {
			break
		}
		f, err := p.js.PublishMsgAsync(m, jetstream.WithExpectStream(p.stream))
		if err != nil {
			sendErrs = append(sendErrs, fmt.Errorf("publish %s: %w", m.Subject, err))
			continue
		}
		sent++
		select {
		case window <- f:
		case <-ctx.Done():
		}
	}
	close(window)
	<-done
	for _, err := range sendErrs {
		fail(err)
	}
	if unsent := len(msgs) - sent - len(sendErrs); unsent > 0 {
		res.Failed += unsent
		errs = append(errs, fmt.Errorf("%d messages not sent: %w", unsent, ctx.Err()))
	}
	res.Err = errors.Join(errs...)
	return res
}
