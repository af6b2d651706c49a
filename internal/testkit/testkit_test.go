package testkit_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/testkit"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestPlanIsDeterministicAndFollowsItsWeights(t *testing.T) {
	p := testkit.Plan{Seed: 7, Weights: testkit.Weights{testkit.OK: 70, testkit.Transient: 20, testkit.Permanent: 10}}
	counts := map[testkit.Behaviour]int{}
	for i := range 20_000 {
		key := "k" + string(rune('a'+i%26)) + string(rune(i))
		b := p.At(1, key, 1)
		require.Equal(t, b, p.At(1, key, 1), "the plan is a pure function")
		counts[b]++
	}
	assert.InDelta(t, 14_000, counts[testkit.OK], 600)
	assert.InDelta(t, 4_000, counts[testkit.Transient], 400)
	assert.InDelta(t, 2_000, counts[testkit.Permanent], 300)
	assert.Zero(t, counts[testkit.Panic]+counts[testkit.Hang]+counts[testkit.Ignore])
	assert.Equal(t, testkit.OK, testkit.Plan{}.At(1, "x", 1), "no weights: everything succeeds")
}

func TestPlanExpect(t *testing.T) {
	only := func(b testkit.Behaviour) testkit.Plan {
		var w testkit.Weights
		w[b] = 1
		return testkit.Plan{Weights: w}
	}
	cases := []struct {
		b    testkit.Behaviour
		want testkit.Final
	}{
		{testkit.OK, testkit.Final{OK: true, Attempts: 1, Last: testkit.OK}},
		{testkit.Transient, testkit.Final{Reason: dlq.ReasonError, Attempts: 3, Last: testkit.Transient}},
		{testkit.Permanent, testkit.Final{Reason: dlq.ReasonPermanent, Attempts: 1, Last: testkit.Permanent}},
		{testkit.Panic, testkit.Final{Reason: dlq.ReasonPanic, Attempts: 3, Last: testkit.Panic}},
		{testkit.Hang, testkit.Final{Reason: dlq.ReasonTimeout, Attempts: 3, Last: testkit.Hang}},
		{testkit.Ignore, testkit.Final{Reason: dlq.ReasonTimeout, Attempts: 1, Last: testkit.Ignore}},
	}
	for _, c := range cases {
		assert.Equal(t, c.want, only(c.b).Expect(2, "key", 3), c.b.String())
	}
}

func TestGateAndGauge(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := testkit.NewGate()
		var gauge testkit.Gauge
		var wg sync.WaitGroup
		for range 3 {
			wg.Go(func() {
				defer gauge.Enter()()
				g.Block()
			})
		}
		synctest.Wait()
		assert.EqualValues(t, 3, g.Blocked())
		assert.EqualValues(t, 3, gauge.Cur())
		g.Release()
		g.Release()
		wg.Wait()
		assert.Zero(t, g.Blocked())
		assert.EqualValues(t, 3, g.Total())
		assert.Zero(t, gauge.Cur())
		assert.EqualValues(t, 3, gauge.Max())
		g.Block() // released gates let calls through
	})
}

func TestLedgerFindsLossAndDuplicates(t *testing.T) {
	l := testkit.NewLedger()
	l.Deliver("a")
	l.DeadLetter("b", "s", dlq.ReasonError)
	l.Filter("c")
	require.NoError(t, l.ExactlyOnce([]string{"a", "b", "c"}))
	assert.Equal(t, []string{"a"}, l.IDs(testkit.Delivered))
	assert.Equal(t, 1, l.Count(testkit.DeadLettered))
	assert.Equal(t, []testkit.Entry{{State: testkit.DeadLettered, Stage: "s", Reason: dlq.ReasonError}}, l.Entries("b"))

	err := l.ExactlyOnce([]string{"a", "b", "c", "lost"})
	require.ErrorContains(t, err, "lost: no terminal state")
	l.Deliver("a")
	l.Deliver("extra")
	err = l.ExactlyOnce([]string{"a", "b", "c"})
	require.ErrorContains(t, err, "a: 2 terminal states")
	require.ErrorContains(t, err, "extra: unexpected unit")
}

func rec(id string) dlq.Record {
	return dlq.Record{ID: id, Stage: "s", Reason: dlq.ReasonError, Payload: []byte(`1`)}
}

func TestSinkFailsBlocksAndDelays(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := context.Background()
		s := testkit.NewSink()
		s.FailFirst = 2
		require.ErrorIs(t, s.Write(ctx, rec("1")), testkit.ErrDiskOnFire)
		require.ErrorIs(t, s.Write(ctx, rec("1")), testkit.ErrDiskOnFire)
		require.NoError(t, s.Write(ctx, rec("1")))
		assert.Equal(t, 1, s.Mem.Len())
		assert.EqualValues(t, 3, s.Writes())
		assert.EqualValues(t, 2, s.Failed())
		assert.Len(t, s.WriteTimes("1"), 3)

		slow := testkit.NewSink()
		slow.Delay = 25 * time.Millisecond
		start := time.Now()
		require.NoError(t, slow.Write(ctx, rec("x")))
		assert.Equal(t, 25*time.Millisecond, time.Since(start))

		blocked := testkit.NewSink()
		blocked.Block = make(chan struct{})
		done := make(chan error, 1)
		go func() { done <- blocked.Write(ctx, rec("y")) }()
		synctest.Wait()
		assert.Len(t, done, 0, "the write waits for the block to lift")
		close(blocked.Block)
		require.NoError(t, <-done)
		assert.Len(t, blocked.Contexts(), 1)

		always := testkit.NewSink()
		always.FailFirst, always.Err = -1, errors.New("nope")
		for range 5 {
			require.EqualError(t, always.Write(ctx, rec("z")), "nope")
		}
	})
}

func TestDiskFullMakesTheFileFailCleanly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "d.jsonl")
	var failures atomic.Int64
	f, err := dlq.OpenFile(path, dlq.WithSyncHook(testkit.DiskFull(1000, &failures)))
	require.NoError(t, err)
	ctx := context.Background()
	ok := 0
	for i := range 50 {
		r := rec(dlq.NewID())
		r.Error = "some error text to make the line longer " + string(rune('a'+i%26))
		if err := f.Write(ctx, r); err != nil {
			require.ErrorIs(t, err, syscall.ENOSPC)
			continue
		}
		ok++
	}
	require.NoError(t, f.Close())
	assert.Positive(t, ok)
	assert.Less(t, ok, 50)
	assert.EqualValues(t, 50-ok, failures.Load())
	res, err := dlq.ReadFile(path)
	require.NoError(t, err, "a failed append is rolled back: the file stays readable")
	assert.Nil(t, res.Torn)
	assert.Len(t, res.Records, ok)
}
