/* CPU twins of device computations that need no CUDA headers, so CPU-only code (unit tests, the
 * engine's start-up checks) can use them: the kernels' headers include this one. fp32 in and out,
 * double inside. */
#ifndef BS_KERNELS_TWINS_H
#define BS_KERNELS_TWINS_H

#include <math.h>
#include <stdint.h>

/* GELU in its tanh form, as cuBLASLt's GELU epilogues compute it (BERT's own is the erf form:
 * gelu_erf_ref in gelu.h) */
static inline double gelu_tanh_ref(double x) {
    return 0.5 * x * (1 + tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)));
}

/* y (C) = LN(x) * g + b, statistics in double */
static inline void layernorm_row_ref(float *y, const float *x, const float *g, const float *b, int C, float eps) {
    double mean = 0, var = 0;
    for (int c = 0; c < C; c++) mean += x[c];
    mean /= C;
    for (int c = 0; c < C; c++) var += (x[c] - mean) * (x[c] - mean);
    var /= C;
    double inv = 1.0 / sqrt(var + eps);
    for (int c = 0; c < C; c++) y[c] = (float)((x[c] - mean) * inv * g[c] + b[c]);
}

/* out (T, C) = LN(a + bias + res) * g + b row by row; bias and res may be NULL; row (C) scratch */
static inline void residual_layernorm_ref(float *out, const float *a, const float *bias, const float *res,
                                          const float *g, const float *b, int T, int C, float eps, float *row) {
    for (int t = 0; t < T; t++) {
        for (int c = 0; c < C; c++)
            row[c] = a[(size_t)t * C + c] + (bias ? bias[c] : 0.0f) + (res ? res[(size_t)t * C + c] : 0.0f);
        layernorm_row_ref(out + (size_t)t * C, row, g, b, C, eps);
    }
}

/* Query row t0 + i of the sequence of n rows starting at t0, head h: softmax(q K^T / sqrt(HS)) V
 * into dst (HS), the textbook form (scores, softmax in double, weighted sum). */
static inline void attention_row_ref(float *dst, const float *qkv, int t0, int n, int i, int h, int NH, int HS,
                                     double *p /* (n) scratch */) {
    const int C = NH * HS;
    const double scale = 1.0 / sqrt((double)HS);
    const float *q = qkv + (size_t)(t0 + i) * 3 * C + h * HS;
    double mx = -INFINITY, sum = 0;
    for (int j = 0; j < n; j++) {
        const float *k = qkv + (size_t)(t0 + j) * 3 * C + C + h * HS;
        double d = 0;
        for (int c = 0; c < HS; c++) d += (double)q[c] * k[c];
        p[j] = d * scale;
        mx = p[j] > mx ? p[j] : mx;
    }
    for (int j = 0; j < n; j++) sum += (p[j] = exp(p[j] - mx));
    for (int c = 0; c < HS; c++) {
        double acc = 0;
        for (int j = 0; j < n; j++) acc += p[j] * qkv[(size_t)(t0 + j) * 3 * C + 2 * C + h * HS + c];
        dst[c] = (float)(acc / sum);
    }
}

/* out (T, C) = softmax(Q K^T / sqrt(HS)) V per sequence and head over the packed qkv (T, 3C): the
 * attention kernels' twin. */
static inline void attention_ref(float *out, const float *qkv, const int32_t *cu, int B, int NH, int HS,
                                 double *p /* (max_len) scratch */) {
    const int C = NH * HS;
    for (int s = 0; s < B; s++)
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < cu[s + 1] - cu[s]; i++)
                attention_row_ref(out + (size_t)(cu[s] + i) * C + h * HS, qkv, cu[s], cu[s + 1] - cu[s], i, h, NH, HS,
                                  p);
}

/* out (B, C): row s = sequence s's CLS row (its first) of attention_ref, zeros for an empty
 * sequence: the CLS-query kernel's twin. */
static inline void attention_cls_ref(float *out, const float *qkv, const int32_t *cu, int B, int NH, int HS,
                                     double *p /* (max_len) scratch */) {
    const int C = NH * HS;
    for (int s = 0; s < B; s++)
        for (int h = 0; h < NH; h++) {
            float *dst = out + (size_t)s * C + h * HS;
            if (cu[s + 1] > cu[s])
                attention_row_ref(dst, qkv, cu[s], cu[s + 1] - cu[s], 0, h, NH, HS, p);
            else
                for (int c = 0; c < HS; c++) dst[c] = 0.0f;
        }
}

#endif
