package sluice_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// behaviour is what a chaos function does on one attempt.
type behaviour uint8

const (
	bOK behaviour = iota
	bTransient
	bPermanent
	bPanic
	bHang // blocks until its context ends: past the per-attempt timeout
)

func splitmix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// chaosPlan decides, from a seed, what every attempt of every item at every stage does.
type chaosPlan struct{ seed uint64 }

func (c chaosPlan) at(stage int, key string, attempt int) behaviour {
	h := c.seed
	for i := 0; i < len(key); i++ {
		h = splitmix(h ^ uint64(key[i]))
	}
	h = splitmix(h ^ uint64(stage)<<32 ^ uint64(attempt))
	switch r := h % 100; {
	case r < 72:
		return bOK
	case r < 87:
		return bTransient
	case r < 91:
		return bPermanent
	case r < 95:
		return bPanic
	default:
		return bHang
	}
}

// expect follows the plan for one item at one stage: whether it passes, and if not the reason
// and the attempt count of its dead letter.
func (c chaosPlan) expect(stage int, key string, max int) (ok bool, reason dlq.Reason, attempts int) {
	for a := 1; a <= max; a++ {
		switch c.at(stage, key, a) {
		case bOK:
			return true, "", a
		case bPermanent:
			return false, dlq.ReasonPermanent, a
		case bTransient:
			reason = dlq.ReasonError
		case bPanic:
			reason = dlq.ReasonPanic
		case bHang:
			reason = dlq.ReasonTimeout
		}
	}
	return false, reason, max
}

func (c chaosPlan) act(ctx context.Context, stageNo int) error {
	attempt, _ := stage.Attempt(ctx)
	switch c.at(stageNo, stage.CorrelationID(ctx), attempt) {
	case bTransient:
		return errors.New("transient")
	case bPermanent:
		return retry.Permanent(errors.New("permanent"))
	case bPanic:
		panic("chaos")
	case bHang:
		<-ctx.Done()
		return ctx.Err()
	}
	return nil
}

// ackSource hands over n items, each with an acknowledgement that the test checks.
type ackSource struct {
	n       int
	mu      sync.Mutex
	acks    map[string][]pipeline.Outcome
	durable *sync.Map // correlation IDs whose dead letter is durable
	early   atomic.Int32
}

func (s *ackSource) Emit(_ context.Context, admit pipeline.Admit[int]) error {
	for i := range s.n {
		key := "item-" + strconv.Itoa(i)
		err := admit(pipeline.Item[int]{Value: i, Key: key, Ack: func(o pipeline.Outcome) {
			if o == pipeline.DeadLettered && !s.anyDurable(key) {
				s.early.Add(1)
			}
			s.mu.Lock()
			s.acks[key] = append(s.acks[key], o)
			s.mu.Unlock()
		}})
		if err != nil {
			return nil
		}
	}
	return nil
}

func (s *ackSource) anyDurable(key string) bool {
	for _, k := range []string{key, key + "/1", key + "/2"} {
		if _, ok := s.durable.Load(k); ok {
			return true
		}
	}
	return false
}

// The seeded property test of the core: 10,000 items through three stages (map, flat-map,
// sink) whose functions randomly fail transiently, fail permanently, panic, or hang past their
// timeout. Conservation holds exactly, every dead letter has the reason and attempt count the
// plan predicts, and every item is acknowledged exactly once, never before its outcome is
// durable.
func TestChaosConservation(t *testing.T) {
	seeds, items := 20, 10_000
	if testing.Short() {
		seeds, items = 3, 2_000
	}
	for seed := range seeds {
		t.Run("seed="+strconv.Itoa(seed), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) { runChaos(t, chaosPlan{seed: uint64(seed)}, items) })
		})
	}
}

func runChaos(t *testing.T, plan chaosPlan, items int) {
	const maxAttempts = 3
	policy := retry.Policy{MaxAttempts: maxAttempts, InitialInterval: time.Millisecond, MaxInterval: 4 * time.Millisecond}
	opts := func(workers, capacity int) []stage.Option {
		return []stage.Option{stage.Workers(workers), stage.Capacity(capacity), stage.Retry(policy), stage.Timeout(10 * time.Millisecond)}
	}
	var delivered sync.Map
	s1 := stage.Map("parse", func(ctx context.Context, n int) (int, error) {
		return n, plan.act(ctx, 1)
	}, opts(4, 8)...)
	s2 := stage.FlatMap("split", func(ctx context.Context, n int) ([]int, error) {
		if err := plan.act(ctx, 2); err != nil {
			return nil, err
		}
		if n%7 == 0 {
			return nil, nil // filtered
		}
		return []int{2 * n, 2*n + 1}, nil
	}, opts(3, 5)...)
	s3 := stage.Sink("store", func(ctx context.Context, n int) error {
		if err := plan.act(ctx, 3); err != nil {
			return err
		}
		if _, dup := delivered.LoadOrStore(stage.CorrelationID(ctx), n); dup {
			return fmt.Errorf("delivered twice: %s", stage.CorrelationID(ctx))
		}
		return nil
	}, opts(5, 3)...)

	var durable sync.Map
	mem := dlq.NewMemory()
	p, err := pipeline.New("chaos", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](), s1), s2), s3),
		pipeline.WithDLQ(mem), pipeline.OnDeadLetter(func(r dlq.Record) { durable.Store(r.CorrelationID, true) }))
	require.NoError(t, err)
	src := &ackSource{n: items, acks: map[string][]pipeline.Outcome{}, durable: &durable}
	report, err := p.Run(context.Background(), src)
	require.NoError(t, err)

	// The ledger the test keeps from the plan.
	type dead struct {
		reason   dlq.Reason
		attempts int
	}
	wantDead := map[string]dead{}
	wantDelivered := map[string]bool{}
	wantAck := map[string]pipeline.Outcome{}
	filtered := 0
	for i := range items {
		key := "item-" + strconv.Itoa(i)
		if ok, r, a := plan.expect(1, key, maxAttempts); !ok {
			wantDead[key] = dead{r, a}
			wantAck[key] = pipeline.DeadLettered
			continue
		}
		if ok, r, a := plan.expect(2, key, maxAttempts); !ok {
			wantDead[key] = dead{r, a}
			wantAck[key] = pipeline.DeadLettered
			continue
		}
		if i%7 == 0 {
			filtered++
			wantAck[key] = pipeline.Filtered
			continue
		}
		wantAck[key] = pipeline.Delivered
		for c := 1; c <= 2; c++ {
			child := key + "/" + strconv.Itoa(c)
			if ok, r, a := plan.expect(3, child, maxAttempts); !ok {
				wantDead[child] = dead{r, a}
				wantAck[key] = pipeline.DeadLettered
			} else {
				wantDelivered[child] = true
			}
		}
	}

	recs, err := mem.Records(context.Background())
	require.NoError(t, err)
	require.Len(t, recs, len(wantDead))
	for _, r := range recs {
		w, ok := wantDead[r.CorrelationID]
		require.True(t, ok, "unexpected dead letter %s", r.CorrelationID)
		require.Equal(t, w.reason, r.Reason, "reason of %s", r.CorrelationID)
		require.Equal(t, w.attempts, r.Attempts, "attempts of %s", r.CorrelationID)
		if r.Reason == dlq.ReasonPanic {
			require.Contains(t, r.Stack, "chaos")
		}
	}
	n := 0
	delivered.Range(func(k, _ any) bool {
		require.True(t, wantDelivered[k.(string)], "unexpected delivery %s", k)
		n++
		return true
	})
	require.Equal(t, len(wantDelivered), n)

	assert.EqualValues(t, items, report.Admitted)
	assert.EqualValues(t, len(wantDelivered), report.Delivered)
	assert.EqualValues(t, filtered, report.Filtered)
	assert.EqualValues(t, len(wantDead), report.DeadLettered)
	assert.Zero(t, report.Abandoned)
	requireBalanced(t, report)

	require.Zero(t, src.early.Load(), "an item was acknowledged before its dead letter was durable")
	require.Len(t, src.acks, items)
	for key, got := range src.acks {
		require.Equal(t, []pipeline.Outcome{wantAck[key]}, got, "acknowledgements of %s", key)
	}
}

// countingSource counts the items it hands over (before admit returns, so while one is being
// handed over the count is one ahead).
type countingSource struct {
	n      int
	handed atomic.Int64
}

func (s *countingSource) Emit(_ context.Context, admit pipeline.Admit[int]) error {
	for i := range s.n {
		s.handed.Add(1)
		if err := admit(pipeline.Item[int]{Value: i}); err != nil {
			return nil
		}
	}
	return nil
}

// Backpressure: a slow sink throttles everything before it, back to the source, so the items
// in flight never exceed what the capacities, pools and batches can hold. Proven by counting.
func TestBackpressureBound(t *testing.T) {
	const (
		c1, w1     = 5, 3
		c2, w2, b2 = 4, 2, 8
		c3, w3     = 2, 1
		items      = 100_000
	)
	// Units the stages can hold: each input slot and worker holds one item, a batch worker
	// holds up to a batch, and the sink's slots and worker hold a batch each.
	bound := int64((c1 + w1) + (c2 + w2*b2) + (c3+w3)*b2)
	src := &countingSource{n: items}
	var finished, maxInFlight atomic.Int64
	s1 := stage.Map("inc", func(_ context.Context, n int) (int, error) { return n + 1, nil }, stage.Workers(w1), stage.Capacity(c1))
	s2 := stage.Batch("batch", b2, time.Hour, func(_ context.Context, b []int) ([]int, error) { return b, nil }, stage.Workers(w2), stage.Capacity(c2))
	s3 := stage.Sink("slow", func(_ context.Context, b []int) error {
		inFlight := src.handed.Load() - finished.Load()
		for {
			m := maxInFlight.Load()
			if inFlight <= m || maxInFlight.CompareAndSwap(m, inFlight) {
				break
			}
		}
		for range 20 {
			runtime.Gosched() // slow
		}
		finished.Add(int64(len(b)))
		return nil
	}, stage.Workers(w3), stage.Capacity(c3))
	p, err := pipeline.New("bp", pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[int](), s1), s2), s3))
	require.NoError(t, err)
	report, err := p.Run(context.Background(), src)
	require.NoError(t, err)
	assert.EqualValues(t, items, report.Delivered)
	// +1: the item the source is handing over is counted before it is admitted.
	assert.LessOrEqual(t, maxInFlight.Load(), bound+1, "items in flight exceeded the bound of %d", bound)
	assert.Greater(t, maxInFlight.Load(), bound/2, "the slow sink should have filled the pipeline (the test would prove nothing)")
	t.Logf("max in flight %d, bound %d", maxInFlight.Load(), bound)
}
