package e2e

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/shared/bus"
)

// versions reads the (id, modified) of every object of each bundle, keyed by collection file.
func versions(t testing.TB, files ...string) map[string]map[string]string {
	t.Helper()
	out := map[string]map[string]string{}
	for _, f := range files {
		fh, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		zr, err := gzip.NewReader(fh)
		if err != nil {
			t.Fatal(err)
		}
		var b struct {
			Objects []struct {
				ID, Created, Modified string
			} `json:"objects"`
		}
		if err := json.NewDecoder(zr).Decode(&b); err != nil {
			t.Fatal(err)
		}
		fh.Close()
		m := map[string]string{}
		for _, o := range b.Objects {
			v := o.Modified
			if v == "" {
				v = o.Created
			}
			m[o.ID] = v
		}
		out[f] = m
	}
	return out
}

// rawPublished counts the raw objects published after a stream sequence.
func (e *env) rawPublished(after uint64) int {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	js := e.js()
	s, err := js.Stream(ctx, bus.StreamRaw)
	if err != nil {
		e.t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	if info.State.LastSeq <= after {
		return 0
	}
	c, err := s.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.RawFilter("")},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    after + 1, HeadersOnly: true})
	if err != nil {
		e.t.Fatal(err)
	}
	n := 0
	for {
		m, err := c.Next(jetstream.FetchMaxWait(2 * time.Second))
		if err != nil {
			return n
		}
		n++
		md, _ := m.Metadata()
		if md != nil && md.NumPending == 0 {
			return n
		}
	}
}

func (e *env) rawLastSeq() uint64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := e.js().Stream(ctx, bus.StreamRaw)
	if err != nil {
		return 0
	}
	info, err := s.Info(ctx)
	if err != nil {
		e.t.Fatal(err)
	}
	return info.State.LastSeq
}

// mirrorRequests reads how many requests the project's TAXII server has answered.
func (e *env) mirrorRequests() int {
	e.t.Helper()
	resp, err := http.Get("http://" + e.mirror.Addr + "/mirror/stats")
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	var st struct {
		Requests int `json:"requests"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		e.t.Fatal(err)
	}
	return st.Requests
}

// TestSyncPublishesOnlyNewVersions runs the extractor on the real bundles through the project's
// TAXII server in its standard mode and in the mode that reproduces MITRE's server (filters and
// date headers from created, whole collections without limit): the first run publishes every
// object, a second run publishes none, and after the enterprise and ICS bundles move from 18.0 to
// 18.1 a run publishes exactly the objects whose (id, modified) is new.
func TestSyncPublishesOnlyNewVersions(t *testing.T) {
	dir := attackDir(t)
	old := []string{filepath.Join(dir, "enterprise-attack-18.0.json.gz"),
		filepath.Join(dir, "mobile-attack-18.1.json.gz"), filepath.Join(dir, "ics-attack-18.0.json.gz")}
	cur := bundles(t, "18.1")
	vOld, vNew := versions(t, old...), versions(t, cur...)
	total, changed := 0, 0
	for i := range cur {
		total += len(vOld[old[i]])
		for id, m := range vNew[cur[i]] {
			if vOld[old[i]][id] != m {
				changed++
			}
		}
	}
	if changed != 404+28 {
		t.Fatalf("the bundles differ in %d versions, want 432 (README of the data)", changed)
	}
	for _, mode := range []string{"standard", "mitre"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnv(t)
			e.startMirror(mode, old...)
			res := e.run(10*time.Minute, "extractor", nil)
			if res.code != 0 {
				t.Fatalf("first run exited %d: %s", res.code, tailText(res.stderr, 20))
			}
			if got := e.rawPublished(0); got != total {
				t.Fatalf("first run published %d objects, want %d", got, total)
			}
			if mode == "mitre" {
				// An API root URL skips discovery: the collections list, then each collection
				// whole in one request.
				if got := e.mirrorRequests(); got > 4 {
					t.Errorf("a full MITRE-like sync of three collections made %d requests, "+
						"want at most 4", got)
				}
			}
			seq := e.rawLastSeq()
			res = e.run(10*time.Minute, "extractor", nil)
			if res.code != 0 {
				t.Fatalf("second run exited %d: %s", res.code, tailText(res.stderr, 20))
			}
			if got := e.rawPublished(seq); got != 0 {
				t.Fatalf("a second run with nothing new published %d objects", got)
			}
			e.mirror.Stop(5 * time.Second)
			e.startMirror(mode, cur...)
			seq = e.rawLastSeq()
			res = e.run(10*time.Minute, "extractor", nil)
			if res.code != 0 {
				t.Fatalf("upgrade run exited %d: %s", res.code, tailText(res.stderr, 20))
			}
			if got := e.rawPublished(seq); got != changed {
				t.Fatalf("after the upgrade to 18.1 a run published %d objects, want %d", got,
					changed)
			}
			t.Logf("%s mode: %d, then 0, then %d objects published", mode, total, changed)
		})
	}
}

var _ = fmt.Sprint
