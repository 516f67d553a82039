#!/usr/bin/env bash
# Runs shellcheck (warnings and errors) on every shell script of the project: scripts/*.sh and tests/**/*.sh.
# Skips (exit 77) without shellcheck, except in CI (CI=true), where that fails.
# Usage: bash tests/cli/test_shellcheck.sh [BIN]   (BIN unused)
set -euo pipefail
shopt -s globstar nullglob

root=${BERTSTREAM_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
if ! command -v shellcheck >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "test_shellcheck: shellcheck missing in CI (scripts/install-deps.sh installs it)"
        exit 1
    fi
    echo "test_shellcheck: shellcheck missing, skipped"
    exit 77
fi
cd "$root"
files=(scripts/*.sh tests/**/*.sh)
if [ ${#files[@]} -eq 0 ]; then
    echo "test_shellcheck: no shell scripts found under $root"
    exit 1
fi
bad=0
for f in "${files[@]}"; do
    if out=$(shellcheck -x -S warning "$f" 2>&1); then
        echo "ok   $f"
    else
        echo "FAIL $f"
        printf '%s\n' "$out" | sed 's/^/    /'
        bad=$((bad + 1))
    fi
done
echo "$((${#files[@]} - bad)) passed, $bad failed"
[ "$bad" -eq 0 ]
