#!/usr/bin/env bash
# End-to-end worker benchmark: `bertstream broker` (mock cluster on loopback), one `bertstream worker`
# with a random head, IMDb reviews from $BERTSTREAM_DATA/imdb/reviews.tsv (cycled) as Avro Reviews
# through `bertstream produce`, results read back with `bertstream consume`.
#   1. throughput: --reviews reviews written to the input topic before the worker starts; the
#      worker drains that backlog, and reviews/s is taken while it went from 10 % to 90 % of it
#      (results acknowledged: the worker's bertstream_messages_scored_total, sampled every 20 ms;
#      a window under 0.5 s or 20 batches gives way to the worker's whole run),
#      with the engine's busy share of that window (bertstream_gpu_busy_seconds_total: time with a
#      batch in the engine, overlapping batches once): near 100 % means Kafka and tokenization keep
#      up; also the whole drain, from the first result to the last (drain_s);
#   2. latency: --rate reviews/s (default: half the measured throughput) for --seconds; per review,
#      input timestamp -> result produced (the result's record timestamp) and -> result seen by a
#      consumer (after the broker acknowledged it); p50/p99 of each. The worker runs with
#      consumer.fetch.wait.max.ms=5: the mock broker holds an empty Fetch for the whole wait.
# Needs only bertstream and python3's standard library, so it runs on a bare GPU host from the bundle:
#   scripts/bench-worker.sh --bin build/bundle/bertstream --preset base --device cuda --reviews 60000
# Prints one JSON summary line on stdout (progress on stderr).
# Usage: scripts/bench-worker.sh [--bin PATH] [--model DIR | --preset tiny|base] [--device D]
#        [--precision P] [--reviews N] [--rate R] [--seconds S] [--max-len N] [--batch N] [--partitions N]
#        [--burst-timeout S] [--save DIR] [--set KEY=VALUE ...] (more worker config overrides)
#        (defaults: build/bertstream, init-model --preset tiny (random weights), cpu, 3000 reviews,
#        10 s, max-len 128, batch 256, 8 partitions or one per 2 MB of the burst, burst timeout 600 s;
#        env BERTSTREAM_DATA, BUILD_DIR)
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."

args=()
bin=""
while [ $# -gt 0 ]; do
    case $1 in
    --bin) bin=$2; shift 2 ;;
    -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) args+=("$1"); shift ;;
    esac
done

export BERTSTREAM_DATA=${BERTSTREAM_DATA:-$(pwd)/../shared/data}
[ -f "$BERTSTREAM_DATA/imdb/reviews.tsv" ] || { echo "bench-worker: $BERTSTREAM_DATA/imdb/reviews.tsv is missing" >&2; exit 1; }
if [ -z "$bin" ]; then
    build=${BUILD_DIR:-build}
    if [ ! -x "$build/bertstream" ]; then
        echo "bench-worker: building $build/bertstream" >&2
        cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
        cmake --build "$build" -j"$(nproc)" --target bertstream >/dev/null
    fi
    bin=$build/bertstream
fi
echo "bench-worker: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores" >&2
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
exec "$py" "$HERE/bench_worker.py" --bin "$bin" --data "$BERTSTREAM_DATA" ${args[@]+"${args[@]}"}
