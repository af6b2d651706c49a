package retry

import (
	"fmt"
	"math"
	"sync/atomic"
)

// MaxBudgetTokens is the largest valid BudgetConfig.MaxTokens.
const MaxBudgetTokens = 1000

// milli is the number of internal units per token: tokens are kept with a
// precision of 0.001, as in gRPC retry throttling.
const milli = 1000

// BudgetConfig configures a retry [Budget] with gRPC retry-throttling
// semantics. The zero BudgetConfig disables the budget.
type BudgetConfig struct {
	// MaxTokens is the initial and maximum number of tokens, in
	// (0, MaxBudgetTokens]. Each failed attempt costs one token, and
	// retries are refused unless more than MaxTokens/2 tokens remain.
	MaxTokens float64
	// TokenRatio is the number of tokens given back by each successful
	// attempt, in (0, MaxTokens]. Precision is 0.001 token.
	TokenRatio float64
}

// Enabled reports whether c configures a budget, i.e. whether any field is
// non-zero.
func (c BudgetConfig) Enabled() bool { return c != BudgetConfig{} }

// Validate reports an out-of-range field of an enabled c, with a message
// saying what to change. The zero BudgetConfig is valid (disabled).
func (c BudgetConfig) Validate() error {
	if !c.Enabled() {
		return nil
	}
	if !(c.MaxTokens > 0 && c.MaxTokens <= MaxBudgetTokens) {
		return fmt.Errorf("retry: Budget.MaxTokens is %v; use a value in (0, %d], or a zero BudgetConfig for no budget", c.MaxTokens, MaxBudgetTokens)
	}
	if !(c.TokenRatio > 0 && c.TokenRatio <= c.MaxTokens) {
		return fmt.Errorf("retry: Budget.TokenRatio is %v; use a value in (0, MaxTokens] = (0, %v], or a zero BudgetConfig for no budget", c.TokenRatio, c.MaxTokens)
	}
	return nil
}

// Budget is a retry budget shared by the items of a stage (gRPC retry
// throttling): it starts with MaxTokens tokens, each failed attempt
// subtracts one (down to 0), each successful attempt adds TokenRatio (up to
// MaxTokens), and a retry is allowed only while more than MaxTokens/2
// tokens remain.
//
// A Budget is safe for concurrent use and lock-free. All methods accept a
// nil *Budget, which allows every retry.
type Budget struct {
	tokens atomic.Int64 // milli-tokens
	max    int64        // milli-tokens
	ratio  int64        // milli-tokens
}

// NewBudget returns a budget configured by c, or nil (no budget, every
// retry allowed) when c is not enabled. NewBudget does not validate c; call
// c.Validate (or Policy.Validate) first. Out-of-range values of an enabled
// c are clamped: a MaxTokens that is not positive gives nil, a MaxTokens
// above MaxBudgetTokens counts as MaxBudgetTokens, and a TokenRatio
// outside (0, MaxTokens] is clamped to 0.001 or MaxTokens.
func NewBudget(c BudgetConfig) *Budget {
	if !c.Enabled() || !(c.MaxTokens > 0) {
		return nil
	}
	maxTokens := toMilli(math.Min(c.MaxTokens, MaxBudgetTokens))
	if maxTokens < 1 {
		maxTokens = 1
	}
	ratio := int64(1)
	if c.TokenRatio > 0 {
		ratio = min(max(toMilli(math.Min(c.TokenRatio, MaxBudgetTokens)), 1), maxTokens)
	}
	b := &Budget{max: maxTokens, ratio: ratio}
	b.tokens.Store(maxTokens)
	return b
}

func toMilli(x float64) int64 { return int64(math.Round(x * milli)) }

// OnSuccess records a successful attempt: it adds TokenRatio tokens, up to
// MaxTokens.
func (b *Budget) OnSuccess() {
	if b == nil {
		return
	}
	for {
		cur := b.tokens.Load()
		if cur >= b.max {
			return // full: the common case costs a single load
		}
		if b.tokens.CompareAndSwap(cur, min(cur+b.ratio, b.max)) {
			return
		}
	}
}

// OnFailure records a failed attempt: it subtracts one token (down to 0),
// and reports whether a retry may follow, i.e. whether more than
// MaxTokens/2 tokens remain afterwards. A nil budget always allows.
func (b *Budget) OnFailure() (retryAllowed bool) {
	if b == nil {
		return true
	}
	for {
		cur := b.tokens.Load()
		next := max(cur-milli, 0)
		if next == cur || b.tokens.CompareAndSwap(cur, next) {
			return 2*next > b.max
		}
	}
}

// Tokens returns the number of tokens left, with a precision of 0.001.
// A nil budget has 0 tokens (and allows every retry).
func (b *Budget) Tokens() float64 {
	if b == nil {
		return 0
	}
	return float64(b.tokens.Load()) / milli
}

// MaxTokens returns the capacity of the budget, with a precision of 0.001.
// A nil budget has 0.
func (b *Budget) MaxTokens() float64 {
	if b == nil {
		return 0
	}
	return float64(b.max) / milli
}
