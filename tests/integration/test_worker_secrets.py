"""worker_never_logs_secrets: a worker given a SASL password and an HMAC key through the
environment (as Kubernetes does from Secrets), at debug log level with librdkafka's own config
debug output on, scores reviews and stops; neither secret appears in its log, its /metrics, or
the configuration dump, while the non-secret settings do appear (so the check can fail)."""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as H  # noqa: E402

PASSWORD = "s3cr3t-SASL-sentinel-7f3a"
HMAC_KEY = "hmac-sentinel-91c2"


def test():
    with H.Harness("secrets") as h:
        env = {
            # librdkafka accepts these under PLAINTEXT (the mock broker has no SASL) and ignores them
            "BERTSTREAM_KAFKA_SASL_USERNAME": "scorer",
            "BERTSTREAM_KAFKA_SASL_PASSWORD": PASSWORD,
            "BERTSTREAM_HEAD_HMAC_KEY": HMAC_KEY,
        }
        w = h.worker(overrides={"log.level": "debug", "kafka.debug": "conf,generic,security"}, env=env)
        w.wait_ready()
        h.produce_reviews(H.imdb_reviews(20))
        w.wait_metric("bertstream_messages_scored_total", 20, timeout=45)
        status, metrics = w.get("/metrics")
        H.check(status == 200, f"/metrics {status}")
        w.signal(signal.SIGTERM)
        H.check(w.p.wait(timeout=30) == 0, "worker did not exit 0 on SIGTERM")
        with open(w.logpath, "rb") as f:
            text = f.read().decode(errors="replace")
        # librdkafka's conf debug lists every property: the password's line must be there (redacted),
        # otherwise the absence check below would prove nothing
        H.check("sasl.password = [redacted]" in text, "librdkafka's configuration listing is not in the log")
        for secret in (PASSWORD, HMAC_KEY):
            H.check(secret not in text, f"a secret appears in the worker log:\n{w.tail(20)}")
            H.check(secret not in metrics, "a secret appears in /metrics")
        dump = H.subprocess.run([H.BIN, "worker", "--config", os.path.join(H.SRC, "config", "worker.yaml"),
                                 "--dump-config"], env=dict(os.environ, **env), capture_output=True, text=True)
        if dump.returncode == 0:
            H.check(PASSWORD not in dump.stdout and HMAC_KEY not in dump.stdout, "a secret appears in --dump-config")
            H.check("***" in dump.stdout, "--dump-config does not mask the secrets")
        H.log(f"log: {len(text)} bytes, {text.count(chr(10))} lines checked; no secret found")


if __name__ == "__main__":
    H.main(test)
