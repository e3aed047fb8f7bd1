package ops

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"io"
	"net"
	"net/http"
	"strings"
	"time"
)

// HealthCheckTimeout bounds the request HealthCheck makes.
const HealthCheckTimeout = 3 * time.Second

// HealthCheck asks the operations server at addr (the service's METRICS_ADDR, such as
// 0.0.0.0:9100) whether the process is alive, by a GET of /healthz on the loopback interface.
// It returns nil on 200 and an error naming the URL otherwise. A service's --healthcheck flag
// calls it and exits 0 or 1, which is what a container HEALTHCHECK needs in an image without
// curl or wget.
func HealthCheck(addr string) error {
	ctx, cancel := context.WithTimeout(context.Background(), HealthCheckTimeout)
	defer cancel()
	return Probe(ctx, addr, PathHealth)
}

// Probe makes a GET of path on the operations server at addr and returns nil on 200. A
// wildcard host (empty, 0.0.0.0 or ::) is replaced by the loopback address, because a server
// listening on every interface is reached locally through it.
func Probe(ctx context.Context, addr, path string) error {
	target, err := LocalURL(addr, path)
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("probe %s: %w", target, err)
	}
	client := &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s: status %d: %s", target, resp.StatusCode,
			strings.TrimSpace(string(body)))
	}
	return nil
}

// LocalURL returns the http URL of path on the operations server at addr, reached from the same
// host: a wildcard host becomes 127.0.0.1 (or ::1 for "::").
func LocalURL(addr, path string) (string, error) {
	if addr == "" {
		return "", errors.New("no operations address: METRICS_ADDR is empty")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("operations address %q: %w", addr, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

// HealthCheckFlag returns a flag adder for config.Load that defines --healthcheck: a service
// started with it probes its own METRICS_ADDR/healthz and exits 0 or 1, which is what a
// container's HEALTHCHECK runs (distroless images have no curl).
func HealthCheckFlag(target *bool) func(*pflag.FlagSet) {
	return func(fs *pflag.FlagSet) {
		fs.BoolVar(target, "healthcheck", false,
			"probe this service's METRICS_ADDR/healthz, then exit 0 when healthy, 1 otherwise")
	}
}
