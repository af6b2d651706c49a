#!/usr/bin/env bash
# Runs Sluice's benchmarks and summarises them.
#
#   bench/run.sh              full run: -count 10, about 10-20 minutes on a 2-core machine
#   bench/run.sh -quick       smoke run for CI: -count 3, small benchtimes, about a minute
#   bench/run.sh -count N     N samples of each benchmark (default 10, 3 with -quick)
#   bench/run.sh -ref REF     benchmark the library as committed at REF (e.g. HEAD), not the
#                             working tree: useful while others are editing it
#
# The N samples are taken in N rounds, each running every variant of a family once (not go
# test's -count N, which takes a variant's N samples back to back), so that all variants see
# the same drift of a shared machine's load.
#
# Output (in bench/results/, each prefixed quick- in quick mode): raw.txt, the benchstat
# summary (benchstat.txt, benchstat.csv) and ratios.txt, the table of ratios against hand.
set -euo pipefail

self="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$self")"

quick=0
ref=""
samples=""
while [[ $# -gt 0 ]]; do
	case "$1" in
	-quick | --quick) quick=1 ;;
	-count | --count)
		samples="${2:?-count needs a number}"
		[[ $samples =~ ^[1-9][0-9]*$ ]] || {
			echo "run.sh: -count $samples: want a positive number" >&2
			exit 2
		}
		shift
		;;
	-ref | --ref)
		ref="${2:?-ref needs a git ref}"
		shift
		;;
	-h | --help)
		sed -n '2,15p' "$self"
		exit 0
		;;
	*)
		echo "run.sh: unknown argument $1 (use -quick, -count N, -ref REF)" >&2
		exit 2
		;;
	esac
	shift
done

if [[ $quick == 1 ]]; then
	count=3
	cpu_time=50000x # items per CPU run (one op = one item)
	io_time=1x      # runs of 20,000 items
	lat_time=2x     # runs of 2,000 items at one per 100 µs
	out=results/quick-
else
	count=10
	cpu_time=1500000x
	io_time=8x
	lat_time=10x
	out=results/
fi
count=${samples:-$count}

raw=${out}raw.txt
mkdir -p results
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The bench module may lag the library's go.mod while others change it: resolve as needed
# (this can update bench/go.sum, never the library's files).
export GOFLAGS=-mod=mod
modflags=()
if [[ -n $ref ]]; then
	# Benchmark a snapshot of the library at REF, through a temporary go.mod whose replace
	# points at it; bench/go.mod is left alone.
	git -C .. rev-parse --verify "$ref^{commit}" >/dev/null
	mkdir -p "$work/sluice"
	git -C .. archive "$ref" | tar -x -C "$work/sluice"
	sed "s#=> \.\./\?\$#=> $work/sluice#" go.mod >"$work/go.mod"
	cp go.sum "$work/go.sum"
	modflags=(-modfile="$work/go.mod")
	echo "run.sh: benchmarking the library at $ref ($(git -C .. rev-parse --short "$ref"))"
fi

# Build once, then run the test binary: no compiling between benchmark families.
go test "${modflags[@]}" -c -o "$work/bench.test" .

# $count rounds (see the top): each runs every variant of the family once.
run() { # family benchtime
	for _ in $(seq "$count"); do
		"$work/bench.test" -test.run '^$' -test.bench "^Benchmark$1\$" -test.count 1 \
			-test.benchtime "$2" -test.timeout 60m
	done
}

if [[ -n $ref ]]; then
	what="$ref = $(git -C .. rev-parse --short "$ref")"
else
	what="working tree at $(git -C .. rev-parse --short HEAD 2>/dev/null || echo '?')"
	if [[ -n "$(git -C .. status --porcelain -- . ':!bench' 2>/dev/null | head -1)" ]]; then
		what+=" with uncommitted changes"
	fi
fi
start=$(date +%s)
{
	echo "# sluice bench: $(date -u +%Y-%m-%dT%H:%M:%SZ), library: $what"
	echo "# load before run: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true), nproc $(nproc)"
	run CPU "$cpu_time"
	run IO "$io_time"
	run Latency "$lat_time"
	echo "# load after run: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true), $(($(date +%s) - start)) s"
} 2>&1 | tee "$raw"

if grep -q -- '^--- FAIL\|^FAIL' "$raw"; then
	echo "run.sh: a benchmark failed; see $raw" >&2
	exit 1
fi

# benchstat: the one in GOPATH/bin if it is there, else fetched with go run.
benchstat="$(go env GOPATH)/bin/benchstat"
if [[ ! -x $benchstat ]]; then
	benchstat=(go run golang.org/x/perf/cmd/benchstat@latest)
else
	benchstat=("$benchstat")
fi

"${benchstat[@]}" "$raw" 2>/dev/null | tee "${out}benchstat.txt"
"${benchstat[@]}" -format csv "$raw" 2>/dev/null >"${out}benchstat.csv"

# Ratios against hand, from benchstat's medians. In the CSV each table starts with a line
# ",<unit>,CI" and each row is "<name>-<GOMAXPROCS>,<median>,<CI>".
awk -F, '
function add(name, unit, v) { val[name SUBSEP unit] = v; if (!(name in seen)) { seen[name] = 1; order[++n] = name } }
function get(name, unit) { return ((name SUBSEP unit) in val) ? val[name SUBSEP unit] : "" }
function ratio(a, b) { return (a == "" || b == "" || b == 0) ? "-" : sprintf("%.2f", a / b) }
function num(fmt, v) { return v == "" ? "-" : sprintf(fmt, v) }
$3 == "CI" && $1 == "" { unit = $2; next }
NF >= 2 && $1 != "" && $1 != "geomean" && unit != "" {
	name = $1; sub(/-[0-9]+$/, "", name); add(name, unit, $2 + 0)
}
END {
	print ""
	print "Ratios vs hand (benchstat medians)"
	print ""
	printf "%-22s %12s %9s %12s\n", "CPU variant", "ns/item", "x hand", "allocs/item"
	h = get("CPU/hand", "sec/item")
	for (i = 1; i <= n; i++) {
		nm = order[i]; if (nm !~ /^CPU\//) continue
		ns = get(nm, "sec/item"); if (ns != "") ns *= 1e9
		printf "%-22s %12s %9s %12s\n", substr(nm, 5), num("%.1f", ns), ratio(get(nm, "sec/item"), h), num("%.3f", get(nm, "allocs/item"))
	}
	print ""
	printf "%-22s %12s %9s %9s %9s %12s\n", "IO variant", "items/s", "bound-%", "busy-%", "x hand", "allocs/item"
	h = get("IO/hand", "items/s")
	for (i = 1; i <= n; i++) {
		nm = order[i]; if (nm !~ /^IO\//) continue
		printf "%-22s %12s %9s %9s %9s %12s\n", substr(nm, 4), num("%.0f", get(nm, "items/s")), num("%.1f", get(nm, "bound-%")), num("%.1f", get(nm, "busy-%")), ratio(get(nm, "items/s"), h), num("%.3f", get(nm, "allocs/item"))
	}
	print "(bound-%: against 64 / the sleep measured alone before the runs; busy-%: against 64 / the"
	print " sleep as timed inside the run by the sleeping stage)"
	print ""
	printf "%-22s %12s %12s\n", "Latency variant", "p50 us", "p99 us"
	for (i = 1; i <= n; i++) {
		nm = order[i]; if (nm !~ /^Latency\//) continue
		printf "%-22s %12s %12s\n", substr(nm, 9), num("%.1f", get(nm, "p50-us")), num("%.1f", get(nm, "p99-us"))
	}
	hp50 = get("Latency/hand", "p50-us"); sp50 = get("Latency/sluice", "p50-us")
	hp99 = get("Latency/hand", "p99-us"); sp99 = get("Latency/sluice", "p99-us")
	if (hp99 != "" && sp99 != "") {
		printf "%-22s %12.1f %12.1f\n", "added/stage (sluice)", (sp50 - hp50) / 3, (sp99 - hp99) / 3
		print "(added/stage = (sluice - hand) / 3 stages)"
	}
}' "${out}benchstat.csv" | tee "${out}ratios.txt"

echo
echo "run.sh: raw results in bench/$raw; summaries in bench/${out}{benchstat.txt,benchstat.csv,ratios.txt}"
