#!/usr/bin/env bash
# Runs every built fuzz target for FUZZ_SECONDS each, from a corpus seeded by
# tests/fuzz/corpus/<target>/ (if present); a crash fails the run. FUZZ_JOBS targets run
# at once (default 2: one per core of the CI machine; each fuzzer is one process).
set -u
cd "$(dirname "$0")/../.."
build=${SP_BUILD:-build-fuzz}
secs=${FUZZ_SECONDS:-20}
jobs=${FUZZ_JOBS:-2}
[[ "$jobs" =~ ^[1-9]$ ]] || { echo "FUZZ_JOBS must be 1-9" >&2; exit 2; }

# One target; "PASS"/"FAIL" and its lines into $build/<name>.result.
run_one() {
	local f=$1 name corpus seeds
	name=$(basename "$f")
	corpus="$build/corpus/$name"
	mkdir -p "$corpus"
	seeds=()
	[ -d "tests/fuzz/corpus/$name" ] && seeds+=("tests/fuzz/corpus/$name")
	# The malformed-frame (and -record) fixtures seed their decoder's fuzzer too.
	[ "$name" = frame_fuzz ] && seeds+=("tests/fixtures/frames")
	[ "$name" = oplog_fuzz ] && seeds+=("tests/fixtures/oplog_malformed")
	if "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$build/" "$corpus" "${seeds[@]}" >"$build/$name.log" 2>&1; then
		{ echo "PASS fuzz: $name for ${secs}s"
		  grep -E "stat::number_of_executed_units" "$build/$name.log" | sed "s/^/  /"; } >"$build/$name.result"
	else
		{ echo "FAIL $name"; tail -n 40 "$build/$name.log"; } >"$build/$name.result"
	fi
}

fail=0 pass=0 names=()
for f in "$build"/fuzz/*_fuzz; do
	[ -x "$f" ] || continue
	while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
		wait -n 2>/dev/null || true
	done
	names+=("$(basename "$f")")
	run_one "$f" &
done
wait
for name in "${names[@]}"; do
	cat "$build/$name.result"
	if head -c 4 "$build/$name.result" | grep -q PASS; then
		pass=$((pass + 1))
	else
		fail=$((fail + 1))
	fi
	rm -f "$build/$name.result"
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && [ $pass -gt 0 ]
