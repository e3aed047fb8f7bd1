package source_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/services/extractor/internal/source"
)

func TestRead(t *testing.T) {
	plain, err := os.ReadFile("../../testdata/ics-18.1-slice.json")
	if err != nil {
		t.Fatal(err)
	}
	gz, err := os.ReadFile("../../testdata/ics-18.1-slice.json.gz")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	// A gzipped bundle without .gz in its name is recognised by its content.
	renamed := filepath.Join(dir, "bundle.json")
	if err := os.WriteFile(renamed, gz, 0o600); err != nil {
		t.Fatal(err)
	}
	enterprise := filepath.Join(dir, "enterprise.json")
	if err := os.WriteFile(enterprise, []byte(`{"type":"bundle",`+
		`"id":"bundle--enterprise-attack","objects":[{"type":"attack-pattern",`+
		`"id":"attack-pattern--00000000-0000-4000-8000-000000000001"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(dir, "custom-intel.json")
	if err := os.WriteFile(other, []byte(`{"type":"bundle",`+
		`"id":"bundle--6ad9e2a4-7c44-4ad8-a1a2-3b9b1e1d0b6e","objects":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ics.json.gz":
			_, _ = w.Write(gz)
		case "/ics.json":
			_, _ = w.Write(plain)
		default:
			http.Error(w, "<html>no such file</html>", http.StatusNotFound)
		}
	}))
	defer srv.Close()
	const ics = "x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09"
	tests := []struct {
		name, where, wantID, wantTitle string
		wantObjects                    int
	}{
		{"plain bundle file with an x-mitre-collection object",
			"../../testdata/ics-18.1-slice.json", ics, "ICS ATT&CK", 30},
		{"gzipped bundle file", "../../testdata/ics-18.1-slice.json.gz", ics, "ICS ATT&CK", 30},
		{"gzipped bundle under a plain name", renamed, ics, "ICS ATT&CK", 30},
		{"gzipped bundle URL", srv.URL + "/ics.json.gz", ics, "ICS ATT&CK", 30},
		{"plain bundle URL", srv.URL + "/ics.json", ics, "ICS ATT&CK", 30},
		{"STIX 2.0 ATT&CK bundle without a collection object gets the TAXII collection",
			enterprise, "x-mitre-collection--1f5f1533-f617-4ca8-9ab4-6a02367fa019",
			"Enterprise ATT&CK", 1},
		{"any other bundle is named by its id and file", other,
			"bundle--6ad9e2a4-7c44-4ad8-a1a2-3b9b1e1d0b6e", "custom-intel", 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := source.Read(context.Background(), tc.where, source.Options{})
			if err != nil {
				t.Fatal(err)
			}
			if b.CollectionID != tc.wantID || b.Title != tc.wantTitle ||
				len(b.Objects) != tc.wantObjects {
				t.Fatalf("got %s %q with %d objects, want %s %q with %d", b.CollectionID,
					b.Title, len(b.Objects), tc.wantID, tc.wantTitle, tc.wantObjects)
			}
		})
	}
	t.Run("objects keep their bytes", func(t *testing.T) {
		b, err := source.Read(context.Background(), "../../testdata/ics-18.1-slice.json.gz",
			source.Options{})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range b.Objects {
			if !strings.Contains(string(plain), string(o)) {
				t.Fatal("an object's bytes differ from the bundle's")
			}
		}
	})
}

func TestReadErrors(t *testing.T) {
	dir := t.TempDir()
	notBundle := filepath.Join(dir, "x.json")
	if err := os.WriteFile(notBundle, []byte(`{"type":"indicator"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	html := filepath.Join(dir, "x.html")
	if err := os.WriteFile(html, []byte(`<html>hello</html>`), 0o600); err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.NotFoundHandler())
	defer srv.Close()
	tests := []struct {
		name, where string
		wantErr     error
		wantText    string
	}{
		{"missing file", filepath.Join(dir, "nope.json"), os.ErrNotExist, "nope.json"},
		{"JSON that is not a bundle", notBundle, source.ErrNotBundle, "indicator"},
		{"HTML instead of JSON", html, source.ErrNotBundle, "x.html"},
		{"URL answering 404 names the status", srv.URL + "/b.json", nil, "404"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := source.Read(context.Background(), tc.where, source.Options{})
			if err == nil {
				t.Fatal("want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantText) {
				t.Errorf("error %q does not mention %q", err, tc.wantText)
			}
		})
	}
}
