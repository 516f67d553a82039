"""worker_memory_flat_over_100k_messages: 100,000 short reviews through one worker (tiny model, big
batches) -> RSS measured from /proc at 20k and at 100k scored stays flat (the hot path allocates
nothing per message that it does not free), and every review is scored."""
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
        w = h.worker(overrides=o)
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
            if i == 20_000:
                pass
        p.flush(60)
        H.log(f"{N} reviews produced in {time.time() - t0:.1f}s")
        w.wait_metric("bertstream_messages_scored_total", 20_000, timeout=60)
        rss20 = w.rss_kb()
        H.log(f"RSS at {w.metric('bertstream_messages_scored_total'):.0f} scored: {rss20 / 1024:.1f} MiB")
        w.wait_metric("bertstream_messages_scored_total", N, timeout=150)
        rss100 = w.rss_kb()
        el = time.time() - t0
        H.log(f"RSS at {N} scored: {rss100 / 1024:.1f} MiB; {N / el:.0f} reviews/s end to end")
        H.check(rss100 - rss20 <= 16 * 1024, f"RSS grew {((rss100 - rss20) / 1024):.1f} MiB from 20k to 100k")
        msgs = h.read_topic("review-scores", N, timeout=60)
        ids = set(review_id(m.value()) for m in msgs)
        H.check(len(ids) == N, f"{len(ids)} distinct reviews scored of {N} ({len(msgs)} results)")
        H.check(w.stop(timeout=30) == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
