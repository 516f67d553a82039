"""worker_memory_flat_over_100k_messages: 100,000 short reviews through one worker (tiny model, big
batches) -> RSS, sampled from /proc every 0.2 s, stays flat: its peak while the worker scores
reviews 60k..100k exceeds its peak over reviews 10k..50k by at most 16 MiB (the hot path allocates
nothing per message that it does not free; peaks, not single samples, because how full the
consumer's prefetch queue is at one instant varies by tens of MiB), and every review is scored.
Under ASan the worker runs with a 16 MiB quarantine (ASan's default is 256 MiB, which fills as
freed memory is held back and would read as growth), so the RSS is the worker's, not ASan's."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 100_000
WORDS = ["good", "bad", "great", "awful", "plot", "actors", "boring", "fun", "movie", "film", "loved", "hated"]


def zz(n):
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def review(i):
    rid = f"s{i}".encode()
    text = " ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(3 + i % 6)).encode()
    return zz(len(rid)) + rid + zz(len(text)) + text + b"\x00\x00"  # Avro Review, source/created_at null


def review_id(value):
    """The first Avro field of a ReviewScore (review_id), parsed by hand: fast enough for 100k."""
    n, shift, i = 0, 0, 0
    while True:
        b = value[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if not b & 0x80:
            break
    n = (n >> 1) ^ -(n & 1)
    return value[i:i + n]


def test():
    with H.Harness("soak", topics="reviews:4,review-scores:4,reviews-dlq:1") as h:
        o = {"batch.max_sequences": "512", "batch.max_tokens": "8192", "model.max_seq_len": "16",
             "batch.max_delay_ms": "5", "log.level": "warn"}
        asan = ":".join(x for x in (os.environ.get("ASAN_OPTIONS", ""), "quarantine_size_mb=16") if x)
        w = h.worker(overrides=o, env={"ASAN_OPTIONS": asan})
        w.wait_ready()
        t0 = time.time()
        p = h.producer(**{"linger.ms": 20, "batch.num.messages": 10000})
        for i in range(N):
            while True:
                try:
                    p.produce("reviews", value=review(i))
                    break
                except BufferError:
                    p.poll(0.05)
            if i % 1000 == 0:
                p.poll(0)
        p.flush(60)
        H.log(f"{N} reviews produced in {time.time() - t0:.1f}s")
        samples = []  # (scored, rss_kb)
        deadline = time.time() + 180
        while True:
            scored = w.metric("bertstream_messages_scored_total")
            samples.append((scored, w.rss_kb()))
            if scored >= N:
                break
            if w.p.poll() is not None:
                raise AssertionError(f"worker exited with {w.p.returncode}:\n{w.tail()}")
            H.check(time.time() < deadline, f"only {scored:.0f} of {N} scored within 180s")
            time.sleep(0.2)
        el = time.time() - t0
        early = [r for n, r in samples if 10_000 <= n <= 50_000]
        late = [r for n, r in samples if n >= 60_000]
        H.check(early and late, f"too few RSS samples ({len(samples)})")
        H.log(f"RSS peak over 10k..50k scored: {max(early) / 1024:.1f} MiB ({len(early)} samples); "
              f"over 60k..100k: {max(late) / 1024:.1f} MiB ({len(late)} samples); "
              f"{N / el:.0f} reviews/s end to end")
        H.check(max(late) - max(early) <= 16 * 1024,
                f"RSS peak grew {(max(late) - max(early)) / 1024:.1f} MiB from 10k..50k to 60k..100k")
        msgs = h.read_topic("review-scores", N, timeout=60)
        ids = set(review_id(m.value()) for m in msgs)
        H.check(len(ids) == N, f"{len(ids)} distinct reviews scored of {N} ({len(msgs)} results)")
        H.check(w.stop(timeout=30) == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
