package keyed

import (
	"fmt"
	"strconv"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// keys returns the keys from most to least recently used, checking the list's links.
func (m *Map[V]) keys(t *testing.T) []string {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for e := m.root.next; e != &m.root; e = e.next {
		require.Same(t, e, e.next.prev, "broken link after %q", e.key)
		require.Same(t, e, m.items[e.key], "list entry %q is not the map's", e.key)
		out = append(out, e.key)
	}
	require.Len(t, out, len(m.items), "the list and the map disagree")
	return out
}

// counter is a make function that counts its calls per key.
type counter struct {
	mu    sync.Mutex
	calls map[string]int
	n     int
}

func (c *counter) make(key string) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.calls == nil {
		c.calls = map[string]int{}
	}
	c.calls[key]++
	c.n++
	return key + "#" + strconv.Itoa(c.n)
}

func TestEvictionOrder(t *testing.T) {
	var c counter
	m := New(3, c.make)
	assert.Equal(t, "a#1", m.Get("a"))
	assert.Equal(t, "b#2", m.Get("b"))
	assert.Equal(t, "c#3", m.Get("c"))
	assert.Equal(t, []string{"c", "b", "a"}, m.keys(t))

	assert.Equal(t, "a#1", m.Get("a"), "a hit returns the value made first")
	assert.Equal(t, []string{"a", "c", "b"}, m.keys(t))

	assert.Equal(t, "d#4", m.Get("d")) // evicts b, the least recently used
	assert.Equal(t, []string{"d", "a", "c"}, m.keys(t))
	assert.Equal(t, 3, m.Len())

	assert.Equal(t, "c#3", m.Get("c"))
	assert.Equal(t, "c#3", m.Get("c"))
	assert.Equal(t, []string{"c", "d", "a"}, m.keys(t))

	assert.Equal(t, "b#5", m.Get("b"), "an evicted key comes back with a fresh value")
	assert.Equal(t, []string{"b", "c", "d"}, m.keys(t))
	assert.Equal(t, map[string]int{"a": 1, "b": 2, "c": 1, "d": 1}, c.calls)
}

func TestMaxBound(t *testing.T) {
	for _, max := range []int{1, 2, 10} {
		var c counter
		m := New(max, c.make)
		for i := range 100 {
			k := strconv.Itoa(i)
			m.Get(k)
			require.Equal(t, min(i+1, max), m.Len())
			keys := m.keys(t)
			require.Equal(t, k, keys[0])
			if i >= max {
				require.Equal(t, strconv.Itoa(i-max+1), keys[len(keys)-1])
			}
		}
		assert.Equal(t, 100, c.n)
	}
	one := New(1, func(k string) int { return len(k) })
	assert.Equal(t, 1, one.Get("a"))
	assert.Equal(t, 1, one.Get("a"))
	assert.Equal(t, 2, one.Get("bb"))
	assert.Equal(t, []string{"bb"}, one.keys(t))
}

func TestNoAllocationOnHit(t *testing.T) {
	m := New(4, func(k string) *int { n := len(k); return &n })
	keys := []string{"alpha", "beta", "gamma", "delta"}
	for _, k := range keys {
		m.Get(k)
	}
	i := 0
	assert.Zero(t, testing.AllocsPerRun(1000, func() {
		m.Get(keys[i%len(keys)])
		i++
	}))
}

func TestConcurrency(t *testing.T) {
	t.Run("bounded", func(t *testing.T) {
		var c counter
		m := New(16, c.make)
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Go(func() {
				for i := range 2000 {
					k := strconv.Itoa((g*7 + i*13) % 64)
					v := m.Get(k)
					assert.Contains(t, v, k+"#")
					assert.LessOrEqual(t, m.Len(), 16)
				}
			})
		}
		wg.Wait()
		assert.Equal(t, 16, m.Len())
		assert.Len(t, m.keys(t), 16)
	})
	t.Run("one value per key while it stays", func(t *testing.T) {
		var c counter
		m := New(100, c.make)
		var wg sync.WaitGroup
		got := make([][]string, 8)
		for g := range 8 {
			wg.Go(func() {
				for i := range 1000 {
					got[g] = append(got[g], m.Get(fmt.Sprint(i%100)))
				}
			})
		}
		wg.Wait()
		for k, n := range c.calls {
			assert.Equal(t, 1, n, "key %s made %d times", k, n)
		}
		for g := 1; g < 8; g++ {
			assert.Equal(t, got[0], got[g])
		}
	})
}

func TestNewPanics(t *testing.T) {
	assert.PanicsWithValue(t, "keyed: max must be positive", func() { New(0, func(string) int { return 0 }) })
	assert.PanicsWithValue(t, "keyed: make is nil", func() { New[int](1, nil) })
}

func TestMakePanicLeavesMapUsable(t *testing.T) {
	m := New(2, func(k string) string {
		if k == "bad" {
			panic("no")
		}
		return k
	})
	m.Get("a")
	m.Get("b")
	assert.Panics(t, func() { m.Get("bad") })
	assert.Equal(t, []string{"b", "a"}, m.keys(t), "nothing evicted for a value never made")
	assert.Equal(t, "c", m.Get("c"))
	assert.Equal(t, []string{"c", "b"}, m.keys(t))
}

func BenchmarkGetHit(b *testing.B) {
	m := New(1024, func(k string) int { return len(k) })
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "host-" + strconv.Itoa(i)
		m.Get(keys[i])
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m.Get(keys[i&1023])
		i++
	}
}
