/* The CPU engine: the fp32 reference BERT forward with OpenBLAS (cblas_sgemm).
 * Padding-free: every GEMM runs over the T packed tokens, attention runs per
 * sequence and head over that sequence's own length, so padding costs nothing.
 *
 * Legend: B sequences, T packed tokens, C hidden, NH heads, HS = C/NH, I (FF in code: complex.h owns I) intermediate.
 */
#include <cblas.h>
#undef I /* complex.h, pulled in by openblas_config.h, defines I */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "engine.h"
#include "pool.h"

typedef struct {
    bs_engine base;
    float *x;       /* (T, C) running hidden state */
    float *qkv;     /* (T, 3C) */
    float *ctx;     /* (T, C) attention output before the dense layer */
    float *tmp;     /* (T, C) */
    float *ff;      /* (T, I) */
    float *scores;  /* (threads, S, S) attention probabilities, one (S, S) block per thread, S = max_seq_len */
    bs_pool *pool;  /* attention heads and the element-wise loops, as many threads as OpenBLAS's */
    float *pool_in; /* (B, C) CLS rows gathered for the pooler */
} cpu_engine;

/* out(n, C) = LayerNorm(in)*w + b, row-wise; in and out may alias. */
static void layernorm_rows(float *out, const float *in, const float *w, const float *b, int n, int C, float eps) {
    for (int t = 0; t < n; t++) {
        const float *r = in + (size_t)t * C;
        float *o = out + (size_t)t * C;
        double mean = 0, var = 0;
        for (int c = 0; c < C; c++) mean += r[c];
        mean /= C;
        for (int c = 0; c < C; c++) {
            double d = r[c] - mean;
            var += d * d;
        }
        var /= C;
        float inv = (float)(1.0 / sqrt(var + (double)eps));
        float m = (float)mean;
        for (int c = 0; c < C; c++) o[c] = (r[c] - m) * inv * w[c] + b[c];
    }
}

/* y(n, out) = x(n, in) W(out, in)^T + bias(out): the bias is broadcast first, then accumulated into. */
static void linear(float *y, const float *x, const float *W, const float *bias, int n, int out, int in) {
    for (int t = 0; t < n; t++) memcpy(y + (size_t)t * out, bias, sizeof(float) * (size_t)out);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, out, in, 1.0f, x, in, W, in, 1.0f, y, out);
}

/* expf for the hot loops: Cephes' polynomial after range reduction by ln 2 (relative error
 * < 1e-7 on [-87, 88]); unlike libm's expf the compiler can vectorise it. */
static inline float fast_expf(float x) {
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round to nearest */
    float r = x - n * 0.693359375f + n * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    int32_t bits = ((int32_t)n + 127) * (1 << 23);
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

/* GELU, erf form: 0.5 x (1 + erf(x / sqrt 2)), erf by Abramowitz & Stegun 7.1.26 (absolute error
 * < 1.5e-7; the GELU error stays below 5e-7 for |x| <= 10). libm's erff is 15x slower here and
 * would be a third of the CPU forward pass. */
static inline float fast_gelu(float x) {
    float z = x * 0.70710678118654752f, a = z < 0 ? -z : z;
    float t = 1.0f / (1.0f + 0.3275911f * a);
    float poly = t * (0.254829592f + t * (-0.284496736f + t * (1.421413741f + t * (-1.453152027f + t * 1.061405429f))));
    float y = 1.0f - poly * fast_expf(-a * a);
    y = z < 0 ? -y : y;
    return 0.5f * x * (1.0f + y);
}

/* The element-wise loops get AVX-512 / AVX2 clones (BS_VECTOR_CLONES, common.h). */
BS_VECTOR_CLONES static void gelu_erf(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) x[i] = fast_gelu(x[i]);
}

BS_VECTOR_CLONES static void add_inplace(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] += x[i];
}

/* Softmax of one row of n in place. */
BS_VECTOR_CLONES static void softmax_row(float *row, int n) {
    float mx = row[0];
    for (int j = 1; j < n; j++) mx = row[j] > mx ? row[j] : mx;
    float sum = 0;
    for (int j = 0; j < n; j++) {
        row[j] = fast_expf(row[j] - mx);
        sum += row[j];
    }
    float inv = 1.0f / sum;
    for (int j = 0; j < n; j++) row[j] *= inv;
}

/* Row-wise softmax of S (n, n) in place. */
static void softmax_rows(float *S, int n) {
    for (int i = 0; i < n; i++) softmax_row(S + (size_t)i * n, n);
}

/* Self-attention of one head h of one sequence of n tokens starting at packed row s0. S: (n, n) scratch. */
static void attention_head(cpu_engine *e, int s0, int n, int h, float *S) {
    const int C = e->base.model->cfg.hidden, HS = C / e->base.model->cfg.heads, ld = 3 * C;
    const float scale = 1.0f / sqrtf((float)HS);
    const float *Q = e->qkv + (size_t)s0 * ld + h * HS;
    const float *K = Q + C;
    const float *V = Q + 2 * C;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, n, HS, scale, Q, ld, K, ld, 0.0f, S, n);
    softmax_rows(S, n);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, HS, n, 1.0f, S, n, V, ld, 0.0f,
                e->ctx + (size_t)s0 * C + h * HS, C);
}

/* One loop of cpu_forward over the pool: its arguments, and the batch. */
typedef struct {
    cpu_engine *e;
    const bs_batch *b;
    float *out, *y; /* add_layernorm: out = LayerNorm(y + x), y overwritten; gelu: y in place */
    const float *x, *w, *bias;
    int T, C;
    float eps;
} loop_args;

/* BLAS single-threaded for a loop whose items call it: its threads would split each small GEMM
 * and spend the time synchronising, while the items already run in parallel. */
static void pool_for_blas1(cpu_engine *e, int n, int grain, pool_fn fn, loop_args *a) {
    const int blas_threads = openblas_get_num_threads(), many = pool_threads(e->pool) > 1;
    if (many) openblas_set_num_threads(1);
    pool_for(e->pool, n, grain, fn, a);
    if (many) openblas_set_num_threads(blas_threads);
}

/* The pool thread's own (S, S) block of scores, S = max_seq_len. */
static float *thread_scores(const cpu_engine *e, int thread) {
    const size_t S = (size_t)e->base.opts.max_seq_len;
    return e->scores + (size_t)thread * S * S;
}

/* Item p of attention: (sequence p / NH, head p % NH). */
static void attention_item(void *ctx, int p, int thread) {
    const loop_args *a = ctx;
    const int NH = a->e->base.model->cfg.heads, s = p / NH, s0 = a->b->cu_seqlens[s];
    attention_head(a->e, s0, a->b->cu_seqlens[s + 1] - s0, p % NH, thread_scores(a->e, thread));
}

/* All (sequence, head) pairs, spread over the engine's threads. */
static void attention(cpu_engine *e, const bs_batch *b) {
    loop_args a = {.e = e, .b = b};
    pool_for_blas1(e, b->n_seq * e->base.model->cfg.heads, 1, attention_item, &a);
}

/* The element-wise steps in row chunks over the engine's threads (the GEMMs around them use
 * OpenBLAS's own threads; leaving these on one core would idle the other one). */
#define ROW_CHUNK 32

static int row_chunks(int T) {
    return (T + ROW_CHUNK - 1) / ROW_CHUNK;
}

static int chunk_rows(int T, int k) {
    return T - k * ROW_CHUNK < ROW_CHUNK ? T - k * ROW_CHUNK : ROW_CHUNK;
}

static void gelu_item(void *ctx, int k, int thread) {
    (void)thread;
    const loop_args *a = ctx;
    gelu_erf(a->y + (size_t)k * ROW_CHUNK * a->C, (size_t)chunk_rows(a->T, k) * a->C);
}

static void gelu_parallel(cpu_engine *e, float *x /* (T, FF) */, int T, int FF) {
    loop_args a = {.y = x, .T = T, .C = FF};
    pool_for(e->pool, row_chunks(T), 1, gelu_item, &a);
}

static void add_layernorm_item(void *ctx, int k, int thread) {
    (void)thread;
    const loop_args *a = ctx;
    const int n = chunk_rows(a->T, k);
    const size_t off = (size_t)k * ROW_CHUNK * a->C;
    add_inplace(a->y + off, a->x + off, (size_t)n * a->C);
    layernorm_rows(a->out + off, a->y + off, a->w, a->bias, n, a->C, a->eps);
}

/* out = LayerNorm(y + x) row-wise; y is overwritten with the sum. */
static void add_layernorm_parallel(cpu_engine *e, float *out /* (T, C) */, float *y /* (T, C) */,
                                   const float *x /* (T, C) */, const float *w, const float *b, int T, int C,
                                   float eps) {
    loop_args a = {.out = out, .y = y, .x = x, .w = w, .bias = b, .T = T, .C = C, .eps = eps};
    pool_for(e->pool, row_chunks(T), 1, add_layernorm_item, &a);
}

/* Item p of attention_cls: the CLS query of sequence p / NH, head p % NH, to ctx row s. */
static void attention_cls_item(void *ctx, int p, int thread) {
    const loop_args *a = ctx;
    cpu_engine *e = a->e;
    const int C = e->base.model->cfg.hidden, NH = e->base.model->cfg.heads, HS = C / NH, ld = 3 * C;
    const int s = p / NH, h = p % NH, s0 = a->b->cu_seqlens[s], n = a->b->cu_seqlens[s + 1] - s0;
    const float scale = 1.0f / sqrtf((float)HS);
    float *P = thread_scores(e, thread);
    const float *Q = e->qkv + (size_t)s0 * ld + h * HS, *K = Q + C, *V = Q + 2 * C;
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, HS, scale, K, ld, Q, 1, 0.0f, P, 1); /* P = K q */
    softmax_row(P, n);
    cblas_sgemv(CblasRowMajor, CblasTrans, n, HS, 1.0f, V, ld, P, 1, 0.0f, e->ctx + (size_t)s * C + h * HS, 1);
}

/* Attention of each sequence's first query (CLS) only, every head: ctx row s (B, C). The last
 * layer when neither hidden states nor mean pooling are asked for (cpu_forward). */
static void attention_cls(cpu_engine *e, const bs_batch *b) {
    loop_args a = {.e = e, .b = b};
    pool_for_blas1(e, b->n_seq * e->base.model->cfg.heads, 4, attention_cls_item, &a);
}

static int cpu_forward(bs_engine *base, const bs_batch *b, const bs_outputs *out, char *err) {
    (void)err;
    cpu_engine *e = (cpu_engine *)base;
    const bs_model *m = base->model;
    const bs_bert_config *cfg = &m->cfg;
    const int C = cfg->hidden, FF = cfg->intermediate, B = b->n_seq;
    const int T = b->cu_seqlens[B];

    /* embeddings: word + position (within the sequence) + token type 0, then LayerNorm */
    for (int s = 0; s < B; s++) {
        for (int t = b->cu_seqlens[s]; t < b->cu_seqlens[s + 1]; t++) {
            const float *we = m->word_emb + (size_t)b->ids[t] * C;
            const float *pe = m->pos_emb + (size_t)(t - b->cu_seqlens[s]) * C;
            const float *te = m->type_emb;
            float *x = e->x + (size_t)t * C;
            for (int c = 0; c < C; c++) x[c] = we[c] + pe[c] + te[c];
        }
    }
    layernorm_rows(e->x, e->x, m->emb_ln_w, m->emb_ln_b, T, C, cfg->ln_eps);

    /* Only the CLS rows leave the engine unless hidden states or mean pooling are asked for: then
     * the last layer needs every row's keys and values, but its attention only for the CLS query
     * and everything after that only on the CLS rows (B instead of T rows: BERT-base at 128 tokens
     * skips 6 % of the work). Row s of x becomes sequence s's CLS row. The same computation per
     * row; only the summation order of the GEMMs (B rows instead of T) may differ. */
    const int cls_only = engine_cls_only(base, out);
    for (int l = 0; l < cfg->layers; l++) {
        const bs_layer_weights *w = &m->layer[l];
        const int last = cls_only && l == cfg->layers - 1, n = last ? B : T;
        linear(e->qkv, e->x, w->qkv_w, w->qkv_b, T, 3 * C, C);
        if (last) {
            attention_cls(e, b);
            for (int s = 0; s < B; s++) /* in place, upwards: row cu[s] >= s, never a later source */
                memmove(e->x + (size_t)s * C, e->x + (size_t)b->cu_seqlens[s] * C, sizeof(float) * (size_t)C);
        } else {
            attention(e, b);
        }
        linear(e->tmp, e->ctx, w->ao_w, w->ao_b, n, C, C);
        add_layernorm_parallel(e, e->x, e->tmp, e->x, w->ln1_w, w->ln1_b, n, C, cfg->ln_eps);
        linear(e->ff, e->x, w->ff1_w, w->ff1_b, n, FF, C);
        gelu_parallel(e, e->ff, n, FF);
        linear(e->tmp, e->ff, w->ff2_w, w->ff2_b, n, C, FF);
        add_layernorm_parallel(e, e->x, e->tmp, e->x, w->ln2_w, w->ln2_b, n, C, cfg->ln_eps);
    }

    for (int s = 0; s < B; s++)
        memcpy(e->pool_in + (size_t)s * C, e->x + (size_t)(cls_only ? s : b->cu_seqlens[s]) * C,
               sizeof(float) * (size_t)C);
    if (out->hidden) memcpy(out->hidden, e->x, sizeof(float) * (size_t)T * C);
    if (out->cls) memcpy(out->cls, e->pool_in, sizeof(float) * (size_t)B * C);
    if (out->mean) {
        for (int s = 0; s < B; s++) {
            int s0 = b->cu_seqlens[s], n = b->cu_seqlens[s + 1] - s0;
            float *o = out->mean + (size_t)s * C;
            for (int c = 0; c < C; c++) {
                double acc = 0;
                for (int t = 0; t < n; t++) acc += e->x[(size_t)(s0 + t) * C + c];
                o[c] = (float)(acc / n);
            }
        }
    }
    if (out->pooler) {
        linear(out->pooler, e->pool_in, m->pool_w, m->pool_b, B, C, C);
        for (size_t i = 0; i < (size_t)B * C; i++) out->pooler[i] = tanhf(out->pooler[i]);
    }
    return BS_OK;
}

static void cpu_destroy(bs_engine *base) {
    cpu_engine *e = (cpu_engine *)base;
    free(e->x);
    free(e->qkv);
    free(e->ctx);
    free(e->tmp);
    free(e->ff);
    free(e->scores);
    free(e->pool_in);
    pool_free(e->pool);
    free(e);
}

static float *alloc_floats(size_t a, size_t b) {
    size_t n;
    if (!bs_mul_ok(a, b, &n) || !bs_mul_ok(n, sizeof(float), &n)) return NULL;
    return malloc(n ? n : 1);
}

bs_engine *engine_cpu_new(const bs_model *m, const bs_engine_opts *opts, char *err) {
    cpu_engine *e = calloc(1, sizeof *e);
    if (!e) {
        bs_err(err, "cpu engine: out of memory");
        return NULL;
    }
    const size_t C = (size_t)m->cfg.hidden, FF = (size_t)m->cfg.intermediate, T = (size_t)opts->max_tokens;
    const size_t S = (size_t)opts->max_seq_len;
    e->x = alloc_floats(T, C);
    e->qkv = alloc_floats(T, 3 * C);
    e->ctx = alloc_floats(T, C);
    e->tmp = alloc_floats(T, C);
    e->ff = alloc_floats(T, FF);
    e->pool = pool_new(openblas_get_num_threads());
    if (!e->pool) {
        bs_err(err, "cpu engine: cannot start %d threads", openblas_get_num_threads());
        cpu_destroy(&e->base);
        return NULL;
    }
    e->scores = alloc_floats((size_t)pool_threads(e->pool) * S, S);
    e->pool_in = alloc_floats((size_t)opts->max_seqs, C);
    if (!e->x || !e->qkv || !e->ctx || !e->tmp || !e->ff || !e->scores || !e->pool_in) {
        bs_err(err, "cpu engine: cannot allocate activations for %zu tokens x %zu hidden", T, C);
        cpu_destroy(&e->base);
        return NULL;
    }
    e->base.forward = cpu_forward;
    e->base.destroy = cpu_destroy;
    e->base.model = m;
    e->base.opts = *opts;
    e->base.opts.device = "cpu";
    e->base.precision = BS_PREC_FP32;
    e->base.is_cuda = 0;
    snprintf(e->base.desc, sizeof e->base.desc, "cpu fp32 openblas(%s, %d threads)", openblas_get_config(),
             openblas_get_num_threads());
    return &e->base;
}
