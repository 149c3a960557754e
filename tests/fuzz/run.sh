#!/usr/bin/env bash
# Runs every built fuzz target for FUZZ_SECONDS each, from a corpus seeded by
# tests/fuzz/corpus/<target>/ (if present); a crash fails the run.
set -u
cd "$(dirname "$0")/../.."
build=${SP_BUILD:-build-fuzz}
secs=${FUZZ_SECONDS:-20}
fail=0 pass=0
for f in "$build"/fuzz/*_fuzz; do
	[ -x "$f" ] || continue
	name=$(basename "$f")
	corpus="$build/corpus/$name"
	mkdir -p "$corpus"
	seeds=()
	[ -d "tests/fuzz/corpus/$name" ] && seeds+=("tests/fuzz/corpus/$name")
	# The malformed-frame (and -record) fixtures seed their decoder's fuzzer too.
	[ "$name" = frame_fuzz ] && seeds+=("tests/fixtures/frames")
	[ "$name" = oplog_fuzz ] && seeds+=("tests/fixtures/oplog_malformed")
	echo "fuzz: $name for ${secs}s"
	if "$f" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
		-artifact_prefix="$build/" "$corpus" "${seeds[@]}" >"$build/$name.log" 2>&1; then
		pass=$((pass + 1))
		grep -E "stat::number_of_executed_units" "$build/$name.log" | sed "s/^/  /"
	else
		fail=$((fail + 1))
		echo "FAIL $name"; tail -n 40 "$build/$name.log"
	fi
done
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && [ $pass -gt 0 ]
