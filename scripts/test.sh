#!/usr/bin/env bash
# The test command: installs missing deps, configures, builds, runs every test with CTest,
# then rebuilds the unit and command-line tests under AddressSanitizer + UndefinedBehaviorSanitizer
# and runs them again, then runs each libFuzzer target for a bounded time.
# GPU tests (CTest label `gpu`) run only when an NVIDIA device is present.
set -euo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${FUZZ_SECONDS:-20}
JOBS=${JOBS:-$(nproc)}

bash scripts/install-deps.sh

echo "== build (release, -Werror)"
cmake -S . -B build -DBERTSTREAM_WERROR=ON >/dev/null
cmake --build build -j"$JOBS"

exclude=()
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  echo "== no NVIDIA device: GPU tests (label gpu) excluded"
  exclude=(-LE gpu)
fi
echo "== ctest"
(cd build && ctest --output-on-failure -j"$JOBS" "${exclude[@]}")

echo "== ASan + UBSan build (unit and cli tests)"
cmake -S . -B build-asan -DBERTSTREAM_SANITIZE=ON -DBERTSTREAM_CUDA=OFF -DBERTSTREAM_WERROR=ON \
  -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build build-asan -j"$JOBS"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure -j"$JOBS" -L 'unit|cli')

echo "== the worker under ASan + UBSan: end to end, dead letters, SIGTERM, 100,000-message soak (memory flat)"
# The Kafka tools and the independent client stay as they are; only the worker runs instrumented
# (tests/integration/harness.py: BERTSTREAM_TEST_WORKER_BIN). A leak or UB report fails its exit status.
(cd build && BERTSTREAM_TEST_WORKER_BIN=$(pwd)/../build-asan/bertstream \
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --output-on-failure -j"$JOBS" -R 'it_test_worker_(end_to_end|dead_letters|sigterm|soak)$')

echo "== libFuzzer targets (${FUZZ_SECONDS}s each)"
CC=clang cmake -S . -B build-fuzz -DBERTSTREAM_FUZZ=ON -DBERTSTREAM_CUDA=OFF >/dev/null
cmake --build build-fuzz -j"$JOBS"
for f in build-fuzz/fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  corpus=build-fuzz/corpus/$name
  mkdir -p "$corpus"
  seeds=tests/fuzz/seeds/${name#fuzz_}
  if [ -d "$seeds" ]; then cp -n "$seeds"/* "$corpus"/ 2>/dev/null || true; fi
  echo "-- $name"
  "$f" -max_total_time="$FUZZ_SECONDS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=0 "$corpus" 2>&1 | tail -n 2
done
echo "test.sh: all passed"
