/* Element types of device tensors, shared by the C engine and the kernels: the enum, sizes, the
 * CPU twins of the device roundings (used by tests/gpu to build expected values) and, for .cu
 * files only, device load/store helpers that widen every type to fp32 for arithmetic. */
#ifndef BS_KERNELS_DTYPE_H
#define BS_KERNELS_DTYPE_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { BS_DT_F32 = 0, BS_DT_F16 = 1, BS_DT_BF16 = 2, BS_DT_E4M3 = 3 } bs_dtype;

static inline size_t bs_dtype_size(bs_dtype t) {
    return t == BS_DT_F32 ? 4 : t == BS_DT_E4M3 ? 1 : 2;
}
static inline const char *bs_dtype_name(bs_dtype t) {
    return t == BS_DT_F32 ? "f32" : t == BS_DT_F16 ? "f16" : t == BS_DT_BF16 ? "bf16" : "e4m3";
}

/* Whether a GPU of compute capability major.minor has the E4M3 tensor-core GEMMs the fp8
 * precision uses: Ada (8.9) and Hopper (9.x). */
static inline int bs_cc_has_fp8(int major, int minor) {
    return (major == 8 && minor == 9) || major == 9;
}

/* Largest finite E4M3 value (the fn variant the tensor cores use: no infinities). */
#define BS_E4M3_MAX 448.0f

/* Round-to-nearest-even to a float format with `mant` stored mantissa bits, smallest normal
 * exponent `emin` (value 2^emin) and `max` the largest finite value (above it: inf, or max when
 * saturating). Exact for every input: the scaled value a/q is a power-of-two rescale. */
static inline float bs_round_fmt(float x, int mant, int emin, float max, int saturate) {
    if (x != x) return x;
    float a = fabsf(x);
    if (a == 0.0f) return x;
    int e;
    (void)frexpf(a, &e); /* a = f * 2^e, f in [0.5, 1) */
    int qexp = (e - 1 < emin ? emin : e - 1) - mant;
    float q = ldexpf(1.0f, qexp);
    float r = rintf(a / q) * q; /* rintf: round half to even in the default mode */
    if (r > max) r = saturate ? max : INFINITY;
    return copysignf(r, x);
}

/* CPU twins of __float2half_rn, __float2bfloat16_rn and __nv_cvt_float_to_fp8(.., __NV_SATFINITE, E4M3). */
static inline float bs_round_f16(float x) {
    return bs_round_fmt(x, 10, -14, 65504.0f, 0);
}
static inline float bs_round_bf16(float x) {
    return bs_round_fmt(x, 7, -126, 3.38953139e38f, 0);
}
static inline float bs_round_e4m3(float x) {
    return bs_round_fmt(x, 3, -6, BS_E4M3_MAX, 1);
}
/* E4M3 bits -> value (fn variant: exponent bias 7, no infinities, S.1111.111 is NaN): what the
 * tests read back from the device's quantised bytes. */
static inline float bs_e4m3_decode(uint8_t b) {
    int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
    float v;
    if (e == 15 && m == 7) return NAN;
    if (e == 0)
        v = ldexpf((float)m, -9);
    else
        v = ldexpf(1.0f + m / 8.0f, e - 7);
    return s ? -v : v;
}

/* A finite E4M3 code from the random bits u: sign, exponent field below `exps` (10: |x| <= 7.5),
 * mantissa; what the start-up checks and tests feed the fp8 GEMMs. */
static inline uint8_t bs_e4m3_random_code(uint64_t u, int exps) {
    return (uint8_t)((u & 1) << 7 | (u >> 1) % (uint64_t)exps << 3 | (u >> 8) % 8);
}

/* The spacing of E4M3 values around |x| (within the finite range): 2^-9 among the subnormals. */
static inline float bs_e4m3_ulp(float x) {
    int e;
    (void)frexpf(fabsf(x), &e);
    return ldexpf(1.0f, (x == 0.0f || e - 1 < -6 ? -6 : e - 1) - 3);
}

static inline float bs_round_dtype(float x, bs_dtype t) {
    return t == BS_DT_F16    ? bs_round_f16(x)
           : t == BS_DT_BF16 ? bs_round_bf16(x)
           : t == BS_DT_E4M3 ? bs_round_e4m3(x)
                             : x;
}

/* Device helpers: for nvcc, and for host C++ under tests/emu/simt.hpp (BS_SIMT_EMU), the warp
 * emulator that runs the kernels' own source on the CPU in CI. */
#if defined(__CUDACC__) || defined(BS_SIMT_EMU)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#ifndef BS_SIMT_EMU /* the emulator defines its own */
/* The kernel's dynamic shared memory as `unsigned char name[]` */
#define BS_DYN_SMEM(name) extern __shared__ __align__(128) unsigned char name[]
/* BS_LAUNCH(grid, block, smem, stream, kernel<...>)(args): kernel<<<grid, block, smem, stream>>>(args) */
#define BS_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#endif

/* Loads widen to fp32, stores round to nearest even (E4M3 saturates). */
__device__ __forceinline__ float bs_ld(float v) {
    return v;
}
__device__ __forceinline__ float bs_ld(__half v) {
    return __half2float(v);
}
__device__ __forceinline__ float bs_ld(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
__device__ __forceinline__ float bs_ld(__nv_fp8_e4m3 v) {
    return float(v);
}

template <typename T> __device__ __forceinline__ T bs_st(float v);
template <> __device__ __forceinline__ float bs_st<float>(float v) {
    return v;
}
template <> __device__ __forceinline__ __half bs_st<__half>(float v) {
    return __float2half_rn(v);
}
template <> __device__ __forceinline__ __nv_bfloat16 bs_st<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __nv_fp8_e4m3 bs_st<__nv_fp8_e4m3>(float v) {
    __nv_fp8_e4m3 r;
    r.__x = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
    return r;
}

/* 8 values of a 16-byte vector <-> 8 floats (f16/bf16; the tag argument picks the type). The
 * vector is taken and built by value, word by word with bit operations: unpacking through a
 * __nv_bfloat162 pointer into the loaded uint4 let nvcc split the 16-byte load into 4-byte ones
 * (ld.global.v2.u16 in the PTX), which halved the bandwidth of every kernel using it. Element 0
 * is the low half of word 0 (little-endian). */
__device__ __forceinline__ float2 bs_unpack2(uint32_t w, __nv_bfloat16) {
    return make_float2(__uint_as_float(w << 16), __uint_as_float(w & 0xffff0000u)); /* exact */
}
__device__ __forceinline__ float2 bs_unpack2(uint32_t w, __half) {
    return make_float2(__half2float(__ushort_as_half((unsigned short)(w & 0xffffu))),
                       __half2float(__ushort_as_half((unsigned short)(w >> 16))));
}
__device__ __forceinline__ uint32_t bs_pack2(float lo, float hi, __nv_bfloat16) {
    return (uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(lo)) |
           ((uint32_t)__bfloat16_as_ushort(__float2bfloat16_rn(hi)) << 16);
}
__device__ __forceinline__ uint32_t bs_pack2(float lo, float hi, __half) {
    return (uint32_t)__half_as_ushort(__float2half_rn(lo)) | ((uint32_t)__half_as_ushort(__float2half_rn(hi)) << 16);
}
template <typename T> __device__ __forceinline__ void bs_unpack8(uint4 u, float *f, T tag) {
    const float2 a = bs_unpack2(u.x, tag), b = bs_unpack2(u.y, tag), c = bs_unpack2(u.z, tag), d = bs_unpack2(u.w, tag);
    f[0] = a.x, f[1] = a.y, f[2] = b.x, f[3] = b.y, f[4] = c.x, f[5] = c.y, f[6] = d.x, f[7] = d.y;
}
template <typename T> __device__ __forceinline__ uint4 bs_pack8(const float *f, T tag) {
    return make_uint4(bs_pack2(f[0], f[1], tag), bs_pack2(f[2], f[3], tag), bs_pack2(f[4], f[5], tag),
                      bs_pack2(f[6], f[7], tag));
}
/* 16 bytes from global memory in one load (16-byte aligned p) */
__device__ __forceinline__ uint4 bs_ld16(const void *p) {
    return *(const uint4 *)p;
}
/* element i8 * 8 .. i8 * 8 + 7 of x (16-byte aligned) as floats: one 16-byte load (two for f32) */
__device__ __forceinline__ void bs_load8(const float *x, size_t i8, float *f) {
    const float4 a = ((const float4 *)x)[2 * i8], b = ((const float4 *)x)[2 * i8 + 1];
    f[0] = a.x, f[1] = a.y, f[2] = a.z, f[3] = a.w, f[4] = b.x, f[5] = b.y, f[6] = b.z, f[7] = b.w;
}
template <typename T> __device__ __forceinline__ void bs_load8(const T *x, size_t i8, float *f) {
    bs_unpack8(bs_ld16(x + 8 * i8), f, T());
}

/* E4M3(lo / scale) | E4M3(hi / scale) << 8: two neighbouring codes, as bs_st<__nv_fp8_e4m3> rounds */
__device__ __forceinline__ uint16_t bs_e4m3_pack2(float lo, float hi, float scale) {
    return (uint16_t)(__nv_cvt_float_to_fp8(lo / scale, __NV_SATFINITE, __NV_E4M3) |
                      (unsigned)__nv_cvt_float_to_fp8(hi / scale, __NV_SATFINITE, __NV_E4M3) << 8);
}

/* E4M3(f[j] / scale) for 8 values, byte j = element j (little-endian), as bs_st<__nv_fp8_e4m3> rounds */
__device__ __forceinline__ uint2 bs_e4m3_pack8(const float *f, float scale) {
    uint32_t w[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < 8; j++)
        w[j >> 2] |= (uint32_t)__nv_cvt_float_to_fp8(f[j] / scale, __NV_SATFINITE, __NV_E4M3) << (8 * (j & 3));
    return make_uint2(w[0], w[1]);
}

__device__ __forceinline__ float bs_warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float bs_warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Runs the statements with T typedef'd to the C++ type of an activation dtype (f32, f16, bf16); any other
 * dtype makes the enclosing launcher return cudaErrorInvalidValue. */
#define BS_DISPATCH_ACT(dt, ...)                                                                                       \
    do {                                                                                                               \
        switch (dt) {                                                                                                  \
        case BS_DT_F32: {                                                                                              \
            typedef float T;                                                                                           \
            __VA_ARGS__;                                                                                               \
        } break;                                                                                                       \
        case BS_DT_F16: {                                                                                              \
            typedef __half T;                                                                                          \
            __VA_ARGS__;                                                                                               \
        } break;                                                                                                       \
        case BS_DT_BF16: {                                                                                             \
            typedef __nv_bfloat16 T;                                                                                   \
            __VA_ARGS__;                                                                                               \
        } break;                                                                                                       \
        default:                                                                                                       \
            return cudaErrorInvalidValue;                                                                              \
        }                                                                                                              \
    } while (0)
#endif

#endif
