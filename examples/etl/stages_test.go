package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/retry"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		code       int
		retryAfter string
		permanent  bool
		after      time.Duration
	}{
		{404, "", true, 0},
		{400, "", true, 0},
		{403, "5", true, 0},
		{408, "", false, 0},
		{429, "2", false, 2 * time.Second},
		{503, "1", false, time.Second},
		{500, "", false, 0},
		{503, "soon", false, 0},
		{302, "", true, 0},
	} {
		resp := &http.Response{StatusCode: c.code, Status: http.StatusText(c.code), Header: http.Header{}}
		if c.retryAfter != "" {
			resp.Header.Set("Retry-After", c.retryAfter)
		}
		err := classify("GET x", resp)
		require.Error(t, err)
		assert.Equal(t, c.permanent, retry.IsPermanent(err), "%d", c.code)
		d, ok := retry.RetryAfter(err)
		assert.Equal(t, c.after > 0, ok, "%d %q", c.code, c.retryAfter)
		assert.Equal(t, c.after, d)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		v    string
		want time.Duration
		ok   bool
	}{
		{"0", 0, true},
		{"3", 3 * time.Second, true},
		{"99999999", maxRetryAfter, true},
		{"-1", 0, false},
		{"", 0, false},
		{"later", 0, false},
		{now.Add(10 * time.Second).Format(http.TimeFormat), 10 * time.Second, true},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0, true},
	} {
		d, ok := parseRetryAfter(c.v, now)
		assert.Equal(t, c.ok, ok, "%q", c.v)
		assert.Equal(t, c.want, d, "%q", c.v)
	}
}

// Every row of a generated file is parsed with its line number, and exactly the malformed
// ones fail validation, permanently.
func TestTransformAndValidate(t *testing.T) {
	spec := sampleSpec{Seed: 3, Rows: 40}
	bad := 0
	for i := 1; i <= 100; i++ {
		f := genFile(spec, i)
		rows, err := transform(context.Background(), newFile(f.Ref, f.Data))
		require.NoError(t, err)
		require.Len(t, rows, f.Rows)
		lines := strings.Split(strings.TrimSuffix(string(f.Data), "\n"), "\n")
		for k, row := range rows {
			assert.Equal(t, k+2, row.Line, "the header is line 1")
			assert.Equal(t, lines[k+1], row.Text)
			assert.Equal(t, f.Rows, row.FileRows)
			rec, err := validate(context.Background(), row)
			if contains(f.Malformed, k+1) {
				bad++
				require.Error(t, err, "row %d of %s: %s", k+1, f.Ref, row.Text)
				assert.True(t, retry.IsPermanent(err))
				continue
			}
			require.NoError(t, err, "row %d of %s", k+1, f.Ref)
			var m map[string]any
			require.NoError(t, json.Unmarshal(rec.JSON, &m))
			assert.Equal(t, f.Ref, m["_file"])
			assert.EqualValues(t, row.Line, m["_line"])
			assert.Contains(t, m, "amount")
		}
	}
	assert.Positive(t, bad)

	rows, err := transform(context.Background(), newFile("empty", nil))
	assert.NoError(t, err)
	assert.Empty(t, rows, "an empty file has no rows: it is filtered")
	_, err = transform(context.Background(), newFile("dup", []byte("a,a\n1,2\n")))
	assert.True(t, retry.IsPermanent(err))
}

func TestErrorShape(t *testing.T) {
	assert.Equal(t, `GET "…": read tcp ADDR->ADDR: read: connection reset by peer`,
		errorShape(`GET "s1-r100/part-0007.csv": read tcp 127.0.0.1:51234->127.0.0.1:40001: read: connection reset by peer`))
	assert.Equal(t, `line N: N fields, but the header has N columns`, errorShape(`line 12: 5 fields, but the header has 6 columns`))
}

func TestObjectNameIsDeterministic(t *testing.T) {
	a := objectName([]byte("{\"_id\":\"x\"}\n"))
	assert.Equal(t, a, objectName([]byte("{\"_id\":\"x\"}\n")))
	assert.NotEqual(t, a, objectName([]byte("{\"_id\":\"y\"}\n")))
	assert.Regexp(t, objectNameRE, a)
}
