package main

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
)

const dlqUsage = `Usage: etl dlq COMMAND [flags]

Commands:
  ls [filters]            list dead letters: id, time, stage, reason, attempts, error, correlation ID
  show ID                 one record in full, payload pretty-printed (a unique ID prefix will do)
  stats [filters]         counts by stage × reason, and the most common errors
  replay [filters]        replay dead letters into the stages that failed them; -dry-run previews.
                          Starts the embedded servers unless -upload is given; -faults 0 once the
                          cause is fixed
  purge [filters] -yes    delete dead letters (without -yes: say what would be deleted, and
                          exit 2 if that is anything)

Filters: -stage NAME  -reason REASON  -match TEXT (in the error, any case)  -since DURATION
Every command takes -dlq PATH (default etl-dead-letters.jsonl); "etl dlq COMMAND -h" lists its flags.
A missing or corrupt file is an error (exit status 1), and so is a file locked by a run for the
commands that write it (replay, purge -yes); ls, show, stats and the previews only read it.
`

func dlqMain(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, dlqUsage)
		return 2
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "ls", "show", "stats", "replay", "purge":
	case "help", "-h", "-help", "--help":
		fmt.Fprint(stdout, dlqUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "etl dlq: unknown command %q\n\n%s", cmd, dlqUsage)
		return 2
	}
	prog := "etl dlq " + cmd
	cfg := defaultConfig()
	var ff filterFlags
	fset := flag.NewFlagSet(prog, flag.ContinueOnError)
	fset.SetOutput(stderr)
	var (
		limit, top int
		dryRun     bool
		yes        bool
	)
	switch cmd {
	case "replay":
		registerJobFlags(fset, &cfg, true)
		fset.BoolVar(&dryRun, "dry-run", false, "list what would be replayed, and change nothing")
	default:
		fset.StringVar(&cfg.DLQ, "dlq", cfg.DLQ, "dead-letter `file`")
	}
	if cmd != "show" {
		ff.register(fset)
	}
	switch cmd {
	case "ls":
		fset.IntVar(&limit, "limit", 0, "list at most `N` records, the most recent (0: all)")
	case "stats":
		fset.IntVar(&top, "top", 10, "show the `N` most common errors")
	case "purge":
		fset.BoolVar(&yes, "yes", false, "really delete the selected records")
	}
	pos, err := parseInterspersed(fset, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if want := map[bool]int{true: 1, false: 0}[cmd == "show"]; len(pos) != want {
		if want == 1 {
			fmt.Fprintf(stderr, "%s: give one record ID (etl dlq ls lists them)\n", prog)
		} else {
			fmt.Fprintf(stderr, "%s: unexpected argument %q\n", prog, pos[0])
		}
		return 2
	}
	filter, err := ff.filter(time.Now())
	if err != nil {
		return exitCode(stderr, prog, err, nil)
	}
	switch {
	case cmd == "ls" && limit < 0:
		return exitCode(stderr, prog, usagef("-limit %d: give a positive number, or 0 for all", limit), nil)
	case cmd == "stats" && top < 1:
		return exitCode(stderr, prog, usagef("-top %d: give a positive number", top), nil)
	}
	switch cmd {
	case "ls":
		err = dlqList(stdout, stderr, cfg.DLQ, filter, limit)
	case "show":
		err = dlqShow(stdout, stderr, cfg.DLQ, pos[0])
	case "stats":
		err = dlqStats(stdout, stderr, cfg.DLQ, filter, top)
	case "purge":
		err = dlqPurge(stdout, stderr, cfg.DLQ, filter, yes)
	case "replay":
		ctx, signalled, stop := withSignals(context.Background(), stderr, cfg.Drain)
		defer stop()
		_, err = replayDLQ(ctx, cfg, filter, dryRun, stdout, stderr)
		return exitCode(stderr, prog, err, signalled())
	}
	return exitCode(stderr, prog, err, nil)
}

// filterFlags are the record filters the dlq commands share.
type filterFlags struct {
	stage, reason, match string
	since                time.Duration
}

func (f *filterFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.stage, "stage", "", "only records of stage `NAME` (download, transform, validate, upload)")
	fs.StringVar(&f.reason, "reason", "", "only records of `REASON`: error, permanent, timeout, panic, overflow, shutdown, circuit_open")
	fs.StringVar(&f.match, "match", "", "only records whose error contains `TEXT` (any case)")
	fs.DurationVar(&f.since, "since", 0, "only records that failed in the last `DURATION` (e.g. 1h)")
}

func (f filterFlags) filter(now time.Time) (dlq.Filter, error) {
	flt := dlq.Filter{Stage: f.stage, Reason: dlq.Reason(f.reason), Match: f.match}
	if f.reason != "" && !flt.Reason.Valid() {
		return flt, usagef("-reason %q: give one of error, permanent, timeout, panic, overflow, shutdown, circuit_open", f.reason)
	}
	if f.since < 0 {
		return flt, usagef("-since %v: give a positive duration", f.since)
	}
	if f.since > 0 {
		flt.Since = now.Add(-f.since)
	}
	return flt, nil
}

// dlqFileError explains a dead-letter file that cannot be used.
func dlqFileError(path string, err error) error {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("no dead-letter file at %s: run the job first, or give its path with -dlq PATH", path)
	case errors.Is(err, dlq.ErrCorrupt):
		return fmt.Errorf("the dead-letter file is corrupt: %w\n(each line is one JSON record; repair or remove that line, then try again)", err)
	case errors.Is(err, dlq.ErrLocked):
		return fmt.Errorf("the dead-letter file %s is in use by a run or a replay; try again when it is over: %w", path, err)
	}
	return err
}

// readDLQ reads the dead-letter file without locking it.
func readDLQ(stderr io.Writer, path string) ([]dlq.Record, error) {
	res, err := dlq.ReadFile(path)
	if err != nil {
		return nil, dlqFileError(path, err)
	}
	if t := res.Torn; t != nil {
		fmt.Fprintf(stderr, "warning: %s ends with an incomplete line (%d bytes at offset %d, line %d): a write in progress or a crash; it is ignored\n",
			path, t.Bytes, t.Offset, t.Line)
	}
	return res.Records, nil
}

// openDLQ opens the dead-letter file as its (only) writer; it must exist. Opening it cuts a
// torn last line away (dlq.OpenFile), so the commands that only read or preview (ls, show,
// stats, replay -dry-run, purge without -yes, and a replay that selects nothing) use readDLQ
// instead.
func openDLQ(path string) (*dlq.File, error) {
	if _, err := os.Stat(path); err != nil {
		return nil, dlqFileError(path, err)
	}
	f, err := dlq.OpenFile(path)
	if err != nil {
		return nil, dlqFileError(path, err)
	}
	return f, nil
}

// oneLine shortens s to one line of at most n runes.
func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if utf8.RuneCountInString(s) > n {
		r := []rune(s)
		s = string(r[:n-1]) + "…"
	}
	return s
}

func localTime(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format("2006-01-02 15:04:05")
}

func dlqList(stdout, stderr io.Writer, path string, f dlq.Filter, limit int) error {
	all, err := readDLQ(stderr, path)
	if err != nil {
		return err
	}
	sel := f.Select(all)
	shown := sel
	if limit > 0 && len(shown) > limit {
		shown = shown[len(shown)-limit:]
	}
	t := newTable([]string{"ID", "FAILED", "STAGE", "REASON", "ATTEMPTS", "ERROR", "CORRELATION ID"}, 4)
	for _, r := range shown {
		t.add(r.ID, localTime(r.FailedAt), r.Stage, string(r.Reason), fmt.Sprintf("%d/%d", r.Attempts, r.MaxAttempts),
			oneLine(r.Error, 72), r.CorrelationID)
	}
	if len(shown) > 0 {
		t.write(stdout, "")
	}
	fmt.Fprintf(stdout, "%d of %d records in %s", len(shown), len(all), path)
	if len(shown) < len(sel) {
		fmt.Fprintf(stdout, " (%d match; -limit %d)", len(sel), limit)
	}
	fmt.Fprintln(stdout)
	return nil
}

func dlqShow(stdout, stderr io.Writer, path, id string) error {
	all, err := readDLQ(stderr, path)
	if err != nil {
		return err
	}
	var found []dlq.Record
	for _, r := range all {
		if strings.EqualFold(r.ID, id) {
			found = []dlq.Record{r}
			break
		}
		if strings.HasPrefix(strings.ToUpper(r.ID), strings.ToUpper(id)) {
			found = append(found, r)
		}
	}
	switch {
	case len(found) == 0:
		return fmt.Errorf("no record %q in %s (etl dlq ls lists them)", id, path)
	case len(found) > 1:
		return fmt.Errorf("%d records start with %q; give more of the ID", len(found), id)
	}
	r := found[0]
	kv := newTable([]string{"id:", r.ID})
	add := func(k, v string) {
		if v != "" {
			kv.add(k+":", v)
		}
	}
	add("correlation id", r.CorrelationID)
	add("pipeline", r.Pipeline)
	add("stage", r.Stage)
	add("reason", string(r.Reason))
	add("error", r.Error)
	add("error type", r.ErrorType)
	add("attempts", fmt.Sprintf("%d of %d", r.Attempts, r.MaxAttempts))
	add("replays", strconv.Itoa(r.Replays))
	add("first attempt", localTime(r.FirstAttemptAt))
	add("failed", localTime(r.FailedAt))
	add("source", r.Source)
	add("trace id", r.TraceID)
	add("span id", r.SpanID)
	add("traceparent", r.Traceparent)
	for _, k := range slices.Sorted(maps.Keys(r.Headers)) {
		add("header "+k, r.Headers[k])
	}
	kv.write(stdout, "")
	fmt.Fprintln(stdout, "payload:")
	fmt.Fprintln(stdout, indent(prettyPayload(r), "  "))
	if r.Stack != "" {
		fmt.Fprintln(stdout, "stack:")
		fmt.Fprintln(stdout, indent(strings.TrimRight(r.Stack, "\n"), "  "))
	}
	return nil
}

// prettyPayload renders a record's payload: indented JSON, or the bytes of a base64 payload
// when they are text.
func prettyPayload(r dlq.Record) string {
	b, err := r.PayloadBytes()
	if err != nil {
		return "(unreadable: " + err.Error() + ")"
	}
	if len(b) == 0 {
		return "null"
	}
	if r.PayloadEncoding == "" {
		var out bytes.Buffer
		if json.Indent(&out, b, "", "  ") == nil {
			return out.String()
		}
		return string(b)
	}
	if utf8.Valid(b) {
		return fmt.Sprintf("(%s, %d bytes)\n%s", r.PayloadEncoding, len(b), b)
	}
	return fmt.Sprintf("(%s, %d bytes of binary data)", r.PayloadEncoding, len(b))
}

func indent(s, prefix string) string {
	return prefix + strings.ReplaceAll(s, "\n", "\n"+prefix)
}

// errorPatterns turn error texts into their common shape: quoted values, addresses and
// numbers of lines and columns vary from item to item.
var errorPatterns = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`"(?:[^"\\]|\\.)*"`), `"…"`},
	{regexp.MustCompile(`\b\d{1,3}(?:\.\d{1,3}){3}:\d+\b`), `ADDR`},
	{regexp.MustCompile(`\b(line|column|fields, but the header has) \d+`), `$1 N`},
	{regexp.MustCompile(`^line N: \d+ fields`), `line N: N fields`},
}

func errorShape(s string) string {
	s = oneLine(s, 500)
	for _, p := range errorPatterns {
		s = p.re.ReplaceAllString(s, p.with)
	}
	return s
}

// stageReasonTable counts records by stage × reason.
func stageReasonTable(w io.Writer, recs []dlq.Record) {
	counts := map[string]map[dlq.Reason]int{}
	reasonSet := map[dlq.Reason]bool{}
	var stages []string
	for _, r := range recs {
		if counts[r.Stage] == nil {
			counts[r.Stage] = map[dlq.Reason]int{}
			stages = append(stages, r.Stage)
		}
		counts[r.Stage][r.Reason]++
		reasonSet[r.Reason] = true
	}
	order := map[string]int{}
	for i, s := range stageNames {
		order[s] = i + 1
	}
	slices.SortFunc(stages, func(a, b string) int {
		return cmp.Or(cmp.Compare(cmp.Or(order[a], 99), cmp.Or(order[b], 99)), cmp.Compare(a, b))
	})
	reasons := slices.Sorted(maps.Keys(reasonSet))
	header := []string{"stage"}
	right := []int{}
	for i, r := range reasons {
		header = append(header, string(r))
		right = append(right, i+1)
	}
	header = append(header, "total")
	right = append(right, len(reasons)+1)
	t := newTable(header, right...)
	colTotals := make([]int, len(reasons))
	for _, s := range stages {
		row := []string{s}
		total := 0
		for i, r := range reasons {
			n := counts[s][r]
			row = append(row, strconv.Itoa(n))
			total += n
			colTotals[i] += n
		}
		t.add(append(row, strconv.Itoa(total))...)
	}
	row := []string{"total"}
	for _, n := range colTotals {
		row = append(row, strconv.Itoa(n))
	}
	t.add(append(row, strconv.Itoa(len(recs)))...)
	t.write(w, "  ")
}

func dlqStats(stdout, stderr io.Writer, path string, f dlq.Filter, top int) error {
	all, err := readDLQ(stderr, path)
	if err != nil {
		return err
	}
	sel := f.Select(all)
	fmt.Fprintf(stdout, "%d of %d records in %s", len(sel), len(all), path)
	if len(sel) == 0 {
		fmt.Fprintln(stdout)
		return nil
	}
	oldest, newest := sel[0].FailedAt, sel[0].FailedAt
	replayed := 0
	for _, r := range sel {
		if r.FailedAt.Before(oldest) {
			oldest = r.FailedAt
		}
		if r.FailedAt.After(newest) {
			newest = r.FailedAt
		}
		if r.Replays > 0 {
			replayed++
		}
	}
	fmt.Fprintf(stdout, ", failed %s … %s; %d replayed before\n\nby stage and reason:\n", localTime(oldest), localTime(newest), replayed)
	stageReasonTable(stdout, sel)

	type group struct {
		shape  string
		n      int
		stages map[string]bool
	}
	groups := map[string]*group{}
	for _, r := range sel {
		s := errorShape(r.Error)
		g := groups[s]
		if g == nil {
			g = &group{shape: s, stages: map[string]bool{}}
			groups[s] = g
		}
		g.n++
		g.stages[r.Stage] = true
	}
	gs := slices.SortedFunc(maps.Values(groups), func(a, b *group) int { return cmp.Or(b.n-a.n, cmp.Compare(a.shape, b.shape)) })
	fmt.Fprintf(stdout, "\nmost common errors (quoted values, addresses and line numbers elided):\n")
	t := newTable([]string{"count", "stage", "error"}, 0)
	for i, g := range gs {
		if i == top {
			break
		}
		t.add(strconv.Itoa(g.n), strings.Join(slices.Sorted(maps.Keys(g.stages)), ","), oneLine(g.shape, 100))
	}
	t.write(stdout, "  ")
	if len(gs) > top {
		fmt.Fprintf(stdout, "  … and %d more kinds\n", len(gs)-top)
	}
	return nil
}

func dlqPurge(stdout, stderr io.Writer, path string, f dlq.Filter, yes bool) error {
	// Read first, without the lock: the preview (no -yes) and a purge that selects nothing
	// change nothing, not even a torn last line, which opening the file as its writer cuts.
	all, err := readDLQ(stderr, path)
	if err != nil {
		return err
	}
	sel := f.Select(all)
	if len(sel) == 0 {
		fmt.Fprintf(stdout, "no records match (%d in %s); nothing to purge\n", len(all), path)
		return nil
	}
	if !yes {
		fmt.Fprintf(stdout, "would purge %d of %d records in %s:\n", len(sel), len(all), path)
		stageReasonTable(stdout, sel)
		return usagef("nothing deleted: add -yes to purge these %d records", len(sel))
	}
	store, err := openDLQ(path)
	if err != nil {
		return err
	}
	defer store.Close()
	ctx := context.Background()
	// Select again under the lock: a run may have written to the file since it was read.
	all, err = store.Records(ctx)
	if err != nil {
		return dlqFileError(path, err)
	}
	sel = f.Select(all)
	if len(sel) == 0 {
		fmt.Fprintf(stdout, "no records match (%d in %s); nothing to purge\n", len(all), path)
		return nil
	}
	ids := make([]string, len(sel))
	for i, r := range sel {
		ids[i] = r.ID
	}
	if err := store.Delete(ctx, ids...); err != nil {
		return err
	}
	if err := store.Compact(ctx); err != nil {
		return fmt.Errorf("the records are deleted, but compacting %s failed: %w", path, err)
	}
	fmt.Fprintf(stdout, "purged %d records; %d remain in %s\n", len(sel), len(all)-len(sel), path)
	return nil
}

// needsSampleServer reports whether a download record refers to a sample file.
func needsSampleServer(r dlq.Record) bool {
	if r.Stage != stageNames[0] {
		return false
	}
	var ref FileRef
	if json.Unmarshal(r.Payload, &ref) != nil {
		return false
	}
	u, err := url.Parse(ref.URL)
	return err == nil && !u.IsAbs()
}

// replayDLQ replays the selected dead letters into the stages that failed them, and prints
// what succeeded, what was dead-lettered again, and what a stopped replay left in the DLQ.
func replayDLQ(ctx context.Context, cfg Config, filter dlq.Filter, dryRun bool, stdout, stderr io.Writer) (pipeline.ReplayReport, error) {
	var rr pipeline.ReplayReport
	cfg.Files = 1 // the dataset comes from the records
	if err := cfg.check(); err != nil {
		return rr, err
	}
	// The file is read without opening it as its writer, which would cut a torn last line and
	// take its lock: a dry run, or a replay that selects nothing, changes nothing. A replay opens
	// it, holds its lock until it is over, and selects again from what it reads then.
	recs, err := readDLQ(stderr, cfg.DLQ)
	if err != nil {
		return rr, err
	}
	filter.Pipeline = pipelineName
	sel := filter.Select(recs)
	var file *dlq.File
	store := dlq.Store(readOnlyStore(recs))
	if len(sel) > 0 && !dryRun {
		if file, err = openDLQ(cfg.DLQ); err != nil {
			return rr, err
		}
		defer file.Close()
		store = file
		if recs, err = file.Records(ctx); err != nil {
			return rr, dlqFileError(cfg.DLQ, err)
		}
		sel = filter.Select(recs)
	}
	if len(sel) == 0 {
		fmt.Fprintf(stdout, "no records to replay (%d in %s, none of pipeline %q matches)\n", len(recs), cfg.DLQ, pipelineName)
		return rr, nil
	}
	byID := make(map[string]dlq.Record, len(sel))
	withSample := false
	for _, r := range sel {
		byID[r.ID] = r
		withSample = withSample || needsSampleServer(r)
	}

	shutdownTracing, err := setupTracing(ctx, cfg.Otel, stdout)
	if err != nil {
		return rr, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = shutdownTracing(sctx)
	}()

	ep := &endpoints{}
	if !dryRun {
		svc, err := startServices(cfg, withSample)
		if err != nil {
			return rr, err
		}
		defer svc.close()
		ep = svc.ep
		fmt.Fprintf(stdout, "replaying %d records of %s into the stages that failed them\n", len(sel), cfg.DLQ)
		for _, d := range svc.description {
			fmt.Fprintf(stdout, "     %s\n", d)
		}
	}
	var (
		mu    sync.Mutex
		again []dlq.Record
	)
	p, err := buildPipeline(cfg, ep,
		pipeline.WithDLQ(store),
		pipeline.WithDrainTimeout(cfg.Drain),
		pipeline.WithLogger(newLogger(stderr, cfg.LogLevel)),
		pipeline.OnDeadLetter(func(r dlq.Record) {
			mu.Lock()
			again = append(again, r)
			mu.Unlock()
		}))
	if err != nil {
		return rr, err
	}
	rr, err = p.Replay(ctx, store, pipeline.ReplayOptions{Filter: filter, DryRun: dryRun})
	if err != nil && len(rr.Injected) == 0 {
		return rr, err
	}
	if dryRun {
		fmt.Fprintf(stdout, "dry run: would replay %d of %d selected records:\n", len(rr.Injected), rr.Selected)
		var inj []dlq.Record
		for _, id := range rr.Injected {
			inj = append(inj, byID[id])
		}
		stageReasonTable(stdout, inj)
		printSkipped(stdout, rr.Skipped)
		return rr, nil
	}

	// Which injected records succeeded, which failed again (and which succeeded except for
	// some of the rows they were split into), and which are not finished: a stopped replay
	// hands its items in flight back, and their records stay in the DLQ.
	mu.Lock()
	defer mu.Unlock()
	type tally struct{ ok, partly, failed, left int }
	failedSelf, failedBelow := map[string]bool{}, map[string]bool{}
	for _, a := range again {
		failedSelf[a.CorrelationID] = true
		// A flat-map's outputs continue its ID as "<id>/<n>": mark every ancestor.
		for id := a.CorrelationID; ; {
			i := strings.LastIndexByte(id, '/')
			if i < 0 {
				break
			}
			id = id[:i]
			failedBelow[id] = true
		}
	}
	completed := make(map[string]bool, len(rr.CompletedIDs))
	for _, id := range rr.CompletedIDs {
		completed[id] = true
	}
	perStage := map[string]*tally{}
	for _, id := range rr.Injected {
		rec := byID[id]
		t := perStage[rec.Stage]
		if t == nil {
			t = &tally{}
			perStage[rec.Stage] = t
		}
		switch {
		case !completed[id]:
			t.left++
		case failedSelf[rec.CorrelationID]:
			t.failed++
		case failedBelow[rec.CorrelationID]:
			t.partly++
		default:
			t.ok++
		}
	}
	fmt.Fprintf(stdout, "\nreplayed %d of %d selected records; %d completed (left the DLQ)", len(rr.Injected), rr.Selected, rr.Completed)
	if n := len(rr.Injected) - rr.Completed; n > 0 {
		fmt.Fprintf(stdout, ", %d not finished (still in the DLQ)", n)
	}
	fmt.Fprintln(stdout)
	t := newTable([]string{"stage", "succeeded", "partly", "dead-lettered again", "not finished"}, 1, 2, 3, 4)
	for _, s := range slices.Sorted(maps.Keys(perStage)) {
		x := perStage[s]
		t.add(s, strconv.Itoa(x.ok), strconv.Itoa(x.partly), strconv.Itoa(x.failed), strconv.Itoa(x.left))
	}
	t.write(stdout, "  ")
	fmt.Fprintln(stdout, "  (partly: the item succeeded, but some of the rows it was split into were dead-lettered;")
	fmt.Fprintln(stdout, "  not finished: the replay was stopped first, the record is still in the DLQ: replay it again)")
	printSkipped(stdout, rr.Skipped)
	if len(again) > 0 {
		fmt.Fprintf(stdout, "\ndead-lettered again: %d records\n", len(again))
		slices.SortFunc(again, func(a, b dlq.Record) int { return strings.Compare(a.CorrelationID, b.CorrelationID) })
		dt := newTable([]string{"ID", "STAGE", "REASON", "ERROR", "CORRELATION ID"})
		for i, a := range again {
			if i == 20 {
				break
			}
			dt.add(a.ID, a.Stage, string(a.Reason), oneLine(a.Error, 72), a.CorrelationID)
		}
		dt.write(stdout, "  ")
		if len(again) > 20 {
			fmt.Fprintf(stdout, "  … and %d more (etl dlq ls)\n", len(again)-20)
		}
	}
	printSummary(stdout, rr.Report, cfg, true)
	if cerr := file.Compact(context.WithoutCancel(ctx)); cerr != nil {
		fmt.Fprintf(stderr, "warning: compacting %s: %v\n", cfg.DLQ, cerr)
	}
	if cfg.Report != "" {
		if werr := writeReport(cfg.Report, rr.Report, 0); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	return rr, err
}

// readOnlyStore is the dead letters a dry run read with dlq.ReadFile: a dlq.Store whose
// Records returns them and whose Write and Delete fail, since a dry run changes nothing.
type readOnlyStore []dlq.Record

var errDryRun = errors.New("dry run: the dead-letter file is read-only")

func (s readOnlyStore) Records(ctx context.Context) ([]dlq.Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	out := make([]dlq.Record, len(s))
	for i, r := range s {
		r.Payload = slices.Clone(r.Payload)
		r.Headers = maps.Clone(r.Headers)
		out[i] = r
	}
	return out, nil
}

func (readOnlyStore) Write(context.Context, dlq.Record) error { return errDryRun }
func (readOnlyStore) Delete(context.Context, ...string) error { return errDryRun }
func (readOnlyStore) Close() error                            { return nil }

func printSkipped(w io.Writer, skipped []pipeline.Skipped) {
	if len(skipped) == 0 {
		return
	}
	fmt.Fprintf(w, "skipped %d records (left in the DLQ):\n", len(skipped))
	for _, s := range skipped {
		fmt.Fprintf(w, "  %s  stage %s: %v\n", s.ID, s.Stage, s.Err)
	}
}
