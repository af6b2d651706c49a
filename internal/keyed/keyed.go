// Package keyed is a bounded, concurrency-safe map of per-key values, such as a rate limiter
// per host or a circuit breaker per key. Values are made on first use; beyond the bound, the
// least recently used key is evicted, so a stream of distinct keys cannot grow the map
// without limit.
package keyed

import "sync"

// entry is a key's value and its place in the recency list.
type entry[V any] struct {
	key        string
	val        V
	prev, next *entry[V]
}

// Map is a bounded map from keys to values made on first use. Get is O(1): a Go map finds the
// entry, and an intrusive doubly linked list keeps the entries from most to least recently
// used. It is safe for concurrent use; make one with New.
type Map[V any] struct {
	max  int
	make func(key string) V

	mu    sync.Mutex
	items map[string]*entry[V]
	root  entry[V] // sentinel: root.next is the most recently used entry, root.prev the least
}

// New returns a map that keeps at most max keys and makes the value of a new key with make.
// It panics if max is not positive or make is nil.
func New[V any](max int, make func(key string) V) *Map[V] {
	if max <= 0 {
		panic("keyed: max must be positive")
	}
	if make == nil {
		panic("keyed: make is nil")
	}
	m := &Map[V]{max: max, make: make, items: map[string]*entry[V]{}}
	m.root.next, m.root.prev = &m.root, &m.root
	return m
}

// Get returns the value of key and marks it the most recently used. A key not in the map gets
// a new value from make, evicting the least recently used key if the map is full; an evicted
// key gets a fresh value when it comes back.
//
// make is called with the map's lock held, so a key's value is made once while the key stays
// in the map, and make must not use the map. A hit allocates nothing.
func (m *Map[V]) Get(key string) V {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.items[key]; ok {
		if m.root.next != e {
			m.unlink(e)
			m.pushFront(e)
		}
		return e.val
	}
	val := m.make(key)
	var e *entry[V]
	if len(m.items) >= m.max {
		e = m.root.prev // reuse the evicted entry
		m.unlink(e)
		delete(m.items, e.key)
	} else {
		e = new(entry[V])
	}
	e.key, e.val = key, val
	m.items[key] = e
	m.pushFront(e)
	return val
}

// Len returns the number of keys in the map, at most its max.
func (m *Map[V]) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.items)
}

func (m *Map[V]) unlink(e *entry[V]) {
	e.prev.next = e.next
	e.next.prev = e.prev
	e.prev, e.next = nil, nil
}

func (m *Map[V]) pushFront(e *entry[V]) {
	e.prev = &m.root
	e.next = m.root.next
	m.root.next.prev = e
	m.root.next = e
}
