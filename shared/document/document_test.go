package document_test

import (
	"bytes"
	"reflect"
	"testing"

	"github.com/attack-etl/attack-etl/shared/document"
	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestRevOrdersVersions(t *testing.T) {
	rev := func(mod string, schema int, derived, hash string) string {
		t.Helper()
		r, err := document.MakeRev(mod, schema, derived, hash)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	tests := []struct {
		name         string
		older, newer string
	}{
		{"newer STIX version wins over schema", rev("2020-01-01T00:00:00Z", 9, "", "ff"),
			rev("2020-01-01T00:00:00.001Z", 1, "", "00")},
		{"a stamp without fraction compares as a time", rev("2020-01-01T00:00:00Z", 1, "", "aa"),
			rev("2020-01-01T00:00:00.5Z", 1, "", "aa")},
		{"newer schema for the same version", rev("2020-01-01T00:00:00Z", 1, "z", "ff"),
			rev("2020-01-01T00:00:00Z", 2, "", "00")},
		{"more recent derived data", rev("2020-01-01T00:00:00Z", 1, "", "ff"),
			rev("2020-01-01T00:00:00Z", 1, "2021-01-01T00:00:00.000000000Z,", "00")},
		{"hash breaks a tie", rev("2020-01-01T00:00:00Z", 1, "", "00"),
			rev("2020-01-01T00:00:00Z", 1, "", "01")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if !(tt.older < tt.newer) {
				t.Fatalf("rev %q does not sort before %q", tt.older, tt.newer)
			}
		})
	}
	if _, err := document.MakeRev("not a time", 1, "", ""); err == nil {
		t.Fatal("MakeRev accepted a malformed stamp")
	}
}

func TestContentHashIgnoresMergedFields(t *testing.T) {
	a := document.Document{ID: "x--1", Type: "x", Name: "n", Collections: []string{"a"},
		Domains: []string{"enterprise-attack"}, Provenance: document.Provenance{RunID: "r1"}}
	b := a
	b.Collections, b.Domains = []string{"b"}, []string{"ics-attack"}
	b.Provenance.RunID = "r2"
	ha, _ := document.ContentHash(a)
	hb, _ := document.ContentHash(b)
	if ha != hb {
		t.Fatal("collections, domains or provenance changed the content hash")
	}
	b.Name = "other"
	if hc, _ := document.ContentHash(b); hc == ha {
		t.Fatal("a different name kept the content hash")
	}
}

func TestSortedUnion(t *testing.T) {
	got := document.SortedUnion([]string{"mobile-attack", "enterprise-attack"},
		[]string{"enterprise-attack", "ics-attack"}, nil)
	want := []string{"enterprise-attack", "ics-attack", "mobile-attack"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("SortedUnion = %v, want %v", got, want)
	}
	if document.SortedUnion(nil, []string{}) != nil {
		t.Fatal("SortedUnion of nothing is not nil")
	}
}

func TestDetailsMarshalSorted(t *testing.T) {
	d := document.Details{"zeta": 1.0, "alpha": map[string]any{"y": "b", "x": "a"},
		"list": []any{map[string]any{"url": "u", "external_id": "e", "source_name": "s"}}}
	want, err := bson.Marshal(bson.D{
		{Key: "alpha", Value: bson.D{{Key: "x", Value: "a"}, {Key: "y", Value: "b"}}},
		{Key: "list", Value: bson.A{bson.D{{Key: "external_id", Value: "e"},
			{Key: "source_name", Value: "s"}, {Key: "url", Value: "u"}}}},
		{Key: "zeta", Value: 1.0},
	})
	if err != nil {
		t.Fatal(err)
	}
	for range 20 { // map order is random: a lucky order must not pass
		got, err := bson.Marshal(document.Document{ID: "x--1", Details: d})
		if err != nil {
			t.Fatal(err)
		}
		var raw bson.Raw = got
		if !bytes.Equal(raw.Lookup("details").Value, want) {
			t.Fatalf("details not sorted: %s", raw.Lookup("details"))
		}
	}
}
