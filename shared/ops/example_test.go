package ops_test

import (
	"context"
	"fmt"
	"time"

	"github.com/attack-etl/attack-etl/shared/ops"
)

// A service's run function wires the operations server once, next to its other components.
func ExampleServe() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	// The registry starts with the Go runtime and process metrics; NewMetrics adds the
	// attack_etl_* metrics, which the stage's packages record into.
	reg := ops.NewRegistry()
	metrics := ops.NewMetrics(reg)
	// A real service checks its connections, such as ops.NATSConnected(nc) and a MongoDB ping.
	connected := func(context.Context) error { return nil }

	// METRICS_ADDR: 127.0.0.1:0 picks a free port here; an empty address turns the server off.
	srv, err := ops.Serve(ctx, "127.0.0.1:0", reg, ops.AllOf(connected))
	if err != nil {
		fmt.Println("start:", err)
		return
	}
	defer func() {
		stop, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(stop)
	}()

	metrics.Fetched.WithLabelValues("enterprise-attack").Add(1000)
	fmt.Println("healthy:", ops.HealthCheck(srv.Addr()) == nil)

	// On SIGTERM: readiness goes to 503 first, then the stage drains, then Shutdown.
	srv.MarkStopping()
	fmt.Println("ready:", ops.Probe(ctx, srv.Addr(), ops.PathReady) == nil)
	// Output:
	// healthy: true
	// ready: false
}
