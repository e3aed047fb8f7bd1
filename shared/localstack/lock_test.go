package localstack_test

import (
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/shared/localstack"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

// TestSecondStackOnAFolderIsRefused starts nats-server on a folder, then tries a second stack
// on the same folder: it must be refused with the first stack's URL, and allowed once the first
// stopped.
func TestSecondStackOnAFolderIsRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("needs nats-server: skipped with -short")
	}
	bin := stacktest.BinDir()
	if _, err := localstack.FindBinary(bin, "nats-server"); err != nil {
		t.Fatalf("%v (make tools builds it)", err)
	}
	dir := t.TempDir()
	start := func() (*localstack.Stack, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		return localstack.Start(ctx, localstack.Options{Dir: dir, BinDir: bin, NATS: true})
	}
	first, err := start()
	if err != nil {
		t.Fatal(err)
	}
	defer first.Stop()

	second, err := start()
	var running *localstack.RunningError
	switch {
	case err == nil:
		second.Stop()
		t.Fatal("a second stack started on a folder in use")
	case !errors.Is(err, localstack.ErrRunning) || !errors.As(err, &running):
		t.Fatalf("error %v, want a RunningError", err)
	}
	if running.NATSURL != first.NATSURL || running.PID != os.Getpid() || running.MongoURI != "" {
		t.Errorf("running stack %+v, want NATS %s of process %d", running, first.NATSURL,
			os.Getpid())
	}

	first.Stop()
	third, err := start()
	if err != nil {
		t.Fatalf("start after the first stopped: %v", err)
	}
	third.Stop()
}
