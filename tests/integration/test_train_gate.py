"""train_gate_refuses_a_worse_head_and_force_overrides_it: on a separable synthetic set (JSON-framed
LabeledReviews, feature mean, 25 % held out) a normal run publishes v1 with eval accuracy 1.0; a
crippled run (1 epoch, lr 1e-9: the initial head) scores far lower on the same split and is gated
(exit 0, status gated, nothing published, no files); --force publishes it as v2; max_regression 1
lets the next one through without --force; with an empty heads topic the gate judges head.file;
errors exit 1 with one line."""
import os
import random
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402
import train_harness as T  # noqa: E402

POS = "great wonderful excellent superb loved brilliant".split()
NEG = "terrible awful boring dreadful hated worst".split()
FILLER = "the movie film plot actor scene story director and it was a of".split()


def synthetic(n, seed=7):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        lab = i % 2
        words = [rng.choice(POS if lab else NEG) for _ in range(12)] + [rng.choice(FILLER) for _ in range(6)]
        rng.shuffle(words)
        out.append((f"s-{i}", " ".join(words), lab))
    return out


def test():
    with T.TrainHarness("train_gate") as h:
        h.produce_labeled(synthetic(400), framing="json")
        base = ("format.input=json", "train.feature=mean", "train.eval_fraction=0.25")
        crippled = base + ("train.epochs=1", "train.lr=1e-9")

        s1, _ = h.train(*base)
        H.check(s1["status"] == "published" and s1["version"] == 1, f"first run: {s1}")
        H.check(s1["feature"] == "mean" and s1["counts"]["reviews"] == 400, f"{s1}")
        acc1 = s1["metrics"]["eval_accuracy"]
        H.check(acc1 == 1.0, f"a separable set should be learnt exactly: eval_accuracy {acc1}")

        s2, err2 = h.train(*crippled)
        H.check(s2["status"] == "gated" and s2["version"] is None and s2["files"] is None, f"crippled run: {s2}")
        acc2 = s2["metrics"]["eval_accuracy"]
        H.check(acc2 < acc1 - 0.01, f"crippled head {acc2} is not worse than {acc1}")
        H.check(s2["current"]["version"] == 1 and s2["current"]["eval_accuracy"] == acc1, f"current {s2['current']}")
        H.check(s2["forced"] is False and "< current v1" in s2["reason"], f"reason {s2['reason']}")
        H.check("gate: refused" in err2, "no gate log line")
        H.check(s2["counts"]["encoded"] == 0, "the crippled run should reuse the cache")
        H.check([d["version"] for d in h.heads(1)] == [1], "a gated head reached the heads topic")
        H.check(sorted(os.listdir(h.out_dir)) == ["head-v1.json", "head-v1.safetensors"],
                f"out_dir {os.listdir(h.out_dir)}")

        s3, _ = h.train(*crippled, force=True)
        H.check(s3["status"] == "published" and s3["version"] == 2 and s3["forced"] is True, f"forced run: {s3}")
        H.check(s3["metrics"] == s2["metrics"], "the forced head is not the gated one")
        heads = h.heads(2)
        H.check([d["version"] for d in heads] == [1, 2], f"versions {[d['version'] for d in heads]}")
        H.check(abs(heads[1]["metrics"]["eval_accuracy"] - acc2) < 1e-8, "published metrics")

        # v2 (the crippled head) is current now; a good head is better; max_regression 1 passes anything
        s4, _ = h.train(*crippled, "train.max_regression=1")
        H.check(s4["status"] == "published" and s4["version"] == 3 and s4["forced"] is False, f"{s4}")

        # no head on the topic: head.file is the head to beat (version 0, source file)
        empty = ("topics.heads=heads-empty", f"head.file={os.path.join(h.out_dir, 'head-v1.safetensors')}")
        s5, _ = h.train(*crippled, *empty)
        H.check(s5["status"] == "gated" and s5["current"]["source"] == "file" and s5["current"]["version"] == 0,
                f"head.file as current: {s5}")
        H.check(s5["current"]["eval_accuracy"] == acc1, f"head.file judged {s5['current']['eval_accuracy']}")

        # errors: one line, exit 1, no summary
        _, err = h.train(*base, "format.input=text", expect_rc=1)
        H.check(err.strip().splitlines()[-1].startswith("bertstream train: format.input: text"), err[-300:])
        _, err = h.train(*base, "topics.labeled=nothing-here", expect_rc=1)
        H.check("no labeled reviews in nothing-here" in err, err[-300:])
        _, err = h.train(*base, "train.lr=0", expect_rc=1)
        H.check("lr must be" in err.strip().splitlines()[-1], err[-300:])
        _, err = h.train("bogus.key=1", expect_rc=2)
        H.check("unknown key" in err, err[-300:])


if __name__ == "__main__":
    H.main(test)
