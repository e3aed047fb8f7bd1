// Package rawtest loads real STIX objects as raw messages, the way the extractor publishes
// them, for the transformer's tests and benchmarks.
package rawtest

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/attack-etl/attack-etl/services/transformer/internal/resolve"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/stix"
)

// AttackDir is where the real ATT&CK bundles are kept on the development machine.
const AttackDir = "/work/shared/attack"

// Bundles are the three 18.1 bundles and their collection keys.
var Bundles = []struct{ Collection, File string }{
	{"enterprise-attack", "enterprise-attack-18.1.json.gz"},
	{"mobile-attack", "mobile-attack-18.1.json.gz"},
	{"ics-attack", "ics-attack-18.1.json.gz"},
}

// TestdataDir returns the transformer's testdata folder.
func TestdataDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "testdata")
}

// Objects reads the objects of a STIX bundle, or of a JSON list of objects, plain or gzipped,
// each as its raw bytes.
func Objects(path string) ([]json.RawMessage, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if strings.HasSuffix(path, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, fmt.Errorf("gunzip %s: %w", path, err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			return nil, fmt.Errorf("gunzip %s: %w", path, err)
		}
	}
	var objs []json.RawMessage
	if bytes.HasPrefix(bytes.TrimSpace(b), []byte("[")) {
		err = json.Unmarshal(b, &objs)
	} else {
		var bundle struct {
			Objects []json.RawMessage `json:"objects"`
		}
		err = json.Unmarshal(b, &bundle)
		objs = bundle.Objects
	}
	if err != nil {
		return nil, fmt.Errorf("decode %s: %w", path, err)
	}
	return objs, nil
}

// Msg wraps one raw object as the extractor would publish it from a collection.
func Msg(collection string, raw []byte) resolve.RawMsg {
	meta, _ := stix.ParseMeta(raw)
	h := nats.Header{}
	h.Set(bus.HeaderStixID, meta.ID)
	h.Set(bus.HeaderStixType, meta.Type)
	h.Set(bus.HeaderStixModified, meta.VersionStamp())
	h.Set(bus.HeaderCollection, collection)
	h.Set(bus.HeaderSource, "file://"+collection)
	h.Set(bus.HeaderRunID, "test-run")
	h.Set(bus.HeaderSyncMode, "full")
	return resolve.RawMsg{Subject: bus.RawSubject(collection, meta.ID), Header: h, Data: raw}
}

// Msgs reads a file's objects as raw messages of a collection.
func Msgs(path, collection string) ([]resolve.RawMsg, error) {
	objs, err := Objects(path)
	if err != nil {
		return nil, err
	}
	out := make([]resolve.RawMsg, len(objs))
	for i, o := range objs {
		out[i] = Msg(collection, o)
	}
	return out, nil
}

// Slice returns the in-repo real slice of the three collections, in bundle order.
func Slice() ([]resolve.RawMsg, error) {
	var out []resolve.RawMsg
	for _, b := range Bundles {
		msgs, err := Msgs(filepath.Join(TestdataDir(), "slice", b.Collection+".json"), b.Collection)
		if err != nil {
			return nil, err
		}
		out = append(out, msgs...)
	}
	return out, nil
}

// Real returns the three real 18.1 bundles as raw messages, or ok=false when they are absent.
func Real() (msgs []resolve.RawMsg, ok bool, err error) {
	for _, b := range Bundles {
		path := filepath.Join(AttackDir, b.File)
		if _, err := os.Stat(path); err != nil {
			return nil, false, nil
		}
		m, err := Msgs(path, b.Collection)
		if err != nil {
			return nil, true, err
		}
		msgs = append(msgs, m...)
	}
	return msgs, true, nil
}
