package dlq

import (
	"cmp"
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"unicode/utf8"
)

// Memory is an in-memory [Store], for tests and for pipelines that do not
// need dead letters to survive a restart. It is safe for concurrent use.
//
// Records are validated and normalized exactly as [File] does (they go
// through [Encode], the same [MaxLineSize] check, and [Decode]), so a
// Memory refuses what a File would refuse and returns what a File would
// return: times in UTC, a compacted payload, and U+FFFD in place of each
// byte of invalid UTF-8 in strings (see [Record]).
// Unlike a File, a closed Memory can still be read with Records and Len,
// so a test can inspect the dead letters after its pipeline closed the
// sink.
type Memory struct {
	maxLine int // longest encoded record Write keeps: MaxLineSize, or lower in tests

	mu      sync.Mutex
	seq     uint64
	entries map[string]memEntry
	closed  bool
}

type memEntry struct {
	seq uint64 // position of the first write
	rec Record
}

var _ Store = (*Memory)(nil)

// NewMemory returns an empty Memory.
func NewMemory() *Memory {
	return &Memory{maxLine: MaxLineSize, entries: make(map[string]memEntry)}
}

// Write implements [Sink]. Like [File.Write], it refuses a record that
// [Encode] rejects or whose line would exceed [MaxLineSize].
func (m *Memory) Write(ctx context.Context, rec Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	line, err := encodeLine(rec, m.maxLine)
	if err != nil {
		return err
	}
	stored, err := Decode(line)
	if err != nil {
		return err // cannot happen: Decode accepts what Encode writes
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("dlq: memory write: %w", ErrClosed)
	}
	e, ok := m.entries[stored.ID]
	if !ok {
		m.seq++
		e.seq = m.seq
	}
	e.rec = stored
	m.entries[stored.ID] = e
	return nil
}

// Records implements [Store]. It works after Close too.
func (m *Memory) Records(ctx context.Context) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	entries := make([]memEntry, 0, len(m.entries))
	for _, e := range m.entries {
		entries = append(entries, e)
	}
	m.mu.Unlock()
	slices.SortFunc(entries, func(a, b memEntry) int { return cmp.Compare(a.seq, b.seq) })
	out := make([]Record, len(entries))
	for i, e := range entries {
		out[i] = e.rec.clone()
	}
	return out, nil
}

// Delete implements [Store].
func (m *Memory) Delete(ctx context.Context, ids ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return fmt.Errorf("dlq: memory delete: %w", ErrClosed)
	}
	for _, id := range ids {
		delete(m.entries, asWritten(id)) // (the record is kept under its ID as written)
	}
	return nil
}

// asWritten returns s as a record's string field comes back once written: each byte that is not
// part of valid UTF-8 replaced by U+FFFD, as encoding/json writes it. File's tombstones name an
// ID the same way, so Memory and File delete the same records.
func asWritten(s string) string {
	if utf8.ValidString(s) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && n == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// Len returns the number of live records. It works after Close too.
func (m *Memory) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}

// Close implements [Sink]. Later writes and deletes fail with [ErrClosed];
// the records stay readable.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	return nil
}
