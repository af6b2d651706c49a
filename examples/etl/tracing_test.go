package main

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTracingToStdout(t *testing.T) {
	cfg := testConfig(t, 3, 5, 0)
	cfg.Otel, cfg.Progress = "stdout", "off"
	var stdout, stderr bytes.Buffer
	_, err := run(context.Background(), cfg, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	out := stdout.String()
	assert.Contains(t, out, `"Name":"download"`)
	assert.Contains(t, out, `"Name":"upload"`)
	assert.Contains(t, out, `"Name":"etl run"`)
	assert.Contains(t, out, `"Key":"etl.balanced"`)
}

func TestTracingToOTLP(t *testing.T) {
	var posts atomic.Int32
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" {
			posts.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer collector.Close()
	cfg := testConfig(t, 3, 5, 0)
	cfg.Otel, cfg.Progress = "otlp="+strings.TrimPrefix(collector.URL, "http://"), "off"
	var stdout, stderr bytes.Buffer
	_, err := run(context.Background(), cfg, &stdout, &stderr)
	require.NoError(t, err, stderr.String())
	assert.Positive(t, posts.Load(), "the spans were flushed to the collector at exit")
}
