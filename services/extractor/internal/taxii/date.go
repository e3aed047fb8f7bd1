package taxii

import (
	"fmt"
	"strings"
	"time"
)

// jsDateLayouts are the forms of JavaScript's Date.toString() output, which MITRE's server once
// sent in its X-TAXII-Date-Added-* headers: "Thu Feb 20 2020 22:10:20 GMT+0000 (Coordinated
// Universal Time)". The part in brackets is cut off before parsing.
var jsDateLayouts = []string{
	"Mon Jan 2 2006 15:04:05 GMT-0700",
	"Mon Jan 02 2006 15:04:05 GMT-0700",
}

// ParseDate parses a TAXII date header tolerantly: RFC 3339 with any fraction (or none), and the
// JavaScript Date.toString() form. The result is in UTC.
func ParseDate(s string) (time.Time, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return time.Time{}, fmt.Errorf("%w: empty", ErrBadDate)
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t.UTC(), nil
	}
	js := s
	if i := strings.Index(js, " ("); i > 0 {
		js = js[:i]
	}
	for _, layout := range jsDateLayouts {
		if t, err := time.Parse(layout, js); err == nil {
			return t.UTC(), nil
		}
	}
	for _, layout := range []string{time.RFC1123, time.RFC1123Z} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), nil
		}
	}
	return time.Time{}, fmt.Errorf("%w: %q", ErrBadDate, s)
}

// FormatDate renders a time the way TAXII filters take it: RFC 3339 in UTC, keeping every
// fraction digit the time has.
func FormatDate(t time.Time) string {
	return t.UTC().Format(time.RFC3339Nano)
}
