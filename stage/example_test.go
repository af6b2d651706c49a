package stage_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// A stage with its own pool, input capacity, timeout and retry policy. The function reads its
// attempt from its context: here the first attempt fails and the retry succeeds.
func ExampleMap() {
	fetch := stage.Map("fetch", func(ctx context.Context, id int) (string, error) {
		attempt, max := stage.Attempt(ctx)
		if attempt == 1 {
			return "", errors.New("transient")
		}
		return fmt.Sprintf("item %d on attempt %d of %d", id, attempt, max), nil
	},
		stage.Workers(8), stage.Capacity(16), stage.Timeout(time.Second),
		stage.Retry(retry.Policy{MaxAttempts: 3, InitialInterval: time.Millisecond}))

	var got string
	show := stage.Sink("show", func(_ context.Context, s string) error { got = s; return nil }, stage.Workers(1))
	p, err := pipeline.New("example", pipeline.Then(pipeline.Then(pipeline.Input[int](), fetch), show),
		pipeline.WithDLQ(dlq.NewMemory()))
	if err != nil {
		fmt.Println(err)
		return
	}
	report, _ := p.Run(context.Background(), pipeline.FromSlice([]int{7}))
	fmt.Println(got)
	fmt.Println("retries:", report.Stages[0].Retries)
	// Output:
	// item 7 on attempt 2 of 3
	// retries: 1
}
