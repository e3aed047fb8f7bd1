package config_test

import (
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/shared/config"
)

func TestRedactURL(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"mongo password", "mongodb://etl:s3cret@db:27017/attack", "mongodb://etl:xxxxx@db:27017/attack"},
		{"no password", "nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"user only", "nats://token@host:4222", "nats://token@host:4222"},
		{"list",
			"nats://a:pw@h1:4222,nats://b:pw2@h2:4222", "nats://a:xxxxx@h1:4222,nats://b:xxxxx@h2:4222"},
		{"not a url", "plain", "plain"},
		{"no scheme", "admin:S3cret@127.0.0.1", "admin:xxxxx@127.0.0.1"},
		{"host and port only", "127.0.0.1:27017", "127.0.0.1:27017"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := config.RedactURL(tt.in); got != tt.want {
				t.Fatalf("RedactURL(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestRedactText(t *testing.T) {
	in := `server selection error: dial mongodb://root:hunter2@10.0.0.1:27017: refused`
	got := config.RedactText(in)
	if strings.Contains(got, "hunter2") {
		t.Fatalf("password kept: %s", got)
	}
	bare := config.RedactText(`connect to MongoDB at admin:S3cret@127.0.0.1: refused`)
	if strings.Contains(bare, "S3cret") || !strings.Contains(bare, "admin:xxxxx@127.0.0.1") {
		t.Fatalf("password of a URI without scheme kept: %s", bare)
	}
	if !strings.Contains(got, "mongodb://root:xxxxx@10.0.0.1") {
		t.Fatalf("URL mangled: %s", got)
	}
}
