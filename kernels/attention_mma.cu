// Host side of the mma attention kernel (attention_mma_kernel.cuh): shared-memory set-up, launch
// and dispatch per head size and type.
#include "attention_mma_kernel.cuh"

#include <algorithm>

template <int HS> static constexpr size_t mma_bytes(bool in8) {
    return in8 ? mma_geom<HS>::BYTES8 : mma_geom<HS>::BYTES;
}

/* the larger of the two forms' (bf16/f16 input, E4M3 input) */
template <int HS> static constexpr size_t mma_most_bytes() {
    return std::max(mma_bytes<HS>(false), mma_bytes<HS>(true));
}

extern "C" size_t attention_mma_smem_bytes(int HS) {
    return HS == 32 ? mma_most_bytes<32>() : HS == 64 ? mma_most_bytes<64>() : HS == 128 ? mma_most_bytes<128>() : 0;
}

template <typename T, int HS, bool Q8, bool IN8> static cudaError_t mma_allow_smem() {
    if (mma_bytes<HS>(IN8) <= 48 * 1024) return cudaSuccess;
    return cudaFuncSetAttribute(attention_mma_kernel<T, HS, Q8, IN8>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                (int)mma_bytes<HS>(IN8));
}

template <int HS> static cudaError_t mma_setup_hs() {
    cudaError_t e = mma_allow_smem<__half, HS, false, false>();
    if (e == cudaSuccess) e = mma_allow_smem<__nv_bfloat16, HS, false, false>();
    if (e == cudaSuccess) e = mma_allow_smem<__nv_bfloat16, HS, true, false>();
    if (e == cudaSuccess) e = mma_allow_smem<__half, HS, true, true>();
    return e;
}

extern "C" cudaError_t attention_mma_setup(int HS) {
    return HS == 32    ? mma_setup_hs<32>()
           : HS == 64  ? mma_setup_hs<64>()
           : HS == 128 ? mma_setup_hs<128>()
                       : cudaSuccess;
}

template <typename T, bool Q8, bool IN8 = false>
static cudaError_t mma_launch(void *out, const void *qkv, const int32_t *cu, const int32_t *tiles, int n_tiles, int NH,
                              int HS, const float *oscale, const float *iscale, cudaStream_t s) {
    const dim3 grid((unsigned)n_tiles, (unsigned)NH), block(MMA_WARPS * 32);
    const float sl2 = mma_score_scale(HS);
    if (HS == 32) {
        BS_LAUNCH(grid, block, mma_bytes<32>(IN8), s, attention_mma_kernel<T, 32, Q8, IN8>)
        (out, qkv, cu, tiles, NH, sl2, oscale, iscale);
    } else if (HS == 64) {
        BS_LAUNCH(grid, block, mma_bytes<64>(IN8), s, attention_mma_kernel<T, 64, Q8, IN8>)
        (out, qkv, cu, tiles, NH, sl2, oscale, iscale);
    } else if (HS == 128) {
        BS_LAUNCH(grid, block, mma_bytes<128>(IN8), s, attention_mma_kernel<T, 128, Q8, IN8>)
        (out, qkv, cu, tiles, NH, sl2, oscale, iscale);
    } else {
        return cudaErrorInvalidValue;
    }
    return cudaGetLastError();
}

template <bool Q8>
static cudaError_t mma_dispatch(void *out, const void *qkv, const int32_t *cu, const int32_t *tiles, int n_tiles,
                                int NH, int HS, bs_dtype dt, const float *oscale, cudaStream_t s) {
    if (dt == BS_DT_F16 && !Q8) /* E4M3 output: bf16 only, fp8's activation type (no f16 instances) */
        return mma_launch<__half, false>(out, qkv, cu, tiles, n_tiles, NH, HS, oscale, NULL, s);
    if (dt == BS_DT_BF16) return mma_launch<__nv_bfloat16, Q8>(out, qkv, cu, tiles, n_tiles, NH, HS, oscale, NULL, s);
    return cudaErrorInvalidValue;
}

extern "C" cudaError_t attention_mma_forward(void *out, const void *qkv, const int32_t *cu, const int32_t *tiles,
                                             int n_tiles, int NH, int HS, bs_dtype dt, cudaStream_t s) {
    return mma_dispatch<false>(out, qkv, cu, tiles, n_tiles, NH, HS, dt, NULL, s);
}

extern "C" cudaError_t attention_mma_q8_forward(void *out8, const void *qkv, const int32_t *cu, const int32_t *tiles,
                                                int n_tiles, int NH, int HS, bs_dtype dt, const float *scale,
                                                cudaStream_t s) {
    if (!scale || NH < 1 || !attention_kernel_ok(BS_ATT_MMA, dt, HS, 1)) return cudaErrorInvalidValue;
    if (n_tiles < 1) return cudaSuccess;
    return mma_dispatch<true>(out8, qkv, cu, tiles, n_tiles, NH, HS, dt, scale, s);
}

extern "C" cudaError_t attention_mma_q8qkv_forward(void *out8, const void *qkv8, const int32_t *cu,
                                                   const int32_t *tiles, int n_tiles, int NH, int HS,
                                                   const float *iscale, const float *scale, cudaStream_t s) {
    if (!scale || !iscale || NH < 1 || !attention_kernel_ok(BS_ATT_MMA, BS_DT_F16, HS, 1)) return cudaErrorInvalidValue;
    if (n_tiles < 1) return cudaSuccess;
    return mma_launch<__half, true, true>(out8, qkv8, cu, tiles, n_tiles, NH, HS, scale, iscale, s);
}
