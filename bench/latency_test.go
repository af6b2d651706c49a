package bench

import (
	"iter"
	"slices"
	"testing"
	"time"
)

const (
	latencyItems    = 2000                   // items per op: one op is one whole run
	latencyInterval = 100 * time.Microsecond // one item every 100 µs (10,000 items/s)
)

// latItem carries its submit time (ns since base) to the sink.
type latItem struct {
	seq, v int
	t0     time.Duration
}

func latencyShape() shape[latItem] {
	f := func(x latItem) latItem { x.v++; return x }
	return shape[latItem]{
		workers:  [3]int{cpuWorkers, cpuWorkers, cpuWorkers},
		capacity: cpuCapacity,
		fn:       [3]func(latItem) latItem{f, f, f},
	}
}

var latencyVariants = []variant[latItem]{
	{"hand", buildHand[latItem]},
	{"sluice", buildSluice[latItem]},
}

// paced yields n items on the schedule start + i×every, stamping each with the time it is
// handed over. time.Sleep cannot wait less than about a millisecond here, so an item that is
// due while the source sleeps goes as soon as it wakes: the mean rate is one per interval, in
// small bursts (about ten per wake-up at 100 µs).
func paced(n int, every time.Duration, base time.Time) iter.Seq[latItem] {
	return func(yield func(latItem) bool) {
		start := time.Now()
		for i := range n {
			if d := time.Until(start.Add(time.Duration(i) * every)); d > 0 {
				time.Sleep(d)
			}
			if !yield(latItem{seq: i, v: i, t0: time.Since(base)}) {
				return
			}
		}
	}
}

// BenchmarkLatency measures the end-to-end latency of items under light load: one item every
// 100 µs through the three-stage CPU shape. Each item carries the time it was submitted; the
// sink records now − submit. One op is one run of 2,000 items; p50-us and p99-us are over all
// items of all ops. The added latency per stage is (p99 sluice − p99 hand)/3, computed by
// run.sh from the two sub-benchmarks.
func BenchmarkLatency(b *testing.B) {
	for _, v := range latencyVariants {
		b.Run(v.name, func(b *testing.B) { benchLatency(b, v.build) })
	}
}

func benchLatency(b *testing.B, build builder[latItem]) {
	over, why := overBudget(b, latencyItems*latencyInterval)
	if over && b.N > 1 {
		b.Skip(why)
	}
	base := time.Now()
	lats := make([]time.Duration, 0, b.N*latencyItems)
	runs := make([]func() error, b.N)
	for i := range runs {
		run, err := build(latencyShape(), paced(latencyItems, latencyInterval, base), func(x latItem) {
			lats = append(lats, time.Since(base)-x.t0)
		})
		if err != nil {
			b.Fatal(err)
		}
		runs[i] = run
	}
	b.ResetTimer()
	for _, run := range runs {
		if err := run(); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if len(lats) != b.N*latencyItems {
		b.Fatalf("%d items arrived, want %d", len(lats), b.N*latencyItems)
	}
	slices.Sort(lats)
	q := func(p float64) float64 {
		return float64(lats[min(len(lats)-1, int(p*float64(len(lats))))].Nanoseconds()) / 1e3
	}
	b.ReportMetric(q(0.50), "p50-us")
	b.ReportMetric(q(0.99), "p99-us")
	if over {
		b.Skip(why)
	}
}
