package bus_test

import (
	"testing"

	"github.com/attack-etl/attack-etl/shared/bus"
)

func TestSubjects(t *testing.T) {
	tests := []struct {
		name, got, want string
	}{
		{"raw", bus.RawSubject("enterprise-attack", "attack-pattern--0a1b"),
			"stix.raw.enterprise-attack.attack-pattern--0a1b"},
		{"raw with unsafe collection", bus.RawSubject("my coll.v2", "tool--1"),
			"stix.raw.my_coll_v2.tool--1"},
		{"flat", bus.FlatSubject("ics-attack", "x-mitre-asset"), "stix.flat.ics-attack.x-mitre-asset"},
		{"dlq", bus.DLQSubject("transformer"), "stix.dlq.transformer"},
		{"raw filter", bus.RawFilter(""), "stix.raw.>"},
		{"raw filter of one collection", bus.RawFilter("mobile-attack"), "stix.raw.mobile-attack.*"},
		{"empty token", bus.Token(""), "_"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %q, want %q", tt.got, tt.want)
			}
		})
	}
}

func TestCollectionKey(t *testing.T) {
	tests := []struct {
		id, title, want string
	}{
		{"x-mitre-collection--1f5f1533-f617-4ca8-9ab4-6a02367fa019",
			"Enterprise ATT&CK", "enterprise-attack"},
		{"x-mitre-collection--dac0d2d7-8653-445c-9bff-82f934c1e858", "Mobile ATT&CK", "mobile-attack"},
		{"x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09", "ICS ATT&CK", "ics-attack"},
		{"91a7b528-80eb-42ed-a74d-c6fbd5a26116",
			"High Value Indicators", "91a7b528-80eb-42ed-a74d-c6fbd5a26116"},
	}
	for _, tt := range tests {
		t.Run(tt.title, func(t *testing.T) {
			if got := bus.CollectionKey(tt.id, tt.title); got != tt.want {
				t.Fatalf("CollectionKey = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestMsgIDsKeepCollectionsApart(t *testing.T) {
	a := bus.RawMsgID("enterprise-attack", "identity--1", "2017-06-01T00:00:00Z")
	b := bus.RawMsgID("ics-attack", "identity--1", "2017-06-01T00:00:00Z")
	if a == b {
		t.Fatal("copies of one version from two collections share a message id: one is dropped")
	}
	if a == bus.RawMsgID("enterprise-attack", "identity--1", "2018-06-01T00:00:00Z") {
		t.Fatal("a new version shares the old version's message id")
	}
}

func TestStreamConfigs(t *testing.T) {
	cfgs := bus.StreamConfigs(bus.StreamOptions{Replicas: 3, RawHistory: 2})
	if len(cfgs) != 3 {
		t.Fatalf("%d streams, want 3", len(cfgs))
	}
	for _, c := range cfgs {
		if c.Replicas != 3 {
			t.Errorf("%s replicas = %d, want 3", c.Name, c.Replicas)
		}
	}
	if cfgs[0].MaxMsgsPerSubject != 2 {
		t.Errorf("raw history = %d, want 2", cfgs[0].MaxMsgsPerSubject)
	}
}
