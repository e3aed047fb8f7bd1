package resolve_test

import (
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/attack-etl/attack-etl/services/transformer/internal/rawtest"
	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/bus"
)

// newerVersion returns a copy of a raw object with another name, a later modified and the
// given revoked flag, as MITRE would publish an update.
func newerVersion(t *testing.T, m resolve.RawMsg, name string, revoked bool) resolve.RawMsg {
	t.Helper()
	var o map[string]any
	if err := json.Unmarshal(m.Data, &o); err != nil {
		t.Fatal(err)
	}
	o["name"], o["modified"], o["revoked"] = name, "2030-01-01T00:00:00.000Z", revoked
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	return rawtest.Msg(m.Header.Get(bus.HeaderCollection), b)
}

// TestEndUpdatedLater checks that relationships show an end's later version (renamed, then
// revoked), and turn inactive, in both arrival orders of the update and the relationships.
func TestEndUpdatedLater(t *testing.T) {
	msgs, err := rawtest.Slice()
	if err != nil {
		t.Fatal(err)
	}
	// APT29 (G0016) is the source of several relationships of the slice.
	const g0016 = "intrusion-set--899ce53f-13a0-479b-a0e4-67d46e241542"
	var group resolve.RawMsg
	for _, m := range msgs {
		if m.Header.Get(bus.HeaderStixID) == g0016 {
			group = m
		}
	}
	if group.Data == nil {
		t.Fatal("G0016 not in the slice")
	}
	update := newerVersion(t, group, "APT29 renamed", true)
	tests := []struct {
		name string
		msgs []resolve.RawMsg
	}{
		{"update after everything", append(append([]resolve.RawMsg{}, msgs...), update)},
		{"update first, old version last", append(append([]resolve.RawMsg{update}, msgs...),
			group)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			// The raw stream keeps the latest version of each subject.
			got, _ := feed(t, tc.msgs)
			if g := got[g0016].doc; g.Name != "APT29 renamed" || !g.Revoked || g.Active {
				t.Errorf("G0016 kept %q revoked %v active %v", g.Name, g.Revoked, g.Active)
			}
			n := 0
			for _, f := range got {
				d := f.doc
				if d.Type != "relationship" || d.SourceRef != g0016 {
					continue
				}
				n++
				if d.SourceName != "APT29 renamed" || d.Active {
					t.Errorf("%s shows source %q, active %v", d.ID, d.SourceName, d.Active)
				}
			}
			if n == 0 {
				t.Fatal("no relationship of G0016 in the slice")
			}
		})
	}
}

// TestRelease18_0Then18_1 feeds the real enterprise 18.0 bundle, then 18.1: every document of
// an 18.1 object must be what 18.1 alone gives, ends included.
func TestRelease18_0Then18_1(t *testing.T) {
	if testing.Short() {
		t.Skip("short mode")
	}
	old, err := rawtest.Msgs(filepath.Join(rawtest.AttackDir, "enterprise-attack-18.0.json.gz"),
		"enterprise-attack")
	if err != nil {
		t.Skipf("18.0 bundle absent: %v", err)
	}
	cur, err := rawtest.Msgs(filepath.Join(rawtest.AttackDir, "enterprise-attack-18.1.json.gz"),
		"enterprise-attack")
	if err != nil {
		t.Skipf("18.1 bundle absent: %v", err)
	}
	alone, _ := feed(t, cur)
	both, _ := feed(t, append(append([]resolve.RawMsg{}, old...), cur...))
	diffs := 0
	for id, f := range alone {
		g, ok := both[id]
		if !ok || canonical(t, f) != canonical(t, g) {
			diffs++
			if diffs <= 3 {
				t.Errorf("%s differs after 18.0 then 18.1", id)
			}
		}
	}
	if diffs > 0 {
		t.Errorf("%d of %d documents differ", diffs, len(alone))
	}
	if extra := len(both) - len(alone); extra != 2 {
		t.Errorf("%d ids only in 18.0, want the 2 relationships 18.1 dropped", extra)
	}
}
