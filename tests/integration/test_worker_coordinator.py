"""worker_group_coordinator_moves_loses_nothing: the consumer group's coordinator moves from broker 1
to 2 and then to 3 mid-stream -> the worker finds the new coordinator, keeps committing, scores
everything (no loss, bounded duplicates) and commits the end offsets on SIGTERM."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 400
QUEUE_DEPTH = 128


def test():
    texts = H.imdb_reviews(N)
    with H.Harness("coordinator", brokers=3) as h:
        h.broker.control(f"coordinator group {h.group} 1")
        o = {"batch.max_sequences": "16", "model.max_seq_len": "64", "worker.queue_depth": str(QUEUE_DEPTH)}
        w = h.worker(overrides=o, env={"BERTSTREAM_TEST_BATCH_DELAY_MS": "200"})
        w.wait_ready()
        h.produce_reviews(texts)
        w.wait_metric("bertstream_messages_scored_total", 80, timeout=40)
        h.broker.control(f"coordinator group {h.group} 2")
        time.sleep(2)
        c = h.committed()
        H.check(sum(max(0, v) for v in c.values()) > 80, f"nothing committed through coordinator 2: {c}")
        h.broker.control(f"coordinator group {h.group} 3")
        time.sleep(2)
        c = h.committed()
        H.check(sum(max(0, v) for v in c.values()) > 80, f"nothing committed through coordinator 3: {c}")
        w.wait_metric("bertstream_messages_scored_total", N, timeout=45)
        scores = h.scores(N, settle=1.0)
        dups = H.check_each_once(scores, [f"r{i}" for i in range(N)], allow_dups=True)
        H.log(f"duplicates: {dups}")
        H.check(dups <= QUEUE_DEPTH, f"{dups} duplicates > queue_depth {QUEUE_DEPTH}")
        H.check(w.stop() == 0, "exit status")
        c = h.committed()
        H.check(sum(max(0, v) for v in c.values()) == N, f"committed {c} after SIGTERM")


if __name__ == "__main__":
    H.main(test)
