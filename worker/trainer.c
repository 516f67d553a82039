/* Head training by hand: forward and backward of Linear(C,Hd) -> ReLU -> Linear(Hd,1) with
 * BCEWithLogitsLoss (mean) and the torch.optim.AdamW update, all arithmetic in double, weights
 * rounded back to the head's float storage after each step as PyTorch's float32 parameters are. */
#include "trainer.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

struct trainer {
    bs_head *h;
    trainer_opts o;
    int max_batch;
    int64_t t;    /* steps taken */
    size_t np;    /* parameter count: Hd*C + Hd + Hd + 1 */
    double *mem;  /* one allocation for everything below */
    double *grad; /* (np) laid out fc1.weight, fc1.bias, fc2.weight, fc2.bias */
    double *m;    /* (np) AdamW first moment */
    double *v;    /* (np) AdamW second moment */
    double *pre;  /* (max_batch, Hd) fc1 output before ReLU */
    double *z;    /* (max_batch) logits */
};

void trainer_opts_default(trainer_opts *o) {
    o->epochs = 10;
    o->batch = 16;
    o->lr = 2e-4;
    o->weight_decay = 0.01;
    o->beta1 = 0.9;
    o->beta2 = 0.999;
    o->eps = 1e-8;
    o->seed = 0;
    o->shuffle = 1;
}

int trainer_opts_check(const trainer_opts *o, char *err) {
    if (o->epochs < 1) return bs_err(err, "trainer: epochs must be >= 1 (got %d)", o->epochs);
    if (o->batch < 1) return bs_err(err, "trainer: batch must be >= 1 (got %d)", o->batch);
    if (!(o->lr > 0 && isfinite(o->lr))) return bs_err(err, "trainer: lr must be a finite number > 0 (got %g)", o->lr);
    if (!(o->weight_decay >= 0 && isfinite(o->weight_decay)))
        return bs_err(err, "trainer: weight_decay must be a finite number >= 0 (got %g)", o->weight_decay);
    if (!(o->beta1 >= 0 && o->beta1 < 1)) return bs_err(err, "trainer: beta1 must be in [0, 1) (got %g)", o->beta1);
    if (!(o->beta2 >= 0 && o->beta2 < 1)) return bs_err(err, "trainer: beta2 must be in [0, 1) (got %g)", o->beta2);
    if (!(o->eps >= 0 && isfinite(o->eps)))
        return bs_err(err, "trainer: eps must be a finite number >= 0 (got %g)", o->eps);
    return BS_OK;
}

double trainer_bce(double x, double y) {
    return (x > 0 ? x : 0) - x * y + log1p(exp(-fabs(x)));
}

/* Never evaluates exp of a large positive number. */
static double sigmoid(double x) {
    if (x >= 0) return 1.0 / (1.0 + exp(-x));
    double e = exp(x);
    return e / (1.0 + e);
}

static int check_head(const bs_head *h, char *err) {
    if (!h || h->in_dim < 1 || h->hidden < 1 || !h->fc1_w || !h->fc1_b || !h->fc2_w || !h->fc2_b)
        return bs_err(err, "trainer: head is empty or has no weights");
    return BS_OK;
}

/* Labels must be exactly 0 or 1 and features finite: a NaN would poison every later step. */
static int check_data(const float *X, const float *y, int N, int C, char *err) {
    if (N < 1) return bs_err(err, "trainer: no rows to train on");
    for (int i = 0; i < N; i++)
        if (y[i] != 0.0f && y[i] != 1.0f) return bs_err(err, "trainer: label %d is %g, expected 0 or 1", i, y[i]);
    size_t n = (size_t)N * (size_t)C;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(X[i]))
            return bs_err(err, "trainer: feature [%zu, %zu] is not finite", i / (size_t)C, i % (size_t)C);
    return BS_OK;
}

trainer *trainer_new(bs_head *h, const trainer_opts *o, int max_batch, char *err) {
    if (check_head(h, err) != BS_OK || trainer_opts_check(o, err) != BS_OK) return NULL;
    if (max_batch < 1) {
        bs_err(err, "trainer: max_batch must be >= 1 (got %d)", max_batch);
        return NULL;
    }
    size_t C = (size_t)h->in_dim, Hd = (size_t)h->hidden, np, act, total;
    if (!bs_mul_ok(Hd, C, &np) || !bs_mul_ok((size_t)max_batch, Hd + 1, &act) || (np += 2 * Hd + 1) < 2 * Hd + 1 ||
        !bs_mul_ok(np, 3, &total) || (total += act) < act || !bs_mul_ok(total, sizeof(double), &total)) {
        bs_err(err, "trainer: head of %zu x %zu with batch %d is too large", Hd, C, max_batch);
        return NULL;
    }
    trainer *t = calloc(1, sizeof *t);
    double *mem = calloc(1, total);
    if (!t || !mem) {
        free(t);
        free(mem);
        bs_err(err, "trainer: out of memory for %zu bytes of optimizer state", total);
        return NULL;
    }
    t->h = h;
    t->o = *o;
    t->max_batch = max_batch;
    t->np = np;
    t->mem = mem;
    t->grad = mem;
    t->m = t->grad + np;
    t->v = t->m + np;
    t->pre = t->v + np;
    t->z = t->pre + (size_t)max_batch * Hd;
    return t;
}

void trainer_free(trainer *t) {
    if (!t) return;
    free(t->mem);
    free(t);
}

int64_t trainer_steps(const trainer *t) {
    return t->t;
}
const double *trainer_grad(const trainer *t) {
    return t->grad;
}

/* Logit of one row x (C); pre (Hd) gets fc1's output before ReLU. */
static double forward_row(const bs_head *h, const float *x, double *pre) {
    int C = h->in_dim, Hd = h->hidden;
    double z = h->fc2_b[0];
    for (int j = 0; j < Hd; j++) {
        const float *w = h->fc1_w + (size_t)j * C;
        double s = h->fc1_b[j];
        for (int k = 0; k < C; k++) s += (double)w[k] * x[k];
        pre[j] = s;
        if (s > 0) z += (double)h->fc2_w[j] * s;
    }
    return z;
}

/* The update of torch.optim.AdamW (_single_tensor_adamw, amsgrad off, maximize off) for one tensor. */
static void adamw(const trainer *t, float *p, const double *g, double *m, double *v, size_t n) {
    const trainer_opts *o = &t->o;
    double bc1 = 1.0 - pow(o->beta1, (double)t->t);
    double bc2_sqrt = sqrt(1.0 - pow(o->beta2, (double)t->t));
    double step_size = o->lr / bc1;
    double decay = 1.0 - o->lr * o->weight_decay;
    for (size_t i = 0; i < n; i++) {
        double w = (double)p[i] * decay;
        m[i] = o->beta1 * m[i] + (1.0 - o->beta1) * g[i];
        v[i] = o->beta2 * v[i] + (1.0 - o->beta2) * g[i] * g[i];
        double denom = sqrt(v[i]) / bc2_sqrt + o->eps;
        p[i] = (float)(w - step_size * m[i] / denom);
    }
}

double trainer_step(trainer *t, const float *X, const float *y, const int *idx, int b) {
    bs_head *h = t->h;
    size_t C = (size_t)h->in_dim, Hd = (size_t)h->hidden;
    double *g1w = t->grad, *g1b = g1w + Hd * C, *g2w = g1b + Hd, *g2b = g2w + Hd;
    if (b < 1 || b > t->max_batch) return NAN;
    memset(t->grad, 0, t->np * sizeof(double));

    double loss = 0;
    for (int i = 0; i < b; i++) {
        size_t r = idx ? (size_t)idx[i] : (size_t)i;
        double z = forward_row(h, X + r * C, t->pre + (size_t)i * Hd);
        t->z[i] = z;
        loss += trainer_bce(z, y[r]);
    }
    loss /= b;

    /* d(mean BCE)/dz_i = (sigmoid(z_i) - y_i) / b; ReLU passes gradient only where its input > 0. */
    for (int i = 0; i < b; i++) {
        size_t r = idx ? (size_t)idx[i] : (size_t)i;
        const float *x = X + r * C;
        const double *pre = t->pre + (size_t)i * Hd;
        double dz = (sigmoid(t->z[i]) - y[r]) / b;
        g2b[0] += dz;
        for (size_t j = 0; j < Hd; j++) {
            if (pre[j] <= 0) continue;
            g2w[j] += dz * pre[j];
            double dh = dz * h->fc2_w[j];
            g1b[j] += dh;
            double *gw = g1w + j * C;
            for (size_t k = 0; k < C; k++) gw[k] += dh * x[k];
        }
    }

    t->t++;
    double *m = t->m, *v = t->v;
    adamw(t, h->fc1_w, g1w, m, v, Hd * C);
    adamw(t, h->fc1_b, g1b, m + Hd * C, v + Hd * C, Hd);
    adamw(t, h->fc2_w, g2w, m + Hd * C + Hd, v + Hd * C + Hd, Hd);
    adamw(t, h->fc2_b, g2b, m + Hd * C + 2 * Hd, v + Hd * C + 2 * Hd, 1);
    return loss;
}

void trainer_shuffle(int *perm, int n, bs_rng *r) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(bs_rng_next(r) % (uint64_t)(i + 1));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
    }
}

int trainer_fit(bs_head *h, const float *X, const float *y, int N, const trainer_opts *o, trainer_step_fn on_step,
                void *ctx, char *err) {
    if (check_head(h, err) != BS_OK || trainer_opts_check(o, err) != BS_OK) return BS_ERR;
    if (check_data(X, y, N, h->in_dim, err) != BS_OK) return BS_ERR;
    int rc = BS_ERR;
    int max_batch = o->batch < N ? o->batch : N;
    trainer *t = trainer_new(h, o, max_batch, err);
    int *perm = malloc((size_t)N * sizeof *perm);
    if (!t || !perm) {
        if (t) bs_err(err, "trainer: out of memory for %d row indices", N);
        goto done;
    }
    bs_rng rng = {o->seed};
    for (int e = 1; e <= o->epochs; e++) {
        /* Like DataLoader(shuffle=True): a fresh permutation of all rows every epoch. */
        for (int i = 0; i < N; i++) perm[i] = i;
        if (o->shuffle) trainer_shuffle(perm, N, &rng);
        for (int s = 0; s < N; s += o->batch) {
            int b = N - s < o->batch ? N - s : o->batch;
            double loss = trainer_step(t, X, y, perm + s, b);
            if (!isfinite(loss)) {
                bs_err(err, "trainer: loss is not finite at step %lld (epoch %d); lower the learning rate",
                       (long long)t->t, e);
                goto done;
            }
            if (on_step && on_step(ctx, e, t->t, loss) != 0) {
                bs_err(err, "trainer: stopped by the caller at step %lld (epoch %d)", (long long)t->t, e);
                goto done;
            }
        }
    }
    rc = BS_OK;
done:
    free(perm);
    trainer_free(t);
    return rc;
}

void trainer_init_head(bs_head *h, bs_rng *r) {
    size_t C = (size_t)h->in_dim, Hd = (size_t)h->hidden;
    double b1 = 1.0 / sqrt((double)C), b2 = 1.0 / sqrt((double)Hd);
    struct {
        float *p;
        size_t n;
        double bound;
    } parts[4] = {{h->fc1_w, Hd * C, b1}, {h->fc1_b, Hd, b1}, {h->fc2_w, Hd, b2}, {h->fc2_b, 1, b2}};
    for (int k = 0; k < 4; k++)
        for (size_t i = 0; i < parts[k].n; i++)
            parts[k].p[i] = (float)(-parts[k].bound + 2.0 * parts[k].bound * bs_rng_uniform(r));
}

typedef struct {
    double score;
    float label;
} scored;

static int cmp_scored(const void *a, const void *b) {
    double x = ((const scored *)a)->score, y = ((const scored *)b)->score;
    return (x > y) - (x < y);
}

int trainer_eval(const bs_head *h, const float *X, const float *y, int N, trainer_metrics *m, char *err) {
    if (check_head(h, err) != BS_OK || check_data(X, y, N, h->in_dim, err) != BS_OK) return BS_ERR;
    size_t C = (size_t)h->in_dim;
    scored *s = malloc((size_t)N * sizeof *s);
    double *pre = malloc((size_t)h->hidden * sizeof *pre);
    if (!s || !pre) {
        free(s);
        free(pre);
        return bs_err(err, "trainer: out of memory evaluating %d rows", N);
    }
    double loss = 0;
    int correct = 0, n_pos = 0;
    for (int i = 0; i < N; i++) {
        double z = forward_row(h, X + (size_t)i * C, pre);
        loss += trainer_bce(z, y[i]);
        /* The worker's label rule, in the precision the worker applies it. */
        int pred = (float)sigmoid(z) > 0.5f;
        correct += pred == (y[i] == 1.0f);
        n_pos += y[i] == 1.0f;
        s[i].score = z;
        s[i].label = y[i];
    }
    m->n = N;
    m->n_pos = n_pos;
    m->loss = loss / N;
    m->accuracy = (double)correct / N;
    m->auc = NAN;
    int n_neg = N - n_pos;
    if (n_pos > 0 && n_neg > 0) {
        /* AUC = (sum of the positives' ranks - P(P+1)/2) / (P * Nn), tied scores sharing their mean rank. */
        qsort(s, (size_t)N, sizeof *s, cmp_scored);
        double rank_sum = 0;
        for (int i = 0; i < N;) {
            int j = i;
            while (j < N && s[j].score == s[i].score) j++;
            double rank = (i + 1 + j) / 2.0; /* mean of ranks i+1 .. j */
            for (int k = i; k < j; k++)
                if (s[k].label == 1.0f) rank_sum += rank;
            i = j;
        }
        m->auc = (rank_sum - (double)n_pos * (n_pos + 1) / 2.0) / ((double)n_pos * n_neg);
    }
    free(s);
    free(pre);
    return BS_OK;
}

static char *shape_str(const st_tensor *t, char *buf, size_t cap) {
    size_t n = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < t->ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, i ? ",%lld" : "%lld", (long long)t->shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Labels may also be stored as integers or booleans, as torch.tensor(labels) of ints saves them. */
static int labels_to_f32(const st_tensor *t, float *dst, const char *path, char *err) {
    st_dtype d = t->dtype;
    if (d != ST_I64 && d != ST_I32 && d != ST_I8 && d != ST_U8 && d != ST_BOOL) return st_to_f32(t, dst, err);
    const unsigned char *p = t->data;
    for (int64_t i = 0; i < t->numel; i++) {
        int64_t v;
        if (d == ST_I64) {
            memcpy(&v, p + 8 * i, 8);
        } else if (d == ST_I32) {
            int32_t w;
            memcpy(&w, p + 4 * i, 4);
            v = w;
        } else {
            v = d == ST_I8 ? (int8_t)p[i] : p[i];
        }
        if (v != 0 && v != 1)
            return bs_err(err, "%s: tensor 'labels' row %lld is %lld, expected 0 or 1", path, (long long)i,
                          (long long)v);
        dst[i] = (float)v;
    }
    return BS_OK;
}

int trainer_read_data(const char *path, float **X, float **y, int *N, int *C, char *err) {
    int rc = BS_ERR;
    float *fx = NULL, *fy = NULL;
    char sh[128];
    st_file *f = st_open(path, err);
    if (!f) return BS_ERR;
    const st_tensor *tf = st_find(f, "features"), *tl = st_find(f, "labels");
    if (!tf) {
        bs_err(err, "%s: no tensor 'features' (expected features [N,H] and labels [N])", path);
        goto done;
    }
    if (!tl) {
        bs_err(err, "%s: no tensor 'labels' (expected features [N,H] and labels [N])", path);
        goto done;
    }
    if (tf->ndim != 2 || tf->shape[0] < 1 || tf->shape[1] < 1 || tf->shape[0] > INT32_MAX || tf->shape[1] > INT32_MAX) {
        bs_err(err, "%s: tensor 'features' has shape %s, expected [N,H] with N, H >= 1", path,
               shape_str(tf, sh, sizeof sh));
        goto done;
    }
    if (!((tl->ndim == 1) || (tl->ndim == 2 && tl->shape[1] == 1))) {
        bs_err(err, "%s: tensor 'labels' has shape %s, expected [N] or [N,1]", path, shape_str(tl, sh, sizeof sh));
        goto done;
    }
    if (tl->shape[0] != tf->shape[0]) {
        bs_err(err, "%s: tensor 'labels' has %lld rows but 'features' has %lld", path, (long long)tl->shape[0],
               (long long)tf->shape[0]);
        goto done;
    }
    fx = malloc((size_t)tf->numel * sizeof *fx);
    fy = malloc((size_t)tl->numel * sizeof *fy);
    if (!fx || !fy) {
        bs_err(err, "%s: out of memory for %lld features", path, (long long)tf->numel);
        goto done;
    }
    if (st_to_f32(tf, fx, err) != BS_OK || labels_to_f32(tl, fy, path, err) != BS_OK) goto done;
    int n = (int)tf->shape[0], c = (int)tf->shape[1];
    for (int i = 0; i < n; i++)
        if (fy[i] != 0.0f && fy[i] != 1.0f) {
            bs_err(err, "%s: tensor 'labels' row %d is %g, expected 0 or 1", path, i, fy[i]);
            goto done;
        }
    for (size_t i = 0; i < (size_t)tf->numel; i++)
        if (!isfinite(fx[i])) {
            bs_err(err, "%s: tensor 'features' element [%zu,%zu] is not finite", path, i / (size_t)c, i % (size_t)c);
            goto done;
        }
    *X = fx;
    *y = fy;
    *N = n;
    *C = c;
    fx = fy = NULL;
    rc = BS_OK;
done:
    free(fx);
    free(fy);
    st_close(f);
    return rc;
}
