package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/sizing"
)

const sweepUsage = `usage: etl sweep [flags]

Runs the download stage's own function over the sample dataset once per pool size, with the
embedded file server, and prints throughput and latency per size (the knee of the curve is
where more workers stop paying), then writes the curve as an SVG chart.

`

// sweepMain is `etl sweep`: it sizes the download pool on the real download function.
func sweepMain(args []string, stdout, stderr io.Writer) int {
	cfg := defaultConfig()
	cfg.Files, cfg.Faults, cfg.Latency = 500, 0, 20*time.Millisecond
	sizes := "1,2,4,8,16,32,64,128"
	svg := "etl-sweep.svg"
	fs := flag.NewFlagSet("etl sweep", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&sizes, "sizes", sizes, "pool sizes to try, comma-separated")
	fs.StringVar(&svg, "svg", svg, "write the chart to `FILE` (empty: no chart)")
	fs.IntVar(&cfg.Files, "files", cfg.Files, "sample files downloaded at each size")
	fs.IntVar(&cfg.Rows, "rows", cfg.Rows, "mean number of rows per sample file")
	fs.DurationVar(&cfg.Latency, "latency", cfg.Latency, "latency of every sample download (the dependency being sized)")
	fs.Float64Var(&cfg.Faults, "faults", cfg.Faults, "fault `rate` of the sample server")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the sample dataset and of the faults")
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), sweepUsage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "etl sweep: unexpected argument %q (etl sweep -h for help)\n", fs.Arg(0))
		return 2
	}
	var ns []int
	for _, f := range strings.Split(sizes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			fmt.Fprintf(stderr, "etl sweep: -sizes %q: give positive whole numbers separated by commas\n", sizes)
			return 2
		}
		ns = append(ns, n)
	}
	if err := cfg.check(); err != nil {
		fmt.Fprintf(stderr, "etl sweep: %v\n", err)
		return 2
	}
	cfg.Out = os.TempDir() // the sweep uploads nothing
	svc, err := startServices(cfg, true)
	if err != nil {
		fmt.Fprintf(stderr, "etl sweep: %v\n", err)
		return 1
	}
	defer svc.close()

	spec := sampleSpec{Seed: cfg.Seed, Rows: cfg.Rows}
	refs := make([]FileRef, cfg.Files)
	for i := range refs {
		refs[i] = FileRef{URL: spec.ref(i + 1)}
	}
	download := func(ctx context.Context, ref FileRef) error {
		ctx, cancel := context.WithTimeout(ctx, cfg.DownloadTimeout)
		defer cancel()
		_, err := svc.ep.download(ctx, ref)
		return err
	}
	fmt.Fprintf(stdout, "sweeping the download stage: %d files at each of %v workers, sample latency %v\n\n", len(refs), ns, cfg.Latency)
	points, err := sizing.Sweep(context.Background(), download, refs, ns)
	if err != nil {
		fmt.Fprintf(stderr, "etl sweep: %v\n", err)
		return 1
	}
	if err := sizing.WriteTable(stdout, points); err != nil {
		fmt.Fprintf(stderr, "etl sweep: %v\n", err)
		return 1
	}
	knee := sizing.Knee(points, 0.05)
	fmt.Fprintf(stdout, "\nknee: %d workers (%.0f items/s, p95 %v); Little's law for this latency at that rate: %d\n",
		knee.Workers, knee.Throughput, knee.P95.Round(time.Millisecond), sizing.LittlesLaw(knee.Throughput, cfg.Latency))
	if svg != "" {
		f, err := os.Create(svg)
		if err == nil {
			err = sizing.WriteSVG(f, points, fmt.Sprintf("etl download: %d files, latency %v", len(refs), cfg.Latency))
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			fmt.Fprintf(stderr, "etl sweep: writing the chart: %v\n", err)
			return 1
		}
		fmt.Fprintf(stdout, "chart: %s\n", svg)
	}
	return 0
}
