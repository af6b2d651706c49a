package stage

import (
	"sync/atomic"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/internal/hist"
)

// Stats are the counters of one stage. Item counts are envelopes (a batch output is one);
// the pipeline's Report also gives totals in source units.
type Stats struct {
	Name     string `json:"name"`
	Kind     Kind   `json:"kind"`
	Workers  int    `json:"workers"`  // size of the pool
	Busy     int    `json:"busy"`     // workers in an attempt now
	Capacity int    `json:"capacity"` // capacity of the input
	Queued   int    `json:"queued"`   // items in the input now, not yet taken by a worker: up to Capacity plus one per worker (a batch per worker for a batch stage), as the input keeps a slot for each worker's hand

	In           int64 `json:"in"`            // items the stage's workers took, or parked or dead-lettered on its behalf (not those still queued: see Queued)
	Out          int64 `json:"out"`           // items it passed on (a flat-map's outputs, a batch's batches)
	Succeeded    int64 `json:"succeeded"`     // inputs whose call succeeded and that were passed on (or delivered)
	Filtered     int64 `json:"filtered"`      // inputs dropped on purpose
	Attempts     int64 `json:"attempts"`      // calls made (not those of a batch parked whole: see Abandoned)
	Retries      int64 `json:"retries"`       // calls that were retries
	DeadLettered int64 `json:"dead_lettered"` // inputs durably dead-lettered, all reasons
	Returned     int64 `json:"returned"`      // inputs handed back unacknowledged to their source by a drain
	Stranded     int64 `json:"stranded"`      // inputs left without a terminal state because the run failed
	Abandoned    int64 `json:"abandoned"`     // workers given up on because their call ignored cancellation (the items a fast worker had claimed with the call are then all parked: see the package doc)
	Resizes      int64 `json:"resizes"`       // pool resizes by the autoscaler
	CircuitOpens int64 `json:"circuit_opens"` // times a circuit breaker of the stage opened

	DeadLetters map[dlq.Reason]int64 `json:"dead_letters"` // dead letters by reason

	// Wait is how long items waited in the stage (its input, or a worker's hand) before a
	// worker started on them; Work is how long the worker spent on them, retries and backoff
	// included. Both are measured for every item of a stage whose calls take more than a few
	// microseconds (Work also for every item of a stage with a timeout or an autoscaler), and
	// for about one item in 64 of faster stages (there a clock read would cost as much as the
	// call), so Count can be less than In (and Wait and Work keep the samples of items parked with
	// a hung call's claimed batch, whose calls Attempts leaves out). Whether a stage is fast is judged
	// from its calls as they go, by each worker for Work and for the stage's input (the last
	// worker to change its mind) for Wait; a stage whose calls are sometimes fast and sometimes
	// slow is sampled in between.
	//
	// The counters of a live run lag by at most one batch of a fast stage (a worker publishes
	// them per batch); those of a slow stage, of an item with an acknowledgement and of an
	// item waiting for a retry are current. A finished run's are exact.
	Wait Latency `json:"wait"`
	Work Latency `json:"work"`
}

// Latency summarises a distribution of durations (quantiles to within about 7%).
type Latency struct {
	Count int64         `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P95   time.Duration `json:"p95_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
}

var reasons = [...]dlq.Reason{dlq.ReasonError, dlq.ReasonPermanent, dlq.ReasonTimeout, dlq.ReasonPanic,
	dlq.ReasonOverflow, dlq.ReasonShutdown, dlq.ReasonCircuitOpen}

func reasonIndex(r dlq.Reason) int {
	for i, x := range reasons {
		if x == r {
			return i
		}
	}
	return 0
}

// counters are the stage's counters updated from any goroutine (rare paths: parking,
// dead letters, abandonment).
type counters struct {
	in, retries, returned, stranded, abandoned, circuitOpens atomic.Int64
	deadLetters                                              [len(reasons)]atomic.Int64
}

// wcounters are a worker's own counters: one writer, so an update is a plain load and store,
// with no contention between workers; Stats adds them up.
type wcounters struct {
	in, out, succeeded, filtered, attempts, retries atomic.Int64
	// Work time of the timed calls and the items they carried (a batch's items), for the
	// autoscaler's service time per item.
	workNs, timed atomic.Int64
	// Source units the worker delivered (last stage) or filtered.
	deliveredUnits, filteredUnits atomic.Int64
}

// wlocal are the counts a worker keeps in plain fields between publications.
type wlocal struct {
	attempts, succeeded, filtered, filteredUnits, deliveredUnits, out int64
}

func inc(c *atomic.Int64, n int64) { c.Store(c.Load() + n) }

func latency(s *hist.Snapshot) Latency {
	return Latency{Count: s.Count(), P50: s.Quantile(0.5), P95: s.Quantile(0.95), P99: s.Quantile(0.99), Max: s.Max()}
}
