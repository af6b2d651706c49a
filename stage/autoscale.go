package stage

import (
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"
)

// AutoscaleConfig tunes the controller of an autoscaled pool. Zero fields take the defaults.
type AutoscaleConfig struct {
	// Window is how often the controller looks at the stage (default 1s).
	Window time.Duration
	// TargetUtilization is how busy the controller keeps the workers, in (0, 1] (default 0.8):
	// the pool is sized to arrival rate × service time ÷ this (Little's law), plus what it
	// takes to drain the backlog within a window.
	TargetUtilization float64
	// ShrinkBelow is how far under the current size the estimate must fall before the pool
	// shrinks, in (0, 1) (default 0.9): the hysteresis that keeps it from thrashing.
	ShrinkBelow float64
	// Cooldown is how many windows pass after a resize before the pool may shrink (default 2).
	Cooldown int
}

type autoscale struct {
	min, max int
	AutoscaleConfig
}

// Autoscale makes the stage's pool adaptive, between min and max workers (it starts at min).
// Every window a controller estimates the workers needed from the stage's arrival rate and
// service time (Little's law) plus its backlog: it grows the pool at once when more are
// needed, and shrinks it by half the excess at a time, only after a cool-down and when the
// need fell well below the current size, so it does not thrash. Workers are added and retired
// between items, never losing or duplicating one: a retired worker leaves once the input is
// empty, helping with the backlog until then, and the pool never retires below min. The stage
// holds at most Capacity + max items. Resizes are logged and counted (Stats.Resizes;
// Stats.Workers is the current size, retired workers still finishing the backlog included).
func Autoscale(min, max int, c AutoscaleConfig) Option {
	return func(cfg *config) {
		var errs []error
		if min < 1 {
			errs = append(errs, fmt.Errorf("Autoscale: min %d: a pool needs at least one worker", min))
		}
		if max < min {
			errs = append(errs, fmt.Errorf("Autoscale: max %d is below min %d", max, min))
		}
		// (Written so that NaN fails: every comparison with it is false.)
		if c.Window < 0 || !(c.TargetUtilization >= 0 && c.TargetUtilization <= 1) || !(c.ShrinkBelow >= 0 && c.ShrinkBelow < 1) || c.Cooldown < 0 {
			errs = append(errs, errors.New("Autoscale: Window and Cooldown cannot be negative, TargetUtilization is in (0, 1], ShrinkBelow in (0, 1)"))
		}
		if len(errs) > 0 {
			cfg.errs = append(cfg.errs, errs...)
			return
		}
		if c.Window == 0 {
			c.Window = time.Second
		}
		if c.TargetUtilization == 0 {
			c.TargetUtilization = 0.8
		}
		if c.ShrinkBelow == 0 {
			c.ShrinkBelow = 0.9
		}
		if c.Cooldown == 0 {
			c.Cooldown = 2
		}
		cfg.autoscale = &autoscale{min: min, max: max, AutoscaleConfig: c}
		cfg.workers = max // slots are sized for the largest pool
	}
}

// Desired returns the pool size the controller aims for: the workers busy at the target
// utilization for the arrival rate (items/s) and the mean service time, plus those that drain
// the backlog within one window, within [min, max].
func (a *autoscale) desired(arrivals, service float64, backlog int) int {
	need := arrivals * service / a.TargetUtilization
	need += float64(backlog) * service / a.Window.Seconds()
	n := int(math.Ceil(need - 1e-9))
	return max(a.min, min(a.max, n))
}

// control runs the autoscaler of the stage until its pool is over.
func (r *Runner[In, Out]) control() {
	a := r.s.cfg.autoscale
	t := time.NewTicker(a.Window)
	defer t.Stop()
	var lastPushed, lastWork, lastTimed int64
	service := 0.0
	sinceResize := a.Cooldown
	for {
		select {
		case <-r.done:
			return
		case <-t.C:
		}
		pushed := r.in.Pushed()
		var workNs, timed int64
		r.mu.Lock()
		for _, ws := range [][]*worker[In, Out]{r.workers, r.retired} {
			for _, w := range ws {
				workNs += w.c.workNs.Load()
				timed += w.c.timed.Load()
			}
		}
		// The size to resize from: the workers not retiring yet. A retiring one leaves only once
		// the input is empty (it helps with the backlog meanwhile); counting it would let shrink
		// after shrink retire every worker while the stage still has items to come. It still
		// holds a slot of the pool, though: growth stops at max with it, so that no more than
		// max calls run at once and the stage holds at most Capacity + max items.
		current, retiring := 0, 0
		for _, w := range r.workers {
			if w.retiring {
				retiring++
			} else {
				current++
			}
		}
		r.mu.Unlock()
		arrivals := float64(pushed-lastPushed) / a.Window.Seconds()
		if dt := timed - lastTimed; dt > 0 {
			service = time.Duration((workNs - lastWork) / dt).Seconds()
		}
		lastPushed, lastWork, lastTimed = pushed, workNs, timed
		want := a.desired(arrivals, service, r.in.Len())
		sinceResize++
		switch {
		case want > current && current+retiring < a.max:
			r.resize(current, min(want, a.max-retiring), arrivals, service)
			sinceResize = 0
		case want < current && float64(want) <= a.ShrinkBelow*float64(current) && sinceResize >= a.Cooldown:
			r.resize(current, current-(current-want+1)/2, arrivals, service)
			sinceResize = 0
		}
	}
}

// resize grows or shrinks the pool to n workers.
func (r *Runner[In, Out]) resize(from, to int, arrivals, service float64) {
	r.mu.Lock()
	if r.live == 0 || r.env.Work.Err() != nil {
		r.mu.Unlock()
		return // the pool is over or stopping
	}
	if to > from {
		r.spawn(to - from)
	} else {
		// Retire the newest workers that are not retiring yet.
		left := from - to
		for i := len(r.workers) - 1; i >= 0 && left > 0; i-- {
			if w := r.workers[i]; !w.retiring {
				w.retiring = true
				close(w.quit)
				left--
			}
		}
	}
	r.mu.Unlock()
	r.resizes.Add(1)
	r.env.Logger.Info("sluice: pool resized", slog.String("stage", r.s.name), slog.Int("from", from), slog.Int("to", to),
		slog.Float64("arrivals_per_s", arrivals), slog.Duration("service_time", time.Duration(service*float64(time.Second))))
}
