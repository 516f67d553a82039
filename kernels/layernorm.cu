// Embedding + LayerNorm and bias + residual + LayerNorm (see layernorm.h). One warp per row: the
// summed row goes to shared memory once, then mean, variance and the normalised output are read
// from there, so any hidden size up to 12288 works with the same code; f16/bf16 rows of 256..1024
// (BERT-base 768, large 1024) take a register-resident 16-byte path instead (below).
#include "layernorm.h"

#include "convert.h"

#define LN_MAX_SMEM (48 * 1024)

static int ln_warps_per_block(int C) {
    int w = LN_MAX_SMEM / (C * (int)sizeof(float));
    return w < 1 ? 0 : w > 4 ? 4 : w;
}

// Position of packed row t within its sequence: the largest s with cu[s] <= t (cu is
// non-decreasing) by binary search; s == B means a bucket padding row, which gets position 0.
__device__ __forceinline__ int ln_position(const int32_t *cu, int B, int t) {
    int lo = 0, hi = B;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (cu[mid] <= t)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo < B ? t - cu[lo] : 0;
}

// Mean/variance of the C floats at row (shared), then y = (x - mean) * rstd * g + b.
template <typename T>
__device__ __forceinline__ void ln_finish(T *y, const float *row, const float *g, const float *b, int C, float eps,
                                          int lane) {
    float s = 0;
    for (int c = lane; c < C; c += 32) s += row[c];
    const float mean = bs_warp_sum(s) / C;
    float v = 0;
    for (int c = lane; c < C; c += 32) {
        float d = row[c] - mean;
        v += d * d;
    }
    const float rstd = rsqrtf(bs_warp_sum(v) / C + eps);
    for (int c = lane; c < C; c += 32) y[c] = bs_st<T>((row[c] - mean) * rstd * g[c] + b[c]);
}

template <typename T>
__global__ void embedding_layernorm_kernel(T *out, const int32_t *ids, const int32_t *cu, int B, const T *word,
                                           const T *pos, const T *type0, const float *g, const float *b, int n_rows,
                                           int C, float eps) {
    BS_DYN_SMEM(ln_smem);
    float *const smem = (float *)ln_smem;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= n_rows) return;
    const int p = ln_position(cu, B, t);
    const T *we = word + (size_t)ids[t] * C, *pe = pos + (size_t)p * C;
    float *row = smem + warp * C;
    for (int c = lane; c < C; c += 32) row[c] = bs_ld(we[c]) + bs_ld(pe[c]) + bs_ld(type0[c]);
    __syncwarp();
    ln_finish(out + (size_t)t * C, row, g, b, C, eps, lane);
}

template <typename T>
__global__ void residual_layernorm_kernel(T *out, const T *a, const float *bias, const T *res, const float *g,
                                          const float *b, int n_rows, int C, float eps) {
    BS_DYN_SMEM(ln_smem);
    float *const smem = (float *)ln_smem;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= n_rows) return;
    float *row = smem + warp * C;
    const T *ar = a + (size_t)t * C, *rr = res ? res + (size_t)t * C : NULL;
    for (int c = lane; c < C; c += 32) row[c] = bs_ld(ar[c]) + (bias ? bias[c] : 0.0f) + (rr ? bs_ld(rr[c]) : 0.0f);
    __syncwarp();
    ln_finish(out + (size_t)t * C, row, g, b, C, eps, lane);
}

// ---- 16-byte path: f16/bf16 rows of C = 256, 512, 768 or 1024 ----
// One warp per row as above, but each lane holds its 8 * C/256 values in registers, loaded and
// stored 8 at a time: these kernels are memory bound, and 2-byte loads left most of the bandwidth
// unused. Same arithmetic per element as ln_finish (sums in a different order only). The fp32
// parameters (gamma, beta, bias) come in 16-byte loads too, read before the row is written (the
// dispatch requires them 16-byte aligned; the engine's are 256-byte aligned).

// 8 consecutive floats at p (16-byte aligned)
__device__ __forceinline__ void ln_ld8f(const float *p, float *f) {
    const float4 a = ((const float4 *)p)[0], b = ((const float4 *)p)[1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}

// q8 != NULL: also the E4M3 copy of the stored (rounded) row, E4M3(y / *q8_scale), for the next
// GEMM under static fp8 scales: the same bytes quantize_fp8_static_forward makes from y.
template <typename T, int NV>
__device__ __forceinline__ void ln_finish_vec(T *y, float (&x)[NV][8], const float *g, const float *b, float eps,
                                              int lane, uint8_t *q8, const float *q8_scale) {
    constexpr int C = NV * 256;
    float s = 0;
#pragma unroll
    for (int v = 0; v < NV; v++)
#pragma unroll
        for (int i = 0; i < 8; i++) s += x[v][i];
    const float mean = bs_warp_sum(s) / C;
    float q = 0;
#pragma unroll
    for (int v = 0; v < NV; v++)
#pragma unroll
        for (int i = 0; i < 8; i++) {
            const float d = x[v][i] - mean;
            q += d * d;
        }
    const float rstd = rsqrtf(bs_warp_sum(q) / C + eps);
    uint4 o[NV];
#pragma unroll
    for (int v = 0; v < NV; v++) {
        const int c = v * 256 + lane * 8;
        float gv[8], bv[8], r[8];
        ln_ld8f(g + c, gv);
        ln_ld8f(b + c, bv);
#pragma unroll
        for (int i = 0; i < 8; i++) r[i] = (x[v][i] - mean) * rstd * gv[i] + bv[i];
        o[v] = bs_pack8(r, T());
    }
#pragma unroll
    for (int v = 0; v < NV; v++) *(uint4 *)(y + v * 256 + lane * 8) = o[v]; // after every parameter load
    if (q8) {
        const float qs = *q8_scale;
#pragma unroll
        for (int v = 0; v < NV; v++) {
            float r[8];
            bs_unpack8(o[v], r, T());
            *(uint2 *)(q8 + v * 256 + lane * 8) = bs_e4m3_pack8(r, qs);
        }
    }
}

template <typename T, int NV>
__global__ void residual_layernorm_vec_kernel(T *out, const T *a, const float *bias, const T *res, const float *g,
                                              const float *b, int n_rows, float eps, uint8_t *q8,
                                              const float *q8_scale) {
    constexpr int C = NV * 256;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= n_rows) return;
    const T *ar = a + (size_t)t * C, *rr = res ? res + (size_t)t * C : NULL;
    float x[NV][8];
#pragma unroll
    for (int v = 0; v < NV; v++) {
        const int c = v * 256 + lane * 8;
        float fa[8], fr[8] = {0, 0, 0, 0, 0, 0, 0, 0}, fb[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        bs_unpack8(bs_ld16(ar + c), fa, T());
        if (rr) bs_unpack8(bs_ld16(rr + c), fr, T());
        if (bias) ln_ld8f(bias + c, fb);
#pragma unroll
        for (int i = 0; i < 8; i++) x[v][i] = fa[i] + fb[i] + fr[i];
    }
    ln_finish_vec<T, NV>(out + (size_t)t * C, x, g, b, eps, lane, q8 ? q8 + (size_t)t * C : NULL, q8_scale);
}

template <typename T, int NV>
__global__ void embedding_layernorm_vec_kernel(T *out, const int32_t *ids, const int32_t *cu, int B, const T *word,
                                               const T *pos, const T *type0, const float *g, const float *b, int n_rows,
                                               float eps, uint8_t *q8, const float *q8_scale) {
    constexpr int C = NV * 256;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= n_rows) return;
    const int p = ln_position(cu, B, t);
    const T *we = word + (size_t)ids[t] * C, *pe = pos + (size_t)p * C;
    float x[NV][8];
#pragma unroll
    for (int v = 0; v < NV; v++) {
        const int c = v * 256 + lane * 8;
        float fw[8], fp[8], ft[8];
        bs_unpack8(bs_ld16(we + c), fw, T());
        bs_unpack8(bs_ld16(pe + c), fp, T());
        bs_unpack8(bs_ld16(type0 + c), ft, T());
#pragma unroll
        for (int i = 0; i < 8; i++) x[v][i] = fw[i] + fp[i] + ft[i];
    }
    ln_finish_vec<T, NV>(out + (size_t)t * C, x, g, b, eps, lane, q8 ? q8 + (size_t)t * C : NULL, q8_scale);
}

#define LN_VEC_WARPS 4

/* 16-byte aligned (NULL counts as aligned: an absent bias) */
static bool al16(const void *p) {
    return ((uintptr_t)p & 15) == 0;
}

/* Launches KERNEL with the vector width for C and returns, when the 16-byte path applies (f16/bf16,
 * C in 256..1024 a multiple of 256, `ok`: the pointers 16-byte aligned); else falls through. */
#define LN_VEC_DISPATCH(dt, C, ok, KERNEL, ...)                                                                        \
    do {                                                                                                               \
        if ((dt) != BS_DT_F16 && (dt) != BS_DT_BF16) break;                                                            \
        if ((C) % 256 != 0 || (C) < 256 || (C) > 1024) break;                                                          \
        if (!(ok)) break;                                                                                              \
        const unsigned grid_ = (unsigned)((n + LN_VEC_WARPS - 1) / LN_VEC_WARPS);                                      \
        const int nv_ = (C) / 256;                                                                                     \
        if ((dt) == BS_DT_F16) {                                                                                       \
            typedef __half T;                                                                                          \
            if (nv_ == 1) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 1>)(__VA_ARGS__);                        \
            if (nv_ == 2) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 2>)(__VA_ARGS__);                        \
            if (nv_ == 3) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 3>)(__VA_ARGS__);                        \
            if (nv_ == 4) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 4>)(__VA_ARGS__);                        \
        } else {                                                                                                       \
            typedef __nv_bfloat16 T;                                                                                   \
            if (nv_ == 1) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 1>)(__VA_ARGS__);                        \
            if (nv_ == 2) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 2>)(__VA_ARGS__);                        \
            if (nv_ == 3) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 3>)(__VA_ARGS__);                        \
            if (nv_ == 4) BS_LAUNCH(grid_, 32 * LN_VEC_WARPS, 0, s, KERNEL<T, 4>)(__VA_ARGS__);                        \
        }                                                                                                              \
        return cudaGetLastError();                                                                                     \
    } while (0)

extern "C" cudaError_t embedding_layernorm_q8_forward(void *out, const int32_t *ids, const int32_t *cu_seqlens, int B,
                                                      const void *word, const void *pos, const void *type0,
                                                      const float *gamma, const float *beta, int n, int C, float eps,
                                                      bs_dtype dt, void *q8, const float *q8_scale, cudaStream_t s) {
    if (n < 1) return cudaSuccess;
    LN_VEC_DISPATCH(dt, C, al16(out) && al16(word) && al16(pos) && al16(type0) && al16(gamma) && al16(beta) && al16(q8),
                    embedding_layernorm_vec_kernel, (T *)out, ids, cu_seqlens, B, (const T *)word, (const T *)pos,
                    (const T *)type0, gamma, beta, n, eps, (uint8_t *)q8, q8_scale);
    const int w = ln_warps_per_block(C);
    if (w == 0) return cudaErrorInvalidValue;
    const unsigned grid = (unsigned)((n + w - 1) / w);
    const size_t smem = (size_t)w * C * sizeof(float);
    BS_DISPATCH_ACT(dt, BS_LAUNCH(grid, 32 * w, smem, s, embedding_layernorm_kernel<T>)(
                            (T *)out, ids, cu_seqlens, B, (const T *)word, (const T *)pos, (const T *)type0, gamma,
                            beta, n, C, eps));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || !q8) return e;
    return quantize_fp8_static_forward(q8, out, dt, (size_t)n * C, q8_scale, s); /* the same bytes as the fused copy */
}

extern "C" cudaError_t embedding_layernorm_forward(void *out, const int32_t *ids, const int32_t *cu_seqlens, int B,
                                                   const void *word, const void *pos, const void *type0,
                                                   const float *gamma, const float *beta, int n, int C, float eps,
                                                   bs_dtype dt, cudaStream_t s) {
    return embedding_layernorm_q8_forward(out, ids, cu_seqlens, B, word, pos, type0, gamma, beta, n, C, eps, dt, NULL,
                                          NULL, s);
}

extern "C" cudaError_t residual_layernorm_q8_forward(void *out, const void *a, const float *bias, const void *res,
                                                     const float *gamma, const float *beta, int n, int C, float eps,
                                                     bs_dtype dt, void *q8, const float *q8_scale, cudaStream_t s) {
    if (n < 1) return cudaSuccess;
    LN_VEC_DISPATCH(dt, C, al16(out) && al16(a) && al16(res) && al16(bias) && al16(gamma) && al16(beta) && al16(q8),
                    residual_layernorm_vec_kernel, (T *)out, (const T *)a, bias, (const T *)res, gamma, beta, n, eps,
                    (uint8_t *)q8, q8_scale);
    const int w = ln_warps_per_block(C);
    if (w == 0) return cudaErrorInvalidValue;
    const unsigned grid = (unsigned)((n + w - 1) / w);
    const size_t smem = (size_t)w * C * sizeof(float);
    BS_DISPATCH_ACT(dt, BS_LAUNCH(grid, 32 * w, smem, s, residual_layernorm_kernel<T>)(
                            (T *)out, (const T *)a, bias, (const T *)res, gamma, beta, n, C, eps));
    cudaError_t e = cudaGetLastError();
    if (e != cudaSuccess || !q8) return e;
    return quantize_fp8_static_forward(q8, out, dt, (size_t)n * C, q8_scale, s);
}

extern "C" cudaError_t residual_layernorm_forward(void *out, const void *a, const float *bias, const void *res,
                                                  const float *gamma, const float *beta, int n, int C, float eps,
                                                  bs_dtype dt, cudaStream_t s) {
    return residual_layernorm_q8_forward(out, a, bias, res, gamma, beta, n, C, eps, dt, NULL, NULL, s);
}
