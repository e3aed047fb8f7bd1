package e2e

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/attack-etl/attack-etl/shared/bus"
)

// TestExtractorFailsClearly checks that a TAXII server that cannot be reached, or that answers
// errors, is retried a few times and then ends the extractor with a non-zero status whose
// message names the URL and the status.
func TestExtractorFailsClearly(t *testing.T) {
	e := newEnv(t)
	errServer := func(status int) string {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "<html>broken</html>", status)
		}))
		t.Cleanup(srv.Close)
		return srv.URL + "/api/v21/"
	}
	closed := "http://127.0.0.1:1/api/v21/"
	tests := []struct {
		name  string
		url   string
		wants []string
	}{
		{"connection refused", closed, []string{"127.0.0.1:1"}},
		{"server error 500", errServer(500), []string{"500"}},
		{"service unavailable 503", errServer(503), []string{"503"}},
		{"not found 404", errServer(404), []string{"404"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.run(2*time.Minute, "extractor", []string{"TAXII_API_URL=" + tt.url,
				"TAXII_RETRIES=2", "TAXII_RETRY_BASE=50ms", "TAXII_TIMEOUT=5s"})
			if res.code == 0 {
				t.Fatalf("extractor exited 0 against %s", tt.url)
			}
			out := res.stdout + res.stderr
			for _, w := range append(tt.wants, strings.TrimSuffix(tt.url, "api/v21/")) {
				if !strings.Contains(out, w) {
					t.Errorf("output does not name %q:\n%s", w, tailText(out, 20))
				}
			}
		})
	}
}

// TestBadObjectsAreDeadLettered sends malformed raw objects through the real transformer and
// loader: each lands on the dead-letter subject with its reason and the original bytes, and a
// good object sent after them is still loaded.
func TestBadObjectsAreDeadLettered(t *testing.T) {
	e := newEnv(t)
	e.start("transformer", "transformer", nil)
	e.start("loader", "loader", nil)
	js := e.js()
	good, err := os.ReadFile(filepath.Join("testdata", "T1059.001.json"))
	if err != nil {
		t.Fatal(err)
	}
	bad := []struct {
		name, kind string
		body       string
	}{
		{"not JSON", "not-json", "this is not json"},
		{"no id", "invalid-object", `{"type":"attack-pattern","name":"x"}`},
		{"no type", "invalid-object", `{"id":"attack-pattern--970a3432-3237-47ad-bcca-7d8cbb217736"}`},
		{"id prefix is not its type", "invalid-object",
			`{"type":"malware","id":"attack-pattern--970a3432-3237-47ad-bcca-7d8cbb217736",` +
				`"created":"2020-01-01T00:00:00.000Z","modified":"2020-01-01T00:00:00.000Z"}`},
		{"malformed timestamp", "invalid-object",
			`{"type":"tool","id":"tool--970a3432-3237-47ad-bcca-7d8cbb217736",` +
				`"created":"yesterday","modified":"2020-01-01T00:00:00.000Z"}`},
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	waitFor(t, 30*time.Second, "streams", func() (bool, string) {
		_, err := js.Stream(ctx, bus.StreamRaw)
		return err == nil, "no raw stream yet"
	})
	for i, b := range bad {
		msg := nats.NewMsg(bus.RawSubject("test-collection", "bad-"+string(rune('a'+i))))
		msg.Header.Set(bus.HeaderCollection, "test-collection")
		msg.Data = []byte(b.body)
		if _, err := js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	msg := nats.NewMsg(bus.RawSubject("enterprise-attack",
		"attack-pattern--970a3432-3237-47ad-bcca-7d8cbb217736"))
	msg.Header.Set(bus.HeaderCollection, "enterprise-attack")
	msg.Data = good
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}

	waitDocuments(t, e, 1, 2*time.Minute)
	waitFor(t, time.Minute, "dead letters", func() (bool, string) {
		n := e.streamMsgs(bus.StreamDLQ)
		return n == uint64(len(bad)), "dead letters: " + strings.Repeat("|", int(n))
	})
	kinds := map[string]int{}
	bodies := map[string]bool{}
	cons, err := js.OrderedConsumer(ctx, bus.StreamDLQ, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for range bad {
		m, err := cons.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		h := m.Headers()
		if h.Get(bus.HeaderDLQStage) != "transformer" || h.Get(bus.HeaderDLQReason) == "" {
			t.Errorf("dead letter headers lack stage or reason: %v", h)
		}
		kinds[h.Get(bus.HeaderDLQKind)]++
		bodies[string(m.Data())] = true
	}
	for _, b := range bad {
		if !bodies[b.body] {
			t.Errorf("%s: original bytes not kept in the dead letter", b.name)
		}
	}
	if kinds["not-json"] != 1 || kinds["invalid-object"] != 4 {
		t.Errorf("dead-letter kinds = %v", kinds)
	}
	var doc bson.M
	err = e.collection().FindOne(ctx, bson.D{{Key: "attack_id", Value: "T1059.001"}}).Decode(&doc)
	if err != nil {
		t.Fatalf("good object after bad ones not loaded: %v", err)
	}

	// The dead-letter command counts them.
	res := e.run(time.Minute, "etlctl", nil, "dlq", "count")
	if res.code != 0 || !strings.Contains(res.stdout, "invalid-object") ||
		!strings.Contains(res.stdout, "total") {
		t.Errorf("etlctl dlq count: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
}

// TestLoaderWaitsForMongoDB stops the Mongo-wire server: the loader keeps the document unacked
// and retries, logging each attempt, and loads it once the server is back.
func TestLoaderWaitsForMongoDB(t *testing.T) {
	e := newEnv(t)
	e.start("transformer", "transformer", nil)
	loader := e.start("loader", "loader", []string{"LOADER_RETRY_MAX=2s"})
	waitFor(t, time.Minute, "loader ready", func() (bool, string) {
		b, _ := os.ReadFile(loader.LogPath)
		return strings.Contains(string(b), "index"), "no index line in the loader log yet"
	})
	e.stack.FerretDB.Stop(10 * time.Second)

	good, err := os.ReadFile(filepath.Join("testdata", "T1059.001.json"))
	if err != nil {
		t.Fatal(err)
	}
	js := e.js()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	msg := nats.NewMsg(bus.RawSubject("enterprise-attack",
		"attack-pattern--970a3432-3237-47ad-bcca-7d8cbb217736"))
	msg.Header.Set(bus.HeaderCollection, "enterprise-attack")
	msg.Data = good
	if _, err := js.PublishMsg(ctx, msg); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, "the loader to log a retry", func() (bool, string) {
		b, _ := os.ReadFile(loader.LogPath)
		return strings.Count(strings.ToLower(string(b)), "retry") >= 2, "fewer than 2 retries logged"
	})
	if n := e.streamMsgs(bus.StreamFlat); n != 1 {
		t.Fatalf("flat stream holds %d messages while MongoDB is down, want 1 (unacked)", n)
	}
	if err := e.stack.FerretDB.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitDocuments(t, e, 1, 2*time.Minute)
	b, _ := os.ReadFile(loader.LogPath)
	if strings.Contains(string(b), "panic") {
		t.Errorf("loader log has a panic")
	}
}
