/* `bertstream worker`: the streaming scorer. Reads the configuration (YAML, BERTSTREAM_* variables,
 * -o overrides), runs the pipeline of worker.h until SIGTERM/SIGINT, then drains, commits and
 * exits 0. A second signal stops waiting for in-flight work (it is consumed again after restart). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "commands.h"
#include "common.h"
#include "config.h"
#include "log.h"
#include "worker.h"

static const char *usage =
    "usage: bertstream worker --config FILE [-o section.key=value ...] [--dump-config]\n"
    "Consumes reviews from topics.input, scores them (model.dir + head.file / the heads topic) and\n"
    "publishes ReviewScore records to topics.output; undecodable input goes to topics.dead_letter\n"
    "with the original bytes and the reason in headers. Offsets are committed only after the\n"
    "result or dead letter was acknowledged (at-least-once; delivery: exactly_once for transactions).\n"
    "BERTSTREAM_<SECTION>_<KEY> variables override the file, -o overrides both.\n"
    "SIGTERM/SIGINT: stop fetching, finish in-flight batches, commit, exit 0 (twice: stop waiting).\n"
    "HTTP (http.listen): /metrics, /healthz, /readyz.\n"
    "--dump-config prints the effective configuration (secrets as \"***\") and exits.\n";

static volatile sig_atomic_t stop_signals = 0;

static void on_signal(int sig) {
    (void)sig;
    if (stop_signals < 100) stop_signals++;
}

int cmd_worker(int argc, char **argv) {
    char err[BS_ERRLEN];
    bs_config *c = config_new_defaults();
    if (!c) {
        fprintf(stderr, "bertstream worker: out of memory\n");
        return 1;
    }
    int dump = config_take_flag(&argc, argv, "--dump-config"); /* ours; the rest is config_parse_args' */
    int rc = config_parse_args(c, argc, argv, NULL, err);
    if (rc == CONFIG_HELP) {
        fputs(usage, stdout);
        config_free(c);
        return 0;
    }
    if (rc != BS_OK) {
        fprintf(stderr, "bertstream worker: %s\n", err);
        config_free(c);
        return 2;
    }
    if (dump) {
        rc = config_dump(c, stdout) == BS_OK ? 0 : 1;
        config_free(c);
        return rc;
    }
    config_apply_logging(c);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    rc = 1;
    bs_worker *w = worker_new(c, err);
    if (!w) goto out;
    if (worker_run(w, &stop_signals, err) != BS_OK) goto out;
    rc = 0;
out:
    if (rc) fprintf(stderr, "bertstream worker: %s\n", err);
    worker_free(w);
    config_free(c);
    return rc;
}
