package config_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/shared/config"
)

// TestEnvExampleMatchesCatalogue keeps .env.example generated from the key catalogue: every
// key, its default and its meaning are declared once, in keys.go.
func TestEnvExampleMatchesCatalogue(t *testing.T) {
	path := filepath.Join("..", "..", ".env.example")
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s: %v", path, err)
	}
	want := config.EnvExample(config.All())
	if string(got) != want {
		t.Fatalf(".env.example is out of date with shared/config/keys.go; regenerate it with "+
			"'make env-example'\n--- want ---\n%s", want)
	}
}

// TestCatalogueIsWellFormed checks that names are unique upper snake case and every key has a
// meaning.
func TestCatalogueIsWellFormed(t *testing.T) {
	name := regexp.MustCompile(`^[A-Z][A-Z0-9_]*$`)
	seen := map[string]bool{}
	for _, k := range config.All() {
		if !name.MatchString(k.Name) {
			t.Errorf("key %q is not upper snake case", k.Name)
		}
		if seen[k.Name] {
			t.Errorf("key %s is declared twice", k.Name)
		}
		seen[k.Name] = true
		if !strings.HasSuffix(k.Usage, ".") || k.Group == "" {
			t.Errorf("key %s needs a one-sentence usage and a group", k.Name)
		}
	}
	for _, required := range []string{"MONGO_URI", "DB_NAME", "COLLECTION_NAME", "TAXII_API_URL",
		"NATS_URL"} {
		if !seen[required] {
			t.Errorf("required key %s is missing", required)
		}
	}
}

// TestPrecedence checks flags > environment > .env file > defaults.
func TestPrecedence(t *testing.T) {
	dir := t.TempDir()
	envFile := filepath.Join(dir, "test.env")
	if err := os.WriteFile(envFile, []byte("DB_NAME=from_file\nCOLLECTION_NAME=file_coll\n"+
		"MONGO_URI=mongodb://file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(config.EnvFileKey, envFile)
	t.Setenv("COLLECTION_NAME", "env_coll")
	t.Setenv("MONGO_URI", "mongodb://env")
	vals, err := config.Load("test", config.Loader, []string{"--mongo-uri", "mongodb://flag"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		key, want string
		explicit  bool
	}{
		{"MONGO_URI", "mongodb://flag", true},
		{"COLLECTION_NAME", "env_coll", true},
		{"DB_NAME", "from_file", true},
		{"LOADER_BATCH_SIZE", "500", false},
	}
	for _, tt := range tests {
		t.Run(tt.key, func(t *testing.T) {
			if got := vals.String(tt.key); got != tt.want {
				t.Errorf("%s = %q, want %q", tt.key, got, tt.want)
			}
			if got := vals.Explicit(tt.key); got != tt.explicit {
				t.Errorf("Explicit(%s) = %v, want %v", tt.key, got, tt.explicit)
			}
		})
	}
}

// TestRedactedHidesSecrets checks the start-up settings line.
func TestRedactedHidesSecrets(t *testing.T) {
	empty := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(config.EnvFileKey, empty)
	t.Setenv("TAXII_PASSWORD", "hunter2")
	t.Setenv("MONGO_URI", "mongodb://etl:s3cret@db:27017")
	t.Setenv("NATS_URL", "nats://u:natspw@n1:4222")
	vals, err := config.Load("test", config.All(), nil)
	if err != nil {
		t.Fatal(err)
	}
	red := vals.Redacted()
	if red["TAXII_PASSWORD"] != "***" || !strings.Contains(red["MONGO_URI"], "etl:xxxxx@db") {
		t.Errorf("secrets not masked as expected: %v %v", red["TAXII_PASSWORD"], red["MONGO_URI"])
	}
	for k, v := range red {
		for _, secret := range []string{"hunter2", "s3cret", "natspw"} {
			if strings.Contains(v, secret) {
				t.Errorf("%s leaks a secret: %s", k, v)
			}
		}
	}
}
