/* `bertstream bench`: encoder throughput on random token ids. Prints one JSON line:
 * device, precision, batch, seq_len, seq_per_s, ms_per_batch, tokens_per_s, gflops, and on
 * the CPU sgemm_gflops (cblas_sgemm alone on the model's GEMM shapes) and their ratio; and
 * head_ms_per_batch, the head (hidden 64) on the batch's features on one host thread, which the
 * worker's engine thread adds to every batch. --skip leaves parts of the CUDA engine's forward pass
 * out, to time the rest under the same load (what-if figures; the features are then meaningless). */
#include <cblas.h>
#undef I
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "common.h"
#include "engine.h"
#include "head.h"
#include "model.h"

static const char *usage =
    "usage: bertstream bench [--model DIR | --preset base|tiny] [--device auto|cpu|cuda[:N]]\n"
    "                        [--precision auto|fp32|fp16|bf16|fp8] [--batch 16] [--seq-len 128]\n"
    "                        [--lengths fixed|uniform:MIN:MAX] [--seconds 10] [--seed 1] [--inflight 1|2]\n"
    "                        [--skip gemm,attention,layernorm,other]\n"
    "Runs the encoder on random ids (random weights with --preset) and prints one JSON line.\n"
    "--inflight 2 keeps two batches in flight (engine_submit/engine_wait, as the worker does):\n"
    "seq_per_s is then the pipelined throughput and ms_per_batch the interval between batches.\n"
    "--skip (CUDA only) leaves those parts out of every forward pass, to time the rest under the same\n"
    "load: gemm (the GEMMs and their input casts), attention, layernorm (the residual LayerNorms),\n"
    "other (embeddings, pooling, pooler). The features are then meaningless; gflops still counts a\n"
    "whole pass's FLOPs.\n";

/* Milliseconds per batch of the head (hidden 64, random weights) on the batch's pooled features:
 * host work that the worker's engine thread does for every batch beside the encoder. The best of
 * repeated runs over ~0.05 s. Negative when out of memory. */
static double head_ms(const float *feat, int B, int C, bs_rng *r) {
    bs_head *h = head_new(C, 64);
    float *logit = malloc(sizeof(float) * (size_t)B);
    double best = -1;
    if (h && logit) {
        float *arr[4] = {h->fc1_w, h->fc1_b, h->fc2_w, h->fc2_b};
        const size_t len[4] = {(size_t)C * 64, 64, 64, 1};
        for (int a = 0; a < 4; a++)
            for (size_t i = 0; i < len[a]; i++) arr[a][i] = (float)(bs_rng_uniform(r) - 0.5) * 0.1f;
        const double t_end = bs_now() + 0.05;
        for (int k = 0; k < 3 || bs_now() < t_end; k++) {
            const double t0 = bs_now();
            head_apply(h, feat, B, logit, NULL);
            const double t = (bs_now() - t0) * 1e3;
            best = best < 0 || t < best ? t : best;
        }
    }
    head_free(h);
    free(logit);
    return best;
}

/* GFLOP/s of cblas_sgemm alone on the four GEMM shapes of one encoder layer over T tokens:
 * the best of repeated rounds, as the engine's figure is, so both see the same machine noise. */
static double sgemm_peak(int T, int C, int FF, double seconds) {
    /* sized for the largest of the four shapes: a model's FF may be smaller than 3C */
    const size_t in_max = (size_t)(FF > C ? FF : C), out_max = (size_t)(FF > 3 * C ? FF : 3 * C);
    float *a = calloc((size_t)T * in_max, sizeof(float)), *w = calloc(out_max * in_max, sizeof(float));
    float *y = calloc((size_t)T * out_max, sizeof(float));
    double best = 0;
    if (a && w && y) {
        for (size_t i = 0; i < (size_t)T * in_max; i++) a[i] = (float)(i % 7) * 0.01f;
        for (size_t i = 0; i < out_max * in_max; i++) w[i] = (float)(i % 5) * 0.01f;
        const int shapes[4][2] = {{3 * C, C}, {C, C}, {FF, C}, {C, FF}}; /* (out, in) */
        double t_end = bs_now() + seconds;
        int rounds = 0;
        do {
            double flops = 0, t0 = bs_now();
            for (int k = 0; k < 4; k++) {
                int out = shapes[k][0], in = shapes[k][1];
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, out, in, 1.0f, a, in, w, in, 0.0f, y, out);
                flops += 2.0 * T * out * in;
            }
            double gf = flops / (bs_now() - t0) / 1e9;
            if (rounds++ > 0 && gf > best) best = gf; /* round 0 warms the caches and threads */
        } while (bs_now() < t_end || rounds < 4);
    }
    free(a);
    free(w);
    free(y);
    return best;
}

int cmd_bench(int argc, char **argv) {
    char err[BS_ERRLEN];
    const char *model_dir = NULL, *preset = "base", *device = "auto", *lengths = "fixed";
    bs_precision prec = BS_PREC_AUTO;
    unsigned skip = 0;
    long long batch = 16, seq_len = 128, seed = 1, inflight = 1;
    double seconds = 10;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i, err))) goto usage_err;
        if (!strcmp(a, "--model"))
            model_dir = v;
        else if (!strcmp(a, "--preset"))
            preset = v;
        else if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--lengths"))
            lengths = v;
        else if (!strcmp(a, "--precision")) {
            if (bs_precision_parse(v, &prec, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--batch")) {
            if (cli_int(a, v, 1, 65536, &batch, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--seq-len")) {
            if (cli_int(a, v, 2, 8192, &seq_len, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--inflight")) {
            if (cli_int(a, v, 1, BS_ENGINE_SLOTS, &inflight, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--skip")) {
            if (bs_skip_parse(v, &skip, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--seed")) {
            if (cli_int(a, v, 0, INT64_MAX, &seed, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--seconds")) {
            if (cli_double(a, v, 0.0, 3600, &seconds, err) != BS_OK) goto usage_err;
        } else {
            bs_err(err, "unknown option '%s' (see --help)", a);
            goto usage_err;
        }
    }
    int min_len = (int)seq_len, max_len = (int)seq_len;
    if (strcmp(lengths, "fixed") != 0) {
        if (sscanf(lengths, "uniform:%d:%d", &min_len, &max_len) != 2 || min_len < 2 || max_len < min_len ||
            max_len > seq_len) {
            bs_err(err, "--lengths: expected fixed or uniform:MIN:MAX with 2 <= MIN <= MAX <= --seq-len, got '%s'",
                   lengths);
            goto usage_err;
        }
    }

    int rc = 1;
    bs_model *m = NULL;
    bs_engine *e = NULL;
    int32_t *ids = NULL, *cu = NULL;
    float *pool = NULL, *pool2 = NULL;
    if (model_dir) {
        m = model_load(model_dir, err);
    } else {
        bs_bert_config cfg;
        if (bert_config_preset(preset, &cfg, err) == BS_OK) m = model_init_random(&cfg, (uint64_t)seed, err);
    }
    if (!m) goto done;
    if (seq_len > m->cfg.max_positions) {
        bs_err(err, "--seq-len %lld exceeds the model's max_position_embeddings %d", seq_len, m->cfg.max_positions);
        goto done;
    }
    bs_engine_opts o = {.device = device,
                        .precision = prec,
                        .max_seqs = (int)batch,
                        .max_tokens = (int)(batch * seq_len),
                        .max_seq_len = (int)seq_len,
                        .skip = skip};
    if (!(e = engine_new(m, &o, err))) goto done;
    ids = malloc(sizeof(int32_t) * (size_t)(batch * seq_len));
    cu = malloc(sizeof(int32_t) * (size_t)(batch + 1));
    pool = malloc(sizeof(float) * (size_t)(batch * m->cfg.hidden));
    pool2 = malloc(sizeof(float) * (size_t)(batch * m->cfg.hidden));
    if (!ids || !cu || !pool || !pool2) {
        bs_err(err, "out of memory");
        goto done;
    }
    bs_rng r = {(uint64_t)seed};
    /* BERT's word ids (1000..20999, [CLS] 101, [SEP] 102); any id of a smaller vocabulary */
    const int V = m->cfg.vocab_size, big = V >= 21000;
    const uint64_t lo = big ? 1000 : 0, span = big ? 20000 : (uint64_t)V;
    cu[0] = 0;
    for (int s = 0; s < batch; s++) {
        int n = min_len + (int)(bs_rng_next(&r) % (uint64_t)(max_len - min_len + 1));
        cu[s + 1] = cu[s] + n;
        for (int t = cu[s]; t < cu[s + 1]; t++) ids[t] = (int32_t)(lo + bs_rng_next(&r) % span);
        ids[cu[s]] = big ? 101 : 0;
        ids[cu[s + 1] - 1] = big ? 102 : 0;
    }
    bs_batch b = {.n_seq = (int)batch, .ids = ids, .cu_seqlens = cu};
    bs_outputs out = {.pooler = pool}, out2 = {.pooler = pool2};
    if (engine_forward(e, &b, &out, err) != BS_OK) goto done; /* warm-up */
    /* CUDA runs a shape's first batch eagerly and captures its graph on the second: keep that
     * capture out of the timed loop too */
    if (engine_is_cuda(e) && engine_forward(e, &b, &out, err) != BS_OK) goto done;
    int iters = 0;
    double t0 = bs_now(), dt = 0, best = 1e300;
    if (inflight == 1) {
        do {
            double t1 = bs_now();
            if (engine_forward(e, &b, &out, err) != BS_OK) goto done;
            double t = bs_now() - t1;
            best = t < best ? t : best;
            iters++;
            dt = bs_now() - t0;
        } while (dt < seconds || iters < 3);
    } else { /* both slots busy; each completed batch is resubmitted at once (b is read by submit only).
              * The clock starts at the first completion: from there on, batch after batch in steady state. */
        const bs_outputs *o[2] = {&out, &out2};
        int busy[2] = {0, 0}, s = 0, first = 1, failed = 1; /* failed: until the loop completes */
        for (int k = 0; k < 2; k++) {
            if (engine_submit(e, k, &b, o[k], err) != BS_OK) goto drain;
            busy[k] = 1;
        }
        double last = 0;
        do {
            busy[s] = 0;
            if (engine_wait(e, s, err) != BS_OK) goto drain;
            const double now = bs_now();
            if (first) {
                t0 = now, first = 0;
            } else {
                best = now - last < best ? now - last : best;
                iters++;
                dt = now - t0;
            }
            last = now;
            if (engine_submit(e, s, &b, o[s], err) != BS_OK) goto drain;
            busy[s] = 1;
            s ^= 1;
        } while (dt < seconds || iters < 3);
        failed = 0;
    drain: /* the batches still in flight are not counted (and after an error, not wanted) */
        for (int k = 0; k < 2; k++) {
            char e2[BS_ERRLEN];
            if (busy[k] && engine_wait(e, k, e2) != BS_OK && !failed) {
                snprintf(err, sizeof err, "%s", e2);
                failed = 1;
            }
        }
        if (failed) goto done;
    }
    /* the FLOPs executed: with the last layer on the CLS rows (the pooler is all bench asks for,
     * as the worker), fewer than a full forward's */
    const int cls_only = engine_cls_only(e, &out); /* as the engine runs it */
    double per_batch = dt / iters, T = cu[batch];
    const double gflop = engine_flops(&m->cfg, &b, cls_only) / 1e9; /* per batch */
    double gflops = gflop / per_batch;
    double gflops_best = gflop / best;
    printf("{\"device\": \"%s\", \"engine\": \"%s\", \"precision\": \"%s\", \"batch\": %lld, \"seq_len\": %lld, "
           "\"lengths\": \"%s\", \"tokens_per_batch\": %.0f, \"iterations\": %d, \"seq_per_s\": %.1f, "
           "\"ms_per_batch\": %.6g, \"tokens_per_s\": %.0f, \"gflops\": %.1f, \"gflop_per_batch\": %.6g, "
           "\"inflight\": %lld, \"last_layer\": \"%s\"",
           engine_is_cuda(e) ? "cuda" : "cpu", engine_describe(e), bs_precision_name(engine_precision(e)), batch,
           seq_len, lengths, T, iters, batch / per_batch, per_batch * 1e3, T / per_batch, gflops, gflop, inflight,
           cls_only ? "cls-rows" : "all-rows");
    char skipped[40];
    printf(", \"skip\": \"%s\"", bs_skip_name(skip, skipped, sizeof skipped));
    printf(", \"head_ms_per_batch\": %.6g", head_ms(pool, (int)batch, m->cfg.hidden, &r));
    if (!engine_is_cuda(e)) {
        /* the figure of merit: the engine's best batch against cblas_sgemm's best round */
        double peak = sgemm_peak((int)T, m->cfg.hidden, m->cfg.intermediate, seconds < 3 ? seconds : 3);
        printf(", \"gflops_best\": %.1f, \"sgemm_gflops\": %.1f, \"ratio_to_sgemm\": %.3f", gflops_best, peak,
               peak > 0 ? gflops_best / peak : 0);
    }
    printf("}\n");
    rc = 0;
done:
    if (rc) fprintf(stderr, "bertstream bench: %s\n", err);
    free(ids);
    free(cu);
    free(pool);
    free(pool2);
    engine_free(e);
    model_free(m);
    return rc;
usage_err:
    fprintf(stderr, "bertstream bench: %s\n", err);
    return 2;
}
