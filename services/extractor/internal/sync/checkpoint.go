package sync

import (
	"context"
	"errors"
	"fmt"
	"regexp"

	"github.com/nats-io/nats.go/jetstream"
)

// CheckpointBucket is the JetStream key-value bucket of added_after checkpoints.
const CheckpointBucket = "STIX_CHECKPOINTS"

// Checkpoints stores one added_after checkpoint per API root and collection.
type Checkpoints struct {
	kv jetstream.KeyValue
}

// OpenCheckpoints opens the checkpoint bucket, creating it when missing.
func OpenCheckpoints(ctx context.Context, js jetstream.JetStream, replicas int) (*Checkpoints,
	error) {
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket: CheckpointBucket, Description: "added_after checkpoint per API root and collection",
		History: 5, Replicas: max(replicas, 1),
	})
	if err != nil {
		return nil, fmt.Errorf("open checkpoint bucket %s: %w", CheckpointBucket, err)
	}
	return &Checkpoints{kv: kv}, nil
}

var kvUnsafe = regexp.MustCompile(`[^A-Za-z0-9_\-=]+`)

// CheckpointKey returns the bucket key of an API root's collection.
func CheckpointKey(rootURL, collectionID string) string {
	return kvUnsafe.ReplaceAllString(rootURL, "_") + "." + kvUnsafe.ReplaceAllString(collectionID,
		"_")
}

// Get returns the stored checkpoint, "" when there is none.
func (c *Checkpoints) Get(ctx context.Context, key string) (string, error) {
	e, err := c.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("read checkpoint %s: %w", key, err)
	}
	return string(e.Value()), nil
}

// Put stores a checkpoint.
func (c *Checkpoints) Put(ctx context.Context, key, value string) error {
	if _, err := c.kv.PutString(ctx, key, value); err != nil {
		return fmt.Errorf("store checkpoint %s: %w", key, err)
	}
	return nil
}
