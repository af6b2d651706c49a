package dlq_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/dlq/dlqtest"
)

func TestEncodeDecodeRoundTrip(t *testing.T) {
	full := dlqtest.FullRecord()
	b, err := dlq.Encode(full)
	require.NoError(t, err)
	require.NotContains(t, string(b), "\n", "one line, no trailing newline")

	got, err := dlq.Decode(b)
	require.NoError(t, err)
	assert.Equal(t, dlqtest.Normalized(full), got)

	again, err := dlq.Encode(got)
	require.NoError(t, err)
	assert.Equal(t, string(b), string(again), "encoding is stable")
}

func TestEncodeTimesUTCNanoseconds(t *testing.T) {
	zone := time.FixedZone("CET", 3600)
	r := rec(0)
	r.FailedAt = time.Date(2026, 11, 23, 13, 0, 0, 123456789, zone)
	r.FirstAttemptAt = time.Date(2026, 11, 23, 13, 0, 0, 0, zone) // whole second
	b, err := dlq.Encode(r)
	require.NoError(t, err)

	var raw map[string]any
	require.NoError(t, json.Unmarshal(b, &raw))
	assert.Equal(t, "2026-11-23T12:00:00.123456789Z", raw["failed_at"])
	assert.Equal(t, "2026-11-23T12:00:00.000000000Z", raw["first_attempt_at"])
	assert.InDelta(t, 1, raw["v"], 0, "V filled in")

	got, err := dlq.Decode(b)
	require.NoError(t, err)
	assert.True(t, got.FailedAt.Equal(r.FailedAt))
	assert.Equal(t, time.UTC, got.FailedAt.Location())
}

func TestEncodeZeroTimesAndEmptyPayload(t *testing.T) {
	r := dlq.Record{ID: "a", Stage: "s", Reason: dlq.ReasonShutdown}
	b, err := dlq.Encode(r)
	require.NoError(t, err)
	s := string(b)
	assert.Contains(t, s, `"payload":null`)
	assert.NotContains(t, s, "failed_at")
	got, err := dlq.Decode(b)
	require.NoError(t, err)
	r.V = 1
	assert.Equal(t, r, got)
}

func TestEncodeKeepsPayloadBytes(t *testing.T) {
	r := rec(0)
	r.Payload = json.RawMessage(` { "html" : "<a href=\"x\">&</a>", "n": 1e3 } `)
	b, err := dlq.Encode(r)
	require.NoError(t, err)
	assert.Contains(t, string(b), `"payload":{"html":"<a href=\"x\">&</a>","n":1e3}`)
}

func TestEncodeValidation(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  func(*dlq.Record)
		field string
	}{
		{"missing id", func(r *dlq.Record) { r.ID = "" }, `"id"`},
		{"missing stage", func(r *dlq.Record) { r.Stage = "" }, `"stage"`},
		{"missing reason", func(r *dlq.Record) { r.Reason = "" }, `"reason"`},
		{"unknown reason", func(r *dlq.Record) { r.Reason = "bored" }, `"reason"`},
		{"invalid payload", func(r *dlq.Record) { r.Payload = json.RawMessage(`{"a":`) }, `"payload"`},
		{"two payload values", func(r *dlq.Record) { r.Payload = json.RawMessage(`1 2`) }, `"payload"`},
		{"base64 not a string", func(r *dlq.Record) { r.PayloadEncoding = "base64" }, `"payload"`},
		{"base64 invalid", func(r *dlq.Record) {
			r.PayloadEncoding, r.Payload = "base64", json.RawMessage(`"!!"`)
		}, `"payload"`},
		{"version 2", func(r *dlq.Record) { r.V = 2 }, `"v"`},
		{"year 10000", func(r *dlq.Record) { r.FailedAt = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) }, `"failed_at"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rec(1)
			tc.edit(&r)
			_, err := dlq.Encode(r)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.field)
			assert.True(t, strings.HasPrefix(err.Error(), "dlq: "), err.Error())
		})
	}
}

func TestDecodeErrors(t *testing.T) {
	valid := func(extra string) string {
		return `{"v":1,"id":"x","stage":"s","reason":"error"` + extra + `}`
	}
	_, err := dlq.Decode([]byte(valid("")))
	require.NoError(t, err)

	for _, tc := range []struct{ name, line, want string }{
		{"empty", ``, "invalid JSON"},
		{"garbage", `not json`, "invalid JSON"},
		{"truncated", valid("")[:20], "invalid JSON"},
		{"array", `[1,2]`, "not a JSON object"},
		{"trailing data", valid("") + `{}`, "invalid JSON"},
		{"missing v", `{"id":"x","stage":"s","reason":"error"}`, `missing field "v"`},
		{"null v", `{"v":null,"id":"x","stage":"s","reason":"error"}`, `missing field "v"`},
		{"string v", `{"v":"1","id":"x","stage":"s","reason":"error"}`, "invalid field"},
		{"huge v", `{"v":1e400,"id":"x","stage":"s","reason":"error"}`, "invalid field"},
		{"missing id", `{"v":1,"stage":"s","reason":"error"}`, `missing field "id"`},
		{"missing stage", `{"v":1,"id":"x","reason":"error"}`, `missing field "stage"`},
		{"missing reason", `{"v":1,"id":"x","stage":"s"}`, `missing field "reason"`},
		{"bad reason", valid(`,"reason":"bored"`), `unknown reason "bored"`},
		{"bad time", valid(`,"failed_at":"yesterday"`), `"failed_at"`},
		{"bad attempts", valid(`,"attempts":"three"`), "invalid field"},
		{"huge attempts", valid(`,"attempts":99999999999999999999999`), "invalid field"},
		{"bad base64", valid(`,"payload_encoding":"base64","payload":"%%%"`), "base64"},
		{"tombstone", `{"v":1,"op":"delete","id":"x"}`, "tombstone"},
		{"unknown op", `{"v":1,"op":"upsert","id":"x"}`, `unknown op "upsert"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := dlq.Decode([]byte(tc.line))
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.want)
			assert.True(t, strings.HasPrefix(err.Error(), "dlq: "), err.Error())
		})
	}
}

func TestDecodeVersionError(t *testing.T) {
	for _, line := range []string{
		`{"v":2,"id":"x","stage":"s","reason":"error"}`,
		// A newer version may change field types; the version wins.
		`{"v":2,"id":{"new":"shape"},"attempts":"many"}`,
	} {
		_, err := dlq.Decode([]byte(line))
		var ve *dlq.VersionError
		require.ErrorAs(t, err, &ve, line)
		assert.Equal(t, 2, ve.Got)
		assert.Equal(t, "dlq: record format version 2 is not supported (this reader knows version 1)", err.Error())
	}
}

func TestDecodeNormalizes(t *testing.T) {
	got, err := dlq.Decode([]byte(`{"v":1,"id":"x","stage":"s","reason":"timeout",` +
		`"failed_at":"2026-11-23T13:00:00.5+01:00","headers":{},"payload":[ 1, 2 ],"future_field":true}`))
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 11, 23, 12, 0, 0, 500000000, time.UTC), got.FailedAt)
	assert.Nil(t, got.Headers)
	assert.Equal(t, json.RawMessage(`[1,2]`), got.Payload)

	got, err = dlq.Decode([]byte(`{"v":1,"id":"x","stage":"s","reason":"timeout","payload":null}`))
	require.NoError(t, err)
	assert.Nil(t, got.Payload)
}

func TestPayloadBytes(t *testing.T) {
	raw := []byte{0, 1, 2, 0xfe, 0xff}
	p, enc := dlq.EncodePayloadBytes(raw)
	assert.Equal(t, "base64", enc)
	assert.Equal(t, `"AAEC/v8="`, string(p))
	r := rec(0)
	r.Payload, r.PayloadEncoding = p, enc
	b, err := r.PayloadBytes()
	require.NoError(t, err)
	assert.Equal(t, raw, b)

	r = rec(7)
	b, err = r.PayloadBytes()
	require.NoError(t, err)
	assert.JSONEq(t, `{"i":7}`, string(b))

	r.PayloadEncoding = "rot13"
	_, err = r.PayloadBytes()
	require.ErrorContains(t, err, `unknown payload encoding "rot13"`)

	r.PayloadEncoding, r.Payload = "base64", json.RawMessage(`"*"`)
	_, err = r.PayloadBytes()
	require.Error(t, err)
}

func TestReasonValid(t *testing.T) {
	for _, r := range []dlq.Reason{dlq.ReasonError, dlq.ReasonPermanent, dlq.ReasonTimeout,
		dlq.ReasonPanic, dlq.ReasonOverflow, dlq.ReasonShutdown, dlq.ReasonCircuitOpen} {
		assert.True(t, r.Valid(), r)
	}
	assert.False(t, dlq.Reason("").Valid())
	assert.False(t, dlq.Reason("Error").Valid())
}

func TestNewID(t *testing.T) {
	const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
	before := time.Now().UnixMilli()
	id := dlq.NewID()
	after := time.Now().UnixMilli()
	require.Len(t, id, 26)
	for _, c := range id {
		require.True(t, strings.ContainsRune(crockford, c), "bad digit %q in %s", c, id)
	}
	// The first 10 digits are the millisecond timestamp.
	var ms int64
	for _, c := range id[:10] {
		ms = ms<<5 | int64(strings.IndexRune(crockford, c))
	}
	assert.GreaterOrEqual(t, ms, before)
	assert.LessOrEqual(t, ms, after)

	// Unique under concurrency.
	const goroutines, each = 8, 2000
	var (
		mu   sync.Mutex
		seen = make(map[string]bool, goroutines*each)
		wg   sync.WaitGroup
	)
	for range goroutines {
		wg.Go(func() {
			local := make([]string, each)
			for i := range local {
				local[i] = dlq.NewID()
			}
			mu.Lock()
			defer mu.Unlock()
			for _, id := range local {
				seen[id] = true
			}
		})
	}
	wg.Wait()
	assert.Len(t, seen, goroutines*each)

	// Sortable by time across milliseconds.
	a := dlq.NewID()
	aMS := time.Now().UnixMilli()
	for time.Now().UnixMilli() <= aMS {
		// spin until the clock moves on; no sleeping needed
	}
	b := dlq.NewID()
	assert.Less(t, a, b)
}

func TestFilter(t *testing.T) {
	base := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := dlq.Record{ID: "x", Pipeline: "orders", Stage: "enrich", Reason: dlq.ReasonTimeout,
		Error: "Context Deadline Exceeded", FailedAt: base}
	for _, tc := range []struct {
		f    dlq.Filter
		want bool
	}{
		{dlq.Filter{}, true},
		{dlq.Filter{Stage: "enrich"}, true},
		{dlq.Filter{Stage: "parse"}, false},
		{dlq.Filter{Reason: dlq.ReasonTimeout}, true},
		{dlq.Filter{Reason: dlq.ReasonError}, false},
		{dlq.Filter{Pipeline: "orders"}, true},
		{dlq.Filter{Pipeline: "billing"}, false},
		{dlq.Filter{Match: "deadline exceeded"}, true},
		{dlq.Filter{Match: "DEADLINE"}, true},
		{dlq.Filter{Match: "refused"}, false},
		{dlq.Filter{Since: base}, true},
		{dlq.Filter{Since: base.Add(time.Nanosecond)}, false},
		{dlq.Filter{Until: base}, false},
		{dlq.Filter{Until: base.Add(time.Nanosecond)}, true},
		{dlq.Filter{Since: base.Add(-time.Hour), Until: base.Add(time.Hour), Stage: "enrich", Match: "context"}, true},
		{dlq.Filter{Since: base.Add(-time.Hour), Until: base.Add(time.Hour), Stage: "parse"}, false},
	} {
		assert.Equal(t, tc.want, tc.f.Matches(r), "%+v", tc.f)
	}
	assert.Equal(t, []dlq.Record{r}, dlq.Filter{Stage: "enrich"}.Select([]dlq.Record{r, {Stage: "parse"}}))
}

func TestErrorTypes(t *testing.T) {
	cause := &dlq.VersionError{Got: 3}
	ce := &dlq.CorruptError{Path: "/x/y.jsonl", Line: 17, Offset: 1234, Err: cause}
	assert.Equal(t, "dlq: /x/y.jsonl line 17: corrupt record: record format version 3 is not supported (this reader knows version 1)", ce.Error())
	assert.ErrorIs(t, ce, dlq.ErrCorrupt)
	var ve *dlq.VersionError
	assert.ErrorAs(t, ce, &ve)
	assert.False(t, errors.Is(ce, dlq.ErrClosed))
}

// TestInvalidUTF8BecomesReplacementChar pins the documented normalization
// of strings that are not valid UTF-8: they are not refused, and come back
// from Encode/Decode, a Memory and a File with U+FFFD in place of each
// invalid byte (a NUL is valid UTF-8 and is kept). A JSON payload is not
// normalized: it comes back byte for byte.
func TestInvalidUTF8BecomesReplacementChar(t *testing.T) {
	ctx := context.Background()
	r := rec(1)
	r.Headers = map[string]string{"h": "\x00\xff\xfe", "k\xff": "v"}
	r.Error = "bad \xc3 byte"
	r.Payload = json.RawMessage("{\"s\":\"a\xffb\"}") // kept byte for byte: a replay decodes what failed
	want := r
	want.V = dlq.Version
	want.Headers = map[string]string{"h": "\x00\uFFFD\uFFFD", "k\uFFFD": "v"}
	want.Error = "bad \uFFFD byte"

	b, err := dlq.Encode(r)
	require.NoError(t, err, "invalid UTF-8 is not refused")
	got, err := dlq.Decode(b)
	require.NoError(t, err)
	assert.Equal(t, want, got, "Encode/Decode")

	m := dlq.NewMemory()
	require.NoError(t, m.Write(ctx, r))
	recs, err := m.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, []dlq.Record{want}, recs, "Memory")

	f, path := openTemp(t)
	require.NoError(t, f.Write(ctx, r))
	recs, err = f.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, []dlq.Record{want}, recs, "File")
	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, []dlq.Record{want}, res.Records, "ReadFile")

	assert.Equal(t, "\x00\xff\xfe", r.Headers["h"], "the caller's record is not changed")
}

// TestFilterMatchFoldsCase checks that Match compares under Unicode case
// folding, as strings.EqualFold does, not by lowering both sides (which
// turns "Σ" into "σ" and misses the final sigma "ς").
func TestFilterMatchFoldsCase(t *testing.T) {
	for _, tc := range []struct {
		match, err string
		want       bool
	}{
		{"οδος", "ΟΔΟΣ not found", true}, // final sigma against capital sigma
		{"ΟΔΟΣ", "οδος not found", true},
		{"οδοσ", "ΟΔΟς not found", true},
		{"NOT FOUND", "ΟΔΟΣ not found", true}, // ASCII
		{"found", "ΟΔΟΣ NOT FOUND", true},
		{"\u212a", "k", true}, // Kelvin sign
		{"", "ΟΔΟΣ not found", true},
		{"", "", true},
		{"οδος", "ΟΔΟ not found", false},
		{"refused", "ΟΔΟΣ not found", false},
		{"x", "", false},
	} {
		r := dlq.Record{ID: "x", Stage: "s", Reason: dlq.ReasonError, Error: tc.err}
		assert.Equal(t, tc.want, dlq.Filter{Match: tc.match}.Matches(r), "Match %q, Error %q", tc.match, tc.err)
	}
}

// A record whose ID has bytes that are not UTF-8 is kept under its ID as written (U+FFFD for each
// such byte): Delete with the ID as given removes it from a Memory as from a File, whose
// tombstone names the ID the same way (Memory's Delete looked the raw bytes up and missed it).
func TestDeleteFindsAnIDWithInvalidUTF8(t *testing.T) {
	ctx := context.Background()
	r := rec(1)
	r.ID = "01ID\xffX"
	m := dlq.NewMemory()
	f, _ := openTemp(t)
	for name, s := range map[string]dlq.Store{"Memory": m, "File": f} {
		require.NoError(t, s.Write(ctx, r), name)
		require.NoError(t, s.Delete(ctx, r.ID), name)
		recs, err := s.Records(ctx)
		require.NoError(t, err, name)
		assert.Empty(t, recs, name)
	}
}

// TestDecodeAcceptsLowerCaseRFC3339 checks that a time with a lower-case
// "t" and "z", valid RFC 3339 (section 5.6) from another writer, is read:
// one such line made the whole file unreadable.
func TestDecodeAcceptsLowerCaseRFC3339(t *testing.T) {
	line := `{"v":1,"id":"a","stage":"s","reason":"error","failed_at":"2026-01-01t12:00:00.5z","first_attempt_at":"2026-01-01t13:00:00+01:00"}`
	r, err := dlq.Decode([]byte(line))
	require.NoError(t, err)
	assert.Equal(t, time.Date(2026, 1, 1, 12, 0, 0, 5e8, time.UTC), r.FailedAt)
	assert.Equal(t, time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC), r.FirstAttemptAt)
	_, err = dlq.Decode([]byte(`{"v":1,"id":"a","stage":"s","reason":"error","failed_at":"2026-01-01x12:00:00z"}`))
	assert.ErrorContains(t, err, `field "failed_at": not an RFC 3339 time`)
}
