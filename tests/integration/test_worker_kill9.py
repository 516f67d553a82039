"""worker_kill9_mid_batch_loses_nothing: kill -9 while batches are in flight, twice, restarting each
time -> every review is scored (no loss), and the duplicates stay within what can be in flight
(queue_depth slots + the results acknowledged since the last commit)."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 600
QUEUE_DEPTH = 64
MAX_SEQ = 16


def test():
    texts = H.imdb_reviews(N)
    o = {"batch.max_sequences": str(MAX_SEQ), "model.max_seq_len": "64", "worker.queue_depth": str(QUEUE_DEPTH),
         "consumer.auto.commit.interval.ms": "100"}
    env = {"BERTSTREAM_TEST_BATCH_DELAY_MS": "100"}
    with H.Harness("kill9") as h:
        h.produce_reviews(texts)
        scored_before = 0
        for i, at in enumerate((120, 320)):
            w = h.worker(f"victim{i + 1}", overrides=o, env=env)
            w.wait_ready()
            w.wait_metric("bertstream_messages_scored_total", at - scored_before, timeout=40)
            w.kill9()
            scored_before = len(h.read_topic("review-scores", 0, timeout=5))
            H.log(f"killed victim{i + 1}; {scored_before} results so far; committed {h.committed()}")
        w = h.worker("survivor", overrides=o)
        w.wait_ready()
        committed_left = N - sum(max(0, c) for c in h.committed().values())
        w.wait_metric("bertstream_messages_scored_total", committed_left, timeout=45)
        scores = h.scores(N, settle=1.0)
        dups = H.check_each_once(scores, [f"r{i}" for i in range(N)], allow_dups=True)
        bound = 2 * (QUEUE_DEPTH + 2 * MAX_SEQ)  # two kills
        H.log(f"duplicates after two kill -9: {dups} (bound {bound})")
        H.check(dups <= bound, f"{dups} duplicates > bound {bound}")
        H.check(w.stop() == 0, "survivor exit status")


if __name__ == "__main__":
    H.main(test)
