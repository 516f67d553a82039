/* A GEMM of our own for Hopper (gemm_sm90.cu), in place of cuBLASLt for the encoder's four GEMMs
 * when BERTSTREAM_GEMM_KERNEL=sm90 or sm90-coop (worker/engine_cuda.c): persistent (one CTA per SM
 * looping over output tiles), warp-specialised (one producer warp issuing TMA loads into a ring of
 * stages, two consumer warpgroups on wgmma). Two forms: "ping-pong" (128 x 128 tiles; the two
 * consumers take alternate tiles and their main loops alternate, so one warpgroup's epilogue:
 * bias, GELU, residual, the stores, runs while the other's MMAs keep the tensor cores busy) and
 * "cooperative" (128 x 256 tiles, both consumers on each: fewer bytes loaded per FLOP, the
 * epilogue under the next tile's first loads only). What it is for: at BERT-base's K = 768 a
 * tile's main loop is short (12 k-steps), and cuBLASLt's kernels reach 64-82 % of the SM's tensor
 * throughput there (Nsight Compute on the H100, docs/gpu-engine.md); the GELU epilogue of the
 * FFN-up GEMM costs it most. Written without a GPU: which form, if either, beats cuBLASLt is for
 * scripts/gpu-check.sh to measure.
 * Legend: M rows (tokens), N outputs, K inputs; W is (N, K) row-major, as the model stores it. */
#ifndef BS_KERNELS_GEMM_SM90_H
#define BS_KERNELS_GEMM_SM90_H

#include <cuda_runtime_api.h>

#include "dtype.h"

/* What follows the product (v = X W^T x (*sa) (*sb) + bias, in fp32): */
typedef enum {
    BS_GS_BIAS = 0,      /* v */
    BS_GS_BIAS_GELU = 1, /* GELU(v), the tanh form cuBLASLt's GELU_BIAS epilogue computes */
    BS_GS_BIAS_RES = 2,  /* v + res (M, N), as cuBLASLt's BIAS epilogue with C = res and beta 1 */
} bs_gs_epilogue;

/* Its two forms (BERTSTREAM_GEMM_KERNEL=sm90 and sm90-coop): */
typedef enum {
    BS_GS_PINGPONG = 0,    /* 128 x 128 tiles, one per consumer, main loops taking turns (above) */
    BS_GS_COOPERATIVE = 1, /* 128 x 256 tiles, both consumers on one (64 rows each, m64n256): a third
                            * fewer bytes loaded per FLOP (48 KiB per k-step for 4.2 MFLOP, against 32
                            * for 2.1), but the epilogue runs under no MMAs, only under the next tile's
                            * first loads */
} bs_gs_form;

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernel has a variant: form BS_GS_PINGPONG or BS_GS_COOPERATIVE; in bf16 or f16 (act
 * == in) or E4M3 (act bf16); N a multiple of 128 (cooperative: 256), K a multiple of 128 bytes' worth of elements (64
 * 16-bit, 128 E4M3); an E4M3 output (q8) from E4M3 inputs with BS_GS_BIAS or BS_GS_BIAS_GELU only (fp8's QKV and FFN-up
 * GEMMs). Whether the device runs it is another matter: on anything but sm_90 the launch fails
 * (cudaErrorNoKernelImageForDevice or another launch error), which the engine's start-up check turns into cuBLASLt. */
int gemm_sm90_shape_ok(int N, int K, bs_dtype in, bs_dtype act, int q8, int epi, int form);

/* Y (M, N) = epi(X (M, K) W^T x (*sa) (*sb) + bias): bias (N) and res (M, N) in act, Y in act, or
 * (dscale given) in E4M3: E4M3(epi(...) x *dscale), saturated, as cuBLASLt's D scale (it
 * multiplies, after the epilogue). sa, sb: the E4M3 inputs' per-tensor scales (device pointers;
 * ignored for 16-bit inputs). Fp32 accumulation (E4M3: the tensor cores' own, as cuBLASLt's fast
 * accumulation). X, W, Y, res 16-byte aligned (TMA reads X and W), bias 4. Y must not overlap X,
 * W or res. ctas: how many CTAs loop over the tiles (0: one per SM; at most one per tile); the
 * engine's start-up check runs 3, so that each CTA takes many tiles and both consumers, their
 * hand-overs and the stage ring's wrap-around all run on any shape. A kernel that waits more
 * than 5 s on one of its barriers traps (a launch failure that ends the CUDA context) rather
 * than hang. */
cudaError_t gemm_sm90_forward(void *Y, const void *X, const void *W, int M, int N, int K, bs_dtype in, bs_dtype act,
                              const float *sa, const float *sb, const void *bias, int epi, const void *res,
                              const float *dscale, int ctas, int form, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
