/* Static fp8 scales (worker/fp8_scales.c): each bound holds for every input the arithmetic allows,
 * including the worst cases that reach it (a one-hot LayerNorm input reaches sqrt(C - 1); an input
 * along a weight row reaches its Cauchy-Schwarz bound), and fp8_static_bounds wires the right
 * weights to each GEMM of each layer. */
#include <math.h>
#include <stdlib.h>

#include "common.h"
#include "fp8_scales.h"
#include "test.h"

enum { C = 64, I = 96 };

static void layernorm(double *y, const double *x, const float *g, const float *b, int n, double eps) {
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++) mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
    var /= n;
    for (int i = 0; i < n; i++) y[i] = (x[i] - mean) / sqrt(var + eps) * g[i] + b[i];
}

static double max_abs_d(const double *v, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fabs(v[i]) > m ? fabs(v[i]) : m;
    return m;
}

static double l2(const double *v, int n) {
    double s = 0;
    for (int i = 0; i < n; i++) s += v[i] * v[i];
    return sqrt(s);
}

static void fp8_layernorm_bounds_hold_and_are_reached(void) {
    bs_rng r = {7};
    float g[C], b[C];
    for (int i = 0; i < C; i++) g[i] = (float)(bs_rng_uniform(&r) * 4 - 2), b[i] = (float)(bs_rng_uniform(&r) - 0.5);
    const double bmax = fp8_ln_max_bound(g, b, C), bl2 = fp8_ln_l2_bound(g, b, C);
    double x[C], y[C], worst = 0, worst_l2 = 0;
    for (int t = 0; t < 2000; t++) {
        for (int i = 0; i < C; i++) x[i] = bs_rng_normal(&r) * (t % 7 + 1);
        if (t % 5 == 0) /* spikes: one value far from the rest */
            for (int i = 0; i < C; i++) x[i] = i == t % C ? 1000.0 : 0.0;
        layernorm(y, x, g, b, C, 1e-12);
        worst = fmax(worst, max_abs_d(y, C));
        worst_l2 = fmax(worst_l2, l2(y, C));
    }
    CHECK(worst <= bmax);
    CHECK(worst_l2 <= bl2);
    /* g = 1, b = 0: a one-hot input reaches sqrt(C - 1) exactly (up to eps) */
    float one[C], zero[C];
    for (int i = 0; i < C; i++) one[i] = 1.0f, zero[i] = 0.0f;
    for (int i = 0; i < C; i++) x[i] = i == 3 ? 5.0 : 0.0;
    layernorm(y, x, one, zero, C, 1e-12);
    CHECK_NEAR(max_abs_d(y, C), sqrt(C - 1.0), 1e-9);
    CHECK_NEAR(fp8_ln_max_bound(one, zero, C), sqrt(C - 1.0), 1e-12);
    CHECK_NEAR(l2(y, C), sqrt((double)C), 1e-9);
    CHECK_NEAR(fp8_ln_l2_bound(one, zero, C), sqrt((double)C), 1e-12);
}

static void fp8_linear_bound_holds_and_is_reached_along_a_row(void) {
    bs_rng r = {11};
    float *W = malloc(sizeof(float) * I * C), bias[I];
    for (int i = 0; i < I * C; i++) W[i] = (float)(bs_rng_normal(&r) * 0.05);
    for (int j = 0; j < I; j++) bias[j] = (float)(bs_rng_uniform(&r) - 0.5);
    const double xl2 = 8.0, bound = fp8_linear_max_bound(W, bias, I, C, xl2);
    double x[C], worst = 0;
    for (int t = 0; t < 500; t++) {
        for (int i = 0; i < C; i++) x[i] = bs_rng_normal(&r);
        const double s = xl2 / l2(x, C) * bs_rng_uniform(&r); /* ||x||_2 <= xl2 */
        for (int j = 0; j < I; j++) {
            double h = bias[j];
            for (int i = 0; i < C; i++) h += W[(size_t)j * C + i] * x[i] * s;
            worst = fmax(worst, fabs(h));
        }
    }
    CHECK(worst <= bound);
    /* x along the row with the largest bound, the sign of its bias: the bound itself */
    int jb = 0;
    double best = -1;
    for (int j = 0; j < I; j++) {
        double ww = 0;
        for (int i = 0; i < C; i++) ww += (double)W[(size_t)j * C + i] * W[(size_t)j * C + i];
        const double v = xl2 * sqrt(ww) + fabs(bias[j]);
        if (v > best) best = v, jb = j;
    }
    double ww = 0, h = bias[jb];
    for (int i = 0; i < C; i++) ww += (double)W[(size_t)jb * C + i] * W[(size_t)jb * C + i];
    for (int i = 0; i < C; i++)
        h += W[(size_t)jb * C + i] * (xl2 * W[(size_t)jb * C + i] / sqrt(ww)) * (bias[jb] < 0 ? -1 : 1);
    CHECK_NEAR(fabs(h), bound, 1e-6 * bound);
    free(W);
}

/* On a random model: each layer's four bounds (and its QKV output bound) come from the right weights (recomputed here
 * from the formulas), carry the 1 % margin, and hold for that layer's actual first-layer activations. */
static void fp8_static_bounds_wire_each_gemm_input(void) {
    char err[BS_ERRLEN];
    bs_bert_config cfg = {.vocab_size = 50,
                          .hidden = C,
                          .layers = 2,
                          .heads = 2,
                          .intermediate = I,
                          .max_positions = 16,
                          .type_vocab_size = 2,
                          .ln_eps = 1e-12f};
    bs_model *m = model_init_random(&cfg, 5, err);
    CHECK(m != NULL);
    if (!m) return;
    bs_rng r = {3}; /* LayerNorm parameters away from 1 / 0, so a wrong wiring shows */
    for (int i = 0; i < C; i++) {
        m->emb_ln_w[i] = (float)(0.5 + bs_rng_uniform(&r)), m->emb_ln_b[i] = (float)(bs_rng_uniform(&r) - 0.5);
        m->layer[0].ln1_w[i] = (float)(2 + bs_rng_uniform(&r)), m->layer[0].ln1_b[i] = 0.25f;
        m->layer[0].ln2_w[i] = (float)(3 + bs_rng_uniform(&r)), m->layer[0].ln2_b[i] = -1.0f;
    }
    double bd[8];
    fp8_static_bounds(m, bd);
    const double mp = 1.01 * 1.0625 * 1.0625; /* products of E4M3 operands */
    for (int l = 0; l < 2; l++) { /* each layer's input LayerNorm: the embeddings', then layer 0's output one */
        const bs_layer_weights *w = &m->layer[l];
        const float *g = l == 0 ? m->emb_ln_w : m->layer[0].ln2_w, *b = l == 0 ? m->emb_ln_b : m->layer[0].ln2_b;
        const double h = fp8_linear_max_bound(w->ff1_w, w->ff1_b, I, C, fp8_ln_l2_bound(w->ln1_w, w->ln1_b, C));
        CHECK_NEAR(bd[4 * l + 0], 1.01 * fp8_ln_max_bound(g, b, C), 1e-9);
        CHECK_NEAR(bd[4 * l + 1],
                   mp * fp8_linear_max_bound(w->qkv_w + 2 * C * C, w->qkv_b + 2 * C, C, C, fp8_ln_l2_bound(g, b, C)),
                   1e-9);
        CHECK_NEAR(bd[4 * l + 2], 1.01 * fp8_ln_max_bound(w->ln1_w, w->ln1_b, C), 1e-9);
        CHECK_NEAR(bd[4 * l + 3], mp * (h > 0.1701 ? h : 0.1701), 1e-9);
    }
    CHECK(bd[4] > bd[2] && bd[2] > bd[0]); /* gammas 3..4, 2..3, 0.5..1.5 */
    double bq[2]; /* the QKV outputs, all three parts: every row of the QKV weight, same input bound */
    fp8_static_qkv_bounds(m, bq);
    for (int l = 0; l < 2; l++) {
        const bs_layer_weights *w = &m->layer[l];
        const float *g = l == 0 ? m->emb_ln_w : m->layer[0].ln2_w, *b = l == 0 ? m->emb_ln_b : m->layer[0].ln2_b;
        CHECK_NEAR(bq[l], mp * fp8_linear_max_bound(w->qkv_w, w->qkv_b, 3 * C, C, fp8_ln_l2_bound(g, b, C)), 1e-9);
        CHECK(bq[l] >= bd[4 * l + 1]);
    }
    /* layer 0: embeddings of random tokens -> LayerNorm -> V rows stay inside bd[0] and bd[1] */
    double x[C], y[C], worst_y = 0, worst_v = 0, worst_qkv = 0;
    for (int t = 0; t < 200; t++) {
        const int id = (int)(bs_rng_next(&r) % 50u), pos = t % 16;
        for (int i = 0; i < C; i++)
            x[i] = (double)m->word_emb[(size_t)id * C + i] + m->pos_emb[(size_t)pos * C + i] + m->type_emb[i];
        layernorm(y, x, m->emb_ln_w, m->emb_ln_b, C, 1e-12);
        worst_y = fmax(worst_y, max_abs_d(y, C));
        for (int j = 0; j < 3 * C; j++) {
            double v = m->layer[0].qkv_b[j];
            for (int i = 0; i < C; i++) v += m->layer[0].qkv_w[(size_t)j * C + i] * y[i];
            if (j >= 2 * C) worst_v = fmax(worst_v, fabs(v));
            worst_qkv = fmax(worst_qkv, fabs(v));
        }
    }
    CHECK(worst_y <= bd[0]);
    CHECK(worst_v <= bd[1]);
    CHECK(worst_qkv <= bq[0]);
    fprintf(stderr, "  layer 0: max |LN out| %.3g of bound %.3g; max |V| %.3g of bound %.3g; max |QKV| %.3g of %.3g\n",
            worst_y, bd[0], worst_v, bd[1], worst_qkv, bq[0]);
    model_free(m);
}

int main(void) {
    RUN(fp8_layernorm_bounds_hold_and_are_reached);
    RUN(fp8_linear_bound_holds_and_is_reached_along_a_row);
    RUN(fp8_static_bounds_wire_each_gemm_input);
    return bs_test_done();
}
