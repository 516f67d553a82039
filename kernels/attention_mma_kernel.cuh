// Padding-free attention on tensor cores through mma.sync (flash-attention 2 form; see attention.h).
//
// Block = 4 warps, one tile of 64 queries of one (sequence, head); warp w owns query rows
// 16w..16w+15 and keeps everything of them in registers:
//   - its Q rows as m16n8k16 A fragments (loaded once with ldmatrix),
//   - the scores of a 64-key tile, S = Q K^T, as 8 accumulator tiles of 16 x 8 (fp32),
//   - the running row max m and (per-thread partial) row sum l of the online softmax, in the log2
//     domain (scores scaled by log2(e) / sqrt(HS) so exp2f does the work),
//   - the output O (16 x HS, fp32), rescaled by exp2(m_old - m_new) when the max grows.
// P = exp2(S - m) goes from the S accumulators straight into A fragments of O += P V: the m16n8
// accumulator layout of two neighbouring 8-key tiles is the A layout of one 16-key step, so P
// never touches shared memory. K and V tiles stream through a double buffer with cp.async (tile
// j + 1 loads while tile j computes); rows past the sequence are zero-filled by the copy itself
// (src-size 0), so no NaN or neighbouring sequence enters. K is read with ldmatrix (its rows are
// the B fragment's columns), V with ldmatrix.trans. The output goes out through the Q buffer
// (each warp its own rows) in 16-byte stores: in T, or (Q8, fp8 with static scales) in E4M3 as
// the attention-output GEMM reads it, E4M3(o / *oscale) rounded as quantize_fp8_static_forward.
// IN8 (fp8, the QKV GEMM writing E4M3): Q, K and V come in as E4M3 bytes; S = Q K^T runs on them
// with the E4M3 mma (m16n8k32), and V is widened to f16 in shared memory for O += P V (see
// attention_mma_kernel's own comment).
//
// Fragment layouts (PTX ISA, mma.m16n8k16 .row.col, 16-bit inputs, f32 accumulate), g = lane / 4,
// t = lane % 4:
//   A (16 x 16): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16 x 8):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16 x 8):  c0,c1 = (g, 2t..2t+1), c2,c3 = (g+8, 2t..2t+1)
// ldmatrix.x4: lane l gives the address of row (l % 8) of matrix l / 8; each thread receives, of
// matrix i, register i = the elements (row g, cols 2t, 2t+1) (.trans: (rows 2t, 2t+1, col g)).
// Every lane map below comes from mma_layout.h, which tests/unit/test_mma_layout.c checks on the
// CPU against an emulation of these instructions. The PTX wrappers are in mma_ops.cuh; this file
// is the kernel alone, so that tests/unit/test_attention_mma_emu.cpp can compile this very source
// on the CPU against tests/emu/simt.hpp (a warp emulator) and check it in CI without a GPU.
#ifndef BS_KERNELS_ATTENTION_MMA_KERNEL_CUH
#define BS_KERNELS_ATTENTION_MMA_KERNEL_CUH

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <math.h>

#include <type_traits>

#include "attention.h"
#include "mma_layout.h"
#ifndef BS_SIMT_EMU
#include "mma_ops.cuh"
#endif

#define MMA_WARPS 4
#define MMA_BK 64 // keys per tile

static_assert(BS_ATT_MMA_BQ == 16 * MMA_WARPS, "one 16-row slice of the query tile per warp");

template <int HS> struct mma_geom {
    static constexpr int LD = HS + 8;    // smem row stride (elements): ldmatrix rows hit 8 distinct 16-byte bank groups
    static constexpr int CPR = HS / 8;   // 16-byte chunks per row
    static constexpr int TILE = 64 * LD; // elements of one 64-row tile
    static constexpr size_t BYTES = (size_t)5 * TILE * 2; // Q, K[2], V[2]
    // E4M3 input (IN8): V widened to f16 (one tile), then the E4M3 bytes as copied in: Q and K[2] at a
    // row stride of LD8 bytes (ldmatrix reads them as 16-bit pairs for the E4M3 mma: the 16 extra
    // bytes put its 8 rows on 8 distinct 16-byte bank groups), V[2] dense (64 x HS: widened in 16-byte
    // pieces, never read by ldmatrix)
    static constexpr int LD8 = HS + 16;
    static constexpr int QK8 = 64 * LD8;
    static constexpr int TILE8 = 64 * HS;
    static constexpr size_t BYTES8 = (size_t)TILE * 2 + (size_t)3 * QK8 + (size_t)2 * TILE8;
};

/* two floats into one 16-bit-pair register (an A fragment of P), the lower column in the low half */
template <typename T> __device__ __forceinline__ uint32_t mma_pack(float lo, float hi);
template <> __device__ __forceinline__ uint32_t mma_pack<__nv_bfloat16>(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *(uint32_t *)&v;
}
template <> __device__ __forceinline__ uint32_t mma_pack<__half>(float lo, float hi) {
    __half2 v = __floats2half2_rn(lo, hi);
    return *(uint32_t *)&v;
}

/* the kernel's score scale: log2(e) / sqrt(HS), so that exp2f does the softmax's exp */
static inline float mma_score_scale(int HS) {
    return 1.4426950408889634f / sqrtf((float)HS);
}

/* 64 rows of one part of qkv (src: row 0 of the tile, this head's columns) into dst (64 x LD);
 * rows >= valid are zero-filled (their source is row 0, never read: src-size 0) */
template <typename T, int HS>
__device__ __forceinline__ void mma_load_tile(T *dst, const T *src, size_t row_stride, int valid) {
    typedef mma_geom<HS> G;
    for (int i = threadIdx.x; i < 64 * G::CPR; i += MMA_WARPS * 32) {
        const int r = i / G::CPR, c = i - r * G::CPR;
        const bool in = r < valid;
        cp_async16(dst + r * G::LD + c * 8, src + (in ? (size_t)r * row_stride : 0) + c * 8, in ? 16 : 0);
    }
}

/* the E4M3 form: 64 rows of HS bytes into dst (64 x DLD bytes), rows >= valid zero-filled */
template <int HS, int DLD>
__device__ __forceinline__ void mma_load_tile8(uint8_t *dst, const uint8_t *src, size_t row_stride, int valid) {
    constexpr int CPR8 = HS / 16;
    for (int i = threadIdx.x; i < 64 * CPR8; i += MMA_WARPS * 32) {
        const int r = i / CPR8, c = i - r * CPR8;
        const bool in = r < valid;
        cp_async16(dst + r * DLD + c * 16, src + (in ? (size_t)r * row_stride : 0) + c * 16, in ? 16 : 0);
    }
}

/* two E4M3 codes (the low byte first) as an f16 pair: exact, every E4M3 value is an f16 value */
__device__ __forceinline__ uint32_t mma_e4m3x2_to_f16x2(uint32_t bits) {
    const __half2_raw h = __nv_cvt_fp8x2_to_halfraw2((__nv_fp8x2_storage_t)bits, __NV_E4M3);
    return (uint32_t)h.x | (uint32_t)h.y << 16;
}

/* a staged E4M3 tile (64 x HS bytes) widened into dst (64 x LD, f16), 16 codes per step */
template <int HS> __device__ __forceinline__ void mma_widen_tile(__half *dst, const uint8_t *src) {
    constexpr int CPR8 = HS / 16;
    for (int i = threadIdx.x; i < 64 * CPR8; i += MMA_WARPS * 32) {
        const int r = i / CPR8, c = i - r * CPR8;
        const uint4 u = *(const uint4 *)(src + r * HS + c * 16);
        uint4 *d = (uint4 *)(dst + r * mma_geom<HS>::LD + c * 16);
        d[0] = make_uint4(mma_e4m3x2_to_f16x2(u.x & 0xffffu), mma_e4m3x2_to_f16x2(u.x >> 16),
                          mma_e4m3x2_to_f16x2(u.y & 0xffffu), mma_e4m3x2_to_f16x2(u.y >> 16));
        d[1] = make_uint4(mma_e4m3x2_to_f16x2(u.z & 0xffffu), mma_e4m3x2_to_f16x2(u.z >> 16),
                          mma_e4m3x2_to_f16x2(u.w & 0xffffu), mma_e4m3x2_to_f16x2(u.w >> 16));
    }
}

// IN8 (fp8 with static scales, the QKV GEMM writing E4M3): qkv holds E4M3 codes whose values are
// code * *iscale. Tiles are copied in as bytes (half the traffic). S = Q K^T runs on the E4M3 codes
// themselves (mma.sync m16n8k32 .e4m3, sm_89+: ldmatrix of the byte rows gives its fragments, half
// the k-steps of f16), with the scores scaled by *iscale^2; V is widened to f16 in shared memory
// once landed and O += P V runs as for f16 (T = __half; Q8 output only), the output scaled by
// *iscale.
template <typename T, int HS, bool Q8, bool IN8 = false>
__global__ void __launch_bounds__(MMA_WARPS * 32)
    attention_mma_kernel(void *out, const void *qkv_in, const int32_t *cu, const int32_t *tiles, int NH, float sl2,
                         const float *oscale, const float *iscale) {
    typedef mma_geom<HS> G;
    const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    if (seq < 0) return;
    const int h = blockIdx.y;
    const int start = cu[seq], len = cu[seq + 1] - start;
    const int nq = min(BS_ATT_MMA_BQ, len - q0);
    if (nq <= 0) return; // not a tile attention_tiles() makes; nothing to do (and no copy left in flight)
    const int C = NH * HS;
    const size_t ld = 3 * (size_t)C; // elements, bytes for IN8
    BS_DYN_SMEM(mma_smem);
    // sk, sv: two tiles each. IN8: sv alone (the widened V), at sq, and the bytes behind it in s8: Q at
    // 0, K[b] at (1 + b) QK8 (rows LD8 bytes apart), V[b] at 3 QK8 + b TILE8
    T *sq = (T *)mma_smem, *sk = sq + G::TILE, *sv = IN8 ? sq : sk + 2 * G::TILE;
    uint8_t *s8 = (uint8_t *)(sq + G::TILE);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const T *base = (const T *)qkv_in + (size_t)start * ld + h * HS; // row 0 of the sequence, this head's Q columns
    const uint8_t *base8 = (const uint8_t *)qkv_in + (size_t)start * ld + h * HS;
    // the K and V rows k1.. of the sequence into buffer b
    auto load_kv = [&](int b, int k1) {
        if constexpr (IN8) {
            mma_load_tile8<HS, G::LD8>(s8 + (1 + b) * G::QK8, base8 + (size_t)k1 * ld + C, ld, len - k1);
            mma_load_tile8<HS, HS>(s8 + 3 * G::QK8 + b * G::TILE8, base8 + (size_t)k1 * ld + 2 * C, ld, len - k1);
        } else {
            mma_load_tile<T, HS>(sk + b * G::TILE, base + (size_t)k1 * ld + C, ld, len - k1);
            mma_load_tile<T, HS>(sv + b * G::TILE, base + (size_t)k1 * ld + 2 * C, ld, len - k1);
        }
    };
    float si = 1.0f; // the input's dequantisation scale (IN8)
    if constexpr (IN8) {
        si = *iscale;
        sl2 *= si * si;
        mma_load_tile8<HS, G::LD8>(s8, base8 + (size_t)q0 * ld, ld, nq);
    } else {
        mma_load_tile<T, HS>(sq, base + (size_t)q0 * ld, ld, nq);
    }
    load_kv(0, 0);
    cp_async_commit();

    // S = Q K^T's operands as bytes: 16-bit rows G::LD elements apart, or (IN8) E4M3 rows G::LD8 bytes
    // apart. A k-step is 32 bytes of a row either way (16 elements, or 32 codes for the E4M3 mma), and
    // ldmatrix's 16-bit column c is byte 2c: the same addressing serves both, with the mma of TS.
    typedef typename std::conditional<IN8, __nv_fp8_e4m3, T>::type TS;
    constexpr int ROWB = IN8 ? G::LD8 : 2 * G::LD, KSTEPS = HS * (IN8 ? 1 : 2) / 32;
    const uint8_t *const qbytes = IN8 ? s8 : (const uint8_t *)sq;
    uint32_t qf[KSTEPS][4];
    float o[HS / 8][4];
#pragma unroll
    for (int n = 0; n < HS / 8; n++) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.0f, l1 = 0.0f; // rows g and g + 8 of this warp
    const int nkt = (len + MMA_BK - 1) / MMA_BK;

    for (int kt = 0; kt < nkt; kt++) {
        const int buf = kt & 1;
        if (kt + 1 < nkt) { // prefetch the next tile into the other buffer (consumed at kt - 1)
            load_kv(buf ^ 1, (kt + 1) * MMA_BK);
            cp_async_commit();
            cp_async_wait<1>(); // everything but that prefetch has landed
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        if constexpr (IN8) { // widen V's landed bytes (sv: read by kt - 1, which every warp has left)
            mma_widen_tile<HS>(sv, s8 + 3 * G::QK8 + buf * G::TILE8);
            __syncthreads();
        }
        if (kt == 0) {
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++)
                ldsm_x4(qf[kk], qbytes + (warp * 16 + ldsm_a_row(lane)) * ROWB + kk * 32 + 2 * ldsm_a_col(lane));
        }
        const uint8_t *kbytes = IN8 ? s8 + (1 + buf) * G::QK8 : (const uint8_t *)(sk + buf * G::TILE);
        const T *vb = IN8 ? sv : sv + buf * G::TILE;

        // S = Q K^T for 64 keys: 8 tiles of 16 x 8
        float s[MMA_BK / 8][4];
#pragma unroll
        for (int j = 0; j < MMA_BK / 8; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.0f;
#pragma unroll
        for (int kk = 0; kk < KSTEPS; kk++)
#pragma unroll
            for (int np = 0; np < MMA_BK / 16; np++) { // keys 16np..16np+15 (two n-tiles), bytes 32kk.. of a row
                uint32_t b[4];
                ldsm_x4(b, kbytes + (np * 16 + ldsm_bn_row(lane)) * ROWB + kk * 32 + 2 * ldsm_bn_col(lane));
                mma_t<TS>::run(s[2 * np], qf[kk], b[0], b[1]);
                mma_t<TS>::run(s[2 * np + 1], qf[kk], b[2], b[3]);
            }

        // online softmax: mask keys >= len, scale, new max, rescale O and l
        // (elements e and 2 + e of an accumulator tile share column mma_c_col(lane, e))
        float mx0 = m0, mx1 = m1;
#pragma unroll
        for (int j = 0; j < MMA_BK / 8; j++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const bool in = kt * MMA_BK + 8 * j + mma_c_col(lane, e) < len;
                s[j][e] = in ? s[j][e] * sl2 : -INFINITY;
                s[j][2 + e] = in ? s[j][2 + e] * sl2 : -INFINITY;
                mx0 = fmaxf(mx0, s[j][e]);
                mx1 = fmaxf(mx1, s[j][2 + e]);
            }
        // the four threads of a row (same g) hold its 64 columns
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
        // finite: key kt * 64 < len is in every tile; exp2(-inf) = 0 rescales nothing on the first
        const float c0 = exp2f(m0 - mx0), c1 = exp2f(m1 - mx1);
        m0 = mx0, m1 = mx1;
        float r0 = 0.0f, r1 = 0.0f;
#pragma unroll
        for (int j = 0; j < MMA_BK / 8; j++) {
            s[j][0] = exp2f(s[j][0] - m0), s[j][1] = exp2f(s[j][1] - m0);
            s[j][2] = exp2f(s[j][2] - m1), s[j][3] = exp2f(s[j][3] - m1);
            r0 += s[j][0] + s[j][1];
            r1 += s[j][2] + s[j][3];
        }
        l0 = l0 * c0 + r0; // this thread's part of the row sums: reduced over the quad at the end
        l1 = l1 * c1 + r1;
#pragma unroll
        for (int n = 0; n < HS / 8; n++) o[n][0] *= c0, o[n][1] *= c0, o[n][2] *= c1, o[n][3] *= c1;

            // O += P V: P's A fragment for keys 16kk.. comes from S tiles 2kk (cols +0) and 2kk+1 (cols +8)
#pragma unroll
        for (int kk = 0; kk < MMA_BK / 16; kk++) {
            uint32_t a[4];
#pragma unroll
            for (int r = 0; r < 4; r++) {
                const float *c = s[2 * kk + mma_a_from_c_tile(r)] + mma_a_from_c_elem(r);
                a[r] = mma_pack<T>(c[0], c[1]);
            }
#pragma unroll
            for (int dp = 0; dp < HS / 16; dp++) { // dims 16dp.. (two n-tiles), keys 16kk.., transposed
                uint32_t b[4];
                ldsm_x4_trans(b, vb + (kk * 16 + ldsm_bk_row(lane)) * G::LD + dp * 16 + ldsm_bk_col(lane));
                mma_t<T>::run(o[2 * dp], a, b[0], b[1]);
                mma_t<T>::run(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
        __syncthreads(); // every warp is done with this buffer before the next prefetch (or widening) overwrites it
    }

    // normalise, stage this warp's 16 rows in its own rows of the Q buffer, store 16 bytes a lane
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const float i0 = si / l0, i1 = si / l1; // si: 1 but for IN8, where V's codes still need their scale
    T *so = sq + warp * 16 * G::LD;
    if constexpr (Q8) { // rows of HS bytes at a stride of HS + 16 (16-byte aligned), in the same space
        const float sc = *oscale;
        uint8_t *so8 = (uint8_t *)so;
#pragma unroll
        for (int n = 0; n < HS / 8; n++)
#pragma unroll
            for (int half = 0; half < 2; half++) { // elements (0, 1): row g; (2, 3): row g + 8
                const float inv = half ? i1 : i0;
                const unsigned lo = __nv_cvt_float_to_fp8(o[n][2 * half] * inv / sc, __NV_SATFINITE, __NV_E4M3),
                               hi = __nv_cvt_float_to_fp8(o[n][2 * half + 1] * inv / sc, __NV_SATFINITE, __NV_E4M3);
                *(uint16_t *)(so8 + mma_c_row(lane, 2 * half) * (HS + 16) + n * 8 + mma_c_col(lane, 2 * half)) =
                    (uint16_t)(lo | hi << 8);
            }
        __syncwarp();
        for (int i = lane; i < HS; i += 32) { // 16 rows x HS / 16 chunks of 16 bytes
            const int r = i / (HS / 16), ch = i - r * (HS / 16), q = warp * 16 + r;
            if (q < nq)
                *(uint4 *)((uint8_t *)out + (size_t)(start + q0 + q) * C + h * HS + ch * 16) =
                    *(const uint4 *)(so8 + r * (HS + 16) + ch * 16);
        }
    } else {
#pragma unroll
        for (int n = 0; n < HS / 8; n++) { // elements (0, 1) of a tile: row g; (2, 3): row g + 8
            *(uint32_t *)(so + mma_c_row(lane, 0) * G::LD + n * 8 + mma_c_col(lane, 0)) =
                mma_pack<T>(o[n][0] * i0, o[n][1] * i0);
            *(uint32_t *)(so + mma_c_row(lane, 2) * G::LD + n * 8 + mma_c_col(lane, 2)) =
                mma_pack<T>(o[n][2] * i1, o[n][3] * i1);
        }
        __syncwarp();
        for (int i = lane; i < 16 * G::CPR; i += 32) {
            const int r = i / G::CPR, ch = i - r * G::CPR, q = warp * 16 + r;
            if (q < nq)
                *(uint4 *)((T *)out + (size_t)(start + q0 + q) * C + h * HS + ch * 8) =
                    *(const uint4 *)(so + r * G::LD + ch * 8);
        }
    }
}

#endif
