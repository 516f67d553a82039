/* Sequence features from the last hidden state: h_CLS (the first token of each sequence), the
 * mean over the sequence's tokens, and BERT's pooler tanh(W h_CLS + b). Outputs are fp32 so they
 * can be copied to the caller as they are. Legend: T packed rows, B sequences, C hidden. */
#ifndef BS_KERNELS_POOLING_H
#define BS_KERNELS_POOLING_H

#include <cuda_runtime_api.h>
#include <string.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* cls (B, C), mean (B, C) from x (T, C) in dt. A sequence of length 0 (bucket padding) gets zeros. */
cudaError_t pool_forward(float *cls, float *mean, const void *x, const int32_t *cu_seqlens /* (B+1) */, int B, int C,
                         bs_dtype dt, cudaStream_t s);

/* out (B, C) = tanh(cls (B, C) W^T + bias); W (C, C) in dt (Hugging Face (out, in) layout), bias fp32. */
cudaError_t pooler_forward(float *out, const float *cls, const void *W, const float *bias, int B, int C, bs_dtype dt,
                           cudaStream_t s);

/* dst row s (row_bytes) = src row cu_seqlens[s], the CLS row of sequence s, for s < B; zeros for a
 * sequence of length 0 (its source row is not read). Any element type: rows are bytes. The engine's
 * last layer on the CLS rows gathers its attention output and residual with it. dst and src must
 * not overlap. */
cudaError_t cls_rows_forward(void *dst, const void *src, const int32_t *cu_seqlens /* (B+1) */, int B, size_t row_bytes,
                             cudaStream_t s);

#ifdef __cplusplus
}
#endif

static inline void pool_ref(float *cls, float *mean, const float *x, const int32_t *cu, int B, int C) {
    for (int s = 0; s < B; s++) {
        int n = cu[s + 1] - cu[s];
        for (int c = 0; c < C; c++) {
            double acc = 0;
            for (int t = cu[s]; t < cu[s + 1]; t++) acc += x[(size_t)t * C + c];
            cls[(size_t)s * C + c] = n > 0 ? x[(size_t)cu[s] * C + c] : 0.0f;
            mean[(size_t)s * C + c] = n > 0 ? (float)(acc / n) : 0.0f;
        }
    }
}

static inline void cls_rows_ref(void *dst, const void *src, const int32_t *cu, int B, size_t row_bytes) {
    for (int s = 0; s < B; s++) {
        unsigned char *d = (unsigned char *)dst + (size_t)s * row_bytes;
        if (cu[s + 1] > cu[s])
            memcpy(d, (const unsigned char *)src + (size_t)cu[s] * row_bytes, row_bytes);
        else
            memset(d, 0, row_bytes);
    }
}

static inline void pooler_ref(float *out, const float *cls, const float *W, const float *bias, int B, int C) {
    for (int s = 0; s < B; s++)
        for (int o = 0; o < C; o++) {
            double acc = bias[o];
            for (int c = 0; c < C; c++) acc += (double)W[(size_t)o * C + c] * cls[(size_t)s * C + c];
            out[(size_t)s * C + o] = tanhf((float)acc);
        }
}

#endif
