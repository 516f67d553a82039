#!/usr/bin/python3
"""`bertstream broker`, `produce` and `consume` against independent implementations: confluent_kafka
(librdkafka's Python client) as the Kafka client, python3-avro as the Avro codec, and kcat -L for
metadata. Covers the control channel (broker-down/up, push-errors, create-topic, quit) and shutdown.
Every child process runs in its own session and is killed on every exit path."""
import atexit
import io
import json
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import time
from datetime import datetime, timezone

try:
    import avro.io
    import avro.schema
    from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
except ImportError as e:  # the Debian packages are missing: not this test's failure
    print(f"SKIP: {e} (run with /usr/bin/python3; needs python3-confluent-kafka and python3-avro)")
    sys.exit(77)

BIN = os.environ.get("BERTSTREAM_BIN")
SRC = os.environ.get("BERTSTREAM_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", ".."))
if not BIN or not os.access(BIN, os.X_OK):
    print("SKIP: BERTSTREAM_BIN is not set to the bertstream executable")
    sys.exit(77)

children = []
failures = []


def cleanup():
    for p in children:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


atexit.register(cleanup)
for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(sig, lambda s, f: sys.exit(128 + s))


def check(cond, what):
    print(("ok   " if cond else "FAIL ") + what, flush=True)
    if not cond:
        failures.append(what)
    return cond


class Broker:
    def __init__(self, *args):
        self.p = subprocess.Popen([BIN, "broker", *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, start_new_session=True)
        children.append(self.p)
        self.bootstrap = self.readline(10)
        if not self.bootstrap:
            raise RuntimeError("broker printed no bootstrap line: " + self.p.stderr.read1(4096).decode(errors="replace"))

    def readline(self, timeout):
        fd = self.p.stdout.fileno()
        if not select.select([fd], [], [], timeout)[0]:
            return ""
        return self.p.stdout.readline().decode().strip()

    def cmd(self, line):
        self.p.stdin.write((line + "\n").encode())
        self.p.stdin.flush()
        return self.readline(10)


def schema(name):
    with open(os.path.join(SRC, "schemas", name + ".avsc")) as f:
        return avro.schema.parse(f.read())


def avro_encode(sch, record):
    buf = io.BytesIO()
    avro.io.DatumWriter(sch).write(record, avro.io.BinaryEncoder(buf))
    return buf.getvalue()


def avro_decode(sch, data):
    buf = io.BytesIO(data)
    rec = avro.io.DatumReader(sch).read(avro.io.BinaryDecoder(buf))
    assert buf.tell() == len(data), "trailing bytes"
    return rec


def run(args, stdin=None, timeout=60):
    p = subprocess.Popen([BIN, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         start_new_session=True)
    children.append(p)
    out, err = p.communicate(stdin.encode() if stdin is not None else None, timeout=timeout)
    return p.returncode, out.decode(), err.decode()


def consume_all(bootstrap, topic, n, timeout=20):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "it-" + topic, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    msgs, deadline = [], time.time() + timeout
    try:
        while len(msgs) < n and time.time() < deadline:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            msgs.append(m)
    finally:
        c.close()
    return msgs


def test_metadata_and_round_trip(b):
    kcat = shutil.which("kcat")
    if kcat:
        r = subprocess.run([kcat, "-J", "-L", "-b", b.bootstrap, "-m", "10"], capture_output=True, text=True,
                           timeout=30)
        md = json.loads(r.stdout) if r.returncode == 0 else {}
        parts = {t["topic"]: len(t["partitions"]) for t in md.get("topics", [])}
        check(parts.get("it-reviews") == 3 and parts.get("it-scores") == 2,
              f"kcat -L lists it-reviews (3 partitions) and it-scores (2): {parts}")
        check(len(md.get("brokers", [])) == 3, "kcat -L sees 3 brokers")
    else:
        print("note: kcat not installed; metadata check via confluent_kafka only")
    md = Producer({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
    check(len(md.topics["it-reviews"].partitions) == 3, "confluent_kafka metadata: it-reviews has 3 partitions")

    # raw bytes through the broker with an independent client
    p = Producer({"bootstrap.servers": b.bootstrap})
    sent = {f"k{i}": f"value {i}".encode() for i in range(20)}
    for k, v in sent.items():
        p.produce("it-raw", key=k, value=v)
    check(p.flush(20) == 0, "confluent_kafka producer: 20 messages delivered")
    got = {m.key().decode(): m.value() for m in consume_all(b.bootstrap, "it-raw", 20)}
    check(got == sent, "confluent_kafka consumer reads back the 20 messages unchanged")


def test_produce_is_real_avro(b):
    rows = [{"review_id": "r1", "text": "Great film, loved it", "source": "imdb", "created_at": 1700000000123},
            {"review_id": "r2", "text": "", "source": None, "created_at": None},
            {"review_id": "r3", "text": "Ünïcödé \u2603 \"quoted\"\nnewline", "extra": "ignored"}]
    stdin = "".join(json.dumps(r) + "\n" for r in rows)
    rc, _, err = run(["produce", "--brokers", b.bootstrap, "--topic", "it-avro"], stdin)
    check(rc == 0 and "3 delivered" in err, f"bertstream produce (avro) delivers 3 lines: rc={rc} {err.strip()}")
    msgs = consume_all(b.bootstrap, "it-avro", 3)
    sch = schema("review")
    decoded = {m.key().decode(): avro_decode(sch, m.value()) for m in msgs}
    want = {r["review_id"]: {"review_id": r["review_id"], "text": r["text"], "source": r.get("source"),
                             "created_at": r.get("created_at")} for r in rows}
    # python3-avro returns timestamp-millis as a datetime: compare as ms
    for rec in decoded.values():
        ts = rec.get("created_at")
        if ts is not None and not isinstance(ts, int):
            rec["created_at"] = int(round(ts.timestamp() * 1000))
    check(decoded == want, f"python3-avro decodes bertstream's Avro and the keys are review_ids: {decoded}")

    rc, _, err = run(["produce", "--brokers", b.bootstrap, "--topic", "it-labeled", "--schema", "labeled_review",
                      "--framing", "confluent", "--schema-id", "42"],
                     '{"review_id": "L1", "text": "bad", "label": 0}\n{"review_id": "L2", "text": "good", "label": 1}\n')
    check(rc == 0, f"bertstream produce (labeled_review, confluent) exits 0: {err.strip()}")
    msgs = consume_all(b.bootstrap, "it-labeled", 2)
    ok = len(msgs) == 2
    for m in msgs:
        v = m.value()
        ok = ok and v[0] == 0 and struct.unpack(">i", v[1:5])[0] == 42
        rec = avro_decode(schema("labeled_review"), v[5:])
        ok = ok and rec["label"] == (1 if rec["review_id"] == "L2" else 0)
    check(ok, "confluent framing: magic 0, schema id 42 big-endian, then LabeledReview Avro")

    rc, _, err = run(["produce", "--brokers", b.bootstrap, "--topic", "it-avro"], '{"text": "no id"}\nnot json\n')
    check(rc == 1 and "line 1" in err and "line 2" in err and "2 bad lines" in err,
          f"bad input lines are reported by number and make produce exit 1: {err.strip()}")


def test_consume_reads_foreign_avro(b):
    sch = schema("review_score")
    recs = [{"review_id": f"s{i}", "label": "positive" if i % 2 else "negative", "probability": 0.25 * i,
             "logit": -1.5 + i, "tokens": 10 + i, "truncated": i == 2, "head_version": 7, "model_id": "bert-base",
             "scored_at": 1700000000000 + i, "source_partition": i, "source_offset": 100 + i} for i in range(3)]
    p = Producer({"bootstrap.servers": b.bootstrap})
    for r in recs:  # python3-avro wants timestamp-millis as a datetime
        wire = dict(r, scored_at=datetime.fromtimestamp(r["scored_at"] / 1000, tz=timezone.utc))
        p.produce("it-scores", key=r["review_id"], value=avro_encode(sch, wire), partition=0)
    p.produce("it-scores", key="junk", value=b"\x06ab", partition=0,  # review_id of 3 bytes, 2 present
              headers=[("bertstream.error.code", b"invalid_avro")])
    p.flush(20)
    rc, out, err = run(["consume", "--brokers", b.bootstrap, "--topic", "it-scores", "--from-beginning",
                        "--max", "4", "--timeout-ms", "20000"])
    lines = [json.loads(l) for l in out.splitlines()]
    check(rc == 0 and len(lines) == 4, f"consume --max 4 prints 4 JSON lines and exits 0: rc={rc} {err.strip()}")
    by_key = {l["_key"]: l for l in lines}
    ok = all(k in by_key for k in ("s0", "s1", "s2", "junk"))
    for r in recs:
        l = by_key.get(r["review_id"], {})
        for f, v in r.items():
            if f in ("probability", "logit"):
                ok = ok and abs(l.get(f, 1e9) - v) < 1e-6
            else:
                ok = ok and l.get(f) == v
        ok = ok and l.get("_partition") == 0 and isinstance(l.get("_offset"), int)
    check(ok, "consume decodes ReviewScore written by python3-avro, field for field")
    j = by_key.get("junk", {})
    check(j.get("_error", {}).get("code") == "truncated_avro" and
          j.get("_headers", {}).get("bertstream.error.code") == "invalid_avro",
          f"an undecodable message prints _error with its dead-letter code and its headers: {j}")

    t0 = time.time()
    rc, out, _ = run(["consume", "--brokers", b.bootstrap, "--topic", "it-scores", "--timeout-ms", "1500"])
    check(rc == 0 and out == "" and time.time() - t0 < 15,
          "consume without --from-beginning sees no old messages and exits after --timeout-ms idle")


def test_control_channel(b):
    check(b.cmd("rtt 2 1") == "ok", "rtt 2 1 -> ok")
    check(b.cmd("rtt 2 0") == "ok", "rtt 2 0 -> ok")
    check(b.cmd("broker-down 9").startswith("error: "), "broker-down 9 (no such broker) -> error")
    check(b.cmd("frobnicate").startswith("error: unknown command"), "unknown command -> error")
    check(b.cmd("push-errors Produce NO_SUCH_ERROR").startswith("error: "), "unknown error name -> error")
    check(b.cmd("coordinator group it-group 2") == "ok", "coordinator group KEY 2 -> ok")
    check(b.cmd("create-topic it-new 5") == "ok", "create-topic it-new 5 -> ok")
    md = Producer({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
    check("it-new" in md.topics and len(md.topics["it-new"].partitions) == 5, "create-topic made a 5-partition topic")
    check(b.cmd("leader it-new 0 3") == "ok", "leader it-new 0 3 -> ok")
    md = Producer({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
    check(md.topics["it-new"].partitions[0].leader == 3, "leader command moved partition 0 to broker 3")

    # push-errors: retriable errors are retried through; a permanent one fails exactly one produce request
    check(b.cmd("push-errors Produce NOT_LEADER_FOR_PARTITION,REQUEST_TIMED_OUT") == "ok",
          "push-errors Produce NOT_LEADER_FOR_PARTITION,REQUEST_TIMED_OUT -> ok")
    reports = []
    p = Producer({"bootstrap.servers": b.bootstrap, "enable.idempotence": False, "retry.backoff.ms": 10})
    p.produce("it-new", value=b"w", partition=0, on_delivery=lambda e, m: reports.append(e))
    p.flush(20)
    check(reports == [None], f"a produce meeting two retriable pushed errors is still delivered: {reports}")
    check(b.cmd("push-errors Produce MSG_SIZE_TOO_LARGE") == "ok", "push-errors Produce MSG_SIZE_TOO_LARGE -> ok")
    reports = []
    p.produce("it-new", value=b"x", partition=0, on_delivery=lambda e, m: reports.append(e))
    p.flush(20)
    p.produce("it-new", value=b"y", partition=0, on_delivery=lambda e, m: reports.append(e))
    p.flush(20)
    check(len(reports) == 2 and reports[0] is not None and reports[0].code() == KafkaError.MSG_SIZE_TOO_LARGE
          and reports[1] is None, f"the pushed permanent error fails exactly one produce request: {reports}")
    check(b.cmd("push-errors Fetch REQUEST_TIMED_OUT") == "ok" and b.cmd("clear-errors Fetch") == "ok",
          "clear-errors drops pushed errors -> ok")

    # broker-down: partition 0 of it-new is led by broker 3; nothing is delivered until it is up again
    check(b.cmd("broker-down 3") == "ok", "broker-down 3 -> ok")
    reports = []
    p = Producer({"bootstrap.servers": b.bootstrap, "message.timeout.ms": 60000})
    p.produce("it-new", value=b"while-down", partition=0, on_delivery=lambda e, m: reports.append(e))
    p.flush(3)
    check(reports == [], "while broker 3 is down its partition gets no delivery")
    check(b.cmd("broker-up 3") == "ok", "broker-up 3 -> ok")
    p.flush(30)
    check(reports == [None], f"after broker-up 3 the message is delivered: {reports}")


def test_shutdown():
    b = Broker("--topics", "")
    b.p.stdin.close()  # EOF on the control channel must not stop the cluster
    time.sleep(0.5)
    check(b.p.poll() is None, "stdin EOF leaves the broker running")
    md = Producer({"bootstrap.servers": b.bootstrap}).list_topics(timeout=10)
    check(md is not None and len(md.brokers) == 1, "the broker still answers metadata after stdin EOF")
    b.p.send_signal(signal.SIGTERM)
    try:
        rc = b.p.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f"SIGTERM stops the broker with exit 0 (got {rc})")

    b = Broker("--brokers", "1", "--topics", "")
    check(b.cmd("quit") == "ok", "quit -> ok")
    try:
        rc = b.p.wait(15)
    except subprocess.TimeoutExpired:
        rc = None
    check(rc == 0, f"quit stops the broker with exit 0 (got {rc})")

    rc, _, err = run(["broker", "--topics", "bad:0"])
    check(rc == 2 and err.count("\n") == 1, f"a bad --topics value is one error line and exit 2: {err.strip()}")


def main():
    b = Broker("--brokers", "3", "--topics", "it-reviews:3,it-scores:2,it-raw:2,it-avro:1,it-labeled:1")
    print(f"broker at {b.bootstrap}", flush=True)
    test_metadata_and_round_trip(b)
    test_produce_is_real_avro(b)
    test_consume_reads_foreign_avro(b)
    test_control_channel(b)
    check(b.cmd("quit") == "ok", "quit -> ok")
    b.p.wait(15)
    test_shutdown()
    print(f"{len(failures)} failed", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
