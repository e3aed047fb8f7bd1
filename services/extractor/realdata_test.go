package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/extractor/internal/taxiitest"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
	"github.com/attack-etl/attack-etl/shared/stix"
)

// attackDir holds the real ATT&CK bundles outside the repository; tests that need them skip
// when it is missing.
const attackDir = "/work/shared/attack"

var attackIDs = map[string][2]string{
	"enterprise": {"x-mitre-collection--1f5f1533-f617-4ca8-9ab4-6a02367fa019", "Enterprise ATT&CK"},
	"mobile":     {"x-mitre-collection--dac0d2d7-8653-445c-9bff-82f934c1e858", "Mobile ATT&CK"},
	"ics":        {icsID, "ICS ATT&CK"},
}

func realBundle(tb testing.TB, domain, release string) *taxiitest.Collection {
	tb.Helper()
	p := filepath.Join(attackDir, domain+"-attack-"+release+".json.gz")
	if _, err := os.Stat(p); err != nil {
		tb.Skipf("real ATT&CK data not available: %v", err)
	}
	c, err := taxiitest.Bundle(p, attackIDs[domain][0], attackIDs[domain][1])
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

// rawTotal counts the raw object messages in the stream (control messages left out).
func rawTotal(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter("stix.ctl.>"))
	if err != nil {
		t.Fatal(err)
	}
	n := info.State.Msgs
	for _, c := range info.State.Subjects {
		n -= c
	}
	return n
}

// newVersions counts the objects of next whose (id, modified) prev does not have.
func newVersions(prev, next *taxiitest.Collection) uint64 {
	held := map[string]string{}
	for _, o := range prev.Objects {
		m, _ := stix.ParseMeta(o)
		held[m.ID] = m.VersionStamp()
	}
	var n uint64
	for _, o := range next.Objects {
		m, _ := stix.ParseMeta(o)
		if old, ok := held[m.ID]; !ok || stix.CompareStamps(m.VersionStamp(), old) > 0 {
			n++
		}
	}
	return n
}

func TestRealReleaseUpgrade(t *testing.T) {
	if testing.Short() {
		t.Skip("real ATT&CK bundles take a few seconds")
	}
	ent18, ent181 := realBundle(t, "enterprise", "18.0"), realBundle(t, "enterprise", "18.1")
	mob := realBundle(t, "mobile", "18.1")
	ics18, ics181 := realBundle(t, "ics", "18.0"), realBundle(t, "ics", "18.1")
	upgrade := newVersions(ent18, ent181) + newVersions(ics18, ics181)
	if upgrade != 404+28 {
		t.Fatalf("18.0 to 18.1 has %d new versions, the data's README says 432", upgrade)
	}
	for _, mode := range []struct {
		name  string
		mitre bool
	}{{"project's TAXII server in standard mode", false}, {"MITRE-like mode", true}} {
		t.Run(mode.name, func(t *testing.T) {
			ns := stacktest.JetStream(t)
			srv := taxiitest.New(realBundle(t, "enterprise", "18.1"), mob, ics181)
			defer srv.Close()
			srv.MITRE = mode.mitre
			steps := []struct {
				name string
				cols []*taxiitest.Collection
				// want is the number of raw messages published by the step.
				want uint64
			}{
				{"first run of 18.1 publishes every object", nil, 29132},
				{"immediate second run publishes none", nil, 0},
				{"18.0 served again publishes only the 2 relationships 18.1 dropped",
					[]*taxiitest.Collection{ent18, mob, ics18},
					newVersions(ent181, ent18) + newVersions(ics181, ics18)},
			}
			if !mode.mitre {
				// A stream that starts at 18.0 and upgrades gets exactly the new versions.
				steps = []struct {
					name string
					cols []*taxiitest.Collection
					want uint64
				}{
					{"first run of 18.0", []*taxiitest.Collection{ent18, mob, ics18}, 29134},
					{"immediate second run publishes none", nil, 0},
					{"upgrade to 18.1 publishes exactly the new versions",
						[]*taxiitest.Collection{ent181, mob, ics181}, upgrade},
				}
			}
			var total uint64
			for _, st := range steps {
				if st.cols != nil {
					srv.Lock()
					srv.Collections = st.cols
					srv.Unlock()
				}
				before := srv.Requests()
				if err := Main(context.Background(), args(ns.URL, "--taxii-api-url",
					srv.RootURL(), "--raw-history", "5", "--log-level", "error")); err != nil {
					t.Fatalf("%s: %v", st.name, err)
				}
				total += st.want
				if got := rawTotal(t, ns.JS); got != total {
					t.Fatalf("%s: published %d, want %d", st.name, got-(total-st.want), st.want)
				}
				if mode.mitre {
					if got := srv.Requests() - before; got != 4 {
						t.Errorf("%s: %d requests, want 4", st.name, got)
					}
				}
			}
		})
	}
}
