package breaker

import (
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/retry"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// change is a state change seen by onChange, with the fake time it was seen at.
type change struct {
	At       time.Duration
	From, To State
}

// recorder records the changes of a breaker with their times since start.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	seen  []change
}

func newRecorder() *recorder { return &recorder{start: time.Now()} }

func (r *recorder) onChange(from, to State) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen = append(r.seen, change{time.Since(r.start), from, to})
}

func (r *recorder) changes() []change {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]change(nil), r.seen...)
}

func fail(b *Breaker, n int) {
	for range n {
		if b.Allow() == nil {
			b.Done(false)
		}
	}
}

func succeed(b *Breaker, n int) {
	for range n {
		if b.Allow() == nil {
			b.Done(true)
		}
	}
}

func requireRefused(t *testing.T, err error, msg string) {
	t.Helper()
	require.Error(t, err)
	assert.ErrorIs(t, err, ErrOpen)
	assert.Equal(t, "circuit_open", retry.ErrorType(err))
	assert.Equal(t, msg, err.Error())
}

func TestStateMachine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		b := New(Config{Window: 10 * time.Second, MinRequests: 4, FailureRate: 0.5, OpenFor: 5 * time.Second, Probes: 2}, rec.onChange)
		assert.Equal(t, Closed, b.State())

		// Closed: three failures are below MinRequests; the fourth call (a success) makes
		// 3/4 >= 0.5 and opens it at t=1s.
		fail(b, 3)
		time.Sleep(time.Second)
		assert.Equal(t, Closed, b.State())
		succeed(b, 1)
		assert.Equal(t, Open, b.State())

		// Open: every call refused, until exactly OpenFor has passed.
		requireRefused(t, b.Allow(), "circuit open")
		time.Sleep(5*time.Second - time.Nanosecond)
		assert.Equal(t, Open, b.State())
		requireRefused(t, b.Allow(), "circuit open")
		time.Sleep(time.Nanosecond)
		assert.Equal(t, HalfOpen, b.State(), "State must report half-open without waiting for Allow")

		// Half-open: Probes calls go, the next is refused even after one probe succeeded.
		require.NoError(t, b.Allow())
		require.NoError(t, b.Allow())
		requireRefused(t, b.Allow(), "circuit open: half-open, all probe calls in flight")
		b.Done(true)
		assert.Equal(t, HalfOpen, b.State())
		requireRefused(t, b.Allow(), "circuit open: half-open, all probe calls in flight")
		time.Sleep(time.Second) // t=7s
		b.Done(false)           // a probe fails: open again for OpenFor, until t=12s
		assert.Equal(t, Open, b.State())
		time.Sleep(5*time.Second - time.Nanosecond)
		requireRefused(t, b.Allow(), "circuit open")
		time.Sleep(time.Nanosecond) // t=12s

		// Half-open again; two successes close it, with an empty window.
		require.NoError(t, b.Allow())
		require.NoError(t, b.Allow())
		b.Done(true)
		time.Sleep(time.Second)
		b.Done(true) // t=13s
		assert.Equal(t, Closed, b.State())
		fail(b, 3) // would open with the failures of before, but the window was reset
		assert.Equal(t, Closed, b.State())
		fail(b, 1)
		assert.Equal(t, Open, b.State())

		assert.Equal(t, []change{
			{time.Second, Closed, Open},
			{6 * time.Second, Open, HalfOpen},
			{7 * time.Second, HalfOpen, Open},
			{12 * time.Second, Open, HalfOpen},
			{13 * time.Second, HalfOpen, Closed},
			{13 * time.Second, Closed, Open},
		}, rec.changes())
	})
}

func TestDefaults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Config{}, nil)
		assert.Equal(t, Config{Window: 10 * time.Second, MinRequests: 20, FailureRate: 0.5, OpenFor: 5 * time.Second, Probes: 1}, b.Config())
		fail(b, 19)
		assert.Equal(t, Closed, b.State(), "19 calls are below the default MinRequests")
		fail(b, 1)
		assert.Equal(t, Open, b.State())
		time.Sleep(5 * time.Second)
		require.NoError(t, b.Allow())
		requireRefused(t, b.Allow(), "circuit open: half-open, all probe calls in flight")
		b.Done(true)
		assert.Equal(t, Closed, b.State(), "one probe success closes with the default Probes")
	})
}

func TestMinRequestsAndRate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, tc := range []struct {
			name          string
			cfg           Config
			fails, succs  int
			want          State
			wantAfterMore State // after one more failure
		}{
			{"below min requests", Config{MinRequests: 10}, 9, 0, Closed, Open},
			{"rate below", Config{MinRequests: 10, FailureRate: 0.5}, 4, 6, Closed, Closed}, // 4/10 then 5/11
			{"rate exactly reached", Config{MinRequests: 10, FailureRate: 0.5}, 5, 5, Open, Open},
			{"rate one needs all failures", Config{MinRequests: 3, FailureRate: 1}, 2, 1, Closed, Closed},
			{"min requests 1", Config{MinRequests: 1, FailureRate: 1}, 0, 5, Closed, Closed},
			{"low rate", Config{MinRequests: 5, FailureRate: 0.1}, 0, 9, Closed, Open}, // 1/10
		} {
			b := New(tc.cfg, nil)
			succeed(b, tc.succs)
			fail(b, tc.fails)
			assert.Equal(t, tc.want, b.State(), tc.name)
			fail(b, 1)
			assert.Equal(t, tc.wantAfterMore, b.State(), tc.name+", one more failure")
		}
	})
}

func TestWindowSlides(t *testing.T) {
	cfg := Config{Window: 10 * time.Second, MinRequests: 4, FailureRate: 0.75}
	t.Run("failures count until their bucket leaves the window", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := New(cfg, nil)
			time.Sleep(500 * time.Millisecond)
			fail(b, 3) // bucket [0s, 1s)
			time.Sleep(9500*time.Millisecond - time.Nanosecond)
			succeed(b, 1) // t = 10s-1ns, bucket [9s, 10s): 3/4 failed
			assert.Equal(t, Open, b.State())
		})
	})
	t.Run("and not after", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := New(cfg, nil)
			time.Sleep(500 * time.Millisecond)
			fail(b, 3)
			time.Sleep(9500 * time.Millisecond)
			succeed(b, 1) // t = 10s: the failures of [0s, 1s) aged out, the window holds 1 call
			assert.Equal(t, Closed, b.State())
			fail(b, 2) // 2/3: below MinRequests
			assert.Equal(t, Closed, b.State())
			fail(b, 1) // 3/4
			assert.Equal(t, Open, b.State())
		})
	})
	t.Run("partly", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := New(cfg, nil)
			fail(b, 2) // t=0
			time.Sleep(5 * time.Second)
			fail(b, 1)    // t=5s
			succeed(b, 1) // 3/4
			assert.Equal(t, Open, b.State())

			b = New(cfg, nil) // the same, but the success comes when t=0's failures have aged out
			fail(b, 2)
			time.Sleep(5 * time.Second)
			fail(b, 1)
			time.Sleep(5 * time.Second) // t=10s: [0s,1s) gone, [5s,6s) kept
			succeed(b, 1)               // 1/2
			assert.Equal(t, Closed, b.State())
			fail(b, 1) // 2/3: below MinRequests
			assert.Equal(t, Closed, b.State())
			fail(b, 1) // 3/4
			assert.Equal(t, Open, b.State())
		})
	})
	t.Run("buckets are reused after a long idle time", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			b := New(cfg, nil)
			fail(b, 3)
			time.Sleep(time.Hour) // the same bucket index, 360 windows later
			succeed(b, 1)
			assert.Equal(t, Closed, b.State())
			fail(b, 2)
			assert.Equal(t, Closed, b.State(), "2/3 is below MinRequests: the old failures are gone")
		})
	})
}

func TestLateDonesAreDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := New(Config{MinRequests: 2, FailureRate: 1, OpenFor: time.Second, Probes: 1}, nil)
		// Two calls in flight while closed; a third and fourth fail and open the breaker.
		require.NoError(t, b.Allow())
		require.NoError(t, b.Allow())
		fail(b, 2)
		require.Equal(t, Open, b.State())
		b.Done(true) // a late outcome while open: dropped
		assert.Equal(t, Open, b.State())
		time.Sleep(time.Second)
		// Half-open, no probe in flight: the second late outcome is dropped too.
		b.Done(false)
		assert.Equal(t, HalfOpen, b.State())
		require.NoError(t, b.Allow())
		b.Done(true)
		assert.Equal(t, Closed, b.State())
	})
}

func TestHalfOpenProbeLimitUnderConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rec := newRecorder()
		b := New(Config{MinRequests: 1, OpenFor: time.Second, Probes: 3}, rec.onChange)
		fail(b, 1)
		time.Sleep(time.Second)

		const callers = 64
		var allowed, refused atomic.Int32
		start := make(chan struct{})
		var wg sync.WaitGroup
		release := make(chan struct{})
		for range callers {
			wg.Go(func() {
				<-start
				err := b.Allow()
				if err != nil {
					assert.ErrorIs(t, err, ErrOpen)
					refused.Add(1)
					return
				}
				allowed.Add(1)
				<-release // the probe call takes a while
				b.Done(true)
			})
		}
		close(start)
		synctest.Wait() // every caller has its answer; the probes wait on release
		assert.EqualValues(t, 3, allowed.Load())
		assert.EqualValues(t, callers-3, refused.Load())
		assert.Equal(t, HalfOpen, b.State())
		close(release)
		wg.Wait()
		assert.Equal(t, Closed, b.State())
		assert.Equal(t, []change{
			{0, Closed, Open},
			{time.Second, Open, HalfOpen},
			{time.Second, HalfOpen, Closed},
		}, rec.changes())
	})
}

func TestOnChangeMayCallTheBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var b *Breaker
		type seen struct{ from, to, state State }
		var got []seen
		panicked := false
		b = New(Config{MinRequests: 1, OpenFor: time.Second}, func(from, to State) {
			got = append(got, seen{from, to, b.State()})
			_ = b.Allow() // may change the state again (half-open → probe admitted)
			if to == Closed && !panicked {
				panicked = true
				panic("onChange failed")
			}
		})
		fail(b, 1)
		time.Sleep(time.Second)
		assert.Equal(t, HalfOpen, b.State())
		// The probe admitted by the Allow in onChange is still in flight.
		requireRefused(t, b.Allow(), "circuit open: half-open, all probe calls in flight")
		assert.PanicsWithValue(t, "onChange failed", func() { b.Done(true) })
		assert.Equal(t, Closed, b.State())
		fail(b, 1) // a panicking onChange does not stop later changes being reported
		assert.Equal(t, []seen{
			{Closed, Open, Open},
			{Open, HalfOpen, HalfOpen},
			{HalfOpen, Closed, Closed},
			{Closed, Open, Open},
		}, got)
	})
}

func TestNoAllocations(t *testing.T) {
	b := New(Config{MinRequests: math.MaxInt, OpenFor: time.Hour}, func(State, State) {})
	assert.Zero(t, testing.AllocsPerRun(1000, func() {
		if b.Allow() == nil {
			b.Done(true)
		}
		if b.Allow() == nil {
			b.Done(false)
		}
		_ = b.State()
	}), "closed")

	o := New(Config{MinRequests: 1, OpenFor: time.Hour}, func(State, State) {})
	fail(o, 1)
	require.Equal(t, Open, o.State())
	assert.Zero(t, testing.AllocsPerRun(1000, func() {
		if o.Allow() == nil {
			t.Fatal("allowed while open")
		}
	}), "open")
}

func TestNewPanicsOnInvalidConfig(t *testing.T) {
	assert.PanicsWithError(t, "breaker: Probes is -1; it cannot be negative (0 means the default 1)", func() {
		New(Config{Probes: -1}, nil)
	})
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		cfg  Config
		want string
	}{
		{Config{}, ""},
		{Config{Window: time.Minute, MinRequests: 1, FailureRate: 1, OpenFor: time.Millisecond, Probes: 5}, ""},
		{Config{Window: 10}, ""},
		{Config{Window: -time.Second}, "breaker: Window is -1s; it must be positive (or 0 for the default 10s)"},
		{Config{Window: 9}, "breaker: Window is 9ns; it must be at least 10ns (it is split into 10 buckets)"},
		{Config{MinRequests: -1}, "breaker: MinRequests is -1; it cannot be negative (0 means the default 20)"},
		{Config{FailureRate: -0.1}, "breaker: FailureRate is -0.1; it must be in (0, 1] (or 0 for the default 0.5)"},
		{Config{FailureRate: 1.5}, "breaker: FailureRate is 1.5; it must be in (0, 1] (or 0 for the default 0.5)"},
		{Config{FailureRate: math.NaN()}, "breaker: FailureRate is NaN; it must be in (0, 1] (or 0 for the default 0.5)"},
		{Config{OpenFor: -time.Millisecond}, "breaker: OpenFor is -1ms; it must be positive (or 0 for the default 5s)"},
		{Config{Probes: -2}, "breaker: Probes is -2; it cannot be negative (0 means the default 1)"},
		{Config{Window: -1, Probes: -1}, "breaker: Window is -1ns; it must be positive (or 0 for the default 10s)\n" +
			"breaker: Probes is -1; it cannot be negative (0 means the default 1)"},
	} {
		err := tc.cfg.Validate()
		if tc.want == "" {
			assert.NoError(t, err, "%+v", tc.cfg)
			continue
		}
		assert.EqualError(t, err, tc.want)
	}
}

func TestStateString(t *testing.T) {
	assert.Equal(t, "closed", Closed.String())
	assert.Equal(t, "open", Open.String())
	assert.Equal(t, "half_open", HalfOpen.String())
	assert.Equal(t, "state(7)", State(7).String())
	assert.True(t, errors.Is(errRefusedHalfOpen, ErrOpen))
}

func BenchmarkAllowDone(b *testing.B) {
	br := New(Config{}, nil)
	b.ReportAllocs()
	for b.Loop() {
		if br.Allow() == nil {
			br.Done(true)
		}
	}
}
