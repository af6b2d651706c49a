package bench

import (
	"context"
	"iter"
	"sync"

	"github.com/alitto/pond/v2"
	dhpipeline "github.com/deliveryhero/pipeline/v2"
	"github.com/destel/rill"
	"github.com/reugn/go-streams/extension"
	"github.com/reugn/go-streams/flow"
	"github.com/sourcegraph/conc/pool"
	"github.com/sourcegraph/conc/stream"
)

// The peers, each written the way its documentation suggests. Where a library has no notion
// of a bounded queue between stages, the comment says what stands in for capacity 64.

// firstErr keeps the first error reported from any goroutine.
type firstErr struct {
	once sync.Once
	err  error
}

func (f *firstErr) set(err error) { f.once.Do(func() { f.err = err }) }

// pond (github.com/alitto/pond/v2): one pool per stage (max concurrency 4, bounded queue of
// 64 tasks, blocking submission), and a one-worker pool as the sink. A stage's task computes
// its value and submits the next stage's task. Pools are stopped in order once the source is
// done: when pool i has drained, nothing can submit to pool i+1 any more.
func buildPond[T any](sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
	return func() error {
		var fe firstErr
		var pools [4]pond.Pool
		for i := range 3 {
			pools[i] = pond.NewPool(sh.workers[i], pond.WithQueueSize(sh.capacity))
		}
		pools[3] = pond.NewPool(1, pond.WithQueueSize(sh.capacity))
		var submit [4]func(T)
		submit[3] = func(x T) {
			if err := pools[3].Go(func() { sink(x) }); err != nil {
				fe.set(err)
			}
		}
		for i := 2; i >= 0; i-- {
			p, f, next := pools[i], sh.fn[i], submit[i+1]
			submit[i] = func(x T) {
				if err := p.Go(func() { next(f(x)) }); err != nil {
					fe.set(err)
				}
			}
		}
		for v := range src {
			submit[0](v)
		}
		for _, p := range pools {
			p.StopAndWait()
		}
		return fe.err
	}, nil
}

// rill (github.com/destel/rill): a stream is a channel of rill.Try. The source writes
// rill.Wrap(v, nil) into a channel of capacity 64; each stage is rill.Map (unordered) or
// rill.OrderedMap with n = 4. Rill's outputs are unbuffered, so each stage's output goes
// through rill.Buffer(…, 64), rill's own way to give a stream capacity (one relay goroutine
// per stage). The sink is rill.ForEach with n = 1.
func buildRill[T any](ordered bool) builder[T] {
	return func(sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
		return func() error {
			in := make(chan rill.Try[T], sh.capacity)
			go func() {
				for v := range src {
					in <- rill.Wrap(v, nil)
				}
				close(in)
			}()
			s := (<-chan rill.Try[T])(in)
			for i := range sh.fn {
				f := sh.fn[i]
				g := func(x T) (T, error) { return f(x), nil }
				if ordered {
					s = rill.OrderedMap(s, sh.workers[i], g)
				} else {
					s = rill.Map(s, sh.workers[i], g)
				}
				s = rill.Buffer(s, sh.capacity)
			}
			return rill.ForEach(s, 1, func(x T) error {
				sink(x)
				return nil
			})
		}, nil
	}
}

// conc-pool (github.com/sourcegraph/conc/pool): conc has pools, not pipelines, so each stage is
// a dispatcher goroutine ranging over its input channel (capacity 64) and submitting one task
// per item to a pool.New().WithMaxGoroutines(4); the task sends its result on the next
// channel. When the input is closed the dispatcher waits for the pool and closes its output.
func concPoolStage[T any](in <-chan T, workers, capacity int, f func(T) T) <-chan T {
	out := make(chan T, capacity)
	go func() {
		p := pool.New().WithMaxGoroutines(workers)
		for x := range in {
			p.Go(func() { out <- f(x) })
		}
		p.Wait()
		close(out)
	}()
	return out
}

// conc-stream (github.com/sourcegraph/conc/stream): the same with stream.New().
// WithMaxGoroutines(4), which runs tasks concurrently and their callbacks in submission order,
// so this variant preserves order (compare rill-ordered).
func concStreamStage[T any](in <-chan T, workers, capacity int, f func(T) T) <-chan T {
	out := make(chan T, capacity)
	go func() {
		s := stream.New().WithMaxGoroutines(workers)
		for x := range in {
			s.Go(func() stream.Callback {
				y := f(x)
				return func() { out <- y }
			})
		}
		s.Wait()
		close(out)
	}()
	return out
}

func buildConc[T any](stageFn func(in <-chan T, workers, capacity int, f func(T) T) <-chan T) builder[T] {
	return func(sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
		return func() error {
			in := make(chan T, sh.capacity)
			go func() {
				for v := range src {
					in <- v
				}
				close(in)
			}()
			c := (<-chan T)(in)
			for i := range sh.fn {
				c = stageFn(c, sh.workers[i], sh.capacity, sh.fn[i])
			}
			for v := range c {
				sink(v)
			}
			return nil
		}, nil
	}
}

// gostreams (github.com/reugn/go-streams): extension.NewChanSource over a chan any of capacity
// 64, three flow.NewMap(f, 4) joined with Via, and To(extension.NewChanSink) over a chan any of
// capacity 64 that the caller drains. go-streams has no capacity option for flows: their
// channels are unbuffered, and Via adds a relay goroutine between flows. Values travel as any.
func buildGoStreams[T any](sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
	return func() error {
		in := make(chan any, sh.capacity)
		out := make(chan any, sh.capacity)
		go func() {
			for v := range src {
				in <- v
			}
			close(in)
		}()
		go func() {
			extension.NewChanSource(in).
				Via(flow.NewMap(sh.fn[0], sh.workers[0])).
				Via(flow.NewMap(sh.fn[1], sh.workers[1])).
				Via(flow.NewMap(sh.fn[2], sh.workers[2])).
				To(extension.NewChanSink(out))
		}()
		for v := range out {
			sink(v.(T))
		}
		return nil
	}, nil
}

// deliveryhero (github.com/deliveryhero/pipeline/v2): each stage is
// pipeline.ProcessConcurrently(ctx, 4, pipeline.NewProcessor(process, cancel), in), which
// starts a goroutine per item under a semaphore of 4. Its output is unbuffered, so it goes
// through pipeline.Buffer(64, …). The source is a channel of capacity 64; the caller drains
// the last stage.
func buildDeliveryHero[T any](sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
	return func() error {
		ctx := context.Background()
		var fe firstErr
		in := make(chan T, sh.capacity)
		go func() {
			for v := range src {
				in <- v
			}
			close(in)
		}()
		c := (<-chan T)(in)
		for i := range sh.fn {
			f := sh.fn[i]
			proc := dhpipeline.NewProcessor(
				func(_ context.Context, x T) (T, error) { return f(x), nil },
				func(_ T, err error) { fe.set(err) })
			c = dhpipeline.Buffer(sh.capacity, dhpipeline.ProcessConcurrently(ctx, sh.workers[i], proc, c))
		}
		for v := range c {
			sink(v)
		}
		return fe.err
	}, nil
}
