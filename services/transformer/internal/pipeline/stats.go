package pipeline

import (
	"maps"
	"sync"
	"time"
)

// Stats counts what a pipeline did. It is safe for concurrent use.
type Stats struct {
	mu    sync.Mutex
	start time.Time
	s     Snapshot
}

// Snapshot is a copy of the counters at one moment.
type Snapshot struct {
	// Messages counts the raw and control messages handled (acked or, in replay, read).
	Messages int
	// Transformed counts the documents published for raw messages, per STIX type in PerType.
	Transformed int
	PerType     map[string]int
	// ReEmitted counts the documents published again because an end or a link changed.
	ReEmitted int
	// DeadLettered counts the messages sent to the dead-letter stream, per kind in PerKind.
	DeadLettered int
	PerKind      map[string]int
	// Forwarded counts the control events forwarded to the flattened stream.
	Forwarded int
	// Retried counts the messages left for redelivery after a failure.
	Retried int
	// Held counts the times a relationship was left for redelivery to wait for an end.
	Held int
	// Took is the time since the pipeline started.
	Took time.Duration
}

// Rate returns the messages handled per second.
func (s Snapshot) Rate() float64 {
	if s.Took <= 0 {
		return 0
	}
	return float64(s.Messages) / s.Took.Seconds()
}

func newStats() *Stats {
	return &Stats{start: time.Now(), s: Snapshot{PerType: map[string]int{}, PerKind: map[string]int{}}}
}

func (st *Stats) add(fn func(s *Snapshot)) {
	st.mu.Lock()
	defer st.mu.Unlock()
	fn(&st.s)
}

// Snapshot returns a copy of the counters.
func (st *Stats) Snapshot() Snapshot {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.s
	s.PerType = maps.Clone(st.s.PerType)
	s.PerKind = maps.Clone(st.s.PerKind)
	s.Took = time.Since(st.start)
	return s
}
