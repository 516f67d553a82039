#!/usr/bin/env bash
# End-to-end worker benchmark on this machine: `bertstream broker` (mock cluster on loopback), one
# `bertstream worker` on the CPU engine with the tiny model (init-model --preset tiny, random weights)
# and a random head, IMDb reviews from $BERTSTREAM_DATA/imdb/reviews.tsv (cycled) as Avro Reviews.
#   1. throughput: a burst of --reviews reviews; reviews/s from the first produce to the last result
#      acknowledged (the worker's bertstream_messages_scored_total);
#   2. latency: --rate reviews/s (default: half the measured throughput) for --seconds; per review,
#      input timestamp -> result produced (record timestamps) and -> result seen by a consumer
#      (which is after the broker acknowledged it); p50/p99 of each. The worker runs with
#      consumer.fetch.wait.max.ms=5: the mock broker holds an empty Fetch for the whole wait.
# Prints one JSON summary line on stdout (progress on stderr).
# Usage: scripts/bench-worker.sh [--reviews N] [--rate R] [--seconds S] [--max-len N] [--batch N]
#        (env: BUILD_DIR (default build), BERTSTREAM_DATA)
set -euo pipefail
cd "$(dirname "$0")/.."

reviews=3000 rate=0 seconds=10 maxlen=128 batch=256
while [ $# -gt 0 ]; do
    case $1 in
    --reviews) reviews=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --max-len) maxlen=$2; shift 2 ;;
    --batch) batch=$2; shift 2 ;;
    -h | --help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-worker: unknown argument '$1'" >&2; exit 2 ;;
    esac
done

build=${BUILD_DIR:-build}
export BERTSTREAM_DATA=${BERTSTREAM_DATA:-$(pwd)/../shared/data}
[ -f "$BERTSTREAM_DATA/imdb/reviews.tsv" ] || { echo "bench-worker: $BERTSTREAM_DATA/imdb/reviews.tsv is missing" >&2; exit 1; }
if [ ! -x "$build/bertstream" ]; then
    echo "bench-worker: building $build/bertstream" >&2
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
    cmake --build "$build" -j"$(nproc)" --target bertstream >/dev/null
fi
BERTSTREAM_BIN=$(pwd)/$build/bertstream
BERTSTREAM_SOURCE_DIR=$(pwd)
export BERTSTREAM_BIN BERTSTREAM_SOURCE_DIR
echo "bench-worker: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), $(nproc) cores" >&2

exec /usr/bin/python3 - "$reviews" "$rate" "$seconds" "$maxlen" "$batch" <<'EOF'
import json, os, sys, threading, time
sys.path.insert(0, os.path.join(os.environ["BERTSTREAM_SOURCE_DIR"], "tests", "integration"))
import harness as H
from confluent_kafka import OFFSET_END, Consumer, TopicPartition

n_reviews, rate, seconds, maxlen, batch = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
texts = H.imdb_reviews()


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


with H.Harness("bench", topics="reviews:4,review-scores:4,reviews-dlq:1") as h:
    # The mock broker answers an empty Fetch only after fetch.wait.max.ms (a real broker answers as soon
    # as data arrives): without a short wait, every idle fetch would add up to 500 ms of latency.
    w = h.worker(overrides={"model.max_seq_len": str(maxlen), "batch.max_sequences": str(batch),
                            "consumer.fetch.wait.max.ms": "5", "log.level": "warn"})
    w.wait_ready()
    # -- 1. throughput: a burst --
    payloads = [H.review_bytes(f"t{i}", texts[i % len(texts)]) for i in range(n_reviews)]
    p = h.producer()
    t0 = time.time()
    for i, v in enumerate(payloads):
        while True:
            try:
                p.produce("reviews", key=f"t{i}".encode(), value=v)
                break
            except BufferError:
                p.poll(0.01)
    p.flush(60)
    w.wait_metric("bertstream_messages_scored_total", n_reviews, timeout=600)
    burst_s = time.time() - t0
    throughput = n_reviews / burst_s
    m = w.metrics()
    H.log(f"throughput: {n_reviews} reviews in {burst_s:.2f}s = {throughput:.0f}/s "
          f"(mean batch {m['bertstream_batch_sequences_sum'] / m['bertstream_batch_sequences_count']:.1f} sequences, "
          f"engine {m['bertstream_encode_seconds_sum']:.2f}s busy)")

    # -- 2. latency at a steady rate --
    rate = rate or max(1.0, throughput / 2)
    seen = {}
    stop = threading.Event()

    def reader():
        c = Consumer({"bootstrap.servers": h.broker.bootstrap, "group.id": "bench-reader",
                      "fetch.wait.max.ms": 5, "enable.auto.commit": False})
        c.assign([TopicPartition("review-scores", q, OFFSET_END) for q in range(4)])
        while not stop.is_set():
            msg = c.poll(0.05)
            if msg is None or msg.error():
                continue
            k = msg.key().decode()
            if k.startswith("l"):
                seen[k] = (time.time(), msg.timestamp()[1] / 1000.0)
        c.close()

    th = threading.Thread(target=reader)
    th.start()
    time.sleep(2)  # the reader's assignment settles
    sent = {}
    n = int(rate * seconds)
    start = time.time()
    for i in range(n):
        due = start + i / rate
        d = due - time.time()
        if d > 0:
            time.sleep(d)
        k = f"l{i}"
        ms = int(time.time() * 1000)  # the input timestamp (CreateTime), set explicitly
        sent[k] = ms / 1000.0
        p.produce("reviews", key=k.encode(), value=H.review_bytes(k, texts[i % len(texts)]), timestamp=ms)
        p.poll(0)
    p.flush(30)
    t_end = time.time() + 30
    while len(seen) < n and time.time() < t_end:
        time.sleep(0.1)
    stop.set()
    th.join()
    produced = [seen[k][1] - sent[k] for k in seen if k in sent]
    visible = [seen[k][0] - sent[k] for k in seen if k in sent]
    H.check(len(seen) == n, f"latency phase: {len(seen)} of {n} results seen")
    H.check(w.stop() == 0, "worker exit status")
    summary = {
        "engine": "cpu", "model": "tiny (init-model --preset tiny, 2 layers, hidden 128)", "max_seq_len": maxlen,
        "batch_max_sequences": batch, "cores": os.cpu_count(),
        "throughput_reviews": n_reviews, "throughput_reviews_per_s": round(throughput, 1),
        "latency_rate_per_s": round(rate, 1), "latency_reviews": n,
        "p50_ms_to_result_produced": round(1000 * pct(produced, 0.50), 1),
        "p99_ms_to_result_produced": round(1000 * pct(produced, 0.99), 1),
        "p50_ms_to_result_visible": round(1000 * pct(visible, 0.50), 1),
        "p99_ms_to_result_visible": round(1000 * pct(visible, 0.99), 1),
    }
    print(json.dumps(summary), flush=True)
EOF
