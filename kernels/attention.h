/* Fused self-attention over packed sequences: one block per (query tile of one sequence, head),
 * keys and values streamed through shared memory, softmax in fp32, so a sequence only costs its
 * own length. Reads Q, K, V from the packed QKV GEMM output. Three kernels (bs_att_kernel): CUDA
 * cores for any head size up to 256 and fp32, and two tensor-core ones for f16/bf16.
 * Legend: T packed rows, B sequences, C hidden, NH heads, HS = C / NH head size. */
#ifndef BS_KERNELS_ATTENTION_H
#define BS_KERNELS_ATTENTION_H

#include <cuda_runtime_api.h>

#include "dtype.h"
#include "twins.h"

#define BS_ATT_BQ 32           /* queries per tile of the CUDA-core and WMMA kernels */
#define BS_ATT_MMA_BQ 64       /* queries per tile of the mma kernel */
#define BS_ATT_MAX_HS 256      /* largest head size the CUDA-core kernel is instantiated for */
#define BS_ATT_TC_MAX_LEN 1024 /* longest sequence the WMMA kernel keeps in shared memory */

/* The three kernels, slowest first. attention_best() picks the fastest one that takes a shape. */
typedef enum {
    BS_ATT_SIMT = 0, /* CUDA cores: every dtype and head size <= 256; fp32 always runs here (parity) */
    BS_ATT_WMMA = 1, /* tensor cores (WMMA): f16/bf16, head size 32/64/128, the (32, max_len) scores in smem */
    BS_ATT_MMA = 2,  /* tensor cores (mma.sync, ldmatrix, cp.async): f16/bf16, head size 32/64/128, any
                      * length (online softmax), 64-query tiles, K/V double-buffered (attention_mma.cu) */
} bs_att_kernel;

#ifdef __cplusplus
extern "C" {
#endif

/* Raises the kernels' dynamic shared-memory limits for head size HS and sequences of at most
 * max_len tokens (call once, outside graph capture). */
cudaError_t attention_setup(int HS, int max_len);

/* 1 when kernel k runs dtype dt, head size HS and sequences up to max_len on the current device
 * (tensor-core kernels: compute capability >= 8.0 and their shared memory within its limit). */
int attention_kernel_ok(bs_att_kernel k, bs_dtype dt, int HS, int max_len);

/* The fastest kernel that takes the shape: MMA, then WMMA, then SIMT. */
bs_att_kernel attention_best(bs_dtype dt, int HS, int max_len);

/* "mma", "wmma", "simt" (what BERTSTREAM_ATTENTION names them; the engine describes them as
 * attention=kernel-mma and so on) */
const char *attention_kernel_name(bs_att_kernel k);

/* out (T, C) <- softmax(Q K^T / sqrt(HS)) V per sequence and head, with qkv (T, 3C) rows
 * [q | k | v], head h at columns h*HS of each part, by kernel k (cudaErrorInvalidValue when k does
 * not take the shape). tiles (n_tiles, 2) = (sequence, first query) from attention_tiles() with
 * attention_query_tile(k) queries per tile; a sequence index < 0 marks an unused tile. No sequence
 * may be longer than max_len (the WMMA kernel writes NaN rows for one that is). */
cudaError_t attention_forward(void *out, const void *qkv, const int32_t *cu_seqlens /* (B+1) */,
                              const int32_t *tiles /* (n_tiles, 2) */, int n_tiles, int NH, int HS, int max_len,
                              bs_att_kernel k, bs_dtype dt, cudaStream_t s);

/* the mma kernel alone (attention_mma.cu): HS 32/64/128, f16/bf16 */
cudaError_t attention_mma_setup(int HS);
size_t attention_mma_smem_bytes(int HS);
cudaError_t attention_mma_forward(void *out, const void *qkv, const int32_t *cu, const int32_t *tiles, int n_tiles,
                                  int NH, int HS, bs_dtype dt, cudaStream_t s);
/* the same, writing out8 (T, C) in E4M3: E4M3(attention / *scale) with the float result (not its
 * bf16 rounding) divided by the device scalar *scale, saturating, rounded to nearest even as
 * quantize_fp8_static_forward rounds. fp8 with static scales: the attention-output GEMM's input,
 * without the cast pass. bf16 only (fp8's activation type); else cudaErrorInvalidValue. */
cudaError_t attention_mma_q8_forward(void *out8, const void *qkv, const int32_t *cu, const int32_t *tiles, int n_tiles,
                                     int NH, int HS, bs_dtype dt, const float *scale, cudaStream_t s);

/* E4M3 in and out (fp8 with static scales, the QKV GEMM writing E4M3): qkv8 (T, 3C) holds E4M3
 * codes whose values are code * *iscale (the QKV GEMM's output through its D scale 1 / *iscale).
 * The tiles are copied in as bytes (half the bf16 form's reads), widened to f16 in shared memory
 * (exactly: E4M3 values are f16 values) and run on f16 tensor cores, scores scaled by *iscale^2,
 * the output by *iscale; out8 as attention_mma_q8_forward writes it. HS 32/64/128. */
cudaError_t attention_mma_q8qkv_forward(void *out8, const void *qkv8, const int32_t *cu, const int32_t *tiles,
                                        int n_tiles, int NH, int HS, const float *iscale, const float *scale,
                                        cudaStream_t s);

/* The CLS query alone: out (B, C) row s = sequence s's first row of what attention_forward
 * computes (softmax(q_CLS K^T / sqrt(HS)) V over the sequence's keys, per head), zeros for an
 * empty sequence. The last layer when only the pooler and CLS features are wanted: 1/len of the
 * attention work, and its rows come out compacted. f32/f16/bf16, head sizes up to BS_ATT_MAX_HS,
 * any length. The q8 form writes E4M3(result / *scale) instead (the float result, rounded as
 * quantize_fp8_static_forward rounds): fp8 with static scales. */
cudaError_t attention_cls_forward(void *out, const void *qkv, const int32_t *cu_seqlens /* (B+1) */, int B, int NH,
                                  int HS, bs_dtype dt, cudaStream_t s);
cudaError_t attention_cls_q8_forward(void *out8, const void *qkv, const int32_t *cu_seqlens, int B, int NH, int HS,
                                     bs_dtype dt, const float *scale, cudaStream_t s);
/* The same from E4M3 codes of value code * *iscale (as attention_mma_q8qkv_forward reads them). */
cudaError_t attention_cls_q8qkv_forward(void *out8, const void *qkv8, const int32_t *cu_seqlens, int B, int NH, int HS,
                                        const float *iscale, const float *scale, cudaStream_t s);

#ifdef __cplusplus
}
#endif

static inline int attention_query_tile(bs_att_kernel k) {
    return k == BS_ATT_MMA ? BS_ATT_MMA_BQ : BS_ATT_BQ;
}

/* Tiles a batch needs at most with bq queries per tile: sum over sequences of ceil(len / bq)
 * <= T / bq + B. (bq = BS_ATT_BQ gives the most: size buffers with it.) */
static inline int attention_tiles_cap(int T, int B, int bq) {
    return T / bq + B + 1;
}

/* Fills tiles (cap, 2) for the B sequences of cu_seqlens, bq queries per tile; unused entries get
 * sequence -1. Returns the number of real tiles, or -1 when cap is too small. */
static inline int attention_tiles(int32_t *tiles, int cap, const int32_t *cu, int B, int bq) {
    int n = 0;
    for (int s = 0; s < B; s++)
        for (int q0 = 0; q0 < cu[s + 1] - cu[s]; q0 += bq) {
            if (n >= cap) return -1;
            tiles[2 * n] = s;
            tiles[2 * n + 1] = q0;
            n++;
        }
    for (int i = n; i < cap; i++) tiles[2 * i] = -1, tiles[2 * i + 1] = 0;
    return n;
}

#endif
