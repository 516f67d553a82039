"""worker_exactly_once_publishes_in_transactions: delivery=exactly_once -> the worker's producer is
transactional (transactional.id derived from group.id and the host), results and dead letters are
produced inside transactions that also carry the input offsets (send_offsets_to_transaction), the
transactions commit without errors, and a read_committed consumer sees every result exactly once.

librdkafka 2.0.2's mock cluster discards transactional offset commits, writes no transaction markers
(read_committed cannot tell open from committed data there) and does not fence producers, so what a
restart, an abort or a zombie would do is not testable here (docs/architecture.md explains it)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 200


def test():
    texts = H.imdb_reviews(N)
    with H.Harness("exactly_once", topics="reviews:2,review-scores:2,reviews-dlq:1") as h:
        w = h.worker(overrides={"delivery": "exactly_once", "batch.max_sequences": "16", "model.max_seq_len": "64",
                                "log.level": "debug"})
        w.wait_ready()
        h.produce_reviews(texts)
        h.produce("reviews", [(b"bad1", b"\x05not avro"), (b"bad2", b"")])
        w.wait_metric("bertstream_messages_scored_total", N, timeout=45)
        w.wait_metric('bertstream_dead_letters_total{code="invalid_avro"}', 1, timeout=10)
        w.wait_metric('bertstream_dead_letters_total{code="truncated_avro"}', 1, timeout=10)
        msgs = h.read_topic("review-scores", N, timeout=30, isolation="read_committed")
        scores = [(m, H.decode_score(m.value())) for m in msgs]
        H.check_each_once(scores, [f"r{i}" for i in range(N)])
        dl = h.read_topic("reviews-dlq", 2, timeout=20, isolation="read_committed")
        H.check(sorted(m.key() for m in dl) == [b"bad1", b"bad2"], f"dead letters {[m.key() for m in dl]}")

        txns = w.log_count('msg="transaction committed"')
        with_offsets = w.log_count('msg="transaction committed"') - w.log_count("offsets_partitions=0")
        batches = w.metric("bertstream_batch_sequences_count")
        H.log(f"{txns} transactions ({with_offsets} with offsets) for {batches:.0f} batches")
        H.check(w.log_count('msg="transactional producer ready" transactional.id=bertstream-' + h.group) == 1,
                "no transactional producer with the derived transactional.id")
        H.check(txns >= 1 and with_offsets >= 1, "no transaction committed with offsets")
        H.check(w.log_count("fatal") == 0 and w.log_count("aborting transaction") == 0, "transaction errors logged")
        H.check(w.stop() == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
