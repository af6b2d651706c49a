package sluice_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// everyThirdAcked hands over 0..n-1; every third item carries an acknowledgement.
type everyThirdAcked struct {
	n    int
	mu   sync.Mutex
	acks map[int][]pipeline.Outcome
}

func (s *everyThirdAcked) Emit(_ context.Context, admit pipeline.Admit[int]) error {
	for i := range s.n {
		it := pipeline.Item[int]{Value: i}
		if i%3 == 0 {
			it.Ack = func(o pipeline.Outcome) {
				s.mu.Lock()
				s.acks[i] = append(s.acks[i], o)
				s.mu.Unlock()
			}
		}
		if err := admit(it); err != nil {
			return err
		}
	}
	return nil
}

// Fast stages run their first attempts in one tight loop per batch: failures, panics, filtered
// and acknowledged items anywhere in a batch leave it for the full attempt loop and come back,
// and every item still ends exactly once, with exact counts.
func TestFastStagesWithFailuresMidBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const n = 20_000
		firstFails := func(x int) bool { return x%97 == 0 }     // m1: fails its first attempt
		dropped := func(x int) bool { return x%5 == 0 }         // f: filtered out (of m1's outputs)
		panics := func(x int) bool { return x%101 == 0 }        // m2: panics on every attempt
		permanent := func(x int) bool { return x%103 == 0 }     // m2: fails for good
		sinkPanicsOnce := func(x int) bool { return x%89 == 0 } // sink: panics on its first attempt

		m1 := stage.Map("m1", func(ctx context.Context, x int) (int, error) {
			if a, _ := stage.Attempt(ctx); a == 1 && firstFails(x) {
				return 0, errors.New("transient")
			}
			return x + 1, nil
		}, stage.Workers(4), stage.Capacity(64), stage.Retry(fast))
		f := stage.Filter("f", func(_ context.Context, x int) (bool, error) { return !dropped(x), nil },
			stage.Workers(4), stage.Capacity(64), stage.Retry(fast))
		m2 := stage.Map("m2", func(_ context.Context, x int) (int, error) {
			if panics(x) {
				panic("boom " + strconv.Itoa(x))
			}
			if permanent(x) {
				return 0, retry.Permanent(errors.New("bad"))
			}
			return x, nil
		}, stage.Workers(4), stage.Capacity(64), stage.Retry(fast))
		var mu sync.Mutex
		got := map[int]int{}
		sink := stage.Sink("sink", func(ctx context.Context, x int) error {
			if a, _ := stage.Attempt(ctx); a == 1 && sinkPanicsOnce(x) {
				panic("sink boom")
			}
			mu.Lock()
			got[x]++
			mu.Unlock()
			return nil
		}, stage.Workers(2), stage.Capacity(64), stage.Retry(fast))

		mem := dlq.NewMemory()
		flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](), m1), f), m2), sink)
		p, err := pipeline.New("tight", flow, pipeline.WithDLQ(mem))
		require.NoError(t, err)
		src := &everyThirdAcked{n: n, acks: map[int][]pipeline.Outcome{}}
		rep, err := p.Run(context.Background(), src)
		require.NoError(t, err)
		requireBalanced(t, rep)

		// What each input must become.
		want := map[int]pipeline.Outcome{}
		wantDL := map[int]dlq.Reason{}
		var m1Fails, reachM2, sinkPanics, delivered, filtered int
		for i := range n {
			if firstFails(i) {
				m1Fails++
			}
			x := i + 1
			switch {
			case dropped(x):
				want[i] = pipeline.Filtered
				filtered++
				continue
			}
			reachM2++
			switch {
			case panics(x):
				want[i], wantDL[x] = pipeline.DeadLettered, dlq.ReasonPanic
			case permanent(x):
				want[i], wantDL[x] = pipeline.DeadLettered, dlq.ReasonPermanent
			default:
				want[i] = pipeline.Delivered
				delivered++
				if sinkPanicsOnce(x) {
					sinkPanics++
				}
			}
		}

		mu.Lock()
		for i, o := range want {
			if o == pipeline.Delivered {
				require.Equal(t, 1, got[i+1], "item %d delivered once", i)
			}
		}
		require.Len(t, got, delivered, "nothing else was delivered")
		mu.Unlock()

		recs, err := mem.Records(context.Background())
		require.NoError(t, err)
		require.Len(t, recs, len(wantDL))
		for _, r := range recs {
			x, err := strconv.Atoi(string(r.Payload))
			require.NoError(t, err)
			require.Equal(t, wantDL[x], r.Reason, "dead letter of %d", x)
			require.Equal(t, "m2", r.Stage)
			if r.Reason == dlq.ReasonPanic {
				require.Equal(t, 3, r.Attempts)
				require.Contains(t, r.Stack, "boom "+strconv.Itoa(x))
			} else {
				require.Equal(t, 1, r.Attempts)
			}
		}

		src.mu.Lock()
		for i := 0; i < n; i += 3 {
			require.Equal(t, []pipeline.Outcome{want[i]}, src.acks[i], "ack of item %d", i)
		}
		require.Len(t, src.acks, (n+2)/3)
		src.mu.Unlock()

		assert.EqualValues(t, delivered, rep.Delivered)
		assert.EqualValues(t, filtered, rep.Filtered)
		assert.EqualValues(t, len(wantDL), rep.DeadLettered)
		st := map[string]stage.Stats{}
		for _, s := range rep.Stages {
			st[s.Name] = s
		}
		assert.EqualValues(t, n+m1Fails, st["m1"].Attempts)
		assert.EqualValues(t, m1Fails, st["m1"].Retries)
		assert.EqualValues(t, n, st["m1"].Succeeded)
		assert.EqualValues(t, n, st["f"].Attempts)
		assert.EqualValues(t, filtered, st["f"].Filtered)
		var panicking int
		for _, r := range wantDL {
			if r == dlq.ReasonPanic {
				panicking++
			}
		}
		assert.EqualValues(t, reachM2+2*panicking, st["m2"].Attempts)
		assert.EqualValues(t, delivered+sinkPanics, st["sink"].Attempts)
		assert.EqualValues(t, delivered, st["sink"].Succeeded)
	})
}
