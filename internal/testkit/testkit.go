// Package testkit holds helpers for Sluice's reliability tests: a seeded plan of failures, a
// gate for calls that ignore their context, an in-flight gauge, a ledger of terminal states
// kept by the test itself, and dead-letter sinks that fail in controlled ways. It is not API.
package testkit

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/sluicehq/sluice/dlq"
)

// Behaviour is what a user function does on one attempt.
type Behaviour uint8

// The behaviours of a chaos function.
const (
	OK        Behaviour = iota // succeed
	Transient                  // return an ordinary (retryable) error
	Permanent                  // return retry.Permanent(err)
	Panic                      // panic
	Hang                       // block until the context ends (past the per-attempt timeout)
	Ignore                     // ignore the context: block until the test releases the Gate
	numBehaviours
)

// String returns the behaviour's name.
func (b Behaviour) String() string {
	switch b {
	case OK:
		return "ok"
	case Transient:
		return "transient"
	case Permanent:
		return "permanent"
	case Panic:
		return "panic"
	case Hang:
		return "hang"
	case Ignore:
		return "ignore"
	}
	return fmt.Sprintf("behaviour(%d)", int(b))
}

// Weights are the relative frequencies of the behaviours, indexed by Behaviour.
type Weights [numBehaviours]uint64

// Mix64 is splitmix64's finaliser: a good 64-bit hash step.
func Mix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Hash hashes a seed, a string and some numbers.
func Hash(seed uint64, key string, nums ...uint64) uint64 {
	h := Mix64(seed)
	for i := 0; i < len(key); i++ {
		h = Mix64(h ^ uint64(key[i]))
	}
	for _, n := range nums {
		h = Mix64(h ^ n)
	}
	return h
}

// Plan decides from a seed what every attempt of every call does: the behaviour is a pure
// function of (seed, stage, key, attempt), so a test can predict every outcome.
type Plan struct {
	Seed    uint64
	Weights Weights
}

// At returns the behaviour of attempt (from 1) of the call keyed key at stage.
func (p Plan) At(stage int, key string, attempt int) Behaviour {
	var total uint64
	for _, w := range p.Weights {
		total += w
	}
	if total == 0 {
		return OK
	}
	r := Hash(p.Seed, key, uint64(stage)<<32|uint64(attempt)) % total
	for b, w := range p.Weights {
		if r < w {
			return Behaviour(b)
		}
		r -= w
	}
	return OK
}

// Final is the predicted end of a call at one stage under a retry policy of max attempts.
type Final struct {
	OK       bool
	Reason   dlq.Reason // when !OK
	Attempts int        // attempts made
	Last     Behaviour  // behaviour of the last attempt
}

// Expect follows the plan through the attempts of one call: a success, a permanent error or an
// ignored context ends it; a transient error, a panic or a hang is retried up to max attempts.
func (p Plan) Expect(stage int, key string, max int) Final {
	var f Final
	for a := 1; a <= max; a++ {
		b := p.At(stage, key, a)
		f.Attempts, f.Last = a, b
		switch b {
		case OK:
			f.OK = true
			return f
		case Permanent:
			f.Reason = dlq.ReasonPermanent
			return f
		case Ignore:
			f.Reason = dlq.ReasonTimeout // abandoned: never retried
			return f
		case Transient:
			f.Reason = dlq.ReasonError
		case Panic:
			f.Reason = dlq.ReasonPanic
		case Hang:
			f.Reason = dlq.ReasonTimeout
		}
	}
	return f
}

// ErrTransient and ErrPermanentCause are the errors chaos functions return.
var (
	ErrTransient      = errors.New("testkit: transient failure")
	ErrPermanentCause = errors.New("testkit: permanent failure")
	ErrIgnored        = errors.New("testkit: released after ignoring the context")
)

// PanicValue is what a chaos function panics with.
const PanicValue = "testkit: chaos panic"

// Gate holds the calls that ignore their context until the test releases them, and counts
// them, so a test can end with no goroutine left behind.
type Gate struct {
	ch      chan struct{}
	once    sync.Once
	blocked atomic.Int64
	total   atomic.Int64
}

// NewGate returns a closed-for-passage gate.
func NewGate() *Gate { return &Gate{ch: make(chan struct{})} }

// Block waits, ignoring any context, until Release.
func (g *Gate) Block() {
	g.total.Add(1)
	g.blocked.Add(1)
	defer g.blocked.Add(-1)
	<-g.ch
}

// Release lets every blocked call, and every later one, through. It is safe to call twice.
func (g *Gate) Release() { g.once.Do(func() { close(g.ch) }) }

// Blocked returns the number of calls waiting at the gate now.
func (g *Gate) Blocked() int64 { return g.blocked.Load() }

// Total returns the number of calls that reached the gate.
func (g *Gate) Total() int64 { return g.total.Load() }

// Gauge counts calls in flight and remembers the most seen at once.
type Gauge struct{ cur, max atomic.Int64 }

// Enter counts a call in; the returned function counts it out.
func (g *Gauge) Enter() func() {
	n := g.cur.Add(1)
	for {
		m := g.max.Load()
		if n <= m || g.max.CompareAndSwap(m, n) {
			break
		}
	}
	return func() { g.cur.Add(-1) }
}

// Cur returns the calls in flight now.
func (g *Gauge) Cur() int64 { return g.cur.Load() }

// Max returns the most calls seen in flight at once.
func (g *Gauge) Max() int64 { return g.max.Load() }

// State is a terminal state in a Ledger.
type State uint8

// The terminal states.
const (
	Delivered State = iota + 1
	Filtered
	DeadLettered
)

// String returns the state's name.
func (s State) String() string {
	switch s {
	case Delivered:
		return "delivered"
	case Filtered:
		return "filtered"
	case DeadLettered:
		return "dead-lettered"
	}
	return fmt.Sprintf("state(%d)", int(s))
}

// Entry is one terminal state recorded for a unit.
type Entry struct {
	State  State
	Stage  string
	Reason dlq.Reason
}

// Ledger is the test's own account of the terminal states of units, by ID. It is safe for
// concurrent use.
type Ledger struct {
	mu sync.Mutex
	m  map[string][]Entry
}

// NewLedger returns an empty ledger.
func NewLedger() *Ledger { return &Ledger{m: map[string][]Entry{}} }

// Record records a terminal state of id.
func (l *Ledger) Record(id string, e Entry) {
	l.mu.Lock()
	l.m[id] = append(l.m[id], e)
	l.mu.Unlock()
}

// Deliver records that id was delivered.
func (l *Ledger) Deliver(id string) { l.Record(id, Entry{State: Delivered}) }

// Filter records that id was filtered.
func (l *Ledger) Filter(id string) { l.Record(id, Entry{State: Filtered}) }

// DeadLetter records that id was durably dead-lettered by stage for reason.
func (l *Ledger) DeadLetter(id, stage string, reason dlq.Reason) {
	l.Record(id, Entry{State: DeadLettered, Stage: stage, Reason: reason})
}

// Entries returns the states recorded for id.
func (l *Ledger) Entries(id string) []Entry {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.m[id])
}

// IDs returns the IDs with at least one entry in state s, sorted.
func (l *Ledger) IDs(s State) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for id, es := range l.m {
		for _, e := range es {
			if e.State == s {
				out = append(out, id)
				break
			}
		}
	}
	sort.Strings(out)
	return out
}

// Count returns the number of entries in state s.
func (l *Ledger) Count(s State) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, es := range l.m {
		for _, e := range es {
			if e.State == s {
				n++
			}
		}
	}
	return n
}

// Len returns the number of IDs with an entry.
func (l *Ledger) Len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.m)
}

// ExactlyOnce checks that every ID in want has exactly one entry and that no other ID has
// any. It returns an error listing (the first few) violations.
func (l *Ledger) ExactlyOnce(want []string) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	var problems []string
	seen := make(map[string]bool, len(want))
	for _, id := range want {
		seen[id] = true
		switch es := l.m[id]; len(es) {
		case 1:
		case 0:
			problems = append(problems, fmt.Sprintf("%s: no terminal state (lost)", id))
		default:
			problems = append(problems, fmt.Sprintf("%s: %d terminal states %v", id, len(es), es))
		}
	}
	for id, es := range l.m {
		if !seen[id] {
			problems = append(problems, fmt.Sprintf("%s: unexpected unit with states %v", id, es))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	more := ""
	if len(problems) > 10 {
		more = fmt.Sprintf(" (and %d more)", len(problems)-10)
		problems = problems[:10]
	}
	return fmt.Errorf("ledger: %d violation(s)%s: %s", len(problems), more, strings.Join(problems, "; "))
}

// Sink is a dlq.Sink for failure injection: it stores what it accepts in a dlq.Memory and
// fails, blocks or slows down per its settings. Set the fields before sharing it.
type Sink struct {
	// Mem holds the records written successfully.
	Mem *dlq.Memory
	// FailFirst fails this many writes (all of them when negative), with Err.
	FailFirst int
	// Err is the error of failed writes (default ErrDiskOnFire).
	Err error
	// Delay makes each write take this long (on the clock in use: fake under synctest).
	Delay time.Duration
	// Block, when non-nil, makes each write wait until it is closed, ignoring ctx.
	Block chan struct{}

	writes, failed atomic.Int64
	mu             sync.Mutex
	ctxs           []context.Context
	times          map[string][]time.Time // by record ID
}

// ErrDiskOnFire is the default error of a failing Sink.
var ErrDiskOnFire = errors.New("testkit: disk on fire")

// NewSink returns a sink that accepts every write.
func NewSink() *Sink { return &Sink{Mem: dlq.NewMemory()} }

// Write implements dlq.Sink.
func (s *Sink) Write(ctx context.Context, rec dlq.Record) error {
	n := s.writes.Add(1)
	s.mu.Lock()
	if s.times == nil {
		s.times = map[string][]time.Time{}
	}
	s.times[rec.ID] = append(s.times[rec.ID], time.Now())
	s.ctxs = append(s.ctxs, ctx)
	s.mu.Unlock()
	if s.Block != nil {
		<-s.Block
	}
	if s.Delay > 0 {
		time.Sleep(s.Delay)
	}
	if s.FailFirst < 0 || n <= int64(s.FailFirst) {
		s.failed.Add(1)
		if s.Err != nil {
			return s.Err
		}
		return ErrDiskOnFire
	}
	return s.Mem.Write(ctx, rec)
}

// Close implements dlq.Sink.
func (s *Sink) Close() error { return nil }

// Writes returns the number of writes attempted.
func (s *Sink) Writes() int64 { return s.writes.Load() }

// Failed returns the number of writes failed on purpose.
func (s *Sink) Failed() int64 { return s.failed.Load() }

// WriteTimes returns when each write of the record id was attempted.
func (s *Sink) WriteTimes(id string) []time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.times[id])
}

// Contexts returns the contexts the writes were called with.
func (s *Sink) Contexts() []context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.ctxs)
}

// ErrNoSpace is the error DiskFull injects: it matches syscall.ENOSPC with errors.Is.
var ErrNoSpace error = &os.PathError{Op: "fsync", Path: "dlq", Err: syscall.ENOSPC}

// DiskFull returns a dlq.WithSyncHook function that makes a dead-letter file behave as if its
// disk held limit bytes: an fsync of a file larger than that fails with ErrNoSpace (the File
// then truncates the append away and fsyncs again, which succeeds). It counts the failures.
func DiskFull(limit int64, failures *atomic.Int64) func(*os.File) error {
	return func(f *os.File) error {
		st, err := f.Stat()
		if err != nil {
			return err
		}
		if st.Size() > limit {
			if failures != nil {
				failures.Add(1)
			}
			return ErrNoSpace
		}
		return f.Sync()
	}
}
