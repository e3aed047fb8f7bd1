// Package e2e runs the real binaries (bin/, built by make build) as processes against a real
// nats-server and FerretDB (built by make tools) on the real ATT&CK bundles.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack"
)

// repoRoot is the repository's top folder.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// binary returns the path of a built program, failing the test with a hint when it is missing.
func binary(t testing.TB, name string) string {
	t.Helper()
	root := repoRoot(t)
	for _, dir := range []string{filepath.Join(root, "bin"), filepath.Join(root, ".local", "bin")} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Fatalf("%s is not built; run 'make build tools' first (make test does)", name)
	return ""
}

// attackDir returns the folder of the real ATT&CK bundles, skipping the test when it is absent
// (the repository's own slices in testdata cover that case).
func attackDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(repoRoot(t), "..", "shared", "attack")
	if env := os.Getenv("ATTACK_DATA_DIR"); env != "" {
		dir = env
	}
	if _, err := os.Stat(filepath.Join(dir, "enterprise-attack-18.1.json.gz")); err != nil {
		t.Skipf("real ATT&CK bundles not found in %s", dir)
	}
	return dir
}

// bundles18 returns the three 18.1 bundles (or those of another release).
func bundles(t testing.TB, release string, domains ...string) []string {
	dir := attackDir(t)
	if len(domains) == 0 {
		domains = []string{"enterprise", "mobile", "ics"}
	}
	var out []string
	for _, d := range domains {
		out = append(out, filepath.Join(dir, d+"-attack-"+release+".json.gz"))
	}
	return out
}

// env is one test's running world: a local stack and the processes started on it.
type env struct {
	t        testing.TB
	dir      string
	stack    *localstack.Stack
	mirror   *localstack.Proc
	taxiiURL string
	db       string
	procs    []*localstack.Proc
}

// newEnv starts nats-server and FerretDB in a fresh folder; they stop when the test ends.
func newEnv(t testing.TB) *env {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	dir := t.TempDir()
	// The stages read no .env of the developer's: an empty one is named explicitly.
	if err := os.WriteFile(filepath.Join(dir, "empty.env"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	st, err := localstack.Start(ctx, localstack.Options{
		Dir: filepath.Join(dir, "stack"), BinDir: filepath.Join(repoRoot(t), ".local", "bin"),
		NATS: true, Mongo: true,
	})
	if err != nil {
		t.Fatalf("start local stack: %v", err)
	}
	e := &env{t: t, dir: dir, stack: st, db: "attack"}
	t.Cleanup(func() {
		for _, p := range e.procs {
			p.Stop(10 * time.Second)
		}
		if e.mirror != nil {
			e.mirror.Stop(5 * time.Second)
		}
		st.Stop()
		if t.Failed() {
			e.dumpLogs()
			e.keepLogs()
		}
	})
	return e
}

// dumpLogs prints the tail of every process log of a failed test.
func (e *env) dumpLogs() {
	logs, _ := filepath.Glob(filepath.Join(e.dir, "*.log"))
	more, _ := filepath.Glob(filepath.Join(e.dir, "stack", "*.log"))
	for _, l := range append(logs, more...) {
		b, _ := os.ReadFile(l)
		lines := strings.Split(strings.TrimSpace(string(b)), "\n")
		if len(lines) > 25 {
			lines = lines[len(lines)-25:]
		}
		e.t.Logf("--- tail of %s ---\n%s", filepath.Base(l), strings.Join(lines, "\n"))
	}
}

// keepLogs copies every process log of a failed test into $E2E_KEEP_LOGS/<test name>, when
// that variable names a folder, for a look after the test's folder is gone.
func (e *env) keepLogs() {
	keep := os.Getenv("E2E_KEEP_LOGS")
	if keep == "" {
		return
	}
	dst := filepath.Join(keep, strings.ReplaceAll(e.t.Name(), "/", "_"))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		e.t.Logf("keep logs: %v", err)
		return
	}
	var logs []string
	for _, pat := range []string{"*.log", "stack/*.log", "etl/logs/*.log"} {
		m, _ := filepath.Glob(filepath.Join(e.dir, pat))
		logs = append(logs, m...)
	}
	for _, l := range logs {
		b, err := os.ReadFile(l)
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, filepath.Base(l)), b, 0o644)
		}
		if err != nil {
			e.t.Logf("keep logs: %v", err)
		}
	}
	e.t.Logf("logs kept in %s", dst)
}

// baseEnv is the environment every stage process of the test gets.
func (e *env) baseEnv() []string {
	return []string{
		"NATS_URL=" + e.stack.NATSURL, "MONGO_URI=" + e.stack.MongoURI, "DB_NAME=" + e.db,
		"COLLECTION_NAME=objects", "LOG_FORMAT=json", "LOG_LEVEL=info",
		"TAXII_API_URL=" + e.taxiiURL, "ENV_FILE=" + filepath.Join(e.dir, "empty.env"),
		"ETL_LOCAL_DIR=" + filepath.Join(e.dir, "etl"),
		"ETL_BIN_DIR=" + filepath.Join(repoRoot(e.t), "bin"),
		"ETL_TOOLS_DIR=" + filepath.Join(repoRoot(e.t), ".local", "bin"),
	}
}

// startMirror serves bundle files with the project's TAXII server.
func (e *env) startMirror(mode string, bundleFiles ...string) {
	e.t.Helper()
	addr, err := localstack.FreeAddr()
	if err != nil {
		e.t.Fatal(err)
	}
	e.mirror = &localstack.Proc{Name: "mirror", Path: binary(e.t, "mirror"), Addr: addr,
		LogPath: filepath.Join(e.dir, "mirror.log"),
		Env: append(e.baseEnv(), "MIRROR_ADDR="+addr, "MIRROR_MODE="+mode,
			"MIRROR_BUNDLES="+strings.Join(bundleFiles, ","))}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.mirror.Start(ctx); err != nil {
		e.t.Fatalf("start mirror: %v", err)
	}
	e.taxiiURL = "http://" + addr + "/api/v21/"
}

// start starts a long-running stage; extra is added to its environment.
func (e *env) start(name, bin string, extra []string, args ...string) *localstack.Proc {
	e.t.Helper()
	p := &localstack.Proc{Name: name, Path: binary(e.t, bin), Args: args,
		LogPath: filepath.Join(e.dir, name+".log"), Env: append(e.baseEnv(), extra...)}
	if err := p.Start(context.Background()); err != nil {
		e.t.Fatalf("start %s: %v", name, err)
	}
	e.procs = append(e.procs, p)
	return p
}

// runResult is what a foreground command printed and how it ended.
type runResult struct {
	code           int
	stdout, stderr string
	// maxRSS is the peak resident memory of the process in bytes.
	maxRSS int64
}

// run runs a command to its end with the test's environment.
func (e *env) run(timeout time.Duration, bin string, extra []string, args ...string) runResult {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(e.t, bin), args...)
	cmd.Env = append(append(os.Environ(), e.baseEnv()...), extra...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := runResult{stdout: out.String(), stderr: errb.String()}
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			res.maxRSS = ru.Maxrss * 1024
		}
	}
	if err != nil {
		if ee, ok := err.(*exec.ExitError); ok {
			res.code = ee.ExitCode()
		} else {
			e.t.Fatalf("run %s: %v", bin, err)
		}
	}
	logf := filepath.Join(e.dir, filepath.Base(bin)+"-run.log")
	f, _ := os.OpenFile(logf, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if f != nil {
		fmt.Fprintf(f, "$ %s %v (exit %d)\n%s\n%s\n", bin, args, res.code, res.stdout, res.stderr)
		f.Close()
	}
	return res
}

// mongo returns the test's collection.
func (e *env) collection() *mongo.Collection {
	e.t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(e.stack.MongoURI))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	return client.Database(e.db).Collection("objects")
}

// js returns a JetStream handle on the test's nats-server.
func (e *env) js() jetstream.JetStream {
	e.t.Helper()
	nc, err := nats.Connect(e.stack.NATSURL)
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		e.t.Fatal(err)
	}
	return js
}

// streamMsgs returns how many messages a stream holds (0 when it does not exist yet).
func (e *env) streamMsgs(name string) uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.js().Stream(ctx, name)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatalf("stream %s: %v", name, err)
	}
	return info.State.Msgs
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("timed out after %s waiting for %s; last state: %s", timeout, what, last)
}

// allDocs reads every stored document keyed by id, leaving out what changes with every write
// (the provenance block: load and transform times, run ids, the server's address).
func allDocs(t testing.TB, c *mongo.Collection) map[string]bson.M {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cur, err := c.Find(ctx, bson.D{})
	if err != nil {
		t.Fatalf("read documents: %v", err)
	}
	out := map[string]bson.M{}
	for cur.Next(ctx) {
		var d bson.M
		if err := cur.Decode(&d); err != nil {
			t.Fatal(err)
		}
		// Provenance says when, from which run and from which server address a document was
		// last written: it differs between equal runs, so it is left out of comparisons.
		delete(d, "provenance")
		delete(d, "removed_from_source")
		out[d["_id"].(string)] = d
	}
	if err := cur.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// countBy counts documents per value of a field, in Go (FerretDB's distinct is unreliable).
func countBy(docs map[string]bson.M, field string) map[string]int {
	out := map[string]int{}
	for _, d := range docs {
		out[fmt.Sprint(d[field])]++
	}
	return out
}

// bsonValue returns a document's field as an ordinary Go value, for comparisons.
func get(d bson.M, field string) any {
	if v, ok := d[field]; ok {
		if a, ok := v.(bson.A); ok {
			out := make([]any, len(a))
			copy(out, a)
			return out
		}
		return v
	}
	return nil
}

// bus names used by the tests.
var _ = bus.StreamRaw

// countInLog returns the last value of a numeric field in a JSON log, 0 when no line has it.
func countInLog(t testing.TB, path, field string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read log: %v", err)
	}
	last := 0
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.Contains(line, `"`+field+`"`) {
			continue
		}
		var m map[string]any
		if json.Unmarshal([]byte(line), &m) != nil {
			continue
		}
		if v, ok := m[field].(float64); ok {
			last = int(v)
		}
	}
	return last
}
