package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/panics"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
	"github.com/sluicehq/sluice/tracing"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Errors returned by pipelines and sources.
var (
	// ErrQueueFull: the Reject overflow policy refused an item because the first stage's input
	// was full. The item is counted as rejected; the caller still owns it.
	ErrQueueFull = errors.New("pipeline: queue full")
	// ErrDraining: the run stopped taking input (its context ended, or it failed).
	ErrDraining = errors.New("pipeline: the run is draining and takes no more input")
	// ErrClosed: Submit after Close, or after the run ended.
	ErrClosed = errors.New("pipeline: source closed")
	// ErrNilContext: a nil context was passed.
	ErrNilContext = errors.New("pipeline: nil context")
	// ErrDrainTimeout is the cause of the work context's end when the drain timeout passed.
	ErrDrainTimeout = errors.New("pipeline: drain timeout passed")
	// ErrReplayInProgress: a replay was started while another one of the same pipeline runs.
	ErrReplayInProgress = errors.New("pipeline: a replay is already running")
	// ErrSourceInUse: a run was given a FromSlice, FromChan or FromSeq source that is feeding
	// another run. Such a source feeds one run at a time (a later run resumes it); the run fails
	// with this error after a drain, having admitted nothing.
	ErrSourceInUse = errors.New("pipeline: the source is feeding another run")
)

// DeadLetterError is the error of a run stopped because a dead letter could not be written,
// neither to the dead-letter sink (after retries) nor to the fallback sink. It names the item.
type DeadLetterError struct {
	CorrelationID string
	Stage         string
	RecordID      string
	Reason        dlq.Reason
	Err           error
}

// Error implements error.
func (e *DeadLetterError) Error() string {
	return fmt.Sprintf("pipeline: could not dead-letter item %s of stage %q (reason %s, record %s): %v",
		e.CorrelationID, e.Stage, e.Reason, e.RecordID, e.Err)
}

// Unwrap returns the sink's error.
func (e *DeadLetterError) Unwrap() error { return e.Err }

// Overflow is what ingress does when the first stage's input is full.
type Overflow = stage.Overflow

// The overflow policies at ingress (see stage.Overflow).
const (
	// Block waits for room (the default): backpressure reaches the producer.
	Block = stage.Block
	// Reject fails the item at once with ErrQueueFull; it is counted as rejected.
	Reject = stage.Reject
	// DropOldest dead-letters the oldest queued item (reason overflow) to make room.
	DropOldest = stage.DropOldest
	// DeadLetterNew dead-letters the new item (reason overflow) instead of waiting.
	DeadLetterNew = stage.DeadLetterNew
	// CallerRuns has the submitting goroutine run the first stage on the item itself.
	CallerRuns = stage.CallerRuns
)

// Defaults of a pipeline built without options.
const (
	DefaultDrainTimeout = 10 * time.Second
)

type options struct {
	tel          tracing.Config
	sink         dlq.Sink
	dlqPath      string // WithDLQFile's: New opens it once the options are checked
	ownSink      bool
	inMemory     bool // no WithDLQ or WithDLQFile: the sink is New's own dlq.Memory
	fallback     dlq.Sink
	dlqPolicy    retry.Policy
	drainTimeout time.Duration
	logger       *slog.Logger
	overflow     Overflow
	onDeadLetter func(dlq.Record)
	errs         []error
}

// Option configures a pipeline.
type Option func(*options)

// WithDLQ sets the dead-letter sink. Without one, dead letters are kept in memory, where
// DeadLetters finds them: fine for tests, not durable. A write that panics has failed (it is
// retried per WithDLQRetry, then goes to the fallback sink). Of WithDLQ and WithDLQFile, the
// last given wins.
func WithDLQ(sink dlq.Sink) Option {
	return func(o *options) {
		if isNil(sink) {
			o.errs = append(o.errs, errors.New("WithDLQ: the sink is nil"))
			return
		}
		o.sink, o.dlqPath = sink, ""
	}
}

// WithDLQFile makes the dead-letter sink a JSON Lines file at path, which New opens (or
// creates) once it has checked the configuration; Close closes it. Of WithDLQ and WithDLQFile,
// the last given wins.
func WithDLQFile(path string) Option {
	return func(o *options) {
		if path == "" {
			o.errs = append(o.errs, errors.New("WithDLQFile: the path is empty"))
			return
		}
		o.sink, o.dlqPath = nil, path
	}
}

// WithFallback sets a sink tried when the dead-letter sink fails after its retries.
func WithFallback(sink dlq.Sink) Option {
	return func(o *options) {
		if isNil(sink) {
			o.errs = append(o.errs, errors.New("WithFallback: the sink is nil"))
			return
		}
		o.fallback = sink
	}
}

// WithDLQRetry sets the retry policy of dead-letter writes (default: 3 attempts from 50ms).
func WithDLQRetry(p retry.Policy) Option {
	return func(o *options) {
		if err := p.Validate(); err != nil {
			o.errs = append(o.errs, fmt.Errorf("WithDLQRetry: %w", err))
			return
		}
		o.dlqPolicy = p
	}
}

// WithDrainTimeout sets how long in-flight items get to finish once the run's context ends
// (default 10s). Then their calls are cancelled and they are parked.
func WithDrainTimeout(d time.Duration) Option {
	return func(o *options) {
		if d < 0 {
			o.errs = append(o.errs, fmt.Errorf("WithDrainTimeout(%v): cannot be negative", d))
			return
		}
		o.drainTimeout = d
	}
}

// WithLogger sets the logger of retries, dead letters and drain events (default: silent).
func WithLogger(l *slog.Logger) Option {
	return func(o *options) {
		if l == nil {
			o.errs = append(o.errs, errors.New("WithLogger: the logger is nil"))
			return
		}
		o.logger = l
	}
}

// WithOverflow sets the overflow policy at ingress (default Block).
func WithOverflow(p Overflow) Option {
	return func(o *options) {
		if p > CallerRuns {
			o.errs = append(o.errs, fmt.Errorf("WithOverflow(%d): unknown policy; use Block, Reject, DropOldest, DeadLetterNew or CallerRuns", p))
			return
		}
		o.overflow = p
	}
}

// WithTracerProvider sets the OpenTelemetry tracer provider (default: the global one, as it
// is when the pipeline is built: install the SDK first). With no SDK installed, no span is
// started and tracing costs nothing per item.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(o *options) { o.tel.TracerProvider = tp }
}

// WithMeterProvider sets the OpenTelemetry meter provider (default: the global one).
func WithMeterProvider(mp metric.MeterProvider) Option {
	return func(o *options) { o.tel.MeterProvider = mp }
}

// WithPropagator sets the propagator that reads an item's trace context from its Headers when
// it was submitted without a span in its Context, as a message from another process carries it
// (default: W3C trace context and baggage). It is used only with tracing on. Dead-letter records
// keep their W3C traceparent field whatever the propagator.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return func(o *options) { o.tel.Propagator = p }
}

// WithoutItemSpans turns off the span per item per stage (metrics stay).
func WithoutItemSpans() Option {
	return func(o *options) { o.tel.DisableItemSpans = true }
}

// WithBaggage also puts each item's correlation ID into the baggage of its calls' contexts
// (off by default: baggage travels with every outgoing call). It rides on the item spans: with
// WithoutItemSpans, or with no SDK installed, there is none.
func WithBaggage() Option {
	return func(o *options) { o.tel.Baggage = true }
}

// OnDeadLetter sets a hook called after each dead letter is durably written. The hook must not
// change the record's Payload or Headers, which it shares with the sink that may have kept them
// (clone what it needs to edit). A panic in the hook is logged at error level, with its stack,
// and changes nothing else: the record is written and its item dead-lettered.
func OnDeadLetter(fn func(dlq.Record)) Option {
	return func(o *options) { o.onDeadLetter = fn }
}

// Pipeline is a built pipeline whose input is In. It holds no running state: each Run is
// independent, and runs may overlap.
type Pipeline[In any] struct {
	tel       *tracing.Telemetry
	name      string
	steps     []step
	opts      options
	replaying atomic.Bool
}

// New builds a pipeline from a flow. It checks every stage and option, and refuses a bad
// configuration with an error that says what to change.
func New[In, Out any](name string, f *Flow[In, Out], opts ...Option) (*Pipeline[In], error) {
	o := options{
		dlqPolicy:    retry.Policy{MaxAttempts: 3, InitialInterval: 50 * time.Millisecond, MaxInterval: time.Second},
		drainTimeout: DefaultDrainTimeout,
		logger:       slog.New(slog.DiscardHandler),
	}
	for _, opt := range opts {
		if opt == nil {
			o.errs = append(o.errs, errors.New("nil option"))
			continue
		}
		opt(&o)
	}
	errs := o.errs
	if name == "" {
		errs = append(errs, errors.New("the pipeline has no name; name it (it is written into dead letters)"))
	}
	if f == nil {
		errs = append(errs, errors.New("the flow is nil; start one with Input"))
	} else {
		errs = append(errs, f.errs...)
		if len(f.steps) == 0 {
			errs = append(errs, errors.New("the flow has no stage; add one with Then"))
		}
		if len(f.steps) > 0 && f.steps[0].kind == stage.KindBatch && o.overflow == CallerRuns {
			errs = append(errs, fmt.Errorf("WithOverflow(CallerRuns): the first stage %q is a batch, which a caller cannot run on one item; use another policy or put a stage before it", f.steps[0].name))
		}
		seen := map[string]bool{}
		for i, s := range f.steps {
			if s.kind == stage.KindSink && i < len(f.steps)-1 {
				errs = append(errs, fmt.Errorf("stage %q is a sink, which ends a pipeline, but stage %q follows it; make the sink the last stage, or make it a map", s.name, f.steps[i+1].name))
			}
			if s.name != "" && seen[s.name] {
				errs = append(errs, fmt.Errorf("two stages are named %q; stage names must be unique (dead letters are replayed by name)", s.name))
			}
			seen[s.name] = true
		}
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("pipeline %q: %w", name, errors.Join(errs...))
	}
	o.tel.Pipeline = name
	tel, err := tracing.New(o.tel)
	if err != nil {
		return nil, fmt.Errorf("pipeline %q: telemetry: %w", name, err)
	}
	if o.dlqPath != "" {
		// Opened last, when nothing else can refuse the pipeline: the file stays locked
		// until Close.
		f, err := dlq.OpenFile(o.dlqPath)
		if err != nil {
			return nil, fmt.Errorf("pipeline %q: WithDLQFile: %w", name, err)
		}
		o.sink, o.ownSink = f, true
	}
	if o.sink == nil {
		o.sink, o.inMemory = dlq.NewMemory(), true
	}
	return &Pipeline[In]{tel: tel, name: name, steps: f.steps, opts: o}, nil
}

// Name returns the pipeline's name.
func (p *Pipeline[In]) Name() string { return p.name }

// DLQ returns the pipeline's dead-letter sink.
func (p *Pipeline[In]) DLQ() dlq.Sink { return p.opts.sink }

// Close closes the dead-letter file the pipeline opened (WithDLQFile). Sinks passed with
// WithDLQ belong to the caller.
func (p *Pipeline[In]) Close() error {
	if p.opts.ownSink {
		return p.opts.sink.Close()
	}
	return nil
}

// Report is the account of a run. Counts are in source units: an item from the source is one
// unit; the outputs of a flat-map are one unit each (Spawned counts how many more units a
// flat-map made than it took, which makes Ingested); a batch's output carries the units of the
// items in it. Conservation: Ingested = Delivered + Filtered + DeadLettered + Rejected +
// Returned + Stranded, and Returned and Stranded are zero unless a drain handed items back to
// an acknowledging source or the run failed.
type Report struct {
	Pipeline string `json:"pipeline"`
	// Ingested counts every unit that entered: admitted from the source, rejected at ingress,
	// and Spawned.
	Ingested int64 `json:"ingested"`
	// Admitted counts the items the source handed over and the pipeline took (live, not those
	// of callers still waiting for room).
	Admitted int64 `json:"admitted"`
	// Spawned is the net number of units flat-maps added (outputs minus inputs expanded).
	Spawned      int64 `json:"spawned"`
	Delivered    int64 `json:"delivered"`
	Filtered     int64 `json:"filtered"`
	DeadLettered int64 `json:"dead_lettered"`
	Rejected     int64 `json:"rejected"`
	// Returned counts units handed back unacknowledged (NotDone) to a source that redelivers.
	// Only an item all of whose units can be redelivered is handed back: a batch's output cut
	// off by a drain that also carries items without an acknowledgement is dead-lettered
	// (reason shutdown) with all its units, and its acknowledged items get DeadLettered.
	Returned int64 `json:"returned"`
	// Stranded counts units left without a terminal state because the run failed.
	Stranded int64 `json:"stranded"`
	// Abandoned counts calls that ignored their cancelled context; their goroutines may
	// outlive the run.
	Abandoned int64 `json:"abandoned"`
	// InFlight counts units not yet in a terminal state (zero once the run is over).
	InFlight int64 `json:"in_flight"`

	Stages   []stage.Stats `json:"stages"`
	Started  time.Time     `json:"started"`
	Duration time.Duration `json:"duration_ns"`
}

// Balanced reports whether the report accounts for every unit: none in flight, each that came
// in (admitted, rejected or spawned) in one terminal state, and stage by stage each input
// succeeded, filtered, dead-lettered, returned or stranded. A finished run's report is balanced
// unless something was lost; a live one (Stats) is not while units are in flight.
func (r Report) Balanced() bool {
	if r.InFlight != 0 || r.Ingested != r.Admitted+r.Rejected+r.Spawned ||
		r.Ingested != r.Delivered+r.Filtered+r.DeadLettered+r.Rejected+r.Returned+r.Stranded {
		return false
	}
	for _, s := range r.Stages {
		if s.In != s.Succeeded+s.Filtered+s.DeadLettered+s.Returned+s.Stranded {
			return false
		}
	}
	return true
}

// Job is one run of a pipeline in progress.
type Job struct {
	name    string
	started time.Time
	totals  *core.Counters
	nodes   []node
	done    chan struct{}
	report  Report
	err     error
}

// Stats returns a snapshot of the run's counts while it runs (the Report once it is over).
func (j *Job) Stats() Report {
	select {
	case <-j.done:
		return j.report.copied()
	default:
	}
	return j.snapshot()
}

// copied returns r with its own Stages and dead-letter maps: each caller of Wait and Stats gets a
// Report it may change without changing the others'.
func (r Report) copied() Report {
	r.Stages = slices.Clone(r.Stages)
	for i := range r.Stages {
		r.Stages[i].DeadLetters = maps.Clone(r.Stages[i].DeadLetters)
	}
	return r
}

func (j *Job) snapshot() Report {
	t := j.totals
	// The terminal counts first, then what came in: a unit is counted in before it can end, so
	// read in this order a live snapshot never shows more ended than came in (a negative
	// InFlight).
	r := Report{Pipeline: j.name, Started: j.started}
	for _, n := range j.nodes {
		d, f := n.Units()
		r.Delivered += d
		r.Filtered += f
	}
	r.DeadLettered, r.Returned, r.Stranded = t.DeadLettered.Load(), t.Returned.Load(), t.Stranded.Load()
	r.Rejected, r.Abandoned = t.Rejected.Load(), t.Abandoned.Load()
	r.Admitted, r.Spawned = t.Admitted.Load(), t.Spawned.Load()
	r.Duration = time.Since(j.started)
	r.Ingested = r.Admitted + r.Rejected + r.Spawned
	r.InFlight = r.Ingested - (r.Delivered + r.Filtered + r.DeadLettered + r.Rejected + r.Returned + r.Stranded)
	for _, n := range j.nodes {
		r.Stages = append(r.Stages, n.Stats())
	}
	return r
}

// Done is closed when the run is over.
func (j *Job) Done() <-chan struct{} { return j.done }

// Wait waits for the run to end and returns its Report, and an error only when the pipeline
// itself failed (a dead letter could not be written, or the source failed).
func (j *Job) Wait() (Report, error) {
	<-j.done
	return j.report.copied(), j.err
}

// Run runs the pipeline on src until the source ends (or ctx ends and the drain completes),
// and returns the Report. The error is non-nil only when the pipeline itself failed.
func (p *Pipeline[In]) Run(ctx context.Context, src Source[In]) (Report, error) {
	j, err := p.Start(ctx, src)
	if err != nil {
		return Report{}, err
	}
	return j.Wait()
}

// Start starts a run on src and returns at once. Cancelling ctx starts the drain: ingress stops,
// in-flight items get the drain timeout to finish, then the rest are parked.
func (p *Pipeline[In]) Start(ctx context.Context, src Source[In]) (*Job, error) {
	if ctx == nil {
		return nil, ErrNilContext
	}
	if src == nil {
		return nil, errors.New("pipeline: the source is nil")
	}
	r := p.newRun(ctx)
	first := r.nodes[0].input().(*core.Queue[In])
	first.AddProducers(1)
	r.start(func(srcCtx context.Context) error {
		defer first.ProducerDone()
		in := ingress[In]{q: first, ctx: srcCtx, done: srcCtx.Done()}
		in.policy, in.callerRuns = r.p.opts.overflow.Queue()
		admit := func(it Item[In]) error { return r.admit(&in, it) }
		var err error
		var c panics.Catcher
		c.Try(func() { err = src.Emit(srcCtx, admit) })
		if rec := c.Recovered(); rec != nil {
			err = fmt.Errorf("source panicked: %v\n%s", rec.Value, rec.Stack)
		}
		return err
	})
	return r.job, nil
}

// run is the shared machinery of Run and Replay.
type run[In any] struct {
	p          *Pipeline[In]
	ctx        context.Context
	env        *core.Env
	work       context.Context
	cancelWork context.CancelCauseFunc
	nodes      []node
	job        *Job

	failOnce sync.Once
	failed   atomic.Bool
	failErr  error

	// ackPanic is the first panic of a source's acknowledgement (see ackPanicked); onAckPanic is
	// ackPanicked as a func value, made once for every tracker of the run.
	ackPanic   atomic.Pointer[error]
	onAckPanic func(error)
	cancelSrc  context.CancelCauseFunc
}

func (p *Pipeline[In]) newRun(ctx context.Context) *run[In] {
	r := &run[In]{p: p, ctx: ctx}
	r.onAckPanic = r.ackPanicked
	r.work, r.cancelWork = context.WithCancelCause(context.WithoutCancel(ctx))
	var prefix [4]byte
	_, _ = rand.Read(prefix[:])
	r.env = &core.Env{
		Pipeline:   p.name,
		Prefix:     hex.EncodeToString(prefix[:]) + "-",
		Work:       r.work,
		Totals:     &core.Counters{},
		Logger:     p.opts.logger,
		DeadLetter: r.writeDeadLetter,
		Fail:       r.fail,
		Failed:     r.failed.Load,
		Seq:        &atomic.Uint64{},
		Clock:      core.Clock{Epoch: time.Now()},
		Tel:        p.tel,
	}
	r.nodes = make([]node, len(p.steps))
	var next any
	for i := len(p.steps) - 1; i >= 0; i-- {
		r.nodes[i] = p.steps[i].bind(r.env, next)
		next = r.nodes[i].input()
	}
	r.job = &Job{name: p.name, started: time.Now(), totals: r.env.Totals, nodes: r.nodes, done: make(chan struct{})}
	return r
}

// start starts the stages and the feeder, and finishes the job when every stage is done.
func (r *run[In]) start(feed func(ctx context.Context) error) {
	for i := len(r.nodes) - 1; i >= 0; i-- {
		r.nodes[i].Start()
	}
	srcCtx, cancelSrc := context.WithCancelCause(r.ctx)
	r.cancelSrc = cancelSrc
	stopSrc := context.AfterFunc(r.work, func() { cancelSrc(context.Cause(r.work)) })

	var drainMu sync.Mutex
	var drainTimer *time.Timer
	stopDrain := context.AfterFunc(r.ctx, func() {
		r.p.opts.logger.Info("sluice: draining", slog.String("pipeline", r.p.name),
			slog.Duration("drain_timeout", r.p.opts.drainTimeout))
		drainMu.Lock()
		drainTimer = time.AfterFunc(r.p.opts.drainTimeout, func() { r.cancelWork(ErrDrainTimeout) })
		drainMu.Unlock()
	})

	unregister, err := r.p.tel.RegisterStages(r.metricSnapshot)
	if err != nil {
		r.p.opts.logger.Warn("sluice: metrics not registered", slog.String("error", err.Error()))
		unregister = func() error { return nil }
	}

	feedDone := make(chan error, 1)
	go func() { feedDone <- feed(srcCtx) }()

	go func() {
		feedErr := <-feedDone
		for _, n := range r.nodes {
			<-n.Done()
		}
		stopDrain()
		drainMu.Lock()
		if drainTimer != nil {
			drainTimer.Stop()
		}
		drainMu.Unlock()
		stopSrc()
		cancelSrc(nil)
		_ = unregister()
		r.cancelWork(nil)
		j := r.job
		j.report = j.snapshot()
		switch {
		case r.failed.Load():
			j.err = r.failErr
		case feedErr != nil || r.ackPanic.Load() != nil:
			if p := r.ackPanic.Load(); p != nil {
				feedErr = errors.Join(feedErr, *p)
			}
			j.err = fmt.Errorf("pipeline %q: source failed: %w", r.p.name, feedErr)
		}
		close(j.done)
	}()
}

// metricSnapshot reads the stages' counters for the metrics callback.
func (r *run[In]) metricSnapshot() []tracing.StageSnapshot {
	out := make([]tracing.StageSnapshot, 0, len(r.nodes))
	for _, n := range r.nodes {
		st := n.Stats()
		dl := make(map[string]int64, len(st.DeadLetters))
		for k, v := range st.DeadLetters {
			dl[string(k)] = v
		}
		out = append(out, tracing.StageSnapshot{
			Stage: st.Name, In: st.In, Out: st.Out, Succeeded: st.Succeeded, Filtered: st.Filtered,
			Attempts: st.Attempts, Retries: st.Retries, Returned: st.Returned, Stranded: st.Stranded,
			DeadLetters: dl, Queued: st.Queued, Capacity: st.Capacity, Busy: st.Busy, Workers: st.Workers,
			Resizes: st.Resizes, CircuitOpens: st.CircuitOpens,
		})
	}
	return out
}

// ingress is what a run's admit needs, worked out once per run rather than per item.
type ingress[In any] struct {
	q          *core.Queue[In]
	ctx        context.Context // the source's: it ends when the run starts draining
	done       <-chan struct{} // ctx.Done()
	policy     core.Overflow
	callerRuns bool
}

// admit is the Admit of a run's source.
func (r *run[In]) admit(in *ingress[In], it Item[In]) error {
	srcCtx, q := in.ctx, in.q
	if err := srcCtx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrDraining, context.Cause(srcCtx))
	}
	t := r.env.Totals
	e := core.Envelope[In]{V: it.Value, M: core.Meta{Key: it.Key, Index: it.Index, Weight: 1}}
	if e.M.Key == "" {
		e.M.Seq = r.env.Seq.Add(1)
	}
	var itemDone <-chan struct{}
	var span trace.SpanContext
	if it.Context != nil {
		span = trace.SpanContextFromContext(it.Context)
		itemDone = it.Context.Done()
	}
	if !span.IsValid() && len(it.Headers) > 0 && r.p.tel.TracingEnabled() {
		// A message from another process: its trace goes on from the context in its headers.
		span = trace.SpanContextFromContext(tracing.Extract(context.Background(), it.Headers, r.p.tel.Propagator()))
	}
	h := it.Headers
	if len(h) > 0 {
		h = maps.Clone(h) // the caller may reuse its map once admit returns
	}
	e.M.X = core.NewExtra(it.Source, h, span)
	e.M.Tracker = core.NewRoot(it.Ack, r.onAckPanic)
	t.Admitted.Add(1)
	switch q.Offer(e, in.policy, in.done, itemDone) {
	case core.Admitted, core.Evicted:
		return nil
	case core.Closed:
		t.Admitted.Add(-1)
		return fmt.Errorf("%w: the source handed over an item after its Emit returned", ErrClosed)
	case core.Full:
		if in.callerRuns {
			q.Inline(e)
			return nil
		}
		t.Admitted.Add(-1)
		t.Rejected.Add(1)
		return ErrQueueFull
	}
	t.Admitted.Add(-1)
	if srcCtx.Err() != nil {
		return fmt.Errorf("%w: %w", ErrDraining, context.Cause(srcCtx))
	}
	return it.Context.Err()
}

// ackPanicked is called when a source's acknowledgement panicked (see core.NewRoot). As when a
// source's Emit fails, the first such panic stops the source, and the run fails with it once the
// items in flight are done; each one is logged.
func (r *run[In]) ackPanicked(err error) {
	r.p.opts.logger.Error("sluice: a source's acknowledgement panicked", slog.String("pipeline", r.p.name), slog.String("error", err.Error()))
	if r.ackPanic.CompareAndSwap(nil, &err) {
		r.cancelSrc(err)
	}
}

func (r *run[In]) fail(err error) {
	r.failOnce.Do(func() {
		r.failErr = err
		r.failed.Store(true)
		r.p.opts.logger.Error("sluice: run failed", slog.String("pipeline", r.p.name), slog.String("error", err.Error()))
		r.cancelWork(err)
	})
}

// writeDeadLetter writes a record durably: to the sink with retries, then to the fallback sink.
func (r *run[In]) writeDeadLetter(rec dlq.Record) error {
	ctx := context.WithoutCancel(r.ctx)
	err := writeWithRetry(ctx, r.p.opts.sink, rec, r.p.opts.dlqPolicy)
	if err != nil && r.p.opts.fallback != nil {
		r.p.opts.logger.Warn("sluice: dead-letter sink failed, using the fallback",
			slog.String("correlation_id", rec.CorrelationID), slog.String("stage", rec.Stage), slog.String("error", err.Error()))
		if ferr := writeWithRetry(ctx, r.p.opts.fallback, rec, r.p.opts.dlqPolicy); ferr != nil {
			err = errors.Join(err, fmt.Errorf("fallback: %w", ferr))
		} else {
			err = nil
		}
	}
	if err != nil {
		return &DeadLetterError{CorrelationID: rec.CorrelationID, Stage: rec.Stage, RecordID: rec.ID, Reason: rec.Reason, Err: err}
	}
	if h := r.p.opts.onDeadLetter; h != nil {
		// The record is durable: a panicking hook is logged, and changes nothing else.
		if err := protect("OnDeadLetter hook", h, func() error { h(rec); return nil }); err != nil {
			r.p.opts.logger.Error("sluice: "+err.Error(), slog.String("correlation_id", rec.CorrelationID),
				slog.String("stage", rec.Stage), slog.String("record_id", rec.ID))
		}
	}
	return nil
}

func writeWithRetry(ctx context.Context, sink dlq.Sink, rec dlq.Record, p retry.Policy) error {
	sched := p.Start()
	for {
		err := write(ctx, sink, rec)
		if err == nil {
			return nil
		}
		if errors.Is(err, dlq.ErrClosed) {
			return err
		}
		d, stop := sched.Next(err)
		if stop != retry.NoStop {
			return err
		}
		t := time.NewTimer(d)
		<-t.C
	}
}

// write is one write of rec to sink. A panic in the sink is a failed write (retried, then
// passed on to the fallback), not a crash.
func write(ctx context.Context, sink dlq.Sink, rec dlq.Record) error {
	return protect("dead-letter sink", sink, func() error { return sink.Write(ctx, rec) })
}

// protect calls f, a call of impl (a kind of user code: a sink, a store), and returns its
// error; a panic in f comes back as an error too, naming the kind and impl's type, with the
// panic's value and stack.
func protect(kind string, impl any, f func() error) (err error) {
	var c panics.Catcher
	c.Try(func() { err = f() })
	if p := c.Recovered(); p != nil {
		err = fmt.Errorf("%s %T panicked: %v\n%s", kind, impl, p.Value, p.Stack)
	}
	return err
}

// DeadLetters returns the dead letters kept in memory by a pipeline built without WithDLQ (or
// with a dlq.Store), or an error if its sink cannot be listed.
func (p *Pipeline[In]) DeadLetters(ctx context.Context) ([]dlq.Record, error) {
	st, ok := p.opts.sink.(dlq.Store)
	if !ok {
		return nil, fmt.Errorf("pipeline: the dead-letter sink %T cannot list its records", p.opts.sink)
	}
	return st.Records(ctx)
}
