// Package report keeps the change report of every run: what each document's write did (added,
// new version, revoked, deprecated, merged, unchanged, out of date, failed), with the ids
// behind every count, in MongoDB. Any number of loaders record into the same report.
package report

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// UnknownRun names the run of messages that carry no run id.
const UnknownRun = "unknown"

// Entry is the outcome of one message of a run.
type Entry struct {
	RunID      string
	Collection string
	StixID     string
	// Outcome is a store.Outcome, such as "added" or "new_minor".
	Outcome string
	// Detail says why a failure failed; empty otherwise.
	Detail string
}

// Run is the stored report of one run.
type Run struct {
	ID        string           `bson:"_id"`
	Counts    map[string]int64 `bson:"counts"`
	StartedAt time.Time        `bson:"started_at"`
	UpdatedAt time.Time        `bson:"updated_at"`
}

// Recorder writes the change report: one document per run in the runs collection (first and
// last write, and the counts as of the last Get) and one document per run, collection and id
// in the changes collection (the ids behind the counts). An id's first recorded outcome in a
// run and collection stands: a redelivered message does not count twice.
type Recorder struct {
	runs, changes *mongo.Collection
	now           func() time.Time

	mu    sync.Mutex
	local map[string]map[string]int64
}

// New returns a recorder that keeps its report in the collections <base>_runs and
// <base>_changes of db.
func New(db *mongo.Database, base string) *Recorder {
	return &Recorder{
		runs: db.Collection(base + "_runs"), changes: db.Collection(base + "_changes"),
		now:   func() time.Time { return time.Now().UTC().Truncate(time.Millisecond) },
		local: map[string]map[string]int64{},
	}
}

// RunsCollection returns the name of the collection of run reports.
func (r *Recorder) RunsCollection() string { return r.runs.Name() }

// ChangesCollection returns the name of the collection of per-id outcomes.
func (r *Recorder) ChangesCollection() string { return r.changes.Name() }

// EnsureIndexes creates the index that lists a run's ids by outcome, when it is missing.
func (r *Recorder) EnsureIndexes(ctx context.Context) error {
	cur, err := r.changes.Indexes().List(ctx)
	if err != nil {
		return fmt.Errorf("list indexes of %s: %w", r.changes.Name(), err)
	}
	var specs []struct {
		Name string `bson:"name"`
	}
	if err := cur.All(ctx, &specs); err != nil {
		return fmt.Errorf("list indexes of %s: %w", r.changes.Name(), err)
	}
	const name = "run_id_1_outcome_1"
	for _, s := range specs {
		if s.Name == name {
			return nil
		}
	}
	_, err = r.changes.Indexes().CreateOne(ctx, mongo.IndexModel{
		Keys:    bson.D{{Key: "run_id", Value: 1}, {Key: "outcome", Value: 1}},
		Options: options.Index().SetName(name),
	})
	if err != nil {
		return fmt.Errorf("create index on %s: %w", r.changes.Name(), err)
	}
	return nil
}

type change struct {
	ID         string    `bson:"_id"`
	RunID      string    `bson:"run_id"`
	Collection string    `bson:"collection"`
	StixID     string    `bson:"stix_id"`
	Outcome    string    `bson:"outcome"`
	Detail     string    `bson:"detail,omitempty"`
	At         time.Time `bson:"at"`
}

// Record stores the outcomes of a batch: new per-id entries in one unordered bulk insert, then
// one counting update per run. Entries already recorded (a redelivery) are skipped.
func (r *Recorder) Record(ctx context.Context, entries []Entry) error {
	if len(entries) == 0 {
		return nil
	}
	now := r.now()
	docs := make([]any, 0, len(entries))
	kept := make([]Entry, 0, len(entries))
	seen := map[string]bool{}
	for _, e := range entries {
		if e.RunID == "" {
			e.RunID = UnknownRun
		}
		id := e.RunID + "|" + e.Collection + "|" + e.StixID
		if seen[id] {
			continue
		}
		seen[id] = true
		kept = append(kept, e)
		docs = append(docs, change{ID: id, RunID: e.RunID, Collection: e.Collection,
			StixID: e.StixID, Outcome: e.Outcome, Detail: e.Detail, At: now})
	}
	_, err := r.changes.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	skip := map[int]bool{}
	if err != nil {
		var bwe mongo.BulkWriteException
		if !errors.As(err, &bwe) {
			return fmt.Errorf("record %d outcomes: %w", len(docs), err)
		}
		for _, we := range bwe.WriteErrors {
			if we.Code != 11000 {
				return fmt.Errorf("record %d outcomes: %w", len(docs), err)
			}
			skip[we.Index] = true
		}
	}
	counts := map[string]map[string]int64{}
	for i, e := range kept {
		if skip[i] {
			continue
		}
		if counts[e.RunID] == nil {
			counts[e.RunID] = map[string]int64{}
		}
		counts[e.RunID][e.Outcome]++
	}
	for _, run := range slices.Sorted(maps.Keys(counts)) {
		if err := r.touch(ctx, run, now); err != nil {
			return err
		}
	}
	r.mu.Lock()
	for run, c := range counts {
		if r.local[run] == nil {
			r.local[run] = map[string]int64{}
		}
		for o, n := range c {
			r.local[run][o] += n
		}
	}
	r.mu.Unlock()
	return nil
}

// Local returns the counts this recorder added, per run and outcome.
func (r *Recorder) Local() map[string]map[string]int64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make(map[string]map[string]int64, len(r.local))
	for run, c := range r.local {
		out[run] = maps.Clone(c)
	}
	return out
}

// Touch creates the report of a run, or moves its updated_at, without outcomes: the loader
// calls it for the end of a full sync, so that a run that published nothing is on record too.
func (r *Recorder) Touch(ctx context.Context, runID string) error {
	if runID == "" {
		runID = UnknownRun
	}
	return r.touch(ctx, runID, r.now())
}

// touch creates the run's document or moves its updated_at. Its fields are set, never
// incremented, so concurrent loaders cannot lose an update (FerretDB was seen to lose
// concurrent $inc updates); a lost upsert race is retried once as a plain update.
func (r *Recorder) touch(ctx context.Context, run string, now time.Time) error {
	update := bson.D{
		{Key: "$max", Value: bson.D{{Key: "updated_at", Value: now}}},
		{Key: "$min", Value: bson.D{{Key: "started_at", Value: now}}},
	}
	for try := 0; ; try++ {
		_, err := r.runs.UpdateOne(ctx, bson.D{{Key: "_id", Value: run}}, update,
			options.UpdateOne().SetUpsert(true))
		if err == nil {
			return nil
		}
		if try == 0 && mongo.IsDuplicateKeyError(err) {
			continue
		}
		return fmt.Errorf("touch report of run %s: %w", run, err)
	}
}

// Get counts the outcomes of a run over every loader from the per-id entries, and stores the
// counts in the run's document for readers of the report.
func (r *Recorder) Get(ctx context.Context, runID string) (Run, error) {
	var run Run
	if err := r.runs.FindOne(ctx, bson.D{{Key: "_id", Value: runID}}).Decode(&run); err != nil {
		return run, fmt.Errorf("read report of run %s: %w", runID, err)
	}
	cur, err := r.changes.Find(ctx, bson.D{{Key: "run_id", Value: runID}},
		options.Find().SetProjection(bson.D{{Key: "outcome", Value: 1}}))
	if err != nil {
		return run, fmt.Errorf("count outcomes of run %s: %w", runID, err)
	}
	var got []change
	if err := cur.All(ctx, &got); err != nil {
		return run, fmt.Errorf("count outcomes of run %s: %w", runID, err)
	}
	run.Counts = map[string]int64{}
	for _, c := range got {
		run.Counts[c.Outcome]++
	}
	_, err = r.runs.UpdateOne(ctx, bson.D{{Key: "_id", Value: runID}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "counts", Value: run.Counts}}}})
	if err != nil {
		return run, fmt.Errorf("store counts of run %s: %w", runID, err)
	}
	return run, nil
}

// IDs lists the ids recorded with an outcome in a run, sorted.
func (r *Recorder) IDs(ctx context.Context, runID, outcome string) ([]string, error) {
	cur, err := r.changes.Find(ctx, bson.D{{Key: "run_id", Value: runID},
		{Key: "outcome", Value: outcome}},
		options.Find().SetProjection(bson.D{{Key: "stix_id", Value: 1}}))
	if err != nil {
		return nil, fmt.Errorf("list %s ids of run %s: %w", outcome, runID, err)
	}
	var got []change
	if err := cur.All(ctx, &got); err != nil {
		return nil, fmt.Errorf("list %s ids of run %s: %w", outcome, runID, err)
	}
	out := make([]string, 0, len(got))
	for _, c := range got {
		out = append(out, c.StixID)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
