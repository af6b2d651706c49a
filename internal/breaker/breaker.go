// Package breaker is a circuit breaker: a small state machine that stops calling a failing
// dependency for a while, then lets a few probe calls through to find out whether it has
// recovered.
//
// A Breaker is closed while calls mostly succeed. It opens when, over a sliding window, at
// least MinRequests calls finished and the share of failures reached FailureRate. While open
// it refuses every call with ErrOpen. After OpenFor it is half-open: up to Probes calls go
// through; one failure opens it again for another OpenFor, Probes successes close it with an
// empty window.
//
// The stage code wires a Breaker around each call (one per stage, or one per key through
// internal/keyed): Allow before the call, Done with its outcome after. Both take one mutex and
// allocate nothing.
package breaker

import (
	"errors"
	"fmt"
	"math"
	"sync"
	"time"
)

// Buckets is the number of buckets the window is split into: the failure rate is measured
// over the current bucket and the Buckets-1 before it.
const Buckets = 10

// Defaults used for the zero fields of a Config.
const (
	DefaultWindow      = 10 * time.Second
	DefaultMinRequests = 20
	DefaultFailureRate = 0.5
	DefaultOpenFor     = 5 * time.Second
	DefaultProbes      = 1
)

// Config is the configuration of a Breaker. Zero fields mean their defaults.
type Config struct {
	// Window is the span over which the failure rate is measured (default 10s). It is split
	// into Buckets buckets of Window/Buckets; a call is counted in the bucket of the time it
	// finished and stays in the window for Buckets-1 more buckets, so the window covers
	// between 9/10 of Window and Window.
	Window time.Duration
	// MinRequests is how many calls must have finished in the window before the breaker may
	// open (default 20).
	MinRequests int
	// FailureRate opens the breaker when failures/calls in the window reach it (default 0.5).
	// It must be in (0, 1].
	FailureRate float64
	// OpenFor is how long the breaker stays open before it half-opens (default 5s).
	OpenFor time.Duration
	// Probes is how many calls a half-open breaker lets through; that many successes close
	// it (default 1).
	Probes int
}

// Validate reports what is wrong with c, naming the field, or nil. Zero fields are valid:
// they mean the defaults.
func (c Config) Validate() error {
	var errs []error
	if c.Window < 0 {
		errs = append(errs, fmt.Errorf("breaker: Window is %v; it must be positive (or 0 for the default %v)", c.Window, DefaultWindow))
	} else if c.Window > 0 && c.Window < Buckets {
		errs = append(errs, fmt.Errorf("breaker: Window is %v; it must be at least %v (it is split into %d buckets)", c.Window, time.Duration(Buckets), Buckets))
	}
	if c.MinRequests < 0 {
		errs = append(errs, fmt.Errorf("breaker: MinRequests is %d; it cannot be negative (0 means the default %d)", c.MinRequests, DefaultMinRequests))
	}
	if math.IsNaN(c.FailureRate) || c.FailureRate < 0 || c.FailureRate > 1 {
		errs = append(errs, fmt.Errorf("breaker: FailureRate is %v; it must be in (0, 1] (or 0 for the default %v)", c.FailureRate, DefaultFailureRate))
	}
	if c.OpenFor < 0 {
		errs = append(errs, fmt.Errorf("breaker: OpenFor is %v; it must be positive (or 0 for the default %v)", c.OpenFor, DefaultOpenFor))
	}
	if c.Probes < 0 {
		errs = append(errs, fmt.Errorf("breaker: Probes is %d; it cannot be negative (0 means the default %d)", c.Probes, DefaultProbes))
	}
	return errors.Join(errs...)
}

// Normalize returns c with its zero fields set to the defaults.
func (c Config) Normalize() Config {
	if c.Window == 0 {
		c.Window = DefaultWindow
	}
	if c.MinRequests == 0 {
		c.MinRequests = DefaultMinRequests
	}
	if c.FailureRate == 0 {
		c.FailureRate = DefaultFailureRate
	}
	if c.OpenFor == 0 {
		c.OpenFor = DefaultOpenFor
	}
	if c.Probes == 0 {
		c.Probes = DefaultProbes
	}
	return c
}

// State is the state of a Breaker.
type State uint8

// The states of a Breaker.
const (
	// Closed lets every call through and measures the failure rate.
	Closed State = iota
	// Open refuses every call until OpenFor has passed.
	Open
	// HalfOpen lets up to Probes calls through to test the dependency.
	HalfOpen
)

// String returns "closed", "open" or "half_open".
func (s State) String() string {
	switch s {
	case Closed:
		return "closed"
	case Open:
		return "open"
	case HalfOpen:
		return "half_open"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// ErrOpen is the error of a call refused by a breaker. Allow returns errors that wrap it
// (errors.Is(err, ErrOpen) holds) and whose ErrorType() is "circuit_open".
var ErrOpen = errors.New("circuit open")

// refusal is the error Allow returns.
type refusal struct{ halfOpen bool }

func (e refusal) Error() string {
	if e.halfOpen {
		return "circuit open: half-open, all probe calls in flight"
	}
	return ErrOpen.Error()
}

// Unwrap returns ErrOpen.
func (refusal) Unwrap() error { return ErrOpen }

// ErrorType returns "circuit_open" (see retry.ErrorTyper).
func (refusal) ErrorType() string { return "circuit_open" }

// Refusals as interface values made once, so Allow never allocates.
var (
	errRefusedOpen     error = refusal{}
	errRefusedHalfOpen error = refusal{halfOpen: true}
)

type bucket struct {
	slot            int64 // index of the Window/Buckets interval since the epoch
	calls, failures int
}

type transition struct{ from, to State }

// Breaker is a circuit breaker. It is safe for concurrent use; make one with New.
type Breaker struct {
	cfg      Config
	width    time.Duration // of a bucket
	epoch    time.Time
	onChange func(from, to State)

	mu        sync.Mutex
	state     State
	openUntil time.Duration // since epoch, while open
	buckets   [Buckets]bucket
	// Half-open: probes admitted, in flight, and succeeded; succeeded+inFlight == admitted.
	admitted, inFlight, succeeded int

	pending   []transition // transitions not yet passed to onChange, oldest first
	notifying bool         // a goroutine is passing pending transitions to onChange
}

// New returns a closed breaker. Zero fields of c mean the defaults; New panics if c is
// invalid (check it with Validate first).
//
// onChange, if not nil, is called on every change of state, with the breaker's lock released,
// so it may call the breaker's methods (State included). Calls are made one at a time and in
// the order of the changes: by the goroutine whose Allow, Done or State made the change, or, if
// another goroutine is already inside onChange, by that goroutine once its call returns. So a
// method that changed the state may return before onChange has seen the change.
func New(c Config, onChange func(from, to State)) *Breaker {
	if err := c.Validate(); err != nil {
		panic(err)
	}
	c = c.Normalize()
	return &Breaker{cfg: c, width: c.Window / Buckets, epoch: time.Now(), onChange: onChange}
}

// Config returns the breaker's configuration with the defaults filled in.
func (b *Breaker) Config() Config { return b.cfg }

// Allow reports whether a call may go: nil if it may, then Done must be called exactly once
// with its outcome. It returns an error wrapping ErrOpen when the breaker is open, or half-open
// with its Probes calls already let through.
func (b *Breaker) Allow() error {
	b.mu.Lock()
	switch b.advance() {
	case Open:
		b.unlock()
		return errRefusedOpen
	case HalfOpen:
		if b.admitted >= b.cfg.Probes {
			b.unlock()
			return errRefusedHalfOpen
		}
		b.admitted++
		b.inFlight++
	}
	b.unlock()
	return nil
}

// Done reports the outcome of a call that Allow let through; call it exactly once per such
// call. The outcome counts in the state the breaker is in when Done is called: while closed
// it enters the window; while open it is dropped (the call was let through before the breaker
// opened); while half-open it counts as a probe's outcome if a probe is in flight, and is
// dropped otherwise.
func (b *Breaker) Done(success bool) {
	b.mu.Lock()
	switch b.advance() {
	case Closed:
		b.record(success)
	case HalfOpen:
		if b.inFlight == 0 {
			break // a call let through while closed, finishing late
		}
		b.inFlight--
		if !success {
			b.open()
			break
		}
		b.succeeded++
		if b.succeeded >= b.cfg.Probes {
			b.buckets = [Buckets]bucket{}
			b.set(Closed)
		}
	}
	b.unlock()
}

// State returns the breaker's state. An open breaker whose OpenFor has passed is reported
// (and becomes) half-open.
func (b *Breaker) State() State {
	b.mu.Lock()
	s := b.advance()
	b.unlock()
	return s
}

// now returns the time since the epoch (monotonic).
func (b *Breaker) now() time.Duration { return time.Since(b.epoch) }

// advance half-opens an open breaker whose time is up, and returns the state. b.mu is held.
func (b *Breaker) advance() State {
	if b.state == Open && b.now() >= b.openUntil {
		b.admitted, b.inFlight, b.succeeded = 0, 0, 0
		b.set(HalfOpen)
	}
	return b.state
}

// record counts a call in the window and opens the breaker if the window calls for it.
// b.mu is held; the breaker is closed.
func (b *Breaker) record(success bool) {
	slot := int64(b.now() / b.width)
	bk := &b.buckets[slot%Buckets]
	if bk.slot != slot {
		*bk = bucket{slot: slot}
	}
	bk.calls++
	if !success {
		bk.failures++
	}
	calls, failures := 0, 0
	for i := range b.buckets {
		if s := b.buckets[i].slot; s > slot-Buckets && s <= slot {
			calls += b.buckets[i].calls
			failures += b.buckets[i].failures
		}
	}
	if calls >= b.cfg.MinRequests && float64(failures) >= b.cfg.FailureRate*float64(calls) {
		b.open()
	}
}

// open opens the breaker for OpenFor from now. b.mu is held.
func (b *Breaker) open() {
	b.openUntil = b.now() + b.cfg.OpenFor
	b.set(Open)
}

// set changes the state and queues the change for onChange. b.mu is held.
func (b *Breaker) set(to State) {
	if b.onChange != nil {
		b.pending = append(b.pending, transition{b.state, to})
	}
	b.state = to
}

// unlock releases b.mu, first passing the pending changes to onChange unless another
// goroutine is doing so. b.mu is held.
func (b *Breaker) unlock() {
	if b.notifying || len(b.pending) == 0 {
		b.mu.Unlock()
		return
	}
	b.notifying = true
	finished := false
	defer func() {
		if !finished { // onChange panicked (b.mu is released): let the next change be reported
			b.mu.Lock()
			b.notifying = false
			b.mu.Unlock()
		}
	}()
	for len(b.pending) > 0 {
		t := b.pending[0]
		b.pending = b.pending[:copy(b.pending, b.pending[1:])]
		b.mu.Unlock()
		b.onChange(t.from, t.to)
		b.mu.Lock()
	}
	b.notifying = false
	finished = true
	b.mu.Unlock()
}
