/* CPU engine: equal to Hugging Face transformers' float64 outputs on the golden tiny-bert
 * (within 1e-4), equal to a naive double-precision reference on a model of another
 * shape, and independent of how sequences are batched. */
#include <math.h>

#include "common.h"
#include "engine.h"
#include "head.h"
#include "model.h"
#include "safetensors.h"
#include "test.h"

#define TOL 1e-4

static void engine_cpu_matches_hf_golden_tiny_bert(void) {
    char err[BS_ERRLEN];
    const char *dir = bs_test_data("golden/tiny-bert");
    bs_model *m = model_load(dir, err);
    CHECK(m != NULL);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    st_file *g = st_open(bs_test_data("golden/tiny-bert/golden.safetensors"), err);
    CHECK(g != NULL);
    if (!g) return;
    const st_tensor *ids_t = st_find(g, "input_ids");
    const st_tensor *mask_t = st_find(g, "attention_mask");
    CHECK(ids_t && mask_t && ids_t->dtype == ST_I32);
    const int B = (int)ids_t->shape[0], L = (int)ids_t->shape[1], C = m->cfg.hidden;
    const int32_t *ids = ids_t->data, *mask = mask_t->data;

    int32_t *packed = malloc(sizeof(int32_t) * (size_t)B * L), cu[B + 1];
    cu[0] = 0;
    for (int s = 0; s < B; s++) {
        int n = 0;
        for (int t = 0; t < L; t++)
            if (mask[s * L + t]) packed[cu[s] + n++] = ids[s * L + t];
        cu[s + 1] = cu[s] + n;
    }
    const int T = cu[B];
    bs_engine_opts o = {.device = "cpu", .precision = BS_PREC_FP32, .max_seqs = B, .max_tokens = T, .max_seq_len = L};
    bs_engine *e = engine_new(m, &o, err);
    CHECK(e != NULL);
    if (!e) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    float *hidden = malloc(sizeof(float) * (size_t)T * C), *pooler = malloc(sizeof(float) * (size_t)B * C);
    float *cls = malloc(sizeof(float) * (size_t)B * C), *mean = malloc(sizeof(float) * (size_t)B * C);
    bs_batch batch = {.n_seq = B, .ids = packed, .cu_seqlens = cu};
    bs_outputs out = {.pooler = pooler, .cls = cls, .mean = mean, .hidden = hidden};
    CHECK_INT(engine_forward(e, &batch, &out, err), BS_OK);

    float *g_hidden = bs_test_f32(g, "last_hidden_state", -1);
    double worst = 0;
    for (int s = 0; s < B; s++)
        for (int t = 0; t < cu[s + 1] - cu[s]; t++) {
            double d = bs_test_max_abs_diff(hidden + (size_t)(cu[s] + t) * C, g_hidden + ((size_t)s * L + t) * C, C);
            if (!(d <= worst)) worst = d;
        }
    CHECK_NEAR(worst, 0, TOL);
    fprintf(stderr, "  last_hidden_state max |diff| %.3g\n", worst);
    const char *names[3] = {"pooler_output", "cls", "mean_pooled"};
    float *mine[3] = {pooler, cls, mean};
    for (int k = 0; k < 3; k++) {
        float *ref = bs_test_f32(g, names[k], -1);
        double d = bs_test_max_abs_diff(mine[k], ref, (size_t)B * C);
        fprintf(stderr, "  %s max |diff| %.3g\n", names[k], d);
        CHECK_NEAR(d, 0, TOL);
        free(ref);
    }

    /* pooler and cls alone: the last layer runs on the CLS rows only (engine_cls_only) and still
     * meets the golden outputs, and the full pass within 1e-5 */
    float *pooler2 = malloc(sizeof(float) * (size_t)B * C), *cls2 = malloc(sizeof(float) * (size_t)B * C);
    bs_outputs out2 = {.pooler = pooler2, .cls = cls2};
    CHECK(engine_cls_only(e, &out2));
    CHECK_INT(engine_forward(e, &batch, &out2, err), BS_OK);
    float *mine2[2] = {pooler2, cls2}, *full[2] = {pooler, cls};
    for (int k = 0; k < 2; k++) {
        float *ref = bs_test_f32(g, names[k], -1);
        double d = bs_test_max_abs_diff(mine2[k], ref, (size_t)B * C);
        fprintf(stderr, "  %s (last layer on CLS rows) max |diff| %.3g\n", names[k], d);
        CHECK_NEAR(d, 0, TOL);
        CHECK_NEAR(bs_test_max_abs_diff(mine2[k], full[k], (size_t)B * C), 0, 1e-5);
        free(ref);
    }
    free(pooler2);
    free(cls2);

    bs_head *h = head_load(bs_test_data("golden/tiny-bert/head.safetensors"), NULL, err);
    CHECK(h != NULL);
    if (h) {
        float logit[B], prob[B];
        head_apply(h, pooler, B, logit, prob);
        float *g_logit = bs_test_f32(g, "head_logit", -1), *g_prob = bs_test_f32(g, "head_prob", -1);
        CHECK_NEAR(bs_test_max_abs_diff(logit, g_logit, B), 0, TOL);
        CHECK_NEAR(bs_test_max_abs_diff(prob, g_prob, B), 0, TOL);
        free(g_logit);
        free(g_prob);
        head_free(h);
    }
    free(g_hidden);
    free(hidden);
    free(pooler);
    free(cls);
    free(mean);
    free(packed);
    engine_free(e);
    st_close(g);
    model_free(m);
}

/* A deliberately naive double-precision BERT for one sequence: no BLAS, no packing. */
static void naive_forward(const bs_model *m, const int32_t *ids, int n, double *hid /* (n, C) */,
                          double *pool /* (C) */) {
    const bs_bert_config *c = &m->cfg;
    const int C = c->hidden, NH = c->heads, HS = C / NH, FF = c->intermediate;
    double *qkv = calloc((size_t)n * 3 * C, sizeof(double)), *ctx = calloc((size_t)n * C, sizeof(double));
    double *ff = calloc((size_t)n * FF, sizeof(double)), *tmp = calloc((size_t)n * C, sizeof(double));
    double *p = calloc((size_t)n, sizeof(double));
#define LN(v, w, b)                                                                                                    \
    do {                                                                                                               \
        double mu = 0, var = 0;                                                                                        \
        for (int k = 0; k < C; k++) mu += (v)[k];                                                                      \
        mu /= C;                                                                                                       \
        for (int k = 0; k < C; k++) var += ((v)[k] - mu) * ((v)[k] - mu);                                              \
        var /= C;                                                                                                      \
        for (int k = 0; k < C; k++) (v)[k] = ((v)[k] - mu) / sqrt(var + c->ln_eps) * (w)[k] + (b)[k];                  \
    } while (0)
    for (int t = 0; t < n; t++) {
        for (int k = 0; k < C; k++)
            hid[t * C + k] =
                (double)m->word_emb[(size_t)ids[t] * C + k] + m->pos_emb[(size_t)t * C + k] + m->type_emb[k];
        LN(hid + t * C, m->emb_ln_w, m->emb_ln_b);
    }
    for (int l = 0; l < c->layers; l++) {
        const bs_layer_weights *w = &m->layer[l];
        for (int t = 0; t < n; t++)
            for (int o = 0; o < 3 * C; o++) {
                double a = w->qkv_b[o];
                for (int k = 0; k < C; k++) a += hid[t * C + k] * w->qkv_w[(size_t)o * C + k];
                qkv[t * 3 * C + o] = a;
            }
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < n; i++) {
                double mx = -1e300, sum = 0;
                for (int j = 0; j < n; j++) {
                    double s = 0;
                    for (int d = 0; d < HS; d++) s += qkv[i * 3 * C + h * HS + d] * qkv[j * 3 * C + C + h * HS + d];
                    p[j] = s / sqrt((double)HS);
                    if (p[j] > mx) mx = p[j];
                }
                for (int j = 0; j < n; j++) sum += (p[j] = exp(p[j] - mx));
                for (int d = 0; d < HS; d++) {
                    double a = 0;
                    for (int j = 0; j < n; j++) a += p[j] / sum * qkv[j * 3 * C + 2 * C + h * HS + d];
                    ctx[i * C + h * HS + d] = a;
                }
            }
        for (int t = 0; t < n; t++) {
            for (int o = 0; o < C; o++) {
                double a = w->ao_b[o];
                for (int k = 0; k < C; k++) a += ctx[t * C + k] * w->ao_w[(size_t)o * C + k];
                tmp[t * C + o] = a + hid[t * C + o];
            }
            LN(tmp + t * C, w->ln1_w, w->ln1_b);
            for (int o = 0; o < FF; o++) {
                double a = w->ff1_b[o];
                for (int k = 0; k < C; k++) a += tmp[t * C + k] * w->ff1_w[(size_t)o * C + k];
                ff[t * FF + o] = 0.5 * a * (1 + erf(a / sqrt(2.0)));
            }
            for (int o = 0; o < C; o++) {
                double a = w->ff2_b[o];
                for (int k = 0; k < FF; k++) a += ff[t * FF + k] * w->ff2_w[(size_t)o * FF + k];
                hid[t * C + o] = a + tmp[t * C + o];
            }
            LN(hid + t * C, w->ln2_w, w->ln2_b);
        }
    }
    for (int o = 0; o < C; o++) {
        double a = m->pool_b[o];
        for (int k = 0; k < C; k++) a += hid[k] * m->pool_w[(size_t)o * C + k];
        pool[o] = tanh(a);
    }
#undef LN
    free(qkv);
    free(ctx);
    free(ff);
    free(tmp);
    free(p);
}

/* Hidden 96, 3 heads (head size 32), 3 layers, intermediate 200, 77 positions, 1000 words:
 * nothing in the engine may assume bert-base's or tiny-bert's shape. */
static void engine_cpu_matches_naive_reference_on_another_shape(void) {
    char err[BS_ERRLEN];
    bs_bert_config cfg = {.vocab_size = 1000,
                          .hidden = 96,
                          .layers = 3,
                          .heads = 3,
                          .intermediate = 200,
                          .max_positions = 77,
                          .type_vocab_size = 2,
                          .ln_eps = 1e-7f};
    bs_model *m = model_init_random(&cfg, 42, err);
    CHECK(m != NULL);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    /* HF's init is N(0, 0.02); bump LayerNorm gains and biases so the test exercises them */
    bs_rng r = {7};
    for (int l = 0; l < cfg.layers; l++)
        for (int k = 0; k < cfg.hidden; k++) {
            m->layer[l].ln1_w[k] = 1.0f + 0.3f * (float)bs_rng_normal(&r);
            m->layer[l].ln2_b[k] = 0.1f * (float)bs_rng_normal(&r);
            m->layer[l].qkv_b[k] = 0.1f * (float)bs_rng_normal(&r);
        }
    enum { B = 5 };
    const int lens[B] = {1, 77, 13, 2, 40};
    int32_t cu[B + 1] = {0};
    for (int s = 0; s < B; s++) cu[s + 1] = cu[s] + lens[s];
    const int T = cu[B], C = cfg.hidden;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(bs_rng_next(&r) % (uint64_t)cfg.vocab_size);
    bs_engine_opts o = {
        .device = "cpu", .precision = BS_PREC_AUTO, .max_seqs = 8, .max_tokens = 512, .max_seq_len = 77};
    bs_engine *e = engine_new(m, &o, err);
    CHECK(e != NULL);
    if (!e) return;
    float *hidden = malloc(sizeof(float) * (size_t)T * C), *pooler = malloc(sizeof(float) * B * C);
    float *mean = malloc(sizeof(float) * B * C);
    bs_batch b = {.n_seq = B, .ids = ids, .cu_seqlens = cu};
    bs_outputs out = {.pooler = pooler, .hidden = hidden, .mean = mean};
    CHECK_INT(engine_forward(e, &b, &out, err), BS_OK);
    double worst_h = 0, worst_p = 0, worst_m = 0;
    for (int s = 0; s < B; s++) {
        double *rh = malloc(sizeof(double) * (size_t)lens[s] * C), rp[96];
        naive_forward(m, ids + cu[s], lens[s], rh, rp);
        for (int k = 0; k < lens[s] * C; k++) worst_h = fmax(worst_h, fabs(rh[k] - hidden[(size_t)cu[s] * C + k]));
        for (int k = 0; k < C; k++) {
            double mu = 0;
            for (int t = 0; t < lens[s]; t++) mu += rh[t * C + k];
            worst_m = fmax(worst_m, fabs(mu / lens[s] - mean[s * C + k]));
            worst_p = fmax(worst_p, fabs(rp[k] - pooler[s * C + k]));
        }
        free(rh);
    }
    fprintf(stderr, "  max |diff| hidden %.3g pooler %.3g mean %.3g\n", worst_h, worst_p, worst_m);
    CHECK_NEAR(worst_h, 0, TOL);
    CHECK_NEAR(worst_p, 0, TOL);
    CHECK_NEAR(worst_m, 0, TOL);

    /* pooler alone, batched: the last layer on the CLS rows (lengths 1 and 77 among them) */
    float *pooler_cls = malloc(sizeof(float) * B * C);
    bs_outputs oc = {.pooler = pooler_cls};
    CHECK_INT(engine_forward(e, &b, &oc, err), BS_OK);
    CHECK_NEAR(bs_test_max_abs_diff(pooler_cls, pooler, (size_t)B * C), 0, 1e-6);
    double worst_c = 0;
    for (int s = 0; s < B; s++) {
        double *rh = malloc(sizeof(double) * (size_t)lens[s] * C), rp[96];
        naive_forward(m, ids + cu[s], lens[s], rh, rp);
        for (int k = 0; k < C; k++) worst_c = fmax(worst_c, fabs(rp[k] - pooler_cls[s * C + k]));
        free(rh);
    }
    fprintf(stderr, "  pooler with the last layer on CLS rows: max |diff| %.3g\n", worst_c);
    CHECK_NEAR(worst_c, 0, TOL);
    free(pooler_cls);

    /* the same sequences one at a time give the same pooler output: batching is exact */
    float one[96];
    for (int s = 0; s < B; s++) {
        int32_t cu1[2] = {0, lens[s]};
        bs_batch b1 = {.n_seq = 1, .ids = ids + cu[s], .cu_seqlens = cu1};
        bs_outputs o1 = {.pooler = one};
        CHECK_INT(engine_forward(e, &b1, &o1, err), BS_OK);
        CHECK_NEAR(bs_test_max_abs_diff(one, pooler + s * C, C), 0, 1e-6);
    }
    free(ids);
    free(hidden);
    free(pooler);
    free(mean);
    engine_free(e);
    model_free(m);
}

static void engine_rejects_bad_batches_with_one_line_errors(void) {
    char err[BS_ERRLEN];
    bs_bert_config cfg;
    CHECK_INT(bert_config_preset("tiny", &cfg, err), BS_OK);
    cfg.vocab_size = 50;
    bs_model *m = model_init_random(&cfg, 1, err);
    CHECK(m != NULL);
    if (!m) return;
    bs_engine_opts o = {.device = "cpu", .precision = BS_PREC_FP32, .max_seqs = 2, .max_tokens = 8, .max_seq_len = 4};
    bs_engine *e = engine_new(m, &o, err);
    CHECK(e != NULL);
    float pool[2 * 128];
    bs_outputs out = {.pooler = pool};
    int32_t ids[6] = {1, 2, 3, 4, 5, 60};
    int32_t cu_long[2] = {0, 5};
    bs_batch b = {.n_seq = 1, .ids = ids, .cu_seqlens = cu_long};
    CHECK_INT(engine_forward(e, &b, &out, err), BS_ERR);
    CHECK_STR(err, "sequence 0 has 5 tokens (1..4 allowed)");
    int32_t cu_vocab[3] = {0, 3, 6};
    bs_batch b2 = {.n_seq = 2, .ids = ids, .cu_seqlens = cu_vocab};
    CHECK_INT(engine_forward(e, &b2, &out, err), BS_ERR);
    CHECK_STR(err, "token id 60 at position 5 is outside the vocabulary (50)");
    bs_batch b3 = {.n_seq = 3, .ids = ids, .cu_seqlens = cu_vocab};
    CHECK_INT(engine_forward(e, &b3, &out, err), BS_ERR);
    CHECK_STR(err, "batch of 3 sequences (engine limit 2)");
    o.precision = BS_PREC_BF16;
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "the CPU engine runs fp32 only (asked for bf16)");
    o.precision = BS_PREC_FP32;
    o.max_seq_len = 513;
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "engine: max_seq_len 513 exceeds the model's max_position_embeddings 512");
    engine_free(e);
    model_free(m);
}

/* Which outputs let the last layer run on the CLS rows, and the switch and the engine flag that turn it off. */
static void cls_only_last_layer_needs_neither_hidden_nor_mean(void) {
    float x[1];
    const bs_outputs pool = {.pooler = x}, cls = {.cls = x}, both = {.pooler = x, .cls = x}, none = {0};
    const bs_outputs mean = {.pooler = x, .mean = x}, hid = {.cls = x, .hidden = x};
    unsetenv("BERTSTREAM_LAST_LAYER");
    CHECK(engine_cls_only(NULL, &pool) && engine_cls_only(NULL, &cls) && engine_cls_only(NULL, &both) &&
          engine_cls_only(NULL, &none));
    CHECK(!engine_cls_only(NULL, &mean) && !engine_cls_only(NULL, &hid));
    setenv("BERTSTREAM_LAST_LAYER", "full", 1);
    CHECK(!engine_cls_only(NULL, &pool) && !engine_cls_only(NULL, &both));
    setenv("BERTSTREAM_LAST_LAYER", "cls", 1);
    CHECK(engine_cls_only(NULL, &pool));
    unsetenv("BERTSTREAM_LAST_LAYER");
    /* an engine whose start-up self-check turned it off (the CUDA engine's cls_selfcheck) */
    bs_engine off = {.cls_off = 1}, on = {.cls_off = 0};
    CHECK(!engine_cls_only(&off, &pool) && engine_cls_only(&on, &pool));
}

int main(void) {
    RUN(cls_only_last_layer_needs_neither_hidden_nor_mean);
    RUN(engine_rejects_bad_batches_with_one_line_errors);
    RUN(engine_cpu_matches_naive_reference_on_another_shape);
    RUN(engine_cpu_matches_hf_golden_tiny_bert);
    return bs_test_done();
}
