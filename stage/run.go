package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/panics"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/internal/hist"
	"github.com/sluicehq/sluice/retry"
)

// ErrShutdown is the error of an item parked by a drain: the run stopped before the item was
// done. Such items are dead-lettered with reason shutdown, or handed back to a source that can
// redeliver them.
var ErrShutdown = errors.New("sluice: the run was stopped before the item was done")

// PanicError is the failure of an attempt whose function panicked.
type PanicError struct {
	// Value is the value the function panicked with.
	Value any
	// Stack is the stack of the panicking goroutine.
	Stack string
}

// Error implements error.
func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// ErrorType implements retry.ErrorTyper.
func (e *PanicError) ErrorType() string { return "panic" }

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// TimeoutError is the failure of an attempt that outlived the stage's per-attempt timeout.
type TimeoutError struct {
	// Timeout is the stage's per-attempt timeout.
	Timeout time.Duration
	// Err is what the function returned, if it returned.
	Err error
	// Abandoned is set when the function ignored its cancelled context past the grace period,
	// so its worker was replaced.
	Abandoned bool
}

// Error implements error.
func (e *TimeoutError) Error() string {
	if e.Abandoned {
		return fmt.Sprintf("attempt exceeded its timeout of %v and ignored cancellation; its worker was replaced", e.Timeout)
	}
	return fmt.Sprintf("attempt exceeded its timeout of %v: %v", e.Timeout, e.Err)
}

// ErrorType implements retry.ErrorTyper.
func (e *TimeoutError) ErrorType() string { return "timeout" }

// Unwrap returns the function's error.
func (e *TimeoutError) Unwrap() error { return e.Err }

// Stats are the counters of one stage. Item counts are envelopes (a batch output is one);
// the pipeline's Report also gives totals in source units.
type Stats struct {
	Name     string `json:"name"`
	Kind     Kind   `json:"kind"`
	Workers  int    `json:"workers"`  // size of the pool
	Busy     int    `json:"busy"`     // workers in an attempt now
	Capacity int    `json:"capacity"` // capacity of the input
	Queued   int    `json:"queued"`   // items in the input now

	In           int64 `json:"in"`            // items that reached the stage (queued, or parked on its behalf)
	Out          int64 `json:"out"`           // items it passed on (a flat-map's outputs, a batch's batches)
	Succeeded    int64 `json:"succeeded"`     // inputs whose call succeeded and that were passed on (or delivered)
	Filtered     int64 `json:"filtered"`      // inputs dropped on purpose
	Attempts     int64 `json:"attempts"`      // calls made
	Retries      int64 `json:"retries"`       // calls that were retries
	DeadLettered int64 `json:"dead_lettered"` // inputs durably dead-lettered, all reasons
	Returned     int64 `json:"returned"`      // inputs handed back unacknowledged to their source by a drain
	Stranded     int64 `json:"stranded"`      // inputs left without a terminal state because the run failed
	Abandoned    int64 `json:"abandoned"`     // workers given up on because their call ignored cancellation

	DeadLetters map[dlq.Reason]int64 `json:"dead_letters"` // dead letters by reason

	// Wait is how long items waited in the stage's input before a worker took them; Work is
	// how long a worker spent on them, retries and backoff included.
	Wait Latency `json:"wait"`
	Work Latency `json:"work"`
}

// Latency summarises a distribution of durations (quantiles to within about 7%).
type Latency struct {
	Count int64         `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P95   time.Duration `json:"p95_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

var reasons = [...]dlq.Reason{dlq.ReasonError, dlq.ReasonPermanent, dlq.ReasonTimeout, dlq.ReasonPanic,
	dlq.ReasonOverflow, dlq.ReasonShutdown, dlq.ReasonCircuitOpen}

func reasonIndex(r dlq.Reason) int {
	for i, x := range reasons {
		if x == r {
			return i
		}
	}
	return 0
}

type counters struct {
	in, out, succeeded, filtered, attempts, retries, returned, stranded, abandoned atomic.Int64
	deadLetters                                                                    [len(reasons)]atomic.Int64
}

// Runner is one stage running in one run of a pipeline. It is made by Bind and driven by
// package pipeline; programs do not need it.
type Runner[In, Out any] struct {
	s      *Stage[In, Out]
	env    *core.Env
	in     *core.Queue[In]
	next   *core.Queue[Out]
	policy retry.Policy
	budget *retry.Budget
	grace  time.Duration

	wg      sync.WaitGroup
	done    chan struct{}
	mu      sync.Mutex
	workers []*worker[In, Out]
	retired []*worker[In, Out] // abandoned workers, kept for their latency histograms
	stats   counters
}

// Bind makes a running instance of the stage for one run; next is the input of the following
// stage, nil for the last one (its outputs are delivered). It is used by package pipeline.
func (s *Stage[In, Out]) Bind(env *core.Env, next *core.Queue[Out]) *Runner[In, Out] {
	r := &Runner[In, Out]{
		s:      s,
		env:    env,
		in:     core.NewQueue[In](s.cfg.capacity),
		next:   next,
		policy: s.cfg.policy.Normalize(),
		grace:  s.cfg.grace,
		done:   make(chan struct{}),
	}
	r.budget = retry.NewBudget(r.policy.Budget)
	r.in.Park = func(e core.Envelope[In]) {
		r.stats.in.Add(1)
		r.park(e, 0, time.Time{})
	}
	return r
}

// Name returns the stage's name.
func (r *Runner[In, Out]) Name() string { return r.s.name }

// Input returns the stage's input queue.
func (r *Runner[In, Out]) Input() *core.Queue[In] { return r.in }

// AddProducers registers n more producers of the stage's input.
func (r *Runner[In, Out]) AddProducers(n int) { r.in.AddProducers(n) }

// ProducerDone is called by each producer of the stage's input when it will send no more.
func (r *Runner[In, Out]) ProducerDone() { r.in.ProducerDone() }

// Done is closed when every worker of the stage has exited.
func (r *Runner[In, Out]) Done() <-chan struct{} { return r.done }

// Start launches the stage's workers. Each worker exits when the input is closed and empty.
func (r *Runner[In, Out]) Start() {
	if r.next != nil {
		r.next.AddProducers(r.s.cfg.workers)
	}
	r.wg.Add(r.s.cfg.workers)
	r.mu.Lock()
	for range r.s.cfg.workers {
		w := r.newWorker()
		r.workers = append(r.workers, w)
		go w.run()
	}
	r.mu.Unlock()
	stop := context.AfterFunc(r.env.Work, r.drainWatch)
	go func() {
		r.wg.Wait()
		stop()
		close(r.done)
	}()
}

// drainWatch runs when the run's work context ends: calls still running a grace period later
// ignore their cancelled context, and their workers are released so the run can finish.
func (r *Runner[In, Out]) drainWatch() {
	t := time.NewTimer(r.grace)
	defer t.Stop()
	select {
	case <-r.done:
		return
	case <-t.C:
	}
	r.mu.Lock()
	ws := append([]*worker[In, Out](nil), r.workers...)
	r.mu.Unlock()
	for _, w := range ws {
		if w.tryAbandon() {
			r.abandon(w)
		}
	}
}

// Stats returns a snapshot of the stage's counters.
func (r *Runner[In, Out]) Stats() Stats {
	st := Stats{
		Name:     r.s.name,
		Kind:     r.s.kind,
		Workers:  r.s.cfg.workers,
		Capacity: r.s.cfg.capacity,
		Queued:   len(r.in.C),

		In:        r.stats.in.Load(),
		Out:       r.stats.out.Load(),
		Succeeded: r.stats.succeeded.Load(),
		Filtered:  r.stats.filtered.Load(),
		Attempts:  r.stats.attempts.Load(),
		Retries:   r.stats.retries.Load(),
		Returned:  r.stats.returned.Load(),
		Stranded:  r.stats.stranded.Load(),
		Abandoned: r.stats.abandoned.Load(),

		DeadLetters: map[dlq.Reason]int64{},
	}
	for i, reason := range reasons {
		if n := r.stats.deadLetters[i].Load(); n > 0 {
			st.DeadLetters[reason] = n
			st.DeadLettered += n
		}
	}
	var wait, work hist.Snapshot
	r.mu.Lock()
	for _, w := range r.workers {
		if w.state.Load()&stateMask == stRunning {
			st.Busy++
		}
		wait.Add(&w.waitH)
		work.Add(&w.workH)
	}
	for _, w := range r.retired {
		wait.Add(&w.waitH)
		work.Add(&w.workH)
	}
	r.mu.Unlock()
	st.Wait, st.Work = latency(&wait), latency(&work)
	return st
}

func latency(s *hist.Snapshot) Latency {
	return Latency{Count: s.Count(), P50: s.Quantile(0.5), P95: s.Quantile(0.95), P99: s.Quantile(0.99), Max: s.Max()}
}

// Decode turns a dead-letter record's payload back into the stage's input.
func (r *Runner[In, Out]) decode(rec *dlq.Record) (In, error) {
	var zero In
	b, err := rec.PayloadBytes()
	if err != nil {
		return zero, err
	}
	if r.s.codec.JSON() != (rec.PayloadEncoding == "") {
		return zero, fmt.Errorf("payload encoding %q does not fit the stage's codec", rec.PayloadEncoding)
	}
	v, err := r.s.codec.Decode(b)
	if err != nil {
		return zero, fmt.Errorf("payload does not decode as the input of stage %q: %w", r.s.name, err)
	}
	return v, nil
}

// Check reports whether a dead-letter record's payload decodes as the stage's input.
func (r *Runner[In, Out]) Check(rec *dlq.Record) error {
	_, err := r.decode(rec)
	return err
}

// Inject decodes a dead-letter record's payload and puts the item, with meta, into the stage's
// input. It blocks while the input is full and returns ctx's error if ctx ends first.
func (r *Runner[In, Out]) Inject(ctx context.Context, rec *dlq.Record, meta core.Meta) error {
	v, err := r.decode(rec)
	if err != nil {
		return err
	}
	meta.Enqueued = time.Now().UnixNano()
	select {
	case r.in.C <- core.Envelope[In]{V: v, M: meta}:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// Worker states, in the low bits of worker.state; the high bits count attempts.
const (
	stIdle      = 0
	stRunning   = 1
	stAbandoned = 2
	stateMask   = 3
)

type worker[In, Out any] struct {
	r       *Runner[In, Out]
	ctx     context.Context
	info    info
	state   atomic.Uint64
	startNs atomic.Int64
	gen     uint64
	watch   *time.Timer
	waitH   hist.Hist
	workH   hist.Hist

	// The item or batch in an attempt, for the goroutine that abandons the worker. Written
	// before the attempt starts (published by the state store), read after a winning CAS.
	cur        []core.Envelope[In]
	curAttempt int
	curFirst   time.Time
	one        [1]core.Envelope[In]
}

func (r *Runner[In, Out]) newWorker() *worker[In, Out] {
	w := &worker[In, Out]{r: r}
	w.info.stage, w.info.prefix = r.s.name, r.env.Prefix
	w.ctx = context.WithValue(r.env.Work, infoKey{}, &w.info)
	if r.s.cfg.timeout > 0 {
		w.watch = time.AfterFunc(time.Hour, w.watchdog)
		w.watch.Stop()
	}
	return w
}

// exit is the end of a worker that was not abandoned (or whose abandonment released it).
func (r *Runner[In, Out]) exit() {
	if r.next != nil {
		r.next.ProducerDone()
	}
	r.wg.Done()
}

func (w *worker[In, Out]) run() {
	r := w.r
	if r.s.kind == KindBatch {
		if w.runBatch() {
			r.exit()
		}
		return
	}
	for e := range r.in.C {
		r.stats.in.Add(1)
		now := time.Now()
		w.waitH.Record(time.Duration(now.UnixNano() - e.M.Enqueued))
		if !w.handle(e, now) {
			return // abandoned: the abandoner took over this worker's duties
		}
		w.workH.Record(time.Since(now))
	}
	r.exit()
}

// begin marks the start of an attempt on items.
func (w *worker[In, Out]) begin(items []core.Envelope[In], attempt int, first time.Time) uint64 {
	w.cur, w.curAttempt, w.curFirst = items, attempt, first
	w.gen++
	w.startNs.Store(time.Now().UnixNano())
	s := w.gen<<2 | stRunning
	w.state.Store(s)
	if w.watch != nil {
		w.watch.Reset(w.r.s.cfg.timeout + w.r.grace)
	}
	return s
}

// end marks the end of an attempt; false means the worker was abandoned meanwhile and must
// exit at once without touching anything.
func (w *worker[In, Out]) end(s uint64) bool {
	if w.watch != nil {
		w.watch.Stop()
	}
	return w.state.CompareAndSwap(s, s&^stateMask|stIdle)
}

func (w *worker[In, Out]) tryAbandon() bool {
	s := w.state.Load()
	return s&stateMask == stRunning && w.state.CompareAndSwap(s, s&^stateMask|stAbandoned)
}

// watchdog fires timeout+grace after an attempt started.
func (w *worker[In, Out]) watchdog() {
	limit := w.r.s.cfg.timeout + w.r.grace
	if time.Since(time.Unix(0, w.startNs.Load())) < limit {
		return // a stale firing for an attempt that already ended
	}
	if w.tryAbandon() {
		w.r.abandon(w)
	}
}

// abandon takes over the item of a worker whose call ignores cancellation: it fails the item
// (or parks it during a drain), and replaces the worker, or releases its place when draining.
func (r *Runner[In, Out]) abandon(w *worker[In, Out]) {
	r.stats.abandoned.Add(1)
	r.env.Totals.Abandoned.Add(1)
	draining := r.env.Work.Err() != nil
	r.env.Logger.Warn("sluice: abandoned a call that ignores its cancelled context",
		slog.String("stage", r.s.name), slog.Int("attempt", w.curAttempt), slog.Bool("draining", draining))
	attempts := w.curAttempt
	for _, e := range w.cur {
		if draining {
			r.park(e, attempts-1, w.curFirst)
			continue
		}
		err := &TimeoutError{Timeout: r.s.cfg.timeout, Abandoned: true}
		r.deadLetter(e, dlq.ReasonTimeout, err, attempts, w.curFirst, "")
	}
	if draining {
		r.exit()
		return
	}
	nw := r.newWorker()
	r.mu.Lock()
	for i, x := range r.workers {
		if x == w {
			r.workers[i] = nw
		}
	}
	r.retired = append(r.retired, w)
	r.mu.Unlock()
	go nw.run()
}

type verdict uint8

const (
	vSuccess verdict = iota
	vFailed
	vShutdown
	vAbandoned
)

type failure struct {
	err      error
	reason   dlq.Reason
	attempts int
	first    time.Time
	stack    string
}

// attempts runs call under the stage's policy: per-attempt timeout, panic capture, retries with
// backoff, and the shutdown rules. items are the inputs the call works on.
func (w *worker[In, Out]) attempts(items []core.Envelope[In], first time.Time, call func(ctx context.Context) error) (verdict, failure) {
	r := w.r
	var sched retry.Schedule
	started := false
	if r.policy.MaxElapsedTime > 0 {
		sched, started = r.policy.StartWithBudget(r.budget), true
	}
	for attempt := 1; ; attempt++ {
		if len(items) == 1 {
			w.info.set(&items[0].M, attempt, r.policy.MaxAttempts)
		} else {
			w.info.set(&core.Meta{}, attempt, r.policy.MaxAttempts)
		}
		ctx, cancel := w.ctx, context.CancelFunc(nil)
		if r.s.cfg.timeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, r.s.cfg.timeout)
		}
		s := w.begin(items, attempt, first)
		var err error
		var c panics.Catcher
		c.Try(func() { err = call(ctx) })
		timedOut := cancel != nil && ctx.Err() == context.DeadlineExceeded
		if cancel != nil {
			cancel()
		}
		if !w.end(s) {
			return vAbandoned, failure{}
		}
		r.stats.attempts.Add(1)
		var stack string
		if p := c.Recovered(); p != nil {
			stack = fmt.Sprintf("panic: %v\n\n%s", p.Value, p.Stack)
			err = &PanicError{Value: p.Value, Stack: stack}
		}
		if err == nil {
			r.budget.OnSuccess()
			return vSuccess, failure{}
		}
		if r.env.Work.Err() != nil && stack == "" {
			return vShutdown, failure{attempts: attempt - 1, first: first}
		}
		reason := dlq.ReasonError
		switch {
		case stack != "":
			reason = dlq.ReasonPanic
		case retry.IsPermanent(err):
			reason = dlq.ReasonPermanent
		case timedOut:
			reason = dlq.ReasonTimeout
			err = &TimeoutError{Timeout: r.s.cfg.timeout, Err: err}
		}
		if !started {
			sched, started = r.policy.StartWithBudget(r.budget), true
		}
		delay, stop := sched.Next(err)
		if stop != retry.NoStop {
			return vFailed, failure{err: err, reason: reason, attempts: attempt, first: first, stack: stack}
		}
		r.stats.retries.Add(1)
		if r.env.Logger.Enabled(context.Background(), slog.LevelDebug) {
			r.env.Logger.Debug("sluice: retrying", r.itemAttrs(items, attempt, err, slog.Duration("delay", delay))...)
		}
		if !w.sleep(delay) {
			return vShutdown, failure{attempts: attempt, first: first}
		}
	}
}

func (r *Runner[In, Out]) itemAttrs(items []core.Envelope[In], attempt int, err error, more ...any) []any {
	attrs := []any{slog.String("stage", r.s.name), slog.Int("attempt", attempt)}
	if len(items) == 1 {
		attrs = append(attrs, slog.String("correlation_id", items[0].M.CorrelationID(r.env.Prefix)))
	} else {
		attrs = append(attrs, slog.Int("items", len(items)))
	}
	if err != nil {
		attrs = append(attrs, slog.String("error", err.Error()))
	}
	return append(attrs, more...)
}

// sleep waits d before a retry; false means the run's work ended first.
func (w *worker[In, Out]) sleep(d time.Duration) bool {
	if d <= 0 {
		return w.r.env.Work.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.r.env.Work.Done():
		return false
	}
}

// handle processes one input of a map, filter, flat-map or sink; false means the worker was
// abandoned and must exit.
func (w *worker[In, Out]) handle(e core.Envelope[In], now time.Time) bool {
	r := w.r
	if r.env.Work.Err() != nil {
		r.park(e, 0, time.Time{})
		return true
	}
	w.one[0] = e
	items := w.one[:]
	var (
		out  Out
		keep bool
		outs []Out
	)
	var v verdict
	var f failure
	if r.s.kind == KindFlatMap {
		v, f = w.attempts(items, now, func(ctx context.Context) (err error) {
			outs, err = r.s.many(ctx, e.V)
			return err
		})
	} else {
		v, f = w.attempts(items, now, func(ctx context.Context) (err error) {
			out, keep, err = r.s.one(ctx, e.V)
			return err
		})
	}
	if v == vAbandoned {
		return false // the abandoner owns the item now: touch nothing
	}
	w.one[0] = core.Envelope[In]{}
	switch v {
	case vShutdown:
		r.park(e, f.attempts, f.first)
		return true
	case vFailed:
		r.deadLetter(e, f.reason, f.err, f.attempts, f.first, f.stack)
		return true
	}
	if r.s.kind == KindFlatMap {
		r.emitMany(e, outs)
		return true
	}
	if !keep {
		r.filtered(e.M)
		return true
	}
	r.stats.succeeded.Add(1)
	r.emit(core.Envelope[Out]{V: out, M: e.M})
	return true
}

func (r *Runner[In, Out]) filtered(m core.Meta) {
	r.stats.filtered.Add(1)
	r.env.Totals.Filtered.Add(int64(m.Weight))
	m.Tracker.Done(core.Filtered)
}

// emit passes an output on to the next stage, or delivers it after the last one.
func (r *Runner[In, Out]) emit(e core.Envelope[Out]) {
	r.stats.out.Add(1)
	if r.next == nil {
		r.env.Totals.Delivered.Add(int64(e.M.Weight))
		e.M.Tracker.Done(core.Delivered)
		return
	}
	r.next.Send(r.env.Work, e)
}

func (r *Runner[In, Out]) emitMany(e core.Envelope[In], outs []Out) {
	if len(outs) == 0 {
		r.filtered(e.M)
		return
	}
	r.stats.succeeded.Add(1)
	r.env.Totals.Spawned.Add(int64(len(outs)) - int64(e.M.Weight))
	tr := e.M.Tracker.Fork(len(outs))
	parent := e.M.CorrelationID(r.env.Prefix)
	for i, o := range outs {
		m := e.M
		m.Key = parent + "/" + strconv.Itoa(i+1)
		m.Weight = 1
		m.Tracker = tr
		r.emit(core.Envelope[Out]{V: o, M: m})
	}
}

// runBatch is the loop of a batch worker: it fills a batch from the input until it is full, the
// oldest item has waited maxWait, or the input is closed. It returns false if abandoned.
func (w *worker[In, Out]) runBatch() bool {
	r := w.r
	timer := time.NewTimer(r.s.maxWait)
	timer.Stop()
	for {
		e, ok := <-r.in.C
		if !ok {
			return true
		}
		r.stats.in.Add(1)
		w.waitH.Record(time.Since(time.Unix(0, e.M.Enqueued)))
		items := make([]core.Envelope[In], 1, r.s.size)
		items[0] = e
		closed := false
		timer.Reset(r.s.maxWait)
	fill:
		for len(items) < r.s.size {
			select {
			case e, ok := <-r.in.C:
				if !ok {
					closed = true
					break fill
				}
				r.stats.in.Add(1)
				w.waitH.Record(time.Since(time.Unix(0, e.M.Enqueued)))
				items = append(items, e)
			case <-timer.C:
				break fill
			case <-r.env.Work.Done():
				break fill
			}
		}
		timer.Stop()
		now := time.Now()
		if !w.handleBatch(items, now) {
			return false
		}
		w.workH.Record(time.Since(now))
		if closed {
			return true
		}
	}
}

func (w *worker[In, Out]) handleBatch(items []core.Envelope[In], now time.Time) bool {
	r := w.r
	if r.env.Work.Err() != nil {
		for _, e := range items {
			r.park(e, 0, time.Time{})
		}
		return true
	}
	values := make([]In, len(items))
	for i := range items {
		values[i] = items[i].V
	}
	var out Out
	v, f := w.attempts(items, now, func(ctx context.Context) (err error) {
		out, err = r.s.batch(ctx, values)
		return err
	})
	switch v {
	case vAbandoned:
		return false
	case vShutdown:
		for _, e := range items {
			r.park(e, f.attempts, f.first)
		}
		return true
	case vFailed:
		for _, e := range items {
			r.deadLetter(e, f.reason, f.err, f.attempts, f.first, f.stack)
		}
		return true
	}
	r.stats.succeeded.Add(int64(len(items)))
	m := core.Meta{Seq: r.env.Seq.Add(1), Ingress: items[0].M.Ingress}
	trackers := make([]*core.Tracker, 0, len(items))
	for _, e := range items {
		m.Weight += e.M.Weight
		m.Ingress = min(m.Ingress, e.M.Ingress)
		if e.M.Tracker != nil {
			trackers = append(trackers, e.M.Tracker)
		}
	}
	m.Tracker = core.Group(trackers)
	r.emit(core.Envelope[Out]{V: out, M: m})
	return true
}

// park ends an item cut off by a drain: handed back to a source that can redeliver it, or
// dead-lettered with reason shutdown. attempts counts the attempts that failed before the cut.
func (r *Runner[In, Out]) park(e core.Envelope[In], attempts int, first time.Time) {
	if e.M.Tracker != nil && !r.env.Failed() {
		r.stats.returned.Add(1)
		r.env.Totals.Returned.Add(int64(e.M.Weight))
		e.M.Tracker.Done(core.NotDone)
		return
	}
	if first.IsZero() {
		first = time.Now()
	}
	r.deadLetter(e, dlq.ReasonShutdown, ErrShutdown, attempts, first, "")
}

// deadLetter writes the item's record durably and counts it, or strands the item and fails the
// run when the record cannot be written.
func (r *Runner[In, Out]) deadLetter(e core.Envelope[In], reason dlq.Reason, cause error, attempts int, first time.Time, stack string) {
	if r.env.Failed() {
		r.strand(e)
		return
	}
	now := time.Now()
	rec := dlq.Record{
		V:              dlq.Version,
		ID:             dlq.NewID(),
		CorrelationID:  e.M.CorrelationID(r.env.Prefix),
		Pipeline:       r.env.Pipeline,
		Stage:          r.s.name,
		Reason:         reason,
		Error:          cause.Error(),
		ErrorType:      retry.ErrorType(cause),
		Stack:          stack,
		Attempts:       attempts,
		MaxAttempts:    r.policy.MaxAttempts,
		Replays:        int(e.M.Replays),
		FirstAttemptAt: first.UTC(),
		FailedAt:       now.UTC(),
		Source:         e.M.SourceName(),
		Headers:        e.M.Headers,
	}
	if reason == dlq.ReasonShutdown {
		rec.ErrorType = "shutdown"
	}
	if sc := e.M.Span; sc.IsValid() {
		rec.TraceID, rec.SpanID = sc.TraceID().String(), sc.SpanID().String()
	}
	if b, err := r.s.codec.Encode(e.V); err != nil {
		rec.Payload = nil
		rec.Headers = withHeader(rec.Headers, "sluice.payload_error", err.Error())
	} else if r.s.codec.JSON() {
		rec.Payload = b
	} else {
		rec.Payload, rec.PayloadEncoding = dlq.EncodePayloadBytes(b)
	}
	if err := r.env.DeadLetter(rec); err != nil {
		r.strand(e)
		r.env.Fail(err)
		return
	}
	r.stats.deadLetters[reasonIndex(reason)].Add(1)
	r.env.Totals.DeadLettered.Add(int64(e.M.Weight))
	e.M.Tracker.Done(core.DeadLettered)
	level := slog.LevelWarn
	if reason == dlq.ReasonShutdown {
		level = slog.LevelInfo
	}
	r.env.Logger.Log(context.Background(), level, "sluice: dead-lettered",
		slog.String("stage", r.s.name), slog.String("correlation_id", rec.CorrelationID),
		slog.Int("attempt", attempts), slog.String("reason", string(reason)),
		slog.String("error", rec.Error), slog.String("record_id", rec.ID))
}

func withHeader(h map[string]string, k, v string) map[string]string {
	c := make(map[string]string, len(h)+1)
	for a, b := range h {
		c[a] = b
	}
	c[k] = v
	return c
}

// strand ends an item that can reach no terminal state because the run failed.
func (r *Runner[In, Out]) strand(e core.Envelope[In]) {
	r.stats.stranded.Add(1)
	r.env.Totals.Stranded.Add(int64(e.M.Weight))
	e.M.Tracker.Done(core.NotDone)
}
