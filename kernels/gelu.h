/* Bias + activation in place over a (rows, N) matrix: x = act(x + bias), act = identity or
 * GELU in its exact erf form (BERT's "gelu"). Used when cuBLASLt's epilogue is not: always at
 * fp32 (its GELU epilogue is the tanh approximation), and as a fallback at lower precisions. */
#ifndef BS_KERNELS_GELU_H
#define BS_KERNELS_GELU_H

#include <cuda_runtime_api.h>

#include "dtype.h"
#include "twins.h"

#ifdef __cplusplus
extern "C" {
#endif

/* x (rows, N) in dt; bias (N) fp32 or NULL; gelu 0 = identity, 1 = erf GELU. */
cudaError_t bias_gelu_forward(void *x, const float *bias, size_t rows, int N, int gelu, bs_dtype dt, cudaStream_t s);

#ifdef __cplusplus
}
#endif

static inline float gelu_erf_ref(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

static inline void bias_gelu_ref(float *x, const float *bias, size_t rows, int N, int gelu) {
    for (size_t r = 0; r < rows; r++)
        for (int c = 0; c < N; c++) {
            float v = x[r * N + c] + (bias ? bias[c] : 0.0f);
            x[r * N + c] = gelu ? gelu_erf_ref(v) : v;
        }
}

#endif
