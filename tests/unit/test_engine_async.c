/* engine_submit / engine_wait (two batches in flight), on the CPU engine and on a stand-in
 * asynchronous implementation: alternating slots give exactly engine_forward's results, misuse of a
 * slot is a one-line error that leaves the engine usable, and engine.c's bookkeeping around an
 * asynchronous implementation (the CUDA engine's path, which needs a GPU to run) holds. */
#include <math.h>

#include "common.h"
#include "engine.h"
#include "model.h"
#include "test.h"

static bs_model *tiny_model(void) {
    char err[BS_ERRLEN];
    bs_bert_config cfg = {.vocab_size = 100,
                          .hidden = 32,
                          .layers = 2,
                          .heads = 2,
                          .intermediate = 64,
                          .max_positions = 64,
                          .type_vocab_size = 2,
                          .ln_eps = 1e-12f};
    bs_model *m = model_init_random(&cfg, 11, err);
    if (!m) fprintf(stderr, "  model_init_random: %s\n", err);
    return m;
}

static bs_engine *cpu_engine(const bs_model *m) {
    char err[BS_ERRLEN];
    bs_engine_opts o = {.device = "cpu", .max_seqs = 8, .max_tokens = 256, .max_seq_len = 64};
    bs_engine *e = engine_new(m, &o, err);
    if (!e) fprintf(stderr, "  engine_new: %s\n", err);
    return e;
}

/* NB batches of 1..8 sequences of 1..40 tokens, ids in the vocabulary. */
enum { NB = 9, MAXB = 8, MAXT = 256, C = 32 };
typedef struct {
    int B;
    int32_t ids[MAXT], cu[MAXB + 1];
} test_batch;

static void make_batches(test_batch *tb, uint64_t seed) {
    bs_rng r = {seed};
    for (int k = 0; k < NB; k++) {
        tb[k].B = 1 + (int)(bs_rng_next(&r) % MAXB);
        tb[k].cu[0] = 0;
        for (int s = 0; s < tb[k].B; s++) tb[k].cu[s + 1] = tb[k].cu[s] + 1 + (int)(bs_rng_next(&r) % 30);
        for (int t = 0; t < tb[k].cu[tb[k].B]; t++) tb[k].ids[t] = (int32_t)(bs_rng_next(&r) % 100);
    }
}

typedef struct {
    float pooler[MAXB * C], cls[MAXB * C], mean[MAXB * C], hidden[MAXT * C];
} test_out;

static bs_outputs outputs_of(test_out *o) {
    return (bs_outputs){.pooler = o->pooler, .cls = o->cls, .mean = o->mean, .hidden = o->hidden};
}

static int one_line(const char *s) {
    return s[0] != '\0' && strchr(s, '\n') == NULL;
}

static void engine_async_cpu_alternating_slots_equal_forward(void) {
    char err[BS_ERRLEN];
    bs_model *m = tiny_model();
    bs_engine *e = m ? cpu_engine(m) : NULL;
    CHECK(e != NULL);
    if (!e) {
        model_free(m);
        return;
    }
    CHECK_INT(engine_slots(e), 1); /* submit computes the batch before it returns */
    static test_batch tb[NB];
    static test_out ref[NB], got[NB];
    make_batches(tb, 5);
    for (int k = 0; k < NB; k++) {
        bs_batch b = {.n_seq = tb[k].B, .ids = tb[k].ids, .cu_seqlens = tb[k].cu};
        bs_outputs o = outputs_of(&ref[k]);
        CHECK_INT(engine_forward(e, &b, &o, err), BS_OK);
    }
    /* two in flight: submit k into slot k % 2, then collect k - 1 from the other slot; the batch's
     * arrays are scribbled over right after submit (engine.h: b is read only inside submit) */
    static test_batch scratch;
    memset(&got, 0xff, sizeof got); /* NaN everywhere the engine does not write */
    for (int k = 0; k <= NB; k++) {
        if (k < NB) {
            scratch = tb[k];
            bs_batch b = {.n_seq = scratch.B, .ids = scratch.ids, .cu_seqlens = scratch.cu};
            bs_outputs o = outputs_of(&got[k]);
            CHECK_INT(engine_submit(e, k % 2, &b, &o, err), BS_OK);
            memset(scratch.ids, 0x7f, sizeof scratch.ids);
            memset(scratch.cu, 0x7f, sizeof scratch.cu);
        }
        if (k > 0) {
            CHECK_INT(engine_ready(e, (k - 1) % 2), 1);
            CHECK_INT(engine_wait(e, (k - 1) % 2, err), BS_OK);
            CHECK_INT(engine_ready(e, (k - 1) % 2), 0);
        }
    }
    for (int k = 0; k < NB; k++) {
        const size_t BC = (size_t)tb[k].B * C, TC = (size_t)tb[k].cu[tb[k].B] * C;
        CHECK(memcmp(got[k].pooler, ref[k].pooler, BC * sizeof(float)) == 0);
        CHECK(memcmp(got[k].cls, ref[k].cls, BC * sizeof(float)) == 0);
        CHECK(memcmp(got[k].mean, ref[k].mean, BC * sizeof(float)) == 0);
        CHECK(memcmp(got[k].hidden, ref[k].hidden, TC * sizeof(float)) == 0);
        CHECK(isfinite(got[k].pooler[0]) && isfinite(got[k].hidden[TC - 1]));
    }
    /* only the outputs asked for are written */
    test_out only;
    memset(&only, 0xff, sizeof only);
    bs_batch b0 = {.n_seq = tb[0].B, .ids = tb[0].ids, .cu_seqlens = tb[0].cu};
    bs_outputs o0 = {.mean = only.mean};
    CHECK_INT(engine_submit(e, 1, &b0, &o0, err), BS_OK);
    CHECK_INT(engine_wait(e, 1, err), BS_OK);
    CHECK(memcmp(only.mean, ref[0].mean, (size_t)tb[0].B * C * sizeof(float)) == 0);
    CHECK(isnan(only.pooler[0]) && isnan(only.cls[0]) && isnan(only.hidden[0]));
    engine_free(e);
    model_free(m);
}

static void engine_async_slot_misuse_is_a_one_line_error(void) {
    char err[BS_ERRLEN];
    bs_model *m = tiny_model();
    bs_engine *e = m ? cpu_engine(m) : NULL;
    CHECK(e != NULL);
    if (!e) {
        model_free(m);
        return;
    }
    static test_batch tb[NB];
    static test_out o1, o2;
    make_batches(tb, 9);
    bs_batch b = {.n_seq = tb[0].B, .ids = tb[0].ids, .cu_seqlens = tb[0].cu};
    bs_outputs o = outputs_of(&o1);

    const int bad[3] = {-1, 2, 1000};
    for (int i = 0; i < 3; i++) {
        err[0] = '\0';
        CHECK_INT(engine_submit(e, bad[i], &b, &o, err), BS_ERR);
        CHECK_CONTAINS(err, "does not exist (0..1)");
        CHECK(one_line(err));
        err[0] = '\0';
        CHECK_INT(engine_wait(e, bad[i], err), BS_ERR);
        CHECK_CONTAINS(err, "engine_wait: engine slot");
        CHECK(one_line(err));
        CHECK_INT(engine_ready(e, bad[i]), 0);
    }

    err[0] = '\0';
    CHECK_INT(engine_wait(e, 0, err), BS_ERR); /* nothing submitted yet */
    CHECK_STR(err, "engine_wait: engine slot 0 holds no batch");
    CHECK_INT(engine_ready(e, 0), 0);

    CHECK_INT(engine_submit(e, 0, &b, &o, err), BS_OK);
    bs_outputs oo = outputs_of(&o2);
    err[0] = '\0';
    CHECK_INT(engine_submit(e, 0, &b, &oo, err), BS_ERR); /* submit twice to a busy slot */
    CHECK_STR(err, "engine_submit: engine slot 0 already holds a batch (engine_wait it first)");
    CHECK_INT(engine_wait(e, 0, err), BS_OK); /* the first batch is intact */
    err[0] = '\0';
    CHECK_INT(engine_wait(e, 0, err), BS_ERR); /* waited already */
    CHECK_STR(err, "engine_wait: engine slot 0 holds no batch");

    /* an invalid batch is refused at submit and leaves the slot free */
    int32_t bad_ids[2] = {5, 100}, bad_cu[2] = {0, 2};
    bs_batch bb = {.n_seq = 1, .ids = bad_ids, .cu_seqlens = bad_cu};
    err[0] = '\0';
    CHECK_INT(engine_submit(e, 1, &bb, &o, err), BS_ERR);
    CHECK_CONTAINS(err, "token id 100 at position 1 is outside the vocabulary");
    CHECK(one_line(err));
    CHECK_INT(engine_ready(e, 1), 0);
    err[0] = '\0';
    CHECK_INT(engine_wait(e, 1, err), BS_ERR);
    CHECK_STR(err, "engine_wait: engine slot 1 holds no batch");
    CHECK_INT(engine_submit(e, 1, &b, &oo, err), BS_OK);
    CHECK_INT(engine_wait(e, 1, err), BS_OK);
    CHECK(memcmp(o1.pooler, o2.pooler, (size_t)tb[0].B * C * sizeof(float)) == 0);

    /* a synchronous engine's forward does not touch the slots: it still runs with both held */
    CHECK_INT(engine_submit(e, 0, &b, &o, err), BS_OK);
    CHECK_INT(engine_submit(e, 1, &b, &o, err), BS_OK);
    CHECK_INT(engine_forward(e, &b, &oo, err), BS_OK);
    CHECK_INT(engine_wait(e, 1, err), BS_OK);
    CHECK_INT(engine_wait(e, 0, err), BS_OK);
    engine_free(e);
    model_free(m);
}

/* ---- a stand-in asynchronous implementation (what engine_cuda.c plugs in) ---- */

typedef struct {
    bs_engine base;
    int submits[BS_ENGINE_SLOTS], waits[BS_ENGINE_SLOTS], forwards;
    int fail_submit, fail_wait, done[BS_ENGINE_SLOTS];
    float *dst[BS_ENGINE_SLOTS];
    float value[BS_ENGINE_SLOTS];
} fake_engine;

static int fake_submit(bs_engine *base, int slot, const bs_batch *b, const bs_outputs *out, char *err) {
    fake_engine *f = (fake_engine *)base;
    f->submits[slot]++;
    if (f->fail_submit) return bs_err(err, "fake: cannot enqueue");
    f->dst[slot] = out->pooler;
    f->value[slot] = (float)b->ids[0]; /* read b now: it may change after submit */
    f->done[slot] = 0;
    return BS_OK;
}

static int fake_wait(bs_engine *base, int slot, char *err) {
    fake_engine *f = (fake_engine *)base;
    f->waits[slot]++;
    if (f->fail_wait) return bs_err(err, "fake: device fault");
    if (f->dst[slot]) f->dst[slot][0] = f->value[slot];
    return BS_OK;
}

static int fake_ready(bs_engine *base, int slot) {
    return ((fake_engine *)base)->done[slot];
}

static int fake_forward(bs_engine *base, const bs_batch *b, const bs_outputs *out, char *err) {
    const int slot = base->slot_busy[0] ? 1 : 0; /* as engine_cuda.c's */
    ((fake_engine *)base)->forwards++;
    if (fake_submit(base, slot, b, out, err) != BS_OK) return BS_ERR;
    return fake_wait(base, slot, err);
}

static void engine_async_dispatch_to_an_asynchronous_implementation(void) {
    char err[BS_ERRLEN];
    bs_model *m = tiny_model();
    CHECK(m != NULL);
    if (!m) return;
    fake_engine f = {.base = {.forward = fake_forward,
                              .submit = fake_submit,
                              .wait = fake_wait,
                              .ready = fake_ready,
                              .n_slots = 2,
                              .model = m,
                              .opts = {.max_seqs = 4, .max_tokens = 64, .max_seq_len = 64}}};
    bs_engine *e = &f.base;
    CHECK_INT(engine_slots(e), 2);
    int32_t ids[2] = {7, 8}, cu[2] = {0, 2};
    bs_batch b = {.n_seq = 1, .ids = ids, .cu_seqlens = cu};
    float p0[C] = {0}, p1[C] = {0}, pf[C] = {0};
    bs_outputs o0 = {.pooler = p0}, o1 = {.pooler = p1}, of = {.pooler = pf};

    CHECK_INT(engine_submit(e, 0, &b, &o0, err), BS_OK);
    ids[0] = 9;
    CHECK_INT(engine_submit(e, 1, &b, &o1, err), BS_OK);
    CHECK_INT(engine_ready(e, 0), 0); /* the implementation says: still computing */
    f.done[0] = 1;
    CHECK_INT(engine_ready(e, 0), 1);
    err[0] = '\0';
    CHECK_INT(engine_forward(e, &b, &of, err), BS_ERR); /* both slots in flight */
    CHECK_STR(err, "engine_forward: both engine slots hold a batch (engine_wait one first)");
    CHECK_INT(f.forwards, 0);
    CHECK_INT(engine_wait(e, 0, err), BS_OK);
    CHECK_NEAR(p0[0], 7, 0);
    CHECK_INT(engine_forward(e, &b, &of, err), BS_OK); /* slot 0 is free again: forward uses it */
    CHECK_NEAR(pf[0], 9, 0);
    CHECK_INT(f.submits[0], 2);
    CHECK_INT(engine_wait(e, 1, err), BS_OK);
    CHECK_NEAR(p1[0], 9, 0);

    /* the invalid batch never reaches the implementation */
    int32_t bad_cu[2] = {1, 2};
    bs_batch bb = {.n_seq = 1, .ids = ids, .cu_seqlens = bad_cu};
    CHECK_INT(engine_submit(e, 0, &bb, &o0, err), BS_ERR);
    CHECK_STR(err, "cu_seqlens[0] must be 0");
    CHECK_INT(f.submits[0], 2);

    /* a failed submit leaves nothing in flight; a failed wait still frees the slot */
    f.fail_submit = 1;
    CHECK_INT(engine_submit(e, 0, &b, &o0, err), BS_ERR);
    CHECK_STR(err, "fake: cannot enqueue");
    CHECK_INT(engine_ready(e, 0), 0);
    CHECK_INT(engine_wait(e, 0, err), BS_ERR);
    CHECK_STR(err, "engine_wait: engine slot 0 holds no batch");
    CHECK_INT(f.waits[0], 2); /* the forward's and the first wait: not this one */
    f.fail_submit = 0;
    f.fail_wait = 1;
    CHECK_INT(engine_submit(e, 0, &b, &o0, err), BS_OK);
    CHECK_INT(engine_wait(e, 0, err), BS_ERR);
    CHECK_STR(err, "fake: device fault");
    f.fail_wait = 0;
    CHECK_INT(engine_submit(e, 0, &b, &o0, err), BS_OK); /* free again */
    CHECK_INT(engine_wait(e, 0, err), BS_OK);
    model_free(m);
}

int main(void) {
    RUN(engine_async_cpu_alternating_slots_equal_forward);
    RUN(engine_async_slot_misuse_is_a_one_line_error);
    RUN(engine_async_dispatch_to_an_asynchronous_implementation);
    return bs_test_done();
}
