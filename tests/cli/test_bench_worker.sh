#!/usr/bin/env bash
# scripts/bench-worker.sh still runs end to end (a smoke run, not a timing: 300 reviews, 2 s of
# paced latency on the tiny CPU model) and its summary carries every field docs/performance.md and
# gpu-check.sh read, with the counts it was asked for and latencies that are real numbers.
# Usage: bash test_bench_worker.sh path/to/bertstream
set -u
BIN=${1:?usage: test_bench_worker.sh BIN}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
DATA=${BERTSTREAM_DATA:-$SRC/../shared/data}
if [ ! -f "$DATA/imdb/reviews.tsv" ] || [ ! -f "$DATA/bert-base-uncased/vocab.txt" ]; then
    if [ "${CI:-}" = true ]; then echo "FAIL: $DATA/imdb/reviews.tsv or the vocabulary missing (CI=true)"; exit 1; fi
    echo "SKIP: $DATA/imdb/reviews.tsv or the vocabulary missing"; exit 77
fi
out=$(BERTSTREAM_DATA=$DATA "$SRC/scripts/bench-worker.sh" --bin "$BIN" --reviews 300 --seconds 2 --rate 50 \
    --batch 64 --partitions 2 2>/tmp/bench-worker-test.$$.err)
rc=$?
if [ $rc -ne 0 ]; then
    echo "FAIL bench-worker.sh exited $rc:"
    tail -20 /tmp/bench-worker-test.$$.err
    rm -f /tmp/bench-worker-test.$$.err
    exit 1
fi
rm -f /tmp/bench-worker-test.$$.err
echo "$out"
py=python3
[ -x /usr/bin/python3 ] && py=/usr/bin/python3
"$py" - "$out" <<'PY'
import json, math, sys
s = json.loads(sys.argv[1])
fails = 0
def check(cond, what):
    global fails
    print(("ok   " if cond else "FAIL ") + what)
    fails += not cond
check(s["throughput_reviews"] == 300, "throughput_reviews = 300")
check(s["latency_reviews"] == 100, "latency_reviews = 50/s x 2 s = 100")
check(s["throughput_reviews_per_s"] > 0, "throughput_reviews_per_s > 0")
check(0 < s["engine_busy_fraction"] <= 1.0, "0 < engine_busy_fraction <= 1")
check(s["engine"].startswith("cpu fp32"), f"engine described: {s['engine']}")
lat_cpu = s["broker_cpu_peak_latency"]  # sampled once a second over a 2 s phase: at least one sample
check(isinstance(lat_cpu, (int, float)) and 0 <= lat_cpu <= s["cores"] + 0.5,
      f"broker_cpu_peak_latency = {lat_cpu} cores")
check(s["broker_cpu_peak_drain"] is None or 0 <= s["broker_cpu_peak_drain"] <= s["cores"] + 0.5,
      f"broker_cpu_peak_drain = {s['broker_cpu_peak_drain']}")
check(s["throughput_window_s"] > 0 and s["drain_s"] >= 0, "throughput window and drain time")
check(s["batch_max_sequences"] == 64 and s["partitions"] == 2 and s["max_seq_len"] == 128, "options echoed")
for k in ("p50_ms_to_result_produced", "p99_ms_to_result_produced", "p50_ms_to_result_visible",
          "p99_ms_to_result_visible"):
    check(math.isfinite(s[k]) and 0 <= s[k] < 60000, f"{k} = {s[k]} ms")
check(s["p50_ms_to_result_produced"] <= s["p99_ms_to_result_produced"], "p50 <= p99 (produced)")
check(s["p50_ms_to_result_produced"] <= s["p50_ms_to_result_visible"], "produced before visible (p50)")
sys.exit(1 if fails else 0)
PY
