package core

import (
	"sync"
	"sync/atomic"
	"time"
)

// Queue is the bounded input of a stage. It counts slots, not just queued items: a slot is
// taken when an item is pushed and given back (Release) only when the stage is done with the
// item, so the items a stage holds, queued or in its workers' hands, never exceed its slots.
// That lets workers move items in batches (one lock for many items when the queue is busy)
// while capacity and backpressure stay exact. Its producers are counted; when the last is done
// the queue closes, and consumers see the end once it is empty.
type Queue[T any] struct {
	mu       sync.Mutex
	ring     []Envelope[T]
	head     int
	n        int // queued
	free     int // free slots
	closed   bool
	consWait int
	prodWait int
	notEmpty chan struct{}
	notFull  chan struct{}

	producers atomic.Int64
	queued    atomic.Int64
	consumers int
	clock     Clock

	// Park dead-letters an item for the queue's stage (reason shutdown) or hands it back to its
	// source, when it cannot be put in because the run is stopping.
	Park func(e Envelope[T])
}

// NewQueue returns a queue of slots slots, drained by consumers workers.
func NewQueue[T any](slots, consumers int, clock Clock) *Queue[T] {
	return &Queue[T]{
		ring:      make([]Envelope[T], slots),
		free:      slots,
		notEmpty:  make(chan struct{}, 1),
		notFull:   make(chan struct{}, 1),
		consumers: max(consumers, 1),
		clock:     clock,
	}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Len returns the number of items queued (not yet taken by a worker).
func (q *Queue[T]) Len() int { return int(q.queued.Load()) }

// AddProducers registers n more producers.
func (q *Queue[T]) AddProducers(n int) { q.producers.Add(int64(n)) }

// ProducerDone is called once by each producer when it will push no more; the last one closes
// the queue.
func (q *Queue[T]) ProducerDone() {
	if q.producers.Add(-1) != 0 {
		return
	}
	q.mu.Lock()
	q.closed = true
	if q.consWait > 0 {
		signal(q.notEmpty)
	}
	q.mu.Unlock()
}

// put copies items into free slots; the caller holds the lock and made sure q.free > 0.
func (q *Queue[T]) put(items []Envelope[T], now int64) int {
	k := min(q.free, len(items))
	tail := (q.head + q.n) % len(q.ring)
	for i := range k {
		items[i].M.Enqueued = now
		q.ring[tail] = items[i]
		if tail++; tail == len(q.ring) {
			tail = 0
		}
	}
	q.n += k
	q.free -= k
	q.queued.Store(int64(q.n))
	if q.consWait > 0 {
		signal(q.notEmpty)
	}
	if q.free > 0 && q.prodWait > 0 {
		signal(q.notFull) // pass the baton to the next waiting producer
	}
	return k
}

// Push puts items into the queue, waiting for free slots. If stop ends first, the items not
// yet in are parked and Push returns false.
func (q *Queue[T]) Push(stop <-chan struct{}, items []Envelope[T]) bool {
	now := q.clock.Now()
	q.mu.Lock()
	for len(items) > 0 {
		if q.free > 0 {
			items = items[q.put(items, now):]
			continue
		}
		q.prodWait++
		q.mu.Unlock()
		select {
		case <-q.notFull:
		case <-stop:
			q.mu.Lock()
			q.prodWait--
			if q.free > 0 && q.prodWait > 0 {
				signal(q.notFull)
			}
			q.mu.Unlock()
			for _, e := range items {
				q.Park(e)
			}
			return false
		}
		q.mu.Lock()
		q.prodWait--
	}
	q.mu.Unlock()
	return true
}

// Offer puts one item into the queue, enqueued at now (on the run's clock). With wait false it
// fails at once when no slot is free; otherwise it waits for a slot until stop1 or stop2 ends
// (then the item is not put in, and not parked: the caller still owns it).
func (q *Queue[T]) Offer(e Envelope[T], now int64, wait bool, stop1, stop2 <-chan struct{}) bool {
	one := [1]Envelope[T]{e}
	q.mu.Lock()
	for q.free == 0 {
		if !wait {
			q.mu.Unlock()
			return false
		}
		q.prodWait++
		q.mu.Unlock()
		var ok bool
		select {
		case <-q.notFull:
			ok = true
		case <-stop1:
		case <-stop2:
		}
		q.mu.Lock()
		q.prodWait--
		if !ok {
			if q.free > 0 && q.prodWait > 0 {
				signal(q.notFull)
			}
			q.mu.Unlock()
			return false
		}
	}
	q.put(one[:], now)
	q.mu.Unlock()
	return true
}

// Release gives back n slots of items the stage is done with.
func (q *Queue[T]) Release(n int) {
	if n == 0 {
		return
	}
	q.mu.Lock()
	q.release(n)
	q.mu.Unlock()
}

func (q *Queue[T]) release(n int) {
	q.free += n
	if q.prodWait > 0 {
		signal(q.notFull)
	}
}

// Pop gives back release slots, then takes up to len(dst) items into dst: its fair share of
// what is queued (at least one), so that a busy queue hands items out in batches while a
// quiet one hands out each item at once. It waits while the queue is empty, until timeout
// fires or cancel ends (nil: never; then it returns 0, true). It returns ok false once the
// queue is closed and empty.
func (q *Queue[T]) Pop(dst []Envelope[T], release int, timeout <-chan time.Time, cancel <-chan struct{}) (n int, ok bool) {
	q.mu.Lock()
	if release > 0 {
		q.release(release)
	}
	for q.n == 0 {
		if q.closed {
			if q.consWait > 0 {
				signal(q.notEmpty) // let the other waiting consumers see the end too
			}
			q.mu.Unlock()
			return 0, false
		}
		q.consWait++
		q.mu.Unlock()
		select {
		case <-q.notEmpty:
		case <-timeout:
			q.mu.Lock()
			q.consWait--
			if (q.n > 0 || q.closed) && q.consWait > 0 {
				signal(q.notEmpty)
			}
			q.mu.Unlock()
			return 0, true
		case <-cancel:
			q.mu.Lock()
			q.consWait--
			if (q.n > 0 || q.closed) && q.consWait > 0 {
				signal(q.notEmpty)
			}
			q.mu.Unlock()
			return 0, true
		}
		q.mu.Lock()
		q.consWait--
	}
	k := min(len(dst), max(1, q.n/q.consumers))
	for i := range k {
		dst[i] = q.ring[q.head]
		q.ring[q.head] = Envelope[T]{}
		if q.head++; q.head == len(q.ring) {
			q.head = 0
		}
	}
	q.n -= k
	q.queued.Store(int64(q.n))
	if (q.n > 0 || q.closed) && q.consWait > 0 {
		signal(q.notEmpty)
	}
	q.mu.Unlock()
	return k, true
}
