package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/stage"
)

// Config is everything a run (or a replay) needs; the flags fill it in.
type Config struct {
	// Input and output.
	URLsFile string // a file of URLs, one a line; empty: the sample dataset
	Upload   string // the object store's base URL; empty: the embedded store, writing into Out
	DLQ      string
	Out      string
	Report   string

	// The sample dataset and the embedded servers.
	Seed    uint64
	Files   int
	Rows    int
	Faults  float64
	Latency time.Duration
	server  serverOptions // tests shorten the stalls

	// The pipeline.
	DownloadWorkers  int
	TransformWorkers int
	UploadWorkers    int
	DownloadTimeout  time.Duration
	UploadTimeout    time.Duration
	Attempts         int
	Backoff          time.Duration
	BatchSize        int
	BatchWait        time.Duration
	Drain            time.Duration

	// Observability.
	Otel     string
	Progress string // auto, bars, plain or off
	Interval time.Duration
	LogLevel slog.Level
}

func defaultConfig() Config {
	return Config{
		DLQ:              "etl-dead-letters.jsonl",
		Out:              "etl-out",
		Seed:             1,
		Files:            300,
		Rows:             100,
		Faults:           0.1,
		DownloadWorkers:  32,
		TransformWorkers: runtime.NumCPU(),
		UploadWorkers:    4,
		DownloadTimeout:  2 * time.Second,
		UploadTimeout:    5 * time.Second,
		Attempts:         5,
		Backoff:          100 * time.Millisecond,
		BatchSize:        500,
		BatchWait:        250 * time.Millisecond,
		Drain:            5 * time.Second,
		Progress:         "auto",
		Interval:         time.Second,
		LogLevel:         slog.LevelError,
	}
}

// usageError is a bad flag or argument: exit status 2.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func usagef(format string, a ...any) error { return &usageError{fmt.Sprintf(format, a...)} }

// check reports what is wrong with the configuration.
func (c Config) check() error {
	var errs []string
	add := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }
	if !(c.Faults >= 0 && c.Faults <= 1) { // (NaN too)
		add("-faults %v: give a rate between 0 and 1", c.Faults)
	}
	if c.URLsFile == "" && (c.Files < 1 || c.Files > maxSampleFiles) {
		add("-files %d: give 1 to %d", c.Files, maxSampleFiles)
	}
	if c.Rows < 1 || c.Rows > maxSampleRows {
		add("-rows %d: give 1 to %d", c.Rows, maxSampleRows)
	}
	for _, w := range []struct {
		name string
		n    int
	}{{"-download-workers", c.DownloadWorkers}, {"-transform-workers", c.TransformWorkers}, {"-upload-workers", c.UploadWorkers}, {"-attempts", c.Attempts}, {"-batch", c.BatchSize}} {
		if w.n < 1 {
			add("%s %d: give at least 1", w.name, w.n)
		}
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{{"-download-timeout", c.DownloadTimeout}, {"-upload-timeout", c.UploadTimeout}, {"-backoff", c.Backoff}, {"-batch-wait", c.BatchWait}, {"-drain", c.Drain}, {"-latency", c.Latency}, {"-interval", c.Interval}} {
		if d.d < 0 || (d.d == 0 && d.name != "-latency" && d.name != "-drain") {
			add("%s %v: give a positive duration", d.name, d.d)
		}
	}
	if c.Upload != "" {
		if u, err := url.Parse(c.Upload); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			add("-upload %q: give an http or https URL", c.Upload)
		}
	}
	switch c.Progress {
	case "auto", "bars", "plain", "off":
	default:
		add("-progress %q: give auto, bars, plain or off", c.Progress)
	}
	if _, err := parseOtel(c.Otel); err != nil {
		add("%v", err)
	}
	if c.DLQ == "" {
		add("-dlq: give a path")
	}
	if c.Upload == "" && c.Out == "" {
		add("-out: give a directory")
	}
	if len(errs) > 0 {
		return &usageError{strings.Join(errs, "\n")}
	}
	return nil
}

// readURLs reads a file of URLs: one a line; blank lines and lines starting with # are skipped,
// and repeated URLs are taken once (a URL is its item's correlation ID).
func readURLs(path string) ([]FileRef, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, usagef("-urls: %v", err)
	}
	defer f.Close()
	var refs []FileRef
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		u, err := url.Parse(line)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, usagef("-urls %s line %d: %q is not an http or https URL", path, n, line)
		}
		if !seen[line] {
			seen[line] = true
			refs = append(refs, FileRef{URL: line})
		}
	}
	if err := sc.Err(); err != nil {
		return nil, usagef("-urls %s: %v", path, err)
	}
	if len(refs) == 0 {
		return nil, usagef("-urls %s: no URLs in the file", path)
	}
	return refs, nil
}

// services are the endpoints of a run or replay, and the embedded servers behind them.
type services struct {
	ep          *endpoints
	sampleSrv   *localServer
	storeSrv    *localServer
	samplePlan  *faultPlan
	storePlan   *faultPlan
	description []string
}

// startServices starts the embedded sample server (if withSample) and object store (unless
// -upload gives a real one), and the HTTP client.
func startServices(cfg Config, withSample bool) (*services, error) {
	s := &services{ep: &endpoints{client: newClient(cfg.DownloadWorkers + cfg.UploadWorkers)}}
	opts := cfg.server
	opts.Latency = cfg.Latency
	if withSample {
		s.samplePlan = newFaultPlan(cfg.Faults, cfg.Seed)
		srv, err := startLocal(sampleServer(s.samplePlan, opts))
		if err != nil {
			s.close()
			return nil, fmt.Errorf("starting the sample server: %w", err)
		}
		s.sampleSrv = srv
		s.ep.sample, _ = url.Parse(srv.URL + "/")
		s.description = append(s.description, fmt.Sprintf("sample server %s (faults %.2f, latency %v)", srv.URL, cfg.Faults, cfg.Latency))
	}
	if cfg.Upload != "" {
		s.ep.uploadURL, _ = url.Parse(cfg.Upload)
		s.description = append(s.description, "uploading to "+cfg.Upload)
		return s, nil
	}
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		s.close()
		return nil, fmt.Errorf("creating the output directory: %w", err)
	}
	s.storePlan = newFaultPlan(cfg.Faults/2, cfg.Seed+1)
	srv, err := startLocal(objectStore(cfg.Out, s.storePlan, opts))
	if err != nil {
		s.close()
		return nil, fmt.Errorf("starting the object store: %w", err)
	}
	s.storeSrv = srv
	s.ep.uploadURL, _ = url.Parse(srv.URL + "/")
	s.description = append(s.description, fmt.Sprintf("object store %s → %s/ (faults %.2f)", srv.URL, cfg.Out, cfg.Faults/2))
	return s, nil
}

func (s *services) close() {
	if s.sampleSrv != nil {
		s.sampleSrv.Close()
	}
	if s.storeSrv != nil {
		s.storeSrv.Close()
	}
	s.ep.client.CloseIdleConnections()
}

// faultSummary says what the embedded servers injected.
func (s *services) faultSummary() string {
	var parts []string
	if s.samplePlan != nil {
		parts = append(parts, "sample server: "+s.samplePlan.summary())
	}
	if s.storePlan != nil {
		parts = append(parts, "object store: "+s.storePlan.summary())
	}
	return strings.Join(parts, "; ")
}

func newLogger(w io.Writer, level slog.Level) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

// run runs the job to its end, or until ctx ends and the drain completes, prints the progress
// and the summary, and writes the report. It returns the report, and an error when the
// pipeline itself failed (a *usageError for a bad configuration).
func run(ctx context.Context, cfg Config, stdout, stderr io.Writer) (pipeline.Report, error) {
	if err := cfg.check(); err != nil {
		return pipeline.Report{}, err
	}
	var refs []FileRef
	spec := sampleSpec{Seed: cfg.Seed, Rows: cfg.Rows}
	if cfg.URLsFile != "" {
		var err error
		if refs, err = readURLs(cfg.URLsFile); err != nil {
			return pipeline.Report{}, err
		}
	} else {
		refs = make([]FileRef, cfg.Files)
		for i := range refs {
			refs[i] = FileRef{URL: spec.ref(i + 1)}
		}
	}

	shutdownTracing, err := setupTracing(ctx, cfg.Otel, stdout)
	if err != nil {
		return pipeline.Report{}, err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdownTracing(sctx); err != nil {
			fmt.Fprintf(stderr, "etl: flushing the traces: %v\n", err)
		}
	}()
	_, runSpan := tracer().Start(context.WithoutCancel(ctx), "etl run")
	defer runSpan.End()

	svc, err := startServices(cfg, cfg.URLsFile == "")
	if err != nil {
		return pipeline.Report{}, err
	}
	defer svc.close()
	if err := ensureDir(cfg.DLQ); err != nil {
		return pipeline.Report{}, err
	}
	p, err := buildPipeline(cfg, svc.ep,
		pipeline.WithDLQFile(cfg.DLQ),
		pipeline.WithDrainTimeout(cfg.Drain),
		pipeline.WithLogger(newLogger(stderr, cfg.LogLevel)))
	if err != nil {
		if errors.Is(err, dlq.ErrLocked) {
			return pipeline.Report{}, fmt.Errorf("the dead-letter file %s is in use by another run or replay: %w", cfg.DLQ, err)
		}
		return pipeline.Report{}, err
	}
	defer p.Close()

	if cfg.URLsFile == "" {
		fmt.Fprintf(stdout, "etl: %d files of sample dataset %s (about %d rows)\n", len(refs), spec.dir(), len(refs)*cfg.Rows)
	} else {
		fmt.Fprintf(stdout, "etl: %d files from %s\n", len(refs), cfg.URLsFile)
	}
	for _, d := range svc.description {
		fmt.Fprintf(stdout, "     %s\n", d)
	}
	fmt.Fprintf(stdout, "     dead letters → %s; Ctrl-C drains (up to %v) and prints the summary\n", cfg.DLQ, cfg.Drain)

	src := pipeline.FromSlice(refs).KeyBy(func(r FileRef) string { return r.URL })
	job, err := p.Start(ctx, src)
	if err != nil {
		return pipeline.Report{}, err
	}
	prog := startProgress(cfg, stdout, job, int64(len(refs)))
	rep, runErr := job.Wait()
	prog.stop(rep)

	parked := 0
	if rest := refs[src.Next():]; len(rest) > 0 && runErr == nil {
		// The drain stopped ingress: park the files not yet admitted, like the library parks
		// the ones in flight, so that `etl dlq replay` finishes the job.
		parked, runErr = parkNotAdmitted(context.WithoutCancel(ctx), p.DLQ(), rest, src.Next(), cfg.Attempts)
		addParked(&rep, parked)
	}
	runSpan.SetAttributes(reportAttributes(rep)...)

	printSummary(stdout, rep, cfg, false)
	if svc.samplePlan != nil || svc.storePlan != nil {
		fmt.Fprintf(stdout, "injected faults: %s\n", svc.faultSummary())
	}
	if parked > 0 {
		fmt.Fprintf(stdout, "stopped: %d files were not started; they are parked in %s (reason shutdown) — `etl dlq replay` finishes the job\n", parked, cfg.DLQ)
	}
	if n := rep.DeadLettered; n > 0 {
		fmt.Fprintf(stdout, "dead letters: %d written to %s — inspect with `etl dlq ls` / `etl dlq stats`, retry with `etl dlq replay`\n", n, cfg.DLQ)
	}
	if cfg.Report != "" {
		if err := writeReport(cfg.Report, rep, parked); err != nil {
			return rep, errors.Join(runErr, err)
		}
	}
	return rep, runErr
}

func ensureDir(file string) error {
	if dir := filepath.Dir(file); dir != "." {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return fmt.Errorf("creating the directory of %s: %w", file, err)
		}
	}
	return nil
}

// parkNotAdmitted writes a shutdown dead letter for each file the source had not handed over
// when the drain began, on behalf of the download stage, as the library does for the items it
// parks. The writes run concurrently so that they share fsyncs.
func parkNotAdmitted(ctx context.Context, sink dlq.Sink, rest []FileRef, first, attempts int) (int, error) {
	now := time.Now().UTC()
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		written  int
		firstErr error
	)
	sem := make(chan struct{}, 32)
	for i, ref := range rest {
		payload, _ := json.Marshal(ref)
		rec := dlq.Record{
			V: dlq.Version, ID: dlq.NewID(), CorrelationID: ref.URL, Pipeline: pipelineName, Stage: stageNames[0],
			Payload: payload, Reason: dlq.ReasonShutdown, ErrorType: "shutdown",
			Error:    stage.ErrShutdown.Error() + " (it was never started)",
			Attempts: 0, MaxAttempts: attempts, FirstAttemptAt: now, FailedAt: now,
			Source: fmt.Sprintf("index:%d", first+i+1),
		}
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			err := sink.Write(ctx, rec)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				if firstErr == nil {
					firstErr = &pipeline.DeadLetterError{CorrelationID: rec.CorrelationID, Stage: rec.Stage, RecordID: rec.ID, Reason: rec.Reason, Err: err}
				}
				return
			}
			written++
		})
	}
	wg.Wait()
	return written, firstErr
}

// addParked counts the files parked at ingress into the report: admitted and dead-lettered
// (shutdown) by the download stage, so that the report still adds up and its dead letters
// equal the records written.
func addParked(rep *pipeline.Report, n int) {
	if n == 0 || len(rep.Stages) == 0 {
		return
	}
	k := int64(n)
	rep.Admitted += k
	rep.Ingested += k
	rep.DeadLettered += k
	st := &rep.Stages[0]
	st.In += k
	st.DeadLettered += k
	if st.DeadLetters == nil {
		st.DeadLetters = map[dlq.Reason]int64{}
	}
	st.DeadLetters[dlq.ReasonShutdown] += k
}

// jsonReport is the -report file: the library's Report, plus what the example added to it.
type jsonReport struct {
	pipeline.Report
	// ParkedAtIngress counts the files that a drain stopped before they were admitted; they are
	// included in admitted, dead_lettered and the download stage's shutdown dead letters.
	ParkedAtIngress int  `json:"parked_at_ingress"`
	Balanced        bool `json:"balanced"`
}

func writeReport(path string, rep pipeline.Report, parked int) error {
	b, err := json.MarshalIndent(jsonReport{Report: rep, ParkedAtIngress: parked, Balanced: rep.Balanced()}, "", "  ")
	if err != nil {
		return err
	}
	if err := ensureDir(path); err != nil {
		return err
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	return nil
}
