package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"github.com/sluicehq/sluice/pipeline"
)

// otelSpec is a parsed -otel flag.
type otelSpec struct {
	kind     string // "", "stdout" or "otlp"
	endpoint string // HOST:PORT for otlp
}

func parseOtel(s string) (otelSpec, error) {
	switch {
	case s == "" || s == "off":
		return otelSpec{}, nil
	case s == "stdout":
		return otelSpec{kind: "stdout"}, nil
	case strings.HasPrefix(s, "otlp="):
		ep := strings.TrimPrefix(s, "otlp=")
		if _, port, err := net.SplitHostPort(ep); err != nil || port == "" {
			return otelSpec{}, fmt.Errorf("-otel %q: give otlp=HOST:PORT (the OTLP/HTTP collector, e.g. otlp=localhost:4318)", s)
		}
		return otelSpec{kind: "otlp", endpoint: ep}, nil
	}
	return otelSpec{}, fmt.Errorf("-otel %q: give stdout or otlp=HOST:PORT", s)
}

// setupTracing installs an SDK tracer provider as the global one, which the library and the
// stages' spans use, when -otel asks for it. The returned function flushes and shuts it down.
func setupTracing(ctx context.Context, spec string, stdout io.Writer) (func(context.Context) error, error) {
	o, err := parseOtel(spec)
	if err != nil {
		return nil, &usageError{err.Error()}
	}
	var (
		exp     sdktrace.SpanExporter
		cleanup = func() {}
	)
	switch o.kind {
	case "":
		return func(context.Context) error { return nil }, nil
	case "stdout":
		exp, err = stdouttrace.New(stdouttrace.WithWriter(stdout))
	case "otlp":
		tr := &http.Transport{Proxy: http.ProxyFromEnvironment, MaxIdleConnsPerHost: 2, IdleConnTimeout: 30 * time.Second}
		cleanup = tr.CloseIdleConnections
		exp, err = otlptracehttp.New(ctx,
			otlptracehttp.WithEndpoint(o.endpoint),
			otlptracehttp.WithInsecure(),
			otlptracehttp.WithHTTPClient(&http.Client{Transport: tr, Timeout: 10 * time.Second}))
	}
	if err != nil {
		return nil, fmt.Errorf("-otel %s: %w", spec, err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "sluice-etl"))),
	)
	otel.SetTracerProvider(tp)
	return func(ctx context.Context) error {
		defer cleanup()
		return tp.Shutdown(ctx)
	}, nil
}

// reportAttributes are the totals of a run, for its span.
func reportAttributes(r pipeline.Report) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.Int64("etl.ingested", r.Ingested),
		attribute.Int64("etl.delivered", r.Delivered),
		attribute.Int64("etl.filtered", r.Filtered),
		attribute.Int64("etl.dead_lettered", r.DeadLettered),
		attribute.Int64("etl.rejected", r.Rejected),
		attribute.Bool("etl.balanced", r.Balanced()),
	}
}
