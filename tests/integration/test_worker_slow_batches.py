"""worker_batches_slower_than_max_poll_interval_keep_assignment: every batch takes longer than
max.poll.interval.ms (6 s; BERTSTREAM_TEST_BATCH_DELAY_MS=7000 slows each batch) -> the consumer
thread keeps polling (backpressure pauses partitions instead of stopping polls), so the worker is
never kicked out of the group: one assignment, no revocation, no lost partitions, no loss, no
duplicates."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 16


def test():
    texts = H.imdb_reviews(N)
    with H.Harness("slow_batches", topics="reviews:2,review-scores:2,reviews-dlq:1") as h:
        o = {"batch.max_sequences": "8", "batch.max_delay_ms": "0", "model.max_seq_len": "64",
             "worker.queue_depth": "8",  # a full queue: backpressure has to pause the partitions
             "consumer.max.poll.interval.ms": "6000", "consumer.session.timeout.ms": "6000"}
        w = h.worker(overrides=o, env={"BERTSTREAM_TEST_BATCH_DELAY_MS": "7000"})
        w.wait_ready()
        h.produce_reviews(texts)
        w.wait_metric("bertstream_messages_scored_total", N, timeout=50)
        scores = h.scores(N, settle=0.5)
        H.check_each_once(scores, [f"r{i}" for i in range(N)])
        H.check(w.log_count('msg="partitions assigned"') == 1, "assigned more than once (a rebalance happened)")
        H.check(w.log_count('msg="partitions revoked"') == 0, "partitions revoked while scoring slowly")
        H.check(w.log_count("max.poll.interval") == 0, "max.poll.interval.ms exceeded")
        batches = w.metric("bertstream_batch_sequences_count")
        H.log(f"{batches:.0f} batches, each over max.poll.interval.ms")
        H.check(w.stop(timeout=30) == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
