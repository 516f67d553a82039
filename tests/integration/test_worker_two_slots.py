"""worker_two_batches_in_flight_score_like_offline: the end-to-end check (every review scored once,
equal to the offline `bertstream score`, offsets committed to the end, SIGTERM exits 0) with the
engine pipeline keeping two batches in flight on the CPU engine: BERTSTREAM_TEST_ENGINE_SLOTS=2
makes the worker use both engine slots, and BERTSTREAM_TEST_ENGINE_LATENCY_MS makes a submitted
batch count as finished only 30 ms later (a stand-in for a GPU computing it), so a second batch is
submitted while the first is in flight. Also: the worker reports overlapped batches, every batch's
bertstream_encode_seconds spans submit to collect (>= the latency), and bertstream_gpu_busy_ratio
is above 0 while scoring (or in the one-second window holding the burst's end, which closes up to
a second after it) and falls to 0 once the worker is idle; bertstream_gpu_busy_seconds_total, the
union of the batches' in-engine spans, lies between half their sum and their sum."""
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402
import test_worker_end_to_end as E2E  # noqa: E402

LATENCY_MS = 30


def test():
    seen = {}

    def during(w):
        busiest = 0.0
        t0 = time.time()
        while w.metric("bertstream_messages_scored_total") < E2E.N and time.time() - t0 < 45:
            busiest = max(busiest, w.metric("bertstream_gpu_busy_ratio"))
            time.sleep(0.1)
        mt = w.metrics()
        seen["batches"] = mt.get("bertstream_encode_seconds_count", 0)
        seen["encode_sum"] = mt.get("bertstream_encode_seconds_sum", 0.0)
        seen["busy_seconds"] = mt.get("bertstream_gpu_busy_seconds_total", -1.0)
        # the ratio is set as each window of a second or more closes: a burst shorter than that can
        # end before its window does (one CI run scored all N within the window that was still open)
        t1 = time.time()
        while busiest == 0 and time.time() - t1 < 2.5:
            busiest = max(busiest, w.metric("bertstream_gpu_busy_ratio"))
            time.sleep(0.05)
        H.log(f"busiest gpu_busy_ratio while scoring (or in the window that holds its end): {busiest:.2f}")
        H.check(busiest > 0, "bertstream_gpu_busy_ratio stayed 0 while batches ran")
        t0 = time.time()
        while w.metric("bertstream_gpu_busy_ratio", 1.0) > 0 and time.time() - t0 < 5:
            time.sleep(0.1)
        H.check(w.metric("bertstream_gpu_busy_ratio", 1.0) == 0,
                f"gpu_busy_ratio {w.metric('bertstream_gpu_busy_ratio')} after 5 s idle")

    log = E2E.run("two_slots", env={"BERTSTREAM_TEST_ENGINE_SLOTS": "2",
                                    "BERTSTREAM_TEST_ENGINE_LATENCY_MS": str(LATENCY_MS)}, during=during)
    H.check("engine_slots=2" in log, "the worker did not report engine_slots=2")
    m = re.search(r"worker stopped.*batches=(\d+) overlapped=(\d+)", log)
    H.check(m is not None, "no batches/overlapped fields in the 'worker stopped' line")
    batches, overlapped = int(m.group(1)), int(m.group(2))
    H.log(f"{batches} batches, {overlapped} submitted while another was in flight")
    H.check(overlapped > 0, "no batch was submitted while another was in flight")
    H.check(batches == seen["batches"], f"{batches} batches submitted, encode_seconds counted {seen['batches']}")
    H.check(seen["encode_sum"] >= batches * LATENCY_MS / 1000.0 * 0.999,
            f"encode_seconds_sum {seen['encode_sum']:.3f} < {batches} batches x {LATENCY_MS} ms")
    # the busy counter is the union of the batches' in-engine spans: no more than their sum, and, with
    # at most two in flight at any instant, no less than half of it
    busy, total = seen["busy_seconds"], seen["encode_sum"]
    H.log(f"gpu_busy_seconds_total {busy:.3f} s, encode_seconds_sum {total:.3f} s")
    H.check(total / 2 * 0.999 <= busy <= total * 1.001 + 1e-6,
            f"gpu_busy_seconds_total {busy:.3f} outside [encode_sum / 2, encode_sum] = [{total / 2:.3f}, {total:.3f}]")


if __name__ == "__main__":
    H.main(test)
