package main

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/extractor/internal/sync"
	"github.com/attack-etl/attack-etl/services/extractor/internal/taxiitest"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func TestMainMetricsAndHealthcheck(t *testing.T) {
	ns := stacktest.JetStream(t)
	srv := taxiitest.New(icsCollection(t, "testdata/ics-18.1-slice.json"))
	defer srv.Close()
	addr := freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, args(ns.URL, "--taxii-api-url", srv.RootURL(), "--watch", "1h",
			"--metrics-addr", addr))
	}()
	want := []string{
		`attack_etl_objects_published_total{collection="ics-attack",outcome="new"} 30`,
		`attack_etl_objects_fetched_total{collection="ics-attack"} 30`,
		`attack_etl_request_duration_seconds_count{code="200",operation="objects"} 1`,
		`attack_etl_last_sync_timestamp_seconds{collection="ics-attack"}`,
	}
	var body string
	waitFor(t, "the first run's metrics", 15*time.Second, func() bool {
		resp, err := http.Get("http://" + addr + "/metrics")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		body = string(b)
		for _, w := range want {
			if !strings.Contains(body, w) {
				return false
			}
		}
		return true
	})
	if err := Main(context.Background(), []string{"--healthcheck", "--metrics-addr",
		addr}); err != nil {
		t.Errorf("--healthcheck of a running extractor: %v", err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("watch stopped with %v", err)
	}
	if err := Main(context.Background(), []string{"--healthcheck", "--metrics-addr",
		addr}); err == nil {
		t.Error("--healthcheck of a stopped extractor must fail")
	}
}

func TestMainStopFinishesThePageInHand(t *testing.T) {
	ns := stacktest.JetStream(t)
	srv := taxiitest.New(icsCollection(t, "testdata/ics-18.1-slice.json"))
	defer srv.Close()
	srv.MaxPage = 10
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The stop signal arrives while the server answers the second page.
	srv.Fault = func(_ http.ResponseWriter, r *http.Request) bool {
		if strings.Contains(r.URL.RawQuery, "next=offset-10") {
			cancel()
		}
		return false
	}
	err := Main(ctx, args(ns.URL, "--taxii-api-url", srv.RootURL(), "--raw-history", "5"))
	if !errors.Is(err, sync.ErrStopped) {
		t.Fatalf("error = %v, want ErrStopped", err)
	}
	if got := rawCount(t, ns.JS, "ics-attack"); got != 20 {
		t.Fatalf("published %d, want the 20 objects of the two pages read", got)
	}
}
