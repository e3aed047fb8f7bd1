package sync

import (
	"compress/gzip"
	"encoding/json"
	"os"
	"testing"

	"github.com/attack-etl/attack-etl/shared/stix"
)

// sameAsParseMeta checks that parseMeta agrees with stix.ParseMeta on raw.
func sameAsParseMeta(t *testing.T, raw []byte) {
	t.Helper()
	got, gotErr := parseMeta(raw)
	want, wantErr := stix.ParseMeta(raw)
	if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
		t.Fatalf("%s: error %v, ParseMeta says %v", raw, gotErr, wantErr)
	}
	if wantErr == nil && got != want {
		t.Fatalf("%s: meta %+v, ParseMeta says %+v", raw, got, want)
	}
}

func TestParseMetaAgrees(t *testing.T) {
	tests := []struct{ name, raw string }{
		{"plain object", `{"type":"tool","id":"tool--00000000-0000-4000-8000-000000000001",` +
			`"created":"2020-01-01T00:00:00Z","modified":"2021-01-01T00:00:00.123Z"}`},
		{"spaces and nesting before the id",
			" {\n \"x\": {\"id\": \"no\", \"l\": [1, {\"a\": \"}\"}]},\n" +
				" \"type\": \"tool\", \"id\": \"tool--00000000-0000-4000-8000-000000000001\"}\n"},
		{"escaped quote in a skipped value", `{"d":"say \"hi\" }","type":"tool",` +
			`"id":"tool--00000000-0000-4000-8000-000000000001"}`},
		{"escape in a wanted value falls back", `{"type":"to\u006fl",` +
			`"id":"tool--00000000-0000-4000-8000-000000000001"}`},
		{"key differing only in case falls back", `{"TYPE":"tool",` +
			`"id":"tool--00000000-0000-4000-8000-000000000001"}`},
		{"repeated key: the last wins", `{"type":"malware","type":"tool",` +
			`"id":"tool--00000000-0000-4000-8000-000000000001"}`},
		{"null modified", `{"type":"tool","modified":null,` +
			`"id":"tool--00000000-0000-4000-8000-000000000001"}`},
		{"numbers, booleans, null", `{"n":-1.5e3,"b":true,"z":null,"type":"tool",` +
			`"id":"tool--00000000-0000-4000-8000-000000000001"}`},
		{"number as id", `{"type":"tool","id":5}`},
		{"missing id", `{"type":"tool"}`},
		{"empty object", `{}`},
		{"array", `[1,2]`},
		{"cut off", `{"type": "indicator", "id": `},
		{"bad timestamp", `{"type":"tool","id":"tool--00000000-0000-4000-8000-000000000001",` +
			`"modified":"yesterday"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { sameAsParseMeta(t, []byte(tc.raw)) })
	}
	t.Run("every real object of the test slices", func(t *testing.T) {
		for _, p := range []string{"../../testdata/ics-18.0-slice.json",
			"../../testdata/ics-18.1-slice.json"} {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			var env struct{ Objects []json.RawMessage }
			if err := json.Unmarshal(b, &env); err != nil {
				t.Fatal(err)
			}
			for _, o := range env.Objects {
				sameAsParseMeta(t, o)
			}
		}
	})
	t.Run("every object of the real 18.1 bundles", func(t *testing.T) {
		for _, d := range []string{"enterprise", "mobile", "ics"} {
			f, err := os.Open("/work/shared/attack/" + d + "-attack-18.1.json.gz")
			if err != nil {
				t.Skipf("real ATT&CK data not available: %v", err)
			}
			zr, err := gzip.NewReader(f)
			if err != nil {
				t.Fatal(err)
			}
			var env struct{ Objects []json.RawMessage }
			if err := json.NewDecoder(zr).Decode(&env); err != nil {
				t.Fatal(err)
			}
			f.Close()
			for _, o := range env.Objects {
				sameAsParseMeta(t, o)
			}
		}
	})
}

func BenchmarkParseMeta(b *testing.B) {
	raw, err := os.ReadFile("../../testdata/ics-18.1-slice.json")
	if err != nil {
		b.Fatal(err)
	}
	var env struct{ Objects []json.RawMessage }
	if err := json.Unmarshal(raw, &env); err != nil {
		b.Fatal(err)
	}
	for _, f := range []struct {
		name string
		fn   func([]byte) (stix.Meta, error)
	}{{"scanner", parseMeta}, {"stix.ParseMeta", stix.ParseMeta}} {
		b.Run(f.name, func(b *testing.B) {
			n := 0
			for b.Loop() {
				for _, o := range env.Objects {
					n += len(o)
					if _, err := f.fn(o); err != nil {
						b.Fatal(err)
					}
				}
			}
			b.SetBytes(int64(n / b.N))
		})
	}
}
