package dlq

import "context"

// Sink receives dead letters.
type Sink interface {
	// Write stores rec. It returns only when the record is durable (for
	// the sink's notion of durable); an error means it is not stored. A
	// record that [Encode] rejects is not written and its error returned.
	// If ctx is already done, Write returns ctx.Err() without writing.
	// After Close, Write returns an error wrapping [ErrClosed].
	//
	// Write may keep rec but must not change it: its Payload and Headers
	// are shared with a retry of the write, the fallback sink and the
	// pipeline's OnDeadLetter hook.
	Write(ctx context.Context, rec Record) error
	// Close releases the sink's resources, after the writes in progress
	// finished. Closing a closed sink returns nil.
	Close() error
}

// Store is a [Sink] that can also list and remove records, as replay and
// operator tools need.
//
// A Store keeps at most one live record per ID: writing a record whose ID
// is live replaces that record in place (it keeps the position of the
// first write), which is what a replay that fails again wants.
type Store interface {
	Sink
	// Records returns the live records (written and not deleted), in the
	// order they were first written. The records are the caller's to
	// modify.
	Records(ctx context.Context) ([]Record, error)
	// Delete removes the records with the given IDs, durably before it
	// returns. Unknown IDs are ignored. After Close it returns an error
	// wrapping [ErrClosed].
	Delete(ctx context.Context, ids ...string) error
}
