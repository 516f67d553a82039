"""worker_dead_letters_every_poison_kind_with_original_bytes: poison messages of every kind, in each
input framing (avro, confluent, json), go to the dead-letter topic with their ORIGINAL key and value
bytes and the five bertstream.* headers; the good messages around them (an empty review, a 1 MB
review that is scored truncated) are scored exactly once; offsets end past everything."""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402


def zz(n):
    """Avro long: zigzag varint."""
    n = (n << 1) ^ (n >> 63)
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def astr(b):
    return zz(len(b)) + b


def raw_review(rid, text_bytes, tail=b"\x00\x00"):
    return astr(rid) + astr(text_bytes) + tail


def confluent(schema_id, body):
    return b"\x00" + struct.pack(">I", schema_id) + body


def run_phase(h, name, topic, framing, good, poison, overrides=None):
    """good: [(key, value, review_id)], poison: [(key, value, code)]. Returns nothing; checks all."""
    o = {"topics.input": topic, "format.input": framing}
    o.update(overrides or {})
    w = h.worker(name, overrides=o, group=f"{h.group}-{name}")
    w.wait_ready()
    items = [(k, v) for k, v, _ in good] + [(k, v) for k, v, _ in poison]
    where = h.produce(topic, items, partition=0)
    n_good, n_bad = len(good), len(poison)
    w.wait_metric("bertstream_messages_consumed_total", len(items), timeout=30)
    t_scored = w.wait_metric("bertstream_messages_scored_total", n_good, timeout=30)
    H.check(t_scored == n_good, f"{name}: scored_total {t_scored} != {n_good}")
    want_codes = {}
    for _, _, code in poison:
        want_codes[code] = want_codes.get(code, 0) + 1
    # a dead letter is counted when the broker acknowledges it, which for the 2 MB one can come
    # after every good review was scored: wait for each count, then require it exactly
    for code, n in want_codes.items():
        w.wait_metric(f'bertstream_dead_letters_total{{code="{code}"}}', n, timeout=30)
    mt = w.metrics()
    for code, n in want_codes.items():
        got = mt.get(f'bertstream_dead_letters_total{{code="{code}"}}', 0)
        H.check(got == n, f"{name}: dead_letters_total{{code={code}}} = {got}, wanted {n}")
    rc = w.stop()
    H.check(rc == 0, f"{name}: exit status {rc}")
    committed = h.committed(topic, group=f"{h.group}-{name}")
    H.check(committed.get(0) == where[-1][1] + 1, f"{name}: committed {committed}, wanted {where[-1][1] + 1}")

    dlq = [m for m in h.read_topic("reviews-dlq", 0, timeout=10)
           if dict(m.headers() or []).get("bertstream.source.topic") == topic.encode()]
    H.check(len(dlq) == n_bad, f"{name}: {len(dlq)} dead letters, wanted {n_bad}")
    by_offset = {int(dict(m.headers())["bertstream.source.offset"]): m for m in dlq}
    for i, (k, v, code) in enumerate(poison):
        part, off = where[n_good + i]
        m = by_offset.get(off)
        H.check(m is not None, f"{name}: no dead letter for offset {off} ({code})")
        hd = dict(m.headers())
        H.check(hd["bertstream.error.code"] == code.encode(),
                f"{name}: offset {off}: code {hd['bertstream.error.code']!r}, wanted {code}")
        H.check(len(hd["bertstream.error.reason"]) > 0, f"{name}: empty reason")
        H.check(hd["bertstream.source.partition"] == str(part).encode(), f"{name}: partition header")
        H.check(m.key() == k, f"{name}: key {m.key()!r} != original {k!r}")
        H.check((m.value() or b"") == (v or b""), f"{name}: value bytes changed for offset {off} ({code})")
        H.log(f"{name}: {code}: {hd['bertstream.error.reason'].decode()[:100]}")

    scores = [(m, H.decode_score(m.value())) for m in h.read_topic("review-scores", 0, timeout=10)]
    mine = [(m, s) for m, s in scores if s["review_id"] in {rid for _, _, rid in good}]
    H.check_each_once(mine, [rid for _, _, rid in good])
    return {s["review_id"]: s for _, s in mine}


def test():
    topics = "reviews:1,review-scores:2,reviews-dlq:1,reviews-cf:1,reviews-json:1"
    with H.Harness("dead_letters", topics=topics) as h:
        big = ("great movie " * 90000).encode()  # ~1 MB of text
        # -- bare Avro --
        good = [
            (b"a0", H.review_bytes("a0", "A fine film."), "a0"),
            (None, H.review_bytes("a1", ""), "a1"),  # empty review: valid
            (b"a2", raw_review(b"a2", big), "a2"),   # 1 MB review: scored, truncated
            (b"a3", H.review_bytes("a3", "caf\u00e9 \u4e16\u754c", source="imdb", created_at=1700000000000), "a3"),
        ]
        valid = H.review_bytes("p", "ok")
        poison = [
            (b"k-empty", b"", "truncated_avro"),
            (None, None, "truncated_avro"),                      # a null value (tombstone)
            (b"k-cut", valid[:-3], "truncated_avro"),
            (b"k-trail", valid + b"\x00", "invalid_avro"),
            (None, raw_review(b"p", b"x", tail=b"\x04\x00"), "invalid_avro"),  # union index 2
            (b"k-neg", zz(-5) + b"abc", "invalid_avro"),          # negative length
            (b"\xff\x00key", raw_review(b"p", b"bad \xff\xfe utf8"), "invalid_utf8"),
            (b"k-big", raw_review(b"p", b"x" * 2_100_000), "too_large"),
        ]
        res = run_phase(h, "avro", "reviews", "avro", good, poison, {"worker.max_message_bytes": "2000000"})
        H.check(res["a2"]["truncated"] is True and res["a2"]["tokens"] == 128, f"1 MB review: {res['a2']}")
        H.check(res["a1"]["tokens"] == 2 and res["a1"]["truncated"] is False, f"empty review: {res['a1']}")

        # -- Confluent wire format (schema id 1 expected) --
        body = H.review_bytes("c0", "Confluent framed and fine.")
        good = [(b"c0", confluent(1, body), "c0")]
        poison = [
            (b"k-magic", b"\x01" + body, "bad_magic_byte"),
            (b"k-short", b"\x00\x00\x01", "truncated_avro"),  # magic ok, header cut short
            (b"k-id", confluent(7, body), "unknown_schema_id"),
            (b"k-cut", confluent(1, body[:-4]), "truncated_avro"),
        ]
        run_phase(h, "confluent", "reviews-cf", "confluent", good, poison)

        # -- JSON --
        good = [(None, json.dumps({"review_id": "j0", "text": "Plain JSON review."}).encode(), "j0")]
        poison = [
            (b"k-json", b"{not json", "invalid_json"),
            (b"k-type", json.dumps({"review_id": 5, "text": "x"}).encode(), "wrong_type"),
            (b"k-missing", json.dumps({"review_id": "x"}).encode(), "wrong_type"),
            (b"k-array", b"[1,2]", "wrong_type"),
        ]
        run_phase(h, "json", "reviews-json", "json", good, poison)


if __name__ == "__main__":
    H.main(test)
