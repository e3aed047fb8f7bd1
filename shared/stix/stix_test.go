package stix_test

import (
	"errors"
	"testing"

	"github.com/attack-etl/attack-etl/shared/stix"
)

func TestParseMeta(t *testing.T) {
	tests := []struct {
		name string
		raw  string
		want error
	}{
		{"real 2.0 technique",
			`{"type":"attack-pattern",` +
				`"id":"attack-pattern--970a3432-3237-47ad-bcca-7d8cbb217736",` +
				`"created":"2020-01-10T16:03:50.785Z","modified":"2025-10-24T17:48:20.123Z"}`, nil},
		{"marking without modified",
			`{"type":"marking-definition",` +
				`"id":"marking-definition--fa42a846-8d90-4e51-bc29-71d5b4802168",` +
				`"created":"2017-06-01T00:00:00Z"}`, nil},
		{"not json", `nope`, stix.ErrNotJSON},
		{"array", `[1,2]`, stix.ErrNotJSON},
		{"no type", `{"id":"tool--970a3432-3237-47ad-bcca-7d8cbb217736"}`, stix.ErrMissingType},
		{"no id", `{"type":"tool"}`, stix.ErrMissingID},
		{"prefix is another type",
			`{"type":"malware","id":"tool--970a3432-3237-47ad-bcca-7d8cbb217736"}`, stix.ErrBadID},
		{"no uuid", `{"type":"tool","id":"tool--x"}`, stix.ErrBadID},
		{"bad created",
			`{"type":"tool","id":"tool--970a3432-3237-47ad-bcca-7d8cbb217736",` +
				`"created":"yesterday"}`, stix.ErrBadTimestamp},
		{"bad modified",
			`{"type":"tool","id":"tool--970a3432-3237-47ad-bcca-7d8cbb217736",` +
				`"modified":"2020-13-01T00:00:00Z"}`, stix.ErrBadTimestamp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := stix.ParseMeta([]byte(tt.raw))
			if !errors.Is(err, tt.want) || (tt.want == nil) != (err == nil) {
				t.Fatalf("ParseMeta() error = %v, want %v", err, tt.want)
			}
		})
	}
}

func TestVersionStamp(t *testing.T) {
	m := stix.Meta{Created: "2017-06-01T00:00:00Z"}
	if got := m.VersionStamp(); got != "2017-06-01T00:00:00Z" {
		t.Fatalf("VersionStamp() without modified = %q, want created", got)
	}
	m.Modified = "2020-01-01T00:00:00Z"
	if got := m.VersionStamp(); got != m.Modified {
		t.Fatalf("VersionStamp() = %q, want modified", got)
	}
}

func TestCompareStamps(t *testing.T) {
	tests := []struct {
		a, b string
		want int
	}{
		{"2020-01-01T00:00:00.1Z", "2020-01-01T00:00:00.099Z", 1},
		{"2020-01-01T00:00:00Z", "2020-01-01T00:00:00.000Z", 0},
		{"2019-12-31T23:59:59.999999Z", "2020-01-01T00:00:00Z", -1},
		{"", "2020-01-01T00:00:00Z", -1},
		{"garbage", "2020-01-01T00:00:00Z", -1},
		{"2020-01-01T00:00:00+01:00", "2019-12-31T23:30:00Z", -1},
		{"2020-01-01T00:00:00Z", "2020-01-01T00:00:00.5Z", -1},
	}
	for _, tt := range tests {
		t.Run(tt.a+" vs "+tt.b, func(t *testing.T) {
			if got := stix.CompareStamps(tt.a, tt.b); got != tt.want {
				t.Fatalf("CompareStamps = %d, want %d", got, tt.want)
			}
		})
	}
}
