// Package logging builds the zap logger every service uses: console encoding on a terminal,
// JSON otherwise, at a configurable level.
package logging

import (
	"fmt"
	"os"
	"strings"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// New returns a logger writing to standard error. The level is debug, info, warn or error; the
// format is console, json or auto (console when standard error is a terminal). The service name
// is added to every line.
func New(service, level, format string) (*zap.Logger, error) {
	var lvl zapcore.Level
	if err := lvl.UnmarshalText([]byte(strings.ToLower(level))); err != nil {
		return nil, fmt.Errorf("log level %q: %w", level, err)
	}
	var enc zapcore.Encoder
	switch strings.ToLower(format) {
	case "auto", "":
		if isTerminal(os.Stderr) {
			enc = consoleEncoder()
		} else {
			enc = jsonEncoder()
		}
	case "console":
		enc = consoleEncoder()
	case "json":
		enc = jsonEncoder()
	default:
		return nil, fmt.Errorf("log format %q: want console, json or auto", format)
	}
	core := zapcore.NewCore(enc, zapcore.Lock(os.Stderr), lvl)
	return zap.New(core, zap.AddCaller()).With(zap.String("service", service)), nil
}

func consoleEncoder() zapcore.Encoder {
	cfg := zap.NewDevelopmentEncoderConfig()
	cfg.EncodeTime = zapcore.TimeEncoderOfLayout("15:04:05.000")
	return zapcore.NewConsoleEncoder(cfg)
}

func jsonEncoder() zapcore.Encoder {
	cfg := zap.NewProductionEncoderConfig()
	cfg.EncodeTime = zapcore.ISO8601TimeEncoder
	return zapcore.NewJSONEncoder(cfg)
}

func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
