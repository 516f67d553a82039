/* LayerNorm kernels: the embedding gather (word + position within the sequence + token type 0)
 * followed by LayerNorm, and bias + residual + LayerNorm after the attention output and FFN
 * GEMMs. One warp per row, the row staged in shared memory, statistics in fp32 (two passes).
 * Legend: T packed rows, B sequences, C hidden, V vocab, P max positions. */
#ifndef BS_KERNELS_LAYERNORM_H
#define BS_KERNELS_LAYERNORM_H

#include <cuda_runtime_api.h>

#include "dtype.h"
#include "twins.h"

#ifdef __cplusplus
extern "C" {
#endif

/* out (T, C) = LN(word[ids[t]] + pos[t - cu_seqlens[s]] + type0) * gamma + beta, where s is t's
 * sequence. Rows at or past cu_seqlens[B] (bucket padding) use position 0. Tables in dt. */
cudaError_t embedding_layernorm_forward(void *out, const int32_t *ids /* (T) */, const int32_t *cu_seqlens /* (B+1) */,
                                        int B, const void *word /* (V, C) */, const void *pos /* (P, C) */,
                                        const void *type0 /* (C) */, const float *gamma /* (C) */,
                                        const float *beta /* (C) */, int T, int C, float eps, bs_dtype dt,
                                        cudaStream_t s);

/* out (T, C) = LN(a + bias + res) * gamma + beta; bias and res may be NULL (the engine's GEMM
 * epilogue may have added both already); out may alias res or a. */
cudaError_t residual_layernorm_forward(void *out, const void *a /* (T, C) */, const float *bias /* (C) */,
                                       const void *res /* (T, C) */, const float *gamma /* (C) */,
                                       const float *beta /* (C) */, int T, int C, float eps, bs_dtype dt,
                                       cudaStream_t s);

/* The same, and when q8 != NULL also q8 (T, C) E4M3 = E4M3(out / *q8_scale) of the stored out
 * (static fp8 scales: the next GEMM's input without an amax pass; the bytes are those
 * quantize_fp8_static_forward makes from out). */
cudaError_t embedding_layernorm_q8_forward(void *out, const int32_t *ids, const int32_t *cu_seqlens, int B,
                                           const void *word, const void *pos, const void *type0, const float *gamma,
                                           const float *beta, int T, int C, float eps, bs_dtype dt, void *q8,
                                           const float *q8_scale, cudaStream_t s);
cudaError_t residual_layernorm_q8_forward(void *out, const void *a, const float *bias, const void *res,
                                          const float *gamma, const float *beta, int T, int C, float eps, bs_dtype dt,
                                          void *q8, const float *q8_scale, cudaStream_t s);

#ifdef __cplusplus
}
#endif

/* ---- CPU twins (fp32 in, fp32 out; double statistics) ---- */
static inline void embedding_layernorm_ref(float *out, const int32_t *ids, const int32_t *cu, int B, const float *word,
                                           const float *pos, const float *type0, const float *g, const float *b, int T,
                                           int C, float eps, float *row /* (C) scratch */) {
    for (int t = 0; t < T; t++) {
        int p = 0;
        for (int s = 0; s < B; s++)
            if (t >= cu[s] && t < cu[s + 1]) p = t - cu[s];
        for (int c = 0; c < C; c++) row[c] = word[(size_t)ids[t] * C + c] + pos[(size_t)p * C + c] + type0[c];
        layernorm_row_ref(out + (size_t)t * C, row, g, b, C, eps);
    }
}

#endif
