package flatten

import (
	"fmt"
	"slices"
	"strings"

	"github.com/attack-etl/attack-etl/shared/document"
	"github.com/attack-etl/attack-etl/shared/stix"
)

// Summary is what a relationship document shows of one of its ends.
type Summary struct {
	Type       string `json:"type"`
	AttackID   string `json:"attack_id,omitempty"`
	Name       string `json:"name,omitempty"`
	Revoked    bool   `json:"revoked,omitempty"`
	Deprecated bool   `json:"deprecated,omitempty"`
	// Modified is the end's sortable STIX version stamp (stix.SortableStamp).
	Modified string `json:"modified"`
	// Collections are the collection keys the end was seen in, for re-emitting it.
	Collections []string `json:"collections,omitempty"`
	// Schema is the schema version that made the summary: for one STIX version, a summary of
	// a higher schema replaces one of a lower schema.
	Schema int `json:"schema,omitempty"`
}

// SummaryOf returns the summary of a flattened object.
func SummaryOf(d *document.Document) Summary {
	stamp, _ := stix.SortableStamp(d.STIXModified)
	return Summary{Type: d.Type, AttackID: d.AttackID, Name: d.Name, Revoked: d.Revoked,
		Deprecated: d.Deprecated, Modified: stamp, Collections: slices.Clone(d.Collections),
		Schema: d.Provenance.SchemaVersion}
}

// SameEnd tells whether two summaries show the same thing to a relationship.
func (s Summary) SameEnd(o Summary) bool {
	return s.Type == o.Type && s.AttackID == o.AttackID && s.Name == o.Name &&
		s.Revoked == o.Revoked && s.Deprecated == o.Deprecated && s.Modified == o.Modified
}

// unknownStamp stands for the version of an end not seen yet: it has the width of a sortable
// stamp and sorts before every real one, so that derived stamps compare field by field.
var unknownStamp = strings.Repeat("0", len("2006-01-02T15:04:05.000000000Z"))

// endStamp orders what a relationship knows of one end: the end's version, then the schema
// that summarised it; fixed width, all zeros for an unknown end.
func endStamp(s *Summary) string {
	if s == nil {
		return unknownStamp + "s0000"
	}
	return fmt.Sprintf("%ss%04d", s.Modified, s.Schema)
}

// ApplyEnds fills a relationship document's end fields from the ends' summaries (nil when the
// end is not known yet), sets Active, and returns the derived stamp for Seal: the stamps of the
// source and target ends (sortable modified and summary schema, see endStamp) joined by ','.
// An unknown end's stamp is all zeros and every stamp has the same width, so a document made
// with newer or more end information always has the greater stamp.
func ApplyEnds(d *document.Document, src, tgt *Summary) string {
	active := !d.Revoked && !d.Deprecated
	if src != nil {
		d.SourceType, d.SourceAttackID, d.SourceName = src.Type, src.AttackID, src.Name
		active = active && !src.Revoked && !src.Deprecated
	} else {
		d.SourceType = typeOfID(d.SourceRef)
	}
	if tgt != nil {
		d.TargetType, d.TargetAttackID, d.TargetName = tgt.Type, tgt.AttackID, tgt.Name
		active = active && !tgt.Revoked && !tgt.Deprecated
	} else {
		d.TargetType = typeOfID(d.TargetRef)
	}
	d.Active = active
	return endStamp(src) + "," + endStamp(tgt)
}

// RevokedBy is the link from a revoked object to the object that replaces it, read from a
// revoked-by relationship.
type RevokedBy struct {
	// By is the id of the replacing object (the relationship's target_ref).
	By string `json:"by"`
	// Relationship is the id of the revoked-by relationship.
	Relationship string `json:"relationship"`
	// Modified is the relationship's sortable version stamp.
	Modified string `json:"modified"`
}

// RevokedByOf returns the link a revoked-by relationship document states, and whether it is one.
func RevokedByOf(d *document.Document) (RevokedBy, bool) {
	if d.Type != "relationship" || d.RelationshipType != "revoked-by" {
		return RevokedBy{}, false
	}
	stamp, _ := stix.SortableStamp(d.STIXModified)
	return RevokedBy{By: d.TargetRef, Relationship: d.ID, Modified: stamp}, true
}

// ApplyRevokedBy sets a revoked object's RevokedBy and returns the derived stamp for Seal: for
// a revoked object "rb" and the link's stamp (all zeros while no link is known), so that the
// document that knows the replacement has the greater rev; "" for other objects.
func ApplyRevokedBy(d *document.Document, rb *RevokedBy) string {
	if !d.Revoked || d.Type == "relationship" {
		return ""
	}
	if rb == nil {
		return "rb" + unknownStamp
	}
	d.RevokedBy = rb.By
	return "rb" + rb.Modified
}

// typeOfID returns the type part of a STIX id.
func typeOfID(id string) string {
	for i := 0; i+1 < len(id); i++ {
		if id[i] == '-' && id[i+1] == '-' {
			return id[:i]
		}
	}
	return ""
}
