package tracing

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

func newMetered(t *testing.T, cfg Config) (*Telemetry, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
	cfg.MeterProvider = mp
	tel, err := New(cfg)
	require.NoError(t, err)
	return tel, reader
}

func collect(t *testing.T, r *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	require.NoError(t, r.Collect(context.Background(), &rm))
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		assert.Equal(t, InstrumentationName, sm.Scope.Name)
		assert.Equal(t, InstrumentationVersion, sm.Scope.Version)
		assert.Equal(t, SchemaURL, sm.Scope.SchemaURL)
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

// key identifies a data point by its attributes (other than sluice.stage
// and sluice.pipeline) in a test.
func pointKey(set attribute.Set) string {
	var k string
	for _, kv := range set.ToSlice() {
		if kv.Key == StageKey {
			k = kv.Value.AsString() + k
			continue
		}
		if kv.Key == PipelineKey {
			continue
		}
		k += "|" + string(kv.Key) + "=" + kv.Value.String()
	}
	return k
}

func sumPoints(t *testing.T, m metricdata.Metrics, monotonic bool) map[string]int64 {
	t.Helper()
	sum, ok := m.Data.(metricdata.Sum[int64])
	require.True(t, ok, "%s is %T", m.Name, m.Data)
	assert.Equal(t, monotonic, sum.IsMonotonic, m.Name)
	assert.Equal(t, metricdata.CumulativeTemporality, sum.Temporality, m.Name)
	out := map[string]int64{}
	for _, dp := range sum.DataPoints {
		out[pointKey(dp.Attributes)] = dp.Value
	}
	return out
}

func TestRegisterStages(t *testing.T) {
	tel, reader := newMetered(t, Config{Pipeline: "orders"})
	var calls atomic.Int64
	unregister, err := tel.RegisterStages(func() []StageSnapshot {
		calls.Add(1)
		return []StageSnapshot{{
			Stage: "parse", In: 10, Out: 9, Succeeded: 7, Filtered: 1, Attempts: 13, Retries: 3,
			Returned: 0, Stranded: 0,
			DeadLetters: map[string]int64{"permanent": 1, "timeout": 1, "bespoke": 0},
			Queued:      2, Capacity: 16, Busy: 3, Workers: 4,
		}, {
			Stage: "store", In: 9, Out: 9, Succeeded: 9, Attempts: 9,
			Queued: 0, Capacity: 8, Busy: 0, Workers: 2,
		}}
	})
	require.NoError(t, err)

	got := collect(t, reader)
	assert.Equal(t, int64(1), calls.Load(), "one snapshot per collection")

	units := map[string]string{
		"sluice.stage.items.in": "{item}", "sluice.stage.items.out": "{item}", "sluice.stage.items": "{item}",
		"sluice.stage.attempts": "{attempt}", "sluice.stage.retries": "{retry}", "sluice.dlq.records": "{record}",
		"sluice.stage.queue.usage": "{item}", "sluice.stage.queue.limit": "{item}",
		"sluice.stage.worker.count": "{worker}", "sluice.stage.worker.limit": "{worker}",
	}
	for name, unit := range units {
		require.Contains(t, got, name)
		assert.Equal(t, unit, got[name].Unit, name)
		assert.NotEmpty(t, got[name].Description, name)
	}

	assert.Equal(t, map[string]int64{"parse": 10, "store": 9}, sumPoints(t, got["sluice.stage.items.in"], true))
	assert.Equal(t, map[string]int64{"parse": 9, "store": 9}, sumPoints(t, got["sluice.stage.items.out"], true))
	assert.Equal(t, map[string]int64{"parse": 13, "store": 9}, sumPoints(t, got["sluice.stage.attempts"], true))
	assert.Equal(t, map[string]int64{"parse": 3, "store": 0}, sumPoints(t, got["sluice.stage.retries"], true))
	assert.Equal(t, map[string]int64{
		"parse|sluice.outcome=succeeded": 7, "parse|sluice.outcome=filtered": 1, "parse|sluice.outcome=dead_lettered": 2,
		"parse|sluice.outcome=returned": 0, "parse|sluice.outcome=stranded": 0,
		"store|sluice.outcome=succeeded": 9, "store|sluice.outcome=filtered": 0, "store|sluice.outcome=dead_lettered": 0,
		"store|sluice.outcome=returned": 0, "store|sluice.outcome=stranded": 0,
	}, sumPoints(t, got["sluice.stage.items"], true))
	assert.Equal(t, map[string]int64{
		"parse|sluice.dlq.reason=permanent": 1, "parse|sluice.dlq.reason=timeout": 1, "parse|sluice.dlq.reason=bespoke": 0,
	}, sumPoints(t, got["sluice.dlq.records"], true))
	assert.Equal(t, map[string]int64{"parse": 2, "store": 0}, sumPoints(t, got["sluice.stage.queue.usage"], false))
	assert.Equal(t, map[string]int64{"parse": 16, "store": 8}, sumPoints(t, got["sluice.stage.queue.limit"], false))
	assert.Equal(t, map[string]int64{
		"parse|sluice.worker.state=busy": 3, "parse|sluice.worker.state=idle": 1,
		"store|sluice.worker.state=busy": 0, "store|sluice.worker.state=idle": 2,
	}, sumPoints(t, got["sluice.stage.worker.count"], false))
	assert.Equal(t, map[string]int64{"parse": 4, "store": 2}, sumPoints(t, got["sluice.stage.worker.limit"], false))

	// Every point carries the pipeline.
	for _, dp := range got["sluice.stage.items"].Data.(metricdata.Sum[int64]).DataPoints {
		v, ok := dp.Attributes.Value(PipelineKey)
		assert.True(t, ok)
		assert.Equal(t, "orders", v.AsString())
	}

	// The run ends: its counters go on being reported (a provider's last collection at shutdown
	// must have them), its gauges no more; once that was collected the callback goes.
	dropped := make(chan struct{})
	tel.obs.onDrop = func() { close(dropped) }
	require.NoError(t, unregister())
	require.NoError(t, unregister(), "idempotent")
	assert.Equal(t, int64(2), calls.Load(), "a last snapshot at unregister")
	got = collect(t, reader)
	assert.Equal(t, int64(2), calls.Load(), "no snapshot of an ended run")
	assert.Equal(t, map[string]int64{"parse": 10, "store": 9}, sumPoints(t, got["sluice.stage.items.in"], true))
	assert.Equal(t, map[string]int64{"parse|sluice.dlq.reason=permanent": 1, "parse|sluice.dlq.reason=timeout": 1, "parse|sluice.dlq.reason=bespoke": 0},
		sumPoints(t, got["sluice.dlq.records"], true))
	assert.Equal(t, map[string]int64{"parse": 0, "store": 0}, sumPoints(t, got["sluice.stage.queue.limit"], false))
	<-dropped
	got = collect(t, reader)
	for name := range units {
		if m, ok := got[name]; ok {
			assert.Empty(t, m.Data.(metricdata.Sum[int64]).DataPoints, name)
		}
	}

	// A later run's counters add to the ended run's: the pipeline's are cumulative.
	unregister, err = tel.RegisterStages(func() []StageSnapshot {
		return []StageSnapshot{{Stage: "parse", In: 5, Capacity: 16}}
	})
	require.NoError(t, err)
	defer func() { require.NoError(t, unregister()) }()
	got = collect(t, reader)
	assert.Equal(t, map[string]int64{"parse": 15, "store": 9}, sumPoints(t, got["sluice.stage.items.in"], true))
	assert.Equal(t, map[string]int64{"parse": 16, "store": 0}, sumPoints(t, got["sluice.stage.queue.limit"], false))
}

func TestRegisterStagesWithoutPipeline(t *testing.T) {
	tel, reader := newMetered(t, Config{})
	unregister, err := tel.RegisterStages(func() []StageSnapshot {
		return []StageSnapshot{{Stage: "a", In: 1}}
	})
	require.NoError(t, err)
	defer func() { require.NoError(t, unregister()) }()
	got := collect(t, reader)
	dp := got["sluice.stage.items.in"].Data.(metricdata.Sum[int64]).DataPoints
	require.Len(t, dp, 1)
	assert.Equal(t, attribute.NewSet(StageKey.String("a")), dp[0].Attributes)
}

func TestRegisterStagesNilSnapshot(t *testing.T) {
	tel, _ := newMetered(t, Config{})
	_, err := tel.RegisterStages(nil)
	assert.Error(t, err)
}

func histPoints(t *testing.T, m metricdata.Metrics) map[string]metricdata.HistogramDataPoint[float64] {
	t.Helper()
	h, ok := m.Data.(metricdata.Histogram[float64])
	require.True(t, ok, "%s is %T", m.Name, m.Data)
	out := map[string]metricdata.HistogramDataPoint[float64]{}
	for _, dp := range h.DataPoints {
		out[pointKey(dp.Attributes)] = dp
	}
	return out
}

func TestHistograms(t *testing.T) {
	tel, reader := newMetered(t, Config{})
	ctx := context.Background()
	st := tel.Stage("fetch")
	st.RecordWait(ctx, 2*time.Millisecond)
	st.RecordWait(ctx, 4*time.Millisecond)
	st.RecordWork(ctx, 100*time.Millisecond, OutcomeSucceeded, "")
	st.RecordWork(ctx, 300*time.Millisecond, OutcomeSucceeded, "")
	st.RecordWork(ctx, time.Second, OutcomeDeadLettered, "timeout")
	st.RecordWork(ctx, time.Second, OutcomeDeadLettered, "http_503") // not precomputed
	st.RecordWork(ctx, time.Second, "weird", "")                     // not precomputed
	tel.Stage("other").RecordWork(ctx, time.Millisecond, OutcomeFiltered, "")

	got := collect(t, reader)
	wait := got["sluice.stage.queue.wait_time"]
	assert.Equal(t, "s", wait.Unit)
	wp := histPoints(t, wait)
	require.Contains(t, wp, "fetch")
	assert.Equal(t, uint64(2), wp["fetch"].Count)
	assert.InDelta(t, 0.006, wp["fetch"].Sum, 1e-12)
	assert.Equal(t, durationBuckets(), wp["fetch"].Bounds)

	work := got["sluice.stage.item.duration"]
	assert.Equal(t, "s", work.Unit)
	hp := histPoints(t, work)
	assert.Len(t, hp, 5)
	assert.Equal(t, uint64(2), hp["fetch|sluice.outcome=succeeded"].Count)
	assert.InDelta(t, 0.4, hp["fetch|sluice.outcome=succeeded"].Sum, 1e-12)
	assert.Equal(t, uint64(1), hp["fetch|error.type=timeout|sluice.outcome=dead_lettered"].Count)
	assert.Equal(t, uint64(1), hp["fetch|error.type=http_503|sluice.outcome=dead_lettered"].Count)
	assert.Equal(t, uint64(1), hp["fetch|sluice.outcome=weird"].Count)
	assert.Equal(t, uint64(1), hp["other|sluice.outcome=filtered"].Count)
}

func TestPrecomputedSetsMatchOnTheFly(t *testing.T) {
	tel, _ := newMetered(t, Config{Pipeline: "p"})
	st := tel.Stage("s")
	for i, o := range knownOutcomes() {
		assert.Equal(t, i, outcomeIndex(o))
		for j, e := range knownErrTypes() {
			assert.Equal(t, j, errTypeIndex(e))
			want := st.metricSet(OutcomeKey.String(o))
			if e != "" {
				want = st.metricSet(OutcomeKey.String(o), ErrorTypeKey.String(e))
			}
			require.Len(t, st.workOpts[i][j], 1)
			cfg := metricRecordConfig(st.workOpts[i][j])
			assert.Equal(t, want, cfg, "%s/%s", o, e)
		}
	}
	for i, r := range knownReasons() {
		assert.Equal(t, i, reasonIndex(r))
	}
	assert.Equal(t, -1, outcomeIndex("x"))
	assert.Equal(t, -1, errTypeIndex("x"))
	assert.Equal(t, -1, reasonIndex("x"))
}

func metricRecordConfig(opts []metric.RecordOption) attribute.Set {
	return metric.NewRecordConfig(opts).Attributes()
}
