// Package stage defines the stages of a Sluice pipeline and runs them.
//
// A stage is a name, a function of your own types, a pool of workers, a bounded input, a retry
// policy, a per-attempt timeout and a codec for dead-letter payloads. The kinds:
//
//	Map      one input, one output              stage.Map("parse", fn)
//	Filter   one input, zero or one output      stage.Filter("valid", fn)
//	FlatMap  one input, any number of outputs   stage.FlatMap("rows", fn)
//	Batch    up to N inputs, one output         stage.Batch("upload", 500, time.Second, fn)
//	Sink     one input, no output               stage.Sink("store", fn)
//
// Defaults of a stage built without options: runtime.GOMAXPROCS(0) workers; an input capacity
// of twice the workers; no per-attempt timeout; the default retry policy (retry.Policy{}: three
// attempts, exponential backoff from 100ms with jitter); a grace period of 1s for calls that
// ignore cancellation; JSON as the payload codec.
//
// Every call gets a context that carries the stage's per-attempt timeout (counted from the start of
// the call, after any wait for a rate-limit token) and tells the function its attempt number and
// maximum (Attempt) and the item's correlation ID (CorrelationID). The order of failure handling is
// fixed: attempt, retry per the policy, then dead letter. A panic fails the attempt (reason panic,
// stack kept; so does a panic in a RateLimitBy or CircuitBreakerBy key function, which is not
// retried); an error wrapped with retry.Permanent is not retried; an error carrying a delay
// (retry.After) is retried after that delay; an attempt that outlives its timeout has its context
// cancelled and, if its call then fails, fails with reason timeout (a result that comes back within
// the grace period is kept); if the function ignores its cancelled context for longer than the
// grace period the call is abandoned and its worker replaced, so the pool keeps its size.
// When the pipeline drains, calls are cancelled, never retried, and their items parked.
//
// A function must not change its input, nor anything the input points to: return a new value
// instead. The input is what a retry calls again, what a dead letter records and what a
// replay runs again. An abandoned call's item is encoded into its dead letter while the call
// may still be running (and so are the finished items of an abandoned claim, below): a change
// made in place would race with that encoding and leave the changed value in the record.
//
// A worker of a fast map, filter or sink with no timeout, rate limit, circuit breaker, spans,
// autoscaler or retry time budget (Policy.MaxElapsedTime) runs the first attempts of the items
// it took (up to 32) in one tight loop, with one recover for the batch; an item whose first
// attempt fails or panics goes on through the full attempt loop, and the loop resumes after it.
// Such a worker of a map or filter that is not the last stage also claims the batch and passes
// its outputs on when the batch is done; if one of its calls ignores a drain's cancellation past
// the grace period while it holds that claim, the items of the claim are all parked, including
// those whose calls had finished (at least once: a replay runs them again). The last stage never
// claims: there a hung call parks its own item only.
//
// A worker whose calls are fast, once done with its batch, comes straight back for more: while
// it passes its outputs on, an item that arrives in its input waits for it rather than wake an
// idle worker. When the next stage's input is full, a map's item waits with the worker (another
// worker would only wait for the same room); a filter's or flat-map's, which may need no room,
// wakes an idle worker, as does any item when passing the outputs on means writing dead letters
// (overflow) or parking them (a drain).
//
// Stages are definitions: they hold no running state, so one stage value may serve several
// pipelines and runs. Package pipeline chains them and runs them.
package stage
