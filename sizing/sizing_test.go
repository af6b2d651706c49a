package sizing

import (
	"context"
	"errors"
	"math"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestLittlesLaw(t *testing.T) {
	for _, tc := range []struct {
		rate    float64
		latency time.Duration
		want    int
	}{
		{100, 10 * time.Millisecond, 1},
		{100, 50 * time.Millisecond, 5},
		{1000, 50 * time.Millisecond, 50},
		{1000, 50*time.Millisecond + time.Nanosecond, 51},
		{250, 30 * time.Millisecond, 8}, // 7.5
		{0.1, 10 * time.Second, 1},
		{0.3, 10 * time.Second, 3},
		{1e6, time.Microsecond, 1},
		{3, time.Second / 3, 1},                       // 0.999999999
		{1, 2000*time.Second + time.Nanosecond, 2001}, // 2000.000000001: a real fraction, not a rounding error
		{2, 3600*time.Second + time.Nanosecond, 7201},
		{1000.0000000001, time.Second, 1001},
		{10, 2 * time.Millisecond, 1},
		{0, time.Second, 1},
		{-5, time.Second, 1},
		{math.NaN(), time.Second, 1},
		{100, 0, 1},
		{100, -time.Second, 1},
		{math.Inf(1), time.Second, math.MaxInt},
		{1e300, time.Hour, math.MaxInt},
	} {
		assert.Equal(t, tc.want, LittlesLaw(tc.rate, tc.latency), "rate %v, latency %v", tc.rate, tc.latency)
	}
}

func TestCoresFormula(t *testing.T) {
	for _, tc := range []struct {
		cores         int
		wait, compute time.Duration
		want          int
	}{
		{4, 0, 10 * time.Millisecond, 4},
		{4, 90 * time.Millisecond, 10 * time.Millisecond, 40},
		{8, 50 * time.Millisecond, 100 * time.Millisecond, 12},
		{2, 10 * time.Millisecond, 3 * time.Millisecond, 9}, // 2 × 13/3 = 8.67
		{1, 1, 3, 2}, // 4/3
		{3, time.Second, time.Second, 6},
		{4, -time.Second, time.Second, 4},
		{4, time.Second, 0, 4},
		{1, math.MaxInt64, 1, math.MaxInt},
		{1 << 40, time.Hour, time.Nanosecond, math.MaxInt},
		{0, 0, time.Second, runtime.GOMAXPROCS(0)},
		{-1, time.Second, time.Second, 2 * runtime.GOMAXPROCS(0)},
	} {
		assert.Equal(t, tc.want, CoresFormula(tc.cores, tc.wait, tc.compute), "cores %d, wait %v, compute %v", tc.cores, tc.wait, tc.compute)
	}
}

func sleepFor(d time.Duration) func(ctx context.Context, _ int) error {
	return func(ctx context.Context, _ int) error {
		time.Sleep(d)
		return nil
	}
}

func TestSweepThroughputIsProportionalToSize(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inputs := make([]int, 160)
		points, err := Sweep(context.Background(), sleepFor(10*time.Millisecond), inputs, []int{1, 2, 4, 8})
		require.NoError(t, err)
		ms := 10 * time.Millisecond
		assert.Equal(t, []Point{
			{Workers: 1, Items: 160, Elapsed: 1600 * time.Millisecond, Throughput: 100, P50: ms, P95: ms, P99: ms},
			{Workers: 2, Items: 160, Elapsed: 800 * time.Millisecond, Throughput: 200, P50: ms, P95: ms, P99: ms},
			{Workers: 4, Items: 160, Elapsed: 400 * time.Millisecond, Throughput: 400, P50: ms, P95: ms, P99: ms},
			{Workers: 8, Items: 160, Elapsed: 200 * time.Millisecond, Throughput: 800, P50: ms, P95: ms, P99: ms},
		}, points)
	})
}

func TestSweepFindsTheKneeOfALimitedResource(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// The dependency serves 3 calls at a time, each in 10ms; more workers only queue.
		sem := make(chan struct{}, 3)
		fn := func(ctx context.Context, _ int) error {
			sem <- struct{}{}
			time.Sleep(10 * time.Millisecond)
			<-sem
			return nil
		}
		points, err := Sweep(context.Background(), fn, make([]int, 120), []int{1, 2, 3, 4, 6})
		require.NoError(t, err)
		var tp []float64
		for _, p := range points {
			tp = append(tp, p.Throughput)
		}
		assert.Equal(t, []float64{100, 200, 300, 300, 300}, tp)
		assert.Equal(t, 10*time.Millisecond, points[2].P99)
		assert.Equal(t, 20*time.Millisecond, points[4].P99, "with 6 workers, half the calls wait a turn")
		assert.Equal(t, 3, Knee(points, 0.05).Workers)
	})
}

func TestSweepLatencyQuantilesAndErrors(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		inputs := make([]int, 100)
		for i := range inputs {
			inputs[i] = i + 1
		}
		fn := func(ctx context.Context, in int) error {
			time.Sleep(time.Duration(in) * time.Millisecond)
			switch {
			case in%10 == 0:
				return errors.New("failed")
			case in == 33:
				panic("boom")
			}
			return nil
		}
		points, err := Sweep(context.Background(), fn, inputs, []int{1, 100})
		require.NoError(t, err)
		require.Len(t, points, 2)
		for _, p := range points {
			assert.Equal(t, 100, p.Items)
			assert.Equal(t, 11, p.Errors, "10 errors and a panic")
			assert.Equal(t, 50*time.Millisecond, p.P50)
			assert.Equal(t, 95*time.Millisecond, p.P95)
			assert.Equal(t, 99*time.Millisecond, p.P99)
		}
		assert.Equal(t, 5050*time.Millisecond, points[0].Elapsed)
		assert.Equal(t, 100*time.Millisecond, points[1].Elapsed)
		assert.Equal(t, float64(1000), points[1].Throughput)
	})
}

func TestSweepStopsWhenTheContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var calls atomic.Int32
		fn := func(ctx context.Context, _ int) error {
			if calls.Add(1) == 15 { // in the second size's run
				cancel()
			}
			select {
			case <-time.After(time.Second):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		start := time.Now()
		points, err := Sweep(ctx, fn, make([]int, 10), []int{1, 2, 4})
		require.ErrorIs(t, err, context.Canceled)
		require.Len(t, points, 1, "only the completed size is reported")
		assert.Equal(t, 10*time.Second, points[0].Elapsed)
		assert.Equal(t, 12*time.Second, time.Since(start), "the second run stops at once: its calls are cancelled")
		assert.Less(t, calls.Load(), int32(20))

		points, err = Sweep(ctx, fn, make([]int, 10), []int{1})
		assert.ErrorIs(t, err, context.Canceled)
		assert.Empty(t, points)
	})
}

func TestSweepValidates(t *testing.T) {
	fn := func(context.Context, int) error { return nil }
	for _, tc := range []struct {
		name   string
		ctx    context.Context
		fn     func(context.Context, int) error
		inputs []int
		sizes  []int
		want   string
	}{
		{"nil fn", context.Background(), nil, []int{1}, []int{1}, "sizing: fn is nil; pass the function to measure"},
		{"no inputs", context.Background(), fn, nil, []int{1}, "sizing: no inputs; pass the items to run fn on"},
		{"no sizes", context.Background(), fn, []int{1}, nil, "sizing: no sizes; pass the pool sizes to measure, such as 1, 2, 4, 8"},
		{"bad sizes", context.Background(), fn, []int{1}, []int{1, 0, -3}, "sizing: sizes[1] is 0; a pool needs at least one worker\n" +
			"sizing: sizes[2] is -3; a pool needs at least one worker"},
		{"nil context", nil, fn, []int{1}, []int{1}, "sizing: the context is nil"}, //nolint:staticcheck // on purpose
	} {
		points, err := Sweep(tc.ctx, tc.fn, tc.inputs, tc.sizes)
		assert.EqualError(t, err, tc.want, tc.name)
		assert.Nil(t, points, tc.name)
	}
}

// curve is a synthetic sweep: throughput grows with size, then flattens, then degrades.
var curve = []Point{
	{Workers: 1, Items: 1000, Elapsed: 10 * time.Second, Throughput: 100, P50: 10 * time.Millisecond, P95: 12 * time.Millisecond, P99: 15 * time.Millisecond},
	{Workers: 2, Items: 1000, Elapsed: 5 * time.Second, Throughput: 200, P50: 10 * time.Millisecond, P95: 12 * time.Millisecond, P99: 15 * time.Millisecond},
	{Workers: 4, Items: 1000, Elapsed: 2600 * time.Millisecond, Throughput: 384.6, P50: 10400 * time.Microsecond, P95: 13 * time.Millisecond, P99: 16 * time.Millisecond},
	{Workers: 8, Items: 1000, Elapsed: 2 * time.Second, Throughput: 500, P50: 16 * time.Millisecond, P95: 21 * time.Millisecond, P99: 30 * time.Millisecond, Errors: 2},
	{Workers: 16, Items: 1000, Elapsed: 1960 * time.Millisecond, Throughput: 510.2, P50: 31 * time.Millisecond, P95: 45 * time.Millisecond, P99: 61 * time.Millisecond, Errors: 3},
	{Workers: 32, Items: 1000, Elapsed: 2100 * time.Millisecond, Throughput: 476.2, P50: 67 * time.Millisecond, P95: 90 * time.Millisecond, P99: 123456789 * time.Nanosecond, Errors: 9},
}

func TestKnee(t *testing.T) {
	assert.Equal(t, 8, Knee(curve, 0.05).Workers, "500 is within 5% of 510.2")
	assert.Equal(t, 16, Knee(curve, 0).Workers, "no tolerance: the best")
	assert.Equal(t, 16, Knee(curve, -1).Workers, "a negative tolerance counts as 0")
	assert.Equal(t, 16, Knee(curve, math.NaN()).Workers)
	assert.Equal(t, 16, Knee(curve, 0.01).Workers, "500 < 0.99 × 510.2 = 505.1")
	assert.Equal(t, 4, Knee(curve, 0.25).Workers)
	assert.Equal(t, 1, Knee(curve, 1).Workers)
	assert.Equal(t, 1, Knee(curve, 7).Workers, "a tolerance above 1 counts as 1")

	// Unordered points, and a duplicate size: the smallest size wins.
	shuffled := []Point{curve[4], curve[3], curve[5], curve[0], {Workers: 8, Throughput: 505}}
	assert.Equal(t, curve[3], Knee(shuffled, 0.05))

	assert.Equal(t, Point{}, Knee(nil, 0.05))
	nan := []Point{{Workers: 2, Throughput: math.NaN()}, {Workers: 1, Throughput: math.NaN()}}
	assert.Equal(t, 2, Knee(nan, 0.05).Workers, "nothing to compare: the first point")
	withNaN := []Point{{Workers: 1, Throughput: math.NaN()}, {Workers: 2, Throughput: 10}, {Workers: 4, Throughput: 10}}
	assert.Equal(t, 2, Knee(withNaN, 0).Workers)
}
