package dlq_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sluicehq/sluice/dlq"
)

// The seed corpora are in testdata/fuzz/FuzzDecode and
// testdata/fuzz/FuzzReadFile.

func FuzzDecode(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"x","stage":"s","reason":"error","payload":{"a":[1,2]}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, err := dlq.Decode(data)
		if err != nil {
			require.NotEmpty(t, err.Error())
			return
		}
		line, err := dlq.Encode(rec)
		require.NoError(t, err, "a decoded record must encode")
		require.NotContains(t, string(line), "\n")
		again, err := dlq.Decode(line)
		require.NoError(t, err, "an encoded record must decode: %s", line)
		require.Equal(t, rec, again)
		line2, err := dlq.Encode(again)
		require.NoError(t, err)
		require.Equal(t, string(line), string(line2), "encoding is stable")
	})
}

func FuzzReadFile(f *testing.F) {
	f.Add([]byte(`{"v":1,"id":"x","stage":"s","reason":"error"}` + "\n" + `{"v":1,"op":"delete","id":"x"}` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(t.TempDir(), "dead.jsonl")
		require.NoError(t, os.WriteFile(path, data, 0o644))
		res, err := dlq.ReadFile(path)
		if err != nil {
			var ce *dlq.CorruptError
			require.True(t, errors.As(err, &ce), "unexpected error type %T: %v", err, err)
			require.ErrorIs(t, err, dlq.ErrCorrupt)
			require.Positive(t, ce.Line)
			require.LessOrEqual(t, ce.Offset, int64(len(data)))
			return
		}
		if res.Torn != nil {
			require.Equal(t, int64(len(data)), res.Torn.Offset+res.Torn.Bytes)
			require.Positive(t, res.Torn.Bytes)
			require.Equal(t, int64(bytes.LastIndexByte(data, '\n')+1), res.Torn.Offset)
		} else {
			require.True(t, len(data) == 0 || data[len(data)-1] == '\n')
		}
		seen := make(map[string]bool)
		for _, r := range res.Records {
			require.False(t, seen[r.ID], "duplicate live ID %q", r.ID)
			seen[r.ID] = true
			_, err := dlq.Encode(r)
			require.NoError(t, err)
		}

		// A writer opening the file repairs the same torn tail and reads
		// the same records.
		w, err := dlq.OpenFile(path)
		require.NoError(t, err)
		defer w.Close()
		if res.Torn == nil {
			require.Nil(t, w.Repaired())
		} else {
			require.NotNil(t, w.Repaired())
			require.Equal(t, res.Torn.Offset, w.Repaired().Offset)
			require.Equal(t, res.Torn.Bytes, w.Repaired().Bytes)
		}
		recs, err := w.Records(context.Background())
		require.NoError(t, err)
		require.Equal(t, res.Records, recs)
	})
}
