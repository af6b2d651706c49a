package tracing

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// discardExporter is a SpanExporter that drops everything.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

func benchSpan(b *testing.B, tp trace.TracerProvider) {
	tel, err := New(Config{TracerProvider: tp, Pipeline: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	st := tel.Stage("transform")
	ctx := context.Background()
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:     trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
		TraceFlags: trace.FlagsSampled,
	})
	b.ReportAllocs()
	for b.Loop() {
		_, span := st.Start(ctx, parent, "order-1234", 3*time.Millisecond)
		st.Succeeded(span)
		span.End()
	}
}

func BenchmarkSpan(b *testing.B) {
	b.Run("nosdk", func(b *testing.B) { benchSpan(b, nil) })
	b.Run("neversample", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		benchSpan(b, tp)
	})
	b.Run("sampled", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(
			sdktrace.WithSampler(sdktrace.AlwaysSample()),
			sdktrace.WithSyncer(discardExporter{}))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		benchSpan(b, tp)
	})
}

func benchRecordWork(b *testing.B, mp *sdkmetric.MeterProvider) {
	cfg := Config{Pipeline: "bench"}
	if mp != nil {
		cfg.MeterProvider = mp
	}
	tel, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	st := tel.Stage("transform")
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		st.RecordWait(ctx, time.Millisecond)
		st.RecordWork(ctx, 5*time.Millisecond, OutcomeSucceeded, "")
	}
}

func BenchmarkRecordWork(b *testing.B) {
	b.Run("nosdk", func(b *testing.B) { benchRecordWork(b, nil) })
	b.Run("sdk", func(b *testing.B) {
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		benchRecordWork(b, mp)
	})
}

func BenchmarkTraceparent(b *testing.B) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		SpanID:  trace.SpanID{1, 2, 3, 4, 5, 6, 7, 8},
	})
	b.ReportAllocs()
	for b.Loop() {
		s := Traceparent(sc)
		if _, err := ParseTraceparent(s); err != nil {
			b.Fatal(err)
		}
	}
}
