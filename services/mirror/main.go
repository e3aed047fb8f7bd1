// Command mirror is the project's own TAXII 2.1 server: it serves STIX bundle files (plain or
// gzipped) as TAXII 2.1 collections, in a standard mode or in a mode that reproduces
// attack-taxii.mitre.org. SIGHUP re-reads the bundle files; SIGINT and SIGTERM stop it cleanly.
package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/attack-etl/attack-etl/shared/service"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/mirror/internal/taxiiserver"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/ops"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	if err := run(ctx, os.Args[1:], hup); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "mirror: %s\n", config.RedactText(err.Error()))
		os.Exit(1)
	}
}

// run loads the configuration and the bundles, serves until ctx ends, and re-reads the bundles
// whenever reload receives a value.
func run(ctx context.Context, args []string, reload <-chan os.Signal) error {
	cfg, log, err := service.Setup("mirror", config.Join(config.Common, config.Mirror), args)
	if errors.Is(err, service.ErrHealthy) {
		return nil
	}
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()
	return serve(ctx, cfg, log, reload)
}

// serve wires the TAXII server to its listener and signals.
func serve(ctx context.Context, cfg *config.Values, log *zap.Logger,
	reload <-chan os.Signal) error {
	mode, err := taxiiserver.ParseMode(cfg.String("MIRROR_MODE"))
	if err != nil {
		return fmt.Errorf("MIRROR_MODE: %w", err)
	}
	maxPage, err := cfg.Int("MIRROR_MAX_PAGE")
	if err != nil {
		return err
	}
	grace, err := cfg.Duration("SHUTDOWN_GRACE")
	if err != nil {
		return err
	}
	bundles := cfg.Strings("MIRROR_BUNDLES")
	if len(bundles) == 0 {
		return errors.New("MIRROR_BUNDLES is empty: name the STIX bundle files to serve " +
			"(such as ../shared/attack/*-18.1.json.gz)")
	}
	reg := ops.NewRegistry()
	metrics := ops.NewMetrics(reg)
	opsSrv, err := ops.Serve(ctx, cfg.String("METRICS_ADDR"), reg, nil)
	if err != nil {
		return err
	}
	defer func() {
		stopCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = opsSrv.Shutdown(stopCtx)
	}()
	if opsSrv.Enabled() {
		log.Info("serving metrics and health", zap.String("addr", opsSrv.Addr()))
	}

	opts := taxiiserver.Options{Mode: mode, MaxPage: maxPage,
		OnRequest: func(r taxiiserver.RequestRecord) {
			metrics.RequestDuration.WithLabelValues("serve", strconv.Itoa(r.Status)).
				Observe(r.Took.Seconds())
			log.Debug("answered request", zap.String("method", r.Method),
				zap.String("path", r.Path), zap.String("query", r.Query),
				zap.Int("status", r.Status), zap.Int64("bytes", r.Bytes),
				zap.Duration("took", r.Took))
		},
		OnLoad: func(rep taxiiserver.LoadReport, err error) { logLoad(log, rep, err) },
	}
	if path := cfg.String("MIRROR_REQUEST_LOG"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("open request log: %w", err)
		}
		defer f.Close()
		opts.RequestLog = f
	}
	srv := taxiiserver.New(opts)
	if _, err := srv.Load(bundles); err != nil {
		return err
	}

	ln, err := net.Listen("tcp", cfg.String("MIRROR_ADDR"))
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.String("MIRROR_ADDR"), err)
	}
	addr := ln.Addr().String()
	httpSrv := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second,
		BaseContext: func(net.Listener) context.Context { return ctx }}
	served := make(chan error, 1)
	go func() { served <- httpSrv.Serve(ln) }()
	log.Info("serving TAXII 2.1", zap.String("addr", addr), zap.String("mode", string(mode)),
		zap.String("discovery", "http://"+addr+"/taxii2/"), zap.Int("max_page", maxPage))

	for {
		select {
		case <-reload:
			log.Info("re-reading bundles on SIGHUP", zap.Strings("bundles", bundles))
			// Reload in the background so that a stop signal is not held up by it; reloads
			// run one at a time, and a failed one keeps the previous bundles (OnLoad logs it).
			go func() { _, _ = srv.Reload() }()
		case err := <-served:
			return fmt.Errorf("serve on %s: %w", addr, err)
		case <-ctx.Done():
			opsSrv.MarkStopping()
			stopCtx, cancel := context.WithTimeout(context.Background(), grace)
			defer cancel()
			err := httpSrv.Shutdown(stopCtx)
			st := srv.Stats()
			log.Info("stopped", zap.String("addr", addr), zap.Int64("requests", st.Requests),
				zap.Int("paths", len(st.ByPath)), zap.Int64("loads", st.Loads))
			if err != nil {
				return fmt.Errorf("shut down: %w", err)
			}
			return nil
		}
	}
}

// logLoad logs a load or reload: one line per bundle and a total.
func logLoad(log *zap.Logger, rep taxiiserver.LoadReport, err error) {
	if err != nil {
		log.Error("bundles not loaded; serving the previous ones if any", zap.Error(err))
		return
	}
	for _, c := range rep.Collections {
		fields := []zap.Field{zap.String("file", c.File), zap.String("collection", c.ID),
			zap.String("title", c.Title), zap.String("release", c.Release),
			zap.Int("objects", c.Objects), zap.Strings("roots", c.Roots)}
		switch {
		case c.Invalid > 0:
			log.Warn("loaded bundle with objects lacking a valid id or type; they are served "+
				"unindexed", append(fields, zap.Int("invalid", c.Invalid))...)
		case len(c.Roots) == 0:
			log.Warn("loaded bundle but not serving it: a later release of its collection "+
				"is loaded (standard mode serves the latest only)", fields...)
		default:
			log.Info("loaded bundle", fields...)
		}
	}
	log.Info("bundles loaded", zap.Int("bundles", len(rep.Collections)),
		zap.Int("objects", rep.Objects), zap.Duration("took", rep.Took))
}
