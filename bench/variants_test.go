package bench

import (
	"testing"
	"time"
)

// TestVariants runs every variant of every benchmark on a few items and checks that nothing
// is lost or duplicated: a quick check for CI (go test ./... in bench/) and for -race.
func TestVariants(t *testing.T) {
	for _, v := range cpuVariants {
		t.Run("cpu/"+v.name, func(t *testing.T) {
			t.Parallel()
			for _, n := range []int{0, 1, 17, 5000} {
				var sum int64
				run, err := v.build(cpuShape(), counting(n), func(x int) { sum += int64(x) })
				if err != nil {
					t.Fatal(err)
				}
				if err := run(); err != nil {
					t.Fatal(err)
				}
				if want := wantSum(n); sum != want {
					t.Fatalf("n=%d: sum %d, want %d", n, sum, want)
				}
			}
		})
	}
	for _, v := range ioVariants {
		t.Run("io/"+v.name, func(t *testing.T) {
			t.Parallel()
			const n = 300
			var sum int64
			run, err := v.build(ioShape(), counting(n), func(x int) { sum += int64(x) })
			if err != nil {
				t.Fatal(err)
			}
			if err := run(); err != nil {
				t.Fatal(err)
			}
			if want := wantSum(n); sum != want {
				t.Fatalf("sum %d, want %d", sum, want)
			}
		})
	}
	for _, v := range latencyVariants {
		t.Run("latency/"+v.name, func(t *testing.T) {
			t.Parallel()
			const n = 100
			var got []latItem
			base := time.Now()
			run, err := v.build(latencyShape(), paced(n, latencyInterval, base), func(x latItem) { got = append(got, x) })
			if err != nil {
				t.Fatal(err)
			}
			if err := run(); err != nil {
				t.Fatal(err)
			}
			if len(got) != n {
				t.Fatalf("%d items arrived, want %d", len(got), n)
			}
			seen := make([]bool, n)
			for _, x := range got {
				if x.v != x.seq+3 || seen[x.seq] {
					t.Fatalf("item %+v: value or duplicate wrong", x)
				}
				seen[x.seq] = true
			}
		})
	}
}
