package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// TestReplayRewritesEveryDocument loads the three 18.1 domains, then runs the documented
// replay command with a raised schema version and two loaders: every one of the 28,986
// documents is rewritten from the raw stream (on FerretDB by bulk deletes and inserts, see
// store.swap), the content is what the load gave, and the TAXII server receives no request.
func TestReplayRewritesEveryDocument(t *testing.T) {
	files := bundles(t, "18.1")
	const documents = 28986
	e := newEnv(t)
	p := startPipeline(e, 1, files)
	p.finish(20 * time.Minute)
	p.transformer.Stop(30 * time.Second)
	for _, l := range p.loaders {
		l.Stop(30 * time.Second)
	}
	requests := e.mirrorRequests()
	before := allDocs(t, e.collection())

	res := e.run(30*time.Minute, "etlctl", []string{"TRANSFORMER_SCHEMA_VERSION=2",
		"ETL_LOADERS=2"}, "replay")
	if res.code != 0 {
		t.Fatalf("etlctl replay exited %d\n%s\n%s", res.code, res.stdout, tailText(res.stderr, 30))
	}
	if !strings.Contains(res.stdout, "replay of the raw stream") ||
		!strings.Contains(res.stdout, fmt.Sprintf("documents in MongoDB: %d", documents)) {
		t.Errorf("replay summary:\n%s", res.stdout)
	}
	t.Logf("replay summary:\n%s", res.stdout)
	if after := e.mirrorRequests(); after != requests {
		t.Errorf("the TAXII server received %d requests during the replay, want none",
			after-requests)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	n, err := e.collection().CountDocuments(ctx, bson.D{{Key: "provenance.schema_version",
		Value: 2}})
	if err != nil {
		t.Fatal(err)
	}
	if n != documents {
		t.Errorf("%d documents carry schema version 2 after the replay, want %d", n, documents)
	}
	// The loaders rewrote in bulk, not with one replaceOne per document.
	swapped := 0
	for _, l := range []string{"loader-1", "loader-2"} {
		swapped += countInLog(t, filepath.Join(e.dir, "etl", "logs", l+".log"), "swapped")
	}
	if swapped < documents*9/10 {
		t.Errorf("the loaders swapped %d documents in bulk, want nearly all %d", swapped,
			documents)
	}
	// The content is what the load gave: only the provenance and the rev (which names the
	// schema) changed.
	sameDocuments(t, without(allDocs(t, e.collection()), "_rev"), without(before, "_rev"))
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
