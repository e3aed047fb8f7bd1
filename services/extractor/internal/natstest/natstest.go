// Package natstest starts a real nats-server with JetStream for tests, through the shared local
// stack, with the product's streams in place.
package natstest

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack"
)

// Server is a running nats-server and a connection to it.
type Server struct {
	URL string
	NC  *nats.Conn
	JS  jetstream.JetStream
}

// binDir finds .local/bin of the repository by walking up from the working folder to go.work.
func binDir() string {
	dir, err := os.Getwd()
	if err != nil {
		return ""
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return filepath.Join(dir, ".local", "bin")
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// Start starts nats-server in a fresh temporary folder, connects, creates the streams and
// stops everything when the test ends. It skips the test when nats-server is not built (make
// tools builds it).
func Start(tb testing.TB) *Server {
	tb.Helper()
	bin := binDir()
	if _, err := localstack.FindBinary(bin, "nats-server"); err != nil {
		tb.Skipf("nats-server not found (run make tools): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := localstack.Start(ctx, localstack.Options{Dir: tb.TempDir(), BinDir: bin, NATS: true})
	if err != nil {
		tb.Fatalf("start nats-server: %v", err)
	}
	tb.Cleanup(st.Stop)
	nc, err := nats.Connect(st.NATSURL)
	if err != nil {
		tb.Fatalf("connect to %s: %v", st.NATSURL, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("JetStream: %v", err)
	}
	if err := bus.EnsureStreams(ctx, js, bus.StreamOptions{Replicas: 1, RawHistory: 1,
		DLQMaxAge: time.Hour}); err != nil {
		tb.Fatalf("streams: %v", err)
	}
	return &Server{URL: st.NATSURL, NC: nc, JS: js}
}
