/* Head trainer: equal to a PyTorch run (golden step losses and final weights within 1e-5), exact
 * small cases for BCE, gradients and AdamW worked out by hand, batching and shuffling rules,
 * eval metrics (accuracy, loss, AUC with ties), and the features/labels file reader. */
#include <math.h>
#include <stdint.h>

#include "safetensors.h"
#include "test.h"
#include "trainer.h"

#define TOL 1e-5

/* A head owned by the test (head.c's constructors are not needed to train). */
static bs_head *mk_head(int C, int Hd) {
    bs_head *h = calloc(1, sizeof *h);
    h->in_dim = C;
    h->hidden = Hd;
    h->fc1_w = calloc((size_t)Hd * C, sizeof(float));
    h->fc1_b = calloc((size_t)Hd, sizeof(float));
    h->fc2_w = calloc((size_t)Hd, sizeof(float));
    h->fc2_b = calloc(1, sizeof(float));
    return h;
}

static bs_head *copy_head(const bs_head *s) {
    bs_head *h = mk_head(s->in_dim, s->hidden);
    size_t C = (size_t)s->in_dim, Hd = (size_t)s->hidden;
    memcpy(h->fc1_w, s->fc1_w, Hd * C * sizeof(float));
    memcpy(h->fc1_b, s->fc1_b, Hd * sizeof(float));
    memcpy(h->fc2_w, s->fc2_w, Hd * sizeof(float));
    memcpy(h->fc2_b, s->fc2_b, sizeof(float));
    return h;
}

static int same_head(const bs_head *a, const bs_head *b) {
    size_t C = (size_t)a->in_dim, Hd = (size_t)a->hidden;
    return memcmp(a->fc1_w, b->fc1_w, Hd * C * sizeof(float)) == 0 &&
           memcmp(a->fc1_b, b->fc1_b, Hd * sizeof(float)) == 0 && memcmp(a->fc2_w, b->fc2_w, Hd * sizeof(float)) == 0 &&
           a->fc2_b[0] == b->fc2_b[0];
}

static void free_head(bs_head *h) {
    free(h->fc1_w);
    free(h->fc1_b);
    free(h->fc2_w);
    free(h->fc2_b);
    free(h);
}

typedef struct {
    int n;
    int epoch[64];
    int64_t step[64];
    double loss[64];
} step_log;

static int record_step(void *ctx, int epoch, int64_t step, double loss) {
    step_log *l = ctx;
    if (l->n < 64) {
        l->epoch[l->n] = epoch;
        l->step[l->n] = step;
        l->loss[l->n] = loss;
    }
    l->n++;
    return 0;
}

static void trainer_matches_pytorch_golden_run(void) {
    char err[BS_ERRLEN];
    st_file *f = st_open(bs_test_data("golden/tiny-bert/trainer_golden.safetensors"), err);
    CHECK(f != NULL);
    if (!f) return;
    const st_tensor *lt = st_find(f, "labels");
    CHECK(lt && lt->ndim == 2 && lt->shape[0] == 16 && lt->shape[1] == 1);
    float *X = bs_test_f32(f, "features", 16 * 128), *y = bs_test_f32(f, "labels", 16),
          *sl = bs_test_f32(f, "step_loss", 20);
    bs_head *h = mk_head(128, 64);
    const char *parts[4] = {"fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"};
    float *dst[4] = {h->fc1_w, h->fc1_b, h->fc2_w, h->fc2_b};
    int64_t sizes[4] = {64 * 128, 64, 64, 1};
    for (int k = 0; k < 4; k++) {
        char name[64];
        snprintf(name, sizeof name, "init.%s", parts[k]);
        float *w = bs_test_f32(f, name, sizes[k]);
        memcpy(dst[k], w, sizeof(float) * (size_t)sizes[k]);
        free(w);
    }

    trainer_opts o;
    trainer_opts_default(&o);
    o.epochs = 5;
    o.batch = 4;
    o.shuffle = 0;
    step_log log = {0};
    CHECK_INT(trainer_fit(h, X, y, 16, &o, record_step, &log, err), BS_OK);
    CHECK_INT(log.n, 20);
    for (int i = 0; i < 20 && i < log.n; i++) {
        CHECK_NEAR(log.loss[i], sl[i], TOL);
        CHECK_INT(log.step[i], i + 1);
        CHECK_INT(log.epoch[i], i / 4 + 1);
    }
    for (int k = 0; k < 4; k++) {
        char name[64];
        snprintf(name, sizeof name, "final.%s", parts[k]);
        float *w = bs_test_f32(f, name, sizes[k]);
        double d = bs_test_max_abs_diff(dst[k], w, (size_t)sizes[k]);
        fprintf(stderr, "  %s: max |diff| vs PyTorch %.3g\n", name, d);
        CHECK(d <= TOL);
        free(w);
    }
    free_head(h);
    free(X);
    free(y);
    free(sl);
    st_close(f);
}

static void trainer_bce_is_finite_and_exact_at_large_logits(void) {
    /* log1p(exp(-100)) = 3.7200759760208361e-44 */
    CHECK_NEAR(trainer_bce(100, 1), 3.7200759760208361e-44, 1e-58);
    CHECK_NEAR(trainer_bce(-100, 0), 3.7200759760208361e-44, 1e-58);
    CHECK_NEAR(trainer_bce(100, 0), 100.0, 1e-12);
    CHECK_NEAR(trainer_bce(-100, 1), 100.0, 1e-12);
    CHECK_NEAR(trainer_bce(0, 1), log(2.0), 1e-15);
    CHECK_NEAR(trainer_bce(0, 0), log(2.0), 1e-15);
    CHECK(isfinite(trainer_bce(1e6, 0)) && isfinite(trainer_bce(-1e6, 1)));
    CHECK_NEAR(trainer_bce(1e6, 0), 1e6, 1e-6);

    /* Through a training step: logit = relu(x) * 1 + b2 with b2 = +-100; the gradient of the
     * bias is (sigmoid(z) - y) / b, finite at both ends. */
    bs_head *h = mk_head(1, 1);
    h->fc1_w[0] = 1;
    h->fc2_w[0] = 1;
    trainer_opts o;
    trainer_opts_default(&o);
    float x[1] = {-1}, y0[1] = {0}, y1[1] = {1};
    char err[BS_ERRLEN];
    h->fc2_b[0] = 100;
    trainer *t = trainer_new(h, &o, 1, err);
    CHECK(t != NULL);
    double loss = trainer_step(t, x, y0, NULL, 1);
    CHECK_NEAR(loss, 100.0, 1e-12);
    CHECK_NEAR(trainer_grad(t)[3], 1.0, 1e-15); /* sigmoid(100) - 0 */
    trainer_free(t);
    h->fc2_b[0] = -100;
    t = trainer_new(h, &o, 1, err);
    loss = trainer_step(t, x, y1, NULL, 1);
    CHECK_NEAR(loss, 100.0, 1e-12);
    CHECK_NEAR(trainer_grad(t)[3], -1.0, 1e-15); /* sigmoid(-100) - 1 */
    loss = trainer_step(t, x, y0, NULL, 1);
    CHECK(isfinite(loss) && loss < 1e-40);
    CHECK(isfinite(trainer_grad(t)[3]) && trainer_grad(t)[3] > 0);
    trainer_free(t);
    free_head(h);
}

/* C = Hd = 1, x = 2, y = 1, w1 = 0.5, b1 = 0.25, w2 = -0.75, b2 = 0.1, lr 0.1, wd 0.01:
 * pre = 1.25, z = -0.8375, loss = 0.8375 + log1p(exp(-0.8375)), dz = sigmoid(z) - 1,
 * g = (dz*w2*x, dz*w2, dz*pre, dz). Step 1: m = 0.1 g, v = 0.001 g^2, m/(1-0.9) / (sqrt(v/(1-0.999)) + eps)
 * = g/(|g| + eps), so p = p*(1 - 0.001) - 0.1*sign(g). Step 2 values from the same formulas in double. */
static void trainer_adamw_two_steps_match_hand_computation(void) {
    bs_head *h = mk_head(1, 1);
    h->fc1_w[0] = 0.5f;
    h->fc1_b[0] = 0.25f;
    h->fc2_w[0] = -0.75f;
    h->fc2_b[0] = 0.1f;
    trainer_opts o;
    trainer_opts_default(&o);
    o.lr = 0.1;
    o.weight_decay = 0.01;
    char err[BS_ERRLEN];
    trainer *t = trainer_new(h, &o, 1, err);
    float x[1] = {2}, y[1] = {1};

    double loss = trainer_step(t, x, y, NULL, 1);
    CHECK_INT(trainer_steps(t), 1);
    CHECK_NEAR(loss, 0.8375 + log1p(exp(-0.8375)), 1e-7); /* b2 = 0.1f is not exactly 0.1 */
    CHECK_NEAR(loss, 1.1971243949990487, 1e-7);
    const double *g = trainer_grad(t);
    CHECK_NEAR(g[0], 1.0469076390121361, 1e-7);
    CHECK_NEAR(g[1], 0.52345381950606806, 1e-7);
    CHECK_NEAR(g[2], -0.87242303251011344, 1e-7);
    CHECK_NEAR(g[3], -0.69793842600809075, 1e-7);
    CHECK_NEAR(h->fc1_w[0], 0.5 * 0.999 - 0.1, 1e-7);
    CHECK_NEAR(h->fc1_b[0], 0.25 * 0.999 - 0.1, 1e-7);
    CHECK_NEAR(h->fc2_w[0], -0.75 * 0.999 + 0.1, 1e-7);
    CHECK_NEAR(h->fc2_b[0], 0.1 * 0.999 + 0.1, 1e-7);

    loss = trainer_step(t, x, y, NULL, 1);
    CHECK_INT(trainer_steps(t), 2);
    CHECK_NEAR(loss, 0.92267076062123876, 1e-7);
    CHECK_NEAR(h->fc1_w[0], 0.300875962, 1e-7);
    CHECK_NEAR(h->fc1_b[0], 0.0513757169, 1e-7);
    CHECK_NEAR(h->fc2_w[0], -0.551764965, 1e-7);
    CHECK_NEAR(h->fc2_b[0], 0.299050748, 1e-7);
    trainer_free(t);
    free_head(h);
}

/* A dead ReLU gives fc1 no gradient: m = v = 0, the Adam term is 0/eps = 0, and only the
 * decoupled decay moves the weights, the bias included (PyTorch's default param group). */
static void trainer_weight_decay_applies_to_biases_without_gradient(void) {
    bs_head *h = mk_head(1, 1);
    h->fc1_w[0] = 0.5f;
    h->fc1_b[0] = -2.0f;
    h->fc2_w[0] = 0.3f;
    h->fc2_b[0] = 0.0f;
    trainer_opts o;
    trainer_opts_default(&o);
    o.lr = 0.5;
    o.weight_decay = 0.1;
    char err[BS_ERRLEN];
    trainer *t = trainer_new(h, &o, 1, err);
    float x[1] = {1}, y[1] = {0};
    trainer_step(t, x, y, NULL, 1);
    CHECK(trainer_grad(t)[0] == 0 && trainer_grad(t)[1] == 0 && trainer_grad(t)[2] == 0);
    const double decay = 1.0 - 0.5 * 0.1;
    CHECK(h->fc1_w[0] == (float)(0.5 * decay));
    CHECK(h->fc1_b[0] == (float)(-2.0 * decay));
    CHECK(h->fc2_w[0] == (float)((double)0.3f * decay)); /* relu(pre) = 0: no gradient either */
    CHECK_NEAR(h->fc1_b[0], -1.9, 1e-7);
    CHECK_NEAR(h->fc2_b[0], -0.5, 1e-7); /* gradient sigmoid(0) - 0 > 0: -lr * sign */
    trainer_free(t);

    /* ReLU input exactly 0: PyTorch's threshold_backward passes no gradient there either. */
    h->fc1_w[0] = 1.0f;
    h->fc1_b[0] = -1.0f;
    h->fc2_b[0] = 0.0f;
    t = trainer_new(h, &o, 1, err);
    trainer_step(t, x, y, NULL, 1);
    CHECK(trainer_grad(t)[0] == 0 && trainer_grad(t)[1] == 0 && trainer_grad(t)[2] == 0);
    CHECK(trainer_grad(t)[3] == 0.5); /* sigmoid(0) - 0 */
    trainer_free(t);
    free_head(h);
}

/* Backward agrees with central differences of the mean BCE (trainer_eval's loss). */
static void trainer_gradient_matches_finite_differences(void) {
    enum { C = 5, HD = 4, N = 3 };
    bs_rng r = {7};
    bs_head *h = mk_head(C, HD);
    trainer_init_head(h, &r);
    h->fc2_b[0] = 0.05f;
    float X[N * C], y[N] = {1, 0, 1};
    for (int i = 0; i < N * C; i++) X[i] = (float)(2 * bs_rng_uniform(&r) - 1);
    bs_head *work = copy_head(h);
    trainer_opts o;
    trainer_opts_default(&o);
    char err[BS_ERRLEN];
    trainer *t = trainer_new(work, &o, N, err);
    trainer_step(t, X, y, NULL, N);
    const double *g = trainer_grad(t);
    float *params[4] = {h->fc1_w, h->fc1_b, h->fc2_w, h->fc2_b};
    int sizes[4] = {HD * C, HD, HD, 1};
    int off = 0, live = 0;
    for (int k = 0; k < 4; k++) {
        for (int i = 0; i < sizes[k]; i++, off++) {
            float keep = params[k][i];
            const float step = 1.0f / 1024;
            trainer_metrics plus, minus;
            float up = keep + step, down = keep - step; /* the float values actually evaluated */
            params[k][i] = up;
            trainer_eval(h, X, y, N, &plus, err);
            params[k][i] = down;
            trainer_eval(h, X, y, N, &minus, err);
            params[k][i] = keep;
            double num = (plus.loss - minus.loss) / ((double)up - (double)down);
            CHECK_NEAR(g[off], num, 1e-5);
            live += g[off] != 0;
        }
    }
    CHECK(live > HD); /* the case exercises live ReLU units, not only zeros */
    trainer_free(t);
    free_head(work);
    free_head(h);
}

static void trainer_shuffle_is_fisher_yates_on_seeded_rng(void) {
    /* Expected permutations from an independent Python implementation of splitmix64 + Fisher-Yates. */
    int p[10];
    bs_rng r = {42};
    for (int i = 0; i < 10; i++) p[i] = i;
    trainer_shuffle(p, 10, &r);
    int e42[10] = {0, 9, 5, 8, 6, 4, 7, 2, 1, 3};
    CHECK(memcmp(p, e42, sizeof p) == 0);
    for (int i = 0; i < 10; i++) p[i] = i; /* the next epoch continues the stream */
    trainer_shuffle(p, 10, &r);
    int e42b[10] = {0, 9, 3, 2, 5, 7, 1, 6, 8, 4};
    CHECK(memcmp(p, e42b, sizeof p) == 0);
    bs_rng r43 = {43};
    for (int i = 0; i < 10; i++) p[i] = i;
    trainer_shuffle(p, 10, &r43);
    int e43[10] = {4, 2, 5, 6, 1, 3, 9, 8, 7, 0};
    CHECK(memcmp(p, e43, sizeof p) == 0);
}

static void trainer_fit_is_deterministic_by_seed(void) {
    enum { C = 6, N = 20 };
    bs_rng r = {3};
    bs_head *h0 = mk_head(C, 8);
    trainer_init_head(h0, &r);
    float X[N * C], y[N];
    for (int i = 0; i < N * C; i++) X[i] = (float)bs_rng_normal(&r);
    for (int i = 0; i < N; i++) y[i] = (float)(i % 2);
    trainer_opts o;
    trainer_opts_default(&o);
    o.epochs = 3;
    o.batch = 6;
    o.lr = 1e-2;
    o.seed = 11;
    char err[BS_ERRLEN];
    bs_head *a = copy_head(h0), *b = copy_head(h0), *c = copy_head(h0), *d = copy_head(h0);
    step_log la = {0}, lb = {0}, lc = {0};
    CHECK_INT(trainer_fit(a, X, y, N, &o, record_step, &la, err), BS_OK);
    CHECK_INT(trainer_fit(b, X, y, N, &o, record_step, &lb, err), BS_OK);
    CHECK(same_head(a, b));
    CHECK(la.n == lb.n && memcmp(la.loss, lb.loss, sizeof la.loss) == 0);
    o.seed = 12;
    CHECK_INT(trainer_fit(c, X, y, N, &o, record_step, &lc, err), BS_OK);
    CHECK(!same_head(a, c));
    CHECK(la.loss[0] != lc.loss[0]); /* a different first batch */
    o.shuffle = 0;
    step_log ld = {0};
    CHECK_INT(trainer_fit(d, X, y, N, &o, record_step, &ld, err), BS_OK);
    /* Without shuffling the first batch is rows 0..5 of the initial head. */
    trainer_metrics m;
    CHECK_INT(trainer_eval(h0, X, y, 6, &m, err), BS_OK);
    CHECK_NEAR(ld.loss[0], m.loss, 1e-12);
    free_head(a);
    free_head(b);
    free_head(c);
    free_head(d);
    free_head(h0);
}

/* N = 10, batch 4: batches of 4, 4, 2 every epoch (DataLoader drop_last=False). */
static void trainer_keeps_partial_last_batch(void) {
    enum { C = 3, N = 10 };
    bs_rng r = {5};
    bs_head *h = mk_head(C, 4);
    trainer_init_head(h, &r);
    float X[N * C], y[N];
    for (int i = 0; i < N * C; i++) X[i] = (float)bs_rng_normal(&r);
    for (int i = 0; i < N; i++) y[i] = (float)(i < 5);
    bs_head *ref = copy_head(h);
    trainer_opts o;
    trainer_opts_default(&o);
    o.epochs = 2;
    o.batch = 4;
    o.shuffle = 0;
    o.lr = 0.05;
    char err[BS_ERRLEN];
    step_log l = {0};
    CHECK_INT(trainer_fit(h, X, y, N, &o, record_step, &l, err), BS_OK);
    CHECK_INT(l.n, 6);
    int epochs[6] = {1, 1, 1, 2, 2, 2};
    for (int i = 0; i < 6; i++) {
        CHECK_INT(l.epoch[i], epochs[i]);
        CHECK_INT(l.step[i], i + 1);
    }
    /* Replay by hand: the third step's loss is the mean over rows 8 and 9 only. */
    trainer *t = trainer_new(ref, &o, 4, err);
    CHECK_NEAR(trainer_step(t, X, y, NULL, 4), l.loss[0], 0);
    int rows[4] = {4, 5, 6, 7};
    CHECK_NEAR(trainer_step(t, X, y, rows, 4), l.loss[1], 0);
    trainer_metrics m;
    CHECK_INT(trainer_eval(ref, X + 8 * C, y + 8, 2, &m, err), BS_OK);
    CHECK_NEAR(trainer_step(t, X + 8 * C, y + 8, NULL, 2), l.loss[2], 0);
    CHECK_NEAR(l.loss[2], m.loss, 1e-12);
    CHECK(isnan(trainer_step(t, X, y, NULL, 5))); /* more rows than the trainer was sized for */
    CHECK(isnan(trainer_step(t, X, y, NULL, 0)));
    trainer_free(t);

    /* A batch larger than the data is one step per epoch. */
    bs_head *g = copy_head(ref);
    o.batch = 64;
    step_log lg = {0};
    CHECK_INT(trainer_fit(g, X, y, N, &o, record_step, &lg, err), BS_OK);
    CHECK_INT(lg.n, 2);
    free_head(g);
    free_head(ref);
    free_head(h);
}

static void trainer_fit_rejects_bad_input(void) {
    bs_head *h = mk_head(2, 2);
    trainer_opts o;
    trainer_opts_default(&o);
    char err[BS_ERRLEN] = "";
    float X[4] = {1, 2, 3, 4}, y[2] = {0, 1}, ysoft[2] = {0, 0.5f}, Xnan[4] = {1, NAN, 3, 4};
    CHECK_INT(trainer_fit(h, X, y, 0, &o, NULL, NULL, err), BS_ERR);
    CHECK_CONTAINS(err, "no rows");
    CHECK_INT(trainer_fit(h, X, ysoft, 2, &o, NULL, NULL, err), BS_ERR);
    CHECK_CONTAINS(err, "label 1 is 0.5");
    CHECK_INT(trainer_fit(h, Xnan, y, 2, &o, NULL, NULL, err), BS_ERR);
    CHECK_CONTAINS(err, "feature [0, 1] is not finite");
    o.batch = 0;
    CHECK_INT(trainer_fit(h, X, y, 2, &o, NULL, NULL, err), BS_ERR);
    CHECK_CONTAINS(err, "batch");
    trainer_opts_default(&o);
    o.lr = -1;
    CHECK_INT(trainer_fit(h, X, y, 2, &o, NULL, NULL, err), BS_ERR);
    CHECK_CONTAINS(err, "lr");
    trainer_opts_default(&o);
    o.lr = 1e300; /* diverges: the trainer stops with an error instead of writing NaN weights */
    o.epochs = 50;
    h->fc1_w[0] = 1;
    h->fc2_w[0] = 1;
    int rc = trainer_fit(h, X, y, 2, &o, NULL, NULL, err);
    CHECK_INT(rc, BS_ERR);
    CHECK_CONTAINS(err, "not finite");
    free_head(h);
}

static int stop_after_two(void *ctx, int epoch, int64_t step, double loss) {
    (void)ctx, (void)epoch, (void)loss;
    return step >= 2;
}

static void trainer_fit_stops_when_callback_asks(void) {
    bs_head *h = mk_head(1, 1);
    trainer_opts o;
    trainer_opts_default(&o);
    o.batch = 1;
    char err[BS_ERRLEN] = "";
    float X[3] = {1, 2, 3}, y[3] = {0, 1, 0};
    CHECK_INT(trainer_fit(h, X, y, 3, &o, stop_after_two, NULL, err), BS_ERR);
    CHECK_CONTAINS(err, "stopped by the caller at step 2");
    free_head(h);
}

/* logit = relu(x) - 0.5; x = -1, -2, 0.2, 1, 3, 0.5 gives logits -0.5, -0.5, -0.3, 0.5, 2.5, 0 for
 * labels 0, 1, 0, 1, 1, 0. Predictions (sigmoid > 0.5; 0 is not > 0.5): 0 0 0 1 1 0, 5 of 6 right.
 * AUC: positive -0.5 ties the negative -0.5 (1/2) and loses to -0.3, 0; 0.5 and 2.5 beat all three:
 * (0.5 + 3 + 3) / 9. Loss: mean BCE = 0.54143718531022367 (double, by hand). */
static void trainer_eval_metrics_on_hand_case(void) {
    bs_head *h = mk_head(1, 1);
    h->fc1_w[0] = 1;
    h->fc2_w[0] = 1;
    h->fc2_b[0] = -0.5f;
    float X[6] = {-1, -2, 0.2f, 1, 3, 0.5f}, y[6] = {0, 1, 0, 1, 1, 0};
    char err[BS_ERRLEN];
    trainer_metrics m;
    CHECK_INT(trainer_eval(h, X, y, 6, &m, err), BS_OK);
    CHECK_INT(m.n, 6);
    CHECK_INT(m.n_pos, 3);
    CHECK_NEAR(m.accuracy, 5.0 / 6.0, 1e-15);
    CHECK_NEAR(m.auc, 6.5 / 9.0, 1e-15);
    CHECK_NEAR(m.loss, 0.54143718531022367, 1e-8); /* 0.2f is not exactly 0.2 */

    /* All scores tied: AUC 1/2. One class only: AUC undefined (NAN), accuracy still defined. */
    float Xt[4] = {-1, -2, -3, -4}, yt[4] = {0, 1, 1, 0}, y1[4] = {1, 1, 1, 1};
    CHECK_INT(trainer_eval(h, Xt, yt, 4, &m, err), BS_OK);
    CHECK_NEAR(m.auc, 0.5, 1e-15);
    CHECK_NEAR(m.accuracy, 0.5, 1e-15);
    CHECK_INT(trainer_eval(h, Xt, y1, 4, &m, err), BS_OK);
    CHECK(isnan(m.auc));
    CHECK_NEAR(m.accuracy, 0.0, 1e-15);
    /* Perfect ranking: AUC 1 */
    float Xp[4] = {-1, 1, -2, 2}, yp[4] = {0, 1, 0, 1};
    CHECK_INT(trainer_eval(h, Xp, yp, 4, &m, err), BS_OK);
    CHECK_NEAR(m.auc, 1.0, 1e-15);
    free_head(h);
}

static void trainer_init_head_is_pytorch_linear_uniform(void) {
    bs_head *h = mk_head(100, 16);
    bs_rng r = {1};
    trainer_init_head(h, &r);
    double b1 = 0.1, b2 = 0.25, lo = 1, hi = -1;
    for (int i = 0; i < 1600; i++) {
        CHECK(fabs(h->fc1_w[i]) <= b1);
        if (h->fc1_w[i] < lo) lo = h->fc1_w[i];
        if (h->fc1_w[i] > hi) hi = h->fc1_w[i];
    }
    CHECK(lo < -0.09 && hi > 0.09); /* spans the range */
    for (int i = 0; i < 16; i++) CHECK(fabs(h->fc1_b[i]) <= b1 && fabs(h->fc2_w[i]) <= b2);
    CHECK(fabs(h->fc2_b[0]) <= b2);
    bs_rng r2 = {1};
    CHECK_NEAR(h->fc1_w[0], (float)(-0.1 + 0.2 * bs_rng_uniform(&r2)), 0);
    free_head(h);
}

/* Writes features (rows, cols) F32 and labels with the given dtype/shape into dir/name. */
static const char *write_data(const char *dir, const char *name, int rows, int cols, const void *labels, st_dtype ldt,
                              int lndim, const int64_t *lshape) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    static float feats[64];
    for (int i = 0; i < rows * cols && i < 64; i++) feats[i] = (float)i * 0.25f;
    st_out_tensor ts[2] = {{"features", ST_F32, 2, {rows, cols}, feats}, {"labels", ldt, lndim, {0}, labels}};
    for (int i = 0; i < lndim; i++) ts[1].shape[i] = lshape[i];
    char err[BS_ERRLEN];
    if (st_write(path, ts, labels ? 2 : 1, NULL, err) != BS_OK) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return path;
}

static void trainer_read_data_accepts_labels_n_or_n1(void) {
    const char *dir = bs_test_tmpdir();
    char err[BS_ERRLEN] = "";
    float lab[3] = {0, 1, 1};
    float *X = NULL, *y = NULL;
    int N = 0, C = 0;

    const char *p = write_data(dir, "n.safetensors", 3, 2, lab, ST_F32, 1, (int64_t[]){3});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_OK);
    CHECK_INT(N, 3);
    CHECK_INT(C, 2);
    CHECK(y && y[0] == 0 && y[1] == 1 && y[2] == 1);
    CHECK(X && X[5] == 1.25f);
    free(X);
    free(y);

    p = write_data(dir, "n1.safetensors", 3, 2, lab, ST_F32, 2, (int64_t[]){3, 1});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_OK);
    CHECK(N == 3 && y[2] == 1);
    free(X);
    free(y);

    int64_t ilab[3] = {1, 0, 1};
    p = write_data(dir, "i64.safetensors", 3, 2, ilab, ST_I64, 1, (int64_t[]){3});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_OK);
    CHECK(N == 3 && y[0] == 1 && y[1] == 0);
    free(X);
    free(y);

    uint16_t hlab[3] = {0x0000, 0x3c00, 0x3c00}; /* F16 0, 1, 1 */
    p = write_data(dir, "f16.safetensors", 3, 2, hlab, ST_F16, 1, (int64_t[]){3});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_OK);
    CHECK(N == 3 && y[0] == 0 && y[1] == 1);
    free(X);
    free(y);
}

static void trainer_read_data_rejects_mismatch_and_bad_labels(void) {
    const char *dir = bs_test_tmpdir();
    char err[BS_ERRLEN] = "";
    float lab[4] = {0, 1, 1, 0}, lab6[6] = {0};
    float *X = NULL, *y = NULL;
    int N = 0, C = 0;

    const char *p = write_data(dir, "rows.safetensors", 3, 2, lab, ST_F32, 1, (int64_t[]){4});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_ERR);
    CHECK_CONTAINS(err, "rows.safetensors: tensor 'labels' has 4 rows but 'features' has 3");

    p = write_data(dir, "n2.safetensors", 3, 2, lab6, ST_F32, 2, (int64_t[]){3, 2});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_ERR);
    CHECK_CONTAINS(err, "tensor 'labels' has shape [3,2], expected [N] or [N,1]");

    float bad[3] = {0, 2, 1};
    p = write_data(dir, "val.safetensors", 3, 2, bad, ST_F32, 1, (int64_t[]){3});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_ERR);
    CHECK_CONTAINS(err, "tensor 'labels' row 1 is 2, expected 0 or 1");

    int32_t ibad[3] = {0, 1, -1};
    p = write_data(dir, "ival.safetensors", 3, 2, ibad, ST_I32, 1, (int64_t[]){3});
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_ERR);
    CHECK_CONTAINS(err, "row 2 is -1");

    p = write_data(dir, "nolabels.safetensors", 3, 2, NULL, ST_F32, 0, NULL);
    CHECK_INT(trainer_read_data(p, &X, &y, &N, &C, err), BS_ERR);
    CHECK_CONTAINS(err, "nolabels.safetensors: no tensor 'labels'");

    CHECK_INT(trainer_read_data("/nonexistent/x.safetensors", &X, &y, &N, &C, err), BS_ERR);
    CHECK_CONTAINS(err, "/nonexistent/x.safetensors");
    CHECK(X == NULL && y == NULL);
}

int main(void) {
    RUN(trainer_bce_is_finite_and_exact_at_large_logits);
    RUN(trainer_adamw_two_steps_match_hand_computation);
    RUN(trainer_weight_decay_applies_to_biases_without_gradient);
    RUN(trainer_gradient_matches_finite_differences);
    RUN(trainer_shuffle_is_fisher_yates_on_seeded_rng);
    RUN(trainer_fit_is_deterministic_by_seed);
    RUN(trainer_keeps_partial_last_batch);
    RUN(trainer_fit_rejects_bad_input);
    RUN(trainer_fit_stops_when_callback_asks);
    RUN(trainer_eval_metrics_on_hand_case);
    RUN(trainer_init_head_is_pytorch_linear_uniform);
    RUN(trainer_read_data_accepts_labels_n_or_n1);
    RUN(trainer_read_data_rejects_mismatch_and_bad_labels);
    RUN(trainer_matches_pytorch_golden_run); /* last: skips (77) when the reference data is absent */
    return bs_test_done();
}
