/* The mma attention kernel (kernels/attention_mma_kernel.cuh), its own source, run on the CPU by the
 * warp emulator tests/emu/simt.hpp: the padding-free attention over ragged sequences for f16 and bf16,
 * head sizes 32, 64 and 128, against the CPU twin attention_ref with the GPU test's tolerance
 * (tests/gpu/test_kernels.c), and its E4M3 output against its own bf16 output quantised. Each case
 * runs twice: cp.async copies landing at their wait with the threads in step, and landing at once
 * with one warp after another running ahead; both must give the same bytes, with no emulator error (a
 * deadlock, a divergent collective, shared memory or global reads out of bounds, copies in flight
 * at exit). The output buffers start as NaN with guard rows after the T rows: every element must be
 * written and nothing after. First, the emulator's own checks are shown to fire on kernels written
 * to break them. This does not replace the GPU tests (hardware accumulation order, timing, the
 * real instructions); it catches a wrong index, mask, tile edge or buffer hazard without a GPU. */
#include "emu/simt.hpp"

#include "attention_mma_kernel.cuh"

#include "emu/emu_test.hpp"
#include "test.h"

#include <type_traits>
#include <vector>

/* ---- the emulator catches what it claims to ---- */

/* each thread copies one 16-byte row into shared memory, and, without waiting (Wait = false), the
 * warp reads it back after a barrier */
template <bool Wait> static void copy_then_read(float *out, const float *in) {
    BS_DYN_SMEM(sm);
    const int t = threadIdx.x;
    cp_async16(sm + 16 * t, in + 4 * t, 16);
    cp_async_commit();
    if (Wait) cp_async_wait<0>();
    __syncthreads();
    out[t] = ((const float *)sm)[4 * ((t + 1) % 32)];
}

static void copy_only(const float *in) {
    BS_DYN_SMEM(sm);
    cp_async16(sm + 16 * threadIdx.x, in + 4 * threadIdx.x, 16);
    cp_async_commit();
    cp_async_wait<0>();
}

static void divergent(float *out) {
    if (threadIdx.x == 3) {
        __syncwarp();
    } else {
        out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
    }
}

static void emulator_flags_missing_waits_divergence_and_stray_copies(void) {
    float in[128], out[32];
    for (int i = 0; i < 128; i++) in[i] = (float)i;
    const dim3 one(1), warp(32);
    for (int late = 0; late < 2; late++) { /* with the wait: row (t + 1) % 32 either way */
        bs_emu::reset(bs_emu::Options{late == 1, 0});
        bs_emu::launch(one, warp, 512, [&] { copy_then_read<true>(out, in); });
        CHECK_INT(bs_emu::errors(), 0);
        CHECK_NEAR(out[5], 24.0, 0);
        CHECK_NEAR(out[31], 0.0, 0);
    }
    bs_emu::reset(bs_emu::Options{false, 0}); /* no wait, copies at once: hides the bug */
    bs_emu::launch(one, warp, 512, [&] { copy_then_read<false>(out, in); });
    CHECK_NEAR(out[5], 24.0, 0);
    bs_emu::reset(bs_emu::Options{true, 0}); /* no wait, late copies: NaN read, copies left at exit */
    bs_emu::launch(one, warp, 512, [&] { copy_then_read<false>(out, in); });
    CHECK(isnan(out[5]));
    CHECK(bs_emu::errors() > 0);
    CHECK_CONTAINS(bs_emu::first_error(), "in flight at exit");

    bs_emu::reset(bs_emu::Options{true, 0});
    bs_emu::launch(one, warp, 64, [&] { divergent(out); });
    CHECK(bs_emu::errors() > 0);
    CHECK_CONTAINS(bs_emu::first_error(), "different collectives");

    bs_emu::reset(bs_emu::Options{true, 0}); /* a source outside the registered input */
    bs_emu::global_region(in, 64 * sizeof(float));
    bs_emu::launch(one, warp, 512, [&] { copy_only(in); });
    CHECK_CONTAINS(bs_emu::first_error(), "source outside");
    bs_emu::reset(bs_emu::Options{true, 0}); /* and a destination outside shared memory */
    bs_emu::launch(one, warp, 256, [&] { copy_only(in); });
    CHECK_CONTAINS(bs_emu::first_error(), "destination outside");
}

/* ---- the kernel ---- */

/* One problem: sequences, heads, the packed qkv in T (exactly T rows) and its fp32 values. */
template <typename T> struct problem {
    int B, T_, NH, HS, C, cap, n_tiles;
    std::vector<int32_t> cu, tiles;
    T *qkv; /* malloc'd, exactly T x 3C: a read past it is ASan's */
    std::vector<float> qkvf;
    problem(const std::vector<int> &lens, int nh, int hs, int extra_tiles) : NH(nh), HS(hs), C(nh * hs) {
        B = (int)lens.size();
        cu.assign(B + 1, 0);
        for (int s = 0; s < B; s++) cu[s + 1] = cu[s] + lens[s];
        T_ = cu[B];
        cap = attention_tiles_cap(T_, B, BS_ATT_MMA_BQ) + extra_tiles;
        tiles.assign(2 * (size_t)cap, 0);
        n_tiles = attention_tiles(tiles.data(), cap, cu.data(), B, BS_ATT_MMA_BQ);
        const size_t n = (size_t)T_ * 3 * C;
        qkv = (T *)malloc(n * sizeof(T));
        qkvf.resize(n);
        for (size_t i = 0; i < n; i++) {
            qkv[i] = to_t<T>(urand(-2, 2));
            qkvf[i] = from_t<T>(qkv[i]);
        }
    }
    ~problem() { free(qkv); }
    problem(const problem &) = delete;
    problem &operator=(const problem &) = delete;
};

/* Runs the kernel for T over p's sequences into out (pre-filled by the caller) under opt: over p's
 * qkv, or (IN8) over qkv8, E4M3 codes (T x 3C bytes) of value code * *iscale. */
template <typename T, int HS, bool Q8, bool IN8 = false, typename P>
static void run_kernel(const P &p, void *out, const float *oscale, bs_emu::Options opt, const uint8_t *qkv8 = nullptr,
                       const float *iscale = nullptr) {
    bs_emu::reset(opt);
    const void *qkv = IN8 ? (const void *)qkv8 : (const void *)p.qkv;
    bs_emu::global_region(qkv, (size_t)p.T_ * 3 * p.C * (IN8 ? 1 : sizeof(T)));
    const float sl2 = mma_score_scale(HS);
    const int32_t *cu = p.cu.data(), *tiles = p.tiles.data();
    const int NH = p.NH;
    bs_emu::launch(dim3((unsigned)p.cap, (unsigned)NH), dim3(MMA_WARPS * 32),
                   IN8 ? mma_geom<HS>::BYTES8 : mma_geom<HS>::BYTES,
                   [&] { attention_mma_kernel<T, HS, Q8, IN8>(out, qkv, cu, tiles, NH, sl2, oscale, iscale); });
    if (bs_emu::errors())
        fprintf(stderr, "  emulator: %ld errors, first: %s\n", bs_emu::errors(), bs_emu::first_error());
    CHECK_INT(bs_emu::errors(), 0);
}

/* copies landing at their wait, every thread moving in step (a missing wait reads NaN); copies
 * landing at once, each warp in a shuffled order running ahead of the others as far as it can (a
 * buffer refilled while another warp still reads it gives wrong numbers) */
static const bs_emu::Options late_in_step{true, 0, false}, early_run_ahead{false, 2024, true};

/* f16/bf16 output: the twin within the GPU test's tolerance, every element written, the guard
 * rows untouched, the same bytes under both copy timings. Returns the output as float. */
template <typename T, int HS> static std::vector<float> check_output(const problem<T> &p) {
    const size_t no = (size_t)p.T_ * p.C, guard = (size_t)64 * p.C;
    std::vector<uint16_t> out[2];
    for (int mode = 0; mode < 2; mode++) {
        out[mode].assign(no + guard, 0xffff); /* NaN in both types */
        run_kernel<T, HS, false>(p, out[mode].data(), nullptr, mode ? early_run_ahead : late_in_step);
    }
    CHECK(out[0] == out[1]);
    size_t past = 0;
    for (size_t i = no; i < no + guard; i++) past += out[0][i] != 0xffff;
    CHECK_INT((long long)past, 0);
    std::vector<float> got(no), want(no);
    for (size_t i = 0; i < no; i++) {
        T v;
        memcpy((void *)&v, &out[0][i], 2);
        got[i] = from_t<T>(v);
    }
    std::vector<double> scratch((size_t)p.T_ + 1);
    attention_ref(want.data(), p.qkvf.data(), p.cu.data(), p.B, p.NH, HS, scratch.data());
    const double d = bs_test_max_abs_diff(got.data(), want.data(), no);
    fprintf(stderr, "  mma %s HS=%d NH=%d B=%d T=%d tiles %d (+%d unused): max |diff| %.3g\n",
            bs_dtype_name(dtype_of<T>()), HS, p.NH, p.B, p.T_, p.n_tiles, p.cap - p.n_tiles, d);
    CHECK_NEAR(d, 0, tol_for(dtype_of<T>(), 2.0, 2e-5)); /* |values| <= 2 */
    return got;
}

/* E4M3 output (bf16 in): the GPU test's criterion against this kernel's own bf16 output o, i.e.
 * E4M3(o / scale) within half an E4M3 step plus o's own rounding (2^-8 relative), saturating at
 * 448, at least 90 % exactly the cast of o / scale; both copy timings alike; guard rows untouched. */
template <int HS> static void check_e4m3(const problem<__nv_bfloat16> &p, const std::vector<float> &o) {
    const size_t no = (size_t)p.T_ * p.C, guard = (size_t)64 * p.C;
    const float scales[2] = {0.003f, 0.0123f};
    for (int si = 0; si < 2; si++) {
        std::vector<uint8_t> out[2];
        for (int mode = 0; mode < 2; mode++) {
            out[mode].assign(no + guard, 0xff);
            run_kernel<__nv_bfloat16, HS, true>(p, out[mode].data(), &scales[si],
                                                mode ? early_run_ahead : late_in_step);
        }
        CHECK(out[0] == out[1]);
        size_t past = 0, bad = 0, exact = 0, saturated = 0;
        for (size_t i = no; i < no + guard; i++) past += out[0][i] != 0xff;
        for (size_t i = 0; i < no; i++) {
            const float v = o[i] / scales[si], got = bs_e4m3_decode(out[0][i]);
            const float clip = fabsf(v) > BS_E4M3_MAX ? copysignf(BS_E4M3_MAX, v) : v;
            const float slack = fabsf(v) * (1.0f / 256);
            const bool ok = fabsf(v) - slack > BS_E4M3_MAX
                                ? got == clip
                                : fabsf(got - clip) <= 0.5f * bs_e4m3_ulp(fabsf(clip) + slack) + slack;
            exact += got == bs_round_e4m3(v);
            saturated += fabsf(got) == BS_E4M3_MAX;
            if (!ok && bad++ < 3)
                fprintf(stderr, "  element %zu: o/scale %.6g, E4M3 %.6g\n", i, (double)v, (double)got);
        }
        fprintf(stderr, "  mma E4M3 out HS=%d scale %g: %zu of %zu as the cast of the bf16 output, %zu at 448\n", HS,
                (double)scales[si], exact, no, saturated);
        CHECK_INT((long long)past, 0);
        CHECK_INT((long long)bad, 0);
        CHECK(exact >= no * 9 / 10);
        if (si == 0) CHECK(saturated > 0);
    }
}

/* E4M3 in and out (the QKV GEMM writing E4M3): p's values as E4M3 codes at iscale = 2 / 448, the
 * f16 form of the kernel; against the twin over the dequantised values, within half an E4M3 step
 * of its result / scale plus 2e-3 (the probabilities rounded to f16), at least 90 % exactly its
 * cast; both copy timings give the same bytes; guard rows untouched. */
template <int HS> static void check_e4m3_in(const problem<__nv_bfloat16> &p) {
    const size_t nq = (size_t)p.T_ * 3 * p.C, no = (size_t)p.T_ * p.C, guard = (size_t)64 * p.C;
    const float iscale = 2.0f / BS_E4M3_MAX, scale = 0.006f;
    uint8_t *codes = (uint8_t *)malloc(nq); /* exactly T x 3C: a read past it is ASan's */
    std::vector<float> vals(nq);
    for (size_t i = 0; i < nq; i++) {
        codes[i] = __nv_cvt_float_to_fp8(p.qkvf[i] / iscale, __NV_SATFINITE, __NV_E4M3);
        vals[i] = bs_e4m3_decode(codes[i]) * iscale;
    }
    std::vector<uint8_t> out[2];
    for (int mode = 0; mode < 2; mode++) {
        out[mode].assign(no + guard, 0xff);
        run_kernel<__half, HS, true, true>(p, out[mode].data(), &scale, mode ? early_run_ahead : late_in_step, codes,
                                           &iscale);
    }
    CHECK(out[0] == out[1]);
    std::vector<float> want(no);
    std::vector<double> scratch((size_t)p.T_ + 1);
    attention_ref(want.data(), vals.data(), p.cu.data(), p.B, p.NH, HS, scratch.data());
    size_t past = 0, bad = 0, exact = 0;
    for (size_t i = no; i < no + guard; i++) past += out[0][i] != 0xff;
    for (size_t i = 0; i < no; i++) {
        const float got = bs_e4m3_decode(out[0][i]) * scale, v = want[i] / scale;
        const double d = fabs((double)got - want[i]) - 0.5 * bs_e4m3_ulp(fabsf(v)) * scale;
        exact += bs_e4m3_decode(out[0][i]) == bs_round_e4m3(v);
        if (!(d <= 2e-3) && bad++ < 3)
            fprintf(stderr, "  element %zu: want %.6g, E4M3 out %.6g\n", i, (double)want[i], (double)got);
    }
    fprintf(stderr, "  mma E4M3 in/out HS=%d: %zu of %zu as the cast of the twin's result\n", HS, exact, no);
    CHECK_INT((long long)past, 0);
    CHECK_INT((long long)bad, 0);
    CHECK(exact >= no * 9 / 10);
    free(codes);
}

/* Ragged lengths around the 64-query and 64-key tile edges and the 16-row warp slices: one token,
 * part of a warp slice, a full tile, one past, two and a half tiles, three and a bit. Three unused
 * tiles (sequence -1) at the end. */
static const std::vector<int> ragged = {1, 17, 64, 65, 130, 200};

template <typename T, int HS> static void kernel_case(int NH) {
    problem<T> p(ragged, NH, HS, 3);
    CHECK_INT(p.n_tiles, 1 + 1 + 1 + 2 + 3 + 4);
    std::vector<float> o = check_output<T, HS>(p);
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
        check_e4m3<HS>(p, o);
        check_e4m3_in<HS>(p);
    }
}

static void mma_kernel_matches_twin_bf16(void) {
    kernel_case<__nv_bfloat16, 64>(2); /* BERT's head size */
    kernel_case<__nv_bfloat16, 32>(3);
    kernel_case<__nv_bfloat16, 128>(1);
}

static void mma_kernel_matches_twin_f16(void) {
    kernel_case<__half, 64>(2);
    kernel_case<__half, 32>(1);
    kernel_case<__half, 128>(1);
}

/* Scores far apart (one key dominating, others underflowing to 0 after exp2) and a row's max met
 * only in a later key tile: the online softmax's rescaling (exp2(m_old - m_new)) at work. */
static void mma_kernel_online_softmax_rescales(void) {
    problem<__nv_bfloat16> p({150, 70}, 2, 64, 0);
    const int C = p.C;
    for (int t = 0; t < p.T_; t++) /* a key late in sequence 0 aligned with every query's direction */
        for (int c = 0; c < 64; c++) {
            const float q = (c % 2 ? 1.0f : 0.5f), k = t == 140 ? 2.0f : urand(-0.1f, 0.1f);
            for (int h = 0; h < 2; h++) {
                const size_t row = (size_t)t * 3 * C;
                p.qkv[row + h * 64 + c] = to_t<__nv_bfloat16>(q);
                p.qkv[row + C + h * 64 + c] = to_t<__nv_bfloat16>(k * (h + 1));
            }
        }
    for (size_t i = 0; i < p.qkvf.size(); i++) p.qkvf[i] = from_t(p.qkv[i]);
    (void)check_output<__nv_bfloat16, 64>(p);
}

int main(void) {
    RUN(emulator_flags_missing_waits_divergence_and_stray_copies);
    RUN(mma_kernel_matches_twin_bf16);
    RUN(mma_kernel_matches_twin_f16);
    RUN(mma_kernel_online_softmax_rescales);
    return bs_test_done();
}
