/* `bertstream train-head`: trains the classification head on a safetensors file of features and
 * labels with the notebook's recipe (trainer.h), prints one JSON line per step, saves the head. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "head.h"
#include "log.h"
#include "safetensors.h"
#include "trainer.h"

#define TRAIN_HEAD_HIDDEN 64               /* the notebook's ClassificationHead width */
#define TRAIN_HEAD_INIT_SALT 0x68656164ull /* "head": keeps the init stream apart from the shuffle stream */

static const char usage_text[] =
    "usage: bertstream train-head --features FILE [--init FILE] [--epochs 10] [--batch 16] [--lr 2e-4]\n"
    "                             [--weight-decay 0.01] [--seed N] [--no-shuffle] --out FILE\n"
    "\n"
    "Trains Linear(H,64) -> ReLU -> Linear(64,1) with BCEWithLogitsLoss (mean) and AdamW (betas 0.9/0.999,\n"
    "eps 1e-8), as torch does; see docs/training.md.\n"
    "\n"
    "  --features FILE      safetensors with `features` [N,H] and `labels` [N] or [N,1] (0 or 1)\n"
    "  --init FILE          start from this head: fc1.weight, fc1.bias, fc2.weight, fc2.bias\n"
    "                       (or init.fc1.weight ...); default: nn.Linear's uniform init, seeded by --seed\n"
    "  --epochs N           passes over the data (default 10)\n"
    "  --batch N            rows per step; the last batch of an epoch may be smaller (default 16)\n"
    "  --lr X               learning rate (default 2e-4)\n"
    "  --weight-decay X     decoupled weight decay on every parameter (default 0.01)\n"
    "  --seed N             seeds the per-epoch shuffle and the default init (default 0)\n"
    "  --no-shuffle         take the rows in file order every epoch\n"
    "  --out FILE           where to write the trained head (safetensors)\n"
    "\n"
    "stdout: one JSON line per step, {\"epoch\": E, \"step\": S, \"loss\": L}: epoch counts from 1, step counts\n"
    "from 1 across epochs, loss is the batch's mean BCE before that step's update.\n";

static int fail(const char *fmt, ...) BS_PRINTF(1, 2);
static int fail(const char *fmt, ...) {
    char line[BS_ERRLEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(stderr, "bertstream train-head: %s\n", line);
    return 2;
}

static int parse_int(const char *s, int lo, int *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > 1000000000L) return BS_ERR;
    *out = (int)v;
    return BS_OK;
}

static int parse_double(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !isfinite(v)) return BS_ERR;
    *out = v;
    return BS_OK;
}

static int parse_u64(const char *s, uint64_t *out) {
    char *end;
    errno = 0;
    if (*s < '0' || *s > '9') return BS_ERR;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return BS_ERR;
    *out = (uint64_t)v;
    return BS_OK;
}

static int print_step(void *ctx, int epoch, int64_t step, double loss) {
    (void)ctx;
    printf("{\"epoch\": %d, \"step\": %lld, \"loss\": %.17g}\n", epoch, (long long)step, loss);
    return fflush(stdout) != 0 || ferror(stdout);
}

/* The head in FILE, whose tensors are named fc1.weight... or init.fc1.weight... */
static bs_head *load_init(const char *path, char *err) {
    st_file *f = st_open(path, err);
    if (!f) return NULL;
    const char *prefix = NULL;
    if (!st_find(f, "fc1.weight")) {
        if (!st_find(f, "init.fc1.weight")) {
            st_close(f);
            bs_err(err, "%s: no tensor 'fc1.weight' or 'init.fc1.weight'", path);
            return NULL;
        }
        prefix = "init.";
    }
    st_close(f);
    return head_load(path, prefix, err);
}

int cmd_train_head(int argc, char **argv) {
    const char *features = NULL, *init = NULL, *out = NULL;
    trainer_opts o;
    trainer_opts_default(&o);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            return 0;
        }
        if (strcmp(a, "--no-shuffle") == 0) {
            o.shuffle = 0;
            continue;
        }
        int known = strcmp(a, "--features") == 0 || strcmp(a, "--init") == 0 || strcmp(a, "--out") == 0 ||
                    strcmp(a, "--epochs") == 0 || strcmp(a, "--batch") == 0 || strcmp(a, "--lr") == 0 ||
                    strcmp(a, "--weight-decay") == 0 || strcmp(a, "--seed") == 0;
        if (!known) return fail("unknown argument '%s' (see --help)", a);
        if (i + 1 >= argc) return fail("%s needs a value", a);
        const char *v = argv[++i];
        int ok = BS_OK;
        if (strcmp(a, "--features") == 0)
            features = v;
        else if (strcmp(a, "--init") == 0)
            init = v;
        else if (strcmp(a, "--out") == 0)
            out = v;
        else if (strcmp(a, "--epochs") == 0)
            ok = parse_int(v, 1, &o.epochs);
        else if (strcmp(a, "--batch") == 0)
            ok = parse_int(v, 1, &o.batch);
        else if (strcmp(a, "--lr") == 0)
            ok = parse_double(v, &o.lr) == BS_OK && o.lr > 0 ? BS_OK : BS_ERR;
        else if (strcmp(a, "--weight-decay") == 0)
            ok = parse_double(v, &o.weight_decay) == BS_OK && o.weight_decay >= 0 ? BS_OK : BS_ERR;
        else
            ok = parse_u64(v, &o.seed);
        if (ok != BS_OK) return fail("invalid value '%s' for %s", v, a);
    }
    if (!features) return fail("--features FILE is required (see --help)");
    if (!out) return fail("--out FILE is required (see --help)");

    char err[BS_ERRLEN] = "";
    int rc = 2, N = 0, C = 0;
    float *X = NULL, *y = NULL;
    bs_head *h = NULL;
    if (trainer_read_data(features, &X, &y, &N, &C, err) != BS_OK) goto done;
    if (init) {
        if (!(h = load_init(init, err))) goto done;
        if (h->in_dim != C) {
            bs_err(err, "%s: head input width %d does not match the %d feature columns of %s", init, h->in_dim, C,
                   features);
            goto done;
        }
        if (head_validate(h, C, err) != BS_OK) goto done;
    } else {
        if (!(h = head_new(C, TRAIN_HEAD_HIDDEN))) {
            bs_err(err, "out of memory for a %d x %d head", TRAIN_HEAD_HIDDEN, C);
            goto done;
        }
        bs_rng r = {o.seed ^ TRAIN_HEAD_INIT_SALT};
        trainer_init_head(h, &r);
    }
    if (trainer_fit(h, X, y, N, &o, print_step, NULL, err) != BS_OK) goto done;
    if (head_validate(h, C, err) != BS_OK || head_save(h, out, err) != BS_OK) goto done;

    trainer_metrics m;
    if (trainer_eval(h, X, y, N, &m, err) != BS_OK) goto done;
    log_info("head trained",
             "rows=%d features=%d epochs=%d batch=%d train_loss=%.6f train_accuracy=%.4f train_auc=%.4f out=%s", N, C,
             o.epochs, o.batch, m.loss, m.accuracy, m.auc, out);
    rc = 0;
done:
    if (rc != 0) fprintf(stderr, "bertstream train-head: %s\n", err);
    head_free(h);
    free(X);
    free(y);
    return rc;
}
