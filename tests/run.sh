#!/usr/bin/env bash
# Runs every test program: Check unit tests, integration test binaries, integration
# scripts. Each program passes when it exits 0. Prints one line per program and a closing
# "N passed, M failed" line; exits non-zero if any failed.
#   SP_BUILD (build dir, default build), SP_BIN (binaries, default bin),
#   SP_TEST_FILTER (substring: run only matching programs).
set -u
cd "$(dirname "$0")/.."
export SP_BUILD=${SP_BUILD:-build} SP_BIN=${SP_BIN:-bin}
export SP_ROOT=$PWD
filter=${SP_TEST_FILTER:-}
logdir=$SP_BUILD/test-logs
mkdir -p "$logdir"

progs=()
for t in "$SP_BUILD"/tests/*_test "$SP_BUILD"/tests/*_itest tests/integration/*.sh; do
	[ -e "$t" ] || continue
	[ -n "$filter" ] && [[ "$t" != *"$filter"* ]] && continue
	progs+=("$t")
done

pass=0 fail=0 failed=()
for t in "${progs[@]}"; do
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
	if [ $rc -eq 0 ]; then
		pass=$((pass + 1))
		printf 'PASS %-36s %4ss  %s\n' "$name" "$secs" "$summary"
	else
		fail=$((fail + 1))
		failed+=("$name")
		printf 'FAIL %-36s %4ss  exit %s  %s\n' "$name" "$secs" "$rc" "$summary"
		echo "---- last lines of $logdir/$name.log ----"
		tail -n 40 "$logdir/$name.log"
		echo "----"
	fi
done
echo
[ $fail -gt 0 ] && echo "failed: ${failed[*]}"
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && [ $pass -gt 0 ]
