/* Tensor type conversion and FP8 quantisation on the device: fp32/fp16/bf16 to each other, and
 * per-tensor scaled E4M3 (scale = amax / 448, so the largest magnitude maps onto E4M3's largest
 * value). Used at weight upload, to quantise GEMM inputs under fp8 and to widen outputs to fp32. */
#ifndef BS_KERNELS_CONVERT_H
#define BS_KERNELS_CONVERT_H

#include <cuda_runtime_api.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* dst (n) <- src (n), src_dt and dst_dt in {F32, F16, BF16}. */
cudaError_t convert_forward(void *dst, bs_dtype dst_dt, const void *src, bs_dtype src_dt, size_t n, cudaStream_t s);

/* Partial maxima of |x| over n elements: writes BS_AMAX_PARTS floats into partials. */
#define BS_AMAX_PARTS 512
cudaError_t amax_forward(float *partials /* (BS_AMAX_PARTS) */, const void *x, bs_dtype dt, size_t n, cudaStream_t s);

/* q (n) <- E4M3(x / scale) with scale = max(partials) / 448 (1 when x is all zero); *scale_out =
 * scale, the dequantisation factor cuBLASLt takes as A/B scale. Run amax_forward first. */
cudaError_t quantize_fp8_forward(void *q, float *scale_out, const void *x, bs_dtype dt, size_t n, const float *partials,
                                 cudaStream_t s);

/* q (n) <- E4M3(x / *scale) with a scale fixed beforehand (device pointer): no amax pass. The CPU
 * twin is quantize_fp8_ref with that scale. */
cudaError_t quantize_fp8_static_forward(void *q, const void *x, bs_dtype dt, size_t n, const float *scale,
                                        cudaStream_t s);

#ifdef __cplusplus
}
#endif

/* CPU twin of amax + quantize: scale and dequantised values (q * scale). */
static inline float convert_fp8_scale_ref(const float *x, size_t n) {
    float m = 0;
    for (size_t i = 0; i < n; i++) m = fabsf(x[i]) > m ? fabsf(x[i]) : m;
    return m > 0 ? m / BS_E4M3_MAX : 1.0f;
}
static inline void quantize_fp8_ref(float *deq, const float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) deq[i] = bs_round_e4m3(x[i] / scale) * scale;
}

#endif
