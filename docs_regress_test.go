package sluice_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// Regression tests for the findings of a review of the public API's docs against its behaviour.

func same(_ context.Context, n int) (int, error) { return n, nil }

// A NaN rate or autoscaler ratio is refused like any other value out of range (every comparison
// with NaN is false, so a check written as "refuse if x <= 0" let it through: a NaN rate meant
// no limit at all, a NaN utilisation a pool that never grew). Workers and Autoscale together are
// refused too: both size the pool, and the one given last silently won.
func TestOutOfRangeStageOptionsAreRefused(t *testing.T) {
	nan := math.NaN()
	for name, opt := range map[string][]stage.Option{
		"RateLimit(NaN)":              {stage.RateLimit(nan, 1)},
		"RateLimitBy(NaN)":            {stage.RateLimitBy(func(n int) string { return "k" }, nan, 1, 0)},
		"Autoscale TargetUtilization": {stage.Autoscale(1, 4, stage.AutoscaleConfig{TargetUtilization: nan})},
		"Autoscale ShrinkBelow":       {stage.Autoscale(1, 4, stage.AutoscaleConfig{ShrinkBelow: nan})},
		"Workers, then Autoscale":     {stage.Workers(2), stage.Autoscale(1, 4, stage.AutoscaleConfig{})},
		"Autoscale, then Workers":     {stage.Autoscale(1, 4, stage.AutoscaleConfig{}), stage.Workers(2)},
	} {
		t.Run(name, func(t *testing.T) {
			s := stage.Map("m", same, opt...)
			require.Error(t, s.Err())
			_, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), s))
			require.Error(t, err)
		})
	}
	for name, opt := range map[string]stage.Option{
		"RateLimit(+Inf)": stage.RateLimit(math.Inf(1), 1), // no limit, as golang.org/x/time/rate has it
		"Autoscale":       stage.Autoscale(1, 4, stage.AutoscaleConfig{TargetUtilization: 1, ShrinkBelow: 0.5}),
	} {
		assert.NoError(t, stage.Map("m", same, opt).Err(), name)
	}
}

// threeDeadLetters runs 1, 2 and 3 through a sink that fails them for good, then calls replay
// for each of them once replaying is set: it returns the pipeline, its store and the records.
func threeDeadLetters(t *testing.T, replay func(ctx context.Context, n int) error, opts ...pipeline.Option) (*pipeline.Pipeline[int], *dlq.Memory, []dlq.Record, *atomic.Bool) {
	var replaying atomic.Bool
	s := stage.Sink("s", func(ctx context.Context, n int) error {
		if !replaying.Load() {
			return retry.Permanent(errors.New("down"))
		}
		return replay(ctx, n)
	}, stage.Workers(1))
	mem := dlq.NewMemory()
	p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), s), append(opts, pipeline.WithDLQ(mem))...)
	require.NoError(t, err)
	rep, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}))
	require.NoError(t, err)
	require.EqualValues(t, 3, rep.DeadLettered)
	left, err := mem.Records(context.Background())
	require.NoError(t, err)
	return p, mem, left, &replaying
}

// A replay stopped by its context lists as injected only the records it injected; the others
// stay in the store, untouched.
func TestStoppedReplayListsOnlyWhatItInjected(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		called := make(chan int, 10)
		p, mem, left, replaying := threeDeadLetters(t, func(_ context.Context, n int) error {
			called <- n
			return nil
		})
		replaying.Store(true)
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-called; cancel() }() // stop the replay once its first item is through
		rr, err := p.Replay(ctx, mem, pipeline.ReplayOptions{Rate: 1})
		require.NoError(t, err)
		assert.Equal(t, 3, rr.Selected)
		require.EqualValues(t, 1, rr.Admitted)
		assert.Equal(t, []string{left[0].ID}, rr.Injected)
		assert.Equal(t, 1, rr.Completed)
		rest, err := mem.Records(context.Background())
		require.NoError(t, err)
		assert.Equal(t, left[1:], rest, "the records not injected stay as they were")
	})
}

// A replay stopped while an item is in flight says which injected records completed: the
// item the drain cut off is handed back, so its record stays in the store and is not in
// CompletedIDs (a tool that took every injected record not dead-lettered again for a success
// reported it as one).
func TestStoppedReplayListsWhichRecordsCompleted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		entered := make(chan int, 10)
		p, mem, left, replaying := threeDeadLetters(t, func(ctx context.Context, n int) error {
			entered <- n
			if n == 1 {
				return nil
			}
			<-ctx.Done() // the drain cuts it off
			return ctx.Err()
		}, pipeline.WithDrainTimeout(time.Second))
		replaying.Store(true)
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-entered; <-entered; cancel() }() // stop the replay while item 2 is in flight
		rr, err := p.Replay(ctx, mem, pipeline.ReplayOptions{})
		require.NoError(t, err)
		require.GreaterOrEqual(t, len(rr.Injected), 2)
		assert.Equal(t, left[0].ID, rr.Injected[0])
		assert.Equal(t, left[1].ID, rr.Injected[1])
		assert.Equal(t, []string{left[0].ID}, rr.CompletedIDs, "only item 1 was delivered")
		assert.Equal(t, len(rr.CompletedIDs), rr.Completed)
		rest, err := mem.Records(context.Background())
		require.NoError(t, err)
		assert.Equal(t, left[1:], rest, "the records not completed stay in the store")
	})
}

// WithDLQFile's file is opened by New once the configuration is accepted, so a file that a later
// option replaced, or that belonged to a refused configuration, is not left open and locked.
// A nil sink in an interface (a *dlq.File from an OpenFile whose error was ignored) is refused
// by New like a nil one, not at the first dead letter.
func TestDeadLetterOptionsHoldOnlyTheSinkKept(t *testing.T) {
	cases := map[string]func(path string) error{
		"WithDLQ after WithDLQFile": func(path string) error {
			p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Map("m", same)),
				pipeline.WithDLQFile(path), pipeline.WithDLQ(dlq.NewMemory()))
			require.NoError(t, err)
			return p.Close()
		},
		"WithDLQFile twice": func(path string) error {
			p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Map("m", same)),
				pipeline.WithDLQFile(path), pipeline.WithDLQFile(path+".2"))
			require.NoError(t, err)
			defer p.Close()
			_, err = dlq.OpenFile(path + ".2")
			require.ErrorIs(t, err, dlq.ErrLocked, "the file kept is open")
			return nil
		},
		"refused configuration": func(path string) error {
			_, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Map("m", same, stage.Workers(0))),
				pipeline.WithDLQFile(path))
			require.Error(t, err)
			return nil
		},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dl.jsonl")
			require.NoError(t, c(path))
			f, err := dlq.OpenFile(path)
			require.NoError(t, err, "the first dead-letter file is free")
			require.NoError(t, f.Close())
		})
	}
	var f *dlq.File
	for name, opt := range map[string]pipeline.Option{"WithDLQ": pipeline.WithDLQ(f), "WithFallback": pipeline.WithFallback(f)} {
		_, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Map("m", same)), opt)
		assert.ErrorContains(t, err, "nil", name)
	}
}

// Timeout's doc said that an attempt that outlives its timeout "is failed", but a call that
// ignores its context and comes back with a result within the grace period has it kept (the work
// is done; failing it would do it again, a duplicate the reliability suite counts as a bug):
// the doc says so now, and this pins it. One that comes back late with an error fails with
// reason timeout and is retried.
func TestLateResultWithinTheGraceIsKept(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		s := stage.Sink("s", func(_ context.Context, n int) error {
			calls.Add(1)
			time.Sleep(15 * time.Millisecond) // ignores its context; back within the grace
			if n == 2 {
				return errors.New("late and failed")
			}
			return nil
		}, stage.Workers(1), stage.Timeout(10*time.Millisecond),
			stage.Retry(retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond}))
		mem := dlq.NewMemory()
		p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), s), pipeline.WithDLQ(mem))
		require.NoError(t, err)
		rep, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2}))
		require.NoError(t, err)
		st := rep.Stages[0]
		assert.EqualValues(t, 1, rep.Delivered, "item 1: its late result is kept")
		assert.EqualValues(t, 1, st.DeadLetters[dlq.ReasonTimeout], "item 2: two late failures")
		assert.EqualValues(t, 3, calls.Load(), "one call for item 1, two for item 2")
		assert.Zero(t, rep.Abandoned)
		recs, err := mem.Records(context.Background())
		require.NoError(t, err)
		require.Len(t, recs, 1)
		assert.Equal(t, 2, recs[0].Attempts)
		assert.Equal(t, "timeout", recs[0].ErrorType)
	})
}

// Report.Balanced can fail: it was a sum that held by construction (InFlight is what the other
// counts leave), so the example job's "balanced" could not tell a lost unit. Now a report with
// units in flight, or whose counts or stages do not add up, is not balanced.
func TestBalancedCanFail(t *testing.T) {
	p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Map("m", same)))
	require.NoError(t, err)
	rep, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}))
	require.NoError(t, err)
	require.True(t, rep.Balanced(), "%+v", rep)
	for name, spoil := range map[string]func(r *pipeline.Report){
		"in flight":         func(r *pipeline.Report) { r.InFlight, r.Delivered = 1, r.Delivered-1 },
		"lost":              func(r *pipeline.Report) { r.Delivered-- },
		"ingested":          func(r *pipeline.Report) { r.Admitted++ },
		"stage lost a unit": func(r *pipeline.Report) { r.Stages[0].Succeeded-- },
	} {
		r := rep
		r.Stages = slices.Clone(rep.Stages)
		spoil(&r)
		assert.False(t, r.Balanced(), name)
	}
}

// A stage after a Sink is refused: a sink ends a pipeline (it passed struct{}{} on, and the
// stages after the "terminal" one ran and delivered).
func TestStageAfterASinkIsRefused(t *testing.T) {
	store := stage.Sink("store", func(context.Context, int) error { return nil })
	after := stage.Map("after", func(context.Context, struct{}) (string, error) { return "out of nothing", nil })
	last := stage.Sink("last", func(context.Context, string) error { return nil })
	_, err := pipeline.New("sink-mid", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](), store), after), last))
	require.Error(t, err)
	assert.Contains(t, err.Error(), `stage "store" is a sink, which ends a pipeline, but stage "after" follows it`)
}

// Every log line about an item carries its correlation ID (DESIGN), the abandonment's too, the
// one an operator looks for with a hung call: it had only the stage and the attempt.
func TestEveryItemLogLineHasTheCorrelationID(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		hung := stage.Sink("hung", func(ctx context.Context, s string) error {
			if n, _ := stage.Attempt(ctx); n == 1 {
				return context.DeadlineExceeded // a retry first (logged at debug level)
			}
			<-release // ignores its context
			return nil
		}, stage.Workers(1), stage.Timeout(10*time.Millisecond), stage.Grace(10*time.Millisecond),
			stage.Retry(retry.Policy{MaxAttempts: 2, InitialInterval: time.Millisecond, NoJitter: true}))
		var buf syncBuffer
		p, err := pipeline.New("logs", pipeline.Then(pipeline.Input[string](), hung),
			pipeline.WithLogger(slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))))
		require.NoError(t, err)
		rep, err := p.Run(context.Background(), pipeline.FromSlice([]string{"x"}).KeyBy(func(s string) string { return "item-" + s }))
		require.NoError(t, err)
		close(release)
		synctest.Wait()
		assert.EqualValues(t, 1, rep.DeadLettered)
		var msgs []string
		for line := range strings.Lines(buf.String()) {
			var l struct {
				Msg, Stage    string
				CorrelationID string `json:"correlation_id"`
			}
			require.NoError(t, json.Unmarshal([]byte(line), &l))
			if l.Stage != "" {
				msgs = append(msgs, l.Msg)
				assert.Equal(t, "item-x", l.CorrelationID, "log line %q", l.Msg)
			}
		}
		assert.Contains(t, msgs, "sluice: abandoned a call that ignores its cancelled context")
	})
}
