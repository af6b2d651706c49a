package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/csv"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/sluicehq/sluice/pipeline"
	"github.com/sluicehq/sluice/retry"
	"github.com/sluicehq/sluice/stage"
)

// The items of the job, stage by stage. Each is the input of a stage, so each is what a dead
// letter of that stage holds as its payload (JSON), and what a replay decodes.

// FileRef is the input of download: an absolute URL, or the reference of a sample file,
// relative to the embedded sample server (which is not at the same address in the next run).
type FileRef struct {
	URL string `json:"url"`
}

// File is a downloaded file, the input of transform.
type File struct {
	Ref string `json:"ref"`
	// Text is the content when it is valid UTF-8 (readable in `etl dlq show`), else Raw.
	Text string `json:"text,omitempty"`
	Raw  []byte `json:"raw,omitempty"`
}

func newFile(ref string, data []byte) File {
	if utf8.Valid(data) {
		return File{Ref: ref, Text: string(data)}
	}
	return File{Ref: ref, Raw: data}
}

func (f File) data() []byte {
	if f.Raw != nil {
		return f.Raw
	}
	return []byte(f.Text)
}

// Row is one CSV record of a file, the input of validate.
type Row struct {
	File string `json:"file"`
	// Line is the row's line number in its file (the header is line 1).
	Line   int      `json:"line"`
	Header []string `json:"header"`
	Fields []string `json:"fields,omitempty"`
	// Text is the row as it is in the file.
	Text string `json:"text"`
	// ParseError is set when the row is not valid CSV.
	ParseError string `json:"parse_error,omitempty"`
	// FileRows and FileSHA256 are the count and checksum of the row's file.
	FileRows   int    `json:"file_rows"`
	FileSHA256 string `json:"file_sha256"`
}

// Record is a validated row as one JSON line, the input of upload.
type Record struct {
	// ID is the row's correlation ID: "<file ref>/<n>" for the n-th row of the file. It is also
	// the "_id" of the JSON line, so the object store can be deduplicated by it.
	ID   string          `json:"id"`
	JSON json.RawMessage `json:"json"`
}

// Object is an uploaded batch, the output of upload (and of the pipeline).
type Object struct {
	Name  string `json:"name"`
	Rows  int    `json:"rows"`
	Bytes int    `json:"bytes"`
}

// checksumHeader carries the hex SHA-256 of a body, both ways.
const checksumHeader = "X-Checksum-Sha256"

// maxDownloadSize bounds a downloaded file.
const maxDownloadSize = 256 << 20

// tracer returns the tracer of the example's own spans. It is looked up each time: the global
// provider may be replaced between runs (tests run several in one process).
func tracer() trace.Tracer {
	return otel.GetTracerProvider().Tracer("github.com/sluicehq/sluice/examples/etl")
}

// endpoints are what the HTTP stages talk to.
type endpoints struct {
	client *http.Client
	// sample resolves the relative references of sample files; nil without a sample server.
	sample    *url.URL
	uploadURL *url.URL
}

func newClient(workers int) *http.Client {
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		MaxIdleConns:          2 * workers,
		MaxIdleConnsPerHost:   workers,
		IdleConnTimeout:       30 * time.Second,
		TLSHandshakeTimeout:   10 * time.Second,
		ResponseHeaderTimeout: 0, // the stage's per-attempt timeout bounds each attempt
		ForceAttemptHTTP2:     true,
	}
	return &http.Client{Transport: tr}
}

// resolve returns the URL of a reference.
func (ep *endpoints) resolve(ref string) (*url.URL, error) {
	u, err := url.Parse(ref)
	if err != nil {
		return nil, retry.Permanent(fmt.Errorf("bad URL %q: %w", ref, err))
	}
	if u.IsAbs() {
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, retry.Permanent(fmt.Errorf("URL %q: only http and https are supported", ref))
		}
		return u, nil
	}
	if ep.sample == nil {
		return nil, retry.Permanent(fmt.Errorf("%q is a sample file reference, and no sample server runs", ref))
	}
	return ep.sample.ResolveReference(u), nil
}

// statusError is an HTTP response with a status that is not a success.
type statusError struct {
	Op         string
	Code       int
	Status     string
	RetryAfter time.Duration
}

func (e *statusError) Error() string {
	s := fmt.Sprintf("%s: %s", e.Op, e.Status)
	if e.RetryAfter > 0 {
		s += fmt.Sprintf(" (retry after %v)", e.RetryAfter)
	}
	return s
}

// ErrorType implements retry.ErrorTyper: "http_503".
func (e *statusError) ErrorType() string { return "http_" + strconv.Itoa(e.Code) }

// maxRetryAfter caps a server's Retry-After: a bogus one must not park a worker for hours.
const maxRetryAfter = time.Minute

// classify turns a response that is not a 2xx into an error for the retry policy: 408, 429
// and 5xx are transient, and honour Retry-After; the other 4xx (and anything else) are
// permanent.
func classify(op string, resp *http.Response) error {
	e := &statusError{Op: op, Code: resp.StatusCode, Status: resp.Status}
	if e.Status == "" {
		e.Status = strconv.Itoa(resp.StatusCode)
	}
	switch c := resp.StatusCode; {
	case c == http.StatusRequestTimeout || c == http.StatusTooManyRequests || c >= 500:
		if d, ok := parseRetryAfter(resp.Header.Get("Retry-After"), time.Now()); ok {
			e.RetryAfter = d
			return retry.After(e, d)
		}
		return e
	default:
		return retry.Permanent(e)
	}
}

// parseRetryAfter parses a Retry-After header: delay seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) (time.Duration, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n < 0 {
			return 0, false
		}
		d = time.Duration(min(n, int64(maxRetryAfter/time.Second))) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = max(t.Sub(now), 0)
	} else {
		return 0, false
	}
	return min(d, maxRetryAfter), true
}

// netError strips the *url.Error around a transport error: it repeats the full URL, whose
// port changes from run to run, which the dead letter's correlation ID already identifies.
func netError(op string, err error) error {
	if ue, ok := errors.AsType[*url.Error](err); ok {
		err = ue.Err
	}
	return fmt.Errorf("%s: %w", op, err)
}

func endSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}

// download fetches one file.
func (ep *endpoints) download(ctx context.Context, ref FileRef) (f File, err error) {
	attempt, _ := stage.Attempt(ctx)
	ctx, span := tracer().Start(ctx, "download", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("etl.ref", ref.URL), attribute.Int("etl.attempt", attempt)))
	defer func() { endSpan(span, err) }()
	op := fmt.Sprintf("GET %q", ref.URL)
	u, err := ep.resolve(ref.URL)
	if err != nil {
		return File{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return File{}, retry.Permanent(netError(op, err))
	}
	resp, err := ep.client.Do(req)
	if err != nil {
		return File{}, netError(op, err)
	}
	defer resp.Body.Close()
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	if resp.StatusCode/100 != 2 {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		return File{}, classify(op, resp)
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxDownloadSize+1))
	if err != nil {
		return File{}, netError(op+": reading the body", err)
	}
	if len(data) > maxDownloadSize {
		return File{}, retry.Permanent(fmt.Errorf("%s: the file is larger than %d MiB", op, maxDownloadSize>>20))
	}
	if want := resp.Header.Get(checksumHeader); want != "" {
		if sum := sha256.Sum256(data); !strings.EqualFold(hex.EncodeToString(sum[:]), want) {
			return File{}, fmt.Errorf("%s: checksum mismatch: the body does not match %s", op, checksumHeader)
		}
	}
	return newFile(ref.URL, data), nil
}

// transform parses a CSV file into its rows. It counts them and checksums the file; the rows
// are validated one by one in the next stage, so that one bad row does not sink its file. A
// file without rows is filtered out.
func transform(_ context.Context, f File) ([]Row, error) {
	data := f.data()
	sum := sha256.Sum256(data)
	checksum := hex.EncodeToString(sum[:])
	r := csv.NewReader(bytes.NewReader(data))
	r.FieldsPerRecord = -1 // the number of fields is checked per row, in validate
	header, err := r.Read()
	if err == io.EOF {
		return nil, nil
	}
	if err != nil {
		return nil, retry.Permanent(fmt.Errorf("reading the CSV header: %w", err))
	}
	seen := map[string]bool{}
	for i, h := range header {
		h = strings.TrimSpace(h)
		if h == "" {
			return nil, retry.Permanent(fmt.Errorf("the CSV header has an empty column name (column %d)", i+1))
		}
		if seen[h] {
			return nil, retry.Permanent(fmt.Errorf("the CSV header names column %q twice", h))
		}
		seen[h] = true
		header[i] = h
	}
	var rows []Row
	for {
		start := r.InputOffset()
		fields, err := r.Read()
		if err == io.EOF {
			break
		}
		text := strings.Trim(string(data[start:r.InputOffset()]), "\r\n")
		row := Row{File: f.Ref, Header: header, Text: text, FileSHA256: checksum}
		if err != nil {
			pe, ok := errors.AsType[*csv.ParseError](err)
			if !ok {
				return nil, retry.Permanent(fmt.Errorf("reading the CSV: %w", err))
			}
			row.Line = pe.StartLine
			row.ParseError = fmt.Sprintf("column %d: %v", pe.Column, pe.Err)
		} else {
			row.Line, _ = r.FieldPos(0)
			row.Fields = fields
		}
		rows = append(rows, row)
	}
	for i := range rows {
		rows[i].FileRows = len(rows)
	}
	return rows, nil
}

// validate checks one row and converts it to a JSON line that carries its correlation ID. A
// malformed row is a permanent failure: it is dead-lettered with its text and line number.
func validate(ctx context.Context, row Row) (Record, error) {
	if row.ParseError != "" {
		return Record{}, retry.Permanent(fmt.Errorf("line %d: malformed CSV: %s", row.Line, row.ParseError))
	}
	if len(row.Fields) != len(row.Header) {
		return Record{}, retry.Permanent(fmt.Errorf("line %d: %d fields, but the header has %d columns", row.Line, len(row.Fields), len(row.Header)))
	}
	id := stage.CorrelationID(ctx)
	if id == "" {
		id = fmt.Sprintf("%s#L%d", row.File, row.Line)
	}
	var b bytes.Buffer
	b.Grow(64 + len(row.Text)*2)
	b.WriteString(`{"_id":`)
	writeJSONString(&b, id)
	b.WriteString(`,"_file":`)
	writeJSONString(&b, row.File)
	fmt.Fprintf(&b, `,"_line":%d,"_file_rows":%d,"_file_sha256":`, row.Line, row.FileRows)
	writeJSONString(&b, row.FileSHA256)
	for i, col := range row.Header {
		v := strings.TrimSpace(row.Fields[i])
		b.WriteByte(',')
		writeJSONString(&b, col)
		b.WriteByte(':')
		switch strings.ToLower(col) {
		case "id":
			if _, err := strconv.ParseInt(v, 10, 64); err != nil {
				return Record{}, retry.Permanent(fmt.Errorf("line %d: column %q: %q is not an integer", row.Line, col, v))
			}
			b.WriteString(v)
		case "amount":
			x, err := strconv.ParseFloat(v, 64)
			if err != nil || math.IsInf(x, 0) || math.IsNaN(x) {
				return Record{}, retry.Permanent(fmt.Errorf("line %d: column %q: %q is not a number", row.Line, col, v))
			}
			b.WriteString(strconv.FormatFloat(x, 'f', -1, 64))
		case "email":
			if at := strings.IndexByte(v, '@'); at <= 0 || at == len(v)-1 || strings.ContainsAny(v, " \t") {
				return Record{}, retry.Permanent(fmt.Errorf("line %d: column %q: %q is not an e-mail address", row.Line, col, v))
			}
			writeJSONString(&b, v)
		case "currency":
			if len(v) != 3 || strings.ToUpper(v) != v || strings.ContainsFunc(v, func(r rune) bool { return r < 'A' || r > 'Z' }) {
				return Record{}, retry.Permanent(fmt.Errorf("line %d: column %q: %q is not an ISO 4217 code", row.Line, col, v))
			}
			writeJSONString(&b, v)
		case "created_at":
			t, err := time.Parse(time.RFC3339, v)
			if err != nil {
				return Record{}, retry.Permanent(fmt.Errorf("line %d: column %q: %q is not an RFC 3339 time", row.Line, col, v))
			}
			writeJSONString(&b, t.UTC().Format(time.RFC3339))
		default:
			writeJSONString(&b, v)
		}
	}
	b.WriteByte('}')
	return Record{ID: id, JSON: b.Bytes()}, nil
}

func writeJSONString(b *bytes.Buffer, s string) {
	enc, _ := json.Marshal(s) // a string always marshals
	b.Write(enc)
}

// objectName names a batch by its content, so a retried PUT of the same batch overwrites the
// object instead of duplicating its rows.
func objectName(body []byte) string {
	sum := sha256.Sum256(body)
	return "rows-" + hex.EncodeToString(sum[:16]) + ".jsonl"
}

// upload PUTs a batch of rows, as one JSON Lines object, to the object store.
func (ep *endpoints) upload(ctx context.Context, recs []Record) (obj Object, err error) {
	var body bytes.Buffer
	for _, r := range recs {
		body.Write(r.JSON)
		body.WriteByte('\n')
	}
	name := objectName(body.Bytes())
	attempt, _ := stage.Attempt(ctx)
	ctx, span := tracer().Start(ctx, "upload", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("etl.object", name), attribute.Int("etl.rows", len(recs)), attribute.Int("etl.attempt", attempt)))
	defer func() { endSpan(span, err) }()
	op := fmt.Sprintf("PUT %q", name)
	u := ep.uploadURL.JoinPath(name)
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, u.String(), bytes.NewReader(body.Bytes()))
	if err != nil {
		return Object{}, retry.Permanent(netError(op, err))
	}
	sum := sha256.Sum256(body.Bytes())
	req.Header.Set("Content-Type", "application/x-ndjson")
	req.Header.Set(checksumHeader, hex.EncodeToString(sum[:]))
	resp, err := ep.client.Do(req)
	if err != nil {
		return Object{}, netError(op, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	if resp.StatusCode/100 != 2 {
		return Object{}, classify(op, resp)
	}
	return Object{Name: name, Rows: len(recs), Bytes: body.Len()}, nil
}

// stageNames are the stages of the job, in order.
var stageNames = []string{"download", "transform", "validate", "upload"}

// buildPipeline builds the job: download → transform → validate → upload.
func buildPipeline(cfg Config, ep *endpoints, opts ...pipeline.Option) (*pipeline.Pipeline[FileRef], error) {
	policy := retry.Policy{MaxAttempts: cfg.Attempts, InitialInterval: cfg.Backoff, MaxInterval: max(cfg.Backoff, 2*time.Second)}
	dl := stage.Map(stageNames[0], ep.download,
		stage.Workers(cfg.DownloadWorkers), stage.Timeout(cfg.DownloadTimeout), stage.Retry(policy))
	tf := stage.FlatMap(stageNames[1], transform,
		stage.Workers(cfg.TransformWorkers), stage.Retry(retry.NoRetry()))
	va := stage.Map(stageNames[2], validate,
		stage.Workers(cfg.TransformWorkers), stage.Capacity(256), stage.Retry(retry.NoRetry()))
	up := stage.Batch(stageNames[3], cfg.BatchSize, cfg.BatchWait, ep.upload,
		stage.Workers(cfg.UploadWorkers), stage.Capacity(cfg.BatchSize), stage.Timeout(cfg.UploadTimeout), stage.Retry(policy))
	flow := pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Then(pipeline.Input[FileRef](), dl), tf), va), up)
	return pipeline.New(pipelineName, flow, opts...)
}

// pipelineName is written into every dead letter; a replay only takes records of this name.
const pipelineName = "etl"
