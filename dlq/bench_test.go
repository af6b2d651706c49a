package dlq_test

import (
	"context"
	"testing"

	"github.com/sluicehq/sluice/dlq"
)

func BenchmarkFileWrite(b *testing.B) {
	ctx := context.Background()
	open := func(b *testing.B) *dlq.File {
		f, err := dlq.OpenFile(b.TempDir() + "/dead.jsonl")
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { _ = f.Close() })
		return f
	}
	b.Run("serial", func(b *testing.B) {
		f := open(b)
		r := rec(1)
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			if err := f.Write(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
	b.Run("parallel", func(b *testing.B) {
		f := open(b)
		b.ReportAllocs()
		b.SetParallelism(16) // many concurrent writers, even on few cores
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			r := rec(1)
			for pb.Next() {
				if err := f.Write(ctx, r); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "records/s")
	})
}

func BenchmarkEncode(b *testing.B) {
	r := rec(1)
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := dlq.Encode(r); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	line, err := dlq.Encode(rec(1))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if _, err := dlq.Decode(line); err != nil {
			b.Fatal(err)
		}
	}
}
