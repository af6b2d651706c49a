package bench

import (
	"context"
	"iter"
	"sync"
)

// hand: plain goroutines and channels, the floor every other variant is compared to.

// handStage starts workers goroutines that apply f to everything received from in and send
// the results on a new channel of the given capacity, closed once every worker is done.
func handStage[A, B any](in <-chan A, workers, capacity int, f func(A) B) <-chan B {
	out := make(chan B, capacity)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for x := range in {
				out <- f(x)
			}
		})
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out
}

// buildHand: a source goroutine, three handStages, and the caller's goroutine as the sink.
func buildHand[T any](sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
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
			c = handStage(c, sh.workers[i], sh.capacity, sh.fn[i])
		}
		for v := range c {
			sink(v)
		}
		return nil
	}, nil
}

// hand-ctx: what a careful hand-written generic stage looks like once it honours a context and
// reports errors: every receive and send also selects on ctx.Done(), the function takes the
// context and returns an error, and the first error cancels the run.

// ctxStage is a context-aware stage: workers goroutines apply f, failures go to errc.
func ctxStage[A, B any](ctx context.Context, in <-chan A, workers, capacity int,
	f func(context.Context, A) (B, error), errc chan<- error) <-chan B {
	out := make(chan B, capacity)
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for {
				var x A
				select {
				case <-ctx.Done():
					return
				case v, ok := <-in:
					if !ok {
						return
					}
					x = v
				}
				y, err := f(ctx, x)
				if err != nil {
					select {
					case errc <- err:
					case <-ctx.Done():
					}
					return
				}
				select {
				case out <- y:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(out)
	}()
	return out
}

func buildHandCtx[T any](sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
	return func() error {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		errc := make(chan error, 1)
		in := make(chan T, sh.capacity)
		go func() {
			defer close(in)
			for v := range src {
				select {
				case in <- v:
				case <-ctx.Done():
					return
				}
			}
		}()
		c := (<-chan T)(in)
		for i := range sh.fn {
			f := sh.fn[i]
			c = ctxStage(ctx, c, sh.workers[i], sh.capacity,
				func(_ context.Context, x T) (T, error) { return f(x), nil }, errc)
		}
		// The sink: drain until the last stage closes its output, or stop at the first error.
		for {
			select {
			case v, ok := <-c:
				if !ok {
					select {
					case err := <-errc:
						return err
					default:
						return nil
					}
				}
				sink(v)
			case err := <-errc:
				cancel()
				return err
			}
		}
	}, nil
}

// hand-batch16 / hand-batch64: items move between stages in slices of size items. Each
// channel holds capacity/size slices (64/16 = 4, 64/64 = 1), so as many items can wait in a
// channel as in the other variants. Stages work on a slice in place and pass it on; the sink
// returns slices to a free list, so steady state allocates nothing per item.
func buildHandBatch(size int) builder[int] {
	return func(sh shape[int], src iter.Seq[int], sink func(int)) (func() error, error) {
		return func() error {
			chCap := max(1, sh.capacity/size)
			inFlight := 4*chCap + sh.workers[0] + sh.workers[1] + sh.workers[2] + 2
			free := make(chan []int, inFlight)
			get := func() []int {
				select {
				case s := <-free:
					return s[:0]
				default:
					return make([]int, 0, size)
				}
			}
			put := func(s []int) {
				select {
				case free <- s:
				default:
				}
			}
			in := make(chan []int, chCap)
			go func() {
				s := get()
				for v := range src {
					s = append(s, v)
					if len(s) == size {
						in <- s
						s = get()
					}
				}
				if len(s) > 0 {
					in <- s
				}
				close(in)
			}()
			c := (<-chan []int)(in)
			for i := range sh.fn {
				f := sh.fn[i]
				c = handStage(c, sh.workers[i], chCap, func(s []int) []int {
					for j, x := range s {
						s[j] = f(x)
					}
					return s
				})
			}
			for s := range c {
				for _, v := range s {
					sink(v)
				}
				put(s)
			}
			return nil
		}, nil
	}
}
