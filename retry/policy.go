package retry

import (
	"errors"
	"fmt"
	"math"
	"time"
)

// Defaults used for the zero fields of a [Policy].
const (
	// DefaultMaxAttempts is the total number of attempts, including the
	// first one, made when Policy.MaxAttempts is 0.
	DefaultMaxAttempts = 3
	// DefaultInitialInterval is the delay before the first retry (before
	// jitter) when Policy.InitialInterval is 0.
	DefaultInitialInterval = 100 * time.Millisecond
	// DefaultMultiplier is the growth factor of the delay between
	// consecutive retries when Policy.Multiplier is 0.
	DefaultMultiplier = 2.0
	// DefaultMaxInterval caps the delay between retries (before jitter)
	// when Policy.MaxInterval is 0.
	DefaultMaxInterval = 10 * time.Second
	// DefaultRandomizationFactor is the jitter used when
	// Policy.RandomizationFactor is 0 and Policy.NoJitter is false: each
	// delay d is randomised into [d*(1-f), d*(1+f)].
	DefaultRandomizationFactor = 0.5
)

// longestInterval is the longest delay before jitter (about 73 years): jittered by up to 100% it
// still fits a time.Duration.
const longestInterval = time.Duration(math.MaxInt64 / 4)

// Policy configures retries. The zero value is the default policy: three
// attempts with jittered exponential backoff starting at 100ms.
//
// A zero field means "use the default"; it never disables retries or
// jitter. Use MaxAttempts: 1 (or [NoRetry]) for a single attempt and
// NoJitter: true for deterministic delays.
type Policy struct {
	// MaxAttempts is the total number of attempts, including the first.
	// 0 means DefaultMaxAttempts; 1 means no retries.
	MaxAttempts int
	// InitialInterval is the delay before the first retry, before jitter.
	// 0 means DefaultInitialInterval.
	InitialInterval time.Duration
	// Multiplier is the factor by which the delay grows after each retry.
	// 0 means DefaultMultiplier; otherwise it must be >= 1.
	Multiplier float64
	// MaxInterval caps the delay between retries, before jitter. 0 means
	// DefaultMaxInterval; otherwise it must be >= InitialInterval. Intervals
	// beyond 73 years (math.MaxInt64/4) count as 73 years, so that a jittered
	// delay always fits a time.Duration.
	MaxInterval time.Duration
	// MaxElapsedTime bounds the time from the start of the first attempt
	// to the start of the last retry: a retry whose delay would end past
	// it is not made. 0 means no limit (MaxAttempts still bounds retries).
	MaxElapsedTime time.Duration
	// RandomizationFactor is the jitter: each delay d is randomised into
	// [d*(1-f), d*(1+f)]. 0 means DefaultRandomizationFactor; otherwise it
	// must be in (0, 1]. To disable jitter use NoJitter.
	RandomizationFactor float64
	// NoJitter disables jitter explicitly; delays are then exact.
	NoJitter bool
	// Budget configures a retry budget shared by the items of a stage.
	// The zero BudgetConfig means no budget. The policy only carries the
	// configuration: the stage creates the budget with NewBudget and
	// attaches it to schedules with StartWithBudget.
	Budget BudgetConfig
}

// NoRetry returns a policy that makes a single attempt and never retries.
func NoRetry() Policy { return Policy{MaxAttempts: 1} }

// Normalize returns p with every zero field replaced by its default, and
// RandomizationFactor set to 0 when NoJitter is true. MaxElapsedTime and
// Budget have no defaults (zero means "no limit" and "no budget") and are
// returned unchanged.
//
// Normalize does not validate: out-of-range values are returned unchanged,
// so Validate still reports them.
func (p Policy) Normalize() Policy {
	if p.MaxAttempts == 0 {
		p.MaxAttempts = DefaultMaxAttempts
	}
	if p.InitialInterval == 0 {
		p.InitialInterval = DefaultInitialInterval
	}
	if p.Multiplier == 0 {
		p.Multiplier = DefaultMultiplier
	}
	if p.MaxInterval == 0 {
		p.MaxInterval = DefaultMaxInterval
	}
	switch {
	case p.NoJitter:
		p.RandomizationFactor = 0
	case p.RandomizationFactor == 0:
		p.RandomizationFactor = DefaultRandomizationFactor
	}
	return p
}

// Validate reports every out-of-range field of p, each with a message
// saying what to change. It returns nil for a valid policy, including the
// zero Policy. Multiple problems are combined with [errors.Join].
func (p Policy) Validate() error {
	var errs []error
	if p.MaxAttempts < 0 {
		errs = append(errs, fmt.Errorf("retry: MaxAttempts is %d; use 0 for the default (%d) or a positive number", p.MaxAttempts, DefaultMaxAttempts))
	}
	if p.InitialInterval < 0 {
		errs = append(errs, fmt.Errorf("retry: InitialInterval is %v; use 0 for the default (%v) or a positive duration", p.InitialInterval, DefaultInitialInterval))
	}
	if p.Multiplier != 0 && !(p.Multiplier >= 1 && !math.IsInf(p.Multiplier, 1)) {
		errs = append(errs, fmt.Errorf("retry: Multiplier is %v; use 0 for the default (%v) or a finite value >= 1", p.Multiplier, DefaultMultiplier))
	}
	if p.MaxInterval < 0 {
		errs = append(errs, fmt.Errorf("retry: MaxInterval is %v; use 0 for the default (%v) or a positive duration", p.MaxInterval, DefaultMaxInterval))
	}
	if p.MaxElapsedTime < 0 {
		errs = append(errs, fmt.Errorf("retry: MaxElapsedTime is %v; use 0 for no limit or a positive duration", p.MaxElapsedTime))
	}
	if p.RandomizationFactor != 0 && !(p.RandomizationFactor > 0 && p.RandomizationFactor <= 1) {
		errs = append(errs, fmt.Errorf("retry: RandomizationFactor is %v; use 0 for the default (%v) or a value in (0, 1], and NoJitter to disable jitter", p.RandomizationFactor, DefaultRandomizationFactor))
	} else if p.NoJitter && p.RandomizationFactor != 0 {
		errs = append(errs, fmt.Errorf("retry: RandomizationFactor is %v but NoJitter is true; set RandomizationFactor to 0 or NoJitter to false", p.RandomizationFactor))
	}
	if p.InitialInterval >= 0 && p.MaxInterval >= 0 {
		n := p.Normalize()
		if n.MaxInterval < n.InitialInterval {
			errs = append(errs, fmt.Errorf("retry: MaxInterval (%v%s) is less than InitialInterval (%v%s); make MaxInterval >= InitialInterval",
				n.MaxInterval, defaultNote(p.MaxInterval), n.InitialInterval, defaultNote(p.InitialInterval)))
		}
	}
	if err := p.Budget.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func defaultNote(d time.Duration) string {
	if d == 0 {
		return ", the default"
	}
	return ""
}
