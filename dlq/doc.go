// Package dlq is sluice's dead-letter queue: items that failed after their
// retries, failed permanently, panicked, timed out, overflowed a buffer,
// were rejected by an open circuit breaker or were cut off by a shutdown
// are written as durable [Record]s that operators can inspect and replay.
//
// A pipeline writes dead letters to a [Sink]. A [Store] is a Sink that can
// also list ([Store.Records]) and remove ([Store.Delete]) records, which
// replay and operator tools need. Two Stores are provided: [Memory], for
// tests and for pipelines that can lose dead letters on restart, and
// [File], a JSON Lines file. Package dlqtest holds a conformance suite for
// Store implementations.
//
// This package imports no other package of sluice.
//
// # Record format (version 1)
//
// A record is one JSON object ([Encode], [Decode]). Its fields:
//
//   - "v" (number, required): the format major version, 1 ([Version]).
//     Incompatible changes bump it, and readers reject versions they do not
//     know with a [*VersionError]. Compatible additions add fields without
//     bumping it, so readers ignore fields they do not know.
//   - "id" (string, required): unique record ID; [NewID] makes
//     time-sortable 26-character ULIDs.
//   - "correlation_id" (string): the item's identity upstream.
//   - "pipeline" (string): the pipeline's name.
//   - "stage" (string, required): the stage that gave up on the item.
//   - "reason" (string, required): one of "error", "permanent", "timeout",
//     "panic", "overflow", "shutdown", "circuit_open" (see [Reason]).
//   - "error" (string): the text of the last error.
//   - "error_type" (string, optional): the Go type of the last error.
//   - "attempts" (number): attempts made.
//   - "max_attempts" (number): attempts the retry policy allowed.
//   - "replays" (number): times the record was replayed already.
//   - "first_attempt_at", "failed_at" (string, omitted when zero): RFC 3339
//     times, always in UTC with nine fractional digits, for example
//     "2026-11-23T12:00:00.123456789Z". Readers accept any RFC 3339 time
//     (lower-case "t" and "z" included; not a leap second, :60, which Go's
//     time package cannot hold) and convert it to UTC.
//   - "source", "trace_id", "span_id", "traceparent" (string, optional):
//     where the item came from and the trace it was processed in.
//   - "headers" (object of strings, optional): free-form metadata.
//   - "stack" (string, optional): the goroutine stack of a panic.
//   - "payload_encoding" (string, optional): absent when the payload is
//     JSON; "base64" when the payload is a JSON string holding base64
//     (standard alphabet, padded) of arbitrary bytes ([EncodePayloadBytes],
//     [Record.PayloadBytes]).
//   - "payload" (any JSON value): the item; null when there is none.
//
// The string fields, header keys and values included, are UTF-8. A string
// that is not valid UTF-8 is not refused: [Encode] writes U+FFFD in place
// of each byte that is not part of a valid UTF-8 sequence, so the record
// reads back with that change, and readers do the same to such bytes in a
// line.
//
// # File layout
//
// A dead-letter file (see [OpenFile]) is JSON Lines, append-only: every
// line is a record as above, or a tombstone, followed by '\n':
//
//	{"v":1,"id":"01JD…","correlation_id":"order-17",…,"payload":{"order":17}}
//	{"v":1,"op":"delete","id":"01JD…"}
//
// Record lines have no "op" field. A tombstone deletes the records with
// its ID that come before it; any other "op" makes the line corrupt.
// Writing a record whose ID is live replaces it: readers return the last
// version, at the position of the first. [File.Compact] rewrites the file
// with only the live records, each line as it was, fields this package
// does not know included. A line may be at most [MaxLineSize] bytes.
//
// Only one process writes a file at a time: the writer holds an exclusive
// flock on the sibling file path + ".lock", where path has its symlinks
// resolved (so that every symlink to a file names one lock), which is
// created if missing and never removed (removing it would let two writers
// lock different files). Hard links to one file are not detected. Readers ([ReadFile]) take no lock. Locking uses flock(2),
// available on Linux, macOS and the BSDs; on other systems OpenFile fails
// rather than risk two writers.
//
// # Durability and group commit
//
// [File.Write] and [File.Delete] return only after their bytes are written
// and fsynced; an error means the record is not in the file. Concurrent
// callers share fsyncs: appends queue in a buffer; a caller that finds no
// flush in progress takes the whole buffer, writes and fsyncs it, then
// wakes the callers whose appends it carried, and one of the callers that
// queued meanwhile flushes the next buffer. There is no timer and no
// background goroutine: a lone writer pays one fsync per record, and N
// concurrent writers pay far fewer than N.
//
// When an append or its fsync fails, every caller of that flush gets the
// error and the file is truncated back to its last committed length, so a
// partial line cannot corrupt later appends. If that truncation fails too,
// the File enters a failed state in which every later call returns the
// error.
//
// # Crashes, torn tails and corruption
//
// A crash in the middle of an append can leave an incomplete last line (a
// torn tail) that was never acknowledged. [OpenFile] truncates it away,
// looking only at the end of the file, and reports it in [File.Repaired];
// [ReadFile] skips it and reports it in [ReadResult.Torn]. Any other line
// that is not a valid record or tombstone is corruption: reading stops
// with a [*CorruptError] giving the path, line number and byte offset,
// which matches [ErrCorrupt] with errors.Is. Nothing in this package
// panics on bad input.
package dlq
