// Package hist is a log-linear histogram of durations: eight buckets per power of two, so a
// quantile is known to within about 6%. A histogram takes any number of concurrent writers (a
// few of a stage's workers share one) and readers, which may merge several before reading
// quantiles.
package hist

import (
	"math/bits"
	"sync/atomic"
	"time"
)

const (
	subBits = 3
	sub     = 1 << subBits
	// Buckets is the number of buckets: values below 8ns exactly, then 8 per power of two.
	Buckets = sub + (64-subBits)*sub
)

// Hist counts durations. The zero value is ready; Record may be called concurrently.
type Hist struct {
	counts [Buckets]atomic.Uint64
}

func index(v uint64) int {
	if v < sub {
		return int(v)
	}
	e := bits.Len64(v) - 1 // position of the top bit, >= subBits
	m := (v >> (e - subBits)) & (sub - 1)
	return sub + (e-subBits)*sub + int(m)
}

// value returns the middle of bucket i.
func value(i int) uint64 {
	if i < sub {
		return uint64(i)
	}
	e := (i-sub)/sub + subBits
	m := uint64((i - sub) % sub)
	lo := (sub + m) << (e - subBits)
	return lo + (uint64(1)<<(e-subBits))/2
}

// Record adds one duration (negative ones count as zero).
func (h *Hist) Record(d time.Duration) {
	if d < 0 {
		d = 0
	}
	h.counts[index(uint64(d))].Add(1)
}

// Snapshot is a merged copy of histograms.
type Snapshot struct {
	counts [Buckets]uint64
	n      uint64
}

// Add merges h into s.
func (s *Snapshot) Add(h *Hist) {
	for i := range h.counts {
		if c := h.counts[i].Load(); c != 0 {
			s.counts[i] += c
			s.n += c
		}
	}
}

// Count returns the number of durations recorded.
func (s *Snapshot) Count() int64 { return int64(s.n) }

// Quantile returns the q-quantile (0 < q <= 1), or 0 when empty.
func (s *Snapshot) Quantile(q float64) time.Duration {
	if s.n == 0 {
		return 0
	}
	rank := uint64(q*float64(s.n) + 0.5)
	rank = max(rank, 1)
	var seen uint64
	for i, c := range s.counts {
		seen += c
		if seen >= rank {
			return time.Duration(value(i))
		}
	}
	return s.Max()
}

// Max returns the middle of the highest non-empty bucket.
func (s *Snapshot) Max() time.Duration {
	for i := Buckets - 1; i >= 0; i-- {
		if s.counts[i] != 0 {
			return time.Duration(value(i))
		}
	}
	return 0
}
