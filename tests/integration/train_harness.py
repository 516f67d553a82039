"""Helpers for the trainer and head-swap integration tests, on top of harness.py: a tiny model with
bert-base-uncased's real vocabulary (so text reaches the encoder as words, not [UNK]s), LabeledReview
producers (Avro or JSON), `bertstream train` runs returning the JSON summary, the heads topic decoded
with python's avro, and an independent Python implementation of the canonical signed bytes
(docs/retraining.md) to check HMAC signatures against."""

import hashlib
import hmac
import io
import json
import math
import os
import struct
import subprocess
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402
from harness import check, imdb_labeled, log  # noqa: E402,F401

import numpy as np  # noqa: E402  (harness skipped already when missing)

LABELED = H._schema("labeled_review")
HEAD_WEIGHTS = H._schema("head_weights")


def vocab_path():
    return H.data_file("bert-base-uncased", "vocab.txt")


def labeled_bytes(review_id, text, label, framing="avro"):
    if framing == "json":
        return json.dumps({"review_id": review_id, "text": text, "label": label}).encode()
    b = H.avro_encode(LABELED, {"review_id": review_id, "text": text, "label": label})
    return b if framing == "avro" else b"\x00" + struct.pack(">i", 1) + b


def split_is_eval(review_id, eval_fraction):
    """The trainer's split, written independently: SHA-256("bertstream.split\\0" + id), first 8 bytes
    big-endian / 2^64 < eval_fraction."""
    h = hashlib.sha256(b"bertstream.split\x00" + review_id.encode()).digest()
    return int.from_bytes(h[:8], "big") / 2.0 ** 64 < eval_fraction


def canonical_bytes(d):
    """docs/retraining.md's canonical bytes of a decoded HeadWeights dict."""
    b = b"bertstream.head.v1\n" + struct.pack("<q", d["version"])
    for s in (d["encoder_id"], d["feature"]):
        s = s.encode()
        b += struct.pack("<I", len(s)) + s
    b += struct.pack("<ii", d["input_dim"], d["hidden_dim"])
    b += d["fc1_weight"] + d["fc1_bias"] + d["fc2_weight"] + d["fc2_bias"]  # already little-endian F32
    b += struct.pack("<q", d["created_at"]) + struct.pack("<I", len(d["metrics"]))
    for name in sorted(d["metrics"], key=lambda s: s.encode()):
        n = name.encode()
        b += struct.pack("<I", len(n)) + n + struct.pack("<d", d["metrics"][name])
    return b


def sign(d, key):
    return hmac.new(key.encode(), canonical_bytes(d), hashlib.sha256).digest()


def head_record(version, encoder_id, fc1_w, fc1_b, fc2_w, fc2_b, feature="pooler", metrics=None, created_at=None,
                key=None, signature=None):
    """A HeadWeights dict (tensors as numpy arrays), signed with key when given."""
    d = {"version": version, "encoder_id": encoder_id, "feature": feature, "input_dim": int(fc1_w.shape[1]),
         "hidden_dim": int(fc1_w.shape[0]), "fc1_weight": fc1_w.astype("<f4").tobytes(),
         "fc1_bias": fc1_b.astype("<f4").tobytes(), "fc2_weight": fc2_w.astype("<f4").tobytes(),
         "fc2_bias": fc2_b.astype("<f4").tobytes(), "metrics": dict(metrics or {}),
         "created_at": created_at if created_at is not None else 1700000000000 + version, "signature": signature}
    if key is not None:
        d["signature"] = sign(d, key)
    return d


def head_bytes(d):
    import datetime
    e = dict(d)
    e["created_at"] = datetime.datetime.fromtimestamp(d["created_at"] / 1000.0, tz=datetime.timezone.utc)
    return H.avro_encode(HEAD_WEIGHTS, e)


def decode_head(value):
    d = H.avro_decode(HEAD_WEIGHTS, value)
    if hasattr(d.get("created_at"), "timestamp"):
        d["created_at"] = int(round(d["created_at"].timestamp() * 1000))
    return d


def head_arrays(d):
    hd, c = d["hidden_dim"], d["input_dim"]
    return (np.frombuffer(d["fc1_weight"], "<f4").reshape(hd, c), np.frombuffer(d["fc1_bias"], "<f4"),
            np.frombuffer(d["fc2_weight"], "<f4").reshape(1, hd), np.frombuffer(d["fc2_bias"], "<f4"))


def write_head_file(path, d):
    """The record's tensors as a ClassificationHead safetensors file (for offline `score --head`)."""
    w1, b1, w2, b2 = head_arrays(d)
    return H.write_safetensors(path, [("fc1.weight", w1), ("fc1.bias", b1), ("fc2.weight", w2), ("fc2.bias", b2)])


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    hdr = json.loads(raw[8:8 + n])
    out = {}
    for name, t in hdr.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + a:8 + n + b], "<f4").reshape(t["shape"])
    return out


class TrainHarness(H.Harness):
    """A broker with a labeled topic and a heads topic, and a tiny model with the real vocabulary."""

    def __init__(self, name, topics="reviews-labeled:2,bertstream-heads:1,reviews:2,review-scores:2,reviews-dlq:1",
                 **kw):
        super().__init__(name, topics=topics, **kw)

    def __enter__(self):
        import tempfile
        self.dir = tempfile.mkdtemp(prefix=f"bertstream-it-{self.name}-")
        log(f"== {self.name} (dir {self.dir})")
        self.model_dir = os.path.join(self.dir, "model")
        r = subprocess.run([H.BIN, "init-model", "--preset", "tiny", "--seed", "1", "--out", self.model_dir,
                            "--vocab", vocab_path()], capture_output=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"init-model failed: {r.stderr.decode()}")
        self.encoder_id = json.loads(r.stdout.decode().strip().splitlines()[-1])["encoder_id"]
        with open(os.path.join(self.model_dir, "config.json")) as f:
            self.hidden = json.load(f)["hidden_size"]
        self.head = H.write_head(os.path.join(self.dir, "head.safetensors"), self.hidden, seed=self.head_seed)
        self.cache_dir = os.path.join(self.dir, "cache")
        self.out_dir = os.path.join(self.dir, "heads")
        self.broker = H.Broker(self.dir, self.brokers, self.topics)
        self.runs = 0
        return self

    def produce_labeled(self, items, framing="avro", topic="reviews-labeled"):
        """items: (review_id, text, label); keyed by review_id."""
        return self.produce(topic, [(rid.encode(), labeled_bytes(rid, text, lab, framing)) for rid, text, lab in items])

    def train(self, *overrides, force=False, expect_rc=0, timeout=300):
        """Runs `bertstream train`; returns (summary dict or None, stderr text)."""
        self.runs += 1
        o = {"kafka.bootstrap.servers": self.broker.bootstrap, "model.dir": self.model_dir, "model.device": "cpu",
             "train.cache_dir": self.cache_dir, "train.out_dir": self.out_dir, "head.file": "",
             "train.read_timeout_ms": "10000", "log.level": "info"}
        for kv in overrides:
            k, v = kv.split("=", 1)
            o[k] = v
        args = [H.BIN, "train"]
        for k, v in o.items():
            args += ["-o", f"{k}={v}"]
        if force:
            args.append("--force")
        r = subprocess.run(args, capture_output=True, timeout=timeout)
        err = r.stderr.decode(errors="replace")
        with open(os.path.join(self.dir, f"train{self.runs}.log"), "w") as f:
            f.write(err)
        if r.returncode != expect_rc:
            raise AssertionError(f"train run {self.runs}: exit {r.returncode}, expected {expect_rc}:\n{err[-3000:]}")
        lines = r.stdout.decode().splitlines()
        if expect_rc != 0:
            check(not lines, f"train printed a summary although it failed: {lines}")
            return None, err
        check(len(lines) == 1, f"train run {self.runs}: expected one JSON line on stdout, got {lines}")
        s = json.loads(lines[0])
        log(f"train run {self.runs}: {s['status']} v{s.get('version')} ({s['reason']}) counts={s['counts']}")
        return s, err

    def heads(self, min_count=0, topic="bertstream-heads", timeout=20):
        """Every record on the heads topic, decoded, with the message key, in offset order."""
        msgs = self.read_topic(topic, min_count, timeout=timeout)
        msgs.sort(key=lambda m: (m.partition(), m.offset()))
        out = []
        for m in msgs:
            d = decode_head(m.value())
            d["_key"] = m.key()
            out.append(d)
        return out

    def publish_head(self, d, topic="bertstream-heads"):
        return self.produce(topic, [(d["encoder_id"].encode(), head_bytes(d))])[0]


def finite(x):
    return x is not None and not (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))
