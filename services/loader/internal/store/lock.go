package store

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// locker serialises, across every store writing a collection, the writes that change a stored
// document, on a server whose conditional writes are not atomic.
//
// FerretDB v1 runs an update, a replacement or a delete as a read of the documents that match
// the filter, then a write by _id alone. Two stores that update one document at once can both
// match the version they read, and the later write undoes the earlier: a collection merged by
// one loader vanishes under another loader's merge, or an older version comes back over a newer
// one. Only an insert is atomic there (the _id is unique). So a store takes a lock before it
// changes a stored document: it inserts a document named by the id into <collection>_locks,
// writes while it holds it, and deletes it after. An insert that fails on the duplicate _id
// means another store holds the id; that id waits, and nothing waits while holding locks, so
// stores cannot deadlock. Inserts of new ids need no lock.
//
// A store that dies holding locks leaves them behind; a lock older than ttl is taken over.
type locker struct {
	coll *mongo.Collection
	// owner names the store; each acquisition adds a sequence number to it.
	owner string
	seq   atomic.Uint64
	ttl   time.Duration
	// wait bounds how long an id waits for another store's lock before its write fails (and
	// is retried by redelivery).
	wait time.Duration
	now  func() time.Time
}

// lockDoc is one held lock.
type lockDoc struct {
	ID    string    `bson:"_id"`
	Owner string    `bson:"owner"`
	At    time.Time `bson:"at"`
}

// ErrLocked is the error of a document whose lock another loader held for longer than the
// store waits.
var ErrLocked = errors.New("document locked by another loader")

// lockTTL is the age at which a lock is taken over: a batch holds its locks for seconds (a
// swap of 5,000 replacements about 20 s on FerretDB). An id waits at most a minute longer.
const lockTTL = 2 * time.Minute

func newLocker(coll *mongo.Collection, ttl time.Duration) *locker {
	if ttl <= 0 {
		ttl = lockTTL
	}
	return &locker{
		coll: coll, ttl: ttl, wait: ttl + time.Minute,
		owner: rand.Text(),
		now:   func() time.Time { return time.Now().UTC() },
	}
}

// tryLock takes, under one new token, the locks of the ids that no other store holds, and
// returns the ids taken and the ids busy. Locks older than the ttl are taken over.
func (l *locker) tryLock(ctx context.Context, ids []string) (token string, taken,
	busy []string, err error) {
	token = l.owner + "-" + strconv.FormatUint(l.seq.Add(1), 36)
	busy, err = l.insert(ctx, ids, token)
	if err != nil {
		return token, nil, nil, err
	}
	if len(busy) > 0 {
		stale, err := l.takeOver(ctx, busy)
		if err != nil {
			_ = l.unlock(context.WithoutCancel(ctx), token)
			return token, nil, nil, err
		}
		if len(stale) > 0 {
			still, err := l.insert(ctx, stale, token)
			if err != nil {
				_ = l.unlock(context.WithoutCancel(ctx), token)
				return token, nil, nil, err
			}
			busy = slices.DeleteFunc(busy, func(id string) bool {
				return slices.Contains(stale, id) && !slices.Contains(still, id)
			})
		}
	}
	for _, id := range ids {
		if !slices.Contains(busy, id) {
			taken = append(taken, id)
		}
	}
	return token, taken, busy, nil
}

// insert inserts the locks and returns the ids another store holds.
func (l *locker) insert(ctx context.Context, ids []string, token string) ([]string, error) {
	at := l.now()
	docs := make([]any, len(ids))
	for i, id := range ids {
		docs[i] = lockDoc{ID: id, Owner: token, At: at}
	}
	_, err := l.coll.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	if err == nil {
		return nil, nil
	}
	var bwe mongo.BulkWriteException
	if !errors.As(err, &bwe) || len(bwe.WriteErrors) == 0 || bwe.WriteConcernError != nil {
		return nil, fmt.Errorf("lock %d documents: %w", len(ids), err)
	}
	var busy []string
	for _, we := range bwe.WriteErrors {
		if we.Index < 0 || we.Index >= len(ids) || !isDuplicate(we.Code, we.Message) {
			_ = l.unlock(context.WithoutCancel(ctx), token)
			return nil, fmt.Errorf("lock %d documents: %w", len(ids), err)
		}
		busy = append(busy, ids[we.Index])
	}
	return busy, nil
}

// takeOver deletes the locks among ids that are older than the ttl and returns their ids.
func (l *locker) takeOver(ctx context.Context, ids []string) ([]string, error) {
	cur, err := l.coll.Find(ctx, bson.D{
		{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
		{Key: "at", Value: bson.D{{Key: "$lt", Value: l.now().Add(-l.ttl)}}},
	})
	if err != nil {
		return nil, fmt.Errorf("read locks: %w", err)
	}
	var stale []lockDoc
	if err := cur.All(ctx, &stale); err != nil {
		return nil, fmt.Errorf("read locks: %w", err)
	}
	var out []string
	for _, s := range stale {
		// The owner condition spares a lock taken again since it was read.
		_, err := l.coll.DeleteOne(ctx, bson.D{{Key: "_id", Value: s.ID},
			{Key: "owner", Value: s.Owner}})
		if err != nil {
			return nil, fmt.Errorf("take over the lock of %s: %w", s.ID, err)
		}
		out = append(out, s.ID)
	}
	return out, nil
}

// unlock releases the locks taken under one token.
func (l *locker) unlock(ctx context.Context, token string) error {
	if _, err := l.coll.DeleteMany(ctx, bson.D{{Key: "owner", Value: token}}); err != nil {
		return fmt.Errorf("unlock: %w", err)
	}
	return nil
}

// withLocks runs fn on the ids whose locks it holds, as many times as it takes to hold every
// id once, and returns the ids it could not lock within the wait. It never waits while it
// holds locks. A nil locker (a server whose updates are atomic) runs fn on every id at once.
func (l *locker) withLocks(ctx context.Context, ids []string,
	fn func(taken []string) error) (left []string, waits int, retErr error) {
	if l == nil {
		return nil, 0, fn(ids)
	}
	pending := ids
	pause := 20 * time.Millisecond
	deadline := time.Now().Add(l.wait)
	for len(pending) > 0 {
		token, taken, busy, err := l.tryLock(ctx, pending)
		if err != nil {
			return pending, waits, err
		}
		if len(taken) > 0 {
			err = fn(taken)
			if uerr := l.unlock(context.WithoutCancel(ctx), token); uerr != nil && err == nil {
				err = uerr
			}
			if err != nil {
				return busy, waits, err
			}
		}
		pending = busy
		if len(pending) == 0 || time.Now().After(deadline) {
			break
		}
		waits++
		t := time.NewTimer(pause)
		select {
		case <-ctx.Done():
			t.Stop()
			return pending, waits, ctx.Err()
		case <-t.C:
		}
		pause = min(pause*2, time.Second)
	}
	return pending, waits, nil
}
