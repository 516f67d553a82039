/* The classification head (the notebook's ClassificationHead): Linear(C, Hd) -> ReLU -> Linear(Hd, 1),
 * sigmoid. A bs_head and its four arrays are one allocation, so head_free is one free()
 * and a clone is one memcpy. */
#include "head.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "safetensors.h"

/* Bounds that keep (Hd * C + 2 Hd + 1) floats far from overflow. */
#define HEAD_MAX_DIM (1 << 20)

static size_t head_floats(int in_dim, int hidden) {
    return (size_t)hidden * (size_t)in_dim + 2 * (size_t)hidden + 1;
}

bs_head *head_new(int in_dim, int hidden) {
    if (in_dim <= 0 || hidden <= 0 || in_dim > HEAD_MAX_DIM || hidden > HEAD_MAX_DIM) return NULL;
    if ((size_t)hidden * (size_t)in_dim > (SIZE_MAX / sizeof(float)) / 2) return NULL;
    bs_head *h = calloc(1, sizeof *h + head_floats(in_dim, hidden) * sizeof(float));
    if (!h) return NULL;
    h->in_dim = in_dim;
    h->hidden = hidden;
    h->fc1_w = (float *)(h + 1);
    h->fc1_b = h->fc1_w + (size_t)hidden * in_dim;
    h->fc2_w = h->fc1_b + hidden;
    h->fc2_b = h->fc2_w + hidden;
    return h;
}

void head_free(bs_head *h) {
    free(h);
}

bs_head *head_clone(const bs_head *h) {
    if (!h) return NULL;
    bs_head *c = head_new(h->in_dim, h->hidden);
    if (!c) return NULL;
    /* copy array by array: the source may have been assembled by hand rather than by head_new */
    memcpy(c->fc1_w, h->fc1_w, (size_t)h->hidden * h->in_dim * sizeof(float));
    memcpy(c->fc1_b, h->fc1_b, (size_t)h->hidden * sizeof(float));
    memcpy(c->fc2_w, h->fc2_w, (size_t)h->hidden * sizeof(float));
    c->fc2_b[0] = h->fc2_b[0];
    c->version = h->version;
    return c;
}

bs_head *head_load(const char *path, const char *prefix, char *err) {
    const char *pf = prefix ? prefix : "";
    char n1w[256], n1b[256], n2w[256], n2b[256];
    snprintf(n1w, sizeof n1w, "%sfc1.weight", pf);
    snprintf(n1b, sizeof n1b, "%sfc1.bias", pf);
    snprintf(n2w, sizeof n2w, "%sfc2.weight", pf);
    snprintf(n2b, sizeof n2b, "%sfc2.bias", pf);

    st_file *f = st_open(path, err);
    if (!f) return NULL;
    bs_head *h = NULL;
    const st_tensor *t1w = st_find(f, n1w);
    if (!t1w) {
        bs_err(err, "%s: tensor '%s' is missing", path, n1w);
        goto out;
    }
    if (t1w->ndim != 2 || t1w->shape[0] < 1 || t1w->shape[1] < 1 || t1w->shape[0] > HEAD_MAX_DIM ||
        t1w->shape[1] > HEAD_MAX_DIM) {
        bs_err(err, "%s: tensor '%s': expected shape [hidden, in_dim] with both in [1, %d]", path, n1w, HEAD_MAX_DIM);
        goto out;
    }
    int64_t hd = t1w->shape[0], c = t1w->shape[1];
    int64_t s1w[2] = {hd, c}, s1b[1] = {hd}, s2w[2] = {1, hd}, s2b[1] = {1};
    const st_tensor *t1b, *t2w, *t2b;
    if (!st_expect(f, n1w, 2, s1w, err) || !(t1b = st_expect(f, n1b, 1, s1b, err)) ||
        !(t2w = st_expect(f, n2w, 2, s2w, err)) || !(t2b = st_expect(f, n2b, 1, s2b, err)))
        goto out;
    h = head_new((int)c, (int)hd);
    if (!h) {
        bs_err(err, "%s: out of memory for a [%lld, %lld] head", path, (long long)hd, (long long)c);
        goto out;
    }
    if (st_to_f32(t1w, h->fc1_w, err) != BS_OK || st_to_f32(t1b, h->fc1_b, err) != BS_OK ||
        st_to_f32(t2w, h->fc2_w, err) != BS_OK || st_to_f32(t2b, h->fc2_b, err) != BS_OK) {
        head_free(h);
        h = NULL;
    }
out:
    st_close(f);
    return h;
}

static int check_finite(const float *x, size_t n, int cols, const char *name, char *err) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) {
            if (cols > 1)
                return bs_err(err, "head: %s[%zu, %zu] is not finite (%g)", name, i / (size_t)cols, i % (size_t)cols,
                              (double)x[i]);
            return bs_err(err, "head: %s[%zu] is not finite (%g)", name, i, (double)x[i]);
        }
    return BS_OK;
}

int head_validate(const bs_head *h, int expect_in_dim, char *err) {
    if (!h) return bs_err(err, "head: none loaded");
    if (h->in_dim <= 0 || h->hidden <= 0 || !h->fc1_w || !h->fc1_b || !h->fc2_w || !h->fc2_b)
        return bs_err(err, "head: empty or incomplete (in_dim %d, hidden %d)", h->in_dim, h->hidden);
    if (expect_in_dim > 0 && h->in_dim != expect_in_dim)
        return bs_err(err, "head: fc1.weight takes %d inputs, the encoder gives %d", h->in_dim, expect_in_dim);
    size_t hd = (size_t)h->hidden;
    if (check_finite(h->fc1_w, hd * (size_t)h->in_dim, h->in_dim, "fc1.weight", err) != BS_OK ||
        check_finite(h->fc1_b, hd, 1, "fc1.bias", err) != BS_OK ||
        check_finite(h->fc2_w, hd, 1, "fc2.weight", err) != BS_OK ||
        check_finite(h->fc2_b, 1, 1, "fc2.bias", err) != BS_OK)
        return BS_ERR;
    return BS_OK;
}

int head_save(const bs_head *h, const char *path, char *err) {
    st_out_tensor t[4] = {
        {.name = "fc1.weight", .dtype = ST_F32, .ndim = 2, .shape = {h->hidden, h->in_dim}, .data = h->fc1_w},
        {.name = "fc1.bias", .dtype = ST_F32, .ndim = 1, .shape = {h->hidden}, .data = h->fc1_b},
        {.name = "fc2.weight", .dtype = ST_F32, .ndim = 2, .shape = {1, h->hidden}, .data = h->fc2_w},
        {.name = "fc2.bias", .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = h->fc2_b},
    };
    static const char *const meta[] = {"format", "pt", NULL};
    return st_write(path, t, 4, meta, err);
}

/* The pre-activations of fc1 row w for HEAD_ROWS feature rows at once: each weight is loaded once
 * for all the rows, and each dot product is split over HEAD_LANES partial sums in double, which
 * the compiler keeps in vector registers (no FMA contraction under -std=c11, so every clone gives
 * the same bits). Scalar, one sum per dot product, this took 37 us per review at BERT-base's
 * 768 x 64 on the engine thread: more than a GPU batch's share. */
#define HEAD_ROWS 4
#define HEAD_LANES 8

BS_VECTOR_CLONES static void head_fc1_rows(const float *w, const float *const x[HEAD_ROWS], int C,
                                           double out[HEAD_ROWS]) {
    double acc[HEAD_ROWS][HEAD_LANES] = {{0}};
    int k = 0;
    for (; k + HEAD_LANES <= C; k += HEAD_LANES)
        for (int r = 0; r < HEAD_ROWS; r++)
            for (int l = 0; l < HEAD_LANES; l++) acc[r][l] += (double)w[k + l] * (double)x[r][k + l];
    for (int r = 0; r < HEAD_ROWS; r++) {
        double s = 0;
        for (int l = 0; l < HEAD_LANES; l++) s += acc[r][l];
        for (int t = k; t < C; t++) s += (double)w[t] * (double)x[r][t];
        out[r] = s;
    }
}

/* feat (B, C) -> logit (B), prob (B). No scratch: each hidden unit is consumed as soon as it is computed. */
void head_apply(const bs_head *h, const float *feat, int B, float *logit, float *prob) {
    const int C = h->in_dim, Hd = h->hidden;
    for (int b0 = 0; b0 < B; b0 += HEAD_ROWS) {
        const int rows = B - b0 < HEAD_ROWS ? B - b0 : HEAD_ROWS;
        const float *x[HEAD_ROWS];
        double out[HEAD_ROWS], pre[HEAD_ROWS];
        for (int r = 0; r < HEAD_ROWS; r++) { /* past the end: the last row again, results unused */
            x[r] = feat + (size_t)(b0 + (r < rows ? r : rows - 1)) * C;
            out[r] = h->fc2_b[0];
        }
        for (int j = 0; j < Hd; j++) {
            head_fc1_rows(h->fc1_w + (size_t)j * C, x, C, pre);
            for (int r = 0; r < HEAD_ROWS; r++) {
                const float a = (float)(pre[r] + h->fc1_b[j]);
                if (a > 0.0f) out[r] += (double)h->fc2_w[j] * a;
            }
        }
        for (int r = 0; r < rows; r++) {
            const float z = (float)out[r];
            if (logit) logit[b0 + r] = z;
            if (prob) prob[b0 + r] = bs_sigmoid(z);
        }
    }
}

/* exp() only ever sees a non-positive argument, so it cannot overflow for large |x|. */
float bs_sigmoid(float x) {
    double d = x;
    if (d >= 0) return (float)(1.0 / (1.0 + exp(-d)));
    double e = exp(d);
    return (float)(e / (1.0 + e));
}

const char *head_label(float prob) {
    return prob > 0.5f ? "positive" : "negative";
}
