package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
)

// writeDLQ makes a dead-letter file with records of the job's stages.
func writeDLQ(t *testing.T) (string, []dlq.Record) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	f, err := dlq.OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	now := time.Now().UTC()
	mk := func(stage string, reason dlq.Reason, errText, cid string, payload any, age time.Duration) dlq.Record {
		b, err := json.Marshal(payload)
		require.NoError(t, err)
		return dlq.Record{V: dlq.Version, ID: dlq.NewID(), CorrelationID: cid, Pipeline: pipelineName, Stage: stage,
			Payload: b, Reason: reason, Error: errText, Attempts: 1, MaxAttempts: 5,
			FirstAttemptAt: now.Add(-age), FailedAt: now.Add(-age)}
	}
	recs := []dlq.Record{
		mk("download", dlq.ReasonPermanent, `GET "s1-r10/part-0001.csv": 404 Not Found`, "s1-r10/part-0001.csv",
			FileRef{URL: "s1-r10/part-0001.csv"}, 2*time.Hour),
		mk("download", dlq.ReasonTimeout, `attempt exceeded its timeout of 2s: GET "s1-r10/part-0002.csv": context deadline exceeded`,
			"s1-r10/part-0002.csv", FileRef{URL: "s1-r10/part-0002.csv"}, time.Minute),
		mk("validate", dlq.ReasonPermanent, `line 7: column "amount": "N/A" is not a number`, "s1-r10/part-0003.csv/6",
			Row{File: "s1-r10/part-0003.csv", Line: 7, Header: sampleHeader, Fields: []string{"1", "Ada", "a@b", "N/A", "EUR", "2025-01-01T00:00:00Z"}}, time.Minute),
		mk("validate", dlq.ReasonPermanent, `line 9: column "amount": "12x" is not a number`, "s1-r10/part-0004.csv/8",
			Row{File: "s1-r10/part-0004.csv", Line: 9}, time.Minute),
	}
	for _, r := range recs {
		require.NoError(t, f.Write(context.Background(), r))
	}
	return path, recs
}

func dlqRun(args ...string) (int, string, string) {
	var stdout, stderr bytes.Buffer
	code := realMain(append([]string{"dlq"}, args...), &stdout, &stderr)
	return code, stdout.String(), stderr.String()
}

func TestDLQList(t *testing.T) {
	path, recs := writeDLQ(t)
	code, out, errOut := dlqRun("ls", "-dlq", path)
	require.Equal(t, 0, code, errOut)
	for _, h := range []string{"ID", "FAILED", "STAGE", "REASON", "ATTEMPTS", "ERROR", "CORRELATION ID"} {
		assert.Contains(t, out, h)
	}
	for _, r := range recs {
		assert.Contains(t, out, r.ID)
		assert.Contains(t, out, r.CorrelationID)
	}
	assert.Contains(t, out, "4 of 4 records")

	for _, c := range []struct {
		args []string
		want []int
	}{
		{[]string{"-stage", "validate"}, []int{2, 3}},
		{[]string{"-reason", "timeout"}, []int{1}},
		{[]string{"-match", "NOT FOUND"}, []int{0}},
		{[]string{"-since", "1h"}, []int{1, 2, 3}},
		{[]string{"-stage", "download", "-reason", "permanent"}, []int{0}},
	} {
		code, out, errOut := dlqRun(append([]string{"ls", "-dlq", path}, c.args...)...)
		require.Equal(t, 0, code, errOut)
		for i, r := range recs {
			if contains(c.want, i) {
				assert.Contains(t, out, r.ID, "%v", c.args)
			} else {
				assert.NotContains(t, out, r.ID, "%v", c.args)
			}
		}
	}
}

func contains(xs []int, x int) bool {
	for _, y := range xs {
		if y == x {
			return true
		}
	}
	return false
}

func TestDLQShowAndStats(t *testing.T) {
	path, recs := writeDLQ(t)
	code, out, errOut := dlqRun("show", recs[2].ID[:20], "-dlq", path) // a prefix, and a flag after it
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, recs[2].ID)
	assert.Contains(t, out, "stage:           validate")
	assert.Contains(t, out, "payload:\n  {\n    \"file\": \"s1-r10/part-0003.csv\",\n    \"line\": 7,", "the payload is pretty-printed")

	code, _, errOut = dlqRun("show", "NOSUCHID", "-dlq", path)
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "no record")

	code, out, errOut = dlqRun("stats", "-dlq", path)
	require.Equal(t, 0, code, errOut)
	assert.Regexp(t, `download\s+1\s+1\s+2`, out, "stage × reason: download has 1 permanent and 1 timeout")
	assert.Regexp(t, `validate\s+2\s+0\s+2`, out)
	assert.Regexp(t, `2\s+validate\s+line N: column "…": "…" is not a number`, out, "the two amount errors are one kind")
}

func TestDLQPurge(t *testing.T) {
	path, recs := writeDLQ(t)
	code, out, _ := dlqRun("purge", "-dlq", path, "-stage", "validate")
	assert.Equal(t, 2, code, "purge asks for -yes")
	assert.Contains(t, out, "would purge 2 of 4")
	assert.Len(t, readRecords(t, path), 4, "nothing deleted without -yes")

	code, out, errOut := dlqRun("purge", "-dlq", path, "-stage", "validate", "-yes")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "purged 2 records; 2 remain")
	left := readRecords(t, path)
	require.Len(t, left, 2)
	assert.Equal(t, recs[0].ID, left[0].ID)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.Equal(t, 2, bytes.Count(b, []byte("\n")), "compacted: no tombstones left")

	code, out, _ = dlqRun("purge", "-dlq", path, "-match", "nothing like this", "-yes")
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "nothing to purge")
}

func TestDLQReplayDryRun(t *testing.T) {
	path, _ := writeDLQ(t)
	code, out, errOut := dlqRun("replay", "-dlq", path, "-dry-run", "-stage", "download")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "would replay 2 of 2")
	assert.Len(t, readRecords(t, path), 4)

	// A payload that does not decode as the stage's input is skipped, and stays.
	f, err := dlq.OpenFile(path)
	require.NoError(t, err)
	bad := dlq.Record{V: dlq.Version, ID: dlq.NewID(), Pipeline: pipelineName, Stage: "validate", Payload: []byte(`"not a row"`),
		Reason: dlq.ReasonPermanent, Error: "x", FailedAt: time.Now()}
	require.NoError(t, f.Write(context.Background(), bad))
	require.NoError(t, f.Close())
	code, out, errOut = dlqRun("replay", "-dlq", path, "-dry-run", "-stage", "validate")
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "would replay 2 of 3")
	assert.Contains(t, out, "skipped 1 records")
	assert.Contains(t, out, bad.ID)
}

// A missing or corrupt file is a clear error and exit status 1, never a panic; a torn last
// line is a warning.
func TestDLQMissingAndCorruptFile(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "none.jsonl")
	cmds := [][]string{{"ls"}, {"stats"}, {"show", "01ABC"}, {"replay"}, {"replay", "-dry-run"}, {"purge", "-yes"}}
	for _, c := range cmds {
		code, _, errOut := dlqRun(append(c, "-dlq", missing)...)
		assert.Equal(t, 1, code, "%v", c)
		assert.Contains(t, errOut, "no dead-letter file at "+missing, "%v", c)
	}
	_, err := os.Stat(missing)
	assert.True(t, os.IsNotExist(err), "no command creates the file")

	path, _ := writeDLQ(t)
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	lines := strings.SplitAfter(string(b), "\n")
	corrupt := filepath.Join(dir, "corrupt.jsonl")
	require.NoError(t, os.WriteFile(corrupt, []byte(lines[0]+"{\"v\":1,\"id\":\"x\"\n"+lines[1]), 0o644))
	for _, c := range cmds {
		code, _, errOut := dlqRun(append(c, "-dlq", corrupt)...)
		assert.Equal(t, 1, code, "%v", c)
		assert.Contains(t, errOut, "corrupt", "%v", c)
		assert.Contains(t, errOut, "line 2", "%v: the bad line is named", c)
	}

	torn := filepath.Join(dir, "torn.jsonl")
	require.NoError(t, os.WriteFile(torn, []byte(lines[0]+`{"v":1,"id":"half`), 0o644))
	code, out, errOut := dlqRun("ls", "-dlq", torn)
	assert.Equal(t, 0, code)
	assert.Contains(t, out, "1 of 1 records")
	assert.Contains(t, errOut, "incomplete line")

	// A file in use by a run (or replay) cannot be replayed or purged meanwhile.
	f, err := dlq.OpenFile(path)
	require.NoError(t, err)
	defer f.Close()
	code, _, errOut = dlqRun("purge", "-dlq", path, "-yes")
	assert.Equal(t, 1, code)
	assert.Contains(t, errOut, "in use")
	code, _, _ = dlqRun("ls", "-dlq", path)
	assert.Equal(t, 0, code, "reading does not need the lock")
	code, out, errOut = dlqRun("replay", "-dry-run", "-dlq", path)
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "would replay", "a dry run only reads")
	code, out, errOut = dlqRun("replay", "-stage", "no-such-stage", "-dlq", path)
	assert.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "no records to replay", "a replay that selects nothing only reads")
	code, out, _ = dlqRun("purge", "-dlq", path)
	assert.Equal(t, 2, code)
	assert.Contains(t, out, "would purge 4 of 4", "the preview only reads")
}

// The previews (replay -dry-run, purge without -yes) and the commands that select nothing change
// nothing: not even a torn last line, which opening the file as its writer would cut. They
// warn about it as ls does.
func TestDLQPreviewsKeepATornTail(t *testing.T) {
	for _, c := range []struct {
		args    []string
		code    int
		wantOut string
	}{
		{[]string{"replay", "-dry-run", "-stage", "download"}, 0, "would replay 2 of 2"},
		{[]string{"replay", "-stage", "no-such-stage"}, 0, "no records to replay (4 in"},
		{[]string{"purge", "-stage", "validate"}, 2, "would purge 2 of 4"},
		{[]string{"purge", "-match", "nothing like this", "-yes"}, 0, "nothing to purge"},
		{[]string{"purge", "-match", "nothing like this"}, 0, "nothing to purge"}, // (exit 2 only when it would delete)
	} {
		t.Run(strings.Join(c.args, " "), func(t *testing.T) {
			path, _ := writeDLQ(t)
			fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
			require.NoError(t, err)
			_, err = fh.WriteString(`{"v":1,"id":"01TORN`)
			require.NoError(t, err)
			require.NoError(t, fh.Close())
			want, err := os.ReadFile(path)
			require.NoError(t, err)

			code, out, errOut := dlqRun(append(c.args, "-dlq", path)...)
			assert.Equal(t, c.code, code, errOut)
			assert.Contains(t, out, c.wantOut)
			assert.Contains(t, errOut, "ends with an incomplete line (19 bytes at offset", "the torn tail is reported, as ls does")
			got, err := os.ReadFile(path)
			require.NoError(t, err)
			assert.Equal(t, string(want), string(got), "the file changed")
		})
	}
}

// A negative -limit, or a -top below 1, is bad usage (exit status 2, as -since -1h is), not
// "list everything" with a false "… and N more kinds".
func TestDLQTopAndLimitMustBePositive(t *testing.T) {
	path, _ := writeDLQ(t)
	for _, c := range []struct {
		args []string
		msg  string
	}{
		{[]string{"stats", "-top", "-1"}, "etl dlq stats: -top -1: give a positive number\n"},
		{[]string{"stats", "-top", "0"}, "etl dlq stats: -top 0: give a positive number\n"},
		{[]string{"ls", "-limit", "-3"}, "etl dlq ls: -limit -3: give a positive number, or 0 for all\n"},
	} {
		code, out, errOut := dlqRun(append(c.args, "-dlq", path)...)
		assert.Equal(t, 2, code, "%v", c.args)
		assert.Equal(t, c.msg, errOut, "%v", c.args)
		assert.Empty(t, out, "%v lists nothing", c.args)
	}

	code, out, errOut := dlqRun("ls", "-limit", "0", "-dlq", path)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "4 of 4 records", "-limit 0 lists all")
	code, out, errOut = dlqRun("ls", "-limit", "1", "-dlq", path)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "1 of 4 records in "+path+" (4 match; -limit 1)")
	code, out, errOut = dlqRun("stats", "-top", "1", "-dlq", path)
	require.Equal(t, 0, code, errOut)
	assert.Contains(t, out, "… and 2 more kinds", "3 kinds of error, 1 shown")
}

// tallyRow returns the row of stage in replay's tally table ("stage  succeeded  partly
// dead-lettered again  not finished"), keyed by column header.
func tallyRow(t *testing.T, out, stage string) map[string]string {
	t.Helper()
	cols := regexp.MustCompile(`\s{2,}`)
	var header []string
	for _, l := range strings.Split(out, "\n") {
		cells := cols.Split(strings.TrimSpace(l), -1)
		switch {
		case len(cells) > 1 && cells[0] == "stage" && cells[1] == "succeeded":
			header = cells
		case header != nil && cells[0] == stage && len(cells) == len(header):
			row := map[string]string{}
			for i, h := range header {
				row[h] = cells[i]
			}
			return row
		}
	}
	require.FailNow(t, "no tally row", "stage %s in:\n%s", stage, out)
	return nil
}

// A replay that is stopped (SIGINT/SIGTERM, here its context) while its downloads are in
// flight hands the items back, so their records stay in the DLQ: the tally reports them as not
// finished, not as succeeded (it counted every injected record that was not dead-lettered
// again as a success).
func TestDLQStoppedReplayReportsRecordsLeftAsNotFinished(t *testing.T) {
	path, _ := writeDLQ(t) // two download records of sample files, two validate records
	cfg := testConfig(t, 1, 10, 0)
	cfg.DLQ = path
	cfg.Latency = 5 * time.Second          // every sample download is slow
	cfg.DownloadTimeout = 10 * time.Second // and no attempt times out before the stop
	cfg.Drain = 50 * time.Millisecond
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(time.Second, cancel)
	var stdout, stderr syncBuffer
	rr, err := replayDLQ(ctx, cfg, dlq.Filter{Stage: "download"}, false, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	out := stdout.String()
	require.Len(t, rr.Injected, 2, out)
	require.Len(t, readRecords(t, path), 4, "the stopped replay left both download records in the DLQ")
	assert.Zero(t, rr.Completed)
	assert.Empty(t, rr.CompletedIDs)
	assert.Contains(t, out, "0 completed (left the DLQ), 2 not finished (still in the DLQ)")
	row := tallyRow(t, out, "download")
	assert.Equal(t, "0", row["succeeded"], "records still in the DLQ are reported as succeeded: %v", row)
	assert.Equal(t, "0", row["dead-lettered again"], "%v", row)
	assert.Equal(t, "2", row["not finished"], "%v", row)
}
