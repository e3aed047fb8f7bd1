package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"go.uber.org/zap"

	"github.com/attack-etl/attack-etl/services/extractor/internal/source"
	"github.com/attack-etl/attack-etl/services/extractor/internal/sync"
	"github.com/attack-etl/attack-etl/services/extractor/internal/taxii"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/config"
	"github.com/attack-etl/attack-etl/shared/ops"
)

// origin is where a run's collections come from: a TAXII server or bundle files.
type origin interface {
	// name says what is read, without credentials.
	name() string
	// requests counts the HTTP requests made so far.
	requests() int64
	// checkpoints reports whether the source has added_after checkpoints.
	checkpoints() bool
	// collections lists the collections to sync.
	collections(ctx context.Context) ([]sync.Collection, runInfo, error)
}

// runInfo names the API roots and releases a run read.
type runInfo struct {
	roots, releases []string
}

func newSource(cfg *config.Values, log *zap.Logger, m *ops.Metrics) (origin, error) {
	want := cfg.Strings("TAXII_COLLECTIONS")
	if bundles := cfg.Strings("SOURCE_BUNDLE"); len(bundles) > 0 {
		return &bundleSource{paths: bundles, want: want}, nil
	}
	timeout, err := cfg.Duration("TAXII_TIMEOUT")
	if err != nil {
		return nil, err
	}
	retries, err := cfg.Int("TAXII_RETRIES")
	if err != nil {
		return nil, err
	}
	base, err := cfg.Duration("TAXII_RETRY_BASE")
	if err != nil {
		return nil, err
	}
	rpm, err := cfg.Int("TAXII_REQUESTS_PER_MINUTE")
	if err != nil {
		return nil, err
	}
	pageSize, err := cfg.Int("TAXII_PAGE_SIZE")
	if err != nil {
		return nil, err
	}
	maxPages, err := cfg.Int("TAXII_MAX_PAGES")
	if err != nil {
		return nil, err
	}
	url := cfg.String("TAXII_API_URL")
	c, err := taxii.New(url, taxii.Options{
		User: cfg.String("TAXII_USER"), Password: cfg.String("TAXII_PASSWORD"),
		Token: cfg.String("TAXII_TOKEN"), CAFile: cfg.String("TAXII_CA_FILE"),
		CertFile: cfg.String("TAXII_CERT_FILE"), KeyFile: cfg.String("TAXII_KEY_FILE"),
		Timeout: timeout, Retries: retries, RetryBase: base,
		RequestsPerMinute: float64(rpm),
		OnRetry: func(r taxii.Retry) {
			log.Warn("TAXII request failed; retrying", zap.String("url", r.URL),
				zap.Int("attempt", r.Attempt), zap.Duration("wait", r.Wait),
				zap.String("reason", config.RedactText(r.Reason)))
			m.Retries.WithLabelValues(sync.Stage, r.Kind).Inc()
		},
		OnRequest: func(r taxii.Request) {
			code := "error"
			if r.Status > 0 {
				code = strconv.Itoa(r.Status)
			}
			m.RequestDuration.WithLabelValues(r.Operation, code).Observe(r.Took.Seconds())
		},
	})
	if err != nil {
		return nil, err
	}
	return &taxiiSource{client: c, url: url, want: want, log: log,
		query: taxii.ObjectsQuery{Limit: pageSize, MaxPages: maxPages}}, nil
}

// wanted reports whether a collection is selected by TAXII_COLLECTIONS (ids or titles, any
// case); an empty selection takes every collection.
func wanted(want []string, id, title string) bool {
	if len(want) == 0 {
		return true
	}
	for _, w := range want {
		if strings.EqualFold(w, id) || strings.EqualFold(w, title) ||
			strings.EqualFold(w, bus.CollectionKey(id, title)) {
			return true
		}
	}
	return false
}

// missing returns the wanted names that matched no collection.
func missing(want []string, found [][2]string) []string {
	var out []string
	for _, w := range want {
		ok := false
		for _, f := range found {
			if wanted([]string{w}, f[0], f[1]) {
				ok = true
				break
			}
		}
		if !ok {
			out = append(out, w)
		}
	}
	return out
}

type taxiiSource struct {
	client *taxii.Client
	url    string
	want   []string
	query  taxii.ObjectsQuery
	log    *zap.Logger
}

func (t *taxiiSource) name() string      { return taxii.StripCredentials(t.url) }
func (t *taxiiSource) requests() int64   { return t.client.Requests() }
func (t *taxiiSource) checkpoints() bool { return true }

func (t *taxiiSource) collections(ctx context.Context) ([]sync.Collection, runInfo, error) {
	var info runInfo
	roots, skipped, err := t.client.Resolve(ctx, t.url)
	for _, s := range skipped {
		t.log.Warn("API root listed by discovery answers 404; skipped",
			zap.String("api_root", s.URL), zap.String("error", config.RedactText(s.Err.Error())))
	}
	if err != nil {
		return nil, info, err
	}
	var out []sync.Collection
	var found [][2]string
	for _, r := range roots {
		info.roots = append(info.roots, r.URL)
		rel := r.Release
		if rel == "" {
			rel = "latest"
		}
		info.releases = append(info.releases, rel)
		t.log.Info("API root", zap.String("api_root", r.URL), zap.String("release", rel),
			zap.Int("collections", len(r.Collections)))
		for _, col := range r.Collections {
			found = append(found, [2]string{col.ID, col.Title})
			if !wanted(t.want, col.ID, col.Title) {
				continue
			}
			if !col.CanRead {
				t.log.Warn("collection is not readable (can_read false); skipped",
					zap.String("collection_id", col.ID), zap.String("title", col.Title))
				continue
			}
			root, id := r.URL, col.ID
			out = append(out, sync.Collection{
				Key: bus.CollectionKey(col.ID, col.Title), ID: col.ID, Title: col.Title,
				Source: root, CheckpointKey: sync.CheckpointKey(root, col.ID),
				Pages: func(ctx context.Context, addedAfter string, fn func(sync.Page) error) error {
					q := t.query
					q.AddedAfter = addedAfter
					return t.client.Objects(ctx, root, id, q, func(p *taxii.Page) error {
						return fn(sync.Page{Number: p.Number, Objects: p.Objects,
							DateAddedLast: p.DateAddedLast})
					})
				},
			})
		}
	}
	if m := missing(t.want, found); len(m) > 0 {
		return nil, info, fmt.Errorf("TAXII_COLLECTIONS names %q, which %s does not serve",
			m, t.name())
	}
	return out, info, nil
}

type bundleSource struct {
	paths []string
	want  []string
}

func (b *bundleSource) name() string {
	return config.RedactURL(strings.Join(b.paths, ","))
}
func (b *bundleSource) requests() int64   { return 0 }
func (b *bundleSource) checkpoints() bool { return false }

func (b *bundleSource) collections(ctx context.Context) ([]sync.Collection, runInfo, error) {
	var out []sync.Collection
	var found [][2]string
	for _, p := range b.paths {
		// Reading every bundle up front finds a bad path before anything is published.
		bd, err := source.Read(ctx, p, source.Options{})
		if err != nil {
			return nil, runInfo{}, err
		}
		found = append(found, [2]string{bd.CollectionID, bd.Title})
		if !wanted(b.want, bd.CollectionID, bd.Title) {
			continue
		}
		objs := bd.Objects
		out = append(out, sync.Collection{
			Key: bus.CollectionKey(bd.CollectionID, bd.Title), ID: bd.CollectionID,
			Title: bd.Title, Source: bd.Path,
			Pages: func(_ context.Context, _ string, fn func(sync.Page) error) error {
				return fn(sync.Page{Number: 1, Objects: objs})
			},
		})
	}
	if m := missing(b.want, found); len(m) > 0 {
		return nil, runInfo{}, fmt.Errorf("TAXII_COLLECTIONS names %q, which no bundle holds", m)
	}
	return out, runInfo{roots: b.paths}, nil
}
