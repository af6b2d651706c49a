package pipeline

import (
	"context"
	"errors"
	"fmt"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/stage"
)

// Flow is a chain of stages whose input is In and whose output so far is T. Flows are built
// with Input and Then, checked by the compiler: a stage whose input type does not match the
// flow's output does not compile. A Flow is immutable; Then returns a new one.
type Flow[In, T any] struct {
	steps []step
	errs  []error
}

// Input starts a flow whose input is T.
func Input[T any]() *Flow[T, T] { return &Flow[T, T]{} }

// Then appends a stage to the flow.
func Then[In, A, B any](f *Flow[In, A], s *stage.Stage[A, B]) *Flow[In, B] {
	if f == nil {
		return &Flow[In, B]{errs: []error{errors.New("Then: the flow is nil; start one with Input")}}
	}
	nf := &Flow[In, B]{
		steps: append(append([]step(nil), f.steps...), step{}),
		errs:  append([]error(nil), f.errs...),
	}
	if s == nil {
		nf.errs = append(nf.errs, fmt.Errorf("Then: stage %d is nil", len(f.steps)+1))
		nf.steps = nf.steps[:len(nf.steps)-1]
		return nf
	}
	if err := s.Err(); err != nil {
		nf.errs = append(nf.errs, err)
	}
	nf.steps[len(nf.steps)-1] = step{
		name: s.Name(),
		kind: s.Kind(),
		bind: func(env *core.Env, next any) node {
			q, _ := next.(*core.Queue[B])
			return runnerNode[A, B]{s.Bind(env, q)}
		},
	}
	return nf
}

// step is one stage of a flow, with its types erased.
type step struct {
	name string
	kind stage.Kind
	bind func(env *core.Env, next any) node
}

// node is a stage running in one run, with its types erased.
type node interface {
	Name() string
	input() any
	AddProducers(n int)
	ProducerDone()
	Start()
	Done() <-chan struct{}
	Stats() stage.Stats
	Units() (delivered, filtered int64)
	Check(rec *dlq.Record) error
	Inject(ctx context.Context, rec *dlq.Record, meta core.Meta) error
}

type runnerNode[A, B any] struct{ *stage.Runner[A, B] }

func (n runnerNode[A, B]) input() any { return n.Input() }
