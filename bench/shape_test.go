package bench

import (
	"flag"
	"fmt"
	"iter"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The shape shared by every benchmark: three stages, each x+1 (or a 1 ms sleep then x+1 for
// stage 2 of the I/O shape), a source and a single sink.
const (
	cpuWorkers  = 4  // workers per stage
	cpuCapacity = 64 // capacity of each stage's input (and of the sink's)
)

var slowBudget = flag.Duration("slowbudget", 2*time.Minute,
	"BenchmarkIO and BenchmarkLatency skip a run whose b.N would take longer than this (e.g. under -benchtime=2000x)")

// shape is what a variant must build: three stages with their own worker counts and
// functions, every queue or channel of the given capacity.
type shape[T any] struct {
	workers  [3]int
	capacity int
	fn       [3]func(T) T
}

// builder prepares one run of a variant: everything that may be built before the timer starts
// is built here, and run does the rest and returns when every item has reached the sink.
// sink is always called from one goroutine at a time, and every call happens before run
// returns.
type builder[T any] func(sh shape[T], src iter.Seq[T], sink func(T)) (run func() error, err error)

type variant[T any] struct {
	name  string
	build builder[T]
}

func inc(x int) int { return x + 1 }

// cpuShape is the CPU-bound shape: x+1 three times, 4 workers per stage, capacity 64.
func cpuShape() shape[int] {
	return shape[int]{
		workers:  [3]int{cpuWorkers, cpuWorkers, cpuWorkers},
		capacity: cpuCapacity,
		fn:       [3]func(int) int{inc, inc, inc},
	}
}

// counting yields 0, 1, …, n-1 without materialising them.
func counting(n int) iter.Seq[int] {
	return func(yield func(int) bool) {
		for i := range n {
			if !yield(i) {
				return
			}
		}
	}
}

// wantSum is the sum of counting(n) after three stages of x+1.
func wantSum(n int) int64 {
	m := int64(n)
	return m*(m-1)/2 + 3*m
}

// usage measures what the timed part of a benchmark cost, all goroutines together: heap
// allocations (like b.ReportAllocs, but reported per item) and, where the platform tells, the
// process's CPU time (user and system).
type usage struct {
	mallocs uint64
	cpu     time.Duration
	cpuOK   bool
}

func readUsage() usage {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	cpu, ok := processCPU()
	return usage{mallocs: m.Mallocs, cpu: cpu, cpuOK: ok}
}

// reportPerItem reports, per item processed in the timed part since start: ns/item (wall time),
// allocs/item and cpu-ns/item. cpu-ns/item against ns/item shows how much of the processors a
// variant kept busy; in the I/O shape it is the cost per item that bound-% falls with, whatever
// the machine's timers did.
func reportPerItem(b *testing.B, items int, start usage) {
	end := readUsage()
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(items), "ns/item")
	b.ReportMetric(float64(end.mallocs-start.mallocs)/float64(items), "allocs/item")
	if start.cpuOK && end.cpuOK {
		b.ReportMetric(float64((end.cpu-start.cpu).Nanoseconds())/float64(items), "cpu-ns/item")
	}
}

// plannedOps returns the b.N that -test.benchtime=Nx asks for, or 0 when the benchtime is a
// duration (then the testing package itself keeps the run near that duration).
func plannedOps() int {
	f := flag.Lookup("test.benchtime")
	if f == nil {
		return 0
	}
	s, ok := strings.CutSuffix(f.Value.String(), "x")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return 0
	}
	return n
}

// overBudget reports whether the ops planned for a slow benchmark (b.N, or the N of
// -benchtime=Nx) would take longer than -slowbudget, and why. Callers skip such a run, but
// only after a first op (b.N == 1) has run and been checked, so that a quick smoke run such
// as -benchtime=2000x still exercises every benchmark.
func overBudget(b *testing.B, perOp time.Duration) (bool, string) {
	n := max(b.N, plannedOps())
	if est := time.Duration(n) * perOp; n > 1 && est > *slowBudget {
		return true, fmt.Sprintf("%d ops of ~%v each would take ~%v, over -slowbudget=%v: ran one op as a check and skipped the rest; use -benchtime=Nx with a small N (run.sh does)",
			n, perOp.Round(time.Millisecond), est.Round(time.Second), *slowBudget)
	}
	return false, ""
}
