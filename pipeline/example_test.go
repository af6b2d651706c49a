package pipeline_test

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// A three-stage pipeline: parse lines into numbers (a malformed line is a permanent failure
// and goes to the dead-letter queue), square them, and print the squares. Then the malformed
// line is fixed by hand and replayed into the stage that failed it.
func Example() {
	parse := stage.Map("parse", func(_ context.Context, line string) (int, error) {
		n, err := strconv.Atoi(strings.TrimSpace(line))
		if err != nil {
			return 0, retry.Permanent(err) // no point retrying a malformed line
		}
		return n, nil
	})
	square := stage.Map("square", func(_ context.Context, n int) (int, error) { return n * n, nil }, stage.Workers(4))
	var total int
	sum := stage.Sink("sum", func(_ context.Context, n int) error {
		total += n // one worker: no lock needed
		return nil
	}, stage.Workers(1))

	flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[string](), parse), square), sum)
	dead := dlq.NewMemory()
	p, err := pipeline.New("squares", flow, pipeline.WithDLQ(dead))
	if err != nil {
		fmt.Println(err)
		return
	}
	report, err := p.Run(context.Background(), pipeline.FromSlice([]string{"1", "2", "three", "4"}))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("total %d; ingested %d = delivered %d + dead-lettered %d\n",
		total, report.Ingested, report.Delivered, report.DeadLettered)

	recs, _ := dead.Records(context.Background())
	fmt.Printf("dead letter: stage %s, reason %s, payload %s\n", recs[0].Stage, recs[0].Reason, recs[0].Payload)

	// The operator fixes the record and replays it into "parse".
	fixed := recs[0]
	fixed.Payload = []byte(`"3"`)
	_ = dead.Delete(context.Background(), recs[0].ID)
	_ = dead.Write(context.Background(), fixed)
	rr, err := p.Replay(context.Background(), dead, pipeline.ReplayOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Printf("replayed %d; total %d; dead letters left %d\n", rr.Completed, total, dead.Len())
	// Output:
	// total 21; ingested 4 = delivered 3 + dead-lettered 1
	// dead letter: stage parse, reason permanent, payload "three"
	// replayed 1; total 30; dead letters left 0
}
