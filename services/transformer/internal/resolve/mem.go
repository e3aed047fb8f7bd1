package resolve

import (
	"context"
	"slices"
	"sync"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/shared/bus"
)

// MemStore is a Store in memory, for tests and single-process tools.
type MemStore struct {
	mu        sync.Mutex
	summaries map[string]flatten.Summary
	refs      map[string][]string
	revoked   map[string]flatten.RevokedBy
}

// NewMemStore returns an empty MemStore.
func NewMemStore() *MemStore {
	return &MemStore{summaries: map[string]flatten.Summary{}, refs: map[string][]string{},
		revoked: map[string]flatten.RevokedBy{}}
}

// PutSummary implements Store.
func (m *MemStore) PutSummary(_ context.Context, id string, s flatten.Summary) (
	flatten.Summary, bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.summaries[id]
	next, changed := mergeSummary(old, ok, s)
	m.summaries[id] = next
	return next, changed, nil
}

// Summary implements Store.
func (m *MemStore) Summary(_ context.Context, id string) (*flatten.Summary, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	s, ok := m.summaries[id]
	if !ok {
		return nil, nil
	}
	return &s, nil
}

// AddRef implements Store.
func (m *MemStore) AddRef(_ context.Context, id, ref string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !slices.Contains(m.refs[id], ref) {
		m.refs[id] = append(m.refs[id], ref)
	}
	return nil
}

// Refs implements Store.
func (m *MemStore) Refs(_ context.Context, id string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.refs[id]), nil
}

// PutRevokedBy implements Store.
func (m *MemStore) PutRevokedBy(_ context.Context, id string, rb flatten.RevokedBy) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	old, ok := m.revoked[id]
	if ok && !newerLink(rb, old) {
		return false, nil
	}
	m.revoked[id] = rb
	return true, nil
}

// RevokedBy implements Store.
func (m *MemStore) RevokedBy(_ context.Context, id string) (*flatten.RevokedBy, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rb, ok := m.revoked[id]
	if !ok {
		return nil, nil
	}
	return &rb, nil
}

// mergeSummary returns the summary to store when s arrives and old (when ok) is stored, and
// whether what a relationship shows changed.
func mergeSummary(old flatten.Summary, ok bool, s flatten.Summary) (flatten.Summary, bool) {
	s.Collections = slices.Clone(s.Collections)
	if !ok {
		return s, true
	}
	colls := unionSorted(old.Collections, s.Collections)
	switch {
	case s.Modified < old.Modified,
		s.Modified == old.Modified && s.Schema < old.Schema:
		old.Collections = colls // an older version, or one shaped by an older schema
		return old, false
	case s.SameEnd(old):
		old.Collections, old.Schema = colls, max(old.Schema, s.Schema)
		return old, false
	case s.Modified == old.Modified && s.Schema == old.Schema && endKey(s) < endKey(old):
		// Two different summaries of one version and schema: keep a deterministic one.
		old.Collections = colls
		return old, false
	}
	s.Collections = colls
	return s, true
}

// endKey orders two different summaries of one version.
func endKey(s flatten.Summary) string {
	b := func(v bool) string {
		if v {
			return "1"
		}
		return "0"
	}
	return s.Type + "\x00" + s.AttackID + "\x00" + s.Name + "\x00" + b(s.Revoked) + b(s.Deprecated)
}

// newerLink tells whether link a replaces link b.
func newerLink(a, b flatten.RevokedBy) bool {
	if a.Modified != b.Modified {
		return a.Modified > b.Modified
	}
	return a.Relationship+a.By > b.Relationship+b.By
}

func unionSorted(a, b []string) []string {
	out := append(slices.Clone(a), b...)
	slices.Sort(out)
	return slices.Compact(out)
}

// MemRaw is a RawSource in memory, keyed by raw subject.
type MemRaw struct {
	mu   sync.Mutex
	msgs map[string]RawMsg
}

// NewMemRaw returns an empty MemRaw.
func NewMemRaw() *MemRaw { return &MemRaw{msgs: map[string]RawMsg{}} }

// Add keeps a raw message as the latest of its subject.
func (r *MemRaw) Add(m RawMsg) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs[m.Subject] = m
}

// Raw implements RawSource.
func (r *MemRaw) Raw(_ context.Context, collection, id string) (RawMsg, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m, ok := r.msgs[bus.RawSubject(collection, id)]
	if !ok {
		return RawMsg{}, ErrNotFound
	}
	return m, nil
}
