package config

// The key catalogue: every setting of every service, declared once. .env.example is generated
// from All and a test checks that the file in the repository matches it.

// Group names used in the catalogue and in .env.example.
const (
	GroupCommon      = "common to every service"
	GroupNATS        = "NATS JetStream"
	GroupExtractor   = "extractor (TAXII 2.1 client)"
	GroupTransformer = "transformer"
	GroupLoader      = "loader (MongoDB)"
	GroupMirror      = "mirror (the project's own TAXII 2.1 server)"
)

// Common holds the keys every service reads.
var Common = []Key{
	{Name: "LOG_LEVEL", Default: "info", Group: GroupCommon,
		Usage: "Log level: debug, info, warn or error."},
	{Name: "LOG_FORMAT", Default: "auto", Group: GroupCommon,
		Usage: "Log encoding: console, json, or auto (console on a terminal, JSON otherwise)."},
	{Name: "METRICS_ADDR", Default: "", Group: GroupCommon,
		Usage: "Address for /metrics, /healthz and /readyz, such as 127.0.0.1:9101; " +
			"empty turns it off."},
	{Name: "SHUTDOWN_GRACE", Default: "20s", Group: GroupCommon,
		Usage: "How long a stopping service may take to finish the batch in hand before it exits."},
}

// NATS holds the keys of every service that uses NATS JetStream.
var NATS = []Key{
	{Name: "NATS_URL", Default: "nats://127.0.0.1:4222", Group: GroupNATS,
		Usage: "NATS server URL, or a comma-separated list of a cluster's URLs."},
	{Name: "NATS_CREDS", Default: "", Group: GroupNATS,
		Usage: "Path of a NATS credentials (.creds) file."},
	{Name: "NATS_USER", Default: "", Group: GroupNATS, Usage: "NATS user name."},
	{Name: "NATS_PASSWORD", Default: "", Group: GroupNATS, Secret: true,
		Usage: "NATS password."},
	{Name: "NATS_TOKEN", Default: "", Group: GroupNATS, Secret: true,
		Usage: "NATS authentication token."},
	{Name: "NATS_CA_FILE", Default: "", Group: GroupNATS,
		Usage: "PEM file of the CA that signed the NATS server's certificate."},
	{Name: "STREAM_REPLICAS", Default: "1", Group: GroupNATS,
		Usage: "Replication factor of the JetStream streams (3 on a three-node cluster)."},
	{Name: "RAW_HISTORY", Default: "1", Group: GroupNATS,
		Usage: "Versions of each STIX object the raw stream keeps (1 keeps only the latest)."},
	{Name: "DLQ_MAX_AGE", Default: "720h", Group: GroupNATS,
		Usage: "How long dead letters are kept in the STIX_DLQ stream."},
	{Name: "MAX_OBJECT_BYTES", Default: "900000", Group: GroupNATS,
		Usage: "Largest STIX object, in bytes, carried as one message; larger ones " +
			"are dead-lettered."},
}

// Extractor holds the extractor's own keys.
var Extractor = []Key{
	{Name: "TAXII_API_URL", Default: "https://attack-taxii.mitre.org/api/v21/", Group: GroupExtractor,
		Usage: "TAXII 2.1 API root or discovery URL to read."},
	{Name: "TAXII_COLLECTIONS", Default: "", Group: GroupExtractor,
		Usage: "Comma-separated collection ids or titles to read; empty reads every collection."},
	{Name: "TAXII_USER", Default: "", Group: GroupExtractor,
		Usage: "User name for HTTP basic authentication."},
	{Name: "TAXII_PASSWORD", Default: "", Group: GroupExtractor, Secret: true,
		Usage: "Password for HTTP basic authentication."},
	{Name: "TAXII_TOKEN", Default: "", Group: GroupExtractor, Secret: true,
		Usage: "Bearer token sent as the Authorization header."},
	{Name: "TAXII_CA_FILE", Default: "", Group: GroupExtractor,
		Usage: "PEM file of extra CAs to trust for the TAXII server."},
	{Name: "TAXII_CERT_FILE", Default: "", Group: GroupExtractor,
		Usage: "PEM client certificate for mutual TLS."},
	{Name: "TAXII_KEY_FILE", Default: "", Group: GroupExtractor,
		Usage: "PEM private key of the client certificate."},
	{Name: "TAXII_PAGE_SIZE", Default: "0", Group: GroupExtractor,
		Usage: "Objects asked for per page (limit); 0 asks for the largest page the server gives."},
	{Name: "TAXII_TIMEOUT", Default: "120s", Group: GroupExtractor,
		Usage: "Time-out of one HTTP request, body included."},
	{Name: "TAXII_RETRIES", Default: "4", Group: GroupExtractor,
		Usage: "Retries of a failed request (429, 5xx, time-out) before the run fails."},
	{Name: "TAXII_RETRY_BASE", Default: "1s", Group: GroupExtractor,
		Usage: "First back-off wait; it doubles with jitter on each retry."},
	{Name: "TAXII_REQUESTS_PER_MINUTE", Default: "0", Group: GroupExtractor,
		Usage: "Most requests a minute; 0 means 4 for attack-taxii.mitre.org and no " +
			"limit elsewhere."},
	{Name: "TAXII_MAX_PAGES", Default: "10000", Group: GroupExtractor,
		Usage: "Most pages read from one collection in one run, a guard against a looping server."},
	{Name: "TAXII_TRUST_ADDED_AFTER", Default: "false", Group: GroupExtractor,
		Usage: "Use a stored added_after checkpoint; only for servers that date " +
			"objects when added."},
	{Name: "SOURCE_BUNDLE", Default: "", Group: GroupExtractor,
		Usage: "Comma-separated STIX bundle files or URLs (plain or .gz) to read " +
			"instead of TAXII."},
	{Name: "EXTRACT_FULL", Default: "false", Group: GroupExtractor,
		Usage: "Re-read every collection whole, ignoring checkpoints (the --full flag)."},
	{Name: "EXTRACT_WATCH", Default: "0", Group: GroupExtractor,
		Usage: "Poll again after this interval (such as 6h); 0 runs once and exits."},
}

// Transformer holds the transformer's own keys.
var Transformer = []Key{
	{Name: "TRANSFORMER_DURABLE", Default: "transformer", Group: GroupTransformer,
		Usage: "Name of the transformer's durable consumer on the raw stream."},
	{Name: "TRANSFORMER_BATCH_SIZE", Default: "500", Group: GroupTransformer,
		Usage: "Raw messages fetched per batch."},
	{Name: "TRANSFORMER_MAX_DELIVER", Default: "10", Group: GroupTransformer,
		Usage: "Deliveries of a raw message before it is dead-lettered."},
	{Name: "TRANSFORMER_ACK_WAIT", Default: "60s", Group: GroupTransformer,
		Usage: "How long JetStream waits for an ack before it redelivers a raw message."},
	{Name: "TRANSFORMER_HOLD_UNRESOLVED", Default: "40s", Group: GroupTransformer,
		Usage: "How long a new relationship waits for an unknown end before it is " +
			"published half resolved; 0 never waits."},
	{Name: "TRANSFORMER_SCHEMA_VERSION", Default: "", Group: GroupTransformer,
		Usage: "Schema version written to provenance and _rev; empty uses the " +
			"built-in one (replay after raising it)."},
}

// Loader holds the loader's own keys.
var Loader = []Key{
	{Name: "MONGO_URI", Default: "mongodb://127.0.0.1:27017", Group: GroupLoader, Secret: false,
		Usage: "MongoDB connection string; its password is never logged."},
	{Name: "DB_NAME", Default: "attack", Group: GroupLoader,
		Usage: "MongoDB database name."},
	{Name: "COLLECTION_NAME", Default: "objects", Group: GroupLoader,
		Usage: "MongoDB collection that holds one document per STIX object."},
	{Name: "LOADER_DURABLE", Default: "loader", Group: GroupLoader,
		Usage: "Name of the durable consumer that every loader replica shares."},
	{Name: "LOADER_BATCH_SIZE", Default: "500", Group: GroupLoader,
		Usage: "Most documents written per batch."},
	{Name: "LOADER_REWRITE_BATCH_SIZE", Default: "5000", Group: GroupLoader,
		Usage: "Most documents per batch while replacements are swapped in bulk (a " +
			"replay on FerretDB, where each such batch costs one collection scan)."},
	{Name: "LOADER_BATCH_WAIT", Default: "1s", Group: GroupLoader,
		Usage: "Longest wait to fill a batch before writing what arrived."},
	{Name: "LOADER_WRITE_MODE", Default: "auto", Group: GroupLoader,
		Usage: "How replacements are written: bulk, single, or auto (single on " +
			"FerretDB, bulk otherwise)."},
	{Name: "LOADER_CONCURRENCY", Default: "4", Group: GroupLoader,
		Usage: "Replacements written at once in single mode."},
	{Name: "LOADER_SWAP_MIN", Default: "50", Group: GroupLoader,
		Usage: "In single mode, the fewest replacements in a batch written as one " +
			"delete and one insert (a replay); 0 writes each with its own replaceOne."},
	{Name: "LOADER_ACK_WAIT", Default: "60s", Group: GroupLoader,
		Usage: "How long JetStream waits for an ack before it hands a message to another loader."},
	{Name: "LOADER_MAX_DELIVER", Default: "10", Group: GroupLoader,
		Usage: "Deliveries of a document before it is dead-lettered with the last error."},
	{Name: "LOADER_RETRY_MAX", Default: "30s", Group: GroupLoader,
		Usage: "Longest back-off wait between attempts while MongoDB is unreachable."},
	{Name: "LOADER_BACKOFF", Default: "", Group: GroupLoader,
		Usage: "Comma-separated redelivery delays after failed deliveries (the " +
			"consumer's BackOff, such as 5s,30s,2m); empty doubles from 2s."},
	{Name: "LOADER_MEMORY", Default: "true", Group: GroupLoader,
		Usage: "Remember stored versions (read once at start) so unchanged documents " +
			"cost no database round trip."},
	{Name: "LOADER_PROGRESS_EVERY", Default: "5s", Group: GroupLoader,
		Usage: "How often the loader logs its progress and the change report so far."},
}

// Mirror holds the keys of the project's TAXII 2.1 server.
var Mirror = []Key{
	{Name: "MIRROR_ADDR", Default: "127.0.0.1:8000", Group: GroupMirror,
		Usage: "Address the TAXII server listens on."},
	{Name: "MIRROR_BUNDLES", Default: "", Group: GroupMirror,
		Usage: "Comma-separated STIX bundle files (plain or .gz), one collection each."},
	{Name: "MIRROR_MODE", Default: "standard", Group: GroupMirror,
		Usage: "standard follows TAXII 2.1; mitre reproduces attack-taxii.mitre.org's behaviour."},
	{Name: "MIRROR_MAX_PAGE", Default: "1000", Group: GroupMirror,
		Usage: "Largest page in standard mode (the limit a client may ask for)."},
	{Name: "MIRROR_REQUEST_LOG", Default: "", Group: GroupMirror,
		Usage: "File to append one line per request to, so tests can count requests."},
}

// Join concatenates key lists.
func Join(lists ...[]Key) []Key {
	var out []Key
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

// All returns every key of every service, without repeats, in catalogue order.
func All() []Key {
	return Join(Common, NATS, Extractor, Transformer, Loader, Mirror, Runner)
}

// GroupRunner names the keys of the etlctl command that runs the whole pipeline locally.
const GroupRunner = "etlctl (local runs, replay, dead letters)"

// Runner holds the keys of etlctl, which runs the pipeline once on a local stack.
var Runner = []Key{
	{Name: "ETL_LOCAL_DIR", Default: ".local", Group: GroupRunner,
		Usage: "Folder of the local stack's data and logs (git-ignored)."},
	{Name: "ETL_BIN_DIR", Default: "bin", Group: GroupRunner,
		Usage: "Folder of the built service binaries."},
	{Name: "ETL_TOOLS_DIR", Default: ".local/bin", Group: GroupRunner,
		Usage: "Folder of nats-server and ferretdb, built by make tools."},
	{Name: "ATTACK_DATA_DIR", Default: "../shared/attack", Group: GroupRunner,
		Usage: "Folder of the ATT&CK bundles the local TAXII server serves when " +
			"TAXII_API_URL is unset."},
	{Name: "ATTACK_RELEASE", Default: "18.1", Group: GroupRunner,
		Usage: "ATT&CK release whose bundles the local TAXII server serves."},
	{Name: "ETL_LOADERS", Default: "1", Group: GroupRunner,
		Usage: "Loader processes the run command starts side by side."},
	{Name: "ETL_RUN_TIMEOUT", Default: "30m", Group: GroupRunner,
		Usage: "Longest time the run command waits for the pipeline to finish."},
}
