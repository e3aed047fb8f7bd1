package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestReplayRewritesEveryDocument loads the three 18.1 domains, then runs the documented replay
// command with a raised schema version: every one of the 28,986 documents is rewritten from the
// raw stream, and the TAXII server receives no request.
func TestReplayRewritesEveryDocument(t *testing.T) {
	want := cleanRun(t)
	e := newEnv(t)
	p := startPipeline(e, 1, bundles(t, "18.1"))
	p.finish(20 * time.Minute)
	p.transformer.Stop(30 * time.Second)
	for _, l := range p.loaders {
		l.Stop(30 * time.Second)
	}
	before := e.mirrorRequests()

	res := e.run(30*time.Minute, "etlctl", []string{"TRANSFORMER_SCHEMA_VERSION=2",
		"ETL_LOADERS=2"}, "replay")
	if res.code != 0 {
		t.Fatalf("etlctl replay exited %d\n%s\n%s", res.code, res.stdout, tailText(res.stderr, 30))
	}
	if !strings.Contains(res.stdout, "replay of the raw stream") ||
		!strings.Contains(res.stdout, "documents in MongoDB: 28986") {
		t.Errorf("replay summary:\n%s", res.stdout)
	}
	t.Logf("replay summary:\n%s", res.stdout)
	if after := e.mirrorRequests(); after != before {
		t.Errorf("the TAXII server received %d requests during the replay, want none",
			after-before)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := e.collection().CountDocuments(ctx, bson.D{{Key: "provenance.schema_version",
		Value: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if n != 28986 {
		t.Errorf("%d documents carry schema version 2 after the replay, want 28986", n)
	}
	// The content is what a clean run gives: only the provenance and the rev (which names
	// the schema) changed.
	sameDocuments(t, without(allDocs(t, e.collection()), "_rev"), without(want, "_rev"))
}

// without returns copies of the documents without the named fields.
func without(docs map[string]bson.M, fields ...string) map[string]bson.M {
	out := make(map[string]bson.M, len(docs))
	for id, d := range docs {
		c := bson.M{}
		for k, v := range d {
			c[k] = v
		}
		for _, f := range fields {
			delete(c, f)
		}
		out[id] = c
	}
	return out
}
