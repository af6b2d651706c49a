#!/usr/bin/env bash
# Paired A/B of two builds of the benchmarks, for changes smaller than this machine's noise.
#
#   go test -c -o /tmp/a.test .    # in bench/, before the change
#   go test -c -o /tmp/b.test .    # after it
#   ./ab.sh /tmp/a.test /tmp/b.test [pairs] [bench regex] [benchtime] [metric] [B's regex]
#
# Defaults: 12 pairs of 'CPU/sluice$' at 1500000x, metric ns/item. It runs A then B once per
# pair, alternating, each in a fresh process, so that both see the same load, and prints the
# median of A and B and the median of the per-pair ratios B/A, with how many pairs B won (for a
# metric where lower is better). A ratio whose pairs split evenly is noise.
#
# With B's regex, B runs that benchmark instead: two variants of one build compared in pairs,
# e.g. sluice against hand in the I/O shape:
#
#   ./ab.sh /tmp/a.test /tmp/a.test 10 'IO$/hand$' 4x bound-% 'IO$/sluice$'
set -euo pipefail

usage='usage: ab.sh A.test B.test [pairs] [regex] [benchtime] [metric] [B regex]'
a=${1:?$usage}
b=${2:?$usage}
pairs=${3:-12}
regex=${4:-'CPU/sluice$'}
benchtime=${5:-1500000x}
metric=${6:-ns/item}
bregex=${7:-$regex}

one() {
	"$1" -test.run '^$' -test.bench "$2" -test.benchtime "$benchtime" -test.count 1 2>/dev/null |
		awk -v m="$metric" '{ for (i = 2; i <= NF; i++) if ($i == m) { print $(i - 1); exit } }'
}

rows=()
for _ in $(seq "$pairs"); do
	rows+=("$(one "$a" "$regex") $(one "$b" "$bregex")")
done
printf '%s\n' "${rows[@]}" | awk '
	function median(v, n,   i, j, t) {
		for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
		return n % 2 ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
	}
	NF == 2 && $1 > 0 { n++; A[n] = $1; B[n] = $2; R[n] = $2 / $1; if ($2 < $1) won++ }
	END {
		if (n == 0) { print "ab.sh: no results (check the regex and metric)"; exit 1 }
		printf "pairs %d: A median %.1f, B median %.1f, B/A median %.3f, B lower in %d of %d\n",
			n, median(A, n), median(B, n), median(R, n), won, n
	}'
