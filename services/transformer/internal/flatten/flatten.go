// Package flatten turns one raw STIX 2.0 or 2.1 object into the flattened document.Document that
// MongoDB stores. It is pure: no I/O, no clock (the caller passes the time), no global state.
//
// The same object served as STIX 2.0 by one collection and as STIX 2.1 by another flattens to
// the same content: spec_version, the 2.0 type labels of malware and tool and the 2.1 is_family
// are dropped, and x_mitre_domains (which differs between domains) is left out of the content
// hash by the document package.
package flatten

import (
	"bytes"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/stix"
)

// Options holds what a flattening needs besides the object.
type Options struct {
	// Collection is the collection key the object came from; it becomes Collections.
	Collection string
	// Source and RunID go to the provenance block.
	Source, RunID string
	// SchemaVersion is written to the provenance block and orders equal STIX versions.
	SchemaVersion int
	// MaxBytes rejects larger objects as too large; 0 means no limit.
	MaxBytes int
	// Now is the transformation time written to the provenance block.
	Now time.Time
}

// AttackSources are the external_references source names whose external_id is an ATT&CK id.
var AttackSources = []string{"mitre-attack", "mitre-mobile-attack", "mitre-ics-attack"}

// mapped lists the properties the mapping turns into top-level fields.
var mapped = map[string]bool{
	"type": true, "id": true, "created": true, "modified": true, "name": true,
	"description": true, "external_references": true, "kill_chain_phases": true,
	"x_mitre_platforms": true, "x_mitre_domains": true, "aliases": true, "x_mitre_aliases": true,
	"x_mitre_version": true, "x_mitre_contributors": true, "x_mitre_data_sources": true,
	"revoked": true, "x_mitre_deprecated": true, "first_seen": true, "last_seen": true,
}

// mappedByType lists the properties mapped to top-level fields for one type only; on other
// types they stay in details.
var mappedByType = map[string][]string{
	"attack-pattern": {"x_mitre_is_subtechnique"},
	"x-mitre-tactic": {"x_mitre_shortname"},
	"relationship":   {"relationship_type", "source_ref", "target_ref"},
}

// Dropped lists the properties left out of every document: STIX and ATT&CK bookkeeping that no
// query needs. The README documents them.
var Dropped = []string{
	"spec_version", "object_marking_refs", "created_by_ref", "granular_markings",
	"x_mitre_modified_by_ref", "x_mitre_attack_spec_version",
}

// droppedByType lists properties dropped for some types only: the STIX 2.0 type labels of
// malware and tool (["malware"], ["tool"]) and the STIX 2.1 is_family, which differ between the
// 2.0 and 2.1 copies of one object and say nothing the type does not.
var droppedByType = map[string][]string{
	"malware": {"labels", "is_family"},
	"tool":    {"labels"},
}

// Flatten validates a raw object and maps it to an unsealed document. The caller resolves the
// relationship ends and the revoked-by link, then seals the document. A rejection is an *Error
// whose Kind is the dead-letter kind.
func Flatten(raw []byte, o Options) (*document.Document, error) {
	if o.MaxBytes > 0 && len(raw) > o.MaxBytes {
		return nil, &Error{Kind: bus.KindTooLarge,
			Err: fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, len(raw), o.MaxBytes)}
	}
	obj, err := decode(raw)
	if err != nil {
		return nil, err
	}
	meta, err := metaOf(obj)
	if err != nil {
		return nil, err
	}
	d := &document.Document{
		ID: meta.ID, Type: meta.Type, STIXModified: meta.VersionStamp(),
		Collections: []string{o.Collection},
		Provenance: document.Provenance{SchemaVersion: o.SchemaVersion, Source: o.Source,
			RunID: o.RunID},
	}
	if !o.Now.IsZero() {
		now := o.Now.UTC()
		d.Provenance.TransformedAt = &now
	}
	r := reader{obj: obj, id: meta.ID}
	r.common(d, meta)
	r.typed(d)
	if r.err != nil {
		return nil, &Error{Kind: bus.KindInvalid, Err: r.err}
	}
	details, err := detailsOf(obj, meta.Type)
	if err != nil {
		return nil, err
	}
	d.Details = details
	d.Active = !d.Revoked && !d.Deprecated
	return d, nil
}

// decode parses the bytes as one JSON object.
func decode(raw []byte) (map[string]any, error) {
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&obj); err != nil {
		return nil, &Error{Kind: bus.KindNotJSON, Err: fmt.Errorf("%w: %v", stix.ErrNotJSON, err)}
	}
	if obj == nil {
		return nil, &Error{Kind: bus.KindNotJSON, Err: fmt.Errorf("%w: null", stix.ErrNotJSON)}
	}
	if dec.More() {
		return nil, &Error{Kind: bus.KindNotJSON,
			Err: fmt.Errorf("%w: data after the object", stix.ErrNotJSON)}
	}
	return obj, nil
}

// metaOf reads and validates the routing fields.
func metaOf(obj map[string]any) (stix.Meta, error) {
	var m stix.Meta
	for _, f := range []struct {
		name string
		dst  *string
	}{{"id", &m.ID}, {"type", &m.Type}, {"spec_version", &m.SpecVersion},
		{"created", &m.Created}, {"modified", &m.Modified}} {
		v, ok := obj[f.name]
		if !ok || v == nil {
			continue
		}
		s, ok := v.(string)
		if !ok {
			return m, reject(bus.KindInvalid, "%w: %s is %T, want a string", ErrMalformed,
				f.name, v)
		}
		*f.dst = s
	}
	if err := m.Validate(); err != nil {
		return m, &Error{Kind: bus.KindInvalid, Err: err}
	}
	if m.VersionStamp() == "" {
		return m, reject(bus.KindInvalid, "%w: %s has neither modified nor created",
			stix.ErrBadTimestamp, m.ID)
	}
	return m, nil
}

// reader reads typed properties, remembering the first error.
type reader struct {
	obj map[string]any
	id  string
	err error
}

func (r *reader) fail(prop, want string, v any) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s of %s is %T, want %s", ErrMalformed, prop, r.id, v, want)
	}
}

func (r *reader) str(prop string) string {
	v, ok := r.obj[prop]
	if !ok || v == nil {
		return ""
	}
	s, ok := v.(string)
	if !ok {
		r.fail(prop, "a string", v)
	}
	return s
}

func (r *reader) boolean(prop string) bool {
	v, ok := r.obj[prop]
	if !ok || v == nil {
		return false
	}
	b, ok := v.(bool)
	if !ok {
		r.fail(prop, "a boolean", v)
	}
	return b
}

func (r *reader) strs(prop string) []string {
	v, ok := r.obj[prop]
	if !ok || v == nil {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		r.fail(prop, "a list of strings", v)
		return nil
	}
	out := make([]string, 0, len(list))
	for _, e := range list {
		s, ok := e.(string)
		if !ok {
			r.fail(prop, "a list of strings", e)
			return nil
		}
		out = append(out, s)
	}
	return out
}

func (r *reader) objects(prop string) []map[string]any {
	v, ok := r.obj[prop]
	if !ok || v == nil {
		return nil
	}
	list, ok := v.([]any)
	if !ok {
		r.fail(prop, "a list of objects", v)
		return nil
	}
	out := make([]map[string]any, 0, len(list))
	for _, e := range list {
		m, ok := e.(map[string]any)
		if !ok {
			r.fail(prop, "a list of objects", e)
			return nil
		}
		out = append(out, m)
	}
	return out
}

func (r *reader) date(prop string) *time.Time {
	s := r.str(prop)
	if s == "" {
		return nil
	}
	t, err := stix.ParseTime(s)
	if err != nil {
		if r.err == nil {
			r.err = fmt.Errorf("%s of %s: %w", prop, r.id, err)
		}
		return nil
	}
	return &t
}

// common maps the properties every type may carry.
func (r *reader) common(d *document.Document, m stix.Meta) {
	d.Name = r.str("name")
	d.Description = r.str("description")
	d.Created = r.date("created")
	d.Modified = r.date("modified")
	if d.Modified == nil && d.Created != nil {
		// A marking definition has no modified: it never changes after it is created.
		c := *d.Created
		d.Modified = &c
	}
	d.Version = r.str("x_mitre_version")
	d.Domains = r.strs("x_mitre_domains")
	d.Platforms = r.strs("x_mitre_platforms")
	d.Contributors = r.strs("x_mitre_contributors")
	d.DataSources = r.strs("x_mitre_data_sources")
	d.Aliases = uniq(append(r.strs("aliases"), r.strs("x_mitre_aliases")...))
	d.Revoked = r.boolean("revoked")
	d.Deprecated = r.boolean("x_mitre_deprecated")
	for _, ref := range r.objects("external_references") {
		src, _ := ref["source_name"].(string)
		if !slices.Contains(AttackSources, src) {
			continue
		}
		if id, ok := ref["external_id"].(string); ok && d.AttackID == "" {
			d.AttackID = id
			d.URL, _ = ref["url"].(string)
		}
	}
	var tactics []string
	for _, p := range r.objects("kill_chain_phases") {
		if name, ok := p["phase_name"].(string); ok && name != "" {
			tactics = append(tactics, name)
		}
	}
	d.Tactics = uniq(tactics)
	d.FirstSeen = r.date("first_seen")
	d.LastSeen = r.date("last_seen")
}

// typed maps the properties of particular types.
func (r *reader) typed(d *document.Document) {
	switch d.Type {
	case "attack-pattern":
		sub := r.boolean("x_mitre_is_subtechnique")
		if parent, _, ok := strings.Cut(d.AttackID, "."); ok {
			sub = true
			d.ParentAttackID = parent
		}
		d.IsSubtechnique = &sub
	case "x-mitre-tactic":
		d.Shortname = r.str("x_mitre_shortname")
	case "relationship":
		d.RelationshipType = r.str("relationship_type")
		d.SourceRef = r.str("source_ref")
		d.TargetRef = r.str("target_ref")
		if r.err == nil && (d.RelationshipType == "" || d.SourceRef == "" || d.TargetRef == "") {
			r.err = fmt.Errorf("%w: relationship %s lacks relationship_type, source_ref or "+
				"target_ref", ErrMalformed, d.ID)
		}
	}
}

// uniq removes repeats and empty strings, keeping the first occurrence's order; nil when empty.
func uniq(list []string) []string {
	var out []string
	for _, s := range list {
		if s != "" && !slices.Contains(out, s) {
			out = append(out, s)
		}
	}
	return out
}
