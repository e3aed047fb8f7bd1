package resolve

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
)

// Snapshot is a Store for a replay: it reads the whole key-value bucket once, answers reads
// from memory, and writes to the bucket only what changes. A replay mostly re-reads what the
// live path stored, so this saves the round trips of every unchanged key.
//
// NOTE: reads do not see what another transformer writes during the replay. Run a replay with
// the live transformer stopped or running the same schema (see the README).
// TODO(transformer): follow the bucket with a watcher during the replay to narrow that window.
type Snapshot struct {
	kv  *KVStore
	mem *MemStore
	// refs holds the references known to be in the bucket, per object, for AddRef.
	mu   sync.Mutex
	refs map[string]map[string]bool
}

// NewSnapshot loads every key of the bucket.
func NewSnapshot(ctx context.Context, kv *KVStore) (*Snapshot, error) {
	s := &Snapshot{kv: kv, mem: NewMemStore(), refs: map[string]map[string]bool{}}
	w, err := kv.kv.WatchAll(ctx, jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("read bucket %s: %w", Bucket, err)
	}
	defer func() { _ = w.Stop() }()
	for {
		var e jetstream.KeyValueEntry
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("read bucket %s: %w", Bucket, ctx.Err())
		case e = <-w.Updates():
		}
		if e == nil {
			return s, nil // every current value was delivered
		}
		if err := s.load(e.Key(), e.Value()); err != nil {
			return nil, err
		}
	}
}

// load keeps one entry of the bucket in memory.
func (s *Snapshot) load(key string, val []byte) error {
	kind, id, ok := strings.Cut(key, ".")
	if !ok {
		return nil
	}
	switch kind {
	case "s":
		var sum flatten.Summary
		if err := json.Unmarshal(val, &sum); err != nil {
			return nil // an unreadable summary is rewritten on the next put
		}
		s.mem.summaries[id] = sum
	case "r":
		refs := strings.Fields(string(val))
		s.mem.refs[id] = refs
		set := make(map[string]bool, len(refs))
		for _, r := range refs {
			set[r] = true
		}
		s.refs[id] = set
	case "b":
		var rb flatten.RevokedBy
		if err := json.Unmarshal(val, &rb); err == nil {
			s.mem.revoked[id] = rb
		}
	}
	return nil
}

// Len returns the number of summaries, reverse indexes and links loaded.
func (s *Snapshot) Len() int {
	s.mem.mu.Lock()
	defer s.mem.mu.Unlock()
	return len(s.mem.summaries) + len(s.mem.refs) + len(s.mem.revoked)
}

// PutSummary implements Store: it writes to the bucket only when the summary changes.
func (s *Snapshot) PutSummary(ctx context.Context, id string, sum flatten.Summary) (
	flatten.Summary, bool, error) {
	s.mem.mu.Lock()
	old, ok := s.mem.summaries[id]
	s.mem.mu.Unlock()
	if next, _ := mergeSummary(old, ok, sum); ok && next.SameEnd(old) &&
		slices.Equal(next.Collections, old.Collections) && next.Schema == old.Schema {
		return old, false, nil
	}
	stored, changed, err := s.kv.PutSummary(ctx, id, sum)
	if err != nil {
		return stored, changed, err
	}
	s.mem.mu.Lock()
	s.mem.summaries[id] = stored
	s.mem.mu.Unlock()
	return stored, changed, nil
}

// Summary implements Store from memory.
func (s *Snapshot) Summary(ctx context.Context, id string) (*flatten.Summary, error) {
	return s.mem.Summary(ctx, id)
}

// AddRef implements Store: it writes to the bucket only a reference not known yet.
func (s *Snapshot) AddRef(ctx context.Context, id, ref string) error {
	s.mu.Lock()
	known := s.refs[id][ref]
	s.mu.Unlock()
	if known {
		return nil
	}
	if err := s.kv.AddRef(ctx, id, ref); err != nil {
		return err
	}
	s.mu.Lock()
	if s.refs[id] == nil {
		s.refs[id] = map[string]bool{}
	}
	s.refs[id][ref] = true
	s.mu.Unlock()
	return s.mem.AddRef(ctx, id, ref)
}

// Refs implements Store from memory.
func (s *Snapshot) Refs(ctx context.Context, id string) ([]string, error) {
	return s.mem.Refs(ctx, id)
}

// PutRevokedBy implements Store: it writes to the bucket only a link that changes.
func (s *Snapshot) PutRevokedBy(ctx context.Context, id string, rb flatten.RevokedBy) (bool,
	error) {
	s.mem.mu.Lock()
	old, ok := s.mem.revoked[id]
	s.mem.mu.Unlock()
	if ok && !newerLink(rb, old) {
		return false, nil
	}
	changed, err := s.kv.PutRevokedBy(ctx, id, rb)
	if err != nil {
		return false, err
	}
	if changed {
		_, _ = s.mem.PutRevokedBy(ctx, id, rb)
	}
	return changed, nil
}

// RevokedBy implements Store from memory.
func (s *Snapshot) RevokedBy(ctx context.Context, id string) (*flatten.RevokedBy, error) {
	return s.mem.RevokedBy(ctx, id)
}
