package dlq

import (
	"time"
	"unicode"
	"unicode/utf8"
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
	// Case is compared as [strings.EqualFold] compares it, rune by rune
	// under Unicode simple case folding, so "οδος" matches "ΟΔΟΣ" (final
	// sigma) and "k" matches the Kelvin sign.
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
	if f.Match != "" && !containsFold(r.Error, f.Match) {
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

// containsFold reports whether substr is within s under Unicode simple
// case folding, as [strings.EqualFold] compares strings: some substring of
// s is EqualFold to substr. An empty substr is within every s.
func containsFold(s, substr string) bool {
	if substr == "" {
		return true
	}
	for i := 0; i < len(s); {
		if hasPrefixFold(s[i:], substr) {
			return true
		}
		_, n := utf8.DecodeRuneInString(s[i:])
		i += n
	}
	return false
}

// hasPrefixFold reports whether s begins with a string that is EqualFold
// to prefix. Simple folding maps a rune to a rune, so the two have as
// many runes.
func hasPrefixFold(s, prefix string) bool {
	for _, p := range prefix {
		if s == "" {
			return false
		}
		r, n := utf8.DecodeRuneInString(s)
		s = s[n:]
		if !equalFoldRune(r, p) {
			return false
		}
	}
	return true
}

// equalFoldRune reports whether a and b are in one orbit of
// [unicode.SimpleFold], the equivalence strings.EqualFold uses.
func equalFoldRune(a, b rune) bool {
	if a == b {
		return true
	}
	for r := unicode.SimpleFold(a); r != a; r = unicode.SimpleFold(r) {
		if r == b {
			return true
		}
	}
	return false
}
