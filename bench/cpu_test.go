package bench

import "testing"

// cpuVariants are the sub-benchmarks of BenchmarkCPU, in the order they run.
var cpuVariants = []variant[int]{
	{"hand", buildHand[int]},
	{"hand-ctx", buildHandCtx[int]},
	{"hand-batch16", buildHandBatch(16)},
	{"hand-batch64", buildHandBatch(64)},
	{"sluice", buildSluice[int]},
	{"pond", buildPond[int]},
	{"rill-map", buildRill[int](false)},
	{"rill-ordered", buildRill[int](true)},
	{"conc-pool", buildConc(concPoolStage[int])},
	{"conc-stream", buildConc(concStreamStage[int])},
	{"gostreams", buildGoStreams[int]},
	{"deliveryhero", buildDeliveryHero[int]},
}

// BenchmarkCPU measures the per-item overhead of each variant: one op is one item, and b.N
// items go through one fresh pipeline whose stages do nothing but x+1. ns/op is therefore
// ns/item (also reported as ns/item), and allocs/item counts every heap allocation of the run
// (all goroutines) divided by b.N.
func BenchmarkCPU(b *testing.B) {
	for _, v := range cpuVariants {
		b.Run(v.name, func(b *testing.B) { benchCPU(b, v.build) })
	}
}

func benchCPU(b *testing.B, build builder[int]) {
	n := b.N
	var sum int64
	run, err := build(cpuShape(), counting(n), func(x int) { sum += int64(x) })
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	start := readUsage()
	b.ResetTimer()
	err = run()
	b.StopTimer()
	reportPerItem(b, n, start)
	if err != nil {
		b.Fatal(err)
	}
	if want := wantSum(n); sum != want {
		b.Fatalf("sum of %d items: got %d, want %d", n, sum, want)
	}
}
