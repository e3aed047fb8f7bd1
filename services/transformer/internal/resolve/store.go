// Package resolve completes flattened documents with what other objects say: the ATT&CK id,
// name and type of a relationship's ends, and the replacement of a revoked object. It keeps a
// summary of every object and a reverse index from each object to the relationships that name
// it, and re-emits a relationship (or a revoked object) when what it shows has changed, so that
// the result does not depend on the order in which objects arrive.
//
// The protocol: a relationship registers itself in the reverse index of both ends before it
// reads the ends' summaries; an object writes its summary before it reads its reverse index.
// Whichever of the two comes second sees the other, so the last document emitted for a
// relationship always shows the latest ends. The revoked-by link works the same way: the
// relationship writes the link before it reads the revoked object's summary, the object writes
// its summary before it reads the link.
package resolve

import (
	"time"

	"context"
	"errors"

	"github.com/nats-io/nats.go"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
)

// ErrNotFound means a raw message is not in the raw stream.
var ErrNotFound = errors.New("not found")

// Store keeps the summaries, the reverse index and the revoked-by links. Implementations must
// make each method atomic on its key, since several transformers may share one store.
type Store interface {
	// PutSummary stores an object's summary unless a newer one is stored, and adds its
	// collections to the stored ones. It reports whether what a relationship shows of the
	// object changed (a new object, or a newer version), and returns the stored summary.
	PutSummary(ctx context.Context, id string, s flatten.Summary) (flatten.Summary, bool, error)
	// Summary returns an object's summary, or nil when the object was never seen.
	Summary(ctx context.Context, id string) (*flatten.Summary, error)
	// AddRef adds a relationship reference ("collection/relationship-id") to an object's
	// reverse index.
	AddRef(ctx context.Context, id, ref string) error
	// Refs returns the relationship references of an object's reverse index.
	Refs(ctx context.Context, id string) ([]string, error)
	// PutRevokedBy stores the revoked-by link of an object unless a newer one is stored, and
	// reports whether it changed.
	PutRevokedBy(ctx context.Context, id string, rb flatten.RevokedBy) (bool, error)
	// RevokedBy returns the revoked-by link of an object, or nil when there is none.
	RevokedBy(ctx context.Context, id string) (*flatten.RevokedBy, error)
}

// RawMsg is a raw message: its subject, headers and the STIX object as the server sent it.
type RawMsg struct {
	Subject string
	Header  nats.Header
	Data    []byte
	// Redelivered says an earlier delivery may have stored its summary or link without
	// publishing what it re-emits: the re-emission is then done whatever the store says.
	Redelivered bool
	// Stored is when the raw stream stored the message; zero when unknown. A young
	// relationship whose ends are not known yet may be held (see Resolver.Hold).
	Stored time.Time
	// MoreToCome says the raw stream held messages not yet delivered to the transformer when
	// this one was: only then can holding it bring what it waits for.
	MoreToCome bool
}

// RawSource returns the latest raw message of an object in a collection, or ErrNotFound.
type RawSource interface {
	Raw(ctx context.Context, collection, id string) (RawMsg, error)
}
