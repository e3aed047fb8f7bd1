// Command etlctl operates attack-etl from one place: it runs the whole pipeline once on a local
// stack (run), replays the raw stream through the current transform (replay), keeps a local
// stack up for queries (stack), lists, counts and re-submits dead letters (dlq), and prints the
// .env.example that the key catalogue defines (env-example).
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/etlctl/internal/deadletters"
	"github.com/attack-etl/attack-etl/services/etlctl/internal/runner"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/logging"
)

const usage = `etlctl: operate the attack-etl pipeline.

Commands:
  run          run the whole pipeline once and print a summary; starts a local nats-server and
               FerretDB when NATS_URL / MONGO_URI are unset, and the project's TAXII server on
               the ATT&CK bundles when TAXII_API_URL is unset
  replay       re-transform every raw object kept in the raw stream and reload the results,
               without contacting the TAXII server
  stack        start the local nats-server and FerretDB and keep them up until Ctrl-C
  dlq list     list dead letters (--stage, --kind, --limit)
  dlq count    count dead letters by stage and kind
  dlq resubmit re-publish dead letters to the subject they came from, then remove them
  env-example  print the .env.example that the configuration catalogue defines

Every command takes the configuration keys as flags (etlctl run --help lists them).
`

func main() {
	if err := run(os.Args[1:]); err != nil {
		if errors.Is(err, pflag.ErrHelp) {
			os.Exit(0)
		}
		fmt.Fprintf(os.Stderr, "etlctl: %s\n", config.RedactText(err.Error()))
		os.Exit(1)
	}
}

func run(args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Print(usage)
		return nil
	}
	cmd, rest := args[0], args[1:]
	if cmd == "env-example" {
		fmt.Print(config.EnvExample(config.All()))
		return nil
	}
	if cmd == "dlq" {
		if len(rest) == 0 {
			return fmt.Errorf("dlq needs list, count or resubmit")
		}
		cmd, rest = "dlq "+rest[0], rest[1:]
	}

	var opts deadletters.Filter
	cfg, err := config.Load("etlctl "+cmd, config.All(), rest, func(fs *pflag.FlagSet) {
		fs.StringVar(&opts.Stage, "stage", "", "dead letters of this stage only")
		fs.StringVar(&opts.Kind, "kind", "", "dead letters of this kind only")
		fs.IntVar(&opts.Limit, "limit", 50, "most dead letters listed")
	})
	if err != nil {
		return err
	}
	log, err := logging.New("etlctl", cfg.String("LOG_LEVEL"), cfg.String("LOG_FORMAT"))
	if err != nil {
		return err
	}
	defer func() { _ = log.Sync() }()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	switch cmd {
	case "run":
		return runner.Run(ctx, cfg, log, runner.ModeExtract)
	case "replay":
		return runner.Run(ctx, cfg, log, runner.ModeReplay)
	case "stack":
		return runner.Stack(ctx, cfg, log)
	case "dlq list", "dlq count", "dlq resubmit":
		return dlq(ctx, cfg, log, cmd, opts)
	}
	return fmt.Errorf("unknown command %q (etlctl help lists them)", cmd)
}

func dlq(ctx context.Context, cfg *config.Values, log *zap.Logger, cmd string,
	f deadletters.Filter) error {
	url, stop, err := runner.LocalNATS(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer stop()
	d, err := deadletters.Open(ctx, cfg, url, log)
	if err != nil {
		return err
	}
	defer d.Close()
	switch cmd {
	case "dlq list":
		return d.List(ctx, f, os.Stdout)
	case "dlq count":
		return d.Count(ctx, f, os.Stdout)
	default:
		return d.Resubmit(ctx, f, os.Stdout)
	}
}
