package runner

import (
	"context"
	"fmt"
	"io"
	"sort"
	"text/tabwriter"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/attack-etl/attack-etl/shared/config"
)

// stageTimes holds how long each stage took, counted from the moment the feed started.
type stageTimes struct {
	feed, transform, load time.Duration
}

// summary is what the run prints at its end.
type summary struct {
	documents    int
	byType       []count
	byCollection []count
	deadLetters  uint64
	times        stageTimes
	total        time.Duration
}

type count struct {
	key string
	n   int
}

// summarize counts the stored documents per type and per collection.
func summarize(ctx context.Context, uri, db, coll string) (*summary, error) {
	client, err := mongo.Connect(options.Client().ApplyURI(uri).
		SetServerSelectionTimeout(30 * time.Second))
	if err != nil {
		return nil, fmt.Errorf("connect to MongoDB at %s: %w", config.RedactURL(uri), err)
	}
	defer func() { _ = client.Disconnect(context.Background()) }()
	c := client.Database(db).Collection(coll)
	s := &summary{}
	if s.byType, err = group(ctx, c, "$type", false); err != nil {
		return nil, err
	}
	if s.byCollection, err = group(ctx, c, "$collections", true); err != nil {
		return nil, err
	}
	for _, t := range s.byType {
		s.documents += t.n
	}
	return s, nil
}

// group counts documents by a field, unwinding it first when it is an array. FerretDB v1 runs
// both stages; neither needs an index.
func group(ctx context.Context, c *mongo.Collection, field string, unwind bool) ([]count, error) {
	pipe := mongo.Pipeline{}
	if unwind {
		pipe = append(pipe, bson.D{{Key: "$unwind", Value: field}})
	}
	pipe = append(pipe, bson.D{{Key: "$group", Value: bson.D{
		{Key: "_id", Value: field}, {Key: "n", Value: bson.D{{Key: "$sum", Value: 1}}}}}})
	cur, err := c.Aggregate(ctx, pipe)
	if err != nil {
		return nil, fmt.Errorf("count documents by %s: %w", field, err)
	}
	var rows []struct {
		ID any `bson:"_id"`
		N  int `bson:"n"`
	}
	if err := cur.All(ctx, &rows); err != nil {
		return nil, fmt.Errorf("count documents by %s: %w", field, err)
	}
	out := make([]count, 0, len(rows))
	for _, r := range rows {
		out = append(out, count{key: fmt.Sprint(r.ID), n: r.N})
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].n != out[j].n {
			return out[i].n > out[j].n
		}
		return out[i].key < out[j].key
	})
	return out, nil
}

func (s *summary) print(w io.Writer, mode Mode, source string) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	what := "extract from " + config.RedactURL(source)
	if mode == ModeReplay {
		what = "replay of the raw stream"
	}
	fmt.Fprintf(w, "\n=== attack-etl run summary (%s) ===\n", what)
	fmt.Fprintf(w, "documents in MongoDB: %d (one per STIX id)\n", s.documents)
	fmt.Fprintf(w, "dead letters in STIX_DLQ: %d\n\n", s.deadLetters)
	fmt.Fprintln(tw, "per collection\tdocuments\t")
	for _, c := range s.byCollection {
		fmt.Fprintf(tw, "%s\t%d\t\n", c.key, c.n)
	}
	fmt.Fprintln(tw, "\t\t")
	fmt.Fprintln(tw, "per type\tdocuments\t")
	for _, c := range s.byType {
		fmt.Fprintf(tw, "%s\t%d\t\n", c.key, c.n)
	}
	_ = tw.Flush()
	feed := "extractor"
	if mode == ModeReplay {
		feed = "replay"
	}
	fmt.Fprintf(w, "\ntime per stage (from the start of the %s):\n", feed)
	fmt.Fprintf(w, "  %-12s %8.1fs\n", feed, s.times.feed.Seconds())
	fmt.Fprintf(w, "  %-12s %8.1fs\n", "transformer", s.times.transform.Seconds())
	fmt.Fprintf(w, "  %-12s %8.1fs\n", "loader", s.times.load.Seconds())
	fmt.Fprintf(w, "  %-12s %8.1fs (with start-up and shut-down)\n", "whole run",
		s.total.Seconds())
}
