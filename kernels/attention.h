/* Fused self-attention over packed sequences (flash-attention style): one block per (query tile
 * of one sequence, head), keys and values streamed through shared memory in tiles, online
 * softmax in fp32, so no (S, S) score matrix is ever stored and a sequence only costs its own
 * length. Reads Q, K, V from the packed QKV GEMM output; any head size up to 256.
 * Legend: T packed rows, B sequences, C hidden, NH heads, HS = C / NH head size. */
#ifndef BS_KERNELS_ATTENTION_H
#define BS_KERNELS_ATTENTION_H

#include <cuda_runtime_api.h>

#include "dtype.h"

#define BS_ATT_BQ 32           /* queries per block */
#define BS_ATT_MAX_HS 256      /* largest head size the kernel is instantiated for */
#define BS_ATT_TC_MAX_LEN 1024 /* longest sequence the tensor-core kernel keeps in shared memory */

#ifdef __cplusplus
extern "C" {
#endif

/* Raises the kernels' dynamic shared-memory limits for head size HS and sequences of at most
 * max_len tokens (call once, outside graph capture). */
cudaError_t attention_setup(int HS, int max_len);

/* 1 when attention_forward takes the tensor-core (WMMA) kernel for these: f16/bf16, head size 32,
 * 64 or 128, max_len <= BS_ATT_TC_MAX_LEN, compute capability >= 8.0, and its shared memory for
 * max_len within the device's limit. Otherwise the CUDA-core kernel runs (fp32 always: it is the
 * parity path). */
int attention_uses_tensor_cores(bs_dtype dt, int HS, int max_len);

/* out (T, C) <- softmax(Q K^T / sqrt(HS)) V per sequence and head, with qkv (T, 3C) rows
 * [q | k | v], head h at columns h*HS of each part. tiles (n_tiles, 2) = (sequence, first query)
 * from attention_tiles(); a sequence index < 0 marks an unused tile. No sequence may be longer than
 * max_len (the tensor-core kernel writes NaN rows for one that is). */
cudaError_t attention_forward(void *out, const void *qkv, const int32_t *cu_seqlens /* (B+1) */,
                              const int32_t *tiles /* (n_tiles, 2) */, int n_tiles, int NH, int HS, int max_len,
                              bs_dtype dt, cudaStream_t s);

#ifdef __cplusplus
}
#endif

/* Tiles a batch needs at most: sum over sequences of ceil(len / BQ) <= T / BQ + B. */
static inline int attention_tiles_cap(int T, int B) {
    return T / BS_ATT_BQ + B + 1;
}

/* Fills tiles (cap, 2) for the B sequences of cu_seqlens; unused entries get sequence -1.
 * Returns the number of real tiles, or -1 when cap is too small. */
static inline int attention_tiles(int32_t *tiles, int cap, const int32_t *cu, int B) {
    int n = 0;
    for (int s = 0; s < B; s++)
        for (int q0 = 0; q0 < cu[s + 1] - cu[s]; q0 += BS_ATT_BQ) {
            if (n >= cap) return -1;
            tiles[2 * n] = s;
            tiles[2 * n + 1] = q0;
            n++;
        }
    for (int i = n; i < cap; i++) tiles[2 * i] = -1, tiles[2 * i + 1] = 0;
    return n;
}

/* CPU twin: the textbook form (scores, softmax in double, weighted sum). */
static inline void attention_ref(float *out, const float *qkv, const int32_t *cu, int B, int NH, int HS,
                                 double *p /* (max_len) scratch */) {
    const int C = NH * HS;
    const double scale = 1.0 / sqrt((double)HS);
    for (int s = 0; s < B; s++) {
        const int t0 = cu[s], n = cu[s + 1] - cu[s];
        for (int h = 0; h < NH; h++)
            for (int i = 0; i < n; i++) {
                const float *q = qkv + (size_t)(t0 + i) * 3 * C + h * HS;
                double mx = -INFINITY, sum = 0;
                for (int j = 0; j < n; j++) {
                    const float *k = qkv + (size_t)(t0 + j) * 3 * C + C + h * HS;
                    double d = 0;
                    for (int c = 0; c < HS; c++) d += (double)q[c] * k[c];
                    p[j] = d * scale;
                    mx = p[j] > mx ? p[j] : mx;
                }
                for (int j = 0; j < n; j++) sum += (p[j] = exp(p[j] - mx));
                for (int c = 0; c < HS; c++) {
                    double acc = 0;
                    for (int j = 0; j < n; j++) acc += p[j] * qkv[(size_t)(t0 + j) * 3 * C + 2 * C + h * HS + c];
                    out[(size_t)(t0 + i) * C + h * HS + c] = (float)(acc / sum);
                }
            }
    }
}

#endif
