package sluice_test

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/stage"
)

// gate is a stage function that holds item 1 until released, so the input fills up.
type gate struct {
	held    chan struct{}
	release chan struct{}
}

func newGate() *gate { return &gate{held: make(chan struct{}, 1), release: make(chan struct{})} }

func (g *gate) fn(_ context.Context, n int) (int, error) {
	if n == 1 {
		g.held <- struct{}{}
		<-g.release
	}
	return n, nil
}

func deadIDs(t *testing.T, mem *dlq.Memory) []string {
	recs, err := mem.Records(context.Background())
	require.NoError(t, err)
	var out []string
	for _, r := range recs {
		assert.Equal(t, dlq.ReasonOverflow, r.Reason)
		assert.Equal(t, "overflow", r.ErrorType)
		out = append(out, r.CorrelationID+"@"+r.Stage)
	}
	return out
}

// Each ingress overflow policy, with one worker holding item 1 and room for two more: the
// fourth item meets a full input.
func TestIngressOverflowPolicies(t *testing.T) {
	cases := []struct {
		policy    pipeline.Overflow
		delivered []int
		dead      []string
		rejected  int64
	}{
		{pipeline.DropOldest, []int{1, 3, 4}, []string{"k2@first"}, 0},
		{pipeline.DeadLetterNew, []int{1, 2, 3}, []string{"k4@first"}, 0},
		{pipeline.Reject, []int{1, 2, 3}, nil, 1},
	}
	for _, c := range cases {
		t.Run(c.policy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := newGate()
				var out collector[int]
				mem := dlq.NewMemory()
				p, err := pipeline.New("of", pipeline.Then(pipeline.Then(pipeline.Input[int](),
					stage.Map("first", g.fn, stage.Workers(1), stage.Capacity(2))), stage.Sink("out", out.add)),
					pipeline.WithDLQ(mem), pipeline.WithOverflow(c.policy))
				require.NoError(t, err)
				push := pipeline.NewPush[int]()
				job, err := p.Start(context.Background(), push)
				require.NoError(t, err)
				submit := func(n int) error {
					return push.SubmitItem(context.Background(), pipeline.Item[int]{Value: n, Key: "k" + string(rune('0'+n))})
				}
				require.NoError(t, submit(1))
				<-g.held
				require.NoError(t, submit(2))
				require.NoError(t, submit(3))
				err = submit(4)
				if c.policy == pipeline.Reject {
					require.ErrorIs(t, err, pipeline.ErrQueueFull)
				} else {
					require.NoError(t, err, "the policy never blocks the producer here")
				}
				close(g.release)
				push.Close()
				report, err := job.Wait()
				require.NoError(t, err)
				got := out.items()
				slices.Sort(got)
				assert.Equal(t, c.delivered, got)
				assert.Equal(t, c.dead, deadIDs(t, mem))
				assert.Equal(t, c.rejected, report.Rejected)
				assert.EqualValues(t, 4, report.Ingested)
				requireBalanced(t, report)
			})
		})
	}
}

// A stage's own input can drop its oldest item or dead-letter the new one when it is full.
func TestStageInputOverflow(t *testing.T) {
	for _, policy := range []stage.Overflow{stage.DropOldest, stage.DeadLetterNew} {
		t.Run(policy.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				g := newGate()
				var out collector[int]
				mem := dlq.NewMemory()
				p, err := pipeline.New("of", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](),
					stage.Map("fast", func(_ context.Context, n int) (int, error) { return n, nil }, stage.Workers(1), stage.Capacity(8))),
					stage.Map("slow", g.fn, stage.Workers(1), stage.Capacity(1), stage.OnOverflow(policy))), stage.Sink("out", out.add)),
					pipeline.WithDLQ(mem))
				require.NoError(t, err)
				push := pipeline.NewPush[int]()
				job, err := p.Start(context.Background(), push)
				require.NoError(t, err)
				require.NoError(t, push.SubmitItem(context.Background(), pipeline.Item[int]{Value: 1, Key: "k1"}))
				<-g.held
				for n := 2; n <= 4; n++ {
					require.NoError(t, push.SubmitItem(context.Background(), pipeline.Item[int]{Value: n, Key: "k" + string(rune('0'+n))}))
					synctest.Wait() // each reaches "slow" before the next
				}
				close(g.release)
				push.Close()
				report, err := job.Wait()
				require.NoError(t, err)
				got := out.items()
				slices.Sort(got)
				if policy == stage.DropOldest {
					assert.Equal(t, []int{1, 4}, got)
					assert.Equal(t, []string{"k2@slow", "k3@slow"}, deadIDs(t, mem))
				} else {
					assert.Equal(t, []int{1, 2}, got)
					assert.Equal(t, []string{"k3@slow", "k4@slow"}, deadIDs(t, mem))
				}
				assert.EqualValues(t, 2, report.Stages[1].DeadLetters[dlq.ReasonOverflow])
				requireBalanced(t, report)
			})
		})
	}
}

// CallerRuns: when the first stage's input is full, Submit runs the stage on its item in the
// caller's goroutine, and returns when the item has moved on: the producer is throttled.
func TestCallerRuns(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := newGate()
		var ranInline atomic.Bool
		fn := func(ctx context.Context, n int) (int, error) {
			if n == 3 {
				ranInline.Store(true) // the pool's only worker is still held by item 1
			}
			return g.fn(ctx, n)
		}
		var out collector[int]
		p, err := pipeline.New("cr", pipeline.Then(pipeline.Then(pipeline.Input[int](),
			stage.Map("first", fn, stage.Workers(1), stage.Capacity(1))), stage.Sink("out", out.add)),
			pipeline.WithOverflow(pipeline.CallerRuns))
		require.NoError(t, err)
		push := pipeline.NewPush[int]()
		job, err := p.Start(context.Background(), push)
		require.NoError(t, err)
		require.NoError(t, push.Submit(context.Background(), 1))
		<-g.held
		require.NoError(t, push.Submit(context.Background(), 2)) // fills the input
		require.NoError(t, push.Submit(context.Background(), 3)) // runs in this goroutine
		assert.True(t, ranInline.Load())
		synctest.Wait()
		assert.Equal(t, []int{3}, out.items(), "item 3 went through while the worker still holds item 1")
		close(g.release)
		push.Close()
		report, err := job.Wait()
		require.NoError(t, err)
		assert.EqualValues(t, 3, report.Delivered)
		assert.EqualValues(t, 3, report.Stages[0].In)
		requireBalanced(t, report)
	})
}

func TestOverflowPolicyMisuse(t *testing.T) {
	for _, p := range []stage.Overflow{stage.Reject, stage.CallerRuns} {
		s := stage.Map("m", func(_ context.Context, n int) (int, error) { return n, nil }, stage.OnOverflow(p))
		require.Error(t, s.Err())
		assert.Contains(t, s.Err().Error(), "apply at ingress")
	}
	_, err := pipeline.New("x", pipeline.Then(pipeline.Input[int](), stage.Map("m", func(_ context.Context, n int) (int, error) { return n, nil })),
		pipeline.WithOverflow(pipeline.Overflow(42)))
	require.ErrorContains(t, err, "unknown policy")
}
