package pipeline

import (
	"context"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sync"

	"golang.org/x/time/rate"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/tracing"
	"go.opentelemetry.io/otel/trace"
)

// ReplayOptions selects and paces the records a replay re-injects.
type ReplayOptions struct {
	// Filter selects records. Its Pipeline field defaults to the pipeline's name, so records
	// of other pipelines sharing the store are left alone.
	Filter dlq.Filter
	// Into names the stage to inject into instead of the stage that failed each record.
	Into string
	// DryRun lists what would be replayed and what would be skipped, and changes nothing.
	DryRun bool
	// Rate limits injections per second (0: no limit).
	Rate float64
}

// Skipped is a selected record a replay leaves in the store, and why.
type Skipped struct {
	ID    string
	Stage string
	Err   error
}

// ReplayReport is the account of a replay.
type ReplayReport struct {
	Report
	// Selected counts the records the filter selected.
	Selected int
	// Injected lists the IDs of the records re-injected (in a dry run: that would be). A replay
	// stopped early (its context ended) lists only those it injected; the other selected
	// records stay in the store untouched.
	Injected []string
	// Completed counts injected records removed from the store: their item was delivered,
	// filtered, or durably dead-lettered again (as a new record with Replays incremented).
	// It is len(CompletedIDs).
	Completed int
	// CompletedIDs lists the IDs of the completed records, in the order of Injected. An
	// injected record that is not in it was not finished (a replay stopped early handed its
	// item back, or the run failed first) and stays in the store for a later replay.
	CompletedIDs []string
	// Skipped lists selected records left in the store: an unknown stage, or a payload that
	// does not decode as the stage's input.
	Skipped []Skipped
}

// Replay re-injects dead letters from store into the stage that failed each of them (or
// opts.Into) and runs the pipeline from there. A record leaves the store only after its item
// succeeded or was durably dead-lettered again, so a replay stopped at any point loses
// nothing; at worst, a record is replayed twice. One replay of a pipeline runs at a time (two
// pipelines that share a store must not replay it at once: each would replay its records).
// The records that fail again go to the pipeline's dead-letter sink, so a pipeline that keeps
// its dead letters in memory (built without WithDLQ or WithDLQFile) refuses to replay a store
// other than a dlq.Memory: those records would leave a durable store for memory.
func (p *Pipeline[In]) Replay(ctx context.Context, store dlq.Store, opts ReplayOptions) (ReplayReport, error) {
	var rr ReplayReport
	if ctx == nil {
		return rr, ErrNilContext
	}
	if isNil(store) {
		return rr, errors.New("pipeline: Replay: the store is nil")
	}
	if opts.Rate < 0 || math.IsNaN(opts.Rate) {
		return rr, fmt.Errorf("pipeline: Replay: Rate %v cannot be negative; use 0 for no limit", opts.Rate)
	}
	if !p.replaying.CompareAndSwap(false, true) {
		return rr, ErrReplayInProgress
	}
	defer p.replaying.Store(false)

	var recs []dlq.Record
	err := protect("store", store, func() (err error) {
		recs, err = store.Records(ctx)
		return err
	})
	if err != nil {
		return rr, fmt.Errorf("pipeline: Replay: reading the dead letters: %w", err)
	}
	if _, mem := store.(*dlq.Memory); p.opts.inMemory && !mem && !opts.DryRun {
		return rr, errors.New("pipeline: Replay: the pipeline keeps its dead letters in memory (it was built without WithDLQ or WithDLQFile), so a record of store that failed again would move into memory and be lost when the process exits; build the pipeline WithDLQ(store), or replay its own dead letters (p.DLQ())")
	}
	if opts.Filter.Pipeline == "" {
		opts.Filter.Pipeline = p.name
	}
	r := p.newRun(ctx)
	byName := map[string]node{}
	for _, n := range r.nodes {
		byName[n.Name()] = n
	}
	type job struct {
		rec  dlq.Record
		node node
	}
	var jobs []job
	for _, rec := range recs {
		if !opts.Filter.Matches(rec) {
			continue
		}
		rr.Selected++
		name := rec.Stage
		if opts.Into != "" {
			name = opts.Into
		}
		n, ok := byName[name]
		if !ok {
			rr.Skipped = append(rr.Skipped, Skipped{ID: rec.ID, Stage: name, Err: fmt.Errorf("pipeline %q has no stage %q", p.name, name)})
			continue
		}
		if err := n.Check(&rec); err != nil {
			rr.Skipped = append(rr.Skipped, Skipped{ID: rec.ID, Stage: name, Err: err})
			continue
		}
		jobs = append(jobs, job{rec, n})
	}
	if opts.DryRun {
		for _, jb := range jobs {
			rr.Injected = append(rr.Injected, jb.rec.ID)
		}
		r.cancelWork(nil)
		return rr, nil
	}
	var limiter *rate.Limiter
	if opts.Rate > 0 {
		limiter = rate.NewLimiter(rate.Limit(opts.Rate), 1)
	}
	var mu sync.Mutex
	completed := map[string]bool{}
	var injected []string
	for _, n := range r.nodes {
		n.AddProducers(1)
	}
	r.start(func(srcCtx context.Context) error {
		defer func() {
			for _, n := range r.nodes {
				n.ProducerDone()
			}
		}()
		for _, jb := range jobs {
			if limiter != nil {
				if err := limiter.Wait(srcCtx); err != nil {
					return nil
				}
			}
			rec := jb.rec
			ack := func(o Outcome) {
				if o == NotDone {
					return // the record stays for a later replay
				}
				// A panic of the store is a failed delete, not a panic of the item's Ack.
				err := protect("store", store, func() error { return store.Delete(context.WithoutCancel(ctx), rec.ID) })
				if err != nil {
					r.fail(fmt.Errorf("pipeline: replay: removing record %s (item %s) from the store: %w", rec.ID, rec.CorrelationID, err))
					return
				}
				mu.Lock()
				completed[rec.ID] = true
				mu.Unlock()
			}
			meta := core.Meta{
				Key: rec.CorrelationID, Weight: 1, Replays: int32(rec.Replays + 1),
				Tracker: core.NewRoot(ack, r.onAckPanic), X: core.NewExtra(rec.Source, rec.Headers, trace.SpanContext{}),
			}
			if sc, ok := spanContextOf(rec); ok {
				// The replayed item starts a new trace that links to its failure.
				if meta.X == nil {
					meta.X = &core.Extra{}
				}
				meta.X.Link = sc
			}
			if meta.Key == "" {
				meta.Seq = r.env.Seq.Add(1)
			}
			r.env.Totals.Admitted.Add(1)
			if err := jb.node.Inject(srcCtx, &rec, meta); err != nil {
				r.env.Totals.Admitted.Add(-1)
				return nil
			}
			mu.Lock()
			injected = append(injected, rec.ID)
			mu.Unlock()
		}
		return nil
	})
	rep, err := r.job.Wait()
	rr.Report = rep
	mu.Lock()
	rr.Injected = injected
	for _, id := range injected {
		if completed[id] {
			rr.CompletedIDs = append(rr.CompletedIDs, id)
		}
	}
	rr.Completed = len(rr.CompletedIDs)
	mu.Unlock()
	return rr, err
}

// isNil reports whether v is nil, or an interface holding a nil pointer.
func isNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer, reflect.Map, reflect.Slice, reflect.Func, reflect.Chan, reflect.Interface:
		return rv.IsNil()
	}
	return false
}

// spanContextOf returns the trace context of the failure a record describes.
func spanContextOf(rec dlq.Record) (trace.SpanContext, bool) {
	if sc, err := tracing.ParseTraceparent(rec.Traceparent); err == nil {
		return sc, true
	}
	tid, err1 := trace.TraceIDFromHex(rec.TraceID)
	sid, err2 := trace.SpanIDFromHex(rec.SpanID)
	if err1 != nil || err2 != nil {
		return trace.SpanContext{}, false
	}
	return trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled, Remote: true}), true
}
