"""worker_head_swap_with_batches_in_flight_scores_with_the_applied_head: two batches in flight on the
CPU engine (BERTSTREAM_TEST_ENGINE_SLOTS=2, BERTSTREAM_TEST_ENGINE_LATENCY_MS=150) and a backlog of
reviews; a head (version 3) published on the heads topic is swapped in with encoder batches in flight
(the worker logs batches_in_flight > 0). The head is applied when a batch is collected, so batches
submitted before the swap and collected after it are scored by head 3: every result must carry the
version of the head that actually scored it, i.e. equal the offline `bertstream score` with that
head (version 0: head.file, version 3: the new one), and every review is scored exactly once."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402


def test():
    pool = H.imdb_reviews(400)
    topics = "reviews:1,review-scores:1,reviews-dlq:1,bertstream-heads:1"
    env = {"BERTSTREAM_TEST_ENGINE_SLOTS": "2", "BERTSTREAM_TEST_ENGINE_LATENCY_MS": "150"}
    with H.Harness("head_swap_in_flight", topics=topics) as h:
        w = h.worker(overrides={"topics.heads": "bertstream-heads", "model.max_seq_len": "64",
                                "batch.max_sequences": "8"}, env=env)
        w.wait_ready()
        texts = {}

        def send(prefix, chunk):
            for i, t in enumerate(chunk):
                texts[f"{prefix}{i}"] = t
            h.produce_reviews(chunk, prefix=prefix)

        send("a", pool[:80])
        w.wait_metric("bertstream_messages_scored_total", 16, timeout=30)
        # a backlog of 40 batches (several seconds at two per 150 ms): batches are in flight when the
        # follower hands the new head over, whenever in that span it does. The head is published only
        # once the worker has consumed part of the backlog: the mock broker may hold the main
        # consumer's pending empty Fetch for its whole wait while the heads follower reads at once
        # (CI saw the head swapped before the backlog had reached the engine)
        send("b", pool[80:])
        w.wait_metric("bertstream_messages_consumed_total", 80 + 40, timeout=30)
        new = H.head_tensors(h.hidden, seed=99)
        h.produce("bertstream-heads", [(None, H.head_weights_bytes(new, 3, h.encoder_id))])
        t0 = time.time()
        while w.metric("bertstream_head_version") != 3 and time.time() - t0 < 30:
            time.sleep(0.05)
        H.check(w.metric("bertstream_head_version") == 3, f"head_version {w.metric('bertstream_head_version')}")
        H.check(w.metric("bertstream_messages_scored_total") < len(texts), "the backlog was gone before the swap")
        w.wait_metric("bertstream_messages_scored_total", len(texts), timeout=60)
        scores = h.scores(len(texts), settle=0.5)
        H.check_each_once(scores, list(texts))

        ids = sorted(texts)
        path = H.write_head(os.path.join(h.dir, "head3.safetensors"), h.hidden, tensors=new)
        offline = {0: H.score_offline(h.model_dir, h.head, [texts[i] for i in ids], max_len=64),
                   3: H.score_offline(h.model_dir, path, [texts[i] for i in ids], max_len=64)}
        index = {rid: n for n, rid in enumerate(ids)}
        versions = {0: 0, 3: 0}
        for _, s in scores:
            v = s["head_version"]
            H.check(v in offline, f"{s['review_id']}: head_version {v}")
            versions[v] += 1
            want = offline[v][index[s["review_id"]]]["probability"]
            H.check(abs(s["probability"] - want) <= 1e-6,
                    f"{s['review_id']} (head_version {v}): probability {s['probability']} vs offline {want}")
        H.log(f"results by head version: {versions}")
        H.check(versions[0] > 0 and versions[3] > 0, f"results by head version {versions}")
        with open(w.logpath, "rb") as f:
            log = f.read().decode(errors="replace")
        m = re.search(r'msg="head swapped".*batches_in_flight=(\d+)', log)
        H.check(m is not None, "no 'head swapped' line with batches_in_flight")
        H.check(int(m.group(1)) > 0, "the head was swapped with no batch in flight (nothing tested)")
        H.check(w.stop() == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
