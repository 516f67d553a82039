// Fused padding-free attention (see attention.h).
//
// Block = 4 warps, 32 queries of one (sequence, head); warp w owns queries w, w+4, ..., w+28 so a
// short sequence still spreads over all warps. For each tile of 32 keys: lane j scores key j
// against the warp's 8 queries (Q broadcast from shared memory, K rows padded to HS+1 floats so
// the 32 lanes hit 32 banks), the online softmax rescales the running (max, sum, output), then
// P V accumulates with P broadcast by shuffles and lane owning head dims lane, lane+32, ...
// Scores live in the log2 domain (Q pre-scaled by log2(e)/sqrt(HS)) so exp2f does the work.
#ifndef BS_SIMT_EMU /* the emulator (tests/emu/simt.hpp) has its own nvcuda::wmma */
#include <mma.h>
#endif

#include "attention.h"

#define ATT_BK 32
#define ATT_WARPS 4
#define ATT_QPW (BS_ATT_BQ / ATT_WARPS)

static size_t att_smem_bytes(int HS) {
    return sizeof(float) * ((size_t)BS_ATT_BQ * HS + (size_t)ATT_BK * (HS + 1) + (size_t)ATT_BK * HS);
}

template <typename T, int NPL>
__global__ void __launch_bounds__(ATT_WARPS * 32)
    attention_kernel(T *out, const T *qkv, const int32_t *cu, const int32_t *tiles, int NH, int HS, float qscale) {
    const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    if (seq < 0) return;
    const int h = blockIdx.y;
    const int start = cu[seq], len = cu[seq + 1] - start;
    const int nq = min(BS_ATT_BQ, len - q0);
    const int C = NH * HS, HSP = HS + 1;
    const size_t ld = 3 * (size_t)C;
    BS_DYN_SMEM(att_smem);
    float *smem = (float *)att_smem;
    float *sq = smem;                // (BQ, HS)   queries, pre-scaled
    float *sk = sq + BS_ATT_BQ * HS; // (BK, HS+1) keys, padded rows
    float *sv = sk + ATT_BK * HSP;   // (BK, HS)   values
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;

    for (int i = tid; i < BS_ATT_BQ * HS; i += blockDim.x) {
        const int r = i / HS, d = i - r * HS;
        sq[i] = r < nq ? bs_ld(qkv[(size_t)(start + q0 + r) * ld + h * HS + d]) * qscale : 0.0f;
    }

    float m[ATT_QPW], l[ATT_QPW], o[ATT_QPW][NPL];
#pragma unroll
    for (int qi = 0; qi < ATT_QPW; qi++) {
        m[qi] = -INFINITY;
        l[qi] = 0;
#pragma unroll
        for (int j = 0; j < NPL; j++) o[qi][j] = 0;
    }

    for (int k0 = 0; k0 < len; k0 += ATT_BK) {
        const int nk = min(ATT_BK, len - k0);
        __syncthreads(); // the previous tile is consumed (first pass: Q is stored)
        for (int i = tid; i < ATT_BK * HS; i += blockDim.x) {
            const int r = i / HS, d = i - r * HS;
            float kv = 0, vv = 0;
            if (r < nk) {
                const T *row = qkv + (size_t)(start + k0 + r) * ld + h * HS + d;
                kv = bs_ld(row[C]);
                vv = bs_ld(row[2 * C]);
            }
            sk[r * HSP + d] = kv;
            sv[r * HS + d] = vv;
        }
        __syncthreads();

        float s[ATT_QPW];
#pragma unroll
        for (int qi = 0; qi < ATT_QPW; qi++) s[qi] = 0;
        const float *kr = sk + lane * HSP;
        for (int d = 0; d < HS; d++) {
            const float kd = kr[d];
#pragma unroll
            for (int qi = 0; qi < ATT_QPW; qi++) s[qi] += sq[(warp + qi * ATT_WARPS) * HS + d] * kd;
        }
#pragma unroll
        for (int qi = 0; qi < ATT_QPW; qi++) {
            const float sc = lane < nk ? s[qi] : -INFINITY;
            const float mnew = fmaxf(m[qi], bs_warp_max(sc)); // finite: key 0 of the tile is real
            const float p = lane < nk ? exp2f(sc - mnew) : 0.0f;
            const float corr = exp2f(m[qi] - mnew); // 0 on the first tile (m = -inf)
            l[qi] = l[qi] * corr + bs_warp_sum(p);
            m[qi] = mnew;
            s[qi] = p;
#pragma unroll
            for (int j = 0; j < NPL; j++) o[qi][j] *= corr;
        }
        for (int kk = 0; kk < nk; kk++) {
            float v[NPL];
#pragma unroll
            for (int j = 0; j < NPL; j++) {
                const int d = lane + 32 * j;
                v[j] = d < HS ? sv[kk * HS + d] : 0.0f;
            }
#pragma unroll
            for (int qi = 0; qi < ATT_QPW; qi++) {
                const float pk = __shfl_sync(0xffffffffu, s[qi], kk);
#pragma unroll
                for (int j = 0; j < NPL; j++) o[qi][j] += pk * v[j];
            }
        }
    }

#pragma unroll
    for (int qi = 0; qi < ATT_QPW; qi++) {
        const int r = warp + qi * ATT_WARPS;
        if (r >= nq) continue;
        const float inv = 1.0f / l[qi];
        T *dst = out + (size_t)(start + q0 + r) * C + h * HS;
#pragma unroll
        for (int j = 0; j < NPL; j++) {
            const int d = lane + 32 * j;
            if (d < HS) dst[d] = bs_st<T>(o[qi][j] * inv);
        }
    }
}

// ---- tensor-core path (f16/bf16, head size 32, 64 or 128) ----
//
// Block = 4 warps, the same 32-query tiles. Sequences are short (BERT: <= 512 tokens), so the
// whole (32, len) score block fits in shared memory and no online rescaling is needed:
//   1. S = Q K^T with WMMA 16x16x16 (fp32 accumulate), keys streamed in chunks of 64 rows;
//   2. softmax per row in fp32 (keys >= len excluded), P written back in T, padding columns 0;
//   3. O = P V with WMMA, values streamed through the same chunk buffer, O kept in fragments;
//   4. O through shared memory to the output rows of this tile.
// Shared memory is sized for max_len (the longest sequence the caller will pass): 40 KiB at
// max_len 128 and head size 64, so five blocks share an SM. (Measured on an H100, BERT-base bf16:
// loading all of K and V in one round instead, 68 KiB and three blocks per SM, was slower: 14.0k
// against 15.7k sequences/s at 256 x 128; docs/performance.md.)

namespace wmma = nvcuda::wmma;

#define TC_KC 64 // keys per K/V chunk
#define TC_WARPS 4

struct tc_layout {
    int NK, LDQ, LDS, LDP; // keys capacity; row strides of Q/K/V (T), scores (float), P (T)
    size_t kv, s, p, bytes;
};

__host__ __device__ static inline tc_layout tc_layout_for(int HS, int max_len) {
    tc_layout L;
    L.NK = (max_len + TC_KC - 1) / TC_KC * TC_KC;
    L.LDQ = HS + 8; // strides stay multiples of 8 elements (WMMA), rows of 16 start 32-byte aligned
    L.LDS = (L.NK > HS ? L.NK : HS) + 8;
    L.LDP = L.NK + 16;
    L.kv = (size_t)BS_ATT_BQ * L.LDQ * 2;
    L.s = L.kv + (size_t)TC_KC * L.LDQ * 2;
    L.p = L.s + (size_t)BS_ATT_BQ * L.LDS * 4;
    L.bytes = L.p + (size_t)BS_ATT_BQ * L.LDP * 2;
    return L;
}

/* n rows of one part of qkv (Q: 0, K: C, V: 2C) for head h, from row pointer qkv, into dst (rows x
 * HS, stride ld), 16 bytes at a time; rows past `valid` are zero */
template <typename T, int HS>
__device__ __forceinline__ void tc_load_rows(T *dst, int ld, const T *qkv, size_t row_stride, int part_off, int n,
                                             int valid) {
    constexpr int VPR = HS / 8;
    for (int i = threadIdx.x; i < n * VPR; i += blockDim.x) {
        const int r = i / VPR, v = i - r * VPR;
        uint4 val = make_uint4(0, 0, 0, 0);
        if (r < valid) val = *(const uint4 *)(qkv + (size_t)r * row_stride + part_off + v * 8);
        *(uint4 *)(dst + r * ld + v * 8) = val;
    }
}

template <typename T, int HS>
__global__ void __launch_bounds__(TC_WARPS * 32)
    attention_tc_kernel(T *out, const T *qkv, const int32_t *cu, const int32_t *tiles, int NH, int max_len, float sl2) {
    const int seq = tiles[2 * blockIdx.x], q0 = tiles[2 * blockIdx.x + 1];
    if (seq < 0) return;
    const tc_layout L = tc_layout_for(HS, max_len);
    const int h = blockIdx.y;
    const int start = cu[seq], len = cu[seq + 1] - start;
    const int nq = min(BS_ATT_BQ, len - q0);
    const int C = NH * HS;
    const size_t ld = 3 * (size_t)C;
    BS_DYN_SMEM(tc_smem);
    T *sq = (T *)tc_smem, *skv = (T *)(tc_smem + L.kv), *sp = (T *)(tc_smem + L.p);
    float *ss = (float *)(tc_smem + L.s);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (len > L.NK) { // longer than the launch was sized for: NaN rows, never out of bounds
        for (int i = threadIdx.x; i < nq * HS; i += blockDim.x)
            out[(size_t)(start + q0 + i / HS) * C + h * HS + i % HS] = bs_st<T>(NAN);
        return;
    }
    const int nk16 = (len + 15) / 16 * 16;

    tc_load_rows<T, HS>(sq, L.LDQ, qkv + (size_t)(start + q0) * ld, ld, h * HS, BS_ATT_BQ, nq);

    // 1. scores
    for (int k0 = 0; k0 < nk16; k0 += TC_KC) {
        const int kn = min(TC_KC, nk16 - k0);
        __syncthreads(); // Q stored; the previous chunk consumed
        tc_load_rows<T, HS>(skv, L.LDQ, qkv + (size_t)(start + k0) * ld, ld, C + h * HS, kn, len - k0);
        __syncthreads();
        for (int t = warp; t < 2 * (kn / 16); t += TC_WARPS) {
            const int rt = t & 1, ct = t >> 1;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
            wmma::fill_fragment(acc, 0.0f);
#pragma unroll
            for (int kk = 0; kk < HS / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b; // K^T
                wmma::load_matrix_sync(a, sq + rt * 16 * L.LDQ + kk * 16, L.LDQ);
                wmma::load_matrix_sync(b, skv + ct * 16 * L.LDQ + kk * 16, L.LDQ);
                wmma::mma_sync(acc, a, b, acc);
            }
            wmma::store_matrix_sync(ss + rt * 16 * L.LDS + k0 + ct * 16, acc, L.LDS, wmma::mem_row_major);
        }
    }
    __syncthreads();

    // 2. softmax (log2 domain: sl2 = log2(e) / sqrt(HS))
    for (int r = warp; r < BS_ATT_BQ; r += TC_WARPS) {
        float *srow = ss + r * L.LDS;
        T *prow = sp + r * L.LDP;
        float mx = -INFINITY;
        for (int j = lane; j < len; j += 32) mx = fmaxf(mx, srow[j]);
        mx = bs_warp_max(mx);
        float sum = 0.0f;
        for (int j = lane; j < len; j += 32) {
            const float p = exp2f((srow[j] - mx) * sl2);
            srow[j] = p;
            sum += p;
        }
        const float inv = 1.0f / bs_warp_sum(sum);
        for (int j = lane; j < nk16; j += 32) prow[j] = bs_st<T>(j < len ? srow[j] * inv : 0.0f);
    }

    // 3. O = P V
    constexpr int NOT = 2 * (HS / 16);                   // output tiles (2 row tiles x HS/16)
    constexpr int TPW = (NOT + TC_WARPS - 1) / TC_WARPS; // per warp
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[TPW];
#pragma unroll
    for (int i = 0; i < TPW; i++) wmma::fill_fragment(o[i], 0.0f);
    for (int k0 = 0; k0 < nk16; k0 += TC_KC) {
        const int kn = min(TC_KC, nk16 - k0);
        __syncthreads(); // P written (first pass); the previous chunk consumed
        tc_load_rows<T, HS>(skv, L.LDQ, qkv + (size_t)(start + k0) * ld, ld, 2 * C + h * HS, kn, len - k0);
        __syncthreads();
#pragma unroll
        for (int i = 0; i < TPW; i++) {
            const int t = warp + i * TC_WARPS;
            if (t >= NOT) break;
            const int rt = t & 1, ct = t >> 1;
            for (int kk = 0; kk < kn / 16; kk++) {
                wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
                wmma::load_matrix_sync(a, sp + rt * 16 * L.LDP + k0 + kk * 16, L.LDP);
                wmma::load_matrix_sync(b, skv + kk * 16 * L.LDQ + ct * 16, L.LDQ);
                wmma::mma_sync(o[i], a, b, o[i]);
            }
        }
    }

    // 4. O out, through the score buffer (no longer read)
#pragma unroll
    for (int i = 0; i < TPW; i++) {
        const int t = warp + i * TC_WARPS;
        if (t >= NOT) break;
        const int rt = t & 1, ct = t >> 1;
        wmma::store_matrix_sync(ss + rt * 16 * L.LDS + ct * 16, o[i], L.LDS, wmma::mem_row_major);
    }
    __syncthreads();
    for (int i = threadIdx.x; i < nq * HS; i += blockDim.x) {
        const int r = i / HS, d = i - r * HS;
        out[(size_t)(start + q0 + r) * C + h * HS + d] = bs_st<T>(ss[r * L.LDS + d]);
    }
}

static int device_cc_optin(int *major, int *optin) {
    int dev = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
        cudaDeviceGetAttribute(optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return 1;
}

extern "C" int attention_kernel_ok(bs_att_kernel k, bs_dtype dt, int HS, int max_len) {
    if (HS < 1 || HS > BS_ATT_MAX_HS || max_len < 1) return 0;
    if (k == BS_ATT_SIMT) return dt == BS_DT_F32 || dt == BS_DT_F16 || dt == BS_DT_BF16;
    if (dt != BS_DT_F16 && dt != BS_DT_BF16) return 0;
    if (HS != 32 && HS != 64 && HS != 128) return 0;
    int major = 0, optin = 0;
    // bf16 tensor-core MMA: Ampere and later (the build targets 8.0, 8.9, 9.0)
    if (!device_cc_optin(&major, &optin) || major < 8) return 0;
    if (k == BS_ATT_MMA) return attention_mma_smem_bytes(HS) <= (size_t)optin;
    // WMMA: the scores of 32 queries against max_len keys must fit in the block's shared memory
    return k == BS_ATT_WMMA && max_len <= BS_ATT_TC_MAX_LEN && tc_layout_for(HS, max_len).bytes <= (size_t)optin;
}

extern "C" bs_att_kernel attention_best(bs_dtype dt, int HS, int max_len) {
    if (attention_kernel_ok(BS_ATT_MMA, dt, HS, max_len)) return BS_ATT_MMA;
    if (attention_kernel_ok(BS_ATT_WMMA, dt, HS, max_len)) return BS_ATT_WMMA;
    return BS_ATT_SIMT;
}

extern "C" const char *attention_kernel_name(bs_att_kernel k) {
    return k == BS_ATT_MMA ? "mma" : k == BS_ATT_WMMA ? "wmma" : "simt";
}

/* The limit only ever rises: engines of different max_len share the kernel in one process, and
 * lowering it for a short one would break the launches of a long one. */
template <typename T, int HS> static cudaError_t tc_set_smem(int max_len) {
    static size_t raised = 48 * 1024;
    const size_t bytes = tc_layout_for(HS, max_len).bytes;
    if (bytes <= raised) return cudaSuccess;
    cudaError_t e =
        cudaFuncSetAttribute(attention_tc_kernel<T, HS>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
    if (e == cudaSuccess) raised = bytes;
    return e;
}

template <int HS> static cudaError_t tc_setup(int max_len) {
    cudaError_t e = tc_set_smem<__half, HS>(max_len);
    return e != cudaSuccess ? e : tc_set_smem<__nv_bfloat16, HS>(max_len);
}

template <typename T>
static cudaError_t tc_launch(T *out, const T *qkv, const int32_t *cu, const int32_t *tiles, int n_tiles, int NH, int HS,
                             int max_len, cudaStream_t s) {
    const dim3 grid((unsigned)n_tiles, (unsigned)NH);
    const float sl2 = 1.4426950408889634f / sqrtf((float)HS);
    if (HS == 32) {
        BS_LAUNCH(grid, TC_WARPS * 32, tc_layout_for(32, max_len).bytes, s, attention_tc_kernel<T, 32>)
        (out, qkv, cu, tiles, NH, max_len, sl2);
    } else if (HS == 64) {
        BS_LAUNCH(grid, TC_WARPS * 32, tc_layout_for(64, max_len).bytes, s, attention_tc_kernel<T, 64>)
        (out, qkv, cu, tiles, NH, max_len, sl2);
    } else {
        BS_LAUNCH(grid, TC_WARPS * 32, tc_layout_for(128, max_len).bytes, s, attention_tc_kernel<T, 128>)
        (out, qkv, cu, tiles, NH, max_len, sl2);
    }
    return cudaGetLastError();
}

// ---- the CLS query alone (the last layer when only the pooler and CLS features are wanted) ----
//
// One block per (sequence, head), 4 warps. Warp w runs keys w, w+4, ... of the sequence against
// the CLS row's query (lanes split the head dims, held in registers; a warp sum per key) with an
// online softmax of its own; the four warps' (max, sum, output) are then merged through shared
// memory. Row s of out (B, C) gets sequence s's result (compacted, as the rest of the layer wants
// it), or its E4M3 in out8; an empty sequence (a padding slot) gets zeros. No length limit.

#define CLS_WARPS 4

static size_t cls_smem_bytes(int HS) {
    return sizeof(float) * ((size_t)CLS_WARPS * HS + 2 * CLS_WARPS);
}

template <typename T, int NPL>
__global__ void __launch_bounds__(CLS_WARPS * 32)
    attention_cls_kernel(T *out, uint8_t *out8, const float *oscale, const T *qkv, const int32_t *cu, int NH, int HS,
                         float qscale, const float *iscale) {
    const int seq = blockIdx.x, h = blockIdx.y;
    const int start = cu[seq], len = cu[seq + 1] - start;
    const int C = NH * HS;
    const size_t ld = 3 * (size_t)C;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    BS_DYN_SMEM(cls_smem);
    float *so = (float *)cls_smem;                         // (CLS_WARPS, HS) partial outputs
    float *sm = so + CLS_WARPS * HS, *sl = sm + CLS_WARPS; // (CLS_WARPS) running max and sum
    const T *base = qkv + (size_t)start * ld + h * HS;     // the CLS row's q of head h
    float q[NPL], o[NPL], m = -INFINITY, l = 0;
    const float si = iscale ? *iscale : 1.0f; // E4M3 input: values are code * si (q k: si^2, v: si)
    qscale *= si * si;
#pragma unroll
    for (int j = 0; j < NPL; j++) {
        const int d = lane + 32 * j;
        q[j] = d < HS && len > 0 ? bs_ld(base[d]) * qscale : 0.0f;
        o[j] = 0;
    }
    for (int k = warp; k < len; k += CLS_WARPS) {
        const T *kr = base + (size_t)k * ld + C; // key k; its value C further
        float sc = 0, v[NPL];
#pragma unroll
        for (int j = 0; j < NPL; j++) {
            const int d = lane + 32 * j;
            v[j] = 0;
            if (d < HS) {
                sc += q[j] * bs_ld(kr[d]);
                v[j] = bs_ld(kr[C + d]);
            }
        }
        sc = bs_warp_sum(sc);
        const float mn = fmaxf(m, sc), corr = exp2f(m - mn), p = exp2f(sc - mn); // corr 0 on the first key
        l = l * corr + p;
#pragma unroll
        for (int j = 0; j < NPL; j++) o[j] = o[j] * corr + p * v[j];
        m = mn;
    }
#pragma unroll
    for (int j = 0; j < NPL; j++) {
        const int d = lane + 32 * j;
        if (d < HS) so[warp * HS + d] = o[j];
    }
    if (lane == 0) sm[warp] = m, sl[warp] = l;
    __syncthreads();
    float M = -INFINITY;
    for (int w = 0; w < CLS_WARPS; w++) M = fmaxf(M, sm[w]); // finite when len > 0: warp 0 ran key 0
    const float sc8 = out8 ? *oscale : 1.0f;
    for (int d = threadIdx.x; d < HS; d += blockDim.x) {
        float acc = 0, L = 0;
        if (len > 0)
            for (int w = 0; w < CLS_WARPS; w++) {
                const float f = exp2f(sm[w] - M); // 0 for a warp that had no key (max -inf)
                acc += so[w * HS + d] * f;
                L += sl[w] * f;
            }
        const float r = len > 0 ? acc / L * si : 0.0f;
        const size_t i = (size_t)seq * C + h * HS + d;
        if (out8)
            out8[i] = __nv_cvt_float_to_fp8(r / sc8, __NV_SATFINITE, __NV_E4M3);
        else
            out[i] = bs_st<T>(r);
    }
}

template <typename T>
static cudaError_t cls_launch(T *out, uint8_t *out8, const float *oscale, const T *qkv, const int32_t *cu, int B,
                              int NH, int HS, const float *iscale, cudaStream_t s) {
    const dim3 grid((unsigned)B, (unsigned)NH);
    const size_t smem = cls_smem_bytes(HS);
    const float qscale = 1.4426950408889634f / sqrtf((float)HS); // log2(e) / sqrt(HS)
    if (HS <= 32) {
        BS_LAUNCH(grid, CLS_WARPS * 32, smem, s, attention_cls_kernel<T, 1>)
        (out, out8, oscale, qkv, cu, NH, HS, qscale, iscale);
    } else if (HS <= 64) {
        BS_LAUNCH(grid, CLS_WARPS * 32, smem, s, attention_cls_kernel<T, 2>)
        (out, out8, oscale, qkv, cu, NH, HS, qscale, iscale);
    } else if (HS <= 128) {
        BS_LAUNCH(grid, CLS_WARPS * 32, smem, s, attention_cls_kernel<T, 4>)
        (out, out8, oscale, qkv, cu, NH, HS, qscale, iscale);
    } else {
        BS_LAUNCH(grid, CLS_WARPS * 32, smem, s, attention_cls_kernel<T, 8>)
        (out, out8, oscale, qkv, cu, NH, HS, qscale, iscale);
    }
    return cudaGetLastError();
}

static cudaError_t cls_dispatch(void *out, uint8_t *out8, const float *oscale, const void *qkv, const int32_t *cu,
                                int B, int NH, int HS, bs_dtype dt, cudaStream_t s) {
    if (NH < 1 || HS < 1 || HS > BS_ATT_MAX_HS || B < 0) return cudaErrorInvalidValue;
    if (B == 0) return cudaSuccess;
    BS_DISPATCH_ACT(dt, return cls_launch((T *)out, out8, oscale, (const T *)qkv, cu, B, NH, HS, NULL, s));
    return cudaSuccess;
}

extern "C" cudaError_t attention_cls_forward(void *out, const void *qkv, const int32_t *cu_seqlens, int B, int NH,
                                             int HS, bs_dtype dt, cudaStream_t s) {
    return cls_dispatch(out, NULL, NULL, qkv, cu_seqlens, B, NH, HS, dt, s);
}

extern "C" cudaError_t attention_cls_q8_forward(void *out8, const void *qkv, const int32_t *cu_seqlens, int B, int NH,
                                                int HS, bs_dtype dt, const float *scale, cudaStream_t s) {
    if (!out8 || !scale) return cudaErrorInvalidValue;
    return cls_dispatch(NULL, (uint8_t *)out8, scale, qkv, cu_seqlens, B, NH, HS, dt, s);
}

extern "C" cudaError_t attention_cls_q8qkv_forward(void *out8, const void *qkv8, const int32_t *cu_seqlens, int B,
                                                   int NH, int HS, const float *iscale, const float *scale,
                                                   cudaStream_t s) {
    if (!out8 || !scale || !iscale || NH < 1 || HS < 1 || HS > BS_ATT_MAX_HS || B < 0) return cudaErrorInvalidValue;
    if (B == 0) return cudaSuccess;
    return cls_launch((__nv_fp8_e4m3 *)NULL, (uint8_t *)out8, scale, (const __nv_fp8_e4m3 *)qkv8, cu_seqlens, B, NH, HS,
                      iscale, s);
}

template <typename T, int NPL> static cudaError_t att_set_smem(int HS) {
    const size_t bytes = att_smem_bytes(HS);
    if (bytes <= 48 * 1024) return cudaSuccess;
    return cudaFuncSetAttribute(attention_kernel<T, NPL>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes);
}

template <int NPL> static cudaError_t att_setup_all(int HS) {
    cudaError_t e;
    if ((e = att_set_smem<float, NPL>(HS)) != cudaSuccess) return e;
    if ((e = att_set_smem<__half, NPL>(HS)) != cudaSuccess) return e;
    return att_set_smem<__nv_bfloat16, NPL>(HS);
}

static cudaError_t att_setup_cuda_cores(int HS) {
    if (HS <= 32) return att_setup_all<1>(HS);
    if (HS <= 64) return att_setup_all<2>(HS);
    if (HS <= 128) return att_setup_all<4>(HS);
    return att_setup_all<8>(HS);
}

extern "C" cudaError_t attention_setup(int HS, int max_len) {
    if (HS < 1 || HS > BS_ATT_MAX_HS || max_len < 1) return cudaErrorInvalidValue;
    cudaError_t e = att_setup_cuda_cores(HS);
    if (e == cudaSuccess && attention_kernel_ok(BS_ATT_MMA, BS_DT_BF16, HS, max_len)) e = attention_mma_setup(HS);
    if (e != cudaSuccess || !attention_kernel_ok(BS_ATT_WMMA, BS_DT_BF16, HS, max_len)) return e;
    if (HS == 32) return tc_setup<32>(max_len);
    if (HS == 64) return tc_setup<64>(max_len);
    if (HS == 128) return tc_setup<128>(max_len);
    return cudaSuccess;
}

template <typename T>
static cudaError_t att_launch(T *out, const T *qkv, const int32_t *cu, const int32_t *tiles, int n_tiles, int NH,
                              int HS, cudaStream_t s) {
    const dim3 grid((unsigned)n_tiles, (unsigned)NH);
    const size_t smem = att_smem_bytes(HS);
    const float qscale = 1.4426950408889634f / sqrtf((float)HS); // log2(e) / sqrt(HS)
    if (HS <= 32)
        BS_LAUNCH(grid, ATT_WARPS * 32, smem, s, attention_kernel<T, 1>)(out, qkv, cu, tiles, NH, HS, qscale);
    else if (HS <= 64)
        BS_LAUNCH(grid, ATT_WARPS * 32, smem, s, attention_kernel<T, 2>)(out, qkv, cu, tiles, NH, HS, qscale);
    else if (HS <= 128)
        BS_LAUNCH(grid, ATT_WARPS * 32, smem, s, attention_kernel<T, 4>)(out, qkv, cu, tiles, NH, HS, qscale);
    else
        BS_LAUNCH(grid, ATT_WARPS * 32, smem, s, attention_kernel<T, 8>)(out, qkv, cu, tiles, NH, HS, qscale);
    return cudaGetLastError();
}

extern "C" cudaError_t attention_forward(void *out, const void *qkv, const int32_t *cu_seqlens, const int32_t *tiles,
                                         int n_tiles, int NH, int HS, int max_len, bs_att_kernel k, bs_dtype dt,
                                         cudaStream_t s) {
    if (NH < 1 || !attention_kernel_ok(k, dt, HS, max_len)) return cudaErrorInvalidValue;
    if (n_tiles < 1) return cudaSuccess;
    if (k == BS_ATT_MMA) return attention_mma_forward(out, qkv, cu_seqlens, tiles, n_tiles, NH, HS, dt, s);
    if (k == BS_ATT_WMMA) {
        if (dt == BS_DT_F16)
            return tc_launch((__half *)out, (const __half *)qkv, cu_seqlens, tiles, n_tiles, NH, HS, max_len, s);
        return tc_launch((__nv_bfloat16 *)out, (const __nv_bfloat16 *)qkv, cu_seqlens, tiles, n_tiles, NH, HS, max_len,
                         s);
    }
    BS_DISPATCH_ACT(dt, return att_launch((T *)out, (const T *)qkv, cu_seqlens, tiles, n_tiles, NH, HS, s));
    return cudaSuccess;
}
