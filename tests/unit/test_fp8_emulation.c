/* The CUDA engine's fp8 path with static scales (its default, docs/gpu-engine.md), emulated on the
 * CPU operation by operation, against the CPU engine at fp32. What is emulated, as the GPU runs it:
 *   weights: E4M3 per tensor, scale = amax / 448 (quantize_fp8_forward); biases and tables in bf16
 *     where the engine uploads them so (embedding tables, QKV and FFN-up epilogue biases, pooler);
 *   every GEMM: sum of decoded E4M3 products in fp32, times scale_A scale_B, + epilogue bias (the
 *     AO and FFN-down biases too, in bf16), + the residual (C) for AO and FFN-down (the engine's
 *     default, residual=gemm);
 *   activations: bf16 storage (the LayerNorm outputs, the AO and FFN-down outputs, which hold bias
 *     and residual); the QKV output in E4M3 at its own static scale (fp8_static_qkv_bounds, the
 *     default BERTSTREAM_FP8_QKV=e4m3), or in bf16 (=bf16), each case run both ways;
 *   GEMM inputs: E4M3(x / s) with s = fp8_static_bounds / 448 (the LayerNorms' copies, the
 *     attention kernel's E4M3 output of its fp32 result, the FFN-up GEMM's E4M3 output of GELU
 *     (tanh form, cuBLASLt's epilogue) through the D scale 1 / s).
 * Not emulated: fast accumulation's reduced precision (~14 bits in the partial sums) and the
 * order of the sums; both are far below E4M3's 3 mantissa bits.
 * The bar is the GPU tests' fp8 bar: every token's hidden state, every mean-pooled and pooler
 * vector within cosine 0.99 of fp32. Models: the golden tiny-bert (hidden 128) over 100 IMDB
 * reviews, and a random model with BERT-base's layer shape (hidden 768, 12 heads, 3072) and
 * perturbed LayerNorm gains and biases, where the static bounds measured loosest. This checks the
 * design (bounds-derived scales keep enough precision), not the kernels: the GPU tests hold those
 * to the same bar. Measured (2026-11-26): min cosines 0.99945 (BERT-base layer shape) and 0.99997
 * (tiny-bert) with bias and residual added in the LayerNorm in fp32; 0.99939 and 0.99995 with both
 * in the GEMM (2026-11-27), which rounds their sum to bf16 first; 0.99935 once the attention-output
 * and FFN-up biases were perturbed too (bs_test_bump_gains_and_biases). With the QKV output in E4M3
 * (2026-11-27): 0.99940 (bf16 QKV 0.99935) on the BERT-base layer shape, 0.99995 on tiny-bert; and
 * with the Q and K weights x 4 (scores x 16: a random model attends almost uniformly, a trained
 * one more sharply) 0.99785 against bf16 QKV's 0.99848, the one case where E4M3 queries and keys
 * cost visibly, still well above the bar. The bar is wide: every scale
 * 300x looser or 10x tighter still passes, 3000x looser (values sink into E4M3's subnormals) or
 * 100x tighter (saturation) fails, so this guards against a bound gone wrong by orders of
 * magnitude, and shows the design's margin. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../kernels/dtype.h"
#include "../kernels/twins.h"
#include "common.h"
#include "engine.h"
#include "fp8_scales.h"
#include "model.h"
#include "fixtures.h"
#include "test.h"

typedef struct {
    float *w[4]; /* decoded E4M3 codes (not scaled) of QKV, AO, FF1, FF2 */
    float sw[4]; /* their per-tensor scales */
    float sx[4]; /* the static input scales: bound / 448 */
    float sq;    /* the QKV output's static scale (fp8_static_qkv_bounds / 448) */
} emu_layer;

typedef struct {
    const bs_model *m;
    emu_layer *layer;
    int qkv_e4m3; /* the QKV GEMM writes E4M3 at sq (the default, BERTSTREAM_FP8_QKV=e4m3), else bf16 */
} emu;

static float e4m3_code_value(float x, float scale) { /* the decoded code E4M3(x / scale), unscaled */
    return bs_round_e4m3(x / scale);
}

static void emu_quantize_weights(float *dst, float *scale, const float *w, size_t n) {
    float amax = 0;
    for (size_t i = 0; i < n; i++) amax = fabsf(w[i]) > amax ? fabsf(w[i]) : amax;
    *scale = amax > 0 ? amax / BS_E4M3_MAX : 1.0f;
    for (size_t i = 0; i < n; i++) dst[i] = e4m3_code_value(w[i], *scale);
}

static emu emu_new(const bs_model *m, int qkv_e4m3) {
    const bs_bert_config *c = &m->cfg;
    const size_t C = (size_t)c->hidden, FF = (size_t)c->intermediate;
    emu E = {m, calloc((size_t)c->layers, sizeof(emu_layer)), qkv_e4m3};
    double *bounds = malloc(sizeof(double) * 5 * (size_t)c->layers), *qb = bounds + 4 * c->layers;
    fp8_static_bounds(m, bounds);
    fp8_static_qkv_bounds(m, qb);
    for (int l = 0; l < c->layers; l++) {
        const bs_layer_weights *w = &m->layer[l];
        emu_layer *el = &E.layer[l];
        const float *src[4] = {w->qkv_w, w->ao_w, w->ff1_w, w->ff2_w};
        const size_t n[4] = {3 * C * C, C * C, FF * C, C * FF};
        for (int k = 0; k < 4; k++) {
            el->w[k] = malloc(sizeof(float) * n[k]);
            emu_quantize_weights(el->w[k], &el->sw[k], src[k], n[k]);
            el->sx[k] = (float)(bounds[4 * l + k] / BS_E4M3_MAX);
        }
        el->sq = (float)(qb[l] / BS_E4M3_MAX);
    }
    free(bounds);
    return E;
}

static void emu_free(emu *E) {
    for (int l = 0; l < E->m->cfg.layers; l++)
        for (int k = 0; k < 4; k++) free(E->layer[l].w[k]);
    free(E->layer);
}

/* y (n, out) = (codes x (n, in)) W^T (out, in) * sa * sb [+ bias rounded to bf16] */
static void emu_gemm(float *y, const float *xq, const float *wq, float sa, float sb, const float *bias, int n, int out,
                     int in) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, xq, in, wq, in, 0.0f, y, out);
    for (int t = 0; t < n; t++)
        for (int j = 0; j < out; j++)
            y[(size_t)t * out + j] = y[(size_t)t * out + j] * sa * sb + (bias ? bs_round_bf16(bias[j]) : 0.0f);
}

static void emu_bf16(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = bs_round_bf16(x[i]);
}

/* out = the bf16 output of LN(bf16(y) + bias + res): a GEMM's bf16 output into the residual
 * LayerNorm (y is rounded in place; bias and res NULL: the GEMM added them) */
static void emu_residual_layernorm(float *out, float *y, const float *bias, const float *res, const float *g,
                                   const float *b, int T, int C, float eps, float *row) {
    emu_bf16(y, (size_t)T * C);
    residual_layernorm_ref(out, y, bias, res, g, b, T, C, eps, row);
    emu_bf16(out, (size_t)T * C);
}

/* y += res: the residual as the GEMM's C (beta 1), before the bf16 store */
static void emu_add(float *y, const float *res, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += res[i];
}

/* dst <- the E4M3 codes of src / s (dst may be src) */
static void emu_codes(float *dst, const float *src, size_t n, float s) {
    for (size_t i = 0; i < n; i++) dst[i] = e4m3_code_value(src[i], s);
}

/* The forward of B packed sequences: hidden (T, C), mean (B, C), pooler (B, C), in fp32. */
static void emu_forward(const emu *E, const int32_t *ids, const int32_t *cu, int B, float *hidden, float *mean,
                        float *pooler) {
    const bs_model *m = E->m;
    const bs_bert_config *c = &m->cfg;
    const int C = c->hidden, FF = c->intermediate, NH = c->heads, HS = C / NH, T = cu[B];
    float *x = malloc(sizeof(float) * (size_t)T * C), *x2 = malloc(sizeof(float) * (size_t)T * C);
    float *q8 = malloc(sizeof(float) * (size_t)T * (FF > C ? FF : C)), *row = malloc(sizeof(float) * (size_t)C);
    float *qkv = malloc(sizeof(float) * (size_t)T * 3 * C), *att = malloc(sizeof(float) * (size_t)T * C);
    float *ff = malloc(sizeof(float) * (size_t)T * FF), *tmp = malloc(sizeof(float) * (size_t)T * C);
    double *p = malloc(sizeof(double) * (size_t)T);
    for (int s = 0; s < B; s++)
        for (int t = cu[s]; t < cu[s + 1]; t++) {
            for (int k = 0; k < C; k++)
                row[k] = bs_round_bf16(m->word_emb[(size_t)ids[t] * C + k]) +
                         bs_round_bf16(m->pos_emb[(size_t)(t - cu[s]) * C + k]) + bs_round_bf16(m->type_emb[k]);
            layernorm_row_ref(x + (size_t)t * C, row, m->emb_ln_w, m->emb_ln_b, C, c->ln_eps);
        }
    emu_bf16(x, (size_t)T * C);
    for (int l = 0; l < c->layers; l++) {
        const bs_layer_weights *w = &m->layer[l];
        const emu_layer *el = &E->layer[l];
        emu_codes(q8, x, (size_t)T * C, el->sx[0]);
        emu_gemm(qkv, q8, el->w[0], el->sw[0], el->sx[0], w->qkv_b, T, 3 * C, C);
        if (E->qkv_e4m3) /* E4M3 through the D scale 1 / sq; attention works on code * sq */
            for (size_t i = 0; i < (size_t)T * 3 * C; i++) qkv[i] = e4m3_code_value(qkv[i], el->sq) * el->sq;
        else
            emu_bf16(qkv, (size_t)T * 3 * C);
        attention_ref(att, qkv, cu, B, NH, HS, p);     /* in double on the stored QKV */
        emu_codes(att, att, (size_t)T * C, el->sx[1]); /* the mma kernel's E4M3 output */
        emu_gemm(tmp, att, el->w[1], el->sw[1], el->sx[1], w->ao_b, T, C, C);
        emu_add(tmp, x, (size_t)T * C);
        emu_residual_layernorm(x2, tmp, NULL, NULL, w->ln1_w, w->ln1_b, T, C, c->ln_eps, row);
        emu_codes(q8, x2, (size_t)T * C, el->sx[2]);
        emu_gemm(ff, q8, el->w[2], el->sw[2], el->sx[2], w->ff1_b, T, FF, C);
        for (size_t i = 0; i < (size_t)T * FF; i++) { /* GELU (tanh), then E4M3 through the D scale */
            ff[i] = bs_round_e4m3((float)gelu_tanh_ref(ff[i]) * (1.0f / el->sx[3]));
        }
        emu_gemm(tmp, ff, el->w[3], el->sw[3], el->sx[3], w->ff2_b, T, C, FF);
        emu_add(tmp, x2, (size_t)T * C);
        emu_residual_layernorm(x, tmp, NULL, NULL, w->ln2_w, w->ln2_b, T, C, c->ln_eps, row);
    }
    memcpy(hidden, x, sizeof(float) * (size_t)T * C);
    for (int s = 0; s < B; s++) {
        const int n = cu[s + 1] - cu[s];
        for (int k = 0; k < C; k++) {
            double acc = 0;
            for (int t = cu[s]; t < cu[s + 1]; t++) acc += x[(size_t)t * C + k];
            mean[(size_t)s * C + k] = (float)(acc / n);
        }
        for (int j = 0; j < C; j++) {
            double acc = m->pool_b[j];
            for (int k = 0; k < C; k++)
                acc += (double)bs_round_bf16(m->pool_w[(size_t)j * C + k]) * x[(size_t)cu[s] * C + k];
            pooler[(size_t)s * C + j] = (float)tanh(acc);
        }
    }
    free(x), free(x2), free(q8), free(row), free(qkv), free(att), free(ff), free(tmp), free(p);
}

/* min cosines (hidden per token, mean, pooler) of the emulation against the fp32 CPU engine */
static void compare(const bs_model *m, const emu *E, const int32_t *ids, const int32_t *cu, int B, double out[3]) {
    char err[BS_ERRLEN];
    const int C = m->cfg.hidden, T = cu[B];
    bs_engine_opts o = {.device = "cpu", .precision = BS_PREC_FP32, .max_seqs = B, .max_tokens = T, .max_seq_len = 512};
    bs_engine *e = engine_new(m, &o, err);
    CHECK(e != NULL);
    float *h[2], *mn[2], *pl[2];
    for (int k = 0; k < 2; k++) {
        h[k] = malloc(sizeof(float) * (size_t)T * C);
        mn[k] = malloc(sizeof(float) * (size_t)B * C);
        pl[k] = malloc(sizeof(float) * (size_t)B * C);
    }
    bs_batch b = {.n_seq = B, .ids = ids, .cu_seqlens = cu};
    bs_outputs want = {.hidden = h[0], .mean = mn[0], .pooler = pl[0]};
    CHECK_INT(e ? engine_forward(e, &b, &want, err) : BS_ERR, BS_OK);
    emu_forward(E, ids, cu, B, h[1], mn[1], pl[1]);
    out[0] = out[1] = out[2] = 1;
    for (int t = 0; t < T; t++) out[0] = fmin(out[0], bs_test_cosine(h[0] + (size_t)t * C, h[1] + (size_t)t * C, C));
    for (int s = 0; s < B; s++) {
        out[1] = fmin(out[1], bs_test_cosine(mn[0] + (size_t)s * C, mn[1] + (size_t)s * C, C));
        out[2] = fmin(out[2], bs_test_cosine(pl[0] + (size_t)s * C, pl[1] + (size_t)s * C, C));
    }
    for (int k = 0; k < 2; k++) free(h[k]), free(mn[k]), free(pl[k]);
    engine_free(e);
}

static void fp8_static_emulation_tracks_fp32_on_golden_tiny_bert_imdb(void) {
    char err[BS_ERRLEN];
    bs_model *m = model_load(bs_test_data("golden/tiny-bert"), err);
    CHECK(m != NULL);
    if (!m) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    review_set rs = bs_test_imdb_reviews(100, 100); /* one batch */
    CHECK_INT(rs.n, 1);
    CHECK_INT(rs.n ? rs.batches[0].B : 0, 100);
    if (rs.n == 1) {
        const packed_batch *pb = &rs.batches[0];
        for (int q = 1; q >= 0; q--) {
            emu E = emu_new(m, q);
            double cs[3];
            compare(m, &E, pb->ids, pb->cu, pb->B, cs);
            fprintf(stderr,
                    "  tiny-bert, %d IMDB reviews (%d tokens), %s QKV: min cosine hidden %.6f mean %.6f pooler %.6f\n",
                    pb->B, pb->T, q ? "E4M3" : "bf16", cs[0], cs[1], cs[2]);
            for (int k = 0; k < 3; k++) CHECK(cs[k] >= 0.99);
            emu_free(&E);
        }
    }
    review_set_free(&rs);
    model_free(m);
}

/* peak: the Q and K rows of every QKV weight (and bias) times `peak`, so the scores grow by peak^2:
 * a random model attends almost uniformly, a trained one more sharply, where E4M3 queries and keys
 * move the softmax more. */
static void bert_base_layer_shape(double peak) {
    char err[BS_ERRLEN];
    bs_bert_config cfg = {.vocab_size = 2000,
                          .hidden = 768,
                          .layers = 2,
                          .heads = 12,
                          .intermediate = 3072,
                          .max_positions = 512,
                          .type_vocab_size = 2,
                          .ln_eps = 1e-12f};
    bs_model *m = model_init_random(&cfg, 5, err);
    CHECK(m != NULL);
    if (!m) return;
    bs_rng r = {6};
    bs_test_bump_gains_and_biases(m, &r);
    const int C = cfg.hidden;
    for (int l = 0; l < cfg.layers; l++) {
        bs_layer_weights *w = &m->layer[l];
        for (size_t i = 0; i < (size_t)2 * C * C; i++) w->qkv_w[i] *= (float)peak;
        for (int i = 0; i < 2 * C; i++) w->qkv_b[i] *= (float)peak;
    }
    enum { B = 4 };
    const int lens[B] = {128, 1, 37, 64};
    int32_t cu[B + 1] = {0};
    for (int s = 0; s < B; s++) cu[s + 1] = cu[s] + lens[s];
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)cu[B]);
    for (int t = 0; t < cu[B]; t++) ids[t] = (int32_t)(bs_rng_next(&r) % (uint64_t)cfg.vocab_size);
    for (int q = 1; q >= 0; q--) {
        emu E = emu_new(m, q);
        double cs[3];
        compare(m, &E, ids, cu, B, cs);
        fprintf(stderr,
                "  hidden 768 / 12 heads / 3072, Q and K x %g, %d tokens, %s QKV: min cosine hidden %.6f mean %.6f "
                "pooler %.6f\n",
                peak, cu[B], q ? "E4M3" : "bf16", cs[0], cs[1], cs[2]);
        for (int k = 0; k < 3; k++) CHECK(cs[k] >= 0.99);
        emu_free(&E);
    }
    free(ids);
    model_free(m);
}

static void fp8_static_emulation_tracks_fp32_on_a_bert_base_layer_shape(void) {
    bert_base_layer_shape(1);
}

static void fp8_static_emulation_tracks_fp32_with_peaked_attention(void) {
    bert_base_layer_shape(4);
}

int main(void) {
    RUN(fp8_static_emulation_tracks_fp32_on_a_bert_base_layer_shape);
    RUN(fp8_static_emulation_tracks_fp32_with_peaked_attention);
    RUN(fp8_static_emulation_tracks_fp32_on_golden_tiny_bert_imdb);
    return bs_test_done();
}
