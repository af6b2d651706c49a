package tracing

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

// Start starts the span of one item (or one batch) in this stage, named
// "process <stage>", of kind [trace.SpanKindInternal], and returns it with a
// context that carries it. The caller ends the span with span.End() once the
// item is finished in this stage, after calling one of [StageTelemetry.Succeeded],
// [StageTelemetry.Filtered], [StageTelemetry.Outcome] or [StageTelemetry.Failed].
//
// ctx is the worker's base context; it supplies values (and baggage) but its
// span, if any, is the parent only when parent is not valid. A valid parent
// (the item's span in the previous stage, or the span context the item was
// submitted or replayed with) is the parent, local or remote as its
// IsRemote says. With neither, the span is a new root.
//
// Every attribute a sampler may use is given at start: sluice.stage,
// sluice.pipeline (if configured), messaging.operation.type and
// messaging.operation.name ("process"), sluice.queue.wait (wait in seconds)
// and messaging.message.conversation_id (if correlationID is not empty).
// links are added at start too: a batch links to the spans of the items it
// carries (see [Links]), a replayed item to the span that dead-lettered it.
//
// With [Config.Baggage], the returned context also carries correlationID in
// the baggage member [BaggageCorrelationID].
//
// Start always creates a span; stage code calls it only when
// [Telemetry.TracingEnabled] reports true.
func (s *StageTelemetry) Start(ctx context.Context, parent trace.SpanContext, correlationID string,
	wait time.Duration, links ...trace.Link) (context.Context, trace.Span) {
	if s == nil {
		return ctx, noop.Span{}
	}
	// One allocation holds the parent, the attributes and the options.
	a := new(startArgs)
	if parent.IsValid() {
		// Same as trace.ContextWithSpanContext(ctx, parent), without
		// boxing a span value: the parent lives in a.
		a.parent.sc = parent
		ctx = trace.ContextWithSpan(ctx, &a.parent)
	}
	if s.t.baggage && correlationID != "" {
		ctx = withCorrelationBaggage(ctx, correlationID)
	}

	attrs := append(a.attrs[:0], s.startAttrs...)
	attrs = append(attrs, QueueWaitKey.Float64(wait.Seconds()))
	if correlationID != "" {
		attrs = append(attrs, CorrelationIDKey.String(correlationID))
	}
	opts := append(a.opts[:0], s.kind, trace.WithAttributes(attrs...))
	if len(links) > 0 {
		opts = append(opts, trace.WithLinks(links...))
	}
	return s.t.tracer.Start(ctx, s.spanName, opts...)
}

// startArgs is the per-span scratch of Start, one allocation: the parent
// span (when given), the start attributes (at most stage, pipeline,
// operation type and name, queue wait, correlation ID) and the start
// options (kind, attributes, links). Nothing mutates it after Start.
type startArgs struct {
	parent parentSpan
	attrs  [6]attribute.KeyValue
	opts   [3]trace.SpanStartOption
}

// parentSpan is a non-recording span that only carries a span context, like
// the one trace.ContextWithSpanContext creates: the parent of a stage span.
// Every other method is the no-op of the embedded [noop.Span].
type parentSpan struct {
	noop.Span
	sc trace.SpanContext
}

// SpanContext returns the parent's span context.
func (p *parentSpan) SpanContext() trace.SpanContext { return p.sc }

// Links appends to dst a link to each valid span context of items, and
// returns the extended slice: the links of a batch's span to the spans of the
// items it carries. SDKs cap the links per span (128 by default) and drop the
// rest.
func Links(dst []trace.Link, items ...trace.SpanContext) []trace.Link {
	for _, sc := range items {
		if sc.IsValid() {
			dst = append(dst, trace.Link{SpanContext: sc})
		}
	}
	return dst
}

// Retry records on span that an attempt failed and will be retried: an event
// [EventRetry] with sluice.attempt (the failed attempt, 1-based), error.type
// (errType, or "_OTHER" if empty), sluice.retry.delay (the backoff before the
// next attempt, in seconds) and exception.message (if err is not nil). The
// span status stays unset: a later success is a success. It does nothing,
// and builds nothing, when span is not recording.
func (s *StageTelemetry) Retry(span trace.Span, attempt int, errType string, err error, delay time.Duration) {
	if s == nil || span == nil || !span.IsRecording() {
		return
	}
	attrs := make([]attribute.KeyValue, 0, 4)
	attrs = append(attrs,
		AttemptKey.Int(attempt),
		ErrorTypeKey.String(errTypeOrOther(errType)),
		RetryDelayKey.Float64(delay.Seconds()))
	if err != nil {
		attrs = append(attrs, ExceptionMessageKey.String(err.Error()))
	}
	span.AddEvent(EventRetry, trace.WithAttributes(attrs...))
}

// Succeeded sets sluice.outcome="succeeded" on span if it is recording. The
// status stays unset, as OpenTelemetry recommends for instrumentation.
func (s *StageTelemetry) Succeeded(span trace.Span) { s.Outcome(span, OutcomeSucceeded) }

// Filtered sets sluice.outcome="filtered" on span if it is recording.
func (s *StageTelemetry) Filtered(span trace.Span) { s.Outcome(span, OutcomeFiltered) }

// Outcome sets sluice.outcome=outcome on span if it is recording: for the
// outcomes without a helper, [OutcomeReturned] and [OutcomeStranded]. Use
// [StageTelemetry.Failed] for [OutcomeDeadLettered].
func (s *StageTelemetry) Outcome(span trace.Span, outcome string) {
	if s == nil || span == nil || !span.IsRecording() {
		return
	}
	if i := outcomeIndex(outcome); i >= 0 {
		span.SetAttributes(s.outcomeKV[i])
		return
	}
	span.SetAttributes(OutcomeKey.String(outcome))
}

// Failed records on span that the item failed for good and was dead-lettered
// for reason (error, permanent, timeout, panic, overflow, shutdown,
// circuit_open) after attempts attempts: attributes sluice.outcome
// ("dead_lettered"), error.type (errType, a low-cardinality class, or
// "_OTHER" if empty), sluice.dlq.reason and sluice.attempts; an event
// [EventDeadLetter] with the same reason, error type and attempts plus
// exception.message (if err is not nil); and status Error with err's message
// (or the reason if err is nil). It does nothing, and builds nothing, when
// span is not recording.
func (s *StageTelemetry) Failed(span trace.Span, reason, errType string, err error, attempts int) {
	if s == nil || span == nil || !span.IsRecording() {
		return
	}
	reasonKV := DLQReasonKey.String(reason)
	if i := reasonIndex(reason); i >= 0 {
		reasonKV = s.reasonKV[i]
	}
	errTypeKV := ErrorTypeKey.String(errTypeOrOther(errType))
	attemptsKV := AttemptsKey.Int(attempts)
	span.SetAttributes(s.outcomeKV[outcomeIndex(OutcomeDeadLettered)], errTypeKV, reasonKV, attemptsKV)

	desc := reason
	ev := make([]attribute.KeyValue, 0, 4)
	ev = append(ev, reasonKV, errTypeKV, attemptsKV)
	if err != nil {
		desc = err.Error()
		ev = append(ev, ExceptionMessageKey.String(desc))
	}
	span.AddEvent(EventDeadLetter, trace.WithAttributes(ev...))
	span.SetStatus(codes.Error, desc)
}

// errTypeOrOther returns errType, or "_OTHER" (the semantic conventions'
// fallback for error.type) if it is empty.
func errTypeOrOther(errType string) string {
	if errType == "" {
		return "_OTHER"
	}
	return errType
}
