package taxiiserver

import (
	"encoding/base64"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/attack-etl/attack-etl/shared/stix"
)

// dateLayout renders date_added and the X-TAXII-Date-Added-* headers in standard mode.
const dateLayout = "2006-01-02T15:04:05.000000Z"

// query holds the parsed paging and filter parameters of an objects, manifest or versions
// request.
type query struct {
	limit         int
	hasLimit      bool
	next          string
	addedAfter    time.Time
	hasAddedAfter bool
	// types, ids and specVersions are nil when the request does not filter on them.
	types, ids, specVersions map[string]bool
	// versions holds first, last, all and timestamps (as sortable strings).
	versions map[string]bool
}

// parseQuery reads limit, next, added_after and the match[...] filters. Unknown parameters are
// ignored, as TAXII 2.1 asks.
func parseQuery(v url.Values) (query, error) {
	var q query
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return q, fmt.Errorf("%w: limit %q is not a positive whole number", ErrBadParameter, s)
		}
		q.limit, q.hasLimit = n, true
	}
	q.next = v.Get("next")
	if s := v.Get("added_after"); s != "" {
		t, err := stix.ParseTime(s)
		if err != nil {
			return q, fmt.Errorf("%w: added_after %q is not an RFC 3339 timestamp",
				ErrBadParameter, s)
		}
		q.addedAfter, q.hasAddedAfter = t, true
	}
	q.types = commaSet(v["match[type]"])
	q.ids = commaSet(v["match[id]"])
	q.specVersions = commaSet(v["match[spec_version]"])
	q.versions = map[string]bool{}
	for item := range commaSet(v["match[version]"]) {
		switch item {
		case "first", "last", "all":
			q.versions[item] = true
		default:
			s, err := stix.SortableStamp(item)
			if err != nil {
				return q, fmt.Errorf("%w: match[version] %q is not first, last, all or a "+
					"timestamp", ErrBadParameter, item)
			}
			q.versions[s] = true
		}
	}
	if len(q.versions) == 0 {
		q.versions["last"] = true
	}
	return q, nil
}

// commaSet splits repeated, comma-separated values into a set; nil when there are none.
func commaSet(values []string) map[string]bool {
	var set map[string]bool
	for _, v := range values {
		for _, item := range strings.Split(v, ",") {
			if item = strings.TrimSpace(item); item != "" {
				if set == nil {
					set = map[string]bool{}
				}
				set[item] = true
			}
		}
	}
	return set
}

// matches reports whether an object passes the match[...] filters.
func (q *query) matches(o *Object) bool {
	if q.types != nil && !q.types[o.Type] {
		return false
	}
	if q.ids != nil && !q.ids[o.ID] {
		return false
	}
	if q.specVersions != nil {
		sv := o.SpecVersion
		if sv == "" {
			sv = "2.0"
		}
		if !q.specVersions[sv] {
			return false
		}
	}
	if q.versions["all"] || !o.Valid {
		return true
	}
	if (q.versions["last"] && o.last) || (q.versions["first"] && o.first) {
		return true
	}
	if len(q.versions) > 0 {
		s, err := stix.SortableStamp(o.Version())
		if err == nil && q.versions[s] {
			return true
		}
	}
	return false
}

// page is one response's worth of objects.
type page struct {
	items []*Object
	// paged is false when the response carries no more field (MITRE mode without limit).
	paged bool
	more  bool
	next  string
}

// standardPage selects a page in standard mode: objects ordered by date_added, added_after
// filtering on it, and next an opaque cursor holding the date_added of the page's last object.
func standardPage(c *Collection, q query, maxPage int) (page, error) {
	lower, hasLower := q.addedAfter, q.hasAddedAfter
	if q.next != "" {
		t, err := decodeCursor(q.next)
		if err != nil {
			return page{}, err
		}
		if !hasLower || t.After(lower) {
			lower, hasLower = t, true
		}
	}
	start := 0
	if hasLower {
		start = sort.Search(len(c.Objects), func(i int) bool {
			return c.Objects[i].DateAdded.After(lower)
		})
	}
	limit := maxPage
	if q.hasLimit && q.limit < limit {
		limit = q.limit
	}
	p := page{paged: true}
	for i := start; i < len(c.Objects); i++ {
		o := &c.Objects[i]
		if !q.matches(o) {
			continue
		}
		if len(p.items) == limit {
			p.more = true
			break
		}
		p.items = append(p.items, o)
	}
	if p.more {
		p.next = encodeCursor(p.items[len(p.items)-1].DateAdded)
	}
	return p, nil
}

// cursorPrefix versions the cursor format.
const cursorPrefix = "c1:"

// encodeCursor makes the opaque next token for a page ending at date_added t.
func encodeCursor(t time.Time) string {
	return base64.RawURLEncoding.EncodeToString(
		[]byte(cursorPrefix + strconv.FormatInt(t.UnixMicro(), 10)))
}

// decodeCursor reads a next token made by encodeCursor.
func decodeCursor(token string) (time.Time, error) {
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err == nil {
		if s, ok := strings.CutPrefix(string(raw), cursorPrefix); ok {
			if us, err := strconv.ParseInt(s, 10, 64); err == nil {
				return time.UnixMicro(us).UTC(), nil
			}
		}
	}
	return time.Time{}, fmt.Errorf("%w: next %q is not a token this server gave", ErrBadParameter,
		token)
}

// formatDate renders an object's date_added in the mode's form.
func formatDate(o *Object, mode Mode) string {
	if mode == ModeMITRE {
		return o.Created
	}
	return o.DateAdded.Format(dateLayout)
}
