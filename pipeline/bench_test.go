package pipeline_test

import (
	"context"
	"iter"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/stage"
)

func count(n int) iter.Seq[int] {
	return func(yield func(int) bool) {
		for i := range n {
			if !yield(i) {
				return
			}
		}
	}
}

// reportPerItem reports ns/item and allocs/item for a benchmark whose op is one item.
func reportPerItem(b *testing.B, before runtime.MemStats) {
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N), "ns/item")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/float64(b.N), "allocs/item")
}

// BenchmarkHandOff is the hot path: three x+1 stages of 4 workers with inputs of 64, against
// the same shape written by hand with goroutines and channels. One op is one item.
func BenchmarkHandOff(b *testing.B) {
	const workers, capacity = 4, 64
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		b.ResetTimer()
		src := make(chan int, capacity)
		feed := src
		go func() {
			for i := range b.N {
				feed <- i
			}
			close(feed)
		}()
		for range 3 {
			in := src
			out := make(chan int, capacity)
			var wg sync.WaitGroup
			for range workers {
				wg.Go(func() {
					for x := range in {
						out <- x + 1
					}
				})
			}
			go func() { wg.Wait(); close(out) }()
			src = out
		}
		sum := 0
		for x := range src {
			sum += x
		}
		if want := b.N*(b.N-1)/2 + 3*b.N; sum != want {
			b.Fatalf("sum %d, want %d", sum, want)
		}
		reportPerItem(b, before)
	})
	b.Run("sluice", func(b *testing.B) { benchSluiceHandOff(b, workers, capacity, false) })
	// Every item carries an acknowledgement, as from a broker: the ack path costs no allocation
	// beyond the item's tracker.
	b.Run("sluice-acked", func(b *testing.B) { benchSluiceHandOff(b, workers, capacity, true) })
}

// ackedSource feeds 0..n-1, each item with an Ack that counts it.
type ackedSource struct {
	n     int
	acked *atomic.Int64
}

func (s ackedSource) Emit(_ context.Context, admit pipeline.Admit[int]) error {
	ack := func(pipeline.Outcome) { s.acked.Add(1) }
	for i := range s.n {
		if err := admit(pipeline.Item[int]{Value: i, Ack: ack}); err != nil {
			return err
		}
	}
	return nil
}

func benchSluiceHandOff(b *testing.B, workers, capacity int, acked bool) {
	inc := func(_ context.Context, x int) (int, error) { return x + 1, nil }
	sum := 0
	flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.Map("a", inc, stage.Workers(workers), stage.Capacity(capacity))),
		stage.Map("b", inc, stage.Workers(workers), stage.Capacity(capacity))),
		stage.Map("c", inc, stage.Workers(workers), stage.Capacity(capacity))),
		stage.Sink("sum", func(_ context.Context, x int) error { sum += x; return nil }, stage.Workers(1), stage.Capacity(capacity)))
	p, err := pipeline.New("bench", flow, pipeline.WithDLQ(dlq.NewMemory()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	var src pipeline.Source[int] = pipeline.FromSeq(count(b.N))
	var acks atomic.Int64
	if acked {
		src = ackedSource{n: b.N, acked: &acks}
	}
	if _, err := p.Run(context.Background(), src); err != nil {
		b.Fatal(err)
	}
	if want := b.N*(b.N-1)/2 + 3*b.N; sum != want {
		b.Fatalf("sum %d, want %d", sum, want)
	}
	if acked && acks.Load() != int64(b.N) {
		b.Fatalf("%d acks, want %d", acks.Load(), b.N)
	}
	reportPerItem(b, before)
}

// BenchmarkShortRun is the fixed cost of a run, what a service that runs a pipeline per request
// pays each time: one op is one run of 64 items through the I/O shape's stages (4, 64 and 4
// workers, inputs of 64) into a one-worker sink, with a memory DLQ; the pipeline is built once.
func BenchmarkShortRun(b *testing.B) {
	inc := func(_ context.Context, x int) (int, error) { return x + 1, nil }
	st := func(name string, workers int) *stage.Stage[int, int] {
		return stage.Map(name, inc, stage.Workers(workers), stage.Capacity(64))
	}
	var sum atomic.Int64
	sink := stage.Sink("sink", func(_ context.Context, x int) error { sum.Add(int64(x)); return nil },
		stage.Workers(1), stage.Capacity(64))
	flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](),
		st("s1", 4)), st("s2", 64)), st("s3", 4)), sink)
	p, err := pipeline.New("short", flow, pipeline.WithDLQ(dlq.NewMemory()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		rep, err := p.Run(context.Background(), pipeline.FromSeq(count(64)))
		if err != nil || rep.Delivered != 64 {
			b.Fatalf("delivered %d of 64: %v", rep.Delivered, err)
		}
	}
}

// BenchmarkBatch is a busy batch stage: items into batches of 64 on 4 workers, each batch
// summed, into a one-worker sink. One op is one item.
func BenchmarkBatch(b *testing.B) {
	sum := 0
	flow := pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.Batch("b", 64, time.Second, func(_ context.Context, xs []int) (int, error) {
			s := 0
			for _, x := range xs {
				s += x
			}
			return s, nil
		}, stage.Workers(4), stage.Capacity(256))),
		stage.Sink("sum", func(_ context.Context, x int) error { sum += x; return nil }, stage.Workers(1)))
	p, err := pipeline.New("bench", flow, pipeline.WithDLQ(dlq.NewMemory()))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	if _, err := p.Run(context.Background(), pipeline.FromSeq(count(b.N))); err != nil {
		b.Fatal(err)
	}
	if want := b.N * (b.N - 1) / 2; sum != want {
		b.Fatalf("sum %d, want %d", sum, want)
	}
	reportPerItem(b, before)
}
