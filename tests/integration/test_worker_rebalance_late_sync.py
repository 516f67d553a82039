"""worker_rebalance_late_follower_sync: the case that made it_test_worker_rebalance fail in CI
(stop 20, 2026-11-28: 25 duplicates against a bound of 24), made to happen on purpose.

The second worker joins while the first is busy; then it is frozen (SIGSTOP) with its JoinGroup
waiting at the broker, so that when the rebalance completes its SyncGroup comes after the leader's.
librdkafka's mock broker completes the sync with the leader's request alone, refuses the late
follower's, and the follower's new JoinGroup starts another rebalance at once. The first worker's
periodic commits were refused through the whole join (seconds), and its commit at the end of the
revoke, after the engine's batches, is refused too. Before the fix nothing covered what it had
scored since the last periodic commit: the second scored ~24 of those again. Now the revoke commits
what is already acknowledged first, before waiting for the engine, while the group is stable; the
duplicates are bounded by what the engine held (two batches in flight and the one being filled)."""
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 600
BATCH = 4  # a bound of 3 batches = 12, well under the ~24 scored again without the first commit


def test():
    texts = H.imdb_reviews(N)
    with H.Harness("rebalance-late-sync") as h:
        o = {"batch.max_sequences": str(BATCH), "model.max_seq_len": "64", "worker.queue_depth": "128"}
        env = {"BERTSTREAM_TEST_BATCH_DELAY_MS": "200"}  # ~20 reviews/s: the stream outlasts the rebalances
        w1 = h.worker("first", overrides=o, env=env)
        w1.wait_ready()
        h.produce_reviews(texts, spread=4)
        w1.wait_metric("bertstream_messages_scored_total", 40, timeout=40)
        w2 = h.worker("second", overrides=o, env=env)
        w2.wait_log('msg="worker ready"', 40)  # subscribed: its JoinGroup goes out now
        time.sleep(1.0)
        w2.signal(signal.SIGSTOP)
        try:
            H.log("second frozen with its JoinGroup pending")
            w1.wait_log('msg="partitions revoked"', 30)  # the leader synced alone
        finally:
            w2.signal(signal.SIGCONT)
        H.log("second thawed: its SyncGroup comes late")
        s1, s2 = H.wait_scored([w1, w2], N, 60)
        H.log(f"first scored {s1:.0f}, second {s2:.0f}")
        H.check(s2 > 0, "the second worker scored nothing")
        scores = h.scores(N, settle=1.0)
        dups = H.check_each_once(scores, [f"r{i}" for i in range(N)], allow_dups=True)
        refused = w1.log_count('msg="synchronous commit failed" why=revoke ')
        H.log(f"duplicates: {dups}; the revoke's last commit refused: {'yes' if refused else 'no'}")
        H.check(w1.log_count('msg="offsets committed" why=revoke_acknowledged') >= 1,
                "the revoke did not commit what was acknowledged before waiting for the engine")
        H.check(dups <= 3 * BATCH, f"{dups} duplicates > 3 batches of {BATCH} (what one engine holds)")
        H.check(w1.log_count("lost=1") == 0, "partitions were lost, not revoked")
        H.check(w1.stop() == 0 and w2.stop() == 0, "exit status")
        c = h.committed()
        H.check(sum(max(0, v) for v in c.values()) == N, f"committed {c}")


if __name__ == "__main__":
    H.main(test)
