// Package retry holds the retry policy, the per-item retry schedule, the
// retry budget and the error classes used by sluice stages.
//
// A stage's worker owns the attempt loop and the waiting; this package only
// makes decisions and computes delays:
//
//	s := policy.StartWithBudget(budget) // attempt 1 is about to run
//	for {
//		err := attempt(item)
//		if err == nil {
//			budget.OnSuccess()
//			break // done
//		}
//		delay, stop := s.Next(err)
//		if stop != retry.NoStop {
//			deadLetter(item, err, stop) // give up
//			break
//		}
//		wait(ctx, delay) // the stage decides how to wait (timer, context, ...)
//	}
//
// # Policy and defaults
//
// [Policy] configures exponential backoff with jitter, computed by
// [github.com/cenkalti/backoff/v4.ExponentialBackOff]. The zero Policy is
// the default policy, and a zero field always means "use the default": a
// zero value never silently disables retries or jitter. Turning things off
// is explicit: MaxAttempts: 1 (or [NoRetry]) means a single attempt, and
// NoJitter: true disables jitter.
//
//	Field                Zero means                       Default
//	MaxAttempts          DefaultMaxAttempts               3 (the first attempt and two retries)
//	InitialInterval      DefaultInitialInterval           100ms
//	Multiplier           DefaultMultiplier                2.0
//	MaxInterval          DefaultMaxInterval               10s
//	MaxElapsedTime       no limit on elapsed time         0 (attempts still bound the retries)
//	RandomizationFactor  DefaultRandomizationFactor       0.5 (jitter on)
//	NoJitter             jitter on                        false
//	Budget               no retry budget                  disabled
//
// The n-th retry waits InitialInterval*Multiplier^(n-1), capped at
// MaxInterval, and then randomised into
// [d*(1-RandomizationFactor), d*(1+RandomizationFactor)]. With the
// defaults and NoJitter the delays are 100ms, 200ms, 400ms, ..., 10s.
//
// [Policy.Validate] reports out-of-range fields with a message saying what
// to change; [Policy.Normalize] fills in the defaults.
//
// # Schedules
//
// A [Schedule] is the retry state of one item. It is a value type (no
// allocation) created by [Policy.Start] or [Policy.StartWithBudget] when
// the item's first attempt starts, and [Schedule.Next] is called after each
// failed attempt. Next returns the delay before the next attempt, or a
// [Stop] reason (permanent error, attempts exhausted, elapsed time
// exceeded, budget refused). A stage that never fails never calls Next, and
// Start does not allocate, so the success path costs no allocation.
//
// Time is read through the backoff's clock, which is [time.Now]; tests can
// therefore run schedules under [testing/synctest] with a fake clock.
//
// # Permanent errors and Retry-After
//
// [Permanent] marks an error as not retryable: Next stops with
// StopPermanent at once. A *backoff.PermanentError from
// github.com/cenkalti/backoff/v4 is recognised as permanent too.
//
// [After] attaches a delay to an error, as an HTTP Retry-After header or a
// gRPC pushback would. Any error in the chain with a
// RetryAfter() time.Duration method carries a delay (see [RetryAfter]).
// The carried delay replaces the backoff delay for that step, is not capped
// by MaxInterval, and still counts against MaxElapsedTime; the exponential
// backoff advances one step regardless, so later delays keep growing.
//
// Both wrappers keep the cause visible to [errors.Is] and [errors.As].
//
// # Retry budget
//
// A [Budget] throttles retries across all items of a stage, with the
// semantics of gRPC retry throttling: the budget starts with MaxTokens
// tokens; every failed attempt (that is not permanent) costs one token;
// every successful attempt gives back TokenRatio tokens, up to MaxTokens;
// a retry is allowed only while more than MaxTokens/2 tokens remain. When a
// downstream system is failing, the budget stops the stage from multiplying
// its load by MaxAttempts. Tokens are kept with a precision of 0.001.
//
// The budget is shared: the stage creates one with [NewBudget] from
// Policy.Budget, passes it to [Policy.StartWithBudget] for every item, and
// calls [Budget.OnSuccess] after each successful attempt. A nil *Budget
// allows everything, so a disabled budget needs no special casing.
//
// # Error classes
//
// [ErrorType] maps an error to a low-cardinality class suitable for a
// metric label or a dead-letter record: the class given by the first
// [ErrorTyper] in the chain, otherwise "permanent", "timeout", "canceled"
// or "error". It never returns Go type names or error messages.
package retry
