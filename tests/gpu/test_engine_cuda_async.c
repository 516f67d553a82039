/* The CUDA engine with two batches in flight (engine_submit / engine_wait): a pipelined run over
 * many batches (shapes that repeat, so graphs are captured and replayed while the other slot is
 * in flight; outputs that vary) equals a synchronous engine_forward run bit for bit, at fp32, bf16
 * and fp8, with the two slots on two lanes (computing at once) and on one; slot misuse is refused;
 * and a timing print of pipelined vs synchronous throughput on BERT-base, with and without host
 * work per batch (the overlap must show there). Needs a CUDA device: fails without one (the gpu
 * label is excluded there). No reference data needed: random weights. */
#include <cuda_runtime_api.h>
#include <math.h>

#include "common.h"
#include "dtype.h"
#include "engine.h"
#include "model.h"
#include "test.h"

enum { MAXB = 24, MAXLEN = 120, MAXT = MAXB * MAXLEN };

typedef struct {
    int B, want; /* want: bit 0 pooler, 1 cls, 2 mean, 3 hidden */
    int32_t *ids, *cu;
} tbatch;

typedef struct {
    float *pooler, *cls, *mean, *hidden;
} touts;

static float *falloc(size_t n) {
    float *p = malloc((n ? n : 1) * sizeof(float));
    if (!p) exit(1);
    for (size_t i = 0; i < n; i++) p[i] = NAN; /* never written: stays NaN, fails the comparison */
    return p;
}

static touts outs_alloc(int C) {
    touts o = {falloc((size_t)MAXB * C), falloc((size_t)MAXB * C), falloc((size_t)MAXB * C), falloc((size_t)MAXT * C)};
    return o;
}

static void outs_free(touts *o) {
    free(o->pooler), free(o->cls), free(o->mean), free(o->hidden);
}

static bs_outputs outputs(const tbatch *b, touts *o) {
    bs_outputs r = {0};
    if (b->want & 1) r.pooler = o->pooler;
    if (b->want & 2) r.cls = o->cls;
    if (b->want & 4) r.mean = o->mean;
    if (b->want & 8) r.hidden = o->hidden;
    return r;
}

/* n batches over 6 shapes (B, lengths) that come back in a scrambled order with fresh ids, so
 * each shape runs eagerly once, is captured, then replayed; outputs vary, hidden now and then. */
static tbatch *make_batches(int n, int vocab, uint64_t seed) {
    static const int shapeB[6] = {1, 3, 8, 16, 24, 5};
    int lens[6][MAXB];
    bs_rng r = {seed};
    for (int s = 0; s < 6; s++)
        for (int i = 0; i < shapeB[s]; i++) lens[s][i] = 1 + (int)(bs_rng_next(&r) % MAXLEN);
    tbatch *v = calloc((size_t)n, sizeof *v);
    for (int k = 0; k < n; k++) {
        const int s = (int)((k * 7 + k / 6) % 6);
        tbatch *b = &v[k];
        b->B = shapeB[s];
        b->want = k % 5 == 4 ? 15 : k % 3 == 0 ? 1 : k % 3 == 1 ? 6 : 7;
        b->cu = malloc(sizeof(int32_t) * (size_t)(b->B + 1));
        b->cu[0] = 0;
        for (int i = 0; i < b->B; i++) b->cu[i + 1] = b->cu[i] + lens[s][i];
        b->ids = malloc(sizeof(int32_t) * (size_t)b->cu[b->B]);
        for (int t = 0; t < b->cu[b->B]; t++) b->ids[t] = (int32_t)(bs_rng_next(&r) % (uint64_t)vocab);
    }
    return v;
}

static void batches_free(tbatch *v, int n) {
    for (int k = 0; k < n; k++) free(v[k].ids), free(v[k].cu);
    free(v);
}

static bs_engine *make_engine(const bs_model *m, bs_precision p, int max_seqs, int max_tokens, int max_seq_len) {
    char err[BS_ERRLEN];
    bs_engine_opts o = {
        .device = "cuda", .precision = p, .max_seqs = max_seqs, .max_tokens = max_tokens, .max_seq_len = max_seq_len};
    bs_engine *e = engine_new(m, &o, err);
    if (!e)
        fprintf(stderr, "  engine_new(cuda, %s): %s\n", bs_precision_name(p), err);
    else
        fprintf(stderr, "  engine: %s\n", engine_describe(e));
    return e;
}

/* Count of differing floats (bitwise) between a and b over n, and the largest |a - b|. */
static size_t bit_diffs(const float *a, const float *b, size_t n, double *worst) {
    size_t d = 0;
    for (size_t i = 0; i < n; i++) {
        if (memcmp(&a[i], &b[i], sizeof(float)) != 0) {
            d++;
            double x = fabs((double)a[i] - (double)b[i]);
            if (!(x <= *worst)) *worst = x;
        }
    }
    return d;
}

/* Floats that differ bitwise between got and ref over the outputs each of the n batches asked
 * for; *compared counts them all, *worst is the largest |difference|. */
static size_t outputs_diff(const tbatch *v, const touts *got, const touts *ref, int n, int C, size_t *compared,
                           double *worst) {
    size_t diffs = 0;
    for (int k = 0; k < n; k++) {
        const size_t BC = (size_t)v[k].B * C, TC = (size_t)v[k].cu[v[k].B] * C;
        if (v[k].want & 1) diffs += bit_diffs(got[k].pooler, ref[k].pooler, BC, worst), *compared += BC;
        if (v[k].want & 2) diffs += bit_diffs(got[k].cls, ref[k].cls, BC, worst), *compared += BC;
        if (v[k].want & 4) diffs += bit_diffs(got[k].mean, ref[k].mean, BC, worst), *compared += BC;
        if (v[k].want & 8) diffs += bit_diffs(got[k].hidden, ref[k].hidden, TC, worst), *compared += TC;
    }
    return diffs;
}

/* One at a time: engine_forward of each batch into o. Returns the number of failed calls. */
static int run_synchronous(bs_engine *e, const tbatch *v, touts *o, int n) {
    char err[BS_ERRLEN];
    int fails = 0;
    for (int k = 0; k < n; k++) {
        bs_batch b = {.n_seq = v[k].B, .ids = v[k].ids, .cu_seqlens = v[k].cu};
        bs_outputs out = outputs(&v[k], &o[k]);
        if (engine_forward(e, &b, &out, err) != BS_OK) fprintf(stderr, "  forward %d: %s\n", k, err), fails++;
    }
    return fails;
}

/* Two in flight: submit k into slot k % 2, scribble over its ids (engine.h: read only in submit),
 * then collect k - 1. Returns the number of failed calls. */
static int run_pipelined(bs_engine *e, const tbatch *v, touts *o, int n, int32_t *scratch) {
    char err[BS_ERRLEN];
    int fails = 0;
    for (int k = 0; k <= n; k++) {
        if (k < n) {
            memcpy(scratch, v[k].ids, sizeof(int32_t) * (size_t)v[k].cu[v[k].B]);
            bs_batch b = {.n_seq = v[k].B, .ids = scratch, .cu_seqlens = v[k].cu};
            bs_outputs out = outputs(&v[k], &o[k]);
            if (engine_submit(e, k % 2, &b, &out, err) != BS_OK) fprintf(stderr, "  submit %d: %s\n", k, err), fails++;
            memset(scratch, 0x7f, sizeof(int32_t) * (size_t)v[k].cu[v[k].B]); /* ids out of the vocabulary */
        }
        if (k > 0 && engine_wait(e, (k - 1) % 2, err) != BS_OK) fprintf(stderr, "  wait %d: %s\n", k - 1, err), fails++;
    }
    return fails;
}

/* The same n batches through es one at a time into ref and through ep two in flight into got (both
 * allocated here, freed by the caller with outs_free); returns the floats that differ, *compared
 * and *worst as outputs_diff counts them. */
static size_t sync_vs_pipelined(bs_engine *es, bs_engine *ep, const tbatch *v, touts *ref, touts *got, int n, int C,
                                size_t *compared, double *worst) {
    for (int k = 0; k < n; k++) ref[k] = outs_alloc(C), got[k] = outs_alloc(C);
    CHECK_INT(run_synchronous(es, v, ref, n), 0);
    int32_t *scratch = malloc(sizeof(int32_t) * MAXT);
    CHECK_INT(run_pipelined(ep, v, got, n, scratch), 0);
    free(scratch);
    return outputs_diff(v, got, ref, n, C, compared, worst);
}

/* n_max: at most this many batches (the emulated fp8 run is the slowest) */
static void check_pipelined_equals_sync(bs_precision prec, int n_max) {
    char err[BS_ERRLEN];
    bs_bert_config cfg = {.vocab_size = 1000,
                          .hidden = 128,
                          .layers = 4,
                          .heads = 4,
                          .intermediate = 512,
                          .max_positions = 128,
                          .type_vocab_size = 2,
                          .ln_eps = 1e-12f};
    bs_model *m = model_init_random(&cfg, 21, err);
    CHECK(m != NULL);
    if (!m) return;
    /* BS_TEST_BATCHES caps N (the CPU emulator's copy of this test, which is slow) */
    const int cap = getenv("BS_TEST_BATCHES") ? atoi(getenv("BS_TEST_BATCHES")) : 0;
    int N = cap >= 8 && cap < 60 ? cap : 60;
    if (N > n_max) N = n_max;
    const int C = cfg.hidden;
    tbatch *v = make_batches(N, cfg.vocab_size, 4);
    /* two fresh engines of the same options go through the same eager/capture/replay sequence */
    bs_engine *es = make_engine(m, prec, MAXB, MAXT, MAXLEN), *ep = make_engine(m, prec, MAXB, MAXT, MAXLEN);
    CHECK(es && ep);
    if (es && ep) {
        CHECK_INT(engine_slots(ep), 2);
        touts *ref = calloc(N, sizeof *ref), *got = calloc(N, sizeof *got);
        size_t compared = 0;
        double worst = 0;
        size_t diffs = sync_vs_pipelined(es, ep, v, ref, got, N, C, &compared, &worst);
        for (int k = 0; k < N; k++) CHECK(!isnan(ref[k].pooler[0]) || !(v[k].want & 1));
        fprintf(stderr, "  %s: %d batches, %zu floats compared, %zu differ (max |diff| %.3g)\n",
                bs_precision_name(prec), N, compared, diffs, worst);
        CHECK_INT(diffs, 0);
        CHECK(compared > 0);
        CHECK_CONTAINS(engine_describe(ep), "graphs=on"); /* no capture fell back to eager */
        CHECK_CONTAINS(engine_describe(ep), "lanes=2");   /* slot 1 computed on a lane of its own */

        /* again on the now warm engine (every shape replays a graph), against the same reference */
        for (int k = 0; k < N; k++)
            for (size_t i = 0; i < (size_t)MAXB * C; i++) got[k].pooler[i] = NAN;
        int32_t *scratch = malloc(sizeof(int32_t) * MAXT);
        CHECK_INT(run_pipelined(ep, v, got, N, scratch), 0);
        diffs = 0;
        for (int k = 0; k < N; k++)
            if (v[k].want & 1) diffs += bit_diffs(got[k].pooler, ref[k].pooler, (size_t)v[k].B * C, &worst);
        CHECK_INT(diffs, 0);
        free(scratch);
        for (int k = 0; k < N; k++) outs_free(&ref[k]), outs_free(&got[k]);
        free(ref), free(got);
    }
    engine_free(es), engine_free(ep);
    batches_free(v, N);
    model_free(m);
}

static void engine_cuda_pipelined_equals_synchronous_bit_for_bit(void) {
    check_pipelined_equals_sync(BS_PREC_FP32, 60);
    check_pipelined_equals_sync(BS_PREC_BF16, 60); /* same algorithms, cuDNN SDPA where it is used */
    /* fp8 keeps the most per lane (the E4M3 GEMM inputs, FF1's E4M3 output, the batch scales):
     * static scales, then per-batch ones */
    int dev = 0;
    struct cudaDeviceProp prop;
    cudaGetDevice(&dev);
    cudaGetDeviceProperties(&prop, dev);
    if (!bs_cc_has_fp8(prop.major, prop.minor)) {
        fprintf(stderr, "  no fp8 on this GPU: the fp8 runs are not applicable\n");
        return;
    }
    check_pipelined_equals_sync(BS_PREC_FP8, 8);
    setenv("BERTSTREAM_FP8_SCALES", "batch", 1);
    check_pipelined_equals_sync(BS_PREC_FP8, 8);
    unsetenv("BERTSTREAM_FP8_SCALES");
}

/* A two-layer model of hidden size 64, random weights (the slot and lane tests); NULL on failure. */
static bs_model *small_model(uint64_t seed) {
    char err[BS_ERRLEN];
    bs_bert_config cfg = {.vocab_size = 500,
                          .hidden = 64,
                          .layers = 2,
                          .heads = 2,
                          .intermediate = 128,
                          .max_positions = 128,
                          .type_vocab_size = 2,
                          .ln_eps = 1e-12f};
    bs_model *m = model_init_random(&cfg, seed, err);
    CHECK(m != NULL);
    return m;
}

/* Slot rules on the real engine, and engine_forward between submits. */
static void engine_cuda_slots_refuse_misuse_and_forward_uses_a_free_slot(void) {
    char err[BS_ERRLEN];
    bs_model *m = small_model(3);
    if (!m) return;
    const int C = m->cfg.hidden;
    tbatch *v = make_batches(3, m->cfg.vocab_size, 8);
    bs_engine *e = make_engine(m, BS_PREC_FP32, MAXB, MAXT, MAXLEN);
    CHECK(e != NULL);
    if (e) {
        touts ref[3], got[3];
        for (int k = 0; k < 3; k++) {
            ref[k] = outs_alloc(C), got[k] = outs_alloc(C);
            v[k].want = 7;
            bs_batch b = {.n_seq = v[k].B, .ids = v[k].ids, .cu_seqlens = v[k].cu};
            bs_outputs out = outputs(&v[k], &ref[k]);
            CHECK_INT(engine_forward(e, &b, &out, err), BS_OK);
        }
        bs_batch b0 = {.n_seq = v[0].B, .ids = v[0].ids, .cu_seqlens = v[0].cu};
        bs_batch b1 = {.n_seq = v[1].B, .ids = v[1].ids, .cu_seqlens = v[1].cu};
        bs_batch b2 = {.n_seq = v[2].B, .ids = v[2].ids, .cu_seqlens = v[2].cu};
        bs_outputs o0 = outputs(&v[0], &got[0]), o1 = outputs(&v[1], &got[1]), o2 = outputs(&v[2], &got[2]);
        err[0] = '\0';
        CHECK_INT(engine_wait(e, 1, err), BS_ERR);
        CHECK_STR(err, "engine_wait: engine slot 1 holds no batch");
        CHECK_INT(engine_submit(e, 2, &b0, &o0, err), BS_ERR);
        CHECK_CONTAINS(err, "does not exist");
        CHECK_INT(engine_submit(e, 0, &b0, &o0, err), BS_OK);
        CHECK_INT(engine_submit(e, 0, &b1, &o1, err), BS_ERR);
        CHECK_CONTAINS(err, "already holds a batch");
        /* forward while slot 0 is in flight: runs in slot 1 (its own lane, beside slot 0's batch) */
        CHECK_INT(engine_forward(e, &b2, &o2, err), BS_OK);
        CHECK(memcmp(got[2].pooler, ref[2].pooler, (size_t)v[2].B * C * 4) == 0);
        CHECK_INT(engine_submit(e, 1, &b1, &o1, err), BS_OK);
        CHECK_INT(engine_forward(e, &b2, &o2, err), BS_ERR);
        CHECK_CONTAINS(err, "both engine slots hold a batch");
        double t0 = bs_now();
        while (!(engine_ready(e, 1) && engine_ready(e, 0)) && bs_now() - t0 < 10) {
        }
        CHECK_INT(engine_ready(e, 1), 1); /* the two lanes compute independently: both finish */
        CHECK_INT(engine_ready(e, 0), 1);
        CHECK_INT(engine_wait(e, 1, err), BS_OK);
        CHECK_INT(engine_wait(e, 0, err), BS_OK);
        CHECK_INT(engine_ready(e, 0), 0);
        for (int k = 0; k < 2; k++) {
            const size_t BC = (size_t)v[k].B * C;
            CHECK(memcmp(got[k].pooler, ref[k].pooler, BC * 4) == 0);
            CHECK(memcmp(got[k].cls, ref[k].cls, BC * 4) == 0);
            CHECK(memcmp(got[k].mean, ref[k].mean, BC * 4) == 0);
        }
        /* an invalid batch leaves the slot free */
        int32_t bad_cu[2] = {0, MAXLEN + 1};
        bs_batch bb = {.n_seq = 1, .ids = v[0].ids, .cu_seqlens = bad_cu};
        CHECK_INT(engine_submit(e, 0, &bb, &o0, err), BS_ERR);
        CHECK_CONTAINS(err, "tokens (1..");
        CHECK_INT(engine_submit(e, 0, &b0, &o0, err), BS_OK);
        CHECK_INT(engine_wait(e, 0, err), BS_OK);
        /* freeing with a batch in flight waits for it (no use-after-free on the device) */
        CHECK_INT(engine_submit(e, 1, &b1, &o1, err), BS_OK);
        engine_free(e);
        CHECK_INT(cudaDeviceSynchronize(), cudaSuccess);
        for (int k = 0; k < 3; k++) outs_free(&ref[k]), outs_free(&got[k]);
    }
    batches_free(v, 3);
    model_free(m);
}

/* BERTSTREAM_LANES=1: the two slots share one lane and compute in turn (also what the engine falls
 * back to when a second lane does not fit in memory); the pipelined results equal engine_forward's.
 * Other values are refused at start. */
static void engine_cuda_one_lane_takes_turns(void) {
    char err[BS_ERRLEN];
    bs_model *m = small_model(5);
    if (!m) return;
    enum { N = 8 };
    const int C = m->cfg.hidden;
    tbatch *v = make_batches(N, m->cfg.vocab_size, 9);
    bs_engine *es = make_engine(m, BS_PREC_FP32, MAXB, MAXT, MAXLEN);
    setenv("BERTSTREAM_LANES", "3", 1);
    bs_engine_opts o = {
        .device = "cuda", .precision = BS_PREC_FP32, .max_seqs = MAXB, .max_tokens = MAXT, .max_seq_len = MAXLEN};
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_LANES='3': expected 1 or 2");
    setenv("BERTSTREAM_LANES", "1", 1);
    bs_engine *e1 = make_engine(m, BS_PREC_FP32, MAXB, MAXT, MAXLEN);
    unsetenv("BERTSTREAM_LANES");
    CHECK(es && e1);
    if (es && e1) {
        touts ref[N], got[N];
        size_t compared = 0;
        double worst = 0;
        CHECK_INT(sync_vs_pipelined(es, e1, v, ref, got, N, C, &compared, &worst), 0);
        CHECK(compared > 0);
        CHECK_CONTAINS(engine_describe(e1), "lanes=1");
        for (int k = 0; k < N; k++) outs_free(&ref[k]), outs_free(&got[k]);
    }
    engine_free(es), engine_free(e1);
    batches_free(v, N);
    model_free(m);
}

/* BERTSTREAM_SPLIT=on: engine_forward runs a batch of two or more sequences as two halves on the
 * two lanes at once. Every output of every batch (each half's rows at their place, hidden states
 * included) equals a whole-batch engine's: at fp32 within 1e-5 (the halves' GEMMs have other row
 * counts, so cuBLASLt may pick other algorithms), at bf16 cosine >= 0.9999 per row. With a slot
 * busy, or one lane, nothing is split. Other values are refused at start. */
static void check_split(bs_precision prec, int n) {
    char err[BS_ERRLEN];
    bs_model *m = small_model(13);
    if (!m) return;
    const int C = m->cfg.hidden;
    tbatch *v = make_batches(n, m->cfg.vocab_size, 17);
    bs_engine *ew = make_engine(m, prec, MAXB, MAXT, MAXLEN);
    setenv("BERTSTREAM_SPLIT", "on", 1);
    bs_engine *es = make_engine(m, prec, MAXB, MAXT, MAXLEN);
    setenv("BERTSTREAM_LANES", "1", 1);
    bs_engine *e1 = make_engine(m, prec, MAXB, MAXT, MAXLEN);
    unsetenv("BERTSTREAM_LANES"), unsetenv("BERTSTREAM_SPLIT");
    CHECK(ew && es && e1);
    if (ew && es && e1) {
        CHECK(strstr(engine_describe(ew), "split=") == NULL);
        CHECK_CONTAINS(engine_describe(es), "lanes=2 split=on ");
        CHECK(strstr(engine_describe(e1), "split=") == NULL); /* one lane: nothing to split across */
        touts *ref = calloc((size_t)n, sizeof *ref), *got = calloc((size_t)n, sizeof *got);
        touts *one = calloc((size_t)n, sizeof *one);
        for (int k = 0; k < n; k++) ref[k] = outs_alloc(C), got[k] = outs_alloc(C), one[k] = outs_alloc(C);
        CHECK_INT(run_synchronous(ew, v, ref, n), 0);
        CHECK_INT(run_synchronous(es, v, got, n), 0);
        CHECK_INT(run_synchronous(e1, v, one, n), 0);
        size_t compared = 0, compared1 = 0;
        double worst = 0, worst1 = 0, cos = 1;
        const size_t diffs = outputs_diff(v, got, ref, n, C, &compared, &worst);
        CHECK_INT(outputs_diff(v, one, ref, n, C, &compared1, &worst1), 0); /* one lane: the whole batch, same bits */
        for (int k = 0; k < n; k++) {
            const int B = v[k].B, T = v[k].cu[B];
            const float *g[4] = {got[k].pooler, got[k].cls, got[k].mean, got[k].hidden};
            const float *r[4] = {ref[k].pooler, ref[k].cls, ref[k].mean, ref[k].hidden};
            for (int f = 0; f < 4; f++) {
                if (!(v[k].want & 1 << f)) continue;
                const double c = bs_test_min_row_cosine(g[f], r[f], f == 3 ? T : B, C);
                if (!(c >= cos)) cos = c;
            }
        }
        fprintf(stderr,
                "  %s: %d batches split across two lanes, %zu floats compared, %zu differ (max |diff| %.3g), "
                "min cosine %.7f\n",
                bs_precision_name(prec), n, compared, diffs, worst, cos);
        CHECK(compared > 0);
        if (prec == BS_PREC_FP32)
            CHECK_NEAR(worst, 0, 1e-5);
        else
            CHECK(cos >= 0.9999);

        /* slot 0 busy: engine_forward takes slot 1 whole, and the batch in slot 0 is unharmed */
        const int a = 3, b = 4; /* two batches of several sequences */
        CHECK(v[a].B >= 2 && v[b].B >= 2);
        touts x = outs_alloc(C), y = outs_alloc(C);
        bs_batch ba = {.n_seq = v[a].B, .ids = v[a].ids, .cu_seqlens = v[a].cu};
        bs_batch bb = {.n_seq = v[b].B, .ids = v[b].ids, .cu_seqlens = v[b].cu};
        bs_outputs oa = outputs(&v[a], &x), ob = outputs(&v[b], &y);
        CHECK_INT(engine_submit(es, 0, &ba, &oa, err), BS_OK);
        CHECK_INT(engine_forward(es, &bb, &ob, err), BS_OK);
        CHECK_INT(engine_wait(es, 0, err), BS_OK);
        touts xs[2] = {x, y}, rs[2] = {ref[a], ref[b]};
        const tbatch vs[2] = {v[a], v[b]};
        size_t c2 = 0;
        double w2 = 0;
        (void)outputs_diff(vs, xs, rs, 2, C, &c2, &w2);
        CHECK(c2 > 0);
        if (prec == BS_PREC_FP32) CHECK_NEAR(w2, 0, 1e-5);
        outs_free(&x), outs_free(&y);
        for (int k = 0; k < n; k++) outs_free(&ref[k]), outs_free(&got[k]), outs_free(&one[k]);
        free(ref), free(got), free(one);
    }
    engine_free(ew), engine_free(es), engine_free(e1);
    batches_free(v, n);
    model_free(m);
}

static void engine_cuda_split_forward_matches_whole_batches(void) {
    char err[BS_ERRLEN];
    bs_model *m = small_model(13);
    if (!m) return;
    setenv("BERTSTREAM_SPLIT", "2", 1);
    bs_engine_opts o = {
        .device = "cuda", .precision = BS_PREC_FP32, .max_seqs = MAXB, .max_tokens = MAXT, .max_seq_len = MAXLEN};
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_SPLIT='2': expected on or off");
    unsetenv("BERTSTREAM_SPLIT");
    model_free(m);
    check_split(BS_PREC_FP32, 6); /* each of make_batches' six shapes once */
    check_split(BS_PREC_BF16, 6);
}

/* Spins the host for s seconds: stands in for tokenizing and Kafka work per batch. */
static void host_work(double s) {
    double t0 = bs_now();
    while (bs_now() - t0 < s) {
    }
}

/* BERT-base bf16, batches of 64 reviews of 16..128 tokens: seq/s synchronous vs pipelined, without
 * and with host work equal to the batch's GPU time. Pipelining must hide most of that host work. */
static void engine_cuda_pipeline_throughput_vs_synchronous(void) {
    char err[BS_ERRLEN];
    bs_bert_config cfg;
    CHECK_INT(bert_config_preset("base", &cfg, err), BS_OK);
    bs_model *m = model_init_random(&cfg, 1, err);
    CHECK(m != NULL);
    if (!m) return;
    enum { NB = 8, B = 64, L = 128, ITERS = 60 };
    bs_engine *e = make_engine(m, BS_PREC_BF16, B, B * L, L);
    CHECK(e != NULL);
    if (e) {
        int32_t *ids[NB], *cu[NB];
        bs_rng r = {77};
        long tokens = 0;
        for (int k = 0; k < NB; k++) {
            cu[k] = malloc(sizeof(int32_t) * (B + 1));
            ids[k] = malloc(sizeof(int32_t) * B * L);
            cu[k][0] = 0;
            for (int s = 0; s < B; s++) cu[k][s + 1] = cu[k][s] + 16 + (int)(bs_rng_next(&r) % (L - 16 + 1));
            for (int t = 0; t < cu[k][B]; t++) ids[k][t] = 1000 + (int32_t)(bs_rng_next(&r) % 20000u);
            tokens += cu[k][B];
        }
        float *feat[2] = {malloc(sizeof(float) * B * cfg.hidden), malloc(sizeof(float) * B * cfg.hidden)};
        for (int w = 0; w < 2; w++) /* each shape eager, then captured */
            for (int k = 0; k < NB; k++) {
                bs_batch b = {.n_seq = B, .ids = ids[k], .cu_seqlens = cu[k]};
                bs_outputs o = {.pooler = feat[0]};
                CHECK_INT(engine_forward(e, &b, &o, err), BS_OK);
            }
        double t_sync[2], t_pipe[2], work = 0;
        for (int with_work = 0; with_work < 2; with_work++) {
            double t0 = bs_now();
            for (int i = 0; i < ITERS; i++) {
                host_work(work);
                bs_batch b = {.n_seq = B, .ids = ids[i % NB], .cu_seqlens = cu[i % NB]};
                bs_outputs o = {.pooler = feat[0]};
                CHECK_INT(engine_forward(e, &b, &o, err), BS_OK);
            }
            t_sync[with_work] = bs_now() - t0;
            t0 = bs_now();
            for (int i = 0; i <= ITERS; i++) {
                if (i < ITERS) {
                    host_work(work); /* batch i's tokenization, while batch i-1 computes */
                    bs_batch b = {.n_seq = B, .ids = ids[i % NB], .cu_seqlens = cu[i % NB]};
                    bs_outputs o = {.pooler = feat[i % 2]};
                    CHECK_INT(engine_submit(e, i % 2, &b, &o, err), BS_OK);
                }
                if (i > 0) CHECK_INT(engine_wait(e, (i - 1) % 2, err), BS_OK);
            }
            t_pipe[with_work] = bs_now() - t0;
            if (!with_work) work = t_sync[0] / ITERS; /* host work = one batch's engine time */
        }
        const double seqs = (double)B * ITERS;
        fprintf(stderr, "  BERT-base bf16, %d x 16..128 tokens (%.0f tokens/batch), %d batches:\n", B,
                (double)tokens / NB, ITERS);
        fprintf(stderr,
                "    engine only:          synchronous %8.0f seq/s (%.2f ms/batch), pipelined %8.0f seq/s "
                "(%.2f ms/batch), x%.2f\n",
                seqs / t_sync[0], t_sync[0] / ITERS * 1e3, seqs / t_pipe[0], t_pipe[0] / ITERS * 1e3,
                t_sync[0] / t_pipe[0]);
        fprintf(stderr,
                "    + %.2f ms host work: synchronous %8.0f seq/s (%.2f ms/batch), pipelined %8.0f seq/s "
                "(%.2f ms/batch), x%.2f\n",
                work * 1e3, seqs / t_sync[1], t_sync[1] / ITERS * 1e3, seqs / t_pipe[1], t_pipe[1] / ITERS * 1e3,
                t_sync[1] / t_pipe[1]);
        /* ideal: host work and GPU time overlap fully, half the synchronous time; serialised: equal */
        if (work >= 1e-3) CHECK(t_pipe[1] <= 0.8 * t_sync[1]);
        /* without host work, pipelining must not cost throughput (noise allowance 10%) */
        CHECK(t_pipe[0] <= 1.1 * t_sync[0]);
        for (int k = 0; k < NB; k++) free(ids[k]), free(cu[k]);
        free(feat[0]), free(feat[1]);
        engine_free(e);
    }
    model_free(m);
}

int main(void) {
    if (engine_cuda_device_count() == 0) {
        fprintf(stderr, "FAIL: no CUDA device (GPU tests need one; exclude the gpu label elsewhere)\n");
        return 1;
    }
    RUN(engine_cuda_slots_refuse_misuse_and_forward_uses_a_free_slot);
    RUN(engine_cuda_pipelined_equals_synchronous_bit_for_bit);
    RUN(engine_cuda_one_lane_takes_turns);
    RUN(engine_cuda_split_forward_matches_whole_batches);
    RUN(engine_cuda_pipeline_throughput_vs_synchronous);
    return bs_test_done();
}
