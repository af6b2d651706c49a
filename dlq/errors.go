package dlq

import (
	"errors"
	"fmt"
	"strings"
)

// ErrClosed is returned (wrapped) by calls on a closed sink: Write and
// Delete of every Sink in this package, and Records and Compact of a
// [File].
var ErrClosed = errors.New("dlq: sink is closed")

// ErrLocked is returned (wrapped) by [OpenFile] when another writer, in
// this process or another one, holds the file's lock.
var ErrLocked = errors.New("dlq: file is locked by another writer")

// ErrCorrupt is matched (via errors.Is) by every [*CorruptError].
var ErrCorrupt = errors.New("dlq: corrupt record")

// VersionError reports a record whose format version ("v") this package
// does not know. Incompatible format changes bump the version, so a reader
// refuses to guess at records of other versions.
type VersionError struct {
	// Got is the version found in the record.
	Got int
}

// Error implements error.
func (e *VersionError) Error() string {
	return fmt.Sprintf("dlq: record format version %d is not supported (this reader knows version %d)", e.Got, Version)
}

// CorruptError reports a line of a dead-letter file that is not a valid
// record or tombstone. errors.Is(err, ErrCorrupt) is true for it, and
// errors.As reaches the underlying cause (for example a [*VersionError])
// through Unwrap.
type CorruptError struct {
	// Path is the file's path.
	Path string
	// Line is the 1-based line number of the bad line.
	Line int
	// Offset is the byte offset of the start of the bad line.
	Offset int64
	// Err is the cause.
	Err error
}

// Error implements error.
func (e *CorruptError) Error() string {
	cause := "unknown cause"
	if e.Err != nil {
		cause = strings.TrimPrefix(e.Err.Error(), "dlq: ")
	}
	return fmt.Sprintf("dlq: %s line %d: corrupt record: %s", e.Path, e.Line, cause)
}

// Unwrap returns the cause.
func (e *CorruptError) Unwrap() error { return e.Err }

// Is reports whether target is [ErrCorrupt].
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }
