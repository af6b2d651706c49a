package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"time"

	"golang.org/x/time/rate"

	"github.com/sluicehq/sluice/internal/breaker"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/internal/keyed"
)

// ErrCircuitOpen is the error of an attempt refused by an open circuit breaker (reason
// circuit_open when it is the last). Test for it with errors.Is.
var ErrCircuitOpen = breaker.ErrOpen

// DefaultMaxKeys bounds the per-key limiters and breakers a stage keeps (least recently used
// ones are dropped beyond it).
const DefaultMaxKeys = 10_000

// BreakerConfig configures a circuit breaker. Zero fields take the defaults.
type BreakerConfig struct {
	// Window is the span over which the failure rate is measured (default 10s).
	Window time.Duration
	// MinRequests is how many calls must have finished in the window before it may open
	// (default 20).
	MinRequests int
	// FailureRate opens the breaker when failures/calls in the window reach it, in (0, 1]
	// (default 0.5). Permanent errors do not count as failures: the dependency answered.
	FailureRate float64
	// OpenFor is how long it stays open (failing attempts at once) before it lets probes
	// through (default 5s).
	OpenFor time.Duration
	// Probes is how many calls a half-open breaker lets through; that many successes close it
	// (default 1).
	Probes int
}

func (c BreakerConfig) internal() breaker.Config {
	return breaker.Config{Window: c.Window, MinRequests: c.MinRequests, FailureRate: c.FailureRate, OpenFor: c.OpenFor, Probes: c.Probes}
}

type limitCfg struct {
	perSecond float64
	burst     int
	key       any // func(In) string, or nil
	maxKeys   int
}

type breakerCfg struct {
	cfg     breaker.Config
	key     any
	maxKeys int
}

func checkKey(c *config, what string, key any, maxKeys int) bool {
	if key != nil && reflect.ValueOf(key).IsNil() {
		c.errs = append(c.errs, fmt.Errorf("%s: the key function is nil", what))
		return false
	}
	if maxKeys < 0 {
		c.errs = append(c.errs, fmt.Errorf("%s: maxKeys %d cannot be negative (0 means %d)", what, maxKeys, DefaultMaxKeys))
		return false
	}
	return true
}

func rateLimit(what string, key any, perSecond float64, burst, maxKeys int) Option {
	return func(c *config) {
		if !(perSecond > 0) || burst < 1 { // (NaN too)
			c.errs = append(c.errs, fmt.Errorf("%s(%v/s, burst %d): give a positive rate and a burst of at least 1", what, perSecond, burst))
			return
		}
		if checkKey(c, what, key, maxKeys) {
			c.limit = &limitCfg{perSecond: perSecond, burst: burst, key: key, maxKeys: max(maxKeys, 0)}
		}
	}
}

// RateLimit limits the stage's calls to perSecond, with bursts of up to burst (a token bucket,
// golang.org/x/time/rate). Every attempt, retries included, waits for a token before its call;
// the wait counts as work time, but not toward the per-attempt timeout (Timeout), which starts
// with the call.
func RateLimit(perSecond float64, burst int) Option {
	return rateLimit("RateLimit", nil, perSecond, burst, 0)
}

// RateLimitBy limits the stage's calls per key (per host for a downloader), each key to
// perSecond with bursts of burst, keeping at most maxKeys keys (0: DefaultMaxKeys; the least
// recently used are dropped). key's type must be the stage's input type; not for batch
// stages.
//
// key is called before every attempt, with no timeout. A panic in it fails the item as a panic
// of the stage's function does (reason panic, its stack in the dead letter), with no call
// made, and is not retried: a key function is deterministic, so a retry would panic again.
func RateLimitBy[T any](key func(T) string, perSecond float64, burst, maxKeys int) Option {
	return rateLimit("RateLimitBy", key, perSecond, burst, maxKeys)
}

func circuitBreaker(what string, key any, bc BreakerConfig, maxKeys int) Option {
	return func(c *config) {
		cfg := bc.internal()
		if err := cfg.Validate(); err != nil {
			c.errs = append(c.errs, fmt.Errorf("%s: %w", what, err))
			return
		}
		if checkKey(c, what, key, maxKeys) {
			c.breaker = &breakerCfg{cfg: cfg, key: key, maxKeys: max(maxKeys, 0)}
		}
	}
}

// CircuitBreaker gives the stage a circuit breaker: when the failure rate of its calls over
// the window passes the threshold, it opens and fails attempts at once (they follow the retry
// policy, and are dead-lettered with reason circuit_open if it runs out); after OpenFor it lets
// probes through, and closes when they succeed. State changes are logged and counted
// (Stats.CircuitOpens, metric sluice.stage.circuit.opens); a change is an event on the span of
// the call that caused it, and a refused attempt a circuit_open event. A call abandoned for
// ignoring its context (see Timeout) counts as a failure when it is abandoned: a half-open
// breaker whose probe hangs opens again then, without waiting for the call to return.
func CircuitBreaker(c BreakerConfig) Option {
	return circuitBreaker("CircuitBreaker", nil, c, 0)
}

// CircuitBreakerBy gives the stage one circuit breaker per key (per host), keeping at most
// maxKeys of them (0: DefaultMaxKeys). key's type must be the stage's input type; not for
// batch stages.
//
// key is called before every attempt, with no timeout. A panic in it fails the item as a panic of
// the stage's function does (reason panic, its stack in the dead letter), with no call made, and is
// not retried: a key function is deterministic, so a retry would panic again.
func CircuitBreakerBy[T any](key func(T) string, c BreakerConfig, maxKeys int) Option {
	return circuitBreaker("CircuitBreakerBy", key, c, maxKeys)
}

// checkGuards checks the key functions' types against the stage's input, at build time.
func checkGuards[In any](kind Kind, c *config) []error {
	var errs []error
	check := func(what string, key any) {
		if key == nil {
			return
		}
		if _, ok := key.(func(In) string); !ok {
			errs = append(errs, fmt.Errorf("%s: the key function is a %T, but the stage's input is %v", what, key, reflect.TypeFor[In]()))
		}
		if kind == KindBatch {
			errs = append(errs, fmt.Errorf("%s: a batch stage has no single input to take a key from; use the stage-wide form", what))
		}
	}
	if c.limit != nil {
		check("RateLimitBy", c.limit.key)
	}
	if c.breaker != nil {
		check("CircuitBreakerBy", c.breaker.key)
	}
	return errs
}

// guards are a running stage's rate limiters and circuit breakers.
type guards[In any] struct {
	limiter  *rate.Limiter
	limiters *keyed.Map[*rate.Limiter]
	limitKey func(In) string

	breaker  *breaker.Breaker
	breakers *keyed.Map[*breaker.Breaker]
	brKey    func(In) string
}

func (r *Runner[In, Out]) newGuards() {
	c := r.s.cfg
	g := &r.guards
	if l := c.limit; l != nil {
		newLimiter := func(string) *rate.Limiter { return rate.NewLimiter(rate.Limit(l.perSecond), l.burst) }
		if l.key == nil {
			g.limiter = newLimiter("")
		} else {
			g.limitKey = l.key.(func(In) string)
			g.limiters = keyed.New(orDefault(l.maxKeys), newLimiter)
		}
	}
	if b := c.breaker; b != nil {
		newBreaker := func(key string) *breaker.Breaker {
			return breaker.New(b.cfg, func(from, to breaker.State) {
				if to == breaker.Open {
					r.stats.circuitOpens.Add(1)
				}
				r.env.Logger.Info("sluice: circuit breaker", slog.String("stage", r.s.name), slog.String("key", key),
					slog.String("from", from.String()), slog.String("to", to.String()))
			})
		}
		if b.key == nil {
			g.breaker = newBreaker("")
		} else {
			g.brKey = b.key.(func(In) string)
			g.breakers = keyed.New(orDefault(b.maxKeys), newBreaker)
		}
	}
}

func orDefault(maxKeys int) int {
	if maxKeys == 0 {
		return DefaultMaxKeys
	}
	return maxKeys
}

// pick returns the rate limiter and the breaker guarding an attempt on items (either may be
// nil). It calls the key functions, which are user code: call it under the worker's panic
// catcher (see attempts).
func (g *guards[In]) pick(items []core.Envelope[In]) (*rate.Limiter, *breaker.Breaker) {
	l, br := g.limiter, g.breaker
	if len(items) == 1 {
		if g.limiters != nil {
			l = g.limiters.Get(g.limitKey(items[0].V))
		}
		if g.breakers != nil {
			br = g.breakers.Get(g.brKey(items[0].V))
		}
	}
	return l, br
}

// wait takes a token from l (nil: no limit) for an attempt; false means the run's work ended
// first.
func wait(ctx context.Context, l *rate.Limiter) bool {
	return l == nil || l.Wait(ctx) == nil
}

// isCircuitOpen reports whether err is a refusal by an open breaker.
func isCircuitOpen(err error) bool { return errors.Is(err, breaker.ErrOpen) }
