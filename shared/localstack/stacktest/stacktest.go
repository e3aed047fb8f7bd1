// Package stacktest starts the local services of package localstack for tests: nats-server
// with the product's streams, and FerretDB over PostgreSQL, each in a fresh folder, stopped
// when the test ends.
//
// A test that needs them fails when the programs are not built (make tools builds them), so
// that CI cannot pass by skipping; with go test -short it is skipped instead.
package stacktest

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

// BinDir returns the folder of nats-server and ferretdb: LOCAL_BIN when set, otherwise the
// .local/bin of the repository, found by walking up from the working folder to go.work.
func BinDir() string {
	if v := os.Getenv("LOCAL_BIN"); v != "" {
		return v
	}
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

// Start starts nats-server, FerretDB, or both, in a fresh temporary folder.
func Start(tb testing.TB, withNATS, withMongo bool) *localstack.Stack {
	tb.Helper()
	if testing.Short() {
		tb.Skip("needs a local nats-server or FerretDB: skipped with -short")
	}
	bin := BinDir()
	for name, need := range map[string]bool{"nats-server": withNATS, "ferretdb": withMongo} {
		if _, err := localstack.FindBinary(bin, name); need && err != nil {
			tb.Fatalf("%v (make tools builds it)", err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st, err := localstack.Start(ctx, localstack.Options{Dir: tb.TempDir(), BinDir: bin,
		NATS: withNATS, Mongo: withMongo})
	if err != nil {
		tb.Fatalf("start local stack: %v", err)
	}
	tb.Cleanup(st.Stop)
	return st
}

// Server is a running nats-server with the product's streams, and a connection to it.
type Server struct {
	// URL is the server's address.
	URL string
	// Stack is the running stack, for stopping and restarting nats-server.
	Stack *localstack.Stack
	NC    *nats.Conn
	JS    jetstream.JetStream
}

// JetStream starts nats-server, connects (reconnecting for ever, so a test may restart the
// server), and creates the product's streams.
func JetStream(tb testing.TB) *Server {
	tb.Helper()
	st := Start(tb, true, false)
	nc, err := nats.Connect(st.NATSURL, nats.MaxReconnects(-1),
		nats.ReconnectWait(200*time.Millisecond))
	if err != nil {
		tb.Fatalf("connect to %s: %v", st.NATSURL, err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatalf("JetStream: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(ctx, js, bus.StreamOptions{Replicas: 1, RawHistory: 1,
		DLQMaxAge: time.Hour}); err != nil {
		tb.Fatalf("create streams: %v", err)
	}
	return &Server{URL: st.NATSURL, Stack: st, NC: nc, JS: js}
}
