package tracing

import (
	"context"
	"errors"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// StageSnapshot is what stage code reports for one stage when the metrics
// callback runs: the stage's own counters, read (atomically) at that moment.
// Counters are cumulative since the run started and never decrease. A run's
// callback is unregistered when the run ends: a collection after that no
// longer reports its counters (its final counts are in its Report).
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

// RegisterStages registers one callback for all the observable instruments
// (the counters, queue and worker metrics listed in the package
// documentation). At each collection the callback calls snapshot once and
// observes every stage it returns; stage code keeps its own counters, so
// counting costs nothing per item. Call unregister when the run ends; it is
// idempotent. snapshot must be safe to call from the metric reader's
// goroutine, concurrently with the run.
//
// Stage names must be unique across the snapshots of all registrations of
// one Telemetry that are live at the same time.
func (t *Telemetry) RegisterStages(snapshot func() []StageSnapshot) (unregister func() error, err error) {
	if t == nil {
		return func() error { return nil }, nil
	}
	if snapshot == nil {
		return nil, errors.New("tracing: RegisterStages: nil snapshot func")
	}
	cb := func(_ context.Context, o metric.Observer) error {
		for _, snap := range snapshot() {
			t.Stage(snap.Stage).observe(o, &snap)
		}
		return nil
	}
	reg, err := t.meter.RegisterCallback(cb,
		t.itemsIn, t.itemsOut, t.items, t.attempts, t.retries, t.dlqRecord,
		t.queueUsage, t.queueLimit, t.workerCount, t.workerLimit, t.resizes, t.circuitOpens)
	if err != nil {
		return nil, err
	}
	var once sync.Once
	return func() error {
		var err error
		once.Do(func() { err = reg.Unregister() })
		return err
	}, nil
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
