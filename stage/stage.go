package stage

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"time"

	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/retry"
)

// Kind is the shape of a stage.
type Kind uint8

// The stage kinds.
const (
	KindMap     Kind = iota + 1 // one input, one output
	KindFilter                  // one input, zero or one output
	KindFlatMap                 // one input, any number of outputs
	KindBatch                   // up to Size inputs, one output
	KindSink                    // one input, no output (the item is delivered)
)

// String returns the kind's name.
func (k Kind) String() string {
	switch k {
	case KindMap:
		return "map"
	case KindFilter:
		return "filter"
	case KindFlatMap:
		return "flat-map"
	case KindBatch:
		return "batch"
	case KindSink:
		return "sink"
	}
	return fmt.Sprintf("kind(%d)", int(k))
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, so a Report written as JSON reads back.
func (k *Kind) UnmarshalText(b []byte) error {
	for c := KindMap; c <= KindSink; c++ {
		if c.String() == string(b) {
			*k = c
			return nil
		}
	}
	return fmt.Errorf("stage: unknown kind %q", b)
}

// Defaults of a stage built without options.
const (
	// DefaultCapacityPerWorker sets the default input capacity: twice the number of workers.
	DefaultCapacityPerWorker = 2
	// DefaultGrace is how long a call that ignores its cancelled context is waited for before
	// its worker is given up on.
	DefaultGrace = time.Second
)

// Codec turns a stage's input into the payload of a dead-letter record and back, for replay.
// The default codec is JSON. A codec is user code like the stage's function: a panic in Encode
// is taken as its error (the record then has no payload, and a sluice.payload_error header with
// the error), a panic in Decode as its error (a replay skips the record and keeps it).
type Codec[T any] interface {
	// Encode returns the payload bytes of v, in a slice of their own: the record keeps it, so
	// an Encode that reuses a buffer from one call to the next corrupts earlier records.
	Encode(v T) ([]byte, error)
	// Decode parses payload bytes made by Encode. b is a copy made for the call: the value may
	// keep it.
	Decode(b []byte) (T, error)
	// JSON reports whether Encode's output is JSON (stored as is in the record); other
	// payloads are stored base64-encoded.
	JSON() bool
}

// JSONCodec is the default codec: encoding/json.
type JSONCodec[T any] struct{}

// Encode implements Codec.
func (JSONCodec[T]) Encode(v T) ([]byte, error) { return json.Marshal(v) }

// Decode implements Codec.
func (JSONCodec[T]) Decode(b []byte) (T, error) {
	var v T
	err := json.Unmarshal(b, &v)
	return v, err
}

// JSON implements Codec.
func (JSONCodec[T]) JSON() bool { return true }

// Overflow is what happens to an item that arrives at a full input: at a pipeline's ingress
// (pipeline.WithOverflow) or at a stage's input (OnOverflow).
type Overflow uint8

// The overflow policies.
const (
	// Block waits for room (the default): backpressure reaches the producer.
	Block Overflow = iota
	// Reject fails the item at once with pipeline.ErrQueueFull (ingress only); it is counted as
	// rejected and the caller keeps it.
	Reject
	// DropOldest dead-letters the oldest queued item with reason overflow to make room (it is
	// counted and replayable, not lost). When every slot is held by a worker, it waits.
	DropOldest
	// DeadLetterNew dead-letters the new item with reason overflow instead of waiting.
	DeadLetterNew
	// CallerRuns has the submitting goroutine run the first stage on the item itself, which
	// throttles the producer (ingress only; not with a batch first stage). Such items are held
	// by their callers, outside the stage's slots: the in-flight bound grows by one per
	// concurrent caller.
	CallerRuns
)

// String returns the policy's name.
func (o Overflow) String() string {
	switch o {
	case Block:
		return "block"
	case Reject:
		return "reject"
	case DropOldest:
		return "drop-oldest"
	case DeadLetterNew:
		return "dead-letter-new"
	case CallerRuns:
		return "caller-runs"
	}
	return fmt.Sprintf("overflow(%d)", int(o))
}

// Queue returns the queue's policy for a push, and whether the caller runs the stage itself
// when the queue is full. It is used by package pipeline.
func (o Overflow) Queue() (policy core.Overflow, callerRuns bool) {
	switch o {
	case Reject:
		return core.OverflowReject, false
	case DropOldest:
		return core.OverflowDropOldest, false
	case DeadLetterNew:
		return core.OverflowDeadLetter, false
	case CallerRuns:
		return core.OverflowReject, true
	}
	return core.OverflowBlock, false
}

// config is the stage's options.
type config struct {
	limit     *limitCfg
	breaker   *breakerCfg
	autoscale *autoscale
	overflow  Overflow
	workers   int
	capacity  int
	timeout   time.Duration
	grace     time.Duration
	policy    retry.Policy
	codec     any
	errs      []error

	workersGiven bool // Workers was given (Autoscale sizes the pool itself)
}

// Option configures a stage.
type Option func(*config)

// Workers sets the size of the stage's pool (default: runtime.GOMAXPROCS(0) at build time).
func Workers(n int) Option {
	return func(c *config) {
		if n <= 0 {
			c.errs = append(c.errs, fmt.Errorf("Workers(%d): a stage needs at least one worker", n))
			return
		}
		c.workers, c.workersGiven = n, true
	}
}

// Capacity sets how many items may wait in the stage's input besides the one each worker
// holds (default: twice the workers). The stage holds at most Capacity + Workers items,
// queued or in its workers' hands (Capacity + Workers × size for a batch stage): that is the
// bound backpressure keeps. Zero leaves room only for the items the workers hold.
func Capacity(n int) Option {
	return func(c *config) {
		if n < 0 {
			c.errs = append(c.errs, fmt.Errorf("Capacity(%d): capacity cannot be negative; use 0 for an unbuffered input", n))
			return
		}
		c.capacity = n
	}
}

// Timeout sets the per-attempt timeout (default: none). It counts from the start of the attempt's
// call: the wait for a rate-limit token (RateLimit) comes before and is not part of it. When it
// passes, the attempt's context is cancelled; an attempt whose call then fails is failed with
// reason timeout (and retried per the policy). A call that ignores its context and comes back with
// a result within the grace period has it kept: the work is done, and failing it would only do it
// again. If the function ignores its context for longer than the grace period, the call is
// abandoned (failed with reason timeout) and the worker replaced so the pool keeps its size.
func Timeout(d time.Duration) Option {
	return func(c *config) {
		if d < 0 {
			c.errs = append(c.errs, fmt.Errorf("Timeout(%v): a timeout cannot be negative; use 0 for none", d))
			return
		}
		c.timeout = d
	}
}

// Grace sets how long a call that ignores its cancelled context is waited for (default 1s).
func Grace(d time.Duration) Option {
	return func(c *config) {
		if d <= 0 {
			c.errs = append(c.errs, fmt.Errorf("Grace(%v): the grace period must be positive", d))
			return
		}
		c.grace = d
	}
}

// Retry sets the retry policy (default: retry.Policy{}, three attempts with jittered
// exponential backoff). Use retry.NoRetry() for a single attempt.
func Retry(p retry.Policy) Option {
	return func(c *config) {
		if err := p.Validate(); err != nil {
			c.errs = append(c.errs, fmt.Errorf("Retry: %w", err))
			return
		}
		c.policy = p
	}
}

// OnOverflow sets what happens to an item that arrives when the stage's input is full: Block
// (the default), DropOldest or DeadLetterNew. Reject and CallerRuns apply at a pipeline's
// ingress only.
func OnOverflow(p Overflow) Option {
	return func(c *config) {
		switch p {
		case Block, DropOldest, DeadLetterNew:
			c.overflow = p
		default:
			c.errs = append(c.errs, fmt.Errorf("OnOverflow(%v): a stage's input takes Block, DropOldest or DeadLetterNew; Reject and CallerRuns apply at ingress (pipeline.WithOverflow)", p))
		}
	}
}

// WithCodec sets the codec of the stage's input, used for dead-letter payloads and replay. Its
// type must match the stage's input type.
func WithCodec[T any](codec Codec[T]) Option {
	return func(c *config) {
		if codec == nil {
			c.errs = append(c.errs, errors.New("WithCodec: the codec is nil"))
			return
		}
		c.codec = codec
	}
}

// Stage is the definition of one stage: its name, function, pool, input capacity and policies.
// A definition holds no running state; each run of a pipeline builds its own pool from it.
type Stage[In, Out any] struct {
	name  string
	kind  Kind
	cfg   config
	codec Codec[In]
	err   error

	one     func(context.Context, In) (Out, bool, error) // map, filter, sink
	many    func(context.Context, In) ([]Out, error)     // flat-map
	batch   func(context.Context, []In) (Out, error)     // batch
	size    int
	maxWait time.Duration
}

// Name returns the stage's name.
func (s *Stage[In, Out]) Name() string { return s.name }

// Kind returns the stage's kind.
func (s *Stage[In, Out]) Kind() Kind { return s.kind }

// Workers returns the size of the stage's pool.
func (s *Stage[In, Out]) Workers() int { return s.cfg.workers }

// Capacity returns the capacity of the stage's input.
func (s *Stage[In, Out]) Capacity() int { return s.cfg.capacity }

// BatchSize returns the maximum batch size of a batch stage, and 1 for the other kinds.
func (s *Stage[In, Out]) BatchSize() int {
	if s.kind == KindBatch {
		return s.size
	}
	return 1
}

// Policy returns the stage's retry policy with its defaults filled in.
func (s *Stage[In, Out]) Policy() retry.Policy { return s.cfg.policy.Normalize() }

// Err reports what is wrong with the stage's definition, or nil. Pipelines refuse stages with
// an error when they are built.
func (s *Stage[In, Out]) Err() error { return s.err }

func newStage[In, Out any](name string, kind Kind, fnNil bool, extra []error, opts []Option) *Stage[In, Out] {
	s := &Stage[In, Out]{name: name, kind: kind}
	s.cfg = config{workers: runtime.GOMAXPROCS(0), capacity: -1, grace: DefaultGrace}
	for _, o := range opts {
		if o == nil {
			s.cfg.errs = append(s.cfg.errs, errors.New("nil option"))
			continue
		}
		o(&s.cfg)
	}
	if s.cfg.capacity < 0 {
		s.cfg.capacity = DefaultCapacityPerWorker * s.cfg.workers
	}
	errs := append(s.cfg.errs, extra...)
	if s.cfg.autoscale != nil && s.cfg.workersGiven {
		errs = append(errs, errors.New("Workers and Autoscale both size the pool; give one (Autoscale's min and max bound it)"))
	}
	errs = append(errs, checkGuards[In](kind, &s.cfg)...)
	if name == "" {
		errs = append(errs, errors.New("the stage has no name; give every stage a unique name"))
	}
	if fnNil {
		errs = append(errs, errors.New("the function is nil"))
	}
	switch c := s.cfg.codec.(type) {
	case nil:
		s.codec = JSONCodec[In]{}
	case Codec[In]:
		s.codec = c
	default:
		errs = append(errs, fmt.Errorf("WithCodec: the codec is a %T, but the stage's input is %v", c, reflect.TypeFor[In]()))
	}
	if len(errs) > 0 {
		s.err = fmt.Errorf("stage %q: %w", name, errors.Join(errs...))
	}
	return s
}

// Map returns a stage that turns each input into one output.
func Map[In, Out any](name string, fn func(ctx context.Context, in In) (Out, error), opts ...Option) *Stage[In, Out] {
	s := newStage[In, Out](name, KindMap, fn == nil, nil, opts)
	if fn != nil {
		s.one = func(ctx context.Context, in In) (Out, bool, error) {
			out, err := fn(ctx, in)
			return out, true, err
		}
	}
	return s
}

// Filter returns a stage that passes on the inputs for which fn returns true; the others are
// counted as filtered (dropped on purpose).
func Filter[T any](name string, fn func(ctx context.Context, in T) (bool, error), opts ...Option) *Stage[T, T] {
	s := newStage[T, T](name, KindFilter, fn == nil, nil, opts)
	if fn != nil {
		s.one = func(ctx context.Context, in T) (T, bool, error) {
			keep, err := fn(ctx, in)
			return in, keep, err
		}
	}
	return s
}

// FlatMap returns a stage that turns each input into any number of outputs (a downloaded file
// into its records). The outputs continue the input's correlation ID as "<id>/<n>" (n from 1).
// An input with no outputs is counted as filtered. The outputs of one input are held by the
// worker until the next stage takes them, so they add to the items in flight.
func FlatMap[In, Out any](name string, fn func(ctx context.Context, in In) ([]Out, error), opts ...Option) *Stage[In, Out] {
	s := newStage[In, Out](name, KindFlatMap, fn == nil, nil, opts)
	s.many = fn
	return s
}

// Batch returns a stage that collects up to size inputs, or what arrived within maxWait of the
// first one's arrival, and turns them into one output (upload 500 rows at once). One batch
// fills at a time, whatever the number of workers: a worker takes the inputs until its batch is
// complete, then makes its call while the next worker free of a call fills the next batch. So a
// trickle of input makes batches as full as one worker would, and a busy input keeps every
// worker's call running. If the call fails for good, each input of the batch is dead-lettered
// on its own, so a replay re-batches them; every one of those records names the batch's span.
func Batch[In, Out any](name string, size int, maxWait time.Duration, fn func(ctx context.Context, batch []In) (Out, error), opts ...Option) *Stage[In, Out] {
	var errs []error
	if size <= 0 {
		errs = append(errs, fmt.Errorf("batch size %d: a batch holds at least one item", size))
	}
	if maxWait <= 0 {
		errs = append(errs, fmt.Errorf("batch max wait %v: give a positive duration, the longest an item waits for its batch to fill", maxWait))
	}
	s := newStage[In, Out](name, KindBatch, fn == nil, errs, opts)
	s.batch = fn
	s.size = size
	s.maxWait = maxWait
	return s
}

// Sink returns a terminal stage: fn consumes each input, and the item is delivered when fn
// succeeds. It must be the last stage of a flow (pipeline.New refuses a stage after it).
func Sink[In any](name string, fn func(ctx context.Context, in In) error, opts ...Option) *Stage[In, struct{}] {
	s := newStage[In, struct{}](name, KindSink, fn == nil, nil, opts)
	if fn != nil {
		s.one = func(ctx context.Context, in In) (struct{}, bool, error) {
			return struct{}{}, true, fn(ctx, in)
		}
	}
	return s
}
