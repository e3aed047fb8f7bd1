package ops_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/shared/ops"
)

// get makes a GET of url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// serve starts an operations server on a free loopback port and stops it with the test.
func serve(t *testing.T, ready ops.Check) (*ops.Server, *ops.Metrics) {
	t.Helper()
	reg := ops.NewRegistry()
	m := ops.NewMetrics(reg)
	s, err := ops.Serve(context.Background(), "127.0.0.1:0", reg, ready)
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s, m
}

func TestServerEndpoints(t *testing.T) {
	var notReady atomic.Pointer[error]
	ready := func(context.Context) error {
		if p := notReady.Load(); p != nil {
			return *p
		}
		return nil
	}
	s, m := serve(t, ready)
	base := "http://" + s.Addr()
	m.Fetched.WithLabelValues("enterprise-attack").Add(24771)
	m.Loaded.WithLabelValues(ops.OutcomeAdded).Add(3)

	tests := []struct {
		name     string
		path     string
		down     error // the readiness error set before the request; nil means ready
		wantCode int
		want     []string
	}{
		{name: "healthz", path: ops.PathHealth, wantCode: 200, want: []string{"ok"}},
		{name: "healthz while not ready", path: ops.PathHealth, down: errors.New("mongo down"),
			wantCode: 200, want: []string{"ok"}},
		{name: "readyz ready", path: ops.PathReady, wantCode: 200, want: []string{"ready"}},
		{name: "readyz not ready", path: ops.PathReady,
			down:     errors.New("nats: RECONNECTING"),
			wantCode: 503, want: []string{"not ready: nats: RECONNECTING"}},
		{name: "metrics", path: ops.PathMetrics, wantCode: 200, want: []string{
			`attack_etl_objects_fetched_total{collection="enterprise-attack"} 24771`,
			`attack_etl_documents_loaded_total{outcome="added"} 3`,
			"# HELP attack_etl_objects_fetched_total",
			"go_goroutines",
			"promhttp_metric_handler_requests_total",
		}},
		{name: "unknown path", path: "/nope", wantCode: 404},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.down != nil {
				notReady.Store(&tt.down)
			} else {
				notReady.Store(nil)
			}
			code, body := get(t, base+tt.path)
			if code != tt.wantCode {
				t.Fatalf("GET %s: status %d, want %d; body %q", tt.path, code, tt.wantCode, body)
			}
			for _, w := range tt.want {
				if !strings.Contains(body, w) {
					t.Errorf("GET %s: body lacks %q:\n%s", tt.path, w, body)
				}
			}
		})
	}
}

func TestServeTwiceOnOneRegistry(t *testing.T) {
	// A service that restarts its operations server (a test booting Main twice) keeps its
	// registry; the second server must start and serve it.
	reg := ops.NewRegistry()
	ops.NewMetrics(reg)
	for i := range 2 {
		s, err := ops.Serve(context.Background(), "127.0.0.1:0", reg, nil)
		if err != nil {
			t.Fatalf("Serve #%d: %v", i+1, err)
		}
		code, _ := get(t, "http://"+s.Addr()+ops.PathMetrics)
		if err := s.Shutdown(context.Background()); err != nil {
			t.Fatalf("Shutdown #%d: %v", i+1, err)
		}
		if code != 200 {
			t.Fatalf("metrics of server #%d: status %d", i+1, code)
		}
	}
}

func TestServerRejectsOtherMethods(t *testing.T) {
	s, _ := serve(t, nil)
	resp, err := http.Post("http://"+s.Addr()+ops.PathReady, "text/plain", nil)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("POST %s: status %d, want 405", ops.PathReady, resp.StatusCode)
	}
}

func TestMarkStopping(t *testing.T) {
	s, _ := serve(t, nil)
	base := "http://" + s.Addr()
	if code, _ := get(t, base+ops.PathReady); code != 200 {
		t.Fatalf("readyz before MarkStopping: status %d, want 200", code)
	}
	s.MarkStopping()
	code, body := get(t, base+ops.PathReady)
	if code != 503 || !strings.Contains(body, "stopping") {
		t.Fatalf("readyz after MarkStopping: %d %q, want 503 stopping", code, body)
	}
	if code, _ := get(t, base+ops.PathHealth); code != 200 {
		t.Fatalf("healthz after MarkStopping: status %d, want 200", code)
	}
}

func TestReadyCheckTimesOut(t *testing.T) {
	// A check that honours its context must not hang /readyz past ops.ReadyTimeout.
	s, _ := serve(t, func(ctx context.Context) error {
		<-ctx.Done()
		return ctx.Err()
	})
	code, body := get(t, "http://"+s.Addr()+ops.PathReady)
	if code != 503 || !strings.Contains(body, "deadline exceeded") {
		t.Fatalf("readyz with a hanging check: %d %q, want 503 deadline exceeded", code, body)
	}
}

func TestDisabledServer(t *testing.T) {
	s, err := ops.Serve(context.Background(), "", ops.NewRegistry(), nil)
	if err != nil {
		t.Fatalf("Serve with empty address: %v", err)
	}
	if s.Enabled() || s.Addr() != "" {
		t.Fatalf("disabled server: Enabled %v, Addr %q", s.Enabled(), s.Addr())
	}
	s.MarkStopping()
	if err := s.Shutdown(context.Background()); err != nil {
		t.Fatalf("Shutdown of a disabled server: %v", err)
	}
}

func TestServeErrors(t *testing.T) {
	busy, _ := serve(t, nil)
	tests := []struct {
		name string
		addr string
		want string
	}{
		{name: "port in use", addr: busy.Addr(), want: "listen on " + busy.Addr()},
		{name: "bad address", addr: "no-port", want: "listen on no-port"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ops.Serve(context.Background(), tt.addr, ops.NewRegistry(), nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Serve(%q): error %v, want it to contain %q", tt.addr, err, tt.want)
			}
		})
	}
}

func TestAllOf(t *testing.T) {
	errA := errors.New("a down")
	ok := func(context.Context) error { return nil }
	bad := func(context.Context) error { return errA }
	tests := []struct {
		name   string
		checks []ops.Check
		want   error
	}{
		{name: "none", want: nil},
		{name: "all pass, nil skipped", checks: []ops.Check{ok, nil, ok}, want: nil},
		{name: "one fails", checks: []ops.Check{ok, bad}, want: errA},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := ops.AllOf(tt.checks...)(context.Background()); !errors.Is(err, tt.want) {
				t.Fatalf("AllOf: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestHealthCheck(t *testing.T) {
	s, _ := serve(t, func(context.Context) error { return errors.New("not ready") })
	_, port, _ := strings.Cut(s.Addr(), ":")
	failing := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, "broken", http.StatusInternalServerError)
	}))
	defer failing.Close()
	closed := httptest.NewServer(http.NotFoundHandler())
	closedAddr := closed.Listener.Addr().String()
	closed.Close()

	tests := []struct {
		name    string
		addr    string
		wantErr string // empty: HealthCheck must succeed
	}{
		{name: "alive although not ready", addr: s.Addr()},
		{name: "wildcard host", addr: "0.0.0.0:" + port},
		{name: "empty host", addr: ":" + port},
		{name: "server answers 500", addr: failing.Listener.Addr().String(),
			wantErr: "status 500: broken"},
		{name: "nothing listens", addr: closedAddr, wantErr: "probe http://" + closedAddr},
		{name: "empty address", addr: "", wantErr: "METRICS_ADDR is empty"},
		{name: "no port", addr: "localhost", wantErr: "operations address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ops.HealthCheck(tt.addr)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("HealthCheck(%q): %v", tt.addr, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("HealthCheck(%q): error %v, want it to contain %q", tt.addr, err,
					tt.wantErr)
			}
		})
	}
}

func TestLocalURL(t *testing.T) {
	tests := []struct {
		name, addr, want string
	}{
		{name: "ipv4 wildcard", addr: "0.0.0.0:9100", want: "http://127.0.0.1:9100/healthz"},
		{name: "empty host", addr: ":9100", want: "http://127.0.0.1:9100/healthz"},
		{name: "ipv6 wildcard", addr: "[::]:9100", want: "http://[::1]:9100/healthz"},
		{name: "named host", addr: "loader:9100", want: "http://loader:9100/healthz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ops.LocalURL(tt.addr, ops.PathHealth)
			if err != nil || got != tt.want {
				t.Fatalf("LocalURL(%q) = %q, %v; want %q", tt.addr, got, err, tt.want)
			}
		})
	}
}
