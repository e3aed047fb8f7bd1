package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

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
	mu  sync.Mutex
	m   map[string]stored
	gen string
}

const metaPruneID = "prune"

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
	return stored{ID: d.ID, Rev: d.Rev, Collections: d.Collections, Domains: d.Domains,
		Version: d.Version, Revoked: d.Revoked, Deprecated: d.Deprecated}
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
	gen, err := s.pruneGen(ctx)
	if err != nil {
		return 0, err
	}
	cur, err := s.coll.Find(ctx, bson.D{}, options.Find().SetProjection(storedProjection))
	if err != nil {
		return 0, fmt.Errorf("read stored versions: %w", err)
	}
	var all []stored
	if err := cur.All(ctx, &all); err != nil {
		return 0, fmt.Errorf("read stored versions: %w", err)
	}
	s.known.mu.Lock()
	defer s.known.mu.Unlock()
	s.known.gen = gen
	for _, v := range all {
		s.known.m[v.ID] = v
	}
	return len(all), nil
}

// checkGen forgets the memory when pruning ran since it was filled.
func (s *Store) checkGen(ctx context.Context) error {
	gen, err := s.pruneGen(ctx)
	if err != nil {
		return err
	}
	s.known.mu.Lock()
	defer s.known.mu.Unlock()
	if gen != s.known.gen {
		s.known.m = map[string]stored{}
		s.known.gen = gen
	}
	return nil
}

func (s *Store) pruneGen(ctx context.Context) (string, error) {
	var meta struct {
		Gen string `bson:"gen"`
	}
	err := s.meta.FindOne(ctx, bson.D{{Key: "_id", Value: metaPruneID}}).Decode(&meta)
	if errors.Is(err, mongo.ErrNoDocuments) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read pruning generation: %w", err)
	}
	return meta.Gen, nil
}

// bumpGen tells every store that pruning changed documents.
func (s *Store) bumpGen(ctx context.Context, at time.Time) error {
	gen := strconv.FormatInt(time.Now().UnixNano(), 36) + "@" + at.Format(time.RFC3339Nano)
	_, err := s.meta.UpdateOne(ctx, bson.D{{Key: "_id", Value: metaPruneID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "gen", Value: gen}, {Key: "at", Value: at}}}},
		options.UpdateOne().SetUpsert(true))
	if err != nil {
		return fmt.Errorf("record pruning generation: %w", err)
	}
	return nil
}
