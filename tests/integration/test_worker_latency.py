"""worker_broker_latency_loses_nothing: 250 ms of round-trip time added to every broker mid-stream
(and removed again) -> everything is scored exactly once and committed."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 300


def test():
    texts = H.imdb_reviews(N)
    with H.Harness("latency", brokers=2) as h:
        o = {"batch.max_sequences": "16", "model.max_seq_len": "64"}
        w = h.worker(overrides=o, env={"BERTSTREAM_TEST_BATCH_DELAY_MS": "100"})
        w.wait_ready()
        h.produce_reviews(texts)
        w.wait_metric("bertstream_messages_scored_total", 50, timeout=40)
        h.broker.control("rtt -1 250")
        s0 = w.metric("bertstream_messages_scored_total")
        import time
        time.sleep(4)
        s1 = w.metric("bertstream_messages_scored_total")
        H.log(f"scored under 250 ms rtt: {s0:.0f} -> {s1:.0f} in 4 s")
        H.check(s1 > s0, "no progress under added latency")
        h.broker.control("rtt -1 0")
        w.wait_metric("bertstream_messages_scored_total", N, timeout=40)
        scores = h.scores(N, settle=1.0)
        H.check_each_once(scores, [f"r{i}" for i in range(N)])
        H.check(w.stop() == 0, "exit status")
        c = h.committed()
        H.check(sum(max(0, v) for v in c.values()) == N, f"committed {c}")


if __name__ == "__main__":
    H.main(test)
