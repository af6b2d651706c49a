package sluice_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// Regression tests for the findings of a review of batch stages, live counts and their traces
// against the docs.

// Every dead letter of a failed batch names the batch's span (a replay links to it), not only
// the first item's: the span was given to the first item alone, so that it ended once.
func TestBatchDeadLettersNameTheFailingSpan(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	up := stage.Batch("upload", 3, time.Hour, func(context.Context, []int) (int, error) {
		return 0, retry.Permanent(errors.New("rejected"))
	}, stage.Workers(1))
	mem := dlq.NewMemory()
	p, err := pipeline.New("batch", pipeline.Then(pipeline.Input[int](), up), pipeline.WithDLQ(mem), pipeline.WithTracerProvider(tp))
	require.NoError(t, err)
	_, err = p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}))
	require.NoError(t, err)
	var spans []sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		if s.Name() == "process upload" {
			spans = append(spans, s)
		}
	}
	require.Len(t, spans, 1, "one span for the batch, ended once")
	recs, err := mem.Records(context.Background())
	require.NoError(t, err)
	require.Len(t, recs, 3)
	for _, r := range recs {
		assert.Equal(t, spans[0].SpanContext().SpanID().String(), r.SpanID, "record of %s", r.CorrelationID)
		assert.Equal(t, spans[0].SpanContext().TraceID().String(), r.TraceID, "record of %s", r.CorrelationID)
	}
}

// A batch span's sluice.queue.wait is its items' longest wait in the queue (it was the time
// between taking the batch and calling, about 0).
func TestBatchSpanQueueWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
		defer func() { _ = tp.Shutdown(context.Background()) }()
		up := stage.Batch("upload", 1, time.Hour, func(_ context.Context, b []int) (int, error) {
			time.Sleep(time.Second) // the next item waits for this worker
			return len(b), nil
		}, stage.Workers(1))
		p, err := pipeline.New("batch", pipeline.Then(pipeline.Input[int](), up), pipeline.WithTracerProvider(tp))
		require.NoError(t, err)
		_, err = p.Run(context.Background(), pipeline.FromSlice([]int{1, 2}))
		require.NoError(t, err)
		var waits []float64
		for _, s := range rec.Ended() {
			for _, kv := range s.Attributes() {
				if kv.Key == "sluice.queue.wait" {
					waits = append(waits, kv.Value.AsFloat64())
				}
			}
		}
		require.Len(t, waits, 2)
		assert.InDelta(t, 0, waits[0], 1e-6)
		assert.InDelta(t, 1, waits[1], 1e-6, "the second item waited a second for the worker")
	})
}

// A batch call has no correlation ID (its items each have their own), even when the batch holds
// one item.
func TestBatchCallHasNoCorrelationID(t *testing.T) {
	var mu sync.Mutex
	var ids []string
	b := stage.Batch("b", 2, time.Millisecond, func(ctx context.Context, b []int) (int, error) {
		mu.Lock()
		ids = append(ids, stage.CorrelationID(ctx))
		mu.Unlock()
		return len(b), nil
	}, stage.Workers(1))
	p, err := pipeline.New("batch", pipeline.Then(pipeline.Input[int](), b))
	require.NoError(t, err)
	_, err = p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}).KeyBy(func(n int) string { return fmt.Sprint("key-", n) }))
	require.NoError(t, err)
	require.Len(t, ids, 2, "{1, 2} and {3}")
	assert.Equal(t, []string{"", ""}, ids)
}

// A batch's maxWait counts from its first item's arrival: an item that waited behind a slow
// batch for longer than maxWait goes at once with what is queued, rather than wait maxWait more
// (for an item that arrives a second later, here).
func TestBatchMaxWaitCountsFromArrival(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var batches [][]int
		var at []time.Duration
		start := time.Now()
		b := stage.Batch("b", 2, 100*time.Millisecond, func(_ context.Context, b []int) (int, error) {
			mu.Lock()
			batches = append(batches, append([]int(nil), b...))
			at = append(at, time.Since(start))
			mu.Unlock()
			if b[0] == 1 {
				time.Sleep(time.Second) // the worker is busy with the first batch
			}
			return len(b), nil
		}, stage.Workers(1))
		p, err := pipeline.New("batch", pipeline.Then(pipeline.Input[int](), b))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		for _, n := range []int{1, 2, 3} { // 3 arrives at 0 and waits behind {1, 2}
			require.NoError(t, push.Submit(context.Background(), n))
		}
		time.Sleep(1050 * time.Millisecond)
		require.NoError(t, push.Submit(context.Background(), 4))
		push.Close()
		_, err = job.Wait()
		require.NoError(t, err)
		assert.Equal(t, [][]int{{1, 2}, {3}, {4}}, batches)
		assert.Equal(t, []time.Duration{0, time.Second, 1050 * time.Millisecond}, at, "{4} goes when the input closes")
	})
}

// A live snapshot never shows more units ended than came in: Stats read the admissions first
// and the deliveries after, so that what was admitted and delivered in between made InFlight
// negative.
func TestLiveStatsNeverShowMoreEndedThanCameIn(t *testing.T) {
	items := make([]int, 100000)
	p, err := pipeline.New("live", pipeline.Then(pipeline.Input[int](),
		stage.Sink("s", func(context.Context, int) error { return nil }, stage.Workers(2))))
	require.NoError(t, err)
	job, err := p.Start(context.Background(), pipeline.FromSlice(items))
	require.NoError(t, err)
	for n := 0; ; n++ {
		select {
		case <-job.Done():
			rep, err := job.Wait()
			require.NoError(t, err)
			requireBalanced(t, rep)
			t.Logf("%d snapshots", n)
			return
		default:
		}
		s := job.Stats()
		if s.InFlight < 0 {
			t.Fatalf("a live snapshot with InFlight %d: %+v", s.InFlight, s)
		}
	}
}

// An item a drain dead-letters with reason shutdown is recorded on the work-time histogram as
// dead_lettered with error.type shutdown, as its span and the outcome counter say (the
// histogram said returned, the outcome of an item handed back to its source).
func TestShutdownDeadLetterWorkTimeOutcome(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		reader := sdkmetric.NewManualReader()
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		defer func() { _ = mp.Shutdown(context.Background()) }()
		called := make(chan struct{}, 1)
		st := stage.Map("s", func(context.Context, int) (int, error) {
			select {
			case called <- struct{}{}:
			default:
			}
			return 0, errors.New("flaky")
		}, stage.Retry(retry.Policy{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour, NoJitter: true}))
		mem := dlq.NewMemory()
		p, err := pipeline.New("shut", pipeline.Then(pipeline.Input[int](), st), pipeline.WithDLQ(mem),
			pipeline.WithMeterProvider(mp), pipeline.WithDrainTimeout(time.Second))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		push := pipeline.NewPush[int]()
		job, err := p.Start(ctx, push)
		require.NoError(t, err)
		require.NoError(t, push.Submit(context.Background(), 1))
		<-called
		synctest.Wait() // the worker is in its backoff
		cancel()
		push.Close()
		_, err = job.Wait()
		require.NoError(t, err)
		recs, err := mem.Records(context.Background())
		require.NoError(t, err)
		require.Len(t, recs, 1)
		assert.Equal(t, dlq.ReasonShutdown, recs[0].Reason)
		assert.Equal(t, "shutdown", recs[0].ErrorType)
		var rm metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(context.Background(), &rm))
		got := map[string]uint64{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if h, ok := m.Data.(metricdata.Histogram[float64]); ok && m.Name == "sluice.stage.item.duration" {
					for _, dp := range h.DataPoints {
						o, _ := dp.Attributes.Value("sluice.outcome")
						e, _ := dp.Attributes.Value("error.type")
						got[o.AsString()+"/"+e.AsString()] += dp.Count
					}
				}
			}
		}
		assert.Equal(t, map[string]uint64{"dead_lettered/shutdown": 1}, got)
	})
}

// spyPropagator counts its extractions.
type spyPropagator struct {
	propagation.TextMapPropagator
	calls *atomic.Int32
}

func (s spyPropagator) Extract(ctx context.Context, c propagation.TextMapCarrier) context.Context {
	s.calls.Add(1)
	return s.TextMapPropagator.Extract(ctx, c)
}

// An item submitted without a span but with trace context in its headers (a message from
// another process) continues that trace, read by the configured propagator: WithPropagator was
// never used.
func TestItemHeadersCarryItsTrace(t *testing.T) {
	const traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	var calls atomic.Int32
	for name, opts := range map[string][]pipeline.Option{
		"default propagator": nil,
		"WithPropagator":     {pipeline.WithPropagator(spyPropagator{propagation.TraceContext{}, &calls})},
	} {
		t.Run(name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			defer func() { _ = tp.Shutdown(context.Background()) }()
			p, err := pipeline.New("prop", pipeline.Then(pipeline.Input[int](), stage.Map("s", same)),
				append([]pipeline.Option{pipeline.WithTracerProvider(tp)}, opts...)...)
			require.NoError(t, err)
			push := pipeline.NewPush[int]()
			job, err := p.Start(context.Background(), push)
			require.NoError(t, err)
			require.NoError(t, push.SubmitItem(context.Background(), pipeline.Item[int]{Value: 1, Headers: map[string]string{"traceparent": traceparent}}))
			push.Close()
			_, err = job.Wait()
			require.NoError(t, err)
			spans := rec.Ended()
			require.Len(t, spans, 1)
			assert.Equal(t, "0af7651916cd43dd8448eb211c80319c", spans[0].SpanContext().TraceID().String())
			assert.Equal(t, "b7ad6b7169203331", spans[0].Parent().SpanID().String())
		})
	}
	assert.EqualValues(t, 1, calls.Load(), "the configured propagator read the headers")
}

// A caller blocked for room in Submit is not counted as admitted (nor in flight) while it waits:
// live Stats showed callers held up at the door as in the pipeline, beyond its bound.
func TestBlockedSubmitIsNotAdmitted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		m := stage.Map("m", g.fn, stage.Workers(1), stage.Capacity(0))
		p, err := pipeline.New("door", pipeline.Then(pipeline.Input[int](), m))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		require.NoError(t, push.Submit(context.Background(), 1))
		<-g.held // item 1 holds the stage's only slot
		ctx, cancel := context.WithCancel(context.Background())
		errs := make(chan error, 3)
		for n := 2; n <= 4; n++ {
			go func() { errs <- push.Submit(ctx, n) }() // three callers blocked for room
		}
		synctest.Wait()
		s := job.Stats()
		assert.EqualValues(t, 1, s.Admitted)
		assert.EqualValues(t, 1, s.InFlight)
		cancel() // the callers give up: their items were never taken
		for range 3 {
			require.ErrorIs(t, <-errs, context.Canceled)
		}
		go func() { errs <- push.Submit(context.Background(), 5) }() // waits, then goes in
		synctest.Wait()
		assert.EqualValues(t, 1, job.Stats().Admitted)
		close(g.release)
		require.NoError(t, <-errs)
		push.Close()
		rep, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, 2, rep.Admitted)
		requireBalanced(t, rep)
	})
}

// A collection after a run ended still has its counts (a provider's last collection, at
// shutdown, is how a batch job exports them), and a pipeline's counters add up over its runs:
// the run's callback used to be unregistered as it ended, its counts lost to the reader.
func TestCountersOutliveTheirRun(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()
	st := stage.Map("s", func(_ context.Context, n int) (int, error) {
		if n%2 == 0 {
			return 0, retry.Permanent(errors.New("even"))
		}
		return n, nil
	})
	p, err := pipeline.New("ended", pipeline.Then(pipeline.Input[int](), st), pipeline.WithDLQ(dlq.NewMemory()), pipeline.WithMeterProvider(mp))
	require.NoError(t, err)
	sums := func() map[string]int64 {
		var rm metricdata.ResourceMetrics
		require.NoError(t, reader.Collect(context.Background(), &rm))
		got := map[string]int64{}
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if s, ok := m.Data.(metricdata.Sum[int64]); ok {
					for _, dp := range s.DataPoints {
						o, _ := dp.Attributes.Value("sluice.outcome")
						got[m.Name+"/"+o.AsString()] += dp.Value
					}
				}
			}
		}
		return got
	}
	for run := int64(1); run <= 2; run++ {
		rep, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3, 4, 5}))
		require.NoError(t, err)
		require.EqualValues(t, 2, rep.Stages[0].DeadLettered)
		got := sums()
		assert.Equal(t, 5*run, got["sluice.stage.items.in/"], "run %d", run)
		assert.Equal(t, 3*run, got["sluice.stage.items.out/"], "run %d", run)
		assert.Equal(t, 2*run, got["sluice.stage.items/dead_lettered"], "run %d", run)
		assert.Equal(t, 2*run, got["sluice.dlq.records/"], "run %d", run)
		assert.Zero(t, got["sluice.stage.queue.limit/"], "no live run: no gauges")
	}
}

// A trickle into a batch stage of several workers makes full batches: one batch fills at a
// time. (Each worker filled its own, so four workers and one item a second made batches of
// about a quarter of the size, each sent at its max wait.)
func TestBatchTrickleFillsWholeBatches(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var sizes []int
		up := stage.Batch("upload", 4, 10*time.Second, func(_ context.Context, b []int) (int, error) {
			mu.Lock()
			sizes = append(sizes, len(b))
			mu.Unlock()
			return len(b), nil
		}, stage.Workers(4))
		p, err := pipeline.New("trickle", pipeline.Then(pipeline.Input[int](), up))
		require.NoError(t, err)
		in := make(chan int)
		go func() {
			defer close(in)
			for i := range 8 {
				time.Sleep(time.Second)
				in <- i
			}
		}()
		rep, err := p.Run(context.Background(), pipeline.FromChan(in))
		require.NoError(t, err)
		assert.Equal(t, []int{4, 4}, sizes)
		assert.True(t, rep.Balanced(), "%+v", rep)
	})
}

// A busy input still keeps every batch worker's call running at once: a worker lets go of the
// filling before its call.
func TestBatchCallsRunInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) { // (a deadlock fails the test at once)
		var inCall sync.WaitGroup
		inCall.Add(4)
		up := stage.Batch("upload", 2, time.Hour, func(_ context.Context, b []int) (int, error) {
			inCall.Done()
			inCall.Wait() // returns once four calls are running at once
			return len(b), nil
		}, stage.Workers(4))
		p, err := pipeline.New("parallel", pipeline.Then(pipeline.Input[int](), up))
		require.NoError(t, err)
		rep, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3, 4, 5, 6, 7, 8}))
		require.NoError(t, err)
		st := rep.Stages[0]
		assert.Equal(t, int64(4), st.Out, "four batches of two")
		assert.Equal(t, int64(8), st.Succeeded)
	})
}

// holdUntilCut is a last stage whose calls heed their context and wait for it: the drain
// timeout cuts them off. started is closed when the first call begins.
func holdUntilCut[T any](started chan struct{}) *stage.Stage[T, struct{}] {
	var once sync.Once
	return stage.Sink("upload", func(ctx context.Context, _ T) error {
		once.Do(func() { close(started) })
		<-ctx.Done()
		return ctx.Err()
	}, stage.Workers(1))
}

// cutByDrain runs p (whose last stage is a holdUntilCut) on a push source fed the items, the
// acknowledged ones with an Ack that records its outcomes; once the last stage's first call
// began, it cancels the run, whose drain timeout then cuts that call off.
func cutByDrain(t *testing.T, p *pipeline.Pipeline[int], started <-chan struct{}, items []int, acked func(int) bool) (pipeline.Report, map[int][]pipeline.Outcome) {
	t.Helper()
	var mu sync.Mutex
	acks := map[int][]pipeline.Outcome{}
	push := pipeline.NewPush[int]()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	job, err := p.Start(ctx, push)
	require.NoError(t, err)
	for _, n := range items {
		it := pipeline.Item[int]{Value: n}
		if acked(n) {
			it.Ack = func(o pipeline.Outcome) {
				mu.Lock()
				acks[n] = append(acks[n], o)
				mu.Unlock()
			}
		}
		require.NoError(t, push.SubmitItem(context.Background(), it))
	}
	<-started
	cancel()
	report, err := job.Wait()
	require.NoError(t, err)
	push.Close()
	requireBalanced(t, report)
	mu.Lock()
	defer mu.Unlock()
	return report, acks
}

// A batch carries an item with an acknowledgement and one without, and a drain cuts its output
// off in the next stage. Nothing would redeliver the second item, so the output is not handed
// back: it is parked in the DLQ (reason shutdown, replayable into the next stage), both units
// count as dead-lettered, and the acknowledged item is told so. It was handed back whole
// (Returned 2, acked NotDone): the item without an acknowledgement was lost, and the report
// still balanced. A batch of acknowledged items alone is still handed back.
func TestMixedAckBatchParkedByDrainLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name           string
		acked          func(int) bool
		returned, dead int64
		ack            pipeline.Outcome
		records        int
	}{
		{"mixed", func(n int) bool { return n == 1 }, 0, 2, pipeline.DeadLettered, 1},
		{"all acknowledged", func(int) bool { return true }, 2, 0, pipeline.NotDone, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				started := make(chan struct{})
				batch := stage.Batch("batch", 2, time.Hour, func(_ context.Context, b []int) ([]int, error) { return b, nil }, stage.Workers(1))
				mem := dlq.NewMemory()
				p, err := pipeline.New("mixed", pipeline.Then(pipeline.Then(pipeline.Input[int](), batch), holdUntilCut[[]int](started)),
					pipeline.WithDLQ(mem), pipeline.WithDrainTimeout(time.Second))
				require.NoError(t, err)
				report, acks := cutByDrain(t, p, started, []int{1, 2}, tc.acked)
				want := map[int][]pipeline.Outcome{1: {tc.ack}}
				if tc.acked(2) {
					want[2] = []pipeline.Outcome{tc.ack}
				}
				assert.Equal(t, want, acks)
				assert.EqualValues(t, tc.returned, report.Returned, "units handed back")
				assert.EqualValues(t, tc.dead, report.DeadLettered, "units parked in the DLQ")
				recs, err := mem.Records(context.Background())
				require.NoError(t, err)
				require.Len(t, recs, tc.records)
				if tc.records == 0 {
					return
				}
				assert.Equal(t, dlq.ReasonShutdown, recs[0].Reason)
				assert.Equal(t, "upload", recs[0].Stage, "parked as the input of the stage that was cut off")
				assert.JSONEq(t, `[1,2]`, string(recs[0].Payload))

				// A replay finishes the parked output.
				var mu sync.Mutex
				var got [][]int
				upload := stage.Sink("upload", func(_ context.Context, b []int) error {
					mu.Lock()
					got = append(got, b)
					mu.Unlock()
					return nil
				})
				batch2 := stage.Batch("batch", 2, time.Hour, func(_ context.Context, b []int) ([]int, error) { return b, nil })
				p2, err := pipeline.New("mixed", pipeline.Then(pipeline.Then(pipeline.Input[int](), batch2), upload), pipeline.WithDLQ(mem))
				require.NoError(t, err)
				rr, err := p2.Replay(context.Background(), mem, pipeline.ReplayOptions{})
				require.NoError(t, err)
				assert.Equal(t, 1, rr.Completed)
				assert.Equal(t, [][]int{{1, 2}}, got)
				assert.Zero(t, mem.Len())
			})
		})
	}
}

// The same question one hop further, wherever the units without an acknowledgement join: the
// outputs of a flat-map of an acknowledged item batched with an item without one; the outputs of
// a flat-map of a mixed batch (they are derived from it); the output of a batch of mixed batches.
// Each output cut off by the drain is parked in the DLQ, not handed back (each was handed back:
// the units of item 2 were lost).
func TestMixedAckChainsParkedByDrainLoseNothing(t *testing.T) {
	pair := func(_ context.Context, n int) ([]int, error) { return []int{10 * n, 10*n + 1}, nil }
	same := func(_ context.Context, b []int) ([]int, error) { return b, nil }
	for _, tc := range []struct {
		name    string
		build   func(started chan struct{}, opts ...pipeline.Option) (*pipeline.Pipeline[int], error)
		dead    int64
		records int
	}{
		{"flat-map into batch", func(started chan struct{}, opts ...pipeline.Option) (*pipeline.Pipeline[int], error) {
			f := pipeline.Then(pipeline.Input[int](), stage.FlatMap("split", pair, stage.Workers(1)))
			f2 := pipeline.Then(f, stage.Batch("batch", 4, time.Hour, same, stage.Workers(1)))
			return pipeline.New("chain", pipeline.Then(f2, holdUntilCut[[]int](started)), opts...)
		}, 4, 1},
		{"batch into flat-map", func(started chan struct{}, opts ...pipeline.Option) (*pipeline.Pipeline[int], error) {
			f := pipeline.Then(pipeline.Input[int](), stage.Batch("batch", 2, time.Hour, same, stage.Workers(1)))
			f2 := pipeline.Then(f, stage.FlatMap("explode", same, stage.Workers(1)))
			return pipeline.New("chain", pipeline.Then(f2, holdUntilCut[int](started)), opts...)
		}, 2, 2},
		{"batch into batch", func(started chan struct{}, opts ...pipeline.Option) (*pipeline.Pipeline[int], error) {
			f := pipeline.Then(pipeline.Input[int](), stage.Batch("batch", 2, time.Hour, same, stage.Workers(1)))
			f2 := pipeline.Then(f, stage.Batch("batches", 1, time.Hour, func(_ context.Context, b [][]int) ([][]int, error) { return b, nil }, stage.Workers(1)))
			return pipeline.New("chain", pipeline.Then(f2, holdUntilCut[[][]int](started)), opts...)
		}, 2, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				started := make(chan struct{})
				mem := dlq.NewMemory()
				p, err := tc.build(started, pipeline.WithDLQ(mem), pipeline.WithDrainTimeout(time.Second))
				require.NoError(t, err)
				report, acks := cutByDrain(t, p, started, []int{1, 2}, func(n int) bool { return n == 1 })
				assert.Equal(t, map[int][]pipeline.Outcome{1: {pipeline.DeadLettered}}, acks)
				assert.Zero(t, report.Returned, "nothing is handed back")
				assert.Equal(t, tc.dead, report.DeadLettered, "every unit is parked in the DLQ")
				recs, err := mem.Records(context.Background())
				require.NoError(t, err)
				require.Len(t, recs, tc.records)
				for _, rec := range recs {
					assert.Equal(t, dlq.ReasonShutdown, rec.Reason)
					assert.Equal(t, "upload", rec.Stage)
				}
			})
		})
	}
}

// An autoscaled batch stage is sized for its items: 1,000 items/s in batches of 10 whose calls
// take 10ms is 100 batches/s × 10ms, one busy worker (Little's law; 2 at the default target
// utilization). Its service time was per batch against arrivals per item, so the pool grew to
// 13 workers while at most 2 calls ran at once.
func TestAutoscaledBatchIsSizedForItems(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var busy, maxBusy atomic.Int64
		up := stage.Batch("upload", 10, time.Hour, func(_ context.Context, b []int) (int, error) {
			n := busy.Add(1)
			for m := maxBusy.Load(); n > m && !maxBusy.CompareAndSwap(m, n); m = maxBusy.Load() {
			}
			time.Sleep(10 * time.Millisecond)
			busy.Add(-1)
			return len(b), nil
		}, stage.Autoscale(1, 64, stage.AutoscaleConfig{Window: 100 * time.Millisecond}))
		p, err := pipeline.New("scale", pipeline.Then(pipeline.Input[int](), up))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		most := 0
		for i := range 3000 {
			require.NoError(t, push.Submit(context.Background(), i))
			time.Sleep(time.Millisecond)
			if i%100 == 50 {
				most = max(most, job.Stats().Stages[0].Workers)
			}
		}
		push.Close()
		rep, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, 3000, rep.Delivered)
		assert.LessOrEqual(t, most, 4, "the pool for 100 batches/s × 10ms (calls at once at most %d)", maxBusy.Load())
	})
}

// A replay into a batch stage links the batch's span to the failures its items come from, as a
// replayed item's span does in other stages (the batch linked only to the items' spans, which
// a replayed item has none of).
func TestReplayIntoBatchLinksToTheFailure(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer func() { _ = tp.Shutdown(context.Background()) }()
	var fail atomic.Bool
	fail.Store(true)
	up := stage.Batch("upload", 2, time.Hour, func(_ context.Context, b []int) (int, error) {
		if fail.Load() {
			return 0, retry.Permanent(errors.New("down"))
		}
		return len(b), nil
	})
	mem := dlq.NewMemory()
	p, err := pipeline.New("b", pipeline.Then(pipeline.Input[int](), up), pipeline.WithDLQ(mem), pipeline.WithTracerProvider(tp))
	require.NoError(t, err)
	_, err = p.Run(context.Background(), pipeline.FromSlice([]int{1, 2}))
	require.NoError(t, err)
	recs, err := mem.Records(context.Background())
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.NotEmpty(t, recs[0].SpanID)

	fail.Store(false)
	n := len(rec.Ended())
	rr, err := p.Replay(context.Background(), mem, pipeline.ReplayOptions{})
	require.NoError(t, err)
	require.Equal(t, 2, rr.Completed)
	spans := rec.Ended()[n:]
	require.Len(t, spans, 1, "one batch span for the replay")
	var linked []string
	for _, l := range spans[0].Links() {
		linked = append(linked, l.SpanContext.SpanID().String())
	}
	assert.Contains(t, linked, recs[0].SpanID, "the replayed batch's span links to the span of the failure")
}
