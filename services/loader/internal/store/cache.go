package store

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/attack-etl/attack-etl/shared/document"
)

// known is the loader's memory of what is stored: for each id, the version, collections and
// domains last read or written. It is a lower bound of the truth, because a stored _rev only
// grows and collections and domains only grow, except when pruning takes a collection away or
// flags a document; pruning therefore bumps a generation in the meta collection, and a store
// that sees a new generation forgets everything.
//
// The memory only ever saves work: a document it says is already stored as well or better is
// not written ("unchanged" or "out of date"); a document it says is older is written with a
// compare-and-set on the remembered version, which re-reads when the memory was stale.
type known struct {
	mu sync.Mutex
	m  map[string]stored
	// seen holds the pruning events already applied; since is the latest event's time.
	seen  map[string]bool
	since time.Time
	// warmed is when the memory was last filled from the whole collection.
	warmed time.Time
}

// warmThreshold is how many conflicts in one batch make the store re-read the whole
// collection's versions instead of just the conflicting ids: on FerretDB both are one scan of
// the collection, and the whole read spares the batches that follow (another loader wrote
// most of what this one is asked to write, as in a re-run). warmEvery bounds how often.
const (
	warmThreshold = 100
	warmEvery     = 30 * time.Second
)

// shouldWarm reports whether a batch with n conflicts should re-read the whole collection.
func (s *Store) shouldWarm(n int) bool {
	if s.known == nil || n < warmThreshold {
		return false
	}
	s.known.mu.Lock()
	defer s.known.mu.Unlock()
	return time.Since(s.known.warmed) > warmEvery
}

var seq atomic.Uint64

func (k *known) get(id string) (stored, bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	v, ok := k.m[id]
	return v, ok
}

func (k *known) put(v stored) {
	k.mu.Lock()
	k.m[v.ID] = v
	k.mu.Unlock()
}

// stateOf is what is stored after a document was written.
func stateOf(d *document.Document) stored {
	v := stored{ID: d.ID, Rev: d.Rev, Collections: d.Collections, Domains: d.Domains,
		Version: d.Version, Revoked: d.Revoked, Deprecated: d.Deprecated}
	if d.Removed != nil {
		v.Removed = *d.Removed
	}
	return v
}

// remember records the state a plan left, when the store keeps a memory.
func (s *Store) remember(v stored) {
	if s.known != nil {
		s.known.put(v)
	}
}

// afterPlan is the stored state once a plan was applied.
func afterPlan(p plan) stored {
	switch {
	case p.insert:
		return stateOf(&p.g.doc)
	case p.replacement != nil:
		return stateOf(p.replacement)
	default:
		v := p.state
		v.Collections = document.SortedUnion(p.state.Collections, p.g.doc.Collections)
		v.Domains = document.SortedUnion(p.state.Domains, p.g.doc.Domains)
		v.Removed = nil
		return v
	}
}

// Warm loads the memory of what is stored with one read of the whole collection (about 1.7 s
// for 25k documents on FerretDB), so that a re-run of unchanged data writes nothing and reads
// nothing per batch. It returns how many documents it learnt. A store without memory
// (Options.NoMemory) does nothing.
func (s *Store) Warm(ctx context.Context) (int, error) {
	if s.known == nil {
		return 0, nil
	}
	if err := s.checkEvents(ctx); err != nil {
		return 0, err
	}
	all, err := s.readAll(ctx)
	if err != nil {
		return 0, err
	}
	s.known.mu.Lock()
	defer s.known.mu.Unlock()
	s.known.warmed = time.Now()
	for _, v := range all {
		s.known.m[v.ID] = v
	}
	return len(all), nil
}

// pruneEvent records the ids one pruning changed, so that every store forgets just those.
type pruneEvent struct {
	ID  string    `bson:"_id"`
	At  time.Time `bson:"at"`
	IDs []string  `bson:"ids"`
	// All is set when the ids were too many to list: every store forgets everything.
	All bool `bson:"all"`
}

// maxEventIDs is the most ids one pruning event lists.
const maxEventIDs = 20000

// eventLookback is how far back a store reads pruning events, beyond the last it saw, to
// allow for clocks that differ between loaders.
const eventLookback = 10 * time.Minute

// checkEvents forgets what pruning changed since the store last looked.
func (s *Store) checkEvents(ctx context.Context) error {
	s.known.mu.Lock()
	since := s.known.since
	s.known.mu.Unlock()
	cur, err := s.meta.Find(ctx, bson.D{{Key: "at", Value: bson.D{{Key: "$gte",
		Value: since.Add(-eventLookback)}}}})
	if err != nil {
		return fmt.Errorf("read pruning events: %w", err)
	}
	var evs []pruneEvent
	if err := cur.All(ctx, &evs); err != nil {
		return fmt.Errorf("read pruning events: %w", err)
	}
	s.known.mu.Lock()
	defer s.known.mu.Unlock()
	for _, ev := range evs {
		if s.known.seen[ev.ID] {
			continue
		}
		s.known.seen[ev.ID] = true
		if ev.All {
			s.known.m = map[string]stored{}
		}
		for _, id := range ev.IDs {
			delete(s.known.m, id)
		}
		if ev.At.After(s.known.since) {
			s.known.since = ev.At
		}
	}
	return nil
}

// announce records a pruning event naming the ids it changes.
func (s *Store) announce(ctx context.Context, ids []string) error {
	now := time.Now().UTC()
	ev := pruneEvent{ID: strconv.FormatInt(now.UnixNano(), 36) + "-" +
		strconv.FormatInt(int64(len(ids)), 36) + "-" + strconv.FormatUint(seq.Add(1), 36),
		At: now, IDs: ids}
	if len(ids) > maxEventIDs {
		ev.IDs, ev.All = nil, true
	}
	if _, err := s.meta.InsertOne(ctx, ev); err != nil {
		return fmt.Errorf("record pruning event: %w", err)
	}
	return nil
}
