package dlq_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
)

// Environment variables that turn the helper tests below into child
// processes of the tests that re-execute the test binary.
const (
	envCrashFile = "DLQ_TEST_CRASH_FILE"
	envLockFile  = "DLQ_TEST_LOCK_FILE"
)

// crashPayload is the payload the crash helper writes for a record ID: its
// size varies with the ID (up to 512 KiB, so that some appends are big
// enough to be interrupted), and it carries a digest to check it is intact.
type crashPayload struct {
	ID     string `json:"id"`
	Fill   string `json:"fill"`
	Digest string `json:"digest"`
}

func makeCrashPayload(id string) crashPayload {
	sum := sha256.Sum256([]byte(id))
	n := int(sum[0]) * 8 // up to 2 KiB
	if sum[1] < 16 {
		n = int(sum[2]) << 11 // sometimes up to 512 KiB
	}
	fill := strings.Repeat(string(rune('a'+sum[3]%26)), n)
	digest := sha256.Sum256([]byte(id + fill))
	return crashPayload{ID: id, Fill: fill, Digest: hex.EncodeToString(digest[:])}
}

// TestCrashHelper is not a test: run by TestCrash as a child process, it
// appends records from several goroutines and prints "acked <id>" after
// each Write returns, until it is killed.
func TestCrashHelper(t *testing.T) {
	path := os.Getenv(envCrashFile)
	if path == "" {
		t.Skip("helper process for TestCrash")
	}
	// Never outlive a parent that forgot us.
	time.AfterFunc(time.Minute, func() { os.Exit(3) })
	f, err := dlq.OpenFile(path)
	if err != nil {
		fmt.Println("open failed:", err)
		os.Exit(2)
	}
	var mu sync.Mutex
	out := bufio.NewWriter(os.Stdout)
	for range 4 {
		go func() {
			for i := 0; ; i++ {
				r := rec(i)
				p, err := json.Marshal(makeCrashPayload(r.ID))
				if err != nil {
					panic(err)
				}
				r.Payload = p
				r.Error = "crash test " + r.ID
				if err := f.Write(context.Background(), r); err != nil {
					fmt.Println("write failed:", err)
					os.Exit(2)
				}
				mu.Lock()
				fmt.Fprintf(out, "acked %s\n", r.ID)
				out.Flush()
				mu.Unlock()
			}
		}()
	}
	select {}
}

// TestCrash kills a writer process with SIGKILL at random points and
// checks that every record it acknowledged is in the file, intact, and
// that the file can be reopened and appended to.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("spawns processes")
	}
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("DLQ_TEST_CRASH_SEED"); s != "" { // to reproduce a failure
		var err error
		seed, err = strconv.ParseUint(s, 10, 64)
		require.NoError(t, err)
	}
	t.Logf("seed %d (set DLQ_TEST_CRASH_SEED to reproduce)", seed)
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	acked := make(map[string]bool)
	torn := 0
	const runs = 20
	for run := range runs {
		killAfter := 1 + rng.IntN(60)
		n := crashRun(t, path, killAfter)
		for _, id := range n {
			acked[id] = true
		}

		res, err := dlq.ReadFile(path)
		require.NoError(t, err, "run %d", run)
		checkAcked(t, res.Records, acked)

		f, err := dlq.OpenFile(path)
		require.NoError(t, err, "run %d", run)
		if res.Torn != nil {
			torn++
			rep := f.Repaired()
			require.NotNil(t, rep, "run %d: ReadFile saw a torn tail, OpenFile must repair it", run)
			assert.Equal(t, res.Torn.Offset, rep.Offset)
			assert.Equal(t, res.Torn.Bytes, rep.Bytes)
		} else {
			assert.Nil(t, f.Repaired())
		}
		r := rec(run)
		require.NoError(t, f.Write(context.Background(), r))
		acked[r.ID] = true
		recs, err := f.Records(context.Background())
		require.NoError(t, err)
		checkAcked(t, recs, acked)
		require.NoError(t, f.Close())
	}
	t.Logf("%d runs, %d acked records, %d torn tails", runs, len(acked), torn)
}

// crashRun starts the helper, kills it after killAfter acks and returns
// every ID it acknowledged.
func crashRun(t *testing.T, path string, killAfter int) []string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashHelper$")
	cmd.Env = append(os.Environ(), envCrashFile+"="+path)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())

	var ids []string
	sc := bufio.NewScanner(stdout)
	killed := false
	for sc.Scan() {
		id, ok := strings.CutPrefix(sc.Text(), "acked ")
		if !ok {
			t.Logf("helper: %s", sc.Text())
			continue
		}
		ids = append(ids, id)
		if len(ids) == killAfter && !killed {
			require.NoError(t, cmd.Process.Kill()) // SIGKILL
			killed = true
		}
	}
	// Acks printed before the kill are read to the end of the pipe.
	require.NoError(t, sc.Err())
	err = cmd.Wait()
	var exitErr *exec.ExitError
	require.True(t, errors.As(err, &exitErr), "helper must die by the kill, got %v", err)
	require.True(t, killed, "helper exited before %d acks", killAfter)
	return ids
}

func checkAcked(t *testing.T, recs []dlq.Record, acked map[string]bool) {
	t.Helper()
	present := make(map[string]dlq.Record, len(recs))
	for _, r := range recs {
		present[r.ID] = r
	}
	for id := range acked {
		r, ok := present[id]
		require.True(t, ok, "acked record %s missing", id)
		if !strings.HasPrefix(r.Error, "crash test ") {
			continue // written by the parent
		}
		var p crashPayload
		require.NoError(t, json.Unmarshal(r.Payload, &p))
		require.Equal(t, makeCrashPayload(id), p, "record %s damaged", id)
	}
}

// TestLockHelper is not a test: run by TestSecondWriterLockedOtherProcess
// as a child process, it tries to open the file and prints the outcome.
func TestLockHelper(t *testing.T) {
	path := os.Getenv(envLockFile)
	if path == "" {
		t.Skip("helper process for TestSecondWriterLockedOtherProcess")
	}
	f, err := dlq.OpenFile(path)
	switch {
	case errors.Is(err, dlq.ErrLocked):
		fmt.Println("locked:", err)
	case err != nil:
		fmt.Println("error:", err)
	default:
		fmt.Println("opened")
		_ = f.Close()
	}
}

func TestSecondWriterLockedOtherProcess(t *testing.T) {
	f, path := openTemp(t)
	tryOpen := func() string {
		cmd := exec.Command(os.Args[0], "-test.run=^TestLockHelper$")
		cmd.Env = append(os.Environ(), envLockFile+"="+path)
		out, err := cmd.Output()
		require.NoError(t, err)
		return string(out)
	}
	out := tryOpen()
	assert.True(t, strings.HasPrefix(out, "locked: "), out)
	assert.Contains(t, out, path)

	require.NoError(t, f.Close())
	out = tryOpen()
	assert.True(t, strings.HasPrefix(out, "opened"), out)
}
