// Package runner runs the whole pipeline once: it starts what is not configured (a local
// nats-server and FerretDB, the project's TAXII server on the ATT&CK bundles), starts the
// transformer and the loaders, runs the extractor (or a replay) to its end, waits until every
// document is in MongoDB, stops the stages and prints a summary.
package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/localstack"
)

// Mode says what feeds the pipeline.
type Mode int

const (
	// ModeExtract reads the TAXII server (or bundle files) with the extractor.
	ModeExtract Mode = iota
	// ModeReplay re-transforms the raw stream with transformer --replay.
	ModeReplay
)

// The addresses a local stack prefers, so that mongosh finds it at a known place; a busy one is
// replaced by a free port.
const (
	localNATSAddr     = "127.0.0.1:14222"
	localMongoAddr    = "127.0.0.1:27027"
	localPostgresAddr = "127.0.0.1:15432"
)

// Run runs the pipeline once in the given mode and prints the summary to standard output.
func Run(ctx context.Context, cfg *config.Values, log *zap.Logger, mode Mode) error {
	timeout, err := cfg.Duration("ETL_RUN_TIMEOUT")
	if err != nil {
		return err
	}
	loaders, err := cfg.Int("ETL_LOADERS")
	if err != nil {
		return err
	}
	if loaders < 1 {
		return fmt.Errorf("ETL_LOADERS is %d; a run needs at least one loader", loaders)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	begin := time.Now()
	r := &run{cfg: cfg, log: log, localDir: cfg.String("ETL_LOCAL_DIR"),
		binDir: cfg.String("ETL_BIN_DIR")}
	defer r.stopAll()

	if err := r.startStack(ctx, true); err != nil {
		return err
	}
	if mode == ModeExtract {
		if err := r.startMirror(ctx); err != nil {
			return err
		}
	}
	w, err := newWatcher(ctx, r.natsURL, cfg, log)
	if err != nil {
		return err
	}
	defer w.close()

	if mode == ModeExtract {
		if _, err := r.startStage(ctx, "transformer", "transformer"); err != nil {
			return err
		}
	}
	for i := 1; i <= loaders; i++ {
		if _, err := r.startStage(ctx, "loader", "loader-"+strconv.Itoa(i)); err != nil {
			return err
		}
	}

	times := stageTimes{}
	feedStart := time.Now()
	switch mode {
	case ModeExtract:
		log.Info("extracting", zap.String("taxii", config.RedactURL(r.taxiiURL)))
		if err := r.runToEnd(ctx, "extractor", "extractor"); err != nil {
			return err
		}
		times.feed = time.Since(feedStart)
		log.Info("extractor finished; waiting for the transformer",
			zap.Duration("took", times.feed))
		durable := cfg.String("TRANSFORMER_DURABLE")
		if err := w.waitConsumerDrained(ctx, r.stageExited, durable); err != nil {
			return fmt.Errorf("wait for the transformer: %w", err)
		}
		times.transform = time.Since(feedStart)
	case ModeReplay:
		log.Info("replaying the raw stream through the transformer")
		if err := r.runToEnd(ctx, "transformer", "transformer-replay", "--replay"); err != nil {
			return err
		}
		times.feed = time.Since(feedStart)
		times.transform = times.feed
	}
	log.Info("transform finished; waiting for the loaders", zap.Duration("took", times.transform))
	if err := w.waitFlatDrained(ctx, r.stageExited, cfg.String("LOADER_DURABLE"),
		r.loaderWarnings); err != nil {
		return fmt.Errorf("wait for the loaders: %w", err)
	}
	times.load = time.Since(feedStart)
	if err := r.stopStages(); err != nil {
		return err
	}
	dead, err := w.deadLetters(ctx)
	if err != nil {
		return err
	}
	sum, err := summarize(ctx, r.mongoURI, cfg.String("DB_NAME"), cfg.String("COLLECTION_NAME"))
	if err != nil {
		return err
	}
	sum.times, sum.deadLetters, sum.total = times, dead, time.Since(begin)
	sum.print(os.Stdout, mode, r.taxiiURL)
	log.Info("run finished", zap.Int("documents", sum.documents),
		zap.Uint64("dead_letters", dead), zap.Duration("took", sum.total))
	return nil
}

// Stack starts the local nats-server and FerretDB and keeps them up until ctx ends.
func Stack(ctx context.Context, cfg *config.Values, log *zap.Logger) error {
	r := &run{cfg: cfg, log: log, localDir: cfg.String("ETL_LOCAL_DIR")}
	defer r.stopAll()
	if err := r.startStack(ctx, false); err != nil {
		return err
	}
	fmt.Printf("NATS_URL=%s\nMONGO_URI=%s\n", r.natsURL, r.mongoURI)
	fmt.Printf("query: npx mongosh '%s%s'\nCtrl-C stops the stack.\n", r.mongoURI,
		cfg.String("DB_NAME"))
	<-ctx.Done()
	return nil
}

// LocalNATS returns the NATS URL a command that needs only NATS (dlq) should use: NATS_URL when
// it is configured, else the local stack's: the one already running (etlctl stack), or a
// nats-server started on the local stack's data, which stop ends.
func LocalNATS(ctx context.Context, cfg *config.Values, log *zap.Logger) (string, func(),
	error) {
	if cfg.Explicit("NATS_URL") {
		return cfg.String("NATS_URL"), func() {}, nil
	}
	dir := filepath.Join(cfg.String("ETL_LOCAL_DIR"), "stack")
	st, err := localstack.Start(ctx, localstack.Options{Dir: dir,
		BinDir: cfg.String("ETL_TOOLS_DIR"), NATS: true, NATSAddr: localNATSAddr})
	var running *localstack.RunningError
	switch {
	case errors.As(err, &running) && running.NATSURL != "":
		log.Info("using the local stack already running", zap.Int("pid", running.PID),
			zap.String("nats", running.NATSURL))
		return running.NATSURL, func() {}, nil
	case err != nil:
		return "", nil, fmt.Errorf("start the local nats-server: %w", err)
	}
	log.Info("local nats-server started", zap.String("nats", st.NATSURL),
		zap.String("data", dir))
	return st.NATSURL, st.Stop, nil
}

// run holds the processes of one run.
type run struct {
	cfg      *config.Values
	log      *zap.Logger
	localDir string
	binDir   string

	stack    *localstack.Stack
	mirror   *localstack.Proc
	stages   []*localstack.Proc
	natsURL  string
	mongoURI string
	taxiiURL string
}

// startStack starts the local services that no URL is configured for. When reuse is set and
// another process (etlctl stack) already runs them on the same folder, the run uses that
// process's services instead.
func (r *run) startStack(ctx context.Context, reuse bool) error {
	r.natsURL, r.mongoURI = r.cfg.String("NATS_URL"), r.cfg.String("MONGO_URI")
	needNATS, needMongo := !r.cfg.Explicit("NATS_URL"), !r.cfg.Explicit("MONGO_URI")
	if !needNATS && !needMongo {
		return nil
	}
	st, err := localstack.Start(ctx, localstack.Options{
		Dir: filepath.Join(r.localDir, "stack"), BinDir: r.cfg.String("ETL_TOOLS_DIR"),
		NATS: needNATS, Mongo: needMongo, NATSAddr: localNATSAddr, MongoAddr: localMongoAddr,
		PostgresAddr: localPostgresAddr,
	})
	var running *localstack.RunningError
	if errors.As(err, &running) {
		return r.useRunningStack(running, reuse, needNATS, needMongo)
	}
	if err != nil {
		return fmt.Errorf("start the local stack: %w", err)
	}
	r.stack = st
	if needNATS {
		r.natsURL = st.NATSURL
	}
	if needMongo {
		r.mongoURI = st.MongoURI
	}
	r.log.Info("local stack started", zap.String("nats", r.natsURL),
		zap.String("mongo", config.RedactURL(r.mongoURI)), zap.String("backend", st.Backend),
		zap.String("data", filepath.Join(r.localDir, "stack")))
	return nil
}

// useRunningStack takes the URLs of the stack another process runs on the local folder.
func (r *run) useRunningStack(running *localstack.RunningError, reuse, needNATS,
	needMongo bool) error {
	urls := fmt.Sprintf("NATS_URL=%s MONGO_URI=%s", running.NATSURL,
		config.RedactURL(running.MongoURI))
	if !reuse {
		return fmt.Errorf("%w; its servers: %s", running, urls)
	}
	if (needNATS && running.NATSURL == "") || (needMongo && running.MongoURI == "") {
		return fmt.Errorf("%w, without the servers this run needs (%s): stop it, or set "+
			"NATS_URL and MONGO_URI", running, urls)
	}
	if needNATS {
		r.natsURL = running.NATSURL
	}
	if needMongo {
		r.mongoURI = running.MongoURI
	}
	r.log.Info("using the local stack already running", zap.Int("pid", running.PID),
		zap.String("nats", r.natsURL), zap.String("mongo", config.RedactURL(r.mongoURI)),
		zap.String("data", running.Dir))
	return nil
}

// startMirror serves the ATT&CK bundles with the project's TAXII server, unless a TAXII URL or
// a bundle source is configured.
func (r *run) startMirror(ctx context.Context) error {
	r.taxiiURL = r.cfg.String("TAXII_API_URL")
	if r.cfg.Explicit("TAXII_API_URL") || r.cfg.Explicit("SOURCE_BUNDLE") {
		if r.cfg.Explicit("SOURCE_BUNDLE") {
			r.taxiiURL = r.cfg.String("SOURCE_BUNDLE")
		}
		return nil
	}
	dir, release := r.cfg.String("ATTACK_DATA_DIR"), r.cfg.String("ATTACK_RELEASE")
	bundles, err := filepath.Glob(filepath.Join(dir, "*-attack-"+release+".json*"))
	if err != nil || len(bundles) == 0 {
		return fmt.Errorf("no ATT&CK %s bundles in %s (set ATTACK_DATA_DIR, or TAXII_API_URL to "+
			"read a TAXII server)", release, dir)
	}
	addr, err := localstack.FreeAddr()
	if err != nil {
		return err
	}
	bin, err := localstack.FindBinary(r.binDir, "mirror")
	if err != nil {
		return err
	}
	r.mirror = &localstack.Proc{Name: "mirror", Path: bin, Addr: addr,
		LogPath: r.logPath("mirror"), Env: append(r.env(),
			"MIRROR_ADDR="+addr, "MIRROR_BUNDLES="+strings.Join(bundles, ","))}
	if err := r.mirror.Start(ctx); err != nil {
		return err
	}
	r.taxiiURL = "http://" + addr + "/api/v21/"
	r.log.Info("local TAXII server started", zap.String("url", r.taxiiURL),
		zap.Strings("bundles", bundles))
	return nil
}

// env returns what every child process gets on top of the environment: the URLs in use.
func (r *run) env() []string {
	env := []string{"NATS_URL=" + r.natsURL, "MONGO_URI=" + r.mongoURI}
	if r.taxiiURL != "" && !r.cfg.Explicit("SOURCE_BUNDLE") {
		env = append(env, "TAXII_API_URL="+r.taxiiURL)
	}
	return env
}

// logPath returns the log of a stage for this run. A log of an earlier run is kept beside it as
// <name>.log.prev, so that what the run quotes from a log is this run's.
func (r *run) logPath(name string) string {
	dir := filepath.Join(r.localDir, "logs")
	_ = os.MkdirAll(dir, 0o755)
	path := filepath.Join(dir, name+".log")
	if _, err := os.Stat(path); err == nil {
		_ = os.Rename(path, path+".prev")
	}
	return path
}

// startStage starts a long-running stage in the background.
func (r *run) startStage(ctx context.Context, bin, name string, args ...string) (*localstack.Proc,
	error) {
	path, err := localstack.FindBinary(r.binDir, bin)
	if err != nil {
		return nil, err
	}
	p := &localstack.Proc{Name: name, Path: path, Args: args, LogPath: r.logPath(name),
		Env: r.env()}
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	r.stages = append(r.stages, p)
	r.log.Info("stage started", zap.String("stage", name), zap.Int("pid", p.Pid()),
		zap.String("log", p.LogPath))
	return p, nil
}

// runToEnd runs a stage in the foreground and fails when it exits non-zero.
func (r *run) runToEnd(ctx context.Context, bin, name string, args ...string) error {
	path, err := localstack.FindBinary(r.binDir, bin)
	if err != nil {
		return err
	}
	p := &localstack.Proc{Name: name, Path: path, Args: args, LogPath: r.logPath(name),
		Env: r.env()}
	if err := p.Start(ctx); err != nil {
		return err
	}
	r.log.Info("stage started", zap.String("stage", name), zap.Int("pid", p.Pid()),
		zap.String("log", p.LogPath))
	code, err := p.Wait(ctx)
	if err != nil {
		p.Stop(5 * time.Second)
		return fmt.Errorf("%s: %w", name, err)
	}
	if code != 0 {
		return fmt.Errorf("%s exited with status %d; last lines of %s:\n%s", name, code,
			p.LogPath, lastLines(p.LogPath, 15))
	}
	return nil
}

// stageExited returns an error when a background stage has died, so waiting stops early.
func (r *run) stageExited() error {
	for _, p := range r.stages {
		if code, done := p.ExitCode(); done {
			return fmt.Errorf("%s exited with status %d; last lines of %s:\n%s", p.Name, code,
				p.LogPath, lastLines(p.LogPath, 15))
		}
	}
	return nil
}

// stopStages sends SIGTERM to the background stages and checks that each exits cleanly.
func (r *run) stopStages() error {
	grace, err := r.cfg.Duration("SHUTDOWN_GRACE")
	if err != nil {
		return err
	}
	var errs []error
	for _, p := range r.stages {
		p.Stop(grace + 5*time.Second)
		if code, _ := p.ExitCode(); code != 0 {
			errs = append(errs, fmt.Errorf("%s exited with status %d on SIGTERM (log %s)",
				p.Name, code, p.LogPath))
		}
	}
	r.stages = nil
	return errors.Join(errs...)
}

func (r *run) stopAll() {
	for _, p := range r.stages {
		p.Stop(10 * time.Second)
	}
	if r.mirror != nil {
		r.mirror.Stop(5 * time.Second)
	}
	if r.stack != nil {
		r.stack.Stop()
		r.log.Info("local stack stopped; its data stays in " + filepath.Join(r.localDir, "stack"))
	}
}

// loaderWarnings returns the last warning or error each loader logged, as "loader-1: <message>
// (<error>)", passwords masked; empty when none has warned.
func (r *run) loaderWarnings() string {
	var out []string
	for _, p := range r.stages {
		if !strings.HasPrefix(p.Name, "loader") {
			continue
		}
		if w := lastWarning(p.LogPath); w != "" {
			out = append(out, p.Name+": "+w)
		}
	}
	return strings.Join(out, "; ")
}

// lastWarning returns the message and error of the last warn or error line of a JSON log.
func lastWarning(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		var e struct {
			Level string `json:"level"`
			Msg   string `json:"msg"`
			Error string `json:"error"`
		}
		if json.Unmarshal([]byte(lines[i]), &e) != nil || (e.Level != "warn" && e.Level != "error") {
			continue
		}
		if e.Error != "" {
			e.Msg += " (" + e.Error + ")"
		}
		return config.RedactText(e.Msg)
	}
	return ""
}

// lastLines returns the last n lines of a stage's log, passwords masked.
func lastLines(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return config.RedactText(strings.Join(lines, "\n"))
}
