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

// BenchmarkAttempt is the attempt loop on one goroutine, without hand-offs: a worker of a
// last stage (its outputs are delivered, not queued) works through batches of 32 items. One
// op is one item. lean is a stage with the default policy (the short path of a first
// attempt); guarded has a timeout, so every attempt goes through the full loop (a context
// with a deadline per attempt, the watchdog timer); retried fails each item's first attempt
// and succeeds on the second, with no backoff.
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
	for _, c := range []struct {
		name string
		st   *Stage[int, int]
	}{
		{"lean", Map("s", inc)},
		{"guarded", Map("s", inc, Timeout(time.Minute))},
		{"retried", Map("s", flaky, Retry(noWait))},
	} {
		b.Run(c.name, func(b *testing.B) {
			r := c.st.Bind(benchEnv(), nil)
			w := r.newWorker()
			defer func() {
				if w.watch != nil {
					w.watch.Stop()
				}
			}()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				k := i % len(w.buf)
				if k == 0 {
					for j := range w.buf {
						w.buf[j] = core.Envelope[int]{V: j, M: core.Meta{Seq: uint64(i + j), Weight: 1}}
					}
				}
				if !w.handle(k) {
					b.Fatal("abandoned")
				}
			}
			w.publish()
			if got := w.c.succeeded.Load(); got != int64(b.N) {
				b.Fatalf("%d items succeeded, want %d", got, b.N)
			}
		})
	}
}
