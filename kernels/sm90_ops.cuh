// Hopper (sm_90a) building blocks shared by the kernels that use TMA and wgmma: gemm_ln_sm90.cu
// (the GEMM with the LayerNorm in its epilogue, where they were first written, hence gl_) and
// gemm_sm90.cu (the persistent GEMM). mbarriers, TMA loads and stores, the wgmma fences and the
// wgmma.mma_async specialisations, and on the host the tensor maps (128-byte swizzle) that TMA
// reads. Every layout they rely on is in wgmma_layout.h (checked on the CPU by
// tests/unit/test_wgmma_layout.c). Include after the CUDA headers; device code only where
// GL_DEVICE (an sm_90a compile, or the warp emulator) is defined. Under the warp emulator
// (BS_SIMT_EMU: tests/emu/simt.hpp, included first) the same names run its emulation of mbarriers,
// TMA and wgmma, so a kernel written with them runs from its own source on the CPU
// (tests/unit/test_gemm_sm90_emu.cpp).
#ifndef BS_KERNELS_SM90_OPS_CUH
#define BS_KERNELS_SM90_OPS_CUH

#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <stdint.h>

#include "dtype.h"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define GL_DEVICE 1
#endif

#ifdef BS_SIMT_EMU
#define GL_DEVICE 1
#define GL_EMU_SPINS 20000 /* yields before a wait counts as one that never completes (the device's 5 s) */
static inline uint32_t gl_smem(const void *p) {
    return bs_emu::smem_offset(p);
}
static inline void gl_bar_init(uint32_t bar, uint32_t count) {
    bs_emu::bar_init(bar, (int)count);
}
static inline void gl_bar_expect_tx(uint32_t bar, uint32_t bytes) {
    bs_emu::bar_expect_tx(bar, (long)bytes);
}
static inline void gl_bar_arrive(uint32_t bar) {
    bs_emu::bar_arrive(bar);
}
static inline int gl_bar_try_wait(uint32_t bar, uint32_t parity) {
    return bs_emu::bar_try_wait(bar, parity);
}
static inline void gl_bar_wait(uint32_t bar, uint32_t parity) {
    for (long spins = 0; !bs_emu::bar_try_wait(bar, parity); spins++) {
        if (spins > GL_EMU_SPINS) {
            bs_emu::error("%s: a wait that never completes (mbarrier at shared offset %ld, parity %ld)",
                          "mbarrier.try_wait", (long)bar, (long)parity);
            return;
        }
        bs_emu::yield();
    }
}
static inline void gl_tma_load(uint32_t dst, const CUtensorMap *map, uint32_t bar, int x, int y) {
    bs_emu::tma_load(dst, map, bar, x, y);
}
static inline void gl_tma_prefetch(const CUtensorMap *) {}
static inline void gl_wgmma_fence() {}
static inline void gl_wgmma_commit() {}
template <int N> static inline void gl_wgmma_wait() {}
template <int N> static inline void gl_fence_acc(float (&)[N]) {}
template <int N> static inline void gl_setmaxnreg_dec() {}
template <int N> static inline void gl_setmaxnreg_inc() {}
static inline void gl_fence_mbarrier_init() {}
static inline float gl_tanh_approx(float u) {
    return tanhf(u);
}
/* d += A B^T for one k-step of one warpgroup, as on the device (below) */
template <typename TIn, int BN> struct gl_mma {
    static void run(float (&d)[BN / 2], uint64_t da, uint64_t db, int acc) {
        bs_emu::Lane *l = bs_emu::st().cur;
        l->wg_d = d, l->wg_n = BN, l->wg_da = da, l->wg_db = db, l->wg_scale_d = acc != 0;
        l->wg_type = std::is_same<TIn, __nv_bfloat16>::value ? 0 : std::is_same<TIn, __half>::value ? 1 : 2;
        bs_emu::arrive(bs_emu::OP_WGMMA);
    }
};
#elif defined(GL_DEVICE)
template <int N> __device__ __forceinline__ void gl_setmaxnreg_dec() {
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(N) : "memory");
}
template <int N> __device__ __forceinline__ void gl_setmaxnreg_inc() {
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void gl_fence_mbarrier_init() {
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
}
/* tanh by the SFU: relative error below 2^-10.9 */
__device__ __forceinline__ float gl_tanh_approx(float u) {
    float t;
    asm("tanh.approx.f32 %0, %1;" : "=f"(t) : "f"(u));
    return t;
}
__device__ __forceinline__ uint32_t gl_smem(const void *p) {
    return (uint32_t)__cvta_generic_to_shared(p);
}
__device__ __forceinline__ void gl_bar_init(uint32_t bar, uint32_t count) {
    asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void gl_bar_expect_tx(uint32_t bar, uint32_t bytes) {
    asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
__device__ __forceinline__ void gl_bar_arrive(uint32_t bar) {
    asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ int gl_bar_try_wait(uint32_t bar, uint32_t parity) {
    uint32_t ok;
    asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
                 : "=r"(ok)
                 : "r"(bar), "r"(parity)
                 : "memory");
    return (int)ok;
}
__device__ __forceinline__ uint64_t gl_ns(void) {
    uint64_t t;
    asm volatile("mov.u64 %0, %%globaltimer;\n" : "=l"(t));
    return t;
}
/* until the phase of parity `parity` has completed. A wait of more than 5 s means the kernel is
 * wrong (a transaction count or a phase that never completes): it traps rather than hang the engine
 * at start, whose check then fails with the launch error. */
__device__ __forceinline__ void gl_bar_wait(uint32_t bar, uint32_t parity) {
    if (gl_bar_try_wait(bar, parity)) return;
    const uint64_t t0 = gl_ns();
    while (!gl_bar_try_wait(bar, parity))
        if (gl_ns() - t0 > 5000000000ull) __trap();
}
/* the 2-D box at (x = K element, y = row) of the tensor map into shared dst; completes on bar */
__device__ __forceinline__ void gl_tma_load(uint32_t dst, const CUtensorMap *map, uint32_t bar, int x, int y) {
    asm volatile("cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%3, %4}], "
                 "[%2];\n" ::"r"(dst),
                 "l"((uint64_t)map), "r"(bar), "r"(x), "r"(y)
                 : "memory");
}
__device__ __forceinline__ void gl_wgmma_fence() {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
}
__device__ __forceinline__ void gl_wgmma_commit() {
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
}
template <int N> __device__ __forceinline__ void gl_wgmma_wait() {
    asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* keeps the compiler from moving accumulator reads or writes across the asynchronous MMAs */
template <int N> __device__ __forceinline__ void gl_fence_acc(float (&d)[N]) {
#pragma unroll
    for (int i = 0; i < N; i++) asm volatile("" : "+f"(d[i])::"memory");
}

/* the 2-D box at (x = column, y = row) of the tensor map from shared src (TMA's store: rows past the
 * tensor's end are not written); in this thread's bulk group */
__device__ __forceinline__ void gl_tma_store(const CUtensorMap *map, uint32_t src, int x, int y) {
    asm volatile("cp.async.bulk.tensor.2d.global.shared::cta.bulk_group [%0, {%2, %3}], [%1];\n" ::"l"((uint64_t)map),
                 "r"(src), "r"(x), "r"(y)
                 : "memory");
}
__device__ __forceinline__ void gl_tma_prefetch(const CUtensorMap *map) {
    asm volatile("prefetch.tensormap [%0];\n" ::"l"((uint64_t)map) : "memory");
}

/* d += A B^T for one k-step of one warpgroup: A 64 rows, B BN rows, both K-major in shared memory */
template <typename TIn, int BN> struct gl_mma;
/* The wgmma operand lists: the accumulator registers as the asm's first 64 or 128 operands ("+f"),
 * their names in the instruction, then the two descriptors and the scale-d flag after them. */
#define GL_REGS64                                                                                                      \
    "{"                                                                                                                \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                           \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                                 \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                                 \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"                                   \
    "}"
#define GL_REGS128                                                                                                     \
    "{"                                                                                                                \
    "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "                                           \
    "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "                                 \
    "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "                                 \
    "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "                                 \
    "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "                                 \
    "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "                                 \
    "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "                     \
    "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"                   \
    "}"
#define GL_ACC64(d)                                                                                                    \
    "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3]), "+f"(d[4]), "+f"(d[5]), "+f"(d[6]), "+f"(d[7]), "+f"(d[8]),        \
        "+f"(d[9]), "+f"(d[10]), "+f"(d[11]), "+f"(d[12]), "+f"(d[13]), "+f"(d[14]), "+f"(d[15]), "+f"(d[16]),         \
        "+f"(d[17]), "+f"(d[18]), "+f"(d[19]), "+f"(d[20]), "+f"(d[21]), "+f"(d[22]), "+f"(d[23]), "+f"(d[24]),        \
        "+f"(d[25]), "+f"(d[26]), "+f"(d[27]), "+f"(d[28]), "+f"(d[29]), "+f"(d[30]), "+f"(d[31]), "+f"(d[32]),        \
        "+f"(d[33]), "+f"(d[34]), "+f"(d[35]), "+f"(d[36]), "+f"(d[37]), "+f"(d[38]), "+f"(d[39]), "+f"(d[40]),        \
        "+f"(d[41]), "+f"(d[42]), "+f"(d[43]), "+f"(d[44]), "+f"(d[45]), "+f"(d[46]), "+f"(d[47]), "+f"(d[48]),        \
        "+f"(d[49]), "+f"(d[50]), "+f"(d[51]), "+f"(d[52]), "+f"(d[53]), "+f"(d[54]), "+f"(d[55]), "+f"(d[56]),        \
        "+f"(d[57]), "+f"(d[58]), "+f"(d[59]), "+f"(d[60]), "+f"(d[61]), "+f"(d[62]), "+f"(d[63])
#define GL_ACC128(d)                                                                                                   \
    GL_ACC64(d), "+f"(d[64]), "+f"(d[65]), "+f"(d[66]), "+f"(d[67]), "+f"(d[68]), "+f"(d[69]), "+f"(d[70]),            \
        "+f"(d[71]), "+f"(d[72]), "+f"(d[73]), "+f"(d[74]), "+f"(d[75]), "+f"(d[76]), "+f"(d[77]), "+f"(d[78]),        \
        "+f"(d[79]), "+f"(d[80]), "+f"(d[81]), "+f"(d[82]), "+f"(d[83]), "+f"(d[84]), "+f"(d[85]), "+f"(d[86]),        \
        "+f"(d[87]), "+f"(d[88]), "+f"(d[89]), "+f"(d[90]), "+f"(d[91]), "+f"(d[92]), "+f"(d[93]), "+f"(d[94]),        \
        "+f"(d[95]), "+f"(d[96]), "+f"(d[97]), "+f"(d[98]), "+f"(d[99]), "+f"(d[100]), "+f"(d[101]), "+f"(d[102]),     \
        "+f"(d[103]), "+f"(d[104]), "+f"(d[105]), "+f"(d[106]), "+f"(d[107]), "+f"(d[108]), "+f"(d[109]),              \
        "+f"(d[110]), "+f"(d[111]), "+f"(d[112]), "+f"(d[113]), "+f"(d[114]), "+f"(d[115]), "+f"(d[116]),              \
        "+f"(d[117]), "+f"(d[118]), "+f"(d[119]), "+f"(d[120]), "+f"(d[121]), "+f"(d[122]), "+f"(d[123]),              \
        "+f"(d[124]), "+f"(d[125]), "+f"(d[126]), "+f"(d[127])
/* one specialisation: N columns, NACC accumulators; IA, IB, IP the operand numbers of the two
 * descriptors and of the scale-d flag; the instruction; the immediates after scale-d (scale-a,
 * scale-b, and for 16-bit inputs transpose-a, transpose-b: 0, both operands K-major) */
#define GL_MMA(TIN, N, NACC, REGS, ACC, IA, IB, IP, INSTR, IMM)                                                        \
    template <> struct gl_mma<TIN, N> {                                                                                \
        static __device__ __forceinline__ void run(float (&d)[NACC], uint64_t da, uint64_t db, int acc) {              \
            asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %" #IP ", 0;\n" INSTR " " REGS ", %" #IA ", %" #IB          \
                         ", p" IMM ";\n}\n"                                                                            \
                         : ACC(d)                                                                                      \
                         : "l"(da), "l"(db), "r"(acc));                                                                \
        }                                                                                                              \
    };
GL_MMA(__nv_bfloat16, 256, 128, GL_REGS128, GL_ACC128, 128, 129, 130,
       "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16", ", 1, 1, 0, 0")
GL_MMA(__nv_bfloat16, 128, 64, GL_REGS64, GL_ACC64, 64, 65, 66, "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16",
       ", 1, 1, 0, 0")
GL_MMA(__half, 256, 128, GL_REGS128, GL_ACC128, 128, 129, 130, "wgmma.mma_async.sync.aligned.m64n256k16.f32.f16.f16",
       ", 1, 1, 0, 0")
GL_MMA(__half, 128, 64, GL_REGS64, GL_ACC64, 64, 65, 66, "wgmma.mma_async.sync.aligned.m64n128k16.f32.f16.f16",
       ", 1, 1, 0, 0")
GL_MMA(__nv_fp8_e4m3, 256, 128, GL_REGS128, GL_ACC128, 128, 129, 130,
       "wgmma.mma_async.sync.aligned.m64n256k32.f32.e4m3.e4m3", ", 1, 1")
GL_MMA(__nv_fp8_e4m3, 128, 64, GL_REGS64, GL_ACC64, 64, 65, 66, "wgmma.mma_async.sync.aligned.m64n128k32.f32.e4m3.e4m3",
       ", 1, 1")
#endif /* GL_DEVICE */

#ifdef GL_DEVICE
/* The end of a consumer warpgroup's k-step, its MMAs issued: commits them and waits until only they
 * are in flight, so the previous k-step's MMAs have read their stage, which is then given back (one
 * thread, `arrive`, on that stage's empty mbarrier `prev_empty`). The main loops of gemm_sm90.cu and
 * gemm_ln_sm90.cu. */
template <int N> __device__ __forceinline__ void gl_kstep_end(float (&acc)[N], bool arrive, uint32_t prev_empty) {
    gl_wgmma_commit();
    gl_fence_acc(acc);
    gl_wgmma_wait<1>();
    gl_fence_acc(acc);
    if (arrive) gl_bar_arrive(prev_empty);
}
#endif

/* cuTensorMapEncodeTiled from the driver, found through the runtime (no link against libcuda) */
static PFN_cuTensorMapEncodeTiled_v12000 gl_encoder(void) {
    static PFN_cuTensorMapEncodeTiled_v12000 fn; /* a race here writes the same value twice */
    if (!fn) {
        void *p = NULL;
        cudaDriverEntryPointQueryResult q;
        if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
                cudaSuccess &&
            q == cudaDriverEntryPointSuccess)
            fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
    }
    return fn;
}

/* A (rows, K) row-major tensor in boxes of box_rows x 128 bytes, 128-byte swizzle; rows past `rows`
 * read as zeros, and are not written */
static cudaError_t gl_map(CUtensorMap *m, const void *p, bs_dtype dt, int K, int rows, int box_rows) {
    PFN_cuTensorMapEncodeTiled_v12000 enc = gl_encoder();
    if (!enc) return cudaErrorNotSupported;
    const size_t es = bs_dtype_size(dt);
    cuuint64_t dims[2] = {(cuuint64_t)K, (cuuint64_t)rows}, strides[1] = {(cuuint64_t)K * es};
    cuuint32_t box[2] = {(cuuint32_t)(128 / es), (cuuint32_t)box_rows}, estr[2] = {1, 1};
    const CUtensorMapDataType t = dt == BS_DT_BF16  ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                  : dt == BS_DT_F16 ? CU_TENSOR_MAP_DATA_TYPE_FLOAT16
                                                    : CU_TENSOR_MAP_DATA_TYPE_UINT8;
    const CUresult r =
        enc(m, t, 2, (void *)p, dims, strides, box, estr, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
    return r == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

static bool gl_aligned(const void *p, uintptr_t a) {
    return ((uintptr_t)p & (a - 1)) == 0;
}

#endif
