package resolve

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/document"
)

// Stage is the dead-letter stage name of the transformer.
const Stage = "transformer"

// Resolver transforms raw messages into sealed documents, resolving what they need from other
// objects. It is safe for concurrent use when its Store and RawSource are.
type Resolver struct {
	Store Store
	Raw   RawSource
	// SchemaVersion goes to provenance and the rev.
	SchemaVersion int
	// MaxBytes rejects larger objects; 0 means no limit.
	MaxBytes int
	// Now returns the transformation time; time.Now when nil.
	Now func() time.Time
	// Hold is how long after it was stored a relationship with an unknown end waits for that
	// end instead of being published half resolved; 0 never waits. Pages have no referential
	// order, so on a first load many relationships come before their ends: holding them
	// makes the loader write each once, resolved, instead of inserting it and replacing it
	// moments later (a per-document update, the costliest write on FerretDB).
	Hold time.Duration
}

// Output is one document to publish.
type Output struct {
	Subject string
	// MsgID is the de-duplication id (Nats-Msg-Id).
	MsgID  string
	Header nats.Header
	Doc    *document.Document
	Body   []byte
}

// Result is what one raw message gives.
type Result struct {
	// Type is the object's STIX type, when known.
	Type string
	// Outputs holds the object's document first, then the documents re-emitted because of it.
	Outputs []Output
	// ReEmitted counts the re-emitted documents among Outputs.
	ReEmitted int
	// Dead is set when the object was rejected: publish it as a dead letter and ack.
	Dead *bus.DeadLetter
	// Held is set for a young relationship with an unknown end: publish nothing and let the
	// message come back later (the end's arrival re-emits it too).
	Held bool
}

// Process transforms one raw message. A rejected object gives a Result with Dead set and a nil
// error; an error means the store or the stream failed, and the message should be retried. A
// panic while transforming becomes a dead letter too.
func (r *Resolver) Process(ctx context.Context, m RawMsg) (res Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			res = Result{Dead: r.dead(m, bus.KindInvalid,
				fmt.Sprintf("transformer panic: %v\n%s", p, firstLines(debug.Stack(), 12)))}
			err = nil
		}
	}()
	return r.process(ctx, m, true)
}

func (r *Resolver) dead(m RawMsg, kind bus.Kind, reason string) *bus.DeadLetter {
	return &bus.DeadLetter{Stage: Stage, Kind: kind, Reason: reason, Subject: m.Subject,
		StixID: m.Header.Get(bus.HeaderStixID), Header: m.Header, Body: m.Data}
}

// collectionOf returns the collection key of a raw message: its header, else its subject.
func collectionOf(m RawMsg) string {
	if c := m.Header.Get(bus.HeaderCollection); c != "" {
		return c
	}
	if c, _, ok := bus.ParseRawSubject(m.Subject); ok {
		return c
	}
	return "_"
}

func (r *Resolver) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Resolver) process(ctx context.Context, m RawMsg, cascade bool) (Result, error) {
	coll := collectionOf(m)
	doc, err := flatten.Flatten(m.Data, flatten.Options{
		Collection: coll, Source: m.Header.Get(bus.HeaderSource),
		RunID: m.Header.Get(bus.HeaderRunID), SchemaVersion: r.SchemaVersion,
		MaxBytes: r.MaxBytes, Now: r.now(),
	})
	if err != nil {
		return Result{Dead: r.dead(m, flatten.KindOf(err), err.Error())}, nil
	}
	res := Result{Type: doc.Type}
	var derived string
	var reemit []target
	if doc.Type == "relationship" {
		var unresolved bool
		derived, reemit, unresolved, err = r.relationship(ctx, coll, doc, m.Redelivered)
		if err == nil && unresolved && r.holds(m) {
			return Result{Type: doc.Type, Held: true}, nil
		}
	} else {
		var waiting bool
		derived, reemit, waiting, err = r.object(ctx, doc, m.Redelivered)
		if err == nil && waiting && r.holds(m) {
			// Its re-emissions wait too: the redelivery, being one, makes them.
			return Result{Type: doc.Type, Held: true}, nil
		}
	}
	if err != nil {
		return Result{}, err
	}
	out, err := r.output(m, coll, doc, derived)
	if err != nil {
		return Result{}, err
	}
	res.Outputs = append(res.Outputs, out)
	if !cascade {
		return res, nil
	}
	for _, t := range reemit {
		raw, err := r.Raw.Raw(ctx, t.collection, t.id)
		if errors.Is(err, ErrNotFound) {
			continue // the object left the raw stream; nothing to re-emit
		}
		if err != nil {
			return Result{}, fmt.Errorf("re-emit %s of %s: %w", t.id, t.collection, err)
		}
		raw.MoreToCome = m.MoreToCome // what is still to come may complete it too
		sub, err := r.process(ctx, raw, false)
		if err != nil {
			return Result{}, fmt.Errorf("re-emit %s of %s: %w", t.id, t.collection, err)
		}
		if sub.Dead != nil || sub.Held {
			// Dead-lettered when it was first transformed, or still waiting for its other
			// end, whose arrival will re-emit it.
			continue
		}
		res.Outputs = append(res.Outputs, sub.Outputs...)
		res.ReEmitted += len(sub.Outputs)
	}
	return res, nil
}

// target names a raw message to re-transform.
type target struct{ collection, id string }

// relationship registers the relationship with its ends, then resolves them. A revoked-by
// relationship also stores the link, and asks to re-emit the revoked object when the link
// changed or force is set.
func (r *Resolver) relationship(ctx context.Context, coll string, d *document.Document,
	force bool) (derived string, reemit []target, unresolved bool, err error) {
	ref := coll + "/" + d.ID
	for _, end := range []string{d.SourceRef, d.TargetRef} {
		if err := r.Store.AddRef(ctx, end, ref); err != nil {
			return "", nil, false, err
		}
	}
	linkChanged := false
	if rb, ok := flatten.RevokedByOf(d); ok {
		if linkChanged, err = r.Store.PutRevokedBy(ctx, d.SourceRef, rb); err != nil {
			return "", nil, false, err
		}
		linkChanged = linkChanged || force
	}
	src, err := r.Store.Summary(ctx, d.SourceRef)
	if err != nil {
		return "", nil, false, err
	}
	tgt, err := r.Store.Summary(ctx, d.TargetRef)
	if err != nil {
		return "", nil, false, err
	}
	derived = flatten.ApplyEnds(d, src, tgt)
	if linkChanged && src != nil {
		for _, c := range src.Collections {
			reemit = append(reemit, target{c, d.SourceRef})
		}
	}
	return derived, reemit, src == nil || tgt == nil, nil
}

// holds reports whether a message waiting for another object (a relationship for an unknown
// end, a revoked object for its revoked-by link) may still wait for it.
func (r *Resolver) holds(m RawMsg) bool {
	return r.Hold > 0 && m.MoreToCome && !m.Stored.IsZero() && r.now().Sub(m.Stored) < r.Hold
}

// object stores the object's summary, then reads its revoked-by link; when the summary
// changed (or force says an earlier delivery may not have finished), it asks to re-emit every
// relationship that names the object.
func (r *Resolver) object(ctx context.Context, d *document.Document, force bool) (
	derived string, reemit []target, waiting bool, err error) {
	_, changed, err := r.Store.PutSummary(ctx, d.ID, flatten.SummaryOf(d))
	if err != nil {
		return "", nil, false, err
	}
	var rb *flatten.RevokedBy
	if d.Revoked { // only a revoked object shows its replacement
		if rb, err = r.Store.RevokedBy(ctx, d.ID); err != nil {
			return "", nil, false, err
		}
	}
	derived = flatten.ApplyRevokedBy(d, rb)
	waiting = d.Revoked && rb == nil
	if !changed && !force {
		return derived, nil, waiting, nil
	}
	refs, err := r.Store.Refs(ctx, d.ID)
	if err != nil {
		return "", nil, false, err
	}
	for _, ref := range refs {
		if c, id, ok := strings.Cut(ref, "/"); ok {
			reemit = append(reemit, target{c, id})
		}
	}
	return derived, reemit, waiting, nil
}

// output seals a document and wraps it for publishing.
func (r *Resolver) output(m RawMsg, coll string, d *document.Document, derived string) (
	Output, error) {
	if err := d.Seal(derived); err != nil {
		return Output{}, fmt.Errorf("seal %s: %w", d.ID, err)
	}
	body, err := json.Marshal(d)
	if err != nil {
		return Output{}, fmt.Errorf("encode %s: %w", d.ID, err)
	}
	h := nats.Header{}
	h.Set(bus.HeaderStixID, d.ID)
	h.Set(bus.HeaderStixType, d.Type)
	h.Set(bus.HeaderStixModified, d.STIXModified)
	h.Set(bus.HeaderCollection, coll)
	for _, k := range []string{bus.HeaderRunID, bus.HeaderSyncMode, bus.HeaderSource} {
		if v := m.Header.Get(k); v != "" {
			h.Set(k, v)
		}
	}
	return Output{Subject: bus.FlatSubject(coll, d.Type), MsgID: bus.FlatMsgID(coll, d.ID, d.Rev),
		Header: h, Doc: d, Body: body}, nil
}

func firstLines(b []byte, n int) string {
	lines := strings.SplitN(string(b), "\n", n+1)
	if len(lines) > n {
		lines = lines[:n]
	}
	return strings.Join(lines, "\n")
}
