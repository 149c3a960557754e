#!/usr/bin/env bash
# `make bench`: starts a dev cluster for benchmarks (its own state dir and ports, send
# rate limits raised), runs the standard spbench suite, and writes
# bench/results/<date>.json (every run, plus medians) and PNG plots (gnuplot).
#
# Environment:
#   SPBENCH_RUNS=3            runs per measurement (the medians are reported)
#   SPBENCH_QUICK=1           a small-scale suite (minutes, for trying the pipeline)
#   SPBENCH_ONLY="a b"        only these of: group connections throughput latency storm crypto
#   SPBENCH_CONNS=100000      connections scenario size
#   SPBENCH_RATES="..."       latency: offered rates (msgs/s)
#   SPBENCH_DEVCLUSTER=path   cluster script (default scripts/devcluster.sh)
#   SP_PORT_BASE=17500, SP_DEVCLUSTER_DIR=.devcluster-bench
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$root/bin
dc=${SPBENCH_DEVCLUSTER:-$root/scripts/devcluster.sh}
export SP_DEVCLUSTER_DIR=${SP_DEVCLUSTER_DIR:-$root/.devcluster-bench}
export SP_PORT_BASE=${SP_PORT_BASE:-17500}
export SEALPOST_CONNSRV_SEND_RATE=1000000 SEALPOST_CONNSRV_SEND_BURST=1000000
# The load comes from a few loopback addresses: the per-source pre-login limits
# (docs/CONNSRV.md) are lifted so that they do not set the figures.
export SEALPOST_CONNSRV_HANDSHAKE_RATE=1000000 SEALPOST_CONNSRV_HANDSHAKE_BURST=1000000
export SEALPOST_CONNSRV_PRELOGIN_PER_SOURCE=1000000
# Benchmark users send, read, fetch bundles and make groups far faster than a person, all
# from one address: the abuse limits (docs/CONNSRV.md "Abuse limits") are raised out of the
# way but stay on, so that their Redis cost is part of the figures.
export SEALPOST_CONNSRV_LIMIT_SEND=10M/s SEALPOST_CONNSRV_LIMIT_SEND_SOURCE=10M/s
export SEALPOST_CONNSRV_LIMIT_RECEIPT=10M/s SEALPOST_CONNSRV_LIMIT_GROUP=10M/s
export SEALPOST_CONNSRV_LIMIT_GROUP_SOURCE=10M/s SEALPOST_CONNSRV_LIMIT_BUNDLE=10M/s
export SEALPOST_CONNSRV_LIMIT_BUNDLE_SOURCE=10M/s SEALPOST_CONNSRV_LIMIT_BUNDLE_TARGET=10M/s
export SEALPOST_CONNSRV_LIMIT_LOOKUP=10M/s SEALPOST_CONNSRV_LIMIT_LOOKUP_SOURCE=10M/s
runs=${SPBENCH_RUNS:-3}
only=${SPBENCH_ONLY:-group connections throughput latency storm crypto}
stamp=$(date -u +%Y-%m-%d)
outdir=$root/bench/results
work=$(mktemp -d /tmp/spbench-run-XXXXXX)
mkdir -p "$outdir"

if [ -n "${SPBENCH_QUICK:-}" ]; then
	conns=${SPBENCH_CONNS:-5000}; users=1000; queued=20; dur=5; pairs=32
	rates=${SPBENCH_RATES:-"1000 4000"}; gmsgs=50
else
	conns=${SPBENCH_CONNS:-100000}; users=10000; queued=50; dur=10; pairs=64
	rates=${SPBENCH_RATES:-"1000 2500 5000 7500 10000 15000 20000"}; gmsgs=300
fi

# `devcluster.sh down` SIGKILLs a connsrv master that is slow to drain, which orphans its
# workers (still holding the ports): stop those too, by pid, found by this cluster's dir.
stop_cluster() {
	"$dc" down >/dev/null 2>&1 || true
	local p
	for p in $(pgrep -f -- "--cert $SP_DEVCLUSTER_DIR/certs/" || true); do kill -KILL "$p" 2>/dev/null || true; done
}

cleanup() {
	stop_cluster
	rm -rf "$work"
}
trap cleanup EXIT

# Two benchmarks at once on two cores measure each other: wait (bounded) for others.
wait_quiet() {
	local i
	for ((i = 0; i < 360; i++)); do
		if ! pgrep -f 'inboxbench|bin/spbench' >/dev/null; then return 0; fi
		[ $i = 0 ] && echo "bench: another benchmark is running; waiting for it" >&2
		sleep 5
	done
	echo "bench: still busy after 30 min; measuring anyway" >&2
}

# fresh_cluster WORKERS: a cluster with empty data (storage figures need fresh shards).
fresh_cluster() {
	stop_cluster
	rm -rf "$SP_DEVCLUSTER_DIR/data" "$SP_DEVCLUSTER_DIR/spbench-accounts.txt"
	SP_CONNSRV_WORKERS=$1 "$dc" up >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
	. "$SP_DEVCLUSTER_DIR/env"
}

# restart_cluster WORKERS: every process anew, data (and so the accounts) kept.
restart_cluster() {
	stop_cluster
	SP_CONNSRV_WORKERS=$1 "$dc" up >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
	. "$SP_DEVCLUSTER_DIR/env"
}

# measure NAME SCENARIO ARGS...: $runs runs, each result appended to $work/NAME.jsonl.
measure() {
	local name=$1 scen=$2 i
	shift 2
	for ((i = 1; i <= runs; i++)); do
		wait_quiet
		echo "bench: $name run $i/$runs: spbench $scen $*" >&2
		"$bin/spbench" "$scen" --json --quiet "$@" >>"$work/$name.jsonl" ||
			echo "bench: $name run $i exited with an error (kept in the results)" >&2
	done
}

want() { [[ " $only " == *" $1 "* ]]; }

if want group; then
	fresh_cluster 1
	measure group group --group-sizes 10,256,1024 --group-msgs "$gmsgs" --size 1024 --duration "$dur" --window 8
fi
if want connections; then
	# ~12,500 connections per worker process keeps every process under the file cap.
	workers=$(((conns + 12499) / 25000 > 1 ? (conns + 12499) / 25000 : 1))
	fresh_cluster "$workers"
	"$bin/spbench" connections --conns "$conns" --hold 0 --quiet >/dev/null 2>&1 || true # provision
	for ((i = 1; i <= runs; i++)); do
		# Fresh processes, so the RSS baseline is not a warmed-up allocator.
		restart_cluster "$workers"
		runs_saved=$runs runs=1
		measure connections connections --conns "$conns" --hold 10 --concurrency 256 --sources 64
		runs=$runs_saved
	done
fi
if want throughput || want latency || want storm || want crypto; then
	fresh_cluster 1
fi
if want throughput; then
	measure throughput throughput --pairs "$pairs" --window 32 --duration "$dur" --procs 1
fi
if want latency; then
	for r in $rates; do
		measure "latency-$r" latency --pairs "$pairs" --rate "$r" --duration "$dur" --procs 1
	done
fi
if want storm; then
	"$bin/spbench" storm --users "$users" --queued 1 --quiet >/dev/null 2>&1 || true # provision
	measure storm storm --users "$users" --queued "$queued" --concurrency 1000 --storm-senders 32 --window 64
fi
if want crypto; then
	measure crypto throughput --crypto --pairs "$pairs" --window 32 --duration "$dur" --procs 1
fi

# One file: every run and, per measurement, the median of each numeric field. A partial
# suite (SPBENCH_ONLY) run on the same day replaces only its own measurements.
json=$outdir/$stamp.json
jq -n --arg date "$(date -u +%FT%TZ)" --arg commit "$(git rev-parse --short HEAD 2>/dev/null || echo none)" \
	--arg cpus "$(nproc)" --arg mem "$(free -g | awk '/Mem:/{print $2}')" --arg kernel "$(uname -r)" \
	--argjson runs "$runs" '{date: $date, commit: $commit, machine: {cpus: ($cpus|tonumber),
	  mem_gib: ($mem|tonumber), kernel: $kernel}, runs_per_measurement: $runs, results: {}}' >"$work/all.json"
if [ -f "$json" ]; then
	jq -s '.[1] * {results: ((.[0].results // {}) + .[1].results)}' "$json" "$work/all.json" >"$work/all.tmp"
	mv "$work/all.tmp" "$work/all.json"
fi
for f in "$work"/*.jsonl; do
	[ -e "$f" ] || continue
	name=$(basename "$f" .jsonl)
	jq -s --arg name "$name" '
	  def median: sort | if length == 0 then null elif length % 2 == 1 then .[length/2|floor]
	    else (.[length/2 - 1] + .[length/2]) / 2 end;
	  . as $all | {($name): {runs: $all, median: (reduce ($all[0] | to_entries[] |
	    select(.value|type == "number") | .key) as $k ({}; .[$k] = ([$all[] | .[$k] |
	    select(type == "number")] | median)))}}' "$f" \
		>"$work/$name.agg.json"
	jq -s '.[0] * {results: (.[0].results + .[1])}' "$work/all.json" "$work/$name.agg.json" >"$work/all.tmp"
	mv "$work/all.tmp" "$work/all.json"
done
cp "$work/all.json" "$json"
echo "bench: results in $json" >&2

# Plots: latency vs offered rate, and group storage per message vs group size.
if command -v gnuplot >/dev/null; then
	jq -r '.results | to_entries[] | select(.key | startswith("latency-")) | .value.median |
	  [.offered_rate, .p50_ms, .p99_ms, .p999_ms, .sent_p99_ms, .delivered_per_s] | @tsv' "$json" |
		sort -n >"$work/latency.tsv"
	jq -r '.results.group.runs[0].groups[]? | [.size, .storage_bytes_per_group_msg, .body_bytes_if_not_deduped,
	  .online_fanout_deliveries_per_s] | @tsv' "$json" >"$work/group.tsv"
	gnuplot -e "latency='$work/latency.tsv'; group='$work/group.tsv'; outdir='$outdir'; stamp='$stamp'" \
		bench/plot.gnuplot && echo "bench: plots in $outdir/$stamp-*.png" >&2
else
	echo "bench: gnuplot not installed; no plots" >&2
fi
