package ops

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
)

// Check reports whether a service can do its work: nil when it can, an error saying what is
// missing otherwise. It should return promptly and honour ctx, which expires after ReadyTimeout.
type Check func(ctx context.Context) error

// AllOf returns a check that passes when every check passes, and otherwise returns the first
// error. Nil checks are skipped.
func AllOf(checks ...Check) Check {
	return func(ctx context.Context) error {
		for _, c := range checks {
			if c == nil {
				continue
			}
			if err := c(ctx); err != nil {
				return err
			}
		}
		return nil
	}
}

// NATSConnected returns a readiness check that passes while nc is connected to a server. While
// the client reconnects, the check fails with the connection's status.
func NATSConnected(nc *nats.Conn) Check {
	return func(context.Context) error {
		if nc == nil {
			return fmt.Errorf("nats: not connected yet")
		}
		if st := nc.Status(); st != nats.CONNECTED {
			return fmt.Errorf("nats: %s", st)
		}
		return nil
	}
}
