package ops_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/attack-etl/attack-etl/shared/ops"
)

func TestNewMetricsNames(t *testing.T) {
	reg := prometheus.NewRegistry()
	m := ops.NewMetrics(reg)
	// Record one sample in each vector so that every family is exported.
	m.Fetched.WithLabelValues("ics-attack").Inc()
	m.Published.WithLabelValues("ics-attack", ops.OutcomeNew).Inc()
	m.Transformed.WithLabelValues("attack-pattern", ops.OutcomeOK).Inc()
	m.Loaded.WithLabelValues(ops.OutcomeNewVersion).Inc()
	m.DeadLettered.WithLabelValues(ops.StageTransformer, "not-json").Inc()
	m.ObserveDelivery(ops.StageLoader, 1)
	m.ObserveDelivery(ops.StageLoader, 3)
	m.Retries.WithLabelValues(ops.StageExtractor, "http_503").Inc()
	m.RequestDuration.WithLabelValues("objects", "200").Observe(0.4)
	m.BatchDuration.WithLabelValues(ops.StageLoader).Observe(0.02)
	m.BatchSize.WithLabelValues(ops.StageLoader).Observe(500)
	m.ConsumerPending.WithLabelValues("STIX_FLAT", "loader").Set(7)
	m.ConsumerAckPending.WithLabelValues("STIX_FLAT", "loader").Set(2)
	m.LastSync.WithLabelValues("ics-attack").SetToCurrentTime()

	want := []string{
		"attack_etl_objects_fetched_total",
		"attack_etl_objects_published_total",
		"attack_etl_objects_transformed_total",
		"attack_etl_documents_loaded_total",
		"attack_etl_dead_letters_total",
		"attack_etl_redeliveries_total",
		"attack_etl_retries_total",
		"attack_etl_request_duration_seconds",
		"attack_etl_batch_duration_seconds",
		"attack_etl_batch_size",
		"attack_etl_consumer_pending_messages",
		"attack_etl_consumer_ack_pending_messages",
		"attack_etl_last_sync_timestamp_seconds",
	}
	n, err := testutil.GatherAndCount(reg)
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	if n == 0 {
		t.Fatal("gathered no metrics")
	}
	for _, name := range want {
		t.Run(name, func(t *testing.T) {
			c, err := testutil.GatherAndCount(reg, name)
			if err != nil || c == 0 {
				t.Fatalf("%s: %d series, err %v", name, c, err)
			}
		})
	}
	if got := testutil.ToFloat64(m.Redelivered.WithLabelValues(ops.StageLoader)); got != 1 {
		t.Errorf("redeliveries after deliveries 1 and 3: %v, want 1", got)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("metric %s: %s", p.Metric, p.Text)
	}
}

func TestNewMetricsTwicePanics(t *testing.T) {
	reg := prometheus.NewRegistry()
	ops.NewMetrics(reg)
	defer func() {
		if recover() == nil {
			t.Fatal("second NewMetrics on one registry did not panic")
		}
	}()
	ops.NewMetrics(reg)
}

// fakeConsumer answers Info from a list of results, one per call, repeating the last one.
type fakeConsumer struct {
	mu      sync.Mutex
	results []fakeInfo
	calls   int
}

type fakeInfo struct {
	info *jetstream.ConsumerInfo
	err  error
}

func (f *fakeConsumer) Info(context.Context) (*jetstream.ConsumerInfo, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	r := f.results[min(f.calls, len(f.results)-1)]
	f.calls++
	return r.info, r.err
}

func (f *fakeConsumer) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

func info(pending uint64, ackPending int) *jetstream.ConsumerInfo {
	return &jetstream.ConsumerInfo{Stream: "STIX_RAW", Name: "transformer",
		NumPending: pending, NumAckPending: ackPending}
}

func TestWatchConsumerLag(t *testing.T) {
	errDown := errors.New("nats: no responders")
	fc := &fakeConsumer{results: []fakeInfo{
		{info: info(100, 5)},
		{err: errDown},
		{info: info(0, 0)},
	}}
	m := ops.NewMetrics(prometheus.NewRegistry())
	ctx, cancel := context.WithCancel(context.Background())
	var (
		mu   sync.Mutex
		errs []error
	)
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.WatchConsumerLag(ctx, fc, 10*time.Millisecond, func(err error) {
			mu.Lock()
			errs = append(errs, err)
			mu.Unlock()
		})
	}()
	pending := m.ConsumerPending.WithLabelValues("STIX_RAW", "transformer")
	ackPending := m.ConsumerAckPending.WithLabelValues("STIX_RAW", "transformer")
	deadline := time.Now().Add(5 * time.Second)
	for fc.Calls() < 4 {
		if time.Now().After(deadline) {
			t.Fatalf("poller made %d calls in 5s, want 4", fc.Calls())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("WatchConsumerLag did not return after cancel")
	}
	if got := testutil.ToFloat64(pending); got != 0 {
		t.Errorf("pending after the backlog drained: %v, want 0", got)
	}
	if got := testutil.ToFloat64(ackPending); got != 0 {
		t.Errorf("ack pending after the backlog drained: %v, want 0", got)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(errs) != 1 || !errors.Is(errs[0], errDown) {
		t.Errorf("errors reported: %v, want one wrapping %v", errs, errDown)
	}
}

func TestPollConsumerLag(t *testing.T) {
	tests := []struct {
		name        string
		result      fakeInfo
		wantPending float64
		wantErr     string
	}{
		{name: "backlog", result: fakeInfo{info: info(28986, 500)}, wantPending: 28986},
		{name: "error keeps the last value", result: fakeInfo{err: errors.New("timeout")},
			wantPending: 42, wantErr: "consumer info for lag: timeout"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := ops.NewMetrics(prometheus.NewRegistry())
			g := m.ConsumerPending.WithLabelValues("STIX_RAW", "transformer")
			g.Set(42)
			err := m.PollConsumerLag(context.Background(), &fakeConsumer{
				results: []fakeInfo{tt.result}}, time.Second)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("PollConsumerLag: %v", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("PollConsumerLag: error %v, want %q", err, tt.wantErr)
			}
			if got := testutil.ToFloat64(g); got != tt.wantPending {
				t.Fatalf("pending: %v, want %v", got, tt.wantPending)
			}
		})
	}
}
