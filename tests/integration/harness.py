"""Shared helpers for the worker's Kafka integration tests (run with /usr/bin/python3, which has
Debian's confluent_kafka, avro and numpy): start `bertstream broker` and `bertstream worker` as
children (always killed on exit, whatever happens), make a tiny model and a head, produce Avro
Reviews and read topics back with an independent client.

A test is a script: `with Harness("name") as h: ...`; exit 0 passes, 77 skips."""

import atexit
import json
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

try:
    import avro.io
    import avro.schema
    import numpy as np
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
except ImportError as e:  # pragma: no cover
    print(f"SKIP: {e} (run with /usr/bin/python3)", file=sys.stderr)
    sys.exit(77)

SRC = os.environ.get("BERTSTREAM_SOURCE_DIR", os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
DATA = os.environ.get("BERTSTREAM_DATA", os.path.join(SRC, "..", "shared", "data"))


def find_bin():
    b = os.environ.get("BERTSTREAM_BIN")
    if b and os.path.exists(b):
        return b
    for d in (os.environ.get("BERTSTREAM_BUILD_DIR"), os.path.join(SRC, "build")):
        if d and os.path.exists(os.path.join(d, "bertstream")):
            return os.path.join(d, "bertstream")
    raise SystemExit("bertstream executable not found: set BERTSTREAM_BIN")


BIN = find_bin()
# The worker alone may run from another build (e.g. a ThreadSanitizer one) while the broker and the
# tools come from BIN: BERTSTREAM_TEST_WORKER_BIN (not BERTSTREAM_WORKER_*: that prefix is the worker
# section of the configuration, and the worker rejects unknown keys there).
WORKER_BIN = os.environ.get("BERTSTREAM_TEST_WORKER_BIN") or BIN

# ---------------------------------------------------------------------------------------------
# Children: every process a test starts is registered here and killed at exit.
# ---------------------------------------------------------------------------------------------

_children = []


def _kill_children():
    for p in _children:
        if p.poll() is None:
            try:
                p.kill()
            except OSError:
                pass
    for p in _children:
        try:
            p.wait(timeout=10)
        except Exception:
            pass


atexit.register(_kill_children)


def _on_term(signum, frame):
    _kill_children()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_term)
signal.signal(signal.SIGHUP, _on_term)


def _die_with_parent():
    """In the child before exec: SIGKILL it when the test process dies, even by SIGKILL (a CTest timeout)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(args, **kw):
    p = subprocess.Popen(args, preexec_fn=_die_with_parent, **kw)
    _children.append(p)
    return p


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


# ---------------------------------------------------------------------------------------------
# Avro
# ---------------------------------------------------------------------------------------------

def _schema(name):
    with open(os.path.join(SRC, "schemas", name + ".avsc")) as f:
        return avro.schema.parse(f.read())


REVIEW = _schema("review")
REVIEW_SCORE = _schema("review_score")
HEAD_WEIGHTS = _schema("head_weights")


def avro_encode(schema, datum):
    import io
    buf = io.BytesIO()
    avro.io.DatumWriter(schema).write(datum, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def avro_decode(schema, data):
    import io
    return avro.io.DatumReader(schema).read(avro.io.BinaryDecoder(io.BytesIO(data)))


def review_bytes(review_id, text, source=None, created_at=None):
    """created_at: ms since the epoch (timestamp-millis), or None."""
    if created_at is not None:
        import datetime
        created_at = datetime.datetime.fromtimestamp(created_at / 1000.0, tz=datetime.timezone.utc)
    return avro_encode(REVIEW, {"review_id": review_id, "text": text, "source": source, "created_at": created_at})


def decode_score(value):
    d = avro_decode(REVIEW_SCORE, value)
    if hasattr(d.get("scored_at"), "timestamp"):  # timestamp-millis may decode as datetime
        d["scored_at"] = int(d["scored_at"].timestamp() * 1000)
    return d


# ---------------------------------------------------------------------------------------------
# Data, model, head
# ---------------------------------------------------------------------------------------------

def data_file(*parts):
    """Path of a reference file under DATA. Missing: skip the test (exit 77), or fail under CI=true."""
    path = os.path.join(DATA, *parts)
    if not os.path.exists(path):
        if os.environ.get("CI") in ("true", "1"):
            raise SystemExit(f"FAIL: {path} missing")
        print(f"SKIP: {path} missing", file=sys.stderr)
        sys.exit(77)
    return path


def imdb_labeled(n=None):
    """[(label, text)] from the IMDB sample (split on '\\n' only: U+0085 is inside some reviews)."""
    out = []
    with open(data_file("imdb", "reviews.tsv"), "rb") as f:
        for line in f.read().split(b"\n")[1:]:
            if line:
                label, text = line.split(b"\t", 1)
                out.append((int(label), text.decode("utf-8")))
    return out[:n] if n else out


def imdb_reviews(n=None):
    """The texts of imdb_labeled(n)."""
    return [text for _, text in imdb_labeled(n)]


def head_tensors(hidden, width=64, seed=1, scale=0.2):
    """Random ClassificationHead tensors: [(name, little-endian F32 array)]."""
    rng = np.random.default_rng(seed)
    return [
        ("fc1.weight", (rng.standard_normal((width, hidden)) * scale).astype("<f4")),
        ("fc1.bias", (rng.standard_normal(width) * scale).astype("<f4")),
        ("fc2.weight", (rng.standard_normal((1, width)) * scale).astype("<f4")),
        ("fc2.bias", np.array([0.05], dtype="<f4")),
    ]


def head_weights_bytes(tensors, version, encoder_id, feature="pooler"):
    """A HeadWeights record (schemas/head_weights.avsc), bare Avro, unsigned: what `train` publishes."""
    import datetime
    t = dict(tensors)
    return avro_encode(HEAD_WEIGHTS, {
        "version": version, "encoder_id": encoder_id, "feature": feature,
        "input_dim": int(t["fc1.weight"].shape[1]), "hidden_dim": int(t["fc1.weight"].shape[0]),
        "fc1_weight": t["fc1.weight"].tobytes(), "fc1_bias": t["fc1.bias"].tobytes(),
        "fc2_weight": t["fc2.weight"].tobytes(), "fc2_bias": t["fc2.bias"].tobytes(),
        "metrics": {"eval_accuracy": 0.5}, "created_at": datetime.datetime.now(tz=datetime.timezone.utc),
        "signature": None})


def write_safetensors(path, tensors):
    """[(name, array)] as an F32 safetensors file, written by hand: u64 header length, JSON, data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        b = np.ascontiguousarray(t, "<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
    return path


def write_head(path, hidden, width=64, seed=1, scale=0.2, tensors=None):
    """A ClassificationHead state dict as safetensors (random head_tensors unless tensors are given)."""
    return write_safetensors(path, tensors or head_tensors(hidden, width, seed, scale))


def score_offline(model_dir, head, texts, max_len=128):
    """`bertstream score` on the same model and head: {index: result dict}."""
    inp = "".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in enumerate(texts))
    r = subprocess.run([BIN, "score", "--model", model_dir, "--head", head, "--device", "cpu", "--max-len",
                        str(max_len)], input=inp.encode(), capture_output=True, timeout=120)
    if r.returncode != 0:
        raise AssertionError(f"bertstream score failed: {r.stderr.decode()[-2000:]}")
    out = {}
    for line in r.stdout.decode().splitlines():
        d = json.loads(line)
        out[d["id"]] = d
    return out


# ---------------------------------------------------------------------------------------------
# Broker
# ---------------------------------------------------------------------------------------------

class Broker:
    def __init__(self, workdir, brokers=1, topics="reviews:4,review-scores:4,reviews-dlq:1"):
        self.err = open(os.path.join(workdir, "broker.log"), "wb")
        self.p = spawn([BIN, "broker", "--brokers", str(brokers), "--topics", topics], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, stderr=self.err)
        line = self.p.stdout.readline().decode().strip()
        if not line:
            raise AssertionError("broker printed no bootstrap servers (see broker.log)")
        self.bootstrap = line
        log("broker", self.bootstrap)

    def control(self, cmd):
        self.p.stdin.write((cmd + "\n").encode())
        self.p.stdin.flush()
        ans = self.p.stdout.readline().decode().strip()
        log("broker control:", cmd, "->", ans)
        if ans != "ok":
            raise AssertionError(f"broker command {cmd!r}: {ans}")

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
            try:
                self.p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.p.kill()
        self.err.close()


# ---------------------------------------------------------------------------------------------
# Worker
# ---------------------------------------------------------------------------------------------

class Worker:
    def __init__(self, h, name="worker", overrides=None, env=None, group=None):
        self.h = h
        self.name = name
        self.port = free_port()
        self.logpath = os.path.join(h.dir, name + ".log")
        o = {
            "kafka.bootstrap.servers": h.broker.bootstrap,
            "consumer.group.id": group or h.group,
            "consumer.session.timeout.ms": "6000",
            "consumer.heartbeat.interval.ms": "500",
            "topics.heads": "",
            "model.dir": h.model_dir,
            "model.device": "cpu",
            "head.file": h.head,
            "batch.max_delay_ms": "20",
            "http.listen": f"127.0.0.1:{self.port}",
            "log.level": "info",
        }
        o.update(overrides or {})
        args = [WORKER_BIN, "worker"]
        for k, v in o.items():
            args += ["-o", f"{k}={v}"]
        e = dict(os.environ)
        e.update(env or {})
        self.logf = open(self.logpath, "ab")
        self.p = spawn(args, stdout=self.logf, stderr=subprocess.STDOUT, env=e)
        log(f"{name} started pid={self.p.pid} port={self.port}")

    def get(self, path, timeout=2):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except (urllib.error.URLError, ConnectionError, socket.timeout, OSError):
            return None, ""

    def wait_ready(self, timeout=30):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.p.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.p.returncode}:\n{self.tail()}")
            st, _ = self.get("/readyz")
            if st == 200:
                return
            time.sleep(0.1)
        raise AssertionError(f"{self.name} not ready after {timeout}s:\n{self.tail()}")

    def metrics(self):
        st, body = self.get("/metrics")
        out = {}
        if st != 200:
            return out
        for line in body.splitlines():
            if not line or line.startswith("#"):
                continue
            k, v = line.rsplit(" ", 1)
            out[k] = float(v)
        return out

    def metric(self, key, default=0.0):
        return self.metrics().get(key, default)

    def wait_metric(self, key, value, timeout=30):
        t0 = time.time()
        v = None
        while time.time() - t0 < timeout:
            v = self.metric(key)
            if v >= value:
                return v
            if self.p.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.p.returncode}:\n{self.tail()}")
            time.sleep(0.1)
        raise AssertionError(f"{self.name}: {key} = {v}, wanted {value} within {timeout}s:\n{self.tail()}")

    def signal(self, sig):
        if self.p.poll() is None:
            self.p.send_signal(sig)

    def stop(self, timeout=30):
        """SIGTERM and wait; returns the exit status."""
        self.signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            raise AssertionError(f"{self.name} did not exit {timeout}s after SIGTERM:\n{self.tail()}")
        self.logf.close()
        return rc

    def kill9(self):
        self.p.kill()
        self.p.wait()
        self.logf.close()

    def rss_kb(self):
        with open(f"/proc/{self.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def tail(self, n=40):
        try:
            with open(self.logpath, "rb") as f:
                return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")
        except OSError:
            return ""

    def log_count(self, needle):
        with open(self.logpath, "rb") as f:
            return f.read().decode(errors="replace").count(needle)

    def wait_log(self, needle, timeout=30):
        t0 = time.time()
        while self.log_count(needle) < 1:
            if time.time() - t0 >= timeout:
                raise AssertionError(f"{self.name} never logged {needle}:\n{self.tail()}")
            if self.p.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.p.returncode}:\n{self.tail()}")
            time.sleep(0.005)


def wait_scored(workers, n, timeout):
    """Waits (at most timeout s) until the workers together scored n; returns what each scored."""
    t0 = time.time()
    while True:
        counts = [w.metric("bertstream_messages_scored_total") for w in workers]
        if sum(counts) >= n or time.time() - t0 >= timeout:
            return counts
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# Kafka client helpers (the independent client)
# ---------------------------------------------------------------------------------------------

class Harness:
    def __init__(self, name, brokers=1, topics="reviews:4,review-scores:4,reviews-dlq:1", head_seed=1):
        self.name = name
        self.brokers = brokers
        self.topics = topics
        self.head_seed = head_seed
        self.group = f"it-{name}-{os.getpid()}"
        self.workers = []
        self.t0 = time.time()

    def __enter__(self):
        self.dir = tempfile.mkdtemp(prefix=f"bertstream-it-{self.name}-")
        log(f"== {self.name} (dir {self.dir})")
        self.model_dir = os.path.join(self.dir, "model")
        r = subprocess.run([BIN, "init-model", "--preset", "tiny", "--seed", "1", "--out", self.model_dir],
                           capture_output=True, timeout=60)
        if r.returncode != 0:
            raise AssertionError(f"init-model failed: {r.stderr.decode()}")
        self.encoder_id = json.loads(r.stdout.decode().strip().splitlines()[-1])["encoder_id"]
        with open(os.path.join(self.model_dir, "config.json")) as f:
            self.hidden = json.load(f)["hidden_size"]
        self.head = write_head(os.path.join(self.dir, "head.safetensors"), self.hidden, seed=self.head_seed)
        self.broker = Broker(self.dir, self.brokers, self.topics)
        return self

    def __exit__(self, et, ev, tb):
        for w in self.workers:
            if w.p.poll() is None:
                w.p.kill()
                w.p.wait()
        self.broker.stop()
        if et is None and not os.environ.get("BERTSTREAM_KEEP_TMP"):
            shutil.rmtree(self.dir, ignore_errors=True)
        else:
            log(f"logs kept in {self.dir}")
            for w in self.workers:
                log(f"--- {w.name} log tail ---\n{w.tail(60)}")
        log(f"== {self.name}: {'FAILED' if et else 'passed'} in {time.time() - self.t0:.1f}s")
        _kill_children()
        return False

    def worker(self, name=None, **kw):
        w = Worker(self, name or f"worker{len(self.workers) + 1}", **kw)
        self.workers.append(w)
        return w

    def producer(self, **conf):
        c = {"bootstrap.servers": self.broker.bootstrap, "linger.ms": 5, "message.max.bytes": 4_000_000}
        c.update(conf)
        return Producer(c)

    def produce(self, topic, items, partition=None, spread=0, **conf):
        """items: (key, value) pairs; partition: all to that partition; spread=N: item i to partition
        i % N. Returns [(partition, offset)] in item order."""
        p = self.producer(**conf)
        where = [None] * len(items)

        def dr(i):
            def cb(err, msg):
                if err:
                    raise AssertionError(f"test producer: {err}")
                where[i] = (msg.partition(), msg.offset())
            return cb

        for i, (k, v) in enumerate(items):
            kw = {"partition": partition} if partition is not None else {}
            if spread:
                kw = {"partition": i % spread}
            while True:
                try:
                    p.produce(topic, key=k, value=v, on_delivery=dr(i), **kw)
                    break
                except BufferError:
                    p.poll(0.05)
            p.poll(0)
        left = p.flush(30)
        if left:
            raise AssertionError(f"test producer: {left} messages not delivered")
        return where

    def produce_reviews(self, texts, prefix="r", keyed=lambda i: i % 2 == 0, topic="reviews", spread=0):
        """Reviews r0..rN-1; even ones keyed by review_id (the worker's key fallback is tested on the odd).
        spread=N: review i goes to partition i % N (else the partitioner decides)."""
        items = []
        for i, t in enumerate(texts):
            rid = f"{prefix}{i}"
            items.append((rid.encode() if keyed(i) else None, review_bytes(rid, t)))
        return self.produce(topic, items, spread=spread)

    def read_topic(self, topic, min_count=0, timeout=30, isolation="read_uncommitted", settle=0.0):
        """Every message in topic (read from the start to the high watermarks), waiting until there
        are at least min_count. settle: after reaching min_count, keep reading this long for extras."""
        c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": f"reader-{random.random()}",
                      "enable.auto.commit": False, "isolation.level": isolation,
                      "fetch.message.max.bytes": 4_000_000})
        try:
            md = c.list_topics(topic, timeout=10)
            parts = sorted(md.topics[topic].partitions.keys())
            c.assign([TopicPartition(topic, p, 0) for p in parts])
            msgs, seen = [], set()
            t0 = time.time()
            reached_at = None
            while True:
                m = c.poll(0.1)
                if m is not None and not m.error():
                    if (m.partition(), m.offset()) not in seen:
                        seen.add((m.partition(), m.offset()))
                        msgs.append(m)
                now = time.time()
                if len(msgs) >= min_count:
                    if reached_at is None:
                        reached_at = now
                    if now - reached_at >= settle and m is None and self._at_end(c, topic, parts, isolation):
                        return msgs
                if now - t0 > timeout:
                    if len(msgs) >= min_count:
                        return msgs
                    raise AssertionError(f"{topic}: {len(msgs)} messages after {timeout}s, wanted {min_count}")
        finally:
            c.close()

    @staticmethod
    def _at_end(c, topic, parts, isolation):
        if isolation != "read_uncommitted":
            return True
        for p in parts:
            lo, hi = c.get_watermark_offsets(TopicPartition(topic, p), timeout=5, cached=False)
            pos = c.position([TopicPartition(topic, p)])[0].offset
            if hi > 0 and (pos is None or pos < hi):
                return False
        return True

    def committed(self, topic="reviews", group=None):
        c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": group or self.group,
                      "enable.auto.commit": False})
        try:
            md = c.list_topics(topic, timeout=10)
            parts = [TopicPartition(topic, p) for p in sorted(md.topics[topic].partitions.keys())]
            return {tp.partition: tp.offset for tp in c.committed(parts, timeout=10)}
        finally:
            c.close()

    def scores(self, min_count, timeout=60, settle=0.0):
        return [(m, decode_score(m.value())) for m in self.read_topic("review-scores", min_count, timeout,
                                                                      settle=settle)]


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def check_each_once(scores, want_ids, allow_dups=False):
    """Every id in want_ids scored (exactly once unless allow_dups); returns the duplicate count."""
    counts = {}
    for _, s in scores:
        counts[s["review_id"]] = counts.get(s["review_id"], 0) + 1
    missing = [i for i in want_ids if i not in counts]
    check(not missing, f"{len(missing)} reviews never scored, e.g. {missing[:5]}")
    extra = [i for i in counts if i not in set(want_ids)]
    check(not extra, f"unexpected review ids scored: {extra[:5]}")
    dups = sum(c - 1 for c in counts.values())
    if not allow_dups:
        check(dups == 0, f"{dups} duplicate results, e.g. {[k for k, c in counts.items() if c > 1][:5]}")
    return dups


def main(fn):
    try:
        fn()
    except AssertionError as e:
        log(f"FAIL: {e}")
        _kill_children()
        sys.exit(1)
    _kill_children()
    sys.exit(0)
