package main

import (
	"context"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/services/extractor/internal/taxiitest"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

// captureStderr runs fn with standard error (where the logs go) sent to a pipe, and returns
// what was written.
func captureStderr(t *testing.T, fn func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = w
	out := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		out <- string(b)
	}()
	defer func() { os.Stderr = old }()
	fn()
	w.Close()
	return <-out
}

func TestMainLogsNoSecrets(t *testing.T) {
	ns := stacktest.JetStream(t)
	srv := taxiitest.New()
	defer srv.Close()
	// The server fails, so that retries, errors and the summary are all logged.
	srv.Fault = func(w http.ResponseWriter, r *http.Request) bool {
		http.Error(w, "auth was "+r.Header.Get("Authorization"), http.StatusServiceUnavailable)
		return true
	}
	url := strings.Replace(srv.RootURL(), "http://", "http://ana:pw-S3CRET@", 1)
	var err error
	logs := captureStderr(t, func() {
		err = Main(context.Background(), []string{"--nats-url", ns.URL, "--log-level", "debug",
			"--log-format", "json", "--taxii-retry-base", "1ms", "--taxii-retries", "1",
			"--taxii-api-url", url, "--taxii-token", "tok-S3CRET", "--nats-password",
			"nats-S3CRET"})
	})
	if err == nil {
		t.Fatal("want an error from a failing server")
	}
	if !strings.Contains(logs, "TAXII request failed; retrying") {
		t.Fatalf("no retry logged; logs:\n%s", logs)
	}
	for _, text := range []string{logs, err.Error()} {
		if strings.Contains(text, "S3CRET") {
			t.Errorf("a secret reached the output:\n%s", text)
		}
	}
}
