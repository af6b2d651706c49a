package sluice_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fast is a retry policy with short, exact delays for tests on the fake clock.
var fast = retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, MaxInterval: 10 * time.Millisecond, NoJitter: true}

// collector is a sink that keeps what it receives.
type collector[T any] struct {
	mu  sync.Mutex
	got []T
}

func (c *collector[T]) add(_ context.Context, v T) error {
	c.mu.Lock()
	c.got = append(c.got, v)
	c.mu.Unlock()
	return nil
}

func (c *collector[T]) items() []T {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got)
}

func requireBalanced(t *testing.T, r pipeline.Report) {
	t.Helper()
	require.True(t, r.Balanced(), "report does not add up (in flight %d): %+v", r.InFlight, r)
}

// The README's quick start.
func TestQuickStart(t *testing.T) {
	var out collector[string]
	double := stage.Map("double", func(_ context.Context, n int) (int, error) { return 2 * n, nil }, stage.Workers(4))
	even := stage.Filter("small", func(_ context.Context, n int) (bool, error) { return n < 10, nil })
	format := stage.Map("format", func(_ context.Context, n int) (string, error) { return "n=" + strconv.Itoa(n), nil })
	sink := stage.Sink("collect", out.add)

	flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](), double), even), format), sink)
	p, err := pipeline.New("quickstart", flow)
	require.NoError(t, err)

	report, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3, 4, 5, 6, 7}))
	require.NoError(t, err)

	got := out.items()
	slices.Sort(got)
	assert.Equal(t, []string{"n=2", "n=4", "n=6", "n=8"}, got)
	assert.EqualValues(t, 7, report.Ingested)
	assert.EqualValues(t, 4, report.Delivered)
	assert.EqualValues(t, 3, report.Filtered)
	assert.Len(t, report.Stages, 4)
	assert.EqualValues(t, 7, report.Stages[0].In)
	assert.EqualValues(t, 3, report.Stages[1].Filtered)
	requireBalanced(t, report)
}

func TestFlatMapAndBatchAccounting(t *testing.T) {
	var batches collector[int]
	split := stage.FlatMap("split", func(_ context.Context, n int) ([]int, error) {
		return slices.Repeat([]int{n}, n), nil // n copies of n; 0 gives none
	})
	sum := stage.Batch("sum", 4, time.Hour, func(_ context.Context, b []int) (int, error) {
		return len(b), nil
	}, stage.Workers(1))
	sink := stage.Sink("sizes", batches.add)
	p, err := pipeline.New("fan", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](), split), sum), sink))
	require.NoError(t, err)

	report, err := p.Run(context.Background(), pipeline.FromSlice([]int{0, 1, 2, 3, 4})) // 10 outputs
	require.NoError(t, err)
	total := 0
	for _, n := range batches.items() {
		assert.LessOrEqual(t, n, 4)
		total += n
	}
	assert.Equal(t, 10, total)
	assert.EqualValues(t, 5, report.Admitted)
	assert.EqualValues(t, 6, report.Spawned) // 10 outputs from 4 expanded inputs
	assert.EqualValues(t, 11, report.Ingested)
	assert.EqualValues(t, 1, report.Filtered) // 0 had no outputs
	assert.EqualValues(t, 10, report.Delivered)
	assert.EqualValues(t, 10, report.Stages[0].Out)
	assert.EqualValues(t, 10, report.Stages[1].In)
	requireBalanced(t, report)
}

func TestBatchFlushesOnMaxWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sizes collector[int]
		var flushedAt collector[time.Duration]
		start := time.Now()
		b := stage.Batch("batch", 100, 50*time.Millisecond, func(_ context.Context, b []int) (int, error) {
			_ = flushedAt.add(context.Background(), time.Since(start))
			return len(b), nil
		}, stage.Workers(1))
		push := pipeline.NewPush[int]()
		p, err := pipeline.New("wait", pipeline.Then(pipeline.Then(pipeline.Input[int](), b), stage.Sink("s", sizes.add)))
		require.NoError(t, err)
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		for i := range 3 {
			require.NoError(t, push.Submit(context.Background(), i))
		}
		synctest.Wait()
		assert.Empty(t, sizes.items(), "a batch must wait for more items until max wait")
		time.Sleep(50 * time.Millisecond)
		synctest.Wait()
		assert.Equal(t, []int{3}, sizes.items())
		assert.Equal(t, []time.Duration{50 * time.Millisecond}, flushedAt.items())
		push.Close()
		report, err := job.Wait()
		require.NoError(t, err)
		requireBalanced(t, report)
	})
}

func TestSources(t *testing.T) {
	build := func(t *testing.T, out *collector[int]) *pipeline.Pipeline[int] {
		p, err := pipeline.New("src", pipeline.Then(pipeline.Input[int](), stage.Sink("s", out.add)))
		require.NoError(t, err)
		return p
	}
	t.Run("chan", func(t *testing.T) {
		var out collector[int]
		ch := make(chan int, 10)
		for i := range 10 {
			ch <- i
		}
		close(ch)
		r, err := build(t, &out).Run(context.Background(), pipeline.FromChan(ch))
		require.NoError(t, err)
		assert.EqualValues(t, 10, r.Delivered)
		assert.Len(t, out.items(), 10)
	})
	t.Run("seq", func(t *testing.T) {
		var out collector[int]
		r, err := build(t, &out).Run(context.Background(), pipeline.FromSeq(slices.Values([]int{1, 2, 3})))
		require.NoError(t, err)
		assert.EqualValues(t, 3, r.Delivered)
	})
	t.Run("push", func(t *testing.T) {
		var out collector[int]
		push := pipeline.NewPush[int]()
		job, err := build(t, &out).Start(context.Background(), push)
		require.NoError(t, err)
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 25 {
					assert.NoError(t, push.Submit(context.Background(), g*100+i))
				}
			})
		}
		wg.Wait()
		push.Close()
		r, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, 100, r.Delivered)
		assert.ErrorIs(t, push.Submit(context.Background(), 1), pipeline.ErrClosed)
		requireBalanced(t, r)
	})
	t.Run("push reused", func(t *testing.T) {
		var out collector[int]
		push := pipeline.NewPush[int]()
		push.Close()
		p := build(t, &out)
		_, err := p.Run(context.Background(), push)
		require.NoError(t, err)
		_, err = p.Run(context.Background(), push)
		require.ErrorContains(t, err, "already fed a run")
	})
	t.Run("reject", func(t *testing.T) {
		release := make(chan struct{})
		started := make(chan struct{}, 1)
		slow := stage.Sink("slow", func(context.Context, int) error {
			select {
			case started <- struct{}{}:
			default:
			}
			<-release
			return nil
		}, stage.Workers(1), stage.Capacity(1))
		p, err := pipeline.New("reject", pipeline.Then(pipeline.Input[int](), slow), pipeline.WithOverflow(pipeline.Reject))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		require.NoError(t, push.Submit(context.Background(), 1))
		<-started                                                // the worker holds item 1
		require.NoError(t, push.Submit(context.Background(), 2)) // fills the queue
		require.ErrorIs(t, push.Submit(context.Background(), 3), pipeline.ErrQueueFull)
		close(release)
		push.Close()
		r, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, 1, r.Rejected)
		assert.EqualValues(t, 2, r.Delivered)
		assert.EqualValues(t, 3, r.Ingested)
		requireBalanced(t, r)
	})
}

// failing returns a function that fails per a script: one entry per attempt, nil for success.
func TestRetriesAndDeadLetterReasons(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var attemptsSeen sync.Map
		fn := func(ctx context.Context, s string) (string, error) {
			n, max := stage.Attempt(ctx)
			attemptsSeen.Store(s+"#"+strconv.Itoa(n), max)
			switch s {
			case "ok":
				return s, nil
			case "flaky": // fails twice, then succeeds on the third attempt
				if n < 3 {
					return "", errors.New("flaky")
				}
				return s, nil
			case "broken":
				return "", errors.New("always broken")
			case "permanent":
				return "", retry.Permanent(errors.New("bad input"))
			case "panic":
				panic("boom")
			case "slow":
				<-ctx.Done()
				return "", ctx.Err()
			}
			return "", fmt.Errorf("unexpected %q", s)
		}
		mem := dlq.NewMemory()
		var out collector[string]
		st := stage.Map("work", fn, stage.Retry(fast), stage.Timeout(time.Second))
		p, err := pipeline.New("retries", pipeline.Then(pipeline.Then(pipeline.Input[string](), st), stage.Sink("out", out.add)), pipeline.WithDLQ(mem))
		require.NoError(t, err)
		report, err := p.Run(context.Background(), pipeline.FromSlice([]string{"ok", "flaky", "broken", "permanent", "panic", "slow"}).KeyBy(func(s string) string { return s }))
		require.NoError(t, err)

		got := out.items()
		slices.Sort(got)
		assert.Equal(t, []string{"flaky", "ok"}, got)
		recs, err := mem.Records(context.Background())
		require.NoError(t, err)
		byCorr := map[string]dlq.Record{}
		for _, r := range recs {
			byCorr[r.CorrelationID] = r
		}
		require.Len(t, byCorr, 4)
		want := map[string]struct {
			reason   dlq.Reason
			attempts int
			errType  string
		}{
			"broken":    {dlq.ReasonError, 3, "error"},
			"permanent": {dlq.ReasonPermanent, 1, "permanent"},
			"panic":     {dlq.ReasonPanic, 3, "panic"},
			"slow":      {dlq.ReasonTimeout, 3, "timeout"},
		}
		for corr, w := range want {
			r := byCorr[corr]
			assert.Equal(t, w.reason, r.Reason, corr)
			assert.Equal(t, w.attempts, r.Attempts, corr)
			assert.Equal(t, 3, r.MaxAttempts, corr)
			assert.Equal(t, w.errType, r.ErrorType, corr)
			assert.Equal(t, "work", r.Stage)
			assert.Equal(t, "retries", r.Pipeline)
			assert.JSONEq(t, strconv.Quote(corr), string(r.Payload))
			assert.False(t, r.FailedAt.Before(r.FirstAttemptAt))
		}
		assert.Contains(t, byCorr["panic"].Stack, "boom")
		assert.Contains(t, byCorr["panic"].Stack, "goroutine")
		assert.Contains(t, byCorr["broken"].Error, "always broken")
		max, _ := attemptsSeen.Load("flaky#3")
		assert.Equal(t, 3, max, "the function reads its attempt and the maximum from its context")
		s := report.Stages[0]
		assert.EqualValues(t, 1+3+3+1+3+3, s.Attempts)
		assert.EqualValues(t, 2+2+2+2, s.Retries)
		assert.EqualValues(t, map[dlq.Reason]int64{dlq.ReasonError: 1, dlq.ReasonPermanent: 1, dlq.ReasonPanic: 1, dlq.ReasonTimeout: 1}, s.DeadLetters)
		assert.EqualValues(t, 4, report.DeadLettered)
		requireBalanced(t, report)
	})
}

func TestBackoffDelaysAndRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var times collector[time.Duration]
		start := time.Now()
		fn := func(ctx context.Context, s string) (string, error) {
			_ = times.add(context.Background(), time.Since(start))
			n, _ := stage.Attempt(ctx)
			if s == "after" && n == 1 {
				return "", retry.After(errors.New("503"), 7*time.Second)
			}
			if n < 4 {
				return "", errors.New("transient")
			}
			return s, nil
		}
		policy := retry.Policy{MaxAttempts: 4, InitialInterval: 100 * time.Millisecond, Multiplier: 2, MaxInterval: time.Minute, NoJitter: true}
		p, err := pipeline.New("backoff", pipeline.Then(pipeline.Input[string](), stage.Map("m", fn, stage.Retry(policy), stage.Workers(1))))
		require.NoError(t, err)
		_, err = p.Run(context.Background(), pipeline.FromSlice([]string{"plain"}))
		require.NoError(t, err)
		assert.Equal(t, []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, 700 * time.Millisecond}, times.items())

		times = collector[time.Duration]{}
		start = time.Now()
		_, err = p.Run(context.Background(), pipeline.FromSlice([]string{"after"}))
		require.NoError(t, err)
		got := times.items()
		require.Len(t, got, 4)
		assert.Equal(t, 7*time.Second, got[1], "a Retry-After delay replaces the backoff delay")
	})
}

func TestShutdownIsNeverRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		entered := make(chan struct{})
		fn := func(ctx context.Context, n int) (int, error) {
			calls.Add(1)
			close(entered)
			<-ctx.Done()
			return 0, ctx.Err()
		}
		mem := dlq.NewMemory()
		p, err := pipeline.New("drain", pipeline.Then(pipeline.Input[int](), stage.Map("wait", fn, stage.Workers(1))),
			pipeline.WithDLQ(mem), pipeline.WithDrainTimeout(time.Second))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		job, err := p.Start(ctx, pipeline.FromSlice([]int{1}))
		require.NoError(t, err)
		<-entered
		start := time.Now()
		cancel()
		report, err := job.Wait()
		require.NoError(t, err)
		assert.Equal(t, time.Second, time.Since(start), "in-flight work gets exactly the drain timeout")
		assert.EqualValues(t, 1, calls.Load())
		recs, _ := mem.Records(context.Background())
		require.Len(t, recs, 1)
		assert.Equal(t, dlq.ReasonShutdown, recs[0].Reason)
		assert.Equal(t, 0, recs[0].Attempts, "a call cut off by a drain uses up no attempt")
		requireBalanced(t, report)
	})
}

func TestDrainParksStragglersAndSourceResumes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		gate := make(chan struct{})
		var seen atomic.Int32
		fn := func(ctx context.Context, n int) (int, error) {
			if seen.Add(1) == 5 {
				close(gate)
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Hour):
				return n, nil
			}
		}
		mem := dlq.NewMemory()
		var out collector[int]
		p, err := pipeline.New("drain",
			pipeline.Then(pipeline.Then(pipeline.Input[int](), stage.Map("slow", fn, stage.Workers(5), stage.Capacity(10))), stage.Sink("out", out.add)),
			pipeline.WithDLQ(mem), pipeline.WithDrainTimeout(time.Minute))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		src := pipeline.FromSlice(slices.Collect(func(yield func(int) bool) {
			for i := range 100 {
				if !yield(i) {
					return
				}
			}
		}))
		job, err := p.Start(ctx, src)
		require.NoError(t, err)
		<-gate
		synctest.Wait() // the queue fills up and the source blocks
		cancel()
		report, err := job.Wait()
		require.NoError(t, err)
		// 5 in the workers + 10 queued were admitted; the rest were never handed over.
		assert.EqualValues(t, 15, report.Admitted)
		assert.Equal(t, 15, src.Next(), "the source resumes from the first item not handed over")
		recs, _ := mem.Records(context.Background())
		assert.Len(t, recs, 15)
		for _, r := range recs {
			assert.Equal(t, dlq.ReasonShutdown, r.Reason)
		}
		requireBalanced(t, report)

		// The operator replays the parked items once the run can finish them.
		mem2 := dlq.NewMemory()
		p2, err := pipeline.New("drain", pipeline.Then(pipeline.Then(pipeline.Input[int](),
			stage.Map("slow", func(_ context.Context, n int) (int, error) { return n, nil })), stage.Sink("out", out.add)),
			pipeline.WithDLQ(mem2))
		require.NoError(t, err)
		rr, err := p2.Replay(context.Background(), mem, pipeline.ReplayOptions{})
		require.NoError(t, err)
		assert.Equal(t, 15, rr.Completed)
		assert.Zero(t, mem.Len())
		got := out.items()
		slices.Sort(got)
		assert.Equal(t, slices.Collect(func(yield func(int) bool) {
			for i := range 15 {
				yield(i)
			}
		}), got)
	})
}

// A call that ignores its context is abandoned after the grace period: its worker is
// replaced so the pool keeps its size, the item is dead-lettered, and the Report counts it.
func TestHungCallIsAbandoned(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var done atomic.Int32
		fn := func(ctx context.Context, n int) (int, error) {
			if n == 0 {
				<-release // ignores ctx entirely
			}
			done.Add(1)
			return n, nil
		}
		mem := dlq.NewMemory()
		p, err := pipeline.New("hung", pipeline.Then(pipeline.Input[int](),
			stage.Map("hang", fn, stage.Workers(1), stage.Timeout(time.Second), stage.Grace(time.Second), stage.Retry(retry.NoRetry()))),
			pipeline.WithDLQ(mem))
		require.NoError(t, err)
		start := time.Now()
		report, err := p.Run(context.Background(), pipeline.FromSlice([]int{0, 1, 2, 3}))
		require.NoError(t, err)
		assert.Equal(t, 2*time.Second, time.Since(start), "abandoned after timeout + grace")
		assert.EqualValues(t, 3, done.Load(), "the one worker was replaced and did the rest")
		assert.EqualValues(t, 1, report.Abandoned)
		assert.EqualValues(t, 3, report.Delivered)
		recs, _ := mem.Records(context.Background())
		require.Len(t, recs, 1)
		assert.Equal(t, dlq.ReasonTimeout, recs[0].Reason)
		assert.Contains(t, recs[0].Error, "ignored cancellation")
		requireBalanced(t, report)
		close(release) // the abandoned call returns at last, and its goroutine exits quietly
	})
}

// failSink is a dlq.Sink whose writes fail, or panic.
type failSink struct {
	writes atomic.Int32
	panics bool
}

func (f *failSink) Write(context.Context, dlq.Record) error {
	f.writes.Add(1)
	if f.panics {
		panic("sink bug")
	}
	return errors.New("disk on fire")
}
func (f *failSink) Close() error { return nil }

func TestDeadLetterSinkFailureStopsTheRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &failSink{}
		fn := func(_ context.Context, s string) (string, error) {
			if s == "bad" {
				return "", retry.Permanent(errors.New("bad"))
			}
			return s, nil
		}
		p, err := pipeline.New("loud", pipeline.Then(pipeline.Input[string](), stage.Map("check", fn, stage.Workers(1))),
			pipeline.WithDLQ(sink))
		require.NoError(t, err)
		report, err := p.Run(context.Background(), pipeline.FromSlice([]string{"a", "bad", "b"}).KeyBy(func(s string) string { return "key-" + s }))
		var dle *pipeline.DeadLetterError
		require.ErrorAs(t, err, &dle)
		assert.Equal(t, "key-bad", dle.CorrelationID)
		assert.Equal(t, "check", dle.Stage)
		assert.ErrorContains(t, err, "disk on fire")
		assert.EqualValues(t, 3, sink.writes.Load(), "the write is retried per the DLQ policy")
		assert.EqualValues(t, 0, report.DeadLettered, "nothing counts as dead-lettered unless durable")
		assert.GreaterOrEqual(t, report.Stranded, int64(1))
		requireBalanced(t, report)
	})
}

// A dead-letter sink that panics fails its write, as one that returns an error does: the write
// is retried, then goes to the fallback, or else the run stops; the process goes on.
func TestDeadLetterSinkPanicIsAFailedWrite(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := func(_ context.Context, s string) (string, error) { return "", retry.Permanent(errors.New("no")) }
		run := func(opts ...pipeline.Option) (pipeline.Report, *failSink, error) {
			sink := &failSink{panics: true}
			p, err := pipeline.New("panicky", pipeline.Then(pipeline.Input[string](), stage.Map("m", fn, stage.Workers(1))),
				append([]pipeline.Option{pipeline.WithDLQ(sink)}, opts...)...)
			require.NoError(t, err)
			report, err := p.Run(context.Background(), pipeline.FromSlice([]string{"x"}).KeyBy(func(s string) string { return "key-" + s }))
			return report, sink, err
		}

		report, sink, err := run()
		var dle *pipeline.DeadLetterError
		require.ErrorAs(t, err, &dle)
		assert.Equal(t, "key-x", dle.CorrelationID)
		assert.ErrorContains(t, err, "panicked: sink bug")
		assert.EqualValues(t, 3, sink.writes.Load(), "retried per the DLQ policy")
		assert.EqualValues(t, 0, report.DeadLettered)
		requireBalanced(t, report)

		fallback := dlq.NewMemory()
		report, _, err = run(pipeline.WithFallback(fallback))
		require.NoError(t, err)
		assert.Equal(t, 1, fallback.Len())
		assert.EqualValues(t, 1, report.DeadLettered)
		requireBalanced(t, report)
	})
}

func TestFallbackSink(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fallback := dlq.NewMemory()
		fn := func(_ context.Context, s string) (string, error) { return "", retry.Permanent(errors.New("no")) }
		p, err := pipeline.New("fb", pipeline.Then(pipeline.Input[string](), stage.Map("m", fn)),
			pipeline.WithDLQ(&failSink{}), pipeline.WithFallback(fallback))
		require.NoError(t, err)
		report, err := p.Run(context.Background(), pipeline.FromSlice([]string{"x", "y"}))
		require.NoError(t, err)
		assert.Equal(t, 2, fallback.Len())
		assert.EqualValues(t, 2, report.DeadLettered)
		requireBalanced(t, report)
	})
}

func TestFileDLQAndReplay(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "dead.jsonl")
	var broken atomic.Bool
	broken.Store(true)
	var out collector[string]
	parse := stage.Map("parse", func(_ context.Context, s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, retry.Permanent(err)
		}
		return n, nil
	})
	upload := stage.Map("upload", func(_ context.Context, n int) (string, error) {
		if broken.Load() && n%2 == 1 {
			return "", errors.New("upstream down")
		}
		return strconv.Itoa(n), nil
	}, stage.Retry(retry.Policy{MaxAttempts: 2, InitialInterval: time.Microsecond, NoJitter: true}))
	flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[string](), parse), upload), stage.Sink("out", out.add))
	p, err := pipeline.New("etl", flow, pipeline.WithDLQFile(path))
	require.NoError(t, err)

	report, err := p.Run(context.Background(), pipeline.FromSlice([]string{"1", "2", "x", "3", "4"}))
	require.NoError(t, err)
	assert.EqualValues(t, 2, report.Delivered)
	assert.EqualValues(t, 3, report.DeadLettered)
	requireBalanced(t, report)
	require.NoError(t, p.Close())

	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	require.Len(t, res.Records, 3)

	// The cause is fixed; replay into the failing stages.
	broken.Store(false)
	p2, err := pipeline.New("etl", flow, pipeline.WithDLQFile(path))
	require.NoError(t, err)
	defer p2.Close()
	store := p2.DLQ().(dlq.Store)
	dry, err := p2.Replay(context.Background(), store, pipeline.ReplayOptions{DryRun: true, Filter: dlq.Filter{Stage: "upload"}})
	require.NoError(t, err)
	assert.Len(t, dry.Injected, 2)
	recs, _ := store.Records(context.Background())
	assert.Len(t, recs, 3, "a dry run changes nothing")

	rr, err := p2.Replay(context.Background(), store, pipeline.ReplayOptions{})
	require.NoError(t, err)
	assert.Equal(t, 3, rr.Selected)
	assert.Equal(t, 3, len(rr.Injected))
	assert.Equal(t, 3, rr.Completed, "the two upload failures succeed, the malformed input is dead-lettered again")
	assert.EqualValues(t, 2, rr.Delivered)
	assert.EqualValues(t, 1, rr.DeadLettered)
	recs, err = store.Records(context.Background())
	require.NoError(t, err)
	require.Len(t, recs, 1)
	got := out.items()
	slices.Sort(got)
	assert.Equal(t, []string{"1", "2", "3", "4"}, got)
	// The record of the item that failed again was replaced by a new one (replays 1).
	assert.Equal(t, "parse", recs[0].Stage)
	assert.Equal(t, 1, recs[0].Replays)
}

func TestReplayLeavesUnknownStageAndBadPayload(t *testing.T) {
	store := dlq.NewMemory()
	ctx := context.Background()
	base := dlq.Record{V: 1, Pipeline: "p", Reason: dlq.ReasonError, Error: "x", Attempts: 1, MaxAttempts: 1,
		FirstAttemptAt: time.Now(), FailedAt: time.Now()}
	good, unknown, bad := base, base, base
	good.ID, good.Stage, good.Payload, good.CorrelationID = dlq.NewID(), "m", []byte(`7`), "good"
	unknown.ID, unknown.Stage, unknown.Payload = dlq.NewID(), "gone", []byte(`7`)
	bad.ID, bad.Stage, bad.Payload = dlq.NewID(), "m", []byte(`"not a number"`)
	for _, r := range []dlq.Record{good, unknown, bad} {
		require.NoError(t, store.Write(ctx, r))
	}
	var out collector[int]
	p, err := pipeline.New("p", pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.Map("m", func(_ context.Context, n int) (int, error) { return n * 2, nil })), stage.Sink("out", out.add)))
	require.NoError(t, err)
	rr, err := p.Replay(ctx, store, pipeline.ReplayOptions{})
	require.NoError(t, err)
	assert.Equal(t, []int{14}, out.items())
	assert.Equal(t, 1, rr.Completed)
	require.Len(t, rr.Skipped, 2)
	ids := []string{rr.Skipped[0].ID, rr.Skipped[1].ID}
	assert.ElementsMatch(t, []string{unknown.ID, bad.ID}, ids)
	assert.Equal(t, 2, store.Len(), "skipped records stay in the store")
	for _, s := range rr.Skipped {
		assert.Error(t, s.Err)
	}
}

// stepStore is a dlq.Store that fails every operation from the n-th on, to stop a replay at
// every step: with an error, or with a panic if panics is set.
type stepStore struct {
	*dlq.Memory
	mu     sync.Mutex
	left   int
	panics bool
	stops  bool
}

func (s *stepStore) step() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.left <= 0 {
		s.stops = true
		if s.panics {
			panic("store crashed")
		}
		return errors.New("crash")
	}
	s.left--
	return nil
}

func (s *stepStore) Write(ctx context.Context, r dlq.Record) error {
	if err := s.step(); err != nil {
		return err
	}
	return s.Memory.Write(ctx, r)
}

func (s *stepStore) Delete(ctx context.Context, ids ...string) error {
	if err := s.step(); err != nil {
		return err
	}
	return s.Memory.Delete(ctx, ids...)
}

// A replay stopped at any step, by a store that fails or panics, loses nothing: each original
// item is delivered, or still in the store (possibly under a new record), and never both lost.
// A panicking store fails the replay with an error that names the store, not the process.
func TestReplayStoppedAtEveryStepLosesNothing(t *testing.T) {
	const items = 6
	for i := range 2 * (2*items + 2) { // each stop, from the first operation to none, with an error and with a panic
		stopAt, panics := i/2, i%2 == 1
		t.Run(fmt.Sprintf("%d/panics=%v", stopAt, panics), func(t *testing.T) {
			ctx := context.Background()
			mem := dlq.NewMemory()
			for i := range items {
				require.NoError(t, mem.Write(ctx, dlq.Record{V: 1, ID: dlq.NewID(), CorrelationID: "c" + strconv.Itoa(i), Pipeline: "p",
					Stage: "m", Payload: []byte(strconv.Itoa(i)), Reason: dlq.ReasonError, Error: "e", Attempts: 1, MaxAttempts: 1,
					FirstAttemptAt: time.Now(), FailedAt: time.Now()}))
			}
			store := &stepStore{Memory: mem, left: stopAt, panics: panics}
			var out collector[int]
			fn := func(_ context.Context, n int) (int, error) {
				if n%2 == 0 {
					return 0, retry.Permanent(errors.New("still broken"))
				}
				return n, nil
			}
			p, err := pipeline.New("p", pipeline.Then(pipeline.Then(pipeline.Input[int](), stage.Map("m", fn, stage.Workers(2))),
				stage.Sink("out", out.add)), pipeline.WithDLQ(store), pipeline.WithDLQRetry(retry.NoRetry()))
			require.NoError(t, err)
			_, runErr := p.Replay(ctx, store, pipeline.ReplayOptions{})
			if !store.stops {
				require.NoError(t, runErr)
			} else if panics {
				require.Error(t, runErr)
				assert.Contains(t, runErr.Error(), "*sluice_test.stepStore panicked: store crashed")
				assert.NotContains(t, runErr.Error(), "Ack panicked", "the store's panic is not the item's")
			}
			recs, err := mem.Records(ctx)
			require.NoError(t, err)
			inStore := map[string]bool{}
			for _, r := range recs {
				inStore[r.CorrelationID] = true
			}
			delivered := map[int]bool{}
			for _, n := range out.items() {
				delivered[n] = true
			}
			for i := range items {
				assert.True(t, delivered[i] || inStore["c"+strconv.Itoa(i)], "item %d lost (stop at step %d)", i, stopAt)
				if i%2 == 0 {
					assert.False(t, delivered[i])
				}
			}
		})
	}
}

func TestBadConfiguration(t *testing.T) {
	id := func(_ context.Context, n int) (int, error) { return n, nil }
	in := pipeline.Input[int]()
	cases := []struct {
		name string
		flow *pipeline.Flow[int, int]
		opts []pipeline.Option
		want string
	}{
		{"zero workers", pipeline.Then(in, stage.Map("m", id, stage.Workers(0))), nil, "at least one worker"},
		{"negative workers", pipeline.Then(in, stage.Map("m", id, stage.Workers(-2))), nil, "Workers(-2)"},
		{"negative capacity", pipeline.Then(in, stage.Map("m", id, stage.Capacity(-1))), nil, "capacity cannot be negative"},
		{"duplicate names", pipeline.Then(pipeline.Then(in, stage.Map("m", id)), stage.Map("m", id)), nil, `two stages are named "m"`},
		{"nil function", pipeline.Then(in, stage.Map[int, int]("m", nil)), nil, "function is nil"},
		{"batch size 0", pipeline.Then(pipeline.Then(in, stage.Batch("b", 0, time.Second, func(_ context.Context, b []int) ([]int, error) { return b, nil })),
			stage.Map("m", func(_ context.Context, b []int) (int, error) { return len(b), nil })), nil, "batch size 0"},
		{"unnamed stage", pipeline.Then(in, stage.Map("", id)), nil, "no name"},
		{"no stage", in, nil, "no stage"},
		{"nil stage", pipeline.Then[int, int, int](in, nil), nil, "stage 1 is nil"},
		{"bad retry", pipeline.Then(in, stage.Map("m", id, stage.Retry(retry.Policy{MaxAttempts: -1}))), nil, "MaxAttempts"},
		{"bad codec", pipeline.Then(in, stage.Map("m", id, stage.WithCodec[string](stage.JSONCodec[string]{}))), nil, "codec"},
		{"dlq path", pipeline.Then(in, stage.Map("m", id)), []pipeline.Option{pipeline.WithDLQFile(filepath.Join(t.TempDir(), "missing", "dir", "x.jsonl"))}, "WithDLQFile"},
		{"nil sink", pipeline.Then(in, stage.Map("m", id)), []pipeline.Option{pipeline.WithDLQ(nil)}, "sink is nil"},
		{"negative drain", pipeline.Then(in, stage.Map("m", id)), []pipeline.Option{pipeline.WithDrainTimeout(-1)}, "WithDrainTimeout"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p, err := pipeline.New("bad", c.flow, c.opts...)
			require.Error(t, err)
			assert.Nil(t, p)
			assert.Contains(t, err.Error(), c.want)
		})
	}
	t.Run("no name", func(t *testing.T) {
		_, err := pipeline.New("", pipeline.Then(in, stage.Map("m", id)))
		require.ErrorContains(t, err, "no name")
	})
	t.Run("nil context and source", func(t *testing.T) {
		p, err := pipeline.New("ok", pipeline.Then(in, stage.Map("m", id)))
		require.NoError(t, err)
		//lint:ignore SA1012 a nil context is the point of the test
		_, err = p.Run(nil, pipeline.FromSlice([]int{1}))
		require.ErrorIs(t, err, pipeline.ErrNilContext)
		_, err = p.Run(context.Background(), nil)
		require.ErrorContains(t, err, "source is nil")
	})
	t.Run("second writer of a DLQ file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "d.jsonl")
		p1, err := pipeline.New("a", pipeline.Then(in, stage.Map("m", id)), pipeline.WithDLQFile(path))
		require.NoError(t, err)
		defer p1.Close()
		_, err = pipeline.New("b", pipeline.Then(in, stage.Map("m", id)), pipeline.WithDLQFile(path))
		require.ErrorIs(t, err, dlq.ErrLocked)
	})
}

// A stage definition holds no running state: the same pipeline can run again, concurrently.
func TestPipelineRunsTwiceAndConcurrently(t *testing.T) {
	var n atomic.Int64
	p, err := pipeline.New("again", pipeline.Then(pipeline.Input[int](), stage.Sink("s", func(_ context.Context, v int) error {
		n.Add(int64(v))
		return nil
	})))
	require.NoError(t, err)
	var wg sync.WaitGroup
	for range 3 {
		wg.Go(func() {
			r, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}))
			assert.NoError(t, err)
			assert.EqualValues(t, 3, r.Delivered)
		})
	}
	wg.Wait()
	assert.EqualValues(t, 18, n.Load())
}

func TestDLQFileIsJSONLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.jsonl")
	p, err := pipeline.New("lines", pipeline.Then(pipeline.Input[int](), stage.Map("m", func(_ context.Context, n int) (int, error) {
		return 0, retry.Permanent(fmt.Errorf("bad %d", n))
	})), pipeline.WithDLQFile(path))
	require.NoError(t, err)
	_, err = p.Run(context.Background(), pipeline.FromSlice([]int{1, 2}))
	require.NoError(t, err)
	require.NoError(t, p.Close())
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	require.Len(t, lines, 2)
	for _, l := range lines {
		assert.Contains(t, l, `"v":1`)
		assert.Contains(t, l, `"reason":"permanent"`)
		assert.Contains(t, l, `"source":"index:`)
	}
}

// textCodec stores ints as plain text, not JSON: dead letters hold it base64-encoded.
type textCodec struct{}

func (textCodec) Encode(n int) ([]byte, error) { return []byte("n=" + strconv.Itoa(n)), nil }
func (textCodec) Decode(b []byte) (int, error) {
	return strconv.Atoi(strings.TrimPrefix(string(b), "n="))
}
func (textCodec) JSON() bool { return false }

func TestCustomCodecRoundTripsThroughReplay(t *testing.T) {
	var fixed atomic.Bool
	var out collector[int]
	fn := func(_ context.Context, n int) (int, error) {
		if !fixed.Load() {
			return 0, retry.Permanent(errors.New("not yet"))
		}
		return n, nil
	}
	mem := dlq.NewMemory()
	p, err := pipeline.New("codec", pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.Map("m", fn, stage.WithCodec[int](textCodec{}))), stage.Sink("out", out.add)), pipeline.WithDLQ(mem))
	require.NoError(t, err)
	_, err = p.Run(context.Background(), pipeline.FromSlice([]int{42}))
	require.NoError(t, err)
	recs, _ := mem.Records(context.Background())
	require.Len(t, recs, 1)
	assert.Equal(t, "base64", recs[0].PayloadEncoding)
	raw, err := recs[0].PayloadBytes()
	require.NoError(t, err)
	assert.Equal(t, "n=42", string(raw))

	fixed.Store(true)
	rr, err := p.Replay(context.Background(), mem, pipeline.ReplayOptions{})
	require.NoError(t, err)
	assert.Equal(t, 1, rr.Completed)
	assert.Equal(t, []int{42}, out.items())
}

// A drain hands the items it cuts off back to an acknowledging source as NotDone (a broker
// redelivers them) instead of parking them in the DLQ; finished items are acknowledged with
// their outcome.
func TestDrainReturnsItemsToAnAcknowledgingSource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		acks := map[int][]pipeline.Outcome{}
		push := pipeline.NewPush[int]()
		block := make(chan struct{})
		fn := func(ctx context.Context, n int) (int, error) {
			if n >= 2 {
				select {
				case <-block:
				case <-ctx.Done():
					return 0, ctx.Err()
				}
			}
			return n, nil
		}
		mem := dlq.NewMemory()
		p, err := pipeline.New("acks", pipeline.Then(pipeline.Then(pipeline.Input[int](), stage.Map("m", fn, stage.Workers(2), stage.Capacity(4))),
			stage.Filter("odd", func(_ context.Context, n int) (bool, error) { return n%2 == 1, nil })),
			pipeline.WithDLQ(mem), pipeline.WithDrainTimeout(time.Second))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		job, err := p.Start(ctx, push)
		require.NoError(t, err)
		for i := range 6 {
			require.NoError(t, push.SubmitItem(context.Background(), pipeline.Item[int]{Value: i, Ack: func(o pipeline.Outcome) {
				mu.Lock()
				acks[i] = append(acks[i], o)
				mu.Unlock()
			}}))
			if i == 1 {
				synctest.Wait() // 0 and 1 are done before the others come
			}
		}
		synctest.Wait()
		cancel()
		report, err := job.Wait()
		require.NoError(t, err)
		push.Close()
		assert.Zero(t, mem.Len(), "nothing is parked in the DLQ for a source that redelivers")
		assert.Equal(t, map[int][]pipeline.Outcome{
			0: {pipeline.Filtered}, 1: {pipeline.Delivered},
			2: {pipeline.NotDone}, 3: {pipeline.NotDone}, 4: {pipeline.NotDone}, 5: {pipeline.NotDone},
		}, acks)
		assert.EqualValues(t, 4, report.Returned)
		requireBalanced(t, report)
	})
}

// panickyAckSource emits 0, 1 and 2, each with an acknowledgement that records its outcome,
// but the one of item 1 panics; then it waits until the run stops it.
type panickyAckSource struct {
	mu   sync.Mutex
	acks map[int]pipeline.Outcome
}

func (s *panickyAckSource) Emit(ctx context.Context, admit pipeline.Admit[int]) error {
	for i := range 3 {
		err := admit(pipeline.Item[int]{Value: i, Ack: func(o pipeline.Outcome) {
			if i == 1 {
				panic("ack lost its broker")
			}
			s.mu.Lock()
			s.acks[i] = o
			s.mu.Unlock()
		}})
		if err != nil {
			return err
		}
	}
	<-ctx.Done()
	return nil
}

// A panic in a source's acknowledgement does not take the process down: as when the source's
// Emit fails, the source is stopped and the run fails with the panic once the items in flight
// are done; the other items are delivered and acknowledged.
func TestAckPanicFailsTheSourceNotTheProcess(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		src := &panickyAckSource{acks: map[int]pipeline.Outcome{}}
		id := func(_ context.Context, n int) (int, error) { return n, nil }
		p, err := pipeline.New("acks", pipeline.Then(pipeline.Input[int](), stage.Map("m", id, stage.Workers(2))))
		require.NoError(t, err)
		report, err := p.Run(context.Background(), src)
		require.Error(t, err)
		assert.ErrorContains(t, err, "source failed")
		assert.ErrorContains(t, err, "Ack panicked (outcome delivered): ack lost its broker")
		assert.Equal(t, map[int]pipeline.Outcome{0: pipeline.Delivered, 2: pipeline.Delivered}, src.acks)
		assert.EqualValues(t, 3, report.Delivered)
		requireBalanced(t, report)
	})
}

// Each stage reports how long items waited in its input and how long the work took, so a
// slow stage shows as work and the stages behind it as waiting. The figures count every
// worker's items (its workers record into shards that Stats adds up).
func TestQueueWaitAndWorkLatency(t *testing.T) {
	run := func(t *testing.T, workers, capacity, items int) stage.Stats {
		slow := stage.Map("slow", func(_ context.Context, n int) (int, error) {
			time.Sleep(10 * time.Millisecond)
			return n, nil
		}, stage.Workers(workers), stage.Capacity(capacity))
		p, err := pipeline.New("lat", pipeline.Then(pipeline.Input[int](), slow))
		require.NoError(t, err)
		report, err := p.Run(context.Background(), pipeline.FromSlice(make([]int, items)))
		require.NoError(t, err)
		return report.Stages[0]
	}
	synctest.Test(t, func(t *testing.T) {
		s := run(t, 1, 10, 4)
		assert.EqualValues(t, 4, s.Work.Count)
		assert.InEpsilon(t, float64(10*time.Millisecond), float64(s.Work.P50), 0.07)
		assert.InEpsilon(t, float64(10*time.Millisecond), float64(s.Work.P99), 0.07)
		assert.EqualValues(t, 4, s.Wait.Count)
		assert.InEpsilon(t, float64(30*time.Millisecond), float64(s.Wait.Max), 0.07, "the 4th item waited for 3 others")
		assert.InEpsilon(t, float64(10*time.Millisecond), float64(s.Wait.P50), 0.07)

		s = run(t, 8, 16, 40)
		assert.EqualValues(t, 40, s.Work.Count, "every worker's items")
		assert.EqualValues(t, 40, s.Wait.Count)
		assert.InEpsilon(t, float64(10*time.Millisecond), float64(s.Work.Max), 0.07)
	})
}

// Logs go through the logger option, with the item's correlation ID, the stage and the
// attempt; Stats gives the live numbers while the run goes on.
func TestLogsAndLiveStats(t *testing.T) {
	var buf syncBuffer
	logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	release := make(chan struct{})
	started := make(chan struct{}, 1)
	fn := func(ctx context.Context, s string) (string, error) {
		if s == "hold" {
			started <- struct{}{}
			<-release
			return s, nil
		}
		if n, _ := stage.Attempt(ctx); n == 1 {
			return "", errors.New("first try fails")
		}
		return "", retry.Permanent(errors.New("then it is hopeless"))
	}
	p, err := pipeline.New("logs", pipeline.Then(pipeline.Input[string](),
		stage.Map("m", fn, stage.Workers(2), stage.Retry(retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, NoJitter: true}))),
		pipeline.WithLogger(logger))
	require.NoError(t, err)
	push := pipeline.NewPush[string]()
	job, err := p.Start(context.Background(), push)
	require.NoError(t, err)
	require.NoError(t, push.SubmitItem(context.Background(), pipeline.Item[string]{Value: "hold", Key: "k-hold"}))
	<-started
	live := job.Stats()
	assert.EqualValues(t, 1, live.Admitted)
	assert.EqualValues(t, 1, live.InFlight)
	assert.Equal(t, 1, live.Stages[0].Busy)
	require.NoError(t, push.SubmitItem(context.Background(), pipeline.Item[string]{Value: "x", Key: "k-x"}))
	close(release)
	push.Close()
	_, err = job.Wait()
	require.NoError(t, err)

	out := buf.String()
	var retryLine, deadLine map[string]any
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), line)
		switch m["msg"] {
		case "sluice: retrying":
			retryLine = m
		case "sluice: dead-lettered":
			deadLine = m
		}
	}
	require.NotNil(t, retryLine, out)
	require.NotNil(t, deadLine, out)
	for _, m := range []map[string]any{retryLine, deadLine} {
		assert.Equal(t, "k-x", m["correlation_id"])
		assert.Equal(t, "m", m["stage"])
		assert.NotNil(t, m["attempt"])
	}
	assert.EqualValues(t, 2, deadLine["attempt"])
	assert.Equal(t, "permanent", deadLine["reason"])
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A call that ignores its context during a drain: after the drain timeout and the grace
// period its worker is released, its item parked with reason shutdown, and Run returns; the
// stuck goroutine is counted as abandoned.
func TestDrainAbandonsCallsThatIgnoreCancellation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		entered := make(chan struct{}, 1)
		fn := func(_ context.Context, n int) (int, error) {
			entered <- struct{}{}
			<-release // ignores its context
			return n, nil
		}
		mem := dlq.NewMemory()
		p, err := pipeline.New("stuck", pipeline.Then(pipeline.Input[int](),
			stage.Map("stuck", fn, stage.Workers(1), stage.Capacity(2), stage.Grace(500*time.Millisecond))),
			pipeline.WithDLQ(mem), pipeline.WithDrainTimeout(time.Second))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		job, err := p.Start(ctx, pipeline.FromSlice([]int{1, 2, 3}))
		require.NoError(t, err)
		<-entered
		synctest.Wait()
		start := time.Now()
		cancel()
		report, err := job.Wait()
		require.NoError(t, err)
		assert.Equal(t, 1500*time.Millisecond, time.Since(start), "drain timeout + grace")
		assert.EqualValues(t, 1, report.Abandoned)
		recs, _ := mem.Records(context.Background())
		assert.Len(t, recs, 3, "the stuck item and the two queued ones are parked")
		for _, r := range recs {
			assert.Equal(t, dlq.ReasonShutdown, r.Reason)
		}
		requireBalanced(t, report)
		close(release)
	})
}
