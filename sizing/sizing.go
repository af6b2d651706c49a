// Package sizing helps choose the size of a stage's pool of workers.
//
// Two formulas give a starting point: LittlesLaw (workers = arrival rate × latency) for a pool
// that must keep up with a known rate, and CoresFormula (cores × (1 + wait/compute)) for a pool
// whose calls wait for I/O part of the time. Sweep then measures the real thing: it runs your
// function over the same inputs through a one-stage Sluice pipeline once per pool size, and
// reports throughput and latency quantiles per size. Knee picks the smallest size that gets
// (nearly) the best throughput; WriteTable and WriteSVG show the curve.
package sizing

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// LittlesLaw returns the workers needed to sustain arrivalRate items/s when each takes
// latency: ceil(rate × latency), at least 1. A rate or latency that is not positive gives 1;
// a result too large for an int gives math.MaxInt.
func LittlesLaw(arrivalRate float64, latency time.Duration) int {
	if !(arrivalRate > 0) || latency <= 0 {
		return 1
	}
	x := arrivalRate * float64(latency) / float64(time.Second)
	if x >= math.MaxInt { // +Inf included
		return math.MaxInt
	}
	// Absorb the rounding error of a product that should be a whole number (ceil(1.0000000001)
	// would be 2 workers): a few ulps, not more, or a real fraction is lost with it.
	x -= x * 0x1p-50
	return max(1, int(math.Ceil(x)))
}

// CoresFormula returns cores × (1 + wait/compute), rounded up, at least 1: the classic size of
// a pool whose calls spend compute on a CPU and wait (for I/O, a remote service) the rest of
// the time. cores ≤ 0 means runtime.GOMAXPROCS(0). A non-positive wait gives cores (the calls
// are CPU-bound); a non-positive compute gives cores too, since the ratio is unknown — use
// LittlesLaw for calls that only wait. A result too large for an int gives math.MaxInt.
func CoresFormula(cores int, wait, compute time.Duration) int {
	if cores <= 0 {
		cores = runtime.GOMAXPROCS(0)
	}
	if wait <= 0 || compute <= 0 {
		return cores
	}
	// ceil(cores × (compute + wait) / compute), exactly, in 128 bits.
	hi, lo := bits.Mul64(uint64(cores), uint64(compute)+uint64(wait))
	if hi >= uint64(compute) {
		return math.MaxInt
	}
	q, r := bits.Div64(hi, lo, uint64(compute))
	if r > 0 {
		q++
	}
	if q > math.MaxInt {
		return math.MaxInt
	}
	return int(q)
}

// Point is the measurement of one pool size in a Sweep.
type Point struct {
	// Workers is the pool size.
	Workers int
	// Items is the number of calls made: every input, once.
	Items int
	// Elapsed is the time the run took, from the first input handed to the pipeline to the
	// end of the run.
	Elapsed time.Duration
	// Throughput is Items / Elapsed, in items per second (0 if Elapsed is 0).
	Throughput float64
	// P50, P95 and P99 are quantiles of the latency of one call, measured around the function
	// (nearest rank: the smallest latency that at least that share of calls did not exceed).
	P50, P95, P99 time.Duration
	// Errors is the number of calls that returned an error or panicked.
	Errors int
}

// Sweep runs fn over the same inputs once per pool size in sizes, in order, and reports a
// Point per size, so that you can find the knee of the curve for your real workload.
//
// Each size gets a fresh one-stage pipeline: a stage.Map of fn with stage.Workers(n) and
// stage.Capacity(n), no retries (retry.NoRetry()), its failures dead-lettered into a
// dlq.NewMemory() that is thrown away after the run. fn is called once per input; its errors
// and panics are counted in Point.Errors and do not stop the sweep.
//
// If ctx ends, the current run is stopped at once (in-flight calls are cancelled) and Sweep
// returns the points of the sizes already measured with ctx's error. An error of the pipeline
// itself also stops the sweep.
func Sweep[T any](ctx context.Context, fn func(ctx context.Context, in T) error, inputs []T, sizes []int) ([]Point, error) {
	var errs []error
	if ctx == nil {
		errs = append(errs, errors.New("sizing: the context is nil"))
	}
	if fn == nil {
		errs = append(errs, errors.New("sizing: fn is nil; pass the function to measure"))
	}
	if len(inputs) == 0 {
		errs = append(errs, errors.New("sizing: no inputs; pass the items to run fn on"))
	}
	if len(sizes) == 0 {
		errs = append(errs, errors.New("sizing: no sizes; pass the pool sizes to measure, such as 1, 2, 4, 8"))
	}
	for i, n := range sizes {
		if n <= 0 {
			errs = append(errs, fmt.Errorf("sizing: sizes[%d] is %d; a pool needs at least one worker", i, n))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}

	points := make([]Point, 0, len(sizes))
	for _, n := range sizes {
		if err := ctx.Err(); err != nil {
			return points, err
		}
		pt, err := measure(ctx, fn, inputs, n)
		if err != nil {
			return points, err
		}
		points = append(points, pt)
	}
	return points, nil
}

// measure runs one pipeline of n workers over inputs.
func measure[T any](ctx context.Context, fn func(context.Context, T) error, inputs []T, n int) (Point, error) {
	var (
		mu        sync.Mutex
		latencies = make([]time.Duration, 0, len(inputs))
		failures  int
	)
	call := func(ctx context.Context, in T) (struct{}, error) {
		var err error
		returned := false
		start := time.Now()
		defer func() {
			d := time.Since(start)
			mu.Lock()
			latencies = append(latencies, d)
			if err != nil || !returned {
				failures++
			}
			mu.Unlock()
		}()
		err = fn(ctx, in)
		returned = true
		return struct{}{}, err
	}
	st := stage.Map("fn", call, stage.Workers(n), stage.Capacity(n), stage.Retry(retry.NoRetry()))
	p, err := pipeline.New(fmt.Sprintf("sizing-sweep-%d", n), pipeline.Then(pipeline.Input[T](), st),
		pipeline.WithDLQ(dlq.NewMemory()), pipeline.WithDrainTimeout(0))
	if err != nil {
		return Point{}, fmt.Errorf("sizing: %d workers: %w", n, err)
	}
	defer p.Close()
	start := time.Now()
	_, err = p.Run(ctx, pipeline.FromSlice(inputs))
	elapsed := time.Since(start)
	if err != nil {
		return Point{}, fmt.Errorf("sizing: %d workers: %w", n, err)
	}
	if err := ctx.Err(); err != nil {
		return Point{}, err // stopped part way: not a measurement
	}

	mu.Lock()
	defer mu.Unlock()
	slices.Sort(latencies)
	pt := Point{
		Workers: n,
		Items:   len(latencies),
		Elapsed: elapsed,
		P50:     quantile(latencies, 0.50),
		P95:     quantile(latencies, 0.95),
		P99:     quantile(latencies, 0.99),
		Errors:  failures,
	}
	if elapsed > 0 {
		pt.Throughput = float64(pt.Items) * float64(time.Second) / float64(elapsed)
	}
	return pt, nil
}

// quantile returns the q-quantile of sorted by the nearest-rank method.
func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(q*float64(len(sorted))-1e-9)) - 1 // 0.95 × 100 may be 95.00000000000001
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Knee returns the point of the smallest pool whose throughput is within tolerance of the
// best: at least (1 - tolerance) × the best throughput. A tolerance of 0.05 accepts 5% less
// than the best; it is clamped to [0, 1]. Knee returns the zero Point if points is empty.
func Knee(points []Point, tolerance float64) Point {
	if len(points) == 0 {
		return Point{}
	}
	if !(tolerance > 0) {
		tolerance = 0
	}
	tolerance = min(tolerance, 1)
	best := math.Inf(-1)
	for _, p := range points {
		if p.Throughput > best { // NaN never is
			best = p.Throughput
		}
	}
	if math.IsInf(best, -1) { // no throughput to compare
		return points[0]
	}
	threshold := best * (1 - tolerance)
	if tolerance == 1 {
		threshold = math.Inf(-1)
	}
	threshold = min(threshold, best) // the best point always qualifies
	var knee Point
	found := false
	for _, p := range points {
		if p.Throughput >= threshold && (!found || p.Workers < knee.Workers) {
			knee, found = p, true
		}
	}
	return knee
}
