package stage

import (
	"context"

	"github.com/sluicehq/sluice/internal/core"
)

type infoKey struct{}

// info is what a user function can read about its call from its context. One lives in each
// worker and is updated before each attempt, so it costs no allocation and no lock per item;
// it is valid for the duration of the call (the worker writes it only between calls).
type info struct {
	stage    string
	prefix   string
	meta     core.Meta
	attempt  int
	attempts int
}

func (i *info) set(m *core.Meta, attempt, max int) {
	i.meta.Key, i.meta.Seq = m.Key, m.Seq
	i.attempt, i.attempts = attempt, max
}

func infoFrom(ctx context.Context) *info {
	if ctx == nil {
		return nil
	}
	i, _ := ctx.Value(infoKey{}).(*info)
	return i
}

// Attempt, CorrelationID and StageName read what the stage set in the context of a call; they
// are valid during the call (not in goroutines that outlive it).

// Attempt returns the number of the current attempt (from 1) and the most attempts the stage's
// retry policy allows, for the call whose context is ctx. Outside a stage it returns 0, 0.
func Attempt(ctx context.Context) (attempt, max int) {
	i := infoFrom(ctx)
	if i == nil {
		return 0, 0
	}
	return i.attempt, i.attempts
}

// CorrelationID returns the correlation ID of the item being processed by the call whose context
// is ctx (empty for a batch call, whose items each have their own, and outside a stage). It is
// stable across retries and replays, which makes it a good idempotency key.
func CorrelationID(ctx context.Context) string {
	i := infoFrom(ctx)
	if i == nil {
		return ""
	}
	if i.meta.Key == "" && i.meta.Seq == 0 {
		return ""
	}
	return i.meta.CorrelationID(i.prefix)
}

// StageName returns the name of the stage running the call whose context is ctx.
func StageName(ctx context.Context) string {
	if i := infoFrom(ctx); i != nil {
		return i.stage
	}
	return ""
}
