package dlq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/sluicehq/sluice/dlq"
)

func ExampleOpenFile() {
	dir, err := os.MkdirTemp("", "dlq-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "orders.dlq.jsonl")

	f, err := dlq.OpenFile(path)
	if err != nil {
		panic(err)
	}
	ctx := context.Background()
	err = f.Write(ctx, dlq.Record{
		ID:          dlq.NewID(),
		Pipeline:    "orders",
		Stage:       "enrich",
		Payload:     json.RawMessage(`{"order":17}`),
		Reason:      dlq.ReasonTimeout,
		Error:       "context deadline exceeded",
		Attempts:    3,
		MaxAttempts: 3,
		FailedAt:    time.Date(2026, 11, 23, 13, 0, 0, 5, time.FixedZone("CET", 3600)),
	})
	if err != nil {
		panic(err) // not durable
	}
	if err := f.Close(); err != nil {
		panic(err)
	}

	// A read-only tool reads the file without taking the lock.
	res, err := dlq.ReadFile(path)
	if err != nil {
		panic(err)
	}
	for _, r := range res.Records {
		fmt.Println(r.Stage, r.Reason, r.Attempts, string(r.Payload))
		fmt.Println(r.FailedAt.Format(time.RFC3339Nano))
	}
	// Output:
	// enrich timeout 3 {"order":17}
	// 2026-11-23T12:00:00.000000005Z
}

func ExampleFilter() {
	ctx := context.Background()
	m := dlq.NewMemory()
	day := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)
	for i, r := range []struct {
		stage  string
		reason dlq.Reason
		err    string
	}{
		{"parse", dlq.ReasonPermanent, "invalid character 'x'"},
		{"enrich", dlq.ReasonError, "dial tcp: Connection Refused"},
		{"enrich", dlq.ReasonTimeout, "context deadline exceeded"},
		{"enrich", dlq.ReasonError, "HTTP 503"},
	} {
		err := m.Write(ctx, dlq.Record{
			ID:       fmt.Sprintf("rec-%d", i),
			Stage:    r.stage,
			Reason:   r.reason,
			Error:    r.err,
			FailedAt: day.Add(time.Duration(i) * time.Hour),
		})
		if err != nil {
			panic(err)
		}
	}
	recs, err := m.Records(ctx)
	if err != nil {
		panic(err)
	}
	f := dlq.Filter{Stage: "enrich", Reason: dlq.ReasonError, Match: "refused"}
	for _, r := range f.Select(recs) {
		fmt.Println(r.ID, r.Error)
	}
	late := dlq.Filter{Since: day.Add(2 * time.Hour)}
	fmt.Println(len(late.Select(recs)), "failed since 02:00")
	// Output:
	// rec-1 dial tcp: Connection Refused
	// 2 failed since 02:00
}
