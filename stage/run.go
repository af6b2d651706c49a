package stage

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sourcegraph/conc/panics"
	"golang.org/x/time/rate"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/breaker"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/internal/hist"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/tracing"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// maxTake is the most items a worker takes from its input at once.
const maxTake = 32

// slowCall is the work time from which every item is timed (below it, one in
// core.SampleEvery).
const slowCall = 4 * time.Microsecond

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
	take   int // how many items a worker takes at most
	tel    *tracing.StageTelemetry
	traced bool // a span per item
	// lean: no timeout, rate limit or breaker, and a retry policy without an elapsed-time
	// budget: the first attempt of an item runs on a short path (see handle).
	lean   bool
	guards guards[In]
	// filling is held by the one batch worker filling a batch (see runBatch); nil for other kinds.
	filling chan struct{}

	wg      sync.WaitGroup
	done    chan struct{}
	mu      sync.Mutex
	workers []*worker[In, Out]
	retired []*worker[In, Out] // abandoned workers, kept for their counters
	inline  []*worker[In, Out] // workers lent to callers that run the stage themselves
	free    []*worker[In, Out] // the inline workers not in use
	live    int                // pool workers that have not exited (under mu)
	stats   counters
	resizes atomic.Int64
	// timings are the queue waits and work times the workers record (one item in
	// core.SampleEvery when the stage is fast), in shards: a worker records into the one it was
	// given (see newWorker). There is one per worker up to four per processor, so that two
	// workers running at once seldom write to the same one (its cache lines would move between
	// processors on every record), and a pool of many more workers than processors (a slow
	// stage's) does not pay 8 KiB a worker.
	timings []timings
	made    atomic.Int64 // workers made, to deal them the shards
}

// timings is one shard of a stage's latency histograms.
type timings struct{ wait, work hist.Hist }

// Slots returns how many items the stage holds at most, queued or in its workers' hands:
// its capacity plus one item per worker (one batch per worker for a batch stage).
func (s *Stage[In, Out]) Slots() int {
	return s.cfg.capacity + s.cfg.workers*s.BatchSize()
}

// Bind makes a running instance of the stage for one run; next is the input of the following
// stage, nil for the last one (its outputs are delivered). It is used by package pipeline.
func (s *Stage[In, Out]) Bind(env *core.Env, next *core.Queue[Out]) *Runner[In, Out] {
	r := &Runner[In, Out]{
		s:      s,
		env:    env,
		in:     core.NewQueue[In](s.Slots(), s.cfg.workers, env.Clock),
		next:   next,
		policy: s.cfg.policy.Normalize(),
		grace:  s.cfg.grace,
		done:   make(chan struct{}),
		take:   maxTake,
		// (workers is the largest pool size of an autoscaled stage)
		timings: make([]timings, max(1, min(s.cfg.workers, 4*runtime.GOMAXPROCS(0)))),
	}
	if s.kind == KindBatch {
		r.take = s.size
		r.filling = make(chan struct{}, 1)
	}
	r.budget = retry.NewBudget(r.policy.Budget)
	r.newGuards()
	r.lean = s.cfg.timeout == 0 && s.cfg.limit == nil && s.cfg.breaker == nil && r.policy.MaxElapsedTime <= 0
	r.tel = env.Tel.Stage(s.name)
	r.traced = env.Tel.TracingEnabled()
	r.in.Park = func(e core.Envelope[In]) {
		r.stats.in.Add(1)
		r.park(e, 0, time.Time{}, nil)
	}
	r.in.Evict = func(e core.Envelope[In]) {
		r.stats.in.Add(1)
		r.deadLetter(e, dlq.ReasonOverflow, ErrOverflow, 0, time.Now(), "", nil)
	}
	r.in.Policy, _ = s.cfg.overflow.Queue()
	r.in.Inline = r.runInline
	if env.Totals != nil {
		r.in.Offered = &env.Totals.Admitted // the source's admissions and Inject's both count first
	}
	if r.traced || s.kind == KindBatch {
		r.in.StampAll() // a span, or a batch's max wait, needs every item's queue wait
	}
	if s.kind != KindBatch {
		r.in.MayUnpop() // a worker waiting out a retry gives its other items back (giveBack)
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
	n := r.s.cfg.workers
	if a := r.s.cfg.autoscale; a != nil {
		n = a.min
	}
	r.mu.Lock()
	r.spawn(n)
	r.mu.Unlock()
	stop := context.AfterFunc(r.env.Work, r.drainWatch)
	if r.s.cfg.autoscale != nil {
		go r.control()
	}
	go func() {
		r.wg.Wait()
		stop()
		close(r.done)
	}()
}

// spawn adds n workers to the pool; the caller holds r.mu, and the pool is not over (at the
// start, or while a worker is live, so the wait group and the next queue's producers are
// still counting).
func (r *Runner[In, Out]) spawn(n int) {
	if r.next != nil {
		r.next.AddProducers(n)
	}
	r.wg.Add(n)
	r.live += n
	for range n {
		w := r.newWorker()
		r.workers = append(r.workers, w)
		go w.run()
	}
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
	ws := append(append([]*worker[In, Out](nil), r.workers...), r.inline...)
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
		Capacity: r.s.cfg.capacity,
		Queued:   r.in.Len(),

		In:        r.stats.in.Load(),
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
	add := func(w *worker[In, Out]) {
		st.In += w.c.in.Load()
		st.Out += w.c.out.Load()
		st.Succeeded += w.c.succeeded.Load()
		st.Filtered += w.c.filtered.Load()
		st.Attempts += w.c.attempts.Load()
		st.Retries += w.c.retries.Load()
	}
	r.mu.Lock()
	st.Workers = len(r.workers)
	st.Resizes = r.resizes.Load()
	st.CircuitOpens = r.stats.circuitOpens.Load()
	for _, w := range r.workers {
		if w.state.Load()&stateMask == stRunning {
			st.Busy++
		}
		add(w)
	}
	for _, w := range r.retired {
		add(w)
	}
	for _, w := range r.inline {
		add(w)
	}
	r.mu.Unlock()
	var wait, work hist.Snapshot
	for i := range r.timings {
		wait.Add(&r.timings[i].wait)
		work.Add(&r.timings[i].work)
	}
	st.Wait, st.Work = latency(&wait), latency(&work)
	return st
}

// Units returns the source units the stage delivered (as the last stage) and filtered.
func (r *Runner[In, Out]) Units() (delivered, filtered int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, ws := range [][]*worker[In, Out]{r.workers, r.retired, r.inline} {
		for _, w := range ws {
			delivered += w.c.deliveredUnits.Load()
			filtered += w.c.filteredUnits.Load()
		}
	}
	return delivered, filtered
}

// payloadErrorHeader is the header of a dead-letter record whose item could not be encoded: the
// codec's error. Such a record has no payload, and cannot be replayed.
const payloadErrorHeader = "sluice.payload_error"

// decode turns a dead-letter record's payload back into the stage's input.
func (r *Runner[In, Out]) decode(rec *dlq.Record) (In, error) {
	var zero In
	b, err := rec.PayloadBytes()
	if err != nil {
		return zero, err
	}
	if r.s.codec.JSON() != (rec.PayloadEncoding == "") {
		return zero, fmt.Errorf("payload encoding %q does not fit the stage's codec", rec.PayloadEncoding)
	}
	if len(b) == 0 && rec.PayloadEncoding == "" {
		if e, ok := rec.Headers[payloadErrorHeader]; ok {
			return zero, fmt.Errorf("the record has no payload: its item could not be encoded (%s)", e)
		}
		b = []byte("null") // an empty JSON payload is null (a nil slice, map or pointer)
	}
	v, err := codecCall("Decode", func() (In, error) { return r.s.codec.Decode(b) })
	if err != nil {
		return zero, fmt.Errorf("payload does not decode as the input of stage %q: %w", r.s.name, err)
	}
	return v, nil
}

// codecCall runs a call of the stage's codec, user code like the stage's function: a panic is
// an error of the call (the record keeps it as its payload error, a replay skips the record),
// not the end of the process.
func codecCall[T any](method string, f func() (T, error)) (v T, err error) {
	var c panics.Catcher
	c.Try(func() { v, err = f() })
	if p := c.Recovered(); p != nil {
		var zero T
		return zero, fmt.Errorf("codec %s panicked: %v", method, p.Value)
	}
	return v, err
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
	switch r.in.Offer(core.Envelope[In]{V: v, M: meta}, core.OverflowBlock, ctx.Done(), nil) {
	case core.Admitted:
		return nil
	case core.Closed:
		return fmt.Errorf("stage %q takes no more input", r.s.name)
	}
	return context.Cause(ctx)
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
	t       *timings // the shard of the stage's histograms it records into
	c       wcounters
	lc      wlocal // counted per item, published to c per batch (see publish)
	catch   *panics.Catcher
	seq     uint32
	timeAll bool // time every item: the stage's calls are slow enough (or traced, or guarded)
	fast    bool // the last timed call was fast: take all that is queued (see Queue.Pop)
	// returning: the worker said it is on its way back to Pop (see Queue.Returning); heldUp
	// revokes that when its push downstream is held up (see Queue.PushWith).
	returning bool
	heldUp    func()

	// The items taken from the input: buf[:k], of which buf[i] is in hand; the outputs not yet
	// pushed to the next stage; when they were taken (on the run's clock).
	buf     []core.Envelope[In]
	k, i    int
	out     []core.Envelope[Out]
	takenAt int64
	// resume is set on a worker that replaces an abandoned one: it finishes buf[i+1:k] first.
	resume bool
	// inline is set on a worker lent to a caller that runs the stage itself; gone is closed
	// when its call is abandoned, which releases the caller.
	inline bool
	gone   chan struct{}
	// quit is closed to retire the worker (autoscaling); retiring is set with it, under r.mu.
	quit     chan struct{}
	retiring bool

	// The item or batch in an attempt, for the goroutine that abandons the worker. Written
	// before the attempt starts (published by the state store), read after a winning CAS.
	cur        []core.Envelope[In]
	curAttempt int
	curStart   int64
	curSpan    trace.Span
	// curBreaker is the breaker that let the attempt's call through (nil when none did, and
	// between attempts): the abandoner reports the call's failure to it (see attempts).
	curBreaker *breaker.Breaker
	// claim is the state of a worker that claimed its whole batch (cur) with one begin, for
	// first attempts on the short path (see work); 0 when it has not. whole tells the abandoner
	// so: it then reads nothing the worker writes (outputs, counts) and parks the whole batch.
	claim   uint64
	whole   bool
	credits int // successes of claimed items, credited to the retry budget once they stand

	// The state of the tight loop (see quick): the call of buf[i] was made (and did not succeed:
	// failed holds its error, catch a panic); the worker was abandoned during a call; the state
	// of an unclaimed attempt that is running.
	called, lost bool
	failed       error
	fastRunning  uint64
	quickStart   int64 // when the call of buf[i] started, if it is timed (one in core.SampleEvery)
	// timing is the work time of a claimed call, recorded when the claim ends (a claim holds at
	// most 32 items, so at most one of its calls in core.SampleEvery is timed).
	timing pendingTiming
}

type pendingTiming struct {
	set     bool
	d       time.Duration
	changed bool
	outcome string
}

func (r *Runner[In, Out]) newWorker() *worker[In, Out] {
	n := r.take
	if r.s.kind != KindBatch {
		n = min(2, n) // it grows as pops fill it (see grow)
	}
	w := &worker[In, Out]{r: r, buf: make([]core.Envelope[In], n), seq: core.SampleEvery - 1, catch: new(panics.Catcher)}
	w.t = &r.timings[(r.made.Add(1)-1)%int64(len(r.timings))]
	if r.next != nil && r.s.kind != KindBatch {
		w.out = make([]core.Envelope[Out], 0, n)
	}
	w.info.stage, w.info.prefix = r.s.name, r.env.Prefix
	w.heldUp = func() {
		if w.returning {
			w.returning = false
			r.in.Revoke()
		}
	}
	w.ctx = context.WithValue(r.env.Work, infoKey{}, &w.info)
	if r.s.cfg.timeout > 0 {
		w.watch = time.AfterFunc(time.Hour, w.watchdog)
		w.watch.Stop()
	}
	w.timeAll = r.s.cfg.timeout > 0 || r.s.cfg.autoscale != nil
	if r.s.cfg.autoscale != nil {
		w.quit = make(chan struct{})
	}
	return w
}

// runInline runs the stage on one item for the caller (the CallerRuns overflow policy at
// ingress), with a worker of its own, and passes the output on. The call runs in a goroutine of
// its own so that, if it ignores its context and is abandoned, the caller is released.
func (r *Runner[In, Out]) runInline(e core.Envelope[In]) {
	r.mu.Lock()
	var w *worker[In, Out]
	if n := len(r.free); n > 0 {
		w, r.free = r.free[n-1], r.free[:n-1]
	} else {
		w = r.newWorker()
		w.inline = true
		r.inline = append(r.inline, w)
	}
	w.gone = make(chan struct{})
	r.mu.Unlock()
	w.buf[0], w.k = e, 1
	inc(&w.c.in, 1)
	done := make(chan bool, 1)
	go func() { done <- w.work(0) }()
	select {
	case ok := <-done:
		if ok {
			r.mu.Lock()
			r.free = append(r.free, w)
			r.mu.Unlock()
		}
	case <-w.gone:
		// Abandoned: the item was dead-lettered or parked; the call runs on unobserved.
	}
}

// exit is the end of a worker that was not abandoned (or whose abandonment released it). A
// worker retired by the autoscaler leaves the pool's list.
func (r *Runner[In, Out]) exit(w *worker[In, Out]) {
	r.mu.Lock()
	r.live--
	if w.retiring {
		r.workers = slices.DeleteFunc(r.workers, func(x *worker[In, Out]) bool { return x == w })
		r.retired = append(r.retired, w)
	}
	r.mu.Unlock()
	if r.next != nil {
		r.next.ProducerDone()
	}
	r.wg.Done()
}

func (w *worker[In, Out]) run() {
	r := w.r
	if r.s.kind == KindBatch {
		if w.runBatch() {
			r.exit(w)
		}
		return
	}
	release := 0
	if w.resume {
		if !w.work(w.i + 1) {
			return
		}
		release = w.k
	}
	for {
		if w.returning {
			w.returning = false
			r.in.Returned()
		}
		k, ok := r.in.Pop(w.buf, !w.fast, release, nil, w.quit)
		if !ok || k == 0 {
			release = 0
			break // the end of the input, or retired by the autoscaler
		}
		w.k = k
		inc(&w.c.in, int64(k))
		if !w.work(0) {
			return // abandoned: the abandoner took over this worker's duties
		}
		release = w.k // less than k if the worker gave items back (see giveBack)
		if k == len(w.buf) && k < r.take {
			w.grow()
		}
	}
	r.exit(w)
}

// grow doubles the worker's buffers, up to the stage's take, after a pop filled them (the
// worker is between batches: they are empty). A worker whose calls are slow takes its share of
// the queue, often one item, and never needs more, so a pool of many slow workers stays small.
func (w *worker[In, Out]) grow() {
	n := min(2*len(w.buf), w.r.take)
	w.buf = make([]core.Envelope[In], n)
	if w.out != nil {
		w.out = make([]core.Envelope[Out], 0, n)
	}
}

// work processes buf[from:k], then pushes the outputs on; false means the worker was
// abandoned and must exit at once.
//
// The first attempts of a fast lean map, filter or sink run in one tight loop (see quick); what
// needs more than a first attempt that succeeds goes item by item through handle.
//
// A worker of a fast lean map or filter that is not the last stage claims its whole batch at
// once: one begin and one end for the batch instead of one each per item (two locked
// instructions an item, about a tenth of such a stage's cost). Between them it keeps to itself:
// outputs stay in w.out, counts in w.lc, retry-budget credits in w.credits; anything another
// goroutine would see of an item's fate (an ack, a park, a dead letter, a retry, a flush) ends
// the claim first, and the rest of the batch goes item by item. (A sampled queue wait or work
// time is recorded during the claim: it measures a wait or a call that happened, whatever
// becomes of the item.) If a call of a claimed batch hangs past a drain's grace, the abandoner
// cannot tell which items are done, so it parks all the claimed items, done ones included (their
// outputs had not left the worker): at least once, nothing lost.
func (w *worker[In, Out]) work(from int) bool {
	if from == 0 && w.r.env.Work.Err() == nil && w.claimable() {
		w.whole = true
		w.claim = w.begin(w.buf[:w.k], 1, 0)
	}
	for w.i = from; w.i < w.k; w.i++ {
		if w.fastable() {
			w.called, w.failed, w.lost = false, nil, false
			w.catch.Try(w.quick)
			if !w.called && w.catch.Recovered() != nil {
				// Not the call's panic but one of what follows it (a source's ack, the
				// dead-letter sink): as outside the loop, it is not taken for a failed attempt.
				w.catch.Repanic()
			}
			if w.lost {
				return false // abandoned during a call: the abandoner owns the item
			}
			if w.i == w.k {
				break
			}
			if w.called {
				// The first attempt of buf[i] failed or panicked: handle goes on from there.
				if w.fastRunning != 0 && !w.end(w.fastRunning) {
					return false // (a panic skipped the end of an unclaimed attempt)
				}
				w.fastRunning = 0
				if w.catch.Recovered() != nil {
					w.lc.attempts++ // (a panic skipped the count)
				}
				err := w.failed
				if !w.handle(w.i, &err) {
					return false
				}
				continue
			}
		}
		if !w.handle(w.i, nil) {
			return false
		}
		if w.timeAll {
			if !w.unclaim() {
				return false
			}
			w.flush() // slow calls: pass each output on, and count it, at once
			w.publish()
		}
	}
	if !w.unclaim() {
		return false
	}
	clear(w.buf[:w.k])
	if w.fast && !w.inline {
		// Its calls are fast and done: it comes straight back to Pop (see Queue.Returning),
		// calling nothing but the push of its outputs (flush) on the way.
		w.returning = true
		w.r.in.Returning()
	}
	w.flush()
	w.publish()
	return true
}

// fastable says whether the worker's next items may run on the tight loop (see quick): a lean,
// untraced map, filter or sink whose calls were fast when last timed. (During a drain the loop
// stops before each call, and handle parks the item.)
func (w *worker[In, Out]) fastable() bool {
	r := w.r
	return r.lean && !r.traced && r.s.one != nil && r.s.kind != KindBatch && !w.timeAll && !w.inline
}

// quick runs the first attempts of buf[w.i:w.k] in one loop, under w.catch.Try (one deferred
// recover for many calls). A success is passed on (see emit) and counted at once; one call in
// core.SampleEvery is timed. It stops at the first item that needs more than that: before its
// call when the item is an acknowledged input of a claimed filter (its ack ends the claim), or
// the run's work ended (a drain parks it); after its call when the call failed or panicked
// (called is then left set, failed holds the error, w.catch the panic), or when its timing shows
// that calls got slow. It sets lost when the worker was abandoned during an unclaimed call.
func (w *worker[In, Out]) quick() {
	r := w.r
	one, maxAttempts := r.s.one, r.policy.MaxAttempts
	ackFilter := r.s.kind == KindFilter && w.claim != 0
	for ; w.i < w.k; w.i++ {
		e := &w.buf[w.i]
		if (ackFilter && e.M.Tracker != nil) || r.env.Work.Err() != nil {
			return
		}
		w.seq++
		w.quickStart = 0
		if w.seq%core.SampleEvery == 0 {
			w.quickStart = max(r.env.Clock.Now(), 1) // (0: not timed)
		}
		if e.M.Enqueued != 0 {
			now := w.quickStart
			if now == 0 {
				now = r.env.Clock.Now()
			}
			wait := time.Duration(now - e.M.Enqueued)
			w.t.wait.Record(wait)
			r.tel.RecordWait(w.ctx, wait)
		}
		w.info.set(&e.M, 1, maxAttempts)
		// Read before the attempt starts: once it has, an abandoner may hand the buffer to a
		// replacement, which pops other items into it.
		in := e.V
		if w.claim == 0 {
			w.fastRunning = w.begin(w.buf[w.i:w.i+1], 1, w.quickStart)
		}
		w.called = true
		out, keep, err := one(w.ctx, in)
		if s := w.fastRunning; s != 0 {
			w.fastRunning = 0
			if !w.end(s) {
				w.lost = true // the abandoner owns the item and the counts: touch nothing
				return
			}
		}
		w.lc.attempts++
		if err != nil {
			w.failed = err
			return
		}
		w.called = false
		if w.claim != 0 {
			w.credits++
		} else {
			r.budget.OnSuccess()
		}
		outcome := tracing.OutcomeSucceeded
		if !keep {
			outcome = tracing.OutcomeFiltered
			w.filtered(e.M)
		} else {
			w.lc.succeeded++
			w.emit(out, &e.M)
		}
		if w.quickStart != 0 {
			if w.claim == 0 {
				w.stopTiming(w.quickStart, w.ctx, outcome, nil)
			} else {
				// Recorded when the claim ends, if it stands (see unclaim): a call that hung
				// past a drain's grace must leave no trace once it returns.
				d, changed := w.judge(w.quickStart)
				w.timing = pendingTiming{set: true, d: d, changed: changed, outcome: outcome}
			}
			if w.timeAll {
				w.i++ // the calls got slow: the rest of the batch goes item by item
				return
			}
		}
	}
}

// claimable says whether the worker may claim its batch (see work): a lean stage that is not
// traced, is not the last (whose calls deliver: parking a delivered item would misreport it),
// and has at most one output per item, on a worker that does not time every item (its calls
// were fast when last timed; the tight loop records the work time of its one timed call in
// core.SampleEvery when the claim ends) and whose last batch is all passed on and counted.
func (w *worker[In, Out]) claimable() bool {
	r := w.r
	return r.lean && !r.traced && r.next != nil && r.s.kind != KindFlatMap && !w.timeAll && !w.inline &&
		len(w.out) == 0 && w.lc == (wlocal{})
}

// unclaim ends the worker's claim on its batch, if it has one; false means the worker was
// abandoned meanwhile and must exit at once without touching anything.
func (w *worker[In, Out]) unclaim() bool {
	if w.claim == 0 {
		return true
	}
	s := w.claim
	w.claim = 0
	if !w.end(s) {
		return false
	}
	w.whole = false
	for ; w.credits > 0; w.credits-- {
		w.r.budget.OnSuccess() // the successes of the claimed items, now that they stand
	}
	if t := w.timing; t.set {
		w.timing = pendingTiming{}
		w.recordTiming(w.ctx, t.d, t.changed, t.outcome, nil) // the timed call of the claim, now that it stands
	}
	return true
}

// flush pushes the outputs waiting in the worker to the next stage.
func (w *worker[In, Out]) flush() {
	if len(w.out) == 0 {
		return
	}
	inc(&w.c.out, int64(len(w.out)))
	w.publish() // before the outputs can reach the end of the run
	// While the push waits for room, the items of a map wait for this worker (they need room
	// too); a filter's or flat-map's may need none: an idle worker is woken for them.
	w.r.next.PushWith(w.r.env.Work.Done(), w.out, w.heldUp, w.r.s.kind != KindMap)
	clear(w.out)
	w.out = w.out[:0]
}

// publish adds the per-item counts of the worker to its shared counters: one atomic write per
// counter per batch instead of several per item. The worker calls it between attempts; the
// goroutine that abandons the worker calls it for the worker (it then owns it).
func (w *worker[In, Out]) publish() {
	l := &w.lc
	if *l == (wlocal{}) {
		return
	}
	for _, c := range [...]struct {
		n *int64
		c *atomic.Int64
	}{{&l.attempts, &w.c.attempts}, {&l.succeeded, &w.c.succeeded}, {&l.filtered, &w.c.filtered},
		{&l.filteredUnits, &w.c.filteredUnits}, {&l.deliveredUnits, &w.c.deliveredUnits}, {&l.out, &w.c.out}} {
		if *c.n != 0 {
			inc(c.c, *c.n)
			*c.n = 0
		}
	}
}

// begin marks the start of an attempt on items.
func (w *worker[In, Out]) begin(items []core.Envelope[In], attempt int, start int64) uint64 {
	w.cur, w.curAttempt, w.curStart = items, attempt, start
	w.gen++
	if w.watch != nil {
		w.startNs.Store(w.r.env.Clock.Now())
	}
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
	// The state first, then its start (begin stores them in the other order): abandon exactly
	// the attempt whose start was checked, never the next one.
	s := w.state.Load()
	if s&stateMask != stRunning {
		return
	}
	limit := w.r.s.cfg.timeout + w.r.grace
	if time.Duration(w.r.env.Clock.Now()-w.startNs.Load()) < limit {
		return // a stale firing for an attempt that already ended
	}
	if w.state.CompareAndSwap(s, s&^stateMask|stAbandoned) {
		w.r.abandon(w)
	}
}

// abandon takes over the items of a worker whose call ignores cancellation: it fails the item
// in the call (or parks it during a drain) and hands the rest to a replacement worker.
func (r *Runner[In, Out]) abandon(w *worker[In, Out]) {
	if !w.whole {
		w.publish() // the counts of the worker's earlier items
	} // else the counts are of the claimed batch, which is parked whole (see work)
	r.stats.abandoned.Add(1)
	r.env.Totals.Abandoned.Add(1)
	draining := r.env.Work.Err() != nil
	r.env.Logger.Warn("sluice: abandoned a call that ignores its cancelled context",
		r.itemAttrs(w.cur, w.curAttempt, nil, slog.Bool("draining", draining))...)
	if w.curBreaker != nil {
		// The call failed: its breaker learns of it now, not when (if ever) the call returns,
		// which would keep a half-open breaker's probe slot taken meanwhile. The abandoned
		// goroutine reports nothing.
		r.breakerDone(w.curBreaker, false, w.curSpan)
	}
	attempts, first := w.curAttempt, r.wallTime(w.curStart)
	for _, e := range w.cur {
		if draining {
			r.park(e, attempts-1, first, w.curSpan)
			continue
		}
		err := &TimeoutError{Timeout: r.s.cfg.timeout, Abandoned: true}
		r.deadLetter(e, dlq.ReasonTimeout, err, attempts, first, "", w.curSpan)
	}
	if w.inline {
		close(w.gone) // release the caller; the pool is unaffected
		return
	}
	if r.s.kind == KindBatch || w.whole {
		r.in.Release(w.k) // nothing is left in the worker's hands beyond what was parked
	}
	// A replacement takes the worker's place, its remaining items and its outputs, also during
	// a drain: there it parks them, and what is still queued, until the input closes.
	nw := r.newWorker()
	if r.s.kind != KindBatch && !w.whole {
		nw.buf, nw.k, nw.i, nw.out, nw.resume = w.buf, w.k, w.i, w.out, true
	}
	r.mu.Lock()
	for i, x := range r.workers {
		if x == w {
			r.workers[i] = nw
		}
	}
	if w.retiring {
		// The autoscaler was retiring this worker: the replacement finishes what it inherits,
		// then retires in its place.
		nw.retiring = true
		close(nw.quit)
	}
	r.retired = append(r.retired, w) // kept for its counters
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

// attempts runs call under the stage's policy: rate limit and circuit breaker, per-attempt
// timeout (from the call's start), panic capture (of the guards' key functions too), retries
// with backoff, and the shutdown rules. items are the inputs the call works on; start is when the
// worker started on them (on the run's clock).
//
// first, if not nil, is the error of a first attempt that the caller already made on the short
// path of a lean stage (see handle), ending in an error or a panic (held by w.catch): attempts
// goes on from there.
func (w *worker[In, Out]) attempts(items []core.Envelope[In], start int64, base context.Context, span trace.Span, call func(ctx context.Context) error, first *error) (verdict, failure) {
	r := w.r
	var sched retry.Schedule
	started := false
	if r.policy.MaxElapsedTime > 0 {
		sched, started = r.policy.StartWithBudget(r.budget), true
	}
	for attempt := 1; ; attempt++ {
		var err error
		var stack string
		var br *breaker.Breaker
		allowed, timedOut, keyPanicked := false, false, false
		if attempt == 1 && first != nil {
			err = *first // the attempt was made and counted; a lean stage has no breaker
		} else {
			if len(items) == 1 && r.s.kind != KindBatch { // (a batch call has no correlation ID, even of one item)
				w.info.set(&items[0].M, attempt, r.policy.MaxAttempts)
			} else {
				w.info.set(&core.Meta{}, attempt, r.policy.MaxAttempts)
			}
			// The key functions are user code: a panic in one fails the attempt as a panic of
			// the call does (below), with no call made.
			var l *rate.Limiter
			w.catch.Try(func() { l, br = r.guards.pick(items) })
			keyPanicked = w.catch.Recovered() != nil
			if !keyPanicked {
				if !wait(r.env.Work, l) {
					return vShutdown, failure{attempts: attempt - 1, first: r.wallTime(start)}
				}
				if br != nil {
					err = br.Allow()
				}
			}
			allowed = err == nil && !keyPanicked
			// The timeout counts from here, as the watchdog does (begin): the wait for a
			// token and the breaker's verdict are not part of the attempt's time.
			ctx, cancel := base, context.CancelFunc(nil)
			if allowed && r.s.cfg.timeout > 0 {
				ctx, cancel = context.WithTimeout(ctx, r.s.cfg.timeout)
			}
			if allowed {
				w.curBreaker = br // for the abandoner, published by begin
			}
			s := w.begin(items, attempt, start)
			if allowed {
				w.catch.Try(func() { err = call(ctx) })
			} else if span != nil && !keyPanicked {
				span.AddEvent("circuit_open")
			}
			timedOut = cancel != nil && ctx.Err() == context.DeadlineExceeded
			if cancel != nil {
				cancel()
			}
			if !w.end(s) {
				// The call hung past its timeout and grace: the abandoner told the breaker.
				return vAbandoned, failure{}
			}
			w.curBreaker = nil
			w.lc.attempts++
		}
		if p := w.catch.Recovered(); p != nil {
			w.catch = new(panics.Catcher) // a Catcher keeps its first panic
			stack = fmt.Sprintf("panic: %v\n\n%s", p.Value, p.Stack)
			err = &PanicError{Value: p.Value, Stack: stack}
		}
		if br != nil && allowed {
			// Permanent errors and shutdown say nothing about the dependency's health.
			r.breakerDone(br, err == nil || retry.IsPermanent(err) || (r.env.Work.Err() != nil && stack == ""), span)
		}
		if err == nil {
			r.budget.OnSuccess()
			return vSuccess, failure{}
		}
		if r.env.Work.Err() != nil && stack == "" {
			return vShutdown, failure{attempts: attempt - 1, first: r.wallTime(start)}
		}
		if start == 0 {
			// An untimed item (a fast stage): its attempt took microseconds, so the time of
			// its first failure is the time of its first attempt, to within that.
			start = r.env.Clock.Now()
		}
		reason := dlq.ReasonError
		switch {
		case stack != "":
			reason = dlq.ReasonPanic
		case retry.IsPermanent(err):
			reason = dlq.ReasonPermanent
		case isCircuitOpen(err):
			reason = dlq.ReasonCircuitOpen
		case timedOut:
			reason = dlq.ReasonTimeout
			err = &TimeoutError{Timeout: r.s.cfg.timeout, Err: err}
		}
		if keyPanicked {
			// A key function is deterministic: a retry would panic again. Not retried, and no
			// retry budget is spent on it.
			return vFailed, failure{err: err, reason: reason, attempts: attempt, first: r.wallTime(start), stack: stack}
		}
		if !started {
			sched, started = r.policy.StartWithBudget(r.budget), true
		}
		delay, stop := sched.Next(err)
		if stop != retry.NoStop {
			return vFailed, failure{err: err, reason: reason, attempts: attempt, first: r.wallTime(start), stack: stack}
		}
		inc(&w.c.retries, 1)
		if span != nil {
			r.tel.Retry(span, attempt, retry.ErrorType(err), err, delay)
		}
		if r.env.Logger.Enabled(context.Background(), slog.LevelDebug) {
			r.env.Logger.Debug("sluice: retrying", r.itemAttrs(items, attempt, err, slog.Duration("delay", delay))...)
		}
		if delay > 0 {
			// Nothing waits out the backoff in this worker's hands: the outputs so far go on,
			// the items not started go back to the other workers.
			w.flush()
			w.giveBack()
		}
		w.publish() // live stats: the attempts so far, beside the retries
		if !w.sleep(delay) {
			return vShutdown, failure{attempts: attempt, first: r.wallTime(start)}
		}
	}
}

// breakerDone reports the outcome of a call that br let through, and a change of br's state
// as an event on span (if not nil), the span of the call's item.
func (r *Runner[In, Out]) breakerDone(br *breaker.Breaker, success bool, span trace.Span) {
	before := br.State()
	br.Done(success)
	if after := br.State(); after != before && span != nil {
		span.AddEvent("circuit_state", trace.WithAttributes(
			attribute.String("sluice.circuit.from", before.String()), attribute.String("sluice.circuit.to", after.String())))
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

// giveBack puts the items the worker took after the one it is retrying back into its input, for
// the other workers: they would otherwise wait out the backoff in its hands.
func (w *worker[In, Out]) giveBack() {
	if w.r.s.kind == KindBatch || w.inline || w.i+1 >= w.k {
		return
	}
	rest := w.buf[w.i+1 : w.k]
	w.r.in.Unpop(rest)
	inc(&w.c.in, -int64(len(rest))) // counted again by the worker that takes them
	clear(rest)
	w.k = w.i + 1
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

// wallTime turns a reading of the run's clock into wall time; 0 (not read) gives the zero
// time, which park and deadLetter take as now.
func (r *Runner[In, Out]) wallTime(t int64) time.Time {
	if t == 0 {
		return time.Time{}
	}
	return r.env.Clock.Time(t)
}

// startTiming returns when the work on the next item starts, and whether its work time is
// measured: every item of a slow stage, the first and then one in core.SampleEvery of a fast one
// (where a clock read would cost as much as the call).
func (w *worker[In, Out]) startTiming() (int64, bool) {
	w.seq++
	if w.timeAll || w.seq%core.SampleEvery == 0 {
		return w.r.env.Clock.Now(), true
	}
	return 0, false // no clock read: the first failure reads it (see attempts)
}

func (w *worker[In, Out]) stopTiming(start int64, ctx context.Context, outcome string, err error) {
	d, changed := w.judge(start)
	w.recordTiming(ctx, d, changed, outcome, err)
}

// judge returns the work time of a call timed from start, and decides from it, for the worker
// alone, whether the stage's calls are fast; changed says that the verdict changed.
func (w *worker[In, Out]) judge(start int64) (d time.Duration, changed bool) {
	d = time.Duration(w.r.env.Clock.Now() - start)
	fast := d < slowCall
	changed, w.fast = fast != w.fast, fast
	w.timeAll = w.r.s.cfg.timeout > 0 || w.r.s.cfg.autoscale != nil || !w.fast
	return d, changed
}

// recordTiming makes a work time visible: the stage's histogram, the worker's counters, the
// metric, and (if the verdict changed) how the stage's queue stamps its items.
func (w *worker[In, Out]) recordTiming(ctx context.Context, d time.Duration, changed bool, outcome string, err error) {
	w.t.work.Record(d)
	inc(&w.c.workNs, int64(d))
	timed := int64(1)
	if w.r.s.kind == KindBatch {
		timed = int64(w.k) // the items of the batch: the autoscaler sizes the pool for items
	}
	inc(&w.c.timed, timed)
	if changed {
		w.r.in.SampleStamps(w.fast) // a fast stage's queue stamps one item in core.SampleEvery
	}
	w.r.tel.RecordWork(ctx, d, outcome, retry.ErrorType(err))
}

// handle processes one input of a map, filter, flat-map or sink; false means the worker was
// abandoned and must exit.
//
// done, if not nil, is the error of the item's first attempt, already made (and counted) by the
// tight loop (see quick), which failed or panicked (w.catch holds the panic): handle goes on with
// the retries.
func (w *worker[In, Out]) handle(i int, done *error) bool {
	r := w.r
	e := &w.buf[i]
	draining := done == nil && r.env.Work.Err() != nil
	if (draining || done != nil || (e.M.Tracker != nil && r.s.kind == KindFilter)) && !w.unclaim() {
		return false // abandoned: the abandoner parked the item
	}
	if draining {
		r.park(*e, 0, time.Time{}, nil)
		return true
	}
	var start int64
	var timed bool
	if done == nil {
		start, timed = w.startTiming()
	} else {
		start, timed = w.quickStart, w.quickStart != 0 // the loop timed the first attempt, or not
	}
	if timed && !w.unclaim() {
		// Here (not the tight loop) a timed item's work time is recorded at once, where others
		// see it: its call is not claimed.
		return false // abandoned: the abandoner parked the item
	}
	var wait time.Duration
	// The queue wait of an item its queue stamped (every item, or one in core.SampleEvery when
	// the stage is fast; a traced stage's queue stamps all, for the spans: there only the timed
	// ones). The tight loop recorded it already.
	if e.M.Enqueued != 0 && (timed || !r.traced) && done == nil {
		now := start
		if !timed {
			now = r.env.Clock.Now()
		}
		wait = time.Duration(now - e.M.Enqueued)
		w.t.wait.Record(wait)
		r.tel.RecordWait(w.ctx, wait)
	}
	base, span := w.ctx, trace.Span(nil)
	if r.traced {
		base, span = r.startSpan(w.ctx, &e.M, wait)
	}
	if r.traced { // (untraced, it stays nil: a claimed batch must not write it)
		w.curSpan = span
	}
	items := w.buf[i : i+1]
	var (
		out  Out
		keep bool
		outs []Out
	)
	var v verdict
	var f failure
	in := e.V // read before the attempt starts: an abandoned call must not touch the buffer
	if r.s.kind == KindFlatMap {
		v, f = w.attempts(items, start, base, span, func(ctx context.Context) (err error) {
			outs, err = r.s.many(ctx, in)
			return err
		}, nil)
	} else {
		call := func(ctx context.Context) (err error) {
			out, keep, err = r.s.one(ctx, in)
			return err
		}
		first := done
		if r.lean && done == nil {
			// The short path of a first attempt: no timeout, no guards to consult. Anything
			// but a success goes on in attempts.
			// A worker that claimed its batch (see work) marks nothing per item.
			w.info.set(&e.M, 1, r.policy.MaxAttempts)
			var s uint64
			if w.claim == 0 {
				s = w.begin(items, 1, start)
			}
			var err error
			w.catch.Try(func() { err = call(base) })
			if s != 0 && !w.end(s) {
				return false // abandoned (a drain's grace ran out): the abandoner owns the item
			}
			w.lc.attempts++
			if err == nil && w.catch.Recovered() == nil {
				if w.claim != 0 {
					w.credits++
				} else {
					r.budget.OnSuccess()
				}
			} else {
				if !w.unclaim() {
					return false
				}
				first = &err
			}
		}
		if !r.lean || first != nil {
			v, f = w.attempts(items, start, base, span, call, first)
		}
	}
	if v == vAbandoned {
		return false // the abandoner owns the item now: touch nothing
	}
	if r.traced {
		w.curSpan = nil
	}
	outcome := tracing.OutcomeSucceeded
	switch {
	case v == vShutdown:
		outcome, f.err = r.park(*e, f.attempts, f.first, span)
	case v == vFailed:
		outcome = r.deadLetter(*e, f.reason, f.err, f.attempts, f.first, f.stack, span)
	case r.s.kind == KindFlatMap:
		if len(outs) == 0 {
			outcome = tracing.OutcomeFiltered
		}
		r.endSpan(span, outcome)
		w.emitMany(e, outs, span)
	case !keep:
		outcome = tracing.OutcomeFiltered
		r.endSpan(span, outcome)
		w.filtered(e.M)
	default:
		m := &e.M
		if span != nil {
			c := e.M
			r.carrySpan(&c, span) // before endSpan: it asks whether the span records
			m = &c
		}
		r.endSpan(span, outcome)
		w.lc.succeeded++
		w.emit(out, m)
	}
	if timed {
		w.stopTiming(start, base, outcome, f.err)
	}
	return true
}

// startSpan starts the span of an item in this stage: the child of its span in the previous
// stage, linked to the failure it was replayed from.
func (r *Runner[In, Out]) startSpan(ctx context.Context, m *core.Meta, wait time.Duration) (context.Context, trace.Span) {
	var links []trace.Link
	if l := m.Link(); l.IsValid() {
		links = tracing.Links(nil, l)
	}
	// The correlation ID and the queue wait are only computed for a span that records them.
	return r.tel.StartLazy(ctx, m.Span(),
		func() string { return m.CorrelationID(r.env.Prefix) },
		func() time.Duration {
			if wait == 0 { // an untimed item (see startTiming)
				wait = time.Duration(r.env.Clock.Now() - m.Enqueued)
			}
			return wait
		}, links...)
}

// endSpan ends a span whose item did not fail (nil-safe).
func (r *Runner[In, Out]) endSpan(span trace.Span, outcome string) {
	if span == nil {
		return
	}
	r.tel.Outcome(span, outcome)
	span.End()
}

// carrySpan makes span, the item's span in this stage, the parent of its span in the next
// stage: m is the meta the item goes on with. There is none after the last stage; and a span
// that does not record and can stand aside (see tracing.Transparent) leaves m as it is, so that
// the next span is a sibling in the same unsampled trace, without allocating a new Extra. Call
// it before the span ends (an ended span does not record).
func (r *Runner[In, Out]) carrySpan(m *core.Meta, span trace.Span) {
	if r.next == nil || (!m.Link().IsValid() && tracing.Transparent(span, m.Span())) {
		return
	}
	m.X = m.X.WithSpan(span.SpanContext())
}

func (w *worker[In, Out]) filtered(m core.Meta) {
	w.lc.filtered++
	w.lc.filteredUnits += int64(m.Weight)
	if m.Tracker != nil {
		w.publish() // counted before the source hears of it
		m.Tracker.Done(core.Filtered)
	}
}

// emit passes an output on to the next stage (in the worker's outgoing batch), or delivers it
// after the last one.
func (w *worker[In, Out]) emit(v Out, m *core.Meta) {
	if w.r.next == nil {
		w.lc.out++
		w.lc.deliveredUnits += int64(m.Weight)
		if m.Tracker != nil {
			w.publish() // counted before the source hears of it
			m.Tracker.Done(core.Delivered)
		}
		return
	}
	// Written in place: w.out always has room (it is flushed when full).
	n := len(w.out)
	w.out = w.out[:n+1]
	w.out[n].V, w.out[n].M = v, *m
	if n+1 == cap(w.out) && w.claim == 0 {
		w.flush() // (a claimed batch has room for all its outputs: work flushes them)
	}
}

func (w *worker[In, Out]) emitMany(e *core.Envelope[In], outs []Out, span trace.Span) {
	if len(outs) == 0 {
		w.filtered(e.M)
		return
	}
	w.lc.succeeded++
	r := w.r
	r.env.Totals.Spawned.Add(int64(len(outs)) - int64(e.M.Weight))
	tr := e.M.Tracker.Fork(len(outs))
	parent := e.M.CorrelationID(r.env.Prefix)
	x := e.M.X
	if span != nil {
		x = x.WithSpan(span.SpanContext()) // the outputs continue the input's trace
	}
	for i, o := range outs {
		m := e.M
		m.Key = parent + "/" + strconv.Itoa(i+1)
		m.Weight = 1
		m.Tracker = tr
		m.X = x
		w.emit(o, &m)
	}
}

// runBatch is the loop of a batch worker: it fills a batch from the input until it is full, the
// oldest item has waited maxWait, or the input is closed. It returns false if abandoned.
//
// One batch fills at a time: the worker filling it holds r.filling, takes all it can from the
// input, and lets go once the batch is complete, before its call; the next worker free of a call
// fills the next batch meanwhile. So a trickle of input makes batches as full as with one worker,
// and a busy input keeps every worker's call running.
func (w *worker[In, Out]) runBatch() bool {
	r := w.r
	timer := time.NewTimer(r.s.maxWait)
	timer.Stop()
	defer timer.Stop()
	items := make([]core.Envelope[In], 0, r.s.size)
	for {
		select {
		case r.filling <- struct{}{}:
		case <-w.quit:
			return true // retired by the autoscaler
		}
		n, ok := r.in.Pop(w.buf, false, 0, nil, w.quit)
		if !ok || n == 0 {
			<-r.filling
			return true // the end of the input, or retired by the autoscaler
		}
		items = append(items[:0], w.buf[:n]...)
		closed := false
		// maxWait counts from the first item's arrival (its queue stamp), not from when this
		// worker came for it: an item that waited behind a slow batch goes with what is queued
		// by then.
		timer.Reset(max(r.s.maxWait-time.Duration(max(r.env.Clock.Now()-items[0].M.Enqueued, 0)), 0)) // (a stamp is at least 1)
		for len(items) < r.s.size {
			m, ok := r.in.Pop(w.buf[:r.s.size-len(items)], false, 0, timer.C, r.env.Work.Done())
			if !ok {
				closed = true
				break
			}
			if m == 0 {
				break // max wait, or the run is stopping
			}
			items = append(items, w.buf[:m]...)
		}
		<-r.filling
		timer.Stop()
		clear(w.buf)
		w.k = len(items)
		w.takenAt = r.env.Clock.Now()
		inc(&w.c.in, int64(len(items)))
		var longest time.Duration
		for _, e := range items {
			wait := time.Duration(w.takenAt - e.M.Enqueued)
			w.t.wait.Record(wait)
			r.tel.RecordWait(w.ctx, wait)
			longest = max(longest, wait)
		}
		if !w.handleBatch(items, longest) {
			return false
		}
		w.publish()
		r.in.Release(len(items))
		clear(items)
		if closed {
			return true
		}
	}
}

func (w *worker[In, Out]) handleBatch(items []core.Envelope[In], wait time.Duration) bool {
	r := w.r
	if r.env.Work.Err() != nil {
		for _, e := range items {
			r.park(e, 0, time.Time{}, nil)
		}
		return true
	}
	values := make([]In, len(items))
	for i := range items {
		values[i] = items[i].V
	}
	start := r.env.Clock.Now()
	base, span := w.ctx, trace.Span(nil)
	if r.traced {
		// A batch's span starts a trace of its own and links to the spans of its items, and to
		// the failure a replayed item comes from.
		scs := make([]trace.SpanContext, 0, len(items))
		for i := range items {
			scs = append(scs, items[i].M.Span())
			if l := items[i].M.Link(); l.IsValid() {
				scs = append(scs, l)
			}
		}
		base, span = r.tel.Start(w.ctx, trace.SpanContext{}, "", wait+time.Duration(start-w.takenAt), tracing.Links(nil, scs...)...)
	}
	w.curSpan = span
	var out Out
	v, f := w.attempts(items, start, base, span, func(ctx context.Context) (err error) {
		out, err = r.s.batch(ctx, values)
		return err
	}, nil)
	if v == vAbandoned {
		return false
	}
	w.curSpan = nil
	switch v {
	case vShutdown:
		// (One work time per call: it takes the first item's outcome, as the span does.)
		outcome, err := r.park(items[0], f.attempts, f.first, span)
		for _, e := range items[1:] {
			r.park(e, f.attempts, f.first, span)
		}
		w.stopTiming(start, base, outcome, err)
		return true
	case vFailed:
		outcome := r.deadLetter(items[0], f.reason, f.err, f.attempts, f.first, f.stack, span)
		for _, e := range items[1:] {
			r.deadLetter(e, f.reason, f.err, f.attempts, f.first, f.stack, span)
		}
		w.stopTiming(start, base, outcome, f.err)
		return true
	}
	w.stopTiming(start, base, tracing.OutcomeSucceeded, nil)
	r.endSpan(span, tracing.OutcomeSucceeded)
	w.lc.succeeded += int64(len(items))
	m := core.Meta{Seq: r.env.Seq.Add(1), Replays: items[0].M.Replays}
	if span != nil {
		m.X = (*core.Extra)(nil).WithSpan(span.SpanContext())
	}
	trackers := make([]*core.Tracker, 0, len(items))
	for _, e := range items {
		m.Weight += e.M.Weight
		trackers = append(trackers, e.M.Tracker) // nil too: Group remembers the items without one
	}
	m.Tracker = core.Group(trackers)
	if r.next == nil {
		w.emit(out, &m)
		return true
	}
	inc(&w.c.out, 1)
	r.next.Push(r.env.Work.Done(), []core.Envelope[Out]{{V: out, M: m}})
	return true
}

// park ends an item cut off by a drain: handed back to a source that can redeliver it, or
// dead-lettered with reason shutdown. It is handed back only when every unit it carries can be
// redelivered (see core.Tracker.Redeliverable): a batch's output, or an output derived from one,
// that also carries items without an acknowledgement is dead-lettered whole, and its
// acknowledged items are told DeadLettered (it is durable), since nothing would redeliver the
// others. It returns the outcome (and for a dead letter its error), for the work-time metric.
// attempts counts the attempts that failed before the cut.
// span, if not nil, is the item's span in this stage: park records the outcome and ends it.
// The items of a batch share their span: the first one's outcome is recorded (an ended span
// records nothing more), and every dead letter names the span.
func (r *Runner[In, Out]) park(e core.Envelope[In], attempts int, first time.Time, span trace.Span) (outcome string, err error) {
	if e.M.Tracker.Redeliverable() && !r.env.Failed() {
		r.stats.returned.Add(1)
		r.env.Totals.Returned.Add(int64(e.M.Weight))
		e.M.Tracker.Done(core.NotDone)
		r.endSpan(span, tracing.OutcomeReturned)
		return tracing.OutcomeReturned, nil
	}
	if first.IsZero() {
		first = time.Now()
	}
	return r.deadLetter(e, dlq.ReasonShutdown, ErrShutdown, attempts, first, "", span), ErrShutdown
}

// deadLetter writes the item's record durably and counts it, or strands the item and fails the
// run when the record cannot be written. span, if not nil, is the item's span in this stage:
// its trace context goes into the record, and deadLetter records the failure on it and ends it.
func (r *Runner[In, Out]) deadLetter(e core.Envelope[In], reason dlq.Reason, cause error, attempts int, first time.Time, stack string, span trace.Span) (outcome string) {
	if r.env.Failed() {
		r.strand(e)
		r.endSpan(span, tracing.OutcomeStranded)
		return tracing.OutcomeStranded
	}
	now := time.Now()
	if first.IsZero() {
		first = now
	}
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
		Headers:        maps.Clone(e.M.Headers()), // the record's own: a flat-map's outputs share the item's
	}
	sc := e.M.Span()
	if span != nil {
		sc = span.SpanContext()
	}
	if sc.IsValid() {
		rec.TraceID, rec.SpanID, rec.Traceparent = sc.TraceID().String(), sc.SpanID().String(), tracing.Traceparent(sc)
	}
	if b, err := codecCall("Encode", func() ([]byte, error) { return r.s.codec.Encode(e.V) }); err != nil {
		rec.Payload = nil
		if rec.Headers == nil {
			rec.Headers = map[string]string{}
		}
		rec.Headers[payloadErrorHeader] = err.Error() // (the record's own map, see above)
	} else if r.s.codec.JSON() {
		rec.Payload = b
	} else {
		rec.Payload, rec.PayloadEncoding = dlq.EncodePayloadBytes(b)
	}
	if err := r.env.DeadLetter(rec); err != nil {
		r.strand(e)
		r.endSpan(span, tracing.OutcomeStranded)
		r.env.Fail(err)
		return tracing.OutcomeStranded
	}
	r.stats.deadLetters[reasonIndex(reason)].Add(1)
	r.env.Totals.DeadLettered.Add(int64(e.M.Weight))
	if span != nil {
		r.tel.Failed(span, string(reason), rec.ErrorType, cause, attempts)
		span.End()
	}
	e.M.Tracker.Done(core.DeadLettered)
	level := slog.LevelWarn
	if reason == dlq.ReasonShutdown {
		level = slog.LevelInfo
	}
	r.env.Logger.Log(context.Background(), level, "sluice: dead-lettered",
		slog.String("stage", r.s.name), slog.String("correlation_id", rec.CorrelationID),
		slog.Int("attempt", attempts), slog.String("reason", string(reason)),
		slog.String("error", rec.Error), slog.String("record_id", rec.ID))
	return tracing.OutcomeDeadLettered
}

// strand ends an item that can reach no terminal state because the run failed.
func (r *Runner[In, Out]) strand(e core.Envelope[In]) {
	r.stats.stranded.Add(1)
	r.env.Totals.Stranded.Add(int64(e.M.Weight))
	e.M.Tracker.Done(core.NotDone)
}
