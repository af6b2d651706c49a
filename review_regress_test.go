package sluice_test

import (
	"context"
	"fmt"
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

// Regression tests for the findings of a review of the core.

// Under CallerRuns, a call run for the caller that ignores its context is abandoned like a
// pool worker's, and the caller (here the source's goroutine) is released, so Run returns.
func TestCallerRunsReleasesTheCallerOfAnAbandonedCall(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		unblock := make(chan struct{})
		held := make(chan struct{}, 1)
		fn := func(ctx context.Context, n int) (int, error) {
			switch n {
			case 1: // the pool's worker: respects its context
				held <- struct{}{}
				<-ctx.Done()
				return 0, ctx.Err()
			case 3: // runs for the caller: ignores its context
				<-unblock
			}
			return n, nil
		}
		mem := dlq.NewMemory()
		p, err := pipeline.New("cr", pipeline.Then(pipeline.Input[int](),
			stage.Map("first", fn, stage.Workers(1), stage.Capacity(1), stage.Timeout(50*time.Millisecond),
				stage.Grace(50*time.Millisecond), stage.Retry(retry.NoRetry()))),
			pipeline.WithOverflow(pipeline.CallerRuns), pipeline.WithDrainTimeout(50*time.Millisecond), pipeline.WithDLQ(mem))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		job, err := p.Start(ctx, pipeline.FromSlice([]int{1, 2, 3, 4}))
		require.NoError(t, err)
		<-held
		synctest.Wait() // item 3 is in its call, for the source's goroutine
		cancel()
		report, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, 1, report.Abandoned)
		requireBalanced(t, report)
		close(unblock)
	})
}

// A batch first stage cannot be run by a caller on one item: CallerRuns is refused.
func TestCallerRunsRefusesABatchFirstStage(t *testing.T) {
	fn := func(ctx context.Context, b []int) (int, error) { return len(b), nil }
	_, err := pipeline.New("crb", pipeline.Then(pipeline.Input[int](),
		stage.Batch("b", 2, time.Millisecond, fn, stage.Workers(1))),
		pipeline.WithOverflow(pipeline.CallerRuns))
	require.ErrorContains(t, err, "is a batch")
}

// lateSource admits a second item after its Emit returned.
type lateSource struct{ late chan error }

func (s *lateSource) Emit(_ context.Context, admit pipeline.Admit[int]) error {
	if err := admit(pipeline.Item[int]{Value: 1}); err != nil {
		return err
	}
	go func() {
		time.Sleep(100 * time.Millisecond)
		s.late <- admit(pipeline.Item[int]{Value: 2, Ack: func(pipeline.Outcome) {}})
	}()
	return nil
}

// An item handed over after the source's Emit returned is refused (ErrClosed), never left in
// a queue whose workers are gone.
func TestAdmitAfterEmitIsRefused(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := func(ctx context.Context, n int) error { time.Sleep(300 * time.Millisecond); return nil }
		p, err := pipeline.New("late", pipeline.Then(pipeline.Then(pipeline.Input[int](),
			stage.Map("first", func(_ context.Context, n int) (int, error) { return n, nil })), stage.Sink("slow", slow)))
		require.NoError(t, err)
		src := &lateSource{late: make(chan error, 1)}
		report, err := p.Run(context.Background(), src)
		require.NoError(t, err)
		require.ErrorIs(t, <-src.late, pipeline.ErrClosed)
		assert.EqualValues(t, 1, report.Delivered)
		requireBalanced(t, report)
	})
}

// A watchdog firing for an attempt that ended right at timeout + grace abandons nothing: never
// the worker's next attempt.
func TestWatchdogAbandonsOnlyTheAttemptItTimed(t *testing.T) {
	for range 10 {
		synctest.Test(t, func(t *testing.T) {
			fn := func(ctx context.Context, n int) (int, error) {
				if n%2 == 1 {
					time.Sleep(20 * time.Millisecond) // exactly timeout + grace, ignoring ctx
				}
				return n, nil
			}
			mem := dlq.NewMemory()
			items := make([]int, 200)
			for i := range items {
				items[i] = i + 1
			}
			p, err := pipeline.New("aba", pipeline.Then(pipeline.Input[int](),
				stage.Map("m", fn, stage.Workers(4), stage.Timeout(10*time.Millisecond), stage.Grace(10*time.Millisecond),
					stage.Retry(retry.NoRetry()))), pipeline.WithDLQ(mem))
			require.NoError(t, err)
			_, err = p.Run(context.Background(), pipeline.FromSlice(items))
			require.NoError(t, err)
			recs, _ := mem.Records(context.Background())
			for _, r := range recs {
				var idx int
				_, _ = fmt.Sscanf(r.Source, "index:%d", &idx)
				require.NotZero(t, idx%2, "a fast item was dead-lettered as timed out: %+v", r)
			}
			synctest.Wait()
		})
	}
}
