"""End-to-end worker benchmark with nothing but bertstream and Python's standard library, so the
same script runs on the development machine and on a bare GPU host (from the bundle): see
scripts/bench-worker.sh, which starts it, for what it measures and its options.

Processes: `bertstream broker` (mock cluster on loopback), one `bertstream worker`, `bertstream
produce` fed JSON lines on stdin (a burst, then a paced stream), `bertstream consume` on the output
topic. Throughput and the engine's busy share come from the worker's /metrics; latency per review
is measured here: the paced writer notes when it hands a review to `produce` (within a millisecond
of the input message's timestamp), the result's own timestamp says when the worker produced it,
and the consumer notes when it became visible (after the broker acknowledged it)."""
import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fail(msg):
    log(f"bench-worker: {msg}")
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def imdb_texts(data):
    """The review texts of reviews.tsv (split on '\\n' only: U+0085 is inside some reviews)."""
    with open(os.path.join(data, "imdb", "reviews.tsv"), "rb") as f:
        rows = [line.split(b"\t", 1) for line in f.read().split(b"\n")[1:] if line]
    return [text.decode("utf-8") for _, text in rows]


def write_head(path, hidden, width=64, seed=1, scale=0.2):
    """A random ClassificationHead state dict (fc1 (width, hidden), fc2 (1, width)) as safetensors."""
    rng = random.Random(seed)
    tensors = [("fc1.weight", [width, hidden]), ("fc1.bias", [width]), ("fc2.weight", [1, width]), ("fc2.bias", [1])]
    header, blobs, off = {}, [], 0
    for name, shape in tensors:
        n = 1
        for d in shape:
            n *= d
        blob = struct.pack(f"<{n}f", *(rng.gauss(0, 1) * scale for _ in range(n)))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [off, off + len(blob)]}
        blobs.append(blob)
        off += len(blob)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


class CpuSampler(threading.Thread):
    """The CPU a process uses (cores, from /proc/PID/stat), once a second, while it runs: the
    development broker is one thread, and where it reaches a whole core the latencies measured
    through it are its own queueing, not the worker's."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.samples = pid, []  # (time, cores over the second before it)

    def ticks(self):
        try:
            st = open(f"/proc/{self.pid}/stat").read().rsplit(")", 1)[1].split()
            return int(st[11]) + int(st[12])
        except (OSError, IndexError, ValueError):
            return None

    def run(self):
        hz = os.sysconf("SC_CLK_TCK")
        t0, c0 = time.time(), self.ticks()
        while c0 is not None:
            time.sleep(1.0)
            t1, c1 = time.time(), self.ticks()
            if c1 is None:
                return
            self.samples.append((t1, (c1 - c0) / hz / (t1 - t0)))
            t0, c0 = t1, c1

    def peak(self, t_from, t_to):
        xs = [c for t, c in self.samples if t_from < t <= t_to]
        return round(max(xs), 2) if xs else None


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


class Worker:
    def __init__(self, binary, overrides, logpath):
        self.port = free_port()
        args = [binary, "worker"]
        for k, v in dict(overrides, **{"http.listen": f"127.0.0.1:{self.port}"}).items():
            args += ["-o", f"{k}={v}"]
        self.logpath = logpath
        self.logf = open(logpath, "ab")
        self.p = subprocess.Popen(args, stdout=self.logf, stderr=subprocess.STDOUT)

    def get(self, path):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, ""
        except OSError:
            return None, ""

    def metrics(self):
        st, body = self.get("/metrics")
        out = {}
        for line in body.splitlines() if st == 200 else []:
            if line and not line.startswith("#"):
                k, v = line.rsplit(" ", 1)
                out[k] = float(v)
        return out

    def alive(self):
        if self.p.poll() is not None:
            fail(f"the worker exited with {self.p.returncode}:\n{self.tail()}")

    def tail(self, n=30):
        with open(self.logpath, "rb") as f:
            return b"\n".join(f.read().splitlines()[-n:]).decode(errors="replace")

    def wait_scored(self, n, timeout, ready_timeout):
        """Samples /metrics every 20 ms from the worker's start until n results are acknowledged:
        returns the first answer of /metrics and every (time, metrics). ready_timeout bounds the wait
        for that first answer, timeout the drain after it."""
        t0 = time.time()
        t_end, t_note = t0 + ready_timeout, t0 + 5
        samples, m0 = [], None
        while time.time() < t_end:
            self.alive()
            t = time.time()
            m = self.metrics()
            if m:
                if m0 is None:
                    m0 = m
                    t_end = t + timeout  # the drain's own limit, from the first answer of /metrics
                samples.append((t, m))
                if m.get("bertstream_messages_scored_total", 0) >= n:
                    return m0, samples
            if time.time() >= t_note:  # progress, so a run cut short still says how far it got
                t_note += 5
                log(f"scored {m.get('bertstream_messages_scored_total', 0):.0f} of {n} after {time.time() - t0:.0f}s")
            time.sleep(0.02)
        m = self.metrics()
        keys = ("bertstream_messages_scored_total", "bertstream_batch_sequences_count", "bertstream_batch_tokens_sum",
                "bertstream_encode_seconds_sum", "bertstream_gpu_busy_seconds_total")
        fail(f"fewer than {n} reviews scored within {timeout}s; metrics: "
             f"{ {k: m.get(k) for k in keys} }\n{self.tail()}")

    def stop(self):
        self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(60)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return -9


def produce_cmd(binary, bootstrap):
    return [binary, "produce", "--brokers", bootstrap, "--topic", "reviews", "-X", "linger.ms=1"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--model")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--reviews", type=int, default=3000)
    ap.add_argument("--rate", type=float, default=0)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--partitions", type=int, default=0,
                    help="of the input and output topics; default: 8, or one per 2 MB of the burst if more "
                         "(the mock broker keeps only about 5 MB per partition: docs/kafka.md)")
    ap.add_argument("--burst-timeout", type=float, default=600, help="seconds the burst may take to be scored")
    ap.add_argument("--save", metavar="DIR",
                    help="write worker.log and latency.csv (per paced review: when it was written, relative "
                         "to the first, and its milliseconds to produced and to visible) into DIR")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more worker config override (repeatable), e.g. worker.queue_depth=16384")
    a = ap.parse_args()

    texts = imdb_texts(a.data)
    if not a.partitions:
        burst_bytes = sum(len(texts[i % len(texts)].encode()) + 40 for i in range(a.reviews))
        a.partitions = max(8, -(-int(1.5 * burst_bytes) // (2 << 20)))  # room for the latency phase too
    tmp = tempfile.mkdtemp(prefix="bertstream-bench-worker-")
    procs = []
    try:
        # -- broker, model, head --
        topics = f"reviews:{a.partitions},review-scores:{a.partitions},reviews-dlq:1"
        broker = subprocess.Popen([a.bin, "broker", "--topics", topics], stdout=subprocess.PIPE, stdin=subprocess.PIPE)
        broker_cpu = CpuSampler(broker.pid)
        broker_cpu.start()
        procs.append(broker)
        bootstrap = broker.stdout.readline().decode().strip()
        if not bootstrap:
            fail("bertstream broker printed no bootstrap servers")
        model = a.model
        if not model:
            model = os.path.join(tmp, "model")
            vocab = os.path.join(a.data, "bert-base-uncased", "vocab.txt")
            r = subprocess.run([a.bin, "init-model", "--preset", a.preset, "--seed", "1", "--out", model, "--vocab",
                                vocab], capture_output=True, text=True)
            if r.returncode != 0:
                fail(f"init-model: {r.stderr.strip()}")
        with open(os.path.join(model, "config.json")) as f:
            hidden = json.load(f)["hidden_size"]
        head = os.path.join(tmp, "head.safetensors")
        write_head(head, hidden)

        # -- 1. throughput: a backlog --
        # The burst goes into the input topic before the worker starts, so what is measured is the
        # worker draining a backlog (as after an outage, or when a consumer group scales out), not how
        # fast one `produce` process writes: on the first GPU runs the writer was the slower side.
        burst = "".join(json.dumps({"review_id": f"t{i}", "text": texts[i % len(texts)]}) + "\n"
                        for i in range(a.reviews)).encode()
        t0 = time.time()
        r = subprocess.run(produce_cmd(a.bin, bootstrap), input=burst, capture_output=True)
        if r.returncode != 0:
            fail(f"produce: {r.stderr.decode().strip()}")
        t_produced = time.time() - t0
        log(f"backlog: {a.reviews} reviews produced in {t_produced:.2f}s")

        # -- worker --
        # The mock broker answers an empty Fetch only after fetch.wait.max.ms (a real broker answers as
        # soon as data arrives): without a short wait every idle fetch would add up to 500 ms of latency.
        w = Worker(a.bin, {
            "kafka.bootstrap.servers": bootstrap, "consumer.group.id": "bench", "topics.heads": "",
            "model.dir": model, "model.device": a.device, "model.precision": a.precision,
            "model.max_seq_len": str(a.max_len), "head.file": head, "batch.max_sequences": str(a.batch),
            "consumer.fetch.wait.max.ms": "5", "log.level": "info",
            **dict(kv.split("=", 1) for kv in a.set)}, os.path.join(tmp, "worker.log"))
        procs.append(w.p)
        t_start = time.time()
        m0, samples = w.wait_scored(a.reviews, a.burst_timeout, a.burst_timeout + 300)
        engine = re.search(r'engine="([^"]*)"', w.tail(10 ** 6))  # the first: the engine's own line
        engine = engine.group(1) if engine else a.device
        log(f"worker: {engine}")

        # the steady part: from the sample where 10 % of the backlog was scored to the one with 90 %
        # (the worker's start, its first batches of each shape and the last partial batches are
        # outside it; under half a second of it, from the worker's start to the end instead); the
        # whole drain too, from the first review scored to the last
        def at(frac):
            need = frac * a.reviews
            return next(s for s in samples if s[1].get("bertstream_messages_scored_total", 0) >= need)

        def between(sa, sb, k):
            return sb[1].get(k, 0) - sa[1].get(k, 0)

        # The busy counter is credited when the engine thread sees the time: on a GPU every 0.2 ms,
        # on the CPU engine (whose forward runs inside engine_submit) after each batch, so a window
        # edge can fall inside one batch's credit. With 20 batches or more in the window that is
        # at most a tenth; with fewer, the whole run is measured, where every batch is credited.
        lo, hi, span = at(0.10), at(0.90), "while the backlog drained from 10 % to 90 %"
        if hi[0] - lo[0] < 0.5 or between(lo, hi, "bertstream_batch_sequences_count") < 20:
            lo, hi, span = (t_start, m0), samples[-1], "over the worker's whole run (too small a backlog for 10-90 %)"
        window = hi[0] - lo[0]
        throughput = between(lo, hi, "bertstream_messages_scored_total") / window
        busy = between(lo, hi, "bertstream_gpu_busy_seconds_total") / window
        first = next(s for s in samples if s[1].get("bertstream_messages_scored_total", 0) > 0)
        drain_s = samples[-1][0] - first[0]

        def delta(k):  # over the worker's whole run
            return between((t_start, m0), samples[-1], k)

        n_batches = delta("bertstream_batch_sequences_count")
        log(f"throughput: {throughput:.0f} reviews/s {span} ({window:.2f}s; "
            f"engine busy {100 * busy:.0f}% of it); all {a.reviews} in {drain_s:.2f}s from the first result, "
            f"{samples[-1][0] - t_start:.2f}s from the worker's start; {n_batches:.0f} batches of "
            f"{delta('bertstream_batch_sequences_sum') / max(n_batches, 1):.1f} reviews, "
            f"{delta('bertstream_batch_tokens_sum') / max(n_batches, 1):.0f} tokens")

        # -- 2. latency at a steady rate --
        rate = a.rate or max(1.0, throughput / 2)
        n = max(1, int(rate * a.seconds))
        seen = {}
        cons = subprocess.Popen([a.bin, "consume", "--brokers", bootstrap, "--topic", "review-scores", "-X",
                                 "fetch.wait.max.ms=5"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        procs.append(cons)

        def reader():
            for line in cons.stdout:
                t = time.time()
                rec = json.loads(line)
                if rec.get("review_id", "").startswith("l"):
                    seen[rec["review_id"]] = (t, rec["_timestamp"] / 1000.0)

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        # the paced writer's `produce` starts now and writes one review that is not timed, so its
        # connection and the topic's metadata are in place before the clock starts (else the first
        # half second of reviews waits for them, in the writer, not in the worker)
        prod = subprocess.Popen(produce_cmd(a.bin, bootstrap), stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(prod)
        prod.stdin.write((json.dumps({"review_id": "warm-up", "text": texts[0]}) + "\n").encode())
        prod.stdin.flush()
        time.sleep(2)  # the consumer's assignment settles ("only new messages"), the writer connects
        sent = {}
        start = time.time()
        i = 0
        while i < n:  # every review written when it is due, in small groups (one write per millisecond)
            now = time.time()
            due = min(n, int((now - start) * rate) + 1)
            if due > i:
                chunk = []
                for j in range(i, due):
                    k = f"l{j}"
                    sent[k] = now
                    chunk.append(json.dumps({"review_id": k, "text": texts[j % len(texts)]}) + "\n")
                prod.stdin.write("".join(chunk).encode())
                prod.stdin.flush()
                i = due
            time.sleep(0.001)
        prod.stdin.close()
        if prod.wait(120) != 0:
            fail(f"produce (paced): {prod.stderr.read().decode().strip()}")
        t_end = time.time() + 60
        while len(seen) < n and time.time() < t_end:
            time.sleep(0.1)
        t_seen = time.time()
        produced = [seen[k][1] - sent[k] for k in seen if k in sent]
        visible = [seen[k][0] - sent[k] for k in seen if k in sent]
        cpu_drain, cpu_lat = broker_cpu.peak(lo[0], hi[0]), broker_cpu.peak(start, t_seen)
        for what, c in (("drain", cpu_drain), ("latency phase", cpu_lat)):
            if c is not None and c >= 0.9:
                log(f"the development broker used {c:.2f} cores during the {what}: it is one thread, so the "
                    f"figures include its own queueing (a real Kafka cluster does not share that limit)")
        if a.save:
            os.makedirs(a.save, exist_ok=True)
            with open(os.path.join(a.save, "latency.csv"), "w") as f:
                f.write("sent_s,ms_to_produced,ms_to_visible\n")
                for k in sorted((k for k in seen if k in sent), key=lambda k: sent[k]):
                    f.write(f"{sent[k] - start:.4f},{1000 * (seen[k][1] - sent[k]):.1f},"
                            f"{1000 * (seen[k][0] - sent[k]):.1f}\n")
        if len(seen) < n:
            fail(f"latency phase: {len(seen)} of {n} results seen")
        rc = w.stop()
        if a.save:
            shutil.copy(w.logpath, os.path.join(a.save, "worker.log"))
        if rc != 0:
            fail(f"worker exit status {rc}")
        summary = {
            "engine": engine, "device": a.device, "precision": a.precision,
            "model": a.model or f"init-model --preset {a.preset} (random weights)", "max_seq_len": a.max_len,
            "batch_max_sequences": a.batch, "partitions": a.partitions, "cores": os.cpu_count(),
            "throughput_reviews": a.reviews, "throughput_reviews_per_s": round(throughput, 1),
            "engine_busy_fraction": round(busy, 3), "throughput_window_s": round(window, 3),
            "drain_s": round(drain_s, 3), "backlog_produce_s": round(t_produced, 3),
            "broker_cpu_peak_drain": cpu_drain, "broker_cpu_peak_latency": cpu_lat,
            "mean_batch_sequences": round(delta("bertstream_batch_sequences_sum") / max(n_batches, 1), 1),
            "latency_rate_per_s": round(rate, 1), "latency_reviews": n,
            "p50_ms_to_result_produced": round(1000 * pct(produced, 0.50), 1),
            "p99_ms_to_result_produced": round(1000 * pct(produced, 0.99), 1),
            "p50_ms_to_result_visible": round(1000 * pct(visible, 0.50), 1),
            "p99_ms_to_result_visible": round(1000 * pct(visible, 0.99), 1),
        }
        print(json.dumps(summary), flush=True)
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        if os.environ.get("BERTSTREAM_KEEP_TMP"):
            log(f"files kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
