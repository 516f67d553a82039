/* What the warp-emulator tests (tests/unit/test_*_emu.cpp) share: the 16-bit device types to and
 * from float on the host (the CUDA headers' own round-to-nearest-even conversions), their bs_dtype,
 * the GPU tests' output tolerance, and a small deterministic random source. Include after
 * simt.hpp and the kernel source. */
#ifndef BS_TESTS_EMU_EMU_TEST_HPP
#define BS_TESTS_EMU_EMU_TEST_HPP

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

#include "dtype.h"

template <typename T> static inline T to_t(float x);
template <> inline __nv_bfloat16 to_t<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}
template <> inline __half to_t<__half>(float x) {
    return __float2half_rn(x);
}
template <typename T> static inline float from_t(T x);
template <> inline float from_t<__nv_bfloat16>(__nv_bfloat16 x) {
    return __bfloat162float(x);
}
template <> inline float from_t<__half>(__half x) {
    return __half2float(x);
}
template <typename T> static inline bs_dtype dtype_of();
template <> inline bs_dtype dtype_of<__nv_bfloat16>() {
    return BS_DT_BF16;
}
template <> inline bs_dtype dtype_of<__half>() {
    return BS_DT_F16;
}

/* tests/gpu/test_kernels.c's tolerance: two units in the last place of dt at magnitude mag (one
 * for the output's rounding, one for fp32 ordering crossing a rounding boundary), plus f32_tol */
static inline double tol_for(bs_dtype dt, double mag, double f32_tol) {
    const double ulp = dt == BS_DT_F16 ? 1.0 / 1024 : dt == BS_DT_BF16 ? 1.0 / 128 : 0;
    return 2 * ulp * mag + f32_tol;
}

/* uniform in [lo, hi), from a fixed-seed LCG (each test program its own sequence) */
static uint32_t emu_rng_state = 12345;
static inline float urand(float lo, float hi) {
    emu_rng_state = emu_rng_state * 1664525u + 1013904223u;
    return lo + (hi - lo) * (float)(emu_rng_state >> 8) / 16777216.0f;
}

#endif
