package tracing

import (
	"context"
	"encoding/hex"
	"errors"
	"strconv"

	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// MapCarrier is a [propagation.TextMapCarrier] over a map[string]string that
// keeps keys exactly as given: unlike [net/http.Header] (and
// [propagation.HeaderCarrier]) it neither canonicalizes nor case-folds them.
// The W3C propagators use the lower-case keys "traceparent", "tracestate"
// and "baggage"; a key spelled "TraceParent" is a different, unrelated key.
//
// Set on a nil MapCarrier panics, like any write to a nil map.
type MapCarrier map[string]string

var _ propagation.TextMapCarrier = MapCarrier(nil)

// Get returns the value stored under exactly key, or "".
func (c MapCarrier) Get(key string) string { return c[key] }

// Set stores value under exactly key, replacing any previous value.
func (c MapCarrier) Set(key, value string) { c[key] = value }

// Keys returns the keys of the carrier, in no particular order.
func (c MapCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// DefaultPropagator returns the propagator used when none is configured: a
// composite of W3C Trace Context ([propagation.TraceContext]) and W3C Baggage
// ([propagation.Baggage]).
//
// It deliberately does not return otel.GetTextMapPropagator, which is a no-op
// until an application installs one, so that trace context always crosses
// Sluice's own hops (such as dead-letter records and replays).
func DefaultPropagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// Inject writes the trace context and baggage of ctx into headers, adding or
// replacing entries; headers must be non-nil. A nil prop means
// [DefaultPropagator]. Nothing is written for a ctx without a valid span
// context or baggage.
func Inject(ctx context.Context, headers map[string]string, prop propagation.TextMapPropagator) {
	if prop == nil {
		prop = DefaultPropagator()
	}
	prop.Inject(ctx, MapCarrier(headers))
}

// Extract returns a copy of ctx carrying the remote span context and the
// baggage found in headers (a nil map is fine). A nil prop means
// [DefaultPropagator]. Invalid or missing entries leave ctx as it is.
func Extract(ctx context.Context, headers map[string]string, prop propagation.TextMapPropagator) context.Context {
	if prop == nil {
		prop = DefaultPropagator()
	}
	return prop.Extract(ctx, MapCarrier(headers))
}

// traceparentLen is the length of a version 00 traceparent:
// "00-" + 32 + "-" + 16 + "-" + 2.
const traceparentLen = 55

// Traceparent formats sc as a W3C traceparent header value,
// "00-<32 hex trace id>-<16 hex span id>-<2 hex flags>", lower-case. Only the
// flags defined by the specification (sampled, random) are kept. It returns
// "" when sc is not valid.
func Traceparent(sc trace.SpanContext) string {
	if !sc.IsValid() {
		return ""
	}
	var buf [traceparentLen]byte
	tid, sid := sc.TraceID(), sc.SpanID()
	flags := byte(sc.TraceFlags() & (trace.FlagsSampled | trace.FlagsRandom))
	buf[0], buf[1], buf[2] = '0', '0', '-'
	hex.Encode(buf[3:35], tid[:])
	buf[35] = '-'
	hex.Encode(buf[36:52], sid[:])
	buf[52] = '-'
	hex.Encode(buf[53:55], []byte{flags})
	return string(buf[:])
}

// ErrInvalidTraceparent is matched (with [errors.Is]) by every error returned
// by [ParseTraceparent].
var ErrInvalidTraceparent = errors.New("tracing: invalid traceparent")

// traceparentError says what is wrong with a traceparent value.
type traceparentError struct{ reason string }

func (e *traceparentError) Error() string { return ErrInvalidTraceparent.Error() + ": " + e.reason }
func (e *traceparentError) Unwrap() error { return ErrInvalidTraceparent }

func badTraceparent(reason string) error { return &traceparentError{reason: reason} }

// ParseTraceparent parses a W3C traceparent header value into a remote
// [trace.SpanContext] (without trace state, which travels in its own header).
// It never panics; errors wrap [ErrInvalidTraceparent] and say what is wrong.
//
// It accepts what [propagation.TraceContext] extracts: lower-case hex;
// version 00 with exactly four fields and no reserved flag bits set;
// versions 01 to fe with possibly more fields after the flags (forward
// compatibility), version ff never; trace and span ids not all zero. Only
// the sampled and random flags are kept. The one difference: a version 00
// value must be exactly 55 characters, as W3C requires, where the otel
// propagator also accepts a trailing '-'.
func ParseTraceparent(s string) (trace.SpanContext, error) {
	if s == "" {
		return trace.SpanContext{}, badTraceparent("empty")
	}
	if len(s) < traceparentLen {
		return trace.SpanContext{}, badTraceparent("too short: want 55 characters, got " + strconv.Itoa(len(s)))
	}
	var ver [1]byte
	if !decodeHex(ver[:], s[0:2]) {
		return trace.SpanContext{}, badTraceparent("version is not 2 lower-case hex digits")
	}
	if ver[0] == 0xff {
		return trace.SpanContext{}, badTraceparent("version ff is forbidden")
	}
	if ver[0] == 0 && len(s) != traceparentLen {
		return trace.SpanContext{}, badTraceparent("version 00 must be 55 characters, got " + strconv.Itoa(len(s)))
	}
	if len(s) > traceparentLen && s[traceparentLen] != '-' {
		return trace.SpanContext{}, badTraceparent("flags not followed by '-'")
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' {
		return trace.SpanContext{}, badTraceparent("fields not separated by '-' at 2, 35 and 52")
	}
	var scc trace.SpanContextConfig
	if !decodeHex(scc.TraceID[:], s[3:35]) {
		return trace.SpanContext{}, badTraceparent("trace id is not 32 lower-case hex digits")
	}
	if !scc.TraceID.IsValid() {
		return trace.SpanContext{}, badTraceparent("trace id is all zeros")
	}
	if !decodeHex(scc.SpanID[:], s[36:52]) {
		return trace.SpanContext{}, badTraceparent("parent id is not 16 lower-case hex digits")
	}
	if !scc.SpanID.IsValid() {
		return trace.SpanContext{}, badTraceparent("parent id is all zeros")
	}
	var flags [1]byte
	if !decodeHex(flags[:], s[53:55]) {
		return trace.SpanContext{}, badTraceparent("flags are not 2 lower-case hex digits")
	}
	if ver[0] == 0 && flags[0] > byte(trace.FlagsSampled|trace.FlagsRandom) {
		return trace.SpanContext{}, badTraceparent("version 00 has reserved flag bits set")
	}
	scc.TraceFlags = trace.TraceFlags(flags[0]) & (trace.FlagsSampled | trace.FlagsRandom)
	scc.Remote = true
	return trace.NewSpanContext(scc), nil
}

// decodeHex decodes len(dst)*2 lower-case hex digits of src into dst.
func decodeHex(dst []byte, src string) bool {
	if len(src) != 2*len(dst) {
		return false
	}
	for i := range dst {
		hi, ok1 := fromHex(src[2*i])
		lo, ok2 := fromHex(src[2*i+1])
		if !ok1 || !ok2 {
			return false
		}
		dst[i] = hi<<4 | lo
	}
	return true
}

func fromHex(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// withCorrelationBaggage returns ctx with the baggage member
// [BaggageCorrelationID] set to id. Invalid input leaves ctx unchanged.
func withCorrelationBaggage(ctx context.Context, id string) context.Context {
	m, err := baggage.NewMemberRaw(BaggageCorrelationID, id)
	if err != nil {
		return ctx
	}
	b, err := baggage.FromContext(ctx).SetMember(m)
	if err != nil {
		return ctx
	}
	return baggage.ContextWithBaggage(ctx, b)
}
