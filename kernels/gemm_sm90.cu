// The persistent Hopper GEMM (gemm_sm90.h). Built for sm_90a only, with gemm_ln_sm90.cu (CMake's
// bertstream_kernels_sm90); the building blocks (mbarriers, TMA, wgmma) are sm90_ops.cuh's, the
// layouts wgmma_layout.h's. The shape of it:
//   - grid = one CTA per SM (at most one per tile); CTA b takes tiles b, b + grid, b + 2 grid, ...
//     of the (ceil(M / 128), N / BN) output tiles, N fastest, so the CTAs running at one time
//     share few 128-row slices of X (each read from memory about once) and W stays in L2;
//   - warpgroup 0 is the producer (setmaxnreg 40): one thread issues TMA loads of 128-byte-wide K
//     slices of X (128 rows) and W (BN rows), the 128-byte swizzle, for every k-step of every tile
//     of the CTA, in order, into a ring of stages, each with a full and an empty mbarrier;
//   - warpgroups 1 and 2 are the consumers (setmaxnreg 232), 128 fp32 accumulators per thread,
//     handing a stage back as soon as the next stage's MMAs are issued. Two forms (bs_gs_form):
//   - ping-pong (BN 128): consumer c takes the CTA's tiles c, c + 2, c + 4, ... (local numbering),
//     whole: two wgmma.mma_async m64n128 per 16-bit k16 (E4M3 k32) step, rows 0-63 and 64-127.
//     The turn: a consumer starts a main loop only once the other has finished its own (an
//     mbarrier per consumer, one arrival and one wait per hand-over), so the main loops run one after
//     the other in tile order, and each consumer's epilogue runs under the other's main loop. It
//     also keeps the ring's mbarrier parities right: a consumer waits on a stage's phase only
//     after every earlier phase of that stage has completed;
//   - cooperative (BN 256): both consumers on every tile of the CTA, rows 64c.. with m64n256; a
//     stage is released by both (its empty barrier counts 2);
//   - the epilogue, straight from the accumulators to global memory: v = acc x scales + bias
//     (+ GELU, + residual), two neighbouring columns per 4-byte store (2-byte for E4M3), each
//     chunk's loads issued before its stores.
#include "gemm_sm90.h"

#include "wgmma_layout.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define GS_BM 128      /* rows per tile */
#define GS_THREADS 384 /* the producer warpgroup and the two consumers */

/* The two forms: ping-pong (each consumer a whole 128 x 128 tile, two m64n128 halves; the main loops
 * take turns) and cooperative (both consumers on one 128 x 256 tile, 64 rows each with m64n256; the
 * epilogue is not under anyone's MMAs, but the producer fills the ring with the next tile's first
 * k-steps meanwhile). Either way 128 fp32 accumulators per consumer thread. */
template <bool COOP> struct gs_cfg {
    static constexpr int BN = COOP ? 256 : 128;     /* columns per tile */
    static constexpr int A_BYTES = GS_BM * 128;     /* one stage of X: 128 rows x 128 bytes of K */
    static constexpr int B_BYTES = BN * 128;        /* one stage of W */
    static constexpr int STAGE = A_BYTES + B_BYTES; /* 32 KiB, 48 KiB */
    static constexpr int STAGES = COOP ? 4 : 6;     /* 192 KiB of ring either way */
    static constexpr int READERS = COOP ? 2 : 1;    /* consumers that release a stage */
    static constexpr size_t SMEM = 1024 + STAGES * STAGE + 16 * STAGES + 16; /* + alignment slack, mbarriers */
    static_assert(SMEM <= 227 * 1024, "gemm_sm90: shared memory");
};

extern "C" int gemm_sm90_shape_ok(int N, int K, bs_dtype in, bs_dtype act, int q8, int epi, int form) {
    const int elems = in == BS_DT_E4M3 ? 128 : 64, bn = form == BS_GS_COOPERATIVE ? 256 : 128;
    if (form != BS_GS_PINGPONG && form != BS_GS_COOPERATIVE) return 0;
    if (in != BS_DT_BF16 && in != BS_DT_F16 && in != BS_DT_E4M3) return 0;
    if (in == BS_DT_E4M3 ? act != BS_DT_BF16 : act != in) return 0;
    if (epi != BS_GS_BIAS && epi != BS_GS_BIAS_GELU && epi != BS_GS_BIAS_RES) return 0;
    if (q8 && (epi == BS_GS_BIAS_RES || in != BS_DT_E4M3)) return 0; /* E4M3 out: fp8's QKV and FFN up */
    return N >= bn && N % bn == 0 && K >= elems && K % elems == 0;
}

#if defined(BS_SIMT_EMU) && !defined(BS_EMU_SM90)
/* The emulated CUDA engine (tests/emu/cuda_emu.cpp) defines gemm_sm90_forward as a library call
 * (absent, as on a GPU other than Hopper, or a CPU twin under BS_EMU_GEMM_SM90), so that the
 * engine's use of it runs in CI. The kernel itself runs from this source on the warp emulator's
 * mbarriers, TMA and wgmma where BS_EMU_SM90 is defined (tests/unit/test_gemm_sm90_emu.cpp). */
#else

#include "sm90_ops.cuh"

#ifdef GL_DEVICE
/* cuBLASLt's GELU: 0.5 v (1 + tanh(sqrt(2 / pi) (v + 0.044715 v^3))), tanh by the SFU
 * (tanh.approx.f32, relative error below 2^-10.9: under a bf16 output's rounding) */
__device__ __forceinline__ float gs_gelu(float v) {
    return 0.5f * v * (1.0f + gl_tanh_approx(0.7978845608028654f * (v + 0.044715f * v * v * v)));
}

/* 64 rows of a tile from one wgmma's accumulators (NACC of them: 2 NACC columns): rows r0.. (of Y),
 * columns n0.. In chunks of GS_JC 8-column slices: the chunk's bias and residual loads are all
 * issued before any of its stores. Written load, store, load, store, each load would wait for the
 * store before it (Y and res may be one buffer, so the compiler cannot move a load above a store):
 * 64 round trips to L2 per thread and tile; on the H200 (2026-11-28) the two residual GEMMs took
 * 4.77 ms per bf16 forward at 256 x 128 that way, 3.92 ms this way. Reading them first is right
 * even when Y is res: each element is read and written by this thread alone, its read first. */
#define GS_JC 8
template <typename TAct, int EPI, bool Q8, int NACC>
__device__ __forceinline__ void gs_store64(float (&acc)[NACC], void *Y, const TAct *bias, const TAct *res, int M, int N,
                                           int r0, int n0, int wq, int lane, float scale, float ds) {
    static_assert(NACC / 4 % GS_JC == 0, "gemm_sm90: epilogue chunks");
#pragma unroll
    for (int j0 = 0; j0 < NACC / 4; j0 += GS_JC) {
        float2 bb[GS_JC];
        uint32_t rv[GS_JC][2];
#pragma unroll
        for (int jj = 0; jj < GS_JC; jj++) { /* the loads: columns c, c + 1 of rows ra and ra + 8 */
            const int c = n0 + wg_acc_col(lane, 4 * (j0 + jj));
            bb[jj] = bs_unpack2(*(const uint32_t *)(bias + c), TAct());
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                const int row = r0 + wg_acc_row(wq, lane, 4 * (j0 + jj) + 2 * rr);
                rv[jj][rr] = 0;
                if (EPI == BS_GS_BIAS_RES && row < M) rv[jj][rr] = *(const uint32_t *)(res + (size_t)row * N + c);
            }
        }
#pragma unroll
        for (int jj = 0; jj < GS_JC; jj++) { /* the stores */
            const int c = n0 + wg_acc_col(lane, 4 * (j0 + jj));
#pragma unroll
            for (int rr = 0; rr < 2; rr++) {
                const int i = 4 * (j0 + jj) + 2 * rr, row = r0 + wg_acc_row(wq, lane, i);
                if (row >= M) continue;
                float v0 = acc[i] * scale + bb[jj].x, v1 = acc[i + 1] * scale + bb[jj].y;
                if (EPI == BS_GS_BIAS_GELU) v0 = gs_gelu(v0), v1 = gs_gelu(v1);
                const size_t at = (size_t)row * N + c;
                if (EPI == BS_GS_BIAS_RES) {
                    const float2 r = bs_unpack2(rv[jj][rr], TAct());
                    v0 += r.x, v1 += r.y;
                }
                if (Q8) {
                    const __nv_fp8x2_storage_t q =
                        __nv_cvt_float2_to_fp8x2(make_float2(v0 * ds, v1 * ds), __NV_SATFINITE, __NV_E4M3);
                    *(uint16_t *)((uint8_t *)Y + at) = (uint16_t)q;
                } else {
                    *(uint32_t *)((TAct *)Y + at) = bs_pack2(v0, v1, TAct());
                }
            }
        }
    }
}

#endif /* GL_DEVICE */

/* See the file's head. tm_x: X (M, K) in boxes of 128 rows, tm_w: W (N, K) in boxes of BN rows, both
 * 128 bytes of K wide with the 128-byte swizzle. */
template <typename TIn, typename TAct, int EPI, bool Q8, bool COOP>
__global__ void __launch_bounds__(GS_THREADS, 1)
    gemm_sm90_kernel(const __grid_constant__ CUtensorMap tm_x, const __grid_constant__ CUtensorMap tm_w, void *Y,
                     const TAct *bias, const TAct *res, const float *sa, const float *sb, const float *dscale, int M,
                     int N, int K) {
#ifdef GL_DEVICE
    typedef gs_cfg<COOP> cfg;
    BS_DYN_SMEM(gs_raw);
    unsigned char *const base = gs_raw + ((1024u - (gl_smem(gs_raw) & 1023u)) & 1023u); /* the swizzle's alignment */
    const uint32_t sbase = gl_smem(base), a0 = sbase, b0 = sbase + cfg::STAGES * cfg::A_BYTES;
    const uint32_t full0 = sbase + cfg::STAGES * cfg::STAGE, empty0 = full0 + 8 * cfg::STAGES;
    const uint32_t turn0 = empty0 + 8 * cfg::STAGES; /* ping-pong: consumer c's turn to run a main loop */
    const int wg = threadIdx.x >> 7, tiles_n = N / cfg::BN, tiles = (M + GS_BM - 1) / GS_BM * tiles_n;
    const int kelems = 128 / (int)sizeof(TIn), nk = K / kelems;
    if (threadIdx.x == 0) {
        for (int s = 0; s < cfg::STAGES; s++) {
            gl_bar_init(full0 + 8 * s, 1);             /* the producer's expect_tx, then TMA's bytes */
            gl_bar_init(empty0 + 8 * s, cfg::READERS); /* the consumers that read the stage */
        }
        gl_bar_init(turn0, 1), gl_bar_init(turn0 + 8, 1); /* the other consumer's hand-over */
        gl_tma_prefetch(&tm_x), gl_tma_prefetch(&tm_w);
        gl_fence_mbarrier_init();
    }
    __syncthreads();

    if (wg == 0) { /* producer: every k-step of every tile of this CTA, in order */
        gl_setmaxnreg_dec<40>();
        if (threadIdx.x == 0) {
            int g = 0; /* k-steps issued so far: stage g % STAGES, its (g / STAGES)-th use */
            for (int t = blockIdx.x; t < tiles; t += gridDim.x) {
                const int m0 = t / tiles_n * GS_BM, n0 = t % tiles_n * cfg::BN;
                for (int kt = 0; kt < nk; kt++, g++) {
                    const int s = g % cfg::STAGES;
                    if (g >= cfg::STAGES) gl_bar_wait(empty0 + 8 * s, (uint32_t)(g / cfg::STAGES - 1) & 1u);
                    const uint32_t full = full0 + 8 * s;
                    gl_bar_expect_tx(full, cfg::STAGE);
                    gl_tma_load(a0 + s * cfg::A_BYTES, &tm_x, full, kt * kelems, m0);
                    gl_tma_load(b0 + s * cfg::B_BYTES, &tm_w, full, kt * kelems, n0);
                }
            }
        }
        return;
    }

    gl_setmaxnreg_inc<232>();
    const int c = wg - 1, tid = threadIdx.x & 127, wq = tid >> 5, lane = tid & 31;
    const float scale = sa ? *sa * *sb : 1.0f, ds = Q8 ? *dscale : 1.0f;
    /* 128 accumulators either way: cooperative, one m64n256 (this consumer's 64 rows); ping-pong, two
     * m64n128 (rows 0-63 in acc[0..63], rows 64-127 in acc[64..127]) */
    float acc[128];
    float(&lo)[64] = *reinterpret_cast<float(*)[64]>(acc);
    float(&hi)[64] = *reinterpret_cast<float(*)[64]>(acc + 64);
    /* cooperative: every tile of the CTA, rows 64c..; ping-pong: the CTA's tiles c, c + 2, ..., whole */
    for (int j = COOP ? 0 : c;; j += COOP ? 1 : 2) {
        const int t = blockIdx.x + j * gridDim.x;
        if (t >= tiles) break;
        const int m0 = t / tiles_n * GS_BM, n0 = t % tiles_n * cfg::BN;
        /* ping-pong: the other consumer's main loop of tile j - 1 is done, this consumer's ((j - 1) / 2)-th
         * turn (an mbarrier, not a named barrier, so that a slip traps after 5 s instead of hanging) */
        if (!COOP && j >= 1) gl_bar_wait(turn0 + 8 * c, (uint32_t)((j - 1) / 2) & 1u);
#pragma unroll
        for (int i = 0; i < 128; i++) acc[i] = 0.0f;
        for (int kt = 0; kt < nk; kt++) {
            const int g = j * nk + kt, s = g % cfg::STAGES;
            gl_bar_wait(full0 + 8 * s, (uint32_t)(g / cfg::STAGES) & 1u);
            const uint32_t a = a0 + s * cfg::A_BYTES, b = b0 + s * cfg::B_BYTES;
            gl_fence_acc(acc);
            gl_wgmma_fence();
#pragma unroll
            for (int ks = 0; ks < 4; ks++) { /* 32-byte k-steps of the 128-byte rows */
                const uint64_t db = wg_desc_sw128(b + wg_operand_offset(0, ks));
                if constexpr (COOP) {
                    gl_mma<TIn, 256>::run(acc, wg_desc_sw128(a + wg_operand_offset(64u * c, ks)), db, 1);
                } else {
                    gl_mma<TIn, 128>::run(lo, wg_desc_sw128(a + wg_operand_offset(0, ks)), db, 1);
                    gl_mma<TIn, 128>::run(hi, wg_desc_sw128(a + wg_operand_offset(64, ks)), db, 1);
                }
            }
            gl_kstep_end(acc, kt > 0 && tid == 0, empty0 + 8 * ((g + cfg::STAGES - 1) % cfg::STAGES));
        }
        gl_wgmma_wait<0>();
        gl_fence_acc(acc);
        if (tid == 0) gl_bar_arrive(empty0 + 8 * ((j * nk + nk - 1) % cfg::STAGES));
        if constexpr (COOP) {
            gs_store64<TAct, EPI, Q8, 128>(acc, Y, bias, res, M, N, m0 + 64 * c, n0, wq, lane, scale, ds);
        } else {
            /* hand the tensor cores over (only when the other consumer has a next tile: every hand-over is
             * matched by one wait, and the next one on this barrier comes only after that wait) */
            if (tid == 0 && (int)(blockIdx.x + (j + 1) * gridDim.x) < tiles) gl_bar_arrive(turn0 + 8 * (c ^ 1));
            gs_store64<TAct, EPI, Q8, 64>(lo, Y, bias, res, M, N, m0, n0, wq, lane, scale, ds);
            gs_store64<TAct, EPI, Q8, 64>(hi, Y, bias, res, M, N, m0 + 64, n0, wq, lane, scale, ds);
        }
    }
#endif
}

template <typename TIn, typename TAct, int EPI, bool Q8, bool COOP>
static cudaError_t gs_launch_form(const CUtensorMap *maps, void *Y, const void *bias, const void *res, const float *sa,
                                  const float *sb, const float *dscale, int M, int N, int K, int ctas, cudaStream_t s) {
    typedef gs_cfg<COOP> cfg;
    void (*kern)(CUtensorMap, CUtensorMap, void *, const TAct *, const TAct *, const float *, const float *,
                 const float *, int, int, int) = gemm_sm90_kernel<TIn, TAct, EPI, Q8, COOP>;
    static int smem_set; /* once per variant, outside graph capture (the engine's start-up check launches first) */
    if (!smem_set) {
        const cudaError_t e = cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)cfg::SMEM);
        if (e != cudaSuccess) return e;
        smem_set = 1;
    }
    if (ctas <= 0) {
        int dev = 0;
        cudaError_t e = cudaGetDevice(&dev);
        if (e == cudaSuccess) e = cudaDeviceGetAttribute(&ctas, cudaDevAttrMultiProcessorCount, dev);
        if (e != cudaSuccess) return e;
    }
    const int tiles = (M + GS_BM - 1) / GS_BM * (N / cfg::BN);
    BS_LAUNCH(ctas < tiles ? ctas : tiles, GS_THREADS, cfg::SMEM, s, gemm_sm90_kernel<TIn, TAct, EPI, Q8, COOP>)
    (maps[0], maps[1], Y, (const TAct *)bias, (const TAct *)res, sa, sb, dscale, M, N, K);
    return cudaGetLastError();
}

template <typename TIn, typename TAct, int EPI, bool Q8>
static cudaError_t gs_launch(const CUtensorMap *maps, void *Y, const void *bias, const void *res, const float *sa,
                             const float *sb, const float *dscale, int M, int N, int K, int ctas, int form,
                             cudaStream_t s) {
    return form == BS_GS_COOPERATIVE
               ? gs_launch_form<TIn, TAct, EPI, Q8, true>(maps, Y, bias, res, sa, sb, dscale, M, N, K, ctas, s)
               : gs_launch_form<TIn, TAct, EPI, Q8, false>(maps, Y, bias, res, sa, sb, dscale, M, N, K, ctas, s);
}

template <typename TIn, typename TAct, bool Q8OK>
static cudaError_t gs_dispatch(const CUtensorMap *maps, void *Y, const void *bias, int epi, const void *res,
                               const float *sa, const float *sb, const float *dscale, int M, int N, int K, int ctas,
                               int form, cudaStream_t s) {
    if constexpr (Q8OK) {
        if (dscale)
            return epi == BS_GS_BIAS ? gs_launch<TIn, TAct, BS_GS_BIAS, true>(maps, Y, bias, res, sa, sb, dscale, M, N,
                                                                              K, ctas, form, s)
                                     : gs_launch<TIn, TAct, BS_GS_BIAS_GELU, true>(maps, Y, bias, res, sa, sb, dscale,
                                                                                   M, N, K, ctas, form, s);
    }
    return epi == BS_GS_BIAS
               ? gs_launch<TIn, TAct, BS_GS_BIAS, false>(maps, Y, bias, res, sa, sb, NULL, M, N, K, ctas, form, s)
           : epi == BS_GS_BIAS_GELU
               ? gs_launch<TIn, TAct, BS_GS_BIAS_GELU, false>(maps, Y, bias, res, sa, sb, NULL, M, N, K, ctas, form, s)
               : gs_launch<TIn, TAct, BS_GS_BIAS_RES, false>(maps, Y, bias, res, sa, sb, NULL, M, N, K, ctas, form, s);
}

extern "C" cudaError_t gemm_sm90_forward(void *Y, const void *X, const void *W, int M, int N, int K, bs_dtype in,
                                         bs_dtype act, const float *sa, const float *sb, const void *bias, int epi,
                                         const void *res, const float *dscale, int ctas, int form, cudaStream_t s) {
    if (!gemm_sm90_shape_ok(N, K, in, act, dscale != NULL, epi, form) || M < 0) return cudaErrorInvalidValue;
    if (!Y || !X || !W || !bias || (epi == BS_GS_BIAS_RES && !res) || (in == BS_DT_E4M3 && (!sa || !sb)))
        return cudaErrorInvalidValue;
    if (!gl_aligned(X, 16) || !gl_aligned(W, 16) || !gl_aligned(Y, 16) || !gl_aligned(res, 16) || !gl_aligned(bias, 4))
        return cudaErrorMisalignedAddress;
    if (M == 0) return cudaSuccess;
    CUtensorMap maps[2]; /* X, W */
    memset(maps, 0, sizeof maps);
    cudaError_t e = gl_map(&maps[0], X, in, K, M, GS_BM);
    if (e == cudaSuccess) e = gl_map(&maps[1], W, in, K, N, form == BS_GS_COOPERATIVE ? 256 : 128);
    if (e != cudaSuccess) return e;
    if (in != BS_DT_E4M3) sa = sb = NULL; /* 16-bit inputs: no scales */
    if (epi != BS_GS_BIAS_RES) res = NULL;
    if (in == BS_DT_BF16)
        return gs_dispatch<__nv_bfloat16, __nv_bfloat16, false>(maps, Y, bias, epi, res, sa, sb, dscale, M, N, K, ctas,
                                                                form, s);
    if (in == BS_DT_F16)
        return gs_dispatch<__half, __half, false>(maps, Y, bias, epi, res, sa, sb, dscale, M, N, K, ctas, form, s);
    return gs_dispatch<__nv_fp8_e4m3, __nv_bfloat16, true>(maps, Y, bias, epi, res, sa, sb, dscale, M, N, K, ctas, form,
                                                           s);
}
#endif /* BS_SIMT_EMU */
