/* Static fp8 scales (see fp8_scales.h). */
#include "fp8_scales.h"

#include <math.h>

#define GELU_MIN_ABS 0.1701 /* |min GELU|: 0.169971 (erf form, x = -0.7518), 0.170041 (tanh form) */
/* Margins for rounding: a LayerNorm output is stored in bf16 (2^-8 relative): 1 %. V and the FFN-up
 * output are computed from E4M3 operands (input and weights, each up to 2^-4 relative), which can
 * raise the Cauchy-Schwarz product by (1 + 2^-4)^2 on top. */
#define MARGIN_LN 1.01
#define MARGIN_E4M3_PRODUCT (1.01 * 1.0625 * 1.0625)

static double max_abs(const float *v, int n) {
    double m = 0;
    for (int i = 0; i < n; i++) m = fabs((double)v[i]) > m ? fabs((double)v[i]) : m;
    return m;
}

double fp8_ln_max_bound(const float *g, const float *b, int C) {
    return sqrt((double)(C > 1 ? C - 1 : 1)) * max_abs(g, C) + max_abs(b, C);
}

double fp8_ln_l2_bound(const float *g, const float *b, int C) {
    double bb = 0;
    for (int i = 0; i < C; i++) bb += (double)b[i] * b[i];
    return sqrt((double)C) * max_abs(g, C) + sqrt(bb);
}

double fp8_linear_max_bound(const float *W, const float *bias, int out, int in, double x_l2) {
    double worst = 0;
    for (int j = 0; j < out; j++) {
        double ww = 0;
        for (int k = 0; k < in; k++) ww += (double)W[(size_t)j * in + k] * W[(size_t)j * in + k];
        const double h = x_l2 * sqrt(ww) + fabs((double)bias[j]);
        worst = h > worst ? h : worst;
    }
    return worst;
}

/* the input LayerNorm of layer l: the embeddings' for layer 0, else layer l - 1's output one */
static void layer_input_ln(const bs_model *m, int l, const float **g, const float **b) {
    *g = l == 0 ? m->emb_ln_w : m->layer[l - 1].ln2_w;
    *b = l == 0 ? m->emb_ln_b : m->layer[l - 1].ln2_b;
}

static double nonzero(double bound) {
    return bound == 0 ? 1.0 : bound; /* all-zero weights: any scale; NaN stays NaN */
}

void fp8_static_bounds(const bs_model *m, double *bounds) {
    const int C = m->cfg.hidden, I = m->cfg.intermediate;
    for (int l = 0; l < m->cfg.layers; l++) {
        const bs_layer_weights *w = &m->layer[l];
        const float *g, *b;
        layer_input_ln(m, l, &g, &b);
        const double x_l2 = fp8_ln_l2_bound(g, b, C), x2_l2 = fp8_ln_l2_bound(w->ln1_w, w->ln1_b, C);
        const double h = fp8_linear_max_bound(w->ff1_w, w->ff1_b, I, C, x2_l2);
        bounds[4 * l + 0] = fp8_ln_max_bound(g, b, C);
        bounds[4 * l + 1] = fp8_linear_max_bound(w->qkv_w + (size_t)2 * C * C, w->qkv_b + 2 * C, C, C, x_l2);
        bounds[4 * l + 2] = fp8_ln_max_bound(w->ln1_w, w->ln1_b, C);
        bounds[4 * l + 3] = h > GELU_MIN_ABS ? h : GELU_MIN_ABS;
        for (int k = 0; k < 4; k++)
            bounds[4 * l + k] = nonzero(bounds[4 * l + k] * (k == 1 || k == 3 ? MARGIN_E4M3_PRODUCT : MARGIN_LN));
    }
}

void fp8_static_qkv_bounds(const bs_model *m, double *bounds) {
    const int C = m->cfg.hidden;
    for (int l = 0; l < m->cfg.layers; l++) {
        const float *g, *b;
        layer_input_ln(m, l, &g, &b);
        const bs_layer_weights *w = &m->layer[l];
        bounds[l] =
            nonzero(MARGIN_E4M3_PRODUCT * fp8_linear_max_bound(w->qkv_w, w->qkv_b, 3 * C, C, fp8_ln_l2_bound(g, b, C)));
    }
}
