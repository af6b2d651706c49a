package stage

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/internal/hist"
)

// An item's work time ends with its call: the wait to pass its output on to a full next stage
// is not work (a fast stage whose next one is slow must not look slow: it would stop taking
// whole batches).
func TestWorkTimeLeavesOutTheWaitForTheNextStage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env := benchEnv()
		next := core.NewQueue[int](1, 1, env.Clock)
		next.AddProducers(1)
		require.True(t, next.Push(nil, []core.Envelope[int]{{V: -1, M: core.Meta{Weight: 1}}}), "the next stage is full")
		r := Map("m", func(_ context.Context, n int) (int, error) { return n, nil }).Bind(env, next)
		w := r.newWorker()
		w.k = len(w.buf) // a full batch: the last item's output fills the outgoing batch, which is pushed at once
		for i := range w.k {
			w.buf[i] = core.Envelope[int]{V: i, M: core.Meta{Seq: uint64(i + 1), Weight: 1}}
		}
		w.seq = core.SampleEvery - uint32(w.k) // the last item is the one timed
		done := make(chan bool)
		go func() { done <- w.work(0) }()
		synctest.Wait()
		time.Sleep(time.Second) // the worker waits for the next stage meanwhile
		drained := make(chan int)
		go func() {
			buf := make([]core.Envelope[int], 1)
			total := 0
			for {
				n, ok := next.Pop(buf, false, 0, nil, nil)
				if !ok {
					drained <- total
					return
				}
				total += n
				next.Release(n)
			}
		}()
		require.True(t, <-done)
		next.ProducerDone()
		assert.Equal(t, 1+w.k, <-drained)
		var work hist.Snapshot
		work.Add(&w.workH)
		assert.EqualValues(t, 1, work.Count(), "one item timed")
		assert.Less(t, work.Max(), time.Millisecond, "the wait for the next stage counted as work")
	})
}
