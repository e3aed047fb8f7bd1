package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/shared/localstack"
)

// composeEnv returns the environment docker-compose.yml gives a service, with .env.example as
// the stack's .env, resolved by Docker Compose's own loader (deployments/composecheck).
func composeEnv(t *testing.T, service string) map[string]string {
	t.Helper()
	root := repoRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "run", ".", "-f", filepath.Join(root, "docker-compose.yml"),
		"-profile", "offline", "-env", service, "-dotenv", filepath.Join(root, ".env.example"))
	cmd.Dir = filepath.Join(root, "deployments", "composecheck")
	cmd.Env = append(os.Environ(), "GOWORK=off")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("compose environment of %s: %v", service, err)
	}
	env := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	if len(env) < 20 {
		t.Fatalf("compose environment of %s has only %d keys", service, len(env))
	}
	return env
}

// TestServicesWithComposeEnvironment starts every service binary with the environment the
// compose file gives its container (addresses of the stack's hosts replaced by this test's
// local ones) and checks /healthz, /readyz and /metrics of each, then a clean SIGTERM stop.
func TestServicesWithComposeEnvironment(t *testing.T) {
	e := newEnv(t)
	bundle := filepath.Join(repoRoot(t), "tests", "e2e", "testdata", "ics-attack-18.1.json.gz")
	services := []string{"mirror", "transformer", "loader", "extractor"}
	addrs := map[string]string{}
	for _, s := range services {
		a, err := localstack.FreeAddr()
		if err != nil {
			t.Fatal(err)
		}
		addrs[s] = a
	}
	mirrorAddr, err := localstack.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	var procs []*localstack.Proc
	for _, s := range services {
		env := composeEnv(t, s)
		// The stack's host names (nats, mongo, mirror) and container ports become this test's.
		env["NATS_URL"] = e.stack.NATSURL
		env["MONGO_URI"] = e.stack.MongoURI
		env["METRICS_ADDR"] = addrs[s]
		env["MIRROR_ADDR"] = mirrorAddr
		env["MIRROR_BUNDLES"] = bundle
		env["TAXII_API_URL"] = "http://" + mirrorAddr + "/api/v21/"
		env["ENV_FILE"] = filepath.Join(e.dir, "empty.env")
		list := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}
		for k, v := range env {
			list = append(list, k+"="+v)
		}
		p := &localstack.Proc{Name: s, Path: binary(t, s), LogPath: filepath.Join(e.dir, s+".log"),
			Env: list}
		if err := p.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		procs = append(procs, p)
		e.procs = append(e.procs, p)
	}
	for _, s := range services {
		base := "http://" + addrs[s]
		waitFor(t, time.Minute, s+" ready", func() (bool, string) {
			code, body := httpGet(base + "/readyz")
			return code == 200, body
		})
		if code, _ := httpGet(base + "/healthz"); code != 200 {
			t.Errorf("%s /healthz: %d", s, code)
		}
	}
	// The extractor (in watch mode, as in the compose file) reads the slice and the loader
	// stores it; then every service has counted its work.
	waitDocuments(t, e, 41, 3*time.Minute)
	want := map[string]string{
		"mirror":      "attack_etl_request_duration_seconds",
		"extractor":   "attack_etl_objects_published_total",
		"transformer": "attack_etl_objects_transformed_total",
		"loader":      "attack_etl_documents_loaded_total",
	}
	for _, s := range services {
		code, body := httpGet("http://" + addrs[s] + "/metrics")
		if code != 200 || !strings.Contains(body, want[s]) || !strings.Contains(body,
			"go_goroutines") {
			t.Errorf("%s /metrics: status %d, lacks %s or the runtime metrics", s, code, want[s])
		}
	}
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop(30 * time.Second)
		if c, done := procs[i].ExitCode(); !done || c != 0 {
			t.Errorf("%s exited %d on SIGTERM, want 0", procs[i].Name, c)
		}
	}
}

func httpGet(url string) (int, string) {
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get(url)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}
