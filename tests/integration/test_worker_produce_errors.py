"""worker_produce_errors_retried_or_dead_lettered: injected Produce errors. Retriable ones
(NOT_LEADER_FOR_PARTITION, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS) are retried: every review scored,
no dead letter. A permanent one (INVALID_RECORD) fails the results of one produce request: those
inputs go to the dead-letter topic with code produce_failed and their original bytes; every input
ends up exactly once in either topic."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 120


def test():
    texts = H.imdb_reviews(2 * N)
    with H.Harness("produce_errors", topics="reviews:2,review-scores:1,reviews-dlq:1") as h:
        # -- retriable (inputs first, then the errors: the worker's result produces meet them) --
        inputs_a = h.produce_reviews(texts[:N], prefix="a")
        h.broker.control("push-errors Produce NOT_LEADER_FOR_PARTITION,REQUEST_TIMED_OUT,NOT_ENOUGH_REPLICAS")
        w = h.worker(overrides={"batch.max_sequences": "16", "model.max_seq_len": "64"})
        w.wait_metric("bertstream_messages_scored_total", N, timeout=40)
        H.check(w.metric('bertstream_dead_letters_total{code="produce_failed"}') == 0, "produce_failed after retriable")
        H.check(w.stop() == 0, "exit status")
        # -- permanent (the inputs go in first, while no worker runs: the error is for the worker) --
        items = [(None, H.review_bytes(f"b{i}", t)) for i, t in enumerate(texts[N:])]
        h.produce("reviews", items)
        values = {f"b{i}": v for i, (_, v) in enumerate(items)}
        h.broker.control("push-errors Produce INVALID_RECORD")
        w = h.worker("second", overrides={"batch.max_sequences": "16", "model.max_seq_len": "64"})
        t_total = N
        import time
        t0 = time.time()
        while time.time() - t0 < 40:
            m = w.metrics()
            done = m.get("bertstream_messages_scored_total", 0) + m.get('bertstream_dead_letters_total{code="produce_failed"}', 0)
            if done >= t_total:
                break
            time.sleep(0.1)
        failed = w.metric('bertstream_dead_letters_total{code="produce_failed"}')
        H.log(f"produce_failed dead letters: {failed:.0f}")
        H.check(failed >= 1, "no produce_failed dead letter after a permanent produce error")
        dlq = h.read_topic("reviews-dlq", int(failed), timeout=20)
        H.check(len(dlq) == failed, f"{len(dlq)} dead letters, metric says {failed}")
        scores = h.scores(int(2 * N - failed), settle=1.0)
        scored_ids = [s["review_id"] for _, s in scores]
        dl_ids = []
        for m in dlq:
            hd = dict(m.headers())
            H.check(hd["bertstream.error.code"] == b"produce_failed", f"code {hd['bertstream.error.code']}")
            H.check(b"INVALID_RECORD" in hd["bertstream.error.reason"] or b"validate" in hd["bertstream.error.reason"],
                    f"reason {hd['bertstream.error.reason']!r}")
            rid = H.avro_decode(H.REVIEW, m.value())["review_id"]
            H.check(m.value() == values.get(rid), f"dead letter {rid}: value bytes differ from the input")
            dl_ids.append(rid)
        everything = scored_ids + dl_ids
        want = [f"a{i}" for i in range(N)] + [f"b{i}" for i in range(N)]
        H.check(sorted(everything) == sorted(want),
                f"inputs vs outputs differ: {len(everything)} outputs, missing {set(want) - set(everything)}, "
                f"dups {len(everything) - len(set(everything))}")
        H.check(w.stop() == 0, "exit status")
        _ = inputs_a


if __name__ == "__main__":
    H.main(test)
