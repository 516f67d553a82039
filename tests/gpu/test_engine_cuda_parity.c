/* The CUDA engine against the references: Hugging Face's float64 golden outputs on tiny-bert at
 * fp32 (1e-4), the CPU engine on models of other shapes at fp32 (1e-4), and the CPU engine's
 * fp32 features at bf16/fp16 (cosine >= 0.999, head probability within 5e-3) and fp8 (cosine
 * >= 0.99, same label on >= 99% of IMDB reviews). Also: CUDA-graph replay equals eager
 * execution on fresh inputs, the attention paths agree, bias and residual in the GEMMs agree with
 * them in the LayerNorms, bench --skip runs on random activations, and BERT-base at 256 x 128 in bf16
 * fits in 2 GiB. Needs a CUDA device: fails without one (the gpu label is excluded there). */
#include <cuda_runtime_api.h>
#include <math.h>

#include "common.h"
#include "dtype.h"
#include "engine.h"
#include "head.h"
#include "model.h"
#include "safetensors.h"
#include "fixtures.h"
#include "test.h"
#include "tokenizer.h"

#define TOL 1e-4

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) exit(1);
    return p;
}

static bs_engine *make_engine(const bs_model *m, const char *device, bs_precision p, int max_seqs, int max_tokens,
                              int max_seq_len) {
    char err[BS_ERRLEN];
    bs_engine_opts o = {
        .device = device, .precision = p, .max_seqs = max_seqs, .max_tokens = max_tokens, .max_seq_len = max_seq_len};
    bs_engine *e = engine_new(m, &o, err);
    if (!e)
        fprintf(stderr, "  engine_new(%s, %s): %s\n", device, bs_precision_name(p), err);
    else
        fprintf(stderr, "  engine: %s\n", engine_describe(e));
    return e;
}

/* The golden batch without its padding: input_ids where attention_mask is 1, back to back. */
static packed_batch golden_batch(const st_file *g) {
    const st_tensor *ids_t = st_find(g, "input_ids"), *mask_t = st_find(g, "attention_mask");
    if (!ids_t || !mask_t || ids_t->dtype != ST_I32 || mask_t->dtype != ST_I32) {
        fprintf(stderr, "golden input_ids/attention_mask missing or not I32\n");
        exit(1);
    }
    packed_batch p = {.B = (int)ids_t->shape[0], .L = (int)ids_t->shape[1]};
    const int32_t *ids = ids_t->data, *mask = mask_t->data;
    p.ids = malloc(sizeof(int32_t) * (size_t)p.B * p.L);
    p.cu = malloc(sizeof(int32_t) * (size_t)(p.B + 1));
    p.cu[0] = 0;
    for (int s = 0; s < p.B; s++) {
        int n = 0;
        for (int t = 0; t < p.L; t++)
            if (mask[s * p.L + t]) p.ids[p.cu[s] + n++] = ids[s * p.L + t];
        p.cu[s + 1] = p.cu[s] + n;
    }
    p.T = p.cu[p.B];
    return p;
}

typedef struct {
    float *pooler, *cls, *mean, *hidden;
} features;

static features features_alloc(int B, int T, int C) {
    features f = {falloc((size_t)B * C), falloc((size_t)B * C), falloc((size_t)B * C), falloc((size_t)T * C)};
    return f;
}

static void features_free(features *f) {
    free(f->pooler), free(f->cls), free(f->mean), free(f->hidden);
}

static int run(bs_engine *e, int B, const int32_t *ids, const int32_t *cu, features *f) {
    char err[BS_ERRLEN];
    bs_batch b = {.n_seq = B, .ids = ids, .cu_seqlens = cu};
    bs_outputs o = {.pooler = f->pooler, .cls = f->cls, .mean = f->mean, .hidden = f->hidden};
    int rc = engine_forward(e, &b, &o, err);
    if (rc != BS_OK) fprintf(stderr, "  engine_forward: %s\n", err);
    return rc;
}

static bs_model *load_golden_model(void) {
    char err[BS_ERRLEN];
    bs_model *m = model_load(bs_test_data("golden/tiny-bert"), err);
    if (!m) fprintf(stderr, "  model_load: %s\n", err);
    return m;
}

/* The golden tiny-bert, its reference tensors and its batch packed without padding: where most
 * tests here start. 0 (a CHECK failed) when a part is missing; golden_close frees all of it. */
typedef struct {
    bs_model *m;
    st_file *g;
    packed_batch pb;
} golden;

static int golden_open(golden *gd) {
    char err[BS_ERRLEN];
    memset(gd, 0, sizeof *gd);
    gd->m = load_golden_model();
    CHECK(gd->m != NULL);
    if (!gd->m) return 0;
    gd->g = st_open(bs_test_data("golden/tiny-bert/golden.safetensors"), err);
    CHECK(gd->g != NULL);
    if (!gd->g) {
        fprintf(stderr, "  %s\n", err);
        model_free(gd->m);
        return 0;
    }
    gd->pb = golden_batch(gd->g);
    return 1;
}

static void golden_close(golden *gd) {
    free(gd->pb.ids), free(gd->pb.cu);
    st_close(gd->g);
    model_free(gd->m);
}

/* ---- fp32 vs the golden ---- */

static void engine_cuda_fp32_matches_hf_golden_tiny_bert(void) {
    char err[BS_ERRLEN];
    golden gd;
    if (!golden_open(&gd)) return;
    bs_model *m = gd.m;
    st_file *g = gd.g;
    packed_batch pb = gd.pb;
    const int C = m->cfg.hidden;
    bs_engine *e = make_engine(m, "cuda", BS_PREC_FP32, pb.B, pb.T, pb.L);
    CHECK(e != NULL);
    if (e) {
        CHECK(engine_is_cuda(e));
        CHECK_INT(engine_precision(e), BS_PREC_FP32);
        features f = features_alloc(pb.B, pb.T, C);
        CHECK_INT(run(e, pb.B, pb.ids, pb.cu, &f), BS_OK);
        float *gh = bs_test_f32(g, "last_hidden_state", -1);
        double worst = 0;
        for (int s = 0; s < pb.B; s++)
            for (int t = 0; t < pb.cu[s + 1] - pb.cu[s]; t++) {
                double d =
                    bs_test_max_abs_diff(f.hidden + (size_t)(pb.cu[s] + t) * C, gh + ((size_t)s * pb.L + t) * C, C);
                if (!(d <= worst)) worst = d;
            }
        fprintf(stderr, "  last_hidden_state max |diff| %.3g\n", worst);
        CHECK_NEAR(worst, 0, TOL);
        const char *names[3] = {"pooler_output", "cls", "mean_pooled"};
        float *mine[3] = {f.pooler, f.cls, f.mean};
        for (int k = 0; k < 3; k++) {
            float *ref = bs_test_f32(g, names[k], -1);
            double d = bs_test_max_abs_diff(mine[k], ref, (size_t)pb.B * C);
            fprintf(stderr, "  %s max |diff| %.3g\n", names[k], d);
            CHECK_NEAR(d, 0, TOL);
            free(ref);
        }
        bs_head *h = head_load(bs_test_data("golden/tiny-bert/head.safetensors"), NULL, err);
        CHECK(h != NULL);
        if (h) {
            float *logit = falloc(pb.B), *prob = falloc(pb.B), *gl = bs_test_f32(g, "head_logit", -1),
                  *gp = bs_test_f32(g, "head_prob", -1);
            head_apply(h, f.pooler, pb.B, logit, prob);
            CHECK_NEAR(bs_test_max_abs_diff(logit, gl, pb.B), 0, TOL);
            CHECK_NEAR(bs_test_max_abs_diff(prob, gp, pb.B), 0, TOL);
            free(logit), free(prob), free(gl), free(gp);
            head_free(h);
        }
        free(gh);
        features_free(&f);
        engine_free(e);
    }
    golden_close(&gd);
}

/* ---- graphs ---- */

/* Replaying a captured graph must read the new batch's inputs. The engine runs a shape's first
 * batch eagerly and captures on the second, so the graph engine sees: A, A (capture), A reversed
 * (same bucket, other inputs: replay), C, C (another shape), A reversed again (replay after another
 * graph). Each result equals the eager engine's (same kernels, same GEMM algorithms) and the CPU's. */
static void engine_cuda_graph_replay_equals_eager_on_new_inputs(void) {
    golden gd;
    if (!golden_open(&gd)) return;
    bs_model *m = gd.m;
    packed_batch pb = gd.pb;
    const int C = m->cfg.hidden;
    setenv("BERTSTREAM_CUDA_GRAPHS", "1", 1);
    bs_engine *eg = make_engine(m, "cuda", BS_PREC_FP32, pb.B, pb.T, pb.L);
    setenv("BERTSTREAM_CUDA_GRAPHS", "0", 1);
    bs_engine *ee = make_engine(m, "cuda", BS_PREC_FP32, pb.B, pb.T, pb.L);
    unsetenv("BERTSTREAM_CUDA_GRAPHS");
    bs_engine *ec = make_engine(m, "cpu", BS_PREC_FP32, pb.B, pb.T, pb.L);
    CHECK(eg && ee && ec);
    if (eg && ee && ec) {
        CHECK_CONTAINS(engine_describe(eg), "graphs=on");
        CHECK_CONTAINS(engine_describe(ee), "graphs=off");
        /* batch A: all sequences; A reversed: same B and T, sequences in the opposite order; C: 3..5 */
        int32_t *rids = malloc(sizeof(int32_t) * (size_t)pb.T), *rcu = malloc(sizeof(int32_t) * (size_t)(pb.B + 1));
        rcu[0] = 0;
        for (int s = 0; s < pb.B; s++) {
            const int src = pb.B - 1 - s, n = pb.cu[src + 1] - pb.cu[src];
            memcpy(rids + rcu[s], pb.ids + pb.cu[src], sizeof(int32_t) * (size_t)n);
            rcu[s + 1] = rcu[s] + n;
        }
        int32_t ccu[4];
        for (int s = 0; s <= 3; s++) ccu[s] = pb.cu[3 + s] - pb.cu[3];
        const int32_t *ids[3] = {pb.ids, rids, pb.ids + pb.cu[3]}, *cus[3] = {pb.cu, rcu, ccu};
        const int Bs[3] = {pb.B, pb.B, 3}, order[6] = {0, 0, 1, 2, 2, 1};
        for (int r = 0; r < 6; r++) {
            const int k = order[r], B = Bs[k], T = cus[k][B];
            features fg = features_alloc(B, T, C), fe = features_alloc(B, T, C), fc = features_alloc(B, T, C);
            CHECK_INT(run(eg, B, ids[k], cus[k], &fg), BS_OK);
            CHECK_INT(run(ee, B, ids[k], cus[k], &fe), BS_OK);
            CHECK_INT(run(ec, B, ids[k], cus[k], &fc), BS_OK);
            const double dg = bs_test_max_abs_diff(fg.hidden, fe.hidden, (size_t)T * C);
            const double dp = bs_test_max_abs_diff(fg.pooler, fe.pooler, (size_t)B * C);
            const double dc = bs_test_max_abs_diff(fg.hidden, fc.hidden, (size_t)T * C);
            fprintf(stderr, "  run %d batch %c (B=%d T=%d): graph vs eager %.3g / %.3g, graph vs cpu %.3g\n", r,
                    "ARC"[k], B, T, dg, dp, dc);
            CHECK_NEAR(dg, 0, 1e-6);
            CHECK_NEAR(dp, 0, 1e-6);
            CHECK_NEAR(dc, 0, TOL);
            CHECK_NEAR(bs_test_max_abs_diff(fg.mean, fc.mean, (size_t)B * C), 0, TOL);
            CHECK_NEAR(bs_test_max_abs_diff(fg.cls, fc.cls, (size_t)B * C), 0, TOL);
            CHECK_NEAR(bs_test_max_abs_diff(fg.pooler, fc.pooler, (size_t)B * C), 0, TOL);
            features_free(&fg), features_free(&fe), features_free(&fc);
        }
        CHECK_CONTAINS(engine_describe(eg), "graphs=on"); /* no capture fell back to eager */
        free(rids), free(rcu);
    }
    engine_free(eg), engine_free(ee), engine_free(ec);
    golden_close(&gd);
}

/* ---- other shapes at fp32 ---- */

static void check_other_shape(bs_bert_config cfg, uint64_t seed) {
    char err[BS_ERRLEN];
    bs_model *m = model_init_random(&cfg, seed, err);
    CHECK(m != NULL);
    if (!m) {
        fprintf(stderr, "  %s\n", err);
        return;
    }
    bs_rng r = {seed + 1};
    bs_test_bump_gains_and_biases(m, &r);
    enum { B = 5 };
    const int lens[B] = {1, 77, 13, 2, 40};
    int32_t cu[B + 1] = {0};
    for (int s = 0; s < B; s++) cu[s + 1] = cu[s] + (lens[s] < cfg.max_positions ? lens[s] : cfg.max_positions);
    const int T = cu[B], C = cfg.hidden;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(bs_rng_next(&r) % (uint64_t)cfg.vocab_size);
    /* limits exactly at this batch: T is not a multiple of 16, B not of 4 */
    bs_engine *eg = make_engine(m, "cuda", BS_PREC_FP32, B, T, cfg.max_positions);
    bs_engine *ec = make_engine(m, "cpu", BS_PREC_FP32, B, T, cfg.max_positions);
    CHECK(eg && ec);
    if (eg && ec) {
        features fg = features_alloc(B, T, C), fc = features_alloc(B, T, C);
        CHECK_INT(run(eg, B, ids, cu, &fg), BS_OK);
        CHECK_INT(run(ec, B, ids, cu, &fc), BS_OK);
        double dh = bs_test_max_abs_diff(fg.hidden, fc.hidden, (size_t)T * C),
               dp = bs_test_max_abs_diff(fg.pooler, fc.pooler, B * C);
        double dm = bs_test_max_abs_diff(fg.mean, fc.mean, B * C), dc = bs_test_max_abs_diff(fg.cls, fc.cls, B * C);
        fprintf(stderr, "  C=%d NH=%d L=%d I=%d: max |diff| hidden %.3g pooler %.3g mean %.3g cls %.3g\n", C, cfg.heads,
                cfg.layers, cfg.intermediate, dh, dp, dm, dc);
        CHECK_NEAR(dh, 0, TOL);
        CHECK_NEAR(dp, 0, TOL);
        CHECK_NEAR(dm, 0, TOL);
        CHECK_NEAR(dc, 0, TOL);
        /* one sequence at a time: batching is exact up to GEMM algorithm choice */
        float *one = falloc((size_t)C);
        for (int s = 0; s < B; s++) {
            int32_t cu1[2] = {0, cu[s + 1] - cu[s]};
            bs_batch b1 = {.n_seq = 1, .ids = ids + cu[s], .cu_seqlens = cu1};
            bs_outputs o1 = {.pooler = one};
            CHECK_INT(engine_forward(eg, &b1, &o1, err), BS_OK);
            CHECK_NEAR(bs_test_max_abs_diff(one, fg.pooler + (size_t)s * C, C), 0, 1e-5);
        }
        free(one);
        features_free(&fg), features_free(&fc);
    }
    engine_free(eg), engine_free(ec);
    free(ids);
    model_free(m);
}

/* TinyBERT-4's width: 12 heads of 26, a head size no 16-byte load divides (both other-shape tests) */
static const bs_bert_config tinybert4_width = {.vocab_size = 500,
                                               .hidden = 312,
                                               .layers = 2,
                                               .heads = 12,
                                               .intermediate = 1200,
                                               .max_positions = 128,
                                               .type_vocab_size = 2,
                                               .ln_eps = 1e-12f};

static void engine_cuda_fp32_matches_cpu_on_other_shapes(void) {
    const struct {
        bs_bert_config cfg;
        uint64_t seed;
    } shapes[] = {
        /* hidden 96, 3 heads of 32, 3 layers, intermediate 200 (the brief's shape) */
        {{.vocab_size = 1000,
          .hidden = 96,
          .layers = 3,
          .heads = 3,
          .intermediate = 200,
          .max_positions = 77,
          .type_vocab_size = 2,
          .ln_eps = 1e-7f},
         42},
        /* head size 80 (3 of 4 lanes' second dim idle), odd vocabulary, eps 1e-5 */
        {{.vocab_size = 333,
          .hidden = 160,
          .layers = 2,
          .heads = 2,
          .intermediate = 64,
          .max_positions = 90,
          .type_vocab_size = 1,
          .ln_eps = 1e-5f},
         7},
        {tinybert4_width, 9},
    };
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) check_other_shape(shapes[k].cfg, shapes[k].seed);
}

static int device_has_fp8(void);

/* ---- other shapes at bf16, fp16 and fp8 ---- */

/* Each reduced precision on model shapes other than tiny-bert's, against the CPU engine at fp32,
 * with the bars: cosine >= 0.999 (bf16, fp16) or >= 0.99 (fp8) for every pooled vector and
 * every token's last hidden state. The shapes take every attention path: head size 32 and 128 the
 * mma kernel (and at fp8 its E4M3 input and output), 48, 80 and 26 no tensor-core kernel (the SIMT
 * kernel, and at fp8 the cast passes). fp8 with a hidden or intermediate size not divisible by 16 is
 * a one-line refusal. One batch of random ids, ragged, with a sequence at the longest length, on
 * random weights with peaked attention. */
static void check_shape_at(const bs_model *m, bs_precision prec, const char *expect_att) {
    const bs_bert_config *cfg = &m->cfg;
    char err[BS_ERRLEN];
    enum { B = 6 };
    const int S = cfg->max_positions < 128 ? cfg->max_positions : 128;
    const int lens[B] = {S, 1, 37, 2, 64 < S ? 64 : S, 19};
    int32_t cu[B + 1] = {0};
    for (int s = 0; s < B; s++) cu[s + 1] = cu[s] + lens[s];
    const int T = cu[B], C = cfg->hidden;
    bs_rng r = {(uint64_t)C * 31 + (uint64_t)cfg->heads};
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(bs_rng_next(&r) % (uint64_t)cfg->vocab_size);
    bs_engine_opts o = {.device = "cuda", .precision = prec, .max_seqs = B, .max_tokens = T, .max_seq_len = S};
    bs_engine *e = engine_new(m, &o, err);
    if (prec == BS_PREC_FP8 && (C % 16 || cfg->intermediate % 16)) {
        CHECK(e == NULL);
        char want[128];
        snprintf(want, sizeof want, "fp8 needs hidden (%d) and intermediate (%d) sizes divisible by 16", C,
                 cfg->intermediate);
        CHECK_CONTAINS(err, want);
        fprintf(stderr, "  C=%d I=%d fp8: refused (%s)\n", C, cfg->intermediate, err);
        engine_free(e), free(ids);
        return;
    }
    CHECK(e != NULL);
    bs_engine *cpu = make_engine(m, "cpu", BS_PREC_FP32, B, T, S);
    CHECK(cpu != NULL);
    if (e && cpu) {
        /* cuDNN's SDPA, where this host's cuDNN takes the shape, else the kernel expected; at fp8 with
         * the mma kernel, the QKV GEMM, the FFN-up GEMM and attention write E4M3 themselves */
        const char *d = engine_describe(e);
        const int sdpa = strstr(d, "attention=cudnn-sdpa") != NULL;
        if (!sdpa) CHECK_CONTAINS(d, expect_att);
        if (prec == BS_PREC_FP8 && !sdpa)
            CHECK_CONTAINS(d, strstr(expect_att, "mma") ? " e4m3-out=layernorm,qkv,ff1,attention "
                                                        : " e4m3-out=layernorm,ff1 ");
        features fg = features_alloc(B, T, C), fc = features_alloc(B, T, C);
        CHECK_INT(run(e, B, ids, cu, &fg), BS_OK);
        CHECK_INT(run(cpu, B, ids, cu, &fc), BS_OK);
        const double bar = prec == BS_PREC_FP8 ? 0.99 : 0.999;
        double cp = bs_test_min_row_cosine(fg.pooler, fc.pooler, B, C),
               cc = bs_test_min_row_cosine(fg.cls, fc.cls, B, C);
        double cm = bs_test_min_row_cosine(fg.mean, fc.mean, B, C),
               ch = bs_test_min_row_cosine(fg.hidden, fc.hidden, T, C);
        fprintf(stderr, "  C=%d NH=%d HS=%d I=%d %s: min cosine pooler %.6f cls %.6f mean %.6f hidden %.6f (%s)\n", C,
                cfg->heads, C / cfg->heads, cfg->intermediate, bs_precision_name(prec), cp, cc, cm, ch, d);
        CHECK(cp >= bar);
        CHECK(cc >= bar);
        CHECK(cm >= bar);
        CHECK(ch >= bar);
        features_free(&fg), features_free(&fc);
    } else if (!e)
        fprintf(stderr, "  %s\n", err);
    engine_free(e), engine_free(cpu);
    free(ids);
}

static void engine_cuda_reduced_precisions_on_other_shapes(void) {
    const struct {
        bs_bert_config cfg;
        const char *att; /* what engine_describe says of the attention path at bf16 */
    } shapes[] = {
        /* MiniLM's width: 12 heads of 32 */
        {{.vocab_size = 500,
          .hidden = 384,
          .layers = 2,
          .heads = 12,
          .intermediate = 1536,
          .max_positions = 128,
          .type_vocab_size = 2,
          .ln_eps = 1e-12f},
         "attention=kernel-mma "},
        /* head size 128 */
        {{.vocab_size = 300,
          .hidden = 256,
          .layers = 2,
          .heads = 2,
          .intermediate = 512,
          .max_positions = 128,
          .type_vocab_size = 2,
          .ln_eps = 1e-12f},
         "attention=kernel-mma "},
        /* head size 48: no tensor-core kernel */
        {{.vocab_size = 400,
          .hidden = 192,
          .layers = 2,
          .heads = 4,
          .intermediate = 768,
          .max_positions = 100,
          .type_vocab_size = 2,
          .ln_eps = 1e-12f},
         "attention=kernel-simt "},
        /* head size 80, intermediate 200: fp8 is refused */
        {{.vocab_size = 333,
          .hidden = 160,
          .layers = 2,
          .heads = 2,
          .intermediate = 200,
          .max_positions = 90,
          .type_vocab_size = 1,
          .ln_eps = 1e-5f},
         "attention=kernel-simt "},
        /* fp8 is refused (312 is not a multiple of 16) */
        {tinybert4_width, "attention=kernel-simt "},
    };
    const bs_precision precs[3] = {BS_PREC_BF16, BS_PREC_FP16, BS_PREC_FP8};
    const int has_fp8 = device_has_fp8();
    for (size_t k = 0; k < sizeof shapes / sizeof shapes[0]; k++) {
        char err[BS_ERRLEN];
        bs_model *m = model_init_random(&shapes[k].cfg, 100 + k, err);
        CHECK(m != NULL);
        if (!m) {
            fprintf(stderr, "  %s\n", err);
            continue;
        }
        bs_rng r = {200 + k};
        bs_test_bump_gains_and_biases(m, &r);
        /* A trained BERT's attention is peaked and its output weighs as much as the residual; at init
         * weights (normal, std 0.02) attention is nearly uniform and small, and a wrong softmax scale
         * would pass unseen. So: Q and K rows scaled to scores of spread ~2 (q.k / sqrt(HS) has
         * spread (0.02 sqrt(C) f)^2 on unit-spread LayerNorm outputs), V and attention-output rows
         * to an attention output of spread ~0.5. */
        const int C = shapes[k].cfg.hidden;
        const float unit = 1.0f / (0.02f * sqrtf((float)C)), fqk = sqrtf(2.0f) * unit, fvo = sqrtf(0.5f) * unit;
        for (int l = 0; l < shapes[k].cfg.layers; l++) {
            bs_layer_weights *w = &m->layer[l];
            for (size_t i = 0; i < (size_t)2 * C * C; i++) w->qkv_w[i] *= fqk;
            for (int i = 0; i < 2 * C; i++) w->qkv_b[i] *= fqk;
            for (size_t i = (size_t)2 * C * C; i < (size_t)3 * C * C; i++) w->qkv_w[i] *= fvo;
            for (size_t i = 0; i < (size_t)C * C; i++) w->ao_w[i] *= fvo;
        }
        for (int p = 0; p < 3; p++) {
            if (precs[p] == BS_PREC_FP8 && !has_fp8) continue; /* the refusal on such GPUs is tested elsewhere */
            check_shape_at(m, precs[p], shapes[k].att);
        }
        model_free(m);
    }
}

/* ---- reduced precisions vs the CPU engine ---- */

/* A head that actually separates these reviews: logit = (w . f - t) / sd along the top principal
 * direction w of the reference features f (N, C), with sd their spread around t, so the margins are
 * the features' real spread. (The golden head on a random encoder's pooler gives nearly one logit
 * for every review: agreement there is trivial. A head trained on these features with the IMDB
 * labels, the notebook's recipe, was tried: it calls every review negative, trivial again.)
 * The threshold t lies in the widest gap between consecutive projections among the middle 40 %
 * of them, as a trained classifier's boundary lies where the classes leave a margin; so 30 to 70 %
 * of the labels are positive. At first t was the median, then the midpoint of the two middle
 * projections. On a random encoder the projections crowd around the median, though: on the
 * emulated device, 300 reviews at fp8 flipped 4 labels (98.7 %, under the 99 % bar) at a mean
 * |logit error| of 0.0056, the same as with batch scales (0.0056, 2 flips) and not far above bf16's
 * 0.0038 (1 flip). The count there measured the crowding, not the precision; the tests now also
 * bound the mean |logit error| itself (review_stats.principal_dlogit).
 * As a ClassificationHead: fc1 = [w; -w] / sd, fc2 = [1, -1], so ReLU(z) - ReLU(-z) = z. */
static bs_head *principal_head(const float *f, int N, int C) {
    double *mu = calloc((size_t)C, sizeof(double)), *w = calloc((size_t)C, sizeof(double));
    double *nw = calloc((size_t)C, sizeof(double)), *z = calloc((size_t)N, sizeof(double));
    for (int s = 0; s < N; s++)
        for (int i = 0; i < C; i++) mu[i] += f[(size_t)s * C + i] / N;
    for (int i = 0; i < C; i++) w[i] = 1.0 / sqrt(C);
    for (int it = 0; it < 100; it++) { /* power iteration on the covariance */
        memset(nw, 0, sizeof(double) * (size_t)C);
        for (int s = 0; s < N; s++) {
            double d = 0;
            for (int i = 0; i < C; i++) d += (f[(size_t)s * C + i] - mu[i]) * w[i];
            for (int i = 0; i < C; i++) nw[i] += d * (f[(size_t)s * C + i] - mu[i]);
        }
        double n2 = 0;
        for (int i = 0; i < C; i++) n2 += nw[i] * nw[i];
        for (int i = 0; i < C; i++) w[i] = n2 > 0 ? nw[i] / sqrt(n2) : w[i];
    }
    for (int s = 0; s < N; s++) {
        z[s] = 0;
        for (int i = 0; i < C; i++) z[s] += f[(size_t)s * C + i] * w[i];
    }
    double *sorted = malloc(sizeof(double) * (size_t)N), sd = 0;
    memcpy(sorted, z, sizeof(double) * (size_t)N);
    for (int i = 1; i < N; i++) /* insertion sort: N is a few hundred */
        for (int j = i; j > 0 && sorted[j] < sorted[j - 1]; j--) {
            double t = sorted[j];
            sorted[j] = sorted[j - 1], sorted[j - 1] = t;
        }
    /* the threshold in the widest gap among the middle 40 % (the two middle projections' midpoint
     * when N is small), never on a projection: a review lying on it would take either label at the
     * slightest difference (one such review was 1 of 300 on the H100 when t was the median) */
    double t = N > 1 ? 0.5 * (sorted[(N - 1) / 2] + sorted[(N + 1) / 2]) : sorted[0], gap = -1;
    for (int i = N * 3 / 10; N >= 10 && i + 1 < N && i + 1 <= N * 7 / 10; i++)
        if (sorted[i + 1] - sorted[i] > gap) gap = sorted[i + 1] - sorted[i], t = 0.5 * (sorted[i] + sorted[i + 1]);
    for (int s = 0; s < N; s++) sd += (z[s] - t) * (z[s] - t);
    sd = sqrt(sd / N);
    if (!(sd > 0)) sd = 1;
    bs_head *h = head_new(C, 2);
    for (int i = 0; i < C; i++) h->fc1_w[i] = (float)(w[i] / sd), h->fc1_w[C + i] = (float)(-w[i] / sd);
    h->fc1_b[0] = (float)(-t / sd), h->fc1_b[1] = (float)(t / sd);
    h->fc2_w[0] = 1, h->fc2_w[1] = -1, h->fc2_b[0] = 0;
    free(mu), free(w), free(nw), free(z), free(sorted);
    return h;
}

typedef struct {
    double min_cos;          /* worst per-vector cosine of pooler, cls and mean */
    double min_cos_hidden;   /* worst per-token cosine of the last hidden state */
    double max_dprob;        /* golden head on pooler: worst |prob - prob_cpu| */
    double agree_golden;     /* golden head on pooler: share of equal labels */
    double agree_principal;  /* principal_head on mean: share of equal labels */
    double principal_dlogit; /* principal_head on mean: mean |logit - logit_cpu| (the projection's error over
                              * the reviews' spread along it) */
} review_stats;

/* Reviews whose label under head h is the same on features a and b; *max_dprob: the worst
 * |prob_a - prob_b|; *mean_dlogit: the mean |logit_a - logit_b| (either may be NULL). */
static int label_agreement(const bs_head *h, const float *a, const float *b, int N, double *max_dprob,
                           double *mean_dlogit) {
    float *pa = falloc((size_t)N), *pb = falloc((size_t)N), *la = falloc((size_t)N), *lb = falloc((size_t)N);
    head_apply(h, a, N, la, pa);
    head_apply(h, b, N, lb, pb);
    int same = 0;
    if (mean_dlogit) *mean_dlogit = 0;
    for (int s = 0; s < N; s++) {
        double d = fabs((double)pa[s] - pb[s]);
        if (max_dprob && !(d <= *max_dprob)) *max_dprob = d;
        if (mean_dlogit) *mean_dlogit += fabs((double)la[s] - lb[s]) / N;
        same += strcmp(head_label(pa[s]), head_label(pb[s])) == 0;
    }
    free(pa), free(pb), free(la), free(lb);
    return same;
}

/* Runs engine e and the CPU engine over the reviews and compares what the head would see. */
static review_stats compare_on_reviews(const bs_model *m, bs_engine *e, bs_engine *cpu, const review_set *rs,
                                       const bs_head *golden) {
    const int C = m->cfg.hidden;
    review_stats st = {.min_cos = 1, .min_cos_hidden = 1};
    int N = 0;
    for (int b = 0; b < rs->n; b++) N += rs->batches[b].B;
    float *all[2][3];
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 3; k++) all[a][k] = falloc((size_t)N * C);
    int n = 0;
    for (int b = 0; b < rs->n; b++) {
        const packed_batch *pb = &rs->batches[b];
        features fg = features_alloc(pb->B, pb->T, C), fc = features_alloc(pb->B, pb->T, C);
        CHECK_INT(run(e, pb->B, pb->ids, pb->cu, &fg), BS_OK);
        CHECK_INT(run(cpu, pb->B, pb->ids, pb->cu, &fc), BS_OK);
        const float *mine[3] = {fg.pooler, fg.cls, fg.mean}, *ref[3] = {fc.pooler, fc.cls, fc.mean};
        for (int k = 0; k < 3; k++) {
            double c = bs_test_min_row_cosine(mine[k], ref[k], pb->B, C);
            if (!(c >= st.min_cos)) st.min_cos = c;
            memcpy(all[0][k] + (size_t)n * C, ref[k], sizeof(float) * (size_t)pb->B * C);
            memcpy(all[1][k] + (size_t)n * C, mine[k], sizeof(float) * (size_t)pb->B * C);
        }
        double ch = bs_test_min_row_cosine(fg.hidden, fc.hidden, pb->T, C);
        if (!(ch >= st.min_cos_hidden)) st.min_cos_hidden = ch;
        n += pb->B;
        features_free(&fg), features_free(&fc);
    }
    st.agree_golden = (double)label_agreement(golden, all[1][0], all[0][0], N, &st.max_dprob, NULL) / N;
    bs_head *ph = principal_head(all[0][2], N, C);
    st.agree_principal = (double)label_agreement(ph, all[1][2], all[0][2], N, NULL, &st.principal_dlogit) / N;
    head_free(ph);
    for (int a = 0; a < 2; a++)
        for (int k = 0; k < 3; k++) free(all[a][k]);
    return st;
}

static void print_stats(const char *what, const review_set *rs, const review_stats *st) {
    int N = 0;
    for (int b = 0; b < rs->n; b++) N += rs->batches[b].B;
    fprintf(stderr,
            "  %s on %d IMDB reviews: min cosine features %.6f hidden %.6f; golden head max |dprob| %.2g, labels "
            "agree %.1f%%; principal head on mean, labels agree %.1f%%, mean |dlogit| %.3g\n",
            what, N, st->min_cos, st->min_cos_hidden, st->max_dprob, 100 * st->agree_golden, 100 * st->agree_principal,
            st->principal_dlogit);
}

static void engine_cuda_bf16_fp16_track_fp32_cpu(void) {
    char err[BS_ERRLEN];
    bs_model *m = load_golden_model();
    CHECK(m != NULL);
    if (!m) return;
    bs_head *h = head_load(bs_test_data("golden/tiny-bert/head.safetensors"), NULL, err);
    CHECK(h != NULL);
    if (!h) return;
    review_set rs = bs_test_imdb_reviews(300, 64);
    bs_engine *cpu = make_engine(m, "cpu", BS_PREC_FP32, 64, 64 * 128, 128);
    const bs_precision precs[2] = {BS_PREC_BF16, BS_PREC_FP16};
    for (int k = 0; k < 2 && cpu; k++) {
        bs_engine *e = make_engine(m, "cuda", precs[k], 64, 64 * 128, 128);
        CHECK(e != NULL);
        if (!e) continue;
        review_stats st = compare_on_reviews(m, e, cpu, &rs, h);
        print_stats(bs_precision_name(precs[k]), &rs, &st);
        CHECK(st.min_cos >= 0.999);
        CHECK(st.min_cos_hidden >= 0.999);
        CHECK_NEAR(st.max_dprob, 0, 5e-3);
        CHECK(st.agree_principal >= 0.99);
        CHECK(st.principal_dlogit <= 0.01); /* emulated: bf16 0.0038, fp16 0.0003 */
        engine_free(e);
    }
    engine_free(cpu);
    review_set_free(&rs);
    head_free(h);
    model_free(m);
}

/* The engine's rule (bs_cc_has_fp8) applied to the current device. */
static int device_has_fp8(void) {
    int dev = 0;
    struct cudaDeviceProp prop;
    cudaGetDevice(&dev);
    cudaGetDeviceProperties(&prop, dev);
    return bs_cc_has_fp8(prop.major, prop.minor);
}

/* For the fp8-only tests: 0 (and says so) on a GPU without fp8, where the refusal is tested elsewhere. */
static int fp8_applicable(void) {
    if (device_has_fp8()) return 1;
    fprintf(stderr, "  no fp8 on this GPU: not applicable\n");
    return 0;
}

/* scales: NULL = the default (static: bounds from the weights), "batch" = each GEMM input's amax in
 * this batch. casts: static scales through the cast passes instead of the producers' own E4M3
 * output (WMMA attention, erf GELU in our kernel, so the FFN-up GEMM writes bf16). qkv_bf16:
 * BERTSTREAM_FP8_QKV=bf16, the QKV GEMM writes bf16 for attention (the default: E4M3). */
static void fp8_tracks_fp32_cpu(const char *scales, int casts, int qkv_bf16) {
    const int batch = scales && !strcmp(scales, "batch");
    char err[BS_ERRLEN];
    const int has_fp8 = device_has_fp8();
    bs_model *m = load_golden_model();
    CHECK(m != NULL);
    if (!m) return;
    bs_engine_opts o = {
        .device = "cuda", .precision = BS_PREC_FP8, .max_seqs = 64, .max_tokens = 64 * 128, .max_seq_len = 128};
    if (scales) setenv("BERTSTREAM_FP8_SCALES", scales, 1);
    if (casts) setenv("BERTSTREAM_ATTENTION", "wmma", 1), setenv("BERTSTREAM_GELU", "erf", 1);
    if (qkv_bf16) setenv("BERTSTREAM_FP8_QKV", "bf16", 1);
    bs_engine *e = engine_new(m, &o, err);
    unsetenv("BERTSTREAM_FP8_SCALES"), unsetenv("BERTSTREAM_ATTENTION"), unsetenv("BERTSTREAM_GELU");
    unsetenv("BERTSTREAM_FP8_QKV");
    if (!has_fp8) {
        CHECK(e == NULL);
        CHECK_CONTAINS(err, "fp8 needs compute capability 8.9 (Ada) or 9.0 (Hopper)");
        engine_free(e);
        model_free(m);
        return;
    }
    CHECK(e != NULL);
    if (!e) {
        fprintf(stderr, "  %s\n", err);
        model_free(m);
        return;
    }
    fprintf(stderr, "  engine: %s\n", engine_describe(e));
    CHECK_CONTAINS(engine_describe(e), batch ? " scales=batch " : " scales=static ");
    CHECK_CONTAINS(engine_describe(e), " accum=fast "); /* the default */
    /* static: the FFN-up GEMM (cuBLASLt's D scale) and the mma attention kernel (where it is the
     * path: cuDNN may be on a newer host) write the next GEMM's E4M3 input themselves, as the
     * LayerNorms do, and the QKV GEMM writes E4M3 for that kernel; with casts, none of them */
    if (casts)
        CHECK_CONTAINS(engine_describe(e), " e4m3-out=layernorm accum=");
    else if (!batch && strstr(engine_describe(e), "attention=kernel-mma "))
        CHECK_CONTAINS(engine_describe(e),
                       qkv_bf16 ? " e4m3-out=layernorm,ff1,attention " : " e4m3-out=layernorm,qkv,ff1,attention ");
    else if (!batch)
        CHECK_CONTAINS(engine_describe(e), " e4m3-out=layernorm,ff1 ");
    bs_head *h = head_load(bs_test_data("golden/tiny-bert/head.safetensors"), NULL, err);
    CHECK(h != NULL);
    bs_engine *cpu = make_engine(m, "cpu", BS_PREC_FP32, 64, 64 * 128, 128);
    if (h && cpu) {
        review_set rs = bs_test_imdb_reviews(300, 64);
        review_stats st = compare_on_reviews(m, e, cpu, &rs, h);
        print_stats(batch      ? "fp8 (batch scales)"
                    : casts    ? "fp8 (static, cast passes)"
                    : qkv_bf16 ? "fp8 (static, bf16 QKV)"
                               : "fp8",
                    &rs, &st);
        CHECK(st.min_cos >= 0.99);
        CHECK(st.agree_golden >= 0.99);
        CHECK(st.agree_principal >= 0.99);
        CHECK(st.principal_dlogit <= 0.02); /* emulated: 0.0056 (static and batch scales) */
        review_set_free(&rs);
    }
    engine_free(cpu);
    head_free(h);
    engine_free(e);
    model_free(m);
}

/* The default: scales bounded from the weights (no amax pass; the LayerNorms, the FFN-up GEMM and
 * the attention kernel write the next GEMM's E4M3 input themselves; the QKV GEMM writes E4M3 and
 * attention reads it). */
static void engine_cuda_fp8_tracks_fp32_cpu_or_is_refused(void) {
    fp8_tracks_fp32_cpu(NULL, 0, 0);
}

/* BERTSTREAM_FP8_QKV=bf16: attention reads the QKV output in bf16 (before 2026-11-27, the default). */
static void engine_cuda_fp8_with_bf16_qkv_tracks_fp32_cpu(void) {
    if (fp8_applicable()) fp8_tracks_fp32_cpu(NULL, 0, 1);
}

/* Static scales where the producers do not write E4M3 themselves: the attention output and the
 * GELU output go through the cast pass (what a host whose cuBLASLt refuses the E4M3 output runs). */
static void engine_cuda_fp8_static_scales_through_the_cast_passes_track_fp32_cpu(void) {
    fp8_tracks_fp32_cpu(NULL, 1, 0);
}

/* BERTSTREAM_FP8_SCALES=batch: the same tolerances with each GEMM input's amax over the batch. */
static void engine_cuda_fp8_batch_scales_track_fp32_cpu(void) {
    fp8_tracks_fp32_cpu("batch", 0, 0);
}

/* fp8's QKV output in E4M3 (the default) against the same engine with it in bf16
 * (BERTSTREAM_FP8_QKV=bf16) on 64 IMDB reviews of the golden model, its V rows times 4^layer:
 * every pooler, CLS, mean and hidden vector within cosine QKV_BAR of the other. The two differ
 * only by the QKV output's rounding (E4M3 at its static scale against bf16), far less than either
 * differs from fp32, so the bar is far above the fp8 bar of 0.99 against the CPU. It is
 * there for a scale wired to the wrong layer or GEMM (the QKV GEMM's D scale, attention's input
 * scale): on the golden model as it is, the layers' and GEMMs' bounds are close and both such
 * bugs passed even this test (measured 0.99998); with V scaled per layer they measured 0.87 and
 * 0.98 (the correct wiring: 0.99997). */
#define QKV_BAR 0.9999
static void engine_cuda_fp8_e4m3_qkv_stays_near_bf16_qkv(void) {
    if (!fp8_applicable()) return;
    bs_model *m = load_golden_model();
    CHECK(m != NULL);
    if (!m) return;
    const int C = m->cfg.hidden;
    for (int l = 0; l < m->cfg.layers; l++) { /* V rows x 4^l: each layer's QKV scale its own, unlike its others */
        const float f = (float)(1 << (2 * l));
        for (size_t i = (size_t)2 * C * C; i < (size_t)3 * C * C; i++) m->layer[l].qkv_w[i] *= f;
        for (int i = 2 * C; i < 3 * C; i++) m->layer[l].qkv_b[i] *= f;
    }
    review_set rs = bs_test_imdb_reviews(64, 64);
    bs_engine *e[2] = {make_engine(m, "cuda", BS_PREC_FP8, 64, 64 * 128, 128), NULL};
    setenv("BERTSTREAM_FP8_QKV", "bf16", 1);
    e[1] = make_engine(m, "cuda", BS_PREC_FP8, 64, 64 * 128, 128);
    unsetenv("BERTSTREAM_FP8_QKV");
    CHECK(e[0] && e[1]);
    CHECK_INT(rs.n, 1);
    if (e[0] && e[1] && rs.n == 1) {
        CHECK_CONTAINS(engine_describe(e[0]), "e4m3-out=layernorm,qkv,");
        CHECK(strstr(engine_describe(e[1]), ",qkv,") == NULL);
        const packed_batch *pb = &rs.batches[0];
        features f[2] = {features_alloc(pb->B, pb->T, C), features_alloc(pb->B, pb->T, C)};
        for (int k = 0; k < 2; k++) CHECK_INT(run(e[k], pb->B, pb->ids, pb->cu, &f[k]), BS_OK);
        const double c[4] = {bs_test_min_row_cosine(f[0].pooler, f[1].pooler, pb->B, C),
                             bs_test_min_row_cosine(f[0].cls, f[1].cls, pb->B, C),
                             bs_test_min_row_cosine(f[0].mean, f[1].mean, pb->B, C),
                             bs_test_min_row_cosine(f[0].hidden, f[1].hidden, pb->T, C)};
        fprintf(stderr,
                "  fp8 E4M3 QKV against bf16 QKV, %d reviews: min cosine pooler %.6f cls %.6f mean %.6f hidden %.6f\n",
                pb->B, c[0], c[1], c[2], c[3]);
        for (int k = 0; k < 4; k++) CHECK(c[k] >= QKV_BAR);
        features_free(&f[0]), features_free(&f[1]);
    }
    engine_free(e[0]), engine_free(e[1]);
    review_set_free(&rs);
    model_free(m);
}

/* Static scales (the default) make a sequence's features independent of its batch-mates: the
 * golden batch with every sequence but the first given other tokens of the same lengths (same
 * bucket, same GEMM plans) gives the first sequence's features bit for bit. With batch scales the
 * per-tensor amax couples the rows. Also: a bad BERTSTREAM_FP8_SCALES, BERTSTREAM_FP8_FAST_ACCUM or
 * BERTSTREAM_FP8_QKV is a one-line error. */
static void engine_cuda_fp8_static_scales_do_not_depend_on_batch_mates(void) {
    char err[BS_ERRLEN];
    if (!fp8_applicable()) return;
    golden gd;
    if (!golden_open(&gd)) return;
    bs_model *m = gd.m;
    packed_batch pb = gd.pb;
    const int C = m->cfg.hidden, n0 = pb.cu[1];
    setenv("BERTSTREAM_FP8_SCALES", "dynamic", 1);
    bs_engine_opts o = {.device = "cuda", .precision = BS_PREC_FP8, .max_seqs = 4, .max_tokens = 64, .max_seq_len = 16};
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_FP8_SCALES='dynamic': expected batch or static");
    unsetenv("BERTSTREAM_FP8_SCALES");
    setenv("BERTSTREAM_FP8_FAST_ACCUM", "yes", 1);
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_FP8_FAST_ACCUM='yes': expected 0 or 1");
    unsetenv("BERTSTREAM_FP8_FAST_ACCUM");
    setenv("BERTSTREAM_FP8_QKV", "f16", 1);
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_FP8_QKV='f16': expected e4m3 or bf16");
    unsetenv("BERTSTREAM_FP8_QKV");
    bs_engine *e = make_engine(m, "cuda", BS_PREC_FP8, pb.B, pb.T, pb.L);
    CHECK(e != NULL);
    CHECK(pb.B >= 2);
    if (e && pb.B >= 2) {
        int32_t *ids2 = malloc(sizeof(int32_t) * (size_t)pb.T);
        for (int t = 0; t < pb.T; t++) /* other tokens after the first sequence, [CLS]/[SEP] kept */
            ids2[t] = t < n0 || pb.ids[t] == 101 || pb.ids[t] == 102 ? pb.ids[t] : 1000 + (pb.ids[t] * 7 + t) % 20000;
        features a = features_alloc(pb.B, pb.T, C), b = features_alloc(pb.B, pb.T, C);
        CHECK_INT(run(e, pb.B, pb.ids, pb.cu, &a), BS_OK); /* the shape's first batch runs eagerly */
        CHECK_INT(run(e, pb.B, pb.ids, pb.cu, &a), BS_OK); /* captured: a and b both come from the graph */
        CHECK_INT(run(e, pb.B, ids2, pb.cu, &b), BS_OK);
        const double d[4] = {
            bs_test_max_abs_diff(a.pooler, b.pooler, (size_t)C), bs_test_max_abs_diff(a.mean, b.mean, (size_t)C),
            bs_test_max_abs_diff(a.cls, b.cls, (size_t)C), bs_test_max_abs_diff(a.hidden, b.hidden, (size_t)n0 * C)};
        const double other = bs_test_max_abs_diff(a.pooler + C, b.pooler + C, (size_t)C);
        fprintf(stderr,
                "  fp8 static: sequence 0 with other batch-mates: max |diff| %.3g %.3g %.3g %.3g (sequence 1: %.3g)\n",
                d[0], d[1], d[2], d[3], other);
        for (int i = 0; i < 4; i++) CHECK(d[i] == 0);
        CHECK(other > 0); /* the changed sequence did change */
        features_free(&a), features_free(&b);
        free(ids2);
    }
    engine_free(e);
    golden_close(&gd);
}

/* Static scales where the LayerNorms write the E4M3 copy themselves (C a multiple of 256: the
 * 16-byte path; the golden model's C = 128 takes the cast pass): a random model of hidden 256, 4
 * heads of 64, against the CPU engine at fp32 and the batch-scale fp8 engine. */
static void engine_cuda_fp8_static_scales_on_the_fused_layernorm_shape(void) {
    char err[BS_ERRLEN];
    if (!fp8_applicable()) return;
    bs_bert_config cfg = {.vocab_size = 1000,
                          .hidden = 256,
                          .layers = 2,
                          .heads = 4,
                          .intermediate = 512,
                          .max_positions = 128,
                          .type_vocab_size = 2,
                          .ln_eps = 1e-12f};
    bs_model *m = model_init_random(&cfg, 99, err);
    CHECK(m != NULL);
    if (!m) return;
    bs_rng r = {100};
    bs_test_bump_gains_and_biases(m, &r);
    enum { B = 6 };
    const int lens[B] = {1, 77, 13, 2, 40, 128};
    int32_t cu[B + 1] = {0};
    for (int s = 0; s < B; s++) cu[s + 1] = cu[s] + lens[s];
    const int T = cu[B], C = cfg.hidden;
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    for (int t = 0; t < T; t++) ids[t] = (int32_t)(bs_rng_next(&r) % (uint64_t)cfg.vocab_size);
    bs_engine *es = make_engine(m, "cuda", BS_PREC_FP8, B, T, 128); /* static: the default */
    setenv("BERTSTREAM_FP8_SCALES", "batch", 1);
    bs_engine *eb = make_engine(m, "cuda", BS_PREC_FP8, B, T, 128);
    unsetenv("BERTSTREAM_FP8_SCALES");
    bs_engine *ec = make_engine(m, "cpu", BS_PREC_FP32, B, T, 128);
    CHECK(es && eb && ec);
    if (es && eb && ec) {
        features fs = features_alloc(B, T, C), fb = features_alloc(B, T, C), fc = features_alloc(B, T, C);
        CHECK_INT(run(es, B, ids, cu, &fs), BS_OK);
        CHECK_INT(run(eb, B, ids, cu, &fb), BS_OK);
        CHECK_INT(run(ec, B, ids, cu, &fc), BS_OK);
        const double cs[3] = {bs_test_min_row_cosine(fs.pooler, fc.pooler, B, C),
                              bs_test_min_row_cosine(fs.mean, fc.mean, B, C),
                              bs_test_min_row_cosine(fs.hidden, fc.hidden, T, C)};
        const double cb[3] = {bs_test_min_row_cosine(fb.pooler, fc.pooler, B, C),
                              bs_test_min_row_cosine(fb.mean, fc.mean, B, C),
                              bs_test_min_row_cosine(fb.hidden, fc.hidden, T, C)};
        fprintf(stderr,
                "  C=256 fp8 vs CPU fp32, min cosine pooler/mean/hidden: static %.5f %.5f %.5f, batch %.5f %.5f %.5f\n",
                cs[0], cs[1], cs[2], cb[0], cb[1], cb[2]);
        for (int i = 0; i < 3; i++) CHECK(cs[i] >= 0.99 && cb[i] >= 0.99);
        features_free(&fs), features_free(&fb), features_free(&fc);
    }
    engine_free(es), engine_free(eb), engine_free(ec);
    free(ids);
    model_free(m);
}

/* Under fp8 with batch scales each GEMM input's scale is the max over every row of the bucket,
 * padding rows included: those must not hold what an earlier, longer batch left there, or a
 * review's score would depend on what was scored before it. A 5-token batch (16-row bucket), then
 * the whole golden batch, then the 5-token batch again: bit-identical features, with batch scales
 * and with the default (static). */
static void fp8_result_does_not_depend_on_the_previous_batch(const char *scales) {
    if (!fp8_applicable()) return;
    golden gd;
    if (!golden_open(&gd)) return;
    bs_model *m = gd.m;
    packed_batch pb = gd.pb;
    const int C = m->cfg.hidden;
    if (scales) setenv("BERTSTREAM_FP8_SCALES", scales, 1);
    bs_engine *e = make_engine(m, "cuda", BS_PREC_FP8, pb.B, pb.T, pb.L);
    unsetenv("BERTSTREAM_FP8_SCALES");
    CHECK(e != NULL);
    CHECK(pb.T > 16 && pb.cu[1] >= 5);
    if (e && pb.T > 16 && pb.cu[1] >= 5) {
        const int32_t small_cu[2] = {0, 5};
        features a = features_alloc(1, 5, C), b = features_alloc(1, 5, C), big = features_alloc(pb.B, pb.T, C);
        CHECK_INT(run(e, 1, pb.ids, small_cu, &a), BS_OK);   /* eager: the shape's first batch */
        CHECK_INT(run(e, 1, pb.ids, small_cu, &a), BS_OK);   /* the graph, rows 5..15 never written */
        CHECK_INT(run(e, pb.B, pb.ids, pb.cu, &big), BS_OK); /* writes rows up to pb.T */
        CHECK_INT(run(e, 1, pb.ids, small_cu, &b), BS_OK);   /* the graph again */
        const double d[4] = {
            bs_test_max_abs_diff(a.pooler, b.pooler, (size_t)C), bs_test_max_abs_diff(a.mean, b.mean, (size_t)C),
            bs_test_max_abs_diff(a.cls, b.cls, (size_t)C), bs_test_max_abs_diff(a.hidden, b.hidden, (size_t)5 * C)};
        fprintf(stderr,
                "  fp8 (%s scales) 5-token batch before/after a %d-token batch: max |diff| %.3g %.3g %.3g %.3g\n",
                scales ? scales : "static", pb.T, d[0], d[1], d[2], d[3]);
        for (int i = 0; i < 4; i++) CHECK(d[i] == 0);
        /* again with the pooler alone, so the last layer runs on the CLS rows, on a one-layer copy of
         * the model: its last layer is its first, so the compacted rows past the batch's slots hold
         * whatever the batch before left there unless they are zeroed (with more layers, this
         * batch's earlier layers have written them). Batch scales see every row. */
        bs_bert_config c1 = m->cfg;
        c1.layers = 1;
        char err[BS_ERRLEN];
        bs_model *m1 = model_init_random(&c1, 5, err);
        if (scales) setenv("BERTSTREAM_FP8_SCALES", scales, 1);
        bs_engine *e1 = m1 ? make_engine(m1, "cuda", BS_PREC_FP8, pb.B, pb.T, pb.L) : NULL;
        unsetenv("BERTSTREAM_FP8_SCALES");
        CHECK(e1 != NULL);
        if (e1) {
            float *pa = falloc((size_t)C), *pz = falloc((size_t)C);
            const bs_batch sb = {.n_seq = 1, .ids = pb.ids, .cu_seqlens = small_cu};
            bs_outputs oa = {.pooler = pa}, oz = {.pooler = pz};
            CHECK(engine_cls_only(e1, &oa));
            CHECK_INT(run(e1, pb.B, pb.ids, pb.cu, &big), BS_OK);
            CHECK_INT(engine_forward(e1, &sb, &oa, err), BS_OK);    /* eager */
            CHECK_INT(engine_forward(e1, &sb, &oa, err), BS_OK);    /* the graph */
            int32_t *ids2 = malloc(sizeof(int32_t) * (size_t)pb.T); /* other tokens: other leftovers */
            for (int t = 0; t < pb.T; t++) ids2[t] = (int32_t)((pb.ids[t] * 7 + 3) % m->cfg.vocab_size);
            CHECK_INT(run(e1, pb.B, ids2, pb.cu, &big), BS_OK);
            CHECK_INT(engine_forward(e1, &sb, &oz, err), BS_OK);
            free(ids2);
            const double dc = bs_test_max_abs_diff(pa, pz, (size_t)C);
            fprintf(stderr, "  fp8 (%s scales) one layer, pooler alone (CLS rows), before/after: max |diff| %.3g\n",
                    scales ? scales : "static", dc);
            CHECK(dc == 0);
            free(pa), free(pz);
        }
        engine_free(e1);
        model_free(m1);
        features_free(&a), features_free(&b), features_free(&big);
    }
    engine_free(e);
    golden_close(&gd);
}

static void engine_cuda_fp8_result_does_not_depend_on_the_previous_batch(void) {
    fp8_result_does_not_depend_on_the_previous_batch("batch");
    fp8_result_does_not_depend_on_the_previous_batch(NULL);
}

/* ---- attention paths, description, errors ---- */

static void engine_cuda_attention_paths_agree_and_are_described(void) {
    char err[BS_ERRLEN];
    golden gd;
    if (!golden_open(&gd)) return;
    bs_model *m = gd.m;
    packed_batch pb = gd.pb;
    const int C = m->cfg.hidden;
    setenv("BERTSTREAM_ATTENTION", "kernel", 1);
    bs_engine *ek = make_engine(m, "cuda", BS_PREC_BF16, pb.B, pb.T, pb.L);
    unsetenv("BERTSTREAM_ATTENTION");
    bs_engine *ed = make_engine(m, "cuda:0", BS_PREC_AUTO, pb.B, pb.T, pb.L); /* auto = bf16 on CUDA */
    bs_engine *e32 = make_engine(m, "cuda", BS_PREC_FP32, pb.B, pb.T, pb.L);
    CHECK(ek && ed && e32);
    int major = 0;
    cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, 0);
    if (ek && ed && e32) {
        CHECK(strncmp(engine_describe(ed), "cuda:0 ", 7) == 0);
        CHECK_CONTAINS(engine_describe(ed), " bf16 attention=");
        CHECK_INT(engine_precision(ed), BS_PREC_BF16);
        /* head size 64: our fastest kernel on Ampere and later is the mma one (it passed its self-check) */
        CHECK_CONTAINS(engine_describe(ek), major >= 8 ? "attention=kernel-mma" : "attention=kernel-simt");
        CHECK_CONTAINS(engine_describe(e32), "attention=kernel-simt"); /* cuDNN has no fp32 SDPA */
        CHECK_CONTAINS(engine_describe(e32), "gelu=erf");
        features fk = features_alloc(pb.B, pb.T, C), fd = features_alloc(pb.B, pb.T, C);
        CHECK_INT(run(ek, pb.B, pb.ids, pb.cu, &fk), BS_OK);
        CHECK_INT(run(ed, pb.B, pb.ids, pb.cu, &fd), BS_OK);
        double c = bs_test_min_row_cosine(fk.pooler, fd.pooler, pb.B, C),
               ch = bs_test_min_row_cosine(fk.hidden, fd.hidden, pb.T, C);
        fprintf(stderr, "  kernel vs default attention (%s): min cosine pooler %.6f hidden %.6f\n",
                strstr(engine_describe(ed), "attention="), c, ch);
        CHECK(c >= 0.9999);
        CHECK(ch >= 0.999);
        /* each of our kernels, named, gives the same features as the default path */
        const char *names[3] = {"mma", "wmma", "simt"};
        for (int i = 0; i < 3; i++) {
            setenv("BERTSTREAM_ATTENTION", names[i], 1);
            bs_engine *en = make_engine(m, "cuda", BS_PREC_BF16, pb.B, pb.T, pb.L);
            unsetenv("BERTSTREAM_ATTENTION");
            if (major < 8 && i < 2) { /* the tensor-core kernels are refused before Ampere */
                CHECK(en == NULL);
                continue;
            }
            CHECK(en != NULL);
            if (!en) continue;
            char want[32];
            snprintf(want, sizeof want, "attention=kernel-%s ", names[i]);
            CHECK_CONTAINS(engine_describe(en), want);
            features fn = features_alloc(pb.B, pb.T, C);
            CHECK_INT(run(en, pb.B, pb.ids, pb.cu, &fn), BS_OK);
            double cn = bs_test_min_row_cosine(fn.pooler, fd.pooler, pb.B, C),
                   chn = bs_test_min_row_cosine(fn.hidden, fd.hidden, pb.T, C);
            fprintf(stderr, "  attention=%s vs default: min cosine pooler %.6f hidden %.6f\n", names[i], cn, chn);
            CHECK(cn >= 0.9999);
            CHECK(chn >= 0.999);
            features_free(&fn);
            engine_free(en);
        }
        features_free(&fk), features_free(&fd);
    }
    engine_free(ek), engine_free(ed), engine_free(e32);

    /* one-line errors */
    setenv("BERTSTREAM_ATTENTION", "fast", 1);
    bs_engine_opts o = {
        .device = "cuda", .precision = BS_PREC_BF16, .max_seqs = 4, .max_tokens = 64, .max_seq_len = 16};
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_ATTENTION='fast': expected auto, kernel, cudnn, mma, wmma or simt");
    setenv("BERTSTREAM_ATTENTION", "mma", 1); /* fp32 has no tensor-core attention */
    o.precision = BS_PREC_FP32;
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_ATTENTION=mma: that kernel does not run f32 attention with head size 64 on this GPU");
    o.precision = BS_PREC_BF16;
    unsetenv("BERTSTREAM_ATTENTION");
    o.device = "cuda:99";
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_CONTAINS(err, "CUDA device 99 does not exist");
    o.device = "cuda:x";
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "unknown CUDA device 'cuda:x' (cuda, cuda:N)");
    golden_close(&gd);
}

/* ---- bias and residual: in the AO and FF2 GEMMs (C, beta 1; the default) or in the LayerNorms ---- */

/* The two paths give the same features within rounding on the golden batch: fp32 within 2e-5,
 * bf16 and fp8 by cosine (the GEMM path rounds the sum to the activation type before the
 * LayerNorm, as PyTorch does; the other sums in fp32). The description says which path ran: the
 * GEMM at fp32 and bf16, where cuBLASLt has always offered a bias epilogue with C; fp8 may fall
 * back to the LayerNorm (it says so in its log). A bad value is a one-line error. */
static void engine_cuda_residual_in_the_gemm_matches_the_layernorm_path(void) {
    char err[BS_ERRLEN];
    golden gd;
    if (!golden_open(&gd)) return;
    /* the golden model's biases are all zero (Hugging Face's init): give the two GEMMs' biases
     * values, so that a bias dropped or added twice shows */
    bs_rng r = {20261127};
    for (int l = 0; l < gd.m->cfg.layers; l++)
        for (int k = 0; k < gd.m->cfg.hidden; k++) {
            gd.m->layer[l].ao_b[k] = 0.1f * (float)bs_rng_normal(&r);
            gd.m->layer[l].ff2_b[k] = 0.1f * (float)bs_rng_normal(&r);
        }
    const bs_model *m = gd.m;
    const packed_batch pb = gd.pb;
    const int C = m->cfg.hidden;
    const bs_precision precs[3] = {BS_PREC_FP32, BS_PREC_BF16, BS_PREC_FP8};
    for (int k = 0; k < 3; k++) {
        if (precs[k] == BS_PREC_FP8 && !fp8_applicable()) continue;
        bs_engine *eg = make_engine(m, "cuda", precs[k], pb.B, pb.T, pb.L);
        setenv("BERTSTREAM_RESIDUAL", "layernorm", 1);
        bs_engine *el = make_engine(m, "cuda", precs[k], pb.B, pb.T, pb.L);
        unsetenv("BERTSTREAM_RESIDUAL");
        CHECK(eg && el);
        if (!eg || !el) {
            engine_free(eg), engine_free(el);
            continue;
        }
        if (precs[k] != BS_PREC_FP8) CHECK_CONTAINS(engine_describe(eg), " residual=gemm ");
        CHECK_CONTAINS(engine_describe(el), " residual=layernorm ");
        features fg = features_alloc(pb.B, pb.T, C), fl = features_alloc(pb.B, pb.T, C);
        CHECK_INT(run(eg, pb.B, pb.ids, pb.cu, &fg), BS_OK);
        CHECK_INT(run(el, pb.B, pb.ids, pb.cu, &fl), BS_OK);
        const double dp = bs_test_max_abs_diff(fg.pooler, fl.pooler, (size_t)pb.B * C),
                     dh = bs_test_max_abs_diff(fg.hidden, fl.hidden, (size_t)pb.T * C),
                     cp = bs_test_min_row_cosine(fg.pooler, fl.pooler, pb.B, C),
                     ch = bs_test_min_row_cosine(fg.hidden, fl.hidden, pb.T, C);
        fprintf(stderr,
                "  %s residual in the GEMM vs the LayerNorm: pooler max |diff| %.3g cosine %.7f, hidden %.3g %.7f\n",
                bs_precision_name(precs[k]), dp, cp, dh, ch);
        if (precs[k] == BS_PREC_FP32) {
            CHECK_NEAR(dp, 0, 2e-5);
            CHECK_NEAR(dh, 0, 2e-5);
        } else {
            CHECK(cp >= (precs[k] == BS_PREC_FP8 ? 0.999 : 0.9999));
            CHECK(ch >= (precs[k] == BS_PREC_FP8 ? 0.99 : 0.999));
        }
        features_free(&fg), features_free(&fl);
        engine_free(eg), engine_free(el);
    }
    setenv("BERTSTREAM_RESIDUAL", "kernel", 1);
    bs_engine_opts o = {
        .device = "cuda", .precision = BS_PREC_BF16, .max_seqs = 4, .max_tokens = 64, .max_seq_len = 16};
    CHECK(engine_new(m, &o, err) == NULL);
    CHECK_STR(err, "BERTSTREAM_RESIDUAL='kernel': expected gemm or layernorm");
    unsetenv("BERTSTREAM_RESIDUAL");
    golden_close(&gd);
}

/* ---- the last layer on the CLS rows ---- */

/* pooler and cls alone (engine_cls_only): the last layer runs on the CLS rows (B instead of T
 * rows after its attention), having passed its start-up self-check. At every precision it must
 * meet the same bars against the CPU's fp32 full pass as the full pass does, stay within rounding
 * of the engine's own full pass, and give the same bytes eagerly, when its graph is captured and
 * when it is replayed (and the full pass run after it, by then captured, the same bytes as its
 * first run: no graph of one mode serves the other); at fp32 it must meet the golden pooler and cls. 300 IMDB reviews
 * in batches of up to 64 (ragged, with padding slots). */
static void engine_cuda_last_layer_on_cls_rows_matches_the_full_pass(void) {
    char err[BS_ERRLEN];
    golden gd;
    if (!golden_open(&gd)) return;
    const bs_model *m = gd.m;
    const int C = m->cfg.hidden;
    bs_head *h = head_load(bs_test_data("golden/tiny-bert/head.safetensors"), NULL, err);
    CHECK(h != NULL);
    review_set rs = bs_test_imdb_reviews(300, 64);
    bs_engine *cpu = make_engine(m, "cpu", BS_PREC_FP32, 64, 64 * 128, 128);
    const bs_precision precs[4] = {BS_PREC_FP32, BS_PREC_BF16, BS_PREC_FP16, BS_PREC_FP8};
    for (int k = 0; k < 4 && cpu && h; k++) {
        if (precs[k] == BS_PREC_FP8 && !device_has_fp8()) continue;
        bs_engine *e = make_engine(m, "cuda", precs[k], 64, 64 * 128, 128);
        CHECK(e != NULL);
        if (!e) continue;
        CHECK(strstr(engine_describe(e), "cls check failed") == NULL); /* its start-up self-check passed */
        double min_cos_own = 1, min_cos_cpu = 1, max_dprob = 0, max_diff = 0;
        int same = 0, N = 0, replay_bad = 0;
        for (int b = 0; b < rs.n; b++) {
            const packed_batch *pb = &rs.batches[b];
            features full = features_alloc(pb->B, pb->T, C), ref = features_alloc(pb->B, pb->T, C);
            CHECK_INT(run(e, pb->B, pb->ids, pb->cu, &full), BS_OK);
            CHECK_INT(run(cpu, pb->B, pb->ids, pb->cu, &ref), BS_OK);
            float *pool[3], *cls[3];
            for (int r = 0; r < 3; r++) { /* eager, capture, replay */
                pool[r] = falloc((size_t)pb->B * C), cls[r] = falloc((size_t)pb->B * C);
                bs_batch bb = {.n_seq = pb->B, .ids = pb->ids, .cu_seqlens = pb->cu};
                bs_outputs o = {.pooler = pool[r], .cls = cls[r]};
                CHECK(engine_cls_only(e, &o));
                CHECK_INT(engine_forward(e, &bb, &o, err), BS_OK);
            }
            for (int r = 1; r < 3; r++)
                replay_bad += memcmp(pool[r], pool[0], sizeof(float) * (size_t)pb->B * C) != 0 ||
                              memcmp(cls[r], cls[0], sizeof(float) * (size_t)pb->B * C) != 0;
            { /* the full pass again, now that this shape has a CLS-rows graph: its own pass (captured
               * this time), never that graph, so every feature as the first time, bit for bit */
                features again = features_alloc(pb->B, pb->T, C);
                CHECK_INT(run(e, pb->B, pb->ids, pb->cu, &again), BS_OK);
                const size_t BC = sizeof(float) * (size_t)pb->B * C;
                replay_bad += memcmp(again.pooler, full.pooler, BC) != 0 || memcmp(again.cls, full.cls, BC) != 0 ||
                              memcmp(again.mean, full.mean, BC) != 0 ||
                              memcmp(again.hidden, full.hidden, sizeof(float) * (size_t)pb->T * C) != 0;
                features_free(&again);
            }
            const double co = fmin(bs_test_min_row_cosine(pool[0], full.pooler, pb->B, C),
                                   bs_test_min_row_cosine(cls[0], full.cls, pb->B, C));
            const double cc = fmin(bs_test_min_row_cosine(pool[0], ref.pooler, pb->B, C),
                                   bs_test_min_row_cosine(cls[0], ref.cls, pb->B, C));
            min_cos_own = fmin(min_cos_own, co), min_cos_cpu = fmin(min_cos_cpu, cc);
            max_diff = fmax(max_diff, bs_test_max_abs_diff(pool[0], ref.pooler, (size_t)pb->B * C));
            same += label_agreement(h, pool[0], ref.pooler, pb->B, &max_dprob, NULL);
            N += pb->B;
            for (int r = 0; r < 3; r++) free(pool[r]), free(cls[r]);
            features_free(&full), features_free(&ref);
        }
        fprintf(stderr,
                "  %s, last layer on CLS rows, %d reviews: min cosine to the full pass %.6f, to the CPU %.6f; max "
                "|diff| pooler %.3g; golden head max |dprob| %.2g, labels agree %.1f%%; eager/capture/replay "
                "mismatches %d\n",
                bs_precision_name(precs[k]), N, min_cos_own, min_cos_cpu, max_diff, max_dprob, 100.0 * same / N,
                replay_bad);
        CHECK_INT(replay_bad, 0);
        if (precs[k] == BS_PREC_FP32) {
            CHECK_NEAR(max_diff, 0, TOL);
        } else if (precs[k] == BS_PREC_FP8) {
            CHECK(min_cos_cpu >= 0.99);
            CHECK(same >= N * 99 / 100);
            /* static scales (the default): both passes quantise with the same scales, so they differ
             * by summation order and the odd E4M3 rounding step only (measured 0.999995 on the
             * emulated device; the CLS attention writing E4M3 at the FFN-up input's scale instead
             * of the AO input's gave 0.99958) */
            CHECK(min_cos_own >= 0.9999);
        } else {
            CHECK(min_cos_own >= 0.9999);
            CHECK(min_cos_cpu >= 0.999);
            CHECK_NEAR(max_dprob, 0, 5e-3);
        }
        if (precs[k] == BS_PREC_FP32) { /* and the golden batch */
            const packed_batch pb = gd.pb;
            float *pool = falloc((size_t)pb.B * C), *cls = falloc((size_t)pb.B * C);
            bs_batch bb = {.n_seq = pb.B, .ids = pb.ids, .cu_seqlens = pb.cu};
            bs_outputs o = {.pooler = pool, .cls = cls};
            CHECK_INT(engine_forward(e, &bb, &o, err), BS_OK);
            float *gp = bs_test_f32(gd.g, "pooler_output", -1), *gc = bs_test_f32(gd.g, "cls", -1);
            CHECK_NEAR(bs_test_max_abs_diff(pool, gp, (size_t)pb.B * C), 0, TOL);
            CHECK_NEAR(bs_test_max_abs_diff(cls, gc, (size_t)pb.B * C), 0, TOL);
            free(pool), free(cls), free(gp), free(gc);
        }
        { /* 37 one-token sequences, every row a CLS row: 40 sequence slots, the last layer on 48 rows
           * (cls_rows(40), all of Tb); against the full pass */
            enum { N1 = 37 };
            int32_t ids1[N1], cu1[N1 + 1];
            for (int s = 0; s <= N1; s++) cu1[s] = s;
            for (int s = 0; s < N1; s++) ids1[s] = (int32_t)(1000 + 37 * s) % m->cfg.vocab_size;
            float *full = falloc((size_t)N1 * C), *mean = falloc((size_t)N1 * C), *pool = falloc((size_t)N1 * C);
            bs_batch bb = {.n_seq = N1, .ids = ids1, .cu_seqlens = cu1};
            bs_outputs of = {.pooler = full, .mean = mean}, oc = {.pooler = pool};
            CHECK_INT(engine_forward(e, &bb, &of, err), BS_OK);
            CHECK_INT(engine_forward(e, &bb, &oc, err), BS_OK);
            const double c1 = bs_test_min_row_cosine(pool, full, N1, C);
            fprintf(stderr, "  %s, 37 one-token sequences: min pooler cosine to the full pass %.6f\n",
                    bs_precision_name(precs[k]), c1);
            CHECK(c1 >= (precs[k] == BS_PREC_FP8 ? 0.99 : 0.9999));
            free(full), free(mean), free(pool);
        }
        engine_free(e);
    }
    engine_free(cpu);
    review_set_free(&rs);
    head_free(h);
    golden_close(&gd);
}

/* ---- memory ---- */

/* bench --skip (engine.h): the parts left out leave the lanes' activations as the engine filled them
 * when skip was set, random finite values, not zeros, so the parts that run see data like a real
 * pass's (tensor cores on zeros draw less power and run at higher clocks). With the GEMMs skipped,
 * every LayerNorm reads a random tmp: the pooled features are finite and differ between sequences,
 * the last two included, whose rows no start-up check wrote (zeros would give both LN(0) = beta, the
 * same features). The description says skip=. */
static void engine_cuda_skip_runs_on_random_activations(void) {
    char err[BS_ERRLEN];
    bs_bert_config cfg;
    CHECK_INT(bert_config_preset("tiny", &cfg, err), BS_OK);
    bs_model *m = model_init_random(&cfg, 5, err);
    CHECK(m != NULL);
    if (!m) return;
    enum { B = 16, L = 32 }; /* more rows than the start-up checks' batches wrote before skip was set */
    int32_t ids[B * L], cu[B + 1];
    bs_rng r = {11};
    cu[0] = 0;
    for (int s = 0; s < B; s++) {
        cu[s + 1] = cu[s] + L;
        for (int t = cu[s]; t < cu[s + 1]; t++) ids[t] = (int32_t)(bs_rng_next(&r) % (uint64_t)cfg.vocab_size);
    }
    const bs_precision precs[] = {BS_PREC_FP32, BS_PREC_BF16, BS_PREC_FP8};
    for (int k = 0; k < 3; k++) {
        bs_engine_opts o = {.device = "cuda",
                            .precision = precs[k],
                            .max_seqs = B,
                            .max_tokens = B * L,
                            .max_seq_len = L,
                            .skip = BS_SKIP_GEMM};
        bs_engine *e = engine_new(m, &o, err);
        if (!e && precs[k] == BS_PREC_FP8 && strstr(err, "fp8 needs")) continue; /* a GPU without fp8 */
        CHECK(e != NULL);
        if (!e) {
            fprintf(stderr, "  %s: %s\n", bs_precision_name(precs[k]), err);
            continue;
        }
        CHECK(strstr(engine_describe(e), " skip=gemm ") != NULL);
        float *pool = falloc((size_t)B * cfg.hidden);
        bs_batch b = {.n_seq = B, .ids = ids, .cu_seqlens = cu};
        bs_outputs out = {.pooler = pool};
        CHECK_INT(engine_forward(e, &b, &out, err), BS_OK);
        int finite = 1;
        double diff = 0;
        for (int i = 0; i < B * cfg.hidden; i++) finite &= isfinite(pool[i]) && fabsf(pool[i]) <= 1.0f;
        const float *last = pool + (size_t)(B - 1) * cfg.hidden;
        for (int i = 0; i < cfg.hidden; i++) diff = fmax(diff, fabs(last[i] - last[i - cfg.hidden]));
        fprintf(stderr, "  %s, GEMMs skipped: features finite %d, the last two sequences differ by up to %.3g\n",
                bs_precision_name(precs[k]), finite, diff);
        CHECK(finite);
        CHECK(diff > 1e-3);
        free(pool);
        engine_free(e);
    }
    model_free(m);
}

static void engine_cuda_bert_base_bf16_fits_in_2gib_at_256x128(void) {
    char err[BS_ERRLEN];
    bs_bert_config cfg;
    CHECK_INT(bert_config_preset("base", &cfg, err), BS_OK);
    bs_model *m = model_init_random(&cfg, 1, err);
    CHECK(m != NULL);
    if (!m) return;
    size_t free0 = 0, free1 = 0, total = 0;
    cudaFree(0); /* the context exists before the baseline */
    cudaMemGetInfo(&free0, &total);
    enum { B = 256, L = 128 };
    bs_engine *e = make_engine(m, "cuda", BS_PREC_BF16, B, B * L, L);
    CHECK(e != NULL);
    if (e) {
        int32_t *ids = malloc(sizeof(int32_t) * B * L), cu[B + 1];
        bs_rng r = {3};
        cu[0] = 0;
        for (int s = 0; s < B; s++) {
            cu[s + 1] = cu[s] + L;
            for (int t = cu[s]; t < cu[s + 1]; t++) ids[t] = 1000 + (int32_t)(bs_rng_next(&r) % 20000u);
        }
        float *pool = falloc((size_t)B * cfg.hidden);
        bs_batch b = {.n_seq = B, .ids = ids, .cu_seqlens = cu};
        bs_outputs o = {.pooler = pool};
        CHECK_INT(engine_forward(e, &b, &o, err), BS_OK);
        double t0 = bs_now();
        for (int i = 0; i < 5; i++) CHECK_INT(engine_forward(e, &b, &o, err), BS_OK);
        double ms = (bs_now() - t0) / 5 * 1e3;
        /* two batches in flight, as the worker keeps them: the second compute lane is allocated too */
        float *pool2 = falloc((size_t)B * cfg.hidden);
        bs_outputs o2 = {.pooler = pool2};
        CHECK_INT(engine_submit(e, 0, &b, &o, err), BS_OK);
        CHECK_INT(engine_submit(e, 1, &b, &o2, err), BS_OK);
        CHECK_INT(engine_wait(e, 0, err), BS_OK);
        CHECK_INT(engine_wait(e, 1, err), BS_OK);
        CHECK(memcmp(pool, pool2, sizeof(float) * B * cfg.hidden) == 0);
        cudaMemGetInfo(&free1, &total);
        const double used = (double)(free0 - free1) / (1 << 20);
        fprintf(stderr,
                "  BERT-base bf16 256x128: %.0f MiB on the device with two batches in flight (%s), %.2f ms/batch (%.0f "
                "seq/s)\n",
                used, engine_describe(e), ms, B / ms * 1e3);
        CHECK(used <= 2048);
        free(pool2);
        int finite = 1;
        for (int i = 0; i < B * cfg.hidden; i++) finite &= isfinite(pool[i]) && fabsf(pool[i]) <= 1.0f;
        CHECK(finite);
        free(ids), free(pool);
        engine_free(e);
    }
    model_free(m);
}

int main(void) {
    if (engine_cuda_device_count() == 0) {
        fprintf(stderr, "FAIL: no CUDA device (GPU tests need one; exclude the gpu label elsewhere)\n");
        return 1;
    }
    RUN(engine_cuda_fp32_matches_hf_golden_tiny_bert);
    RUN(engine_cuda_graph_replay_equals_eager_on_new_inputs);
    RUN(engine_cuda_fp32_matches_cpu_on_other_shapes);
    RUN(engine_cuda_reduced_precisions_on_other_shapes);
    RUN(engine_cuda_attention_paths_agree_and_are_described);
    RUN(engine_cuda_bf16_fp16_track_fp32_cpu);
    RUN(engine_cuda_fp8_tracks_fp32_cpu_or_is_refused);
    RUN(engine_cuda_fp8_result_does_not_depend_on_the_previous_batch);
    RUN(engine_cuda_fp8_batch_scales_track_fp32_cpu);
    RUN(engine_cuda_fp8_static_scales_through_the_cast_passes_track_fp32_cpu);
    RUN(engine_cuda_fp8_with_bf16_qkv_tracks_fp32_cpu);
    RUN(engine_cuda_fp8_e4m3_qkv_stays_near_bf16_qkv);
    RUN(engine_cuda_fp8_static_scales_do_not_depend_on_batch_mates);
    RUN(engine_cuda_fp8_static_scales_on_the_fused_layernorm_shape);
    RUN(engine_cuda_last_layer_on_cls_rows_matches_the_full_pass);
    RUN(engine_cuda_residual_in_the_gemm_matches_the_layernorm_path);
    RUN(engine_cuda_skip_runs_on_random_activations);
    RUN(engine_cuda_bert_base_bf16_fits_in_2gib_at_256x128);
    return bs_test_done();
}
