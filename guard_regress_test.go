package sluice_test

import (
	"context"
	"errors"
	"strings"
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

// Regression tests for the findings of a review of rate limits and circuit breakers: a panic in
// a key function, a hung half-open probe, and the wait for a rate-limit token.

// runKeyPanic runs 1, 2, 3 through a map guarded by opt, whose key function panics on 2, and
// checks that 2 is dead-lettered as a panic after one attempt (a key function is
// deterministic: its panic is not retried) while 1 and 3 are delivered.
func runKeyPanic(t *testing.T, opt func(key func(int) string) stage.Option) {
	t.Helper()
	key := func(n int) string {
		if n == 2 {
			panic("bad key")
		}
		return "k"
	}
	var out collector[int]
	mem := dlq.NewMemory()
	p, err := pipeline.New("keys", pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.Map("m", func(_ context.Context, n int) (int, error) { return n, nil },
			stage.Workers(1), opt(key), stage.Retry(retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond}))),
		stage.Sink("out", out.add)), pipeline.WithDLQ(mem))
	require.NoError(t, err)
	report, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}))
	require.NoError(t, err)
	requireBalanced(t, report)
	assert.Equal(t, []int{1, 3}, out.items())
	assert.Equal(t, map[dlq.Reason]int64{dlq.ReasonPanic: 1}, report.Stages[0].DeadLetters)
	recs, err := mem.Records(context.Background())
	require.NoError(t, err)
	require.Len(t, recs, 1)
	rec := recs[0]
	assert.Equal(t, "2", string(rec.Payload))
	assert.Equal(t, "panic", rec.ErrorType)
	assert.Equal(t, "panic: bad key", rec.Error)
	assert.Equal(t, 1, rec.Attempts, "a key function's panic is permanent: not retried")
	assert.True(t, strings.HasPrefix(rec.Stack, "panic: bad key\n"), "the stack is kept: %q", rec.Stack)
	assert.Contains(t, rec.Stack, "guard_regress_test.go", "the stack is the key function's")
	assert.Zero(t, report.Stages[0].Retries)
}

// A RateLimitBy key function is user code: a panic in it fails the item (reason panic, its
// stack kept) instead of taking the process down (DESIGN invariant 4). It crashed the test
// binary before the fix.
func TestRateLimitKeyPanicIsAFailedAttempt(t *testing.T) {
	runKeyPanic(t, func(key func(int) string) stage.Option { return stage.RateLimitBy(key, 1e9, 10, 0) })
}

// The same for a CircuitBreakerBy key function.
func TestCircuitBreakerKeyPanicIsAFailedAttempt(t *testing.T) {
	runKeyPanic(t, func(key func(int) string) stage.Option {
		return stage.CircuitBreakerBy(key, stage.BreakerConfig{}, 0)
	})
}

// A half-open breaker's probe call hangs, ignoring its context: it is abandoned after its
// timeout + grace and dead-lettered as a timeout. The breaker learns of that failure at once
// (it opens again, and after OpenFor lets a new probe through), and not a second time when the
// hung call finally returns. Before the fix it waited for the hung call, its one probe slot
// taken, refusing every call as circuit_open meanwhile (item 3 was dead-lettered); a Done by
// the abandoned goroutine as well would open the closed breaker again (item 4).
func TestAbandonedProbeReopensTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		returned := make(chan struct{})
		fn := func(ctx context.Context, n int) (int, error) {
			switch n {
			case 1:
				return 0, errors.New("dependency down") // opens the breaker
			case 2:
				<-release // the probe: hangs, ignoring its context
				close(returned)
			}
			return n, nil
		}
		var out collector[int]
		mem := dlq.NewMemory()
		p, err := pipeline.New("br", pipeline.Then(pipeline.Then(pipeline.Input[int](),
			stage.Map("m", fn, stage.Workers(1), stage.Timeout(100*time.Millisecond), stage.Grace(100*time.Millisecond),
				stage.Retry(retry.NoRetry()),
				stage.CircuitBreaker(stage.BreakerConfig{Window: 10 * time.Second, MinRequests: 1, FailureRate: 1, OpenFor: time.Second}))),
			stage.Sink("out", out.add)), pipeline.WithDLQ(mem))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		ctx := context.Background()

		require.NoError(t, push.Submit(ctx, 1))
		synctest.Wait()
		time.Sleep(2 * time.Second) // past OpenFor: half-open
		require.NoError(t, push.Submit(ctx, 2))
		time.Sleep(time.Second) // the probe is abandoned at 200ms (timeout + grace)
		synctest.Wait()
		time.Sleep(2 * time.Second) // past OpenFor again: the failed probe reopened the breaker
		require.NoError(t, push.Submit(ctx, 3))
		synctest.Wait()
		assert.Equal(t, []int{3}, out.items(), "item 3 is let through as the next probe, and closes the breaker")
		close(release) // the hung call returns: its failure was already counted
		<-returned
		synctest.Wait()
		require.NoError(t, push.Submit(ctx, 4))
		synctest.Wait()
		push.Close()
		report, err := job.Wait()
		require.NoError(t, err)
		requireBalanced(t, report)
		assert.EqualValues(t, 1, report.Abandoned)
		assert.Equal(t, []int{3, 4}, out.items(), "the closed breaker lets item 4 through")
		assert.Equal(t, map[dlq.Reason]int64{dlq.ReasonError: 1, dlq.ReasonTimeout: 1}, report.Stages[0].DeadLetters)
		assert.EqualValues(t, 2, report.Stages[0].CircuitOpens, "opened by item 1, then by the abandoned probe")
	})
}

// A stage limited to 1 call/s whose calls take 10ms, with a per-attempt timeout of 500ms: the
// timeout counts from the call's start, not from before the wait for a rate-limit token. Before
// the fix an item that waited 1s for its token started its call past its deadline and failed
// as a timeout, attempt after attempt, though every call would have taken 10ms.
func TestRateLimitWaitIsNotPartOfTheTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		fn := func(ctx context.Context, n int) (int, error) {
			select {
			case <-time.After(10 * time.Millisecond):
				return n, nil
			case <-ctx.Done():
				return 0, ctx.Err()
			}
		}
		var out collector[int]
		mem := dlq.NewMemory()
		p, err := pipeline.New("rl", pipeline.Then(pipeline.Then(pipeline.Input[int](),
			stage.Map("m", fn, stage.Workers(1), stage.RateLimit(1, 1), stage.Timeout(500*time.Millisecond),
				stage.Retry(retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond, NoJitter: true}))),
			stage.Sink("out", out.add)), pipeline.WithDLQ(mem))
		require.NoError(t, err)
		began := time.Now()
		report, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}))
		require.NoError(t, err)
		requireBalanced(t, report)
		recs, err := mem.Records(context.Background())
		require.NoError(t, err)
		for _, r := range recs {
			t.Logf("dead letter: %s attempts=%d %s", r.Reason, r.Attempts, r.Error)
		}
		assert.Equal(t, []int{1, 2, 3}, out.items(), "every call takes 10ms, far within its 500ms timeout")
		assert.Empty(t, recs)
		assert.Zero(t, report.Stages[0].Retries)
		assert.Equal(t, 2*time.Second+10*time.Millisecond, time.Since(began), "one token a second, then 10ms")
	})
}
