"""worker_scores_every_review_once_like_offline_score: Avro Reviews in (python producer) -> worker ->
Avro ReviewScores out, decoded with schemas/review_score.avsc: every review scored exactly once, with
the offline `bertstream score` result for the same model and head (probability within 1e-6), the
input key (else review_id) as key, the encoder_id as model_id and the input's partition and offset;
/metrics and /readyz agree; SIGTERM exits 0. test_worker_two_slots runs the same with two batches in
flight on the CPU engine (run(env=...))."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

N = 300


def run(name="end_to_end", env=None, during=None):
    """The whole check; during(worker) runs while the reviews are scored. Returns the worker's log."""
    texts = H.imdb_reviews(N - 2) + ["", "Short and sweet. Loved it!"]  # an empty review is valid
    with H.Harness(name) as h:
        w = h.worker(overrides={"batch.max_sequences": "32"}, env=env)
        w.wait_ready()
        t_produce = time.time()
        where = h.produce_reviews(texts)
        if during:
            during(w)
        w.wait_metric("bertstream_messages_scored_total", N, timeout=45)
        H.log(f"{N} reviews scored {time.time() - t_produce:.2f}s after produce started")
        scores = h.scores(N, settle=0.5)
        ids = [f"r{i}" for i in range(N)]
        H.check_each_once(scores, ids)

        offline = H.score_offline(h.model_dir, h.head, texts)
        worst = 0.0
        for m, s in scores:
            i = int(s["review_id"][1:])
            o = offline[i]
            H.check(s["label"] == o["label"], f"{s['review_id']}: label {s['label']} != offline {o['label']}")
            H.check(s["tokens"] == o["tokens"], f"{s['review_id']}: tokens {s['tokens']} != {o['tokens']}")
            H.check(s["truncated"] == o["truncated"], f"{s['review_id']}: truncated differs")
            d = abs(s["probability"] - o["probability"])
            worst = max(worst, d)
            H.check(d <= 1e-6, f"{s['review_id']}: probability {s['probability']} vs offline {o['probability']}")
            H.check(abs(s["logit"] - o["logit"]) <= 1e-5, f"{s['review_id']}: logit {s['logit']} vs {o['logit']}")
            H.check(s["model_id"] == h.encoder_id, f"model_id {s['model_id']} != {h.encoder_id}")
            H.check(s["head_version"] == 0, f"head_version {s['head_version']}")
            H.check((s["source_partition"], s["source_offset"]) == tuple(where[i]),
                    f"{s['review_id']}: source {s['source_partition']}/{s['source_offset']} != {where[i]}")
            want_key = s["review_id"].encode()
            H.check(m.key() == want_key, f"{s['review_id']}: key {m.key()!r} != {want_key!r}")
            H.check(abs(s["scored_at"] / 1000.0 - time.time()) < 120, f"scored_at {s['scored_at']} is not now")
        H.log(f"largest probability difference vs offline score: {worst:.3g}")
        H.check(any(s["truncated"] for _, s in scores), "no IMDB review was truncated at 128 tokens")

        st, body = w.get("/readyz")
        H.check(st == 200, f"/readyz {st} {body}")
        st, body = w.get("/healthz")
        H.check(st == 200, f"/healthz {st}")
        mt = w.metrics()
        H.check(mt.get("bertstream_messages_consumed_total") == N, f"consumed_total {mt.get('bertstream_messages_consumed_total')}")
        H.check(mt.get("bertstream_messages_scored_total") == N, "scored_total")
        H.check(mt.get("bertstream_batch_sequences_count", 0) >= 1, "batch_sequences histogram empty")
        H.check(mt.get("bertstream_end_to_end_seconds_count") == N, "end_to_end histogram count")
        H.check(mt.get("bertstream_head_version") == 0, "head_version gauge")
        H.check(any(k.startswith("bertstream_consumer_lag{") for k in mt), "no consumer_lag series")
        H.check("bertstream_gpu_busy_ratio" in mt, "no gpu_busy_ratio")
        H.check(len(h.read_topic("reviews-dlq", 0, timeout=5)) == 0, "dead letters for valid reviews")

        rc = w.stop()
        H.check(rc == 0, f"worker exit status {rc} after SIGTERM")
        committed = h.committed()
        ends = {}
        for p, o in where:
            ends[p] = max(ends.get(p, -1), o + 1)
        H.check(all(committed.get(p) == e for p, e in ends.items()), f"committed {committed} != ends {ends}")
        with open(w.logpath, "rb") as f:
            return f.read().decode(errors="replace")


def test():
    run()


if __name__ == "__main__":
    H.main(test)
