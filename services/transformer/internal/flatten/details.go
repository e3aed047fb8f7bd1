package flatten

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/attack-etl/attack-etl/shared/bus"
)

// detailsOf collects the properties that are neither mapped to a top-level field nor dropped,
// leaving out null and empty-string values. A key x_mitre_<name>, at any depth, is stored as
// <name> unless its object also has a key <name>. Keys are made safe for MongoDB (see SafeKey)
// at every depth, and a list directly inside a list is wrapped as {"items": [...]}, since
// FerretDB stores no nested arrays. The ATT&CK reference was mapped to attack_id and url; the
// other references that carry an external_id (such as CAPEC or NIST ids) are kept as
// external_ids, the citations are dropped.
func detailsOf(obj map[string]any, typ string) (map[string]any, error) {
	out := map[string]any{}
	keys := make([]string, 0, len(obj))
	for k := range obj {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if mapped[k] || slices.Contains(mappedByType[typ], k) ||
			slices.Contains(Dropped, k) || slices.Contains(droppedByType[typ], k) {
			continue
		}
		if v := obj[k]; v == nil || v == "" {
			continue // nothing to say: absent and empty read alike in queries
		}
		if err := put(out, shortName(obj, k), obj[k], k); err != nil {
			return nil, err
		}
	}
	if ids := externalIDs(obj); len(ids) > 0 {
		if err := put(out, "external_ids", ids, "external_references"); err != nil {
			return nil, err
		}
	}
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// externalIDs returns the non-ATT&CK references that carry an external_id.
func externalIDs(obj map[string]any) []any {
	list, _ := obj["external_references"].([]any)
	var out []any
	for _, e := range list {
		ref, ok := e.(map[string]any)
		if !ok {
			continue
		}
		src, _ := ref["source_name"].(string)
		id, _ := ref["external_id"].(string)
		if id == "" || slices.Contains(AttackSources, src) {
			continue
		}
		m := map[string]any{"source_name": src, "external_id": id}
		if u, ok := ref["url"].(string); ok && u != "" {
			m["url"] = u
		}
		out = append(out, m)
	}
	return out
}

// shortName drops the x_mitre_ prefix of a key unless the object also has the short key.
func shortName(obj map[string]any, k string) string {
	if short, ok := strings.CutPrefix(k, "x_mitre_"); ok && short != "" {
		if _, taken := obj[short]; !taken {
			return short
		}
	}
	return k
}

// put stores a sanitised value under the safe spelling of a key, refusing a collision.
func put(m map[string]any, key string, v any, path string) error {
	safe := SafeKey(key)
	if _, taken := m[safe]; taken {
		return &Error{Kind: bus.KindUnsafeKey, Err: fmt.Errorf(
			"%w: %q at %s would be stored as %q, which another key already uses",
			ErrUnsafeKey, key, path, safe)}
	}
	clean, err := sanitize(v, path)
	if err != nil {
		return err
	}
	m[safe] = clean
	return nil
}

// sanitize makes a decoded JSON value storable: safe keys at every depth, no list directly
// inside a list.
func sanitize(v any, path string) (any, error) {
	switch x := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(x))
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		// Safe keys first, so that a key that needed no change keeps its value on collision
		// checks whatever the map order.
		sort.Slice(keys, func(i, j int) bool {
			si, sj := SafeKey(keys[i]) == keys[i], SafeKey(keys[j]) == keys[j]
			if si != sj {
				return si
			}
			return keys[i] < keys[j]
		})
		for _, k := range keys {
			if err := put(out, shortName(x, k), x[k], path+"."+k); err != nil {
				return nil, err
			}
		}
		return out, nil
	case []any:
		out := make([]any, len(x))
		for i, e := range x {
			c, err := sanitize(e, fmt.Sprintf("%s[%d]", path, i))
			if err != nil {
				return nil, err
			}
			if inner, ok := c.([]any); ok {
				c = map[string]any{"items": inner}
			}
			out[i] = c
		}
		return out, nil
	default:
		return v, nil
	}
}

// SafeKey returns a spelling of a key that MongoDB reads as a plain field name: every '.' and
// NUL becomes '_', a leading '$' becomes '_', and an empty key becomes "_".
func SafeKey(k string) string {
	if k == "" {
		return "_"
	}
	if !strings.ContainsAny(k, ".\x00") && k[0] != '$' {
		return k
	}
	b := []byte(k)
	for i, c := range b {
		if c == '.' || c == 0 {
			b[i] = '_'
		}
	}
	if b[0] == '$' {
		b[0] = '_'
	}
	return string(b)
}
