// CLS gather, mean pooling and the tanh pooler (see pooling.h).
#include "pooling.h"

// One block per sequence, threads across C (coalesced rows), fp32 sums.
template <typename T> __global__ void pool_kernel(float *cls, float *mean, const T *x, const int32_t *cu, int C) {
    const int s = blockIdx.x, t0 = cu[s], n = cu[s + 1] - t0;
    for (int c = threadIdx.x; c < C; c += blockDim.x) {
        float acc = 0, first = 0;
        if (n > 0) first = bs_ld(x[(size_t)t0 * C + c]);
        for (int t = 0; t < n; t++) acc += bs_ld(x[(size_t)(t0 + t) * C + c]);
        if (cls) cls[(size_t)s * C + c] = first;
        if (mean) mean[(size_t)s * C + c] = n > 0 ? acc / n : 0.0f;
    }
}

// A warp per output feature o and POOL_SEQS sequences: the W row is read once (coalesced) and
// applied to each sequence's CLS vector; the dot products are reduced across the warp.
#define POOL_SEQS 8
template <typename T>
__global__ void pooler_kernel(float *out, const float *cls, const T *W, const float *bias, int B, int C) {
    const int o = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    const int s0 = blockIdx.y * POOL_SEQS;
    if (o >= C) return;
    float acc[POOL_SEQS];
#pragma unroll
    for (int j = 0; j < POOL_SEQS; j++) acc[j] = 0;
    const T *w = W + (size_t)o * C;
    for (int c = lane; c < C; c += 32) {
        const float wc = bs_ld(w[c]);
#pragma unroll
        for (int j = 0; j < POOL_SEQS; j++)
            if (s0 + j < B) acc[j] += wc * cls[(size_t)(s0 + j) * C + c];
    }
#pragma unroll
    for (int j = 0; j < POOL_SEQS; j++) {
        float v = bs_warp_sum(acc[j]);
        if (lane == 0 && s0 + j < B) out[(size_t)(s0 + j) * C + o] = tanhf(v + bias[o]);
    }
}

// A block per sequence: its CLS row, 16 bytes a thread where the row and both pointers allow.
__global__ void cls_rows_kernel(unsigned char *dst, const unsigned char *src, const int32_t *cu, size_t row_bytes,
                                int vec) {
    const int s = blockIdx.x;
    const bool any = cu[s + 1] > cu[s];
    unsigned char *d = dst + (size_t)s * row_bytes;
    const unsigned char *r = src + (size_t)cu[s] * row_bytes; // read only when the sequence has a row
    if (vec) {
        for (size_t i = threadIdx.x; i < row_bytes / 16; i += blockDim.x)
            ((uint4 *)d)[i] = any ? ((const uint4 *)r)[i] : make_uint4(0, 0, 0, 0);
    } else {
        for (size_t i = threadIdx.x; i < row_bytes; i += blockDim.x) d[i] = any ? r[i] : (unsigned char)0;
    }
}

extern "C" cudaError_t pool_forward(float *cls, float *mean, const void *x, const int32_t *cu_seqlens, int B, int C,
                                    bs_dtype dt, cudaStream_t s) {
    if (B < 1) return cudaSuccess;
    BS_DISPATCH_ACT(dt, BS_LAUNCH(B, 256, 0, s, pool_kernel<T>)(cls, mean, (const T *)x, cu_seqlens, C));
    return cudaGetLastError();
}

extern "C" cudaError_t pooler_forward(float *out, const float *cls, const void *W, const float *bias, int B, int C,
                                      bs_dtype dt, cudaStream_t s) {
    if (B < 1) return cudaSuccess;
    dim3 grid((unsigned)((C + 3) / 4), (unsigned)((B + POOL_SEQS - 1) / POOL_SEQS));
    BS_DISPATCH_ACT(dt, BS_LAUNCH(grid, 128, 0, s, pooler_kernel<T>)(out, cls, (const T *)W, bias, B, C));
    return cudaGetLastError();
}

extern "C" cudaError_t cls_rows_forward(void *dst, const void *src, const int32_t *cu_seqlens, int B, size_t row_bytes,
                                        cudaStream_t s) {
    if (B < 1 || row_bytes == 0) return cudaSuccess;
    const int vec = row_bytes % 16 == 0 && (uintptr_t)dst % 16 == 0 && (uintptr_t)src % 16 == 0;
    BS_LAUNCH(B, 128, 0, s, cls_rows_kernel)
    ((unsigned char *)dst, (const unsigned char *)src, cu_seqlens, row_bytes, vec);
    return cudaGetLastError();
}
