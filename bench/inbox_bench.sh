#!/usr/bin/env bash
# Benchmarks one inbox shard: starts bin/inboxsrv in a temp dir on a free loopback port,
# runs bin/inboxbench RUNS times per mode and prints the medians; then fills a fresh shard
# with FILL entries and times its restart (store open + dedup index rebuild).
#
# Modes (each: RUNS runs of SECONDS_PER_RUN s; every run then drains all queues):
#   coalesced closed loop  CONTEXTS_CLOSED appenders, ready appends coalesced per socket
#                          into APPEND_MULTI requests of up to BATCH (the way connsrv sends
#                          one request per shard per event-loop pass)
#   coalesced open loop    RATE appends/s, REQUESTS APPEND_MULTI in flight per socket
#   per-request closed     one APPEND request per append, CONTEXTS in flight
#   per-request open       RATE_SINGLE appends/s, one APPEND request per append
# Env: RUNS (5), SECONDS_PER_RUN (5), CONTEXTS (512), CONTEXTS_CLOSED (1024), BATCH (128),
#   REQUESTS (1), DEVICES (1000), SIZE (200), RATE (25000), RATE_SINGLE (25000),
#   URL_KIND (tcp|ipc), FILL (1000000; 0 skips), MODES ("coalesced single"), SP_BIN (bin).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${SP_BIN:-bin}
RUNS=${RUNS:-5}
SECS=${SECONDS_PER_RUN:-5}
CONTEXTS=${CONTEXTS:-512}
CONTEXTS_CLOSED=${CONTEXTS_CLOSED:-1024}
BATCH=${BATCH:-128}
REQUESTS=${REQUESTS:-1}
RATE_SINGLE=${RATE_SINGLE:-25000}
MODES=${MODES:-coalesced single}
DEVICES=${DEVICES:-1000}
SIZE=${SIZE:-200}
RATE=${RATE:-25000}
FILL=${FILL:-1000000}
KIND=${URL_KIND:-tcp}

dir=$(mktemp -d /tmp/inbox_bench.XXXXXX)
pid=
cleanup() {
	if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; { wait "$pid"; } 2>/dev/null || true; fi
	rm -rf "$dir"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

url() {
	if [ "$KIND" = ipc ]; then echo "ipc://$dir/shard.sock"; else echo "tcp://127.0.0.1:$PORT"; fi
}

# start_shard DATA_DIR: starts the shard, waits for "listening on", sets $pid and $ready_ms.
start_shard() {
	local t0 log=$dir/shard.log
	: >"$log"
	t0=$(date +%s%N)
	"$BIN/inboxsrv" --data-dir "$1" --listen "$(url)" --contexts 1024 --map-size 16G \
		--max-queue-entries 100000 --insecure-internal >"$log" 2>&1 &
	pid=$!
	for _ in $(seq 1 1000); do
		grep -q "listening on" "$log" && break
		kill -0 "$pid" 2>/dev/null || { cat "$log"; echo "inboxsrv died" >&2; exit 1; }
		sleep 0.01
	done
	ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))
}

stop_shard() {
	kill -TERM "$pid"
	wait "$pid" || true
	pid=
}

# median FIELD FILE: median of key=value fields over the lines of FILE.
median() {
	grep -oE "(^| )$1=[0-9.]*" "$2" | cut -d= -f2 | sort -g | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'
}

report() {
	local f=$1
	printf '  appends/s %s  p50 %s ms  p99 %s ms  p99.9 %s ms  commits/s %s  appends/commit %s  drain entries/s %s' \
		"$(median appends_per_s "$f")" "$(median p50_ms "$f")" "$(median p99_ms "$f")" \
		"$(median p999_ms "$f")" "$(median commits_per_s "$f")" \
		"$(median appends_per_commit "$f")" "$(median drain_per_s "$f")"
	if grep -q items_per_request "$f"; then
		printf '  appends/request %s' "$(median items_per_request "$f")"
	fi
	printf '\n'
}

PORT=$(free_port)
start_shard "$dir/data"
echo "inboxsrv on $(url): $RUNS runs of $SECS s, $CONTEXTS contexts, $DEVICES devices, $SIZE-byte envelopes"

# run_mode TITLE FILE ARGS...: RUNS runs of inboxbench with ARGS, then their medians.
run_mode() {
	local title=$1 file=$2
	shift 2
	echo "$title:"
	for _ in $(seq 1 "$RUNS"); do
		"$BIN/inboxbench" --url "$(url)" --seconds "$SECS" --devices "$DEVICES" --size "$SIZE" \
			--quiet "$@" | tee -a "$dir/$file"
	done
	report "$dir/$file"
}

for mode in $MODES; do
	case $mode in
	coalesced)
		run_mode "coalesced, closed loop ($CONTEXTS_CLOSED appenders, APPEND_MULTI of up to $BATCH)" \
			closed_multi.txt --contexts "$CONTEXTS_CLOSED" --batch "$BATCH"
		run_mode "coalesced, open loop at $RATE appends/s ($REQUESTS request(s) in flight per socket; latency from the scheduled time)" \
			open_multi.txt --contexts "$CONTEXTS" --batch "$BATCH" --requests "$REQUESTS" --rate "$RATE"
		;;
	single)
		run_mode "one APPEND per request, closed loop ($CONTEXTS in flight)" \
			closed.txt --contexts "$CONTEXTS"
		run_mode "one APPEND per request, open loop at $RATE_SINGLE appends/s" \
			open.txt --contexts "$CONTEXTS" --rate "$RATE_SINGLE"
		;;
	*)
		echo "unknown mode $mode" >&2
		exit 2
		;;
	esac
done
stop_shard

if [ "$FILL" -gt 0 ]; then
	echo "open time: filling a fresh shard with $FILL entries"
	start_shard "$dir/fill"
	"$BIN/inboxbench" --url "$(url)" --count "$FILL" --contexts "$CONTEXTS_CLOSED" \
		--batch "$BATCH" --devices 1000 --size "$SIZE" --drain false --quiet
	stop_shard
	du -sh "$dir/fill" | sed 's/^/  data: /'
	start_shard "$dir/fill"
	printf '  restart after SIGTERM: %s; exec to "listening on" %s ms\n' \
		"$(grep -o 'opened in [0-9.]* ms: [0-9]* entries, [0-9]* dedup records' "$dir/shard.log")" "$ready_ms"
	kill -9 "$pid"
	{ wait "$pid"; } 2>/dev/null || true
	start_shard "$dir/fill"
	printf '  restart after SIGKILL: %s; exec to "listening on" %s ms\n' \
		"$(grep -o 'opened in [0-9.]* ms: [0-9]* entries, [0-9]* dedup records' "$dir/shard.log")" "$ready_ms"
	stop_shard
fi
