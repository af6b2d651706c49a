package stage_test

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func id(_ context.Context, n int) (int, error) { return n, nil }

func TestDefaults(t *testing.T) {
	s := stage.Map("m", id)
	require.NoError(t, s.Err())
	assert.Equal(t, "m", s.Name())
	assert.Equal(t, stage.KindMap, s.Kind())
	assert.Equal(t, runtime.GOMAXPROCS(0), s.Workers())
	assert.Equal(t, 2*runtime.GOMAXPROCS(0), s.Capacity())
	assert.Equal(t, 1, s.BatchSize())
	p := s.Policy()
	assert.Equal(t, retry.DefaultMaxAttempts, p.MaxAttempts)
	assert.Equal(t, retry.DefaultRandomizationFactor, p.RandomizationFactor, "jitter is on by default")

	s = stage.Map("m", id, stage.Workers(3))
	assert.Equal(t, 6, s.Capacity(), "capacity follows the workers unless set")
	s = stage.Map("m", id, stage.Workers(3), stage.Capacity(0))
	assert.Equal(t, 0, s.Capacity(), "0 is an unbuffered input, not the default")
}

func TestKinds(t *testing.T) {
	b := stage.Batch("b", 10, time.Second, func(_ context.Context, in []int) (int, error) { return len(in), nil })
	require.NoError(t, b.Err())
	assert.Equal(t, stage.KindBatch, b.Kind())
	assert.Equal(t, 10, b.BatchSize())
	assert.Equal(t, "batch", b.Kind().String())
	assert.Equal(t, "flat-map", stage.FlatMap("f", func(_ context.Context, n int) ([]int, error) { return nil, nil }).Kind().String())
	assert.Equal(t, "filter", stage.Filter("f", func(_ context.Context, n int) (bool, error) { return true, nil }).Kind().String())
	assert.Equal(t, "sink", stage.Sink("s", func(_ context.Context, n int) error { return nil }).Kind().String())
	assert.Equal(t, "map", stage.KindMap.String())
}

func TestInvalidOptions(t *testing.T) {
	cases := []struct {
		name string
		s    interface{ Err() error }
		want []string
	}{
		{"workers", stage.Map("m", id, stage.Workers(0)), []string{`stage "m"`, "Workers(0)"}},
		{"capacity", stage.Map("m", id, stage.Capacity(-3)), []string{"Capacity(-3)"}},
		{"timeout", stage.Map("m", id, stage.Timeout(-time.Second)), []string{"Timeout(-1s)"}},
		{"grace", stage.Map("m", id, stage.Grace(0)), []string{"Grace(0s)"}},
		{"retry", stage.Map("m", id, stage.Retry(retry.Policy{Multiplier: 0.5})), []string{"Retry", "Multiplier"}},
		{"nil codec", stage.Map("m", id, stage.WithCodec[int](nil)), []string{"codec is nil"}},
		{"codec type", stage.Map("m", id, stage.WithCodec[string](stage.JSONCodec[string]{})), []string{"stage's input is int"}},
		{"nil option", stage.Map("m", id, nil), []string{"nil option"}},
		{"nil fn", stage.Sink[int]("s", nil), []string{"function is nil"}},
		{"no name", stage.Map("", id), []string{"no name"}},
		{"batch size", stage.Batch("b", -1, time.Second, func(_ context.Context, in []int) (int, error) { return 0, nil }), []string{"batch size -1"}},
		{"batch wait", stage.Batch("b", 5, 0, func(_ context.Context, in []int) (int, error) { return 0, nil }), []string{"max wait"}},
		{"several", stage.Map("m", id, stage.Workers(-1), stage.Capacity(-1)), []string{"Workers(-1)", "Capacity(-1)"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := c.s.Err()
			require.Error(t, err)
			for _, w := range c.want {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func TestContextAccessorsOutsideAStage(t *testing.T) {
	n, max := stage.Attempt(context.Background())
	assert.Zero(t, n)
	assert.Zero(t, max)
	assert.Empty(t, stage.CorrelationID(context.Background()))
	assert.Empty(t, stage.StageName(context.Background()))
}

func TestJSONCodec(t *testing.T) {
	type row struct {
		A int
		B string
	}
	var c stage.Codec[row] = stage.JSONCodec[row]{}
	b, err := c.Encode(row{1, "x"})
	require.NoError(t, err)
	assert.JSONEq(t, `{"A":1,"B":"x"}`, string(b))
	v, err := c.Decode(b)
	require.NoError(t, err)
	assert.Equal(t, row{1, "x"}, v)
	assert.True(t, c.JSON())
}

func TestKindText(t *testing.T) {
	for k := stage.KindMap; k <= stage.KindSink; k++ {
		b, err := k.MarshalText()
		require.NoError(t, err)
		var back stage.Kind
		require.NoError(t, back.UnmarshalText(b))
		assert.Equal(t, k, back)
	}
	var k stage.Kind
	assert.Error(t, k.UnmarshalText([]byte("blender")))
}
