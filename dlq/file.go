package dlq

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
)

// File is a [Store] backed by an append-only JSON Lines file. It is safe
// for concurrent use; see the package documentation for the file layout,
// locking, durability and crash handling.
type File struct {
	path     string   // as given to OpenFile, for Path and errors
	resolved string   // path with its symlinks resolved by OpenFile
	lock     *os.File // resolved + ".lock", flocked while open
	syncFn   func(*os.File) error
	repaired *TornTail
	maxLine  int // longest line Write and Delete append: MaxLineSize, or lower in tests

	// onQueued, when set (by tests, before the File is shared), is called
	// with mu held each time an append has been queued.
	onQueued func()

	// fmu guards the identity of fh against the swap done by Compact and
	// the close done by Close: Records holds it for reading while it reads.
	// Lock order: fmu before mu.
	fmu sync.RWMutex

	mu     sync.Mutex
	cond   sync.Cond // on mu; broadcast when a flush ends
	fh     *os.File
	size   int64  // committed length of fh: ends with '\n' or is 0
	cur    *batch // appends queued for the next flush, or nil
	spare  []byte // a drained batch buffer, kept for reuse
	busy   bool   // a flush, Compact or Close owns the file's tail
	closed bool
	failed error // sticky: set when a failed append could not be undone
}

// batch is a group of appends written and fsynced together.
type batch struct {
	buf  []byte
	done bool
	err  error
}

var _ Store = (*File)(nil)

// FileOption configures [OpenFile].
type FileOption func(*fileConfig)

type fileConfig struct {
	syncHook func(*os.File) error
}

// WithSyncHook replaces the fsync of the data file (f.Sync()) with fn. It
// is meant for tests: to inject failures such as ENOSPC, count fsyncs, or
// simulate a slow disk. fn is called for every fsync of the data file or of
// its compaction temp file, with no lock of the File held, and possibly
// from several goroutines in turn (never concurrently for one File). To
// keep the durability guarantee fn must call f.Sync() before returning nil.
// Directory fsyncs do not go through fn.
func WithSyncHook(fn func(f *os.File) error) FileOption {
	return func(c *fileConfig) { c.syncHook = fn }
}

// OpenFile opens the dead-letter file at path for appending, creating it
// (mode 0o644, before umask) if it does not exist; its parent directory
// must exist.
//
// OpenFile resolves the symbolic links in path once, when it opens the
// file: a path that does not exist yet has its directory resolved, and a
// dangling symlink is followed to the file it names, which is created.
// Everything the File does by name uses the resolved path, made absolute:
// the lock file, the compaction temp file and the rename of [File.Compact],
// so a symlink stays a symlink and writes keep reaching the file it named at
// open, even after the process changes its working directory.
//
// Only one writer may have a file open: OpenFile takes an exclusive,
// non-blocking flock on the resolved path + ".lock" (created if missing,
// never removed) and fails with an error wrapping [ErrLocked] if another
// File, in this or another process, holds it, including one opened
// through another symlink to the same file. Close releases it. Hard links
// are not detected: two Files opened through two hard links to one file
// take different locks and overwrite each other's records.
//
// If the file does not end in a newline (a crash interrupted an append),
// OpenFile truncates the incomplete last line away and reports it in
// [File.Repaired]. It looks at the end of the file only, so opening a big
// file is cheap; corrupt lines elsewhere are reported by Records.
func OpenFile(path string, opts ...FileOption) (*File, error) {
	var cfg fileConfig
	for _, o := range opts {
		if o != nil {
			o(&cfg)
		}
	}
	syncFn := cfg.syncHook
	if syncFn == nil {
		syncFn = (*os.File).Sync
	}

	dir := filepath.Dir(path)
	st, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("dlq: open %s: parent directory %s does not exist: %w", path, dir, err)
	case err != nil:
		return nil, fmt.Errorf("dlq: open %s: %w", path, err)
	case !st.IsDir():
		return nil, fmt.Errorf("dlq: open %s: parent %s is not a directory", path, dir)
	}
	resolved, err := resolvePath(path)
	if err == nil {
		// Absolute: Compact renames by this name, also after the process changes directory.
		resolved, err = filepath.Abs(resolved)
	}
	if err != nil {
		return nil, fmt.Errorf("dlq: open %s: resolve symlinks: %w", path, err)
	}
	dir = filepath.Dir(resolved)

	lockPath := resolved + ".lock"
	lf, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("dlq: open %s: lock file: %w", path, err)
	}
	if err := lockFile(lf); err != nil {
		lf.Close()
		if errors.Is(err, errWouldBlock) {
			return nil, fmt.Errorf("dlq: open %s: %w (lock file %s)", path, ErrLocked, lockPath)
		}
		return nil, fmt.Errorf("dlq: open %s: lock %s: %w", path, lockPath, err)
	}
	fail := func(err error) (*File, error) {
		_ = unlockFile(lf)
		lf.Close()
		return nil, err
	}

	_, statErr := os.Lstat(resolved)
	created := errors.Is(statErr, fs.ErrNotExist)
	fh, err := os.OpenFile(resolved, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fail(fmt.Errorf("dlq: open %s: %w", path, err))
	}
	if created {
		if err := syncDir(dir); err != nil {
			fh.Close()
			return fail(fmt.Errorf("dlq: open %s: fsync directory: %w", path, err))
		}
	}
	size, torn, err := repairTail(fh, syncFn)
	if err != nil {
		fh.Close()
		return fail(fmt.Errorf("dlq: open %s: %w", path, err))
	}
	f := &File{
		path:     path,
		resolved: resolved,
		lock:     lf,
		syncFn:   syncFn,
		repaired: torn,
		maxLine:  MaxLineSize,
		fh:       fh,
		size:     size,
	}
	f.cond.L = &f.mu
	return f, nil
}

// maxSymlinks bounds the symlinks resolvePath follows, as the kernel's
// ELOOP does.
const maxSymlinks = 255

// resolvePath returns path with its symlinks resolved. If path does not
// exist, its directory is resolved and its last element kept; if it is a
// dangling symlink, its target is resolved the same way (relative targets
// are relative to the link's directory, as the kernel reads them).
func resolvePath(path string) (string, error) {
	for range maxSymlinks {
		resolved, err := filepath.EvalSymlinks(path)
		if err == nil {
			return resolved, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return "", err
		}
		// Split, unlike Dir, does not clean: "link/.." must be resolved
		// by EvalSymlinks, not lexically.
		dir, name := filepath.Split(path)
		if dir == "" {
			dir = "."
		}
		realDir, err := filepath.EvalSymlinks(dir)
		if err != nil {
			return "", err
		}
		fi, err := os.Lstat(path)
		if errors.Is(err, fs.ErrNotExist) || (err == nil && fi.Mode()&fs.ModeSymlink == 0) {
			// Missing, or (created since EvalSymlinks looked) not a link.
			return filepath.Join(realDir, name), nil
		}
		if err != nil {
			return "", err
		}
		target, err := os.Readlink(path)
		if err != nil {
			return "", err
		}
		if filepath.IsAbs(target) {
			path = target
		} else {
			path = realDir + string(filepath.Separator) + target
		}
	}
	return "", fmt.Errorf("%s: more than %d levels of symbolic links", path, maxSymlinks)
}

// repairTail truncates fh after its last newline, if it does not end in
// one, and returns the resulting size and what was cut.
func repairTail(fh *os.File, syncFn func(*os.File) error) (int64, *TornTail, error) {
	st, err := fh.Stat()
	if err != nil {
		return 0, nil, err
	}
	if !st.Mode().IsRegular() {
		return 0, nil, errors.New("not a regular file")
	}
	size := st.Size()
	if size == 0 {
		return 0, nil, nil
	}
	var last [1]byte
	if _, err := fh.ReadAt(last[:], size-1); err != nil {
		return 0, nil, fmt.Errorf("read tail: %w", err)
	}
	if last[0] == '\n' {
		return size, nil, nil
	}
	// Scan backwards for the last newline.
	cut := int64(0)
	buf := make([]byte, 64<<10)
	for end := size; end > 0; {
		start := max(0, end-int64(len(buf)))
		chunk := buf[:end-start]
		if _, err := fh.ReadAt(chunk, start); err != nil {
			return 0, nil, fmt.Errorf("read tail: %w", err)
		}
		if i := bytes.LastIndexByte(chunk, '\n'); i >= 0 {
			cut = start + int64(i) + 1
			break
		}
		end = start
	}
	if err := fh.Truncate(cut); err != nil {
		return 0, nil, fmt.Errorf("truncate torn tail: %w", err)
	}
	if err := syncFn(fh); err != nil {
		return 0, nil, fmt.Errorf("fsync after truncating torn tail: %w", err)
	}
	return cut, &TornTail{Offset: cut, Bytes: size - cut}, nil
}

// syncDir fsyncs a directory, making renames and creations in it durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// Path returns the path given to OpenFile, symlinks unresolved.
func (f *File) Path() string { return f.path }

// Repaired returns the torn tail OpenFile truncated away, or nil if the
// file ended cleanly. Its Line is 0: OpenFile does not count lines.
func (f *File) Repaired() *TornTail {
	if f.repaired == nil {
		return nil
	}
	t := *f.repaired
	return &t
}

// Write appends rec to the file and returns once it is written and
// fsynced. Concurrent writes share fsyncs (group commit). If ctx is
// already done, Write returns ctx.Err() without writing; once the record
// is queued, Write waits for the outcome regardless of ctx, so that its
// result is always truthful. A record that Encode rejects, or whose line
// would exceed [MaxLineSize], is not written.
func (f *File) Write(ctx context.Context, rec Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	line, err := encodeLine(rec, f.maxLine)
	if err != nil {
		return err
	}
	return f.commit("write", line)
}

// Delete appends a tombstone for each ID, all in one fsynced append, and
// returns once they are durable. Readers drop the records the tombstones
// name; Compact removes both. Unknown and empty IDs are harmless.
func (f *File) Delete(ctx context.Context, ids ...string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	var lines []byte
	for _, id := range ids {
		if id == "" {
			continue
		}
		line, err := encodeTombstone(id)
		if err != nil {
			return fmt.Errorf("dlq: delete %s: %w", f.path, err)
		}
		if len(line) > f.maxLine {
			return fmt.Errorf("dlq: delete %s: ID of %d bytes is over the line limit", f.path, len(id))
		}
		lines = append(lines, line...)
		lines = append(lines, '\n')
	}
	if len(lines) == 0 {
		f.mu.Lock()
		defer f.mu.Unlock()
		if f.closed {
			return fmt.Errorf("dlq: delete %s: %w", f.path, ErrClosed)
		}
		return nil
	}
	return f.commit("delete", lines[:len(lines)-1])
}

// commit queues data plus a newline and waits until it is durable. The
// first caller that finds no flush in progress flushes the whole queue;
// the others wait for it, and one of them flushes what queued meanwhile.
func (f *File) commit(op string, data []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return fmt.Errorf("dlq: %s %s: %w", op, f.path, ErrClosed)
	}
	if f.failed != nil {
		return fmt.Errorf("dlq: %s %s: %w", op, f.path, f.failed)
	}
	if f.cur == nil {
		f.cur = &batch{buf: f.spare}
		f.spare = nil
	}
	b := f.cur
	b.buf = append(b.buf, data...)
	b.buf = append(b.buf, '\n')
	if f.onQueued != nil {
		f.onQueued()
	}
	for !b.done {
		if f.busy {
			f.cond.Wait()
			continue
		}
		f.flushLocked()
	}
	if b.err != nil {
		return fmt.Errorf("dlq: %s %s: %w", op, f.path, b.err)
	}
	return nil
}

// flushLocked writes and fsyncs the queued batch. It is called with mu
// held, f.busy false and f.cur non-nil; it releases mu while doing I/O.
func (f *File) flushLocked() {
	b := f.cur
	f.cur = nil
	f.busy = true
	fh, off := f.fh, f.size
	err := f.failed
	if err == nil {
		f.mu.Unlock()
		err = f.appendAt(fh, b.buf, off)
		var rerr error
		if err != nil {
			rerr = f.rollback(fh, off)
		}
		f.mu.Lock()
		if rerr != nil {
			f.failed = fmt.Errorf("file is unusable: an append failed (%v) and could not be undone: %w", err, rerr)
			err = f.failed
		}
	}
	if err == nil {
		f.size = off + int64(len(b.buf))
	}
	b.err = err
	b.done = true
	if cap(b.buf) <= 1<<20 {
		f.spare = b.buf[:0]
	}
	b.buf = nil
	f.busy = false
	f.cond.Broadcast()
}

// appendAt writes data at off and fsyncs.
func (f *File) appendAt(fh *os.File, data []byte, off int64) error {
	if _, err := fh.WriteAt(data, off); err != nil {
		return fmt.Errorf("append: %w", err)
	}
	if err := f.syncFn(fh); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	return nil
}

// rollback truncates fh back to the committed size off, so that a partial
// append cannot corrupt later ones.
func (f *File) rollback(fh *os.File, off int64) error {
	if err := fh.Truncate(off); err != nil {
		return fmt.Errorf("truncate: %w", err)
	}
	if err := f.syncFn(fh); err != nil {
		return fmt.Errorf("fsync after truncate: %w", err)
	}
	return nil
}

// Records reads the file from the start and returns the live records in
// the order they were first written. It sees every write and delete that
// returned before it was called. A bad line gives a [*CorruptError].
func (f *File) Records(ctx context.Context) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f.fmu.RLock()
	defer f.fmu.RUnlock()
	f.mu.Lock()
	closed, fh, size := f.closed, f.fh, f.size
	f.mu.Unlock()
	if closed {
		return nil, fmt.Errorf("dlq: records %s: %w", f.path, ErrClosed)
	}
	return readCommitted(ctx, fh, size, f.path, keepRecord)
}

// readCommitted reads the committed part of a log, which has no torn tail.
func readCommitted[T any](ctx context.Context, fh *os.File, size int64, path string, keep func(Record, lineSpan) T) ([]T, error) {
	recs, torn, err := readLog(ctx, io.NewSectionReader(fh, 0, size), path, MaxLineSize, keep)
	if err != nil {
		return nil, err
	}
	if torn != nil {
		return nil, &CorruptError{Path: path, Line: torn.Line, Offset: torn.Offset, Err: errors.New("line has no newline")}
	}
	return recs, nil
}

// Compact rewrites the file with only the live records, dropping deleted
// and replaced records and tombstones. Each live record keeps its line as
// the file has it, byte for byte (its last version, at the position of its
// first, as Records returns it): fields this package does not know, which
// a newer writer may add (see the package documentation), are kept, and
// nothing is normalized. It keeps the ID and the position of each live
// line in memory, not the records.
//
// It writes path + ".tmp", fsyncs it, renames it over path and fsyncs the
// directory, where path is the one OpenFile resolved (so a symlink the
// File was opened through is kept). Writes wait while it runs, and then
// append to the new file; the lock is kept throughout. If Compact fails
// before the rename, the file is left as it was; if it fails after (the
// directory fsync), the File enters the failed state, because later
// appends could be lost in a crash. A path + ".tmp" left by a crash during
// an earlier Compact is overwritten.
func (f *File) Compact(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	for {
		if f.closed {
			f.mu.Unlock()
			return fmt.Errorf("dlq: compact %s: %w", f.path, ErrClosed)
		}
		if f.failed != nil {
			err := f.failed
			f.mu.Unlock()
			return fmt.Errorf("dlq: compact %s: %w", f.path, err)
		}
		if !f.busy {
			break
		}
		f.cond.Wait()
	}
	f.busy = true
	fh, size := f.fh, f.size
	f.mu.Unlock()

	newFh, newSize, fatal, err := f.rewrite(ctx, fh, size)
	if err == nil {
		f.fmu.Lock()
		f.mu.Lock()
		f.fh, f.size = newFh, newSize
		f.mu.Unlock()
		f.fmu.Unlock()
		fh.Close()
	}

	f.mu.Lock()
	if fatal {
		f.failed = err
	}
	f.busy = false
	f.cond.Broadcast()
	f.mu.Unlock()
	if err != nil {
		var ce *CorruptError
		if errors.As(err, &ce) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return err
		}
		return fmt.Errorf("dlq: compact %s: %w", f.path, err)
	}
	return nil
}

// rewrite writes the live records of fh[:size] to a temp file and renames
// it over the path. fatal reports an error after the rename. Each live
// record is copied as the line it was read from, byte for byte, so that
// the fields this package does not know (compatible additions by a newer
// writer) are kept. Lines that follow each other in fh are copied
// together.
func (f *File) rewrite(ctx context.Context, fh *os.File, size int64) (newFh *os.File, newSize int64, fatal bool, err error) {
	spans, err := readCommitted(ctx, fh, size, f.path, keepSpan)
	if err != nil {
		return nil, 0, false, err
	}
	st, err := fh.Stat()
	if err != nil {
		return nil, 0, false, err
	}
	tmp := f.resolved + ".tmp"
	tf, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return nil, 0, false, err
	}
	abort := func(err error) (*os.File, int64, bool, error) {
		tf.Close()
		os.Remove(tmp)
		return nil, 0, false, err
	}
	if err := tf.Chmod(st.Mode().Perm()); err != nil {
		return abort(err)
	}
	bw := bufio.NewWriterSize(tf, 256<<10)
	var run lineSpan // lines of fh not yet copied, which follow each other
	copyRun := func() error {
		if run.n == 0 {
			return nil
		}
		n, err := io.Copy(bw, io.NewSectionReader(fh, run.off, run.n))
		if err == nil && n != run.n {
			err = io.ErrUnexpectedEOF
		}
		if err != nil {
			return fmt.Errorf("copy %d bytes at offset %d of %s to %s: %w", run.n, run.off, f.resolved, tmp, err)
		}
		return nil
	}
	for i, sp := range spans {
		if i%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return abort(err)
			}
		}
		if run.n > 0 && sp.off == run.off+run.n {
			run.n += sp.n
		} else {
			if err := copyRun(); err != nil {
				return abort(err)
			}
			run = sp
		}
		newSize += sp.n
	}
	if err := copyRun(); err != nil {
		return abort(err)
	}
	if err := bw.Flush(); err != nil {
		return abort(fmt.Errorf("write %s: %w", tmp, err))
	}
	if err := f.syncFn(tf); err != nil {
		return abort(fmt.Errorf("fsync %s: %w", tmp, err))
	}
	if err := ctx.Err(); err != nil {
		return abort(err)
	}
	if err := os.Rename(tmp, f.resolved); err != nil {
		return abort(err)
	}
	if err := syncDir(filepath.Dir(f.resolved)); err != nil {
		tf.Close()
		return nil, 0, true, fmt.Errorf("file is unusable: renamed the compacted file into place but could not fsync the directory: %w", err)
	}
	return tf, newSize, false, nil
}

// Close flushes the appends in progress, closes the file and releases the
// lock. Later calls return an error wrapping [ErrClosed], except Close,
// which returns nil.
func (f *File) Close() error {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return nil
	}
	f.closed = true
	for f.busy || f.cur != nil {
		if f.busy {
			f.cond.Wait()
			continue
		}
		f.flushLocked()
	}
	f.mu.Unlock()

	f.fmu.Lock() // wait for Records in progress
	defer f.fmu.Unlock()
	var errs []error
	if err := f.fh.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := unlockFile(f.lock); err != nil {
		errs = append(errs, err)
	}
	if err := f.lock.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("dlq: close %s: %w", f.path, err)
	}
	return nil
}
