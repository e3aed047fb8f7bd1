package resolve_test

import (
	"slices"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/shared/document"
)

// TestRealQueryCounts transforms the three real 18.1 bundles and counts the documents that
// answer the README's analyst questions with plain matches on flat fields, as MongoDB would;
// the counts are those the end-to-end test expects from the loaded database.
func TestRealQueryCounts(t *testing.T) {
	_, got := realBundles(t)
	rel := func(d *document.Document, rt string) bool {
		return d.Type == "relationship" && d.RelationshipType == rt
	}
	software := func(typ string) bool { return typ == "malware" || typ == "tool" }
	since := time.Date(2025, 10, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name  string
		want  int
		match func(d *document.Document, f *final) bool
	}{
		{"groups using T1059", 17, func(d *document.Document, _ *final) bool {
			return rel(d, "uses") && d.TargetAttackID == "T1059" && d.SourceType == "intrusion-set"
		}},
		{"mitigations of T1566", 6, func(d *document.Document, _ *final) bool {
			return rel(d, "mitigates") && d.TargetAttackID == "T1566"
		}},
		{"software of G0016", 49, func(d *document.Document, _ *final) bool {
			return rel(d, "uses") && d.SourceAttackID == "G0016" && software(d.TargetType)
		}},
		{"techniques of G0016", 66, func(d *document.Document, _ *final) bool {
			return rel(d, "uses") && d.SourceAttackID == "G0016" && d.TargetType == "attack-pattern"
		}},
		{"groups using S0002", 51, func(d *document.Document, _ *final) bool {
			return rel(d, "uses") && d.TargetAttackID == "S0002" && d.SourceType == "intrusion-set"
		}},
		{"active persistence techniques on Linux", 50, func(d *document.Document, _ *final) bool {
			return d.Type == "attack-pattern" && slices.Contains(d.Tactics, "persistence") &&
				slices.Contains(d.Platforms, "Linux") && d.Active
		}},
		{"credential-access techniques", 98, func(d *document.Document, _ *final) bool {
			return d.Type == "attack-pattern" && slices.Contains(d.Tactics, "credential-access")
		}},
		{"sub-techniques of T1059", 13, func(d *document.Document, _ *final) bool {
			return d.Type == "attack-pattern" && d.ParentAttackID == "T1059"
		}},
		{"group known as Cozy Bear", 1, func(d *document.Document, _ *final) bool {
			return d.Type == "intrusion-set" && slices.Contains(d.Aliases, "Cozy Bear")
		}},
		{"software of campaign C0024", 11, func(d *document.Document, _ *final) bool {
			return rel(d, "uses") && d.SourceAttackID == "C0024" && software(d.TargetType)
		}},
		{"detection strategies of T1059.001", 1, func(d *document.Document, _ *final) bool {
			return rel(d, "detects") && d.TargetAttackID == "T1059.001"
		}},
		{"assets T0800 targets", 9, func(d *document.Document, _ *final) bool {
			return rel(d, "targets") && d.SourceAttackID == "T0800"
		}},
		{"active mobile techniques", 124, func(d *document.Document, f *final) bool {
			return d.Type == "attack-pattern" && slices.Contains(f.domains, "mobile-attack") &&
				d.Active
		}},
		{"revoked techniques", 185, func(d *document.Document, _ *final) bool {
			return d.Type == "attack-pattern" && d.Revoked
		}},
		{"revoked objects without a known replacement", 1, func(d *document.Document,
			_ *final) bool {
			return d.Revoked && d.RevokedBy == ""
		}},
		{"modified since 2025-10-01", 5774, func(d *document.Document, _ *final) bool {
			return d.Modified != nil && !d.Modified.Before(since)
		}},
		{"inactive relationships", 194, func(d *document.Document, _ *final) bool {
			return d.Type == "relationship" && !d.Active
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			n := 0
			for _, f := range got {
				if tc.match(&f.doc, f) {
					n++
				}
			}
			if n != tc.want {
				t.Errorf("%d documents, want %d", n, tc.want)
			}
		})
	}
}
