package ops

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Namespace prefixes every metric of the product.
const Namespace = "attack_etl"

// Stage label values.
const (
	StageExtractor   = "extractor"
	StageTransformer = "transformer"
	StageLoader      = "loader"
	StageMirror      = "mirror"
)

// Outcome label values. Each counter documents which of them it takes.
const (
	// OutcomeNew: the extractor published a version JetStream did not hold.
	OutcomeNew = "new"
	// OutcomeUnchanged: a version already held (extractor: skipped or a duplicate message id;
	// loader: the stored document has the same _rev).
	OutcomeUnchanged = "unchanged"
	// OutcomeRejected: the extractor did not publish the object (too large, unreadable) and
	// dead-lettered it.
	OutcomeRejected = "rejected"
	// OutcomeOK: the transformer published the flattened document.
	OutcomeOK = "ok"
	// OutcomeDeadLettered: the transformer sent the object to the dead-letter stream.
	OutcomeDeadLettered = "dead_lettered"
	// OutcomeAdded: the loader inserted a document for a STIX id it did not hold.
	OutcomeAdded = "added"
	// OutcomeNewVersion: the loader replaced a stored document by a greater _rev.
	OutcomeNewVersion = "new_version"
	// OutcomeOutOfDate: the loader kept the stored document because it has a greater _rev.
	OutcomeOutOfDate = "out_of_date"
	// OutcomeFailed: the loader could not write the document in this delivery.
	OutcomeFailed = "failed"
)

// Metrics holds every attack_etl_* metric. Each service creates one set on its own registry
// and records only the metrics of its stage; a vector nobody recorded into is not exported.
type Metrics struct {
	// Fetched counts STIX objects read from a TAXII page or bundle, by collection.
	// attack_etl_objects_fetched_total{collection}
	Fetched *prometheus.CounterVec
	// Published counts the extractor's objects by collection and outcome (new, unchanged,
	// rejected). attack_etl_objects_published_total{collection,outcome}
	Published *prometheus.CounterVec
	// Transformed counts the transformer's objects by STIX type and outcome (ok,
	// dead_lettered). attack_etl_objects_transformed_total{type,outcome}
	Transformed *prometheus.CounterVec
	// Loaded counts the loader's documents by outcome (added, new_version, unchanged,
	// out_of_date, failed). attack_etl_documents_loaded_total{outcome}
	Loaded *prometheus.CounterVec
	// DeadLettered counts messages sent to the dead-letter stream, by stage and bus.Kind.
	// attack_etl_dead_letters_total{stage,kind}
	DeadLettered *prometheus.CounterVec
	// Redelivered counts messages a stage received more than once, by stage.
	// attack_etl_redeliveries_total{stage}
	Redelivered *prometheus.CounterVec
	// Retries counts retried operations by stage and a short reason (such as http_503,
	// timeout, mongo_unreachable). attack_etl_retries_total{stage,reason}
	Retries *prometheus.CounterVec
	// RequestDuration observes the extractor's HTTP requests in seconds, by operation
	// (discovery, collections, objects, manifest) and status code ("error" when no answer).
	// attack_etl_request_duration_seconds{operation,code}
	RequestDuration *prometheus.HistogramVec
	// BatchDuration observes the time a batch took in seconds, by stage (the transformer's
	// batch, the loader's write). attack_etl_batch_duration_seconds{stage}
	BatchDuration *prometheus.HistogramVec
	// BatchSize observes the messages in a batch, by stage. attack_etl_batch_size{stage}
	BatchSize *prometheus.HistogramVec
	// ConsumerPending is the backlog of a durable consumer: messages of its stream it has not
	// been delivered yet. attack_etl_consumer_pending_messages{stream,consumer}
	ConsumerPending *prometheus.GaugeVec
	// ConsumerAckPending is the number of delivered messages not acknowledged yet.
	// attack_etl_consumer_ack_pending_messages{stream,consumer}
	ConsumerAckPending *prometheus.GaugeVec
	// LastSync is the Unix time of the last complete sync of a collection by the extractor.
	// attack_etl_last_sync_timestamp_seconds{collection}
	LastSync *prometheus.GaugeVec
}

// Histogram buckets, in seconds. TAXII pages of the real server take from a fraction of a
// second to about a minute; batches of a few hundred documents take milliseconds to seconds.
var (
	RequestBuckets = []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120}
	BatchBuckets   = []float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30}
	SizeBuckets    = []float64{1, 10, 50, 100, 250, 500, 1000, 2000, 5000}
)

// NewRegistry returns an empty registry with the Go runtime and process collectors (memory,
// CPU, open files), which every service exports beside its own metrics.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// NewMetrics creates every attack_etl_* metric and registers it on reg. It panics when reg
// already holds a metric of the same name, which only a programming error causes (calling it
// twice on one registry), as prometheus.MustRegister does.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: Namespace, Name: name, Help: help}, labels)
	}
	histogram := func(name, help string, buckets []float64,
		labels ...string) *prometheus.HistogramVec {
		return prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: Namespace, Name: name, Help: help, Buckets: buckets}, labels)
	}
	gauge := func(name, help string, labels ...string) *prometheus.GaugeVec {
		return prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Namespace: Namespace, Name: name, Help: help}, labels)
	}
	m := &Metrics{
		Fetched: counter("objects_fetched_total",
			"STIX objects read from the TAXII server or a bundle.", "collection"),
		Published: counter("objects_published_total",
			"STIX objects handled by the extractor: new, unchanged or rejected.",
			"collection", "outcome"),
		Transformed: counter("objects_transformed_total",
			"STIX objects handled by the transformer: ok or dead_lettered.", "type", "outcome"),
		Loaded: counter("documents_loaded_total",
			"Documents handled by the loader: added, new_version, unchanged, out_of_date or "+
				"failed.", "outcome"),
		DeadLettered: counter("dead_letters_total",
			"Messages sent to the dead-letter stream.", "stage", "kind"),
		Redelivered: counter("redeliveries_total",
			"Messages received again after an earlier delivery was not acknowledged.", "stage"),
		Retries: counter("retries_total",
			"Operations retried after a transient failure.", "stage", "reason"),
		RequestDuration: histogram("request_duration_seconds",
			"Duration of the extractor's HTTP requests to the TAXII server.", RequestBuckets,
			"operation", "code"),
		BatchDuration: histogram("batch_duration_seconds",
			"Duration of one batch: the transformer's batch or the loader's write.",
			BatchBuckets, "stage"),
		BatchSize: histogram("batch_size",
			"Messages in one batch.", SizeBuckets, "stage"),
		ConsumerPending: gauge("consumer_pending_messages",
			"Messages of the stream not yet delivered to the durable consumer (its backlog).",
			"stream", "consumer"),
		ConsumerAckPending: gauge("consumer_ack_pending_messages",
			"Messages delivered to the durable consumer and not acknowledged yet.",
			"stream", "consumer"),
		LastSync: gauge("last_sync_timestamp_seconds",
			"Unix time of the last complete sync of a collection.", "collection"),
	}
	reg.MustRegister(m.Fetched, m.Published, m.Transformed, m.Loaded, m.DeadLettered,
		m.Redelivered, m.Retries, m.RequestDuration, m.BatchDuration, m.BatchSize,
		m.ConsumerPending, m.ConsumerAckPending, m.LastSync)
	return m
}

// ObserveDelivery counts a redelivery when a message of the stage arrives for the second time
// or later; numDelivered is the message's delivery count from its JetStream metadata.
func (m *Metrics) ObserveDelivery(stage string, numDelivered uint64) {
	if numDelivered > 1 {
		m.Redelivered.WithLabelValues(stage).Inc()
	}
}
