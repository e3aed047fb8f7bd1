// Package bus holds the JetStream contract between the stages: stream and subject names, message
// headers, the connection, and the streams' set-up.
package bus

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/shared/config"
)

// Stream names.
const (
	StreamRaw  = "STIX_RAW"
	StreamFlat = "STIX_FLAT"
	StreamDLQ  = "STIX_DLQ"
)

// Subject prefixes. Raw subjects are stix.raw.<collection>.<stix-id>, flattened subjects
// stix.flat.<collection>.<stix-type>, dead letters stix.dlq.<stage>, and control messages (such
// as the end of a full sync) stix.ctl.<collection>.<event>.
const (
	rawPrefix  = "stix.raw."
	flatPrefix = "stix.flat."
	dlqPrefix  = "stix.dlq."
	ctlPrefix  = "stix.ctl."
)

// Message headers. The body of a raw message is the STIX object exactly as the server sent it;
// the body of a flattened message is a document.Document as JSON.
const (
	HeaderStixID          = "Stix-Id"
	HeaderStixType        = "Stix-Type"
	HeaderStixModified    = "Stix-Modified"
	HeaderCollection      = "Collection-Key"
	HeaderCollectionID    = "Taxii-Collection-Id"
	HeaderCollectionTitle = "Taxii-Collection-Title"
	HeaderSource          = "Source"
	HeaderRunID           = "Run-Id"
	HeaderFetchedAt       = "Fetched-At"
	HeaderSyncMode        = "Sync-Mode"
	HeaderReplay          = "Replay"
	// Dead-letter headers: the stage that gave up, the error kind, the reason in words, the
	// subject the message came from and how many times it was delivered.
	HeaderDLQStage      = "Dlq-Stage"
	HeaderDLQKind       = "Dlq-Kind"
	HeaderDLQReason     = "Dlq-Reason"
	HeaderDLQSubject    = "Dlq-Subject"
	HeaderDLQDeliveries = "Dlq-Deliveries"
)

// RawSubject returns the raw subject of an object in a collection.
func RawSubject(collection, stixID string) string {
	return rawPrefix + Token(collection) + "." + Token(stixID)
}

// RawFilter returns the subject filter of every raw object, or of one collection's.
func RawFilter(collection string) string {
	if collection == "" {
		return rawPrefix + ">"
	}
	return rawPrefix + Token(collection) + ".*"
}

// FlatSubject returns the flattened subject of a document.
func FlatSubject(collection, stixType string) string {
	return flatPrefix + Token(collection) + "." + Token(stixType)
}

// FlatFilter returns the subject filter of every flattened document.
func FlatFilter() string { return flatPrefix + ">" }

// FlatCtlType is the type token of control events on the flattened subjects. No STIX type can
// equal it, since STIX types never start with '_'.
const FlatCtlType = "_ctl"

// FlatCtlSubject returns the flattened subject that carries a collection's control event (such
// as "synced"), forwarded by the transformer from CtlSubject after every document before it:
// stix.flat.<collection>._ctl.<event>.
func FlatCtlSubject(collection, event string) string {
	return FlatSubject(collection, FlatCtlType) + "." + Token(event)
}

// ParseFlatCtlSubject tells whether a flattened subject carries a control event, and returns
// its collection key and event.
func ParseFlatCtlSubject(subject string) (collection, event string, ok bool) {
	parts := strings.Split(strings.TrimPrefix(subject, flatPrefix), ".")
	if !strings.HasPrefix(subject, flatPrefix) || len(parts) != 3 || parts[1] != FlatCtlType {
		return "", "", false
	}
	return parts[0], parts[2], true
}

// ParseCtlSubject returns the collection key and event of a control subject
// (stix.ctl.<collection>.<event>).
func ParseCtlSubject(subject string) (collection, event string, ok bool) {
	rest, found := strings.CutPrefix(subject, ctlPrefix)
	if !found {
		return "", "", false
	}
	collection, event, ok = strings.Cut(rest, ".")
	return collection, event, ok && collection != "" && event != ""
}

// ParseRawSubject returns the collection key and STIX id token of a raw subject
// (stix.raw.<collection>.<stix-id>).
func ParseRawSubject(subject string) (collection, stixID string, ok bool) {
	rest, found := strings.CutPrefix(subject, rawPrefix)
	if !found {
		return "", "", false
	}
	collection, stixID, ok = strings.Cut(rest, ".")
	return collection, stixID, ok && collection != "" && stixID != ""
}

// CtlFilter returns the subject filter of every control event.
func CtlFilter() string { return ctlPrefix + ">" }

// IsCtlSubject tells whether a subject of the raw stream carries a control event.
func IsCtlSubject(subject string) bool { return strings.HasPrefix(subject, ctlPrefix) }

// DLQSubject returns the dead-letter subject of a stage.
func DLQSubject(stage string) string { return dlqPrefix + Token(stage) }

// CtlSubject returns the subject of a control event of a collection.
func CtlSubject(collection, event string) string {
	return ctlPrefix + Token(collection) + "." + Token(event)
}

// RawMsgID is the JetStream de-duplication id of a raw message. It names the collection as well
// as the object's version, so that the copies of one object served by two collections are both
// kept, while a re-sent copy of one version is dropped.
func RawMsgID(collection, stixID, modified string) string {
	return collection + ":" + stixID + "@" + modified
}

// FlatMsgID is the de-duplication id of a flattened message.
func FlatMsgID(collection, stixID, rev string) string {
	return "flat:" + collection + ":" + stixID + "@" + rev
}

var unsafe = regexp.MustCompile(`[^A-Za-z0-9_\-]+`)

// Token makes text safe as one subject token: anything but letters, digits, '-' and '_'
// becomes '_'. An empty text becomes "_".
func Token(s string) string {
	t := unsafe.ReplaceAllString(s, "_")
	if t == "" {
		return "_"
	}
	return t
}

// CollectionKey returns the short subject-safe key of a collection: the ATT&CK domain when the
// title names one (enterprise-attack, mobile-attack, ics-attack), otherwise the sanitised id.
func CollectionKey(id, title string) string {
	t := strings.ToLower(title)
	for _, d := range []string{"enterprise", "mobile", "ics", "pre"} {
		if strings.Contains(t, d) && strings.Contains(t, "att&ck") {
			return d + "-attack"
		}
	}
	return Token(strings.TrimPrefix(id, "x-mitre-collection--"))
}

// Options holds what Connect needs.
type Options struct {
	URL      string
	Creds    string
	User     string
	Password string
	Token    string
	CAFile   string
	// Name is the client name shown by the server, such as the service's name.
	Name string
}

// OptionsFrom reads the NATS keys of a configuration.
func OptionsFrom(c *config.Values, name string) Options {
	return Options{
		URL: c.String("NATS_URL"), Creds: c.String("NATS_CREDS"), User: c.String("NATS_USER"),
		Password: c.String("NATS_PASSWORD"), Token: c.String("NATS_TOKEN"),
		CAFile: c.String("NATS_CA_FILE"), Name: name,
	}
}

// Connect connects to NATS, retrying the first connection until ctx ends, and reconnecting for
// ever afterwards. Connection events are logged.
func Connect(ctx context.Context, o Options, log *zap.Logger) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ReconnectBufSize(64 << 20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err == nil {
				return // a clean close by this process
			}
			log.Warn("disconnected from NATS; reconnecting", zap.Error(err))
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("reconnected to NATS", zap.String("url", config.RedactURL(nc.ConnectedUrl())))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			log.Warn("NATS error", zap.String("subject", subj), zap.Error(err))
		}),
	}
	if o.Creds != "" {
		opts = append(opts, nats.UserCredentials(o.Creds))
	}
	if o.User != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.CAFile != "" {
		opts = append(opts, nats.RootCAs(o.CAFile))
	}
	url := config.RedactURL(o.URL)
	wait := 250 * time.Millisecond
	for attempt := 1; ; attempt++ {
		nc, err := nats.Connect(o.URL, opts...)
		if err == nil {
			log.Info("connected to NATS", zap.String("url", config.RedactURL(nc.ConnectedUrl())))
			return nc, nil
		}
		log.Warn("cannot reach NATS; retrying", zap.String("url", url), zap.Int("attempt", attempt),
			zap.Duration("wait", wait), zap.String("error", config.RedactText(err.Error())))
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to NATS at %s: %w", url, errors.Join(ctx.Err(), err))
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// StreamOptions shapes the streams EnsureStreams creates.
type StreamOptions struct {
	// Replicas is the replication factor (1 on a single server).
	Replicas int
	// RawHistory is how many versions of each object the raw stream keeps.
	RawHistory int
	// DLQMaxAge is how long dead letters are kept.
	DLQMaxAge time.Duration
	// MaxMsgBytes is the largest message the streams accept.
	MaxMsgBytes int32
}

// StreamOptionsFrom reads the stream keys of a configuration.
func StreamOptionsFrom(c *config.Values) (StreamOptions, error) {
	var o StreamOptions
	var err error
	if o.Replicas, err = c.Int("STREAM_REPLICAS"); err != nil {
		return o, err
	}
	if o.RawHistory, err = c.Int("RAW_HISTORY"); err != nil {
		return o, err
	}
	if o.DLQMaxAge, err = c.Duration("DLQ_MAX_AGE"); err != nil {
		return o, err
	}
	return o, nil
}

// StreamConfigs returns the configurations of the three streams and the control stream.
func StreamConfigs(o StreamOptions) []jetstream.StreamConfig {
	replicas := max(o.Replicas, 1)
	history := int64(max(o.RawHistory, 1))
	return []jetstream.StreamConfig{
		{
			Name:              StreamRaw,
			Description:       "Every STIX object as the TAXII server sent it, latest versions per object.",
			Subjects:          []string{rawPrefix + ">", ctlPrefix + ">"},
			Retention:         jetstream.LimitsPolicy,
			MaxMsgsPerSubject: history,
			Storage:           jetstream.FileStorage,
			Replicas:          replicas,
			Duplicates:        2 * time.Minute,
			AllowDirect:       true,
		},
		{
			Name:        StreamFlat,
			Description: "Flattened documents waiting for a loader.",
			Subjects:    []string{flatPrefix + ">"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			Duplicates:  2 * time.Minute,
		},
		{
			Name:        StreamDLQ,
			Description: "What a stage could not process, with the reason in headers.",
			Subjects:    []string{dlqPrefix + ">"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
			MaxAge:      o.DLQMaxAge,
		},
	}
}

// EnsureStreams creates the streams, or updates them to the given options, idempotently.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, o StreamOptions) error {
	for _, cfg := range StreamConfigs(o) {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return fmt.Errorf("create stream %s: %w", cfg.Name, err)
		}
	}
	return nil
}

// FlatBacklog returns how many flattened documents the loaders' durable consumer has not
// finished: not yet delivered, or delivered and not acked (nak'ed ones included). Zero means
// every loader is done with everything published so far.
//
// It reads the consumer, not the size of the work-queue stream: after a nats-server restart a
// message that was acked just before can stay in the stream below the consumer's ack floor,
// never to be delivered again (seen with nats-server 2.12.3 in the restart test; the document
// had been written), so the stream's size need not reach zero.
func FlatBacklog(ctx context.Context, js jetstream.JetStream, durable string) (uint64, error) {
	c, err := js.Consumer(ctx, StreamFlat, durable)
	if err != nil {
		return 0, fmt.Errorf("consumer %s on %s: %w", durable, StreamFlat, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer %s on %s: %w", durable, StreamFlat, err)
	}
	return info.NumPending + uint64(info.NumAckPending), nil
}
