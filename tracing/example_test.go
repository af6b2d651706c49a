package tracing_test

import (
	"context"
	"fmt"
	"maps"
	"slices"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluicehq/sluice/tracing"
)

// Trace context and baggage travel in a plain map whose keys keep their
// case, for example the headers of a message or a dead-letter record.
func ExampleInject() {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled,
	}))
	member, _ := baggage.NewMemberRaw("tenant", "acme")
	bag, _ := baggage.New(member)
	ctx = baggage.ContextWithBaggage(ctx, bag)

	headers := map[string]string{"Content-Type": "application/json"}
	tracing.Inject(ctx, headers, nil) // nil: W3C trace context + baggage
	for _, k := range slices.Sorted(maps.Keys(headers)) {
		fmt.Printf("%s: %s\n", k, headers[k])
	}

	// On the other side (another process, or a replay):
	out := tracing.Extract(context.Background(), headers, nil)
	sc := trace.SpanContextFromContext(out)
	fmt.Println("trace:", sc.TraceID(), "remote:", sc.IsRemote(), "sampled:", sc.IsSampled())
	fmt.Println("tenant:", baggage.FromContext(out).Member("tenant").Value())

	// Keys are exact: "Traceparent" is not the W3C header.
	c := tracing.MapCarrier{"Traceparent": headers["traceparent"]}
	fmt.Println("valid from \"Traceparent\":", trace.SpanContextFromContext(tracing.Extract(context.Background(), c, nil)).IsValid())

	// Output:
	// Content-Type: application/json
	// baggage: tenant=acme
	// traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
	// trace: 4bf92f3577b34da6a3ce929d0e0e4736 remote: true sampled: true
	// tenant: acme
	// valid from "Traceparent": false
}

func ExampleParseTraceparent() {
	sc, err := tracing.ParseTraceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	fmt.Println(sc.TraceID(), sc.SpanID(), sc.IsSampled(), err)
	fmt.Println(tracing.Traceparent(sc))

	_, err = tracing.ParseTraceparent("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	fmt.Println(err)
	// Output:
	// 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 true <nil>
	// 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
	// tracing: invalid traceparent: version ff is forbidden
}
