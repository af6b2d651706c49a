package dlq

import (
	"strings"
	"time"
)

// Filter selects records, for operator tools and replay. The zero Filter
// matches every record; each non-zero field narrows the selection, and a
// record must satisfy all of them.
type Filter struct {
	// Stage matches Record.Stage exactly, if non-empty.
	Stage string
	// Reason matches Record.Reason exactly, if non-empty.
	Reason Reason
	// Match is a case-insensitive substring of Record.Error, if non-empty.
	Match string
	// Since keeps records with FailedAt >= Since, if non-zero.
	Since time.Time
	// Until keeps records with FailedAt < Until, if non-zero.
	Until time.Time
	// Pipeline matches Record.Pipeline exactly, if non-empty.
	Pipeline string
}

// Matches reports whether r satisfies every condition of f.
func (f Filter) Matches(r Record) bool {
	if f.Stage != "" && r.Stage != f.Stage {
		return false
	}
	if f.Reason != "" && r.Reason != f.Reason {
		return false
	}
	if f.Pipeline != "" && r.Pipeline != f.Pipeline {
		return false
	}
	if f.Match != "" && !strings.Contains(strings.ToLower(r.Error), strings.ToLower(f.Match)) {
		return false
	}
	if !f.Since.IsZero() && r.FailedAt.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.FailedAt.Before(f.Until) {
		return false
	}
	return true
}

// Select returns the records of recs that f matches, in order. It returns
// a new slice; recs is not modified.
func (f Filter) Select(recs []Record) []Record {
	var out []Record
	for _, r := range recs {
		if f.Matches(r) {
			out = append(out, r)
		}
	}
	return out
}
