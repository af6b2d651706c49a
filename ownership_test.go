package sluice_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// Regression tests for what a caller hands the pipeline, and what it gets back, staying its
// own (from a review of ownership hand-offs).

var errBad = retry.Permanent(errors.New("bad"))

// splitIntoFailingSink starts a pipeline fed by a Push source: a flat-map that makes two
// outputs of each item, then a sink (with sinkOpts) whose calls are fail; its dead letters go to
// the returned store.
func splitIntoFailingSink(t *testing.T, fail func(context.Context, int) error, sinkOpts []stage.Option, opts ...pipeline.Option) (*pipeline.Push[int], *pipeline.Job, *dlq.Memory) {
	t.Helper()
	mem := dlq.NewMemory()
	split := func(_ context.Context, n int) ([]int, error) { return []int{n, n}, nil }
	p, err := pipeline.New("split", pipeline.Then(pipeline.Then(pipeline.Input[int](),
		stage.FlatMap("split", split, stage.Workers(1))), stage.Sink("fail", fail, sinkOpts...)),
		append([]pipeline.Option{pipeline.WithDLQ(mem)}, opts...)...)
	require.NoError(t, err)
	src := pipeline.NewPush[int]()
	job, err := p.Start(context.Background(), src)
	require.NoError(t, err)
	return src, job, mem
}

// Each dead letter has its own Headers, and the caller's Item.Headers is copied at admission:
// a hook that edits its record's headers changes neither the caller's map nor the record of
// the item's flat-map sibling (which shared the item's map), and a caller that reuses its map
// once SubmitItem returned changes no dead letter. With two workers the hook's edit also raced
// with the sibling's encoding (under -race).
func TestDeadLetterHeadersAreTheRecordsOwn(t *testing.T) {
	for _, workers := range []int{1, 2} {
		synctest.Test(t, func(t *testing.T) {
			hook := func(rec dlq.Record) { rec.Headers["alerted_for"] = rec.CorrelationID }
			release := make(chan struct{})
			fail := func(_ context.Context, n int) error { <-release; return errBad }
			src, job, mem := splitIntoFailingSink(t, fail, []stage.Option{stage.Workers(workers)}, pipeline.OnDeadLetter(hook))
			mine := map[string]string{"tenant": "acme"}
			require.NoError(t, src.SubmitItem(context.Background(), pipeline.Item[int]{Value: 1, Key: "k", Headers: mine}))
			mine["tenant"] = "reused" // as a broker client reuses its map for the next message
			close(release)
			src.Close()
			_, err := job.Wait()
			require.NoError(t, err)
			assert.Equal(t, map[string]string{"tenant": "reused"}, mine, "the hook changed the caller's map")
			recs, err := mem.Records(context.Background())
			require.NoError(t, err)
			require.Len(t, recs, 2)
			for _, r := range recs {
				assert.Equal(t, map[string]string{"tenant": "acme"}, r.Headers, "record %s", r.CorrelationID)
			}
		})
	}
}

// After the run, Wait and Stats give each caller a Report of its own: editing one's stages or
// dead-letter counts changes no later one.
func TestReportsAfterTheRunAreCopies(t *testing.T) {
	p, err := pipeline.New("r", pipeline.Then(pipeline.Input[int](),
		stage.Sink("fail", func(context.Context, int) error { return errBad }, stage.Workers(1))),
		pipeline.WithDLQ(dlq.NewMemory()))
	require.NoError(t, err)
	job, err := p.Start(context.Background(), pipeline.FromSlice([]int{1}))
	require.NoError(t, err)
	rep, err := job.Wait()
	require.NoError(t, err)
	rep.Stages[0].Name = "edited"
	delete(rep.Stages[0].DeadLetters, dlq.ReasonPermanent)
	for _, again := range []pipeline.Report{job.Stats(), must(job.Wait())} {
		assert.Equal(t, "fail", again.Stages[0].Name)
		assert.EqualValues(t, 1, again.Stages[0].DeadLetters[dlq.ReasonPermanent])
	}
}

func must(r pipeline.Report, err error) pipeline.Report {
	if err != nil {
		panic(err)
	}
	return r
}

// A FromSeq source's next run starts its iterator again, and with it the items' indexes (their
// dead letters' source); a complete run leaves no leftover from the run before.
func TestSeqSourceStartsAfreshEachRun(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var sources []string
		var cancelFirst context.CancelFunc
		seq := func(yield func(int) bool) {
			for i := 1; i <= 3; i++ {
				if i == 3 && cancelFirst != nil {
					cancelFirst() // the first run drains before its third value
					cancelFirst = nil
				}
				if !yield(i) {
					return
				}
			}
		}
		src := pipeline.FromSeq[int](seq)
		p, err := pipeline.New("s", pipeline.Then(pipeline.Input[int](),
			stage.Sink("fail", func(context.Context, int) error { return errBad }, stage.Workers(1))),
			pipeline.WithDLQ(dlq.NewMemory()), pipeline.OnDeadLetter(func(r dlq.Record) { sources = append(sources, r.Source) }))
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		cancelFirst = cancel
		_, err = p.Run(ctx, src)
		require.NoError(t, err)
		v, ok := src.Leftover()
		require.True(t, ok, "the first run's third value is kept")
		require.Equal(t, 3, v)
		sources = nil
		_, err = p.Run(context.Background(), src)
		require.NoError(t, err)
		_, ok = src.Leftover()
		assert.False(t, ok, "a complete run leaves no leftover")
		assert.Equal(t, []string{"index:1", "index:2", "index:3"}, sources)
	})
}

// failCodec cannot encode: dead letters go without a payload, with the reason in a header.
type failCodec struct{}

func (failCodec) Encode(int) ([]byte, error) { return nil, errors.New("cannot encode") }
func (failCodec) Decode([]byte) (int, error) { return 0, errors.New("cannot decode") }
func (failCodec) JSON() bool                 { return true }

// A payload that cannot be encoded is named in its own record's headers, beside the item's (if
// it has any): the item's map, which its flat-map sibling shares, is left as it was.
func TestPayloadErrorHeaderIsTheRecordsOwn(t *testing.T) {
	src, job, mem := splitIntoFailingSink(t, func(context.Context, int) error { return errBad },
		[]stage.Option{stage.Workers(1), stage.WithCodec[int](failCodec{})})
	mine := map[string]string{"tenant": "acme"}
	require.NoError(t, src.SubmitItem(context.Background(), pipeline.Item[int]{Value: 1, Key: "k", Headers: mine}))
	require.NoError(t, src.SubmitItem(context.Background(), pipeline.Item[int]{Value: 2, Key: "bare"}))
	src.Close()
	_, err := job.Wait()
	require.NoError(t, err)
	recs, err := mem.Records(context.Background())
	require.NoError(t, err)
	require.Len(t, recs, 4)
	for _, r := range recs {
		assert.Empty(t, r.Payload)
		want := map[string]string{"tenant": "acme", "sluice.payload_error": "cannot encode"}
		if strings.HasPrefix(r.CorrelationID, "bare") {
			want = map[string]string{"sluice.payload_error": "cannot encode"} // an item without headers
		}
		assert.Equal(t, want, r.Headers, "record %s", r.CorrelationID)
	}
	assert.Equal(t, map[string]string{"tenant": "acme"}, mine)
}

// A FromSlice, FromChan or FromSeq source remembers where it stopped, so it feeds one run at a
// time: a run started while another is emitting from it fails with ErrSourceInUse, having
// admitted nothing, and the first run goes on undisturbed; once that one ended, the source
// feeds the next run (a slice or channel source from where it stopped, an iterator afresh).
func TestSourceFeedsOneRunAtATime(t *testing.T) {
	values := []int{1, 2, 3, 4, 5, 6}
	for _, tc := range []struct {
		name  string
		src   func() pipeline.Source[int]
		again int64 // what the run after the first one delivers
	}{
		{"slice", func() pipeline.Source[int] { return pipeline.FromSlice(values) }, 0},
		{"chan", func() pipeline.Source[int] {
			ch := make(chan int, len(values))
			for _, v := range values {
				ch <- v
			}
			close(ch)
			return pipeline.FromChan(ch)
		}, 0},
		{"seq", func() pipeline.Source[int] { return pipeline.FromSeq(slices.Values(values)) }, int64(len(values))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				release := make(chan struct{})
				var mu sync.Mutex
				var got []int
				hold := func(_ context.Context, v int) error {
					<-release
					mu.Lock()
					got = append(got, v)
					mu.Unlock()
					return nil
				}
				p, err := pipeline.New("one", pipeline.Then(pipeline.Input[int](),
					stage.Sink("hold", hold, stage.Workers(1), stage.Capacity(1))))
				require.NoError(t, err)
				src := tc.src()
				first, err := p.Start(context.Background(), src)
				require.NoError(t, err)
				synctest.Wait() // the first run's source is blocked handing over a value

				rep, err := p.Run(context.Background(), src)
				require.ErrorIs(t, err, pipeline.ErrSourceInUse)
				assert.Zero(t, rep.Admitted, "the second run took nothing from the source")

				close(release)
				rep, err = first.Wait()
				require.NoError(t, err)
				assert.Equal(t, int64(len(values)), rep.Delivered)
				assert.Equal(t, values, got, "the first run fed every value once, in order")

				rep, err = p.Run(context.Background(), src)
				require.NoError(t, err, "the source is free once its run ended")
				assert.Equal(t, tc.again, rep.Delivered)
			})
		})
	}
}
