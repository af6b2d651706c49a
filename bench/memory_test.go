package bench

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"runtime/metrics"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var long = flag.Bool("long", false, "run the long tests (TestMemoryFlat)")

const (
	memFirst = 1_000_000  // first sample after this many items (and a logged one every 1M)
	memTotal = 10_000_000 // second sample after this many
	// memTolerance is how much the second sample may exceed (or fall short of) the first.
	memTolerance = 0.10
	// memHeapFloor: a live heap of a few MiB moves by more than 10% with the timing of a
	// worker's buffers and the GC's own bookkeeping, so differences up to 1 MiB always pass.
	memHeapFloor = 1 << 20
)

type memSample struct {
	items     int
	heapBytes uint64 // /memory/classes/heap/objects:bytes after a GC
	rssBytes  uint64 // resident set size from /proc/self/statm, after free memory is returned
}

func (s memSample) String() string {
	return fmt.Sprintf("after %d items: heap objects %.2f MiB, RSS %.2f MiB",
		s.items, float64(s.heapBytes)/(1<<20), float64(s.rssBytes)/(1<<20))
}

// sampleMemory is called from the sink, which stops taking items meanwhile: it first waits
// 100 ms so that the rest of the pipeline fills its queues and stops too (nothing allocates
// any more), then takes five readings, each after debug.FreeOSMemory (a GC that also returns
// free heap to the OS), and keeps the median. Without this the RSS of this ~6 MiB process
// swings by more than 10% with how much free heap the scavenger happens to hold, and a
// single reading can also dip while the scavenger releases pages.
func sampleMemory(items int) (memSample, error) {
	time.Sleep(100 * time.Millisecond)
	var heap, rss [5]uint64
	m := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	for i := range heap {
		debug.FreeOSMemory()
		metrics.Read(m)
		if m[0].Value.Kind() != metrics.KindUint64 {
			return memSample{}, fmt.Errorf("metric %s is not supported", m[0].Name)
		}
		r, err := readRSS()
		if err != nil {
			return memSample{}, err
		}
		heap[i], rss[i] = m[0].Value.Uint64(), r
	}
	slices.Sort(heap[:])
	slices.Sort(rss[:])
	return memSample{items: items, heapBytes: heap[len(heap)/2], rssBytes: rss[len(rss)/2]}, nil
}

// readRSS reads the resident set size: the second field of /proc/self/statm, in pages.
func readRSS() (uint64, error) {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return 0, fmt.Errorf("/proc/self/statm: unexpected %q", b)
	}
	pages, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil {
		return 0, err
	}
	return pages * uint64(os.Getpagesize()), nil
}

// within reports whether b is within tol of a, or within floor bytes of it.
func within(a, b uint64, tol float64, floor uint64) bool {
	d := max(a, b) - min(a, b)
	return d <= floor || float64(d) <= tol*float64(a)
}

// TestMemoryFlat checks that Sluice's memory does not grow with the number of items: 10M
// items go through the CPU shape (capacity 64) from an iterator source, and the sink samples
// the live heap (after a GC) and the RSS after 1M and after 10M items (see sampleMemory). Both
// must be within 10% of the first sample (the heap: or within 1 MiB). The samples taken every
// million items in between are logged. Run it with: go test -run TestMemoryFlat -long -v
func TestMemoryFlat(t *testing.T) {
	if !*long {
		t.Skip("long test: run with -long")
	}
	var samples []memSample
	var sampleErr error
	count := 0
	var sum int64
	sink := func(x int) {
		sum += int64(x)
		count++
		if count%memFirst == 0 {
			s, err := sampleMemory(count)
			if err != nil && sampleErr == nil {
				sampleErr = err
			}
			samples = append(samples, s)
		}
	}
	run, err := buildSluice(cpuShape(), counting(memTotal), sink)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := run(); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d items in %v (%d samples of about 0.1 s each included)",
		memTotal, time.Since(start).Round(time.Millisecond), memTotal/memFirst)
	if sampleErr != nil {
		t.Fatal(sampleErr)
	}
	if want := wantSum(memTotal); sum != want {
		t.Fatalf("sum %d, want %d", sum, want)
	}
	if len(samples) != memTotal/memFirst {
		t.Fatalf("%d samples taken, want %d", len(samples), memTotal/memFirst)
	}
	for _, s := range samples {
		t.Log(s)
	}
	a, b := samples[0], samples[len(samples)-1]
	t.Logf("change: heap %+.1f%% (%+d bytes), RSS %+.1f%% (%+d bytes)",
		pct(a.heapBytes, b.heapBytes), int64(b.heapBytes)-int64(a.heapBytes),
		pct(a.rssBytes, b.rssBytes), int64(b.rssBytes)-int64(a.rssBytes))
	if !within(a.heapBytes, b.heapBytes, memTolerance, memHeapFloor) {
		t.Errorf("live heap grew from %d to %d bytes: more than %.0f%% and more than %d bytes",
			a.heapBytes, b.heapBytes, memTolerance*100, memHeapFloor)
	}
	if !within(a.rssBytes, b.rssBytes, memTolerance, 0) {
		t.Errorf("RSS changed from %d to %d bytes: more than %.0f%%", a.rssBytes, b.rssBytes, memTolerance*100)
	}
}

func pct(a, b uint64) float64 { return (float64(b) - float64(a)) / float64(a) * 100 }
