package sizing

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// WriteTable writes the points as a text table with right-aligned columns, one row per point
// in the order given: workers, items, elapsed, throughput (items/s), p50, p95, p99 and errors.
// Durations are rounded to four significant digits.
func WriteTable(w io.Writer, points []Point) error {
	rows := [][]string{{"workers", "items", "elapsed", "items/s", "p50", "p95", "p99", "errors"}}
	for _, p := range points {
		rows = append(rows, []string{
			strconv.Itoa(p.Workers), strconv.Itoa(p.Items), round(p.Elapsed).String(),
			strconv.FormatFloat(p.Throughput, 'f', 1, 64),
			round(p.P50).String(), round(p.P95).String(), round(p.P99).String(), strconv.Itoa(p.Errors),
		})
	}
	widths := make([]int, len(rows[0]))
	for _, row := range rows {
		for i, cell := range row {
			widths[i] = max(widths[i], utf8.RuneCountInString(cell))
		}
	}
	var b strings.Builder
	for _, row := range rows {
		for i, cell := range row {
			if i > 0 {
				b.WriteString("  ")
			}
			b.WriteString(strings.Repeat(" ", widths[i]-utf8.RuneCountInString(cell)))
			b.WriteString(cell)
		}
		b.WriteByte('\n')
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// round rounds d to four significant digits, for display.
func round(d time.Duration) time.Duration {
	unit := time.Duration(1)
	a := max(d, -d)
	for a >= 10000*unit && unit < time.Hour {
		unit *= 10
	}
	return d.Round(unit)
}

// Layout of the chart, in SVG user units.
const (
	svgWidth, svgHeight                 = 720, 420
	marginLeft, marginRight             = 80, 80
	marginTop, marginBottom             = 50, 60
	plotLeft, plotRight                 = marginLeft, svgWidth - marginRight
	plotTop, plotBottom                 = marginTop, svgHeight - marginBottom
	throughputColor, latencyColor, grey = "#1f77b4", "#d62728", "#888888"
)

// WriteSVG writes a self-contained SVG line chart of the points: workers on the x axis
// (logarithmic when the largest size is at least 8 times the smallest), throughput on the left
// y axis and p95 latency, dashed, on the right one. Each point is a circle (class "throughput"
// or "p95") with a tooltip. Points are drawn in order of workers. It returns an error if
// points is empty.
func WriteSVG(w io.Writer, points []Point, title string) error {
	if len(points) == 0 {
		return errors.New("sizing: no points to draw")
	}
	pts := slices.Clone(points)
	slices.SortStableFunc(pts, func(a, b Point) int { return a.Workers - b.Workers })

	// x scale.
	lo, hi := pts[0].Workers, pts[len(pts)-1].Workers
	logX := lo >= 1 && hi >= 8*lo
	xf := func(v int) float64 { return float64(v) }
	if logX {
		xf = func(v int) float64 { return math.Log2(float64(v)) }
	}
	x0, x1 := xf(lo), xf(hi)
	if x0 == x1 {
		x0, x1 = x0-1, x1+1
	}
	xpos := func(v int) float64 { return plotLeft + (xf(v)-x0)/(x1-x0)*(plotRight-plotLeft) }

	// y scales, from 0 to a round number above the largest value.
	var maxTP float64
	var maxP95 time.Duration
	for _, p := range pts {
		maxTP = max(maxTP, finite(p.Throughput))
		maxP95 = max(maxP95, p.P95)
	}
	tpTop := niceCeil(maxTP)
	latUnit, latName := latencyUnit(maxP95)
	latTop := niceCeil(float64(maxP95) / float64(latUnit))
	yTP := func(v float64) float64 { return plotBottom - finite(v)/tpTop*(plotBottom-plotTop) }
	yLat := func(d time.Duration) float64 {
		return plotBottom - float64(d)/float64(latUnit)/latTop*(plotBottom-plotTop)
	}

	bw := bufio.NewWriter(w)
	fmt.Fprintf(bw, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" viewBox="0 0 %d %d" font-family="sans-serif" font-size="12">`+"\n",
		svgWidth, svgHeight, svgWidth, svgHeight)
	fmt.Fprintf(bw, "<title>%s</title>\n", escape(title))
	fmt.Fprintf(bw, `<rect width="%d" height="%d" fill="white"/>`+"\n", svgWidth, svgHeight)
	fmt.Fprintf(bw, `<text x="%d" y="28" text-anchor="middle" font-size="16">%s</text>`+"\n", svgWidth/2, escape(title))

	// Grid and y axes: five steps.
	fmt.Fprintf(bw, `<g stroke="%s" stroke-width="1">`+"\n", grey)
	fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d"/>`+"\n", plotLeft, plotBottom, plotRight, plotBottom)
	fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d"/>`+"\n", plotLeft, plotTop, plotLeft, plotBottom)
	fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d"/>`+"\n", plotRight, plotTop, plotRight, plotBottom)
	fmt.Fprint(bw, "</g>\n")
	fmt.Fprint(bw, `<g font-size="11">`+"\n")
	for i := 0; i <= 5; i++ {
		y := plotBottom - float64(i)/5*(plotBottom-plotTop)
		if i > 0 {
			fmt.Fprintf(bw, `<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" stroke="#e0e0e0" stroke-width="1"/>`+"\n", plotLeft, y, plotRight, y)
		}
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="end" fill="%s">%s</text>`+"\n",
			plotLeft-6, y+4, throughputColor, number(tpTop*float64(i)/5))
		fmt.Fprintf(bw, `<text x="%d" y="%.1f" text-anchor="start" fill="%s">%s</text>`+"\n",
			plotRight+6, y+4, latencyColor, number(latTop*float64(i)/5))
	}
	// x ticks: one per distinct size.
	for i, p := range pts {
		if i > 0 && p.Workers == pts[i-1].Workers {
			continue
		}
		x := xpos(p.Workers)
		fmt.Fprintf(bw, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>`+"\n", x, plotBottom, x, plotBottom+5, grey)
		fmt.Fprintf(bw, `<text x="%.1f" y="%d" text-anchor="middle">%d</text>`+"\n", x, plotBottom+18, p.Workers)
	}
	fmt.Fprint(bw, "</g>\n")

	// Axis titles.
	xTitle := "workers"
	if logX {
		xTitle += " (log scale)"
	}
	fmt.Fprintf(bw, `<text x="%d" y="%d" text-anchor="middle">%s</text>`+"\n", (plotLeft+plotRight)/2, svgHeight-18, xTitle)
	fmt.Fprintf(bw, `<text transform="translate(22 %d) rotate(-90)" text-anchor="middle" fill="%s">throughput (items/s)</text>`+"\n",
		(plotTop+plotBottom)/2, throughputColor)
	fmt.Fprintf(bw, `<text transform="translate(%d %d) rotate(90)" text-anchor="middle" fill="%s">p95 latency (%s)</text>`+"\n",
		svgWidth-22, (plotTop+plotBottom)/2, latencyColor, latName)

	// Series.
	var tpLine, latLine strings.Builder
	for i, p := range pts {
		if i > 0 {
			tpLine.WriteByte(' ')
			latLine.WriteByte(' ')
		}
		fmt.Fprintf(&tpLine, "%.1f,%.1f", xpos(p.Workers), yTP(p.Throughput))
		fmt.Fprintf(&latLine, "%.1f,%.1f", xpos(p.Workers), yLat(p.P95))
	}
	fmt.Fprintf(bw, `<polyline class="throughput" fill="none" stroke="%s" stroke-width="2" points="%s"/>`+"\n", throughputColor, tpLine.String())
	fmt.Fprintf(bw, `<polyline class="p95" fill="none" stroke="%s" stroke-width="2" stroke-dasharray="6 4" points="%s"/>`+"\n", latencyColor, latLine.String())
	for _, p := range pts {
		fmt.Fprintf(bw, `<circle class="throughput" cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s: %.1f items/s</title></circle>`+"\n",
			xpos(p.Workers), yTP(p.Throughput), throughputColor, workers(p.Workers), finite(p.Throughput))
	}
	for _, p := range pts {
		fmt.Fprintf(bw, `<circle class="p95" cx="%.1f" cy="%.1f" r="4" fill="%s"><title>%s: p95 %s</title></circle>`+"\n",
			xpos(p.Workers), yLat(p.P95), latencyColor, workers(p.Workers), round(p.P95))
	}

	// Legend.
	fmt.Fprintf(bw, `<g font-size="11"><line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2"/><text x="%d" y="%d">throughput</text>`,
		plotLeft+10, plotTop+10, plotLeft+30, plotTop+10, throughputColor, plotLeft+36, plotTop+14)
	fmt.Fprintf(bw, `<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="%s" stroke-width="2" stroke-dasharray="6 4"/><text x="%d" y="%d">p95 latency</text></g>`+"\n",
		plotLeft+10, plotTop+26, plotLeft+30, plotTop+26, latencyColor, plotLeft+36, plotTop+30)
	fmt.Fprint(bw, "</svg>\n")
	return bw.Flush()
}

// workers returns "1 worker", "2 workers"...
func workers(n int) string {
	if n == 1 {
		return "1 worker"
	}
	return strconv.Itoa(n) + " workers"
}

// finite returns v, or 0 if v is NaN, infinite or negative, so the chart stays drawable.
func finite(v float64) float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return 0
	}
	return v
}

// niceCeil returns the smallest round number (1, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 × 10^k) at or
// above v, 1 for v ≤ 0.
func niceCeil(v float64) float64 {
	if !(v > 0) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10} {
		if m*p >= v {
			return m * p
		}
	}
	return 10 * p
}

// latencyUnit picks the unit of the latency axis.
func latencyUnit(d time.Duration) (time.Duration, string) {
	switch {
	case d >= time.Second:
		return time.Second, "s"
	case d >= time.Millisecond:
		return time.Millisecond, "ms"
	case d >= time.Microsecond:
		return time.Microsecond, "µs"
	}
	return time.Nanosecond, "ns"
}

// number formats an axis label: no more decimals than it needs.
func number(v float64) string {
	return strconv.FormatFloat(math.Round(v*1e6)/1e6, 'f', -1, 64)
}

var escaper = strings.NewReplacer("&", "&amp;", "<", "&lt;", ">", "&gt;", `"`, "&quot;", "'", "&#39;")

// escape escapes text for an XML text node or attribute, replacing the characters XML cannot
// hold (control characters, invalid UTF-8) with U+FFFD.
func escape(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 && r != '\t' && r != '\n' && r != '\r' || r == 0xFFFE || r == 0xFFFF {
			return '\uFFFD'
		}
		return r
	}, strings.ToValidUTF8(s, "\uFFFD"))
	return escaper.Replace(s)
}
