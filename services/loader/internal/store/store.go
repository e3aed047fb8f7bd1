// Package store writes flattened documents to MongoDB (or a Mongo-wire server such as FerretDB):
// connection, indexes, the version-guarded write strategy, and full-sync pruning. It knows
// nothing of NATS and never logs.
package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Mode says how the writes of the conflict path (replacements and compare-and-set updates) are
// sent to the server.
type Mode string

// The write modes.
const (
	// ModeAuto picks ModeSingle on FerretDB and ModeBulk elsewhere.
	ModeAuto Mode = "auto"
	// ModeBulk sends the writes of a batch as one unordered BulkWrite (real MongoDB).
	ModeBulk Mode = "bulk"
	// ModeSingle sends one statement per command, a few at once (FerretDB, where an update
	// command with many statements hangs the server).
	ModeSingle Mode = "single"
)

// ErrBadMode is returned for a write mode that is not auto, bulk or single.
var ErrBadMode = errors.New("unknown write mode")

// ErrBadURI is returned for a connection string that can never work, whatever the server does.
var ErrBadURI = errors.New("malformed MongoDB connection string")

// CheckURI parses a connection string as the driver will, without connecting.
func CheckURI(uri string) error {
	if err := options.Client().ApplyURI(uri).Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrBadURI, err)
	}
	return nil
}

// Options configures Open.
type Options struct {
	// URI is the MongoDB connection string.
	URI string
	// Database and Collection name where documents are stored.
	Database, Collection string
	// Mode is the write mode; empty means ModeAuto.
	Mode Mode
	// Concurrency is how many single-statement writes run at once in ModeSingle (default 4).
	Concurrency int
	// CASTries bounds how often one document is re-read and decided again after a concurrent
	// writer changed it between the read and the write (default 10).
	CASTries int
	// Timeout bounds connecting and server selection (default 10s).
	Timeout time.Duration
	// NoMemory turns off the memory of stored versions (see Warm); every write then asks the
	// server.
	NoMemory bool
	// SwapMin is the fewest replacements in one batch that ModeSingle writes as one delete and
	// one insert rather than one guarded replaceOne each (default 50; negative turns it off).
	SwapMin int
	// NoLocks turns off the locks that serialise changes of one stored document across stores
	// on FerretDB (see locker); tests use it to show what they prevent.
	NoLocks bool
	// LockTTL is the age at which a lock left by a dead store is taken over (default 2 min).
	LockTTL time.Duration
}

// Store is a MongoDB collection of documents. It is safe for concurrent use, and any number of
// stores (in one process or many) may write the same collection at once.
type Store struct {
	client *mongo.Client
	db     *mongo.Database
	coll   *mongo.Collection
	mode   Mode
	ferret string
	conc   int
	tries  int
	// bulkChunk is the most models sent in one BulkWrite; tests set it to 1.
	bulkChunk int
	// swapMin is the fewest replacements of a batch written by swap; 0 turns swap off.
	swapMin int
	now     func() time.Time
	// meta holds the pruning events; known is the memory of stored versions, nil when off.
	meta  *mongo.Collection
	known *known
	// locks is set on servers whose conditional writes are not atomic (FerretDB).
	locks *locker
	// beforeCreate, when set by a test, runs before each index creation.
	beforeCreate func(name string)
}

// Open connects to the server, detects FerretDB and settles the write mode. The connection is
// checked with a ping, so an unreachable server is an error here.
func Open(ctx context.Context, o Options) (*Store, error) {
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if err := CheckURI(o.URI); err != nil {
		return nil, err
	}
	copts := options.Client().ApplyURI(o.URI).
		SetServerSelectionTimeout(o.Timeout).
		SetConnectTimeout(o.Timeout).
		SetAppName("attack-etl-loader")
	client, err := mongo.Connect(copts)
	if err != nil {
		return nil, fmt.Errorf("connect to MongoDB: %w", err)
	}
	s := &Store{
		client: client, db: client.Database(o.Database),
		conc: max(o.Concurrency, 1), tries: o.CASTries, bulkChunk: 1000,
		now: func() time.Time { return time.Now().UTC().Truncate(time.Millisecond) },
	}
	if o.Concurrency <= 0 {
		s.conc = 4
	}
	if s.tries <= 0 {
		s.tries = 10
	}
	switch {
	case o.SwapMin == 0:
		s.swapMin = 50
	case o.SwapMin > 0:
		s.swapMin = o.SwapMin
	}
	s.coll = s.db.Collection(o.Collection)
	s.meta = s.db.Collection(o.Collection + "_meta")
	if !o.NoMemory {
		s.known = &known{m: map[string]stored{}, seen: map[string]bool{},
			since: time.Now().UTC()}
	}
	if err := s.Ping(ctx); err != nil {
		_ = client.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	s.ferret, err = ferretVersion(ctx, client)
	if err != nil {
		_ = client.Disconnect(context.WithoutCancel(ctx))
		return nil, err
	}
	if s.ferret != "" && !o.NoLocks {
		s.locks = newLocker(s.db.Collection(o.Collection+"_locks"), o.LockTTL)
	}
	switch o.Mode {
	case "", ModeAuto:
		s.mode = ModeBulk
		if s.ferret != "" {
			s.mode = ModeSingle
		}
	case ModeBulk, ModeSingle:
		s.mode = o.Mode
	default:
		_ = client.Disconnect(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("%w %q: want auto, bulk or single", ErrBadMode, o.Mode)
	}
	return s, nil
}

// ParseMode reads a write mode from configuration text.
func ParseMode(s string) (Mode, error) {
	switch m := Mode(strings.ToLower(strings.TrimSpace(s))); m {
	case "", ModeAuto:
		return ModeAuto, nil
	case ModeBulk, ModeSingle:
		return m, nil
	default:
		return "", fmt.Errorf("%w %q: want auto, bulk or single", ErrBadMode, s)
	}
}

func ferretVersion(ctx context.Context, c *mongo.Client) (string, error) {
	raw, err := c.Database("admin").RunCommand(ctx, bson.D{{Key: "buildInfo", Value: 1}}).Raw()
	if err != nil {
		return "", fmt.Errorf("buildInfo: %w", err)
	}
	v, err := raw.LookupErr("ferretdbVersion")
	if err != nil {
		return "", nil
	}
	if s, ok := v.StringValueOK(); ok {
		return s, nil
	}
	return "unknown", nil
}

// Ping checks that the server answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.client.Ping(ctx, nil); err != nil {
		return fmt.Errorf("ping MongoDB: %w", err)
	}
	return nil
}

// Mode returns the write mode in use (never ModeAuto).
func (s *Store) Mode() Mode { return s.mode }

// FerretDB returns the FerretDB version of the server, empty when it is not FerretDB.
func (s *Store) FerretDB() string { return s.ferret }

// Collection returns the collection of documents.
func (s *Store) Collection() *mongo.Collection { return s.coll }

// Database returns the database of the collection.
func (s *Store) Database() *mongo.Database { return s.db }

// Close disconnects from the server.
func (s *Store) Close(ctx context.Context) error {
	if err := s.client.Disconnect(ctx); err != nil {
		return fmt.Errorf("disconnect from MongoDB: %w", err)
	}
	return nil
}

// indexedFields are the single-field indexes serving the documented queries.
var indexedFields = []string{
	"type", "attack_id", "name", "tactics", "platforms", "domains", "collections",
	"revoked", "deprecated", "active", "relationship_type", "source_ref", "target_ref",
	"source_attack_id", "target_attack_id", "source_type", "target_type", "modified",
}

// IndexReport says what EnsureIndexes did.
type IndexReport struct {
	// Created names the indexes that exist now (created or already there).
	Created []string
	// TextSkipped is set when the server refused the text index (FerretDB v1 has none), and
	// TextError carries its answer.
	TextSkipped bool
	TextError   string
}

// EnsureIndexes creates the indexes of the documented queries, idempotently: creating an index
// that exists with the same keys is a no-op. The text index over name and description is
// created where the server supports it; elsewhere it is skipped and reported.
func (s *Store) EnsureIndexes(ctx context.Context) (IndexReport, error) {
	var rep IndexReport
	have, err := s.ensureFieldIndexes(ctx)
	if err != nil {
		return rep, err
	}
	for _, f := range indexedFields {
		rep.Created = append(rep.Created, f+"_1")
	}
	if s.ferret != "" {
		// FerretDB v1 has no text indexes, and asking for one answers IndexNotFound and then
		// drops the connection (a panic in the server), so it is not even tried.
		rep.TextSkipped, rep.TextError = true, "FerretDB has no text indexes (version "+s.ferret+")"
		return rep, nil
	}
	if have[textIndex] {
		rep.Created = append(rep.Created, textIndex)
		return rep, nil
	}
	text := mongo.IndexModel{
		Keys:    bson.D{{Key: "name", Value: "text"}, {Key: "description", Value: "text"}},
		Options: options.Index().SetName(textIndex),
	}
	name, err := s.coll.Indexes().CreateOne(ctx, text)
	if err != nil {
		var ce mongo.CommandError
		if errors.As(err, &ce) {
			rep.TextSkipped, rep.TextError = true, err.Error()
			return rep, nil
		}
		return rep, fmt.Errorf("create text index on %s: %w", s.coll.Name(), err)
	}
	rep.Created = append(rep.Created, name)
	return rep, nil
}

const textIndex = "text_name_description"

// indexTries bounds the rounds of ensureFieldIndexes.
const indexTries = 8

// ensureFieldIndexes creates the missing single-field indexes one at a time, and lists the
// indexes again after a failure: several loaders starting at once race to create the same
// indexes, and FerretDB v1 drops the connection of the loser (it panics on an index that
// exists). It returns the indexes that exist in the end.
func (s *Store) ensureFieldIndexes(ctx context.Context) (map[string]bool, error) {
	var last error
	for try := range indexTries {
		if try > 0 {
			select {
			case <-ctx.Done():
				return nil, fmt.Errorf("create indexes on %s: %w", s.coll.Name(),
					errors.Join(ctx.Err(), last))
			case <-time.After(time.Duration(try) * 250 * time.Millisecond):
			}
		}
		have, err := s.indexNames(ctx)
		if err != nil {
			last = err
			continue
		}
		last = nil
		for _, f := range indexedFields {
			name := f + "_1"
			if have[name] {
				continue
			}
			if s.beforeCreate != nil {
				s.beforeCreate(name)
			}
			_, err := s.coll.Indexes().CreateOne(ctx, mongo.IndexModel{
				Keys: bson.D{{Key: f, Value: 1}}, Options: options.Index().SetName(name)})
			if err != nil {
				last = fmt.Errorf("create index %s on %s: %w", name, s.coll.Name(), err)
				break
			}
			have[name] = true
		}
		if last == nil {
			return have, nil
		}
	}
	return nil, last
}

func (s *Store) indexNames(ctx context.Context) (map[string]bool, error) {
	cur, err := s.coll.Indexes().List(ctx)
	if err != nil {
		return nil, fmt.Errorf("list indexes of %s: %w", s.coll.Name(), err)
	}
	var specs []struct {
		Name string `bson:"name"`
	}
	if err := cur.All(ctx, &specs); err != nil {
		return nil, fmt.Errorf("list indexes of %s: %w", s.coll.Name(), err)
	}
	out := make(map[string]bool, len(specs))
	for _, sp := range specs {
		out[sp.Name] = true
	}
	return out, nil
}
