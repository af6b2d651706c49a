package stage

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/core"
	"github.com/sluicehq/sluice/tracing"
)

// drainEnv is an environment whose work context cancel ends (a drain past its deadline), and
// whose dead letters, all of reason shutdown, parked returns (their payloads).
func drainEnv(t *testing.T) (env *core.Env, cancel context.CancelFunc, parked func() []int) {
	env = benchEnv()
	env.Work, cancel = context.WithCancel(context.Background())
	var mu sync.Mutex
	var got []int
	env.DeadLetter = func(rec dlq.Record) error {
		var n int
		if err := json.Unmarshal(rec.Payload, &n); err != nil {
			return err
		}
		assert.Equal(t, dlq.ReasonShutdown, rec.Reason)
		mu.Lock()
		got = append(got, n)
		mu.Unlock()
		return nil
	}
	return env, cancel, func() []int {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(got)
	}
}

// A fast lean worker claims its whole batch (see work). When a call of that batch hangs past a
// drain's grace, the abandoner parks the whole batch, the items done before the hung one
// included: their outputs had not left the worker, so nothing is lost or counted twice.
func TestAbandonedClaimParksTheWholeBatch(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env, cancel, parked := drainEnv(t)
		h := newHung(5)
		fn := func(_ context.Context, n int) (int, error) { h.call(n); return n, nil }
		next := core.NewQueue[int](64, 1, env.Clock) // a stage after it: the last one does not claim
		r := Map("m", fn, Workers(1), Capacity(16), Grace(10*time.Millisecond)).Bind(env, next)
		r.AddProducers(1)
		r.Start()
		// The worker's first item is timed (fast), so its calls are known to be fast after it;
		// pops of 2, 4 and 8 items grow its buffers to 16 (see grow).
		var warm []int
		for _, n := range []int{2, 4, 8} {
			batch := make([]core.Envelope[int], n)
			for i := range batch {
				v := 100 + len(warm)
				warm = append(warm, v)
				batch[i] = core.Envelope[int]{V: v, M: core.Meta{Seq: uint64(v), Weight: 1}}
			}
			require.True(t, r.Input().Push(nil, batch))
			synctest.Wait()
		}
		require.EqualValues(t, 14, next.Pushed())
		st := drainWhileHung(t, r, h, cancel) // the worker takes all ten at once, and claims them
		assert.Equal(t, append(warm, 1, 2, 3, 4, 5), h.called)
		assert.ElementsMatch(t, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, parked(), "the whole batch is parked")
		assert.EqualValues(t, 1, st.Abandoned)
		assert.EqualValues(t, 24, st.In)
		assert.EqualValues(t, 10, st.DeadLetters[dlq.ReasonShutdown])
		assert.EqualValues(t, 14, st.Succeeded, "only the warm-up items left the stage")
		assert.EqualValues(t, 14, st.Out)
		assert.EqualValues(t, 14, st.Attempts, "the calls of parked items are not counted")
		assert.EqualValues(t, 14, next.Pushed(), "nothing of the batch went on")
	})
}

// The last stage's fast calls run on the tight loop without a claim (see quick): when one hangs
// past a drain's grace, only that item is parked with it; the items before it stay delivered, the
// ones after it are parked by the replacement worker, and the hung call, when it returns at last,
// changes nothing.
func TestAbandonedCallOfTheLastStage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env, cancel, parked := drainEnv(t)
		h := newHung(5)
		fn := func(_ context.Context, n int) error { h.call(n); return nil }
		r := Sink("s", fn, Workers(1), Capacity(16), Grace(10*time.Millisecond)).Bind(env, nil)
		r.AddProducers(1)
		r.Start()
		require.True(t, r.Input().Push(nil, []core.Envelope[int]{{V: 100, M: core.Meta{Seq: 100, Weight: 1}}}))
		synctest.Wait()
		st := drainWhileHung(t, r, h, cancel)
		assert.Equal(t, []int{100, 1, 2, 3, 4, 5}, h.called)
		assert.ElementsMatch(t, []int{5, 6, 7, 8, 9, 10}, parked(), "the hung item and those after it")
		assert.EqualValues(t, 1, st.Abandoned)
		assert.EqualValues(t, 11, st.In)
		assert.EqualValues(t, 6, st.DeadLetters[dlq.ReasonShutdown])
		assert.EqualValues(t, 5, st.Succeeded, "the items before the hung one were delivered")
		assert.EqualValues(t, 5, st.Attempts, "the abandoned call is not counted")
		delivered, _ := r.Units()
		assert.EqualValues(t, 5, delivered)
	})
}

// The timed call of a claimed batch (the worker's first call is timed) hangs past a drain's
// grace: its work time is recorded only if the claim stands, so when the call returns at last,
// the stats of the finished run do not change.
func TestAbandonedTimedCallOfAClaimLeavesNoTrace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		env, cancel, parked := drainEnv(t)
		h := newHung(1)
		fn := func(_ context.Context, n int) (int, error) { h.call(n); return n, nil }
		next := core.NewQueue[int](64, 1, env.Clock)
		r := Map("m", fn, Workers(1), Capacity(16), Grace(10*time.Millisecond)).Bind(env, next)
		r.AddProducers(1)
		r.Start()
		st := drainWhileHung(t, r, h, cancel)
		assert.ElementsMatch(t, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, parked())
		assert.Zero(t, st.Work.Count)
	})
}

// A panic in what follows a successful call on the tight loop (here the meter recording the
// call's time: an acknowledgement's or a dead-letter sink's panic is recovered where it happens)
// is not taken for a panic of the call: the item is not handled again. As outside the loop, it
// propagates (run in a child process, which it ends).
func TestPanicAfterTheCallIsNotTheCalls(t *testing.T) {
	if os.Getenv("SLUICE_METER_PANIC") == "1" {
		env := benchEnv()
		tel, err := tracing.New(tracing.Config{MeterProvider: panickyMeterProvider{}})
		require.NoError(t, err)
		env.Tel = tel
		calls := 0
		fn := func(_ context.Context, n int) error {
			calls++
			fmt.Fprintf(os.Stderr, "call %d\n", calls)
			return nil
		}
		r := Sink("s", fn, Workers(1), Capacity(4)).Bind(env, nil)
		r.AddProducers(1)
		r.Start()
		r.Input().Push(nil, []core.Envelope[int]{{V: 7, M: core.Meta{Seq: 1, Weight: 1}}})
		r.ProducerDone()
		<-r.Done()
		return
	}
	cmd := exec.Command(os.Args[0], "-test.run", "^TestPanicAfterTheCallIsNotTheCalls$")
	cmd.Env = append(os.Environ(), "SLUICE_METER_PANIC=1")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "the panic ends the child: %s", out)
	assert.Contains(t, string(out), "meter failed")
	assert.Equal(t, 1, strings.Count(string(out), "call "), "one call, not retried: %s", out)
}

// panickyMeterProvider's histogram of item durations (a worker's work times) panics.
type panickyMeterProvider struct{ noop.MeterProvider }

func (panickyMeterProvider) Meter(string, ...metric.MeterOption) metric.Meter { return panickyMeter{} }

type panickyMeter struct{ noop.Meter }

func (panickyMeter) Float64Histogram(name string, _ ...metric.Float64HistogramOption) (metric.Float64Histogram, error) {
	if name == tracing.MetricItemDuration {
		return panickyHistogram{}, nil
	}
	return noop.Float64Histogram{}, nil
}

type panickyHistogram struct{ noop.Float64Histogram }

func (panickyHistogram) Record(context.Context, float64, ...metric.RecordOption) {
	panic("meter failed")
}

// hung is a call that records the items it is called on and, on item n, ignores its context
// for an hour; entered is closed when that call starts.
type hung struct {
	n       int
	called  []int
	entered chan struct{}
}

func newHung(n int) *hung { return &hung{n: n, entered: make(chan struct{})} }

func (h *hung) call(n int) {
	h.called = append(h.called, n)
	if n == h.n {
		close(h.entered)
		time.Sleep(time.Hour) // ignores its context
	}
}

// drainWhileHung pushes items 1 to 10 into r's input and, once h's call hangs, cancels the run's
// work (a drain past its deadline) and closes the input. It returns r's stats once every worker
// is done, having checked that they do not change when the abandoned call ends an hour later:
// the worker touches nothing once abandoned.
func drainWhileHung[Out any](t *testing.T, r *Runner[int, Out], h *hung, cancel context.CancelFunc) Stats {
	t.Helper()
	batch := make([]core.Envelope[int], 10)
	for i := range batch {
		batch[i] = core.Envelope[int]{V: i + 1, M: core.Meta{Seq: uint64(i + 1), Weight: 1}}
	}
	require.True(t, r.Input().Push(nil, batch))
	<-h.entered
	cancel()
	r.ProducerDone()
	<-r.Done()
	st := r.Stats()
	time.Sleep(2 * time.Hour)
	synctest.Wait()
	require.Equal(t, st, r.Stats(), "the stats of a finished run do not change")
	return st
}
