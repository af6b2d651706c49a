package retry

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"testing"
	"testing/synctest"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

var errTransient = errors.New("transient")

// delays calls Next(err) until it stops and returns the delays and the stop.
func delays(s *Schedule, err error) ([]time.Duration, Stop) {
	var ds []time.Duration
	for {
		d, stop := s.Next(err)
		if stop != NoStop {
			return ds, stop
		}
		ds = append(ds, d)
	}
}

func ms(n ...int) []time.Duration {
	ds := make([]time.Duration, len(n))
	for i, v := range n {
		ds[i] = time.Duration(v) * time.Millisecond
	}
	return ds
}

func TestStopString(t *testing.T) {
	assert.Equal(t, "none", NoStop.String())
	assert.Equal(t, "permanent", StopPermanent.String())
	assert.Equal(t, "attempts", StopAttempts.String())
	assert.Equal(t, "elapsed", StopElapsed.String())
	assert.Equal(t, "budget", StopBudget.String())
	assert.Equal(t, "Stop(42)", Stop(42).String())
}

func TestScheduleExactDelays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := Policy{MaxAttempts: 10, NoJitter: true}.Start()
		assert.Equal(t, 1, s.Attempts())
		assert.Equal(t, 10, s.MaxAttempts())
		var got []time.Duration
		for i := 1; i < 10; i++ {
			assert.Equal(t, i, s.Attempts())
			d, stop := s.Next(errTransient)
			require.Equal(t, NoStop, stop)
			assert.Equal(t, i+1, s.Attempts())
			got = append(got, d)
			time.Sleep(d)
		}
		assert.Equal(t, ms(100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000), got, "doubling, capped at MaxInterval")
		d, stop := s.Next(errTransient)
		assert.Equal(t, StopAttempts, stop)
		assert.Zero(t, d)
		assert.Equal(t, 10, s.Attempts())
		assert.Equal(t, 32700*time.Millisecond, s.Elapsed())
	})
}

func TestScheduleCustomBackoff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := Policy{MaxAttempts: 6, NoJitter: true, InitialInterval: time.Second, Multiplier: 1.5, MaxInterval: 4 * time.Second}.Start()
		got, stop := delays(&s, errTransient)
		assert.Equal(t, StopAttempts, stop)
		assert.Equal(t, ms(1000, 1500, 2250, 3375, 4000), got)

		s = Policy{MaxAttempts: 4, NoJitter: true, Multiplier: 1}.Start()
		got, stop = delays(&s, errTransient)
		assert.Equal(t, StopAttempts, stop)
		assert.Equal(t, ms(100, 100, 100), got, "Multiplier 1 is a constant backoff")
	})
}

func TestScheduleMaxAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := Policy{NoJitter: true}.Start()
		got, stop := delays(&s, errTransient)
		assert.Equal(t, StopAttempts, stop)
		assert.Equal(t, ms(100, 200), got, "default: 3 attempts, 2 retries")
		assert.Equal(t, 3, s.Attempts())

		// A finished schedule keeps its stop reason.
		for range 3 {
			d, again := s.Next(errTransient)
			assert.Equal(t, StopAttempts, again)
			assert.Zero(t, d)
		}
		d, again := s.Next(Permanent(errTransient))
		assert.Equal(t, StopAttempts, again, "the first stop reason sticks")
		assert.Zero(t, d)

		s = NoRetry().Start()
		got, stop = delays(&s, errTransient)
		assert.Equal(t, StopAttempts, stop)
		assert.Empty(t, got)
		assert.Equal(t, 1, s.Attempts())
	})
}

func TestScheduleMaxElapsedTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const attempt = 50 * time.Millisecond // each attempt takes this long
		s := Policy{MaxAttempts: 100, NoJitter: true, MaxElapsedTime: 900 * time.Millisecond}.Start()
		var got []time.Duration
		for {
			time.Sleep(attempt) // the attempt runs, then fails
			d, stop := s.Next(errTransient)
			if stop != NoStop {
				assert.Equal(t, StopElapsed, stop)
				break
			}
			got = append(got, d)
			time.Sleep(d)
		}
		// elapsed+delay: 50+100=150, 200+200=400, 450+400=850 <= 900; 900+800 > 900.
		assert.Equal(t, ms(100, 200, 400), got)
		assert.Equal(t, 900*time.Millisecond, s.Elapsed())
		assert.Equal(t, 4, s.Attempts())
		d, stop := s.Next(errTransient)
		assert.Equal(t, StopElapsed, stop)
		assert.Zero(t, d)
	})
}

func TestScheduleMaxElapsedTimeBoundary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// elapsed+delay == MaxElapsedTime is allowed; one nanosecond more is not.
		s := Policy{MaxAttempts: 100, NoJitter: true, MaxElapsedTime: 700 * time.Millisecond}.Start()
		var got []time.Duration
		for {
			d, stop := s.Next(errTransient)
			if stop != NoStop {
				assert.Equal(t, StopElapsed, stop)
				break
			}
			got = append(got, d)
			time.Sleep(d)
		}
		assert.Equal(t, ms(100, 200, 400), got)

		s = Policy{MaxAttempts: 100, NoJitter: true, MaxElapsedTime: 700*time.Millisecond - 1}.Start()
		got, stop := nil, NoStop
		for {
			var d time.Duration
			d, stop = s.Next(errTransient)
			if stop != NoStop {
				break
			}
			got = append(got, d)
			time.Sleep(d)
		}
		assert.Equal(t, StopElapsed, stop)
		assert.Equal(t, ms(100, 200), got)
	})
}

func TestSchedulePermanent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, err := range []error{
			Permanent(errTransient),
			fmt.Errorf("stage: %w", Permanent(errTransient)),
			backoff.Permanent(errTransient),
			After(Permanent(errTransient), time.Second),
			errors.Join(errTransient, Permanent(errTransient)),
		} {
			b := NewBudget(BudgetConfig{MaxTokens: 10, TokenRatio: 1})
			s := Policy{MaxAttempts: 5}.StartWithBudget(b)
			d, stop := s.Next(err)
			assert.Equal(t, StopPermanent, stop, "%v", err)
			assert.Zero(t, d)
			assert.Equal(t, 1, s.Attempts())
			assert.Equal(t, 10.0, b.Tokens(), "permanent failures do not cost budget tokens")
		}
	})
}

func TestScheduleRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := Policy{MaxAttempts: 10, NoJitter: true}.Start()
		var got []time.Duration
		for _, err := range []error{
			errTransient,                       // 100ms
			After(errTransient, 3*time.Second), // carried: 3s (the backoff's 200ms is skipped)
			errTransient,                       // 400ms: the backoff advanced past 200ms
			fmt.Errorf("wrapped: %w", After(errTransient, 30*time.Second)), // not capped by MaxInterval
			After(errTransient, -time.Second),                              // negative counts as 0
			After(errTransient, 0),                                         // 0: retry at once
			errTransient,                                                   // 6400ms
		} {
			d, stop := s.Next(err)
			require.Equal(t, NoStop, stop)
			got = append(got, d)
			time.Sleep(d)
		}
		assert.Equal(t, ms(100, 3000, 400, 30000, 0, 0, 6400), got)
		assert.Equal(t, 8, s.Attempts())
	})
}

func TestScheduleRetryAfterElapsed(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := Policy{MaxAttempts: 10, NoJitter: true, MaxElapsedTime: time.Second}

		// A carried delay that fits is used even though it exceeds the backoff delay.
		s := p.Start()
		d, stop := s.Next(After(errTransient, time.Second))
		assert.Equal(t, NoStop, stop)
		assert.Equal(t, time.Second, d)

		// A carried delay that would end past MaxElapsedTime stops.
		s = p.Start()
		time.Sleep(100 * time.Millisecond)
		d, stop = s.Next(After(errTransient, 901*time.Millisecond))
		assert.Equal(t, StopElapsed, stop)
		assert.Zero(t, d)

		// A carried delay replaces a backoff delay that would not fit.
		s = Policy{MaxAttempts: 10, NoJitter: true, InitialInterval: 800 * time.Millisecond, MaxElapsedTime: time.Second}.Start()
		time.Sleep(300 * time.Millisecond)
		d, stop = s.Next(After(errTransient, 100*time.Millisecond))
		assert.Equal(t, NoStop, stop)
		assert.Equal(t, 100*time.Millisecond, d)
		d, stop = s.Next(errTransient) // backoff is at 1.6s now: 400ms+1.6s > 1s
		assert.Equal(t, StopElapsed, stop)
		assert.Zero(t, d)
	})
}

func TestScheduleJitterBounds(t *testing.T) {
	for _, tc := range []struct {
		name string
		p    Policy
		f    float64
	}{
		{"default", Policy{MaxAttempts: 10}, DefaultRandomizationFactor},
		{"quarter", Policy{MaxAttempts: 10, RandomizationFactor: 0.25}, 0.25},
		{"full", Policy{MaxAttempts: 10, RandomizationFactor: 1}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				base := ms(100, 200, 400, 800, 1600, 3200, 6400, 10000, 10000)
				seen := make([]map[time.Duration]bool, len(base))
				for i := range seen {
					seen[i] = map[time.Duration]bool{}
				}
				const schedules = 200
				for range schedules {
					s := tc.p.Start()
					got, stop := delays(&s, errTransient)
					require.Equal(t, StopAttempts, stop)
					require.Len(t, got, len(base))
					for i, d := range got {
						lo := base[i] - time.Duration(float64(base[i])*tc.f)
						hi := base[i] + time.Duration(float64(base[i])*tc.f)
						require.GreaterOrEqual(t, d, lo, "retry %d", i+1)
						require.LessOrEqual(t, d, hi, "retry %d", i+1)
						seen[i][d] = true
					}
				}
				for i := range seen {
					// 200 uniform draws over >= 50ms of nanoseconds: nearly
					// all distinct unless jitter is broken.
					assert.Greater(t, len(seen[i]), schedules/2, "retry %d: delays are not spread", i+1)
				}
			})
		})
	}
}

func TestScheduleNoJitterIsDeterministic(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		first := Policy{NoJitter: true, MaxAttempts: 8}.Start()
		want, _ := delays(&first, errTransient)
		for range 50 {
			s := Policy{NoJitter: true, MaxAttempts: 8}.Start()
			got, _ := delays(&s, errTransient)
			assert.Equal(t, want, got)
		}
	})
}

func TestScheduleNilError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		s := Policy{NoJitter: true}.Start()
		d, stop := s.Next(nil)
		assert.Equal(t, NoStop, stop)
		assert.Equal(t, 100*time.Millisecond, d)
	})
}

func TestZeroSchedule(t *testing.T) {
	var s Schedule
	d, stop := s.Next(errTransient)
	assert.Equal(t, StopAttempts, stop)
	assert.Zero(t, d)
	assert.Zero(t, s.Attempts())
	assert.Zero(t, s.MaxAttempts())
	assert.Zero(t, s.Elapsed())
}

func TestScheduleBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// 4 tokens: a retry needs more than 2 left after the failure.
		b := NewBudget(BudgetConfig{MaxTokens: 4, TokenRatio: 1})
		p := Policy{MaxAttempts: 10, NoJitter: true}

		s := p.StartWithBudget(b)
		d, stop := s.Next(errTransient) // 4 -> 3
		assert.Equal(t, NoStop, stop)
		assert.Equal(t, 100*time.Millisecond, d)
		d, stop = s.Next(errTransient) // 3 -> 2: refused
		assert.Equal(t, StopBudget, stop)
		assert.Zero(t, d)
		assert.Equal(t, 2.0, b.Tokens())
		assert.Equal(t, 2, s.Attempts())

		// Other items share the budget: refused at once.
		s2 := p.StartWithBudget(b)
		_, stop = s2.Next(errTransient) // 2 -> 1
		assert.Equal(t, StopBudget, stop)
		assert.Equal(t, 1.0, b.Tokens())

		// Successes refill it.
		b.OnSuccess()
		b.OnSuccess()
		b.OnSuccess() // 4
		s3 := p.StartWithBudget(b)
		_, stop = s3.Next(errTransient) // 4 -> 3
		assert.Equal(t, NoStop, stop)

		// The last attempt's failure is recorded too, but the reason is attempts.
		s4 := Policy{MaxAttempts: 1}.StartWithBudget(b)
		_, stop = s4.Next(errTransient) // 3 -> 2
		assert.Equal(t, StopAttempts, stop)
		assert.Equal(t, 2.0, b.Tokens())

		// Start ignores Policy.Budget: budgets are attached explicitly.
		s5 := Policy{MaxAttempts: 3, Budget: BudgetConfig{MaxTokens: 1, TokenRatio: 1}}.Start()
		_, stop = s5.Next(errTransient)
		assert.Equal(t, NoStop, stop)
	})
}

func TestScheduleAllocs(t *testing.T) {
	p := Policy{MaxAttempts: math.MaxInt}
	permanent := Permanent(errTransient)
	after := fmt.Errorf("wrapped: %w", After(errTransient, time.Millisecond))
	joined := errors.Join(errTransient, After(errTransient, time.Millisecond))
	deepTimeout := &url.Error{Op: "Get", URL: "http://x/", Err: errors.Join(errTransient, fmt.Errorf("read: %w", os.ErrDeadlineExceeded))}
	b := NewBudget(BudgetConfig{MaxTokens: 1000, TokenRatio: 1000})

	var sink time.Duration
	tests := []struct {
		name string
		f    func()
	}{
		{"Start and success", func() {
			s := p.Start()
			sink += time.Duration(s.Attempts())
		}},
		{"StartWithBudget and success", func() {
			s := p.StartWithBudget(b)
			b.OnSuccess()
			sink += time.Duration(s.Attempts())
		}},
		{"Next", func() {
			s := p.Start()
			d, _ := s.Next(errTransient)
			sink += d
		}},
		{"Next with budget", func() {
			s := p.StartWithBudget(b)
			d, _ := s.Next(errTransient)
			b.OnSuccess()
			sink += d
		}},
		{"Next permanent", func() {
			s := p.Start()
			d, _ := s.Next(permanent)
			sink += d
		}},
		{"Next retry-after", func() {
			s := p.Start()
			d, _ := s.Next(after)
			sink += d
		}},
		{"Next joined", func() {
			s := p.Start()
			d, _ := s.Next(joined)
			sink += d
		}},
		{"ErrorType", func() {
			sink += time.Duration(len(ErrorType(after)))
		}},
		{"ErrorType of a deep timeout", func() {
			sink += time.Duration(len(ErrorType(deepTimeout)))
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Zero(t, testing.AllocsPerRun(1000, tt.f))
		})
	}
	_ = sink
}

func BenchmarkScheduleNext(b *testing.B) {
	bench := func(name string, p Policy, err error, budget *Budget) {
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			s := p.StartWithBudget(budget)
			for b.Loop() {
				if _, stop := s.Next(err); stop != NoStop {
					b.Fatal(stop)
				}
				budget.OnSuccess()
			}
		})
	}
	many := Policy{MaxAttempts: math.MaxInt}
	bench("jitter", many, errTransient, nil)
	bench("nojitter", Policy{MaxAttempts: math.MaxInt, NoJitter: true}, errTransient, nil)
	bench("retry-after", many, fmt.Errorf("x: %w", After(errTransient, time.Second)), nil)
	bench("budget", many, errTransient, NewBudget(BudgetConfig{MaxTokens: 10, TokenRatio: 1}))

	b.Run("start-success", func(b *testing.B) {
		b.ReportAllocs()
		var n int
		for b.Loop() {
			s := many.Start()
			n += s.Attempts()
		}
		_ = n
	})
}

// A valid policy whose intervals reach far beyond a lifetime never yields a negative delay: the
// backoff converted a jittered delay near math.MaxInt64 to a Duration without a check, so about
// half the draws at the cap wrapped (from retry 34 on here), an immediate retry.
func TestScheduleHugeIntervalsNeverNegative(t *testing.T) {
	for _, p := range []Policy{
		{MaxAttempts: 100, InitialInterval: time.Second, MaxInterval: math.MaxInt64},
		{MaxAttempts: 100, InitialInterval: time.Second, MaxInterval: math.MaxInt64, RandomizationFactor: 1},
		{MaxAttempts: 100, InitialInterval: math.MaxInt64, MaxInterval: math.MaxInt64, RandomizationFactor: 1},
		{MaxAttempts: 100, InitialInterval: time.Second, MaxInterval: math.MaxInt64, NoJitter: true},
	} {
		require.NoError(t, p.Validate())
		s := p.Start()
		got, stop := delays(&s, errTransient)
		require.Equal(t, StopAttempts, stop)
		require.Len(t, got, 99)
		for i, d := range got {
			require.GreaterOrEqual(t, d, time.Duration(0), "%+v: retry %d", p, i+1)
		}
		if p.NoJitter {
			assert.Equal(t, longestInterval, got[98], "the longest interval, unjittered")
		}
	}
}
