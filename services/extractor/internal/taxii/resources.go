package taxii

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Discovery is the TAXII 2.1 discovery resource.
type Discovery struct {
	Title    string   `json:"title"`
	Default  string   `json:"default,omitempty"`
	APIRoots []string `json:"api_roots,omitempty"`
}

// Collection is a TAXII 2.1 collection resource.
type Collection struct {
	ID          string   `json:"id"`
	Title       string   `json:"title"`
	Description string   `json:"description,omitempty"`
	CanRead     bool     `json:"can_read"`
	MediaTypes  []string `json:"media_types,omitempty"`
}

type collectionsEnvelope struct {
	Collections []Collection `json:"collections"`
}

// Root is one API root and the collections it serves.
type Root struct {
	// URL is the API root's URL, ending in a slash.
	URL string
	// Release is the ATT&CK release pinned by the root's path (such as 18.1 for
	// /api/v21/attack-18.1/), empty for a root that serves the latest.
	Release     string
	Collections []Collection
}

// SkippedRoot is an API root listed by discovery that could not be read.
type SkippedRoot struct {
	URL string
	Err error
}

var releasePath = regexp.MustCompile(`attack-v?(\d+(?:\.\d+)*)/?$`)

// ReleaseOf returns the ATT&CK release an API root URL pins, such as "18.1" for
// https://attack-taxii.mitre.org/api/v21/attack-18.1/, or "" when it pins none.
func ReleaseOf(rootURL string) string {
	u, err := url.Parse(rootURL)
	if err != nil {
		return ""
	}
	if m := releasePath.FindStringSubmatch(u.Path); m != nil {
		return m[1]
	}
	return ""
}

// IsDiscoveryURL reports whether a URL's path is a TAXII discovery endpoint (/taxii2/).
func IsDiscoveryURL(u string) bool {
	p, err := url.Parse(u)
	if err != nil {
		return false
	}
	return strings.HasSuffix(strings.TrimSuffix(p.Path, "/"), "/taxii2")
}

func withSlash(u string) string {
	if strings.HasSuffix(u, "/") {
		return u
	}
	return u + "/"
}

// Resolve finds the API roots to read from the configured URL and lists their collections.
//
// A URL whose path is not /taxii2/ is taken for an API root and read without discovery: one
// request lists its collections. Should that answer 404, the URL is tried as a discovery
// endpoint. With discovery, the default API root is read when discovery names one (the others
// are fall-backs); otherwise every listed root is read. A listed root whose collections answer
// 404 is skipped and returned in the second value.
func (c *Client) Resolve(ctx context.Context, base string) ([]Root, []SkippedRoot, error) {
	base = StripCredentials(strings.TrimSpace(base))
	if !IsDiscoveryURL(base) {
		root, err := c.root(ctx, withSlash(base))
		if err == nil {
			return []Root{root}, nil, nil
		}
		var herr *HTTPError
		if !errors.As(err, &herr) || herr.Status != http.StatusNotFound {
			return nil, nil, err
		}
		roots, skipped, derr := c.discover(ctx, base)
		if derr != nil {
			// Neither an API root nor discovery: report the first error.
			return nil, nil, err
		}
		return roots, skipped, nil
	}
	return c.discover(ctx, base)
}

func (c *Client) discover(ctx context.Context, base string) ([]Root, []SkippedRoot, error) {
	var d Discovery
	if _, err := c.get(ctx, base, &d); err != nil {
		return nil, nil, fmt.Errorf("discovery: %w", err)
	}
	if d.Default == "" && len(d.APIRoots) == 0 {
		return nil, nil, fmt.Errorf("discovery %s: %w: it lists none", base, ErrNoAPIRoot)
	}
	b, err := url.Parse(base)
	if err != nil {
		return nil, nil, fmt.Errorf("discovery %s: %w", base, err)
	}
	abs := func(s string) string {
		r, err := b.Parse(s)
		if err != nil {
			return s
		}
		return withSlash(r.String())
	}
	var order []string
	seen := map[string]bool{}
	add := func(s string) {
		if a := abs(s); !seen[a] {
			seen[a] = true
			order = append(order, a)
		}
	}
	if d.Default != "" {
		add(d.Default)
	}
	for _, r := range d.APIRoots {
		add(r)
	}
	var roots []Root
	var skipped []SkippedRoot
	for _, u := range order {
		root, err := c.root(ctx, u)
		var herr *HTTPError
		if errors.As(err, &herr) && herr.Status == http.StatusNotFound {
			skipped = append(skipped, SkippedRoot{URL: u, Err: err})
			continue
		}
		if err != nil {
			return nil, skipped, err
		}
		roots = append(roots, root)
		if d.Default != "" {
			// The default root is the one to read; the others were fall-backs.
			break
		}
	}
	if len(roots) == 0 {
		return nil, skipped, fmt.Errorf("discovery %s: %w: every listed API root answered 404",
			base, ErrNoAPIRoot)
	}
	return roots, skipped, nil
}

// root lists the collections of an API root.
func (c *Client) root(ctx context.Context, rootURL string) (Root, error) {
	cols, err := c.Collections(ctx, rootURL)
	if err != nil {
		return Root{}, err
	}
	return Root{URL: rootURL, Release: ReleaseOf(rootURL), Collections: cols}, nil
}

// TODO(extractor): read the manifest endpoint too; the sync compares (id, modified) of the
// objects themselves, and MITRE's manifest dates come from created, so nothing needs it yet.

// Collections lists the collections of an API root.
func (c *Client) Collections(ctx context.Context, rootURL string) ([]Collection, error) {
	var env collectionsEnvelope
	if _, err := c.get(ctx, withSlash(rootURL)+"collections/", &env); err != nil {
		return nil, fmt.Errorf("list collections: %w", err)
	}
	return env.Collections, nil
}

// Page is one page of a collection's objects.
type Page struct {
	// Number counts the pages of one listing from 1.
	Number int
	// URL is the page's request URL.
	URL string
	// Objects are the objects exactly as the server sent them.
	Objects []json.RawMessage
	// More and Next are the envelope's paging fields.
	More bool
	Next string
	// DateAddedFirst and DateAddedLast are the X-TAXII-Date-Added-* headers as sent.
	DateAddedFirst, DateAddedLast string
}

type objectsEnvelope struct {
	More    bool              `json:"more"`
	Next    json.RawMessage   `json:"next,omitempty"`
	Objects []json.RawMessage `json:"objects"`
}

// nextToken reads a next token sent as a string or, as some servers do, as a number.
func nextToken(raw json.RawMessage) (string, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return "", nil
	}
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		return s, nil
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err == nil {
		return n.String(), nil
	}
	return "", fmt.Errorf("next token %s is neither a string nor a number", raw)
}

// ObjectsQuery selects what Objects reads.
type ObjectsQuery struct {
	// Limit is the page size asked for; 0 sends no limit, so the server picks its largest page
	// (MITRE's server then answers with the whole collection).
	Limit int
	// AddedAfter is sent on the first request only; later pages follow next alone.
	AddedAfter string
	// MaxPages stops the listing with ErrPageCap when it has more pages; 0 means no cap.
	MaxPages int
}

// Objects reads every page of a collection's objects and hands each to fn before asking for the
// next, so that fn can publish a page and wait for its acks first. Paging follows next while
// more is true. A server that sends the same next token or the same page twice ends the listing
// with ErrLoop; more pages than q.MaxPages end it with ErrPageCap. An error from fn ends the
// listing and is returned as is.
func (c *Client) Objects(ctx context.Context, rootURL, collectionID string, q ObjectsQuery,
	fn func(*Page) error) error {
	base := withSlash(rootURL) + "collections/" + url.PathEscape(collectionID) + "/objects/"
	seenNext := map[string]int{}
	seenPage := map[[32]byte]int{}
	next := ""
	for n := 1; ; n++ {
		if q.MaxPages > 0 && n > q.MaxPages {
			return fmt.Errorf("collection %s: %w: more than %d pages (TAXII_MAX_PAGES)",
				collectionID, ErrPageCap, q.MaxPages)
		}
		v := url.Values{}
		if q.Limit > 0 {
			v.Set("limit", strconv.Itoa(q.Limit))
		}
		if next != "" {
			v.Set("next", next)
		} else if q.AddedAfter != "" {
			v.Set("added_after", q.AddedAfter)
		}
		u := base
		if len(v) > 0 {
			u += "?" + v.Encode()
		}
		var env objectsEnvelope
		ans, err := c.get(ctx, u, &env)
		if err != nil {
			return fmt.Errorf("collection %s page %d: %w", collectionID, n, err)
		}
		tok, err := nextToken(env.Next)
		if err != nil {
			return fmt.Errorf("collection %s page %d (%s): %w", collectionID, n, u, err)
		}
		if len(env.Objects) > 0 {
			sum := objectsSum(env.Objects)
			if first, dup := seenPage[sum]; dup {
				return fmt.Errorf("collection %s: %w: page %d (%s) holds the same objects as "+
					"page %d", collectionID, ErrLoop, n, u, first)
			}
			seenPage[sum] = n
		}
		p := &Page{Number: n, URL: u, Objects: env.Objects, More: env.More, Next: tok,
			DateAddedFirst: ans.Header.Get("X-TAXII-Date-Added-First"),
			DateAddedLast:  ans.Header.Get("X-TAXII-Date-Added-Last")}
		if err := fn(p); err != nil {
			return err
		}
		if !env.More {
			return nil
		}
		if tok == "" {
			return fmt.Errorf("collection %s page %d (%s): %w", collectionID, n, u, ErrNoNext)
		}
		if first, dup := seenNext[tok]; dup {
			return fmt.Errorf("collection %s: %w: page %d (%s) sent next token %q already "+
				"sent by page %d", collectionID, ErrLoop, n, u, tok, first)
		}
		seenNext[tok] = n
		next = tok
	}
}

func objectsSum(objs []json.RawMessage) [32]byte {
	h := sha256.New()
	for _, o := range objs {
		h.Write(o)
		h.Write([]byte{0})
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s
}
