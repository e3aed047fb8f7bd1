package taxiiserver

import (
	"crypto/sha1"
	"errors"
	"fmt"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"time"
)

// DefaultRoot is the path of the API root that serves the latest release of every collection.
const DefaultRoot = "/api/v21/"

// releaseRootPrefix starts the name of a per-release API root in MITRE mode: attack-18.1.
const releaseRootPrefix = "attack-"

// apiRoot is one API root with its collections.
type apiRoot struct {
	// name is the root's last path element: empty for /api/v21/, attack-18.1 for a release.
	name        string
	title       string
	collections []*Collection
	byID        map[string]*Collection
}

// catalog is the immutable set of API roots served at one time; a reload swaps it whole.
type catalog struct {
	roots map[string]*apiRoot
	// order lists the root names as discovery shows them: the default root first.
	order []string
}

// CollectionReport describes one loaded bundle.
type CollectionReport struct {
	ID, Title, Release, File string
	// Objects counts the bundle's objects; Invalid those without a usable id or type.
	Objects, Invalid int
	// Roots names the API roots that serve the collection; empty when it is not served.
	Roots []string
}

// LoadReport describes one load or reload of the bundles.
type LoadReport struct {
	// Collections describes every bundle file, in the order given.
	Collections []CollectionReport
	// Objects counts the objects of the served collections of the default root.
	Objects int
	// Took is the time the load took.
	Took time.Duration
}

// ExpandBundles turns a list of bundle files and glob patterns into file paths, in order.
func ExpandBundles(items []string) ([]string, error) {
	var out []string
	for _, item := range items {
		if !strings.ContainsAny(item, "*?[") {
			out = append(out, item)
			continue
		}
		matches, err := filepath.Glob(item)
		if err != nil {
			return nil, fmt.Errorf("bundle pattern %q: %w", item, err)
		}
		if len(matches) == 0 {
			return nil, fmt.Errorf("bundle pattern %q matches no file", item)
		}
		out = append(out, matches...)
	}
	if len(out) == 0 {
		return nil, ErrNoBundles
	}
	return out, nil
}

// loadAll reads the bundle files concurrently, keeping their order.
func loadAll(paths []string) ([]*Collection, error) {
	colls := make([]*Collection, len(paths))
	errs := make([]error, len(paths))
	sem := make(chan struct{}, runtime.GOMAXPROCS(0))
	var wg sync.WaitGroup
	for i, p := range paths {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			colls[i], errs[i] = LoadBundle(p)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return colls, nil
}

// buildCatalog arranges loaded collections into API roots and dates their objects. prev is the
// catalog served before a reload, or nil.
func buildCatalog(colls []*Collection, mode Mode, prev *catalog) (*catalog, LoadReport, error) {
	var report LoadReport
	// Group the releases of each collection, in the order the files were given.
	groups := map[string][]*Collection{}
	var ids []string
	for _, c := range colls {
		if _, ok := groups[c.ID]; !ok {
			ids = append(ids, c.ID)
		}
		for _, other := range groups[c.ID] {
			if other.Release == c.Release {
				return nil, report, fmt.Errorf("%w: %s and %s both hold %s release %q",
					ErrDuplicateCollection, other.File, c.File, c.Title, c.Release)
			}
		}
		groups[c.ID] = append(groups[c.ID], c)
	}
	cat := &catalog{roots: map[string]*apiRoot{}}
	def := &apiRoot{name: "", title: "ATT&CK latest release", byID: map[string]*Collection{}}
	cat.roots[""] = def
	cat.order = []string{""}
	served := map[*Collection][]string{}
	for _, id := range ids {
		group := groups[id]
		sort.SliceStable(group, func(i, j int) bool {
			return compareReleases(group[i].Release, group[j].Release) < 0
		})
		latest := group[len(group)-1]
		def.add(latest)
		served[latest] = append(served[latest], DefaultRoot)
		if mode != ModeMITRE {
			continue
		}
		for _, c := range group {
			if c.Release == "" {
				continue
			}
			name := releaseRootPrefix + c.Release
			root, ok := cat.roots[name]
			if !ok {
				root = &apiRoot{name: name, title: "ATT&CK release " + c.Release,
					byID: map[string]*Collection{}}
				cat.roots[name] = root
			}
			root.add(c)
			served[c] = append(served[c], "/api/v21/"+name+"/")
		}
	}
	var releases []string
	for name := range cat.roots {
		if name != "" {
			releases = append(releases, name)
		}
	}
	sort.Slice(releases, func(i, j int) bool {
		return compareReleases(strings.TrimPrefix(releases[i], releaseRootPrefix),
			strings.TrimPrefix(releases[j], releaseRootPrefix)) < 0
	})
	cat.order = append(cat.order, releases...)

	for _, c := range colls {
		if mode == ModeMITRE {
			dateByCreated(c)
		} else if len(served[c]) > 0 {
			var before *Collection
			if prev != nil {
				before = prev.roots[""].byID[c.ID]
			}
			dateByArrival(c, before)
		}
		c.index()
		report.Collections = append(report.Collections, CollectionReport{ID: c.ID,
			Title: c.Title, Release: c.Release, File: c.File, Objects: len(c.Objects),
			Invalid: c.Invalid, Roots: served[c]})
	}
	for _, c := range def.collections {
		report.Objects += len(c.Objects)
	}
	return cat, report, nil
}

// add puts a collection into the root.
func (r *apiRoot) add(c *Collection) {
	r.collections = append(r.collections, c)
	r.byID[c.ID] = c
}

// dateByCreated dates each object by its created timestamp and orders the collection by it,
// keeping file order among equal stamps, as attack-taxii.mitre.org does.
func dateByCreated(c *Collection) {
	for i := range c.Objects {
		c.Objects[i].DateAdded = c.Objects[i].CreatedAt
	}
	sort.SliceStable(c.Objects, func(i, j int) bool {
		return c.Objects[i].CreatedAt.Before(c.Objects[j].CreatedAt)
	})
}

// dateByArrival gives every object a distinct date_added, as a spec-following server that
// stored the objects one by one would. Dates depend only on the file's content, so they are the
// same after a restart: the base is one second after the newest version stamp of the bundle,
// and the n-th object in file order is added n microseconds later. On a reload, an object
// version the previous bundle already held keeps its date, and new versions are added after
// every date served before, so added_after finds exactly the new versions.
func dateByArrival(c *Collection, before *Collection) {
	var newest time.Time
	for i := range c.Objects {
		if c.Objects[i].VersionAt.After(newest) {
			newest = c.Objects[i].VersionAt
		}
	}
	if newest.IsZero() {
		newest = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	}
	base := newest.Truncate(time.Second).Add(time.Second)
	carried := map[string]time.Time{}
	if before != nil {
		for i := range before.Objects {
			o := &before.Objects[i]
			carried[carryKey(o)] = o.DateAdded
			if !o.DateAdded.Before(base) {
				base = o.DateAdded.Truncate(time.Second).Add(time.Second)
			}
		}
	}
	n := 0
	for i := range c.Objects {
		o := &c.Objects[i]
		k := carryKey(o)
		if t, ok := carried[k]; ok {
			o.DateAdded = t
			delete(carried, k) // a repeated copy in the new bundle counts as new
			continue
		}
		o.DateAdded = base.Add(time.Duration(n) * time.Microsecond)
		n++
	}
	sort.SliceStable(c.Objects, func(i, j int) bool {
		return c.Objects[i].DateAdded.Before(c.Objects[j].DateAdded)
	})
}

// carryKey identifies an object version across reloads.
func carryKey(o *Object) string {
	if o.ID == "" {
		return fmt.Sprintf("raw:%x", sha1.Sum(o.Raw))
	}
	return o.ID + "|" + o.Version() + "|" + o.SpecVersion
}
