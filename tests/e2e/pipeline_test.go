package e2e

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// bundleIndex reads bundles and returns the distinct ids per type and in all.
func bundleIndex(t testing.TB, files ...string) (perType map[string]int, ids map[string]bool) {
	t.Helper()
	perType, ids = map[string]int{}, map[string]bool{}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(fh)
		if err != nil {
			t.Fatal(err)
		}
		var b struct {
			Objects []struct {
				ID   string `json:"id"`
				Type string `json:"type"`
			} `json:"objects"`
		}
		if err := json.NewDecoder(zr).Decode(&b); err != nil {
			t.Fatalf("decode %s: %v", f, err)
		}
		fh.Close()
		for _, o := range b.Objects {
			if !ids[o.ID] {
				ids[o.ID] = true
				perType[o.Type]++
			}
		}
	}
	return perType, ids
}

// TestRunCommandLoadsEveryObject is the product's main promise: `etlctl run` (what make demo
// runs) carries every object of the three real 18.1 bundles through the real binaries into
// MongoDB, one document per STIX id, and running it again changes nothing.
func TestRunCommandLoadsEveryObject(t *testing.T) {
	files := bundles(t, "18.1")
	e := newEnv(t)
	wantTypes, ids := bundleIndex(t, files...)
	if len(ids) != 28986 {
		t.Fatalf("the 18.1 bundles hold %d distinct ids, want 28986", len(ids))
	}
	runEnv := []string{"ATTACK_DATA_DIR=" + filepath.Dir(files[0]), "ATTACK_RELEASE=18.1"}
	res := e.run(20*time.Minute, "etlctl", runEnv, "run")
	if res.code != 0 {
		t.Fatalf("etlctl run exited %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout,
			tailText(res.stderr, 40))
	}
	if !strings.Contains(res.stdout, "documents in MongoDB: 28986") {
		t.Fatalf("summary does not report 28986 documents:\n%s", res.stdout)
	}
	for _, want := range []string{"enterprise-attack", "mobile-attack", "ics-attack",
		"attack-pattern", "time per stage", "dead letters in STIX_DLQ: 0"} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("summary lacks %q:\n%s", want, res.stdout)
		}
	}
	t.Logf("first run summary:\n%s", res.stdout)

	c := e.collection()
	docs := allDocs(t, c)
	if len(docs) != 28986 {
		t.Fatalf("stored %d documents, want 28986", len(docs))
	}
	gotTypes := countBy(docs, "type")
	if !reflect.DeepEqual(gotTypes, wantTypes) {
		t.Errorf("documents per type = %v, want %v", gotTypes, wantTypes)
	}
	for id := range ids {
		if _, ok := docs[id]; !ok {
			t.Errorf("object %s is missing", id)
			break
		}
	}
	checkKnownDocuments(t, docs)
	t.Run("documented queries", func(t *testing.T) { checkQueries(t, e.stack.MongoURI, e.db) })

	// An id served by three collections names all of them.
	shared := docs["marking-definition--fa42a846-8d90-4e51-bc29-71d5b4802168"]
	if got := get(shared, "collections"); !reflect.DeepEqual(got,
		[]any{"enterprise-attack", "ics-attack", "mobile-attack"}) {
		t.Errorf("collections of the shared marking definition = %v", got)
	}

	res = e.run(20*time.Minute, "etlctl", runEnv, "run")
	if res.code != 0 {
		t.Fatalf("second etlctl run exited %d\n%s\n%s", res.code, res.stdout,
			tailText(res.stderr, 40))
	}
	again := allDocs(t, c)
	if len(again) != 28986 {
		t.Fatalf("after a second run %d documents, want 28986", len(again))
	}
	for id, d := range docs {
		if !reflect.DeepEqual(d, again[id]) {
			t.Errorf("document %s changed on a run with nothing new:\nbefore %v\nafter  %v", id,
				d, again[id])
			break
		}
	}
}

// checkKnownDocuments checks a technique, a sub-technique and a relationship field by field
// against what the real bundle says.
func checkKnownDocuments(t *testing.T, docs map[string]bson.M) {
	t.Helper()
	var sub bson.M
	for _, d := range docs {
		if d["attack_id"] == "T1059.001" && d["type"] == "attack-pattern" {
			sub = d
		}
	}
	if sub == nil {
		t.Fatal("T1059.001 not found")
	}
	checks := []struct {
		field string
		want  any
	}{
		{"_id", "attack-pattern--970a3432-3237-47ad-bcca-7d8cbb217736"},
		{"name", "PowerShell"},
		{"is_subtechnique", true},
		{"parent_attack_id", "T1059"},
		{"tactics", []any{"execution"}},
		{"platforms", []any{"Windows"}},
		{"domains", []any{"enterprise-attack"}},
		{"collections", []any{"enterprise-attack"}},
		{"revoked", false},
		{"deprecated", false},
		{"url", "https://attack.mitre.org/techniques/T1059/001"},
	}
	for _, c := range checks {
		if got := get(sub, c.field); !reflect.DeepEqual(got, c.want) {
			t.Errorf("T1059.001 %s = %#v, want %#v", c.field, got, c.want)
		}
	}
	if _, ok := sub["modified"].(bson.DateTime); !ok {
		t.Errorf("T1059.001 modified is %T, want a BSON date", sub["modified"])
	}
	if s, _ := sub["stix_modified"].(string); s == "" {
		t.Errorf("T1059.001 has no stix_modified string")
	}
	if d, _ := sub["description"].(string); !strings.Contains(d, "PowerShell") {
		t.Errorf("T1059.001 description = %.80q", d)
	}

	// A relationship: APT29 (G0016) uses PowerShell (T1059.001).
	var rel bson.M
	for _, d := range docs {
		if d["type"] == "relationship" && d["target_ref"] == sub["_id"] &&
			d["source_ref"] == "intrusion-set--899ce53f-13a0-479b-a0e4-67d46e241542" {
			rel = d
		}
	}
	if rel == nil {
		t.Fatal("relationship APT29 uses T1059.001 not found")
	}
	for _, c := range []struct {
		field string
		want  any
	}{
		{"relationship_type", "uses"},
		{"source_type", "intrusion-set"},
		{"target_type", "attack-pattern"},
		{"source_attack_id", "G0016"},
		{"target_attack_id", "T1059.001"},
		{"source_name", "APT29"},
		{"target_name", "PowerShell"},
	} {
		if got := get(rel, c.field); !reflect.DeepEqual(got, c.want) {
			t.Errorf("relationship %s %s = %#v, want %#v", rel["_id"], c.field, got, c.want)
		}
	}
}

func tailText(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitDocuments polls the collection until it holds n documents.
func waitDocuments(t testing.TB, e *env, n int64, timeout time.Duration) {
	t.Helper()
	c := e.collection()
	waitFor(t, timeout, "documents in MongoDB", func() (bool, string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		got, err := c.CountDocuments(ctx, bson.D{})
		if err != nil {
			return false, err.Error()
		}
		return got == n, "documents: " + strconv.FormatInt(got, 10)
	})
}
