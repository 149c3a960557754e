#!/usr/bin/env bash
# Runs every test program: Check unit tests, integration test binaries, integration
# scripts. Each program passes when it exits 0. Prints one line per program and a closing
# "N passed, M failed" line; exits non-zero if any failed.
#   SP_BUILD (build dir, default build), SP_BIN (binaries, default bin),
#   SP_TEST_FILTER (substring: run only matching programs), SP_TEST_JOBS (programs run at
#   once, default 1; make test uses 2).
set -u
cd "$(dirname "$0")/.."
export SP_BUILD=${SP_BUILD:-build} SP_BIN=${SP_BIN:-bin}
export SP_ROOT=$PWD
filter=${SP_TEST_FILTER:-}
logdir=$SP_BUILD/test-logs
mkdir -p "$logdir"
# The integration tests' clusters share one set of dev certificates per run
# (scripts/devcluster.sh make_all_certs): made by the first, copied by the others. One
# cache per run, so that runs side by side never see each other's.
SP_DEVCLUSTER_CERTS_CACHE=$(mktemp -d /tmp/sp-test-certs-XXXXXX)
export SP_DEVCLUSTER_CERTS_CACHE
trap 'rm -rf "$SP_DEVCLUSTER_CERTS_CACHE"' EXIT

# The longest programs first (scripts, then integration binaries, then unit tests), so
# that with SP_TEST_JOBS > 1 the run does not end with one long test running alone.
progs=()
for t in tests/integration/*.sh "$SP_BUILD"/tests/*_itest "$SP_BUILD"/tests/*_test; do
	[ -e "$t" ] || continue
	[ -n "$filter" ] && [[ "$t" != *"$filter"* ]] && continue
	progs+=("$t")
done

# One program; its result line (and on failure its log's tail) into $logdir/$name.result.
run_one() {
	local t=$1 name start lsan rc secs summary
	name=$(basename "$t")
	start=$(date +%s)
	lsan=${LSAN_OPTIONS:-}
	[[ "$name" == *_itest ]] && lsan="suppressions=$SP_ROOT/tests/lsan-nng.supp${lsan:+:$lsan}"
	if [ "${SP_TEST_VERBOSE:-0}" = 1 ]; then
		LSAN_OPTIONS=$lsan "$t" 2>&1 | tee "$logdir/$name.log"
		rc=${PIPESTATUS[0]}
	else
		LSAN_OPTIONS=$lsan "$t" >"$logdir/$name.log" 2>&1
		rc=$?
	fi
	secs=$(( $(date +%s) - start ))
	summary=$(grep -E '^[0-9]+%: Checks|^[0-9]+ passed, [0-9]+ failed' "$logdir/$name.log" | tail -1)
	{
		if [ $rc -eq 0 ]; then
			printf 'PASS %-36s %4ss  %s\n' "$name" "$secs" "$summary"
		else
			printf 'FAIL %-36s %4ss  exit %s  %s\n' "$name" "$secs" "$rc" "$summary"
			echo "---- last lines of $logdir/$name.log ----"
			tail -n 40 "$logdir/$name.log"
			echo "----"
		fi
	} >"$logdir/$name.result"
}

# SP_TEST_JOBS programs at a time (default 1). Integration tests spend most of their time
# waiting on their own processes, so two at a time on two cores roughly halve the wall
# time; each runs its own cluster on its own ports.
jobs=${SP_TEST_JOBS:-1}
[[ "$jobs" =~ ^[1-9]$ ]] || { echo "SP_TEST_JOBS must be 1-9" >&2; exit 2; }
pass=0 fail=0 failed=()
report() {
	local name=$1
	cat "$logdir/$name.result"
	if head -c 4 "$logdir/$name.result" | grep -q PASS; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1))
		failed+=("$name")
	fi
	rm -f "$logdir/$name.result"
}
declare -A running=()
for t in "${progs[@]}"; do
	while [ ${#running[@]} -ge "$jobs" ]; do
		wait -n 2>/dev/null || true
		for pid in "${!running[@]}"; do
			if ! kill -0 "$pid" 2>/dev/null; then
				wait "$pid" 2>/dev/null
				report "${running[$pid]}"
				unset "running[$pid]"
			fi
		done
	done
	run_one "$t" &
	running[$!]=$(basename "$t")
done
for pid in "${!running[@]}"; do
	wait "$pid" 2>/dev/null
	report "${running[$pid]}"
done
echo
[ $fail -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && [ $pass -gt 0 ]
