// Command etl is Sluice's example job and its dead-letter tool: it downloads CSV files over
// HTTP, transforms them into JSON Lines, and uploads the rows in batches to an object store,
// with retries, timeouts, a durable dead-letter queue (DLQ), live progress and a report that
// adds up.
//
// Run it from the repository's root:
//
//	go run ./examples/etl
//
// With no flags it makes a sample dataset (300 CSV files, about 30,000 rows, a few of them
// malformed), serves it from a local HTTP server on 127.0.0.1 that injects faults (503s with
// Retry-After, responses slower than the timeout, connection resets, a few permanent 404s),
// runs a local object store that writes the uploaded objects into ./etl-out/ (and loses a few
// responses), and runs the pipeline against both:
//
//	download   map       32 workers   GET with a per-attempt timeout; retries with jitter that
//	                                  honour Retry-After; 4xx other than 408/429 are permanent
//	transform  flat-map  CPU workers  parses a CSV file into its rows; counts and checksums it
//	validate   map       CPU workers  validates a row and converts it to a JSON line carrying
//	                                  its correlation ID; a malformed row is a permanent
//	                                  failure of that row alone, dead-lettered with its line
//	upload     batch     4 workers    PUTs up to 500 rows (or what came within 250ms) as one
//	                                  object named by its content, so a retry overwrites
//
// It shows one progress line or bar per stage while it runs and ends with a summary per stage
// (in, out, retries, dead letters by reason, p95 wait and work) and the conservation line.
// Dead letters go to ./etl-dead-letters.jsonl.
//
// Usage:
//
//	etl [flags]                   run the job
//	etl dlq ls [filters]          list dead letters: id, time, stage, reason, attempts, error, correlation ID
//	etl dlq show ID               one record in full, payload pretty-printed (an ID prefix will do)
//	etl dlq stats [filters]       counts by stage × reason, and the most common errors
//	etl dlq replay [filters]      replay dead letters into the stages that failed them (-dry-run to preview)
//	etl dlq purge [filters] -yes  delete dead letters
//	etl sweep [-sizes 1,2,4,…]    size the download pool: throughput and p95 per pool size, and a chart
//
// Filters: -stage NAME, -reason REASON, -match TEXT (in the error), -since DURATION.
//
// Main flags (etl -h lists them all):
//
//	-urls FILE     download these URLs (one a line) instead of the sample dataset
//	-upload URL    PUT the objects to URL/<name> instead of the embedded object store
//	-faults RATE   fault rate of the embedded servers (default 0.1; 0 turns faults off)
//	-seed N        seed of the sample dataset and of the faults: a run is repeatable
//	-dlq PATH      dead-letter file (default ./etl-dead-letters.jsonl)
//	-out DIR       directory of the embedded object store (default ./etl-out)
//	-report FILE   write the report as JSON
//	-otel SPEC     tracing: stdout, or otlp=HOST:PORT (OTLP/HTTP, insecure); off by default
//	-drain D       on SIGINT/SIGTERM, how long in-flight items get to finish (default 5s)
//
// Counting. The report counts in the library's units. A file is one unit until transform
// splits it into rows; then each row is one unit, and the extra units are counted in
// "spawned" and so in "ingested". So, with F files of which D failed to download and the rest
// held R rows: ingested = F + (R − (F − D)) = D + R, and ingested = delivered (rows uploaded)
// + filtered (files without rows) + dead_lettered (files and rows) + rejected (always 0 here).
// Files that a drain stopped before they started are parked in the DLQ (reason shutdown, stage
// download) so that a replay finishes the job; the report counts them as admitted and
// dead-lettered, and "parked_at_ingress" says how many there were.
//
// Replays. `etl dlq replay` starts the same embedded servers as a run when no real endpoints
// are given: sample file references ("s<seed>-r<rows>/part-NNNN.csv") name their dataset, so
// the files are regenerated identically. It takes -faults too: `etl dlq replay -faults 0` is
// the replay once "the cause is fixed". Records that fail again are written back with their
// replay count incremented.
//
// Exit status: 0 when the job (or replay) ran to its end, dead letters or not; 1 when the
// pipeline itself failed (e.g. the DLQ could not be written), or a dlq command found its file
// missing, locked or corrupt; 2 for bad usage (and purge without -yes); 130 or 143 when
// SIGINT or SIGTERM stopped it (after the drain and the summary).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

func main() {
	os.Exit(realMain(os.Args[1:], os.Stdout, os.Stderr))
}

const runUsage = `Usage: etl [flags]          run the ETL job (the sample dataset by default)
       etl dlq COMMAND ...  inspect and replay dead letters (etl dlq -h)

Counts are in the library's units: a file is one unit until transform splits it
into rows, one unit each (the extra units are "spawned", part of "ingested").
Exit status: 0 done (dead letters are not a failure), 1 the pipeline failed,
2 bad usage, 130/143 stopped by SIGINT/SIGTERM after the drain.

Flags:
`

// registerJobFlags registers the flags of a run; a replay takes those that apply to it.
func registerJobFlags(fs *flag.FlagSet, c *Config, replay bool) {
	if !replay {
		fs.StringVar(&c.URLsFile, "urls", c.URLsFile, "download the `FILE`'s URLs (one a line, # comments) instead of the sample dataset")
		fs.IntVar(&c.Files, "files", c.Files, "number of files in the sample dataset")
		fs.IntVar(&c.Rows, "rows", c.Rows, "mean number of rows per sample file")
		fs.StringVar(&c.Progress, "progress", c.Progress, "progress display: auto (bars on a terminal, else lines), bars, plain or off")
		fs.DurationVar(&c.Interval, "interval", c.Interval, "interval of the plain progress lines")
	}
	fs.StringVar(&c.Out, "out", c.Out, "`DIR`: the embedded object store writes the uploaded objects there")
	fs.StringVar(&c.Upload, "upload", c.Upload, "PUT objects to `URL`/<name> instead of the embedded object store")
	fs.StringVar(&c.DLQ, "dlq", c.DLQ, "dead-letter `file`")
	fs.StringVar(&c.Report, "report", c.Report, "write the report as JSON to `FILE`")
	fs.Uint64Var(&c.Seed, "seed", c.Seed, "seed of the sample dataset and of the injected faults")
	fs.Float64Var(&c.Faults, "faults", c.Faults, "fault `rate` of the embedded servers, 0 to 1 (0: no faults)")
	fs.DurationVar(&c.Latency, "latency", c.Latency, "extra latency of every sample download (a slowed dataset)")
	fs.IntVar(&c.DownloadWorkers, "download-workers", c.DownloadWorkers, "download pool size")
	fs.IntVar(&c.TransformWorkers, "transform-workers", c.TransformWorkers, "transform and validate pool sizes")
	fs.IntVar(&c.UploadWorkers, "upload-workers", c.UploadWorkers, "upload pool size")
	fs.DurationVar(&c.DownloadTimeout, "download-timeout", c.DownloadTimeout, "per-attempt download timeout")
	fs.DurationVar(&c.UploadTimeout, "upload-timeout", c.UploadTimeout, "per-attempt upload timeout")
	fs.IntVar(&c.Attempts, "attempts", c.Attempts, "attempts per download and upload, the first included")
	fs.DurationVar(&c.Backoff, "backoff", c.Backoff, "first retry delay (doubling, jittered ±50%, up to 2s or this delay if longer)")
	fs.IntVar(&c.BatchSize, "batch", c.BatchSize, "rows per uploaded object, at most")
	fs.DurationVar(&c.BatchWait, "batch-wait", c.BatchWait, "longest a row waits for its batch to fill")
	fs.DurationVar(&c.Drain, "drain", c.Drain, "on SIGINT/SIGTERM, how long in-flight items get to finish")
	fs.StringVar(&c.Otel, "otel", c.Otel, "tracing: stdout, or otlp=HOST:PORT (OTLP/HTTP, insecure); off by default")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "log `level` of the library's events on stderr: debug, info, warn, error")
}

func realMain(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "dlq":
			return dlqMain(args[1:], stdout, stderr)
		case "sweep":
			return sweepMain(args[1:], stdout, stderr)
		case "help":
			args = []string{"-h"}
		}
	}
	cfg := defaultConfig()
	fs := flag.NewFlagSet("etl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	registerJobFlags(fs, &cfg, false)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), runUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "etl: unexpected argument %q (etl -h for help)\n", fs.Arg(0))
		return 2
	}
	ctx, signalled, stop := withSignals(context.Background(), stderr, cfg.Drain)
	defer stop()
	_, err := run(ctx, cfg, stdout, stderr)
	return exitCode(stderr, "etl", err, signalled())
}

// exitCode reports err and maps it to the exit status.
func exitCode(stderr io.Writer, prog string, err error, sig os.Signal) int {
	var ue *usageError
	switch {
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "%s: %s\n", prog, strings.ReplaceAll(ue.msg, "\n", "\n"+prog+": "))
		return 2
	case err != nil && !(sig != nil && errors.Is(err, context.Canceled)):
		fmt.Fprintf(stderr, "%s: %v\n", prog, err)
		return 1
	case sig != nil:
		// (A signal that cancelled a read before anything started is a stop, not a failure.)
		if s, ok := sig.(syscall.Signal); ok {
			return 128 + int(s)
		}
		return 130
	}
	return 0
}

// withSignals returns a context that ends at the first SIGINT or SIGTERM, which starts the
// drain; a second one kills the process the usual way.
func withSignals(parent context.Context, stderr io.Writer, drain time.Duration) (context.Context, func() os.Signal, func()) {
	ctx, cancel := context.WithCancel(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	var got atomic.Value
	done := make(chan struct{})
	exited := make(chan struct{})
	go func() {
		defer close(exited)
		select {
		case s := <-ch:
			got.Store(s)
			signal.Stop(ch)
			signal.Reset(os.Interrupt, syscall.SIGTERM)
			fmt.Fprintf(stderr, "\netl: %v: draining (in-flight items get up to %v); send it again to quit at once\n", s, drain)
			cancel()
		case <-done:
		}
	}()
	signalled := func() os.Signal {
		s, _ := got.Load().(os.Signal)
		return s
	}
	stop := func() {
		close(done)
		<-exited
		signal.Stop(ch)
		cancel()
	}
	return ctx, signalled, stop
}

// parseInterspersed parses flags that may come after positional arguments ("show ID -dlq x").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
