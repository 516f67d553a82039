// Type conversion, |x| maxima and per-tensor E4M3 quantisation (see convert.h).
#include "convert.h"

template <typename D, typename S> __global__ void convert_kernel(D *dst, const S *src, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        dst[i] = bs_st<D>(bs_ld(src[i]));
}

static unsigned grid_for(size_t n, unsigned block) {
    size_t g = (n + block - 1) / block;
    return (unsigned)(g < 1 ? 1 : g > 65535u * 8 ? 65535u * 8 : g);
}

template <typename D>
static cudaError_t convert_from(D *dst, const void *src, bs_dtype src_dt, size_t n, cudaStream_t s) {
    unsigned g = grid_for(n, 256);
    switch (src_dt) {
    case BS_DT_F32:
        BS_LAUNCH(g, 256, 0, s, convert_kernel<D, float>)(dst, (const float *)src, n);
        break;
    case BS_DT_F16:
        BS_LAUNCH(g, 256, 0, s, convert_kernel<D, __half>)(dst, (const __half *)src, n);
        break;
    case BS_DT_BF16:
        BS_LAUNCH(g, 256, 0, s, convert_kernel<D, __nv_bfloat16>)(dst, (const __nv_bfloat16 *)src, n);
        break;
    default:
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

extern "C" cudaError_t convert_forward(void *dst, bs_dtype dst_dt, const void *src, bs_dtype src_dt, size_t n,
                                       cudaStream_t s) {
    if (n == 0) return cudaSuccess;
    BS_DISPATCH_ACT(dst_dt, return convert_from((T *)dst, src, src_dt, n, s));
    return cudaSuccess;
}

// Both fp8 passes read every GEMM input once per GEMM, so they run 8 elements per thread step
// from 16-byte loads (two for f32) when n % 8 == 0 and the pointers are 16-byte aligned (every
// engine buffer is); otherwise element by element. Same arithmetic either way: max of |x|, and
// x / scale rounded by __nv_cvt_float_to_fp8 (bit-identical to the CPU twin).
static bool vec8_ok(const void *a, const void *b, size_t n) {
    return n % 8 == 0 && ((uintptr_t)a % 16) == 0 && ((uintptr_t)b % 16) == 0;
}

// The block's maximum into partials[blockIdx.x].
__device__ __forceinline__ void amax_block_store(float *partials, float m) {
    __shared__ float red[32];
    m = bs_warp_max(m);
    if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
    __syncthreads();
    if (threadIdx.x < 32) {
        m = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.0f;
        m = bs_warp_max(m);
        if (threadIdx.x == 0) partials[blockIdx.x] = m;
    }
}

// One block per partial: grid-stride |x| maximum, block reduction, one float out.
template <typename T> __global__ void amax_kernel(float *partials, const T *x, size_t n) {
    float m = 0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        m = fmaxf(m, fabsf(bs_ld(x[i])));
    amax_block_store(partials, m);
}

// The same over n8 groups of 8, two groups in flight per thread step.
template <typename T> __global__ void amax_vec_kernel(float *partials, const T *x, size_t n8) {
    float m0 = 0, m1 = 0;
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x;
    for (; i + stride < n8; i += 2 * stride) {
        float a[8], b[8];
        bs_load8(x, i, a);
        bs_load8(x, i + stride, b);
#pragma unroll
        for (int j = 0; j < 8; j++) m0 = fmaxf(m0, fabsf(a[j])), m1 = fmaxf(m1, fabsf(b[j]));
    }
    if (i < n8) {
        float a[8];
        bs_load8(x, i, a);
#pragma unroll
        for (int j = 0; j < 8; j++) m0 = fmaxf(m0, fabsf(a[j]));
    }
    amax_block_store(partials, fmaxf(m0, m1));
}

extern "C" cudaError_t amax_forward(float *partials, const void *x, bs_dtype dt, size_t n, cudaStream_t s) {
    if (vec8_ok(x, x, n)) {
        BS_DISPATCH_ACT(dt, BS_LAUNCH(BS_AMAX_PARTS, 256, 0, s, amax_vec_kernel<T>)(partials, (const T *)x, n / 8));
    } else {
        BS_DISPATCH_ACT(dt, BS_LAUNCH(BS_AMAX_PARTS, 256, 0, s, amax_kernel<T>)(partials, (const T *)x, n));
    }
    return cudaGetLastError();
}

// Every block reduces the BS_AMAX_PARTS partials itself (they sit in L2), so no extra launch or
// grid-wide sync is needed; block 0 publishes the scale.
__device__ __forceinline__ float fp8_scale_from(const float *partials, float *scale_out) {
    __shared__ float s_scale;
    if (threadIdx.x < 32) {
        float m = 0;
        for (int i = threadIdx.x; i < BS_AMAX_PARTS; i += 32) m = fmaxf(m, partials[i]);
        m = bs_warp_max(m);
        if (threadIdx.x == 0) {
            float scale = m > 0 ? m / BS_E4M3_MAX : 1.0f;
            s_scale = scale;
            if (blockIdx.x == 0) *scale_out = scale;
        }
    }
    __syncthreads();
    return s_scale;
}

// The cast, grid-stride, element by element or 8 at a time. Divide (not multiply by 1/scale):
// bit-identical to the CPU twin.
template <typename T>
__device__ __forceinline__ void quantize_loop(__nv_fp8_e4m3 *q, const T *x, size_t n, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        q[i] = bs_st<__nv_fp8_e4m3>(bs_ld(x[i]) / scale);
}
template <typename T> __device__ __forceinline__ void quantize_loop8(uint2 *q, const T *x, size_t n8, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n8; i += (size_t)gridDim.x * blockDim.x) {
        float f[8];
        bs_load8(x, i, f);
        q[i] = bs_e4m3_pack8(f, scale);
    }
}

template <typename T>
__global__ void quantize_fp8_kernel(__nv_fp8_e4m3 *q, float *scale_out, const T *x, size_t n, const float *partials) {
    quantize_loop(q, x, n, fp8_scale_from(partials, scale_out));
}

template <typename T>
__global__ void quantize_fp8_vec_kernel(uint2 *q, float *scale_out, const T *x, size_t n8, const float *partials) {
    quantize_loop8(q, x, n8, fp8_scale_from(partials, scale_out));
}

extern "C" cudaError_t quantize_fp8_forward(void *q, float *scale_out, const void *x, bs_dtype dt, size_t n,
                                            const float *partials, cudaStream_t s) {
    if (vec8_ok(x, q, n)) {
        unsigned g = grid_for(n / 8, 256);
        if (g > 4096) g = 4096;
        BS_DISPATCH_ACT(dt, BS_LAUNCH(g, 256, 0, s, quantize_fp8_vec_kernel<T>)((uint2 *)q, scale_out, (const T *)x,
                                                                                n / 8, partials));
        return cudaGetLastError();
    }
    unsigned g = grid_for(n, 256);
    if (g > 4096) g = 4096;
    BS_DISPATCH_ACT(
        dt, BS_LAUNCH(g, 256, 0, s, quantize_fp8_kernel<T>)((__nv_fp8_e4m3 *)q, scale_out, (const T *)x, n, partials));
    return cudaGetLastError();
}

// Static scale: q = E4M3(x / *scale), no amax (BERTSTREAM_FP8_SCALES=static).
template <typename T>
__global__ void quantize_fp8_static_kernel(__nv_fp8_e4m3 *q, const T *x, size_t n, const float *scale_p) {
    quantize_loop(q, x, n, *scale_p);
}

template <typename T>
__global__ void quantize_fp8_static_vec_kernel(uint2 *q, const T *x, size_t n8, const float *scale_p) {
    quantize_loop8(q, x, n8, *scale_p);
}

extern "C" cudaError_t quantize_fp8_static_forward(void *q, const void *x, bs_dtype dt, size_t n, const float *scale,
                                                   cudaStream_t s) {
    if (n == 0) return cudaSuccess;
    const bool vec = vec8_ok(x, q, n);
    unsigned g = grid_for(vec ? n / 8 : n, 256);
    if (g > 4096) g = 4096;
    if (vec) {
        BS_DISPATCH_ACT(
            dt, BS_LAUNCH(g, 256, 0, s, quantize_fp8_static_vec_kernel<T>)((uint2 *)q, (const T *)x, n / 8, scale));
    } else {
        BS_DISPATCH_ACT(
            dt, BS_LAUNCH(g, 256, 0, s, quantize_fp8_static_kernel<T>)((__nv_fp8_e4m3 *)q, (const T *)x, n, scale));
    }
    return cudaGetLastError();
}
