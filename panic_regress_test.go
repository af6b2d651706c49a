package sluice_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// Regression tests for user code other than the stage's function that panicked the process
// (DESIGN: a panic in user code never takes the process down), and for replays of records
// the replay could not read.

// failTwo fails 2 for good and passes the others on.
func failTwo(_ context.Context, n int) (int, error) {
	if n == 2 {
		return 0, retry.Permanent(errors.New("broken"))
	}
	return n, nil
}

type panickingCodec struct{ stage.JSONCodec[int] }

func (c panickingCodec) Encode(n int) ([]byte, error) {
	if n == 2 {
		panic("codec crashed")
	}
	return c.JSONCodec.Encode(n)
}

func (panickingCodec) Decode([]byte) (int, error) { panic("decode crashed") }

// A codec whose Encode panics gives a record without a payload, its panic in the
// sluice.payload_error header, as an Encode error does; a replay skips that record, saying why.
func TestCodecEncodePanicIsAPayloadError(t *testing.T) {
	ctx := context.Background()
	mem := dlq.NewMemory()
	var out collector[int]
	p, err := pipeline.New("codec", pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.Map("m", failTwo, stage.Workers(1), stage.WithCodec[int](panickingCodec{}))),
		stage.Sink("out", out.add)), pipeline.WithDLQ(mem))
	require.NoError(t, err)
	report, err := p.Run(ctx, pipeline.FromSlice([]int{1, 2, 3}))
	require.NoError(t, err)
	requireBalanced(t, report)
	assert.EqualValues(t, 2, report.Delivered)
	recs, err := mem.Records(ctx)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Empty(t, recs[0].Payload)
	assert.Equal(t, "codec Encode panicked: codec crashed", recs[0].Headers["sluice.payload_error"])

	rr, err := p.Replay(ctx, mem, pipeline.ReplayOptions{})
	require.NoError(t, err)
	require.Len(t, rr.Skipped, 1)
	assert.ErrorContains(t, rr.Skipped[0].Err, "no payload: its item could not be encoded (codec Encode panicked: codec crashed)")
	assert.Equal(t, 1, mem.Len(), "the record is kept")
}

// rowWithCells panics in MarshalJSON when its cells are nil (json.Marshal re-panics it).
type rowWithCells struct{ cells *[]string }

func (r rowWithCells) MarshalJSON() ([]byte, error) { return json.Marshal((*r.cells)[0]) }

// The default JSON codec calls the input's own MarshalJSON, user code too.
func TestMarshalJSONPanicIsAPayloadError(t *testing.T) {
	ctx := context.Background()
	mem := dlq.NewMemory()
	p, err := pipeline.New("rows", pipeline.Then(pipeline.Input[rowWithCells](),
		stage.Sink("call", func(context.Context, rowWithCells) error { return retry.Permanent(errors.New("malformed row")) })),
		pipeline.WithDLQ(mem))
	require.NoError(t, err)
	report, err := p.Run(ctx, pipeline.FromSlice([]rowWithCells{{}}))
	require.NoError(t, err)
	requireBalanced(t, report)
	recs, err := mem.Records(ctx)
	require.NoError(t, err)
	require.Len(t, recs, 1)
	assert.Contains(t, recs[0].Headers["sluice.payload_error"], "codec Encode panicked")
}

// A panicking OnDeadLetter hook is logged; the record stays written and the run goes on.
func TestOnDeadLetterHookPanicIsLogged(t *testing.T) {
	var buf syncBuffer
	mem := dlq.NewMemory()
	var out collector[int]
	p, err := pipeline.New("hook", pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.Map("m", failTwo, stage.Workers(1))), stage.Sink("out", out.add)),
		pipeline.WithDLQ(mem), pipeline.WithLogger(slog.New(slog.NewJSONHandler(&buf, nil))),
		pipeline.OnDeadLetter(func(dlq.Record) { panic("hook crashed") }))
	require.NoError(t, err)
	report, err := p.Run(context.Background(), pipeline.FromSlice([]int{1, 2, 3}))
	require.NoError(t, err)
	requireBalanced(t, report)
	assert.EqualValues(t, 2, report.Delivered)
	assert.EqualValues(t, 1, report.DeadLettered)
	assert.Equal(t, 1, mem.Len())
	assert.Contains(t, buf.String(), `"level":"ERROR","msg":"sluice: OnDeadLetter hook func(dlq.Record) panicked: hook crashed`)
	assert.Contains(t, buf.String(), `"correlation_id":`)
}

type recordsPanicStore struct{ *dlq.Memory }

func (recordsPanicStore) Records(context.Context) ([]dlq.Record, error) { panic("store crashed") }

// A store whose Records panics fails the replay with an error that names it, as its Write and
// Delete do.
func TestReplayStoreRecordsPanicIsAnError(t *testing.T) {
	store := recordsPanicStore{dlq.NewMemory()}
	p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Sink("out", func(context.Context, int) error { return nil })),
		pipeline.WithDLQ(store))
	require.NoError(t, err)
	_, err = p.Replay(context.Background(), store, pipeline.ReplayOptions{})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "store sluice_test.recordsPanicStore panicked: store crashed")
}

// A codec whose Decode panics skips the record (kept in the store), as a Decode error does.
func TestReplayDecodePanicSkipsTheRecord(t *testing.T) {
	ctx := context.Background()
	mem := dlq.NewMemory()
	now := time.Now()
	require.NoError(t, mem.Write(ctx, dlq.Record{V: dlq.Version, ID: dlq.NewID(), CorrelationID: "c1", Pipeline: "p",
		Stage: "out", Payload: json.RawMessage("1"), Reason: dlq.ReasonError, Error: "e", Attempts: 1, MaxAttempts: 1,
		FirstAttemptAt: now, FailedAt: now}))
	p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Sink("out", func(context.Context, int) error { return nil },
		stage.WithCodec[int](panickingCodec{}))), pipeline.WithDLQ(mem))
	require.NoError(t, err)
	rr, err := p.Replay(ctx, mem, pipeline.ReplayOptions{})
	require.NoError(t, err)
	require.Len(t, rr.Skipped, 1)
	assert.ErrorContains(t, rr.Skipped[0].Err, "codec Decode panicked: decode crashed")
	assert.Equal(t, 1, mem.Len())
}

// An item whose JSON is null (a nil slice, map or pointer) is dead-lettered with an empty
// payload, and a replay decodes it as null (it was skipped: "unexpected end of JSON input").
func TestReplayOfANullPayloadItem(t *testing.T) {
	ctx := context.Background()
	mem := dlq.NewMemory()
	broken := true
	var out collector[int]
	count := stage.Map("count", func(_ context.Context, xs []int) (int, error) {
		if broken {
			return 0, retry.Permanent(errors.New("upstream down"))
		}
		return len(xs), nil
	})
	p, err := pipeline.New("p", pipeline.Then(pipeline.Then(pipeline.Input[[]int](), count), stage.Sink("out", out.add)),
		pipeline.WithDLQ(mem))
	require.NoError(t, err)
	rep, err := p.Run(ctx, pipeline.FromSlice([][]int{nil, {1, 2}}))
	require.NoError(t, err)
	require.EqualValues(t, 2, rep.DeadLettered)

	broken = false // (no run is going on)
	rr, err := p.Replay(ctx, mem, pipeline.ReplayOptions{})
	require.NoError(t, err)
	assert.Empty(t, rr.Skipped)
	assert.Equal(t, 2, rr.Completed)
	assert.ElementsMatch(t, []int{0, 2}, out.items())
	assert.Zero(t, mem.Len())
}

// A pipeline that keeps its dead letters in memory refuses to replay a durable store: a record
// that failed again would leave the store for memory, and be lost at exit (the original was
// deleted). A dry run changes nothing, and a Memory store is no more durable: both are allowed.
func TestReplayFromADurableStoreIntoMemoryIsRefused(t *testing.T) {
	ctx := context.Background()
	f, err := dlq.OpenFile(t.TempDir() + "/dead.jsonl")
	require.NoError(t, err)
	defer f.Close()
	now := time.Now()
	require.NoError(t, f.Write(ctx, dlq.Record{V: dlq.Version, ID: dlq.NewID(), CorrelationID: "c1", Pipeline: "p",
		Stage: "m", Payload: json.RawMessage("2"), Reason: dlq.ReasonError, Error: "e", Attempts: 1, MaxAttempts: 1,
		FirstAttemptAt: now, FailedAt: now}))
	p, err := pipeline.New("p", pipeline.Then(pipeline.Input[int](), stage.Map("m", failTwo)))
	require.NoError(t, err)
	_, err = p.Replay(ctx, f, pipeline.ReplayOptions{})
	require.ErrorContains(t, err, "the pipeline keeps its dead letters in memory")
	recs, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Len(t, recs, 1, "the record stays in the file")

	rr, err := p.Replay(ctx, f, pipeline.ReplayOptions{DryRun: true})
	require.NoError(t, err)
	assert.Len(t, rr.Injected, 1)
	mem := dlq.NewMemory()
	require.NoError(t, mem.Write(ctx, recs[0]))
	rr, err = p.Replay(ctx, mem, pipeline.ReplayOptions{})
	require.NoError(t, err)
	assert.Len(t, rr.Injected, 1)
}
