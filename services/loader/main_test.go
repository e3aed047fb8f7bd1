package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.mongodb.org/mongo-driver/v2/bson"
	mongodrv "go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/attack-etl/attack-etl/services/loader/internal/fixture"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/localstack"
)

// TestRunLoadsAndStops runs the whole loader (configuration, indexes, consumer) against a
// local stack, and checks that it stores every document and returns nil when stopped.
func TestRunLoadsAndStops(t *testing.T) {
	s := stacktest.Start(t, true, true)
	docs, err := fixture.Docs("run-main", func(r fixture.Row) bool {
		return r.Collection == "ics-attack"
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	level := "warn"
	if os.Getenv("LOADER_TEST_LOG") != "" {
		level = "info" // to read the loader's log lines: LOADER_TEST_LOG=1 go test -v
	}
	metricsAddr, err := localstack.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		done <- run(ctx, []string{"--nats-url", s.NATSURL, "--mongo-uri", s.MongoURI,
			"--metrics-addr", metricsAddr,
			"--db-name", "maintest", "--log-format", "console", "--log-level", level,
			"--loader-batch-wait", "200ms", "--loader-progress-every", "500ms"})
	}()
	nc, err := nats.Connect(s.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	fixture.Eventually(t, 30*time.Second, "flat stream created", func() bool {
		_, err := js.Stream(ctx, bus.StreamFlat)
		return err == nil
	})
	for _, d := range docs {
		b, _ := json.Marshal(d)
		m := nats.NewMsg(bus.FlatSubject("ics-attack", d.Type))
		m.Data = b
		m.Header.Set(bus.HeaderRunID, "run-main")
		m.Header.Set(bus.HeaderCollection, "ics-attack")
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	mc, err := mongodrv.Connect(options.Client().ApplyURI(s.MongoURI))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = mc.Disconnect(context.Background()) }()
	coll := mc.Database("maintest").Collection("objects")
	fixture.Eventually(t, 60*time.Second, "every document stored", func() bool {
		n, err := coll.CountDocuments(ctx, bson.D{})
		return err == nil && n == int64(len(docs))
	})
	tests := []struct {
		name, path, want string
	}{
		{"ready", "/readyz", ""},
		{"documents loaded counted", "/metrics", `attack_etl_documents_loaded_total{outcome="added"} ` +
			strconv.Itoa(len(docs))},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// Polled: the counters move when the messages are acked, just after the write.
			fixture.Eventually(t, 10*time.Second, "GET "+tc.path+" has "+tc.want, func() bool {
				resp, err := http.Get("http://" + metricsAddr + tc.path)
				if err != nil {
					return false
				}
				defer resp.Body.Close()
				body, _ := io.ReadAll(resp.Body)
				return resp.StatusCode == http.StatusOK && strings.Contains(string(body), tc.want)
			})
		})
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v, want nil on shutdown", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("loader did not stop within 30s")
	}
	var run bson.M
	if err := mc.Database("maintest").Collection("objects_runs").FindOne(context.Background(),
		bson.D{{Key: "_id", Value: "run-main"}}).Decode(&run); err != nil {
		t.Fatalf("run report: %v", err)
	}
}

func TestReadSettingsRefusesBadValues(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string // empty: accepted
	}{
		{name: "defaults", wantErr: ""},
		{name: "malformed URI named, password masked",
			args:    []string{"--mongo-uri", "mongodb://ana:s3cret@db:27017/?maxPoolSize=many"},
			wantErr: "MONGO_URI mongodb://ana:xxxxx@db:27017"},
		{name: "wrong scheme", args: []string{"--mongo-uri", "http://db:27017"},
			wantErr: "MONGO_URI"},
		{name: "negative batch size", args: []string{"--loader-batch-size", "-5"},
			wantErr: "LOADER_BATCH_SIZE is -5"},
		{name: "no concurrency", args: []string{"--loader-concurrency", "0"},
			wantErr: "LOADER_CONCURRENCY is 0"},
		{name: "negative swap threshold", args: []string{"--loader-swap-min", "-1"},
			wantErr: "LOADER_SWAP_MIN is -1"},
		{name: "swap off", args: []string{"--loader-swap-min", "0"}, wantErr: ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := config.Load("loader", config.Join(config.Common, config.NATS,
				config.Loader), tc.args)
			if err != nil {
				t.Fatal(err)
			}
			_, err = readSettings(cfg)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("accepted, want an error with %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("error %q, want it to contain %q", err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "s3cret") {
				t.Errorf("password in the error: %v", err)
			}
		})
	}
}
