#!/usr/bin/env bash
# The deployment check (scripts/check-deploy.sh): kustomize renders every overlay, yamllint, the
# cross-reference checker with its self-test on broken copies, promtool when present, shellcheck.
# Skips (exit 77) when a tool it needs is missing, except in CI (CI=true), where that fails.
# Usage: bash tests/cli/test_deploy.sh [BIN]
set -euo pipefail

root=${BERTSTREAM_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
rc=0
tools=$(bash "$root/scripts/check-deploy.sh" --check-tools 2>&1) || rc=$?
if [ "$rc" -eq 2 ]; then
    echo "$tools"
    if [ "${CI:-}" = true ]; then
        echo "test_deploy: a tool check-deploy.sh needs is missing in CI (scripts/install-deps.sh installs them)"
        exit 1
    fi
    echo "test_deploy: skipped (missing tool)"
    exit 77
elif [ "$rc" -ne 0 ]; then
    echo "$tools"
    exit 1
fi
# BIN (CTest passes the bertstream executable): every container's configuration also goes through the real
# parser. Without it those runs are skipped, with a line saying so.
bin=${1:-${BERTSTREAM_BIN:-}}
if [ -n "$bin" ] && [ -x "$bin" ]; then
    exec bash "$root/scripts/check-deploy.sh" --bin "$bin"
fi
exec bash "$root/scripts/check-deploy.sh"
