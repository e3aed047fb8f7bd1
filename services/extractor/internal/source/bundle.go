// Package source reads STIX bundles, from files or URLs, plain or gzipped, as an alternative to
// a TAXII server for air-gapped networks. A bundle is read as one collection: its
// x-mitre-collection object, when it has one, gives the collection's id and title.
package source

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// ErrNotBundle means the input is not a STIX bundle.
var ErrNotBundle = errors.New("not a STIX bundle")

// Bundle is one STIX bundle read as a collection.
type Bundle struct {
	// Path is the file path or URL (without credentials) the bundle came from.
	Path string
	// CollectionID and Title name the collection: those of the bundle's x-mitre-collection
	// object, or the bundle's id and the file name.
	CollectionID, Title string
	// Objects are the objects exactly as the bundle holds them.
	Objects []json.RawMessage
}

// Options configures reading.
type Options struct {
	// HTTPClient fetches bundle URLs; nil means a client with a 5-minute time-out that honours
	// HTTPS_PROXY.
	HTTPClient *http.Client
}

// Read reads a bundle from a file path or an http(s) URL. A gzipped bundle is recognised by
// its content, whatever its name.
func Read(ctx context.Context, where string, o Options) (*Bundle, error) {
	rc, shown, err := open(ctx, where, o)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	br := bufio.NewReaderSize(rc, 1<<16)
	var r io.Reader = br
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("bundle %s: gunzip: %w", shown, err)
		}
		defer gz.Close()
		r = gz
	}
	var env struct {
		Type    string            `json:"type"`
		ID      string            `json:"id"`
		Objects []json.RawMessage `json:"objects"`
	}
	if err := json.NewDecoder(r).Decode(&env); err != nil {
		return nil, fmt.Errorf("bundle %s: %w: %w", shown, ErrNotBundle, err)
	}
	if env.Type != "bundle" {
		return nil, fmt.Errorf("bundle %s: %w: type is %q", shown, ErrNotBundle, env.Type)
	}
	b := &Bundle{Path: shown, Objects: env.Objects, CollectionID: env.ID,
		Title: strings.TrimSuffix(strings.TrimSuffix(filepath.Base(shown), ".gz"), ".json")}
	for _, raw := range env.Objects {
		if !bytes.Contains(raw, []byte(`"x-mitre-collection"`)) {
			continue
		}
		var c struct{ Type, ID, Name string }
		if json.Unmarshal(raw, &c) == nil && c.Type == "x-mitre-collection" && c.ID != "" {
			b.CollectionID, b.Title = c.ID, c.Name
			return b, nil
		}
	}
	if d, ok := domainOf(env.ID, env.Objects); ok {
		b.CollectionID, b.Title = d.id, d.title
	}
	return b, nil
}

// domain is an ATT&CK domain's collection as MITRE's TAXII 2.1 server serves it.
type domain struct{ name, id, title string }

// domains are the ATT&CK domains, so that a bundle without an x-mitre-collection object (the
// STIX 2.0 bundles of enterprise and mobile) is read as the same collection TAXII serves.
var domains = []domain{
	{"enterprise-attack", "x-mitre-collection--1f5f1533-f617-4ca8-9ab4-6a02367fa019",
		"Enterprise ATT&CK"},
	{"mobile-attack", "x-mitre-collection--dac0d2d7-8653-445c-9bff-82f934c1e858", "Mobile ATT&CK"},
	{"ics-attack", "x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09", "ICS ATT&CK"},
}

// domainOf finds the ATT&CK domain of a bundle from its id (such as bundle--enterprise-attack)
// or from the x_mitre_domains of its first objects that name exactly one domain.
func domainOf(bundleID string, objs []json.RawMessage) (domain, bool) {
	for _, d := range domains {
		if strings.HasSuffix(bundleID, "--"+d.name) {
			return d, true
		}
	}
	for i, raw := range objs {
		if i >= 200 {
			break
		}
		var o struct {
			Domains []string `json:"x_mitre_domains"`
		}
		if json.Unmarshal(raw, &o) != nil || len(o.Domains) != 1 {
			continue
		}
		for _, d := range domains {
			if o.Domains[0] == d.name {
				return d, true
			}
		}
	}
	return domain{}, false
}

func open(ctx context.Context, where string, o Options) (io.ReadCloser, string, error) {
	if !strings.HasPrefix(where, "http://") && !strings.HasPrefix(where, "https://") {
		f, err := os.Open(where)
		if err != nil {
			return nil, where, fmt.Errorf("open bundle: %w", err)
		}
		return f, where, nil
	}
	shown := stripUser(where)
	hc := o.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: 5 * time.Minute}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, where, nil)
	if err != nil {
		return nil, shown, fmt.Errorf("bundle %s: %w", shown, err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, shown, fmt.Errorf("fetch bundle %s: %w", shown, err)
	}
	if resp.StatusCode != http.StatusOK {
		head, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		resp.Body.Close()
		return nil, shown, fmt.Errorf("fetch bundle %s: %s: body starts %q", shown, resp.Status,
			head)
	}
	return resp.Body, shown, nil
}

func stripUser(u string) string {
	scheme, rest, ok := strings.Cut(u, "://")
	if !ok {
		return u
	}
	host, path, _ := strings.Cut(rest, "/")
	if i := strings.LastIndex(host, "@"); i >= 0 {
		host = host[i+1:]
	}
	if path == "" {
		return scheme + "://" + host
	}
	return scheme + "://" + host + "/" + path
}
