package dlq

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func testRecord(i int) Record {
	return Record{ID: NewID(), Stage: "s", Reason: ReasonError, Error: fmt.Sprint(i)}
}

// TestGroupCommit blocks the first fsync until n-1 more writers have
// queued their records, and checks that they all share one fsync.
func TestGroupCommit(t *testing.T) {
	const n = 8
	ctx := context.Background()
	var syncs atomic.Int32
	inSync := make(chan struct{})
	release := make(chan struct{})
	hook := func(fh *os.File) error {
		if syncs.Add(1) == 1 {
			close(inSync)
			<-release
		}
		return fh.Sync()
	}
	f, err := OpenFile(filepath.Join(t.TempDir(), "dead.jsonl"), WithSyncHook(hook))
	require.NoError(t, err)
	defer f.Close()
	queued := make(chan struct{}, n)
	f.onQueued = func() { queued <- struct{}{} } // set before any concurrency

	errc := make(chan error, n)
	go func() { errc <- f.Write(ctx, testRecord(0)) }()
	<-queued
	<-inSync // the first writer leads and is stuck in fsync
	for i := 1; i < n; i++ {
		go func() { errc <- f.Write(ctx, testRecord(i)) }()
	}
	for i := 1; i < n; i++ {
		<-queued
	}
	close(release)
	for range n {
		require.NoError(t, <-errc)
	}
	assert.Equal(t, int32(2), syncs.Load(), "one fsync for the first write, one for the other %d", n-1)
	recs, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Len(t, recs, n)
}

// TestGroupCommitFailureReachesWholeBatch checks that every caller of a
// failed batch gets the error, and the next batch is unaffected.
func TestGroupCommitFailureReachesWholeBatch(t *testing.T) {
	const n = 5
	ctx := context.Background()
	var syncs atomic.Int32
	inSync := make(chan struct{})
	release := make(chan struct{})
	hook := func(fh *os.File) error {
		switch syncs.Add(1) {
		case 1:
			close(inSync)
			<-release
		case 2: // the batch of the n-1 queued writers
			return errors.New("injected")
		}
		return fh.Sync()
	}
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	f, err := OpenFile(path, WithSyncHook(hook))
	require.NoError(t, err)
	defer f.Close()
	queued := make(chan struct{}, n)
	f.onQueued = func() { queued <- struct{}{} }

	first := make(chan error, 1)
	go func() { first <- f.Write(ctx, testRecord(0)) }()
	<-queued
	<-inSync
	errc := make(chan error, n)
	for i := 1; i < n; i++ {
		go func() { errc <- f.Write(ctx, testRecord(i)) }()
	}
	for i := 1; i < n; i++ {
		<-queued
	}
	close(release)
	require.NoError(t, <-first)
	for i := 1; i < n; i++ {
		require.ErrorContains(t, <-errc, "injected")
	}
	require.NoError(t, f.Write(ctx, testRecord(n)))
	recs, err := f.Records(ctx)
	require.NoError(t, err)
	assert.Len(t, recs, 2)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, 2, bytes.Count(b, []byte("\n")))
}

func TestReadLineLimit(t *testing.T) {
	good, err := Encode(testRecord(1))
	require.NoError(t, err)
	long := `{"v":1,"id":"x","stage":"s","reason":"error","error":"` + strings.Repeat("e", 300<<10) + `"}`
	limit := len(good) + 10

	// A long complete line is corrupt, without being held in memory.
	_, _, err = readLog(context.Background(), strings.NewReader(string(good)+"\n"+long+"\n"), "f", limit, keepRecord)
	var ce *CorruptError
	require.ErrorAs(t, err, &ce)
	assert.Equal(t, 2, ce.Line)
	assert.Equal(t, int64(len(good)+1), ce.Offset)
	assert.Contains(t, err.Error(), "longer than")

	// A long unterminated last line is a torn tail.
	recs, torn, err := readLog(context.Background(), strings.NewReader(string(good)+"\n"+long), "f", limit, keepRecord)
	require.NoError(t, err)
	assert.Len(t, recs, 1)
	require.NotNil(t, torn)
	assert.Equal(t, TornTail{Offset: int64(len(good) + 1), Bytes: int64(len(long)), Line: 2}, *torn)

	// Within the limit, lines longer than the read buffer are fine.
	recs, torn, err = readLog(context.Background(), strings.NewReader(long+"\n"+string(good)+"\n"), "f", MaxLineSize, keepRecord)
	require.NoError(t, err)
	assert.Nil(t, torn)
	assert.Len(t, recs, 2)
}

func TestReadLogHonoursContext(t *testing.T) {
	var sb strings.Builder
	for i := range 3000 {
		b, err := Encode(testRecord(i))
		require.NoError(t, err)
		sb.Write(b)
		sb.WriteByte('\n')
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, _, err := readLog(ctx, strings.NewReader(sb.String()), "f", MaxLineSize, keepRecord)
	require.ErrorIs(t, err, context.Canceled)
}

// TestMemoryRefusesWhatFileRefuses checks that a Memory and a File share
// the line limit: both keep a record whose line is exactly the limit and
// both refuse one a byte longer, with the same error. The limit is
// lowered to one small record's line, since encoding a record of
// MaxLineSize (64 MiB) takes many seconds under -race.
func TestMemoryRefusesWhatFileRefuses(t *testing.T) {
	ctx := context.Background()
	m := NewMemory()
	f, err := OpenFile(filepath.Join(t.TempDir(), "dead.jsonl"))
	require.NoError(t, err)
	defer f.Close()
	require.Equal(t, MaxLineSize, m.maxLine)
	require.Equal(t, MaxLineSize, f.maxLine)

	fits := testRecord(1)
	b, err := Encode(fits)
	require.NoError(t, err)
	m.maxLine, f.maxLine = len(b), len(b) // before any concurrency
	over := testRecord(1)
	over.Error += "x"
	b2, err := Encode(over)
	require.NoError(t, err)
	require.Len(t, b2, len(b)+1)

	require.NoError(t, m.Write(ctx, fits))
	require.NoError(t, f.Write(ctx, fits))
	errM, errF := m.Write(ctx, over), f.Write(ctx, over)
	require.Error(t, errM, "Memory refuses a line over the limit")
	require.Error(t, errF, "File refuses a line over the limit")
	assert.Equal(t, errF.Error(), errM.Error())
	assert.Contains(t, errM.Error(), fmt.Sprintf("%d bytes, over the %d byte line limit", len(b2), len(b)))

	recsM, err := m.Records(ctx)
	require.NoError(t, err)
	recsF, err := f.Records(ctx)
	require.NoError(t, err)
	fits.V = Version
	assert.Equal(t, []Record{fits}, recsM)
	assert.Equal(t, recsF, recsM)
}

// TestContainsFoldAgreesWithEqualFold checks containsFold against its
// definition: some substring of s, cut at rune boundaries, is
// strings.EqualFold to substr.
func TestContainsFoldAgreesWithEqualFold(t *testing.T) {
	words := []string{"", "a", "A", "k", "K", "\u212a", "σ", "ς", "Σ", "οδος", "ΟΔΟΣ", "ß", "ẞ", "é", "É", "\xff", "\uFFFD", "ǅ", "ǆ", "Ǆ"}
	var ss []string
	for _, a := range words {
		for _, b := range words {
			ss = append(ss, a+b, a+" "+b)
		}
	}
	for _, s := range ss {
		for _, sub := range append(words, "οδος not", "σς", "kK") {
			var cuts []int // rune boundaries, as a range loop steps
			for i := range s {
				cuts = append(cuts, i)
			}
			cuts = append(cuts, len(s))
			want := false
			for _, i := range cuts {
				for _, j := range cuts {
					want = want || (i <= j && strings.EqualFold(s[i:j], sub))
				}
			}
			assert.Equal(t, want, containsFold(s, sub), "containsFold(%q, %q)", s, sub)
		}
	}
}
