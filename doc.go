// Package sluice is the root of Sluice, a library for multi-stage data pipelines that stay
// bounded under load and lose nothing when things fail.
//
// A pipeline is a chain of stages. Each stage owns a pool of workers of a size you choose and a
// bounded input, so a slow stage throttles everything before it, back to ingress, and memory
// is set by capacities, not by input size. Each call runs under the stage's per-attempt
// timeout; failures are retried with exponential backoff and jitter; what still fails, panics or
// times out is written, with its full context, to a durable dead-letter queue (DLQ) from which
// it can be inspected and replayed into the stage that failed it.
//
// The packages:
//
//   - [github.com/sluicehq/sluice/pipeline]: sources, typed chaining of stages (Input, Then),
//     Run and drain, Replay, and the Report.
//   - [github.com/sluicehq/sluice/stage]: stage definitions (Map, Filter, FlatMap, Batch,
//     Sink) and their options (Workers, Capacity, Timeout, Retry, WithCodec).
//   - [github.com/sluicehq/sluice/retry]: the backoff policy, Permanent and Retry-After errors,
//     error classes and the retry budget.
//   - [github.com/sluicehq/sluice/dlq]: the dead-letter record (format version 1), and the
//     memory and file sinks.
//
// Every item ends in exactly one terminal state: delivered, filtered, dead-lettered, or
// rejected at ingress; the Report's counts add up. See the README for a quick start.
package sluice
