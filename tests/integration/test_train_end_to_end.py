"""train_publishes_signed_versions_and_reuses_the_feature_cache: the IMDB sample as Avro LabeledReviews
(plus a relabel, a bad label, an undecodable value and a tombstone) -> `bertstream train` -> version 1
on the heads topic, keyed by encoder_id, with the right dims, metrics, and an HMAC that an independent
Python implementation of the canonical bytes reproduces; the eval split is the documented hash; the
head-v1 files match the record and offline `score --head` reproduces eval_accuracy. A second run
publishes version 2 from the cache alone (encoded 0) with identical weights; a third run encodes only
the new and edited reviews."""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402
import train_harness as T  # noqa: E402

KEY = "it-hmac-key"


def test():
    data = T.imdb_labeled()
    ids = [f"imdb-{i:04d}" for i in range(len(data))]
    labels = {rid: lab for rid, (lab, _) in zip(ids, data)}
    texts = {rid: text for rid, (_, text) in zip(ids, data)}
    with T.TrainHarness("train_end_to_end") as h:
        h.produce_labeled([(rid, texts[rid], labels[rid]) for rid in ids])
        # latest label wins (same key, same partition, later offset)
        labels[ids[0]] = 1 - labels[ids[0]]
        h.produce_labeled([(ids[0], texts[ids[0]], labels[ids[0]])])
        h.produce_labeled([("bad-label", "a label of 2", 2), ("gone", "removed by a tombstone", 1)])
        h.produce("reviews-labeled", [(b"junk", b"\x01\x02\x03"), (b"gone", None)])

        s, err = h.train(f"head.hmac_key={KEY}")
        n_eval = sum(T.split_is_eval(rid, 0.1) for rid in ids)
        H.check(s["status"] == "published" and s["version"] == 1, f"first run: {s}")
        H.check(s["current"] is None and s["reason"] == "no current head", f"current {s['current']}")
        c = s["counts"]
        want = {"messages": len(ids) + 5, "reviews": len(ids), "eval": n_eval, "train": len(ids) - n_eval,
                "encoded": len(ids), "cached": 0, "bad_label": 1, "undecodable": 1, "tombstones": 1,
                "superseded": 1, "untokenizable": 0}
        for k, v in want.items():
            H.check(c[k] == v, f"counts.{k} = {c[k]}, expected {v}")
        H.check(s["signed"] is True and s["encoder_id"] == h.encoder_id and s["feature"] == "pooler", f"{s}")
        m = s["metrics"]
        H.check(m["n_train"] == len(ids) - n_eval and m["n_eval"] == n_eval, f"metrics counts {m}")
        for k in ("train_loss", "eval_loss", "eval_accuracy", "eval_auc"):
            H.check(T.finite(m[k]), f"metrics.{k} = {m[k]}")
        H.check("msg=\"epoch\" epoch=10 " in err, "no per-epoch log line for epoch 10")
        H.check("eval_accuracy=" in err and "eval_auc=" in err, "epoch lines lack eval metrics")

        heads = h.heads(1)
        H.check(len(heads) == 1, f"{len(heads)} records on the heads topic")
        d = heads[0]
        H.check(d["_key"] == h.encoder_id.encode(), f"key {d['_key']!r}")
        H.check(d["version"] == 1 and d["encoder_id"] == h.encoder_id and d["feature"] == "pooler", "identity")
        H.check(d["input_dim"] == h.hidden and d["hidden_dim"] == 64, f"dims {d['input_dim']} x {d['hidden_dim']}")
        H.check(len(d["fc1_weight"]) == 4 * 64 * h.hidden and len(d["fc1_bias"]) == 256 and
                len(d["fc2_weight"]) == 256 and len(d["fc2_bias"]) == 4, "tensor byte lengths")
        H.check(set(d["metrics"]) == {"train_loss", "eval_loss", "eval_accuracy", "eval_auc", "n_train", "n_eval"},
                f"metric names {sorted(d['metrics'])}")
        for k, v in d["metrics"].items():
            H.check(abs(v - m[k]) <= 1e-8 * max(1.0, abs(v)), f"record metric {k} {v} != summary {m[k]}")
        H.check(abs(d["created_at"] / 1000.0 - time.time()) < 300, f"created_at {d['created_at']}")
        H.check(d["signature"] == T.sign(d, KEY), "signature differs from Python's HMAC of the canonical bytes")
        H.check(d["signature"] != T.sign(d, KEY + "x"), "signature does not depend on the key")

        # the files written beside the record
        st = T.read_safetensors(os.path.join(h.out_dir, "head-v1.safetensors"))
        w1, b1, w2, b2 = T.head_arrays(d)
        for name, a in (("fc1.weight", w1), ("fc1.bias", b1), ("fc2.weight", w2), ("fc2.bias", b2)):
            H.check(st[name].shape == a.shape and (st[name] == a).all(), f"head-v1.safetensors {name} != record")
        import json
        with open(os.path.join(h.out_dir, "head-v1.json")) as f:
            meta = json.load(f)
        H.check(meta["version"] == 1 and meta["signature"] == d["signature"].hex(), f"head-v1.json {meta}")
        H.check(meta["encoder_id"] == h.encoder_id and meta["created_at"] == d["created_at"], "head-v1.json identity")

        # offline scoring with the published head reproduces the eval accuracy on the same split
        eval_ids = [rid for rid in ids if T.split_is_eval(rid, 0.1)]
        off = H.score_offline(h.model_dir, os.path.join(h.out_dir, "head-v1.safetensors"),
                              [texts[rid] for rid in eval_ids])
        correct = sum((off[i]["label"] == "positive") == (labels[rid] == 1) for i, rid in enumerate(eval_ids))
        H.check(abs(correct / len(eval_ids) - m["eval_accuracy"]) < 1e-9,
                f"offline accuracy {correct}/{len(eval_ids)} != eval_accuracy {m['eval_accuracy']}")

        # second run: everything from the cache, same data and seed -> the same weights, version 2
        s2, _ = h.train(f"head.hmac_key={KEY}")
        H.check(s2["status"] == "published" and s2["version"] == 2, f"second run: {s2}")
        H.check(s2["counts"]["encoded"] == 0 and s2["counts"]["cached"] == len(ids), f"cache: {s2['counts']}")
        H.check(s2["current"]["version"] == 1 and s2["current"]["source"] == "topic", f"current {s2['current']}")
        H.check(s2["current"]["eval_accuracy"] == m["eval_accuracy"], "current head judged differently")
        H.check(s2["metrics"] == m, f"metrics changed between identical runs: {s2['metrics']} vs {m}")
        heads = h.heads(2)
        H.check([x["version"] for x in heads] == [1, 2], f"versions {[x['version'] for x in heads]}")
        H.check(all(heads[1][k] == heads[0][k] for k in ("fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias")),
                "weights differ between identical runs")

        # third run: 20 new reviews and 5 edited texts are the only ones encoded
        new = [(f"new-{i}", texts[ids[100 + i]], labels[ids[100 + i]]) for i in range(20)]
        edited = [(rid, texts[rid] + " (edited)", labels[rid]) for rid in ids[1:6]]
        h.produce_labeled(new + edited)
        s3, _ = h.train(f"head.hmac_key={KEY}", "train.max_regression=1")
        H.check(s3["status"] == "published" and s3["version"] == 3, f"third run: {s3}")
        H.check(s3["counts"]["reviews"] == len(ids) + 20, f"reviews {s3['counts']['reviews']}")
        H.check(s3["counts"]["encoded"] == 25 and s3["counts"]["cached"] == len(ids) - 5,
                f"cache after edits: {s3['counts']}")


if __name__ == "__main__":
    H.main(test)
