package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/stage"
)

// table prints rows in aligned columns; the columns listed in right are right-aligned.
type table struct {
	rows  [][]string
	right map[int]bool
}

func newTable(header []string, right ...int) *table {
	t := &table{rows: [][]string{header}, right: map[int]bool{}}
	for _, c := range right {
		t.right[c] = true
	}
	return t
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) write(w io.Writer, indent string) {
	var widths []int
	for _, r := range t.rows {
		for i, c := range r {
			if i >= len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], len([]rune(c)))
		}
	}
	for _, r := range t.rows {
		var b strings.Builder
		b.WriteString(indent)
		for i, c := range r {
			pad := strings.Repeat(" ", widths[i]-len([]rune(c)))
			if i > 0 {
				b.WriteString("  ")
			}
			if t.right[i] {
				b.WriteString(pad + c)
			} else if i < len(r)-1 {
				b.WriteString(c + pad)
			} else {
				b.WriteString(c)
			}
		}
		fmt.Fprintln(w, b.String())
	}
}

// num formats n with thousands separators.
func num[T ~int | ~int64](n T) string {
	s := strconv.FormatInt(int64(n), 10)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	if neg {
		return "-" + s
	}
	return s
}

// dur formats a latency quantile; "-" when none was measured.
func dur(l stage.Latency, d time.Duration) string {
	if l.Count == 0 {
		return "-"
	}
	switch {
	case d < time.Millisecond:
		return fmt.Sprintf("%dµs", d.Microseconds())
	case d < time.Second:
		return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.2fs", d.Seconds())
	}
}

// reasons formats dead letters by reason: "permanent 3, timeout 1".
func reasons(m map[dlq.Reason]int64) string {
	keys := slices.Sorted(maps.Keys(m))
	var parts []string
	for _, k := range keys {
		if m[k] > 0 {
			parts = append(parts, fmt.Sprintf("%s %s", k, num(m[k])))
		}
	}
	if len(parts) == 0 {
		return "-"
	}
	return strings.Join(parts, ", ")
}

// printSummary prints the stage table and the conservation line of a report (of a replay
// when replay is set: its items are records re-injected into various stages).
func printSummary(w io.Writer, rep pipeline.Report, cfg Config, replay bool) {
	fmt.Fprintln(w)
	t := newTable([]string{"stage", "kind", "workers", "in", "out", "retries", "dead letters", "p95 wait", "p95 work"}, 2, 3, 4, 5, 7, 8)
	for _, s := range rep.Stages {
		t.add(s.Name, s.Kind.String(), strconv.Itoa(s.Workers), num(s.In), num(s.Out), num(s.Retries),
			reasons(s.DeadLetters), dur(s.Wait, s.Wait.P95), dur(s.Work, s.Work.P95))
	}
	t.write(w, "")
	fmt.Fprintln(w)
	fmt.Fprintln(w, conservation(rep))
	what := "files admitted"
	if replay {
		what = "records re-injected"
	}
	fmt.Fprintf(w, "  (units: %s %s; a file is one unit until transform splits it into rows, one unit each: %s spawned)\n",
		num(rep.Admitted), what, num(rep.Spawned))
	if len(rep.Stages) > 0 {
		last := rep.Stages[len(rep.Stages)-1]
		where := cfg.Upload
		if where == "" {
			where = cfg.Out + "/"
		}
		fmt.Fprintf(w, "uploaded %s rows in %s to %s in %v\n", num(last.Succeeded), plural(last.Out, "object"), where, rep.Duration.Round(time.Millisecond))
	}
}

// conservation is the line that shows the report adds up.
func conservation(rep pipeline.Report) string {
	s := fmt.Sprintf("ingested %s = delivered %s + filtered %s + dead-lettered %s + rejected %s",
		num(rep.Ingested), num(rep.Delivered), num(rep.Filtered), num(rep.DeadLettered), num(rep.Rejected))
	if rep.Returned != 0 || rep.Stranded != 0 {
		s += fmt.Sprintf(" + returned %s + stranded %s", num(rep.Returned), num(rep.Stranded))
	}
	if rep.InFlight != 0 {
		s += fmt.Sprintf(" + in flight %s", num(rep.InFlight))
	}
	if rep.Balanced() {
		return s + "  ✓ balanced"
	}
	return s + "  ✗ NOT BALANCED"
}

// plural formats a count of things: "1 object", "2 objects".
func plural[T ~int | ~int64](n T, thing string) string {
	if n == 1 {
		return "1 " + thing
	}
	return num(n) + " " + thing + "s"
}
