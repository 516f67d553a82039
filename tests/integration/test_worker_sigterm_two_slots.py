"""worker_sigterm_with_two_batches_in_flight_drains_without_duplicates: test_worker_sigterm (SIGTERM
mid-stream -> the worker finishes what it started, commits, exits 0 promptly; a restarted worker
scores the rest; ZERO duplicates) with two batches in flight on the CPU engine
(BERTSTREAM_TEST_ENGINE_SLOTS=2, BERTSTREAM_TEST_ENGINE_LATENCY_MS=100: a batch counts as finished
100 ms after its submit), so the stop finds batches still in the engine and must collect them
before it releases anything."""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402
import test_worker_sigterm as SIGTERM  # noqa: E402


def test():
    log = SIGTERM.run("sigterm_two_slots", env={"BERTSTREAM_TEST_ENGINE_SLOTS": "2",
                                                "BERTSTREAM_TEST_ENGINE_LATENCY_MS": "100"})
    m = re.search(r"worker stopped.*batches=(\d+) overlapped=(\d+)", log)
    H.check(m is not None, "no batches/overlapped fields in the first worker's 'worker stopped' line")
    H.log(f"first worker: {m.group(1)} batches, {m.group(2)} submitted while another was in flight")
    H.check(int(m.group(2)) > 0, "no batch was submitted while another was in flight")


if __name__ == "__main__":
    H.main(test)
