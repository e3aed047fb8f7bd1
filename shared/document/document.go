// Package document defines the flattened, query-friendly document that the transformer
// publishes and the loader stores: one per STIX object, keyed by the STIX id.
//
// The JSON form travels on the STIX_FLAT stream; the BSON form is what MongoDB holds. Both use
// the same field names, which the README documents one by one.
package document

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"

	"github.com/attack-etl/attack-etl/shared/stix"
)

// SchemaVersion is the version of the document's shape. Raising it and replaying the raw stream
// rewrites every stored document, since the version guard orders equal STIX versions by it.
const SchemaVersion = 1

// Document is the flattened form of one STIX object.
type Document struct {
	// ID is the STIX id, such as attack-pattern--0f4a0c76-ab2d-4cb0-85d3-3f0efb8cba0d.
	ID string `json:"_id" bson:"_id"`
	// Type is the STIX type, such as attack-pattern or intrusion-set.
	Type string `json:"type" bson:"type"`
	// Rev orders versions of one object; see MakeRev. A stored document is only replaced by a
	// document whose Rev is greater.
	Rev string `json:"_rev" bson:"_rev"`
	// STIXModified is the object's modified timestamp exactly as STIX wrote it (created for
	// objects without modified).
	STIXModified string `json:"stix_modified" bson:"stix_modified"`

	AttackID    string     `json:"attack_id,omitempty" bson:"attack_id,omitempty"`
	URL         string     `json:"url,omitempty" bson:"url,omitempty"`
	Name        string     `json:"name,omitempty" bson:"name,omitempty"`
	Description string     `json:"description,omitempty" bson:"description,omitempty"`
	Created     *time.Time `json:"created,omitempty" bson:"created,omitempty"`
	Modified    *time.Time `json:"modified,omitempty" bson:"modified,omitempty"`
	// Version is the ATT&CK object version (x_mitre_version), such as "1.2".
	Version string `json:"version,omitempty" bson:"version,omitempty"`

	// Domains are the ATT&CK domains (x_mitre_domains), merged over every copy of the object.
	Domains []string `json:"domains,omitempty" bson:"domains,omitempty"`
	// Collections are the keys of the collections that serve the object, merged by the loader.
	Collections []string `json:"collections" bson:"collections"`

	Tactics      []string `json:"tactics,omitempty" bson:"tactics,omitempty"`
	Platforms    []string `json:"platforms,omitempty" bson:"platforms,omitempty"`
	Aliases      []string `json:"aliases,omitempty" bson:"aliases,omitempty"`
	Contributors []string `json:"contributors,omitempty" bson:"contributors,omitempty"`
	DataSources  []string `json:"data_sources,omitempty" bson:"data_sources,omitempty"`
	// IsSubtechnique is set on every attack-pattern, true or false, so that top-level
	// techniques can be selected with is_subtechnique: false.
	IsSubtechnique *bool  `json:"is_subtechnique,omitempty" bson:"is_subtechnique,omitempty"`
	ParentAttackID string `json:"parent_attack_id,omitempty" bson:"parent_attack_id,omitempty"`
	// Shortname is a tactic's x_mitre_shortname: the phase name that techniques list in Tactics.
	Shortname string `json:"shortname,omitempty" bson:"shortname,omitempty"`
	// FirstSeen and LastSeen are a campaign's first_seen and last_seen.
	FirstSeen *time.Time `json:"first_seen,omitempty" bson:"first_seen,omitempty"`
	LastSeen  *time.Time `json:"last_seen,omitempty" bson:"last_seen,omitempty"`

	Revoked    bool `json:"revoked" bson:"revoked"`
	Deprecated bool `json:"deprecated" bson:"deprecated"`
	// Active is false when the object is revoked or deprecated, and for a relationship also
	// when either end is, as ATT&CK's usage guide prescribes.
	Active bool `json:"active" bson:"active"`
	// RevokedBy is the id of the object that replaces a revoked one.
	RevokedBy string `json:"revoked_by,omitempty" bson:"revoked_by,omitempty"`

	// Relationship ends, set on relationship documents only.
	RelationshipType string `json:"relationship_type,omitempty" bson:"relationship_type,omitempty"`
	SourceRef        string `json:"source_ref,omitempty" bson:"source_ref,omitempty"`
	TargetRef        string `json:"target_ref,omitempty" bson:"target_ref,omitempty"`
	SourceType       string `json:"source_type,omitempty" bson:"source_type,omitempty"`
	SourceAttackID   string `json:"source_attack_id,omitempty" bson:"source_attack_id,omitempty"`
	SourceName       string `json:"source_name,omitempty" bson:"source_name,omitempty"`
	TargetType       string `json:"target_type,omitempty" bson:"target_type,omitempty"`
	TargetAttackID   string `json:"target_attack_id,omitempty" bson:"target_attack_id,omitempty"`
	TargetName       string `json:"target_name,omitempty" bson:"target_name,omitempty"`

	// Details holds the type-specific fields (such as a tactic's shortname or a campaign's
	// first_seen) and unmapped custom properties, with keys made safe for MongoDB.
	Details Details `json:"details,omitempty" bson:"details,omitempty"`

	Provenance Provenance `json:"provenance" bson:"provenance"`

	// Removed (removed_from_source) is set by the loader, never by the transformer: when the
	// full syncs of every collection that served the object no longer served it.
	Removed *time.Time `json:"removed_from_source,omitempty" bson:"removed_from_source,omitempty"`
	// Replayed is not stored: the loader sets it for a document that a replay re-derived
	// (the Replay header), which rewrites content but never changes which collections serve
	// the object.
	Replayed bool `json:"-" bson:"-"`
}

// Provenance says where a document came from and which code shaped it.
type Provenance struct {
	// SchemaVersion is the SchemaVersion of the transformer that wrote the document.
	SchemaVersion int `json:"schema_version" bson:"schema_version"`
	// Source is the TAXII API root or bundle location the object was read from.
	Source string `json:"source,omitempty" bson:"source,omitempty"`
	// RunID names the extractor run that published the object.
	RunID string `json:"run_id,omitempty" bson:"run_id,omitempty"`
	// TransformedAt is when the transformer shaped this version.
	TransformedAt *time.Time `json:"transformed_at,omitempty" bson:"transformed_at,omitempty"`
	// LoadedAt is when a loader last wrote the document.
	LoadedAt *time.Time `json:"loaded_at,omitempty" bson:"loaded_at,omitempty"`
}

// MakeRev builds the version guard of a document: the sortable STIX modified stamp, the schema
// version, a stamp of derived information (such as the versions of a relationship's resolved
// ends; empty when none) and a hash of the content. Comparing two revs as strings orders two
// versions of one object: a newer STIX version wins; for the same STIX version a newer schema,
// then more recent derived information, wins; the hash makes the order total, so that copies of
// one version that differ still converge on the same document whatever their arrival order.
func MakeRev(stixModified string, schema int, derived, contentHash string) (string, error) {
	stamp, err := stix.SortableStamp(stixModified)
	if err != nil {
		return "", fmt.Errorf("rev of %q: %w", stixModified, err)
	}
	// The separator after the variable-length derived stamp sorts below every character a
	// derived stamp uses (digits, letters, '-', ',', '.', ':'), so that a derived stamp that
	// is a prefix of another, such as the empty one, sorts first.
	return fmt.Sprintf("%s|s%04d|%s#%s", stamp, schema, derived, contentHash), nil
}

// ContentHash hashes what a document says, leaving out what the loader merges or stamps
// (collections, domains, provenance and the rev itself), so that equal content hashes equal.
func ContentHash(d Document) (string, error) {
	d.Rev = ""
	d.Collections = nil
	d.Domains = nil
	d.Provenance = Provenance{}
	b, err := json.Marshal(d)
	if err != nil {
		return "", fmt.Errorf("hash %s: %w", d.ID, err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8]), nil
}

// Seal sorts the merged lists, fills the content hash into Rev, and must be called by the
// transformer last, after every other field is set. The derived stamp orders derived data.
func (d *Document) Seal(derived string) error {
	d.Collections = SortedUnion(d.Collections)
	d.Domains = SortedUnion(d.Domains)
	h, err := ContentHash(*d)
	if err != nil {
		return err
	}
	rev, err := MakeRev(d.STIXModified, d.Provenance.SchemaVersion, derived, h)
	if err != nil {
		return err
	}
	d.Rev = rev
	return nil
}

// SortedUnion returns the sorted, de-duplicated union of the lists; nil when all are empty.
func SortedUnion(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	if len(out) == 0 {
		return nil
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Details holds a document's type-specific and unmapped properties. Its BSON form lists keys in
// sorted order at every depth (a Go map has none), so that equal details are stored byte for
// byte the same whichever process or run wrote them.
type Details map[string]any

// MarshalBSON encodes the details with sorted keys.
func (d Details) MarshalBSON() ([]byte, error) {
	return bson.Marshal(sortedValue(map[string]any(d)))
}

// sortedValue turns maps into documents with sorted keys, at every depth.
func sortedValue(v any) any {
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		doc := make(bson.D, 0, len(x))
		for _, k := range keys {
			doc = append(doc, bson.E{Key: k, Value: sortedValue(x[k])})
		}
		return doc
	case Details:
		return sortedValue(map[string]any(x))
	case []any:
		out := make(bson.A, len(x))
		for i, e := range x {
			out[i] = sortedValue(e)
		}
		return out
	default:
		return v
	}
}
