package store

import (
	"context"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/attack-etl/attack-etl/shared/document"
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
	// Restored are the ids the sync served again, unchanged, after an earlier full sync had
	// detached or flagged them: the collection's key is back, the flag gone. (A new version does
	// this through its message; an unchanged one is not published again.)
	Restored []string
}

// Served is what a full sync of one collection served.
type Served struct {
	// IDs holds every id served.
	IDs map[string]struct{}
	// Held holds the ids among them that the sync did not publish because the pipeline held
	// that version or a newer one; nil when the extractor did not say.
	Held map[string]struct{}
}

// pruneChunk is how many ids one pruning statement names.
const pruneChunk = 200

// Prune handles the end of a full sync of one collection. A stored document that names the
// collection but was not served either loses the collection's key from its collections, when
// other collections still serve it, or, when the collection was its only one, is flagged with
// removed_from_source = at (and keeps its collections, so that it says where it came from).
// Documents are never deleted. A flagged document the sync served loses its flag; a document
// without the collection's key that the sync served but did not publish (held: no message will
// bring the key) gets it back.
//
// Each statement is a single update naming up to pruneChunk ids, safe on FerretDB.
func (s *Store) Prune(ctx context.Context, collection string, served Served,
	at time.Time) (res PruneResult, retErr error) {
	docs, err := s.readAll(ctx)
	if err != nil {
		return res, fmt.Errorf("prune %s: %w", collection, err)
	}
	restore := map[string]stored{}
	for _, d := range docs {
		_, isServed := served.IDs[d.ID]
		_, isHeld := served.Held[d.ID]
		names := slices.Contains(d.Collections, collection)
		if names {
			res.Checked++
		}
		if isServed {
			if (names && d.Removed != nil) || (!names && isHeld) {
				res.Restored = append(res.Restored, d.ID)
				restore[d.ID] = d
			}
			continue
		}
		if !names {
			continue
		}
		if len(d.Collections) > 1 {
			res.Detached = append(res.Detached, d.ID)
		} else if d.Removed == nil {
			res.Flagged = append(res.Flagged, d.ID)
		}
	}
	for _, ids := range [][]string{res.Detached, res.Flagged, res.Restored} {
		slices.Sort(ids) // in id order, for logs and tests
	}
	changed := slices.Concat(res.Detached, res.Flagged, res.Restored)
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
	detached := make(map[string]bool, len(res.Detached))
	for _, id := range res.Detached {
		detached[id] = true
	}
	left, _, err := s.locks.withLocks(ctx, changed, func(taken []string) error {
		var det, flag, back []string
		for _, id := range taken {
			switch _, ok := restore[id]; {
			case ok:
				back = append(back, id)
			case detached[id]:
				det = append(det, id)
			default:
				flag = append(flag, id)
			}
		}
		if err := s.pruneIDs(ctx, collection, det, flag, at); err != nil {
			return err
		}
		return s.restore(ctx, collection, back, restore)
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

// restore gives the documents the sync served again their collection back and clears their
// flag, one guarded update each (they are few: objects a collection dropped and took back).
// was holds each one as Prune read it; a document changed since is read again.
func (s *Store) restore(ctx context.Context, collection string, ids []string,
	was map[string]stored) error {
	for _, id := range ids {
		d := was[id]
		cur := &d
		for try := 0; cur != nil && try < s.tries; try++ {
			update := bson.D{{Key: "$set", Value: bson.D{{Key: "collections",
				Value: document.SortedUnion(cur.Collections, []string{collection})}}}}
			if cur.Removed != nil {
				update = append(update, bson.E{Key: "$unset",
					Value: bson.D{{Key: FieldRemoved, Value: ""}}})
			}
			r, err := s.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: id},
				listFilter("collections", cur.Collections)}, update)
			if err != nil {
				return fmt.Errorf("restore %s to %s: %w", id, collection, err)
			}
			if r.MatchedCount == 1 {
				break
			}
			if cur, err = s.readOne(ctx, id); err != nil {
				return err
			}
		}
	}
	return nil
}
