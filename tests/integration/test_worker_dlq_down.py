"""worker_dead_letter_topic_down_holds_offsets: the dead-letter topic's leader is down when a poison
message arrives -> the good messages after it are still scored, but no offset is committed past the
poison message while its dead letter is unacknowledged (the worker waits and logs); once the broker
is back the dead letter is delivered and the offsets move to the end. Nothing lost."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402


def test():
    with H.Harness("dlq_down", brokers=3, topics="reviews:1,review-scores:1,reviews-dlq:1") as h:
        for cmd in ("leader reviews 0 1", "leader review-scores 0 2", "leader reviews-dlq 0 3",
                    f"coordinator group {h.group} 1"):
            h.broker.control(cmd)
        w = h.worker(overrides={"batch.max_sequences": "8"})
        w.wait_ready()
        h.broker.control("broker-down 3")
        before = [(f"g{i}".encode(), H.review_bytes(f"g{i}", f"good review number {i}")) for i in range(10)]
        poison = [(b"poison", b"\x07garbage that is not avro")]
        after = [(f"h{i}".encode(), H.review_bytes(f"h{i}", f"another good review {i}")) for i in range(20)]
        where = h.produce("reviews", before + poison + after)
        poison_offset = where[10][1]
        w.wait_metric("bertstream_messages_scored_total", 30, timeout=30)
        time.sleep(3)  # several store/commit rounds
        c = h.committed()[0]
        H.log(f"while the dead-letter leader is down: committed {c}, poison at {poison_offset}")
        H.check(c <= poison_offset, f"committed {c} past the unacknowledged poison message at {poison_offset}")
        H.check(w.metric('bertstream_dead_letters_total{code="invalid_avro"}') == 0, "dead letter acknowledged?")
        H.check(w.p.poll() is None, "worker died")
        h.broker.control("broker-up 3")
        w.wait_metric('bertstream_dead_letters_total{code="invalid_avro"}', 1, timeout=40)
        t0 = time.time()
        while h.committed()[0] != where[-1][1] + 1 and time.time() - t0 < 15:
            time.sleep(0.3)
        H.check(h.committed()[0] == where[-1][1] + 1, f"committed {h.committed()} after recovery")
        dlq = h.read_topic("reviews-dlq", 1, timeout=10)
        H.check(len(dlq) == 1 and dlq[0].value() == poison[0][1] and dlq[0].key() == b"poison", "dead letter bytes")
        scores = h.scores(30, settle=0.5)
        H.check_each_once(scores, [f"g{i}" for i in range(10)] + [f"h{i}" for i in range(20)])
        H.check(w.stop() == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
