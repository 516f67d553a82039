/* Our persistent Hopper GEMM (kernels/gemm_sm90.cu), its own source, host launcher included, run
 * on the CPU by the warp emulator (tests/emu/simt.hpp) with its mbarriers, TMA loads and
 * warpgroup MMAs: both forms (ping-pong, cooperative), bf16, f16 and E4M3 inputs, E4M3 and 16-bit
 * outputs, the three epilogues, partial row tiles and one row, and 1 to 4 CTAs so that each CTA
 * loops over many tiles (both consumers, their hand-overs, the stage ring wrapping around many
 * times), against the product in double on the CPU with tests/gpu/test_gemm_sm90.c's tolerances;
 * the 16 rows after M must keep their bytes. Each case runs four times: threads in order; shuffled
 * with one warp running ahead of the others; and twice with the TMA loads landing up to 12 or 40
 * scheduling rounds after they are issued (so a wait that passes on the wrong mbarrier phase reads
 * a stage before its data is there). All four must give the same bytes with no emulator error (a wait that never
 * completes, a warpgroup issuing different operands, a TMA box outside the tensor map or shared memory, an mbarrier
 * used uninitialised or arrived at too often). First, the emulator's own Hopper checks are shown to fire. What this
 * does not check: the real instructions' timing and the tensor cores' own rounding (the GPU tests do: test_gemm_sm90);
 * what it does check is every index, tile, stage, phase, descriptor and swizzle the kernel
 * computes, without a GPU. */
#include "emu/simt.hpp"

#include <cudaTypedefs.h>

#include <map>
#include <type_traits>
#include <vector>

/* what the launcher needs of the CUDA runtime, as the emulator answers it: an H100's SM count
 * (4: so that one CTA per SM still loops over tiles), the opt-in shared memory, and the driver's
 * tensor-map encoder (the emulator's) */
static int emu_sms = 4;
template <typename F> static inline cudaError_t cudaFuncSetAttribute(F *, enum cudaFuncAttribute a, int v) {
    return a == cudaFuncAttributeMaxDynamicSharedMemorySize && v <= 227 * 1024 ? cudaSuccess : cudaErrorInvalidValue;
}
extern "C" cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
extern "C" cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int) {
    if (a != cudaDevAttrMultiProcessorCount) return cudaErrorInvalidValue;
    *v = emu_sms;
    return cudaSuccess;
}
extern "C" cudaError_t cudaGetDriverEntryPointByVersion(const char *sym, void **fn, unsigned int, unsigned long long,
                                                        cudaDriverEntryPointQueryResult *q) {
    const bool ok = !strcmp(sym, "cuTensorMapEncodeTiled");
    *fn = ok ? (void *)&bs_emu::encode_tiled : nullptr;
    if (q) *q = ok ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}

#define BS_EMU_SM90 1
#include "gemm_sm90.cu"

#include "emu/emu_test.hpp"
#include "test.h"

/* ---- the emulator's Hopper checks fire ---- */

/* thread 0 waits on an mbarrier nobody arrives at (Arrive = false), or that thread 1 arrives at */
template <bool Arrive> static void lone_wait() {
    BS_DYN_SMEM(sm);
    const uint32_t bar = gl_smem(sm);
    if (threadIdx.x == 0) gl_bar_init(bar, 1);
    __syncthreads();
    if (Arrive && threadIdx.x == 1) gl_bar_arrive(bar);
    if (threadIdx.x == 0) gl_bar_wait(bar, 0);
}

/* a warpgroup whose threads issue different B descriptors (Diverge), or the same */
template <bool Diverge> static void wgmma_operands(float *out) {
    BS_DYN_SMEM(sm);
    memset(sm, 0, 2048 + 64 * 128 + 128 * 128);
    float acc[64];
    for (int i = 0; i < 64; i++) acc[i] = 0;
    const uint32_t a = 2048, b = a + 64 * 128 + (Diverge && threadIdx.x == 5 ? 1024 : 0);
    gl_mma<__nv_bfloat16, 128>::run(acc, wg_desc_sw128(a), wg_desc_sw128(b), 1);
    out[threadIdx.x] = acc[0];
}

static void emulator_catches_hopper_slips(void) {
    bs_emu::reset(bs_emu::Options{});
    bs_emu::launch(dim3(1), dim3(64), 64, [] { lone_wait<true>(); });
    CHECK_INT(bs_emu::errors(), 0);
    bs_emu::reset(bs_emu::Options{});
    bs_emu::launch(dim3(1), dim3(64), 64, [] { lone_wait<false>(); });
    CHECK(bs_emu::errors() > 0);
    CHECK(strstr(bs_emu::first_error(), "a wait that never completes") != nullptr);

    std::vector<float> out(128);
    bs_emu::reset(bs_emu::Options{});
    bs_emu::launch(dim3(1), dim3(128), 2048 + 64 * 128 + 128 * 128, [&] { wgmma_operands<false>(out.data()); });
    CHECK_INT(bs_emu::errors(), 0);
    bs_emu::reset(bs_emu::Options{});
    bs_emu::launch(dim3(1), dim3(128), 2048 + 64 * 128 + 128 * 128, [&] { wgmma_operands<true>(out.data()); });
    CHECK(bs_emu::errors() > 0);
    CHECK(strstr(bs_emu::first_error(), "issued different operands") != nullptr);

    /* the encoder refuses what the driver would: a box not 128 bytes wide, a misaligned tensor */
    alignas(64) CUtensorMap m;
    std::vector<uint16_t> buf(64 * 256 + 8);
    cuuint64_t dims[2] = {256, 64}, strides[1] = {512};
    cuuint32_t box[2] = {64, 64}, wide[2] = {128, 64}, es[2] = {1, 1};
    CHECK_INT(bs_emu::encode_tiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, buf.data(), dims, strides, box, es,
                                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
              CUDA_SUCCESS);
    CHECK_INT(bs_emu::encode_tiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, buf.data(), dims, strides, wide, es,
                                   CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
              CUDA_ERROR_INVALID_VALUE);
    CHECK_INT(bs_emu::encode_tiled(&m, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, (char *)buf.data() + 2, dims, strides, box,
                                   es, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                   CU_TENSOR_MAP_L2_PROMOTION_NONE, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE),
              CUDA_ERROR_INVALID_VALUE);
}

/* ---- the kernel against the CPU ---- */

struct gcase {
    int M, N, K;
    bs_dtype in;
    int epi, q8, ctas, form;
};

static uint16_t bits16(float v, bs_dtype dt) {
    if (dt == BS_DT_BF16) return __nv_bfloat16_raw(__float2bfloat16_rn(v)).x;
    return __half_raw(__float2half_rn(v)).x;
}
static float from16(uint16_t b, bs_dtype dt) {
    if (dt == BS_DT_BF16) {
        __nv_bfloat16_raw r;
        r.x = b;
        return __bfloat162float(__nv_bfloat16(r));
    }
    __half_raw r;
    r.x = b;
    return __half2float(__half(r));
}
static float e4m3(uint8_t c) {
    return __half2float(__half(__nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)c, __NV_E4M3)));
}

/* runs one case under opt; returns the output bytes (M + 16 rows) */
static std::vector<uint8_t> run_gemm(const gcase &c, bs_emu::Options opt, const std::vector<uint8_t> &X,
                                     const std::vector<uint8_t> &W, const std::vector<uint16_t> &bias,
                                     const std::vector<uint16_t> &res, const float *scales) {
    const bs_dtype act = c.in == BS_DT_E4M3 ? BS_DT_BF16 : c.in;
    const size_t os = c.q8 ? 1 : 2, ybytes = (size_t)(c.M + 16) * c.N * os;
    std::vector<uint8_t> Y(ybytes + 64);
    uint8_t *y = Y.data() + (16 - ((uintptr_t)Y.data() & 15)) % 16; /* 16-byte aligned, as device memory */
    memset(y, 0x5a, ybytes);
    bs_emu::reset(opt);
    bs_emu::global_region(X.data(), X.size());
    bs_emu::global_region(W.data(), W.size());
    const cudaError_t e = gemm_sm90_forward(y, X.data(), W.data(), c.M, c.N, c.K, c.in, act, scales, scales + 1,
                                            bias.data(), c.epi, c.epi == BS_GS_BIAS_RES ? res.data() : nullptr,
                                            c.q8 ? scales + 2 : nullptr, c.ctas, c.form, nullptr);
    CHECK_INT(e, cudaSuccess);
    CHECK_INT(bs_emu::errors(), 0);
    if (bs_emu::errors()) fprintf(stderr, "  emulator: %s\n", bs_emu::first_error());
    return std::vector<uint8_t>(y, y + ybytes);
}

static void run_case(const gcase &c) {
    const bool e8 = c.in == BS_DT_E4M3;
    const bs_dtype act = e8 ? BS_DT_BF16 : c.in;
    const size_t is = e8 ? 1 : 2;
    /* inputs in 16-byte aligned vectors (std::vector's allocator gives 16 on glibc) */
    std::vector<uint8_t> X((size_t)c.M * c.K * is + 16), W((size_t)c.N * c.K * is + 16);
    std::vector<uint16_t> bias(c.N), res((size_t)c.M * c.N);
    std::vector<float> x((size_t)c.M * c.K), w((size_t)c.N * c.K);
    const float scales[3] = {1.0f / 256, 1.0f / 16, 32.0f}; /* sa (W), sb (X), the D scale */
    for (size_t i = 0; i < x.size(); i++) {
        if (e8) {
            X[i] = (uint8_t)(((emu_rng_state = emu_rng_state * 1664525u + 1013904223u) >> 9) & 0xff);
            if ((X[i] & 0x7f) >= 0x50) X[i] &= 0xa7; /* finite and at most ~7.5: exponent field under 10 */
            x[i] = e4m3(X[i]) * scales[1];
        } else {
            const uint16_t b = bits16(urand(-1, 1), c.in);
            memcpy(&X[2 * i], &b, 2);
            x[i] = from16(b, c.in);
        }
    }
    const float wa = 2.0f / sqrtf((float)c.K);
    for (size_t i = 0; i < w.size(); i++) {
        if (e8) {
            W[i] = (uint8_t)(((emu_rng_state = emu_rng_state * 1664525u + 1013904223u) >> 9) & 0xff);
            if ((W[i] & 0x7f) >= 0x60) W[i] &= 0xb7;
            w[i] = e4m3(W[i]) * scales[0];
        } else {
            const uint16_t b = bits16(urand(-wa, wa), c.in);
            memcpy(&W[2 * i], &b, 2);
            w[i] = from16(b, c.in);
        }
    }
    for (auto &b : bias) b = bits16(urand(-0.1f, 0.1f), act);
    for (auto &r : res) r = bits16(urand(-2, 2), act);

    const std::vector<uint8_t> y0 = run_gemm(c, bs_emu::Options{true, 0, false, 0}, X, W, bias, res, scales);
    const std::vector<uint8_t> y1 = run_gemm(c, bs_emu::Options{true, 2024, true, 0}, X, W, bias, res, scales);
    const std::vector<uint8_t> y2 = run_gemm(c, bs_emu::Options{true, 77, false, 12}, X, W, bias, res, scales);
    const std::vector<uint8_t> y3 = run_gemm(c, bs_emu::Options{true, 5, true, 40}, X, W, bias, res, scales);
    CHECK(y0 == y1); /* the schedule changes nothing */
    CHECK(y0 == y2);
    CHECK(y0 == y3);

    const size_t os = c.q8 ? 1 : 2;
    size_t bad = 0, past = 0;
    double worst = 0;
    for (int t = 0; t < c.M; t++)
        for (int n = 0; n < c.N; n++) {
            double acc = 0;
            for (int k = 0; k < c.K; k++) acc += (double)x[(size_t)t * c.K + k] * w[(size_t)n * c.K + k];
            double v = acc + from16(bias[n], act);
            if (c.epi == BS_GS_BIAS_GELU) v = 0.5 * v * (1.0 + tanh(0.7978845608028654 * (v + 0.044715 * v * v * v)));
            if (c.epi == BS_GS_BIAS_RES) v += from16(res[(size_t)t * c.N + n], act);
            const size_t at = (size_t)t * c.N + n;
            uint16_t b16 = 0;
            if (!c.q8) memcpy(&b16, &y0[2 * at], 2);
            const double got = c.q8 ? e4m3(y0[at]) / scales[2] : from16(b16, act);
            double tol = e8 ? fabs(v) / 128 + 1.0 / 32 : fabs(v) / 256 + 1.0 / 512;
            if (c.q8) tol += fabs(v) / 8 + 1.0 / 512 / scales[2];
            const double d = fabs(got - v);
            if (!(d <= tol) && bad++ < 3) fprintf(stderr, "    row %d col %d: got %.5g, want %.5g\n", t, n, got, v);
            if (!(d <= worst)) worst = d;
        }
    for (size_t i = (size_t)c.M * c.N * os; i < y0.size(); i++) past += y0[i] != 0x5a;
    fprintf(stderr, "  M=%d N=%d K=%d %s%s epi=%d ctas=%d %s: worst |dy| %.3g, %zu over tol, %zu bytes past\n", c.M,
            c.N, c.K, bs_dtype_name(c.in), c.q8 ? "->e4m3" : "", c.epi, c.ctas,
            c.form == BS_GS_COOPERATIVE ? "cooperative" : "ping-pong", worst, bad, past);
    CHECK_INT(bad, 0);
    CHECK_INT(past, 0);
}

static void pingpong_matches_cpu(void) {
    const gcase cases[] = {
        {200, 256, 128, BS_DT_BF16, BS_GS_BIAS, 0, 1, BS_GS_PINGPONG},      /* 4 tiles on 1 CTA: both consumers */
        {130, 384, 256, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 2, BS_GS_PINGPONG}, /* 6 tiles on 2, partial row tile */
        {300, 128, 512, BS_DT_F16, BS_GS_BIAS_RES, 0, 0, BS_GS_PINGPONG},   /* one per "SM" (4), 8 k-steps */
        /* as many k-steps per tile as the ring has stages or more (BERT-base's K = 768 has 12): only the
         * turn keeps a consumer's first wait of a tile off a phase the producer has not refilled yet */
        {256, 256, 512, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 1, BS_GS_PINGPONG},
        {200, 256, 768, BS_DT_E4M3, BS_GS_BIAS, 1, 1, BS_GS_PINGPONG},
        {1, 256, 128, BS_DT_BF16, BS_GS_BIAS, 0, 0, BS_GS_PINGPONG},        /* one row */
        {150, 256, 256, BS_DT_E4M3, BS_GS_BIAS_GELU, 1, 1, BS_GS_PINGPONG}, /* E4M3 in and out */
        {140, 128, 384, BS_DT_E4M3, BS_GS_BIAS_RES, 0, 1, BS_GS_PINGPONG},  /* E4M3 in, bf16 out, residual */
    };
    for (const gcase &c : cases) run_case(c);
}

static void cooperative_matches_cpu(void) {
    const gcase cases[] = {
        {200, 512, 128, BS_DT_BF16, BS_GS_BIAS, 0, 1, BS_GS_COOPERATIVE},
        {130, 256, 320, BS_DT_BF16, BS_GS_BIAS_GELU, 0, 1, BS_GS_COOPERATIVE}, /* 5 k-steps: the ring of 4 wraps */
        {300, 256, 192, BS_DT_F16, BS_GS_BIAS_RES, 0, 0, BS_GS_COOPERATIVE},
        {150, 256, 256, BS_DT_E4M3, BS_GS_BIAS, 1, 2, BS_GS_COOPERATIVE},
        {256, 512, 768, BS_DT_BF16, BS_GS_BIAS_RES, 0, 1, BS_GS_COOPERATIVE}, /* 12 k-steps, 3 ring turns a tile */
    };
    for (const gcase &c : cases) run_case(c);
}

int main(void) {
    RUN(emulator_catches_hopper_slips);
    RUN(pingpong_matches_cpu);
    RUN(cooperative_matches_cpu);
    return bs_test_done();
}
