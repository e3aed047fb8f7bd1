package store

import (
	"testing"

	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/attack-etl/attack-etl/shared/document"
)

func TestBulkModels(t *testing.T) {
	cur := &stored{ID: "x--1", Rev: "a", Collections: []string{"enterprise-attack"}}
	tests := []struct {
		name string
		doc  document.Document
		cur  *stored
		want string
	}{
		{"gone id is inserted", document.Document{ID: "x--1", Rev: "b"}, nil, "insert"},
		{"newer rev is a guarded replace", document.Document{ID: "x--1", Rev: "b",
			Collections: []string{"mobile-attack"}}, cur, "replace"},
		{"same rev, new collection is a guarded update", document.Document{ID: "x--1", Rev: "a",
			Collections: []string{"mobile-attack"}}, cur, "update"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := decide(&group{doc: tc.doc}, tc.cur)
			m := bulkModels([]plan{p})
			if len(m) != 1 {
				t.Fatalf("got %d models, want 1", len(m))
			}
			var got string
			switch mm := m[0].(type) {
			case *mongo.InsertOneModel:
				got = "insert"
			case *mongo.ReplaceOneModel:
				got = "replace"
				r := mm.Replacement.(*document.Document)
				if len(r.Collections) != 2 {
					t.Errorf("replacement collections = %v, want the union", r.Collections)
				}
				if len(mm.Filter.(interface{ String() string }).String()) == 0 {
					t.Errorf("replace without filter")
				}
			case *mongo.UpdateOneModel:
				got = "update"
			}
			if got != tc.want {
				t.Errorf("model = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestMajorOf(t *testing.T) {
	tests := []struct {
		name string
		in   string
		want int
	}{
		{"minor", "1.2", 1}, {"major only", "3", 3}, {"empty", "", -1}, {"junk", "x.1", -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := majorOf(tc.in); got != tc.want {
				t.Errorf("majorOf(%q) = %d, want %d", tc.in, got, tc.want)
			}
		})
	}
}
