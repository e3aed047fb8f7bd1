package consume

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/loader/internal/store"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
)

// EventSynced is the control event that ends a full sync of a collection.
const EventSynced = "synced"

// Synced is the body of a "synced" control event.
type Synced struct {
	RunID        string `json:"run_id"`
	Collection   string `json:"collection"`
	CollectionID string `json:"collection_id"`
	Full         bool   `json:"full"`
	Count        int    `json:"count"`
	// IDsObject names the object, in the SyncBucket object store, that holds the ids the sync
	// served, one a line.
	IDsObject string `json:"ids_object"`
	// HeldObject names the object with the ids among them that the sync did not publish, since
	// the pipeline held their version; empty from extractors that did not list them.
	HeldObject string `json:"held_object,omitempty"`
}

// control handles one control event and settles its message.
func (c *Consumer) control(ctx context.Context, m jetstream.Msg) {
	t := strings.Split(m.Subject(), ".")
	collection, event := t[2], t[4]
	if event != EventSynced {
		_ = m.Ack()
		return
	}
	err := c.synced(ctx, collection, m.Data())
	if err == nil {
		_ = m.Ack()
		return
	}
	delivered := uint64(1)
	if md, merr := m.Metadata(); merr == nil {
		delivered = md.NumDelivered
	}
	reason := config.RedactText(err.Error())
	if int(delivered) >= c.o.MaxDeliver {
		c.deadLetterKind(ctx, m, "", bus.KindExhausted, reason, delivered)
		return
	}
	c.log.Warn("full-sync pruning failed; retrying later", zap.String("collection", collection),
		zap.Uint64("delivery", delivered), zap.String("error", reason))
	_ = m.NakWithDelay(c.backoff(delivered))
}

// synced prunes a collection after its full sync.
func (c *Consumer) synced(ctx context.Context, collection string, body []byte) error {
	var ev Synced
	if err := json.Unmarshal(body, &ev); err != nil {
		return fmt.Errorf("synced event of %s: %w", collection, err)
	}
	if ev.Collection != "" {
		collection = ev.Collection
	}
	if c.rec != nil {
		if err := c.rec.Touch(ctx, ev.RunID); err != nil {
			c.log.Warn("run not recorded", zap.String("run", ev.RunID),
				zap.String("error", config.RedactText(err.Error())))
		}
	}
	if !ev.Full {
		return nil // incremental runs never flag
	}
	if ev.IDsObject == "" {
		return fmt.Errorf("synced event of %s names no ids object", collection)
	}
	served, err := c.servedIDs(ctx, ev.IDsObject)
	if err != nil {
		return err
	}
	if ev.Count > 0 && len(served) == 0 {
		return fmt.Errorf("ids object %s holds %d ids, the event says %d", ev.IDsObject,
			len(served), ev.Count)
	}
	var held map[string]struct{}
	if ev.HeldObject != "" {
		if held, err = c.servedIDs(ctx, ev.HeldObject); err != nil {
			return err
		}
	}
	start := time.Now()
	res, err := c.w.Prune(ctx, collection, store.Served{IDs: served, Held: held},
		time.Now().UTC().Truncate(time.Millisecond))
	if err != nil {
		return fmt.Errorf("prune %s: %w", collection, err)
	}
	c.count(func(k *Counters) { k.Pruned += int64(len(res.Flagged) + len(res.Detached)) })
	c.log.Info("full sync pruned", zap.String("collection", collection),
		zap.String("run", ev.RunID), zap.Int("served", len(served)),
		zap.Int("stored", res.Checked), zap.Int("flagged", len(res.Flagged)),
		zap.Int("detached", len(res.Detached)), zap.Int("restored", len(res.Restored)),
		zap.Strings("flagged_ids", head(res.Flagged)),
		zap.Duration("took", time.Since(start)))
	return nil
}

func (c *Consumer) servedIDs(ctx context.Context, name string) (map[string]struct{}, error) {
	obs, err := c.js.ObjectStore(ctx, SyncBucket)
	if err != nil {
		return nil, fmt.Errorf("open object store %s: %w", SyncBucket, err)
	}
	b, err := obs.GetBytes(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("read ids object %s: %w", name, err)
	}
	served := map[string]struct{}{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if id := strings.TrimSpace(sc.Text()); id != "" {
			served[id] = struct{}{}
		}
	}
	return served, sc.Err()
}

// head returns the first few ids, for a log line.
func head(ids []string) []string {
	return ids[:min(len(ids), 20)]
}
