package sync

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/shared/bus"
)

// SyncsBucket is the JetStream object store bucket that keeps, per full sync, the list of ids
// the server served.
const SyncsBucket = "STIX_SYNCS"

// SyncsTTL is how long an id list is kept: long enough for a loader that was down for a while
// to prune from it, short enough that a watch polling every few hours stays small.
const SyncsTTL = 30 * 24 * time.Hour

// SyncedEvent is the control message published to bus.CtlSubject(key, "synced") after a full
// sync of a collection whose every publish was acknowledged. The loader prunes documents of the
// collection whose ids are not in the object IDsObject of the SyncsBucket bucket.
type SyncedEvent struct {
	RunID        string `json:"run_id"`
	Collection   string `json:"collection"`
	CollectionID string `json:"collection_id"`
	Full         bool   `json:"full"`
	Count        int    `json:"count"`
	IDsObject    string `json:"ids_object"`
	// HeldObject names the object with the served ids that were not published, because the
	// pipeline held that version or a newer one: no message will bring their collection to the
	// loader, which restores it itself where an earlier full sync had taken it away.
	HeldObject string `json:"held_object,omitempty"`
	HeldCount  int    `json:"held_count,omitempty"`
}

// IDsObjectName returns the object store name of a run's id list for a collection.
func IDsObjectName(collectionKey, runID string) string { return collectionKey + "." + runID }

// PublishSynced stores the ids served by a full sync, and those of them it did not publish
// (held), as newline-separated text in the SyncsBucket object store (created when missing),
// then publishes the synced control message and waits for its ack.
func PublishSynced(ctx context.Context, js jetstream.JetStream, ev SyncedEvent, ids,
	held []string, replicas int) error {
	obs, err := js.CreateOrUpdateObjectStore(ctx, jetstream.ObjectStoreConfig{
		Bucket: SyncsBucket, Replicas: max(replicas, 1), TTL: SyncsTTL,
		Description: "ids served by each full sync, one object per collection and run",
	})
	if err != nil {
		return fmt.Errorf("open object store %s: %w", SyncsBucket, err)
	}
	ev.IDsObject = IDsObjectName(ev.Collection, ev.RunID)
	ev.Count = len(ids)
	ev.Full = true
	if _, err := obs.PutBytes(ctx, ev.IDsObject, idLines(ids)); err != nil {
		return fmt.Errorf("store id list %s: %w", ev.IDsObject, err)
	}
	if len(held) > 0 {
		ev.HeldObject, ev.HeldCount = ev.IDsObject+".held", len(held)
		if _, err := obs.PutBytes(ctx, ev.HeldObject, idLines(held)); err != nil {
			return fmt.Errorf("store id list %s: %w", ev.HeldObject, err)
		}
	}
	body, err := json.Marshal(ev)
	if err != nil {
		return fmt.Errorf("encode synced event: %w", err)
	}
	msg := nats.NewMsg(bus.CtlSubject(ev.Collection, "synced"))
	msg.Header.Set(jetstream.MsgIDHeader, "synced:"+ev.Collection+":"+ev.RunID)
	msg.Header.Set(bus.HeaderCollection, ev.Collection)
	msg.Header.Set(bus.HeaderCollectionID, ev.CollectionID)
	msg.Header.Set(bus.HeaderRunID, ev.RunID)
	msg.Data = body
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("publish synced event of %s: %w", ev.Collection, err)
	}
	return nil
}

// idLines writes ids one a line.
func idLines(ids []string) []byte {
	var buf bytes.Buffer
	for _, id := range ids {
		buf.WriteString(id)
		buf.WriteByte('\n')
	}
	return buf.Bytes()
}
