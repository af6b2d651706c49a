package retry

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// classErr is an ErrorTyper test error.
type classErr struct {
	class string
	err   error
}

func (e *classErr) Error() string     { return e.class }
func (e *classErr) ErrorType() string { return e.class }
func (e *classErr) Unwrap() error     { return e.err }

// timeoutErr has a Timeout method like net.Error.
type timeoutErr struct{ timeout bool }

func (e timeoutErr) Error() string { return "i/o" }
func (e timeoutErr) Timeout() bool { return e.timeout }

// timeoutWrapErr has a Timeout method returning false and wraps err, like
// a *url.Error whose cause has no Timeout method.
type timeoutWrapErr struct{ err error }

func (e *timeoutWrapErr) Error() string { return "wrap: " + e.err.Error() }
func (e *timeoutWrapErr) Timeout() bool { return false }
func (e *timeoutWrapErr) Unwrap() error { return e.err }

// asTimeoutErr becomes a timeout through an As method, as errors.As allows.
type asTimeoutErr struct{}

func (asTimeoutErr) Error() string { return "as" }
func (asTimeoutErr) As(target any) bool {
	if p, ok := target.(*timeouter); ok {
		*p = timeoutErr{timeout: true}
		return true
	}
	return false
}

func TestPermanent(t *testing.T) {
	assert.NoError(t, Permanent(nil))
	assert.False(t, IsPermanent(nil))
	assert.False(t, IsPermanent(errTransient))

	err := Permanent(errTransient)
	assert.True(t, IsPermanent(err))
	assert.Equal(t, "transient", err.Error())
	assert.ErrorIs(t, err, errTransient)
	assert.Same(t, err, Permanent(err), "not wrapped twice")

	var pathErr *fs.PathError
	err = Permanent(fmt.Errorf("open: %w", &fs.PathError{Op: "open", Path: "x", Err: fs.ErrNotExist}))
	require.ErrorAs(t, err, &pathErr)
	assert.ErrorIs(t, err, fs.ErrNotExist)

	assert.True(t, IsPermanent(fmt.Errorf("ctx: %w", Permanent(errTransient))))
	assert.True(t, IsPermanent(backoff.Permanent(errTransient)), "cenkalti's PermanentError is permanent")
	assert.True(t, IsPermanent(fmt.Errorf("ctx: %w", backoff.Permanent(errTransient))))
	assert.True(t, IsPermanent(errors.Join(errTransient, Permanent(errTransient))))
	assert.True(t, IsPermanent(After(Permanent(errTransient), time.Second)))
}

func TestAfter(t *testing.T) {
	assert.NoError(t, After(nil, time.Second))
	_, ok := RetryAfter(nil)
	assert.False(t, ok)
	_, ok = RetryAfter(errTransient)
	assert.False(t, ok)

	err := After(errTransient, 2*time.Second)
	assert.Equal(t, "transient", err.Error())
	assert.ErrorIs(t, err, errTransient)
	assert.False(t, IsPermanent(err))
	d, ok := RetryAfter(err)
	assert.True(t, ok)
	assert.Equal(t, 2*time.Second, d)

	d, ok = RetryAfter(fmt.Errorf("a: %w", fmt.Errorf("b: %w", err)))
	assert.True(t, ok)
	assert.Equal(t, 2*time.Second, d)

	d, ok = RetryAfter(errors.Join(errTransient, After(errTransient, time.Minute)))
	assert.True(t, ok)
	assert.Equal(t, time.Minute, d)

	d, ok = RetryAfter(After(After(errTransient, time.Minute), time.Second))
	assert.True(t, ok)
	assert.Equal(t, time.Second, d, "the outermost delay wins")

	d, ok = RetryAfter(Permanent(After(errTransient, time.Second)))
	assert.True(t, ok, "RetryAfter sees through Permanent")
	assert.Equal(t, time.Second, d)

	var ce *classErr
	require.ErrorAs(t, After(&classErr{class: "x"}, time.Second), &ce)
}

func TestErrorType(t *testing.T) {
	rateLimited := &classErr{class: "rate_limited"}
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, ""},
		{"plain", errTransient, "error"},
		{"wrapped plain", fmt.Errorf("x: %w", errTransient), "error"},
		{"Go type names are not used", &fs.PathError{Op: "open", Path: "/x", Err: fs.ErrNotExist}, "error"},
		{"typer", rateLimited, "rate_limited"},
		{"wrapped typer", fmt.Errorf("x: %w", rateLimited), "rate_limited"},
		{"joined typer", errors.Join(errTransient, rateLimited), "rate_limited"},
		{"After keeps the inner class", After(rateLimited, time.Second), "rate_limited"},
		{"After of plain", After(errTransient, time.Second), "error"},
		{"permanent", Permanent(errTransient), "permanent"},
		{"outer permanent wins", Permanent(rateLimited), "permanent"},
		{"outer typer wins over permanent", &classErr{class: "invalid", err: Permanent(errTransient)}, "invalid"},
		{"wrapped permanent", fmt.Errorf("x: %w", Permanent(context.DeadlineExceeded)), "permanent"},
		{"cenkalti permanent", backoff.Permanent(errTransient), "permanent"},
		{"cenkalti permanent of typer", backoff.Permanent(rateLimited), "rate_limited"},
		{"deadline", context.DeadlineExceeded, "timeout"},
		{"wrapped deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), "timeout"},
		{"os deadline", os.ErrDeadlineExceeded, "timeout"},
		{"Timeout() true", fmt.Errorf("x: %w", timeoutErr{timeout: true}), "timeout"},
		{"Timeout() false", timeoutErr{timeout: false}, "error"},
		{"timeout under a Timeout() false wrapper", &url.Error{Op: "Get", URL: "http://x/", Err: fmt.Errorf("reading body: %w", os.ErrDeadlineExceeded)}, "timeout"},
		{"Timeout() true under Timeout() false", &timeoutWrapErr{err: fmt.Errorf("x: %w", timeoutErr{timeout: true})}, "timeout"},
		{"joined timeout under Timeout() false", &timeoutWrapErr{err: errors.Join(errTransient, timeoutErr{timeout: true})}, "timeout"},
		{"joined Timeout() false only", errors.Join(errTransient, timeoutErr{timeout: false}), "error"},
		{"As method yielding a timeout", fmt.Errorf("x: %w", asTimeoutErr{}), "timeout"},
		{"url.Error without timeout", &url.Error{Op: "Get", URL: "http://x/", Err: errTransient}, "error"},
		{"canceled", context.Canceled, "canceled"},
		{"wrapped canceled", fmt.Errorf("x: %w", context.Canceled), "canceled"},
		{"empty class falls through", &classErr{class: "", err: context.Canceled}, "canceled"},
		{"empty class of plain", &classErr{class: ""}, "error"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			assert.Equal(t, tt.want, ErrorType(tt.err))
		})
	}
}

func TestWrappersImplementErrorTyper(t *testing.T) {
	var typer ErrorTyper
	require.ErrorAs(t, Permanent(errTransient), &typer)
	assert.Equal(t, "permanent", typer.ErrorType())

	_, ok := After(errTransient, time.Second).(ErrorTyper)
	assert.False(t, ok, "After keeps the inner class")

	var u interface{ Unwrap() error }
	require.ErrorAs(t, Permanent(errTransient), &u)
	assert.Equal(t, errTransient, u.Unwrap())
	require.ErrorAs(t, After(errTransient, 0), &u)
	assert.Equal(t, errTransient, u.Unwrap())
}
