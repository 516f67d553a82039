"""worker_sigterm_mid_batch_drains_without_duplicates: SIGTERM while batches are in flight (slowed
with BERTSTREAM_TEST_BATCH_DELAY_MS) -> the worker finishes what it started, commits and exits 0
promptly; a restarted worker scores the rest; every review is scored exactly once (ZERO duplicates).
test_worker_sigterm_two_slots runs it with two batches in flight (run(env=...))."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 600


def run(name="sigterm", env=None):
    """Returns the first worker's log."""
    texts = H.imdb_reviews(N)
    o = {"batch.max_sequences": "16", "model.max_seq_len": "64"}
    env = dict({"BERTSTREAM_TEST_BATCH_DELAY_MS": "150"}, **(env or {}))
    with H.Harness(name) as h:
        w1 = h.worker("first", overrides=o, env=env)
        w1.wait_ready()
        h.produce_reviews(texts)
        w1.wait_metric("bertstream_messages_scored_total", 100, timeout=40)
        t0 = time.time()
        rc = w1.stop(timeout=20)
        stop_s = time.time() - t0
        H.check(rc == 0, f"exit status {rc} after SIGTERM")
        H.log(f"first worker stopped in {stop_s:.2f}s")
        H.check(stop_s < 10, f"graceful stop took {stop_s:.1f}s")
        n1 = len(h.read_topic("review-scores", 0, timeout=5))
        H.check(100 <= n1 < N, f"{n1} results after the first worker (SIGTERM came too late to be mid-stream)")
        committed = h.committed()
        covered = sum(max(0, c) for c in committed.values())  # -1001: nothing committed yet
        H.check(covered == n1, f"committed offsets {committed} cover {covered} messages, results {n1}")

        w2 = h.worker("second", overrides=o)
        w2.wait_ready()
        w2.wait_metric("bertstream_messages_scored_total", N - n1, timeout=45)
        scores = h.scores(N, settle=1.0)
        H.check_each_once(scores, [f"r{i}" for i in range(N)])
        H.check(w2.metric("bertstream_messages_consumed_total") == N - n1,
                f"second worker consumed {w2.metric('bertstream_messages_consumed_total')}, wanted {N - n1}")
        H.check(w2.stop() == 0, "second worker exit status")
        with open(w1.logpath, "rb") as f:
            return f.read().decode(errors="replace")


def test():
    run()


if __name__ == "__main__":
    H.main(test)
