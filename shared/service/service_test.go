package service_test

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/service"
)

func TestSetup(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(config.EnvFileKey, empty)
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	defer healthy.Close()
	addr := strings.TrimPrefix(healthy.URL, "http://")
	tests := []struct {
		name    string
		args    []string
		wantErr error
		anyErr  bool
	}{
		{"starts", []string{"--log-level", "warn"}, nil, false},
		{"healthy service", []string{"--healthcheck", "--metrics-addr", addr}, service.ErrHealthy,
			true},
		{"nothing listening", []string{"--healthcheck", "--metrics-addr", "127.0.0.1:1"}, nil, true},
		{"bad log level", []string{"--log-level", "loud"}, nil, true},
		{"unknown flag", []string{"--no-such-flag"}, nil, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg, log, err := service.Setup("test", config.Common, tt.args)
			if (err != nil) != tt.anyErr || (tt.wantErr != nil && !errors.Is(err, tt.wantErr)) {
				t.Fatalf("Setup error = %v, want %v (any: %v)", err, tt.wantErr, tt.anyErr)
			}
			if err == nil && (cfg == nil || log == nil) {
				t.Fatal("Setup returned no settings or logger")
			}
		})
	}
}
