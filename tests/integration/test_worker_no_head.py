"""worker_without_head_waits_then_scores: with no head.file and nothing on the heads topic the worker
consumes but scores nothing (/readyz 503 "head not loaded", partitions paused once the queue is full),
a SIGTERM then still exits 0 promptly without committing anything; a restarted worker scores every
review as soon as a head is published on the heads topic, with that head's version."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 40


def test():
    texts = H.imdb_reviews(N)
    topics = "reviews:1,review-scores:1,reviews-dlq:1,bertstream-heads:1"
    with H.Harness("no_head", topics=topics) as h:
        o = {"topics.heads": "bertstream-heads", "head.file": "", "worker.queue_depth": "16",
             "model.max_seq_len": "64"}
        w1 = h.worker("headless", overrides=o)
        h.produce_reviews(texts)
        w1.wait_metric("bertstream_messages_consumed_total", 16, timeout=30)
        time.sleep(1)
        st, body = w1.get("/readyz")
        H.check(st == 503 and "head not loaded" in body, f"/readyz {st} {body!r}")
        H.check(w1.metric("bertstream_messages_consumed_total") == 16, "consumed past queue_depth without a head")
        H.check(w1.metric("bertstream_messages_scored_total") == 0, "scored without a head")
        t0 = time.time()
        H.check(w1.stop(timeout=15) == 0, "exit status without a head")
        H.log(f"stopped in {time.time() - t0:.2f}s with 16 unscored messages in flight")
        H.check(all(c < 0 for c in h.committed().values()), f"committed {h.committed()} without any result")

        w2 = h.worker("second", overrides=o)
        time.sleep(2)
        H.check(w2.metric("bertstream_messages_scored_total") == 0, "scored without a head")
        h.produce("bertstream-heads", [(None, H.head_weights_bytes(H.head_tensors(h.hidden, seed=5), 7, h.encoder_id))])
        w2.wait_ready(timeout=30)
        w2.wait_metric("bertstream_messages_scored_total", N, timeout=30)
        scores = h.scores(N, settle=0.5)
        H.check_each_once(scores, [f"r{i}" for i in range(N)])
        H.check(all(s["head_version"] == 7 for _, s in scores), "results not scored with head version 7")
        H.check(w2.stop() == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
