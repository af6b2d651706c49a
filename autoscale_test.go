package sluice_test

import (
	"context"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/internal/testkit"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/stage"
)

// An autoscaled pool follows a dependency whose latency steps from 1ms to 20ms and back, with
// items arriving at 1,000/s: it grows to about the Little's-law size (1,000/s × 20ms = 20
// workers) within a few controller windows and shrinks back after the step, counted in
// windows on the fake clock. No item is lost or duplicated on the way.
func TestAutoscaleFollowsLatencyStep(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const window = 100 * time.Millisecond
		var latency atomic.Int64
		latency.Store(int64(time.Millisecond))
		var done atomic.Int64
		call := stage.Map("call", func(_ context.Context, n int) (int, error) {
			time.Sleep(time.Duration(latency.Load()))
			done.Add(1)
			return n, nil
		}, stage.Autoscale(1, 64, stage.AutoscaleConfig{Window: window}))
		p, err := pipeline.New("scale", pipeline.Then(pipeline.Input[int](), call))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)

		var stop atomic.Bool
		submitted := 0
		produced := make(chan struct{})
		go func() {
			defer close(produced)
			for !stop.Load() {
				require.NoError(t, push.Submit(context.Background(), submitted))
				submitted++
				time.Sleep(time.Millisecond)
			}
		}()
		workers := func() int { return job.Stats().Stages[0].Workers }
		// Sample just after each controller tick.
		time.Sleep(window / 2)
		windows := func(n int, each func(i, w int)) {
			for i := range n {
				time.Sleep(window)
				each(i, workers())
			}
		}

		windows(10, func(int, int) {})
		assert.LessOrEqual(t, workers(), 3, "1,000/s × 1ms needs about one worker")

		latency.Store(int64(20 * time.Millisecond))
		reached := -1
		var phase2 []int
		windows(20, func(i, w int) {
			phase2 = append(phase2, w)
			if reached < 0 && w >= 20 {
				reached = i + 1
			}
		})
		require.GreaterOrEqual(t, reached, 1, "never reached 20 workers: %v", phase2)
		assert.LessOrEqual(t, reached, 3, "windows to reach the Little's-law size: %v", phase2)
		last := phase2[len(phase2)-1]
		assert.GreaterOrEqual(t, last, 20, "sizes per window: %v", phase2)
		assert.LessOrEqual(t, last, 28, "settles near 1,000/s × 20ms ÷ 0.8 = 25: %v", phase2)

		latency.Store(int64(time.Millisecond))
		var phase3 []int
		windows(20, func(_, w int) { phase3 = append(phase3, w) })
		assert.LessOrEqual(t, phase3[len(phase3)-1], 4, "shrinks back after the step: %v", phase3)
		for i := 1; i < len(phase3); i++ {
			assert.LessOrEqual(t, phase3[i], phase3[i-1], "no thrashing while the load is steady: %v", phase3)
		}

		t.Logf("workers per window after the step up: %v; after the step down: %v", phase2, phase3)
		stop.Store(true)
		<-produced
		push.Close()
		report, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, submitted, report.Delivered)
		assert.EqualValues(t, submitted, done.Load(), "each item processed exactly once")
		assert.Positive(t, report.Stages[0].Resizes)
		requireBalanced(t, report)
	})
}

func TestAutoscaleBadConfig(t *testing.T) {
	id := func(_ context.Context, n int) (int, error) { return n, nil }
	for _, c := range []struct {
		min, max int
		cfg      stage.AutoscaleConfig
		want     string
	}{
		{0, 4, stage.AutoscaleConfig{}, "min 0"},
		{4, 2, stage.AutoscaleConfig{}, "below min"},
		{1, 2, stage.AutoscaleConfig{TargetUtilization: 2}, "TargetUtilization"},
	} {
		s := stage.Map("m", id, stage.Autoscale(c.min, c.max, c.cfg))
		require.Error(t, s.Err())
		assert.Contains(t, s.Err().Error(), c.want)
	}
}

// gatedPool is a one-stage pipeline of an autoscaled pool whose calls take 10ms, until the test
// closes the gate: from then on each call waits at the gate until it is released.
type gatedPool struct {
	gated     atomic.Bool
	gate      *testkit.Gate
	calls     testkit.Gauge // calls in flight
	push      *pipeline.Push[int]
	job       *pipeline.Job
	submitted int
}

func startGatedPool(t *testing.T, opts ...stage.Option) *gatedPool {
	g := &gatedPool{gate: testkit.NewGate(), push: pipeline.NewPush[int]()}
	call := stage.Map("call", func(_ context.Context, n int) (int, error) {
		defer g.calls.Enter()()
		if g.gated.Load() {
			g.gate.Block()
		} else {
			time.Sleep(10 * time.Millisecond)
		}
		return n, nil
	}, opts...)
	p, err := pipeline.New("scale", pipeline.Then(pipeline.Input[int](), call))
	require.NoError(t, err)
	g.job, err = p.Start(context.Background(), g.push)
	require.NoError(t, err)
	return g
}

func (g *gatedPool) stats() stage.Stats { return g.job.Stats().Stages[0] }

// submit submits n more items, blocking while the input is full.
func (g *gatedPool) submit(t *testing.T, n int) {
	for range n {
		require.NoError(t, g.push.Submit(context.Background(), g.submitted))
		g.submitted++
	}
}

// grow submits one item every millisecond until the pool has max workers.
func (g *gatedPool) grow(t *testing.T, max int) {
	for g.stats().Workers < max {
		g.submit(t, 1)
		time.Sleep(time.Millisecond)
		require.Less(t, g.submitted, 10_000, "the pool never grew to %d workers", max)
	}
}

// stuck waits (on the fake clock) until n calls wait at the gate.
func (g *gatedPool) stuck(n int64) {
	for g.gate.Blocked() < n {
		time.Sleep(time.Millisecond)
	}
}

// finish opens the gate, ends the input and checks that every item was delivered.
func (g *gatedPool) finish(t *testing.T) pipeline.Report {
	g.gate.Release()
	g.push.Close()
	report, err := g.job.Wait()
	require.NoError(t, err)
	assert.EqualValues(t, g.submitted, report.Delivered)
	requireBalanced(t, report)
	return report
}

// Workers the autoscaler retires keep working while the stage has a backlog; a later shrink
// counts only the workers that are not retiring yet, so the pool never retires its last
// worker. (It once counted the retiring ones too: while four workers were stuck in slow calls,
// shrink after shrink retired them all, and the stage ended with items still to come.)
func TestAutoscaleNeverRetiresTheLastWorker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const window = 50 * time.Millisecond
		g := startGatedPool(t, stage.Autoscale(1, 4, stage.AutoscaleConfig{Window: window, Cooldown: 1}))
		g.grow(t, 4)
		// From now on every call waits at the gate: the four workers get stuck in calls (the
		// backlog keeps the pool at 4 until then), nothing arrives, and the backlog is small,
		// so the controller shrinks the pool window after window.
		g.gated.Store(true)
		g.stuck(4)
		time.Sleep(20 * window)
		g.gate.Release()
		synctest.Wait() // the backlog is done: retired workers exit, the others wait for input
		assert.Positive(t, g.stats().Workers, "the pool has no worker left")
		g.submit(t, 10) // the stage still has a worker for these
		report := g.finish(t)
		assert.GreaterOrEqual(t, report.Stages[0].Resizes, int64(2), "grown, then shrunk")
	})
}

// An autoscaled pool never runs more than max calls at once. Workers the autoscaler retires go
// on with the backlog until the input is empty; when the pool grows again meanwhile, the new
// workers do not come on top of the retiring ones beyond max. (Once retiring workers were no
// longer counted as the pool, it grew to 7 workers of at most 4, and 7 calls ran at once.)
func TestAutoscaleNeverExceedsMax(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const window = 50 * time.Millisecond
		g := startGatedPool(t, stage.Capacity(16), stage.Autoscale(1, 4, stage.AutoscaleConfig{Window: window, Cooldown: 5}))
		g.grow(t, 4)
		// Let the backlog go, then hold every call: the four workers get stuck in calls with
		// nothing queued. (The cool-down keeps the pool at 4 until then: the backlog of 16 items
		// takes 4 workers 40ms, under a window.) With nothing coming, the pool then shrinks
		// window after window: its workers retire, but stay in their calls.
		for g.stats().Queued > 0 {
			time.Sleep(time.Millisecond)
		}
		require.Equal(t, 4, g.stats().Workers)
		g.gated.Store(true)
		g.submit(t, 4)
		g.stuck(4)
		time.Sleep(20 * window)
		g.submit(t, 12) // a burst: the backlog makes the pool grow again
		time.Sleep(3 * window)
		s := g.stats()
		t.Logf("after the burst: workers %d, busy %d, queued %d, resizes %d; calls in flight %d", s.Workers, s.Busy, s.Queued, s.Resizes, g.calls.Cur())
		assert.LessOrEqual(t, g.calls.Max(), int64(4), "calls in flight at once in a pool of at most 4 workers")
		assert.LessOrEqual(t, s.Workers, 4, "workers of a pool of at most 4")
		g.finish(t)
	})
}
