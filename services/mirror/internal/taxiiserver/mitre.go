package taxiiserver

import (
	"fmt"
	"strconv"
)

// Mode selects how the server dates and pages objects.
type Mode string

// The server's modes.
const (
	// ModeStandard follows TAXII 2.1: every object has its own date_added, added_after filters on
	// it, and next is an opaque cursor; pages are at most Options.MaxPage objects.
	ModeStandard Mode = "standard"
	// ModeMITRE reproduces attack-taxii.mitre.org (the ATT&CK Workbench TAXII server): date_added,
	// added_after and the X-TAXII-Date-Added-* headers all come from each object's created;
	// objects are ordered by created; without limit a response holds the whole collection and
	// no more field; with limit, next is a page number; discovery lists one API root per
	// release (/api/v21/attack-18.1/) beside /api/v21/, which serves the latest release.
	ModeMITRE Mode = "mitre"
)

// ParseMode reads a mode name.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeStandard, "":
		return ModeStandard, nil
	case ModeMITRE:
		return ModeMITRE, nil
	}
	return "", fmt.Errorf("mode %q: want standard or mitre", s)
}

// mitrePage selects a page the way the Workbench TAXII server does (its PaginationService):
// objects with created after added_after, in created order; no limit returns everything;
// limit alone returns page 0 and next "1" when more remain; next=N returns items
// [N*limit, N*limit+limit) and 404 when N*limit is past the end. MITRE's server has no page cap.
func mitrePage(c *Collection, q query) (page, error) {
	var items []*Object
	for i := range c.Objects {
		o := &c.Objects[i]
		if q.hasAddedAfter && !o.CreatedAt.After(q.addedAfter) {
			continue
		}
		if q.matches(o) {
			items = append(items, o)
		}
	}
	if !q.hasLimit {
		return page{items: items}, nil
	}
	n := 0
	if q.next != "" {
		var err error
		n, err = strconv.Atoi(q.next)
		if err != nil || n < 0 {
			return page{}, fmt.Errorf("%w: next %q is not a page number", ErrBadParameter, q.next)
		}
	}
	if n > 0 && q.limit > len(items)/n { // limit*n > len(items), without overflow
		return page{}, fmt.Errorf("%w: next %d with limit %d is past the %d objects",
			ErrPageNotFound, n, q.limit, len(items))
	}
	start := q.limit * n
	end := start + min(q.limit, len(items)-start)
	p := page{paged: true, items: items[start:end], more: end < len(items)}
	if p.more {
		p.next = strconv.Itoa(n + 1)
	}
	return p, nil
}
