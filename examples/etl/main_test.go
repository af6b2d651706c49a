package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// dataset is what a sample dataset should produce: the correlation IDs of its rows.
type dataset struct {
	files     []string            // file references
	rows      map[string][]string // file reference → the IDs of its rows
	malformed map[string]bool     // IDs of malformed rows
	valid     map[string]bool     // IDs of valid rows
}

func expected(spec sampleSpec, files int) dataset {
	d := dataset{rows: map[string][]string{}, malformed: map[string]bool{}, valid: map[string]bool{}}
	for i := 1; i <= files; i++ {
		f := genFile(spec, i)
		d.files = append(d.files, f.Ref)
		bad := map[int]bool{}
		for _, k := range f.Malformed {
			bad[k] = true
		}
		for k := 1; k <= f.Rows; k++ {
			id := fmt.Sprintf("%s/%d", f.Ref, k)
			d.rows[f.Ref] = append(d.rows[f.Ref], id)
			if bad[k] {
				d.malformed[id] = true
			} else {
				d.valid[id] = true
			}
		}
	}
	return d
}

// pickSeed finds the first seed whose dataset has a malformed row and, when want404, a file
// that the sample server answers with a permanent 404: the test then sees both kinds.
func pickSeed(t *testing.T, files, rows int, faults float64, want404 bool) uint64 {
	t.Helper()
	for seed := uint64(1); seed < 1000; seed++ {
		spec := sampleSpec{Seed: seed, Rows: rows}
		plan := newFaultPlan(faults, seed)
		has404, hasBad := !want404, false
		for i := 1; i <= files; i++ {
			has404 = has404 || plan.permanent404(spec.ref(i))
			hasBad = hasBad || len(genFile(spec, i).Malformed) > 0
		}
		if has404 && hasBad {
			return seed
		}
	}
	t.Fatal("no seed gives a dataset with a malformed row and a 404")
	return 0
}

// readStore reads the objects of the object store's directory: the uploaded rows by ID. A row
// uploaded twice (a retried batch, or a batch replayed in another composition) must be the
// same row; the store deduplicates by ID.
func readStore(t *testing.T, dir string) map[string]string {
	t.Helper()
	rows := map[string]string{}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue // a temporary file of a PUT in progress
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		assert.Equal(t, objectName(b), e.Name(), "an object is named by its content")
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			var row struct {
				ID string `json:"_id"`
			}
			require.NoError(t, json.Unmarshal(sc.Bytes(), &row), "object %s", e.Name())
			if prev, ok := rows[row.ID]; ok {
				require.Equal(t, prev, sc.Text(), "row %s uploaded twice with different content", row.ID)
			}
			rows[row.ID] = sc.Text()
		}
	}
	return rows
}

func readRecords(t *testing.T, path string) []dlq.Record {
	t.Helper()
	res, err := dlq.ReadFile(path)
	require.NoError(t, err)
	require.Nil(t, res.Torn)
	return res.Records
}

func requireBalanced(t *testing.T, r pipeline.Report) {
	t.Helper()
	require.Zero(t, r.InFlight)
	require.True(t, r.Balanced(), "the report does not add up: %+v", r)
	for _, s := range r.Stages {
		require.Equal(t, s.In, s.Succeeded+s.Filtered+s.DeadLettered+s.Returned+s.Stranded, "stage %s does not add up: %+v", s.Name, s)
	}
}

// testConfig is a small, fast job with many faults.
func testConfig(t *testing.T, files, rows int, faults float64) Config {
	dir := t.TempDir()
	cfg := defaultConfig()
	cfg.DLQ = filepath.Join(dir, "dead.jsonl")
	cfg.Out = filepath.Join(dir, "out")
	cfg.Report = filepath.Join(dir, "report.json")
	cfg.Files, cfg.Rows, cfg.Faults = files, rows, faults
	cfg.Seed = pickSeed(t, files, rows, faults, faults > 0)
	cfg.DownloadTimeout = 300 * time.Millisecond
	cfg.UploadTimeout = time.Second
	cfg.Attempts = 3
	cfg.Backoff = 5 * time.Millisecond
	cfg.BatchSize = 40
	cfg.BatchWait = 20 * time.Millisecond
	cfg.Drain = 2 * time.Second
	cfg.Progress = "plain"
	cfg.Interval = 100 * time.Millisecond
	cfg.server.Slow = 5 * time.Second
	return cfg
}

// checkCovered checks that every row of the dataset was uploaded, or dead-lettered (itself,
// or its file), and that no malformed row was uploaded.
func checkCovered(t *testing.T, d dataset, store map[string]string, recs []dlq.Record) {
	t.Helper()
	dead := map[string]bool{}
	for _, r := range recs {
		dead[r.CorrelationID] = true
	}
	for _, ref := range d.files {
		for _, id := range d.rows[ref] {
			_, up := store[id]
			if d.malformed[id] {
				assert.False(t, up, "malformed row %s was uploaded", id)
			}
			assert.True(t, up || dead[id] || dead[ref], "row %s was neither uploaded nor dead-lettered", id)
		}
	}
	for id := range store {
		assert.True(t, d.valid[id], "the store holds a row %s that is not a valid row of the dataset", id)
	}
}

// checkDone checks the end state once the cause is fixed and the DLQ replayed: every valid row
// uploaded, and only the malformed rows left in the DLQ.
func checkDone(t *testing.T, d dataset, store map[string]string, recs []dlq.Record) {
	t.Helper()
	left := map[string]bool{}
	for _, r := range recs {
		assert.Equal(t, "validate", r.Stage, "record %s: %s", r.CorrelationID, r.Error)
		assert.Equal(t, dlq.ReasonPermanent, r.Reason)
		left[r.CorrelationID] = true
	}
	assert.Equal(t, d.malformed, left, "the DLQ holds exactly the malformed rows")
	missing := 0
	for id := range d.valid {
		if _, ok := store[id]; !ok {
			missing++
		}
	}
	assert.Zero(t, missing, "valid rows not uploaded")
	assert.Len(t, store, len(d.valid))
}

// syncBuffer is a buffer safe for a writer and readers in other goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// The job with faults, then a replay once the faults are gone: every row is uploaded exactly
// once (by correlation ID) or dead-lettered, the report adds up and agrees with the DLQ, and
// the replay leaves only the malformed rows.
func TestEndToEndWithFaultsThenReplay(t *testing.T) {
	cfg := testConfig(t, 24, 30, 0.3)
	d := expected(sampleSpec{Seed: cfg.Seed, Rows: cfg.Rows}, cfg.Files)
	var stdout, stderr syncBuffer
	rep, err := run(context.Background(), cfg, &stdout, &stderr)
	require.NoError(t, err, "stderr: %s", stderr.String())
	requireBalanced(t, rep)

	recs := readRecords(t, cfg.DLQ)
	var stageDead int64
	for _, s := range rep.Stages {
		for _, n := range s.DeadLetters {
			stageDead += n
		}
	}
	assert.EqualValues(t, len(recs), rep.DeadLettered, "the report's dead letters are the records written")
	assert.EqualValues(t, len(recs), stageDead)
	assert.Positive(t, rep.Stages[0].Retries, "the faults were retried")

	store := readStore(t, cfg.Out)
	checkCovered(t, d, store, recs)
	notMalformed := 0
	for _, r := range recs {
		if r.Stage != "validate" {
			notMalformed++
		}
	}
	assert.Positive(t, notMalformed, "the faults left dead letters to replay (at least the 404s)")

	out := stdout.String()
	assert.Regexp(t, `(?m)^\[\s*[0-9.]+m?s\] download\s+\d+/24`, out, "progress lines")
	assert.Contains(t, out, "✓ balanced")
	assert.Regexp(t, `(?m)^download\s+map\s+32\s+24\s`, out, "summary table")

	// The report file: the library's report, in its units.
	var js map[string]any
	b, err := os.ReadFile(cfg.Report)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &js))
	for _, k := range []string{"ingested", "delivered", "filtered", "dead_lettered", "rejected", "stages"} {
		assert.Contains(t, js, k)
	}
	assert.EqualValues(t, len(recs), js["dead_lettered"])
	stages := js["stages"].([]any)
	require.Len(t, stages, 4)
	for i, s := range stages {
		m := s.(map[string]any)
		assert.Equal(t, stageNames[i], m["name"])
		for _, k := range []string{"in", "out", "retries", "dead_letters"} {
			assert.Contains(t, m, k)
		}
	}

	// The cause is fixed: replay everything.
	fixed := cfg
	fixed.Faults = 0
	fixed.Report = ""
	var rout, rerr syncBuffer
	rr, err := replayDLQ(context.Background(), fixed, dlq.Filter{}, false, &rout, &rerr)
	require.NoError(t, err, "stderr: %s", rerr.String())
	requireBalanced(t, rr.Report)
	assert.Len(t, rr.Injected, len(recs))
	assert.Equal(t, len(recs), rr.Completed)
	assert.Contains(t, rout.String(), "dead-lettered again")
	assert.NotContains(t, rout.String(), "not finished (still in the DLQ)", "every injected record completed")

	after := readRecords(t, cfg.DLQ)
	checkDone(t, d, readStore(t, cfg.Out), after)
	for _, r := range after {
		assert.GreaterOrEqual(t, r.Replays, 1, "a malformed row failed again on replay")
	}

	// A second replay has nothing left to fix: the malformed rows fail again.
	rr, err = replayDLQ(context.Background(), fixed, dlq.Filter{Stage: "validate"}, false, &rout, &rerr)
	require.NoError(t, err)
	assert.EqualValues(t, len(d.malformed), rr.DeadLettered)
	checkDone(t, d, readStore(t, cfg.Out), readRecords(t, cfg.DLQ))
}

// Cancelling the run's context drains it; the files not started are parked for a replay, and
// the report still adds up and agrees with the DLQ.
func TestDrainParksTheRestAndReplayFinishes(t *testing.T) {
	cfg := testConfig(t, 60, 10, 0)
	cfg.Latency = 100 * time.Millisecond
	cfg.DownloadWorkers = 4
	cfg.Drain = 200 * time.Millisecond
	d := expected(sampleSpec{Seed: cfg.Seed, Rows: cfg.Rows}, cfg.Files)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(300*time.Millisecond, cancel)
	var stdout, stderr syncBuffer
	rep, err := run(ctx, cfg, &stdout, &stderr)
	require.NoError(t, err)
	requireBalanced(t, rep)
	recs := readRecords(t, cfg.DLQ)
	assert.EqualValues(t, len(recs), rep.DeadLettered)
	assert.Positive(t, rep.Stages[0].DeadLetters[dlq.ReasonShutdown])
	assert.Contains(t, stdout.String(), "were not started")
	checkCovered(t, d, readStore(t, cfg.Out), recs)

	cfg.Latency = 0
	_, err = replayDLQ(context.Background(), cfg, dlq.Filter{}, false, &stdout, &stderr)
	require.NoError(t, err)
	checkDone(t, d, readStore(t, cfg.Out), readRecords(t, cfg.DLQ))
}

// etlBinary builds the program into a temporary directory.
func etlBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to build the program: %v", err)
	}
	bin := filepath.Join(t.TempDir(), "etl")
	out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput()
	require.NoError(t, err, "go build: %s", out)
	return bin
}

// The built program, stopped by SIGTERM mid-run: it drains within the drain timeout, prints
// the summary, and a following `etl dlq replay` completes the job.
func TestSIGTERMDrainsThenReplayCompletes(t *testing.T) {
	bin := etlBinary(t)
	dir := t.TempDir()
	const files, rows = 200, 20
	seed := pickSeed(t, files, rows, 0.1, false)
	drain := 2 * time.Second
	cmd := exec.Command(bin, "-files", fmt.Sprint(files), "-rows", fmt.Sprint(rows), "-seed", fmt.Sprint(seed),
		"-latency", "300ms", "-drain", drain.String(), "-progress", "plain", "-interval", "100ms", "-report", "report.json")
	cmd.Dir = dir
	var stdout, stderr syncBuffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	started := regexp.MustCompile(`(?m)^\[\s*[0-9.]+m?s\] download\s+[1-9]\d*/200`)
	deadline := time.Now().Add(30 * time.Second)
	for !started.MatchString(stdout.String()) {
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			t.Fatalf("no progress within 30s; stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
	signalled := time.Now()
	var err error
	select {
	case err = <-exited:
	case <-time.After(drain + 10*time.Second):
		_ = cmd.Process.Kill()
		<-exited
		t.Fatalf("still running %v after SIGTERM", drain+10*time.Second)
	}
	took := time.Since(signalled)
	t.Logf("exited %v after SIGTERM (drain timeout %v)", took.Round(time.Millisecond), drain)
	assert.Less(t, took, drain+time.Second, "exits within the drain timeout plus a second")
	exitErr, ok := err.(*exec.ExitError)
	require.True(t, ok, "exit: %v; stderr: %s", err, stderr.String())
	assert.Equal(t, 128+int(syscall.SIGTERM), exitErr.ExitCode())
	out := stdout.String()
	assert.Contains(t, out, "✓ balanced", "the summary is printed")
	assert.Regexp(t, `(?m)^upload\s+batch\s`, out)
	assert.Contains(t, stderr.String(), "draining")

	var rep struct {
		DeadLettered    int64 `json:"dead_lettered"`
		ParkedAtIngress int64 `json:"parked_at_ingress"`
		Balanced        bool  `json:"balanced"`
	}
	b, err := os.ReadFile(filepath.Join(dir, "report.json"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &rep))
	assert.True(t, rep.Balanced)
	assert.Positive(t, rep.ParkedAtIngress, "files not started when the drain began are parked")
	recs := readRecords(t, filepath.Join(dir, defaultConfig().DLQ))
	assert.EqualValues(t, len(recs), rep.DeadLettered)
	d := expected(sampleSpec{Seed: seed, Rows: rows}, files)
	checkCovered(t, d, readStore(t, filepath.Join(dir, "etl-out")), recs)

	// The replay, with the faults turned off, completes the job.
	replay := exec.Command(bin, "dlq", "replay", "-faults", "0")
	replay.Dir = dir
	rout, err := replay.CombinedOutput()
	require.NoError(t, err, "%s", rout)
	assert.Contains(t, string(rout), "replayed")
	checkDone(t, d, readStore(t, filepath.Join(dir, "etl-out")), readRecords(t, filepath.Join(dir, defaultConfig().DLQ)))
}

// The exit statuses of bad usage.
func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"-faults", "2"},
		{"-faults", "NaN"}, // (it faulted every request)
		{"-out", ""},       // (it failed as the pipeline, exit 1)
		{"sweep", "-sizes", "1", "-files", "2", "1,2,4"}, // (it ran the sweep, ignoring the argument)
		{"-otel", "jaeger"},
		{"-otel", "otlp=nohost"},
		{"-files", "0"},
		{"-upload", "ftp://x"},
		{"-progress", "fancy"},
		{"-nosuchflag"},
		{"extra"},
		{"-urls", "/no/such/file"},
		{"dlq"},
		{"dlq", "frobnicate"},
		{"dlq", "ls", "-reason", "bogus"},
		{"dlq", "show"},
	} {
		var stdout, stderr bytes.Buffer
		assert.Equal(t, 2, realMain(args, &stdout, &stderr), "%v: %s", args, stderr.String())
		assert.NotEmpty(t, stderr.String(), "%v says what is wrong", args)
	}
	// A signal that cancelled a read before anything started (a replay reading a large DLQ) is a
	// stop, not a failure of the pipeline; without a signal, a cancellation is an error.
	var es bytes.Buffer
	stopped := fmt.Errorf("reading the dead letters: %w", context.Canceled)
	assert.Equal(t, 128+int(syscall.SIGINT), exitCode(&es, "etl dlq replay", stopped, syscall.SIGINT))
	assert.Empty(t, es.String())
	assert.Equal(t, 1, exitCode(&es, "etl dlq replay", stopped, nil))
	assert.Equal(t, 1, exitCode(&es, "etl", errors.New("upload failed"), syscall.SIGTERM), "a real failure during a drain is one")

	var stdout, stderr bytes.Buffer
	assert.Equal(t, 0, realMain([]string{"-h"}, &stdout, &stderr))
	assert.Contains(t, stderr.String(), "-faults")
	assert.Contains(t, stderr.String(), "spawned", "the help explains the units")
}

// A list of real URLs (here, a local server's) instead of the sample dataset, and a real
// upload endpoint (the embedded store of another "run").
func TestURLsAndUploadFlags(t *testing.T) {
	plan := newFaultPlan(0, 1)
	files, err := startLocal(sampleServer(plan, serverOptions{}))
	require.NoError(t, err)
	defer files.Close()
	storeDir := t.TempDir()
	store, err := startLocal(objectStore(storeDir, newFaultPlan(0, 1), serverOptions{}))
	require.NoError(t, err)
	defer store.Close()

	spec := sampleSpec{Seed: 5, Rows: 10}
	list := filepath.Join(t.TempDir(), "urls.txt")
	var lines []string
	for i := 1; i <= 5; i++ {
		lines = append(lines, files.URL+"/"+spec.ref(i))
	}
	lines = append(lines, "# a comment", "", lines[0], files.URL+"/missing.csv")
	require.NoError(t, os.WriteFile(list, []byte(strings.Join(lines, "\n")), 0o644))

	cfg := testConfig(t, 1, 10, 0)
	cfg.URLsFile, cfg.Upload = list, store.URL
	var stdout, stderr bytes.Buffer
	rep, err := run(context.Background(), cfg, &stdout, &stderr)
	require.NoError(t, err)
	requireBalanced(t, rep)
	assert.EqualValues(t, 6, rep.Admitted, "the repeated URL is taken once")
	assert.EqualValues(t, 1, rep.Stages[0].DeadLetters[dlq.ReasonPermanent], "the 404")
	rows := readStore(t, storeDir)
	want := 0
	for i := 1; i <= 5; i++ {
		f := genFile(spec, i)
		want += f.Rows - len(f.Malformed)
	}
	assert.Len(t, rows, want)
	_, err = os.Stat(cfg.Out)
	assert.True(t, os.IsNotExist(err), "no embedded store with -upload")
}

// etl sweep runs the download function at each pool size and reports the curve and a chart.
func TestSweepSubcommand(t *testing.T) {
	svg := filepath.Join(t.TempDir(), "sweep.svg")
	var out, errOut bytes.Buffer
	code := realMain([]string{"sweep", "-files", "24", "-sizes", "1,4", "-latency", "2ms", "-svg", svg}, &out, &errOut)
	require.Equal(t, 0, code, errOut.String())
	assert.Contains(t, out.String(), "workers  items")
	assert.Contains(t, out.String(), "knee:")
	b, err := os.ReadFile(svg)
	require.NoError(t, err)
	assert.Contains(t, string(b), "<svg")
	assert.Equal(t, 2, realMain([]string{"sweep", "-sizes", "0"}, &out, &errOut))
}
