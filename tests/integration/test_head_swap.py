"""worker_swaps_heads_live_rejects_bad_ones_and_resumes_with_the_latest: a worker started with head.file
(version 0), topics.heads and head.hmac_key scores with v0; a signed v1 published on the heads topic is
picked up between batches (bertstream_head_version 1) and every later result carries head_version 1 and
equals offline `bertstream score --head v1`; heads with a bad signature, no signature, a NaN, another
encoder_id, another input_dim, another feature and undecodable bytes are each counted in
bertstream_heads_rejected_total{reason} while v1 keeps serving; a head published by `bertstream train`
is swapped in next; a restarted worker starts scoring with that latest head."""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402
import train_harness as T  # noqa: E402

import numpy as np  # noqa: E402

KEY = "swap-test-key"


def rejected(w, reason):
    return w.metric(f'bertstream_heads_rejected_total{{reason="{reason}"}}')


def check_scored_with(h, batch, texts, version, head_file, tag):
    """batch: decoded ReviewScores for texts (review ids <tag><i>), all scored with head_version version,
    each equal to offline `score --head head_file`."""
    offline = H.score_offline(h.model_dir, head_file, texts)
    for s in batch:
        i = int(s["review_id"][len(tag):])
        H.check(s["head_version"] == version, f"{s['review_id']}: head_version {s['head_version']}, expected {version}")
        o = offline[i]
        H.check(s["label"] == o["label"], f"{s['review_id']}: label {s['label']} != offline {o['label']}")
        H.check(abs(s["probability"] - o["probability"]) <= 1e-6,
                f"{s['review_id']}: probability {s['probability']} vs offline {o['probability']} (v{version})")


def produce_and_collect(h, w, texts, tag, in_topic):
    """Produces reviews <tag>0.. and returns their ReviewScores (waiting for all of them); in_topic:
    results already on the output topic."""
    before = w.metric("bertstream_messages_scored_total")
    h.produce("reviews", [(f"{tag}{i}".encode(), H.review_bytes(f"{tag}{i}", t)) for i, t in enumerate(texts)])
    w.wait_metric("bertstream_messages_scored_total", before + len(texts), timeout=60)
    got = [s for _, s in h.scores(in_topic + len(texts), settle=0.3) if s["review_id"].startswith(tag)]
    H.check(len(got) == len(texts), f"batch {tag}: {len(got)} results for {len(texts)} reviews")
    return got


def test():
    data = T.imdb_labeled(260)
    texts = [t for _, t in data]
    with T.TrainHarness("head_swap") as h:
        rng = np.random.default_rng(5)
        C, Hd = h.hidden, 64
        overrides = {"topics.heads": "bertstream-heads", "head.hmac_key": KEY, "head.wait_ms": "10000",
                     "batch.max_sequences": "16"}
        w = h.worker(overrides=overrides)
        w.wait_ready()
        n = 0

        # v0: head.file
        a = produce_and_collect(h, w, texts[0:20], "a", n)
        n += 20
        check_scored_with(h, a, texts[0:20], 0, h.head, "a")

        # v1 on the topic, signed: swapped between batches
        v1 = T.head_record(1, h.encoder_id, rng.standard_normal((Hd, C)) * 0.3, rng.standard_normal(Hd) * 0.3,
                           rng.standard_normal((1, Hd)) * 0.3, np.array([-0.1]), metrics={"eval_accuracy": 0.5},
                           key=KEY)
        v1_file = T.write_head_file(os.path.join(h.dir, "v1.safetensors"), v1)
        h.publish_head(v1)
        w.wait_metric("bertstream_head_version", 1, timeout=30)
        b = produce_and_collect(h, w, texts[20:60], "b", n)
        n += 40
        check_scored_with(h, b, texts[20:60], 1, v1_file, "b")

        # bad heads: each rejected with its reason, v1 keeps serving
        def bad(version, **kw):
            args = dict(fc1_w=rng.standard_normal((Hd, C)), fc1_b=np.zeros(Hd), fc2_w=rng.standard_normal((1, Hd)),
                        fc2_b=np.array([3.0]))
            args.update(kw)
            key = args.pop("key", KEY)
            enc = args.pop("encoder_id", h.encoder_id)
            return T.head_record(version, enc, args["fc1_w"], args["fc1_b"], args["fc2_w"], args["fc2_b"],
                                 feature=args.get("feature", "pooler"), key=key)

        nan_b = np.zeros(Hd)
        nan_b[3] = np.nan
        h.publish_head(bad(2, key="not-the-key"))
        h.publish_head(bad(3, key=None))
        h.publish_head(bad(4, fc1_b=nan_b))
        h.publish_head(bad(5, encoder_id="sha256:" + "0" * 64))
        h.publish_head(bad(6, fc1_w=rng.standard_normal((Hd, C // 2))))
        h.publish_head(bad(7, feature="cls"))
        h.produce("bertstream-heads", [(h.encoder_id.encode(), b"\x02not a head")])
        reasons = ["bad_signature", "unsigned", "not_finite", "encoder_mismatch", "bad_shape", "feature_mismatch",
                   "undecodable"]
        for r in reasons:
            w.wait_metric(f'bertstream_heads_rejected_total{{reason="{r}"}}', 1, timeout=30)
        c = produce_and_collect(h, w, texts[60:80], "c", n)
        n += 20
        check_scored_with(h, c, texts[60:80], 1, v1_file, "c")
        H.check(w.metric("bertstream_head_version") == 1, "a rejected head changed the version")
        for r in reasons:
            H.check(rejected(w, r) == 1, f"rejected{{{r}}} = {rejected(w, r)}")

        # a head from the trainer job: published as the next version, swapped in
        h.produce_labeled([(f"l{i}", t, lab) for i, (lab, t) in enumerate(data[80:260])])
        s, _ = h.train(f"head.hmac_key={KEY}", "train.max_regression=1")
        vt = s["version"]
        H.check(s["status"] == "published" and vt == 8, f"trainer: {s}")  # above every authentic version (7)
        w.wait_metric("bertstream_head_version", vt, timeout=30)
        vt_file = os.path.join(h.out_dir, f"head-v{vt}.safetensors")
        d = produce_and_collect(h, w, texts[80:100], "d", n)
        n += 20
        check_scored_with(h, d, texts[80:100], vt, vt_file, "d")

        # restart: the new worker reads the heads topic to its end before scoring
        H.check(w.stop() == 0, "worker did not exit 0 after SIGTERM")
        w2 = h.worker(name="worker-restarted", overrides=overrides)
        w2.wait_ready()
        H.check(w2.metric("bertstream_head_version") == vt, f"restarted worker head_version "
                f"{w2.metric('bertstream_head_version')}")
        H.check(rejected(w2, "bad_signature") == 1 and rejected(w2, "undecodable") == 1,
                "restarted worker did not judge the history the same way")
        e = produce_and_collect(h, w2, texts[100:120], "e", n)
        check_scored_with(h, e, texts[100:120], vt, vt_file, "e")
        H.check(w2.stop() == 0, "restarted worker did not exit 0")


if __name__ == "__main__":
    H.main(test)
