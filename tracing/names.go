package tracing

import (
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
)

// Instrumentation scope of the tracer and meter.
const (
	// InstrumentationName is the instrumentation scope name of Sluice's
	// tracer and meter.
	InstrumentationName = "github.com/sluicehq/sluice"
	// InstrumentationVersion is the instrumentation scope version of
	// Sluice's tracer and meter.
	InstrumentationVersion = "0.1.0"
	// SchemaURL is the OpenTelemetry semantic conventions schema the
	// standard attributes follow.
	SchemaURL = semconv.SchemaURL
)

// Attribute keys on spans, span events and metrics. See the package
// documentation for where each appears.
const (
	// StageKey is the stage name: "sluice.stage".
	StageKey attribute.Key = "sluice.stage"
	// PipelineKey is the pipeline name ([Config.Pipeline]): "sluice.pipeline".
	PipelineKey attribute.Key = "sluice.pipeline"
	// OutcomeKey is how an item ended in a stage: "sluice.outcome", one of
	// the Outcome constants.
	OutcomeKey attribute.Key = "sluice.outcome"
	// QueueWaitKey is the time, in seconds (float), an item waited in the
	// stage's input queue before a worker took it: "sluice.queue.wait".
	QueueWaitKey attribute.Key = "sluice.queue.wait"
	// AttemptKey is the 1-based number of the attempt that failed, on a
	// retry event: "sluice.attempt".
	AttemptKey attribute.Key = "sluice.attempt"
	// AttemptsKey is the number of attempts made for a dead-lettered item:
	// "sluice.attempts".
	AttemptsKey attribute.Key = "sluice.attempts"
	// RetryDelayKey is the backoff, in seconds (float), before the next
	// attempt, on a retry event: "sluice.retry.delay".
	RetryDelayKey attribute.Key = "sluice.retry.delay"
	// DLQReasonKey is the dead-letter reason: "sluice.dlq.reason".
	DLQReasonKey attribute.Key = "sluice.dlq.reason"
	// WorkerStateKey is "busy" or "idle" on the worker count metric:
	// "sluice.worker.state".
	WorkerStateKey attribute.Key = "sluice.worker.state"

	// CorrelationIDKey carries the item's correlation ID:
	// "messaging.message.conversation_id" (OpenTelemetry messaging
	// conventions).
	CorrelationIDKey = semconv.MessagingMessageConversationIDKey
	// OperationTypeKey is "messaging.operation.type", always "process".
	OperationTypeKey = semconv.MessagingOperationTypeKey
	// OperationNameKey is "messaging.operation.name", always "process".
	OperationNameKey = semconv.MessagingOperationNameKey
	// ErrorTypeKey is the low-cardinality class of an error: "error.type".
	ErrorTypeKey = semconv.ErrorTypeKey
	// ExceptionMessageKey is an error's message: "exception.message".
	ExceptionMessageKey = semconv.ExceptionMessageKey
)

// BaggageCorrelationID is the baggage member that carries the correlation ID
// when [Config.Baggage] is on.
const BaggageCorrelationID = "sluice.correlation_id"

// Span event names.
const (
	// EventRetry is added for an attempt that failed and will be retried.
	EventRetry = "retry"
	// EventDeadLetter is added when an item is dead-lettered.
	EventDeadLetter = "dead_letter"
)

// OperationProcess is the value of [OperationTypeKey] and [OperationNameKey],
// and the first word of every stage span name ("process <stage>").
const OperationProcess = "process"

// Outcomes: values of [OutcomeKey], and the outcome argument of
// [StageTelemetry.RecordWork].
const (
	OutcomeSucceeded    = "succeeded"     // the stage produced its output
	OutcomeFiltered     = "filtered"      // the stage dropped the item on purpose
	OutcomeDeadLettered = "dead_lettered" // the item failed and went to the DLQ
	OutcomeReturned     = "returned"      // the item was handed back unprocessed (e.g. on drain)
	OutcomeStranded     = "stranded"      // the item was neither processed nor dead-lettered (e.g. abort)
)

// Worker states: values of [WorkerStateKey].
const (
	WorkerBusy = "busy"
	WorkerIdle = "idle"
)

// Metric instrument names. Units and attributes are listed in the package
// documentation.
const (
	MetricItemsIn       = "sluice.stage.items.in"
	MetricItemsOut      = "sluice.stage.items.out"
	MetricItems         = "sluice.stage.items"
	MetricAttempts      = "sluice.stage.attempts"
	MetricRetries       = "sluice.stage.retries"
	MetricDLQRecords    = "sluice.dlq.records"
	MetricQueueUsage    = "sluice.stage.queue.usage"
	MetricQueueLimit    = "sluice.stage.queue.limit"
	MetricWorkerCount   = "sluice.stage.worker.count"
	MetricWorkerLimit   = "sluice.stage.worker.limit"
	MetricResizes       = "sluice.stage.worker.resizes"
	MetricCircuitOpens  = "sluice.stage.circuit.opens"
	MetricQueueWaitTime = "sluice.stage.queue.wait_time"
	MetricItemDuration  = "sluice.stage.item.duration"
)

// knownOutcomes lists the known outcomes; the index is used for precomputed
// attribute sets (see outcomeIndex).
func knownOutcomes() [5]string {
	return [5]string{OutcomeSucceeded, OutcomeFiltered, OutcomeDeadLettered, OutcomeReturned, OutcomeStranded}
}

func outcomeIndex(outcome string) int {
	switch outcome {
	case OutcomeSucceeded:
		return 0
	case OutcomeFiltered:
		return 1
	case OutcomeDeadLettered:
		return 2
	case OutcomeReturned:
		return 3
	case OutcomeStranded:
		return 4
	}
	return -1
}

// knownErrTypes lists the error types with precomputed histogram attribute
// sets (see errTypeIndex); "" means no error (no error.type attribute).
func knownErrTypes() [7]string {
	return [7]string{"", "error", "permanent", "timeout", "panic", "shutdown", "canceled"}
}

func errTypeIndex(errType string) int {
	switch errType {
	case "":
		return 0
	case "error":
		return 1
	case "permanent":
		return 2
	case "timeout":
		return 3
	case "panic":
		return 4
	case "shutdown":
		return 5
	case "canceled":
		return 6
	}
	return -1
}

// knownReasons lists the dead-letter reasons with precomputed attributes
// (see reasonIndex).
func knownReasons() [7]string {
	return [7]string{"error", "permanent", "timeout", "panic", "overflow", "shutdown", "circuit_open"}
}

func reasonIndex(reason string) int {
	switch reason {
	case "error":
		return 0
	case "permanent":
		return 1
	case "timeout":
		return 2
	case "panic":
		return 3
	case "overflow":
		return 4
	case "shutdown":
		return 5
	case "circuit_open":
		return 6
	}
	return -1
}
