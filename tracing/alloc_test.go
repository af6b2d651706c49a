package tracing

import (
	"context"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// raceEnabled is set by race_test.go: the race detector changes allocation
// counts, so exact checks are skipped under -race.
func skipAllocsUnderRace(t *testing.T) {
	t.Helper()
	if raceEnabled {
		t.Skip("allocation counts are not meaningful under -race")
	}
}

func TestAllocsHistogramsNoSDK(t *testing.T) {
	skipAllocsUnderRace(t)
	tel, err := New(Config{}) // global no-op providers
	require.NoError(t, err)
	st := tel.Stage("s")
	ctx := context.Background()
	assert.Zero(t, testing.AllocsPerRun(1000, func() { st.RecordWait(ctx, time.Millisecond) }))
	assert.Zero(t, testing.AllocsPerRun(1000, func() {
		st.RecordWork(ctx, time.Millisecond, OutcomeSucceeded, "")
		st.RecordWork(ctx, time.Millisecond, OutcomeDeadLettered, "timeout")
	}))
}

func TestAllocsHistogramsSDK(t *testing.T) {
	skipAllocsUnderRace(t)
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	tel, err := New(Config{MeterProvider: mp})
	require.NoError(t, err)
	st := tel.Stage("s")
	ctx := context.Background()
	st.RecordWork(ctx, time.Millisecond, OutcomeSucceeded, "") // create the series
	st.RecordWait(ctx, time.Millisecond)
	assert.Zero(t, testing.AllocsPerRun(1000, func() { st.RecordWait(ctx, time.Millisecond) }))
	assert.Zero(t, testing.AllocsPerRun(1000, func() { st.RecordWork(ctx, time.Millisecond, OutcomeSucceeded, "") }))
}

// With an SDK that never samples, Start builds nothing: the SDK creates a
// (non-recording) span and its context, and Start a context for the parent
// when there is one. Everything after start is free. The counts are
// documented in doc.go.
func TestAllocsNeverSample(t *testing.T) {
	skipAllocsUnderRace(t)
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	tel, err := New(Config{TracerProvider: tp})
	require.NoError(t, err)
	require.True(t, tel.TracingEnabled())
	st := tel.Stage("s")
	ctx := context.Background()
	parent := testSpanContext(t, trace.FlagsSampled)
	boom := errors.New("boom")

	start := testing.AllocsPerRun(1000, func() {
		_, span := st.Start(ctx, parent, "corr", time.Millisecond)
		span.End()
	})
	t.Logf("NeverSample Start+End with parent: %v allocs", start)
	assert.LessOrEqual(t, start, 4.0, "the SDK span and its context, and the parent span and its context")

	noParent := testing.AllocsPerRun(1000, func() {
		_, span := st.Start(ctx, trace.SpanContext{}, "corr", time.Millisecond)
		span.End()
	})
	t.Logf("NeverSample Start+End without parent: %v allocs", noParent)
	assert.LessOrEqual(t, noParent, 2.0)

	seq := 0
	lazy := testing.AllocsPerRun(1000, func() {
		_, span := st.StartLazy(ctx, parent,
			func() string { return "corr-" + strconv.Itoa(seq) },
			func() time.Duration { return time.Duration(seq) })
		st.Succeeded(span)
		span.End()
	})
	t.Logf("NeverSample StartLazy+Succeeded+End with parent: %v allocs", lazy)
	assert.LessOrEqual(t, lazy, 4.0)

	_, span := st.Start(ctx, parent, "corr", 0)
	after := testing.AllocsPerRun(1000, func() {
		st.Retry(span, 1, "error", boom, time.Second)
		st.Failed(span, "error", "error", boom, 3)
		st.Succeeded(span)
		st.Filtered(span)
	})
	assert.Zero(t, after, "Retry/Failed/Succeeded/Filtered on a non-recording span")
}
