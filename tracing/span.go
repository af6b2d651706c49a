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
// The sampler sees the span name, kind, parent and links, but no
// attribute: links are given at start (a batch links to the spans of the
// items it carries, see [Links]; a replayed item to the span that
// dead-lettered it), while the attributes are set just after start, and only
// if the span is recording: sluice.stage, sluice.pipeline (if configured),
// messaging.operation.type and messaging.operation.name ("process"),
// sluice.queue.wait (wait in seconds) and messaging.message.conversation_id
// (if correlationID is not empty). A span that is not sampled thus costs no
// attribute (see Cost rules in the package documentation). To sample by
// stage, match the span name.
//
// With [Config.Baggage], the returned context also carries correlationID in
// the baggage member [BaggageCorrelationID].
//
// Start always creates a span; stage code calls it only when
// [Telemetry.TracingEnabled] reports true. [StageTelemetry.StartLazy] is the
// same for callers whose correlation ID or queue wait costs something to
// compute.
func (s *StageTelemetry) Start(ctx context.Context, parent trace.SpanContext, correlationID string,
	wait time.Duration, links ...trace.Link) (context.Context, trace.Span) {
	return s.StartLazy(ctx, parent,
		func() string { return correlationID },
		func() time.Duration { return wait }, links...)
}

// StartLazy is [StageTelemetry.Start] with the correlation ID and the queue
// wait computed only when they are used: correlationID is called when the
// span is recording or with [Config.Baggage], wait when the span is
// recording, each at most once, before StartLazy returns. Either may be nil
// (no correlation ID, a zero wait). When the sampler drops the span, neither
// is called (but for correlationID with Config.Baggage), and StartLazy
// allocates nothing beyond what the SDK does, and one context when parent is
// valid.
func (s *StageTelemetry) StartLazy(ctx context.Context, parent trace.SpanContext, correlationID func() string,
	wait func() time.Duration, links ...trace.Link) (context.Context, trace.Span) {
	if s == nil {
		return ctx, noop.Span{}
	}
	if parent.IsValid() {
		ctx = withParent(ctx, parent)
	}
	id, haveID := "", false
	if s.t.baggage && correlationID != nil {
		id, haveID = correlationID(), true
		if id != "" {
			ctx = withCorrelationBaggage(ctx, id)
		}
	}
	opts := s.startOpts
	if len(links) > 0 {
		// A new slice: s.startOpts is shared by every span of the stage.
		opts = append(opts[:len(opts):len(opts)], trace.WithLinks(links...))
	}
	ctx, span := s.t.tracer.Start(ctx, s.spanName, opts...)
	if !span.IsRecording() {
		return ctx, span
	}
	var w time.Duration
	if wait != nil {
		w = wait()
	}
	if !haveID && correlationID != nil {
		id = correlationID()
	}
	span.SetAttributes(s.startAttrs...)
	if id == "" {
		span.SetAttributes(QueueWaitKey.Float64(w.Seconds()))
	} else {
		span.SetAttributes(QueueWaitKey.Float64(w.Seconds()), CorrelationIDKey.String(id))
	}
	return ctx, span
}

// withParent returns ctx carrying a non-recording span with span context sc,
// as trace.ContextWithSpanContext(ctx, sc) does.
func withParent(ctx context.Context, sc trace.SpanContext) context.Context {
	return trace.ContextWithSpanContext(ctx, sc)
}

// Transparent reports whether span, started as a child of parent and not
// ended yet (an ended span does not record), can stand aside: whether the
// item's span in the next stage can be a child of parent instead of span,
// with the same sampling decision and nothing exported differently. That is
// the case when span neither records nor is sampled, and parent is a valid
// local (not remote) span context of the same trace, with the same trace
// flags and, like span's, no trace state: a parent-based sampler then
// decides alike for either parent, and neither span is exported. Stage code
// uses it to carry one span context per item through the stages of an
// unsampled trace, instead of one per stage.
func Transparent(span trace.Span, parent trace.SpanContext) bool {
	if span == nil || span.IsRecording() || !parent.IsValid() || parent.IsRemote() {
		return false
	}
	sc := span.SpanContext()
	return !sc.IsSampled() && sc.TraceID() == parent.TraceID() && sc.TraceFlags() == parent.TraceFlags() &&
		sc.TraceState().Len() == 0 && parent.TraceState().Len() == 0
}

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
		span.SetAttributes(s.outcomeKV[i : i+1]...) // no slice to allocate for the call
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
