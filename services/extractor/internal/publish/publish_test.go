package publish_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/attack-etl/attack-etl/services/extractor/internal/publish"
	"github.com/attack-etl/attack-etl/shared/bus"
	"github.com/attack-etl/attack-etl/shared/localstack/stacktest"
)

func msgs(n int, idPrefix string) []*nats.Msg {
	out := make([]*nats.Msg, n)
	for i := range out {
		m := nats.NewMsg(bus.RawSubject("test", fmt.Sprintf("indicator--%d", i)))
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("%s-%d", idPrefix, i))
		m.Data = []byte(`{}`)
		out[i] = m
	}
	return out
}

func TestPublishAll(t *testing.T) {
	s := stacktest.JetStream(t)
	ctx := context.Background()
	tests := []struct {
		name                     string
		stream                   string
		inFlight                 int
		msgs                     []*nats.Msg
		wantAcked, wantDup, fail int
	}{
		{name: "more messages than the in-flight window are all acked", stream: bus.StreamRaw,
			inFlight: 16, msgs: msgs(1000, "a"), wantAcked: 1000},
		{name: "a re-sent message id is counted as a duplicate", stream: bus.StreamRaw,
			inFlight: 16, msgs: append(msgs(10, "b"), msgs(5, "b")...), wantAcked: 10,
			wantDup: 5},
		{name: "messages JetStream refuses are counted as failures", stream: "ELSEWHERE",
			inFlight: 4, msgs: msgs(20, "c"), fail: 20},
		{name: "nothing to publish", stream: bus.StreamRaw, inFlight: 4},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := publish.New(s.JS, tc.stream, tc.inFlight)
			res := p.PublishAll(ctx, tc.msgs)
			if res.Acked != tc.wantAcked || res.Duplicates != tc.wantDup || res.Failed != tc.fail {
				t.Fatalf("result %+v, want acked %d duplicates %d failed %d", res, tc.wantAcked,
					tc.wantDup, tc.fail)
			}
			if (res.Err != nil) != (tc.fail > 0) {
				t.Errorf("error %v with %d failures", res.Err, res.Failed)
			}
		})
	}
}

func TestPublishAllStopsWithContext(t *testing.T) {
	s := stacktest.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	<-ctx.Done()
	res := publish.New(s.JS, bus.StreamRaw, 8).PublishAll(ctx, msgs(100, "d"))
	if res.Acked+res.Failed+res.Duplicates != 100 || res.Failed == 0 || res.Err == nil {
		t.Fatalf("result %+v: every message must be accounted for, the unsent as failed", res)
	}
}
