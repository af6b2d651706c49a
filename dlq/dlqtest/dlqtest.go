// Package dlqtest is a conformance suite for implementations of
// [dlq.Store]. Run it from a test:
//
//	func TestMyStore(t *testing.T) {
//		dlqtest.Run(t, func(t *testing.T) (dlq.Store, func() dlq.Store) {
//			s := openMyStore(t)
//			return s, func() dlq.Store { return reopenMyStore(t) }
//		})
//	}
package dlqtest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
)

// NewStoreFunc returns a new, empty Store for one subtest, and a function
// that returns a fresh Store over the same underlying storage. The suite
// calls reopen only after it closed the first Store; reopen closes nothing
// itself. The suite closes the Stores it gets.
type NewStoreFunc func(t *testing.T) (store dlq.Store, reopen func() dlq.Store)

// Run runs the conformance suite against the Stores newStore makes, each
// check in its own subtest:
//
//   - RoundTrip: every field, including headers, a base64 payload and
//     nanosecond times (returned in UTC), comes back as written.
//   - DurableOnReturn: records written before Close are there after reopen.
//   - Ordering: records come back in write order, not ID order.
//   - ConcurrentWriters: 8 goroutines × 200 records, each returned exactly
//     once and in each writer's order.
//   - CloseSemantics: Write and Delete after Close fail with dlq.ErrClosed;
//     a second Close returns nil.
//   - Delete: deleted records are gone, also after reopen; unknown IDs are
//     ignored; deleting is idempotent; a deleted ID can be written again.
//   - ReplaceSameID: writing a live ID replaces the record in place.
//   - InvalidRecordRejected: records Encode rejects are not stored.
//   - ContextDone: Write with a done context returns its error and stores
//     nothing.
//   - RecordsAreCopies: mutating written or returned records does not
//     change the store.
func Run(t *testing.T, newStore func(t *testing.T) (store dlq.Store, reopen func() dlq.Store)) {
	t.Helper()
	tests := []struct {
		name string
		fn   func(*testing.T, NewStoreFunc)
	}{
		{"RoundTrip", testRoundTrip},
		{"DurableOnReturn", testDurable},
		{"Ordering", testOrdering},
		{"ConcurrentWriters", testConcurrent},
		{"CloseSemantics", testClose},
		{"Delete", testDelete},
		{"ReplaceSameID", testReplace},
		{"InvalidRecordRejected", testInvalid},
		{"ContextDone", testContextDone},
		{"RecordsAreCopies", testCopies},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.fn(t, newStore) })
	}
}

// open calls newStore and registers Close of the store.
func open(t *testing.T, newStore NewStoreFunc) (dlq.Store, func() dlq.Store) {
	t.Helper()
	s, reopen := newStore(t)
	require.NotNil(t, s)
	t.Cleanup(func() { _ = s.Close() })
	return s, func() dlq.Store {
		t.Helper()
		s2 := reopen()
		require.NotNil(t, s2)
		t.Cleanup(func() { _ = s2.Close() })
		return s2
	}
}

// FullRecord returns a record with every field set, including headers, a
// base64 payload and nanosecond times in a zone other than UTC.
func FullRecord() dlq.Record {
	zone := time.FixedZone("UTC-7", -7*3600)
	payload, enc := dlq.EncodePayloadBytes([]byte{0x00, 0xff, 'h', 'i', '\n'})
	return dlq.Record{
		V:               dlq.Version,
		ID:              dlq.NewID(),
		CorrelationID:   "order-17",
		Pipeline:        "orders",
		Stage:           "enrich",
		Payload:         payload,
		PayloadEncoding: enc,
		Reason:          dlq.ReasonPanic,
		Error:           "runtime error: index out of range [3] with length 3",
		ErrorType:       "runtime.boundsError",
		Stack:           "goroutine 7 [running]:\nmain.enrich(...)\n",
		Attempts:        3,
		MaxAttempts:     5,
		Replays:         1,
		FirstAttemptAt:  time.Date(2026, 11, 23, 4, 59, 58, 1, zone),
		FailedAt:        time.Date(2026, 11, 23, 5, 0, 0, 123456789, zone),
		Source:          "kafka://orders/3@1234",
		TraceID:         "4bf92f3577b34da6a3ce929d0e0e4736",
		SpanID:          "00f067aa0ba902b7",
		Traceparent:     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		Headers:         map[string]string{"tenant": "acme", "ünïcødé": "✓ <&>"},
	}
}

// Normalized returns rec as a Store returns it: V filled in and times in
// UTC. (Stores also compact JSON payloads; Normalized assumes rec's payload
// is compact already.)
func Normalized(rec dlq.Record) dlq.Record {
	if rec.V == 0 {
		rec.V = dlq.Version
	}
	if !rec.FirstAttemptAt.IsZero() {
		rec.FirstAttemptAt = rec.FirstAttemptAt.UTC()
	}
	if !rec.FailedAt.IsZero() {
		rec.FailedAt = rec.FailedAt.UTC()
	}
	return rec
}

// simple returns a minimal valid record with a JSON payload holding i.
func simple(stage string, i int) dlq.Record {
	return dlq.Record{
		ID:       dlq.NewID(),
		Pipeline: "p",
		Stage:    stage,
		Payload:  json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)),
		Reason:   dlq.ReasonError,
		Error:    fmt.Sprintf("failure %d", i),
		Attempts: 1,
		FailedAt: time.Date(2026, 1, 2, 3, 4, 5, i, time.UTC),
	}
}

func ids(recs []dlq.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

func testRoundTrip(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, _ := open(t, newStore)
	full := FullRecord()
	jsonRec := simple("parse", 1)
	jsonRec.Payload = json.RawMessage(`{"nested":{"list":[1,2.5,"x",null,true]},"html":"<b>&amp;</b>"}`)
	nullRec := simple("parse", 2)
	nullRec.Payload = nil
	for _, r := range []dlq.Record{full, jsonRec, nullRec} {
		require.NoError(t, s.Write(ctx, r))
	}
	got, err := s.Records(ctx)
	require.NoError(t, err)
	require.Len(t, got, 3)
	assert.Equal(t, Normalized(full), got[0])
	assert.Equal(t, Normalized(jsonRec), got[1])
	assert.Equal(t, Normalized(nullRec), got[2])
	assert.Equal(t, time.UTC, got[0].FailedAt.Location())
	assert.Equal(t, "2026-11-23T12:00:00.123456789Z", got[0].FailedAt.Format(time.RFC3339Nano))

	b, err := got[0].PayloadBytes()
	require.NoError(t, err)
	assert.Equal(t, []byte{0x00, 0xff, 'h', 'i', '\n'}, b)
}

func testDurable(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, reopen := open(t, newStore)
	var want []dlq.Record
	for i := range 10 {
		r := simple("s", i)
		require.NoError(t, s.Write(ctx, r))
		want = append(want, Normalized(r))
	}
	require.NoError(t, s.Close())

	s2 := reopen()
	got, err := s2.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, got)

	// The reopened store keeps appending after what is there.
	extra := simple("s", 10)
	require.NoError(t, s2.Write(ctx, extra))
	got, err = s2.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, append(want, Normalized(extra)), got)
}

func testOrdering(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, _ := open(t, newStore)
	var want []string
	for i := range 50 {
		r := simple(fmt.Sprintf("stage-%d", i%3), i)
		// IDs that do not sort in write order: the order must be the
		// write order, not the ID order.
		r.ID = fmt.Sprintf("id-%02d", 49-i)
		require.NoError(t, s.Write(ctx, r))
		want = append(want, r.ID)
	}
	got, err := s.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, ids(got))
}

func testConcurrent(t *testing.T, newStore NewStoreFunc) {
	const writers, perWriter = 8, 200
	ctx := context.Background()
	s, _ := open(t, newStore)
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	written := make([][]string, writers)
	for w := range writers {
		wg.Go(func() {
			for i := range perWriter {
				r := simple(fmt.Sprintf("w%d", w), i)
				if err := s.Write(ctx, r); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
					return
				}
				written[w] = append(written[w], r.ID)
			}
		})
	}
	wg.Wait()
	require.NoError(t, errors.Join(errs...))

	got, err := s.Records(ctx)
	require.NoError(t, err)
	require.Len(t, got, writers*perWriter)
	seen := make(map[string]int, len(got))
	for i, r := range got {
		_, dup := seen[r.ID]
		require.False(t, dup, "record %s returned twice", r.ID)
		seen[r.ID] = i
	}
	// Every record is there, and each writer's records are in its order.
	for w := range writers {
		last := -1
		for _, id := range written[w] {
			pos, ok := seen[id]
			require.True(t, ok, "record %s missing", id)
			require.Greater(t, pos, last, "writer %d's records out of order", w)
			last = pos
		}
	}
}

func testClose(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, _ := open(t, newStore)
	require.NoError(t, s.Write(ctx, simple("s", 1)))
	require.NoError(t, s.Close())
	require.NoError(t, s.Close(), "second Close")

	err := s.Write(ctx, simple("s", 2))
	require.ErrorIs(t, err, dlq.ErrClosed)
	err = s.Delete(ctx, "x")
	require.ErrorIs(t, err, dlq.ErrClosed)
}

func testDelete(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, reopen := open(t, newStore)
	var all []string
	for i := range 6 {
		r := simple("s", i)
		require.NoError(t, s.Write(ctx, r))
		all = append(all, r.ID)
	}
	require.NoError(t, s.Delete(ctx, all[1], all[4], "no-such-id"))
	want := []string{all[0], all[2], all[3], all[5]}
	got, err := s.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, ids(got))

	// Idempotent, and nothing to delete is fine.
	require.NoError(t, s.Delete(ctx, all[1]))
	require.NoError(t, s.Delete(ctx))
	got, err = s.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, ids(got))

	require.NoError(t, s.Close())
	s2 := reopen()
	got, err = s2.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, want, ids(got), "deletes survive reopen")

	// A deleted ID can be written again; it comes back at the end.
	again := simple("s", 1)
	again.ID = all[1]
	require.NoError(t, s2.Write(ctx, again))
	require.NoError(t, s2.Delete(ctx, all[0]))
	got, err = s2.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{all[2], all[3], all[5], all[1]}, ids(got))
}

func testReplace(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, _ := open(t, newStore)
	a, b := simple("s", 1), simple("s", 2)
	require.NoError(t, s.Write(ctx, a))
	require.NoError(t, s.Write(ctx, b))
	a2 := a
	a2.Replays = 1
	a2.Error = "failed again"
	require.NoError(t, s.Write(ctx, a2))
	got, err := s.Records(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{a.ID, b.ID}, ids(got))
	assert.Equal(t, Normalized(a2), got[0])
}

func testInvalid(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, _ := open(t, newStore)
	noID := simple("s", 1)
	noID.ID = ""
	noStage := simple("s", 2)
	noStage.Stage = ""
	badReason := simple("s", 3)
	badReason.Reason = "bored"
	badPayload := simple("s", 4)
	badPayload.Payload = json.RawMessage(`{"unterminated":`)
	badVersion := simple("s", 5)
	badVersion.V = 2
	for name, r := range map[string]dlq.Record{
		"id": noID, "stage": noStage, "reason": badReason, "payload": badPayload, "v": badVersion,
	} {
		err := s.Write(ctx, r)
		require.Error(t, err, "record with bad %s accepted", name)
		assert.Contains(t, err.Error(), name)
	}
	got, err := s.Records(ctx)
	require.NoError(t, err)
	assert.Empty(t, got)

	// The store still works.
	ok := simple("s", 6)
	require.NoError(t, s.Write(ctx, ok))
	got, err = s.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{ok.ID}, ids(got))
}

func testContextDone(t *testing.T, newStore NewStoreFunc) {
	s, _ := open(t, newStore)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Write(ctx, simple("s", 1))
	require.ErrorIs(t, err, context.Canceled)
	got, err := s.Records(context.Background())
	require.NoError(t, err)
	assert.Empty(t, got)
}

func testCopies(t *testing.T, newStore NewStoreFunc) {
	ctx := context.Background()
	s, _ := open(t, newStore)
	r := FullRecord()
	require.NoError(t, s.Write(ctx, r))
	// Mutating the written record does not change the store.
	r.Headers["tenant"] = "changed"
	got, err := s.Records(ctx)
	require.NoError(t, err)
	require.Len(t, got, 1)
	assert.Equal(t, "acme", got[0].Headers["tenant"])
	// Neither does mutating what Records returned.
	got[0].Headers["tenant"] = "mutated"
	got[0].Payload[1] = 'X'
	again, err := s.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, "acme", again[0].Headers["tenant"])
	assert.NotEqual(t, byte('X'), again[0].Payload[1])
}
