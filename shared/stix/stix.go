// Package stix reads the few fields of a raw STIX 2.0 or 2.1 object that the pipeline routes and
// versions by, and checks them, without decoding the rest of the object.
package stix

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Sentinel errors of malformed objects. Each wraps into an error that names the object.
var (
	// ErrNotJSON means the bytes are not a JSON object.
	ErrNotJSON = errors.New("not a JSON object")
	// ErrMissingID means the object has no id.
	ErrMissingID = errors.New("missing id")
	// ErrMissingType means the object has no type.
	ErrMissingType = errors.New("missing type")
	// ErrBadID means the id is not <type>--<uuid> with the object's own type.
	ErrBadID = errors.New("id does not match type")
	// ErrBadTimestamp means created or modified is not an RFC 3339 timestamp.
	ErrBadTimestamp = errors.New("malformed timestamp")
)

// Meta holds the routing and versioning fields of one STIX object.
type Meta struct {
	ID          string `json:"id"`
	Type        string `json:"type"`
	SpecVersion string `json:"spec_version,omitempty"`
	Created     string `json:"created,omitempty"`
	Modified    string `json:"modified,omitempty"`
}

// typeName follows STIX: lower-case letters, digits and hyphens, 3 to 250 characters.
var typeName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{1,248}[a-z0-9]$`)

// idSuffix is the UUID part of an identifier.
var idSuffix = regexp.MustCompile(
	`^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)

// ParseMeta decodes and checks the routing fields of a raw object.
func ParseMeta(raw []byte) (Meta, error) {
	var m Meta
	if err := json.Unmarshal(raw, &m); err != nil {
		return Meta{}, fmt.Errorf("%w: %v", ErrNotJSON, err)
	}
	return m, m.Validate()
}

// Validate checks the id, the type and the timestamps.
func (m Meta) Validate() error {
	if m.Type == "" {
		return fmt.Errorf("%w (id %q)", ErrMissingType, m.ID)
	}
	if m.ID == "" {
		return fmt.Errorf("%w (type %q)", ErrMissingID, m.Type)
	}
	prefix, suffix, ok := strings.Cut(m.ID, "--")
	if !ok || prefix != m.Type || !typeName.MatchString(m.Type) || !idSuffix.MatchString(suffix) {
		return fmt.Errorf("%w: id %q, type %q", ErrBadID, m.ID, m.Type)
	}
	for _, ts := range []struct{ name, val string }{{"created", m.Created}, {"modified", m.Modified}} {
		if ts.val == "" {
			continue
		}
		if _, err := ParseTime(ts.val); err != nil {
			return fmt.Errorf("%w: %s %q of %s", ErrBadTimestamp, ts.name, ts.val, m.ID)
		}
	}
	return nil
}

// VersionStamp returns the timestamp that versions the object: modified, or created for objects
// without modified (such as some marking definitions).
func (m Meta) VersionStamp() string {
	if m.Modified != "" {
		return m.Modified
	}
	return m.Created
}

// ParseTime parses a STIX timestamp: RFC 3339 in UTC with any number of fraction digits.
func ParseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%w: %q", ErrBadTimestamp, s)
	}
	return t.UTC(), nil
}

// SortableStamp renders a STIX timestamp with a fixed nine-digit fraction, so that two stamps
// compare as strings the way they compare as times. An empty stamp sorts before every other.
func SortableStamp(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	t, err := ParseTime(s)
	if err != nil {
		return "", err
	}
	return t.Format("2006-01-02T15:04:05.000000000Z"), nil
}

// CompareStamps compares two STIX timestamps as times: -1 when a is older, 0 when equal, 1 when
// newer. An empty or unparsable stamp is older than any valid one.
func CompareStamps(a, b string) int {
	sa, errA := SortableStamp(a)
	sb, errB := SortableStamp(b)
	if errA != nil {
		sa = ""
	}
	if errB != nil {
		sb = ""
	}
	return strings.Compare(sa, sb)
}
