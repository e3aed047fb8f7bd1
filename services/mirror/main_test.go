package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// freeAddr returns a loopback address with a port nobody listens on.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// poll calls check until it returns true or the deadline passes.
func poll(t *testing.T, what string, check func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !check() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// loads reads the load count from /mirror/stats; -1 when the server does not answer.
func loads(base string) int64 {
	resp, err := http.Get(base + "/mirror/stats")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	var st struct {
		Loads int64 `json:"loads"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return -1
	}
	return st.Loads
}

// TestRunServesReloadsAndStops boots the whole program, reloads it as SIGHUP would, and stops
// it as SIGINT would.
func TestRunServesReloadsAndStops(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.env")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("ENV_FILE", empty)
	reqLog := filepath.Join(dir, "requests.jsonl")
	addr := freeAddr(t)
	bundle := filepath.Join("internal", "taxiiserver", "testdata", "ics-attack-18.1.json.gz")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	reload := make(chan os.Signal, 1)
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--mirror-addr", addr, "--mirror-bundles", bundle,
			"--mirror-mode", "mitre", "--mirror-request-log", reqLog, "--log-level", "error",
			"--shutdown-grace", "5s"}, reload)
	}()
	base := "http://" + addr
	poll(t, "the server to load", func() bool { return loads(base) == 1 })

	req, _ := http.NewRequest(http.MethodGet, base+"/taxii2/", nil)
	req.Header.Set("Accept", "application/taxii+json;version=2.1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "attack-18.1/") {
		t.Fatalf("discovery: status %d body %s", resp.StatusCode, body)
	}

	reload <- os.Interrupt // any value triggers a reload
	poll(t, "the reload", func() bool { return loads(base) == 2 })

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run returned %v after the stop signal", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop")
	}
	lines, err := os.ReadFile(reqLog)
	if err != nil || strings.Count(string(lines), "\n") != 1 {
		t.Fatalf("request log: %q, %v; want the one discovery request", lines, err)
	}
}

func TestRunRejectsBadSettings(t *testing.T) {
	t.Setenv("ENV_FILE", filepath.Join(t.TempDir(), "none.env"))
	if err := os.WriteFile(os.Getenv("ENV_FILE"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no bundles", nil, "MIRROR_BUNDLES is empty"},
		{"bad mode", []string{"--mirror-bundles", "x.json", "--mirror-mode", "fancy"},
			"MIRROR_MODE"},
		{"missing file", []string{"--mirror-bundles", "/nonexistent/x.json"}, "open bundle"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := run(context.Background(), append(tt.args, "--log-level", "error"), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("run: %v, want an error naming %q", err, tt.want)
			}
		})
	}
}
