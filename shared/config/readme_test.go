package config_test

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/shared/config"
)

var update = flag.Bool("update", false, "rewrite the README's key table from the catalogue")

// TestREADMEKeyTable keeps the README's configuration table generated from the catalogue; run
// with -update to rewrite it.
func TestREADMEKeyTable(t *testing.T) {
	path := filepath.Join("..", "..", "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- keys:begin -->\n", "<!-- keys:end -->"
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the key table markers")
	}
	want := config.MarkdownTable(config.All()) + "\n"
	if s[i+len(begin):j] == want {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(s[:i+len(begin)]+want+s[j:]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("README.md's key table is out of date; run: go test ./shared/config -run " +
		"TestREADMEKeyTable -update")
}
