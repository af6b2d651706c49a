package retry

import (
	"context"
	"errors"
	"time"

	"github.com/cenkalti/backoff/v4"
)

// Error classes returned by [ErrorType] when no [ErrorTyper] classifies the
// error.
const (
	// ClassPermanent is the class of permanent errors (see Permanent).
	ClassPermanent = "permanent"
	// ClassTimeout is the class of deadline errors: context.DeadlineExceeded
	// and errors with a Timeout() bool method returning true.
	ClassTimeout = "timeout"
	// ClassCanceled is the class of context.Canceled.
	ClassCanceled = "canceled"
	// ClassError is the class of every other non-nil error.
	ClassError = "error"
)

// permanentError marks its cause as not retryable.
type permanentError struct {
	err error
}

func (e *permanentError) Error() string { return e.err.Error() }

// Unwrap returns the cause.
func (e *permanentError) Unwrap() error { return e.err }

// ErrorType returns "permanent".
func (e *permanentError) ErrorType() string { return ClassPermanent }

// Permanent returns an error that makes [Schedule.Next] stop with
// StopPermanent instead of retrying. Its message is err's message, and
// errors.Is and errors.As still see err. Permanent(nil) is nil, and an error
// that is already permanent at the top of its chain is returned unchanged.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := err.(*permanentError); ok {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err's chain contains an error made by
// [Permanent] or a *backoff.PermanentError from
// github.com/cenkalti/backoff/v4.
func IsPermanent(err error) bool {
	if err == nil {
		return false
	}
	if _, ok := errors.AsType[*permanentError](err); ok {
		return true
	}
	_, ok := errors.AsType[*backoff.PermanentError](err)
	return ok
}

// afterError carries a Retry-After delay.
type afterError struct {
	err   error
	delay time.Duration
}

func (e *afterError) Error() string { return e.err.Error() }

// Unwrap returns the cause.
func (e *afterError) Unwrap() error { return e.err }

// RetryAfter returns the carried delay.
func (e *afterError) RetryAfter() time.Duration { return e.delay }

// After returns an error carrying the delay d to wait before the next
// attempt, as a Retry-After header or a pushback would. Its message is
// err's message, errors.Is and errors.As still see err, and its class (see
// ErrorType) is err's class. After(nil, d) is nil.
//
// [Schedule.Next] waits d (0 if d is negative) instead of the backoff delay
// for that retry; MaxInterval does not cap it, MaxElapsedTime and
// MaxAttempts still apply, and a permanent error is still not retried.
func After(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	return &afterError{err: err, delay: d}
}

// retryAfterer is an error carrying a Retry-After delay.
type retryAfterer interface {
	error
	RetryAfter() time.Duration
}

// RetryAfter returns the delay carried by the first error in err's chain
// that has a RetryAfter() time.Duration method, such as the errors made by
// [After]. It reports false if there is none.
func RetryAfter(err error) (time.Duration, bool) {
	if err == nil {
		return 0, false
	}
	ra, ok := errors.AsType[retryAfterer](err)
	if !ok {
		return 0, false
	}
	return ra.RetryAfter(), true
}

// ErrorTyper is implemented by errors that know their class: a short,
// low-cardinality name such as "rate_limited" or "invalid_record", used as
// a metric label and in dead-letter records.
type ErrorTyper interface {
	ErrorType() string
}

// errorTyper is an error implementing ErrorTyper.
type errorTyper interface {
	error
	ErrorTyper
}

// ErrorType returns the low-cardinality class of err:
//
//   - "" if err is nil;
//   - the class of the first ErrorTyper in err's chain (errors.As order),
//     unless it returns "" — then the rules below apply;
//   - "permanent" if IsPermanent(err) (errors made by Permanent implement
//     ErrorTyper, so an outer Permanent wins over inner classes);
//   - "timeout" for context.DeadlineExceeded, or an error in the chain
//     with a Timeout() bool method returning true (net.Error, os.ErrDeadlineExceeded);
//   - "canceled" for context.Canceled;
//   - "error" otherwise. Go type names and messages are never used: they
//     would make unbounded metric label values.
func ErrorType(err error) string {
	if err == nil {
		return ""
	}
	if t, ok := errors.AsType[errorTyper](err); ok {
		if class := t.ErrorType(); class != "" {
			return class
		}
	}
	switch {
	case IsPermanent(err):
		return ClassPermanent
	case errors.Is(err, context.DeadlineExceeded) || isTimeout(err):
		return ClassTimeout
	case errors.Is(err, context.Canceled):
		return ClassCanceled
	}
	return ClassError
}

type timeouter interface {
	error
	Timeout() bool
}

// isTimeout reports whether any error in err's chain, followed through
// Unwrap() error and Unwrap() []error as errors.As does, has a Timeout()
// bool method returning true. Unlike errors.As it does not stop at the
// first error with a Timeout method: a wrapper such as *url.Error reports
// Timeout() false when its direct cause has no Timeout method, even if an
// error deeper in the chain (os.ErrDeadlineExceeded) is a timeout.
func isTimeout(err error) bool {
	for err != nil {
		if t, ok := err.(timeouter); ok && t.Timeout() {
			return true
		}
		if x, ok := err.(interface{ As(any) bool }); ok {
			var t timeouter
			if x.As(&t) && t != nil && t.Timeout() {
				return true
			}
		}
		switch x := err.(type) {
		case interface{ Unwrap() error }:
			err = x.Unwrap()
		case interface{ Unwrap() []error }:
			for _, e := range x.Unwrap() {
				if isTimeout(e) {
					return true
				}
			}
			return false
		default:
			return false
		}
	}
	return false
}
