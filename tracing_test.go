package sluice_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

func attrs(s sdktrace.ReadOnlySpan) map[attribute.Key]attribute.Value {
	m := map[attribute.Key]attribute.Value{}
	for _, kv := range s.Attributes() {
		m[kv.Key] = kv.Value
	}
	return m
}

const convKey = attribute.Key("messaging.message.conversation_id")

// A 3-stage pipeline with retries, a flat-map and a batch gives each item one trace: a span per
// stage, parented to its span in the previous stage (or to the span it was submitted with);
// retries are events on a span whose status stays unset; the batch span links to its items;
// a dead letter carries its failing span's IDs, and a replay links back to it.
func TestTracesFollowItems(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = tp.Shutdown(context.Background()); _ = mp.Shutdown(context.Background()) }()

	var failNext = map[string]bool{"b": true} // "b" fails once in "fetch", then succeeds
	fetch := stage.Map("fetch", func(ctx context.Context, s string) (string, error) {
		if n, _ := stage.Attempt(ctx); failNext[s] && n == 1 {
			return "", errors.New("flaky")
		}
		if s == "bad" {
			return "", retry.Permanent(errors.New("bad input"))
		}
		return s, nil
	}, stage.Workers(1), stage.Retry(retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, NoJitter: true}))
	split := stage.FlatMap("split", func(_ context.Context, s string) ([]string, error) {
		return []string{s + "1", s + "2"}, nil
	}, stage.Workers(1))
	uploaded := make(chan struct{}, 1)
	upload := stage.Batch("upload", 4, time.Hour, func(_ context.Context, b []string) (int, error) {
		select {
		case uploaded <- struct{}{}:
		default:
		}
		return len(b), nil
	}, stage.Workers(1))
	mem := dlq.NewMemory()
	p, err := pipeline.New("traced", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[string](), fetch), split), upload),
		pipeline.WithDLQ(mem), pipeline.WithTracerProvider(tp), pipeline.WithMeterProvider(mp))
	require.NoError(t, err)

	root, rootSpan := tp.Tracer("test").Start(context.Background(), "request")
	push := pipeline.NewPush[string]()
	job, err := p.Start(context.Background(), push)
	require.NoError(t, err)
	require.NoError(t, push.SubmitItem(context.Background(), pipeline.Item[string]{Value: "bad", Key: "bad"}))
	for _, s := range []string{"a", "b"} {
		require.NoError(t, push.SubmitItem(root, pipeline.Item[string]{Value: s, Key: s}))
	}
	<-uploaded // everything went through: read the metrics while the run is live
	var rm metricdata.ResourceMetrics
	require.NoError(t, reader.Collect(context.Background(), &rm))
	push.Close()
	report, err := job.Wait()
	require.NoError(t, err)
	rootSpan.End()
	requireBalanced(t, report)

	byName := map[string][]sdktrace.ReadOnlySpan{}
	for _, s := range rec.Ended() {
		byName[s.Name()] = append(byName[s.Name()], s)
	}
	require.Len(t, byName["process fetch"], 3)
	require.Len(t, byName["process split"], 2)
	require.Len(t, byName["process upload"], 1)

	spanOf := map[string]sdktrace.ReadOnlySpan{} // by stage and correlation ID
	for _, name := range []string{"process fetch", "process split"} {
		for _, s := range byName[name] {
			a := attrs(s)
			spanOf[name+"/"+a[convKey].AsString()] = s
			assert.Equal(t, trace.SpanKindInternal, s.SpanKind())
			assert.Equal(t, "traced", a["sluice.pipeline"].AsString())
			_, hasWait := a["sluice.queue.wait"]
			assert.True(t, hasWait, "each stage span records the queue wait")
		}
	}
	for _, key := range []string{"a", "b"} {
		f, sp := spanOf["process fetch/"+key], spanOf["process split/"+key]
		require.NotNil(t, f)
		require.NotNil(t, sp)
		assert.Equal(t, rootSpan.SpanContext().TraceID(), f.SpanContext().TraceID(), "the item's trace continues the submitter's")
		assert.Equal(t, rootSpan.SpanContext().SpanID(), f.Parent().SpanID())
		assert.Equal(t, f.SpanContext().TraceID(), sp.SpanContext().TraceID())
		assert.Equal(t, f.SpanContext().SpanID(), sp.Parent().SpanID(), "a stage span is the child of the previous stage's")
		assert.Equal(t, codes.Unset, f.Status().Code)
	}
	b := spanOf["process fetch/b"]
	require.Len(t, b.Events(), 1, "the retry is an event")
	assert.Equal(t, "retry", b.Events()[0].Name)
	assert.Equal(t, codes.Unset, b.Status().Code, "a retried success leaves the status unset")

	bad := spanOf["process fetch/bad"]
	require.NotNil(t, bad)
	assert.Equal(t, codes.Error, bad.Status().Code)
	assert.Equal(t, "permanent", attrs(bad)["error.type"].AsString())
	assert.Equal(t, "permanent", attrs(bad)["sluice.dlq.reason"].AsString())
	recs, _ := mem.Records(context.Background())
	require.Len(t, recs, 1)
	assert.Equal(t, bad.SpanContext().TraceID().String(), recs[0].TraceID)
	assert.Equal(t, bad.SpanContext().SpanID().String(), recs[0].SpanID)
	assert.NotEmpty(t, recs[0].Traceparent)

	up := byName["process upload"][0]
	var linked []trace.SpanID
	for _, l := range up.Links() {
		linked = append(linked, l.SpanContext.SpanID())
	}
	var want []trace.SpanID
	for _, key := range []string{"a", "b"} {
		want = append(want, spanOf["process split/"+key].SpanContext().SpanID(), spanOf["process split/"+key].SpanContext().SpanID())
	}
	assert.ElementsMatch(t, want, linked, "the batch span links to the spans of the items it carries")

	// Metrics: counters from the stages' own counts, histograms of wait and work.
	got := map[string]bool{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			got[m.Name] = true
			if m.Name == "sluice.stage.retries" {
				sum := m.Data.(metricdata.Sum[int64])
				for _, dp := range sum.DataPoints {
					if v, _ := dp.Attributes.Value("sluice.stage"); v.AsString() == "fetch" {
						assert.EqualValues(t, 1, dp.Value)
					}
				}
			}
		}
	}
	for _, name := range []string{"sluice.stage.items.in", "sluice.stage.items", "sluice.stage.retries", "sluice.dlq.records",
		"sluice.stage.queue.usage", "sluice.stage.worker.count", "sluice.stage.queue.wait_time", "sluice.stage.item.duration",
		"sluice.stage.worker.limit", "sluice.stage.worker.resizes", "sluice.stage.circuit.opens"} {
		assert.True(t, got[name], "metric %s", name)
	}

	// Replay: the replayed item's span links to the span of its failure.
	rec.Reset()
	fixed := stage.Map("fetch", func(_ context.Context, s string) (string, error) { return s, nil })
	p2, err := pipeline.New("traced", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[string](), fixed), split), upload),
		pipeline.WithDLQ(mem), pipeline.WithTracerProvider(tp))
	require.NoError(t, err)
	_, err = p2.Replay(context.Background(), mem, pipeline.ReplayOptions{})
	require.NoError(t, err)
	var replayed sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "process fetch" {
			replayed = s
		}
	}
	require.NotNil(t, replayed)
	require.Len(t, replayed.Links(), 1)
	assert.Equal(t, bad.SpanContext().SpanID(), replayed.Links()[0].SpanContext.SpanID())
	assert.Equal(t, "bad", attrs(replayed)[convKey].AsString())
}

// BenchmarkTracingCost is the cost of tracing per item and stage: one op is one item through a
// one-stage pipeline, with no SDK, with the SDK and a never-sample sampler, and sampling every
// span into a no-op exporter.
func BenchmarkTracingCost(b *testing.B) {
	run := func(b *testing.B, opts ...pipeline.Option) {
		id := stage.Map("id", func(_ context.Context, n int) (int, error) { return n, nil }, stage.Workers(2), stage.Capacity(64))
		p, err := pipeline.New("cost", pipeline.Then(pipeline.Input[int](), id), opts...)
		require.NoError(b, err)
		b.ReportAllocs()
		b.ResetTimer()
		items := make([]int, b.N)
		_, err = p.Run(context.Background(), pipeline.FromSlice(items))
		require.NoError(b, err)
	}
	b.Run("nosdk", func(b *testing.B) { run(b) })
	b.Run("off", func(b *testing.B) { run(b, pipeline.WithoutItemSpans()) })
	b.Run("neversample", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
		run(b, pipeline.WithTracerProvider(tp))
	})
	b.Run("sampled", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(discard{}))
		run(b, pipeline.WithTracerProvider(tp))
	})
}

type discard struct{}

func (discard) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discard) Shutdown(context.Context) error                             { return nil }

// A circuit breaker's state change shows on the span of the call that caused it, and a
// refused attempt shows as a circuit_open event.
func TestCircuitBreakerSpanEvents(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	st := stage.Map("dep", func(_ context.Context, n int) (int, error) { return 0, errors.New("down") },
		stage.Workers(1), stage.Retry(retry.NoRetry()),
		stage.CircuitBreaker(stage.BreakerConfig{MinRequests: 1, FailureRate: 1, OpenFor: time.Hour}))
	p, err := pipeline.New("cb", pipeline.Then(pipeline.Input[int](), st), pipeline.WithTracerProvider(tp))
	require.NoError(t, err)
	_, err = p.Run(context.Background(), pipeline.FromSlice([]int{1, 2}))
	require.NoError(t, err)
	var events []string
	for _, s := range rec.Ended() {
		for _, e := range s.Events() {
			if e.Name == "circuit_state" {
				set := attribute.NewSet(e.Attributes...)
				to, _ := set.Value("sluice.circuit.to")
				events = append(events, "state:"+to.AsString())
			} else if e.Name == "circuit_open" {
				events = append(events, "refused")
			}
		}
	}
	assert.ElementsMatch(t, []string{"state:open", "refused"}, events)
}

// spySampler remembers, for each span it is asked about, its name, trace ID and parent, and
// leaves the decision to a parent-based sampler that samples no root.
type spySampler struct {
	mu    sync.Mutex
	calls []sdktrace.SamplingParameters
}

func (s *spySampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	s.mu.Lock()
	p.Attributes, p.Links = nil, nil
	s.calls = append(s.calls, p)
	s.mu.Unlock()
	return sdktrace.ParentBased(sdktrace.NeverSample()).ShouldSample(p)
}

func (s *spySampler) Description() string { return "spySampler" }

// An item's unsampled spans form one unsampled trace through every stage: each span after the
// first has a local, unsampled parent in the item's trace, so a parent-based sampler drops it
// too; an item submitted under a remote unsampled parent stays in that parent's trace.
func TestUnsampledTraceStaysOneTrace(t *testing.T) {
	spy := &spySampler{}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(spy), sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	id := func(name string) *stage.Stage[int, int] {
		return stage.Map(name, func(_ context.Context, n int) (int, error) { return n, nil }, stage.Workers(2))
	}
	p, err := pipeline.New("unsampled", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](), id("a")), id("b")), id("c")),
		pipeline.WithTracerProvider(tp))
	require.NoError(t, err)

	remote := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9, 9},
		SpanID:  trace.SpanID{9, 9, 9, 9, 9, 9, 9, 9},
		Remote:  true,
	})
	push := pipeline.NewPush[int]()
	job, err := p.Start(context.Background(), push)
	require.NoError(t, err)
	const n = 50
	for i := range n {
		ctx := context.Background()
		if i == 0 {
			ctx = trace.ContextWithRemoteSpanContext(ctx, remote)
		}
		require.NoError(t, push.SubmitItem(ctx, pipeline.Item[int]{Value: i}))
	}
	push.Close()
	report, err := job.Wait()
	require.NoError(t, err)
	requireBalanced(t, report)
	assert.Empty(t, rec.Started(), "nothing is recorded")

	traces := map[string]map[trace.TraceID]bool{}
	spy.mu.Lock()
	defer spy.mu.Unlock()
	for _, c := range spy.calls {
		if c.Name == "sluice.probe" {
			continue
		}
		if traces[c.Name] == nil {
			traces[c.Name] = map[trace.TraceID]bool{}
		}
		traces[c.Name][c.TraceID] = true
		parent := trace.SpanContextFromContext(c.ParentContext)
		if c.Name == "process a" {
			if c.TraceID == remote.TraceID() {
				assert.Equal(t, remote, parent, "the submitted parent")
			} else {
				assert.False(t, parent.IsValid(), "an item without a parent starts a trace")
			}
			continue
		}
		require.True(t, parent.IsValid(), c.Name)
		assert.False(t, parent.IsRemote(), c.Name)
		assert.False(t, parent.IsSampled(), c.Name)
		assert.Equal(t, c.TraceID, parent.TraceID(), "%s: a child in the item's trace", c.Name)
		assert.NotEqual(t, remote.SpanID(), parent.SpanID(), "%s: the child of a span of this pipeline", c.Name)
	}
	require.Len(t, traces["process a"], n, "one trace per item")
	assert.True(t, traces["process a"][remote.TraceID()])
	assert.Equal(t, traces["process a"], traces["process b"])
	assert.Equal(t, traces["process a"], traces["process c"])
}
