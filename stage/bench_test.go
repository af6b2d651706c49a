package stage

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/retry"
)

// benchEnv is the environment of a run with nothing attached: no telemetry, dead letters
// dropped.
func benchEnv() *core.Env {
	return &core.Env{
		Pipeline:   "bench",
		Prefix:     "b-",
		Work:       context.Background(),
		Totals:     &core.Counters{},
		Logger:     slog.New(slog.DiscardHandler),
		DeadLetter: func(dlq.Record) error { return nil },
		Fail:       func(error) {},
		Failed:     func() bool { return false },
		Seq:        &atomic.Uint64{},
		Clock:      core.Clock{Epoch: time.Now()},
	}
}

// BenchmarkAttempt is the attempt loop on one goroutine: a worker of a middle stage works
// through batches of 32 items taken from its input queue, and its outputs are taken from the
// next stage's queue on the same goroutine. One op is one item. lean is a stage with the default
// policy (the short path of a first attempt; its worker claims each batch whole); guarded has a
// timeout, so every attempt goes through the full loop (a context with a deadline per attempt,
// the watchdog timer); retried fails each item's first attempt and succeeds on the second, with
// no backoff; slow calls a busy loop of 5µs, so every item goes through the slow path (timed
// one by one, its output passed on at once), and reports overhead-ns/item: the time outside the
// calls.
func BenchmarkAttempt(b *testing.B) {
	inc := func(_ context.Context, x int) (int, error) { return x + 1, nil }
	var calls int
	flaky := func(_ context.Context, x int) (int, error) {
		if calls++; calls%2 == 1 {
			return 0, errors.New("transient")
		}
		return x + 1, nil
	}
	noWait := retry.Policy{MaxAttempts: 2, InitialInterval: time.Nanosecond, MaxInterval: time.Nanosecond}
	var inCalls time.Duration
	slow := func(_ context.Context, x int) (int, error) {
		t := time.Now()
		for time.Since(t) < 5*time.Microsecond {
		}
		inCalls += time.Since(t)
		return x + 1, nil
	}
	for _, c := range []struct {
		name string
		st   *Stage[int, int]
	}{
		{"lean", Map("s", inc, Capacity(maxTake))},
		{"guarded", Map("s", inc, Capacity(maxTake), Timeout(time.Minute))},
		{"retried", Map("s", flaky, Capacity(maxTake), Retry(noWait))},
		{"slow", Map("s", slow, Capacity(maxTake))},
	} {
		b.Run(c.name, func(b *testing.B) {
			env := benchEnv()
			next := core.NewQueue[int](maxTake, 1, env.Clock)
			next.AddProducers(1)
			r := c.st.Bind(env, next)
			w := r.newWorker()
			for len(w.buf) < maxTake {
				w.grow() // as a busy worker's pops grow it
			}
			outs := make([]core.Envelope[int], maxTake)
			defer func() {
				if w.watch != nil {
					w.watch.Stop()
				}
			}()
			r.in.AddProducers(1)
			inCalls = 0
			batch := make([]core.Envelope[int], len(w.buf))
			release := 0
			b.ReportAllocs()
			b.ResetTimer()
			for n := 0; n < b.N; n += len(batch) {
				k := min(len(batch), b.N-n)
				for j := range k {
					batch[j] = core.Envelope[int]{V: j, M: core.Meta{Seq: uint64(n + j), Weight: 1}}
				}
				r.in.Push(nil, batch[:k])
				for r.in.Len() > 0 { // (a retried item's worker gives the items after it back)
					w.k, _ = r.in.Pop(w.buf, false, release, nil, nil)
					if !w.work(0) {
						b.Fatal("abandoned")
					}
					release = w.k
					for next.Len() > 0 {
						n, _ := next.Pop(outs, false, 0, nil, nil)
						next.Release(n)
					}
				}
				r.in.Release(release)
				release = 0
			}
			w.publish()
			if got := w.c.succeeded.Load(); got != int64(b.N) {
				b.Fatalf("%d items succeeded, want %d", got, b.N)
			}
			if inCalls > 0 {
				b.ReportMetric(float64(b.Elapsed()-inCalls)/float64(b.N), "overhead-ns/item")
			}
		})
	}
}
