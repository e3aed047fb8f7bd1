package main

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

func TestSettingsSchemaVersion(t *testing.T) {
	tests := []struct {
		name    string
		value   string
		want    int
		wantErr bool
	}{
		{"default", "", document.SchemaVersion, false},
		{"raised", "7", 7, false},
		{"not a number", "two", 0, true},
		{"zero", "0", 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TRANSFORMER_SCHEMA_VERSION", tc.value)
			cfg, err := config.Load("transformer",
				config.Join(config.Common, config.NATS, config.Transformer), nil)
			if err != nil {
				t.Fatal(err)
			}
			s, err := settingsFrom(cfg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("error %v, want error %v", err, tc.wantErr)
			}
			if err == nil && s.schema != tc.want {
				t.Errorf("schema %d, want %d", s.schema, tc.want)
			}
		})
	}
}

// TestRunReplayEmptyStream boots the whole program against a real nats-server: it creates the
// streams and the bucket, replays an empty raw stream and exits by itself.
func TestRunReplayEmptyStream(t *testing.T) {
	st := stacktest.Start(t, true, false)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	t.Setenv("LOG_LEVEL", "error")
	if err := run(ctx, []string{"--nats-url", st.NATSURL, "--replay"}); err != nil {
		t.Fatal(err)
	}
	// The live mode stops cleanly on a cancelled context.
	lctx, lcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- run(lctx, []string{"--nats-url", st.NATSURL}) }()
	nc, err := nats.Connect(st.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := js.Consumer(ctx, bus.StreamRaw, "transformer"); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the durable consumer never appeared")
		}
		time.Sleep(50 * time.Millisecond)
	}
	lcancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("live run after a stop: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("live run did not stop")
	}
}
