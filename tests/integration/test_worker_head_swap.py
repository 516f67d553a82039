"""worker_swaps_head_from_heads_topic_between_batches: the worker starts on head.file (version 0);
a HeadWeights record (version 3) published on the heads topic is picked up by the follower and
swapped in between batches without a restart: /metrics shows head_version 3, later results carry
head_version 3 and equal offline `bertstream score` with the new head; a record for another encoder
is rejected and counted."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402


def test():
    texts = H.imdb_reviews(60)
    topics = "reviews:1,review-scores:1,reviews-dlq:1,bertstream-heads:1"
    with H.Harness("head_swap", topics=topics) as h:
        w = h.worker(overrides={"topics.heads": "bertstream-heads", "model.max_seq_len": "64"})
        w.wait_ready()
        h.produce_reviews(texts[:30], prefix="a")
        w.wait_metric("bertstream_messages_scored_total", 30, timeout=30)
        H.check(w.metric("bertstream_head_version") == 0, "head_version before the swap")

        new = H.head_tensors(h.hidden, seed=99)
        h.produce("bertstream-heads", [(None, H.head_weights_bytes(new, 2, "sha256:" + "0" * 64))])  # wrong encoder
        h.produce("bertstream-heads", [(None, H.head_weights_bytes(new, 3, h.encoder_id))])
        t0 = time.time()
        while w.metric("bertstream_head_version") != 3 and time.time() - t0 < 20:
            time.sleep(0.1)
        H.check(w.metric("bertstream_head_version") == 3, f"head_version {w.metric('bertstream_head_version')}")
        rejected = w.metric('bertstream_heads_rejected_total{reason="encoder_mismatch"}')
        H.check(rejected == 1, f"heads_rejected_total{{encoder_mismatch}} = {rejected}")

        h.produce_reviews(texts[30:], prefix="b")
        w.wait_metric("bertstream_messages_scored_total", 60, timeout=30)
        scores = h.scores(60, settle=0.5)
        H.check_each_once(scores, [f"a{i}" for i in range(30)] + [f"b{i}" for i in range(30)])
        path = H.write_head(os.path.join(h.dir, "head3.safetensors"), h.hidden, tensors=new)
        offline_new = H.score_offline(h.model_dir, path, texts[30:], max_len=64)
        offline_old = H.score_offline(h.model_dir, h.head, texts[:30], max_len=64)
        for _, s in scores:
            i = int(s["review_id"][1:])
            if s["review_id"][0] == "a":
                H.check(s["head_version"] == 0, f"{s['review_id']} head_version {s['head_version']}")
                want = offline_old[i]["probability"]
            else:
                H.check(s["head_version"] == 3, f"{s['review_id']} head_version {s['head_version']}")
                want = offline_new[i]["probability"]
            H.check(abs(s["probability"] - want) <= 1e-6, f"{s['review_id']}: {s['probability']} vs offline {want}")
        H.check(w.log_count('msg="head swapped"') == 1, "head swap not logged once")
        H.check(w.stop() == 0, "exit status")


if __name__ == "__main__":
    H.main(test)
