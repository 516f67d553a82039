/* Classification head: the golden head applied to golden pooler_output must give PyTorch's
 * logits and probabilities; prefixed loading, save/load, shape and value checks, sigmoid. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "head.h"
#include "safetensors.h"
#include "test.h"

static char tmp[256];

static void head_matches_golden_logits_and_probabilities(void) {
    char err[BS_ERRLEN] = "";
    bs_head *h = head_load(bs_test_data("golden/tiny-bert/head.safetensors"), NULL, err);
    st_file *g = st_open(bs_test_data("golden/tiny-bert/golden.safetensors"), err);
    CHECK(h != NULL && g != NULL);
    if (!h || !g) goto out;
    CHECK_INT(h->in_dim, 128);
    CHECK_INT(h->hidden, 64);
    CHECK_INT(h->version, 0);
    CHECK_INT(head_validate(h, 128, err), BS_OK);

    static float feat[16 * 128], want_logit[16], want_prob[16], logit[16], prob[16];
    int64_t fs[2] = {16, 128}, ls[2] = {16, 1};
    const st_tensor *tf = st_expect(g, "pooler_output", 2, fs, err), *tl = st_expect(g, "head_logit", 2, ls, err),
                    *tp = st_expect(g, "head_prob", 2, ls, err);
    CHECK(tf && tl && tp);
    if (!tf || !tl || !tp) goto out;
    st_to_f32(tf, feat, err);
    st_to_f32(tl, want_logit, err);
    st_to_f32(tp, want_prob, err);
    head_apply(h, feat, 16, logit, prob);
    int pos = 0;
    for (int b = 0; b < 16; b++) {
        CHECK_NEAR(logit[b], want_logit[b], 1e-5);
        CHECK_NEAR(prob[b], want_prob[b], 1e-5);
        CHECK_STR(head_label(prob[b]), want_prob[b] > 0.5f ? "positive" : "negative");
        pos += prob[b] > 0.5f;
    }
    CHECK_INT(pos, 16); /* the random golden head puts every text slightly on the positive side */
    /* either output may be NULL */
    float only[16];
    head_apply(h, feat, 16, only, NULL);
    CHECK(memcmp(only, logit, sizeof only) == 0);
    head_apply(h, feat, 16, NULL, only);
    CHECK(memcmp(only, prob, sizeof only) == 0);
out:
    head_free(h);
    st_close(g);
}

static void head_load_reads_init_and_final_from_trainer_golden(void) {
    char err[BS_ERRLEN] = "";
    const char *p = bs_test_data("golden/tiny-bert/trainer_golden.safetensors");
    bs_head *a = head_load(p, "init.", err), *b = head_load(p, "final.", err);
    st_file *f = st_open(p, err);
    CHECK(a && b && f);
    if (!a || !b || !f) goto out;
    CHECK_INT(a->in_dim, 128);
    CHECK_INT(a->hidden, 64);
    CHECK(memcmp(a->fc1_w, st_find(f, "init.fc1.weight")->data, 64 * 128 * 4) == 0);
    CHECK(memcmp(b->fc2_w, st_find(f, "final.fc2.weight")->data, 64 * 4) == 0);
    CHECK(memcmp(b->fc2_b, st_find(f, "final.fc2.bias")->data, 4) == 0);
    CHECK(memcmp(a->fc1_b, b->fc1_b, 64 * 4) != 0); /* training moved them */
    CHECK(head_load(p, NULL, err) == NULL);
    CHECK_CONTAINS(err, "trainer_golden.safetensors: tensor 'fc1.weight' is missing");
out:
    head_free(a);
    head_free(b);
    st_close(f);
}

static void write_head_file(const char *path, int64_t hd, int64_t c, int64_t b1, int64_t w2r, int64_t w2c) {
    static float zeros[4096];
    char err[BS_ERRLEN];
    st_out_tensor t[4] = {
        {.name = "fc1.weight", .dtype = ST_F32, .ndim = 2, .shape = {hd, c}, .data = zeros},
        {.name = "fc1.bias", .dtype = ST_F32, .ndim = 1, .shape = {b1}, .data = zeros},
        {.name = "fc2.weight", .dtype = ST_F32, .ndim = 2, .shape = {w2r, w2c}, .data = zeros},
        {.name = "fc2.bias", .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = zeros},
    };
    if (st_write(path, t, 4, NULL, err) != BS_OK) fprintf(stderr, "%s\n", err);
}

static void head_load_cross_checks_shapes(void) {
    char p[512], err[BS_ERRLEN] = "";
    snprintf(p, sizeof p, "%s/bad.safetensors", tmp);
    write_head_file(p, 8, 16, 4, 1, 8);
    CHECK(head_load(p, NULL, err) == NULL);
    CHECK_CONTAINS(err, "bad.safetensors: tensor 'fc1.bias': shape [4], expected [8]");
    write_head_file(p, 8, 16, 8, 2, 8);
    CHECK(head_load(p, NULL, err) == NULL);
    CHECK_CONTAINS(err, "bad.safetensors: tensor 'fc2.weight': shape [2, 8], expected [1, 8]");
    write_head_file(p, 8, 16, 8, 1, 8);
    bs_head *h = head_load(p, NULL, err);
    CHECK(h && h->hidden == 8 && h->in_dim == 16);
    CHECK_INT(head_validate(h, 128, err), BS_ERR);
    CHECK_CONTAINS(err, "head: fc1.weight takes 16 inputs, the encoder gives 128");
    head_free(h);
}

static void head_validate_rejects_non_finite_values(void) {
    char err[BS_ERRLEN] = "";
    bs_head *h = head_new(4, 3);
    CHECK(h != NULL);
    if (!h) return;
    CHECK_INT(head_validate(h, 4, err), BS_OK);
    h->fc1_w[1 * 4 + 2] = NAN;
    CHECK_INT(head_validate(h, 4, err), BS_ERR);
    CHECK_CONTAINS(err, "head: fc1.weight[1, 2] is not finite");
    h->fc1_w[6] = 0;
    h->fc2_b[0] = INFINITY;
    CHECK_INT(head_validate(h, 4, err), BS_ERR);
    CHECK_CONTAINS(err, "head: fc2.bias[0] is not finite (inf)");
    CHECK_INT(head_validate(NULL, 4, err), BS_ERR);
    CHECK(head_new(0, 3) == NULL);
    CHECK(head_new(4, -1) == NULL);
    head_free(h);
}

/* head_apply blocks the batch in groups of rows and splits each dot product into partial sums:
 * against the plain formula (one double sum per dot product) on sizes that are not multiples of
 * either, and on BERT-base's 768 x 64. The partial sums change only the order of double additions
 * of float products, far below the float rounding of the outputs. */
static void head_apply_blocked_equals_plain_sums(void) {
    const int sizes[][3] = {{1, 1, 1}, {3, 7, 2}, {5, 8, 3}, {9, 17, 5}, {4, 37, 4}, {13, 768, 64}};
    bs_rng rng = {99};
    for (size_t t = 0; t < sizeof sizes / sizeof *sizes; t++) {
        const int B = sizes[t][0], C = sizes[t][1], Hd = sizes[t][2];
        bs_head *h = head_new(C, Hd);
        float *x = malloc(sizeof(float) * (size_t)B * C), *logit = malloc(sizeof(float) * (size_t)B);
        CHECK(h && x && logit);
        if (!h || !x || !logit) {
            head_free(h), free(x), free(logit);
            continue;
        }
        float *all[] = {h->fc1_w, h->fc1_b, h->fc2_w, h->fc2_b, x};
        const size_t len[] = {(size_t)Hd * C, (size_t)Hd, (size_t)Hd, 1, (size_t)B * C};
        for (int a = 0; a < 5; a++)
            for (size_t i = 0; i < len[a]; i++) all[a][i] = (float)(bs_rng_uniform(&rng) - 0.5);
        head_apply(h, x, B, logit, NULL);
        double worst = 0;
        for (int b = 0; b < B; b++) {
            double out = h->fc2_b[0];
            for (int j = 0; j < Hd; j++) {
                double acc = 0;
                for (int k = 0; k < C; k++) acc += (double)h->fc1_w[(size_t)j * C + k] * x[(size_t)b * C + k];
                const float a = (float)(acc + h->fc1_b[j]);
                if (a > 0.0f) out += (double)h->fc2_w[j] * a;
            }
            const double d = fabs((double)logit[b] - (double)(float)out);
            worst = d > worst ? d : worst;
        }
        if (worst > 0) printf("  B %d C %d Hd %d: max |logit - plain| %.3g\n", B, C, Hd, worst);
        CHECK_NEAR(worst, 0, 1e-6);
        head_free(h), free(x), free(logit);
    }
}

static void head_apply_is_relu_mlp_then_sigmoid(void) {
    bs_head *h = head_new(2, 2);
    /* hidden 0: x0 + 2 x1 + 0.5; hidden 1: -x0 - 1 (ReLU cuts it for x0 > -1) */
    const float w1[4] = {1, 2, -1, 0}, b1[2] = {0.5f, -1}, w2[2] = {3, 5}, b2 = -0.25f;
    memcpy(h->fc1_w, w1, sizeof w1);
    memcpy(h->fc1_b, b1, sizeof b1);
    memcpy(h->fc2_w, w2, sizeof w2);
    h->fc2_b[0] = b2;
    const float x[6] = {1, 1, -3, 0, 0.25f, -2};
    float logit[3], prob[3];
    head_apply(h, x, 3, logit, prob);
    CHECK(logit[0] == 3 * 3.5f - 0.25f);         /* hidden (3.5, 0) */
    CHECK(logit[1] == 3 * 0 + 5 * 2.0f - 0.25f); /* hidden (relu(-2.5)=0, 2) */
    CHECK(logit[2] == -0.25f);                   /* hidden (relu(-3.25), relu(-1.25)) = 0 */
    CHECK_NEAR(prob[0], 1 / (1 + exp(-10.25)), 1e-7);
    CHECK_NEAR(prob[2], 1 / (1 + exp(0.25)), 1e-7);
    CHECK_STR(head_label(prob[2]), "negative");
    CHECK_STR(head_label(prob[0]), "positive");

    bs_head *c = head_clone(h);
    CHECK(c && c != h && c->fc1_w != h->fc1_w);
    if (c) {
        CHECK(memcmp(c->fc1_w, w1, sizeof w1) == 0 && c->fc2_b[0] == b2);
        c->fc1_w[0] = 100;
        CHECK(h->fc1_w[0] == 1);
    }
    head_free(c);
    head_free(h);
}

static void head_save_then_load_round_trips(void) {
    char p[512], err[BS_ERRLEN] = "";
    snprintf(p, sizeof p, "%s/h.safetensors", tmp);
    bs_head *h = head_new(5, 3);
    for (int i = 0; i < 15; i++) h->fc1_w[i] = (float)i * 0.1f - 0.7f;
    for (int i = 0; i < 3; i++) h->fc1_b[i] = h->fc2_w[i] = (float)i - 1.5f;
    h->fc2_b[0] = 0.125f;
    CHECK_INT(head_save(h, p, err), BS_OK);
    bs_head *r = head_load(p, NULL, err);
    CHECK(r != NULL);
    if (r) {
        CHECK_INT(r->in_dim, 5);
        CHECK_INT(r->hidden, 3);
        CHECK(memcmp(r->fc1_w, h->fc1_w, 15 * 4) == 0 && memcmp(r->fc1_b, h->fc1_b, 12) == 0 &&
              memcmp(r->fc2_w, h->fc2_w, 12) == 0 && r->fc2_b[0] == 0.125f);
    }
    st_file *f = st_open(p, err);
    CHECK(f && st_count(f) == 4 && st_find(f, "fc2.weight")->shape[0] == 1 && st_find(f, "fc2.bias")->ndim == 1);
    st_close(f);
    head_free(r);
    head_free(h);
}

static void bs_sigmoid_is_stable_for_large_inputs(void) {
    CHECK(bs_sigmoid(0) == 0.5f);
    CHECK(bs_sigmoid(100) == 1.0f);
    CHECK(bs_sigmoid(1e30f) == 1.0f);
    CHECK(bs_sigmoid(-1e30f) == 0.0f);
    CHECK(bs_sigmoid(-INFINITY) == 0.0f);
    CHECK(bs_sigmoid(INFINITY) == 1.0f);
    float s = bs_sigmoid(-80);
    CHECK(s > 0 && isfinite(s));
    CHECK_NEAR(s / 1.8048513878454153e-35, 1.0, 1e-6); /* e^-80: no cancellation to 0 */
    CHECK_NEAR(bs_sigmoid(2), 0.8807970779778823, 1e-7);
    CHECK_NEAR(bs_sigmoid(-2), 0.11920292202211755, 1e-7);
    CHECK_STR(head_label(0.5f), "negative");
    CHECK_STR(head_label(0.50000006f), "positive");
}

int main(void) {
    snprintf(tmp, sizeof tmp, "%s", bs_test_tmpdir());
    RUN(head_apply_is_relu_mlp_then_sigmoid);
    RUN(head_apply_blocked_equals_plain_sums);
    RUN(head_validate_rejects_non_finite_values);
    RUN(head_save_then_load_round_trips);
    RUN(head_load_cross_checks_shapes);
    RUN(bs_sigmoid_is_stable_for_large_inputs);
    RUN(head_load_reads_init_and_final_from_trainer_golden);
    RUN(head_matches_golden_logits_and_probabilities);
    bs_test_rmtree(tmp);
    return bs_test_done();
}
