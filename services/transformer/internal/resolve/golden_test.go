package resolve_test

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/attack-etl/attack-etl/services/transformer/internal/rawtest"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/document"
)

var update = flag.Bool("update", false, "rewrite the golden documents from the current output")

// goldenCase is one real object of testdata/golden and its collection.
type goldenCase struct {
	name, collection string
	msg              resolve.RawMsg
}

func goldenCases(t *testing.T) []goldenCase {
	t.Helper()
	dir := filepath.Join(rawtest.TestdataDir(), "golden")
	files, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		t.Fatal(err)
	}
	var cases []goldenCase
	for _, f := range files {
		if strings.HasSuffix(f, ".golden.json") {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		coll := "enterprise-attack"
		if bytes.Contains(raw, []byte(`"spec_version"`)) {
			coll = "ics-attack" // the only STIX 2.1 bundle
		}
		name := strings.TrimSuffix(filepath.Base(f), ".json")
		cases = append(cases, goldenCase{name: name, collection: coll, msg: rawtest.Msg(coll, raw)})
	}
	if len(cases) < 17 {
		t.Fatalf("found %d golden objects in %s, want one per mapped type", len(cases), dir)
	}
	return cases
}

// TestGolden transforms a real object of every type and checks each document field against
// testdata/golden/<name>.golden.json. The resolver first sees every golden object, so that the
// relationships show their ends and the revoked technique its replacement.
func TestGolden(t *testing.T) {
	cases := goldenCases(t)
	raw := resolve.NewMemRaw()
	for _, c := range cases {
		raw.Add(c.msg)
	}
	r := &resolve.Resolver{Store: resolve.NewMemStore(), Raw: raw, SchemaVersion: 1, Now: fixedNow}
	ctx := context.Background()
	for _, c := range cases {
		if _, err := r.Process(ctx, c.msg); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			res, err := r.Process(ctx, c.msg)
			if err != nil || res.Dead != nil {
				t.Fatalf("process: %v %+v", err, res.Dead)
			}
			got := asMap(t, res.Outputs[0].Body)
			path := filepath.Join(rawtest.TestdataDir(), "golden", c.name+".golden.json")
			if *update {
				b, err := json.MarshalIndent(got, "", "  ")
				if err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create it): %v", err)
			}
			want := asMap(t, b)
			for _, k := range union(got, want) {
				if !reflect.DeepEqual(got[k], want[k]) {
					t.Errorf("field %s:\n got  %s\n want %s", k, short(got[k]), short(want[k]))
				}
			}
		})
	}
}

// TestGoldenExpectations spells out, beside the golden files, the facts the mapping must get
// right, so that a careless -update cannot hide a regression.
func TestGoldenExpectations(t *testing.T) {
	cases := goldenCases(t)
	raw := resolve.NewMemRaw()
	for _, c := range cases {
		raw.Add(c.msg)
	}
	r := &resolve.Resolver{Store: resolve.NewMemStore(), Raw: raw, SchemaVersion: 1, Now: fixedNow}
	ctx := context.Background()
	docs := map[string]*document.Document{}
	for range 2 {
		for _, c := range cases {
			res, err := r.Process(ctx, c.msg)
			if err != nil || res.Dead != nil {
				t.Fatalf("%s: %v %+v", c.name, err, res.Dead)
			}
			docs[c.name] = res.Outputs[0].Doc
		}
	}
	tests := []struct {
		name string
		ok   func() bool
	}{
		{"sub-technique ids", func() bool {
			d := docs["attack-pattern"]
			return d.AttackID == "T1059.001" && d.IsSubtechnique != nil && *d.IsSubtechnique &&
				d.ParentAttackID == "T1059" &&
				slices.Equal(d.Tactics, []string{"execution"}) &&
				d.URL == "https://attack.mitre.org/techniques/T1059/001"
		}},
		{"technique is no sub-technique", func() bool {
			d := docs["attack-pattern-technique"]
			return d.AttackID == "T1059" && d.IsSubtechnique != nil && !*d.IsSubtechnique &&
				d.ParentAttackID == ""
		}},
		{"revoked technique names its replacement", func() bool {
			d, by := docs["attack-pattern-revoked"], docs["attack-pattern-replacement"]
			return d.Revoked && !d.Active && d.RevokedBy == by.ID
		}},
		{"tactic shortname", func() bool { return docs["x-mitre-tactic"].Shortname == "execution" }},
		{"relationship ends", func() bool {
			d, g, m := docs["relationship"], docs["intrusion-set"], docs["malware"]
			return d.SourceAttackID == "G0016" && d.SourceName == g.Name &&
				d.SourceType == "intrusion-set" && d.TargetAttackID == m.AttackID &&
				d.TargetName == m.Name && d.TargetType == "malware" && d.Active
		}},
		{"campaign dates", func() bool {
			d := docs["campaign"]
			return d.FirstSeen != nil && d.LastSeen != nil && !d.FirstSeen.After(*d.LastSeen)
		}},
		{"marking definition versioned by created", func() bool {
			d := docs["marking-definition"]
			return d.Modified != nil && d.Created != nil && d.Modified.Equal(*d.Created) &&
				d.STIXModified != ""
		}},
		{"malware labels dropped", func() bool {
			_, hasLabels := docs["malware"].Details["labels"]
			return !hasLabels
		}},
		{"STIX 2.0 and 2.1 copies hash alike", func() bool {
			a, _ := document.ContentHash(*docs["malware-2_0"])
			b, _ := document.ContentHash(*docs["malware-2_1"])
			return a == b && a != ""
		}},
		{"data component keeps its log sources", func() bool {
			// 18.1 leaves x_mitre_data_source_ref empty: empty values are not stored.
			d := docs["x-mitre-data-component"]
			l, ok := d.Details["log_sources"].([]any)
			_, ref := d.Details["data_source_ref"]
			return ok && len(l) > 0 && !ref
		}},
		{"nested keys lose the x_mitre_ prefix", func() bool {
			l, _ := docs["x-mitre-analytic"].Details["log_source_references"].([]any)
			first, _ := l[0].(map[string]any)
			_, ok := first["data_component_ref"].(string)
			return ok
		}},
		{"detection strategy lists analytics", func() bool {
			l, ok := docs["x-mitre-detection-strategy"].Details["analytic_refs"].([]any)
			return ok && len(l) > 0
		}},
		{"analytic keeps platforms and log sources", func() bool {
			d := docs["x-mitre-analytic"]
			l, ok := d.Details["log_source_references"].([]any)
			return ok && len(l) > 0 && len(d.Platforms) > 0
		}},
		{"asset sectors and related assets", func() bool {
			d := docs["x-mitre-asset"]
			_, s := d.Details["sectors"].([]any)
			_, r := d.Details["related_assets"].([]any)
			return s && r && strings.HasPrefix(d.AttackID, "A0")
		}},
		{"matrix tactic refs", func() bool {
			l, ok := docs["x-mitre-matrix"].Details["tactic_refs"].([]any)
			return ok && len(l) == 14
		}},
		{"ics mitigation keeps its labels", func() bool {
			l, ok := docs["course-of-action-ics"].Details["labels"].([]any)
			return ok && len(l) > 0
		}},
		{"bookkeeping dropped", func() bool {
			for _, d := range docs {
				for _, k := range []string{"object_marking_refs", "created_by_ref",
					"modified_by_ref", "attack_spec_version", "spec_version", "domains"} {
					if _, ok := d.Details[k]; ok {
						return false
					}
				}
			}
			return true
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !tc.ok() {
				t.Error("expectation not met")
			}
		})
	}
}

func asMap(t *testing.T, b []byte) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func union(a, b map[string]any) []string {
	var keys []string
	for k := range a {
		keys = append(keys, k)
	}
	for k := range b {
		if _, ok := a[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

func short(v any) string {
	b, _ := json.Marshal(v)
	if len(b) > 300 {
		return string(b[:300]) + "..."
	}
	return string(b)
}
