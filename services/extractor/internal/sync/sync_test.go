package sync_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/extractor/internal/publish"
	"github.com/attack-etl/attack-etl/services/extractor/internal/sync"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
	"github.com/attack-etl/attack-etl/shared/stix"
)

const icsID = "x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09"

func objects(t *testing.T, path string) []json.RawMessage {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env struct{ Objects []json.RawMessage }
	if err := json.Unmarshal(b, &env); err != nil {
		t.Fatal(err)
	}
	return env.Objects
}

// collection serves objs as pages of size n, each with the given X-TAXII-Date-Added-Last, and
// records the added_after each read started from.
func collection(objs []json.RawMessage, n int, dates []string, seen *[]string) sync.Collection {
	return sync.Collection{
		Key: "ics-attack", ID: icsID, Title: "ICS ATT&CK", Source: "test",
		CheckpointKey: sync.CheckpointKey("http://127.0.0.1/api/v21/", icsID),
		Pages: func(_ context.Context, addedAfter string, fn func(sync.Page) error) error {
			if seen != nil {
				*seen = append(*seen, addedAfter)
			}
			for i, p := 0, 1; i < len(objs); i, p = i+n, p+1 {
				pg := sync.Page{Number: p, Objects: objs[i:min(i+n, len(objs))]}
				if p-1 < len(dates) {
					pg.DateAddedLast = dates[p-1]
				}
				if err := fn(pg); err != nil {
					return err
				}
			}
			return nil
		},
	}
}

func newSyncer(s *stacktest.Server, o sync.Options, cps *sync.Checkpoints,
	warns *[]string) *sync.Syncer {
	if o.RunID == "" {
		o.RunID = "run-" + time.Now().Format("150405.000000000")
	}
	ev := sync.Events{Warn: func(_ sync.Collection, msg string, err error) {
		if warns != nil {
			*warns = append(*warns, msg+": "+err.Error())
		}
	}}
	return sync.New(s.JS, publish.New(s.JS, bus.StreamRaw, 64), cps, o, ev)
}

// lastRaw returns the latest raw message of an object.
func lastRaw(t *testing.T, js jetstream.JetStream, id string) *jetstream.RawStreamMsg {
	t.Helper()
	st, err := js.Stream(context.Background(), bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(context.Background(), bus.RawSubject("ics-attack", id))
	if err != nil {
		t.Fatalf("last message of %s: %v", id, err)
	}
	return m
}

func TestSyncPublishesOnlyNewVersions(t *testing.T) {
	s := stacktest.JetStream(t)
	ctx := context.Background()
	old := objects(t, "../../testdata/ics-18.0-slice.json")
	cur := objects(t, "../../testdata/ics-18.1-slice.json")
	changed := map[string]string{}
	for i := range cur {
		mo, _ := stix.ParseMeta(old[i])
		mc, _ := stix.ParseMeta(cur[i])
		if mo.VersionStamp() != mc.VersionStamp() {
			changed[mc.ID] = mc.VersionStamp()
		}
	}
	if len(changed) != 10 {
		t.Fatalf("test slices should differ in 10 objects, got %d", len(changed))
	}
	steps := []struct {
		name                           string
		objs                           []json.RawMessage
		full                           bool
		wantNew, wantUnchanged, wantOl int
		wantMode                       string
		wantSynced                     bool
	}{
		{name: "first run on an empty stream publishes every object and counts as full",
			objs: old, wantNew: 30, wantMode: sync.ModeFull, wantSynced: true},
		{name: "second run with nothing new publishes nothing", objs: old, wantUnchanged: 30,
			wantMode: sync.ModeFull, wantSynced: true},
		{name: "release 18.1 publishes exactly the objects whose modified is new", objs: cur,
			wantNew: 10, wantUnchanged: 20, wantMode: sync.ModeFull, wantSynced: true},
		{name: "a server going back to 18.0 publishes nothing older", objs: old,
			wantUnchanged: 20, wantOl: 10, wantMode: sync.ModeFull, wantSynced: true},
		{name: "--full re-reads everything, publishes nothing held, and marks the sync",
			objs: cur, full: true, wantUnchanged: 30, wantMode: sync.ModeFull, wantSynced: true},
	}
	for i, step := range steps {
		ok := t.Run(step.name, func(t *testing.T) {
			runID := "run-" + string(rune('a'+i))
			sy := newSyncer(s, sync.Options{RunID: runID, Full: step.full,
				MaxObjectBytes: 900000}, nil, nil)
			st, err := sy.Sync(ctx, collection(step.objs, 7, nil, nil))
			if err != nil {
				t.Fatal(err)
			}
			if st.New != step.wantNew || st.Unchanged != step.wantUnchanged ||
				st.Older != step.wantOl || st.Acked != step.wantNew || st.Served != 30 {
				t.Fatalf("stats %+v, want new %d unchanged %d older %d", st, step.wantNew,
					step.wantUnchanged, step.wantOl)
			}
			if st.Mode != step.wantMode || st.Synced != step.wantSynced {
				t.Fatalf("mode %s synced %v, want %s %v", st.Mode, st.Synced, step.wantMode,
					step.wantSynced)
			}
			if step.wantSynced {
				checkSynced(t, s.JS, runID, 30, step.wantUnchanged+step.wantOl)
			}
		})
		if !ok {
			t.FailNow()
		}
	}
	// The stream now holds 18.1's version of every changed object, byte for byte, with headers.
	for i, raw := range cur {
		m, _ := stix.ParseMeta(raw)
		msg := lastRaw(t, s.JS, m.ID)
		if string(msg.Data) != string(cur[i]) {
			t.Errorf("%s: stored body differs from the bytes the server sent", m.ID)
		}
		h := msg.Header
		if h.Get(bus.HeaderStixModified) != m.VersionStamp() || h.Get(bus.HeaderStixID) != m.ID ||
			h.Get(bus.HeaderStixType) != m.Type || h.Get(bus.HeaderCollection) != "ics-attack" ||
			h.Get(bus.HeaderCollectionID) != icsID || h.Get(bus.HeaderSource) != "test" ||
			h.Get(jetstream.MsgIDHeader) != bus.RawMsgID("ics-attack", m.ID, m.VersionStamp()) {
			t.Errorf("%s: headers %v", m.ID, h)
		}
		wantRun := "run-a"
		if _, ok := changed[m.ID]; ok {
			wantRun = "run-c"
		}
		if h.Get(bus.HeaderRunID) != wantRun {
			t.Errorf("%s: Run-Id %q, want %q", m.ID, h.Get(bus.HeaderRunID), wantRun)
		}
	}
}

// checkSynced checks the synced control event of a run and its id lists: want ids served,
// held of them not published.
func checkSynced(t *testing.T, js jetstream.JetStream, runID string, want, held int) {
	t.Helper()
	ctx := context.Background()
	st, err := js.Stream(ctx, bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(ctx, bus.CtlSubject("ics-attack", "synced"))
	if err != nil {
		t.Fatalf("synced event: %v", err)
	}
	var ev sync.SyncedEvent
	if err := json.Unmarshal(m.Data, &ev); err != nil {
		t.Fatal(err)
	}
	wantEv := sync.SyncedEvent{RunID: runID, Collection: "ics-attack", CollectionID: icsID,
		Full: true, Count: want, IDsObject: "ics-attack." + runID}
	if held > 0 {
		wantEv.HeldObject, wantEv.HeldCount = wantEv.IDsObject+".held", held
	}
	if ev != wantEv {
		t.Fatalf("synced event %+v, want %+v", ev, wantEv)
	}
	obs, err := js.ObjectStore(ctx, sync.SyncsBucket)
	if err != nil {
		t.Fatal(err)
	}
	lists := []struct {
		name string
		want int
	}{{ev.IDsObject, want}, {ev.HeldObject, held}}
	for _, l := range lists {
		if l.name == "" {
			continue
		}
		r, err := obs.Get(ctx, l.name)
		if err != nil {
			t.Fatalf("id list %s: %v", l.name, err)
		}
		n := 0
		for sc := bufio.NewScanner(r); sc.Scan(); n++ {
			if !strings.Contains(sc.Text(), "--") {
				t.Errorf("id list %s line %q is not a STIX id", l.name, sc.Text())
			}
		}
		r.Close()
		if n != l.want {
			t.Errorf("id list %s holds %d ids, want %d", l.name, n, l.want)
		}
	}
}

func TestSyncDeadLetters(t *testing.T) {
	s := stacktest.JetStream(t)
	ctx := context.Background()
	// The three smallest real objects of the slice are published; the limit sits above them.
	all := objects(t, "../../testdata/ics-18.1-slice.json")
	sort.Slice(all, func(i, j int) bool { return len(all[i]) < len(all[j]) })
	good := all[:3]
	limit := len(good[2]) + 100
	big := `{"type":"note","id":"note--00000000-0000-4000-8000-000000000001",` +
		`"modified":"2020-01-01T00:00:00Z","content":"` + strings.Repeat("x", limit) + `"}`
	bad := []struct {
		name, body string
		kind       bus.Kind
	}{
		{"not JSON", `{"type": "indicator", "id": `, bus.KindNotJSON},
		{"no id", `{"type":"indicator","modified":"2020-01-01T00:00:00Z"}`, bus.KindInvalid},
		{"no type", `{"id":"indicator--00000000-0000-4000-8000-000000000001"}`, bus.KindInvalid},
		{"id of another type", `{"type":"malware","id":"tool--00000000-0000-4000-8000-000000000001"}`,
			bus.KindInvalid},
		{"malformed modified", `{"type":"tool","id":"tool--00000000-0000-4000-8000-000000000001",` +
			`"modified":"last Tuesday"}`, bus.KindInvalid},
		{"larger than MAX_OBJECT_BYTES", big, bus.KindTooLarge},
	}
	objs := append([]json.RawMessage{}, good...)
	for _, b := range bad {
		objs = append(objs, json.RawMessage(b.body))
	}
	sy := newSyncer(s, sync.Options{MaxObjectBytes: limit}, nil, nil)
	st, err := sy.Sync(ctx, collection(objs, 100, nil, nil))
	if err != nil {
		t.Fatal(err)
	}
	if st.New != 3 || st.Rejected != len(bad) {
		t.Fatalf("stats %+v, want 3 new and %d rejected", st, len(bad))
	}
	cons, err := s.JS.OrderedConsumer(ctx, bus.StreamDLQ, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(len(bad), jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	i := 0
	for m := range batch.Messages() {
		b := bad[i]
		t.Run(b.name, func(t *testing.T) {
			h := m.Headers()
			if h.Get(bus.HeaderDLQKind) != string(b.kind) || h.Get(bus.HeaderDLQStage) != "extractor" ||
				h.Get(bus.HeaderDLQReason) == "" || h.Get(bus.HeaderCollection) != "ics-attack" {
				t.Errorf("dead letter headers %v", h)
			}
			if b.kind == bus.KindTooLarge {
				if !strings.Contains(h.Get(bus.HeaderDLQReason), fmt.Sprint(len(big))) ||
					h.Get(bus.HeaderStixID) == "" {
					t.Errorf("too-large dead letter lacks id or size: %v", h)
				}
			} else if string(m.Data()) != b.body {
				t.Errorf("dead letter body %q, want the original %q", m.Data(), b.body)
			}
		})
		i++
	}
	if i != len(bad) {
		t.Fatalf("dead letters = %d, want %d", i, len(bad))
	}
}

func TestSyncCheckpoint(t *testing.T) {
	s := stacktest.JetStream(t)
	ctx := context.Background()
	cps, err := sync.OpenCheckpoints(ctx, s.JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	objs := objects(t, "../../testdata/ics-18.1-slice.json")
	key := sync.CheckpointKey("http://127.0.0.1/api/v21/", icsID)
	var fresh []json.RawMessage
	for i := range 20 {
		fresh = append(fresh, json.RawMessage(fmt.Sprintf(`{"type":"indicator",`+
			`"id":"indicator--00000000-0000-4000-8000-%012d","modified":"2021-01-01T00:00:00Z"}`,
			i)))
	}
	steps := []struct {
		name      string
		opts      sync.Options
		dates     []string
		pub       *publish.Publisher
		wantFrom  string
		wantAfter string
		wantWarn  bool
		wantErr   error
		objs      []json.RawMessage
		// wantMode is full when the run sent no added_after.
		wantMode string
	}{
		{name: "untrusted server: no checkpoint is read or written",
			dates:    []string{"2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z"},
			wantFrom: "", wantAfter: "", wantMode: sync.ModeFull},
		{name: "trusted server: the last acked page's Date-Added-Last becomes the checkpoint",
			opts:     sync.Options{TrustAddedAfter: true},
			dates:    []string{"2020-01-01T00:00:00Z", "2020-01-02T00:00:00.5Z"},
			wantFrom: "", wantAfter: "2020-01-02T00:00:00.5Z", wantMode: sync.ModeFull},
		{name: "next run starts from the checkpoint; MITRE's JavaScript date is understood",
			opts: sync.Options{TrustAddedAfter: true},
			dates: []string{"Fri Jan 03 2020 00:00:00 GMT+0000 (Coordinated Universal Time)",
				"Sat Jan 04 2020 00:00:00 GMT+0000 (Coordinated Universal Time)"},
			wantFrom: "2020-01-02T00:00:00.5Z", wantAfter: "2020-01-04T00:00:00Z",
			wantMode: sync.ModeIncremental},
		{name: "unparsable date header leaves the checkpoint alone and warns",
			opts: sync.Options{TrustAddedAfter: true}, dates: []string{"soon", "later"},
			wantFrom: "2020-01-04T00:00:00Z", wantAfter: "2020-01-04T00:00:00Z", wantWarn: true,
			wantMode: sync.ModeIncremental},
		{name: "publishes that JetStream refuses never move the checkpoint",
			opts: sync.Options{TrustAddedAfter: true}, objs: fresh,
			dates:    []string{"2021-01-01T00:00:00Z", "2021-01-02T00:00:00Z"},
			pub:      publish.New(s.JS, "NOT_THE_RAW_STREAM", 8),
			wantFrom: "2020-01-04T00:00:00Z", wantAfter: "2020-01-04T00:00:00Z",
			wantErr: sync.ErrNotAcked, wantMode: sync.ModeIncremental},
		{name: "--full ignores the checkpoint when reading",
			opts:     sync.Options{TrustAddedAfter: true, Full: true},
			dates:    []string{"2020-01-05T00:00:00Z"},
			wantFrom: "", wantAfter: "2020-01-05T00:00:00Z", wantMode: sync.ModeFull},
	}
	for _, step := range steps {
		ok := t.Run(step.name, func(t *testing.T) {
			var warns, from []string
			o := step.opts
			o.RunID = "r"
			o.MaxObjectBytes = 900000
			sy := newSyncer(s, o, cps, &warns)
			if step.pub != nil {
				sy = sync.New(s.JS, step.pub, cps, o, sync.Events{})
			}
			served := objs
			if step.objs != nil {
				served = step.objs
			}
			st, err := sy.Sync(ctx, collection(served, 15, step.dates, &from))
			if !errors.Is(err, step.wantErr) {
				t.Fatalf("error = %v, want %v", err, step.wantErr)
			}
			// Only a whole listing whose every publish was acked ends with a synced event.
			if st.Mode != step.wantMode || st.Synced != (st.Mode == sync.ModeFull && err == nil) {
				t.Errorf("mode %s synced %v, want mode %s", st.Mode, st.Synced, step.wantMode)
			}
			if len(from) != 1 || from[0] != step.wantFrom {
				t.Errorf("read from added_after %q, want %q", from, step.wantFrom)
			}
			got, err := cps.Get(ctx, key)
			if err != nil {
				t.Fatal(err)
			}
			if got != step.wantAfter {
				t.Errorf("checkpoint = %q, want %q", got, step.wantAfter)
			}
			if (len(warns) > 0) != step.wantWarn {
				t.Errorf("warnings %q, want some: %v", warns, step.wantWarn)
			}
		})
		if !ok {
			t.FailNow()
		}
	}
}
