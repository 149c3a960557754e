#!/usr/bin/env bash
# spbench smoke test: every scenario at tiny scale against a private dev cluster (fresh
# temp dir, random ports), checking from the JSON that messages flowed and that nothing
# was lost or duplicated. Functional only: no figure is asserted.
# SPBENCH_DEVCLUSTER overrides the cluster script (default scripts/devcluster.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${SP_BIN:-bin}
[[ "$bin" = /* ]] || bin=$root/$bin
dc=${SPBENCH_DEVCLUSTER:-$root/scripts/devcluster.sh}
dir=$(mktemp -d /tmp/sp-spbench-XXXXXX)
export SP_DEVCLUSTER_DIR=$dir SP_BIN=$bin
# Benchmark senders exceed the default per-device send rate.
export SEALPOST_CONNSRV_SEND_RATE=1000000 SEALPOST_CONNSRV_SEND_BURST=1000000
# ... and the per-user and per-source abuse limits (still on, raised out of the way).
export SEALPOST_CONNSRV_LIMIT_SEND=10M/s SEALPOST_CONNSRV_LIMIT_SEND_SOURCE=10M/s
export SEALPOST_CONNSRV_LIMIT_RECEIPT=10M/s SEALPOST_CONNSRV_LIMIT_BUNDLE=10M/s
export SEALPOST_CONNSRV_LIMIT_BUNDLE_TARGET=10M/s

cleanup() {
	"$dc" down >/dev/null 2>&1 || true
	if [ -z "${SP_KEEP_CLUSTER:-}" ]; then rm -rf "$dir"; else echo "kept $dir"; fi
}
trap cleanup EXIT

. "$root/tests/lib/devcluster_up.sh"
sp_devcluster_up "$dc"
. "$dir/env"

fails=0
# run NAME JQ-CONDITION SPBENCH-ARGS...
run() {
	local name=$1 cond=$2 scen=$3
	shift 3
	local out=$dir/$name.json
	if ! timeout 50 "$bin/spbench" "$scen" --json --quiet --timeout 40 "$@" >"$out" 2>"$dir/$name.err"; then
		echo "FAIL: $name: spbench $scen $* exited with an error"
		tail -n 20 "$dir/$name.err"
		fails=$((fails + 1))
		return
	fi
	if ! jq -e ".lost == 0 and .duplicated == 0 and .bad_payload == 0 and ($cond)" "$out" >/dev/null; then
		echo "FAIL: $name: condition ($cond) or lost/duplicated check failed:"
		cat "$out"
		fails=$((fails + 1))
		return
	fi
	echo "ok: $name"
}

run connections '.connections == 40 and .connect_failures == 0 and .login_per_s > 0' \
	connections --conns 40 --hold 0 --procs 2
run throughput '.sent_ok > 0 and .delivered == .sent_ok and .send_errors == 0 and .p99_ms > 0' \
	throughput --pairs 4 --window 8 --duration 2
run latency '.delivered > 0 and .delivered == .sent_ok and .sent_p99_ms > 0' \
	latency --pairs 4 --rate 200 --duration 2
run storm '.delivered == 400 and .devices_complete == 40' \
	storm --users 40 --queued 10 --storm-senders 4
run group '(.groups | length) == 2 and ([.groups[] | .drain_deliveries_per_s > 0 and .lost == 0] | all)' \
	group --group-sizes 3,12 --group-msgs 10 --window 4 --duration 1
run crypto '.delivered > 0 and .delivered == .sent_ok and .crypto_failures == 0' \
	throughput --crypto --pairs 2 --window 4 --duration 1

[ $fails = 0 ] || exit 1
echo "spbench smoke: all scenarios passed"
