package core

import (
	"testing"
	"time"
)

// R3: two DropOldest producers wait while every slot is held by a worker. One slot is released:
// one producer puts its item, and the other keeps sleeping although there is now a queued item it
// could evict (the policy says it waits only when every slot is held by a worker).
func TestQueueDropOldestWakesAWaiterWhenItemsAreQueued(t *testing.T) {
	q := NewQueue[int](1, 1, Clock{Epoch: time.Now()})
	q.Policy = OverflowDropOldest
	var evicted []int
	q.Evict = func(e Envelope[int]) { evicted = append(evicted, e.V) }
	q.Park = func(e Envelope[int]) {}
	q.AddProducers(3)
	if !q.Push(nil, []Envelope[int]{{V: 0}}) {
		t.Fatal("push")
	}
	dst := make([]Envelope[int], 1)
	if n, _ := q.Pop(dst, true, 0, nil, nil); n != 1 { // the worker holds the only slot
		t.Fatal("pop")
	}
	done := make(chan int, 2)
	for _, v := range []int{1, 2} {
		go func() { q.Push(nil, []Envelope[int]{{V: v}}); done <- v }()
	}
	for { // both wait
		q.mu.Lock()
		w := q.prodWait
		q.mu.Unlock()
		if w == 2 {
			break
		}
		time.Sleep(time.Millisecond)
	}
	q.Release(1)
	first := <-done
	select {
	case v := <-done:
		t.Logf("ok: both producers went through (%d then %d), evicted %v", first, v, evicted)
	case <-time.After(500 * time.Millisecond):
		q.mu.Lock()
		t.Errorf("producer still asleep with %d item(s) queued that DropOldest could evict (free=%d, prodWait=%d)", q.n, q.free, q.prodWait)
		q.mu.Unlock()
		q.Release(1) // let it go
		<-done
	}
}
