// Package ops gives every service the same operations surface: an HTTP server with Prometheus
// metrics on /metrics, liveness on /healthz and readiness on /readyz, the attack_etl_* metrics
// the stages record, a poller that turns a JetStream consumer's backlog into a gauge, and the
// client side of a container health check.
//
// The package never logs. Serve returns an error when it cannot listen; an error of the running
// server is returned by Shutdown.
package ops

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Paths served by the operations server.
const (
	PathMetrics = "/metrics"
	PathHealth  = "/healthz"
	PathReady   = "/readyz"
)

// ReadyTimeout bounds one readiness check: /readyz answers 503 when the check takes longer.
const ReadyTimeout = 3 * time.Second

// ErrStopping is the readiness error of a server after MarkStopping.
var ErrStopping = errors.New("stopping")

// Server is a running operations server. A Server made from an empty address is disabled: it
// serves nothing and every method is a no-op, so callers need no special case.
type Server struct {
	srv      *http.Server
	ln       net.Listener
	stopping atomic.Bool
	served   chan error
	once     sync.Once
	shutErr  error
}

// Serve listens on addr (such as 0.0.0.0:9100, or 127.0.0.1:0 for a free port) and serves, in
// the background, GET /metrics from reg, /healthz (200 while the process runs) and /readyz (200
// when ready returns nil, 503 with the error text otherwise; a nil ready is always ready).
//
// An empty addr returns a disabled Server and no error. The context bounds only the start;
// the server runs until Shutdown.
func Serve(ctx context.Context, addr string, reg *prometheus.Registry, ready Check) (*Server,
	error) {
	if addr == "" {
		return &Server{}, nil
	}
	if reg == nil {
		return nil, errors.New("ops server: nil registry")
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ops server: listen on %s: %w", addr, err)
	}
	s := &Server{ln: ln, served: make(chan error, 1)}
	s.srv = &http.Server{
		Handler:           s.handler(reg, ready),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
	}
	go func() {
		err := s.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		s.served <- err
	}()
	return s, nil
}

// handler routes the three paths. Go's pattern "GET /x" also answers HEAD; other methods get
// 405 from the mux.
func (s *Server) handler(reg *prometheus.Registry, ready Check) http.Handler {
	mux := http.NewServeMux()
	metrics := promhttp.InstrumentMetricHandler(reg, promhttp.HandlerFor(reg,
		promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError}))
	mux.Handle("GET "+PathMetrics, metrics)
	mux.HandleFunc("GET "+PathHealth, func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET "+PathReady, func(w http.ResponseWriter, r *http.Request) {
		if err := s.readiness(r.Context(), ready); err != nil {
			writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		writeText(w, http.StatusOK, "ready")
	})
	return mux
}

func (s *Server) readiness(ctx context.Context, ready Check) error {
	if s.stopping.Load() {
		return ErrStopping
	}
	if ready == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	return ready(ctx)
}

func writeText(w http.ResponseWriter, code int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_, _ = w.Write([]byte(body + "\n"))
}

// Enabled reports whether the server listens (its address was not empty).
func (s *Server) Enabled() bool { return s != nil && s.ln != nil }

// Addr returns the address the server listens on, with the port chosen by the system when the
// configured port was 0; empty when the server is disabled.
func (s *Server) Addr() string {
	if !s.Enabled() {
		return ""
	}
	return s.ln.Addr().String()
}

// MarkStopping makes /readyz answer 503 "stopping" from now on, while /metrics and /healthz
// keep answering. A service calls it when a shutdown signal arrives, before it drains.
func (s *Server) MarkStopping() {
	if s != nil {
		s.stopping.Store(true)
	}
}

// Shutdown stops the server: it stops accepting connections and waits for the requests in
// progress until ctx expires. It returns the error the server stopped with, if any. Calling it
// again returns the same result.
func (s *Server) Shutdown(ctx context.Context) error {
	if !s.Enabled() {
		return nil
	}
	s.once.Do(func() {
		err := s.srv.Shutdown(ctx)
		if err != nil {
			_ = s.srv.Close()
			err = fmt.Errorf("ops server: shut down: %w", err)
		}
		if serveErr := <-s.served; serveErr != nil {
			err = errors.Join(err, fmt.Errorf("ops server: serve: %w", serveErr))
		}
		s.shutErr = err
	})
	return s.shutErr
}
