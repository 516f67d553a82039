/* The attention-output and FFN-down GEMMs of a post-LN encoder layer with the LayerNorm after
 * them in the GEMM's epilogue: one Hopper kernel (gemm_ln_sm90.cu: TMA, wgmma, a thread-block
 * cluster per 128 rows that sums the row statistics through distributed shared memory) in place
 * of a cuBLASLt GEMM (bias and residual in its epilogue) and the residual LayerNorm kernel.
 * The engine uses it under BERTSTREAM_GEMM_LN=fused once its start-up check agrees with the CPU
 * (worker/engine_cuda.c); elsewhere, and on any GPU but Hopper (sm_90), the two-kernel path runs.
 * Legend: M rows, K the GEMM's inputs, C the hidden size (its outputs). */
#ifndef BS_KERNELS_GEMM_LN_H
#define BS_KERNELS_GEMM_LN_H

#include <cuda_runtime_api.h>

#include "dtype.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Whether the kernel has a variant for this shape and these types: in bf16 or f16 (then act ==
 * in) or E4M3 (act bf16 or f16); C a multiple of 256 up to 2048 or of 128 up to 1024 (one cluster
 * of at most 8 CTAs covers a row); K a multiple of 128 bytes' worth of elements (64 16-bit or 128
 * E4M3). Whether the device runs it is another matter: a launch on anything but sm_90 fails with
 * cudaErrorNoKernelImageForDevice (or another launch error), which the engine's check turns into
 * the two-kernel path. */
int gemm_ln_sm90_shape_ok(int C, int K, bs_dtype in, bs_dtype act);

/* out (M, C) = LN(v) * gamma + beta with v = X (M, K) W^T (W is (C, K) row-major, as the model
 * stores it) x (*sa) (*sb) + bias + res, statistics in fp32 over all C columns (mean, then the
 * mean square deviation); out and res in act. With in == BS_DT_E4M3, sa and sb are the weight's
 * and the input's per-tensor scales (device pointers); for 16-bit inputs they are ignored. When q8
 * is not NULL it also gets E4M3(out / *q8_scale) of the stored (rounded) out, the bytes
 * quantize_fp8_static_forward makes from it. bias, gamma and beta are fp32 (C). out may be res;
 * q8 may be X when K == C (the rows a cluster writes are the rows it alone reads, and it writes them
 * after all its loads). X, W, res, out and q8 16-byte aligned (TMA moves them), the fp32 vectors 8. A kernel
 * that waits more than 5 s on one of its barriers traps (a launch failure that ends the CUDA
 * context) rather than hang. For tests: with BS_GEMM_LN_DEBUG=gemm in the environment the kernel
 * skips the normalisation and stores v itself (times gamma, plus beta), so a test can check the
 * GEMM part apart from the row statistics. */
cudaError_t gemm_ln_sm90_forward(void *out, void *q8, const float *q8_scale, const void *X, const void *W, int M, int K,
                                 int C, bs_dtype in, bs_dtype act, const float *sa, const float *sb, const float *bias,
                                 const void *res, const float *gamma, const float *beta, float eps, cudaStream_t s);

#ifdef __cplusplus
}
#endif

#endif
