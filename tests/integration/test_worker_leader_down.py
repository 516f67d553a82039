"""worker_output_leader_down_loses_nothing: the output partitions' leader broker goes down for
seconds mid-stream (broker-down, no leader change) and comes back -> the worker holds its offsets
meanwhile (nothing committed past an unacknowledged result), then delivers everything: no loss."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 400


def test():
    texts = H.imdb_reviews(N)
    topics = "reviews:2,review-scores:2,reviews-dlq:1"
    with H.Harness("leader_down", brokers=3, topics=topics) as h:
        for cmd in ("leader reviews 0 1", "leader reviews 1 2", "leader review-scores 0 3", "leader review-scores 1 3",
                    "leader reviews-dlq 0 1", f"coordinator group {h.group} 1"):
            h.broker.control(cmd)
        o = {"batch.max_sequences": "16", "model.max_seq_len": "64"}
        w = h.worker(overrides=o, env={"BERTSTREAM_TEST_BATCH_DELAY_MS": "50"})
        w.wait_ready()
        h.produce_reviews(texts)
        w.wait_metric("bertstream_messages_scored_total", 60, timeout=40)
        h.broker.control("broker-down 3")
        time.sleep(1.0)  # let what was already in flight settle
        at_down = w.metric("bertstream_messages_scored_total")
        committed_at_down = sum(max(0, c) for c in h.committed().values())
        time.sleep(5)
        during = w.metric("bertstream_messages_scored_total")
        committed_during = sum(max(0, c) for c in h.committed().values())
        H.log(f"while broker 3 was down: scored {at_down:.0f} -> {during:.0f}, committed {committed_at_down} -> "
              f"{committed_during}")
        H.check(during == at_down, f"results acknowledged while the output leader was down ({at_down} -> {during})")
        H.check(committed_during <= during, f"committed {committed_during} > acknowledged results {during}")
        h.broker.control("broker-up 3")
        w.wait_metric("bertstream_messages_scored_total", N, timeout=45)
        scores = h.scores(N, settle=1.0)
        dups = H.check_each_once(scores, [f"r{i}" for i in range(N)], allow_dups=True)
        H.log(f"duplicates (producer retries across the outage): {dups}")
        H.check(len(h.read_topic("reviews-dlq", 0, timeout=5)) == 0, "dead letters during an outage")
        H.check(w.stop() == 0, "exit status")
        H.check(sum(max(0, c) for c in h.committed().values()) == N, f"committed {h.committed()}")


if __name__ == "__main__":
    H.main(test)
