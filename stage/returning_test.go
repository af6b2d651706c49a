package stage

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/internal/core"
)

// A fast worker done with its batch says it is on its way back to its input (Queue.Returning),
// so that items put meanwhile wait for it instead of waking an idle worker. When its push
// downstream is held up by a dead letter (here an overflow eviction that takes its time), it
// takes that back: an idle worker is woken for the next item and calls the stage on it while
// the first is still held up.
func TestHeldUpWorkerLetsAnIdleOneTakeTheNextItem(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env := benchEnv()
		next := core.NewQueue[int](1, 1, env.Clock)
		next.AddProducers(1)
		next.Policy = core.OverflowDeadLetter
		evicting, release := make(chan int), make(chan struct{})
		next.Evict = func(e core.Envelope[int]) {
			evicting <- e.V
			<-release // a dead-letter write that takes its time
		}
		require.True(t, next.Push(nil, []core.Envelope[int]{{V: 0, M: core.Meta{Weight: 1}}})) // next is full

		called := make(chan int, 2)
		fn := func(_ context.Context, n int) (int, error) {
			called <- n
			return n, nil
		}
		r := Map("m", fn, Workers(2), Capacity(4)).Bind(env, next)
		push := start(t, r)
		push(1)
		assert.Equal(t, 1, <-called)
		assert.Equal(t, 1, <-evicting, "the output of 1 overflows next")
		push(2) // the other worker takes it now, not once the first is back
		assert.Equal(t, 2, <-called)
		assert.Equal(t, 2, <-evicting)
		close(release)
		r.ProducerDone()
		<-r.Done()
		st := r.Stats()
		assert.EqualValues(t, 2, st.In)
		assert.EqualValues(t, 2, st.Succeeded)
	})
}

// A filter's worker whose push waits for room downstream does not hold up the next item: the
// filter may drop it, which needs no room, so an idle worker is woken and filters it while the
// first still waits. (A map's next item waits for the returning worker: it needs the same room.)
func TestWaitingFilterWorkerLetsAnIdleOneFilterTheNextItem(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env := benchEnv()
		next := core.NewQueue[int](1, 1, env.Clock)
		next.AddProducers(1)
		require.True(t, next.Push(nil, []core.Envelope[int]{{V: 0, M: core.Meta{Weight: 1}}})) // next is full
		called := make(chan int, 4)
		keepOdd := func(_ context.Context, n int) (bool, error) {
			called <- n
			return n%2 == 1, nil
		}
		r := Filter("f", keepOdd, Workers(2), Capacity(4)).Bind(env, next)
		push := start(t, r)
		push(1)
		assert.Equal(t, 1, <-called)
		synctest.Wait() // one worker waits for room in next with 1, the other for input
		push(2)         // filtered out: needs no room downstream
		synctest.Wait()
		require.Len(t, called, 1, "an idle worker took 2")
		assert.Equal(t, 2, <-called)
		assert.EqualValues(t, 1, r.Stats().Filtered)

		buf := make([]core.Envelope[int], 1)
		for range 2 { // 0, then 1 once the waiting worker gets the room
			n, _ := next.Pop(buf, false, 0, nil, nil)
			require.Equal(t, 1, n)
			next.Release(1)
		}
		r.ProducerDone()
		<-r.Done()
		assert.EqualValues(t, 1, r.Stats().Succeeded)
	})
}

// start starts r with one producer, and returns a function that pushes one item into its input.
func start(t *testing.T, r *Runner[int, int]) (push func(v int)) {
	r.AddProducers(1)
	r.Start()
	return func(v int) {
		require.True(t, r.Input().Push(nil, []core.Envelope[int]{{V: v, M: core.Meta{Seq: uint64(v), Weight: 1}}}))
	}
}

// A worker's buffers start at two items and double, up to the stage's take, each time a pop
// fills them: a busy fast worker soon moves items in full batches, while the workers of a slow
// stage that take one item at a time keep buffers of two.
func TestWorkerBuffersGrowWithWhatItsPopsTake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env := benchEnv()
		fast := Map("fast", func(_ context.Context, n int) (int, error) { return n, nil }, Workers(1), Capacity(2*maxTake))
		r := fast.Bind(env, nil)
		r.AddProducers(1)
		in := make([]core.Envelope[int], 2*maxTake)
		for i := range in {
			in[i] = core.Envelope[int]{V: i, M: core.Meta{Seq: uint64(i), Weight: 1}}
		}
		require.True(t, r.Input().Push(nil, in)) // queued before the worker starts
		r.Start()
		r.ProducerDone()
		<-r.Done()
		require.Len(t, r.workers, 1)
		assert.Len(t, r.workers[0].buf, maxTake, "pops of 2, 4, 8, 16, 32 (62 items), then 2")

		slow := Map("slow", func(_ context.Context, n int) (int, error) {
			time.Sleep(time.Millisecond)
			return n, nil
		}, Workers(4), Capacity(4))
		r = slow.Bind(env, nil)
		push := start(t, r)
		for i := range 12 {
			push(i) // the four workers, one item each
			if i%4 == 3 {
				synctest.Wait()
				time.Sleep(time.Millisecond)
				synctest.Wait()
			}
		}
		r.ProducerDone()
		<-r.Done()
		assert.EqualValues(t, 12, r.Stats().Succeeded)
		for _, w := range r.workers {
			assert.Len(t, w.buf, 2)
		}
	})
}
