package main

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/extractor/internal/taxii"
	"github.com/attack-etl/attack-etl/services/extractor/internal/taxiitest"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

const icsID = "x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09"

func icsCollection(t *testing.T, path string) *taxiitest.Collection {
	t.Helper()
	c, err := taxiitest.Bundle(path, icsID, "ICS ATT&CK")
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// rawCount returns the number of raw object messages of a collection in the stream.
func rawCount(t *testing.T, js jetstream.JetStream, key string) uint64 {
	t.Helper()
	st, err := js.Stream(context.Background(), bus.StreamRaw)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(bus.RawFilter(key)))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

func args(natsURL string, extra ...string) []string {
	return append([]string{"--nats-url", natsURL, "--log-level", "warn", "--log-format", "json",
		"--taxii-retry-base", "1ms", "--taxii-retries", "2", "--taxii-timeout", "5s"}, extra...)
}

func TestMainSyncsAndUpgrades(t *testing.T) {
	for _, mode := range []struct {
		name  string
		mitre bool
	}{{"standard TAXII 2.1 server with small pages", false},
		{"MITRE-like server: whole collection, created-based dates", true}} {
		t.Run(mode.name, func(t *testing.T) {
			ns := stacktest.JetStream(t)
			srv := taxiitest.New(icsCollection(t, "testdata/ics-18.0-slice.json"))
			defer srv.Close()
			srv.MITRE = mode.mitre
			srv.MaxPage = 8
			ctx := context.Background()
			steps := []struct {
				name    string
				bundle  string
				wantNew uint64
			}{
				{"first run publishes all 30", "", 30},
				{"second run publishes nothing", "", 30},
				{"18.1 publishes the 10 changed objects", "testdata/ics-18.1-slice.json", 40},
			}
			for _, st := range steps {
				if st.bundle != "" {
					srv.Lock()
					srv.Collections = []*taxiitest.Collection{icsCollection(t, st.bundle)}
					srv.Unlock()
				}
				before := srv.Requests()
				if err := Main(ctx, args(ns.URL, "--taxii-api-url", srv.RootURL(),
					"--raw-history", "5")); err != nil {
					t.Fatalf("%s: %v", st.name, err)
				}
				// RAW_HISTORY 5 keeps every version, so the stream counts each publish.
				if got := rawCount(t, ns.JS, "ics-attack"); got != st.wantNew {
					t.Fatalf("%s: raw messages %d, want %d", st.name, got, st.wantNew)
				}
				if mode.mitre {
					// One request lists the collections, one reads the whole collection.
					if got := srv.Requests() - before; got != 2 {
						t.Errorf("%s: %d requests, want 2: %v", st.name, got, srv.Log())
					}
				}
			}
		})
	}
}

func TestMainBundleSource(t *testing.T) {
	ns := stacktest.JetStream(t)
	err := Main(context.Background(), args(ns.URL, "--source-bundle",
		"testdata/ics-18.1-slice.json.gz"))
	if err != nil {
		t.Fatal(err)
	}
	if got := rawCount(t, ns.JS, "ics-attack"); got != 30 {
		t.Fatalf("raw messages %d, want 30", got)
	}
}

func TestMainFailures(t *testing.T) {
	ns := stacktest.JetStream(t)
	down := taxiitest.New()
	downURL := down.RootURL()
	down.Close()
	failing := taxiitest.New()
	defer failing.Close()
	failing.Fault = func(w http.ResponseWriter, _ *http.Request) bool {
		http.Error(w, "upstream broke", http.StatusBadGateway)
		return true
	}
	html := taxiitest.New()
	defer html.Close()
	html.Fault = func(w http.ResponseWriter, _ *http.Request) bool {
		w.Header().Set("Content-Type", "text/html")
		_, _ = w.Write([]byte("<!DOCTYPE html><title>Sign in</title>"))
		return true
	}
	tests := []struct {
		name     string
		url      string
		wantErr  error
		wantText []string
	}{
		{name: "TAXII server unreachable: retried, then an error naming the URL",
			url: downURL, wantText: []string{downURL, "3 attempts"}},
		{name: "TAXII server answers 502 after retries: error names URL and status",
			url: failing.RootURL(), wantErr: taxii.ErrStatus,
			wantText: []string{failing.RootURL() + "collections/", "502", "upstream broke"}},
		{name: "login portal answers HTML with 200", url: html.RootURL(),
			wantErr: taxii.ErrNotTAXII, wantText: []string{"Sign in"}},
		{name: "retired TAXII 2.0 server fails fast with a hint",
			url: "https://cti-taxii.mitre.org/taxii/", wantErr: taxii.ErrRetired,
			wantText: []string{taxii.MITREURL}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := Main(ctx, args(ns.URL, "--taxii-api-url", tc.url))
			if err == nil {
				t.Fatal("want an error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Errorf("error = %v, want %v", err, tc.wantErr)
			}
			for _, s := range tc.wantText {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not mention %q", err, s)
				}
			}
		})
	}
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, d time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestMainWatch(t *testing.T) {
	ns := stacktest.JetStream(t)
	srv := taxiitest.New(icsCollection(t, "testdata/ics-18.0-slice.json"))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Main(ctx, args(ns.URL, "--taxii-api-url", srv.RootURL(), "--watch", "50ms",
			"--raw-history", "5"))
	}()
	// Two polls (collections and objects each) show the watch keeps going.
	waitFor(t, "two polls", 10*time.Second, func() bool { return srv.Requests() >= 4 })
	if got := rawCount(t, ns.JS, "ics-attack"); got != 30 {
		t.Fatalf("raw messages after polls of an unchanged server = %d, want 30", got)
	}
	// A failing poll is logged and the watch goes on.
	srv.Lock()
	srv.Fault = fault(3, http.StatusInternalServerError)
	srv.Unlock()
	n := srv.Requests()
	waitFor(t, "a poll after the failure", 10*time.Second, func() bool {
		return srv.Requests() >= n+5
	})
	srv.Lock()
	srv.Collections = []*taxiitest.Collection{icsCollection(t, "testdata/ics-18.1-slice.json")}
	srv.Unlock()
	waitFor(t, "the 18.1 versions", 10*time.Second, func() bool {
		return rawCount(t, ns.JS, "ics-attack") == 40
	})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("watch ended with %v, want nil on a stop signal", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("watch did not stop")
	}
}

// fault answers the first n requests with status.
func fault(n int, status int) func(http.ResponseWriter, *http.Request) bool {
	return func(w http.ResponseWriter, _ *http.Request) bool {
		if n <= 0 {
			return false
		}
		n--
		http.Error(w, "broken", status)
		return true
	}
}

func TestMainMITRERequestBudget(t *testing.T) {
	// A full MITRE-like sync of the three collections takes one request per collection plus
	// one, when the configured URL is the API root.
	ns := stacktest.JetStream(t)
	objs := icsCollection(t, "testdata/ics-18.1-slice.json").Objects
	srv := taxiitest.New(
		&taxiitest.Collection{ID: "x-mitre-collection--1f5f1533-f617-4ca8-9ab4-6a02367fa019",
			Title: "Enterprise ATT&CK", Objects: objs[:10]},
		&taxiitest.Collection{ID: "x-mitre-collection--dac0d2d7-8653-445c-9bff-82f934c1e858",
			Title: "Mobile ATT&CK", Objects: objs[10:20]},
		&taxiitest.Collection{ID: icsID, Title: "ICS ATT&CK", Objects: objs[20:]})
	defer srv.Close()
	srv.MITRE = true
	srv.Root = "/api/v21/attack-18.1/"
	if err := Main(context.Background(), args(ns.URL, "--taxii-api-url", srv.RootURL(),
		"--full")); err != nil {
		t.Fatal(err)
	}
	if got := srv.Requests(); got != 4 {
		t.Errorf("requests = %d, want 4: %v", got, srv.Log())
	}
	for _, key := range []string{"enterprise-attack", "mobile-attack", "ics-attack"} {
		if got := rawCount(t, ns.JS, key); got != 10 {
			t.Errorf("%s: raw messages %d, want 10", key, got)
		}
	}
}

func TestMainSelectsCollections(t *testing.T) {
	objs := icsCollection(t, "testdata/ics-18.1-slice.json").Objects
	newServer := func() *taxiitest.Server {
		return taxiitest.New(
			&taxiitest.Collection{ID: "x-mitre-collection--dac0d2d7-8653-445c-9bff-82f934c1e858",
				Title: "Mobile ATT&CK", Objects: objs[:10]},
			&taxiitest.Collection{ID: icsID, Title: "ICS ATT&CK", Objects: objs[10:]})
	}
	tests := []struct {
		name       string
		want       string
		wantMobile uint64
		wantICS    uint64
		wantErr    string
	}{
		{name: "empty selection reads every collection", wantMobile: 10, wantICS: 20},
		{name: "by title, any case", want: "ics att&ck", wantICS: 20},
		{name: "by id", want: icsID, wantICS: 20},
		{name: "by collection key, two of them", want: "mobile-attack,ics-attack",
			wantMobile: 10, wantICS: 20},
		{name: "a name the server does not serve fails the run", want: "ICS ATT&CK,PRE-ATT&CK",
			wantErr: "PRE-ATT&CK"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ns := stacktest.JetStream(t)
			srv := newServer()
			defer srv.Close()
			err := Main(context.Background(), args(ns.URL, "--taxii-api-url", srv.RootURL(),
				"--taxii-collections", tc.want))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one naming %q", err, tc.wantErr)
				}
				if got := rawCount(t, ns.JS, "ics-attack"); got != 0 {
					t.Errorf("published %d before failing, want 0", got)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if m, i := rawCount(t, ns.JS, "mobile-attack"), rawCount(t, ns.JS,
				"ics-attack"); m != tc.wantMobile || i != tc.wantICS {
				t.Fatalf("mobile %d ics %d, want %d and %d", m, i, tc.wantMobile, tc.wantICS)
			}
		})
	}
}
