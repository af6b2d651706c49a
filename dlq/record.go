package dlq

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strings"
	"time"
)

// Version is the major version of the record format written by this
// package. Readers reject records of any other version with a
// [*VersionError].
const Version = 1

// Reason says why an item was dead-lettered.
type Reason string

// The reasons an item can be dead-lettered.
const (
	// ReasonError: the item failed and its retries were exhausted.
	ReasonError Reason = "error"
	// ReasonPermanent: the item failed with an error classified as
	// permanent, so it was not retried.
	ReasonPermanent Reason = "permanent"
	// ReasonTimeout: the item's processing exceeded its deadline.
	ReasonTimeout Reason = "timeout"
	// ReasonPanic: processing the item panicked; Stack holds the stack.
	ReasonPanic Reason = "panic"
	// ReasonOverflow: the item was dropped because a buffer was full.
	ReasonOverflow Reason = "overflow"
	// ReasonShutdown: the item was cut off by a shutdown.
	ReasonShutdown Reason = "shutdown"
	// ReasonCircuitOpen: the item was rejected by an open circuit breaker.
	ReasonCircuitOpen Reason = "circuit_open"
)

// Valid reports whether r is one of the defined reasons.
func (r Reason) Valid() bool {
	switch r {
	case ReasonError, ReasonPermanent, ReasonTimeout, ReasonPanic,
		ReasonOverflow, ReasonShutdown, ReasonCircuitOpen:
		return true
	}
	return false
}

// PayloadEncodingBase64 is the [Record.PayloadEncoding] of a payload
// stored as a base64 (standard alphabet, padded) JSON string.
const PayloadEncodingBase64 = "base64"

// Record is one dead letter, format version 1. See the package
// documentation for the meaning of each field on the wire.
//
// Its string fields, and the keys and values of Headers, are stored as
// UTF-8: a string that is not valid UTF-8 is not refused but comes back
// from a Store (and from [Decode] of what [Encode] wrote) with U+FFFD in
// place of each byte that is not part of a valid UTF-8 sequence.
type Record struct {
	// V is the format version; [Encode] fills in [Version] when it is 0.
	V int `json:"v"`
	// ID identifies the record; see [NewID]. Required.
	ID string `json:"id"`
	// CorrelationID ties the record to the item's identity upstream.
	CorrelationID string `json:"correlation_id"`
	// Pipeline is the name of the pipeline.
	Pipeline string `json:"pipeline"`
	// Stage is the name of the stage that gave up on the item. Required.
	Stage string `json:"stage"`
	// Payload is the item. When PayloadEncoding is "" it is the item's
	// JSON; otherwise it is a JSON string in that encoding (see
	// [EncodePayloadBytes]). Empty means null.
	Payload json.RawMessage `json:"payload"`
	// PayloadEncoding is "" for a JSON payload or "base64".
	PayloadEncoding string `json:"payload_encoding,omitempty"`
	// Reason says why the item was dead-lettered. Required.
	Reason Reason `json:"reason"`
	// Error is the text of the last error.
	Error string `json:"error"`
	// ErrorType is the Go type of the last error, e.g. "*net.OpError".
	ErrorType string `json:"error_type,omitempty"`
	// Stack is the goroutine stack, for ReasonPanic.
	Stack string `json:"stack,omitempty"`
	// Attempts is the number of attempts made.
	Attempts int `json:"attempts"`
	// MaxAttempts is the number of attempts the retry policy allowed.
	MaxAttempts int `json:"max_attempts"`
	// Replays counts how many times the record was replayed already.
	Replays int `json:"replays"`
	// FirstAttemptAt is when the first attempt started.
	FirstAttemptAt time.Time `json:"first_attempt_at"`
	// FailedAt is when the item was given up on.
	FailedAt time.Time `json:"failed_at"`
	// Source describes where the item came from (topic, file, ...).
	Source string `json:"source,omitempty"`
	// TraceID is the trace the item was processed in.
	TraceID string `json:"trace_id,omitempty"`
	// SpanID is the span the item was processed in.
	SpanID string `json:"span_id,omitempty"`
	// Traceparent is the W3C traceparent of the item.
	Traceparent string `json:"traceparent,omitempty"`
	// Headers are free-form metadata. Like every string field, keys and
	// values that are not valid UTF-8 come back with U+FFFD in place of
	// each invalid byte; keys that this makes equal come back as one key,
	// with one of their values.
	Headers map[string]string `json:"headers,omitempty"`
}

// wireRecord is the on-disk shape of a line: a record, or a tombstone when
// Op is set. Times are strings so that their format is ours, not
// encoding/json's.
type wireRecord struct {
	V               *int              `json:"v"`
	Op              *string           `json:"op,omitempty"`
	ID              string            `json:"id"`
	CorrelationID   string            `json:"correlation_id,omitempty"`
	Pipeline        string            `json:"pipeline,omitempty"`
	Stage           string            `json:"stage,omitempty"`
	Reason          Reason            `json:"reason,omitempty"`
	Error           string            `json:"error,omitempty"`
	ErrorType       string            `json:"error_type,omitempty"`
	Attempts        int               `json:"attempts,omitempty"`
	MaxAttempts     int               `json:"max_attempts,omitempty"`
	Replays         int               `json:"replays,omitempty"`
	FirstAttemptAt  string            `json:"first_attempt_at,omitempty"`
	FailedAt        string            `json:"failed_at,omitempty"`
	Source          string            `json:"source,omitempty"`
	TraceID         string            `json:"trace_id,omitempty"`
	SpanID          string            `json:"span_id,omitempty"`
	Traceparent     string            `json:"traceparent,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
	Stack           string            `json:"stack,omitempty"`
	PayloadEncoding string            `json:"payload_encoding,omitempty"`
	Payload         json.RawMessage   `json:"payload,omitempty"`
}

// recordLine is the shape Encode writes. It differs from wireRecord in
// which fields are always present.
type recordLine struct {
	V               int               `json:"v"`
	ID              string            `json:"id"`
	CorrelationID   string            `json:"correlation_id"`
	Pipeline        string            `json:"pipeline"`
	Stage           string            `json:"stage"`
	Reason          Reason            `json:"reason"`
	Error           string            `json:"error"`
	ErrorType       string            `json:"error_type,omitempty"`
	Attempts        int               `json:"attempts"`
	MaxAttempts     int               `json:"max_attempts"`
	Replays         int               `json:"replays"`
	FirstAttemptAt  string            `json:"first_attempt_at,omitempty"`
	FailedAt        string            `json:"failed_at,omitempty"`
	Source          string            `json:"source,omitempty"`
	TraceID         string            `json:"trace_id,omitempty"`
	SpanID          string            `json:"span_id,omitempty"`
	Traceparent     string            `json:"traceparent,omitempty"`
	Headers         map[string]string `json:"headers,omitempty"`
	Stack           string            `json:"stack,omitempty"`
	PayloadEncoding string            `json:"payload_encoding,omitempty"`
	Payload         json.RawMessage   `json:"payload"`
}

// tombstoneLine is the shape of a delete marker.
type tombstoneLine struct {
	V  int    `json:"v"`
	Op string `json:"op"`
	ID string `json:"id"`
}

const opDelete = "delete"

// timeLayout is RFC 3339 with exactly nine fractional digits. It is only
// ever used on UTC times, so the zone is always written as "Z".
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// formatTime formats t in UTC; the zero time is formatted as "" (omitted).
func formatTime(field string, t time.Time) (string, error) {
	if t.IsZero() {
		return "", nil
	}
	u := t.UTC()
	if y := u.Year(); y < 0 || y > 9999 {
		return "", fmt.Errorf("field %q: year %d is outside the range RFC 3339 can represent", field, y)
	}
	return u.Format(timeLayout), nil
}

// parseTime parses an RFC 3339 time and returns it in UTC.
func parseTime(field, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	// RFC 3339 allows a lower-case "t" and "z" (section 5.6); time.Parse does not.
	if len(s) > 10 && s[10] == 't' {
		s = s[:10] + "T" + s[11:]
	}
	if strings.HasSuffix(s, "z") {
		s = s[:len(s)-1] + "Z"
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("field %q: not an RFC 3339 time: %w", field, err)
	}
	t = t.UTC()
	if y := t.Year(); y < 0 || y > 9999 {
		return time.Time{}, fmt.Errorf("field %q: year %d is outside the range RFC 3339 can represent", field, y)
	}
	if t.IsZero() {
		return time.Time{}, nil
	}
	return t, nil
}

// validate checks the fields both Encode and Decode require, except that
// the payload is valid JSON: Decode gets that from parsing the line and
// Encode from marshaling it.
func validate(rec *Record) error {
	if rec.ID == "" {
		return errors.New(`missing field "id"`)
	}
	if rec.Stage == "" {
		return errors.New(`missing field "stage"`)
	}
	if rec.Reason == "" {
		return errors.New(`missing field "reason"`)
	}
	if !rec.Reason.Valid() {
		return fmt.Errorf("field \"reason\": unknown reason %q", string(rec.Reason))
	}
	if rec.PayloadEncoding == PayloadEncodingBase64 {
		s, ok := jsonString(rec.Payload)
		if !ok {
			return errors.New(`field "payload": payload_encoding is "base64" but payload is not a JSON string`)
		}
		if _, err := base64.StdEncoding.Decode(make([]byte, base64.StdEncoding.DecodedLen(len(s))), s); err != nil {
			return fmt.Errorf(`field "payload": invalid base64: %w`, err)
		}
	}
	return nil
}

// jsonString returns the contents of p if it is a JSON string.
func jsonString(p json.RawMessage) ([]byte, bool) {
	p = bytes.TrimSpace(p)
	if len(p) < 2 || p[0] != '"' {
		return nil, false
	}
	// Fast path, always taken for what EncodePayloadBytes makes: no escapes,
	// so the contents are the bytes between the quotes. (It is not taken
	// for invalid JSON such as `"a"b"`, which contains no backslash but
	// does contain a quote.)
	inner := p[1 : len(p)-1]
	if p[len(p)-1] == '"' && bytes.IndexByte(inner, '\\') < 0 && bytes.IndexByte(inner, '"') < 0 && !hasControl(inner) {
		return inner, true
	}
	var s string
	if err := json.Unmarshal(p, &s); err != nil {
		return nil, false
	}
	return []byte(s), true
}

// hasControl reports whether b holds a byte JSON forbids unescaped in a
// string.
func hasControl(b []byte) bool {
	return bytes.ContainsFunc(b, func(r rune) bool { return r < 0x20 })
}

// normalizePayload returns p compacted, with null and empty mapped to nil.
func normalizePayload(p json.RawMessage) (json.RawMessage, error) {
	if len(p) == 0 {
		return nil, nil
	}
	if t := bytes.TrimSpace(p); len(t) > 0 && t[0] == '"' {
		// A string (the caller parsed p, so it is valid) is compact.
		return bytes.Clone(t), nil
	}
	var buf bytes.Buffer
	buf.Grow(len(p))
	if err := json.Compact(&buf, p); err != nil {
		return nil, err
	}
	if bytes.Equal(buf.Bytes(), []byte("null")) {
		return nil, nil
	}
	return buf.Bytes(), nil
}

// Encode returns rec as one JSON line, without a trailing newline.
//
// It fills in V when it is 0 and rejects records that could not be read
// back: a missing ID or Stage, an invalid Reason, a Payload that is not
// valid JSON, a base64 payload that is not a base64 JSON string, a V
// other than [Version], or a time outside years 0-9999. Times are written
// in UTC with nine fractional digits; zero times are omitted; an empty
// Payload is written as null. Strings that are not valid UTF-8 are not
// rejected but normalized: in every string field and in header keys and
// values, each byte that is not part of a valid UTF-8 sequence is written
// as U+FFFD (the record reads back with that change; header keys it makes
// equal are written twice, and read back as one). A JSON payload is written
// as given (compacted), byte for byte, strings in it that are not valid
// UTF-8 included, so that a replay decodes exactly the item that failed
// (such a line is not strictly JSON; EncodePayloadBytes gives a payload that
// always is).
func Encode(rec Record) ([]byte, error) {
	if rec.V == 0 {
		rec.V = Version
	}
	if rec.V != Version {
		return nil, fmt.Errorf("dlq: encode record: field \"v\": version %d is not supported (this writer knows version %d)", rec.V, Version)
	}
	if err := validate(&rec); err != nil {
		return nil, fmt.Errorf("dlq: encode record: %w", err)
	}
	first, err := formatTime("first_attempt_at", rec.FirstAttemptAt)
	if err != nil {
		return nil, fmt.Errorf("dlq: encode record: %w", err)
	}
	failed, err := formatTime("failed_at", rec.FailedAt)
	if err != nil {
		return nil, fmt.Errorf("dlq: encode record: %w", err)
	}
	payload := rec.Payload
	if len(payload) == 0 {
		payload = nil // marshals as null
	}
	line := recordLine{
		V:               rec.V,
		ID:              rec.ID,
		CorrelationID:   rec.CorrelationID,
		Pipeline:        rec.Pipeline,
		Stage:           rec.Stage,
		Reason:          rec.Reason,
		Error:           rec.Error,
		ErrorType:       rec.ErrorType,
		Attempts:        rec.Attempts,
		MaxAttempts:     rec.MaxAttempts,
		Replays:         rec.Replays,
		FirstAttemptAt:  first,
		FailedAt:        failed,
		Source:          rec.Source,
		TraceID:         rec.TraceID,
		SpanID:          rec.SpanID,
		Traceparent:     rec.Traceparent,
		Headers:         rec.Headers,
		Stack:           rec.Stack,
		PayloadEncoding: rec.PayloadEncoding,
		Payload:         payload,
	}
	b, err := marshalLine(&line)
	if err != nil {
		// The payload is the only part that can fail to marshal.
		return nil, fmt.Errorf("dlq: encode record: field \"payload\": not valid JSON: %w", err)
	}
	return b, nil
}

// encodeLine is Encode plus the check every Store in this package makes
// before it keeps a record: the line may be at most limit bytes (a File's
// or a Memory's maxLine, which is [MaxLineSize] outside tests). File and
// Memory both write through it, so that they refuse the same records.
func encodeLine(rec Record, limit int) ([]byte, error) {
	line, err := Encode(rec)
	if err != nil {
		return nil, err
	}
	if len(line) > limit {
		return nil, fmt.Errorf("dlq: encode record: record %s encodes to %d bytes, over the %d byte line limit", rec.ID, len(line), limit)
	}
	return line, nil
}

// marshalLine marshals v compactly, without HTML escaping (so payloads are
// kept byte for byte) and without a trailing newline.
func marshalLine(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// encodeTombstone returns the delete marker line for id, without newline.
func encodeTombstone(id string) ([]byte, error) {
	return marshalLine(&tombstoneLine{V: Version, Op: opDelete, ID: id})
}

// Decode parses one line written by [Encode]. It is strict: the line must
// be a single JSON object with "v" equal to [Version] (other versions give
// a [*VersionError]), a non-empty "id" and "stage", a valid "reason", and
// well-formed times and payload. Unknown fields are ignored, so that
// compatible additions to the format do not need a new version. A delete
// tombstone is not a record and is rejected.
//
// The result is normalized: times are in UTC, the payload is compacted (a
// null payload becomes nil), empty headers become nil, and in string
// fields and header keys and values each byte of invalid UTF-8 (which
// Encode never writes, but another writer may) becomes U+FFFD. Of
// duplicate header keys, the last is kept.
func Decode(line []byte) (Record, error) {
	rec, op, err := parseLine(line)
	if err != nil {
		var ve *VersionError
		if errors.As(err, &ve) {
			return Record{}, err
		}
		return Record{}, fmt.Errorf("dlq: decode record: %w", err)
	}
	if op != "" {
		return Record{}, fmt.Errorf("dlq: decode record: line is a %q tombstone, not a record", op)
	}
	return rec, nil
}

// parseLine parses a record or a tombstone. For a tombstone it returns
// op == "delete" and a Record holding only V and ID. Errors are not
// prefixed, except for *VersionError.
func parseLine(line []byte) (Record, string, error) {
	var w wireRecord
	if err := json.Unmarshal(line, &w); err != nil {
		var se *json.SyntaxError
		if errors.As(err, &se) {
			return Record{}, "", fmt.Errorf("invalid JSON: %w", err)
		}
		if !bytes.HasPrefix(bytes.TrimLeft(line, " \t\r\n"), []byte("{")) {
			return Record{}, "", errors.New("not a JSON object")
		}
		// A type error. Give a wrong version precedence: another version
		// may well have changed the types of fields.
		var probe struct {
			V *int `json:"v"`
		}
		if json.Unmarshal(line, &probe) == nil && probe.V != nil && *probe.V != Version {
			return Record{}, "", &VersionError{Got: *probe.V}
		}
		return Record{}, "", fmt.Errorf("invalid field: %w", err)
	}
	if w.V == nil {
		return Record{}, "", errors.New(`missing field "v"`)
	}
	if *w.V != Version {
		return Record{}, "", &VersionError{Got: *w.V}
	}
	if w.Op != nil {
		if *w.Op != opDelete {
			return Record{}, "", fmt.Errorf("unknown op %q", *w.Op)
		}
		if w.ID == "" {
			return Record{}, "", errors.New(`tombstone: missing field "id"`)
		}
		return Record{V: Version, ID: w.ID}, opDelete, nil
	}
	rec := Record{
		V:               Version,
		ID:              w.ID,
		CorrelationID:   w.CorrelationID,
		Pipeline:        w.Pipeline,
		Stage:           w.Stage,
		PayloadEncoding: w.PayloadEncoding,
		Reason:          w.Reason,
		Error:           w.Error,
		ErrorType:       w.ErrorType,
		Stack:           w.Stack,
		Attempts:        w.Attempts,
		MaxAttempts:     w.MaxAttempts,
		Replays:         w.Replays,
		Source:          w.Source,
		TraceID:         w.TraceID,
		SpanID:          w.SpanID,
		Traceparent:     w.Traceparent,
	}
	if len(w.Headers) > 0 {
		rec.Headers = w.Headers
	}
	var err error
	if rec.Payload, err = normalizePayload(w.Payload); err != nil {
		return Record{}, "", fmt.Errorf(`field "payload": %w`, err)
	}
	if rec.FirstAttemptAt, err = parseTime("first_attempt_at", w.FirstAttemptAt); err != nil {
		return Record{}, "", err
	}
	if rec.FailedAt, err = parseTime("failed_at", w.FailedAt); err != nil {
		return Record{}, "", err
	}
	if err := validate(&rec); err != nil {
		return Record{}, "", err
	}
	return rec, "", nil
}

// EncodePayloadBytes returns b as a base64 JSON string, and the
// PayloadEncoding to store with it. Use it for payloads that are not JSON.
func EncodePayloadBytes(b []byte) (json.RawMessage, string) {
	out := make([]byte, 0, base64.StdEncoding.EncodedLen(len(b))+2)
	out = append(out, '"')
	out = base64.StdEncoding.AppendEncode(out, b)
	out = append(out, '"')
	return out, PayloadEncodingBase64
}

// PayloadBytes returns the raw payload: the decoded bytes for a base64
// payload, or the JSON bytes (nil for an empty payload) otherwise. An
// unknown PayloadEncoding is an error.
func (r Record) PayloadBytes() ([]byte, error) {
	switch r.PayloadEncoding {
	case "":
		return bytes.Clone([]byte(r.Payload)), nil
	case PayloadEncodingBase64:
		s, ok := jsonString(r.Payload)
		if !ok {
			return nil, fmt.Errorf("dlq: record %s: base64 payload is not a JSON string", r.ID)
		}
		b := make([]byte, base64.StdEncoding.DecodedLen(len(s)))
		n, err := base64.StdEncoding.Decode(b, s)
		if err != nil {
			return nil, fmt.Errorf("dlq: record %s: invalid base64 payload: %w", r.ID, err)
		}
		return b[:n], nil
	default:
		return nil, fmt.Errorf("dlq: record %s: unknown payload encoding %q", r.ID, r.PayloadEncoding)
	}
}

// clone returns a deep copy of r.
func (r Record) clone() Record {
	r.Payload = bytes.Clone(r.Payload)
	if r.Headers != nil {
		r.Headers = maps.Clone(r.Headers)
	}
	return r
}
