package sizing

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestWriteTable(t *testing.T) {
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, curve))
	assert.Equal(t, ""+
		"workers  items  elapsed  items/s     p50   p95      p99  errors\n"+
		"      1   1000      10s    100.0    10ms  12ms     15ms       0\n"+
		"      2   1000       5s    200.0    10ms  12ms     15ms       0\n"+
		"      4   1000     2.6s    384.6  10.4ms  13ms     16ms       0\n"+
		"      8   1000       2s    500.0    16ms  21ms     30ms       2\n"+
		"     16   1000    1.96s    510.2    31ms  45ms     61ms       3\n"+
		"     32   1000     2.1s    476.2    67ms  90ms  123.5ms       9\n", b.String())

	b.Reset()
	require.NoError(t, WriteTable(&b, []Point{{Workers: 3, Items: 7, Elapsed: 1234567 * time.Nanosecond, Throughput: 5670.26,
		P50: 999 * time.Nanosecond, P95: 12345 * time.Nanosecond, P99: 90 * time.Minute}}))
	assert.Equal(t, ""+
		"workers  items  elapsed  items/s    p50      p95      p99  errors\n"+
		"      3      7  1.235ms   5670.3  999ns  12.35µs  1h30m0s       0\n", b.String())

	b.Reset()
	require.NoError(t, WriteTable(&b, nil))
	assert.Equal(t, "workers  items  elapsed  items/s  p50  p95  p99  errors\n", b.String())

	assert.EqualError(t, WriteTable(failingWriter{}, curve), "disk full")
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// svgDoc is what the test reads back from the SVG.
type svgDoc struct {
	XMLName  xml.Name `xml:"svg"`
	Title    string   `xml:"title"`
	Circles  []circle `xml:"circle"`
	Polyline []struct {
		Class  string `xml:"class,attr"`
		Points string `xml:"points,attr"`
	} `xml:"polyline"`
}

type circle struct {
	Class string  `xml:"class,attr"`
	CX    float64 `xml:"cx,attr"`
	CY    float64 `xml:"cy,attr"`
	Title string  `xml:"title"`
}

func parseSVG(t *testing.T, points []Point, title string) svgDoc {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, WriteSVG(&b, points, title))
	// Every token must parse (well-formed XML), and the document must have the shape drawn.
	d := xml.NewDecoder(bytes.NewReader(b.Bytes()))
	for {
		_, err := d.Token()
		if err == io.EOF {
			break
		}
		require.NoError(t, err, b.String())
	}
	var doc svgDoc
	require.NoError(t, xml.Unmarshal(b.Bytes(), &doc))
	return doc
}

func TestWriteSVG(t *testing.T) {
	title := "fetch <pages> & \"parse\"\x00"
	doc := parseSVG(t, curve, title)
	assert.Equal(t, "fetch <pages> & \"parse\"\uFFFD", doc.Title)
	byClass := map[string][]circle{}
	for _, c := range doc.Circles {
		byClass[c.Class] = append(byClass[c.Class], c)
	}
	require.Len(t, byClass["throughput"], len(curve), "one throughput point per size")
	require.Len(t, byClass["p95"], len(curve), "one latency point per size")
	for i, p := range curve {
		assert.Equal(t, workers(p.Workers)+": "+strconv.FormatFloat(p.Throughput, 'f', 1, 64)+" items/s", byClass["throughput"][i].Title)
		assert.Equal(t, workers(p.Workers)+": p95 "+round(p.P95).String(), byClass["p95"][i].Title)
		assert.True(t, byClass["throughput"][i].CY >= plotTop && byClass["throughput"][i].CY <= plotBottom)
		if i > 0 {
			// Log scale for 1..32: equal steps per doubling.
			assert.InDelta(t, 112, byClass["throughput"][i].CX-byClass["throughput"][i-1].CX, 0.05)
		}
	}
	// Higher throughput is higher on the chart (smaller y).
	assert.Less(t, byClass["throughput"][4].CY, byClass["throughput"][0].CY)
	require.Len(t, doc.Polyline, 2)
	assert.Equal(t, "throughput", doc.Polyline[0].Class)
	assert.Len(t, strings.Fields(doc.Polyline[0].Points), len(curve))
}

func TestWriteSVGEdgeCases(t *testing.T) {
	// Unordered, linear scale, one size, zero values: all still well-formed, drawn by workers.
	doc := parseSVG(t, []Point{curve[2], curve[0], curve[1]}, "")
	require.Len(t, doc.Circles, 6)
	assert.Equal(t, "1 worker: 100.0 items/s", doc.Circles[0].Title)
	assert.Equal(t, float64(plotLeft), doc.Circles[0].CX)
	assert.Equal(t, float64(plotRight), doc.Circles[2].CX)
	assert.InDelta(t, plotLeft+(plotRight-plotLeft)/3.0, doc.Circles[1].CX, 0.05, "linear below a ratio of 8")

	doc = parseSVG(t, []Point{{Workers: 4}}, "one")
	require.Len(t, doc.Circles, 2)
	assert.Equal(t, float64(plotLeft+plotRight)/2, doc.Circles[0].CX)
	assert.Equal(t, float64(plotBottom), doc.Circles[0].CY)

	assert.EqualError(t, WriteSVG(io.Discard, nil, "x"), "sizing: no points to draw")
	assert.EqualError(t, WriteSVG(failingWriter{}, curve, "x"), "disk full")
}

func TestNiceCeil(t *testing.T) {
	for v, want := range map[float64]float64{0: 1, -3: 1, 1: 1, 1.01: 1.5, 510.2: 600, 90: 100, 800: 800, 0.07: 0.08, 12000: 15000} {
		assert.InDelta(t, want, niceCeil(v), want*1e-12, "niceCeil(%v)", v)
	}
}

func TestWriteSVGUnitsAndOddValues(t *testing.T) {
	for _, tc := range []struct {
		p95  time.Duration
		unit string
	}{{2 * time.Second, "(s)"}, {30 * time.Millisecond, "(ms)"}, {300 * time.Microsecond, "(µs)"}, {300, "(ns)"}} {
		var b bytes.Buffer
		require.NoError(t, WriteSVG(&b, []Point{{Workers: 1, Throughput: math.NaN(), P95: tc.p95}, {Workers: 2, Throughput: math.Inf(1), P95: tc.p95}}, "t"))
		assert.Contains(t, b.String(), "p95 latency "+tc.unit)
		assert.NotContains(t, b.String(), "NaN")
		assert.NotContains(t, b.String(), "Inf")
		assert.NoError(t, xml.Unmarshal(b.Bytes(), new(svgDoc)))
	}
}
