package e2e

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

var update = flag.Bool("update", false, "rewrite the README's query section from the catalogue")

// query is one analyst question, answered by one find on flat, indexed fields. The README's
// mongosh and Go forms are both rendered from Filter, so they cannot drift apart, and the tests
// run both against the loaded 18.1 data.
type query struct {
	// Question is what an analyst asks.
	Question string
	// Filter selects the answer.
	Filter bson.D
	// Fields are the fields worth showing (the projection).
	Fields []string
	// Want is the number of documents on the three 18.1 domains, counted independently from
	// the raw STIX bundles.
	Want int
	// MongoOnly marks a query that needs real MongoDB (FerretDB v1 lacks the feature); it is
	// documented but not run here.
	MongoOnly string
}

func eq(k string, v any) bson.E { return bson.E{Key: k, Value: v} }

func in(vals ...any) bson.D { return bson.D{eq("$in", bson.A(vals))} }

// queries is the catalogue the README documents.
var queries = []query{
	{Question: "Which groups use T1059 (Command and Scripting Interpreter)?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "uses"),
			eq("target_attack_id", "T1059"), eq("source_type", "intrusion-set")},
		Fields: []string{"source_attack_id", "source_name"}, Want: 17},
	{Question: "What mitigates T1566 (Phishing)?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "mitigates"),
			eq("target_attack_id", "T1566")},
		Fields: []string{"source_attack_id", "source_name"}, Want: 6},
	{Question: "Which software does G0016 (APT29) use?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "uses"),
			eq("source_attack_id", "G0016"), eq("target_type", in("malware", "tool"))},
		Fields: []string{"target_attack_id", "target_name", "target_type"}, Want: 49},
	{Question: "Which techniques does G0016 (APT29) use?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "uses"),
			eq("source_attack_id", "G0016"), eq("target_type", "attack-pattern")},
		Fields: []string{"target_attack_id", "target_name"}, Want: 66},
	{Question: "Which groups use the software S0002 (Mimikatz)?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "uses"),
			eq("target_attack_id", "S0002"), eq("source_type", "intrusion-set")},
		Fields: []string{"source_attack_id", "source_name"}, Want: 51},
	{Question: "Which current techniques of the persistence tactic run on Linux?",
		Filter: bson.D{eq("type", "attack-pattern"), eq("tactics", "persistence"),
			eq("platforms", "Linux"), eq("active", true)},
		Fields: []string{"attack_id", "name"}, Want: 50},
	{Question: "Which techniques belong to the credential-access tactic (any state)?",
		Filter: bson.D{eq("type", "attack-pattern"), eq("tactics", "credential-access")},
		Fields: []string{"attack_id", "name", "revoked", "deprecated"}, Want: 98},
	{Question: "Which current enterprise techniques are top-level (not sub-techniques)?",
		Filter: bson.D{eq("type", "attack-pattern"), eq("is_subtechnique", false),
			eq("domains", "enterprise-attack"), eq("active", true)},
		Fields: []string{"attack_id", "name"}, Want: 216},
	{Question: "What are the sub-techniques of T1059?",
		Filter: bson.D{eq("type", "attack-pattern"), eq("parent_attack_id", "T1059")},
		Fields: []string{"attack_id", "name"}, Want: 13},
	{Question: "Which group is known as Cozy Bear?",
		Filter: bson.D{eq("type", "intrusion-set"), eq("aliases", "Cozy Bear")},
		Fields: []string{"attack_id", "name", "aliases"}, Want: 1},
	{Question: "Which software was used in the campaign C0024 (SolarWinds Compromise)?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "uses"),
			eq("source_attack_id", "C0024"), eq("target_type", in("malware", "tool"))},
		Fields: []string{"target_attack_id", "target_name"}, Want: 11},
	{Question: "Which detection strategies detect T1059.001 (PowerShell)?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "detects"),
			eq("target_attack_id", "T1059.001")},
		Fields: []string{"source_attack_id", "source_name"}, Want: 1},
	{Question: "Which ICS assets does T0800 (Activate Firmware Update Mode) target?",
		Filter: bson.D{eq("type", "relationship"), eq("relationship_type", "targets"),
			eq("source_attack_id", "T0800")},
		Fields: []string{"target_attack_id", "target_name"}, Want: 9},
	{Question: "Which current techniques does the mobile domain have?",
		Filter: bson.D{eq("type", "attack-pattern"), eq("domains", "mobile-attack"),
			eq("active", true)},
		Fields: []string{"attack_id", "name"}, Want: 124},
	{Question: "Which techniques were revoked, and by what?",
		Filter: bson.D{eq("type", "attack-pattern"), eq("revoked", true)},
		Fields: []string{"attack_id", "name", "revoked_by"}, Want: 185},
	{Question: "What changed since 1 October 2025?",
		Filter: bson.D{eq("modified", bson.D{eq("$gte",
			time.Date(2025, 10, 1, 0, 0, 0, 0, time.UTC))})},
		Fields: []string{"type", "attack_id", "name", "stix_modified"}, Want: 5774},
	{Question: "Which techniques mention \"credential dumping\" (full-text search)?",
		Filter:    bson.D{eq("$text", bson.D{eq("$search", "\"credential dumping\"")})},
		Fields:    []string{"attack_id", "name"},
		MongoOnly: "needs a text index; FerretDB v1 has none"},
}

// TestQueryCatalogueInREADME keeps the README's query section equal to the catalogue; run the
// test with -update to rewrite it.
func TestQueryCatalogueInREADME(t *testing.T) {
	path := filepath.Join(repoRoot(t), "README.md")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- queries:begin -->\n", "<!-- queries:end -->"
	i, j := strings.Index(string(b), begin), strings.Index(string(b), end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q ... %q markers", begin, end)
	}
	want := renderQueries()
	got := string(b[i+len(begin) : j])
	if got == want {
		return
	}
	if *update {
		out := string(b[:i+len(begin)]) + want + string(b[j:])
		if err := os.WriteFile(path, []byte(out), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatalf("README.md's query section is out of date; run: go test ./tests/e2e -run " +
		"TestQueryCatalogueInREADME -update")
}

func renderQueries() string {
	var b strings.Builder
	for i, q := range queries {
		fmt.Fprintf(&b, "**%d. %s**", i+1, q.Question)
		if q.MongoOnly != "" {
			fmt.Fprintf(&b, " *(real MongoDB only: %s)*", q.MongoOnly)
		} else {
			fmt.Fprintf(&b, " (%d on ATT&CK 18.1)", q.Want)
		}
		b.WriteString("\n\n```js\n" + mongoshQuery(q) + "\n```\n\n```go\n" + goQuery(q) +
			"\n```\n\n")
	}
	return b.String()
}

func projection(fields []string) bson.D {
	p := bson.D{}
	for _, f := range fields {
		p = append(p, eq(f, 1))
	}
	return p
}

func mongoshQuery(q query) string {
	return fmt.Sprintf("db.objects.find(%s, %s)", jsValue(q.Filter), jsValue(projection(q.Fields)))
}

func goQuery(q query) string {
	return fmt.Sprintf("filter := %s\ncur, err := coll.Find(ctx, filter,\n\t"+
		"options.Find().SetProjection(%s))", goValue(q.Filter, 0), goValue(projection(q.Fields), 1))
}

var jsIdent = regexp.MustCompile(`^[A-Za-z_$][A-Za-z0-9_$]*$`)

// jsValue renders a filter value in mongosh syntax.
func jsValue(v any) string {
	switch x := v.(type) {
	case bson.D:
		parts := make([]string, len(x))
		for i, e := range x {
			k := e.Key
			if !jsIdent.MatchString(k) {
				k = strconv.Quote(k)
			}
			parts[i] = k + ": " + jsValue(e.Value)
		}
		return "{" + strings.Join(parts, ", ") + "}"
	case bson.A:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = jsValue(e)
		}
		return "[" + strings.Join(parts, ", ") + "]"
	case time.Time:
		return fmt.Sprintf("ISODate(%q)", x.UTC().Format(time.RFC3339))
	case string:
		return strconv.Quote(x)
	default:
		return fmt.Sprint(x)
	}
}

// goValue renders a filter value as Go source with the driver's bson types.
func goValue(v any, depth int) string {
	switch x := v.(type) {
	case bson.D:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = fmt.Sprintf("{Key: %q, Value: %s}", e.Key, goValue(e.Value, depth+1))
		}
		return "bson.D{" + strings.Join(parts, ", ") + "}"
	case bson.A:
		parts := make([]string, len(x))
		for i, e := range x {
			parts[i] = goValue(e, depth+1)
		}
		return "bson.A{" + strings.Join(parts, ", ") + "}"
	case time.Time:
		y, m, d := x.Date()
		return fmt.Sprintf("time.Date(%d, %d, %d, 0, 0, 0, 0, time.UTC)", y, m, d)
	case string:
		return strconv.Quote(x)
	default:
		return fmt.Sprint(x)
	}
}

// checkQueries runs every query that FerretDB can answer, through the Go driver and through
// mongosh, and compares both counts with the independently computed ones.
func checkQueries(t *testing.T, mongoURI, db string) {
	t.Helper()
	client, err := mongo.Connect(options.Client().ApplyURI(mongoURI))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	coll := client.Database(db).Collection("objects")
	var script strings.Builder
	script.WriteString("const out = [];\n")
	for i, q := range queries {
		if q.MongoOnly != "" {
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cur, err := coll.Find(ctx, q.Filter, options.Find().SetProjection(projection(q.Fields)))
		if err != nil {
			cancel()
			t.Fatalf("query %d %q: %v", i+1, q.Question, err)
		}
		var docs []bson.M
		if err := cur.All(ctx, &docs); err != nil {
			cancel()
			t.Fatalf("query %d %q: %v", i+1, q.Question, err)
		}
		cancel()
		if len(docs) != q.Want {
			t.Errorf("Go query %d %q: %d documents, want %d", i+1, q.Question, len(docs), q.Want)
		}
		fmt.Fprintf(&script, "out.push([%d, %s.toArray().length]);\n", i, mongoshQuery(q))
	}
	script.WriteString("print(JSON.stringify(out));\n")
	sh := filepath.Join(repoRoot(t), ".local", "node", "node_modules", ".bin", "mongosh")
	if _, err := os.Stat(sh); err != nil {
		t.Fatalf("mongosh not installed at %s; run 'make mongosh' (make test does)", sh)
	}
	file := filepath.Join(t.TempDir(), "queries.js")
	if err := os.WriteFile(file, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	uri := strings.TrimSuffix(mongoURI, "/") + "/" + db
	out, err := exec.CommandContext(ctx, sh, "--quiet", "--norc", uri, file).CombinedOutput()
	if err != nil {
		t.Fatalf("mongosh: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var got [][2]int
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &got); err != nil {
		t.Fatalf("mongosh output: %v\n%s", err, out)
	}
	sort.Slice(got, func(i, j int) bool { return got[i][0] < got[j][0] })
	ran := 0
	for _, g := range got {
		q := queries[g[0]]
		ran++
		if g[1] != q.Want {
			t.Errorf("mongosh query %d %q: %d documents, want %d", g[0]+1, q.Question, g[1], q.Want)
		}
	}
	if ran == 0 {
		t.Fatal("mongosh ran no query")
	}
}
