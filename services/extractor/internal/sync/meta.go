package sync

import (
	"encoding/json"
	"strings"

	"github.com/attack-etl/attack-etl/shared/stix"
)

// parseMeta is stix.ParseMeta made fast for the common case: it reads the top-level id, type,
// spec_version, created and modified with a byte scanner that skips every other value, then
// validates with Meta.Validate. Decoding a whole 35 KB object to read five strings is what
// made ParseMeta the extractor's largest cost. Anything unusual (invalid JSON, escapes, a key
// matching a field only when case is ignored, a non-string value) falls back to
// stix.ParseMeta, so the result and the error are always ParseMeta's.
func parseMeta(raw []byte) (stix.Meta, error) {
	if m, ok := scanMeta(raw); ok {
		return m, m.Validate()
	}
	return stix.ParseMeta(raw)
}

// scanMeta returns ok false whenever it cannot be sure to agree with encoding/json.
func scanMeta(b []byte) (stix.Meta, bool) {
	var m stix.Meta
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return m, false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return m, skipSpace(b, i+1) == len(b)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return m, false
		}
		key, end, ok := plainString(b, i)
		if !ok {
			return m, false
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return m, false
		}
		i = skipSpace(b, i+1)
		var field *string
		switch key {
		case "id":
			field = &m.ID
		case "type":
			field = &m.Type
		case "spec_version":
			field = &m.SpecVersion
		case "created":
			field = &m.Created
		case "modified":
			field = &m.Modified
		default:
			for _, k := range []string{"id", "type", "spec_version", "created", "modified"} {
				if strings.EqualFold(key, k) {
					return m, false
				}
			}
		}
		if field != nil {
			if i >= len(b) || b[i] != '"' {
				// null or another type: let encoding/json decide.
				return m, false
			}
			s, end, ok := plainString(b, i)
			if !ok {
				return m, false
			}
			*field = s
			i = end
		} else {
			end, ok := skipValue(b, i)
			if !ok {
				return m, false
			}
			i = end
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return m, false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return m, skipSpace(b, i+1) == len(b)
		default:
			return m, false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\r' || b[i] == '\t') {
		i++
	}
	return i
}

// plainString reads a string starting at b[i] == '"' that holds no escape and no control
// character, returning it and the index after the closing quote.
func plainString(b []byte, i int) (string, int, bool) {
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return string(b[i+1 : j]), j + 1, true
		case c == '\\' || c < 0x20:
			return "", 0, false
		}
	}
	return "", 0, false
}

// skipValue skips one JSON value starting at b[i] and returns the index after it. It checks
// only the structure it needs; values it cannot vouch for are validated by the caller's
// fall-back, because ok is false whenever something looks wrong.
func skipValue(b []byte, i int) (int, bool) {
	if i >= len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		for j := i + 1; j < len(b); j++ {
			switch b[j] {
			case '\\':
				j++
			case '"':
				return j + 1, true
			}
		}
		return 0, false
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, ok := skipValue(b, j)
				if !ok {
					return 0, false
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, true
				}
			}
		}
		return 0, false
	default:
		j := i
		for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' &&
			b[j] != '\n' && b[j] != '\r' && b[j] != '\t' {
			j++
		}
		if j == i || !json.Valid(b[i:j]) {
			return 0, false
		}
		return j, true
	}
}
