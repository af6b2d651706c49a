package retry

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestZeroPolicyIsDefault(t *testing.T) {
	var p Policy
	require.NoError(t, p.Validate())
	assert.Equal(t, Policy{
		MaxAttempts:         3,
		InitialInterval:     100 * time.Millisecond,
		Multiplier:          2,
		MaxInterval:         10 * time.Second,
		RandomizationFactor: 0.5,
	}, p.Normalize())

	s := p.Start()
	assert.Equal(t, 3, s.MaxAttempts())
	assert.Equal(t, 1, s.Attempts())
	assert.Equal(t, 0.5, s.b.RandomizationFactor, "jitter must be on by default")
	assert.Equal(t, DefaultInitialInterval, s.b.InitialInterval)
	assert.Equal(t, DefaultMultiplier, s.b.Multiplier)
	assert.Equal(t, DefaultMaxInterval, s.b.MaxInterval)
	assert.Zero(t, s.b.MaxElapsedTime)
	assert.Nil(t, s.budget)
}

func TestNoRetry(t *testing.T) {
	p := NoRetry()
	require.NoError(t, p.Validate())
	assert.Equal(t, 1, p.Normalize().MaxAttempts)
	s := p.Start()
	d, stop := s.Next(assert.AnError)
	assert.Equal(t, StopAttempts, stop)
	assert.Zero(t, d)
}

func TestNormalize(t *testing.T) {
	tests := []struct {
		name string
		in   Policy
		want Policy
	}{
		{
			name: "zero fields get defaults",
			in:   Policy{},
			want: Policy{MaxAttempts: 3, InitialInterval: 100 * time.Millisecond, Multiplier: 2, MaxInterval: 10 * time.Second, RandomizationFactor: 0.5},
		},
		{
			name: "set fields are kept",
			in:   Policy{MaxAttempts: 7, InitialInterval: time.Second, Multiplier: 1.5, MaxInterval: time.Minute, MaxElapsedTime: time.Hour, RandomizationFactor: 0.1},
			want: Policy{MaxAttempts: 7, InitialInterval: time.Second, Multiplier: 1.5, MaxInterval: time.Minute, MaxElapsedTime: time.Hour, RandomizationFactor: 0.1},
		},
		{
			name: "NoJitter zeroes the randomization factor",
			in:   Policy{NoJitter: true},
			want: Policy{MaxAttempts: 3, InitialInterval: 100 * time.Millisecond, Multiplier: 2, MaxInterval: 10 * time.Second, NoJitter: true},
		},
		{
			name: "MaxAttempts 1 is kept (no retries)",
			in:   Policy{MaxAttempts: 1},
			want: Policy{MaxAttempts: 1, InitialInterval: 100 * time.Millisecond, Multiplier: 2, MaxInterval: 10 * time.Second, RandomizationFactor: 0.5},
		},
		{
			name: "budget is kept",
			in:   Policy{Budget: BudgetConfig{MaxTokens: 10, TokenRatio: 0.1}},
			want: Policy{MaxAttempts: 3, InitialInterval: 100 * time.Millisecond, Multiplier: 2, MaxInterval: 10 * time.Second, RandomizationFactor: 0.5, Budget: BudgetConfig{MaxTokens: 10, TokenRatio: 0.1}},
		},
		{
			name: "out-of-range values are kept for Validate",
			in:   Policy{MaxAttempts: -1, Multiplier: 0.5},
			want: Policy{MaxAttempts: -1, InitialInterval: 100 * time.Millisecond, Multiplier: 0.5, MaxInterval: 10 * time.Second, RandomizationFactor: 0.5},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.in.Normalize()
			assert.Equal(t, tt.want, got)
			assert.Equal(t, got, got.Normalize(), "Normalize must be idempotent")
			if tt.in.Validate() == nil {
				s := tt.in.Start()
				assert.Equal(t, got.MaxAttempts, s.MaxAttempts(), "Start uses the normalized policy")
				assert.Equal(t, got.InitialInterval, s.b.InitialInterval)
				assert.Equal(t, got.Multiplier, s.b.Multiplier)
				assert.Equal(t, got.MaxInterval, s.b.MaxInterval)
				assert.Equal(t, got.MaxElapsedTime, s.b.MaxElapsedTime)
				assert.Equal(t, got.RandomizationFactor, s.b.RandomizationFactor)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name string
		p    Policy
		want []string // substrings of the error; nil means valid
	}{
		{name: "zero", p: Policy{}},
		{name: "no retry", p: NoRetry()},
		{name: "no jitter", p: Policy{NoJitter: true}},
		{name: "full", p: Policy{MaxAttempts: 5, InitialInterval: time.Second, Multiplier: 1, MaxInterval: time.Second, MaxElapsedTime: time.Minute, RandomizationFactor: 1, Budget: BudgetConfig{MaxTokens: 1000, TokenRatio: 1000}}},
		{
			name: "negative MaxAttempts",
			p:    Policy{MaxAttempts: -1},
			want: []string{"retry: MaxAttempts is -1; use 0 for the default (3) or a positive number"},
		},
		{
			name: "negative InitialInterval",
			p:    Policy{InitialInterval: -time.Second},
			want: []string{"InitialInterval is -1s", "default (100ms)"},
		},
		{
			name: "Multiplier below 1",
			p:    Policy{Multiplier: 0.5},
			want: []string{"Multiplier is 0.5", ">= 1"},
		},
		{
			name: "negative Multiplier",
			p:    Policy{Multiplier: -2},
			want: []string{"Multiplier is -2"},
		},
		{
			name: "NaN Multiplier",
			p:    Policy{Multiplier: math.NaN()},
			want: []string{"Multiplier is NaN"},
		},
		{
			name: "infinite Multiplier",
			p:    Policy{Multiplier: math.Inf(1)},
			want: []string{"Multiplier is +Inf"},
		},
		{
			name: "negative MaxInterval",
			p:    Policy{MaxInterval: -time.Second},
			want: []string{"MaxInterval is -1s", "default (10s)"},
		},
		{
			name: "negative MaxElapsedTime",
			p:    Policy{MaxElapsedTime: -time.Second},
			want: []string{"MaxElapsedTime is -1s", "0 for no limit"},
		},
		{
			name: "RandomizationFactor above 1",
			p:    Policy{RandomizationFactor: 1.5},
			want: []string{"RandomizationFactor is 1.5", "(0, 1]", "NoJitter"},
		},
		{
			name: "negative RandomizationFactor",
			p:    Policy{RandomizationFactor: -0.1},
			want: []string{"RandomizationFactor is -0.1"},
		},
		{
			name: "RandomizationFactor with NoJitter",
			p:    Policy{RandomizationFactor: 0.2, NoJitter: true},
			want: []string{"RandomizationFactor is 0.2 but NoJitter is true"},
		},
		{
			name: "MaxInterval below InitialInterval",
			p:    Policy{InitialInterval: 2 * time.Second, MaxInterval: time.Second},
			want: []string{"MaxInterval (1s) is less than InitialInterval (2s)"},
		},
		{
			name: "InitialInterval above the default MaxInterval",
			p:    Policy{InitialInterval: time.Minute},
			want: []string{"MaxInterval (10s, the default) is less than InitialInterval (1m0s)"},
		},
		{
			name: "MaxInterval below the default InitialInterval",
			p:    Policy{MaxInterval: time.Millisecond},
			want: []string{"MaxInterval (1ms) is less than InitialInterval (100ms, the default)"},
		},
		{
			name: "budget MaxTokens too large",
			p:    Policy{Budget: BudgetConfig{MaxTokens: 2000, TokenRatio: 1}},
			want: []string{"Budget.MaxTokens is 2000", "(0, 1000]"},
		},
		{
			name: "budget without MaxTokens",
			p:    Policy{Budget: BudgetConfig{TokenRatio: 1}},
			want: []string{"Budget.MaxTokens is 0"},
		},
		{
			name: "budget without TokenRatio",
			p:    Policy{Budget: BudgetConfig{MaxTokens: 10}},
			want: []string{"Budget.TokenRatio is 0", "(0, 10]"},
		},
		{
			name: "budget TokenRatio above MaxTokens",
			p:    Policy{Budget: BudgetConfig{MaxTokens: 10, TokenRatio: 11}},
			want: []string{"Budget.TokenRatio is 11"},
		},
		{
			name: "several problems are all reported",
			p:    Policy{MaxAttempts: -2, Multiplier: 0.1, MaxElapsedTime: -1},
			want: []string{"MaxAttempts is -2", "Multiplier is 0.1", "MaxElapsedTime is -1ns"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.want == nil {
				assert.NoError(t, err)
				assert.NoError(t, tt.p.Normalize().Validate(), "a normalized valid policy stays valid")
				return
			}
			require.Error(t, err)
			for _, w := range tt.want {
				assert.Contains(t, err.Error(), w)
			}
			assert.Contains(t, err.Error(), "retry: ")
		})
	}
}

func TestStartToleratesInvalidPolicy(t *testing.T) {
	p := Policy{
		MaxAttempts:         -1,
		InitialInterval:     -time.Second,
		Multiplier:          0.5,
		MaxInterval:         -time.Second,
		MaxElapsedTime:      -time.Second,
		RandomizationFactor: 7,
	}
	require.Error(t, p.Validate())
	s := p.Start()
	assert.Equal(t, DefaultMaxAttempts, s.MaxAttempts())
	assert.Equal(t, DefaultInitialInterval, s.b.InitialInterval)
	assert.Equal(t, DefaultMultiplier, s.b.Multiplier)
	assert.Equal(t, DefaultMaxInterval, s.b.MaxInterval)
	assert.Zero(t, s.b.MaxElapsedTime)
	assert.Equal(t, DefaultRandomizationFactor, s.b.RandomizationFactor)

	s = Policy{InitialInterval: time.Minute, NoJitter: true}.Start()
	assert.Equal(t, time.Minute, s.b.MaxInterval, "MaxInterval is raised to InitialInterval")
	d, stop := s.Next(assert.AnError)
	assert.Equal(t, NoStop, stop)
	assert.Equal(t, time.Minute, d)
}
