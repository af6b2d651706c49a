package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
	"golang.org/x/term"

	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/stage"
)

// stageProgress is the progress of one stage.
type stageProgress struct {
	name          string
	done, total   int64
	queued, limit int // items in the input, and its capacity
	busy, workers int
	rate          float64 // inputs done per second, smoothed
}

// finished counts the inputs of a stage that reached an end there.
func finished(s stage.Stats) int64 {
	return s.Succeeded + s.Filtered + s.DeadLettered + s.Returned + s.Stranded
}

// progressOf reads the progress of each stage from a report. The total of the first stage is
// the number of source items; a later stage expects what the stage before it will pass on: all
// its inputs that did not end there, after a map; what reached it so far, after a flat-map or a
// batch, whose output counts are not known in advance.
func progressOf(rep pipeline.Report, sourceTotal int64) []stageProgress {
	out := make([]stageProgress, len(rep.Stages))
	for i, s := range rep.Stages {
		p := stageProgress{name: s.Name, done: finished(s), queued: s.Queued, limit: s.Capacity, busy: s.Busy, workers: s.Workers}
		switch {
		case i == 0:
			p.total = max(sourceTotal, s.In)
		case rep.Stages[i-1].Kind == stage.KindFlatMap || rep.Stages[i-1].Kind == stage.KindBatch:
			p.total = max(s.In, rep.Stages[i-1].Out)
		default:
			prev := rep.Stages[i-1]
			p.total = max(s.In, out[i-1].total-prev.Filtered-prev.DeadLettered-prev.Returned-prev.Stranded)
		}
		out[i] = p
	}
	return out
}

// progress shows the progress of a run until stop.
type progress interface {
	stop(final pipeline.Report)
}

type noProgress struct{}

func (noProgress) stop(pipeline.Report) {}

// isTerminal reports whether w is a terminal that bars can be drawn on (one with a size).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return false
	}
	width, height, err := term.GetSize(int(f.Fd()))
	return err == nil && width >= 40 && height >= 8
}

// startProgress shows the progress of job on w: bars on a terminal, plain periodic lines
// otherwise (per -progress).
func startProgress(cfg Config, w io.Writer, job *pipeline.Job, sourceTotal int64) progress {
	mode := cfg.Progress
	if mode == "auto" {
		mode = "plain"
		if isTerminal(w) {
			mode = "bars"
		}
	}
	t := &tracker{job: job, sourceTotal: sourceTotal, started: time.Now(), quit: make(chan struct{}), exited: make(chan struct{})}
	switch mode {
	case "off":
		return noProgress{}
	case "bars":
		b := &barProgress{tracker: t}
		b.start(w)
		return b
	default:
		p := &plainProgress{tracker: t, w: w}
		go p.loop(cfg.Interval)
		return p
	}
}

// tracker samples a job's stats and smooths the rates.
type tracker struct {
	job         *pipeline.Job
	sourceTotal int64
	started     time.Time
	quit        chan struct{}
	exited      chan struct{}

	mu       sync.Mutex
	last     []stageProgress
	lastTime time.Time
}

// sample computes the progress from rep: with rates smoothed since the last sample, or
// averaged over the whole run when average is set.
func (t *tracker) sample(rep pipeline.Report, average bool) []stageProgress {
	now := time.Now()
	cur := progressOf(rep, t.sourceTotal)
	t.mu.Lock()
	defer t.mu.Unlock()
	if dt := now.Sub(t.lastTime).Seconds(); !average && len(t.last) == len(cur) && dt > 0 {
		for i := range cur {
			inst := float64(cur[i].done-t.last[i].done) / dt
			cur[i].rate = 0.5*t.last[i].rate + 0.5*inst
		}
	} else if el := now.Sub(t.started).Seconds(); el > 0 {
		for i := range cur {
			cur[i].rate = float64(cur[i].done) / el
		}
	}
	t.last, t.lastTime = cur, now
	return cur
}

func (t *tracker) snapshot() []stageProgress {
	t.mu.Lock()
	defer t.mu.Unlock()
	return append([]stageProgress(nil), t.last...)
}

func (p stageProgress) activity() string {
	return fmt.Sprintf("%7.1f/s  queue %4d/%-4d busy %3d/%-3d", p.rate, p.queued, p.limit, p.busy, p.workers)
}

// plainProgress prints one line per stage every interval.
type plainProgress struct {
	*tracker
	w io.Writer
}

func (p *plainProgress) loop(every time.Duration) {
	defer close(p.exited)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-p.quit:
			return
		case <-tick.C:
		}
		el := time.Since(p.started).Round(100 * time.Millisecond)
		for _, s := range p.sample(p.job.Stats(), false) {
			fmt.Fprintf(p.w, "[%6s] %-9s %7d/%-7d %s\n", el, s.name, s.done, s.total, s.activity())
		}
	}
}

func (p *plainProgress) stop(pipeline.Report) {
	close(p.quit)
	<-p.exited
}

// barProgress draws one bar per stage with mpb.
type barProgress struct {
	*tracker
	p    *mpb.Progress
	bars []*mpb.Bar
}

func (b *barProgress) start(w io.Writer) {
	b.p = mpb.New(mpb.WithOutput(w), mpb.WithWidth(100), mpb.WithRefreshRate(150*time.Millisecond))
	for i, s := range b.sample(b.job.Stats(), false) {
		bar := b.p.AddBar(0,
			mpb.PrependDecorators(
				decor.Name(s.name, decor.WC{W: 10, C: decor.DindentRight}),
				decor.Any(func(st decor.Statistics) string { return fmt.Sprintf("%d/%d", st.Current, st.Total) }, decor.WC{W: 14}),
			),
			mpb.AppendDecorators(decor.Any(func(decor.Statistics) string {
				if snap := b.snapshot(); i < len(snap) {
					return snap[i].activity()
				}
				return ""
			})),
		)
		b.bars = append(b.bars, bar)
	}
	b.update(b.snapshot())
	go func() {
		defer close(b.exited)
		tick := time.NewTicker(200 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-b.quit:
				return
			case <-tick.C:
			}
			b.update(b.sample(b.job.Stats(), false))
		}
	}()
}

func (b *barProgress) update(cur []stageProgress) {
	for i, s := range cur {
		if i < len(b.bars) {
			b.bars[i].SetTotal(s.total, false)
			b.bars[i].SetCurrent(s.done)
		}
	}
}

func (b *barProgress) stop(final pipeline.Report) {
	close(b.quit)
	<-b.exited
	cur := b.sample(final, true)
	b.update(cur)
	for i, s := range cur {
		if i >= len(b.bars) {
			break
		}
		if s.done >= s.total {
			b.bars[i].SetTotal(s.total, true)
		} else {
			b.bars[i].Abort(false)
		}
	}
	b.p.Wait()
}
