/* kernels/layernorm.cu, convert.cu, gelu.cu and pooling.cu, launchers and kernels as they are, run on the CPU by
 * the warp emulator tests/emu/simt.hpp, with the checks of their GPU tests (tests/gpu/test_kernels.c)
 * on host memory: the embedding and residual LayerNorms against their CPU twins (shared-memory
 * kernel at C = 100, 16-byte register path at 256..1024 for f16/bf16; in place, with and without
 * bias, bucket padding rows), their fused E4M3 copies bit for bit against the cast of their stored
 * output, and the fp8 amax and casts (8-wide and element paths, a misaligned pointer) bit for bit
 * against the twins, bias + GELU, the CLS/mean pooling and the tanh pooler. Each launch must leave
 * no emulator error (a deadlock, a divergent collective,
 * a warp collective with exited threads). The outputs sit between guard bytes that must stay as
 * they were. The GPU tests still run these on a GPU; this runs their source in every CI build. */
#include "emu/simt.hpp"

#include "convert.cu"
#include "gelu.cu"
#include "layernorm.cu"
#include "pooling.cu"

#include "emu/emu_test.hpp"
#include "test.h"

#include <vector>

static std::vector<float> rand_vec(size_t n, float lo, float hi, bs_dtype dt) {
    std::vector<float> v(n);
    for (auto &x : v) x = bs_round_dtype(urand(lo, hi), dt);
    return v;
}

/* A device tensor on the host: n elements of dt between 64 guard bytes each side (0x5a). */
struct dev {
    std::vector<unsigned char> buf;
    size_t n, es;
    dev(size_t n_, bs_dtype dt) : buf(n_ * bs_dtype_size(dt) + 128 + 16, 0x5a), n(n_), es(bs_dtype_size(dt)) {}
    void *p() { return buf.data() + 64 + pad(); }
    size_t pad() const { /* the payload 16-byte aligned, as cudaMalloc's */
        return (16 - ((uintptr_t)buf.data() + 64) % 16) % 16;
    }
    bool guards_intact() const {
        for (size_t i = 0; i < 64 + pad(); i++)
            if (buf[i] != 0x5a) return false;
        for (size_t i = 64 + pad() + n * es; i < buf.size(); i++)
            if (buf[i] != 0x5a) return false;
        return true;
    }
};
static dev upload(const std::vector<float> &x, bs_dtype dt) {
    dev d(x.size(), dt);
    for (size_t i = 0; i < x.size(); i++) {
        unsigned char *o = (unsigned char *)d.p() + i * d.es;
        if (dt == BS_DT_F32) {
            memcpy(o, &x[i], 4);
        } else if (dt == BS_DT_F16) {
            const __half h = to_t<__half>(x[i]);
            memcpy(o, (const void *)&h, 2);
        } else {
            const __nv_bfloat16 h = to_t<__nv_bfloat16>(x[i]);
            memcpy(o, (const void *)&h, 2);
        }
    }
    return d;
}
static std::vector<float> download(dev &d, bs_dtype dt) {
    std::vector<float> x(d.n);
    for (size_t i = 0; i < d.n; i++) {
        const unsigned char *o = (const unsigned char *)d.p() + i * d.es;
        if (dt == BS_DT_F32) {
            memcpy(&x[i], o, 4);
        } else if (dt == BS_DT_F16) {
            __half h;
            memcpy((void *)&h, o, 2);
            x[i] = __half2float(h);
        } else {
            __nv_bfloat16 h;
            memcpy((void *)&h, o, 2);
            x[i] = __bfloat162float(h);
        }
    }
    return x;
}

static const bs_dtype act_types[3] = {BS_DT_F32, BS_DT_F16, BS_DT_BF16};

/* a launch through the real launcher: success and no emulator error */
#define CHECK_LAUNCH(call)                                                                                             \
    do {                                                                                                               \
        bs_emu::reset(bs_emu::Options{true, 0, false});                                                                \
        const cudaError_t e_ = (call);                                                                                 \
        if (bs_emu::errors()) fprintf(stderr, "  emulator: %s\n", bs_emu::first_error());                              \
        CHECK_INT(e_, cudaSuccess);                                                                                    \
        CHECK_INT(bs_emu::errors(), 0);                                                                                \
    } while (0)

/* E4M3 bytes of n values against the cast of x / scale (bit for bit through the twin) */
static int q8_mismatches(const uint8_t *q, const float *x, size_t n, float scale, const char *what) {
    std::vector<float> deq(n);
    quantize_fp8_ref(deq.data(), x, n, scale);
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (bs_e4m3_decode(q[i]) * scale != deq[i] && bad++ < 3)
            fprintf(stderr, "  %s: x=%.9g got %.9g twin %.9g\n", what, x[i], bs_e4m3_decode(q[i]) * scale, deq[i]);
    return bad;
}

/* ---- LayerNorm family ---- */

static void check_residual_layernorm(int C) {
    const int T = 37;
    const std::vector<float> g = rand_vec(C, 0.5f, 1.5f, BS_DT_F32), b = rand_vec(C, -0.5f, 0.5f, BS_DT_F32),
                             bias = rand_vec(C, -1, 1, BS_DT_F32);
    for (bs_dtype dt : act_types)
        for (int mode = 0; mode < 3; mode++) { /* 0: a + res, 1: a + bias + res, 2: a alone (the GEMM added both) */
            const int with_bias = mode == 1, with_res = mode != 2;
            const std::vector<float> a = rand_vec((size_t)T * C, -3, 3, dt), res = rand_vec((size_t)T * C, -3, 3, dt);
            dev da = upload(a, dt), dres = upload(res, dt), dg = upload(g, BS_DT_F32), db = upload(b, BS_DT_F32),
                dbias = upload(bias, BS_DT_F32);
            /* out aliases res, as the engine may; without res it aliases a */
            dev &dout = with_res ? dres : da;
            CHECK_LAUNCH(residual_layernorm_forward(dout.p(), da.p(), with_bias ? (const float *)dbias.p() : NULL,
                                                    with_res ? dres.p() : NULL, (const float *)dg.p(),
                                                    (const float *)db.p(), T, C, 1e-12f, dt, nullptr));
            std::vector<float> got = download(dout, dt), want((size_t)T * C), row(C);
            residual_layernorm_ref(want.data(), a.data(), with_bias ? bias.data() : NULL, with_res ? res.data() : NULL,
                                   g.data(), b.data(), T, C, 1e-12f, row.data());
            const double d = bs_test_max_abs_diff(got.data(), want.data(), got.size());
            fprintf(stderr, "  residual LN C=%d %s bias=%d res=%d max |diff| %.3g\n", C, bs_dtype_name(dt), with_bias,
                    with_res, d);
            CHECK_NEAR(d, 0, tol_for(dt, 6.0, 2e-5));
            CHECK(dout.guards_intact());
        }
}

static void residual_layernorm_matches_twin_in_place_without_bias_and_without_residual(void) {
    check_residual_layernorm(768);  /* BERT-base: the 16-byte path, 3 vectors a lane */
    check_residual_layernorm(256);  /* 1 vector */
    check_residual_layernorm(1024); /* 4 vectors */
    check_residual_layernorm(100);  /* the shared-memory kernel */
}

static void check_embedding_layernorm(int C) {
    const int V = 50, P = 40, B = 3;
    const int32_t cu[4] = {0, 1, 17, 40}; /* lengths 1, 16, 23; rows 40..44 are bucket padding */
    const int T = cu[B], rows = T + 5;
    std::vector<int32_t> ids(rows);
    for (int t = 0; t < rows; t++) ids[t] = t < T ? (int32_t)(urand(0, 1) * V) % V : 0;
    const std::vector<float> g = rand_vec(C, 0.5f, 1.5f, BS_DT_F32), b = rand_vec(C, -0.5f, 0.5f, BS_DT_F32);
    for (bs_dtype dt : act_types) {
        const std::vector<float> word = rand_vec((size_t)V * C, -1, 1, dt), pos = rand_vec((size_t)P * C, -1, 1, dt),
                                 type0 = rand_vec(C, -1, 1, dt);
        dev dw = upload(word, dt), dp = upload(pos, dt), dt0 = upload(type0, dt), dg = upload(g, BS_DT_F32),
            db = upload(b, BS_DT_F32), dout((size_t)rows * C, dt);
        CHECK_LAUNCH(embedding_layernorm_forward(dout.p(), ids.data(), cu, B, dw.p(), dp.p(), dt0.p(),
                                                 (const float *)dg.p(), (const float *)db.p(), rows, C, 1e-12f, dt,
                                                 nullptr));
        std::vector<float> got = download(dout, dt), want((size_t)rows * C), row(C);
        embedding_layernorm_ref(want.data(), ids.data(), cu, B, word.data(), pos.data(), type0.data(), g.data(),
                                b.data(), rows, C, 1e-12f, row.data());
        const double d = bs_test_max_abs_diff(got.data(), want.data(), got.size());
        fprintf(stderr, "  embedding LN C=%d %s max |diff| %.3g\n", C, bs_dtype_name(dt), d);
        CHECK_NEAR(d, 0, tol_for(dt, 6.0, 2e-5));
        CHECK(dout.guards_intact());
    }
}

static void embedding_layernorm_matches_twin_with_positions_per_sequence(void) {
    check_embedding_layernorm(100);
    check_embedding_layernorm(768);
}

/* the LayerNorms' fused E4M3 copy is the cast of their stored output (16-byte path at C = 768, a
 * second pass at C = 100), and the plain call writes the same LayerNorm output */
static void layernorm_e4m3_copies_are_the_cast_of_their_output(void) {
    const float scale = 0.0123f; /* |x| <= 3: up to 244; some saturate past 448 */
    for (int k = 1; k < 3; k++) {
        const bs_dtype dt = act_types[k];
        const int Cs[2] = {768, 100}, T = 21;
        for (int C : Cs) {
            const std::vector<float> g = rand_vec(C, 0.5f, 1.5f, BS_DT_F32), b = rand_vec(C, -0.5f, 0.5f, BS_DT_F32),
                                     a = rand_vec((size_t)T * C, -3, 3, dt), res = rand_vec((size_t)T * C, -3, 3, dt);
            dev da = upload(a, dt), dres = upload(res, dt), dg = upload(g, BS_DT_F32), db = upload(b, BS_DT_F32),
                dout((size_t)T * C, dt), dout2((size_t)T * C, dt), dq((size_t)T * C, BS_DT_E4M3);
            CHECK_LAUNCH(residual_layernorm_q8_forward(dout.p(), da.p(), NULL, dres.p(), (const float *)dg.p(),
                                                       (const float *)db.p(), T, C, 1e-12f, dt, dq.p(), &scale,
                                                       nullptr));
            const std::vector<float> y = download(dout, dt);
            char what[64];
            snprintf(what, sizeof what, "residual LN q8 C=%d %s", C, bs_dtype_name(dt));
            CHECK_INT(q8_mismatches((const uint8_t *)dq.p(), y.data(), y.size(), scale, what), 0);
            CHECK(dq.guards_intact());
            CHECK_LAUNCH(residual_layernorm_forward(dout2.p(), da.p(), NULL, dres.p(), (const float *)dg.p(),
                                                    (const float *)db.p(), T, C, 1e-12f, dt, nullptr));
            const std::vector<float> y2 = download(dout2, dt);
            CHECK(y == y2);
        }
        const int C = 768, V = 3, P = 8, n = 5;
        const std::vector<float> word = rand_vec((size_t)V * C, -1, 1, dt), pos = rand_vec((size_t)P * C, -1, 1, dt),
                                 t0 = rand_vec(C, -1, 1, dt), g = rand_vec(C, 0.5f, 1.5f, BS_DT_F32),
                                 b = rand_vec(C, -0.5f, 0.5f, BS_DT_F32);
        const int32_t ids[5] = {0, 2, 1, 1, 0}, cu[3] = {0, 2, 5};
        dev dw = upload(word, dt), dp = upload(pos, dt), dt0 = upload(t0, dt), dg = upload(g, BS_DT_F32),
            db = upload(b, BS_DT_F32), dout((size_t)n * C, dt), dq((size_t)n * C, BS_DT_E4M3);
        CHECK_LAUNCH(embedding_layernorm_q8_forward(dout.p(), ids, cu, 2, dw.p(), dp.p(), dt0.p(),
                                                    (const float *)dg.p(), (const float *)db.p(), n, C, 1e-12f, dt,
                                                    dq.p(), &scale, nullptr));
        const std::vector<float> y = download(dout, dt);
        CHECK_INT(q8_mismatches((const uint8_t *)dq.p(), y.data(), y.size(), scale, "embedding LN q8"), 0);
        CHECK(dq.guards_intact());
    }
}

/* ---- fp8 passes ---- */

/* (offset, n): the 8-wide path (aligned, n % 8 == 0), the element path for n % 8 != 0 and for a
 * pointer one element off 16-byte alignment, and the 8-wide path past one grid stride (512 blocks x
 * 256 threads x 8 elements): threads 0..999 take the loop with two loads in flight, the others its
 * tail. The amax (-12.5) sits where each part of the reduction must see it: at 777 (warps 0..3 of
 * its block on every path), 2003 (warps 6 and 7), n - 3 (the last group: the last thread's tail),
 * and in the long case in the tail (40003) and in the last group, which only a pair's second load
 * reads there (n - 5). */
static void fp8_quantize_uses_amax_scale_and_saturating_rne(void) {
    const size_t big = (size_t)8 * (BS_AMAX_PARTS * 256 + 1000);
    const size_t cases[4][2] = {{0, 20000}, {0, 20003}, {1, 19992}, {0, big}};
    for (bs_dtype dt : act_types)
        for (auto &c : cases) {
            const size_t off = c[0], n = c[1];
            const std::vector<size_t> ats =
                n == big ? std::vector<size_t>{777, 40003, n - 5} : std::vector<size_t>{777, 2003, n - 3};
            for (size_t at : ats) {
                std::vector<float> x = rand_vec(n + 8, -3.0f, 3.0f, dt);
                x[at] = -12.5f;
                dev dx = upload(x, dt), parts(BS_AMAX_PARTS, BS_DT_F32), scale(1, BS_DT_F32), q(n + 1, BS_DT_E4M3);
                const void *px = (const char *)dx.p() + off * bs_dtype_size(dt);
                uint8_t *pq = (uint8_t *)q.p() + off;
                CHECK_LAUNCH(amax_forward((float *)parts.p(), px, dt, n, nullptr));
                CHECK_LAUNCH(
                    quantize_fp8_forward(pq, (float *)scale.p(), px, dt, n, (const float *)parts.p(), nullptr));
                const float want_scale = convert_fp8_scale_ref(x.data() + off, n);
                CHECK(want_scale == 12.5f / BS_E4M3_MAX);
                CHECK(*(const float *)scale.p() == want_scale);
                char what[80];
                snprintf(what, sizeof what, "quantize %s n=%zu off=%zu amax at %zu", bs_dtype_name(dt), n, off, at);
                CHECK_INT(q8_mismatches(pq, x.data() + off, n, want_scale, what), 0);
                CHECK(bs_e4m3_decode(pq[at - off]) == -448.0f); /* the amax maps onto E4M3's largest value */
                CHECK(q.guards_intact());
                if (off == 0) CHECK(pq[n] == 0x5a); /* the byte after the range: untouched */
            }
        }
}

static void fp8_static_quantize_is_the_cast_by_the_fixed_scale(void) {
    const float scale = 0.0123f;
    for (bs_dtype dt : act_types)
        for (size_t n : {4096, 4099}) {
            std::vector<float> x = rand_vec(n, -3.0f, 3.0f, dt);
            x[5] = 7.5f; /* past 448 * scale: saturates */
            dev dx = upload(x, dt), q(n, BS_DT_E4M3);
            CHECK_LAUNCH(quantize_fp8_static_forward(q.p(), dx.p(), dt, n, &scale, nullptr));
            CHECK_INT(q8_mismatches((const uint8_t *)q.p(), x.data(), n, scale, "quantize static"), 0);
            CHECK(bs_e4m3_decode(((const uint8_t *)q.p())[5]) == 448.0f);
            CHECK(q.guards_intact());
        }
}

/* ---- GELU, pooling ---- */

static void bias_gelu_is_erf_gelu_of_x_plus_bias(void) {
    const size_t rows = 70;
    const int N = 300;
    const std::vector<float> bias = rand_vec(N, -1, 1, BS_DT_F32);
    dev dbias = upload(bias, BS_DT_F32);
    for (bs_dtype dt : act_types)
        for (int gelu = 0; gelu < 2; gelu++) {
            std::vector<float> x = rand_vec(rows * N, -5, 5, dt);
            dev dx = upload(x, dt);
            CHECK_LAUNCH(bias_gelu_forward(dx.p(), (const float *)dbias.p(), rows, N, gelu, dt, nullptr));
            const std::vector<float> got = download(dx, dt);
            bias_gelu_ref(x.data(), bias.data(), rows, N, gelu);
            const double d = bs_test_max_abs_diff(got.data(), x.data(), got.size());
            fprintf(stderr, "  bias+gelu %s gelu=%d max |diff| %.3g\n", bs_dtype_name(dt), gelu, d);
            CHECK_NEAR(d, 0, tol_for(dt, 6.0, 1e-5));
            CHECK(dx.guards_intact());
        }
}

static void pool_and_pooler_match_twins_with_empty_padding_slots(void) {
    const int C = 96, B = 11; /* slots 4, 5 and 10 are padding: length 0; 11 sequences: two pooler groups */
    const int32_t cu[12] = {0, 1, 40, 41, 90, 90, 90, 97, 130, 131, 150, 150};
    const int T = cu[B];
    const std::vector<float> W = rand_vec((size_t)C * C, -0.1f, 0.1f, BS_DT_F32),
                             bias = rand_vec(C, -0.5f, 0.5f, BS_DT_F32);
    for (bs_dtype dt : act_types) {
        const std::vector<float> x = rand_vec((size_t)T * C, -2, 2, dt);
        std::vector<float> Wr(W);
        for (auto &w : Wr) w = bs_round_dtype(w, dt);
        dev dx = upload(x, dt), dW = upload(Wr, dt), dbias = upload(bias, BS_DT_F32), dcls((size_t)B * C, BS_DT_F32),
            dmean((size_t)B * C, BS_DT_F32), dpool((size_t)B * C, BS_DT_F32);
        CHECK_LAUNCH(pool_forward((float *)dcls.p(), (float *)dmean.p(), dx.p(), cu, B, C, dt, nullptr));
        CHECK_LAUNCH(pooler_forward((float *)dpool.p(), (const float *)dcls.p(), dW.p(), (const float *)dbias.p(), B, C,
                                    dt, nullptr));
        const std::vector<float> cls = download(dcls, BS_DT_F32), mean = download(dmean, BS_DT_F32),
                                 pool = download(dpool, BS_DT_F32);
        std::vector<float> wcls((size_t)B * C), wmean((size_t)B * C), wpool((size_t)B * C);
        pool_ref(wcls.data(), wmean.data(), x.data(), cu, B, C);
        pooler_ref(wpool.data(), wcls.data(), Wr.data(), bias.data(), B, C);
        CHECK_NEAR(bs_test_max_abs_diff(cls.data(), wcls.data(), cls.size()), 0, 0);
        CHECK_NEAR(bs_test_max_abs_diff(mean.data(), wmean.data(), mean.size()), 0, 1e-5);
        CHECK_NEAR(bs_test_max_abs_diff(pool.data(), wpool.data(), pool.size()), 0, 1e-5);
        CHECK(cls[4 * C] == 0.0f && mean[5 * C + 7] == 0.0f && mean[10 * C + 95] == 0.0f);
        CHECK(dcls.guards_intact() && dmean.guards_intact() && dpool.guards_intact());
    }
}

/* the CLS rows of a packed tensor: 16-byte path (768 bf16), byte path (an odd row of E4M3 bytes, a
 * misaligned source), padding slots zeroed without reading their source row (here: past the end) */
static void cls_rows_gather_each_sequences_first_row(void) {
    const int32_t cu[7] = {0, 1, 40, 41, 90, 90, 90}; /* slots 4, 5: padding */
    const int B = 6, T = 90;
    const size_t rbs[2] = {768 * 2, 99};
    for (size_t rb : rbs)
        for (int off = 0; off < 2; off++) {
            std::vector<unsigned char> src((size_t)T * rb + 1);
            for (auto &c : src) c = (unsigned char)(urand(0, 256));
            dev d((size_t)B * rb, BS_DT_E4M3); /* 0x5a throughout: the padding rows must turn to zeros */
            std::vector<unsigned char> want((size_t)B * rb);
            bs_emu::reset(bs_emu::Options{true, 0, false});
            const cudaError_t e = cls_rows_forward(d.p(), src.data() + off, cu, B, rb, nullptr);
            CHECK_INT(e, cudaSuccess);
            CHECK_INT(bs_emu::errors(), 0);
            cls_rows_ref(want.data(), src.data() + off, cu, B, rb);
            CHECK(memcmp(d.p(), want.data(), want.size()) == 0);
            CHECK(((const unsigned char *)d.p())[4 * rb + 3] == 0);
            CHECK(d.guards_intact());
        }
}

int main(void) {
    RUN(residual_layernorm_matches_twin_in_place_without_bias_and_without_residual);
    RUN(embedding_layernorm_matches_twin_with_positions_per_sequence);
    RUN(layernorm_e4m3_copies_are_the_cast_of_their_output);
    RUN(fp8_quantize_uses_amax_scale_and_saturating_rne);
    RUN(fp8_static_quantize_is_the_cast_by_the_fixed_scale);
    RUN(bias_gelu_is_erf_gelu_of_x_plus_bias);
    RUN(pool_and_pooler_match_twins_with_empty_padding_slots);
    RUN(cls_rows_gather_each_sequences_first_row);
    return bs_test_done();
}
