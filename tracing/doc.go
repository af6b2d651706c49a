// Package tracing is Sluice's OpenTelemetry instrumentation: per-item spans
// for stages, trace-context propagation across serialized hops, and stage
// metrics.
//
// It depends on the OpenTelemetry API only (otel, trace, metric,
// propagation, baggage, attribute, codes, semconv); an application installs
// an SDK, or passes providers in [Config], to get data out. Without an SDK
// everything here is close to free (see Cost rules). It imports no other
// package of this module.
//
// # Propagation
//
// [MapCarrier] is a [go.opentelemetry.io/otel/propagation.TextMapCarrier]
// over a map[string]string that keeps keys exactly as given (no HTTP
// canonicalization): the W3C keys are "traceparent", "tracestate" and
// "baggage", lower-case. [Inject] and [Extract] move a context's trace
// context and baggage to and from such a map with a propagator, by default
// [DefaultPropagator] (W3C Trace Context plus W3C Baggage; the otel global
// propagator, a no-op until set, is not used). [Traceparent] and
// [ParseTraceparent] format and parse a single traceparent value, for
// example in a dead-letter record.
//
// # Span model
//
// One span per item per stage, started by [StageTelemetry.Start]:
//
//   - Name "process <stage>" and attributes messaging.operation.type =
//     messaging.operation.name = "process", after the OpenTelemetry
//     messaging conventions (a stage is a consumer processing a message).
//   - Kind [go.opentelemetry.io/otel/trace.SpanKindInternal]. Hops between
//     stages are in-process channel hand-offs, not messages crossing a
//     broker; Consumer would make backends draw a service-to-service edge
//     between every stage of the same process. The messaging attributes keep
//     the spans recognizable as message processing.
//   - Parent: the item's span in the previous stage (passed as a
//     trace.SpanContext), or the span context the item was submitted with;
//     if there is none, the span in the worker's context, else a new root.
//     A trace thus follows one item through the whole pipeline.
//   - A batch's span has no item as parent (it is a new root, or a child of
//     the worker context's span) and links to the span of every item it
//     carries ([Links]). A replayed item's span links to the span of the
//     attempt that dead-lettered it.
//   - Samplers (and span processors' OnStart) see the span's name, kind,
//     parent and links, but no attribute: every attribute is set after
//     start, and only if the span is recording, so that a span that is not
//     sampled costs no attribute. To sample by stage, match the span name
//     ("process <stage>").
//   - A span that does not record, in an unsampled trace it shares with its
//     local parent (see [Transparent]), is not carried to the next stage:
//     the item's next span becomes its sibling, a child of the same parent,
//     in the same trace and with the same sampling decision. An item thus
//     carries one span context through the stages of an unsampled trace
//     rather than one per stage.
//   - Retried attempts add an event "retry" and leave the status unset. A
//     final failure sets status Error, error.type, sluice.dlq.reason and
//     sluice.attempts, and adds an event "dead_letter". Success and
//     filtering set sluice.outcome.
//   - The caller ends the span (span.End()) when the item leaves the stage.
//     [StageTelemetry.Start] only starts it; the outcome methods only
//     annotate it.
//
// # Span attributes and events
//
//	Attribute                          Type     Where        Value
//	sluice.stage                       string   start (1)    stage name
//	sluice.pipeline                    string   start (1)    Config.Pipeline, if set
//	messaging.operation.type           string   start (1)    "process"
//	messaging.operation.name           string   start (1)    "process"
//	messaging.message.conversation_id  string   start (1)    correlation ID, if set
//	sluice.queue.wait                  float64  start (1)    seconds in the input queue
//	sluice.outcome                     string   end          succeeded | filtered | dead_lettered | returned | stranded
//	error.type                         string   failure      low-cardinality error class ("_OTHER" if none)
//	sluice.dlq.reason                  string   failure      error | permanent | timeout | panic | overflow | shutdown | circuit_open
//	sluice.attempts                    int      failure      attempts made
//
//	Event        Attributes
//	retry        sluice.attempt (int, the failed attempt), error.type,
//	             sluice.retry.delay (float64 seconds), exception.message
//	dead_letter  sluice.dlq.reason, error.type, sluice.attempts,
//	             exception.message
//
// (1) Set by [StageTelemetry.Start] right after the span starts, if it is
// recording: samplers do not see them.
//
// With [Config.Baggage] the correlation ID is also put in the context's
// baggage as member "sluice.correlation_id", so that it reaches every
// downstream call; it is off by default because baggage goes to every
// destination. It is set where the item's span starts, so it needs the item
// spans (an SDK, and not DisableItemSpans).
//
// # Metrics
//
// Instrument scope [InstrumentationName], version [InstrumentationVersion].
// Every data point has sluice.stage, and sluice.pipeline when
// [Config.Pipeline] is set (so that pipelines of one process reusing stage
// names stay apart). Counters and gauges are observable, read from the
// stage's own counters by one callback per pipeline ([Telemetry.RegisterStages]):
// the counters are cumulative over the pipeline's runs, ended ones included,
// the gauges count live runs; only the two histograms are recorded per item
// (per sampled item: of a fast stage, stage code records the work time of
// about one item in 64 and the queue wait of about one in 64, not always the
// same items; see Cost rules).
//
//	Name                          Instrument                   Unit       Extra attributes
//	sluice.stage.items.in         Int64ObservableCounter       {item}
//	sluice.stage.items.out        Int64ObservableCounter       {item}
//	sluice.stage.items            Int64ObservableCounter       {item}     sluice.outcome
//	sluice.stage.attempts         Int64ObservableCounter       {attempt}
//	sluice.stage.retries          Int64ObservableCounter       {retry}
//	sluice.dlq.records            Int64ObservableCounter       {record}   sluice.dlq.reason
//	sluice.stage.queue.usage      Int64ObservableUpDownCounter {item}
//	sluice.stage.queue.limit      Int64ObservableUpDownCounter {item}
//	sluice.stage.worker.count     Int64ObservableUpDownCounter {worker}   sluice.worker.state (busy | idle)
//	sluice.stage.worker.limit     Int64ObservableUpDownCounter {worker}
//	sluice.stage.worker.resizes   Int64ObservableCounter       {resize}
//	sluice.stage.circuit.opens    Int64ObservableCounter       {open}
//	sluice.stage.queue.wait_time  Float64Histogram             s
//	sluice.stage.item.duration    Float64Histogram             s          sluice.outcome, error.type (if failed)
//
// sluice.stage.items counts finished input items by outcome (succeeded,
// filtered, dead_lettered, returned, stranded; all five are reported, zeros
// included); dead_lettered equals the sum of sluice.dlq.records over
// reasons, which reports only the reasons seen. Queue and worker metrics are
// UpDownCounters rather than gauges, as the semantic conventions do for
// usage and limit: summing them across stages is meaningful. queue.usage
// counts the items queued and not yet taken by a worker; queue.limit is the
// stage's configured capacity. The input also keeps a slot for each worker's
// hand (a batch for a batch stage's), so while workers are between items
// usage can exceed limit by up to that many. Histograms advise buckets from
// 100µs to 60s.
//
// # Cost rules
//
//   - [New] creates the tracer, all instruments and a probe span once;
//     [Telemetry.Stage] precomputes, once per stage, the span name, start
//     attributes and every metric attribute set (per outcome, per error type
//     and per dead-letter reason). Attribute keys are constants; nothing on
//     the per-item path uses fmt.
//   - [Telemetry.TracingEnabled] is false without an SDK (the global no-op
//     provider) or with [Config.DisableItemSpans]; stage code then never calls
//     Start, so spans cost nothing. It is decided once, by New: create the
//     Telemetry after installing the SDK. [StageTelemetry.RecordWait] and
//     [StageTelemetry.RecordWork] do not allocate without an SDK.
//   - With an SDK whose sampler does not sample, Start builds nothing:
//     no attribute, and no correlation ID or queue wait with
//     [StageTelemetry.StartLazy] (which stage code uses); the span still has
//     a valid context that propagates. Retry, Succeeded, Filtered, Outcome
//     and Failed return at once on a non-recording span, without building
//     anything. Stage code reads the clock for an item's queue wait only
//     when its span records, or when the item is timed anyway for the
//     histograms (see below).
//   - Counters cost nothing per item: the stage keeps its own counters, and
//     the callback reads them once per collection.
//
// Measured with the benchmarks of this package (2 cores, Go 1.26, OTel
// v1.47): with an SDK and NeverSample, Start+Succeeded+End costs 4
// allocations with a parent (2 without): the parent span and the context
// carrying it, and the SDK's two (its span and the context that carries
// it); sampled, with a
// do-nothing exporter, 8. Without an SDK, stage code never calls Start.
// Retry, Failed, Succeeded and Filtered on a non-recording span: 0.
// RecordWait and RecordWork: 0, without an SDK and with the metric SDK.
// Stage code records the two histograms for the items it times: every item
// of a slow stage, about one in 64 of a fast one, whether or not spans are
// on (see stage.Stats).
package tracing
