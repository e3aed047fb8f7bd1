// Package sync decides what a run publishes: it learns which version of each object the
// pipeline already holds, publishes only newer versions, keeps the added_after checkpoint of
// servers trusted with it, and marks the end of a full sync so that the loader can prune.
package sync

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/stix"
)

// HeldTimeout bounds LoadHeld.
const HeldTimeout = 5 * time.Minute

// Held maps a STIX id to the version stamp (modified, or created) the pipeline holds.
type Held map[string]string

// Newer reports whether stamp is a version of id the pipeline does not hold yet: the id is
// unknown or its held stamp is older.
func (h Held) Newer(id, stamp string) bool {
	old, ok := h[id]
	return !ok || stix.CompareStamps(stamp, old) > 0
}

// LoadHeld reads the latest (id, modified) of every raw subject of a collection from the
// STIX_RAW stream itself, with an ordered consumer that delivers the last message per subject,
// headers only. The stream is the pipeline's record of what it holds, so no other state can
// drift from it.
func LoadHeld(ctx context.Context, js jetstream.JetStream, collectionKey string) (Held, error) {
	// Reading even a few hundred thousand headers takes seconds; a stalled server must not hang
	// the run.
	ctx, cancel := context.WithTimeout(ctx, HeldTimeout)
	defer cancel()
	held := Held{}
	cons, err := js.OrderedConsumer(ctx, bus.StreamRaw, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.RawFilter(collectionKey)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
		HeadersOnly:    true,
	})
	if err != nil {
		return nil, fmt.Errorf("read held versions of %s: %w", collectionKey, err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("read held versions of %s: consumer info: %w", collectionKey, err)
	}
	if info.NumPending == 0 {
		return held, nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(4096))
	if err != nil {
		return nil, fmt.Errorf("read held versions of %s: %w", collectionKey, err)
	}
	defer it.Stop()
	for {
		m, err := it.Next(jetstream.NextContext(ctx))
		if err != nil {
			return nil, fmt.Errorf("read held versions of %s: %w", collectionKey, err)
		}
		id, stamp := m.Headers().Get(bus.HeaderStixID), m.Headers().Get(bus.HeaderStixModified)
		if id != "" && (held[id] == "" || stix.CompareStamps(stamp, held[id]) > 0) {
			held[id] = stamp
		}
		md, err := m.Metadata()
		if err != nil {
			return nil, fmt.Errorf("read held versions of %s: %w", collectionKey, err)
		}
		if md.NumPending == 0 {
			return held, nil
		}
	}
}
