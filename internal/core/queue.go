package core

import (
	"runtime"
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
	batch    int // the free slots a held-up producer waits for while items are queued (see producerDue)
	closed   bool
	consWait int
	prodWait int
	dropWait int  // producers waiting under drop-oldest: they can go as soon as an item is queued
	waking   bool // a held-up producer is woken and has not run yet (see wakeProducer)
	notEmpty chan struct{}
	notFull  chan struct{}

	producers atomic.Int64
	returning atomic.Int32 // consumers on their way back to Pop (see Returning)
	pushed    int64        // items ever put in
	consumers int
	clock     Clock
	stampAll  atomic.Bool
	unpops    bool // consumers may give items back (Unpop): see ended
	// lastNow and lastAt are the last enqueue stamp and the push count it was taken at; gapAvg
	// is the running mean of the time between pushes they give (see put and Offer).
	lastNow, lastAt, gapAvg int64
	sampled                 atomic.Bool

	// Park dead-letters an item for the queue's stage (reason shutdown) or hands it back to its
	// source, when it cannot be put in because the run is stopping.
	Park func(e Envelope[T])
	// Evict dead-letters an item for the queue's stage with reason overflow.
	Evict func(e Envelope[T])
	// Inline runs the queue's stage on one item in the caller's goroutine (caller-runs).
	Inline func(e Envelope[T])
	// Policy is the overflow policy of Push.
	Policy Overflow
	// Offered, if set, is a count in which Offer's callers count their item before the call
	// (the run's admitted items): while an Offer waits for room its item is taken out of it, so
	// that a live count holds only items the pipeline took, not callers held up at its door.
	Offered *atomic.Int64
}

// NewQueue returns a queue of slots slots, drained by consumers workers.
func NewQueue[T any](slots, consumers int, clock Clock) *Queue[T] {
	return &Queue[T]{
		ring:      make([]Envelope[T], slots),
		free:      slots,
		batch:     max(1, slots/8),
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

// producerDue says whether a consumer (a release, a pop) is to wake a held-up producer: when
// room is due (see roomDue), or, for a drop-oldest producer, as soon as an item is queued (it
// can evict it). The caller holds the lock.
func (q *Queue[T]) producerDue() bool {
	return q.prodWait > 0 && (q.roomDue() || q.dropDue())
}

// dropDue says whether a held-up drop-oldest producer can go without a free slot: an item is
// queued for it to evict. The caller holds the lock.
func (q *Queue[T]) dropDue() bool { return q.dropWait > 0 && q.n > 0 }

// wakeProducer wakes one held-up producer, unless one is woken already and has not run yet:
// held-up producers are woken one at a time, each by the one before it (see batonDue), so that
// they take the free slots in the order they came, not the last woken first (the runtime runs a
// goroutine just woken before those woken earlier). The caller holds the lock.
func (q *Queue[T]) wakeProducer() {
	if !q.waking {
		q.waking = true
		signal(q.notFull)
	}
}

// batonDue says whether a producer that put items, or gave up waiting, is to wake the next
// held-up one: while a slot is free (or, for a drop-oldest producer, an item is queued). Once
// woken for room, the held-up producers take the free slots in turn, down to the last. The
// caller holds the lock.
func (q *Queue[T]) batonDue() bool {
	return q.prodWait > 0 && (q.free > 0 || q.dropDue())
}

// roomDue says whether producers held up for room are to have it: q.batch slots are free, or
// one is and few items are queued. The caller holds the lock.
//
// Waiting for a batch of free slots while many items are queued wakes a held-up producer once
// per batch rather than once per item, and costs no item anything: the producer's items could
// not be served before the queued ones anyway, and the consumers have those to take meanwhile.
// Where that saves most is a slow stage with many workers behind a fast one (an I/O-bound
// stage): there, every wake-up's CPU time delays the sleepers' timers (see bench/README.md).
func (q *Queue[T]) roomDue() bool {
	return q.free >= q.batch || (q.free > 0 && q.n <= q.batch)
}

// mayPut says whether a push under policy may take a free slot now. A blocking push that finds
// producers held up for room queues behind them until room is due: otherwise pushes that keep
// coming would take each slot as it is freed, and those producers would wait for as long as
// they come. (A push that does not wait takes a free slot: it has no place in the queue.) The
// caller holds the lock.
func (q *Queue[T]) mayPut(policy Overflow) bool {
	return q.free > 0 && (q.prodWait == 0 || policy != OverflowBlock || q.roomDue())
}

// ended says whether consumers have seen the end of the input: the queue is closed and empty
// and, if consumers may give items back (Unpop), no slot is held by one that could. The caller
// holds the lock.
func (q *Queue[T]) ended() bool {
	return q.closed && q.n == 0 && (!q.unpops || q.free == len(q.ring))
}

// MayUnpop says, before the queue is used, that its consumers may give items back (Unpop): the
// end of the input then also waits for every slot to be given back, so that no consumer ends
// while items it should take could still come back. (A consumer that waits in Pop must hold no
// slot then, or it would wait for itself.)
func (q *Queue[T]) MayUnpop() { q.unpops = true }

func (q *Queue[T]) isClosed() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.closed
}

// Pushed returns how many items were ever put into the queue.
func (q *Queue[T]) Pushed() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.pushed
}

// Len returns the number of items queued (not yet taken by a worker).
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.n
}

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
	if q.consWait > 0 && q.ended() {
		signal(q.notEmpty)
	}
	q.mu.Unlock()
}

// StampAll makes the queue stamp every item with the time it was put in (Meta.Enqueued), for
// good: for a stage that needs the queue wait of every item (a traced or batching one).
func (q *Queue[T]) StampAll() { q.stampAll.Store(true) }

// SampleStamps says whether the queue's consumers are fast, so that stamping one item in
// SampleEvery is enough (a clock read costs more than a fast stage's call, and a sample is
// enough for its wait histogram); the others carry 0. Until then, every item is stamped.
func (q *Queue[T]) SampleStamps(fast bool) { q.sampled.Store(fast) }

// SampleEvery is the sampling interval of a fast stage: its queue stamps one item in
// SampleEvery with its enqueue time, and each worker times one call in SampleEvery. A clock read
// costs tens of nanoseconds on a VM, as much as a fast call; one in 64 keeps the histograms'
// share of such a stage's cost near 1% and still gives thousands of samples a second.
const SampleEvery = 64

// put copies items into free slots; the caller holds the lock and made sure q.free > 0.
//
// It returns hurry when it woke a consumer while pushes are sparse (see Offer).
func (q *Queue[T]) put(items []Envelope[T]) (k int, hurry bool) {
	k = min(q.free, len(items))
	tail := q.head + q.n
	if tail >= len(q.ring) {
		tail -= len(q.ring)
	}
	pushed := q.pushed
	all := q.stampAll.Load() || !q.sampled.Load()
	now := int64(0)
	for i := range k {
		items[i].M.Enqueued = 0
		if all || (pushed+int64(i))%SampleEvery == 0 {
			if now == 0 {
				now = max(q.clock.Now(), 1) // 0 means not stamped
				if at := pushed + int64(i); q.lastNow != 0 && at > q.lastAt {
					// The stamps also measure the time between pushes.
					gap := (now - q.lastNow) / (at - q.lastAt)
					q.gapAvg += (gap - q.gapAvg) / 4
				}
				q.lastNow, q.lastAt = now, pushed+int64(i)
			}
			items[i].M.Enqueued = now
		}
	}
	if k == 1 {
		q.ring[tail] = items[0] // cheaper than a copy call for one item (an Offer)
	} else {
		// One bulk copy (two when the ring wraps) rather than an assignment per item.
		c := copy(q.ring[tail:], items[:k])
		copy(q.ring, items[c:k])
	}
	q.n += k
	q.free -= k
	q.pushed = pushed + int64(k)
	if q.consWait > 0 && q.n == k && q.returning.Load() == 0 {
		// The queue was empty: wake a consumer, unless one is on its way back to Pop (see
		// Returning). Items put into a queue that was not empty need no wake-up of their
		// own: the consumer woken for the first ones, or an awake one, takes them too (and
		// passes the baton on if it leaves some; see Pop).
		signal(q.notEmpty)
		hurry = time.Duration(q.gapAvg) > sparse
	}
	if q.batonDue() {
		q.wakeProducer() // pass the baton to the next waiting producer
	}
	return k, hurry
}

// Overflow is what a push does when the queue has no free slot.
type Overflow uint8

// The overflow policies.
const (
	// OverflowBlock waits for a free slot.
	OverflowBlock Overflow = iota
	// OverflowReject fails at once.
	OverflowReject
	// OverflowDropOldest evicts the oldest queued item (to be dead-lettered) to make room, and
	// waits only when every slot is held by a worker.
	OverflowDropOldest
	// OverflowDeadLetter evicts the new item (to be dead-lettered) instead of waiting.
	OverflowDeadLetter
)

// insert puts items in per policy. It returns how many went in; the items evicted (old queued
// ones, or new ones), which the caller hands to Evict outside the lock; and stopped when stop1
// or stop2 ended while it waited (items[n:] were not put in). Before it first waits for room
// it calls beforeWait, if not nil, outside the lock.
func (q *Queue[T]) insert(items []Envelope[T], policy Overflow, stop1, stop2 <-chan struct{}, beforeWait func(), offered *atomic.Int64) (n int, evicted []Envelope[T], stopped, hurry bool) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return 0, nil, false, false // the caller sees nothing went in (Offer: Closed)
	}
	resumed := false // woken for room: it takes a free slot whatever mayPut says
	for len(items) > 0 {
		if q.free > 0 && (resumed || q.mayPut(policy)) {
			k, w := q.put(items)
			items, n, hurry, resumed = items[k:], n+k, hurry || w, false
			continue
		}
		switch policy {
		case OverflowReject:
			q.mu.Unlock()
			return n, evicted, false, hurry
		case OverflowDeadLetter:
			evicted = append(evicted, items...)
			q.mu.Unlock()
			return n, evicted, false, hurry
		case OverflowDropOldest:
			if q.n > 0 {
				evicted = append(evicted, q.ring[q.head])
				q.ring[q.head] = Envelope[T]{}
				if q.head++; q.head == len(q.ring) {
					q.head = 0
				}
				q.n--
				q.free++
				continue
			}
		}
		if beforeWait != nil {
			// Before this producer counts as waiting: a producer counted in dropWait is at its
			// wait or a few instructions from it (see the pass-on below).
			q.mu.Unlock()
			beforeWait()
			beforeWait = nil // (PushWith's heldUp does anything only once)
			q.mu.Lock()
			continue // the queue may have changed meanwhile
		}
		q.prodWait++
		if policy == OverflowDropOldest {
			q.dropWait++
		}
		// A producer is due and none is woken: this one was, and cannot go. At this point that
		// can only be a drop-oldest producer with an item to evict (room is not due, or this one
		// would not wait; and it is not itself that producer, which evicts instead of waiting
		// while an item is queued). It was woken for a free slot that a push which does not wait
		// took first, or it was ahead of the drop-oldest one in line when an item was queued (by
		// Unpop, say). It passes the wake-up on rather than keep it; each producer woken in turn
		// goes or passes it on, so the drop-oldest one is reached.
		passed := q.producerDue() && !q.waking
		if passed {
			q.wakeProducer()
		}
		q.mu.Unlock()
		if passed {
			// Let the producer it is for reach its wait first. If it has not yet (it was just
			// counted, or it gave up and has not taken the lock back), the wake-up stays
			// pending and this one could take it back, again and again, until it does: a few
			// instructions, and the yield lets it run if it shares this processor.
			runtime.Gosched()
		}
		if offered != nil {
			offered.Add(-1) // (see Offered)
		}
		woken := false
		select {
		case <-q.notFull:
			woken, resumed = true, true
		case <-stop1:
		case <-stop2:
		}
		if offered != nil {
			offered.Add(1)
		}
		q.mu.Lock()
		q.prodWait--
		if woken {
			q.waking = false
		}
		if policy == OverflowDropOldest {
			q.dropWait--
		}
		if !woken {
			if q.batonDue() {
				q.wakeProducer()
			}
			q.mu.Unlock()
			return n, evicted, true, hurry
		}
	}
	q.mu.Unlock()
	return n, evicted, false, hurry
}

func (q *Queue[T]) evict(items []Envelope[T]) {
	for _, e := range items {
		q.Evict(e)
	}
}

// Push puts items into the queue under the queue's own overflow policy (Policy), waiting for
// free slots when it blocks. If stop ends first, the items not yet in are parked and Push
// returns false.
func (q *Queue[T]) Push(stop <-chan struct{}, items []Envelope[T]) bool {
	return q.PushWith(stop, items, nil, false)
}

// PushWith is Push, calling heldUp (if not nil) before it dead-letters or parks items, which
// may take a while (a dead-letter sink's retries), and, if onWait, before it waits for room.
// heldUp may be called more than once: only the first call must do anything.
func (q *Queue[T]) PushWith(stop <-chan struct{}, items []Envelope[T], heldUp func(), onWait bool) bool {
	var beforeWait func()
	if onWait {
		beforeWait = heldUp
	}
	n, evicted, stopped, _ := q.insert(items, q.Policy, stop, nil, beforeWait, nil)
	if heldUp != nil && (len(evicted) > 0 || stopped) {
		heldUp()
	}
	q.evict(evicted)
	if stopped {
		for _, e := range items[n:] {
			q.Park(e)
		}
		return false
	}
	return true
}

// sparse is the mean time between pushes above which a queue's ingress counts as light: fewer
// than 50,000 items/s.
const sparse = 20 * time.Microsecond

// OfferResult says what became of an offered item.
type OfferResult uint8

// The results of Offer.
const (
	// Admitted: the item is in the queue.
	Admitted OfferResult = iota
	// Full: no slot was free and the policy does not wait (the caller still owns the item).
	Full
	// Stopped: a stop channel ended while waiting (the caller still owns the item).
	Stopped
	// Evicted: the item was taken and dead-lettered (OverflowDeadLetter).
	Evicted
	// Closed: the queue's producers are all done; it takes nothing more (the caller still owns
	// the item).
	Closed
)

// Offer puts one item into the queue under policy. When the item woke a consumer and pushes are
// sparse (light ingress), the offering goroutine yields the processor so that the consumer runs
// now: otherwise it waits until the offering goroutine blocks, and the items of a burst (a paced
// source often releases several at once) travel together, each waiting for the others. Under
// load it never yields: there the consumer is better off taking a batch.
func (q *Queue[T]) Offer(e Envelope[T], policy Overflow, stop1, stop2 <-chan struct{}) OfferResult {
	one := [1]Envelope[T]{e}
	q.mu.Lock()
	if q.mayPut(policy) && !q.closed {
		// The common case, without insert's loop and wait.
		_, hurry := q.put(one[:])
		q.mu.Unlock()
		if hurry {
			runtime.Gosched()
		}
		return Admitted
	}
	q.mu.Unlock()
	n, evicted, stopped, hurry := q.insert(one[:], policy, stop1, stop2, nil, q.Offered)
	q.evict(evicted)
	switch {
	case n == 1:
		if hurry {
			runtime.Gosched()
		}
		return Admitted
	case n == 0 && len(evicted) == 0 && !stopped && q.isClosed():
		return Closed
	case stopped:
		return Stopped
	case policy == OverflowDeadLetter:
		return Evicted
	}
	return Full
}

// Unpop puts items a consumer took but will not work on now (it is held up, say by a retry's
// backoff) back at the head of the queue, in order, for other consumers; their slots stay taken.
func (q *Queue[T]) Unpop(items []Envelope[T]) {
	if len(items) == 0 {
		return
	}
	q.mu.Lock()
	for i := len(items) - 1; i >= 0; i-- {
		if q.head--; q.head < 0 {
			q.head = len(q.ring) - 1
		}
		q.ring[q.head] = items[i]
	}
	q.n += len(items)
	if q.consWait > 0 {
		signal(q.notEmpty)
	}
	if q.producerDue() {
		q.wakeProducer() // a drop-oldest producer can evict one of them
	}
	q.mu.Unlock()
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
	if q.producerDue() {
		q.wakeProducer()
	}
	if q.consWait > 0 && q.ended() {
		signal(q.notEmpty) // the last slot back: the waiting consumers see the end
	}
}

// Returning says that a consumer is done with its calls and on its way back to Pop: it calls
// nothing but a push of its outputs downstream before Returned and Pop. Until then, an item put
// into the empty queue wakes no waiting consumer: the returning one takes it (and passes the
// baton on if it leaves some). Under load that saves wake-ups and goroutine switches. If the
// push is held up by dead-lettering or parking items (see PushWith), the consumer calls Revoke
// first; if it waits for a free slot downstream, it does too unless every item it would take
// needs such a slot as well (a map's: another consumer would only wait for the same slots), so
// that an item that needs none (filtered out, dead-lettered) is not held up behind it. It
// calls nothing else between Returning and Returned: no code of the user's.
func (q *Queue[T]) Returning() { q.returning.Add(1) }

// Returned ends Returning, just before the consumer's Pop.
func (q *Queue[T]) Returned() { q.returning.Add(-1) }

// Revoke ends Returning when the consumer is held up on its way back: a waiting consumer is
// woken for the items put meanwhile, as if it had not said it.
func (q *Queue[T]) Revoke() {
	q.mu.Lock()
	q.returning.Add(-1)
	if q.n > 0 && q.consWait > 0 {
		signal(q.notEmpty)
	}
	q.mu.Unlock()
}

// Pop gives back release slots, then takes up to len(dst) queued items into dst: all it can
// when share is false (a worker whose calls are known to be fast: one lock for many items), or
// else its fair share of what is queued (at least one), so that slow calls do not leave items
// waiting in one worker's hands while others are idle. A quiet queue hands out each item at
// once. It waits while the queue is empty, until timeout fires or cancel ends (nil: never; then
// it returns 0, true). It returns ok false once the input has ended (see ended).
func (q *Queue[T]) Pop(dst []Envelope[T], share bool, release int, timeout <-chan time.Time, cancel <-chan struct{}) (n int, ok bool) {
	q.mu.Lock()
	if release > 0 {
		q.release(release)
	}
	for q.n == 0 {
		if q.ended() {
			if q.consWait > 0 {
				signal(q.notEmpty) // let the other waiting consumers see the end too
			}
			q.mu.Unlock()
			return 0, false
		}
		q.consWait++
		q.mu.Unlock()
		woken := true
		if timeout == nil && cancel == nil {
			<-q.notEmpty // nothing else to wait for: cheaper than a select
		} else {
			select {
			case <-q.notEmpty:
			case <-timeout:
				woken = false
			case <-cancel:
				woken = false
			}
		}
		q.mu.Lock()
		q.consWait--
		if !woken {
			if (q.n > 0 || q.ended()) && q.consWait > 0 {
				signal(q.notEmpty) // pass on a wake-up this consumer may have missed
			}
			q.mu.Unlock()
			return 0, true
		}
	}
	k := min(len(dst), q.n)
	if share {
		k = min(k, max(1, q.n/q.consumers))
	}
	// Bulk copies and clears (two of each when the ring wraps), not an assignment per item.
	c := copy(dst[:k], q.ring[q.head:])
	clear(q.ring[q.head : q.head+c])
	copy(dst[c:k], q.ring)
	clear(q.ring[:k-c])
	if q.head += k; q.head >= len(q.ring) {
		q.head -= len(q.ring)
	}
	q.n -= k
	if (q.n > 0 || q.ended()) && q.consWait > 0 {
		signal(q.notEmpty)
	}
	if q.producerDue() {
		q.wakeProducer() // few items left queued: a producer waiting for a batch of slots goes now
	}
	q.mu.Unlock()
	return k, true
}
