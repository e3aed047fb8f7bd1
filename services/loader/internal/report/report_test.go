package report_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/attack-etl/attack-etl/services/loader/internal/report"
)

func TestRecordCountsEachIDOnce(t *testing.T) {
	s := stacktest.Start(t, false, true)
	client, err := mongo.Connect(options.Client().ApplyURI(s.MongoURI))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Disconnect(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// Two loaders record into one report.
	a := report.New(client.Database("reporttest"), "objects")
	b := report.New(client.Database("reporttest"), "objects")
	if err := a.EnsureIndexes(ctx); err != nil {
		t.Fatal(err)
	}
	batches := []struct {
		name    string
		rec     *report.Recorder
		entries []report.Entry
	}{
		{"first batch", a, []report.Entry{
			{RunID: "r1", Collection: "enterprise-attack", StixID: "x--1", Outcome: "added"},
			{RunID: "r1", Collection: "enterprise-attack", StixID: "x--2", Outcome: "new_minor"},
			{RunID: "r1", Collection: "mobile-attack", StixID: "x--1", Outcome: "merged"},
		}},
		{"redelivery counts nothing again", b, []report.Entry{
			{RunID: "r1", Collection: "enterprise-attack", StixID: "x--1", Outcome: "unchanged"},
		}},
		{"other run, no run id", b, []report.Entry{
			{Collection: "ics-attack", StixID: "x--3", Outcome: "failed", Detail: "bad"},
		}},
	}
	for _, tc := range batches {
		if err := tc.rec.Record(ctx, tc.entries); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
	}
	// A run that changed nothing, recorded at the end of its full sync, and touched again for
	// its next collection.
	for range 2 {
		if err := a.Touch(ctx, "r-nothing-new"); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name, run string
		want      map[string]int64
	}{
		{"run r1", "r1", map[string]int64{"added": 1, "new_minor": 1, "merged": 1}},
		{"entries without run id", report.UnknownRun, map[string]int64{"failed": 1}},
		{"run that changed nothing", "r-nothing-new", map[string]int64{}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			run, err := b.Get(ctx, tc.run)
			if err != nil {
				t.Fatal(err)
			}
			if len(run.Counts) != len(tc.want) {
				t.Errorf("counts %v, want %v", run.Counts, tc.want)
			}
			for o, n := range tc.want {
				if run.Counts[o] != n {
					t.Errorf("%s = %d, want %d (counts %v)", o, run.Counts[o], n, run.Counts)
				}
			}
		})
	}
	ids, err := a.IDs(ctx, "r1", "added")
	if err != nil || !slices.Equal(ids, []string{"x--1"}) {
		t.Errorf("added ids %v (%v), want [x--1]", ids, err)
	}
	if got := a.Local()["r1"]["added"]; got != 1 {
		t.Errorf("local added %d, want 1", got)
	}
}
