package bus

import (
	"context"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Kind is the stable code of why a message was dead-lettered. Operators filter and count dead
// letters by kind; the reason header carries the detail.
type Kind string

// The dead-letter kinds.
const (
	// KindNotJSON: the body is not a JSON object. Not retryable.
	KindNotJSON Kind = "not-json"
	// KindInvalid: the object lacks id or type, its id does not match its type, or a field is
	// malformed (such as a timestamp). Not retryable.
	KindInvalid Kind = "invalid-object"
	// KindTooLarge: the object is larger than MAX_OBJECT_BYTES. Not retryable.
	KindTooLarge Kind = "too-large"
	// KindUnsafeKey: the object carries a key MongoDB would misread and cannot be stored safely.
	// Not retryable.
	KindUnsafeKey Kind = "unsafe-key"
	// KindExhausted: delivery was tried the maximum number of times; the reason is the last
	// error. Retryable once the cause is fixed.
	KindExhausted Kind = "deliveries-exhausted"
	// KindWriteFailed: the database refused the document for good (not a transient error).
	KindWriteFailed Kind = "write-failed"
)

// KindInfo describes one kind for documentation and for the dead-letter command.
type KindInfo struct {
	Kind      Kind
	Meaning   string
	Retryable bool
}

// Kinds lists every dead-letter kind with its meaning.
var Kinds = []KindInfo{
	{KindNotJSON, "the message body is not a JSON object", false},
	{KindInvalid, "no id or type, an id whose prefix is not the type, or a malformed field", false},
	{KindTooLarge, "the object is larger than MAX_OBJECT_BYTES", false},
	{KindUnsafeKey, "a key that MongoDB would misread could not be made safe", false},
	{KindExhausted, "every allowed delivery failed; the reason is the last error", true},
	{KindWriteFailed, "MongoDB refused the document for a reason retrying will not change", false},
}

// DeadLetter is one message a stage gave up on.
type DeadLetter struct {
	// Stage is the stage that gave up: extractor, transformer or loader.
	Stage string
	Kind  Kind
	// Reason says in words what was wrong.
	Reason string
	// Subject is the subject the message came from, empty for the extractor.
	Subject string
	// StixID is the object's id when it is known.
	StixID string
	// Deliveries is how many times the message was delivered, when known.
	Deliveries uint64
	// Header holds the original headers, copied onto the dead letter.
	Header nats.Header
	// Body is the original bytes, unchanged.
	Body []byte
}

// PublishDeadLetter stores a dead letter on the stage's dead-letter subject and waits for
// JetStream's ack, so that nothing is dropped silently.
func PublishDeadLetter(ctx context.Context, js jetstream.JetStream, dl DeadLetter) error {
	msg := nats.NewMsg(DLQSubject(dl.Stage))
	for k, vs := range dl.Header {
		if k == "Nats-Msg-Id" || k == "Nats-Expected-Stream" {
			continue
		}
		for _, v := range vs {
			msg.Header.Add(k, v)
		}
	}
	msg.Header.Set(HeaderDLQStage, dl.Stage)
	msg.Header.Set(HeaderDLQKind, string(dl.Kind))
	msg.Header.Set(HeaderDLQReason, truncate(dl.Reason, 2000))
	if dl.Subject != "" {
		msg.Header.Set(HeaderDLQSubject, dl.Subject)
	}
	if dl.StixID != "" {
		msg.Header.Set(HeaderStixID, dl.StixID)
	}
	if dl.Deliveries > 0 {
		msg.Header.Set(HeaderDLQDeliveries, strconv.FormatUint(dl.Deliveries, 10))
	}
	msg.Data = dl.Body
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		return fmt.Errorf("dead-letter %q (%s): %w", dl.StixID, dl.Kind, err)
	}
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
