package tracing

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
)

// newTraced returns a Telemetry on an SDK tracer provider with sampler,
// recording every span.
func newTraced(t *testing.T, sampler sdktrace.Sampler, cfg Config) (*Telemetry, *tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sampler), sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	cfg.TracerProvider = tp
	tel, err := New(cfg)
	require.NoError(t, err)
	return tel, sr, tp
}

func attrMap(kvs []attribute.KeyValue) map[attribute.Key]attribute.Value {
	m := make(map[attribute.Key]attribute.Value, len(kvs))
	for _, kv := range kvs {
		m[kv.Key] = kv.Value
	}
	return m
}

func endedNamed(sr *tracetest.SpanRecorder, name string) []sdktrace.ReadOnlySpan {
	var out []sdktrace.ReadOnlySpan
	for _, s := range sr.Ended() {
		if s.Name() == name {
			out = append(out, s)
		}
	}
	return out
}

func TestStartChildOfParent(t *testing.T) {
	tel, sr, tp := newTraced(t, sdktrace.AlwaysSample(), Config{Pipeline: "orders"})
	_, prev := tp.Tracer("test").Start(context.Background(), "process decode")
	prev.End()

	// The worker's base context carries a span of its own: it must not be
	// the parent when a valid parent is given.
	base, worker := tp.Tracer("test").Start(context.Background(), "worker")
	defer worker.End()

	ctx, span := tel.Stage("enrich").Start(base, prev.SpanContext(), "order-7", 1500*time.Millisecond)
	assert.Equal(t, span, trace.SpanFromContext(ctx))
	tel.Stage("enrich").Succeeded(span)
	span.End()

	spans := endedNamed(sr, "process enrich")
	require.Len(t, spans, 1)
	s := spans[0]
	assert.Equal(t, prev.SpanContext().TraceID(), s.SpanContext().TraceID())
	assert.Equal(t, prev.SpanContext().SpanID(), s.Parent().SpanID())
	assert.False(t, s.Parent().IsRemote())
	assert.Equal(t, trace.SpanKindInternal, s.SpanKind())
	assert.Equal(t, codes.Unset, s.Status().Code)
	assert.Equal(t, InstrumentationName, s.InstrumentationScope().Name)
	assert.Equal(t, InstrumentationVersion, s.InstrumentationScope().Version)

	a := attrMap(s.Attributes())
	assert.Equal(t, "enrich", a[StageKey].AsString())
	assert.Equal(t, "orders", a[PipelineKey].AsString())
	assert.Equal(t, "process", a["messaging.operation.type"].AsString())
	assert.Equal(t, "process", a["messaging.operation.name"].AsString())
	assert.Equal(t, "order-7", a["messaging.message.conversation_id"].AsString())
	assert.Equal(t, 1.5, a[QueueWaitKey].AsFloat64())
	assert.Equal(t, "succeeded", a[OutcomeKey].AsString())
}

func TestStartRemoteParent(t *testing.T) {
	tel, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	parent, err := ParseTraceparent(testTP)
	require.NoError(t, err)
	_, span := tel.Stage("s").Start(context.Background(), parent, "", 0)
	span.End()
	s := sr.Ended()[0]
	assert.Equal(t, parent.TraceID(), s.SpanContext().TraceID())
	assert.Equal(t, parent.SpanID(), s.Parent().SpanID())
	assert.True(t, s.Parent().IsRemote())
	_, hasCorr := attrMap(s.Attributes())[CorrelationIDKey]
	assert.False(t, hasCorr, "empty correlation ID is not set")
}

func TestStartWithoutParent(t *testing.T) {
	tel, sr, tp := newTraced(t, sdktrace.AlwaysSample(), Config{})
	st := tel.Stage("s")

	// No parent, no span in ctx: a new root.
	_, root := st.Start(context.Background(), trace.SpanContext{}, "", 0)
	root.End()
	// No parent: the span in ctx (the one the item was submitted with).
	ctx, submit := tp.Tracer("test").Start(context.Background(), "submit")
	_, child := st.Start(ctx, trace.SpanContext{}, "", 0)
	child.End()
	submit.End()

	spans := endedNamed(sr, "process s")
	require.Len(t, spans, 2)
	assert.False(t, spans[0].Parent().IsValid())
	assert.Equal(t, submit.SpanContext().SpanID(), spans[1].Parent().SpanID())
	assert.Equal(t, submit.SpanContext().TraceID(), spans[1].SpanContext().TraceID())
}

// recordingSampler samples everything and remembers the attributes, kind
// and links each span name was started with.
type recordingSampler struct {
	mu    sync.Mutex
	attrs map[string][]attribute.KeyValue
	kinds map[string]trace.SpanKind
	links map[string]int
}

func (r *recordingSampler) ShouldSample(p sdktrace.SamplingParameters) sdktrace.SamplingResult {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.attrs[p.Name] = append([]attribute.KeyValue(nil), p.Attributes...)
	r.kinds[p.Name] = p.Kind
	r.links[p.Name] = len(p.Links)
	return sdktrace.SamplingResult{
		Decision:   sdktrace.RecordAndSample,
		Tracestate: trace.SpanContextFromContext(p.ParentContext).TraceState(),
	}
}

func (r *recordingSampler) Description() string { return "recordingSampler" }

// The sampler sees the name, kind and links of a span but no attribute: they
// are set after start, on a recording span only.
func TestSamplerSeesNameKindLinks(t *testing.T) {
	rs := &recordingSampler{attrs: map[string][]attribute.KeyValue{}, kinds: map[string]trace.SpanKind{}, links: map[string]int{}}
	tel, sr, _ := newTraced(t, rs, Config{Pipeline: "p"})
	links := Links(nil, testSpanContext(t, trace.FlagsSampled))
	_, span := tel.Stage("load").Start(context.Background(), trace.SpanContext{}, "c-1", 250*time.Millisecond, links...)
	span.End()

	rs.mu.Lock()
	assert.Empty(t, rs.attrs["process load"])
	assert.Equal(t, trace.SpanKindInternal, rs.kinds["process load"])
	assert.Equal(t, 1, rs.links["process load"])
	rs.mu.Unlock()

	require.Len(t, sr.Ended(), 1)
	a := attrMap(sr.Ended()[0].Attributes())
	assert.Equal(t, "load", a[StageKey].AsString())
	assert.Equal(t, "p", a[PipelineKey].AsString())
	assert.Equal(t, "process", a[OperationTypeKey].AsString())
	assert.Equal(t, "process", a[OperationNameKey].AsString())
	assert.Equal(t, "c-1", a[CorrelationIDKey].AsString())
	assert.Equal(t, 0.25, a[QueueWaitKey].AsFloat64())
}

// StartLazy computes the correlation ID and the wait only for a span that
// records them, or the ID for the baggage.
func TestStartLazyComputesOnlyWhatIsUsed(t *testing.T) {
	var ids, waits int
	id := func() string { ids++; return "c-9" }
	wait := func() time.Duration { waits++; return time.Second }
	parent := testSpanContext(t, 0)

	never, _, _ := newTraced(t, sdktrace.NeverSample(), Config{})
	_, span := never.Stage("s").StartLazy(context.Background(), parent, id, wait)
	span.End()
	assert.Equal(t, [2]int{0, 0}, [2]int{ids, waits}, "nothing computed for a span that is not recorded")

	bag, _, _ := newTraced(t, sdktrace.NeverSample(), Config{Baggage: true})
	ctx, span := bag.Stage("s").StartLazy(context.Background(), parent, id, wait)
	span.End()
	assert.Equal(t, [2]int{1, 0}, [2]int{ids, waits}, "the ID goes into the baggage")
	assert.Equal(t, "c-9", baggage.FromContext(ctx).Member(BaggageCorrelationID).Value())

	ids, waits = 0, 0
	always, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{Baggage: true})
	_, span = always.Stage("s").StartLazy(context.Background(), parent, id, wait)
	span.End()
	assert.Equal(t, [2]int{1, 1}, [2]int{ids, waits}, "each computed once")
	a := attrMap(sr.Ended()[0].Attributes())
	assert.Equal(t, "c-9", a[CorrelationIDKey].AsString())
	assert.Equal(t, 1.0, a[QueueWaitKey].AsFloat64())

	_, span = always.Stage("s").StartLazy(context.Background(), parent, nil, nil)
	span.End()
	a = attrMap(sr.Ended()[1].Attributes())
	_, hasID := a[CorrelationIDKey]
	assert.False(t, hasID)
	assert.Equal(t, 0.0, a[QueueWaitKey].AsFloat64())
	assert.Equal(t, parent.SpanID(), sr.Ended()[1].Parent().SpanID())
}

// withParent's context carries the parent as trace.ContextWithSpanContext's
// does, and passes everything else to the context it wraps.
func TestWithParent(t *testing.T) {
	type key struct{}
	base, cancel := context.WithCancel(context.WithValue(context.Background(), key{}, "v"))
	sc := testSpanContext(t, trace.FlagsSampled)
	ctx := withParent(base, sc)

	span := trace.SpanFromContext(ctx)
	assert.Equal(t, sc, span.SpanContext())
	assert.Equal(t, sc, trace.SpanContextFromContext(ctx))
	assert.False(t, span.IsRecording())
	span.SetAttributes(StageKey.String("x")) // no-ops
	span.AddEvent("e")
	span.End()
	assert.Equal(t, "v", ctx.Value(key{}))

	// Derived contexts see the parent and the cancellation.
	child, stop := context.WithCancel(ctx)
	defer stop()
	assert.Equal(t, sc, trace.SpanContextFromContext(child))
	cancel()
	<-child.Done()
	assert.ErrorIs(t, ctx.Err(), context.Canceled)

	// A span started in it is shadowed by the new one.
	_, tp := newTracedProvider(t)
	inner, s := tp.Tracer("test").Start(ctx, "child")
	assert.Equal(t, s, trace.SpanFromContext(inner))
	s.End()
}

// newTracedProvider returns an SDK tracer provider sampling everything.
func newTracedProvider(t *testing.T) (*tracetest.SpanRecorder, *sdktrace.TracerProvider) {
	t.Helper()
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	return sr, tp
}

func TestTransparent(t *testing.T) {
	never, _, _ := newTraced(t, sdktrace.NeverSample(), Config{})
	always, _, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	unsampled := testSpanContext(t, 0)
	remote := unsampled.WithRemote(true)
	sampled := testSpanContext(t, trace.FlagsSampled)
	ts, err := trace.ParseTraceState("vendor=x")
	require.NoError(t, err)
	withState := unsampled.WithTraceState(ts)

	for _, tc := range []struct {
		name   string
		tel    *Telemetry
		parent trace.SpanContext
		want   bool
	}{
		{"unsampled child of a local unsampled parent", never, unsampled, true},
		{"no parent: a new trace", never, trace.SpanContext{}, false},
		{"remote parent", never, remote, false},
		{"unsampled child of a sampled parent", never, sampled, false},
		{"parent with a trace state", never, withState, false},
		{"recording span", always, unsampled, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, span := tc.tel.Stage("s").Start(context.Background(), tc.parent, "", 0)
			assert.Equal(t, tc.want, Transparent(span, tc.parent))
			span.End()
		})
	}
	assert.False(t, Transparent(nil, unsampled))
}

func TestBatchLinks(t *testing.T) {
	tel, sr, tp := newTraced(t, sdktrace.AlwaysSample(), Config{})
	var items []trace.SpanContext
	for range 3 {
		_, s := tp.Tracer("test").Start(context.Background(), "item")
		s.End()
		items = append(items, s.SpanContext())
	}
	links := Links(make([]trace.Link, 0, 4), append(items, trace.SpanContext{})...) // invalid ones are skipped
	require.Len(t, links, 3)

	_, span := tel.Stage("batch").Start(context.Background(), trace.SpanContext{}, "", 0, links...)
	span.End()
	b := endedNamed(sr, "process batch")
	require.Len(t, b, 1)
	assert.False(t, b[0].Parent().IsValid(), "a batch is a new root")
	require.Len(t, b[0].Links(), 3)
	for i, l := range b[0].Links() {
		assert.Equal(t, items[i], l.SpanContext)
		assert.NotEqual(t, items[i].TraceID(), b[0].SpanContext().TraceID())
	}
}

func TestReplayLinksToFailure(t *testing.T) {
	tel, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	failed, err := ParseTraceparent(testTP)
	require.NoError(t, err)
	_, span := tel.Stage("s").Start(context.Background(), trace.SpanContext{}, "id", 0, trace.Link{SpanContext: failed})
	span.End()
	s := sr.Ended()[0]
	require.Len(t, s.Links(), 1)
	assert.Equal(t, failed.SpanID(), s.Links()[0].SpanContext.SpanID())
}

func TestRetryThenSuccess(t *testing.T) {
	tel, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	st := tel.Stage("call")
	_, span := st.Start(context.Background(), trace.SpanContext{}, "x", 0)
	st.Retry(span, 1, "timeout", errors.New("deadline exceeded"), 200*time.Millisecond)
	st.Retry(span, 2, "", nil, time.Second)
	st.Succeeded(span)
	span.End()

	s := sr.Ended()[0]
	assert.Equal(t, codes.Unset, s.Status().Code)
	assert.Equal(t, "succeeded", attrMap(s.Attributes())[OutcomeKey].AsString())
	ev := s.Events()
	require.Len(t, ev, 2)
	assert.Equal(t, "retry", ev[0].Name)
	a := attrMap(ev[0].Attributes)
	assert.Equal(t, int64(1), a[AttemptKey].AsInt64())
	assert.Equal(t, "timeout", a[ErrorTypeKey].AsString())
	assert.Equal(t, "deadline exceeded", a[ExceptionMessageKey].AsString())
	assert.Equal(t, 0.2, a[RetryDelayKey].AsFloat64())

	a = attrMap(ev[1].Attributes)
	assert.Equal(t, int64(2), a[AttemptKey].AsInt64())
	assert.Equal(t, "_OTHER", a[ErrorTypeKey].AsString())
	assert.Equal(t, 1.0, a[RetryDelayKey].AsFloat64())
	_, hasMsg := a[ExceptionMessageKey]
	assert.False(t, hasMsg)
}

func TestFailed(t *testing.T) {
	tel, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	st := tel.Stage("charge")
	_, span := st.Start(context.Background(), trace.SpanContext{}, "x", 0)
	st.Retry(span, 1, "error", errors.New("card declined"), 10*time.Millisecond)
	st.Failed(span, "error", "error", errors.New("card declined"), 2)
	span.End()

	s := sr.Ended()[0]
	assert.Equal(t, "process charge", s.Name())
	assert.Equal(t, codes.Error, s.Status().Code)
	assert.Equal(t, "card declined", s.Status().Description)
	a := attrMap(s.Attributes())
	assert.Equal(t, "error", a[ErrorTypeKey].AsString())
	assert.Equal(t, "error", a[DLQReasonKey].AsString())
	assert.Equal(t, "dead_lettered", a[OutcomeKey].AsString())
	assert.Equal(t, int64(2), a[AttemptsKey].AsInt64())

	ev := s.Events()
	require.Len(t, ev, 2)
	assert.Equal(t, "retry", ev[0].Name)
	assert.Equal(t, "dead_letter", ev[1].Name)
	e := attrMap(ev[1].Attributes)
	assert.Equal(t, "error", e[DLQReasonKey].AsString())
	assert.Equal(t, "error", e[ErrorTypeKey].AsString())
	assert.Equal(t, int64(2), e[AttemptsKey].AsInt64())
	assert.Equal(t, "card declined", e[ExceptionMessageKey].AsString())
}

func TestFailedUnknownReasonNilError(t *testing.T) {
	tel, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	st := tel.Stage("s")
	_, span := st.Start(context.Background(), trace.SpanContext{}, "", 0)
	st.Failed(span, "quota", "", nil, 1)
	span.End()
	s := sr.Ended()[0]
	assert.Equal(t, codes.Error, s.Status().Code)
	assert.Equal(t, "quota", s.Status().Description)
	a := attrMap(s.Attributes())
	assert.Equal(t, "quota", a[DLQReasonKey].AsString())
	assert.Equal(t, "_OTHER", a[ErrorTypeKey].AsString())
}

func TestFilteredAndOtherOutcomes(t *testing.T) {
	tel, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	st := tel.Stage("s")
	for _, f := range []func(trace.Span){
		st.Filtered,
		func(s trace.Span) { st.Outcome(s, OutcomeReturned) },
		func(s trace.Span) { st.Outcome(s, "custom") },
	} {
		_, span := st.Start(context.Background(), trace.SpanContext{}, "", 0)
		f(span)
		span.End()
	}
	var got []string
	for _, s := range sr.Ended() {
		got = append(got, attrMap(s.Attributes())[OutcomeKey].AsString())
		assert.Equal(t, codes.Unset, s.Status().Code)
	}
	assert.Equal(t, []string{"filtered", "returned", "custom"}, got)
}

func TestNeverSampleSpans(t *testing.T) {
	tel, sr, _ := newTraced(t, sdktrace.NeverSample(), Config{})
	st := tel.Stage("s")
	parent := testSpanContext(t, trace.FlagsSampled)
	ctx, span := st.Start(context.Background(), parent, "id", time.Millisecond)
	assert.False(t, span.IsRecording())
	sc := span.SpanContext()
	assert.True(t, sc.IsValid(), "an unsampled span still propagates")
	assert.Equal(t, parent.TraceID(), sc.TraceID())
	assert.False(t, sc.IsSampled())

	// Downstream headers carry the unsampled span.
	h := map[string]string{}
	tel.Inject(ctx, h)
	assert.Equal(t, Traceparent(sc), h["traceparent"])

	st.Retry(span, 1, "error", errors.New("x"), time.Second)
	st.Failed(span, "error", "error", errors.New("x"), 1)
	st.Succeeded(span)
	span.End()
	assert.Empty(t, sr.Started())
	assert.Empty(t, sr.Ended())
}

func TestBaggage(t *testing.T) {
	on, _, _ := newTraced(t, sdktrace.AlwaysSample(), Config{Baggage: true})
	m, err := baggage.NewMemberRaw("tenant", "acme")
	require.NoError(t, err)
	b, err := baggage.New(m)
	require.NoError(t, err)
	base := baggage.ContextWithBaggage(context.Background(), b)

	ctx, span := on.Stage("s").Start(base, trace.SpanContext{}, "order 42", 0)
	span.End()
	got := baggage.FromContext(ctx)
	assert.Equal(t, "order 42", got.Member(BaggageCorrelationID).Value())
	assert.Equal(t, "acme", got.Member("tenant").Value(), "existing members are kept")

	h := map[string]string{}
	on.Inject(ctx, h)
	assert.Contains(t, h["baggage"], "sluice.correlation_id=order%2042")
	out := on.Extract(context.Background(), h)
	assert.Equal(t, "order 42", baggage.FromContext(out).Member(BaggageCorrelationID).Value())

	off, _, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	ctx, span = off.Stage("s").Start(context.Background(), trace.SpanContext{}, "order 42", 0)
	span.End()
	assert.Equal(t, 0, baggage.FromContext(ctx).Len())
}

func TestTracingEnabled(t *testing.T) {
	// Tests never install a global SDK, so the globals are the API's no-ops.
	global, err := New(Config{})
	require.NoError(t, err)
	assert.False(t, global.TracingEnabled(), "global no-op provider")

	noopTP, err := New(Config{TracerProvider: tracenoop.NewTracerProvider()})
	require.NoError(t, err)
	assert.False(t, noopTP.TracingEnabled(), "trace/noop provider")

	disabled, _, _ := newTraced(t, sdktrace.AlwaysSample(), Config{DisableItemSpans: true})
	assert.False(t, disabled.TracingEnabled(), "DisableItemSpans")

	never, _, _ := newTraced(t, sdktrace.NeverSample(), Config{})
	assert.True(t, never.TracingEnabled(), "SDK with NeverSample")

	def, sr, _ := newTraced(t, sdktrace.ParentBased(sdktrace.AlwaysSample()), Config{})
	assert.True(t, def.TracingEnabled(), "SDK default sampler")
	assert.Empty(t, sr.Started(), "the probe is not sampled under a parent-based sampler")

	always, sr, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	assert.True(t, always.TracingEnabled(), "SDK with AlwaysSample")
	assert.Empty(t, sr.Ended(), "the probe is never ended, so never exported")

	var nilT *Telemetry
	assert.False(t, nilT.TracingEnabled())
}

func TestNilTelemetry(t *testing.T) {
	var tel *Telemetry
	st := tel.Stage("s")
	assert.Nil(t, st)
	assert.Equal(t, "", st.Name())
	ctx, span := st.Start(context.Background(), testSpanContext(t, trace.FlagsSampled), "id", 0)
	assert.NotNil(t, ctx)
	assert.False(t, span.IsRecording())
	assert.False(t, span.SpanContext().IsValid())
	st.Retry(span, 1, "", nil, 0)
	st.Succeeded(span)
	st.Filtered(span)
	st.Failed(span, "error", "", nil, 1)
	span.End()
	st.RecordWait(ctx, time.Second)
	st.RecordWork(ctx, time.Second, OutcomeSucceeded, "")
	assert.NotNil(t, tel.Propagator())
	unregister, err := tel.RegisterStages(func() []StageSnapshot { return nil })
	require.NoError(t, err)
	assert.NoError(t, unregister())
}

func TestStageIsCachedAndConcurrent(t *testing.T) {
	tel, _, _ := newTraced(t, sdktrace.AlwaysSample(), Config{})
	var wg sync.WaitGroup
	got := make([]*StageTelemetry, 8)
	for i := range got {
		wg.Go(func() { got[i] = tel.Stage("same") })
	}
	wg.Wait()
	for _, s := range got {
		assert.Same(t, got[0], s)
	}
	assert.Equal(t, "same", got[0].Name())
	assert.NotSame(t, got[0], tel.Stage("other"))
}

func TestPropagatorConfig(t *testing.T) {
	tel, err := New(Config{})
	require.NoError(t, err)
	assert.ElementsMatch(t, DefaultPropagator().Fields(), tel.Propagator().Fields())

	custom := nopPropagator{}
	tel, err = New(Config{Propagator: custom})
	require.NoError(t, err)
	assert.Equal(t, custom, tel.Propagator())
}

// nopPropagator is a do-nothing propagator.
type nopPropagator struct{}

func (nopPropagator) Inject(context.Context, propagation.TextMapCarrier) {}
func (nopPropagator) Extract(ctx context.Context, _ propagation.TextMapCarrier) context.Context {
	return ctx
}
func (nopPropagator) Fields() []string { return nil }
