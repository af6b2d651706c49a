package tracing

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// StageSnapshot is what stage code reports for one stage when the metrics
// callback runs: the stage's own counters, read (atomically) at that moment.
// Counters are cumulative since the run started and never decrease.
type StageSnapshot struct {
	// Stage is the stage name, as given to [Telemetry.Stage].
	Stage string

	// In counts items accepted into the stage's input.
	In int64
	// Out counts items the stage emitted downstream.
	Out int64
	// Succeeded, Filtered, Returned and Stranded count input items that
	// finished with that outcome; dead-lettered ones are in DeadLetters.
	Succeeded, Filtered int64
	// Attempts counts calls of the stage's function; Retries the attempts
	// that were retries.
	Attempts, Retries int64
	// Returned counts items handed back unprocessed; Stranded items neither
	// processed nor dead-lettered.
	Returned, Stranded int64
	// DeadLetters counts dead-lettered items by reason. Only the reasons
	// present are reported; their sum is the dead_lettered outcome.
	DeadLetters map[string]int64

	// Queued is the number of items in the input queue now, Capacity its
	// size.
	Queued, Capacity int
	// Busy is the number of workers running an item now, Workers the size
	// of the pool.
	Busy, Workers int
	// Resizes counts the autoscaler's resizes of the pool; CircuitOpens the
	// times a circuit breaker of the stage opened.
	Resizes, CircuitOpens int64
}

// observed is what the observable instruments of one Telemetry report: the runs registered and
// live, and the summed counters of those that ended.
type observed struct {
	mu          sync.Mutex
	reg         metric.Registration // nil while no callback is registered
	gen         uint64              // of reg: the callback of an older registration observes nothing
	registering bool
	dropping    bool // a callback found no live run and asked for reg to go (see dropIdle)
	live        map[uint64]func() []StageSnapshot
	next        uint64
	ended       []StageSnapshot // by stage, in the order first seen: the counters of ended runs
	onDrop      func()          // (tests) called when dropIdle has unregistered
}

// RegisterStages adds a run's stages to what the observable instruments (the counters, queue
// and worker metrics listed in the package documentation) report, through one callback per
// Telemetry. At each collection the callback calls snapshot once; stage code keeps its own
// counters, so counting costs nothing per item. Call unregister when the run ends (it is
// idempotent): it takes a last snapshot, whose counters go on being reported, added to those
// of the other runs of the same stages, so the counters of a pipeline are cumulative over its
// runs and a collection after a run ended (a provider's final one at shutdown) still has its
// counts; its gauges (queue usage and limit, workers) count only live runs. Once no run is
// live and a collection has reported the counters, the callback is unregistered until the next
// run. snapshot must be safe to call from the metric reader's goroutine, concurrently with the
// run.
func (t *Telemetry) RegisterStages(snapshot func() []StageSnapshot) (unregister func() error, err error) {
	if t == nil {
		return func() error { return nil }, nil
	}
	if snapshot == nil {
		return nil, errors.New("tracing: RegisterStages: nil snapshot func")
	}
	o := &t.obs
	o.mu.Lock()
	if o.live == nil {
		o.live = map[uint64]func() []StageSnapshot{}
	}
	id := o.next
	o.next++
	o.live[id] = snapshot
	register := o.reg == nil && !o.registering
	var gen uint64
	if register {
		o.registering = true
		o.gen++
		gen = o.gen
	}
	o.mu.Unlock()
	if register {
		// Outside o.mu: the SDK holds its own lock while it runs the callback, which takes o.mu.
		reg, err := t.meter.RegisterCallback(t.observer(gen),
			t.itemsIn, t.itemsOut, t.items, t.attempts, t.retries, t.dlqRecord,
			t.queueUsage, t.queueLimit, t.workerCount, t.workerLimit, t.resizes, t.circuitOpens)
		o.mu.Lock()
		o.registering = false
		if err != nil {
			delete(o.live, id)
			o.mu.Unlock()
			return nil, err
		}
		o.reg = reg
		o.mu.Unlock()
	}
	var once sync.Once
	return func() error {
		once.Do(func() {
			o.mu.Lock()
			defer o.mu.Unlock()
			for _, snap := range snapshot() {
				sumSnapshots(addTo(&o.ended, snap.Stage), &snap, false)
			}
			delete(o.live, id)
		})
		return nil
	}, nil
}

// addTo returns the entry of stage in *list, appending one if there is none.
func addTo(list *[]StageSnapshot, stage string) *StageSnapshot {
	for i := range *list {
		if (*list)[i].Stage == stage {
			return &(*list)[i]
		}
	}
	*list = append(*list, StageSnapshot{Stage: stage})
	return &(*list)[len(*list)-1]
}

// sumSnapshots adds snap's counters (and, with gauges, its gauges) to into.
func sumSnapshots(into, snap *StageSnapshot, gauges bool) {
	into.In += snap.In
	into.Out += snap.Out
	into.Succeeded += snap.Succeeded
	into.Filtered += snap.Filtered
	into.Attempts += snap.Attempts
	into.Retries += snap.Retries
	into.Returned += snap.Returned
	into.Stranded += snap.Stranded
	into.Resizes += snap.Resizes
	into.CircuitOpens += snap.CircuitOpens
	for reason, n := range snap.DeadLetters {
		if into.DeadLetters == nil {
			into.DeadLetters = map[string]int64{}
		}
		into.DeadLetters[reason] += n
	}
	if gauges {
		into.Queued += snap.Queued
		into.Capacity += snap.Capacity
		into.Busy += snap.Busy
		into.Workers += snap.Workers
	}
}

// observer returns the callback of registration gen.
func (t *Telemetry) observer(gen uint64) metric.Callback {
	return func(_ context.Context, ob metric.Observer) error {
		o := &t.obs
		o.mu.Lock()
		if gen != o.gen {
			o.mu.Unlock()
			return nil // a registration on its way out: the current one reports
		}
		totals := make([]StageSnapshot, 0, len(o.ended))
		for _, e := range o.ended {
			sumSnapshots(addTo(&totals, e.Stage), &e, false)
		}
		ids := make([]uint64, 0, len(o.live))
		for id := range o.live {
			ids = append(ids, id)
		}
		slices.Sort(ids) // (stages in the order their runs started)
		for _, id := range ids {
			for _, snap := range o.live[id]() {
				sumSnapshots(addTo(&totals, snap.Stage), &snap, true)
			}
		}
		drop := len(o.live) == 0 && !o.dropping
		if drop {
			o.dropping = true
		}
		o.mu.Unlock()
		for i := range totals {
			t.Stage(totals[i].Stage).observe(ob, &totals[i])
		}
		if drop {
			go t.dropIdle(gen) // (Unregister waits for the SDK's lock, which it holds now)
		}
		return nil
	}
}

// dropIdle unregisters registration gen if still no run is live: its counters were reported.
func (t *Telemetry) dropIdle(gen uint64) {
	o := &t.obs
	o.mu.Lock()
	o.dropping = false
	if gen != o.gen || len(o.live) > 0 || o.reg == nil {
		o.mu.Unlock()
		return
	}
	reg, onDrop := o.reg, o.onDrop
	o.reg = nil
	o.mu.Unlock()
	_ = reg.Unregister()
	if onDrop != nil {
		onDrop()
	}
}

// observe reports one stage's snapshot with the precomputed attribute sets.
func (s *StageTelemetry) observe(o metric.Observer, snap *StageSnapshot) {
	t := s.t
	o.ObserveInt64(t.itemsIn, snap.In, s.obsStage...)
	o.ObserveInt64(t.itemsOut, snap.Out, s.obsStage...)
	o.ObserveInt64(t.attempts, snap.Attempts, s.obsStage...)
	o.ObserveInt64(t.retries, snap.Retries, s.obsStage...)

	var dead int64
	for reason, n := range snap.DeadLetters {
		dead += n
		if i := reasonIndex(reason); i >= 0 {
			o.ObserveInt64(t.dlqRecord, n, s.obsReason[i]...)
			continue
		}
		o.ObserveInt64(t.dlqRecord, n, metric.WithAttributeSet(s.metricSet(DLQReasonKey.String(reason))))
	}
	finished := [5]int64{snap.Succeeded, snap.Filtered, dead, snap.Returned, snap.Stranded}
	for i, n := range finished {
		o.ObserveInt64(t.items, n, s.obsOutcome[i]...)
	}

	o.ObserveInt64(t.queueUsage, int64(snap.Queued), s.obsStage...)
	o.ObserveInt64(t.queueLimit, int64(snap.Capacity), s.obsStage...)
	busy := snap.Busy
	idle := snap.Workers - busy
	if idle < 0 {
		idle = 0
	}
	o.ObserveInt64(t.workerCount, int64(busy), s.obsBusy...)
	o.ObserveInt64(t.workerCount, int64(idle), s.obsIdle...)
	o.ObserveInt64(t.workerLimit, int64(snap.Workers), s.obsStage...)
	o.ObserveInt64(t.resizes, snap.Resizes, s.obsStage...)
	o.ObserveInt64(t.circuitOpens, snap.CircuitOpens, s.obsStage...)
}

// metricSet builds, on the fly, the attribute set of this stage plus extra:
// for values without a precomputed set (rare).
func (s *StageTelemetry) metricSet(extra ...attribute.KeyValue) attribute.Set {
	kvs := make([]attribute.KeyValue, 0, len(s.baseMetrics)+len(extra))
	kvs = append(append(kvs, s.baseMetrics...), extra...)
	return attribute.NewSet(kvs...)
}

// RecordWait records that an item waited d in the stage's input queue, on
// the histogram sluice.stage.queue.wait_time (seconds). It does not allocate.
// ctx is passed to the meter (exemplars).
func (s *StageTelemetry) RecordWait(ctx context.Context, d time.Duration) {
	if s == nil {
		return
	}
	s.t.waitTime.Record(ctx, d.Seconds(), s.waitOpts...)
}

// RecordWork records the time the stage spent on an item, all attempts and
// backoffs included, on the histogram sluice.stage.item.duration (seconds),
// with sluice.outcome=outcome (an Outcome constant) and, if errType is not
// empty, error.type=errType. Known outcomes with errType "", "error",
// "permanent", "timeout", "panic", "shutdown" or "canceled" use precomputed
// attribute sets and do not allocate; other values build a set on the fly.
// ctx is passed to the meter (exemplars).
func (s *StageTelemetry) RecordWork(ctx context.Context, d time.Duration, outcome string, errType string) {
	if s == nil {
		return
	}
	o, e := outcomeIndex(outcome), errTypeIndex(errType)
	if o >= 0 && e >= 0 {
		s.t.itemDur.Record(ctx, d.Seconds(), s.workOpts[o][e]...)
		return
	}
	set := s.metricSet(OutcomeKey.String(outcome))
	if errType != "" {
		set = s.metricSet(OutcomeKey.String(outcome), ErrorTypeKey.String(errType))
	}
	s.t.itemDur.Record(ctx, d.Seconds(), metric.WithAttributeSet(set))
}
