package core

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func items(vals ...int) []Envelope[int] {
	out := make([]Envelope[int], len(vals))
	for i, v := range vals {
		out[i] = Envelope[int]{V: v}
	}
	return out
}

func TestQueueSlotsBoundWhatTheStageHolds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](3, 1, Clock{Epoch: time.Now()})
		q.AddProducers(1)
		stop := make(chan struct{})
		pushed := make(chan bool)
		go func() { pushed <- q.Push(stop, items(1, 2, 3, 4)) }()
		synctest.Wait()
		assert.Equal(t, 3, q.Len(), "three slots: the fourth item waits")
		buf := make([]Envelope[int], 8)
		n, ok := q.Pop(buf, true, 0, nil, nil)
		require.True(t, ok)
		assert.Equal(t, 3, n, "one consumer takes its share of a busy queue at once")
		synctest.Wait()
		assert.Equal(t, 0, q.Len(), "taking items frees no slot: the stage still holds them")
		n, ok = q.Pop(buf, true, 3, nil, nil) // done with the three: their slots come back
		require.True(t, ok)
		assert.Equal(t, 1, n)
		assert.Equal(t, 4, buf[0].V)
		assert.True(t, <-pushed)
		q.ProducerDone()
		_, ok = q.Pop(buf, true, 1, nil, nil)
		assert.False(t, ok, "closed and empty")
	})
}

func TestQueueFairShareAndOrder(t *testing.T) {
	q := NewQueue[int](100, 4, Clock{Epoch: time.Now()})
	q.AddProducers(1)
	require.True(t, q.Push(nil, items(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)))
	buf := make([]Envelope[int], 32)
	n, _ := q.Pop(buf, true, 0, nil, nil)
	assert.Equal(t, 3, n, "12 queued, 4 consumers: a share of 3")
	assert.Equal(t, []int{0, 1, 2}, []int{buf[0].V, buf[1].V, buf[2].V})
	n, _ = q.Pop(buf[:1], true, 0, nil, nil)
	assert.Equal(t, 1, n)
	assert.Equal(t, 3, buf[0].V, "first in, first out")
	q.ProducerDone()
}

func TestQueuePopAllForAFastWorker(t *testing.T) {
	q := NewQueue[int](100, 4, Clock{Epoch: time.Now()})
	q.AddProducers(1)
	require.True(t, q.Push(nil, items(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)))
	buf := make([]Envelope[int], 8)
	n, _ := q.Pop(buf, false, 0, nil, nil)
	assert.Equal(t, 8, n, "no share: as many as dst holds")
	n, _ = q.Pop(buf, false, 0, nil, nil)
	assert.Equal(t, 4, n, "then the rest")
	assert.Equal(t, 8, buf[0].V)
	q.ProducerDone()
}

func TestQueueUnpopPutsItemsBackFirst(t *testing.T) {
	q := NewQueue[int](4, 2, Clock{Epoch: time.Now()})
	q.AddProducers(1)
	require.True(t, q.Push(nil, items(1, 2, 3)))
	buf := make([]Envelope[int], 8)
	n, _ := q.Pop(buf, false, 0, nil, nil)
	require.Equal(t, 3, n)
	require.True(t, q.Push(nil, items(4)))
	assert.Equal(t, Full, q.Offer(Envelope[int]{V: 5}, OverflowReject, nil, nil), "the held items keep their slots")
	q.Unpop(buf[1:3])
	n, _ = q.Pop(buf, false, 1, nil, nil) // done with item 1
	require.Equal(t, 3, n)
	assert.Equal(t, []int{2, 3, 4}, []int{buf[0].V, buf[1].V, buf[2].V}, "given back first, in order")
	assert.Equal(t, Admitted, q.Offer(Envelope[int]{V: 5}, OverflowReject, nil, nil), "item 1's slot came back")
	q.ProducerDone()
}

func TestQueueStampsOneItemInSampleEvery(t *testing.T) {
	q := NewQueue[int](4*SampleEvery, 1, Clock{Epoch: time.Now().Add(-time.Second)})
	q.AddProducers(1)
	require.True(t, q.Push(nil, items(0)))
	buf := make([]Envelope[int], 2*SampleEvery+10)
	n, _ := q.Pop(buf, false, 0, nil, nil)
	require.Equal(t, 1, n)
	assert.NotZero(t, buf[0].M.Enqueued, "every item until the consumers are known to be fast")
	q.SampleStamps(true)
	for i := range buf {
		buf[i].V = i
	}
	require.True(t, q.Push(nil, buf))
	n, _ = q.Pop(buf, false, 1, nil, nil)
	require.Equal(t, len(buf), n)
	stamped := 0
	for i, e := range buf[:n] {
		assert.Equal(t, (i+1)%SampleEvery == 0, e.M.Enqueued != 0, "item %d (the %dth pushed)", i, i+2)
		if e.M.Enqueued != 0 {
			stamped++
		}
	}
	assert.Equal(t, 2, stamped, "pushes %d and %d", SampleEvery, 2*SampleEvery)
	q.StampAll()
	require.True(t, q.Push(nil, buf[:3]))
	n, _ = q.Pop(buf, false, len(buf), nil, nil)
	require.Equal(t, 3, n)
	q.SampleStamps(false)
	for _, e := range buf[:n] {
		assert.NotZero(t, e.M.Enqueued, "every item once StampAll was called")
	}
	q.ProducerDone()
}

// The queue tells light ingress from heavy by the time between pushes, read from its enqueue
// stamps: a woken consumer is let run at once (the offering goroutine yields) only when pushes
// are sparse.
func TestQueueMeasuresTheTimeBetweenPushes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](1000, 1, Clock{Epoch: time.Now()})
		q.AddProducers(1)
		for range 256 {
			time.Sleep(100 * time.Microsecond)
			require.Equal(t, Admitted, q.Offer(Envelope[int]{V: 1}, OverflowBlock, nil, nil))
		}
		assert.InEpsilon(t, float64(100*time.Microsecond), float64(q.gapAvg), 0.1, "one offer every 100µs")
		assert.Greater(t, time.Duration(q.gapAvg), sparse)
		for range 256 {
			require.Equal(t, Admitted, q.Offer(Envelope[int]{V: 1}, OverflowBlock, nil, nil))
		}
		assert.Less(t, time.Duration(q.gapAvg), sparse, "a burst: offers at once")
		q.ProducerDone()
	})
}

func TestQueuePushParksWhenStopped(t *testing.T) {
	var parked []int
	q := NewQueue[int](1, 1, Clock{Epoch: time.Now()})
	q.Park = func(e Envelope[int]) { parked = append(parked, e.V) }
	stop := make(chan struct{})
	close(stop)
	assert.False(t, q.Push(stop, items(1, 2, 3)))
	assert.Equal(t, []int{2, 3}, parked, "what fits goes in; the rest is parked")
}

func TestQueueOfferAndTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](1, 1, Clock{Epoch: time.Now()})
		assert.Equal(t, Admitted, q.Offer(Envelope[int]{V: 1}, OverflowReject, nil, nil))
		assert.Equal(t, Full, q.Offer(Envelope[int]{V: 2}, OverflowReject, nil, nil), "reject: full fails at once")
		stop := make(chan struct{})
		go func() { time.Sleep(time.Second); close(stop) }()
		start := time.Now()
		assert.Equal(t, Stopped, q.Offer(Envelope[int]{V: 2}, OverflowBlock, stop, nil))
		assert.Equal(t, time.Second, time.Since(start))

		buf := make([]Envelope[int], 1)
		n, ok := q.Pop(buf, true, 0, nil, nil)
		assert.Equal(t, 1, n)
		assert.True(t, ok)
		timer := time.NewTimer(50 * time.Millisecond)
		n, ok = q.Pop(buf, true, 0, timer.C, nil)
		assert.Zero(t, n)
		assert.True(t, ok, "a timeout is not the end")
	})
}

// Many producers and consumers: every item comes out exactly once.
func TestQueueConcurrent(t *testing.T) {
	const producers, consumers, each, slots = 4, 3, 2000, 7
	q := NewQueue[int](slots, consumers, Clock{Epoch: time.Now()})
	q.AddProducers(producers)
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			defer q.ProducerDone()
			for i := range each {
				require.True(t, q.Push(nil, items(p*each+i)))
			}
		})
	}
	seen := make([]atomic.Int32, producers*each)
	for range consumers {
		wg.Go(func() {
			buf := make([]Envelope[int], 4)
			release := 0
			for {
				n, ok := q.Pop(buf, true, release, nil, nil)
				if !ok {
					return
				}
				for _, e := range buf[:n] {
					seen[e.V].Add(1)
				}
				release = n
			}
		})
	}
	wg.Wait()
	for i := range seen {
		require.EqualValues(t, 1, seen[i].Load(), "item %d", i)
	}
}

func TestTrackerTree(t *testing.T) {
	var got []Outcome
	noPanic := func(err error) { t.Errorf("no ack panics here: %v", err) }
	root := NewRoot(func(o Outcome) { got = append(got, o) }, noPanic)
	kids := root.Fork(3)
	kids.Done(Delivered)
	kids.Done(Filtered)
	assert.Empty(t, got, "the parent waits for all its children")
	kids.Done(DeadLettered)
	assert.Equal(t, []Outcome{DeadLettered}, got, "the most severe outcome wins")

	var a, b []Outcome
	ra := NewRoot(func(o Outcome) { a = append(a, o) }, noPanic)
	rb := NewRoot(func(o Outcome) { b = append(b, o) }, noPanic)
	Group([]*Tracker{ra, nil, rb}).Done(Delivered)
	assert.Equal(t, []Outcome{Delivered}, a)
	assert.Equal(t, []Outcome{Delivered}, b)
	assert.Nil(t, Group([]*Tracker{nil}))
	assert.Nil(t, NewRoot(nil, noPanic))
	var nilT *Tracker
	nilT.Done(Delivered) // nil-safe
	assert.Nil(t, nilT.Fork(2))
	assert.Equal(t, "not-done", NotDone.String())
}

// Only a tracker all of whose units have an acknowledgement is redeliverable: a group that also
// carries items without one is not, nor what is grouped with it or derived from it.
func TestTrackerRedeliverable(t *testing.T) {
	noPanic := func(err error) { t.Errorf("no ack panics here: %v", err) }
	var got []Outcome
	root := NewRoot(func(o Outcome) { got = append(got, o) }, noPanic)
	other := NewRoot(func(Outcome) {}, noPanic)
	var nilT *Tracker
	assert.False(t, nilT.Redeliverable(), "no acknowledgement")
	assert.True(t, root.Redeliverable())
	assert.True(t, root.Fork(2).Redeliverable())
	assert.True(t, Group([]*Tracker{root, other}).Redeliverable())
	assert.True(t, Group([]*Tracker{root.Fork(2), Group([]*Tracker{other})}).Redeliverable())

	mixed := Group([]*Tracker{root, nil})
	assert.False(t, mixed.Redeliverable(), "a member without an acknowledgement")
	assert.False(t, mixed.Fork(2).Redeliverable(), "derived from a mixed group")
	assert.False(t, Group([]*Tracker{other, mixed}).Redeliverable(), "grouped with a mixed group")
	mixed.Done(DeadLettered) // the nil member is skipped
	assert.Equal(t, []Outcome{DeadLettered}, got)
}

// A panic in an acknowledgement does not propagate: the tracker hands it to its handler, with
// the outcome, the panic's value and the stack, and is done.
func TestTrackerAckPanic(t *testing.T) {
	var got []error
	root := NewRoot(func(Outcome) { panic("broker gone") }, func(err error) { got = append(got, err) })
	kids := root.Fork(2)
	kids.Done(Delivered)
	require.NotPanics(t, func() { kids.Done(Delivered) })
	require.Len(t, got, 1)
	assert.Contains(t, got[0].Error(), "outcome delivered")
	assert.Contains(t, got[0].Error(), "broker gone")
	assert.Contains(t, got[0].Error(), "TestTrackerAckPanic", "the stack of the panic")
}

func TestQueueOverflowPolicies(t *testing.T) {
	newQ := func(policy Overflow) (*Queue[int], *[]int) {
		var evicted []int
		q := NewQueue[int](2, 1, Clock{Epoch: time.Now()})
		q.Policy = policy
		q.Evict = func(e Envelope[int]) { evicted = append(evicted, e.V) }
		return q, &evicted
	}
	q, ev := newQ(OverflowDropOldest)
	require.True(t, q.Push(nil, items(1, 2, 3, 4)))
	assert.Equal(t, []int{1, 2}, *ev, "the oldest queued items make room")
	buf := make([]Envelope[int], 2)
	n, _ := q.Pop(buf, true, 0, nil, nil)
	assert.Equal(t, []int{3, 4}, []int{buf[0].V, buf[1].V}[:n])

	q, ev = newQ(OverflowDeadLetter)
	require.True(t, q.Push(nil, items(1, 2, 3)))
	assert.Equal(t, []int{3}, *ev, "the new item is dead-lettered")
	assert.Equal(t, Evicted, q.Offer(Envelope[int]{V: 9}, OverflowDeadLetter, nil, nil))
	assert.Equal(t, []int{3, 9}, *ev)

	// Drop-oldest waits when every slot is held by a worker: there is nothing queued to drop. It
	// goes when a slot is given back, or when a worker gives an item back (Unpop): it drops that.
	waiting := func(t *testing.T) (q *Queue[int], ev *[]int, held []Envelope[int], done chan bool) {
		q, ev = newQ(OverflowDropOldest)
		q.MayUnpop()
		require.True(t, q.Push(nil, items(1, 2)))
		held = make([]Envelope[int], 2)
		n, _ := q.Pop(held, true, 0, nil, nil)
		require.Equal(t, 2, n)
		done = make(chan bool)
		go func() { done <- q.Push(nil, items(3)) }()
		synctest.Wait()
		assert.Empty(t, *ev)
		return q, ev, held, done
	}
	synctest.Test(t, func(t *testing.T) {
		q, _, _, done := waiting(t)
		q.Release(1)
		<-done
		assert.Equal(t, 1, q.Len(), "the waiting push went in")
	})
	synctest.Test(t, func(t *testing.T) {
		q, ev, held, done := waiting(t)
		q.Unpop(held[1:2])
		<-done
		assert.Equal(t, []int{2}, *ev, "the waiting push dropped the item given back")
	})
	// A blocking push ahead of the drop-oldest one in line gets the wake-up for an item given
	// back, and cannot go (no slot is free): it passes the wake-up on, and the drop-oldest push
	// drops that item.
	synctest.Test(t, func(t *testing.T) {
		q, ev := newQ(OverflowDropOldest)
		q.MayUnpop()
		require.True(t, q.Push(nil, items(1, 2)))
		held := make([]Envelope[int], 2)
		n, _ := q.Pop(held, true, 0, nil, nil)
		require.Equal(t, 2, n)
		blocking := make(chan OfferResult)
		go func() { blocking <- q.Offer(Envelope[int]{V: 3}, OverflowBlock, nil, nil) }()
		synctest.Wait() // the blocking push is first in line
		done := make(chan bool)
		go func() { done <- q.Push(nil, items(4)) }()
		synctest.Wait()
		q.Unpop(held[1:2])
		<-done
		assert.Equal(t, []int{2}, *ev, "the drop-oldest push dropped the item given back")
		q.Release(1)
		assert.Equal(t, Admitted, <-blocking, "the blocking push goes at the next free slot")
		assert.Equal(t, 2, q.Len())
	})
}

// A consumer never waits for an item while a slot is free and a producer waits for it.
func TestQueueWakesAWaitingProducerWhenItsConsumersWait(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](8, 2, Clock{Epoch: time.Now()})
		q.AddProducers(1)
		buf := make([]Envelope[int], 8)
		require.True(t, q.Push(nil, items(0, 1, 2, 3, 4, 5, 6, 7)))
		n, _ := q.Pop(buf, false, 0, nil, nil)
		require.Equal(t, 8, n)
		go func() { q.Push(nil, items(8)) }()
		synctest.Wait()
		n, _ = q.Pop(buf, false, 1, nil, nil) // gives one slot back, then waits for an item
		assert.Equal(t, 1, n)
		assert.Equal(t, 8, buf[0].V)
		q.Release(8)
		q.ProducerDone()
	})
}

// A producer held up while many items are queued is woken once a batch of slots (slots/8) is
// free, not for each one; once few items are queued, a single free slot wakes it.
func TestQueueWakesAHeldUpProducerForABatchOfSlots(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](32, 1, Clock{Epoch: time.Now()}) // a batch of 4 slots
		q.AddProducers(1)
		first := make([]int, 32)
		for i := range first {
			first[i] = i
		}
		require.True(t, q.Push(nil, items(first...)))
		done := make(chan bool)
		go func() { done <- q.Push(nil, items(32, 33, 34, 35, 36, 37)) }()
		synctest.Wait()
		buf := make([]Envelope[int], 32)
		n, _ := q.Pop(buf[:1], true, 0, nil, nil)
		require.Equal(t, 1, n)
		for range 3 {
			n, _ = q.Pop(buf[:1], true, 1, nil, nil) // one slot back each time
			require.Equal(t, 1, n)
			synctest.Wait()
		}
		assert.Equal(t, 28, q.Len(), "3 free slots and 28 queued: the producer still waits")
		n, _ = q.Pop(buf[:1], true, 1, nil, nil) // the fourth slot back
		require.Equal(t, 1, n)
		synctest.Wait()
		assert.Equal(t, 27+4, q.Len(), "4 free slots: the producer put 4 items at once")

		q.Release(1) // 1 free slot, 31 queued: the producer, with 2 items left, waits on
		synctest.Wait()
		assert.Equal(t, 31, q.Len())
		n, _ = q.Pop(buf, false, 0, nil, nil) // takes all 31 queued, no slot back
		require.Equal(t, 31, n)
		synctest.Wait()
		assert.Equal(t, 1, q.Len(), "the queue ran low: one free slot was enough")
		select {
		case <-done:
			t.Fatal("the producer has a second item left and no free slot")
		default:
		}
		q.Release(1)
		assert.True(t, <-done)
		q.Release(32) // what the consumer still holds: 38 pushed, 6 given back
		q.ProducerDone()
	})
}

// While a producer waits for a batch of slots, blocking pushes that come after it queue behind
// it rather than take each slot as it is freed: a stream of them, one per freed slot, would
// otherwise keep it waiting for as long as it lasts. Once room is due, the held-up producers
// take the free slots in turn, even if a push that came meanwhile took one first.
func TestQueueLaterPushesDoNotOvertakeAHeldUpProducer(t *testing.T) {
	// One processor: a woken goroutine runs only once this one blocks, so that the push that
	// comes as room is due (7) surely goes before the producer woken for it.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](64, 1, Clock{Epoch: time.Now()}) // a batch of 8 slots
		q.AddProducers(1)
		require.True(t, q.Push(nil, make([]Envelope[int], 64)))
		var mu sync.Mutex
		var order []int
		offer := func(v int) {
			assert.Equal(t, Admitted, q.Offer(Envelope[int]{V: v}, OverflowBlock, nil, nil))
			mu.Lock()
			order = append(order, v)
			mu.Unlock()
		}
		var wg sync.WaitGroup
		wg.Go(func() { offer(-1) }) // held up: no free slot
		synctest.Wait()
		buf := make([]Envelope[int], 1)
		admitted := func() []int {
			mu.Lock()
			defer mu.Unlock()
			return slices.Clone(order)
		}
		for i := range 7 {
			n, _ := q.Pop(buf, true, 0, nil, nil)
			require.Equal(t, 1, n)
			q.Release(1) // one slot back, 64-i-1 items queued
			wg.Go(func() { offer(i) })
			synctest.Wait()
		}
		assert.Empty(t, admitted(), "7 free slots: no later push took one")
		n, _ := q.Pop(buf, true, 0, nil, nil)
		require.Equal(t, 1, n)
		q.Release(1) // 8 free: room is due
		offer(7)     // takes a slot now, before the woken producer runs: room is due
		synctest.Wait()
		got := admitted()
		require.Len(t, got, 8, "the 8 free slots taken")
		held := slices.DeleteFunc(slices.Clone(got), func(v int) bool { return v == 7 })
		assert.Equal(t, []int{-1, 0, 1, 2, 3, 4, 5, 6}[:len(held)], held,
			"the held-up producers in the order they came (7 came as room was due)")
		q.Release(8) // room for the last
		wg.Wait()
		q.Release(57) // 73 pushed, 16 given back
		q.ProducerDone()
	})
}

// An item put into the empty queue while a consumer is on its way back to Pop (Returning) wakes
// no waiting consumer: the returning one takes it. Once none is returning, puts wake again; and
// Revoke wakes a waiting consumer for the items put while it was returning.
func TestQueueReturningConsumerTakesTheItem(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](8, 2, Clock{Epoch: time.Now()})
		q.AddProducers(1)
		got := make(chan int, 8)
		go func() { // the waiting consumer
			buf := make([]Envelope[int], 8)
			for release := 0; ; {
				n, ok := q.Pop(buf, false, release, nil, nil)
				if !ok {
					close(got)
					return
				}
				for _, e := range buf[:n] {
					got <- e.V
				}
				release = n
			}
		}()
		synctest.Wait() // it waits

		q.Returning()
		require.True(t, q.Push(nil, items(1)))
		synctest.Wait()
		assert.Empty(t, got, "the waiting consumer was not woken")
		q.Returned()
		buf := make([]Envelope[int], 8)
		n, _ := q.Pop(buf, false, 0, nil, nil) // the returning consumer takes it
		require.Equal(t, 1, n)
		assert.Equal(t, 1, buf[0].V)

		require.True(t, q.Push(nil, items(2)))
		assert.Equal(t, 2, <-got, "none returning: the put wakes the waiting consumer")

		synctest.Wait() // it waits again (it had sent 2 before it went back to Pop)
		q.Returning()
		require.True(t, q.Push(nil, items(3)))
		synctest.Wait()
		assert.Len(t, got, 0)
		q.Revoke() // held up on its way back: the waiting consumer takes the item
		assert.Equal(t, 3, <-got)

		q.Release(1)
		q.ProducerDone()
		_, open := <-got
		assert.False(t, open)
	})
}

// A queue whose consumers may give items back does not end while one holds items: another
// consumer waits for them instead of ending, and ends once every slot is back.
func TestQueueEndsOnlyWhenNoItemCanComeBack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := NewQueue[int](4, 2, Clock{Epoch: time.Now()})
		q.MayUnpop()
		q.AddProducers(1)
		require.True(t, q.Push(nil, items(1, 2, 3)))
		q.ProducerDone()
		held := make([]Envelope[int], 4)
		n, ok := q.Pop(held, false, 0, nil, nil) // consumer A takes all three
		require.True(t, ok)
		require.Equal(t, 3, n)
		got := make(chan []int)
		go func() { // consumer B: the queue is closed and empty, but A holds items
			buf := make([]Envelope[int], 4)
			var all []int
			release := 0
			for {
				n, ok := q.Pop(buf, false, release, nil, nil)
				if !ok {
					got <- all
					return
				}
				for _, e := range buf[:n] {
					all = append(all, e.V)
				}
				release = n
			}
		}()
		synctest.Wait()
		q.Unpop(held[1:3]) // A is held up with item 1 and gives 2 and 3 back
		synctest.Wait()
		q.Release(1) // A is done with item 1
		assert.Equal(t, []int{2, 3}, <-got, "B took what A gave back, then saw the end")
	})
}

// Items go in and come out in order however the ring wraps, in batches of every size, and a
// slot an item was taken from keeps no reference to it (the queue copies and clears in bulk).
func TestQueueOrderAcrossTheRingsWrap(t *testing.T) {
	q := NewQueue[*int](5, 1, Clock{Epoch: time.Now()})
	q.AddProducers(1)
	next, want := 0, 0
	buf := make([]Envelope[*int], 5)
	held := 0
	for round := range 60 {
		in := make([]Envelope[*int], 1+round%5)
		for i := range in {
			v := next
			in[i] = Envelope[*int]{V: &v}
			next++
		}
		fits := min(len(in), 5-held-q.Len())
		require.True(t, q.Push(nil, in[:fits]))
		next -= len(in) - fits // what did not fit goes in next round
		n, ok := q.Pop(buf[:1+round%3], false, held, nil, nil)
		require.True(t, ok)
		for _, e := range buf[:n] {
			require.Equal(t, want, *e.V, "round %d", round)
			want++
		}
		held = n
		q.mu.Lock()
		for i := range q.ring {
			queued := (i-q.head+len(q.ring))%len(q.ring) < q.n
			if !queued {
				require.Nil(t, q.ring[i].V, "round %d: slot %d was taken from and still holds its item", round, i)
			}
		}
		q.mu.Unlock()
	}
	require.Greater(t, want, 50)
	q.Release(held)
	q.ProducerDone()
}

// PushWith calls heldUp before it waits for room when asked to (onWait), once however often it
// waits, and not at all when it does not wait or was not asked to.
func TestQueuePushWithCallsHeldUpBeforeItWaits(t *testing.T) {
	for _, onWait := range []bool{true, false} {
		synctest.Test(t, func(t *testing.T) {
			q := NewQueue[int](2, 1, Clock{Epoch: time.Now()})
			var calls atomic.Int32
			heldUp := func() { calls.Add(1) }
			require.True(t, q.PushWith(nil, items(1, 2), heldUp, onWait))
			assert.Zero(t, calls.Load(), "no wait, no call")
			done := make(chan bool)
			go func() { done <- q.PushWith(nil, items(3, 4, 5), heldUp, onWait) }()
			synctest.Wait() // the push waits for room
			want := int32(0)
			if onWait {
				want = 1
			}
			assert.Equal(t, want, calls.Load(), "called before the first wait (onWait %v)", onWait)
			buf := make([]Envelope[int], 2)
			n, _ := q.Pop(buf, false, 0, nil, nil)
			q.Release(n)
			synctest.Wait() // 3 and 4 went in; the push waits again, for 5
			assert.Equal(t, 2, q.Len())
			n, _ = q.Pop(buf, false, 0, nil, nil)
			q.Release(n)
			<-done
			assert.Equal(t, want, calls.Load(), "called once however often the push waited")
			assert.Equal(t, 1, q.Len())
		})
	}
}
