// Package core holds the pieces shared by package stage and package pipeline that are not API:
// the envelope that wraps every item, the acknowledgement tree, the bounded queues between
// stages, and the per-run environment a stage runs in.
package core

import (
	"context"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/tracing"
	"github.com/sourcegraph/conc/panics"
	"go.opentelemetry.io/otel/trace"
)

// Outcome is the terminal state of an item, as reported to its acknowledgement.
type Outcome uint8

// The outcomes, ordered from mildest to most severe: when several items are folded into one
// acknowledgement (the children of a flat-map), the most severe wins.
const (
	Filtered Outcome = iota + 1
	Delivered
	DeadLettered
	NotDone
)

// String returns the outcome's name.
func (o Outcome) String() string {
	switch o {
	case Filtered:
		return "filtered"
	case Delivered:
		return "delivered"
	case DeadLettered:
		return "dead-lettered"
	case NotDone:
		return "not-done"
	}
	return "outcome(" + strconv.Itoa(int(o)) + ")"
}

// Tracker is a node of the acknowledgement tree. A root calls its source's acknowledgement once,
// when every item derived from it reached a terminal state. Trackers exist only for items whose
// source asked for acknowledgements; every method is nil-safe, so items without one cost nothing.
type Tracker struct {
	pending atomic.Int32
	worst   atomic.Uint32
	parent  *Tracker
	members []*Tracker
	ack     func(Outcome)
	// panicked receives a panic of ack, recovered (as an error with its stack).
	panicked func(error)
	catch    panics.Catcher // recovers that panic (here, not on Done's stack: no allocation per ack)
}

// NewRoot returns a tracker for one source item that calls ack exactly once. A nil ack gives nil.
// A panic in ack does not propagate: it is recovered and handed to panicked as an error, with
// the outcome, the panic's value and its stack. (The item's terminal state is durable by then:
// only the acknowledgement is lost, as when a broker's ack fails.)
func NewRoot(ack func(Outcome), panicked func(error)) *Tracker {
	if ack == nil {
		return nil
	}
	t := &Tracker{ack: ack, panicked: panicked}
	t.pending.Store(1)
	return t
}

// Fork returns the shared tracker of n items derived from t (the outputs of a flat-map): t is done
// when all n are done, with the most severe of their outcomes.
func (t *Tracker) Fork(n int) *Tracker {
	if t == nil {
		return nil
	}
	c := &Tracker{parent: t}
	c.pending.Store(int32(n))
	return c
}

// Group returns a tracker that, when done, marks every member done with the same outcome (the
// items a batch carries, one tracker or nil each). It returns nil when no member needs an
// acknowledgement. When some do and some do not, the group keeps one nil member for those that
// do not: it is not Redeliverable (Done skips the nil).
func Group(members []*Tracker) *Tracker {
	var ms []*Tracker
	untracked := false
	for _, m := range members {
		if m != nil {
			ms = append(ms, m)
		} else {
			untracked = true
		}
	}
	if len(ms) == 0 {
		return nil
	}
	if untracked {
		ms = append(ms, nil)
	}
	t := &Tracker{members: ms}
	t.pending.Store(1)
	return t
}

// Redeliverable reports whether every unit under t has a source that can redeliver it, so that
// an item cut off by a drain may be handed back (NotDone) instead of dead-lettered: false for
// nil (no acknowledgement), and for a group that also carries units without one, directly or
// through a member or the item it was derived from (a flat-map's input). It walks the tree:
// call it off the hot path (a drain parks items with it).
func (t *Tracker) Redeliverable() bool {
	switch {
	case t == nil:
		return false
	case t.parent != nil:
		return t.parent.Redeliverable()
	}
	for _, m := range t.members {
		if !m.Redeliverable() {
			return false
		}
	}
	return true
}

// Done records that one item under t reached outcome o.
func (t *Tracker) Done(o Outcome) {
	if t == nil {
		return
	}
	if t.members != nil {
		for _, m := range t.members {
			m.Done(o)
		}
		return
	}
	for {
		w := t.worst.Load()
		if uint32(o) <= w || t.worst.CompareAndSwap(w, uint32(o)) {
			break
		}
	}
	if t.pending.Add(-1) != 0 {
		return
	}
	final := Outcome(t.worst.Load())
	if t.parent != nil {
		t.parent.Done(final)
		return
	}
	t.catch.Try(func() { t.ack(final) })
	if rec := t.catch.Recovered(); rec != nil {
		t.panicked(fmt.Errorf("an item's Ack panicked (outcome %s): %v\n%s", final, rec.Value, rec.Stack))
	}
}

// Meta is the framework's part of an envelope. It is kept small (it is copied at every hop):
// what most items do not have lives behind Extra.
type Meta struct {
	// Key is the correlation ID when the item has a natural one (or was assigned one); otherwise
	// the ID is made from the run's prefix and Seq only when it is needed.
	Key string
	Seq uint64
	// Index is the item's position in its input, from 1 (0: none), its source when it has no
	// Extra.Source.
	Index int64
	// Enqueued is when the item was put into its current stage's input, on the run's Clock.
	Enqueued int64
	// Weight is how many source units the envelope stands for: 1, or the sum carried by a batch.
	Weight int32
	// Replays counts how many times the item was replayed from the dead-letter queue.
	Replays int32
	// Tracker is the item's acknowledgement, nil when its source needs none.
	Tracker *Tracker
	// X holds the rarer parts; nil when the item has none. It is shared between copies of the
	// meta (a flat-map's outputs): replace it, never change it in place.
	X *Extra
}

// Extra is the part of an item's meta that most items do not have.
type Extra struct {
	// Source says where the item came from (a URL, a message sequence).
	Source string
	// Headers is user metadata carried into dead-letter records.
	Headers map[string]string
	// Span is the trace context of the item's span in the previous stage (or of the context it
	// was submitted with): the parent of its next span.
	Span trace.SpanContext
	// Link is the span of the failure a replayed item comes from: its next span links to it.
	Link trace.SpanContext
}

// NewExtra returns an Extra, or nil when it would be empty.
func NewExtra(source string, headers map[string]string, span trace.SpanContext) *Extra {
	if source == "" && len(headers) == 0 && !span.IsValid() {
		return nil
	}
	return &Extra{Source: source, Headers: headers, Span: span}
}

// WithSpan returns a copy of x (which may be nil) with Span set and Link cleared.
func (x *Extra) WithSpan(sc trace.SpanContext) *Extra {
	n := &Extra{Span: sc}
	if x != nil {
		n.Source, n.Headers = x.Source, x.Headers
	}
	return n
}

// Link returns the span a replayed item links to.
func (m *Meta) Link() trace.SpanContext {
	if m.X == nil {
		return trace.SpanContext{}
	}
	return m.X.Link
}

// Span returns the trace context carried by the meta.
func (m *Meta) Span() trace.SpanContext {
	if m.X == nil {
		return trace.SpanContext{}
	}
	return m.X.Span
}

// Headers returns the user metadata carried by the meta.
func (m *Meta) Headers() map[string]string {
	if m.X == nil {
		return nil
	}
	return m.X.Headers
}

// CorrelationID returns the item's correlation ID, made from prefix and the sequence number when
// the item has no natural key.
func (m *Meta) CorrelationID(prefix string) string {
	if m.Key != "" {
		return m.Key
	}
	return prefix + strconv.FormatUint(m.Seq, 10)
}

// SourceName returns where the item came from, for its dead letter.
func (m *Meta) SourceName() string {
	if m.X != nil && m.X.Source != "" {
		return m.X.Source
	}
	if m.Index > 0 {
		return "index:" + strconv.FormatInt(m.Index, 10)
	}
	return ""
}

// Envelope wraps one item.
type Envelope[T any] struct {
	V T
	M Meta
}

// Counters are the run-wide totals, in source units (an envelope counts its Weight). The
// delivered and filtered units are counted by each stage's workers, without contention.
type Counters struct {
	Admitted     atomic.Int64
	Rejected     atomic.Int64
	Spawned      atomic.Int64
	DeadLettered atomic.Int64
	Returned     atomic.Int64
	Stranded     atomic.Int64
	Abandoned    atomic.Int64
}

// Clock reads monotonic time as nanoseconds since the start of a run: cheaper than wall time,
// and it follows testing/synctest's fake clock.
type Clock struct{ Epoch time.Time }

// Now returns the nanoseconds since the epoch.
func (c Clock) Now() int64 { return int64(time.Since(c.Epoch)) }

// Time turns a reading back into wall time.
func (c Clock) Time(t int64) time.Time { return c.Epoch.Add(time.Duration(t)) }

// Env is what a stage needs from the run it is part of.
type Env struct {
	// Pipeline is the pipeline's name, written into dead letters.
	Pipeline string
	// Prefix starts every generated correlation ID of this run.
	Prefix string
	// Work is cancelled when the drain deadline passes or the pipeline fails: attempts in
	// flight are cancelled and the remaining items are parked.
	Work context.Context
	// Totals are the run-wide counters.
	Totals *Counters
	// Logger receives retries, dead letters and drain events.
	Logger *slog.Logger
	// DeadLetter writes a record durably (with retries and the fallback sink), or returns an
	// error that names the item; the caller then calls Fail with it.
	DeadLetter func(rec dlq.Record) error
	// Fail stops the run with err (the first error wins).
	Fail func(err error)
	// Failed reports whether the run failed (dead letters can no longer be written).
	Failed func() bool
	// Seq hands out run-unique sequence numbers for generated correlation IDs.
	Seq *atomic.Uint64
	// Clock reads the run's monotonic time.
	Clock Clock
	// Tel is the run's telemetry (nil: none).
	Tel *tracing.Telemetry
}
