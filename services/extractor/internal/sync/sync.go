package sync

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/extractor/internal/publish"
	"github.com/attack-etl/attack-etl/services/extractor/internal/taxii"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/stix"
)

// Stage is the dead-letter stage name of the extractor.
const Stage = "extractor"

// Sync modes, as sent in the Sync-Mode header.
const (
	ModeFull        = "full"
	ModeIncremental = "incremental"
)

// ErrNotAcked means some objects of a collection were not acknowledged by JetStream.
var ErrNotAcked = errors.New("objects not acknowledged by JetStream")

// ErrStopped means the sync stopped after a page because Options.Stopping said so.
var ErrStopped = errors.New("stopped before the end of the collection")

// Page is one page of objects from a source.
type Page struct {
	// Number counts pages from 1.
	Number int
	// Objects are the objects exactly as the source sent them.
	Objects []json.RawMessage
	// DateAddedLast is the page's X-TAXII-Date-Added-Last header, "" when none.
	DateAddedLast string
}

// Pager reads a collection page by page, handing each page to fn and waiting for it before
// reading the next. addedAfter, when not empty, is the checkpoint the first request may send.
type Pager func(ctx context.Context, addedAfter string, fn func(Page) error) error

// Collection names a collection and where its objects come from.
type Collection struct {
	// Key is the subject-safe collection key (bus.CollectionKey).
	Key string
	// ID and Title are the TAXII collection's (or the bundle's).
	ID, Title string
	// Source is the API root URL without credentials, or the bundle path.
	Source string
	// CheckpointKey is the key of the collection's added_after checkpoint; empty for sources
	// without one (bundles).
	CheckpointKey string
	// Pages reads the objects.
	Pages Pager
}

// Options configures a Syncer.
type Options struct {
	// RunID names the run in headers and in the synced event.
	RunID string
	// Full re-reads collections whole, ignoring the checkpoint. Every run that reads a whole
	// collection (no added_after sent) ends, when every publish was acked, with a synced event.
	// collection with a synced event.
	Full bool
	// TrustAddedAfter lets the checkpoint be read and written.
	TrustAddedAfter bool
	// MaxObjectBytes is the largest object published; larger ones are dead-lettered.
	MaxObjectBytes int
	// Replicas is the replication factor of the buckets the syncer creates.
	Replicas int
	// Now returns the fetch time; nil means time.Now.
	Now func() time.Time
	// Stopping, when set, is asked after each page: true ends the sync with ErrStopped once
	// the page's publishes were acknowledged, so that a stop never abandons a page half-done.
	Stopping func() bool
}

// Events receives what a Syncer has to say; the caller logs it. Nil fields are skipped.
type Events struct {
	// Page is called after each page was published and acknowledged.
	Page func(c Collection, p PageStats)
	// Warn is called for something wrong that does not stop the collection.
	Warn func(c Collection, msg string, err error)
	// DeadLetter is called for each object dead-lettered.
	DeadLetter func(c Collection, kind bus.Kind)
}

// PageStats counts one page.
type PageStats struct {
	// Unchanged counts held and older versions.
	Number, Objects, New, Unchanged, Rejected int
	// Total is the number of objects served so far in the collection.
	Total int
}

// Stats counts one collection's sync.
type Stats struct {
	Key, ID, Title string
	// Mode is ModeFull or ModeIncremental.
	Mode string
	// Held is the number of objects the pipeline held before the run.
	Held int
	// Served counts objects the source sent; New those published; Unchanged those whose version
	// the pipeline holds; Older those older than the held version; Rejected those dead-lettered.
	Served, New, Unchanged, Older, Rejected int
	// Acked, Duplicates and Failed count the publishes' outcome.
	Acked, Duplicates, Failed int
	Pages                     int
	// AddedAfter is the checkpoint the run started from, Checkpoint the one it left.
	AddedAfter, Checkpoint string
	// Synced reports that the synced control event was published.
	Synced bool
	// HeldTook is the time spent learning what the pipeline holds, Took the whole sync's.
	HeldTook, Took time.Duration
}

// Syncer publishes the new versions of collections' objects.
type Syncer struct {
	js     jetstream.JetStream
	pub    *publish.Publisher
	cps    *Checkpoints
	opts   Options
	events Events
}

// New returns a Syncer. cps may be nil when no source has a checkpoint.
func New(js jetstream.JetStream, pub *publish.Publisher, cps *Checkpoints, o Options,
	ev Events) *Syncer {
	if o.Now == nil {
		o.Now = time.Now
	}
	return &Syncer{js: js, pub: pub, cps: cps, opts: o, events: ev}
}

func (s *Syncer) warn(c Collection, msg string, err error) {
	if s.events.Warn != nil {
		s.events.Warn(c, msg, err)
	}
}

// Sync reads one collection and publishes each object whose version the pipeline does not hold,
// one message per object, waiting for every ack page by page. It returns an error wrapping
// ErrNotAcked when some publishes failed, and the source's error when reading failed; the stats
// are filled in either case.
func (s *Syncer) Sync(ctx context.Context, c Collection) (st Stats, err error) {
	start := time.Now()
	st = Stats{Key: c.Key, ID: c.ID, Title: c.Title, Mode: ModeIncremental}
	defer func() { st.Took = time.Since(start) }()
	held, err := LoadHeld(ctx, s.js, c.Key)
	if err != nil {
		return st, err
	}
	st.Held = len(held)
	st.HeldTook = time.Since(start)
	useCP := s.opts.TrustAddedAfter && c.CheckpointKey != "" && s.cps != nil
	if useCP && !s.opts.Full && len(held) > 0 {
		if st.AddedAfter, err = s.cps.Get(ctx, c.CheckpointKey); err != nil {
			return st, err
		}
	}
	// A run that sends no added_after lists the whole collection: that is a full sync, whether
	// asked for (--full), forced by an empty stream, or the normal case on a server not trusted
	// with added_after (such as MITRE's).
	full := st.AddedAfter == ""
	if full {
		st.Mode = ModeFull
	}
	st.Checkpoint = st.AddedAfter
	// served lists every id served; kept those not published, as the pipeline held them.
	var served, kept []string
	seen := map[string]bool{}
	fetched := s.opts.Now().UTC().Format(time.RFC3339)
	var failures error
	readErr := c.Pages(ctx, st.AddedAfter, func(p Page) error {
		st.Pages++
		var msgs []*nats.Msg
		rejected, unchanged := 0, 0
		for _, raw := range p.Objects {
			st.Served++
			msg, out, id, err := s.message(ctx, c, raw, held, fetched, st.Mode)
			if err != nil {
				return err
			}
			if id != "" && !seen[id] {
				seen[id] = true
				served = append(served, id)
				if out == outUnchanged || out == outOlder {
					kept = append(kept, id)
				}
			}
			switch out {
			case outRejected:
				rejected++
			case outUnchanged:
				st.Unchanged++
				unchanged++
			case outOlder:
				st.Older++
				unchanged++
			case outNew:
				msgs = append(msgs, msg)
			}
		}
		st.Rejected += rejected
		res := s.pub.PublishAll(ctx, msgs)
		st.New += len(msgs)
		st.Acked += res.Acked
		st.Duplicates += res.Duplicates
		st.Failed += res.Failed
		if res.Failed > 0 {
			failures = errors.Join(failures, res.Err)
			// Publishing goes on with the next page, but the checkpoint stays where it is.
			useCP = false
		}
		if useCP && p.DateAddedLast != "" {
			if t, err := taxii.ParseDate(p.DateAddedLast); err != nil {
				s.warn(c, "X-TAXII-Date-Added-Last unreadable; checkpoint left alone", err)
			} else if err := s.cps.Put(ctx, c.CheckpointKey, taxii.FormatDate(t)); err != nil {
				return err
			} else {
				st.Checkpoint = taxii.FormatDate(t)
			}
		}
		if s.events.Page != nil {
			s.events.Page(c, PageStats{Number: p.Number, Objects: len(p.Objects),
				New: len(msgs), Unchanged: unchanged, Rejected: rejected, Total: st.Served})
		}
		if s.opts.Stopping != nil && s.opts.Stopping() {
			return ErrStopped
		}
		return nil
	})
	if readErr != nil {
		return st, errors.Join(readErr, failures)
	}
	if st.Failed > 0 {
		return st, fmt.Errorf("collection %s: %d %w: %w", c.Key, st.Failed, ErrNotAcked,
			failures)
	}
	if full {
		ev := SyncedEvent{RunID: s.opts.RunID, Collection: c.Key, CollectionID: c.ID}
		if err := PublishSynced(ctx, s.js, ev, served, kept, s.opts.Replicas); err != nil {
			return st, err
		}
		st.Synced = true
	}
	return st, nil
}

// outcome is what becomes of one served object.
type outcome int

const (
	// outNew: a version the pipeline does not hold; it is published.
	outNew outcome = iota
	// outUnchanged: the version the pipeline holds.
	outUnchanged
	// outOlder: older than the version the pipeline holds.
	outOlder
	// outRejected: dead-lettered.
	outRejected
)

// message decides what becomes of an object and, for a new version, builds its raw message.
// The id is returned whenever it could be read. An error means a dead letter could not be
// stored.
func (s *Syncer) message(ctx context.Context, c Collection, raw json.RawMessage, held Held,
	fetched, mode string) (*nats.Msg, outcome, string, error) {
	meta, perr := parseMeta(raw)
	if perr == nil && s.opts.MaxObjectBytes > 0 && len(raw) > s.opts.MaxObjectBytes {
		return nil, outRejected, meta.ID, s.deadLetter(ctx, c, meta.ID, bus.KindTooLarge,
			fmt.Sprintf("object %s is %d bytes, more than MAX_OBJECT_BYTES %d", meta.ID, len(raw),
				s.opts.MaxObjectBytes), raw)
	}
	if perr != nil {
		kind := bus.KindInvalid
		if errors.Is(perr, stix.ErrNotJSON) {
			kind = bus.KindNotJSON
		}
		return nil, outRejected, meta.ID, s.deadLetter(ctx, c, meta.ID, kind, perr.Error(), raw)
	}
	stamp := meta.VersionStamp()
	if !held.Newer(meta.ID, stamp) {
		if stix.CompareStamps(stamp, held[meta.ID]) < 0 {
			return nil, outOlder, meta.ID, nil
		}
		return nil, outUnchanged, meta.ID, nil
	}
	held[meta.ID] = stamp
	m := nats.NewMsg(bus.RawSubject(c.Key, meta.ID))
	m.Header.Set(jetstream.MsgIDHeader, bus.RawMsgID(c.Key, meta.ID, stamp))
	m.Header.Set(bus.HeaderStixID, meta.ID)
	m.Header.Set(bus.HeaderStixType, meta.Type)
	m.Header.Set(bus.HeaderStixModified, stamp)
	m.Header.Set(bus.HeaderCollection, c.Key)
	m.Header.Set(bus.HeaderCollectionID, c.ID)
	m.Header.Set(bus.HeaderCollectionTitle, c.Title)
	m.Header.Set(bus.HeaderSource, c.Source)
	m.Header.Set(bus.HeaderRunID, s.opts.RunID)
	m.Header.Set(bus.HeaderFetchedAt, fetched)
	m.Header.Set(bus.HeaderSyncMode, mode)
	m.Data = raw
	return m, outNew, meta.ID, nil
}

// deadLetterBodyMax bounds the body of a dead letter for an object too large to publish: its
// start is kept, the size is in the reason.
const deadLetterBodyMax = 64 << 10

func (s *Syncer) deadLetter(ctx context.Context, c Collection, id string, kind bus.Kind,
	reason string, raw []byte) error {
	body := raw
	hdr := nats.Header{}
	hdr.Set(bus.HeaderCollection, c.Key)
	hdr.Set(bus.HeaderCollectionID, c.ID)
	hdr.Set(bus.HeaderSource, c.Source)
	hdr.Set(bus.HeaderRunID, s.opts.RunID)
	if kind == bus.KindTooLarge {
		// TODO(extractor): keep the whole object (in an object store) instead of its start,
		// because a NATS message cannot carry it.
		body = raw[:min(len(raw), deadLetterBodyMax)]
		hdr.Set("Original-Size", strconv.Itoa(len(raw)))
	}
	err := bus.PublishDeadLetter(ctx, s.js, bus.DeadLetter{Stage: Stage, Kind: kind,
		Reason: reason, StixID: id, Header: hdr, Body: body})
	if err != nil {
		return fmt.Errorf("collection %s: %w", c.Key, err)
	}
	if s.events.DeadLetter != nil {
		s.events.DeadLetter(c, kind)
	}
	return nil
}
