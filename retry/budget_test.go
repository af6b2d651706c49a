package retry

import (
	"math"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestBudgetConfig(t *testing.T) {
	assert.False(t, BudgetConfig{}.Enabled())
	assert.True(t, BudgetConfig{MaxTokens: 10, TokenRatio: 0.1}.Enabled())
	assert.True(t, BudgetConfig{TokenRatio: 0.1}.Enabled(), "any non-zero field enables it (and Validate reports the rest)")
	assert.NoError(t, BudgetConfig{}.Validate())
	assert.NoError(t, BudgetConfig{MaxTokens: 10, TokenRatio: 0.1}.Validate())
	assert.NoError(t, BudgetConfig{MaxTokens: 1000, TokenRatio: 1000}.Validate())
	for _, c := range []BudgetConfig{
		{MaxTokens: -1, TokenRatio: 1},
		{MaxTokens: 1000.5, TokenRatio: 1},
		{MaxTokens: math.NaN(), TokenRatio: 1},
		{MaxTokens: 10, TokenRatio: -1},
		{MaxTokens: 10, TokenRatio: 10.5},
		{MaxTokens: 10, TokenRatio: math.NaN()},
	} {
		assert.Error(t, c.Validate(), "%+v", c)
	}
}

func TestBudgetArithmetic(t *testing.T) {
	b := NewBudget(BudgetConfig{MaxTokens: 10, TokenRatio: 0.1})
	require.NotNil(t, b)
	assert.Equal(t, 10.0, b.Tokens())
	assert.Equal(t, 10.0, b.MaxTokens())

	// Retries are allowed while more than 5 tokens remain after the failure.
	for _, want := range []float64{9, 8, 7, 6} {
		assert.True(t, b.OnFailure())
		assert.Equal(t, want, b.Tokens())
	}
	assert.False(t, b.OnFailure(), "5 is not more than 10/2")
	assert.Equal(t, 5.0, b.Tokens())

	// One success is not enough: 5.1 - 1 = 4.1.
	b.OnSuccess()
	assert.Equal(t, 5.1, b.Tokens())
	assert.False(t, b.OnFailure())
	assert.Equal(t, 4.1, b.Tokens())

	// Recovery: 4.1 + 20*0.1 = 6.1, then a failure leaves 5.1 > 5.
	for range 20 {
		b.OnSuccess()
	}
	assert.Equal(t, 6.1, b.Tokens())
	assert.True(t, b.OnFailure())
	assert.Equal(t, 5.1, b.Tokens())

	// Successes are capped at MaxTokens.
	for range 1000 {
		b.OnSuccess()
	}
	assert.Equal(t, 10.0, b.Tokens())

	// Failures floor at 0.
	for i := range 100 {
		assert.Equal(t, i < 4, b.OnFailure(), "failure %d", i)
	}
	assert.Equal(t, 0.0, b.Tokens())
	b.OnSuccess()
	assert.Equal(t, 0.1, b.Tokens())
}

func TestBudgetOddThreshold(t *testing.T) {
	// MaxTokens 3: a retry needs more than 1.5 tokens after the failure.
	b := NewBudget(BudgetConfig{MaxTokens: 3, TokenRatio: 0.5})
	assert.True(t, b.OnFailure())  // 2
	assert.False(t, b.OnFailure()) // 1
	b.OnSuccess()                  // 1.5
	assert.Equal(t, 1.5, b.Tokens())
	assert.False(t, b.OnFailure()) // 0.5
	for range 4 {
		b.OnSuccess()
	}
	assert.Equal(t, 2.5, b.Tokens())
	assert.False(t, b.OnFailure(), "exactly half (1.5) is refused")
	for range 3 {
		b.OnSuccess()
	}
	assert.Equal(t, 3.0, b.Tokens())
	assert.True(t, b.OnFailure()) // 2
}

func TestBudgetNil(t *testing.T) {
	assert.Nil(t, NewBudget(BudgetConfig{}))
	var b *Budget
	assert.NotPanics(t, func() {
		b.OnSuccess()
		for range 100 {
			assert.True(t, b.OnFailure())
		}
		assert.Zero(t, b.Tokens())
		assert.Zero(t, b.MaxTokens())
	})
}

func TestNewBudgetClamps(t *testing.T) {
	assert.Nil(t, NewBudget(BudgetConfig{TokenRatio: 1}), "no MaxTokens: no budget")
	assert.Nil(t, NewBudget(BudgetConfig{MaxTokens: -5, TokenRatio: 1}))
	assert.Nil(t, NewBudget(BudgetConfig{MaxTokens: math.NaN(), TokenRatio: 1}))

	b := NewBudget(BudgetConfig{MaxTokens: 5000, TokenRatio: 1})
	assert.Equal(t, 1000.0, b.MaxTokens())

	b = NewBudget(BudgetConfig{MaxTokens: 2})
	b.OnFailure()
	b.OnSuccess()
	assert.Equal(t, 1.001, b.Tokens(), "missing TokenRatio counts as 0.001")

	b = NewBudget(BudgetConfig{MaxTokens: 2, TokenRatio: 50})
	b.OnFailure()
	b.OnSuccess()
	assert.Equal(t, 2.0, b.Tokens(), "TokenRatio above MaxTokens counts as MaxTokens")

	b = NewBudget(BudgetConfig{MaxTokens: 10, TokenRatio: 0.0001})
	b.OnFailure()
	b.OnSuccess()
	assert.Equal(t, 9.001, b.Tokens(), "precision is 0.001 token")
}

func TestBudgetConcurrent(t *testing.T) {
	// Failures only: the result is exact.
	b := NewBudget(BudgetConfig{MaxTokens: 1000, TokenRatio: 1})
	const goroutines, each = 8, 100
	var wg sync.WaitGroup
	for range goroutines {
		wg.Go(func() {
			for range each {
				b.OnFailure()
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 1000.0-goroutines*each, b.Tokens())

	// Successes only: back to exactly 1000 (800 short, 8*100*2 offered).
	for range goroutines {
		wg.Go(func() {
			for range each {
				b.OnSuccess()
				b.OnSuccess()
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 1000.0, b.Tokens())

	// Mixed: 1000 - 800 + 800*0.5 = 600 whatever the interleaving, as
	// neither bound is reached.
	b = NewBudget(BudgetConfig{MaxTokens: 1000, TokenRatio: 0.5})
	for range goroutines {
		wg.Go(func() {
			for range each {
				b.OnFailure()
				b.OnSuccess()
			}
		})
	}
	wg.Wait()
	assert.Equal(t, 600.0, b.Tokens())
}

func TestBudgetAllocs(t *testing.T) {
	b := NewBudget(BudgetConfig{MaxTokens: 10, TokenRatio: 1})
	assert.Zero(t, testing.AllocsPerRun(1000, func() {
		b.OnFailure()
		b.OnSuccess()
		_ = b.Tokens()
	}))
}

func BenchmarkBudget(b *testing.B) {
	b.Run("OnSuccess-full", func(b *testing.B) {
		b.ReportAllocs()
		budget := NewBudget(BudgetConfig{MaxTokens: 100, TokenRatio: 1})
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				budget.OnSuccess()
			}
		})
	})
	b.Run("OnFailure+OnSuccess", func(b *testing.B) {
		b.ReportAllocs()
		budget := NewBudget(BudgetConfig{MaxTokens: 100, TokenRatio: 1})
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				budget.OnFailure()
				budget.OnSuccess()
			}
		})
	})
	b.Run("nil", func(b *testing.B) {
		b.ReportAllocs()
		var budget *Budget
		for b.Loop() {
			budget.OnFailure()
			budget.OnSuccess()
		}
	})
}
