package resolve

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/shared/bus"
)

// Bucket is the JetStream key-value bucket of the resolver: s.<id> holds an object's summary,
// r.<id> its reverse index (the relationships naming it), b.<id> its revoked-by link.
const Bucket = "STIX_ENDS"

// maxAttempts bounds the optimistic-concurrency retries of one key update.
const maxAttempts = 100

// KVStore is a Store in a JetStream key-value bucket, shared by every transformer.
type KVStore struct {
	kv jetstream.KeyValue
}

// OpenKV creates the bucket when missing and returns the store.
func OpenKV(ctx context.Context, js jetstream.JetStream, replicas int) (*KVStore, error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      Bucket,
		Description: "Transformer: object summaries, relationship reverse index, revoked-by links.",
		History:     1,
		Storage:     jetstream.FileStorage,
		Replicas:    max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("open key-value bucket %s: %w", Bucket, err)
	}
	return &KVStore{kv: kv}, nil
}

// update applies fn to a key's value with optimistic concurrency: fn gets the stored value
// (nil when missing) and returns the value to write, or nil to write nothing.
func (k *KVStore) update(ctx context.Context, key string,
	fn func(old []byte) ([]byte, error)) error {
	for range maxAttempts {
		var old []byte
		var rev uint64
		e, err := k.kv.Get(ctx, key)
		switch {
		case errors.Is(err, jetstream.ErrKeyNotFound):
		case err != nil:
			return fmt.Errorf("read %s: %w", key, err)
		default:
			old, rev = e.Value(), e.Revision()
		}
		next, err := fn(old)
		if err != nil || next == nil {
			return err
		}
		if rev == 0 {
			_, err = k.kv.Create(ctx, key, next)
		} else {
			_, err = k.kv.Update(ctx, key, next, rev)
		}
		if err == nil {
			return nil
		}
		if !conflict(err) {
			return fmt.Errorf("write %s: %w", key, err)
		}
	}
	return fmt.Errorf("write %s: still conflicting after %d attempts", key, maxAttempts)
}

// conflict tells whether a write lost a race with another writer.
func conflict(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) ||
		(errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence)
}

func (k *KVStore) get(ctx context.Context, key string, v any) (bool, error) {
	e, err := k.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read %s: %w", key, err)
	}
	if err := json.Unmarshal(e.Value(), v); err != nil {
		return false, fmt.Errorf("decode %s: %w", key, err)
	}
	return true, nil
}

// PutSummary implements Store.
func (k *KVStore) PutSummary(ctx context.Context, id string, s flatten.Summary) (
	flatten.Summary, bool, error) {
	var stored flatten.Summary
	var changed bool
	err := k.update(ctx, "s."+id, func(old []byte) ([]byte, error) {
		var prev flatten.Summary
		ok := old != nil
		if ok {
			if err := json.Unmarshal(old, &prev); err != nil {
				ok = false // an unreadable summary is replaced
			}
		}
		stored, changed = mergeSummary(prev, ok, s)
		if ok && !changed && slices.Equal(stored.Collections, prev.Collections) &&
			stored.Schema == prev.Schema {
			return nil, nil
		}
		return json.Marshal(stored)
	})
	if err != nil {
		return flatten.Summary{}, false, fmt.Errorf("summary of %s: %w", id, err)
	}
	return stored, changed, nil
}

// Summary implements Store.
func (k *KVStore) Summary(ctx context.Context, id string) (*flatten.Summary, error) {
	var s flatten.Summary
	ok, err := k.get(ctx, "s."+id, &s)
	if err != nil || !ok {
		return nil, err
	}
	return &s, nil
}

// TODO(transformer): the reverse index never drops a reference when a relationship's new
// version names another end; the stale reference only costs a needless re-emission.

// AddRef implements Store. The reverse index is stored as lines, one reference each, and
// only appended to: a popular object (a tactic's technique, Mimikatz) is named by hundreds of
// relationships, and a JSON list would be decoded whole on every addition.
func (k *KVStore) AddRef(ctx context.Context, id, ref string) error {
	line := []byte(ref + "\n")
	err := k.update(ctx, "r."+id, func(old []byte) ([]byte, error) {
		if hasLine(old, line) {
			return nil, nil
		}
		return append(slices.Clip(old), line...), nil
	})
	if err != nil {
		return fmt.Errorf("reverse index of %s: %w", id, err)
	}
	return nil
}

// hasLine tells whether a list of lines holds a line.
func hasLine(list, line []byte) bool {
	return bytes.HasPrefix(list, line) || bytes.Contains(list, append([]byte("\n"), line...))
}

// Refs implements Store.
func (k *KVStore) Refs(ctx context.Context, id string) ([]string, error) {
	e, err := k.kv.Get(ctx, "r."+id)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read r.%s: %w", id, err)
	}
	return strings.Fields(string(e.Value())), nil
}

// PutRevokedBy implements Store.
func (k *KVStore) PutRevokedBy(ctx context.Context, id string, rb flatten.RevokedBy) (bool, error) {
	changed := false
	err := k.update(ctx, "b."+id, func(old []byte) ([]byte, error) {
		var prev flatten.RevokedBy
		if old != nil && json.Unmarshal(old, &prev) == nil && !newerLink(rb, prev) {
			changed = false
			return nil, nil
		}
		changed = true
		return json.Marshal(rb)
	})
	if err != nil {
		return false, fmt.Errorf("revoked-by link of %s: %w", id, err)
	}
	return changed, nil
}

// RevokedBy implements Store.
func (k *KVStore) RevokedBy(ctx context.Context, id string) (*flatten.RevokedBy, error) {
	var rb flatten.RevokedBy
	ok, err := k.get(ctx, "b."+id, &rb)
	if err != nil || !ok {
		return nil, err
	}
	return &rb, nil
}

// StreamRaw reads raw messages from the raw stream with direct gets.
type StreamRaw struct {
	stream jetstream.Stream
}

// NewStreamRaw returns a RawSource over the raw stream.
func NewStreamRaw(ctx context.Context, js jetstream.JetStream) (*StreamRaw, error) {
	s, err := js.Stream(ctx, bus.StreamRaw)
	if err != nil {
		return nil, fmt.Errorf("open stream %s: %w", bus.StreamRaw, err)
	}
	return &StreamRaw{stream: s}, nil
}

// Raw implements RawSource.
func (s *StreamRaw) Raw(ctx context.Context, collection, id string) (RawMsg, error) {
	subj := bus.RawSubject(collection, id)
	m, err := s.stream.GetLastMsgForSubject(ctx, subj)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return RawMsg{}, fmt.Errorf("%s: %w", subj, ErrNotFound)
	}
	if err != nil {
		return RawMsg{}, fmt.Errorf("get %s: %w", subj, err)
	}
	return RawMsg{Subject: m.Subject, Header: m.Header, Data: m.Data, Stored: m.Time}, nil
}
