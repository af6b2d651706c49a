package dlq_test

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
)

func TestOpenFileCreates(t *testing.T) {
	f, path := openTemp(t)
	assert.Equal(t, path, f.Path())
	assert.Nil(t, f.Repaired())
	st, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, int64(0), st.Size())
	_, err = os.Stat(path + ".lock")
	require.NoError(t, err, "lock file created")

	require.NoError(t, f.Write(context.Background(), rec(1)))
	content := readAll(t, path)
	assert.True(t, strings.HasSuffix(content, "\n"))
	assert.Equal(t, 1, strings.Count(content, "\n"))
	assert.NotContains(t, content, `"op"`)
}

func TestOpenFileMissingDir(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope", "dead.jsonl")
	_, err := dlq.OpenFile(path)
	require.Error(t, err)
	assert.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), path)
	assert.Contains(t, err.Error(), "parent directory")
}

func TestTornTailRepairedOnOpen(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	r1, r2 := rec(1), rec(2)
	good := line(t, r1) + line(t, r2)
	partial := line(t, rec(3))[:40] // a crash mid-append
	writeFile(t, path, good+partial)

	f, err := dlq.OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	torn := f.Repaired()
	require.NotNil(t, torn)
	assert.Equal(t, int64(len(good)), torn.Offset)
	assert.Equal(t, int64(len(partial)), torn.Bytes)
	assert.Equal(t, good, readAll(t, path), "torn tail truncated")

	r4 := rec(4)
	require.NoError(t, f.Write(ctx, r4))
	assert.Equal(t, good+line(t, r4), readAll(t, path))
	recs, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{r1.ID, r2.ID, r4.ID}, idsOf(recs))
}

func TestTornTailOnlyLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	// A torn line longer than the 64 KiB backwards-scan chunk, alone.
	writeFile(t, path, `{"v":1,"id":"x","payload":"`+strings.Repeat("a", 200<<10))
	f, err := dlq.OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	require.NotNil(t, f.Repaired())
	assert.Equal(t, int64(0), f.Repaired().Offset)
	assert.Empty(t, readAll(t, path))
}

func TestReadFileReportsTornTailWithoutModifying(t *testing.T) {
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	r1, r2 := rec(1), rec(2)
	good := line(t, r1) + line(t, r2)
	content := good + `{"v":1,"id":"torn`
	writeFile(t, path, content)

	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, []string{r1.ID, r2.ID}, idsOf(res.Records))
	require.NotNil(t, res.Torn)
	assert.Equal(t, dlq.TornTail{Offset: int64(len(good)), Bytes: int64(len(content) - len(good)), Line: 3}, *res.Torn)
	assert.Equal(t, content, readAll(t, path), "ReadFile does not modify the file")
}

func TestReadFileWhileWriterHoldsLock(t *testing.T) {
	ctx := context.Background()
	f, path := openTemp(t)
	r := rec(1)
	require.NoError(t, f.Write(ctx, r))
	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, []string{r.ID}, idsOf(res.Records))
	assert.Nil(t, res.Torn)
}

func TestReadFileMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "missing.jsonl")
	_, err := dlq.ReadFile(path)
	require.ErrorIs(t, err, fs.ErrNotExist)
	assert.Contains(t, err.Error(), path)
	assert.True(t, strings.HasPrefix(err.Error(), "dlq: "))
}

func TestCorruptMiddleLine(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	l1, l2 := line(t, rec(1)), line(t, rec(2))
	bad := `{"v":1,"id":"x","stage":"s","reason":"error","payload":{oops}}` + "\n"
	writeFile(t, path, l1+l2+bad+line(t, rec(4)))

	check := func(err error) {
		t.Helper()
		var ce *dlq.CorruptError
		require.ErrorAs(t, err, &ce)
		assert.ErrorIs(t, err, dlq.ErrCorrupt)
		assert.Equal(t, path, ce.Path)
		assert.Equal(t, 3, ce.Line)
		assert.Equal(t, int64(len(l1)+len(l2)), ce.Offset)
		assert.Contains(t, err.Error(), path+" line 3: corrupt record: ")
	}
	_, err := dlq.ReadFile(path)
	check(err)

	f, err := dlq.OpenFile(path)
	require.NoError(t, err, "opening does not parse the file")
	defer f.Close()
	assert.Nil(t, f.Repaired())
	_, err = f.Records(ctx)
	check(err)
	check(f.Compact(ctx))
}

func TestCorruptLines(t *testing.T) {
	for name, bad := range map[string]string{
		"unknown op":           `{"v":1,"op":"truncate","id":"x"}`,
		"tombstone without id": `{"v":1,"op":"delete"}`,
		"version 2":            `{"v":2,"id":"x","stage":"s","reason":"error"}`,
		"empty line":           ``,
		"invalid utf-8":        "\xff\xfe",
		"nul bytes":            "\x00\x00\x00",
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "dead.jsonl")
			writeFile(t, path, line(t, rec(1))+bad+"\n")
			_, err := dlq.ReadFile(path)
			var ce *dlq.CorruptError
			require.ErrorAs(t, err, &ce)
			assert.Equal(t, 2, ce.Line)
			if name == "version 2" {
				var ve *dlq.VersionError
				require.ErrorAs(t, err, &ve)
				assert.Equal(t, 2, ve.Got)
			}
		})
	}
}

func TestSecondWriterLockedSameProcess(t *testing.T) {
	f, path := openTemp(t)
	_, err := dlq.OpenFile(path)
	require.ErrorIs(t, err, dlq.ErrLocked)
	assert.Contains(t, err.Error(), path)

	require.NoError(t, f.Close())
	f2, err := dlq.OpenFile(path)
	require.NoError(t, err, "Close releases the lock")
	require.NoError(t, f2.Close())
}

func TestHugeLine(t *testing.T) {
	ctx := context.Background()
	f, path := openTemp(t)
	big := make([]byte, 5<<20)
	for i := range big {
		big[i] = byte(i * 7)
	}
	r := rec(1)
	r.Payload, r.PayloadEncoding = dlq.EncodePayloadBytes(big)
	require.NoError(t, f.Write(ctx, r))
	small := rec(2)
	require.NoError(t, f.Write(ctx, small))

	recs, err := f.Records(ctx)
	require.NoError(t, err)
	require.Len(t, recs, 2)
	got, err := recs[0].PayloadBytes()
	require.NoError(t, err)
	assert.Equal(t, big, got)

	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	require.Len(t, res.Records, 2)
	assert.Equal(t, recs, res.Records)
}

func TestWriteFailureIsRolledBack(t *testing.T) {
	ctx := context.Background()
	var fail atomic.Bool
	hook := func(fh *os.File) error {
		if fail.Swap(false) {
			// The disk took part of the batch, then filled up.
			st, err := fh.Stat()
			if err != nil {
				return err
			}
			if _, err := fh.WriteAt([]byte(`{"v":1,"id":"half`), st.Size()); err != nil {
				return err
			}
			return syscall.ENOSPC
		}
		return fh.Sync()
	}
	f, path := openTemp(t, dlq.WithSyncHook(hook))
	r1 := rec(1)
	require.NoError(t, f.Write(ctx, r1))

	fail.Store(true)
	err := f.Write(ctx, rec(2))
	require.ErrorIs(t, err, syscall.ENOSPC)
	assert.Contains(t, err.Error(), path)
	assert.Equal(t, line(t, r1), readAll(t, path), "no partial line left behind")

	r3 := rec(3)
	require.NoError(t, f.Write(ctx, r3), "later writes work")
	require.NoError(t, f.Delete(ctx, r1.ID))
	recs, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{r3.ID}, idsOf(recs))
	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	assert.Nil(t, res.Torn)
	assert.Equal(t, recs, res.Records)
}

func TestWriteFailureStickyWhenRollbackFails(t *testing.T) {
	ctx := context.Background()
	var broken atomic.Bool
	hook := func(fh *os.File) error {
		if broken.Load() {
			return syscall.EIO
		}
		return fh.Sync()
	}
	f, _ := openTemp(t, dlq.WithSyncHook(hook))
	r1 := rec(1)
	require.NoError(t, f.Write(ctx, r1))

	broken.Store(true)
	err := f.Write(ctx, rec(2))
	require.ErrorIs(t, err, syscall.EIO)

	broken.Store(false) // the disk recovers, but the file's state is unknown
	err = f.Write(ctx, rec(3))
	require.ErrorIs(t, err, syscall.EIO, "sticky error")
	assert.Contains(t, err.Error(), "unusable")
	require.ErrorIs(t, f.Delete(ctx, r1.ID), syscall.EIO)
	require.ErrorIs(t, f.Compact(ctx), syscall.EIO)

	recs, err := f.Records(ctx)
	require.NoError(t, err, "committed records stay readable")
	assert.Equal(t, []string{r1.ID}, idsOf(recs))
	require.NoError(t, f.Close())
}

func TestCompact(t *testing.T) {
	ctx := context.Background()
	f, path := openTemp(t)
	var all []dlq.Record
	for i := range 10 {
		r := rec(i)
		require.NoError(t, f.Write(ctx, r))
		all = append(all, r)
	}
	replaced := all[2]
	replaced.Replays = 1
	require.NoError(t, f.Write(ctx, replaced))
	require.NoError(t, f.Delete(ctx, all[0].ID, all[5].ID, all[9].ID))
	before, err := f.Records(ctx)
	require.NoError(t, err)
	sizeBefore := len(readAll(t, path))

	require.NoError(t, f.Compact(ctx))
	after, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, before, after)
	content := readAll(t, path)
	assert.Less(t, len(content), sizeBefore)
	assert.NotContains(t, content, `"op"`)
	assert.Equal(t, 7, strings.Count(content, "\n"))
	_, err = os.Stat(path + ".tmp")
	require.ErrorIs(t, err, fs.ErrNotExist, "temp file renamed away")

	// Appending continues on the new file, and the lock is still held.
	r := rec(100)
	require.NoError(t, f.Write(ctx, r))
	require.NoError(t, f.Delete(ctx, all[1].ID))
	_, err = dlq.OpenFile(path)
	require.ErrorIs(t, err, dlq.ErrLocked)
	require.NoError(t, f.Close())

	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	want := append(idsOf(after[1:]), r.ID)
	assert.Equal(t, want, idsOf(res.Records))
	assert.Equal(t, 1, res.Records[0].Replays, "replaced version kept")
}

// TestCompactKeepsFieldsItDoesNotKnow checks that Compact writes each live
// record back as the line it read, byte for byte: format version 1 allows
// compatible additions (fields that readers ignore), and a Compact by an
// older writer must not strip the fields a newer one added (it re-encoded
// the decoded records, which have no place for them). The last version of a
// replaced record wins, at the position of the first, as readers see it; a
// line with invalid UTF-8 stays as the file had it.
func TestCompactKeepsFieldsItDoesNotKnow(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "d.jsonl")
	const (
		a1 = `{"v":1,"id":"a","correlation_id":"c","pipeline":"p","stage":"s","reason":"error","error":"e","attempts":1,"max_attempts":1,"replays":0,"tenant":"acme","payload":null}`
		b  = `{"v":1,"id":"b","stage":"s","reason":"error","error":"bad ` + "\xff" + ` byte","future":{"nested":[1,2]},"payload":{"k":1}}` // a raw 0xff byte
		c  = `{"v":1,"id":"c","stage":"s","reason":"timeout","region":"eu","payload":"x"}`
		a2 = `{"v":1,"id":"a","stage":"s","reason":"error","replays":1,"tenant":"acme-2","payload":null}`
		dc = `{"v":1,"op":"delete","id":"c"}`
	)
	require.NoError(t, os.WriteFile(path, []byte(a1+"\n"+b+"\n"+c+"\n"+a2+"\n"+dc+"\n"), 0o644))
	f, err := dlq.OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	before, err := f.Records(ctx)
	require.NoError(t, err)

	require.NoError(t, f.Compact(ctx))
	assert.Equal(t, a2+"\n"+b+"\n", readAll(t, path), "the live lines, as they were, in first-written order")
	after, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, before, after)

	// Appends go on after the kept lines, and a second Compact keeps them too.
	r := rec(1)
	require.NoError(t, f.Write(ctx, r))
	require.NoError(t, f.Delete(ctx, "b"))
	require.NoError(t, f.Compact(ctx))
	line, err := dlq.Encode(r)
	require.NoError(t, err)
	assert.Equal(t, a2+"\n"+string(line)+"\n", readAll(t, path))
	after, err = f.Records(ctx)
	require.NoError(t, err)
	assert.Equal(t, []string{"a", r.ID}, idsOf(after))
}

func TestCompactConcurrentWithWritesAndReads(t *testing.T) {
	ctx := context.Background()
	f, path := openTemp(t)
	const writers, each = 4, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers*each+100)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				r := rec(w*1000 + i)
				if err := f.Write(ctx, r); err != nil {
					errs <- err
					return
				}
				if i%3 == 0 {
					if err := f.Delete(ctx, r.ID); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Go(func() {
		for range 10 {
			if err := f.Compact(ctx); err != nil {
				errs <- err
			}
			if _, err := f.Records(ctx); err != nil {
				errs <- err
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	recs, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Len(t, recs, writers*(each-17))
	require.NoError(t, f.Close())
	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, recs, res.Records)
}

func TestFileClosed(t *testing.T) {
	ctx := context.Background()
	f, _ := openTemp(t)
	require.NoError(t, f.Close())
	_, err := f.Records(ctx)
	require.ErrorIs(t, err, dlq.ErrClosed)
	require.ErrorIs(t, f.Compact(ctx), dlq.ErrClosed)
	require.ErrorIs(t, f.Delete(ctx), dlq.ErrClosed)
}

func TestWriteInvalidWritesNothing(t *testing.T) {
	f, path := openTemp(t)
	bad := rec(1)
	bad.Payload = json.RawMessage("{")
	require.Error(t, f.Write(context.Background(), bad))
	assert.Empty(t, readAll(t, path))
}

func TestCorruptErrorNeverPanicsOnOpen(t *testing.T) {
	// A file that is all garbage opens (only its tail is looked at) and
	// its corruption is reported by Records.
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	writeFile(t, path, "\x00garbage\n")
	f, err := dlq.OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	_, err = f.Records(context.Background())
	require.True(t, errors.Is(err, dlq.ErrCorrupt), err)
}

func idsOf(recs []dlq.Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.ID
	}
	return out
}

// TestSecondWriterLockedThroughSymlink opens one file by its name and
// through symlinks to it (an existing file, and a dangling link whose
// target OpenFile creates): every second writer gets ErrLocked.
func TestSecondWriterLockedThroughSymlink(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	realPath := filepath.Join(dir, "real.jsonl")
	link := filepath.Join(dir, "link.jsonl")
	require.NoError(t, os.Symlink("real.jsonl", link))
	linkDir := filepath.Join(dir, "linkdir")
	require.NoError(t, os.Symlink(".", linkDir))

	f, err := dlq.OpenFile(link) // dangling: creates real.jsonl
	require.NoError(t, err)
	assert.Equal(t, link, f.Path(), "Path is the path given")
	st, err := os.Lstat(realPath)
	require.NoError(t, err)
	assert.True(t, st.Mode().IsRegular(), "the link's target was created")
	r1 := rec(1)
	require.NoError(t, f.Write(ctx, r1))

	for _, p := range []string{realPath, link, filepath.Join(linkDir, "link.jsonl")} {
		g, err := dlq.OpenFile(p)
		if err == nil {
			g.Close()
		}
		require.ErrorIs(t, err, dlq.ErrLocked, "open %s", p)
	}
	require.NoError(t, f.Close())

	f, err = dlq.OpenFile(realPath)
	require.NoError(t, err)
	g, err := dlq.OpenFile(link)
	if err == nil {
		g.Close()
	}
	require.ErrorIs(t, err, dlq.ErrLocked, "the name locks out the link too")
	r2 := rec(2)
	require.NoError(t, f.Write(ctx, r2))
	require.NoError(t, f.Close())
	assert.Equal(t, line(t, r1)+line(t, r2), readAll(t, realPath), "no record overwritten")
}

// TestCompactThroughSymlink checks that Compact of a File opened through a
// symlink replaces the file the link names, not the link, and that later
// writes land in that file.
func TestCompactThroughSymlink(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	realPath := filepath.Join(dir, "real.jsonl")
	link := filepath.Join(dir, "link.jsonl")
	r1, r2, r3 := rec(1), rec(2), rec(3)
	writeFile(t, realPath, line(t, r1)+line(t, r2))
	require.NoError(t, os.Symlink("real.jsonl", link))

	f, err := dlq.OpenFile(link)
	require.NoError(t, err)
	require.NoError(t, f.Delete(ctx, r1.ID))
	require.NoError(t, f.Compact(ctx))
	st, err := os.Lstat(link)
	require.NoError(t, err)
	require.Equal(t, fs.ModeSymlink, st.Mode().Type(), "the link is still a link")
	target, err := os.Readlink(link)
	require.NoError(t, err)
	assert.Equal(t, "real.jsonl", target)
	assert.Equal(t, line(t, r2), readAll(t, realPath), "the real file was compacted")

	require.NoError(t, f.Write(ctx, r3))
	assert.Equal(t, line(t, r2)+line(t, r3), readAll(t, realPath), "later writes land in the real file")
	require.NoError(t, f.Close())
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{"link.jsonl", "real.jsonl", "real.jsonl.lock"}, names, "no temp or link-named lock left")
}

// TestCompactAfterChdir checks that a File opened by a relative path keeps
// working on that file after the process changes directory: Compact wrote
// and renamed a file in the new working directory, and the records written
// since went there, while the dead-letter file (and its lock) stayed behind.
func TestCompactAfterChdir(t *testing.T) {
	ctx := context.Background()
	dirA, dirB := t.TempDir(), t.TempDir()
	t.Chdir(dirA)
	f, err := dlq.OpenFile("dead.jsonl")
	require.NoError(t, err)
	defer f.Close()
	r1, r2 := rec(1), rec(2)
	require.NoError(t, f.Write(ctx, r1))
	require.NoError(t, f.Delete(ctx, r1.ID))
	t.Chdir(dirB) // e.g. a job that works in its output directory
	require.NoError(t, f.Compact(ctx))
	require.NoError(t, f.Write(ctx, r2))
	assert.Equal(t, line(t, r2), readAll(t, filepath.Join(dirA, "dead.jsonl")), "the file the File was opened on")
	entries, err := os.ReadDir(dirB)
	require.NoError(t, err)
	assert.Empty(t, entries, "nothing made in the new working directory")
}
