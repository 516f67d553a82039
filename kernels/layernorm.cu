// Embedding + LayerNorm and bias + residual + LayerNorm (see layernorm.h). One warp per row: the
// summed row goes to shared memory once, then mean, variance and the normalised output are read
// from there, so any hidden size up to 12288 works with the same code.
#include "layernorm.h"

#define LN_MAX_SMEM (48 * 1024)

static int ln_warps_per_block(int C) {
    int w = LN_MAX_SMEM / (C * (int)sizeof(float));
    return w < 1 ? 0 : w > 4 ? 4 : w;
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
    extern __shared__ float smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= n_rows) return;
    // Largest s with cu[s] <= t (cu is non-decreasing); s == B means a padding row.
    int lo = 0, hi = B;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        if (cu[mid] <= t)
            lo = mid;
        else
            hi = mid - 1;
    }
    const int p = lo < B ? t - cu[lo] : 0;
    const T *we = word + (size_t)ids[t] * C, *pe = pos + (size_t)p * C;
    float *row = smem + warp * C;
    for (int c = lane; c < C; c += 32) row[c] = bs_ld(we[c]) + bs_ld(pe[c]) + bs_ld(type0[c]);
    __syncwarp();
    ln_finish(out + (size_t)t * C, row, g, b, C, eps, lane);
}

template <typename T>
__global__ void residual_layernorm_kernel(T *out, const T *a, const float *bias, const T *res, const float *g,
                                          const float *b, int n_rows, int C, float eps) {
    extern __shared__ float smem[];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int t = blockIdx.x * (blockDim.x >> 5) + warp;
    if (t >= n_rows) return;
    float *row = smem + warp * C;
    const T *ar = a + (size_t)t * C, *rr = res + (size_t)t * C;
    for (int c = lane; c < C; c += 32) row[c] = bs_ld(ar[c]) + (bias ? bias[c] : 0.0f) + bs_ld(rr[c]);
    __syncwarp();
    ln_finish(out + (size_t)t * C, row, g, b, C, eps, lane);
}

extern "C" cudaError_t embedding_layernorm_forward(void *out, const int32_t *ids, const int32_t *cu_seqlens, int B,
                                                   const void *word, const void *pos, const void *type0,
                                                   const float *gamma, const float *beta, int n, int C, float eps,
                                                   bs_dtype dt, cudaStream_t s) {
    const int w = ln_warps_per_block(C);
    if (n < 1) return cudaSuccess;
    if (w == 0) return cudaErrorInvalidValue;
    const unsigned grid = (unsigned)((n + w - 1) / w);
    const size_t smem = (size_t)w * C * sizeof(float);
    BS_DISPATCH_ACT(dt, embedding_layernorm_kernel<<<grid, 32 * w, smem, s>>>(
                            (T *)out, ids, cu_seqlens, B, (const T *)word, (const T *)pos, (const T *)type0, gamma,
                            beta, n, C, eps));
    return cudaGetLastError();
}

extern "C" cudaError_t residual_layernorm_forward(void *out, const void *a, const float *bias, const void *res,
                                                  const float *gamma, const float *beta, int n, int C, float eps,
                                                  bs_dtype dt, cudaStream_t s) {
    const int w = ln_warps_per_block(C);
    if (n < 1) return cudaSuccess;
    if (w == 0) return cudaErrorInvalidValue;
    const unsigned grid = (unsigned)((n + w - 1) / w);
    const size_t smem = (size_t)w * C * sizeof(float);
    BS_DISPATCH_ACT(dt, residual_layernorm_kernel<<<grid, 32 * w, smem, s>>>((T *)out, (const T *)a, bias,
                                                                             (const T *)res, gamma, beta, n, C, eps));
    return cudaGetLastError();
}
