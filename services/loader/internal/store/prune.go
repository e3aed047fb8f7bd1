package store

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// PruneResult says what Prune changed.
type PruneResult struct {
	// Checked is how many stored documents name the collection.
	Checked int
	// Flagged are the ids no collection serves any more: removed_from_source was set.
	Flagged []string
	// Detached are the ids that other collections still serve: only the collection's key was
	// taken out of their collections.
	Detached []string
}

// pruneChunk is how many ids one pruning statement names.
const pruneChunk = 200

// Prune handles the end of a full sync of one collection. served holds every id the sync
// served. A stored document that names the collection but was not served either loses the
// collection's key from its collections, when other collections still serve it, or, when the
// collection was its only one, is flagged with removed_from_source = at (and keeps its
// collections, so that it says where it came from). Documents are never deleted; a flagged
// document loses its flag when a collection serves it again.
//
// Each statement is a single update naming up to pruneChunk ids, safe on FerretDB.
func (s *Store) Prune(ctx context.Context, collection string, served map[string]struct{},
	at time.Time) (res PruneResult, retErr error) {
	cur, err := s.coll.Find(ctx, bson.D{{Key: "collections", Value: collection}},
		options.Find().SetProjection(bson.D{
			{Key: "collections", Value: 1}, {Key: FieldRemoved, Value: 1},
		}))
	if err != nil {
		return res, fmt.Errorf("list documents of %s: %w", collection, err)
	}
	var docs []stored
	if err := cur.All(ctx, &docs); err != nil {
		return res, fmt.Errorf("list documents of %s: %w", collection, err)
	}
	res.Checked = len(docs)
	for _, d := range docs {
		if _, ok := served[d.ID]; ok {
			continue
		}
		if len(d.Collections) > 1 {
			res.Detached = append(res.Detached, d.ID)
		} else if d.Removed == nil {
			res.Flagged = append(res.Flagged, d.ID)
		}
	}
	changed := slices.Concat(res.Detached, res.Flagged)
	if len(changed) == 0 {
		return res, nil
	}
	// Every store forgets its memory of these ids before and after the changes, so that none
	// skips a document pruning changed.
	if err := s.announce(ctx, changed); err != nil {
		return res, err
	}
	defer func() {
		if err := s.announce(context.WithoutCancel(ctx), changed); err != nil && retErr == nil {
			retErr = err
		}
	}()
	if s.locks == nil {
		return res, s.pruneIDs(ctx, collection, res.Detached, res.Flagged, at)
	}
	detached := make(map[string]bool, len(res.Detached))
	for _, id := range res.Detached {
		detached[id] = true
	}
	left, _, err := s.locks.withLocks(ctx, changed, func(taken []string) error {
		var det, flag []string
		for _, id := range taken {
			if detached[id] {
				det = append(det, id)
			} else {
				flag = append(flag, id)
			}
		}
		return s.pruneIDs(ctx, collection, det, flag, at)
	})
	if err != nil {
		return res, err
	}
	if len(left) > 0 {
		return res, fmt.Errorf("prune %s: %d documents: %w", collection, len(left), ErrLocked)
	}
	return res, nil
}

// pruneIDs takes the collection out of the detached documents and flags the flagged ones.
func (s *Store) pruneIDs(ctx context.Context, collection string, detached, flagged []string,
	at time.Time) error {
	for start := 0; start < len(detached); start += pruneChunk {
		ids := detached[start:min(start+pruneChunk, len(detached))]
		_, err := s.coll.UpdateMany(ctx,
			bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}}},
			bson.D{{Key: "$pull", Value: bson.D{{Key: "collections", Value: collection}}}})
		if err != nil {
			return fmt.Errorf("detach %d documents from %s: %w", len(ids), collection, err)
		}
	}
	for start := 0; start < len(flagged); start += pruneChunk {
		ids := flagged[start:min(start+pruneChunk, len(flagged))]
		// The collections condition leaves alone a document another collection took up
		// since it was listed.
		_, err := s.coll.UpdateMany(ctx,
			bson.D{
				{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
				{Key: "collections", Value: bson.A{collection}},
			},
			bson.D{{Key: "$set", Value: bson.D{{Key: FieldRemoved, Value: at}}}})
		if err != nil {
			return fmt.Errorf("flag %d documents of %s: %w", len(ids), collection, err)
		}
	}
	return nil
}
