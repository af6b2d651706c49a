package dlq

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
)

// MaxLineSize is the largest line, excluding its newline, that a
// dead-letter file may hold. [File.Write] and [Memory.Write] refuse
// records that encode larger, and readers report longer lines as corrupt.
const MaxLineSize = 64 << 20

// TornTail describes an incomplete last line: bytes after the last newline,
// left by a crash in the middle of an append. Such a line was never
// acknowledged to a writer, so dropping it loses nothing that was promised.
type TornTail struct {
	// Offset is the byte offset where the torn line starts (just after the
	// last newline, or 0).
	Offset int64
	// Bytes is the length of the torn line.
	Bytes int64
	// Line is the 1-based line number of the torn line, or 0 when it is
	// not known: [OpenFile] finds torn tails by looking at the end of the
	// file only, without counting the lines before.
	Line int
}

// ReadResult is what [ReadFile] found.
type ReadResult struct {
	// Records are the live records, in the order they were first written.
	Records []Record
	// Torn is the incomplete last line that was skipped, or nil.
	Torn *TornTail
}

// ReadFile reads the dead-letter file at path without locking it, for
// read-only tools; it works while a writer is appending. A torn last line
// (no trailing newline, e.g. after a crash, or an append in progress) is
// skipped and reported in Torn. A corrupt line anywhere else is a
// [*CorruptError]. A missing file gives an error wrapping fs.ErrNotExist.
func ReadFile(path string) (ReadResult, error) {
	fh, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return ReadResult{}, fmt.Errorf("dlq: read dead-letter file %s: file does not exist: %w", path, err)
		}
		return ReadResult{}, fmt.Errorf("dlq: read dead-letter file: %w", err)
	}
	defer fh.Close()
	recs, torn, err := readLog(context.Background(), fh, path, MaxLineSize, keepRecord)
	if err != nil {
		return ReadResult{}, err
	}
	return ReadResult{Records: recs, Torn: torn}, nil
}

// liveSet applies records and tombstones in file order. It keeps a T for
// each live record: the Record itself for readers, a lineSpan for Compact.
type liveSet[T any] struct {
	slots []liveSlot[T]  // in first-written order
	idx   map[string]int // live ID -> index in slots
	dead  int            // slots deleted
}

type liveSlot[T any] struct {
	v    T
	live bool
}

func (s *liveSet[T]) put(id string, v T) {
	if i, ok := s.idx[id]; ok {
		s.slots[i].v = v
		return
	}
	s.idx[id] = len(s.slots)
	s.slots = append(s.slots, liveSlot[T]{v: v, live: true})
}

func (s *liveSet[T]) remove(id string) {
	if i, ok := s.idx[id]; ok {
		s.slots[i] = liveSlot[T]{}
		delete(s.idx, id)
		s.dead++
	}
}

func (s *liveSet[T]) live() []T {
	out := make([]T, 0, len(s.slots)-s.dead)
	for _, sl := range s.slots {
		if sl.live {
			out = append(out, sl.v)
		}
	}
	return out
}

// lineSpan is where a line is in a log: its offset and its length,
// newline included.
type lineSpan struct {
	off, n int64
}

// keepRecord is the keep function of readLog for readers: the record.
func keepRecord(rec Record, _ lineSpan) Record { return rec }

// keepSpan is the keep function of readLog for Compact: where the line is,
// so that it can be copied as it is, fields this package does not know
// included.
func keepSpan(_ Record, sp lineSpan) lineSpan { return sp }

// readLog reads a dead-letter log from r: it parses every complete line,
// applies tombstones and returns, for each live record in first-written
// order, what keep makes of its last version and of where that version's
// line is, and the torn tail (an unterminated last line), if any. path is
// used in errors only.
func readLog[T any](ctx context.Context, r io.Reader, path string, maxLine int, keep func(Record, lineSpan) T) ([]T, *TornTail, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	set := liveSet[T]{idx: make(map[string]int)}
	var (
		offset int64 // offset of the current line
		lineNo int   // 1-based number of the current line
		long   []byte
	)
	for {
		lineNo++
		if lineNo%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return nil, nil, err
			}
		}
		line, n, err := readLine(br, maxLine, &long)
		if err == io.EOF {
			if n == 0 {
				return set.live(), nil, nil
			}
			return set.live(), &TornTail{Offset: offset, Bytes: n, Line: lineNo}, nil
		}
		if err != nil {
			var ce *CorruptError
			if errors.As(err, &ce) {
				ce.Path, ce.Line, ce.Offset = path, lineNo, offset
				return nil, nil, ce
			}
			return nil, nil, fmt.Errorf("dlq: read %s: %w", path, err)
		}
		rec, op, perr := parseLine(line)
		if perr != nil {
			return nil, nil, &CorruptError{Path: path, Line: lineNo, Offset: offset, Err: perr}
		}
		if op == opDelete {
			set.remove(rec.ID)
		} else {
			set.put(rec.ID, keep(rec, lineSpan{off: offset, n: n}))
		}
		offset += n
	}
}

// readLine returns the next line without its newline and the number of
// bytes consumed including the newline. At the end of input it returns
// io.EOF and the length of the unterminated rest (0 if none). A line
// longer than maxLine gives a *CorruptError (without position); its
// contents are not kept in memory. long is scratch space reused between
// calls for lines longer than the reader's buffer.
func readLine(br *bufio.Reader, maxLine int, long *[]byte) ([]byte, int64, error) {
	*long = (*long)[:0]
	var (
		n       int64
		tooLong bool
	)
	for {
		chunk, err := br.ReadSlice('\n')
		n += int64(len(chunk))
		switch err {
		case nil:
			if tooLong || n-1 > int64(maxLine) {
				return nil, n, &CorruptError{Err: fmt.Errorf("line is longer than the %d byte limit", maxLine)}
			}
			if len(*long) == 0 {
				return chunk[:len(chunk)-1], n, nil
			}
			*long = append(*long, chunk[:len(chunk)-1]...)
			return *long, n, nil
		case bufio.ErrBufferFull:
			if !tooLong && n > int64(maxLine) {
				tooLong = true
				*long = (*long)[:0]
			}
			if !tooLong {
				*long = append(*long, chunk...)
			}
		case io.EOF:
			return nil, n, io.EOF
		default:
			return nil, n, err
		}
	}
}
