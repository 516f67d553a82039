/* cuDNN's fused scaled-dot-product attention (the cuDNN 9 backend SDPA_FWD operation) over the
 * same packed QKV layout as attention.h: ragged offsets place each sequence, per-sequence
 * lengths mask the rest, so padding costs nothing here either. fp16/bf16 only (cuDNN has no fp32
 * SDPA). One plan per (B, S, NH, HS, dtype); every device pointer is fixed when the plan is
 * built, so running it is one cudnnBackendExecute call (and can be captured in a CUDA graph).
 * Legend: B sequences, S longest sequence, NH heads, HS head size, C = NH * HS. */
#ifndef BS_KERNELS_ATTENTION_CUDNN_H
#define BS_KERNELS_ATTENTION_CUDNN_H

#include <cuda_runtime_api.h>
#include <cudnn.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bs_sdpa bs_sdpa;

typedef struct {
    int B, S, NH, HS;
    bs_dtype dt;            /* F16 or BF16 */
    int offset_unit;        /* ragged offsets are (element index) * offset_unit: 1 = elements, dt size = bytes */
    const void *qkv;        /* (T, 3C) rows [q | k | v] */
    void *out;              /* (T, C) */
    const int32_t *seqlen;  /* (B) device */
    const int32_t *off_qkv; /* (B+1) device: start of each sequence in qkv */
    const int32_t *off_out; /* (B+1) device: start of each sequence in out */
    void *workspace;
    size_t workspace_cap;
} bs_sdpa_desc;

/* Builds the graph and the first execution plan cuDNN's heuristics offer that finalizes. NULL with
 * a one-line reason in err (e.g. "cuDNN SDPA: no engine for this graph") when unsupported. */
bs_sdpa *sdpa_cudnn_new(cudnnHandle_t h, const bs_sdpa_desc *d, char *err);
/* Runs on the handle's stream. Returns 0, or -1 with err filled. */
int sdpa_cudnn_run(bs_sdpa *p, cudnnHandle_t h, char *err);
void sdpa_cudnn_free(bs_sdpa *p);

#ifdef __cplusplus
}
#endif

/* Host side of the per-batch inputs for B real sequences padded to Bb plan slots: padding slot
 * s gets length 1 at its own spare row T + (s - B) (the buffers keep Bcap rows past the last
 * token), so cuDNN never sees an empty sequence and offsets stay increasing; what it writes
 * there is never read. C = NH * HS. */
static inline void sdpa_cudnn_fill(int32_t *seqlen /* (Bb) */, int32_t *off_qkv /* (Bb+1) */,
                                   int32_t *off_out /* (Bb+1) */, const int32_t *cu, int B, int Bb, int C, int unit) {
    const int T = cu[B];
    for (int s = 0; s <= Bb; s++) {
        const int row = s <= B ? cu[s] : T + (s - B);
        if (s < Bb) seqlen[s] = s < B ? cu[s + 1] - cu[s] : 1;
        off_qkv[s] = row * 3 * C * unit;
        off_out[s] = row * C * unit;
    }
}

#endif
