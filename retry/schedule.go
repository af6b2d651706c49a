package retry

import (
	"math"
	"strconv"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Stop says why an item must not be retried. The zero value, NoStop, means
// the item may be retried.
type Stop int

// Stop reasons returned by [Schedule.Next].
const (
	// NoStop means the item may be retried after the returned delay.
	NoStop Stop = iota
	// StopPermanent means the error is permanent (see Permanent).
	StopPermanent
	// StopAttempts means MaxAttempts attempts have been made.
	StopAttempts
	// StopElapsed means the next attempt would start after MaxElapsedTime.
	StopElapsed
	// StopBudget means the retry budget refused the retry.
	StopBudget
)

// String returns a short lower-case name for s, suitable as a metric label:
// "none", "permanent", "attempts", "elapsed" or "budget".
func (s Stop) String() string {
	switch s {
	case NoStop:
		return "none"
	case StopPermanent:
		return "permanent"
	case StopAttempts:
		return "attempts"
	case StopElapsed:
		return "elapsed"
	case StopBudget:
		return "budget"
	}
	return "Stop(" + strconv.Itoa(int(s)) + ")"
}

// Schedule is the retry state of one item: the exponential backoff, the
// number of attempts made and the optional retry budget. It is a value
// type meant to live on the worker's stack or inside the item's state;
// creating and using it does not allocate.
//
// The zero Schedule is not usable (its Next always returns StopAttempts);
// create schedules with [Policy.Start] or [Policy.StartWithBudget].
// A Schedule is not safe for concurrent use; it belongs to the worker
// processing the item.
type Schedule struct {
	b           backoff.ExponentialBackOff
	attempts    int
	maxAttempts int
	budget      *Budget
	stopped     Stop
}

// Start returns the schedule of an item whose first attempt is about to
// start; the start time (time.Now) is the origin of MaxElapsedTime. After
// Start, Attempts() is 1.
//
// Start attaches no retry budget, even if p.Budget is set: a budget must be
// shared by all items of a stage, so the stage creates it once with
// NewBudget(p.Budget) and uses StartWithBudget.
//
// Start does not validate p; call Validate when the policy is configured.
// Out-of-range fields of an invalid policy are treated as zero (the
// default), so the schedule is always usable.
func (p Policy) Start() Schedule {
	return p.StartWithBudget(nil)
}

// StartWithBudget is like Start, and also attaches the retry budget b,
// shared with the other items of the stage: every call to Next with a
// non-permanent error records a failure in b, and Next returns StopBudget
// when b refuses the retry. A nil b means no budget. The caller remains
// responsible for calling b.OnSuccess after each successful attempt.
func (p Policy) StartWithBudget(b *Budget) Schedule {
	// Equivalent to building from p.Normalize() with out-of-range fields
	// replaced by their defaults, without copying policies around: Start is
	// on the success path of every item.
	maxAttempts := p.MaxAttempts
	if maxAttempts <= 0 {
		maxAttempts = DefaultMaxAttempts
	}
	initial := p.InitialInterval
	if initial <= 0 {
		initial = DefaultInitialInterval
	}
	multiplier := p.Multiplier
	if !(multiplier >= 1 && !math.IsInf(multiplier, 1)) {
		multiplier = DefaultMultiplier
	}
	maxInterval := p.MaxInterval
	if maxInterval <= 0 {
		maxInterval = DefaultMaxInterval
	}
	maxInterval = max(maxInterval, initial)
	// The backoff converts a jittered delay, up to d*(1+f) with f <= 1, to a Duration without a
	// check: past math.MaxInt64 it wraps to a negative delay, an immediate retry.
	initial, maxInterval = min(initial, longestInterval), min(maxInterval, longestInterval)
	randomization := p.RandomizationFactor
	switch {
	case p.NoJitter:
		randomization = 0
	case !(randomization > 0 && randomization <= 1):
		randomization = DefaultRandomizationFactor
	}
	s := Schedule{
		b: backoff.ExponentialBackOff{
			InitialInterval:     initial,
			RandomizationFactor: randomization,
			Multiplier:          multiplier,
			MaxInterval:         maxInterval,
			MaxElapsedTime:      max(p.MaxElapsedTime, 0),
			Stop:                backoff.Stop,
			Clock:               backoff.SystemClock,
		},
		attempts:    1,
		maxAttempts: maxAttempts,
		budget:      b,
	}
	s.b.Reset()
	return s
}

// Next is called after a failed attempt with its error (nil is treated as
// a retryable error carrying no delay). It returns the delay to wait before
// the next attempt and NoStop, or 0 and the reason why the item must not be
// retried. Decisions are made in this order:
//
//  1. a permanent error (IsPermanent) stops with StopPermanent;
//  2. otherwise the failure is recorded in the budget, if any;
//  3. if Attempts() == MaxAttempts() it stops with StopAttempts;
//  4. the delay is the one carried by err (RetryAfter; negative values
//     count as 0), or else the next backoff delay; the backoff advances one
//     step either way. If the time elapsed since Start plus the delay would
//     exceed MaxElapsedTime (when set), it stops with StopElapsed;
//  5. if the budget refused the retry it stops with StopBudget;
//  6. otherwise Attempts() is incremented and the delay is returned.
//
// Once Next has returned a Stop, the schedule is finished: further calls
// return the same Stop and record nothing.
//
// Next does not allocate. (Inspecting err's chain allocates only if an
// error in it has an As(any) bool method, or Unwrap methods that allocate.)
func (s *Schedule) Next(err error) (delay time.Duration, stop Stop) {
	if s.stopped != NoStop {
		return 0, s.stopped
	}
	if IsPermanent(err) {
		return s.stop(StopPermanent)
	}
	allowed := s.budget.OnFailure()
	if s.attempts >= s.maxAttempts {
		return s.stop(StopAttempts)
	}
	next := s.b.NextBackOff() // advance the backoff even if err carries a delay
	if d, ok := RetryAfter(err); ok {
		delay = max(d, 0)
	} else if next == backoff.Stop {
		// Only possible when MaxElapsedTime is set: the backoff's own
		// elapsed-time check failed.
		return s.stop(StopElapsed)
	} else {
		delay = next
	}
	if limit := s.b.MaxElapsedTime; limit > 0 && delay > limit-s.b.GetElapsedTime() {
		return s.stop(StopElapsed)
	}
	if !allowed {
		return s.stop(StopBudget)
	}
	s.attempts++
	return delay, NoStop
}

func (s *Schedule) stop(reason Stop) (time.Duration, Stop) {
	s.stopped = reason
	return 0, reason
}

// Attempts returns the number of attempts started so far: 1 after Start
// (the first attempt), plus one for every call to Next that returned
// NoStop. When Next is called after a failed attempt, Attempts is the
// number of that attempt.
func (s *Schedule) Attempts() int { return s.attempts }

// MaxAttempts returns the total number of attempts allowed, including the
// first one, with the policy's default applied.
func (s *Schedule) MaxAttempts() int { return s.maxAttempts }

// Elapsed returns the time elapsed since Start, read from the backoff's
// clock (time.Now).
func (s *Schedule) Elapsed() time.Duration {
	if s.b.Clock == nil {
		return 0
	}
	return s.b.GetElapsedTime()
}
