// Package core holds the pieces shared by package stage and package pipeline that are not API:
// the envelope that wraps every item, the acknowledgement tree, the bounded queues between
// stages, and the per-run environment a stage runs in.
package core

import (
	"context"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/dlq"
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
}

// NewRoot returns a tracker for one source item that calls ack exactly once. A nil ack gives nil.
func NewRoot(ack func(Outcome)) *Tracker {
	if ack == nil {
		return nil
	}
	t := &Tracker{ack: ack}
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
// items a batch carries). It returns nil when no member needs an acknowledgement.
func Group(members []*Tracker) *Tracker {
	var ms []*Tracker
	for _, m := range members {
		if m != nil {
			ms = append(ms, m)
		}
	}
	if len(ms) == 0 {
		return nil
	}
	t := &Tracker{members: ms}
	t.pending.Store(1)
	return t
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
	t.ack(final)
}

// Meta is the framework's part of an envelope.
type Meta struct {
	// Key is the correlation ID when the item has a natural one (or was assigned one); otherwise
	// the ID is made from the run's prefix and Seq only when it is needed.
	Key string
	Seq uint64
	// Source says where the item came from (a URL, a message sequence); when it is empty and
	// Index is set, the source is the item's position in its input, from 1.
	Source string
	Index  int64
	// Ingress is when the item entered the pipeline (Unix nanoseconds).
	Ingress int64
	// Enqueued is when the item was put into its current stage's input (Unix nanoseconds).
	Enqueued int64
	// Weight is how many source units the envelope stands for: 1, or the sum carried by a batch.
	Weight int32
	// Replays counts how many times the item was replayed from the dead-letter queue.
	Replays int32
	// Tracker is the item's acknowledgement, nil when its source needs none.
	Tracker *Tracker
	// Span is the trace context of the item's span in the previous stage (or of the context it
	// was submitted with); the seam for tracing.
	Span trace.SpanContext
	// Headers is user metadata carried into dead-letter records.
	Headers map[string]string
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
	if m.Source == "" && m.Index > 0 {
		return "index:" + strconv.FormatInt(m.Index, 10)
	}
	return m.Source
}

// Envelope wraps one item.
type Envelope[T any] struct {
	V T
	M Meta
}

// Counters are the run-wide totals, in source units (an envelope counts its Weight).
type Counters struct {
	Admitted     atomic.Int64
	Rejected     atomic.Int64
	Spawned      atomic.Int64
	Delivered    atomic.Int64
	Filtered     atomic.Int64
	DeadLettered atomic.Int64
	Returned     atomic.Int64
	Stranded     atomic.Int64
	Abandoned    atomic.Int64
}

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
	// Grace is how long a call that ignores its cancelled context is waited for before its
	// worker is abandoned (replaced while running, released during a drain).
	Grace time.Duration
}

// Queue is the bounded input of a stage. Its channel is closed when every producer is done.
type Queue[T any] struct {
	C         chan Envelope[T]
	producers atomic.Int64
	// Park dead-letters an item for the queue's stage (reason shutdown) or hands it back to its
	// source, when it cannot be delivered to the queue because the run is stopping.
	Park func(e Envelope[T])
}

// NewQueue returns a queue with the given capacity.
func NewQueue[T any](capacity int) *Queue[T] {
	return &Queue[T]{C: make(chan Envelope[T], capacity)}
}

// AddProducers registers n more producers.
func (q *Queue[T]) AddProducers(n int) { q.producers.Add(int64(n)) }

// ProducerDone is called once by each producer when it will send no more; the last one closes
// the channel.
func (q *Queue[T]) ProducerDone() {
	if q.producers.Add(-1) == 0 {
		close(q.C)
	}
}

// Send puts e into the queue, blocking while it is full. When the run's work context ends first
// the item is parked instead and Send returns false.
func (q *Queue[T]) Send(work context.Context, e Envelope[T]) bool {
	e.M.Enqueued = time.Now().UnixNano()
	select {
	case q.C <- e:
		return true
	default:
	}
	select {
	case q.C <- e:
		return true
	case <-work.Done():
		q.Park(e)
		return false
	}
}
