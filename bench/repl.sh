#!/usr/bin/env bash
# The replication benchmark (issue 12): the same cluster build with 1 copy and with 3
# copies per inbox shard, side by side, fresh cluster per run, runs interleaved
# (1, 3, 1, 3, ...) so drift hits both alike:
#   - durable end-to-end throughput (messages delivered and ACKed per second, closed loop);
#   - p50/p99 send -> receipt at offered 5,000 and 10,000 msg/s (open loop);
#   - failover: SIGKILL of a shard primary to the first acknowledged append on the new
#     one (tests/integration/inbox_repl_itest with the default 5 s lease).
# Prints medians with min-max and writes bench/results/repl-<date>.json.
#
# Environment: SPBENCH_RUNS (default 3), SPBENCH_DURATION (s, default 10),
# SPBENCH_RATES (default "5000 10000"), SPBENCH_FAILOVER=0 to skip the failover runs,
# SP_PORT_BASE (default 17500), SP_DEVCLUSTER_DIR (default .devcluster-bench).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin=$root/bin
dc=$root/scripts/devcluster.sh
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
dur=${SPBENCH_DURATION:-10}
rates=${SPBENCH_RATES:-"5000 10000"}
stamp=$(date -u +%Y-%m-%d)
work=$(mktemp -d /tmp/spbench-repl-XXXXXX)
out=$root/bench/results/repl-$stamp.json
mkdir -p "$root/bench/results"

stop_cluster() { "$dc" down >/dev/null 2>&1 || true; }
cleanup() { stop_cluster; rm -rf "$work"; }
trap cleanup EXIT

if pgrep -f 'inboxbench|bin/spbench' >/dev/null; then
	echo "bench: another benchmark is running; two at once measure each other" >&2
	exit 1
fi
make -C "$root" -j2 all build/tests/inbox_repl_itest >/dev/null

for ((i = 1; i <= runs; i++)); do
	for copies in 1 3; do
		stop_cluster
		rm -rf "$SP_DEVCLUSTER_DIR/data" "$SP_DEVCLUSTER_DIR/spbench-accounts.txt"
		SEALPOST_DEVCLUSTER_COPIES=$copies "$dc" up >"$work/up.log" 2>&1 || { cat "$work/up.log" >&2; exit 1; }
		. "$SP_DEVCLUSTER_DIR/env"
		echo "bench: run $i/$runs, $copies copies: throughput" >&2
		"$bin/spbench" throughput --json --quiet --pairs 64 --window 32 --duration "$dur" --procs 1 \
			>>"$work/throughput-$copies.jsonl" || echo "bench: throughput run failed (kept)" >&2
		for r in $rates; do
			echo "bench: run $i/$runs, $copies copies: latency at $r/s" >&2
			"$bin/spbench" latency --json --quiet --pairs 64 --rate "$r" --duration "$dur" --procs 1 \
				>>"$work/latency-$r-$copies.jsonl" || echo "bench: latency run failed (kept)" >&2
		done
	done
done
stop_cluster

if [ "${SPBENCH_FAILOVER:-1}" = 1 ]; then
	for ((i = 1; i <= runs; i++)); do
		echo "bench: failover run $i/$runs" >&2
		SP_REPL_LEASE_TTL=5 SP_BIN=$bin "$root/build/tests/inbox_repl_itest" >"$work/failover.log" 2>&1 ||
			{ tail -5 "$work/failover.log" >&2; echo "bench: failover run failed" >&2; continue; }
		sed -n 's/^failover [12]: appends resumed \([0-9]*\) ms.*/\1/p' "$work/failover.log" >>"$work/failover.txt"
	done
fi

# median and spread of one field over a jsonl file
stat() { # file jq-expr
	jq -s "[.[] | $2] | sort | {median: (if length % 2 == 1 then .[length / 2 | floor] else (.[length / 2 - 1] + .[length / 2]) / 2 end), min: min, max: max, n: length}" "$1"
}
{
	echo '{"date": "'"$stamp"'", "machine": "'"$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)"'",'
	echo '"runs": '"$runs"', "duration_s": '"$dur"','
	for copies in 1 3; do
		echo '"copies_'"$copies"'": {'
		echo '"throughput_delivered_per_s": '"$(stat "$work/throughput-$copies.jsonl" .delivered_per_s)"','
		for r in $rates; do
			echo '"latency_'"$r"'_p50_ms": '"$(stat "$work/latency-$r-$copies.jsonl" .p50_ms)"','
			echo '"latency_'"$r"'_p99_ms": '"$(stat "$work/latency-$r-$copies.jsonl" .p99_ms)"','
			echo '"latency_'"$r"'_delivered_per_s": '"$(stat "$work/latency-$r-$copies.jsonl" .delivered_per_s)"','
		done
		echo '"lost": '"$(cat "$work"/*-"$copies".jsonl | jq -s 'map(.lost) | add')"
		echo '},'
	done
	if [ -s "$work/failover.txt" ]; then
		echo '"failover_ms": '"$(jq -s 'sort | {median: .[length / 2 | floor], min: min, max: max, n: length}' "$work/failover.txt")"
	else
		echo '"failover_ms": null'
	fi
	echo '}'
} | jq . >"$out"
jq -r '
  def f(x): "\(x.median | floor) (\(x.min | floor)-\(x.max | floor))";
  "                         1 copy               3 copies",
  "throughput (deliv/s)     \(f(.copies_1.throughput_delivered_per_s))   \(f(.copies_3.throughput_delivered_per_s))",
  (.copies_1 | keys[] | select(test("^latency_.*_ms$"))) as $k |
    "\($k)  \(f(.copies_1[$k]))   \(f(.copies_3[$k]))"' "$out"
jq -r 'if .failover_ms then "failover (kill -> first acknowledged append, ms): \(.failover_ms.median) (\(.failover_ms.min)-\(.failover_ms.max), n=\(.failover_ms.n))" else empty end' "$out"
echo "written: $out"
