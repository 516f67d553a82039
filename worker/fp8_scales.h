/* Static fp8 scales: an upper bound on |x| for every GEMM input of every layer, from the weights
 * alone, so the fp8 engine can quantise each GEMM input with a fixed per-tensor scale (bound / 448)
 * instead of measuring the batch's amax first (BERTSTREAM_FP8_SCALES=static, docs/gpu-engine.md).
 * Every bound follows from the arithmetic (below), never from samples, with margins for the
 * rounding of the operands the engine really multiplies (bf16 LayerNorm outputs, E4M3 inputs and
 * weights), so no value should reach saturation (the cast saturates rather than overflow if one
 * did); and a review's result depends neither on its batch-mates nor on earlier batches.
 *
 *   LayerNorm output y = g * z + b with z of mean 0 and mean square < 1 (the eps):
 *     |y_i| <= sqrt(C - 1) max|g| + max|b|            (max |z_i| <= sqrt(C - 1) when sum z^2 <= C)
 *     ||y||_2 <= sqrt(C) max|g| + ||b||_2
 *   A linear map h = W y + c of such a y (rows W_j):   |h_j| <= ||y||_2 ||W_j||_2 + |c_j|
 *   Attention output: a convex combination of V rows, so |att| <= max |v| (V = the value rows of
 *   the QKV map of the layer's input LayerNorm).
 *   GELU: 0 <= GELU(h) <= h for h >= 0, and GELU(h) >= -0.1700 for h < 0.
 *
 * Inputs by GEMM: QKV <- the LayerNorm before the layer (embeddings for layer 0, else the previous
 * layer's output LayerNorm); attention output <- attention; FFN up <- the attention-output
 * LayerNorm; FFN down <- GELU(FFN up). Legend: C hidden, I intermediate, L layers. */
#ifndef BS_FP8_SCALES_H
#define BS_FP8_SCALES_H

#include "model.h"

double fp8_ln_max_bound(const float *g, const float *b, int C);
double fp8_ln_l2_bound(const float *g, const float *b, int C);
/* max over j < out of x_l2 * ||W_j||_2 + |bias_j|, W (out, in) row-major */
double fp8_linear_max_bound(const float *W, const float *bias, int out, int in, double x_l2);
/* bounds[4 * l + k] for layer l and GEMM k in the engine's order (QKV, attention output, FFN up,
 * FFN down), widened for rounding: x 1.01 for the LayerNorm-fed inputs (QKV, FFN up), x 1.01 x
 * 1.0625^2 for those computed from E4M3 operands (attention output, FFN down). An all-zero bound
 * becomes 1; NaN or inf weights give a NaN or inf bound (the engine refuses it). */
void fp8_static_bounds(const bs_model *m, double *bounds /* (4 L) */);
/* bounds[l]: layer l's QKV GEMM output, all 3C columns (Q, K and V), where that GEMM writes E4M3
 * for the attention kernel to read (BERTSTREAM_FP8_QKV=e4m3): the linear bound over every row of
 * the QKV weight, from the same input bound as the V rows' above, widened alike (x 1.01 x 1.0625^2:
 * computed from E4M3 operands). At least the V rows' bound, bounds[4 l + 1] of fp8_static_bounds. */
void fp8_static_qkv_bounds(const bs_model *m, double *bounds /* (L) */);

#endif
