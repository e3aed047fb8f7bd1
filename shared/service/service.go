// Package service holds what every service's main does first: load the configuration, answer
// --healthcheck, and build the logger.
package service

import (
	"errors"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/logging"
	"github.com/attack-etl/attack-etl/shared/ops"
)

// ErrHealthy is returned by Setup after a --healthcheck that found the service healthy: the
// caller exits 0 without starting.
var ErrHealthy = errors.New("healthy")

// Setup loads the keys from args, the environment and the .env file, with extra flags added by
// the callers' adders. With --healthcheck it probes the running service's METRICS_ADDR and
// returns ErrHealthy or the probe's error. Otherwise it returns the settings and a logger named
// after the service, which the caller syncs when it ends.
func Setup(name string, keys []config.Key, args []string,
	extra ...func(*pflag.FlagSet)) (*config.Values, *zap.Logger, error) {
	var healthcheck bool
	cfg, err := config.Load(name, keys, args, append(extra, ops.HealthCheckFlag(&healthcheck))...)
	if err != nil {
		return nil, nil, err
	}
	if healthcheck {
		if err := ops.HealthCheck(cfg.String("METRICS_ADDR")); err != nil {
			return nil, nil, err
		}
		return nil, nil, ErrHealthy
	}
	log, err := logging.New(name, cfg.String("LOG_LEVEL"), cfg.String("LOG_FORMAT"))
	if err != nil {
		return nil, nil, err
	}
	return cfg, log, nil
}
