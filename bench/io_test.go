package bench

import (
	"fmt"
	"iter"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

const (
	ioItems    = 20_000 // items per op: one op is one whole run
	ioWorkers2 = 64     // workers of the sleeping stage
	ioSleep    = time.Millisecond
	ioSamples  = 200 // sleeps measured to find what time.Sleep(1ms) really takes
)

// ioShape: stage 2 sleeps 1 ms before x+1 and has 64 workers; stages 1 and 3 are x+1 with 4.
func ioShape() shape[int] {
	sleepInc := func(x int) int {
		t := time.Now()
		time.Sleep(ioSleep)
		inRunSleep.Add(int64(time.Since(t)))
		inRunSleeps.Add(1)
		return x + 1
	}
	return shape[int]{
		workers:  [3]int{cpuWorkers, ioWorkers2, cpuWorkers},
		capacity: cpuCapacity,
		fn:       [3]func(int) int{inc, sleepInc, inc},
	}
}

var ioVariants = []variant[int]{
	{"hand", buildHand[int]},
	{"sluice", buildSluice[int]},
	{"rill-map", buildRill[int](false)},
	{"pond", buildPond[int]},
	{"conc-pool", buildConc(concPoolStage[int])},
}

// inRunSleep and inRunSleeps add up the sleeps of the sleeping stage during a run: what
// time.Sleep(1ms) really took there, with the pipeline around it.
var inRunSleep, inRunSleeps atomic.Int64

// measureSleep returns the mean duration of samples sequential time.Sleep(d) calls.
func measureSleep(d time.Duration, samples int) time.Duration {
	start := time.Now()
	for range samples {
		time.Sleep(d)
	}
	return time.Since(start) / time.Duration(samples)
}

// measureConcurrentSleep returns the mean duration of time.Sleep(d) when n goroutines sleep at
// once, each samples times: what a sleeping stage's workers see. It is only logged.
func measureConcurrentSleep(d time.Duration, n, samples int) time.Duration {
	var wg sync.WaitGroup
	var total atomic.Int64
	for range n {
		wg.Go(func() {
			for range samples {
				t := time.Now()
				time.Sleep(d)
				total.Add(int64(time.Since(t)))
			}
		})
	}
	wg.Wait()
	return time.Duration(total.Load() / int64(n*samples))
}

// BenchmarkIO measures how close each variant gets to the throughput that 64 sleeping workers
// allow. One op is one whole run of 20,000 items through a fresh pipeline (ns/op is per run;
// ns/item is also reported). The bound comes from Little's law: with 64 items in service at
// once, each taking what time.Sleep(1ms) really takes here (measured first, as the mean of 200
// sleeps), at most 64/sleep items can finish per second. items/s and bound-% (items/s as a
// percentage of that bound) are reported, and sleep-us, the measured sleep the bound rests on.
// busy-% is the same ratio with the mean sleep as measured inside the run (the sleeps of the
// sleeping stage, timed by the stage itself): the share of the time the pipeline kept its 64
// workers sleeping, apart from how much longer the machine's timers took under the load.
func BenchmarkIO(b *testing.B) {
	sleep := measureSleep(ioSleep, ioSamples)
	bound := float64(ioWorkers2) / sleep.Seconds()
	b.Logf("time.Sleep(%v) takes %v on average here (%d samples): bound = %d/%v = %.0f items/s; with %d goroutines sleeping at once it takes %v",
		ioSleep, sleep, ioSamples, ioWorkers2, sleep, bound, ioWorkers2, measureConcurrentSleep(ioSleep, ioWorkers2, 20))
	for _, v := range ioVariants {
		b.Run(v.name, func(b *testing.B) { benchIO(b, v.build, sleep, bound) })
	}
}

func benchIO(b *testing.B, build builder[int], sleep time.Duration, bound float64) {
	over, why := overBudget(b, time.Duration(float64(ioItems)/bound*float64(time.Second)))
	if over && b.N > 1 {
		b.Skip(why)
	}
	sums := make([]int64, b.N)
	runs := make([]func() error, b.N)
	for i := range runs {
		run, err := build(ioShape(), counting(ioItems), func(x int) { sums[i] += int64(x) })
		if err != nil {
			b.Fatal(err)
		}
		runs[i] = run
	}
	b.ReportAllocs()
	inRunSleep.Store(0)
	inRunSleeps.Store(0)
	start := readUsage()
	b.ResetTimer()
	for _, run := range runs {
		if err := run(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	items := b.N * ioItems
	reportPerItem(b, items, start)
	for i, s := range sums {
		if want := wantSum(ioItems); s != want {
			b.Fatalf("run %d: sum %d, want %d", i, s, want)
		}
	}
	perSec := float64(items) / b.Elapsed().Seconds()
	b.ReportMetric(perSec, "items/s")
	b.ReportMetric(perSec/bound*100, "bound-%")
	// The same bound with the sleep as measured inside the run: how busy the pipeline kept its 64
	// sleeping workers, whatever the machine's timers did meanwhile.
	if n := inRunSleeps.Load(); n > 0 {
		inRun := time.Duration(inRunSleep.Load() / n)
		b.ReportMetric(perSec/(float64(ioWorkers2)/inRun.Seconds())*100, "busy-%")
	}
	b.ReportMetric(float64(sleep.Nanoseconds())/1e3, "sleep-us") // the measured sleep behind the bound
	if over {
		b.Skip(why)
	}
}

// BenchmarkIOExtraCPU is BenchmarkIO's hand-written variant with extra CPU work per item in the
// sleeping stage (a busy loop of 0, 1, 2 and 4 µs after each sleep): how much of the bound a
// pipeline loses to its own cost per item when 64 sleepers share two processors. Goroutines
// whose timers fire together queue for a processor, and each one's work delays the rest.
func BenchmarkIOExtraCPU(b *testing.B) {
	sleep := measureSleep(ioSleep, ioSamples)
	bound := float64(ioWorkers2) / sleep.Seconds()
	for _, extra := range []time.Duration{0, time.Microsecond, 2 * time.Microsecond, 4 * time.Microsecond} {
		b.Run(fmt.Sprintf("hand+%dus", extra.Microseconds()), func(b *testing.B) {
			withExtra := func(sh shape[int], src iter.Seq[int], sink func(int)) (func() error, error) {
				f := sh.fn[1]
				sh.fn[1] = func(x int) int {
					y := f(x)
					for t := time.Now(); time.Since(t) < extra; {
					}
					return y
				}
				return buildHand(sh, src, sink)
			}
			benchIO(b, withExtra, sleep, bound)
		})
	}
}
