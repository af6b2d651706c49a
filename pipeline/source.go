package pipeline

import (
	"context"
	"errors"
	"iter"
	"sync"
	"sync/atomic"

	"github.com/sluicehq/sluice/internal/core"
)

// Outcome is the terminal state of an item, as given to its source's acknowledgement.
type Outcome = core.Outcome

// The outcomes an acknowledgement receives.
const (
	// Filtered: a stage dropped the item on purpose.
	Filtered = core.Filtered
	// Delivered: the item (or everything derived from it) left the last stage.
	Delivered = core.Delivered
	// DeadLettered: the item, or something derived from it, was durably dead-lettered (and the
	// rest delivered or filtered).
	DeadLettered = core.DeadLettered
	// NotDone: a drain cut the item off, or the run failed, before it was done; a source that
	// can redeliver should do so (a broker's nak). (A drain parks an item in the DLQ instead,
	// DeadLettered, when what it was cut off in also carries items without an Ack.)
	NotDone = core.NotDone
)

// Item is one input as a source hands it over.
type Item[T any] struct {
	// Value is the payload.
	Value T
	// Key is the item's natural correlation ID (a URL, a message ID); empty means one is
	// generated.
	Key string
	// Source says where the item came from, for its dead letter (a URL, a message sequence).
	Source string
	// Index is the item's position in its input, from 1, used as its source when Source is
	// empty (the slice, channel and iterator sources set it).
	Index int64
	// Headers is user metadata copied into the item's dead letters. With tracing on, an item
	// whose Context has no span takes its parent from the trace context in them, if any (see
	// WithPropagator).
	Headers map[string]string
	// Ack, if set, is called exactly once when the item and everything derived from it reached
	// a terminal state, and never before that state is durable. It is called from a worker, or,
	// for an item dead-lettered at ingress by the overflow policy (DropOldest, DeadLetterNew),
	// inside the admit call that caused it, on the source's goroutine: keep it short, and do not
	// take in it a lock that is held around admit. A panic in Ack is recovered: as when Emit
	// fails, the source is stopped and the run fails with the panic once the items in flight are
	// done. An item whose call was abandoned (it ignored its cancelled context past the stage's
	// grace) is acknowledged, NotDone or DeadLettered, while that call may still be running: a
	// source that redelivers it may have it worked on twice at once. An item batched with items
	// that have no Ack is not handed back when a drain cuts the batch's output off (nothing would
	// redeliver the others): the output is dead-lettered, reason shutdown, and Ack gets
	// DeadLettered.
	Ack func(Outcome)
	// Context is the context the item was submitted with: its span becomes the parent of the
	// item's spans, and when it ends before the item is admitted, admission gives up.
	Context context.Context
}

// Admit hands one item to the pipeline. It blocks while the first stage's input is full. It
// returns nil when the item was admitted; ErrQueueFull when it was rejected by the Reject
// overflow policy (the item is then counted as rejected: the caller owns it); or an error
// wrapping ErrDraining, or the item's context error, when it was not handed over (the source
// should keep it, and stop unless the error is the item's own context).
type Admit[T any] func(Item[T]) error

// Source feeds a pipeline. Emit calls admit for each item, in order, and returns when it has no
// more (nil), when admit returns ErrDraining (nil), or with an error of its own, which fails
// the run after a drain. ctx ends when the run starts draining, or when an item's Ack panicked.
type Source[T any] interface {
	Emit(ctx context.Context, admit Admit[T]) error
}

// stop reports whether a source must stop after admit returned err.
func stop(err error) bool { return err != nil && !errors.Is(err, ErrQueueFull) }

// exclusive keeps a source that remembers where it stopped to one run at a time: two runs
// emitting from it at once would hand the same items to both and race on its position.
type exclusive struct{ busy atomic.Bool }

// enter claims the source for a run's Emit; the caller must leave when it returns.
func (e *exclusive) enter() error {
	if !e.busy.CompareAndSwap(false, true) {
		return ErrSourceInUse
	}
	return nil
}

func (e *exclusive) leave() { e.busy.Store(false) }

// SliceSource feeds the items of a slice, in order. After a run, Next tells from where to resume.
// It feeds one run at a time (another run's Emit fails with ErrSourceInUse).
type SliceSource[T any] struct {
	exclusive
	items []T
	key   func(T) string
	next  int
}

// FromSlice returns a source of items.
func FromSlice[T any](items []T) *SliceSource[T] { return &SliceSource[T]{items: items} }

// KeyBy sets the function that gives each item its correlation ID.
func (s *SliceSource[T]) KeyBy(key func(T) string) *SliceSource[T] {
	s.key = key
	return s
}

// Next returns the index of the first item not yet handed over. A later run of the same source
// resumes from there.
func (s *SliceSource[T]) Next() int { return s.next }

// Emit implements Source.
func (s *SliceSource[T]) Emit(_ context.Context, admit Admit[T]) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	for s.next < len(s.items) {
		it := Item[T]{Value: s.items[s.next], Index: int64(s.next) + 1}
		if s.key != nil {
			it.Key = s.key(it.Value)
		}
		if stop(admit(it)) {
			return nil
		}
		s.next++
	}
	return nil
}

// feeder is the part of the channel and iterator sources that hands values over and keeps the
// one that was not taken.
type feeder[T any] struct {
	exclusive
	n        int64
	key      func(T) string
	leftover *T
}

// offer hands v over; false means the source must stop (v is kept as the leftover).
func (f *feeder[T]) offer(admit Admit[T], v T) bool {
	it := Item[T]{Value: v, Index: f.n + 1}
	if f.key != nil {
		it.Key = f.key(v)
	}
	if stop(admit(it)) {
		f.keep(v)
		return false
	}
	f.n++
	return true
}

// keep stores the value not handed over (a copy, so v itself does not escape).
func (f *feeder[T]) keep(v T) {
	x := v
	f.leftover = &x
}

// Leftover returns the value that the source took from its input but did not hand over because
// the run started draining, if there is one: nothing taken is ever dropped silently. The next
// run of a ChanSource hands it over first; a SeqSource's next run starts its iterator again.
func (f *feeder[T]) Leftover() (T, bool) {
	if f.leftover == nil {
		var zero T
		return zero, false
	}
	return *f.leftover, true
}

// ChanSource feeds the values received from a channel until it is closed. It feeds one run at
// a time (another run's Emit fails with ErrSourceInUse).
type ChanSource[T any] struct {
	feeder[T]
	ch <-chan T
}

// FromChan returns a source of the values received from ch.
func FromChan[T any](ch <-chan T) *ChanSource[T] { return &ChanSource[T]{ch: ch} }

// KeyBy sets the function that gives each item its correlation ID.
func (s *ChanSource[T]) KeyBy(key func(T) string) *ChanSource[T] {
	s.key = key
	return s
}

// Emit implements Source.
func (s *ChanSource[T]) Emit(ctx context.Context, admit Admit[T]) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	for {
		var v T
		if s.leftover != nil {
			v, s.leftover = *s.leftover, nil
		} else {
			var ok bool
			select {
			case v, ok = <-s.ch:
				if !ok {
					return nil
				}
			case <-ctx.Done():
				return nil
			}
		}
		if !s.offer(admit, v) {
			return nil
		}
	}
}

// SeqSource feeds the values of an iterator.
type SeqSource[T any] struct {
	feeder[T]
	seq iter.Seq[T]
}

// FromSeq returns a source of the values of seq. A drain stops the iteration; the value it was
// handing over is kept (Leftover), and a later run starts the iterator again. It feeds one run
// at a time (another run's Emit fails with ErrSourceInUse).
func FromSeq[T any](seq iter.Seq[T]) *SeqSource[T] { return &SeqSource[T]{seq: seq} }

// KeyBy sets the function that gives each item its correlation ID.
func (s *SeqSource[T]) KeyBy(key func(T) string) *SeqSource[T] {
	s.key = key
	return s
}

// Emit implements Source.
func (s *SeqSource[T]) Emit(_ context.Context, admit Admit[T]) error {
	if err := s.enter(); err != nil {
		return err
	}
	defer s.leave()
	s.n, s.leftover = 0, nil // the iterator starts again, and with it the indexes; the last leftover is in it
	for v := range s.seq {
		if !s.offer(admit, v) { // (during a drain, admit refuses v and offer keeps it)
			return nil
		}
	}
	return nil
}

// Push is a source that services feed with Submit, from any number of goroutines, until Close.
// A Push feeds one run.
type Push[T any] struct {
	ready   chan struct{}
	closed  chan struct{}
	once    sync.Once
	mu      sync.RWMutex
	admit   Admit[T]
	bound   bool
	ended   bool
	closing bool
}

// NewPush returns a push source.
func NewPush[T any]() *Push[T] {
	return &Push[T]{ready: make(chan struct{}), closed: make(chan struct{})}
}

// Submit hands v to the run, blocking while the first stage's input is full (or failing at once
// with ErrQueueFull under the Reject overflow policy). It waits for the run to start. It returns
// ErrClosed after Close or once the run stopped taking input, and ctx's error if ctx ends first.
// ctx's span, if any, becomes the parent of the item's spans.
func (p *Push[T]) Submit(ctx context.Context, v T) error {
	return p.SubmitItem(ctx, Item[T]{Value: v})
}

// SubmitItem is Submit with a key, headers or an acknowledgement.
func (p *Push[T]) SubmitItem(ctx context.Context, it Item[T]) error {
	if ctx == nil {
		return ErrNilContext
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	select {
	case <-p.ready:
	case <-p.closed:
		return ErrClosed
	case <-ctx.Done():
		return ctx.Err()
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.ended || p.closing {
		return ErrClosed
	}
	it.Context = ctx
	err := p.admit(it)
	if errors.Is(err, ErrDraining) {
		return errors.Join(ErrClosed, err)
	}
	return err
}

// Close ends the input: the run finishes the items it has and returns. Close waits for
// Submit calls in progress. It is safe to call more than once.
func (p *Push[T]) Close() {
	p.once.Do(func() {
		p.mu.Lock()
		p.closing = true
		p.mu.Unlock()
		close(p.closed)
	})
}

// Emit implements Source.
func (p *Push[T]) Emit(ctx context.Context, admit Admit[T]) error {
	p.mu.Lock()
	if p.bound {
		p.mu.Unlock()
		return errors.New("pipeline: this push source already fed a run; make a new one with NewPush")
	}
	p.bound, p.admit = true, admit
	p.mu.Unlock()
	close(p.ready)
	select {
	case <-p.closed:
	case <-ctx.Done():
	}
	p.mu.Lock()
	p.ended = true
	p.mu.Unlock()
	return nil
}
