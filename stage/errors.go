package stage

import (
	"fmt"
	"time"
)

// ErrShutdown is the error of an item parked by a drain: the run stopped before the item was
// done. Such items are dead-lettered with reason shutdown, or handed back to a source that can
// redeliver them (all of their units: a batch's output that carries items without an
// acknowledgement is dead-lettered).
var ErrShutdown error = shutdownError{}

type shutdownError struct{}

func (shutdownError) Error() string { return "sluice: the run was stopped before the item was done" }

// ErrorType implements retry.ErrorTyper.
func (shutdownError) ErrorType() string { return "shutdown" }

// PanicError is the failure of an attempt whose function panicked.
type PanicError struct {
	// Value is the value the function panicked with.
	Value any
	// Stack is the stack of the panicking goroutine.
	Stack string
}

// Error implements error.
func (e *PanicError) Error() string { return fmt.Sprintf("panic: %v", e.Value) }

// ErrorType implements retry.ErrorTyper.
func (e *PanicError) ErrorType() string { return "panic" }

// Unwrap returns the panic value when it is an error.
func (e *PanicError) Unwrap() error {
	err, _ := e.Value.(error)
	return err
}

// TimeoutError is the failure of an attempt that outlived the stage's per-attempt timeout.
type TimeoutError struct {
	// Timeout is the stage's per-attempt timeout.
	Timeout time.Duration
	// Err is what the function returned, if it returned.
	Err error
	// Abandoned is set when the function ignored its cancelled context past the grace period,
	// so its worker was replaced.
	Abandoned bool
}

// Error implements error.
func (e *TimeoutError) Error() string {
	if e.Abandoned {
		return fmt.Sprintf("attempt exceeded its timeout of %v and ignored cancellation; its worker was replaced", e.Timeout)
	}
	return fmt.Sprintf("attempt exceeded its timeout of %v: %v", e.Timeout, e.Err)
}

// ErrorType implements retry.ErrorTyper.
func (e *TimeoutError) ErrorType() string { return "timeout" }

// Unwrap returns the function's error.
func (e *TimeoutError) Unwrap() error { return e.Err }

// ErrOverflow is the error of an item dead-lettered by an overflow policy (reason overflow).
var ErrOverflow error = overflowError{}

type overflowError struct{}

func (overflowError) Error() string {
	return "sluice: the input was full; the item was dead-lettered under the overflow policy"
}

// ErrorType implements retry.ErrorTyper.
func (overflowError) ErrorType() string { return "overflow" }
