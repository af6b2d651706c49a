package dlq_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/goleak"

	"github.com/sluicehq/sluice/dlq"
	"github.com/sluicehq/sluice/dlq/dlqtest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// rec returns a small valid record whose payload holds i.
func rec(i int) dlq.Record {
	return dlq.Record{
		ID:       dlq.NewID(),
		Pipeline: "orders",
		Stage:    "enrich",
		Payload:  json.RawMessage(fmt.Sprintf(`{"i":%d}`, i)),
		Reason:   dlq.ReasonError,
		Error:    fmt.Sprintf("failure %d", i),
		Attempts: 3,
		FailedAt: time.Date(2026, 11, 23, 12, 0, 0, i, time.UTC),
	}
}

// line returns rec encoded plus a newline.
func line(t testing.TB, r dlq.Record) string {
	t.Helper()
	b, err := dlq.Encode(r)
	require.NoError(t, err)
	return string(b) + "\n"
}

// openTemp opens a File in a new temp dir and closes it at cleanup.
func openTemp(t *testing.T, opts ...dlq.FileOption) (*dlq.File, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "dead.jsonl")
	f, err := dlq.OpenFile(path, opts...)
	require.NoError(t, err)
	t.Cleanup(func() { _ = f.Close() })
	return f, path
}

func writeFile(t testing.TB, path, content string) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, []byte(content), 0o644))
}

func readAll(t testing.TB, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return string(b)
}

func TestMemoryConformance(t *testing.T) {
	dlqtest.Run(t, func(t *testing.T) (dlq.Store, func() dlq.Store) {
		m := dlq.NewMemory()
		return m, func() dlq.Store {
			// A closed Memory stays readable: copy its records into a
			// new one, as if its storage were reopened.
			recs, err := m.Records(context.Background())
			require.NoError(t, err)
			m2 := dlq.NewMemory()
			for _, r := range recs {
				require.NoError(t, m2.Write(context.Background(), r))
			}
			return m2
		}
	})
}

func TestFileConformance(t *testing.T) {
	dlqtest.Run(t, func(t *testing.T) (dlq.Store, func() dlq.Store) {
		path := filepath.Join(t.TempDir(), "dead.jsonl")
		f, err := dlq.OpenFile(path)
		require.NoError(t, err)
		return f, func() dlq.Store {
			f2, err := dlq.OpenFile(path)
			require.NoError(t, err)
			return f2
		}
	})
}

func TestMemoryLenAndReadAfterClose(t *testing.T) {
	ctx := context.Background()
	m := dlq.NewMemory()
	require.NoError(t, m.Write(ctx, rec(1)))
	require.NoError(t, m.Write(ctx, rec(2)))
	require.Equal(t, 2, m.Len())
	require.NoError(t, m.Close())
	recs, err := m.Records(ctx)
	require.NoError(t, err)
	require.Len(t, recs, 2)
	require.Equal(t, 2, m.Len())
}
