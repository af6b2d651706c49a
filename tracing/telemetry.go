package tracing

import (
	"context"
	"errors"
	"sync"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Config configures [New]. The zero value is usable: global providers, the
// default propagator, per-item spans on, no baggage.
type Config struct {
	// TracerProvider creates the tracer. Nil means otel.GetTracerProvider()
	// at the time of New.
	TracerProvider trace.TracerProvider
	// MeterProvider creates the meter. Nil means otel.GetMeterProvider() at
	// the time of New.
	MeterProvider metric.MeterProvider
	// Propagator carries trace context across serialized hops (headers,
	// dead-letter records). Nil means [DefaultPropagator]; the otel global
	// propagator is not consulted.
	Propagator propagation.TextMapPropagator
	// Pipeline names the pipeline; when non-empty it is the sluice.pipeline
	// attribute of every span and every metric data point.
	Pipeline string
	// DisableItemSpans turns off the per-item spans of in-process hops:
	// [Telemetry.TracingEnabled] then reports false. Metrics are unaffected.
	DisableItemSpans bool
	// Baggage also puts the correlation ID into the context's baggage, as
	// member [BaggageCorrelationID], so that it reaches downstream services.
	// Off by default: the propagator sends baggage with every outgoing call
	// made under that context, to every destination. It is set where an
	// item's span starts ([StageTelemetry.StartLazy]), so only when
	// [Telemetry.TracingEnabled].
	Baggage bool
}

// Telemetry holds the tracer, the meter's instruments and the per-stage
// precomputed attributes of one pipeline. Create it with [New] once per
// pipeline (after the OpenTelemetry SDK, if any, is installed) and share it:
// all its methods are safe for concurrent use.
//
// A nil *Telemetry is valid and disabled: TracingEnabled reports false and
// Stage returns a nil *StageTelemetry, whose methods do nothing.
type Telemetry struct {
	tracer   trace.Tracer
	prop     propagation.TextMapPropagator
	pipeline string
	baggage  bool
	enabled  bool

	meter    metric.Meter
	waitTime metric.Float64Histogram
	itemDur  metric.Float64Histogram

	itemsIn, itemsOut, items     metric.Int64ObservableCounter
	attempts, retries, dlqRecord metric.Int64ObservableCounter
	queueUsage, queueLimit       metric.Int64ObservableUpDownCounter
	workerCount, workerLimit     metric.Int64ObservableUpDownCounter
	resizes, circuitOpens        metric.Int64ObservableCounter

	mu     sync.Mutex
	stages map[string]*StageTelemetry

	obs observed // the runs whose counters the observable instruments report (see RegisterStages)
}

// New creates the tracer (scope [InstrumentationName], version
// [InstrumentationVersion]) and every metric instrument, once. It starts a
// probe span to decide [Telemetry.TracingEnabled] (see there). The error
// reports instruments the meter provider refused; it is nil with the
// OpenTelemetry API and SDK.
func New(cfg Config) (*Telemetry, error) {
	tp := cfg.TracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	prop := cfg.Propagator
	if prop == nil {
		prop = DefaultPropagator()
	}
	t := &Telemetry{
		tracer: tp.Tracer(InstrumentationName,
			trace.WithInstrumentationVersion(InstrumentationVersion),
			trace.WithSchemaURL(SchemaURL)),
		prop:     prop,
		pipeline: cfg.Pipeline,
		baggage:  cfg.Baggage,
		meter: mp.Meter(InstrumentationName,
			metric.WithInstrumentationVersion(InstrumentationVersion),
			metric.WithSchemaURL(SchemaURL)),
		stages: make(map[string]*StageTelemetry),
	}
	t.enabled = !cfg.DisableItemSpans && probe(t.tracer)
	if err := t.instruments(); err != nil {
		return nil, err
	}
	return t, nil
}

// probe reports whether tr is backed by an SDK. It starts a span under a
// fixed, valid, not-sampled remote parent: the API without an SDK (the
// global tracer before an SDK is installed, trace/noop) hands back the
// parent's span context, while an SDK always mints a new span ID, and
// records or not as its sampler decides. Under a parent-based sampler (the
// SDK default) the probe is therefore not recorded and reaches no span
// processor. The probe is never ended, so even when a sampler records it, it
// is never exported.
func probe(tr trace.Tracer) bool {
	parent := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0x51, 0x1c, 0xe0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
		SpanID:  trace.SpanID{0x51, 0x1c, 0xe0, 0, 0, 0, 0, 1},
		Remote:  true,
	})
	_, span := tr.Start(trace.ContextWithRemoteSpanContext(context.Background(), parent), "sluice.probe")
	sc := span.SpanContext()
	return span.IsRecording() || (sc.IsValid() && sc.SpanID() != parent.SpanID())
}

// durationBuckets are the advisory histogram bucket boundaries, in seconds,
// of both histograms: from 100µs (in-process queue hops) to a minute. Views
// may override them.
func durationBuckets() []float64 {
	return []float64{0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60}
}

func (t *Telemetry) instruments() error {
	m := t.meter
	var err, errs error
	collect := func(e error) {
		if e != nil {
			errs = errors.Join(errs, e)
		}
	}
	t.waitTime, err = m.Float64Histogram(MetricQueueWaitTime,
		metric.WithUnit("s"),
		metric.WithDescription("Time items waited in a stage's input queue before a worker took them."),
		metric.WithExplicitBucketBoundaries(durationBuckets()...))
	collect(err)
	t.itemDur, err = m.Float64Histogram(MetricItemDuration,
		metric.WithUnit("s"),
		metric.WithDescription("Time a stage spent on an item, all attempts and backoffs included, by outcome."),
		metric.WithExplicitBucketBoundaries(durationBuckets()...))
	collect(err)

	counter := func(name, unit, desc string) metric.Int64ObservableCounter {
		c, err := m.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		collect(err)
		return c
	}
	upDown := func(name, unit, desc string) metric.Int64ObservableUpDownCounter {
		c, err := m.Int64ObservableUpDownCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
		collect(err)
		return c
	}
	t.itemsIn = counter(MetricItemsIn, "{item}", "Items a stage took from its input (or parked or dead-lettered on its behalf).")
	t.itemsOut = counter(MetricItemsOut, "{item}", "Items a stage emitted downstream.")
	t.items = counter(MetricItems, "{item}", "Input items a stage finished, by outcome.")
	t.attempts = counter(MetricAttempts, "{attempt}", "Calls of a stage's function, first attempts and retries.")
	t.retries = counter(MetricRetries, "{retry}", "Retried attempts of a stage.")
	t.dlqRecord = counter(MetricDLQRecords, "{record}", "Records a stage wrote to the dead-letter queue, by reason.")
	t.queueUsage = upDown(MetricQueueUsage, "{item}", "Items waiting in a stage's input queue.")
	t.queueLimit = upDown(MetricQueueLimit, "{item}", "Capacity of a stage's input queue.")
	t.workerCount = upDown(MetricWorkerCount, "{worker}", "Workers of a stage, by state (busy, idle).")
	t.workerLimit = upDown(MetricWorkerLimit, "{worker}", "Workers of a stage's pool (its current size when autoscaled).")
	t.resizes = counter(MetricResizes, "{resize}", "Resizes of a stage's pool by its autoscaler.")
	t.circuitOpens = counter(MetricCircuitOpens, "{open}", "Times a circuit breaker of a stage opened.")
	return errs
}

// TracingEnabled reports whether per-item spans are worth creating. It is
// false for a nil Telemetry, when [Config.DisableItemSpans] is set, and when
// no SDK backs the tracer provider (the probe span started by [New] was
// neither recording nor given a span context of its own, as with the global
// provider before an SDK is installed, or trace/noop). An SDK whose sampler
// never samples still counts as enabled: its spans have valid span contexts
// that carry the trace downstream.
//
// The answer is fixed at New: installing an SDK afterwards does not change
// it (the global provider does delegate, but callers that skip spans keep
// skipping them). Stage code calls [StageTelemetry.Start] only when this
// reports true.
func (t *Telemetry) TracingEnabled() bool { return t != nil && t.enabled }

// Propagator returns the configured propagator, or [DefaultPropagator].
func (t *Telemetry) Propagator() propagation.TextMapPropagator {
	if t == nil {
		return DefaultPropagator()
	}
	return t.prop
}

// Inject writes the trace context and baggage of ctx into headers with the
// configured propagator (see the package-level [Inject]).
func (t *Telemetry) Inject(ctx context.Context, headers map[string]string) {
	Inject(ctx, headers, t.Propagator())
}

// Extract returns ctx with the remote span context and baggage found in
// headers, with the configured propagator (see the package-level [Extract]).
func (t *Telemetry) Extract(ctx context.Context, headers map[string]string) context.Context {
	return Extract(ctx, headers, t.Propagator())
}

// Stage returns the telemetry of the stage called name, creating it on first
// use: span name, start attributes, and the attribute sets of every metric,
// per outcome, error type and dead-letter reason, are computed here once.
// Later calls with the same name return the same value. A nil Telemetry
// returns nil.
func (t *Telemetry) Stage(name string) *StageTelemetry {
	if t == nil {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if s, ok := t.stages[name]; ok {
		return s
	}
	s := newStage(t, name)
	t.stages[name] = s
	return s
}

// StageTelemetry is the telemetry of one stage of one pipeline: it starts
// and annotates the stage's per-item spans and records its histograms.
// Obtain it from [Telemetry.Stage]. Methods are safe for concurrent use, and
// do nothing on a nil *StageTelemetry (Start then returns a non-recording
// span that is safe to End).
type StageTelemetry struct {
	t        *Telemetry
	name     string
	spanName string

	// Spans.
	kind        trace.SpanStartOption
	startAttrs  []attribute.KeyValue    // stage, [pipeline], operation type and name
	startOpts   []trace.SpanStartOption // kind: shared, never appended to in place
	outcomeKV   [5]attribute.KeyValue
	reasonKV    [7]attribute.KeyValue
	baseMetrics []attribute.KeyValue // stage, [pipeline]: to build rare sets

	// Histograms.
	waitOpts []metric.RecordOption
	workOpts [5][7][]metric.RecordOption

	// Observables (used by the RegisterStages callback).
	obsStage   []metric.ObserveOption
	obsOutcome [5][]metric.ObserveOption
	obsReason  [7][]metric.ObserveOption
	obsBusy    []metric.ObserveOption
	obsIdle    []metric.ObserveOption
}

func newStage(t *Telemetry, name string) *StageTelemetry {
	s := &StageTelemetry{
		t:        t,
		name:     name,
		spanName: OperationProcess + " " + name,
		kind:     trace.WithSpanKind(trace.SpanKindInternal),
	}
	base := []attribute.KeyValue{StageKey.String(name)}
	if t.pipeline != "" {
		base = append(base, PipelineKey.String(t.pipeline))
	}
	s.baseMetrics = base
	s.startAttrs = append(append([]attribute.KeyValue(nil), base...),
		OperationTypeKey.String(OperationProcess),
		OperationNameKey.String(OperationProcess))
	s.startOpts = []trace.SpanStartOption{s.kind}

	with := func(extra ...attribute.KeyValue) attribute.Set {
		kvs := make([]attribute.KeyValue, 0, len(base)+len(extra))
		kvs = append(append(kvs, base...), extra...)
		return attribute.NewSet(kvs...)
	}
	stageSet := with()
	s.waitOpts = []metric.RecordOption{metric.WithAttributeSet(stageSet)}
	s.obsStage = []metric.ObserveOption{metric.WithAttributeSet(stageSet)}
	s.obsBusy = []metric.ObserveOption{metric.WithAttributeSet(with(WorkerStateKey.String(WorkerBusy)))}
	s.obsIdle = []metric.ObserveOption{metric.WithAttributeSet(with(WorkerStateKey.String(WorkerIdle)))}

	for i, o := range knownOutcomes() {
		kv := OutcomeKey.String(o)
		s.outcomeKV[i] = kv
		s.obsOutcome[i] = []metric.ObserveOption{metric.WithAttributeSet(with(kv))}
		for j, e := range knownErrTypes() {
			set := with(kv)
			if e != "" {
				set = with(kv, ErrorTypeKey.String(e))
			}
			s.workOpts[i][j] = []metric.RecordOption{metric.WithAttributeSet(set)}
		}
	}
	for i, r := range knownReasons() {
		kv := DLQReasonKey.String(r)
		s.reasonKV[i] = kv
		s.obsReason[i] = []metric.ObserveOption{metric.WithAttributeSet(with(kv))}
	}
	return s
}

// Name returns the stage name.
func (s *StageTelemetry) Name() string {
	if s == nil {
		return ""
	}
	return s.name
}
