package flatten_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/services/transformer/internal/flatten"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/stix"
)

var opts = flatten.Options{Collection: "enterprise-attack", SchemaVersion: 1, MaxBytes: 2000,
	Now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}

const (
	uuid = "0f4a0c76-ab2d-4cb0-85d3-3f0efb8cba0d"
	okID = "attack-pattern--" + uuid
)

// ap returns a valid attack-pattern with extra properties.
func ap(extra string) string {
	return `{"id":"` + okID + `","type":"attack-pattern","modified":"2020-01-01T00:00:00Z",` +
		extra + `}`
}

func TestRejections(t *testing.T) {
	tests := []struct {
		name    string
		raw     string
		kind    bus.Kind
		errIs   error
		inError string
	}{
		{name: "not JSON", raw: `{"type": "attack-pattern",`, kind: bus.KindNotJSON,
			errIs: stix.ErrNotJSON},
		{name: "a list", raw: `[1, 2]`, kind: bus.KindNotJSON, errIs: stix.ErrNotJSON},
		{name: "null", raw: `null`, kind: bus.KindNotJSON, errIs: stix.ErrNotJSON},
		{name: "two objects", raw: `{"id":"x"} {"id":"y"}`, kind: bus.KindNotJSON,
			errIs: stix.ErrNotJSON},
		{name: "no id", raw: `{"type":"attack-pattern","modified":"2020-01-01T00:00:00Z"}`,
			kind: bus.KindInvalid, errIs: stix.ErrMissingID},
		{name: "no type", raw: `{"id":"` + okID + `","modified":"2020-01-01T00:00:00Z"}`,
			kind: bus.KindInvalid, errIs: stix.ErrMissingType},
		{name: "id prefix not its type",
			raw:  `{"id":"malware--` + uuid + `","type":"tool","modified":"2020-01-01T00:00:00Z"}`,
			kind: bus.KindInvalid, errIs: stix.ErrBadID},
		{name: "id without uuid",
			raw: `{"id":"attack-pattern--1","type":"attack-pattern",` +
				`"modified":"2020-01-01T00:00:00Z"}`,
			kind: bus.KindInvalid, errIs: stix.ErrBadID},
		{name: "malformed modified",
			raw:  `{"id":"` + okID + `","type":"attack-pattern","modified":"yesterday"}`,
			kind: bus.KindInvalid, errIs: stix.ErrBadTimestamp},
		{name: "no timestamp at all", raw: `{"id":"` + okID + `","type":"attack-pattern"}`,
			kind: bus.KindInvalid, errIs: stix.ErrBadTimestamp},
		{name: "malformed first_seen",
			raw: `{"id":"campaign--` + uuid + `","type":"campaign",` +
				`"modified":"2020-01-01T00:00:00Z","first_seen":"2020"}`,
			kind: bus.KindInvalid, errIs: stix.ErrBadTimestamp},
		{name: "id not a string", raw: `{"id":7,"type":"attack-pattern"}`, kind: bus.KindInvalid,
			errIs: flatten.ErrMalformed},
		{name: "platforms not a list",
			raw:  ap(`"x_mitre_platforms":"Windows"`),
			kind: bus.KindInvalid, errIs: flatten.ErrMalformed, inError: "x_mitre_platforms"},
		{name: "revoked not a boolean",
			raw:  ap(`"revoked":"yes"`),
			kind: bus.KindInvalid, errIs: flatten.ErrMalformed},
		{name: "relationship without target",
			raw: `{"id":"relationship--` + uuid + `","type":"relationship",` +
				`"modified":"2020-01-01T00:00:00Z","relationship_type":"uses",` +
				`"source_ref":"` + okID + `"}`,
			kind: bus.KindInvalid, errIs: flatten.ErrMalformed},
		{name: "oversized",
			raw:  ap(`"description":"` + strings.Repeat("x", 2000) + `"`),
			kind: bus.KindTooLarge, errIs: flatten.ErrTooLarge},
		{name: "unsafe key colliding with its safe spelling",
			raw:  ap(`"x_custom":{"a.b":1,"a_b":2}`),
			kind: bus.KindUnsafeKey, errIs: flatten.ErrUnsafeKey, inError: `"a.b"`},
		{name: "dollar key colliding at the top",
			raw:  ap(`"$where":1,"_where":2`),
			kind: bus.KindUnsafeKey, errIs: flatten.ErrUnsafeKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d, err := flatten.Flatten([]byte(tc.raw), opts)
			if err == nil {
				t.Fatalf("accepted: %+v", d)
			}
			if got := flatten.KindOf(err); got != tc.kind {
				t.Errorf("kind %q, want %q (%v)", got, tc.kind, err)
			}
			if !errors.Is(err, tc.errIs) {
				t.Errorf("error %v is not %v", err, tc.errIs)
			}
			if !strings.Contains(err.Error(), tc.inError) {
				t.Errorf("error %q does not name %q", err, tc.inError)
			}
		})
	}
}

func TestSafeKey(t *testing.T) {
	tests := []struct{ name, in, want string }{
		{"plain", "x_mitre_sectors", "x_mitre_sectors"},
		{"dot", "a.b.c", "a_b_c"},
		{"leading dollar", "$where", "_where"},
		{"inner dollar kept", "a$b", "a$b"},
		{"empty", "", "_"},
		{"nul", "a\x00b", "a_b"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := flatten.SafeKey(tc.in); got != tc.want {
				t.Errorf("SafeKey(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}

// TestUnsafeKeysStoredSafely checks the decision: a key MongoDB would misread is renamed
// ('.' and a leading '$' become '_') when the new name is free, at every depth, and nested
// lists are wrapped, since FerretDB stores no list directly inside a list.
func TestUnsafeKeysStoredSafely(t *testing.T) {
	raw := `{"id":"x-acme-widget--0f4a0c76-ab2d-4cb0-85d3-3f0efb8cba0d","type":"x-acme-widget",
	"created":"2020-01-01T00:00:00Z","modified":"2021-02-03T04:05:06.7Z","name":"W",
	"x_acme.score":{"$gt":1,"ok":true},"$ref":"r","matrix":[[1,2],[3]],"x_mitre_sectors":["IT"],
	"empty":"","nothing":null,"object_marking_refs":["m"],"spec_version":"2.1"}`
	d, err := flatten.Flatten([]byte(raw), opts)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"x_acme_score": true, "_ref": true, "matrix": true, "sectors": true}
	for k := range d.Details {
		if !want[k] {
			t.Errorf("unexpected details key %q", k)
		}
		delete(want, k)
	}
	for k := range want {
		t.Errorf("missing details key %q", k)
	}
	score, _ := d.Details["x_acme_score"].(map[string]any)
	if _, ok := score["_gt"]; !ok {
		t.Errorf("nested $gt not renamed: %v", score)
	}
	m, _ := d.Details["matrix"].([]any)
	if len(m) != 2 {
		t.Fatalf("matrix: %v", d.Details["matrix"])
	}
	if inner, ok := m[0].(map[string]any); !ok || len(inner["items"].([]any)) != 2 {
		t.Errorf("nested list not wrapped: %v", m[0])
	}
	if d.Name != "W" || !d.Active || d.STIXModified != "2021-02-03T04:05:06.7Z" ||
		d.Modified == nil || d.Modified.Nanosecond() != 700000000 {
		t.Errorf("generic fields: %+v", d)
	}
}

func TestAttackIDFromMitreSourceOnly(t *testing.T) {
	raw := `{"id":"` + okID + `","type":"attack-pattern","modified":"2020-01-01T00:00:00Z",
	"external_references":[{"source_name":"capec","external_id":"CAPEC-1","url":"u1"},
	{"source_name":"Some citation","description":"d"},
	{"source_name":"mitre-ics-attack","external_id":"T0800",
	 "url":"https://attack.mitre.org/techniques/T0800"}]}`
	d, err := flatten.Flatten([]byte(raw), opts)
	if err != nil {
		t.Fatal(err)
	}
	if d.AttackID != "T0800" || d.URL != "https://attack.mitre.org/techniques/T0800" {
		t.Errorf("attack_id %q url %q", d.AttackID, d.URL)
	}
	ids, _ := d.Details["external_ids"].([]any)
	if len(ids) != 1 {
		t.Errorf("external_ids: %v", d.Details["external_ids"])
	}
}

func TestApplyEndsDerivedOrder(t *testing.T) {
	rel := func() string {
		return `{"id":"relationship--0f4a0c76-ab2d-4cb0-85d3-3f0efb8cba0d","type":"relationship",
		"modified":"2020-01-01T00:00:00Z","relationship_type":"uses",
		"source_ref":"intrusion-set--` + uuid + `","target_ref":"` + okID + `"}`
	}
	src := &flatten.Summary{Type: "intrusion-set", Name: "G",
		Modified: "2021-01-01T00:00:00.000000000Z"}
	tgt := &flatten.Summary{Type: "attack-pattern", Name: "T",
		Modified: "2019-01-01T00:00:00.000000000Z", Deprecated: true}
	newer := *tgt
	newer.Modified = "2022-01-01T00:00:00.000000000Z"
	newer.Deprecated = false
	// Each step knows more, or newer, end information than the one before.
	steps := []struct {
		name     string
		src, tgt *flatten.Summary
		active   bool
	}{
		{"no end known", nil, nil, true},
		{"target only", nil, tgt, false},
		{"source only", src, nil, true},
		{"both", src, tgt, false},
		{"newer target", src, &newer, true},
	}
	prev := ""
	for _, s := range steps {
		t.Run(s.name, func(t *testing.T) {
			d, err := flatten.Flatten([]byte(rel()), opts)
			if err != nil {
				t.Fatal(err)
			}
			derived := flatten.ApplyEnds(d, s.src, s.tgt)
			if err := d.Seal(derived); err != nil {
				t.Fatal(err)
			}
			if d.Active != s.active {
				t.Errorf("active %v, want %v", d.Active, s.active)
			}
			if d.SourceType != "intrusion-set" || d.TargetType != "attack-pattern" {
				t.Errorf("end types %q %q", d.SourceType, d.TargetType)
			}
			if d.Rev <= prev {
				t.Errorf("rev %q not greater than the previous %q", d.Rev, prev)
			}
			prev = d.Rev
		})
	}
}
