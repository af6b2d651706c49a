package sluice_test

import (
	"context"
	"errors"
	"strconv"
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

// A stage limited to 10 calls/s (burst 1) spreads 20 calls over 1.9s, whatever its pool size;
// limited per key, two keys go at 10/s each.
func TestRateLimits(t *testing.T) {
	run := func(t *testing.T, opt stage.Option, keys int) time.Duration {
		var elapsed time.Duration
		synctest.Test(t, func(t *testing.T) {
			start := time.Now()
			var last atomic.Int64
			call := stage.Sink("call", func(_ context.Context, s string) error {
				last.Store(int64(time.Since(start)))
				return nil
			}, stage.Workers(4), opt)
			p, err := pipeline.New("rl", pipeline.Then(pipeline.Input[string](), call))
			require.NoError(t, err)
			var items []string
			for i := range 20 {
				items = append(items, "host"+strconv.Itoa(i%keys))
			}
			report, err := p.Run(context.Background(), pipeline.FromSlice(items))
			require.NoError(t, err)
			assert.EqualValues(t, 20, report.Delivered)
			elapsed = time.Duration(last.Load())
		})
		return elapsed
	}
	assert.Equal(t, 1900*time.Millisecond, run(t, stage.RateLimit(10, 1), 2))
	assert.Equal(t, 900*time.Millisecond, run(t, stage.RateLimitBy(func(s string) string { return s }, 10, 1, 0), 2))
}

// A circuit breaker opens when the dependency keeps failing, fails attempts at once without
// calling it (dead-lettered with reason circuit_open), lets a probe through after OpenFor, and
// closes when it succeeds.
func TestCircuitBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var healthy atomic.Bool
		var calls atomic.Int32
		fn := func(_ context.Context, n int) (int, error) {
			calls.Add(1)
			if !healthy.Load() {
				return 0, errors.New("dependency down")
			}
			return n, nil
		}
		mem := dlq.NewMemory()
		st := stage.Map("dep", fn, stage.Workers(1), stage.Retry(retry.NoRetry()),
			stage.CircuitBreaker(stage.BreakerConfig{MinRequests: 5, FailureRate: 0.5, OpenFor: time.Second}))
		p, err := pipeline.New("cb", pipeline.Then(pipeline.Input[int](), st), pipeline.WithDLQ(mem))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		for i := range 12 {
			require.NoError(t, push.Submit(context.Background(), i))
		}
		synctest.Wait()
		assert.EqualValues(t, 5, calls.Load(), "after 5 failures the breaker opens: the rest never reach the dependency")
		recs, _ := mem.Records(context.Background())
		reasons := map[dlq.Reason]int{}
		for _, r := range recs {
			reasons[r.Reason]++
		}
		assert.Equal(t, map[dlq.Reason]int{dlq.ReasonError: 5, dlq.ReasonCircuitOpen: 7}, reasons)

		healthy.Store(true)
		time.Sleep(time.Second) // OpenFor: the next call is a probe
		require.NoError(t, push.Submit(context.Background(), 100))
		synctest.Wait()
		require.NoError(t, push.Submit(context.Background(), 101))
		push.Close()
		report, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, 7, calls.Load(), "the probe and the next call went through")
		assert.EqualValues(t, 2, report.Delivered)
		assert.EqualValues(t, 1, report.Stages[0].CircuitOpens)
		requireBalanced(t, report)
	})
}

// Refused attempts follow the retry policy: with retries, an item waits out the open breaker.
func TestCircuitOpenAttemptsAreRetried(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var fail atomic.Bool
		fail.Store(true)
		fn := func(_ context.Context, n int) (int, error) {
			if fail.Load() {
				fail.Store(n != 0) // item 0's failure opens the breaker, then the dependency heals
				return 0, errors.New("down")
			}
			return n, nil
		}
		st := stage.Map("dep", fn, stage.Workers(1),
			stage.Retry(retry.Policy{MaxAttempts: 5, InitialInterval: 400 * time.Millisecond, Multiplier: 2, NoJitter: true}),
			stage.CircuitBreaker(stage.BreakerConfig{MinRequests: 1, FailureRate: 1, OpenFor: time.Second}))
		p, err := pipeline.New("cb", pipeline.Then(pipeline.Input[int](), st))
		require.NoError(t, err)
		report, err := p.Run(context.Background(), pipeline.FromSlice([]int{0}))
		require.NoError(t, err)
		assert.EqualValues(t, 1, report.Delivered, "refused at 0.4s, let through as a probe at 1.2s")
		assert.EqualValues(t, 3, report.Stages[0].Attempts)
	})
}

func TestGuardMisuse(t *testing.T) {
	id := func(_ context.Context, n int) (int, error) { return n, nil }
	for name, s := range map[string]interface{ Err() error }{
		"rate":        stage.Map("m", id, stage.RateLimit(0, 1)),
		"burst":       stage.Map("m", id, stage.RateLimit(1, 0)),
		"key type":    stage.Map("m", id, stage.RateLimitBy(func(s string) string { return s }, 1, 1, 0)),
		"nil key":     stage.Map("m", id, stage.RateLimitBy[int](nil, 1, 1, 0)),
		"batch key":   stage.Batch("b", 2, time.Second, func(_ context.Context, b []int) (int, error) { return 0, nil }, stage.CircuitBreakerBy(func(n int) string { return "" }, stage.BreakerConfig{}, 0)),
		"breaker cfg": stage.Map("m", id, stage.CircuitBreaker(stage.BreakerConfig{FailureRate: 2})),
	} {
		assert.Error(t, s.Err(), name)
	}
}
