package hist

import (
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBucketsAreMonotonicAndTight(t *testing.T) {
	prev := -1
	for _, v := range []uint64{0, 1, 7, 8, 9, 15, 16, 17, 100, 1000, 1 << 20, 1<<40 + 12345, 1<<63 - 1} {
		i := index(v)
		require.Greater(t, i, prev-1, "index must not decrease at %d", v)
		require.Less(t, i, Buckets)
		mid := value(i)
		if v >= sub {
			assert.InEpsilon(t, float64(v), float64(mid), 0.07, "bucket of %d has middle %d", v, mid)
		} else {
			assert.Equal(t, v, mid)
		}
		prev = i
	}
}

func TestQuantiles(t *testing.T) {
	var a, b Hist
	r := rand.New(rand.NewPCG(1, 2))
	var all []time.Duration
	for i := range 20000 {
		d := time.Duration(r.ExpFloat64() * float64(time.Millisecond))
		all = append(all, d)
		if i%2 == 0 {
			a.Record(d)
		} else {
			b.Record(d)
		}
	}
	var s Snapshot
	s.Add(&a)
	s.Add(&b)
	require.EqualValues(t, 20000, s.Count())
	slices.Sort(all)
	for _, q := range []float64{0.5, 0.95, 0.99} {
		exact := all[int(q*float64(len(all)))-1]
		assert.InEpsilon(t, float64(exact), float64(s.Quantile(q)), 0.07, "q=%v", q)
	}
	assert.InEpsilon(t, float64(all[len(all)-1]), float64(s.Max()), 0.07)
	var empty Snapshot
	assert.Zero(t, empty.Quantile(0.5))
	a.Record(-time.Second)
	assert.EqualValues(t, 1, a.counts[0].Load())
}

func TestRecordDoesNotAllocate(t *testing.T) {
	var h Hist
	assert.Zero(t, testing.AllocsPerRun(100, func() { h.Record(time.Millisecond) }))
}

// Concurrent writers lose no count.
func TestConcurrentRecords(t *testing.T) {
	var h Hist
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20000 {
				h.Record(time.Microsecond)
			}
		})
	}
	wg.Wait()
	var s Snapshot
	s.Add(&h)
	assert.EqualValues(t, 8*20000, s.Count())
}
