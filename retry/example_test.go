package retry_test

import (
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/retry"
)

// The attempt loop of a stage worker: attempt, ask the schedule for the
// delay, wait, attempt again, until success or a Stop.
func ExampleSchedule() {
	policy := retry.Policy{MaxAttempts: 5, NoJitter: true}
	if err := policy.Validate(); err != nil {
		panic(err)
	}

	attempt := func(n int) error {
		if n < 5 {
			return errors.New("connection refused")
		}
		return errors.New("still refused")
	}

	s := policy.Start() // attempt 1 is about to start
	for {
		n := s.Attempts()
		err := attempt(n)
		if err == nil {
			break
		}
		delay, stop := s.Next(err)
		if stop != retry.NoStop {
			fmt.Printf("attempt %d failed: %v; giving up (%v)\n", n, err, stop)
			break // dead-letter the item
		}
		fmt.Printf("attempt %d failed: %v; retrying in %v\n", n, err, delay)
		// A real stage waits here, e.g. with a timer and the context.
	}
	// Output:
	// attempt 1 failed: connection refused; retrying in 100ms
	// attempt 2 failed: connection refused; retrying in 200ms
	// attempt 3 failed: connection refused; retrying in 400ms
	// attempt 4 failed: connection refused; retrying in 800ms
	// attempt 5 failed: still refused; giving up (attempts)
}

// Permanent errors are not retried; After carries a Retry-After delay that
// replaces the backoff delay for one retry.
func ExamplePermanent() {
	errInvalid := errors.New("invalid record")
	errThrottled := errors.New("429 too many requests")

	s := retry.Policy{NoJitter: true}.Start()
	delay, stop := s.Next(retry.After(errThrottled, 2*time.Second))
	fmt.Println(delay, stop)

	err := fmt.Errorf("decode: %w", retry.Permanent(errInvalid))
	delay, stop = s.Next(err)
	fmt.Println(delay, stop, errors.Is(err, errInvalid), retry.ErrorType(err))
	// Output:
	// 2s none
	// 0s permanent true permanent
}

// After attaches a delay to an error; RetryAfter finds it anywhere in the
// chain.
func ExampleAfter() {
	err := fmt.Errorf("sink: %w", retry.After(errors.New("503 service unavailable"), 30*time.Second))
	d, ok := retry.RetryAfter(err)
	fmt.Println(err, d, ok)
	// Output:
	// sink: 503 service unavailable 30s true
}

// A budget is shared by all the items of a stage: when most attempts fail,
// retries are refused so that a failing downstream is not hammered.
func ExampleBudget() {
	policy := retry.Policy{MaxAttempts: 10, NoJitter: true, Budget: retry.BudgetConfig{MaxTokens: 4, TokenRatio: 1}}
	budget := retry.NewBudget(policy.Budget) // once per stage

	s := policy.StartWithBudget(budget) // per item
	for {
		_, stop := s.Next(errors.New("down"))
		fmt.Printf("tokens %.1f, stop %v\n", budget.Tokens(), stop)
		if stop != retry.NoStop {
			break
		}
	}
	budget.OnSuccess() // after a successful attempt
	fmt.Printf("tokens %.1f\n", budget.Tokens())
	// Output:
	// tokens 3.0, stop none
	// tokens 2.0, stop budget
	// tokens 3.0
}

type rateLimited struct{}

func (rateLimited) Error() string     { return "rate limited" }
func (rateLimited) ErrorType() string { return "rate_limited" }

func ExampleErrorType() {
	fmt.Println(retry.ErrorType(fmt.Errorf("call: %w", rateLimited{})))
	fmt.Println(retry.ErrorType(retry.Permanent(errors.New("bad input"))))
	fmt.Println(retry.ErrorType(errors.New("something else")))
	// Output:
	// rate_limited
	// permanent
	// error
}
