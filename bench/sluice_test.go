package bench

import (
	"context"
	"fmt"
	"iter"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// buildSluice: the shape as a Sluice user writes it: three Map stages (default retry policy,
// so retries, panic capture and dead-letter routing are all on), an in-memory dead-letter
// sink, and a one-worker Sink stage. The source is an iterator (FromSeq), never a
// materialised slice. The pipeline is built before the timer starts; Run is timed.
func buildSluice[T any](sh shape[T], src iter.Seq[T], sink func(T)) (func() error, error) {
	st := func(i int) *stage.Stage[T, T] {
		f := sh.fn[i]
		return stage.Map(fmt.Sprintf("s%d", i+1),
			func(_ context.Context, x T) (T, error) { return f(x), nil },
			stage.Workers(sh.workers[i]), stage.Capacity(sh.capacity), stage.Retry(retry.Policy{}))
	}
	sk := stage.Sink("sink", func(_ context.Context, x T) error {
		sink(x)
		return nil
	}, stage.Workers(1), stage.Capacity(sh.capacity))
	flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[T](), st(0)), st(1)), st(2)), sk)
	p, err := pipeline.New("bench", flow, pipeline.WithDLQ(dlq.NewMemory()))
	if err != nil {
		return nil, err
	}
	return func() error {
		rep, err := p.Run(context.Background(), pipeline.FromSeq(src))
		if err != nil {
			return err
		}
		if rep.Delivered != rep.Admitted || rep.DeadLettered != 0 || !rep.Balanced() {
			return fmt.Errorf("sluice report: admitted %d, delivered %d, dead-lettered %d, balanced %v",
				rep.Admitted, rep.Delivered, rep.DeadLettered, rep.Balanced())
		}
		return nil
	}, nil
}
