// Package deadletters lists, counts and re-submits the messages that stages put on the
// dead-letter stream, so that an operator can see what failed and send it again after a fix.
package deadletters

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
)

// Filter selects dead letters.
type Filter struct {
	// Stage keeps the dead letters of one stage (extractor, transformer, loader).
	Stage string
	// Kind keeps the dead letters of one kind, such as invalid-object.
	Kind string
	// Limit is the most dead letters List prints.
	Limit int
}

func (f Filter) subject() string {
	if f.Stage == "" {
		return "stix.dlq.>"
	}
	return bus.DLQSubject(f.Stage)
}

func (f Filter) keep(m jetstream.Msg) bool {
	return f.Kind == "" || m.Headers().Get(bus.HeaderDLQKind) == f.Kind
}

// Store reads and writes the dead-letter stream.
type Store struct {
	nc  *nats.Conn
	js  jetstream.JetStream
	log *zap.Logger
}

// Open connects to the NATS server at natsURL, with the credentials and TLS settings of cfg,
// and makes sure the streams exist.
func Open(ctx context.Context, cfg *config.Values, natsURL string, log *zap.Logger) (*Store,
	error) {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	o := bus.OptionsFrom(cfg, "etlctl")
	o.URL = natsURL
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
	if err == nil {
		err = bus.EnsureStreams(ctx, js, so)
	}
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &Store{nc: nc, js: js, log: log}, nil
}

// Close closes the connection.
func (s *Store) Close() { s.nc.Close() }

// each calls fn for every dead letter the filter keeps, oldest first.
func (s *Store) each(ctx context.Context, f Filter, fn func(jetstream.Msg) error) error {
	stream, err := s.js.Stream(ctx, bus.StreamDLQ)
	if err != nil {
		return fmt.Errorf("stream %s: %w", bus.StreamDLQ, err)
	}
	info, err := stream.Info(ctx)
	if err != nil {
		return fmt.Errorf("stream %s: %w", bus.StreamDLQ, err)
	}
	if info.State.Msgs == 0 {
		return nil
	}
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{f.subject()}})
	if err != nil {
		return fmt.Errorf("read %s: %w", bus.StreamDLQ, err)
	}
	for {
		batch, err := cons.FetchNoWait(256)
		if err != nil {
			return fmt.Errorf("read %s: %w", bus.StreamDLQ, err)
		}
		n := 0
		var last jetstream.Msg
		for m := range batch.Messages() {
			n++
			last = m
			if f.keep(m) {
				if err := fn(m); err != nil {
					return err
				}
			}
		}
		if err := batch.Error(); err != nil && !errors.Is(err, nats.ErrTimeout) {
			return fmt.Errorf("read %s: %w", bus.StreamDLQ, err)
		}
		if n == 0 {
			return nil
		}
		if md, err := last.Metadata(); err == nil && md.NumPending == 0 {
			return nil
		}
	}
}

// List prints the dead letters the filter keeps, up to its limit.
func (s *Store) List(ctx context.Context, f Filter, w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tSTAGE\tKIND\tSTIX ID\tBYTES\tREASON")
	shown := 0
	errStop := errors.New("limit reached")
	err := s.each(ctx, f, func(m jetstream.Msg) error {
		if f.Limit > 0 && shown >= f.Limit {
			return errStop
		}
		md, _ := m.Metadata()
		h := m.Headers()
		var seq uint64
		var ts string
		if md != nil {
			seq, ts = md.Sequence.Stream, md.Timestamp.UTC().Format(time.RFC3339)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%d\t%s\n", seq, ts, h.Get(bus.HeaderDLQStage),
			h.Get(bus.HeaderDLQKind), orDash(h.Get(bus.HeaderStixID)), len(m.Data()),
			oneLine(h.Get(bus.HeaderDLQReason)))
		shown++
		return nil
	})
	if err != nil && !errors.Is(err, errStop) {
		return err
	}
	return tw.Flush()
}

// Count prints how many dead letters each stage and kind holds.
func (s *Store) Count(ctx context.Context, f Filter, w io.Writer) error {
	counts := map[string]int{}
	total := 0
	err := s.each(ctx, f, func(m jetstream.Msg) error {
		h := m.Headers()
		counts[h.Get(bus.HeaderDLQStage)+"\t"+h.Get(bus.HeaderDLQKind)]++
		total++
		return nil
	})
	if err != nil {
		return err
	}
	keys := make([]string, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STAGE\tKIND\tCOUNT")
	for _, k := range keys {
		fmt.Fprintf(tw, "%s\t%d\n", k, counts[k])
	}
	fmt.Fprintf(tw, "total\t\t%d\n", total)
	return tw.Flush()
}

// Resubmit publishes each kept dead letter again to the subject it came from (a raw object of
// the extractor goes to its raw subject) and removes it from the dead-letter stream once the
// publish was acknowledged.
func (s *Store) Resubmit(ctx context.Context, f Filter, w io.Writer) error {
	stream, err := s.js.Stream(ctx, bus.StreamDLQ)
	if err != nil {
		return fmt.Errorf("stream %s: %w", bus.StreamDLQ, err)
	}
	sent, skipped := 0, 0
	err = s.each(ctx, f, func(m jetstream.Msg) error {
		h := m.Headers()
		subject := h.Get(bus.HeaderDLQSubject)
		if subject == "" && h.Get(bus.HeaderStixID) != "" && h.Get(bus.HeaderCollection) != "" {
			subject = bus.RawSubject(h.Get(bus.HeaderCollection), h.Get(bus.HeaderStixID))
		}
		md, err := m.Metadata()
		if subject == "" || err != nil {
			skipped++
			s.log.Warn("dead letter has no subject to go back to; left in place",
				zap.String("kind", h.Get(bus.HeaderDLQKind)))
			return nil
		}
		out := nats.NewMsg(subject)
		for k, vs := range h {
			if strings.HasPrefix(k, "Dlq-") {
				continue
			}
			out.Header[k] = vs
		}
		out.Data = m.Data()
		if _, err := s.js.PublishMsg(ctx, out); err != nil {
			return fmt.Errorf("resubmit dead letter %d to %s: %w", md.Sequence.Stream, subject, err)
		}
		if err := stream.DeleteMsg(ctx, md.Sequence.Stream); err != nil {
			return fmt.Errorf("remove resubmitted dead letter %d: %w", md.Sequence.Stream, err)
		}
		sent++
		return nil
	})
	fmt.Fprintf(w, "resubmitted %d dead letters; %d left in place\n", sent, skipped)
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > 120 {
		s = s[:117] + "..."
	}
	return s
}
