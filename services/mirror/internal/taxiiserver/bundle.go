package taxiiserver

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha1"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/attack-etl/attack-etl/shared/stix"
)

// Object is one STIX object of a collection, kept as the exact bytes of the bundle file.
type Object struct {
	// ID, Type and SpecVersion are the object's own fields; SpecVersion is empty for STIX 2.0.
	ID, Type, SpecVersion string
	// Created and Modified are the object's timestamps as written in the file.
	Created, Modified string
	// CreatedAt is Created parsed; zero when missing or malformed.
	CreatedAt time.Time
	// VersionAt is the object's version (modified, or created when modified is missing).
	VersionAt time.Time
	// DateAdded is when the server added the object to its collection (standard mode).
	DateAdded time.Time
	// Raw holds the object's bytes exactly as in the bundle file.
	Raw json.RawMessage
	// Valid is false for an object the server keeps but cannot index (no id, bad type).
	Valid bool
	// first and last mark the oldest and newest version of the object's id in its collection.
	first, last bool
}

// Version returns the object's version stamp as written: modified, or created without it.
func (o *Object) Version() string {
	if o.Modified != "" {
		return o.Modified
	}
	return o.Created
}

// MediaType returns the STIX media type of the object, by its spec_version.
func (o *Object) MediaType() string {
	if o.SpecVersion == "" {
		return "application/stix+json;version=2.0"
	}
	return "application/stix+json;version=" + o.SpecVersion
}

// Collection is one bundle file served as a TAXII collection.
type Collection struct {
	// ID is the TAXII collection id; Title and Description describe it.
	ID, Title, Description string
	// Key is the bundle's name without release, such as enterprise-attack.
	Key string
	// Release is the ATT&CK release of the bundle, such as 18.1; empty when unknown.
	Release string
	// File is the path the bundle was read from.
	File string
	// Objects holds every object in the order the mode serves them (see Mode).
	Objects []Object
	// Invalid counts objects without a usable id or type; they are served but not indexed.
	Invalid int
	// byID maps an object id to the positions of its versions in Objects.
	byID map[string][]int
}

// domain describes an ATT&CK domain whose bundle carries no x-mitre-collection object.
type domain struct{ id, title string }

// attackDomains holds the collection ids and titles MITRE's TAXII 2.1 server uses.
var attackDomains = map[string]domain{
	"enterprise-attack": {"x-mitre-collection--1f5f1533-f617-4ca8-9ab4-6a02367fa019",
		"Enterprise ATT&CK"},
	"mobile-attack": {"x-mitre-collection--dac0d2d7-8653-445c-9bff-82f934c1e858", "Mobile ATT&CK"},
	"ics-attack":    {"x-mitre-collection--90c00720-636b-4485-b342-8751d232bf09", "ICS ATT&CK"},
}

// releaseName splits a bundle file name such as enterprise-attack-18.1.json.gz.
var releaseName = regexp.MustCompile(`^(.+?)-v?(\d+(?:\.\d+)+)$`)

// splitFileName returns the bundle key and release named by a file name.
func splitFileName(path string) (key, release string) {
	base := filepath.Base(path)
	base = strings.TrimSuffix(base, ".gz")
	base = strings.TrimSuffix(base, ".json")
	if m := releaseName.FindStringSubmatch(base); m != nil {
		return m[1], m[2]
	}
	return base, ""
}

// objectMeta holds the fields of an object the server indexes by.
type objectMeta struct {
	ID          string `json:"id"`
	Type        string `json:"type"`
	SpecVersion string `json:"spec_version"`
	Created     string `json:"created"`
	Modified    string `json:"modified"`
}

// collectionMeta holds the fields of an x-mitre-collection object.
type collectionMeta struct {
	Name        string `json:"name"`
	Description string `json:"description"`
	Version     string `json:"x_mitre_version"`
}

// LoadBundle reads one STIX bundle file, plain or gzipped, as a collection. Objects keep their
// file order; dates are assigned by the server (see Server.Load).
func LoadBundle(path string) (*Collection, error) {
	data, err := readMaybeGzip(path)
	if err != nil {
		return nil, err
	}
	raws, bundleID, err := splitBundle(data)
	if err != nil {
		return nil, fmt.Errorf("read bundle %s: %w", path, err)
	}
	c := &Collection{File: path, Objects: make([]Object, 0, len(raws))}
	// A symbolic link such as enterprise-attack.json.gz names its release by its target.
	c.Key, c.Release = splitFileName(path)
	if c.Release == "" {
		if target, err := filepath.EvalSymlinks(path); err == nil {
			if k, r := splitFileName(target); r != "" {
				c.Key, c.Release = k, r
			}
		}
	}
	if _, known := attackDomains[c.Key]; !known {
		if k := strings.TrimPrefix(bundleID, "bundle--"); attackDomains[k].id != "" {
			c.Key = k
		}
	}
	c.Objects = c.Objects[:len(raws)]
	colls := make([]*collectionMeta, len(raws))
	// Indexing decodes every object once more; spread it over the cores.
	var wg sync.WaitGroup
	chunk := (len(raws) + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	for lo := 0; lo < len(raws); lo += chunk {
		hi := min(lo+chunk, len(raws))
		wg.Go(func() {
			for i := lo; i < hi; i++ {
				c.Objects[i], colls[i] = parseObject(raws[i])
			}
		})
	}
	wg.Wait()
	for i := range c.Objects {
		if coll := colls[i]; coll != nil && c.ID == "" {
			c.ID, c.Title, c.Description = c.Objects[i].ID, coll.Name, coll.Description
			if c.Release == "" {
				c.Release = coll.Version
			}
		}
		if !c.Objects[i].Valid {
			c.Invalid++
		}
	}
	if c.ID == "" {
		if d, ok := attackDomains[c.Key]; ok {
			c.ID, c.Title = d.id, d.title
		} else {
			c.ID, c.Title = derivedID(c.Key), c.Key
		}
	}
	if c.Title == "" {
		c.Title = c.Key
	}
	if c.Description == "" {
		c.Description = fmt.Sprintf("STIX bundle %s", filepath.Base(path))
		if c.Release != "" {
			c.Description += ", release " + c.Release
		}
	}
	return c, nil
}

// readMaybeGzip reads a file whole, uncompressing it when it starts with the gzip magic bytes.
func readMaybeGzip(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open bundle: %w", err)
	}
	defer f.Close()
	br := bufio.NewReaderSize(f, 1<<16)
	var r io.Reader = br
	if magic, err := br.Peek(2); err == nil && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("open gzip bundle %s: %w", path, err)
		}
		defer zr.Close()
		r = zr
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return nil, fmt.Errorf("read bundle %s: %w", path, err)
	}
	return data, nil
}

// splitBundle returns the raw objects and the id of a bundle, without decoding the objects.
func splitBundle(data []byte) ([]json.RawMessage, string, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, "", fmt.Errorf("%w: does not start with a JSON object", ErrBadBundle)
	}
	var (
		raws     []json.RawMessage
		bundleID string
		seen     bool
	)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, "", fmt.Errorf("%w: %v", ErrBadBundle, err)
		}
		key, _ := tok.(string)
		switch key {
		case "objects":
			if tok, err := dec.Token(); err != nil || tok != json.Delim('[') {
				return nil, "", fmt.Errorf("%w: objects is not a list", ErrBadBundle)
			}
			for dec.More() {
				var raw json.RawMessage
				if err := dec.Decode(&raw); err != nil {
					return nil, "", fmt.Errorf("%w: object %d: %v", ErrBadBundle, len(raws), err)
				}
				raws = append(raws, raw)
			}
			if _, err := dec.Token(); err != nil {
				return nil, "", fmt.Errorf("%w: %v", ErrBadBundle, err)
			}
			seen = true
		case "id":
			if err := dec.Decode(&bundleID); err != nil {
				return nil, "", fmt.Errorf("%w: id: %v", ErrBadBundle, err)
			}
		default:
			var skip json.RawMessage
			if err := dec.Decode(&skip); err != nil {
				return nil, "", fmt.Errorf("%w: %s: %v", ErrBadBundle, key, err)
			}
		}
	}
	if !seen {
		return nil, "", fmt.Errorf("%w: no objects list", ErrBadBundle)
	}
	return raws, bundleID, nil
}

// parseObject indexes one raw object. It returns the collection fields when the object is an
// x-mitre-collection.
func parseObject(raw json.RawMessage) (Object, *collectionMeta) {
	o := Object{Raw: raw}
	var m objectMeta
	if err := json.Unmarshal(raw, &m); err != nil {
		return o, nil
	}
	o.ID, o.Type, o.SpecVersion, o.Created, o.Modified = m.ID, m.Type, m.SpecVersion,
		m.Created, m.Modified
	meta := stix.Meta{ID: m.ID, Type: m.Type, Created: m.Created, Modified: m.Modified}
	o.Valid = meta.Validate() == nil
	if t, err := stix.ParseTime(m.Created); err == nil {
		o.CreatedAt = t
	}
	if t, err := stix.ParseTime(o.Version()); err == nil {
		o.VersionAt = t
	}
	if o.Type != "x-mitre-collection" || !o.Valid {
		return o, nil
	}
	var c collectionMeta
	if err := json.Unmarshal(raw, &c); err != nil {
		return o, nil
	}
	return o, &c
}

// derivedID returns a stable UUID-shaped collection id for a bundle key.
func derivedID(key string) string {
	h := sha1.Sum([]byte("attack-etl mirror collection " + key))
	h[6] = h[6]&0x0f | 0x50 // version 5 layout
	h[8] = h[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", h[0:4], h[4:6], h[6:8], h[8:10], h[10:16])
}

// compareReleases orders release strings such as 9.0, 18.0 and 18.1 numerically; an empty
// release is older than any other.
func compareReleases(a, b string) int {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	if a == "" || b == "" {
		return strings.Compare(a, b)
	}
	for i := 0; i < len(pa) || i < len(pb); i++ {
		var x, y int
		if i < len(pa) {
			x, _ = strconv.Atoi(pa[i])
		}
		if i < len(pb) {
			y, _ = strconv.Atoi(pb[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// index computes byID and the first/last marks of every object.
func (c *Collection) index() {
	c.byID = make(map[string][]int, len(c.Objects))
	for i := range c.Objects {
		o := &c.Objects[i]
		if o.ID != "" {
			c.byID[o.ID] = append(c.byID[o.ID], i)
		}
	}
	for _, idx := range c.byID {
		first, last := idx[0], idx[0]
		for _, i := range idx[1:] {
			if c.Objects[i].VersionAt.Before(c.Objects[first].VersionAt) {
				first = i
			}
			if !c.Objects[i].VersionAt.Before(c.Objects[last].VersionAt) {
				last = i
			}
		}
		c.Objects[first].first = true
		c.Objects[last].last = true
	}
}
