package sizing_test

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/sluicehq/sluice/sizing"
)

// Two starting points for a pool's size before measuring.
func ExampleLittlesLaw() {
	// 400 requests/s arrive, each takes 120ms: 48 calls are in flight on average.
	fmt.Println(sizing.LittlesLaw(400, 120*time.Millisecond))
	// 8 cores; each call computes for 5ms and waits 45ms for the database.
	fmt.Println(sizing.CoresFormula(8, 45*time.Millisecond, 5*time.Millisecond))
	// A CPU-bound call: one worker per core.
	fmt.Println(sizing.CoresFormula(8, 0, 5*time.Millisecond))
	// Output:
	// 48
	// 80
	// 8
}

// Choosing the knee of a measured curve, and printing the curve.
func ExampleKnee() {
	points := []sizing.Point{
		{Workers: 1, Items: 1000, Elapsed: 10 * time.Second, Throughput: 100, P50: 10 * time.Millisecond, P95: 12 * time.Millisecond, P99: 15 * time.Millisecond},
		{Workers: 4, Items: 1000, Elapsed: 2600 * time.Millisecond, Throughput: 384.6, P50: 10 * time.Millisecond, P95: 13 * time.Millisecond, P99: 16 * time.Millisecond},
		{Workers: 8, Items: 1000, Elapsed: 2 * time.Second, Throughput: 500, P50: 16 * time.Millisecond, P95: 21 * time.Millisecond, P99: 30 * time.Millisecond},
		{Workers: 16, Items: 1000, Elapsed: 1960 * time.Millisecond, Throughput: 510.2, P50: 31 * time.Millisecond, P95: 45 * time.Millisecond, P99: 61 * time.Millisecond},
	}
	_ = sizing.WriteTable(os.Stdout, points)
	fmt.Println("knee:", sizing.Knee(points, 0.05).Workers, "workers")
	// Output:
	// workers  items  elapsed  items/s   p50   p95   p99  errors
	//       1   1000      10s    100.0  10ms  12ms  15ms       0
	//       4   1000     2.6s    384.6  10ms  13ms  16ms       0
	//       8   1000       2s    500.0  16ms  21ms  30ms       0
	//      16   1000    1.96s    510.2  31ms  45ms  61ms       0
	// knee: 8 workers
}

// Measuring a function at several pool sizes. Here the function stands for a call to a
// service that serves 4 requests at a time, each in 10ms, so pools above 4 gain nothing.
// (The measured numbers vary from run to run, so the example prints no Output.)
func ExampleSweep() {
	service := make(chan struct{}, 4)
	call := func(ctx context.Context, id int) error {
		select {
		case service <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		defer func() { <-service }()
		time.Sleep(10 * time.Millisecond)
		return nil
	}
	ids := make([]int, 100)
	for i := range ids {
		ids[i] = i
	}
	points, err := sizing.Sweep(context.Background(), call, ids, []int{1, 2, 4, 8, 16})
	if err != nil {
		fmt.Println(err)
		return
	}
	_ = sizing.WriteTable(os.Stdout, points)
	fmt.Println("knee:", sizing.Knee(points, 0.05).Workers, "workers")

	f, err := os.CreateTemp("", "sweep-*.svg")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	_ = sizing.WriteSVG(f, points, "call: throughput and p95 by pool size")
}
