#!/usr/bin/env bash
# `bertstream worker` without a broker: --help, a bad override and an unknown key are one-line errors
# with exit 2 naming the key; a missing model directory is a one-line error with exit 1 naming the
# file, before any Kafka client exists. (The pipeline itself: tests/integration/test_worker_*.py.)
# Usage: bash tests/cli/test_worker.sh BIN
set -euo pipefail
bin=${1:?usage: test_worker.sh BIN}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, condition text, command status
    if [ "$3" -eq 0 ]; then echo "ok   $1"; else echo "FAIL $1: $2"; fail=1; fi
}

"$bin" worker --help >"$tmp/out" 2>&1 && rc=0 || rc=$?
grep -q '^usage: bertstream worker --config FILE' "$tmp/out" && [ "$rc" -eq 0 ] && st=0 || st=1
check worker_help_prints_usage "rc=$rc $(head -1 "$tmp/out")" $st

"$bin" worker -o batch.max_sequences=0 >"$tmp/out" 2>&1 && rc=0 || rc=$?
[ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/out")" -eq 1 ] && grep -q 'batch.max_sequences' "$tmp/out" && st=0 || st=1
check worker_rejects_out_of_range_override "rc=$rc $(cat "$tmp/out")" $st

"$bin" worker -o batch.nope=1 >"$tmp/out" 2>&1 && rc=0 || rc=$?
[ "$rc" -eq 2 ] && [ "$(wc -l <"$tmp/out")" -eq 1 ] && grep -q "batch.nope" "$tmp/out" && st=0 || st=1
check worker_rejects_unknown_key "rc=$rc $(cat "$tmp/out")" $st

"$bin" worker -o model.dir="$tmp/no-such-model" -o http.listen= -o topics.heads= -o log.level=error \
    >"$tmp/out" 2>&1 && rc=0 || rc=$?
[ "$rc" -eq 1 ] && [ "$(wc -l <"$tmp/out")" -eq 1 ] && grep -q "$tmp/no-such-model" "$tmp/out" && st=0 || st=1
check worker_missing_model_is_one_line_naming_the_file "rc=$rc $(cat "$tmp/out")" $st

exit $fail
