"""worker_second_worker_joins_mid_stream: a second worker joins the group while the first is busy
-> cooperative-sticky rebalance: of the partitions it gives up, the first drops the queued messages
(the second scores them), finishes what its engine already holds, commits that, and keeps the other
partitions (no stop-the-world, nothing lost); both score; every review is scored, and duplicates
are bounded by what one engine holds: two batches in flight and the one being filled. (When the
first worker scored its whole queue before committing, 16 batches at this test's 400 ms each, the
group's generation could move on first, the commit then failed and up to queue_depth reviews were
scored twice.)"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 600
QUEUE_DEPTH = 128
BATCH = 8


def test():
    texts = H.imdb_reviews(N)
    with H.Harness("rebalance") as h:
        o = {"batch.max_sequences": str(BATCH), "model.max_seq_len": "64", "worker.queue_depth": str(QUEUE_DEPTH)}
        env = {"BERTSTREAM_TEST_BATCH_DELAY_MS": "400"}  # ~20 reviews/s: the stream outlasts the rebalance
        w1 = h.worker("first", overrides=o, env=env)
        w1.wait_ready()
        h.produce_reviews(texts, spread=4)  # every partition has work left when some of them move
        w1.wait_metric("bertstream_messages_scored_total", 40, timeout=40)
        w2 = h.worker("second", overrides=o, env=env)
        w2.wait_ready(timeout=40)
        s1, s2 = H.wait_scored([w1, w2], N, 45)
        H.log(f"first scored {s1:.0f}, second {s2:.0f}")
        H.check(s2 > 0, "the second worker scored nothing")
        scores = h.scores(N, settle=1.0)
        dups = H.check_each_once(scores, [f"r{i}" for i in range(N)], allow_dups=True)
        H.log(f"duplicates: {dups}")
        H.check(dups <= 3 * BATCH, f"{dups} duplicates > 3 batches of {BATCH} (what one engine holds)")
        H.check(w1.log_count("msg=\"partitions revoked\"") >= 1, "the first worker revoked nothing")
        H.check(w1.log_count("lost=1") == 0, "partitions were lost, not revoked")
        with open(w1.logpath, "rb") as f:  # the revoke waited for the engine's batches, not the queue
            waits = [float(x) for x in re.findall(rb'msg="revoked partitions drained".*? wait_s=([0-9.]+)', f.read())]
        H.log(f"revoke waits: {waits} s")
        H.check(waits and max(waits) < 4.0, f"a revoke waited {waits} s: more than the engine's batches take")
        H.check(w1.stop() == 0 and w2.stop() == 0, "exit status")
        c = h.committed()
        H.check(sum(max(0, v) for v in c.values()) == N, f"committed {c}")


if __name__ == "__main__":
    H.main(test)
