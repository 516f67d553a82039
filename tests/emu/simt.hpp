/* A CPU emulator of the CUDA execution model, enough to run a kernel's own source in CI where no GPU
 * exists. Include this file first (it defines BS_SIMT_EMU and the built-ins), then the kernel's
 * source: a kernels/NAME.cu whose launches are written BS_LAUNCH(grid, block, smem, stream,
 * kernel<...>)(args) runs as it is, launchers included; or call a kernel directly with
 * bs_emu::launch(grid, block, smem_bytes, [&] { kernel<...>(args); }).
 *
 * Every thread of a block is a fiber on its own stack; one block runs at a time, its threads in
 * turn, each until it reaches a collective. A collective runs once every live thread it involves
 * has reached it:
 *   __syncthreads()              all live threads of the block
 *   __syncwarp(), __shfl_xor_sync, ldmatrix.x4 (.trans), mma.sync m16n8k16 (f16/bf16 in, f32 acc),
 *                                mma.sync m16n8k32 (E4M3 in, f32 acc)
 *                                all 32 threads of the warp, at the same kind of instruction
 *   wgmma.mma_async m64nNk16/k32 all 128 threads of the warpgroup, with the same operands
 * and Hopper's mbarriers and TMA loads (kernels/sm90_ops.cuh's wrappers; below), a thread waiting
 * on an mbarrier yielding to the others each round.
 * The warp instructions follow the PTX ISA's fragment tables (as tests/unit/test_mma_layout.c,
 * written separately); cp.async copies 16 bytes, zero-filling past src-size, and completes when
 * the copying thread's cp.async.wait_group retires its group (late copies, Options::late_copies)
 * or at once (early copies): a kernel must give the same result both ways, so a missing wait or a
 * buffer overwritten while another warp still reads it shows up as a difference or a NaN
 * (Options::greedy lets one warp run ahead of the others). Shared memory starts as NaN bytes (0xff)
 * in every block.
 *
 * Checked as errors (counted, the first one described in bs_emu::first_error()): a thread order
 * that deadlocks (a collective some thread never reaches), threads of one warp at different
 * collective kinds, a warp collective with exited threads, ldmatrix and cp.async outside the
 * dynamic shared memory or misaligned, a cp.async source outside every registered global region,
 * and copies still in flight when a thread exits. Not modelled: memory ordering between threads
 * (each thread runs to its next collective alone, so shared-memory races stay hidden unless the
 * order shows them; Options::seed shuffles it), and the hardware's accumulation order (sums are
 * exact, in double, rounded once to fp32).
 *
 * C++17, one translation unit (the state is header-local). */
#ifndef BS_TESTS_EMU_SIMT_HPP
#define BS_TESTS_EMU_SIMT_HPP

#include <cuda.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime_api.h>
#include <vector_functions.h>

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define BS_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define BS_EMU_ASAN 1
#endif
#endif
#ifdef BS_EMU_ASAN
/* the switching functions themselves go uninstrumented: ASan would call __asan_handle_no_return
 * before every jump, unpoisoning (memset) the whole stack each time */
#define BS_EMU_NO_ASAN __attribute__((no_sanitize_address))
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#else
#define BS_EMU_NO_ASAN
#endif

/* The CUDA headers define __shared__ as nothing for host compilers: a __shared__ array is one
 * per block, and one block runs at a time, so a static is the same thing here. */
#undef __shared__
#define __shared__ static
#define __launch_bounds__(...)
#define BS_SIMT_EMU 1

namespace bs_emu {

enum Op {
    OP_NONE,
    OP_SYNCTHREADS,
    OP_SYNCWARP,
    OP_SHFL,
    OP_LDSM,
    OP_LDSM_T,
    OP_MMA_BF16,
    OP_MMA_F16,
    OP_WMMA,
    OP_SHFL_IDX,
    OP_MMA_E4M3,
    OP_YIELD, /* a thread spinning on an mbarrier lets the others run (released every round) */
    OP_WGMMA  /* wgmma.mma_async: all 128 threads of a warpgroup */
};

static inline const char *op_name(int op) {
    static const char *n[] = {
        "none",    "__syncthreads",  "__syncwarp",  "__shfl_xor_sync", "ldmatrix.x4", "ldmatrix.x4.trans", "mma.bf16",
        "mma.f16", "wmma::mma_sync", "__shfl_sync", "mma.e4m3",        "yield",       "wgmma.mma_async"};
    return n[op];
}

struct Copy {
    void *dst;
    const void *src;
    int bytes;
    long group; /* -1: not committed yet */
};

struct Lane {
    /* the fiber, kept from block to block: started once from ctx, then switched with jb */
    ucontext_t ctx;
    void *jb[5]; /* __builtin_setjmp's buffer */
    void *stack = nullptr;
    void *fake = nullptr;                /* ASan's fake-stack handle while switched out */
    bool started = false, stuck = false; /* stuck: left inside the body by a deadlock */
    uint3 tid;
    int id = 0;
    bool done = false, waiting = false;
    int op = OP_NONE;
    /* operands in, results out */
    float shfl_v = 0, shfl_out = 0;
    int shfl_m = 0;
    const void *ldsm_p = nullptr;
    uint32_t ldsm_out[4] = {0, 0, 0, 0};
    uint32_t a[4] = {0, 0, 0, 0}, b0 = 0, b1 = 0;
    float d[4] = {0, 0, 0, 0};
    float wa[8], wb[8], wc[8]; /* wmma::mma_sync 16x16x16: this lane's 8 elements of A, B and C/D */
    /* wgmma.mma_async m64nNk16 (16-bit) / k32 (E4M3): this lane's accumulators and the operands */
    float *wg_d = nullptr;
    int wg_n = 0, wg_type = 0, wg_scale_d = 1;
    uint64_t wg_da = 0, wg_db = 0;
    std::vector<Copy> pending;
    long groups = 0;
};

struct Options {
    bool late_copies = true; /* cp.async lands at its wait (true) or when issued (false) */
    unsigned seed = 0;       /* 0: threads and warps in order; else shuffled, anew each round */
    bool greedy = false;     /* false: every thread moves to its next collective in turn, so the warps
                              * keep step; true: one warp runs as far as it can (to a __syncthreads or
                              * its end) before the next starts, so a warp runs ahead of the others */
    int tma_delay = 0;       /* TMA loads land at once (0) or up to this many scheduling rounds later
                              * (random with a seed, else exactly): a wait on the wrong phase then
                              * reads a stage before its data is there */
};

struct State {
    Options opt;
    void *sched[5];
    void *sched_fake = nullptr;
    const void *main_bottom = nullptr;
    size_t main_size = 0;
    Lane *cur = nullptr;
    std::vector<Lane> lanes;
    dim3 grid, block;
    uint3 bidx;
    unsigned char *smem = nullptr;
    size_t smem_bytes = 0;
    std::vector<std::pair<const unsigned char *, size_t>> regions;
    /* mbarriers of the running block, by shared-memory offset */
    struct Bar {
        int count = 0, pending = 0;
        long tx = 0;
        unsigned phase = 0;
    };
    std::vector<std::pair<uint32_t, Bar>> bars;
    long round = 0;                          /* scheduling rounds of the running block */
    std::vector<std::function<void()>> bulk; /* TMA loads in flight, each landing at its round */
    std::vector<long> bulk_due;
    const std::function<void()> *body = nullptr;
    long errors = 0;
    std::string first;
    uint64_t rng = 0;
};

static const size_t STACK_BYTES = 64 * 1024; /* the kernels keep their arrays in registers: small frames */

static inline State &st() {
    static State s;
    return s;
}

static inline void error(const char *fmt, const char *what, long a = 0, long b = 0) {
    State &s = st();
    if (s.errors++ == 0) {
        char buf[512];
        snprintf(buf, sizeof buf, fmt, what, a, b);
        s.first = std::string(buf) + " (block " + std::to_string(s.bidx.x) + "," + std::to_string(s.bidx.y) +
                  ", thread " + std::to_string(s.cur ? s.cur->id : -1) + ")";
    }
}

/* errors so far and the first one's description; reset() clears both and the regions */
static inline long errors() {
    return st().errors;
}
static inline const char *first_error() {
    return st().first.c_str();
}
static inline void reset(Options o) {
    State &s = st();
    s.opt = o;
    s.errors = 0;
    s.first.clear();
    s.regions.clear();
    s.rng = o.seed ? o.seed : 1;
}
/* global memory cp.async may read from */
static inline void global_region(const void *p, size_t bytes) {
    st().regions.push_back({(const unsigned char *)p, bytes});
}

static inline bool in_smem(const void *p, size_t n) {
    State &s = st();
    const unsigned char *c = (const unsigned char *)p;
    return c >= s.smem && c + n <= s.smem + s.smem_bytes;
}
static inline bool in_region(const void *p, size_t n) {
    const unsigned char *c = (const unsigned char *)p;
    for (auto &r : st().regions)
        if (c >= r.first && c + n <= r.first + r.second) return true;
    return st().regions.empty();
}

/* ---- fibers ---- */

/* Switches: a fiber's first start goes through its ucontext; every later switch, either way, is
 * GCC's __builtin_setjmp/__builtin_longjmp: no signal-mask system call (swapcontext makes one), and
 * no libc longjmp for ASan to intercept (it would unpoison the whole stack at every switch; no frame
 * is ever abandoned here, but a stuck fiber's, and its stack is unpoisoned when it starts afresh).
 * ASan is told of each switch. */
__attribute__((noinline)) BS_EMU_NO_ASAN static void jump(void **buf) {
    __builtin_longjmp(buf, 1);
}
BS_EMU_NO_ASAN static inline void to_sched() {
    State &s = st();
    Lane *l = s.cur;
    if (__builtin_setjmp(l->jb) == 0) {
#ifdef BS_EMU_ASAN
        __sanitizer_start_switch_fiber(&l->fake, s.main_bottom, s.main_size);
#endif
        jump(s.sched);
    }
#ifdef BS_EMU_ASAN
    __sanitizer_finish_switch_fiber(l->fake, &s.main_bottom, &s.main_size);
#endif
}

/* a fiber: the body once per block, parked in between */
static inline void lane_main() {
    State &s = st();
#ifdef BS_EMU_ASAN
    __sanitizer_finish_switch_fiber(nullptr, &s.main_bottom, &s.main_size);
#endif
    for (;;) {
        (*s.body)();
        Lane *l = s.cur;
        if (!l->pending.empty())
            error("%s: %ld cp.async copies still in flight at exit", "cp.async", (long)l->pending.size());
        l->done = true;
        to_sched();
    }
}

BS_EMU_NO_ASAN static inline void run_lane(Lane &l) {
    State &s = st();
    s.cur = &l;
    if (__builtin_setjmp(s.sched) == 0) {
#ifdef BS_EMU_ASAN
        __sanitizer_start_switch_fiber(&s.sched_fake, l.stack, STACK_BYTES);
#endif
        if (l.started) jump(l.jb);
        l.started = true;
        setcontext(&l.ctx);
    }
#ifdef BS_EMU_ASAN
    __sanitizer_finish_switch_fiber(s.sched_fake, nullptr, nullptr);
#endif
    s.cur = nullptr;
}

/* the calling thread waits at collective op; the scheduler fills its results */
static inline void arrive(int op) {
    Lane *l = st().cur;
    l->op = op;
    l->waiting = true;
    to_sched();
}

/* ---- the warp instructions, once all 32 threads have arrived ---- */

static inline float half_bits(uint32_t reg, int hi, int op) {
    const uint16_t b = (uint16_t)(hi ? reg >> 16 : reg & 0xffff);
    if (op == OP_MMA_BF16) {
        uint32_t f = (uint32_t)b << 16;
        float v;
        memcpy(&v, &f, 4);
        return v;
    }
    __half h;
    memcpy((void *)&h, &b, 2);
    return __half2float(h);
}

static inline void exec_warp(Lane *w, int op) {
    switch (op) {
    case OP_SYNCWARP:
        break;
    case OP_SHFL:
        for (int l = 0; l < 32; l++) w[l].shfl_out = w[(l ^ w[l].shfl_m) & 31].shfl_v;
        break;
    case OP_SHFL_IDX:
        for (int l = 0; l < 32; l++) w[l].shfl_out = w[w[l].shfl_m & 31].shfl_v;
        break;
    case OP_LDSM:
    case OP_LDSM_T: { /* lanes 8i..8i+7: the rows of matrix i, 8 x 16 bits each, 16-byte aligned */
        uint16_t m[4][8][8];
        for (int l = 0; l < 32; l++) {
            const void *p = w[l].ldsm_p;
            if (!in_smem(p, 16) || ((uintptr_t)p & 15)) {
                error("%s: row address outside shared memory or not 16-byte aligned (lane %ld)", op_name(op), l);
                memset(m[l / 8][l % 8], 0xff, 16);
            } else {
                memcpy(m[l / 8][l % 8], p, 16);
            }
        }
        for (int l = 0; l < 32; l++) {
            const int g = l / 4, t = l % 4;
            for (int i = 0; i < 4; i++)
                w[l].ldsm_out[i] = op == OP_LDSM ? (uint32_t)m[i][g][2 * t] | (uint32_t)m[i][g][2 * t + 1] << 16
                                                 : (uint32_t)m[i][2 * t][g] | (uint32_t)m[i][2 * t + 1][g] << 16;
        }
        break;
    }
    case OP_WMMA: { /* wmma 16x16x16: lane l holds elements 8l..8l+7 of each tile, row-major */
        float A[16][16], B[16][16], D[16][16];
        for (int l = 0; l < 32; l++)
            for (int i = 0; i < 8; i++) {
                const int e = 8 * l + i;
                A[e / 16][e % 16] = w[l].wa[i], B[e / 16][e % 16] = w[l].wb[i], D[e / 16][e % 16] = w[l].wc[i];
            }
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 16; c++) {
                double acc = D[r][c];
                for (int k = 0; k < 16; k++) acc += (double)A[r][k] * B[k][c];
                w[(16 * r + c) / 8].wc[(16 * r + c) % 8] = (float)acc;
            }
        break;
    }
    case OP_MMA_BF16:
    case OP_MMA_F16: { /* m16n8k16 .row.col: D (16 x 8) = A (16 x 16) B (16 x 8) + C */
        float A[16][16], B[16][8], Cm[16][8];
        for (int l = 0; l < 32; l++) {
            const int g = l / 4, t = l % 4;
            for (int i = 0; i < 8; i++)
                A[g + 8 * ((i / 2) % 2)][2 * t + i % 2 + 8 * (i / 4)] = half_bits(w[l].a[i / 2], i % 2, op);
            for (int i = 0; i < 4; i++)
                B[2 * t + i % 2 + 8 * (i / 2)][g] = half_bits(i < 2 ? w[l].b0 : w[l].b1, i % 2, op);
            for (int i = 0; i < 4; i++) Cm[g + 8 * (i / 2)][2 * t + i % 2] = w[l].d[i];
        }
        float D[16][8];
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 8; c++) {
                double acc = Cm[r][c];
                for (int k = 0; k < 16; k++) acc += (double)A[r][k] * B[k][c];
                D[r][c] = (float)acc;
            }
        for (int l = 0; l < 32; l++) {
            const int g = l / 4, t = l % 4;
            for (int i = 0; i < 4; i++) w[l].d[i] = D[g + 8 * (i / 2)][2 * t + i % 2];
        }
        break;
    }
    case OP_MMA_E4M3: { /* m16n8k32 .row.col, E4M3: D (16 x 8) = A (16 x 32) B (32 x 8) + C. PTX ISA, 8-bit
                         * fragments: A element i (0..15, byte i % 4 of register i / 4) at row g (+8 for
                         * registers 1, 3), col 4t + i % 4 (+16 for i >= 8); B element i (0..7, byte i % 4
                         * of b0, b1) at row (k) 4t + i % 4 (+16 for i >= 4), col g; C as m16n8k16's */
        float A[16][32], B[32][8], Cm[16][8];
        auto e4m3 = [](uint32_t reg, int byte) {
            __nv_fp8_e4m3 v;
            v.__x = (__nv_fp8_storage_t)(reg >> (8 * byte));
            return float(v);
        };
        for (int l = 0; l < 32; l++) {
            const int g = l / 4, t = l % 4;
            for (int i = 0; i < 16; i++)
                A[g + 8 * ((i / 4) & 1)][4 * t + i % 4 + 16 * (i >= 8)] = e4m3(w[l].a[i / 4], i % 4);
            for (int i = 0; i < 8; i++) B[4 * t + i % 4 + 16 * (i >= 4)][g] = e4m3(i < 4 ? w[l].b0 : w[l].b1, i % 4);
            for (int i = 0; i < 4; i++) Cm[g + 8 * (i / 2)][2 * t + i % 2] = w[l].d[i];
        }
        for (int r = 0; r < 16; r++)
            for (int c = 0; c < 8; c++) {
                double acc = Cm[r][c];
                for (int k = 0; k < 32; k++) acc += (double)A[r][k] * B[k][c];
                const int l = 4 * (r % 8) + c / 2;
                w[l].d[2 * (r / 8) + c % 2] = (float)acc;
            }
        break;
    }
    }
}

static inline uint32_t next_rand() {
    uint64_t &x = st().rng;
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    return (uint32_t)(x >> 11);
}

template <typename V> static inline void shuffle(V &v) {
    for (size_t i = v.size(); i > 1; i--) std::swap(v[i - 1], v[next_rand() % i]);
}

/* Runs warp w's collective when all its live threads wait at the same one; true when it ran. */
static inline bool collective(int w) {
    State &s = st();
    Lane *W = &s.lanes[32 * (size_t)w];
    int op = OP_NONE, exited = 0;
    for (int l = 0; l < 32; l++) {
        if (W[l].done) {
            exited = 1;
            continue;
        }
        if (!W[l].waiting || W[l].op == OP_SYNCTHREADS || W[l].op == OP_YIELD || W[l].op == OP_WGMMA) return false;
        if (op != OP_NONE && W[l].op != op) {
            s.cur = &W[l];
            error("%s: threads of one warp at different collectives (%s and %s)", "warp");
            s.first += std::string(": ") + op_name(op) + " / " + op_name(W[l].op);
            s.cur = nullptr;
            return false;
        }
        op = W[l].op;
    }
    if (op == OP_NONE) return false;
    if (exited) {
        error("%s: warp collective with exited threads (warp %ld)", op_name(op), w);
        return false;
    }
    exec_warp(W, op);
    for (int l = 0; l < 32; l++) W[l].waiting = false;
    return true;
}

/* Moves warp w's threads (in the given thread order) to their next collective and runs it when it
 * can; true when anything moved. */
static inline bool step_warp(int w, const std::vector<int> &order) {
    State &s = st();
    bool moved = false;
    for (int i : order) {
        Lane &l = s.lanes[(size_t)i];
        if (i / 32 == w && !l.done && !l.waiting) run_lane(l), moved = true;
    }
    return collective(w) || moved;
}

/* ---- Hopper: mbarriers, TMA, wgmma (kernels/sm90_ops.cuh's wrappers, under BS_SIMT_EMU) ----
 * mbarriers follow the PTX ISA: an expected arrival count, pending arrivals and a transaction count;
 * a phase completes when both reach zero, and try_wait.parity(P) is true once the phase of parity P
 * has completed, i.e. while the current phase's parity differs from P (so a waiter two phases
 * behind reads the wrong one, as on the device). A thread spinning on one yields (OP_YIELD) so the
 * others run. TMA 2-D loads copy their box at once, the 128-byte swizzle applied (16-byte chunk c
 * of row r lands at chunk c ^ (r % 8)), zeros past the tensor's end, then complete their bytes on
 * the mbarrier, or (Options::tma_delay) some rounds later. wgmma.mma_async runs when all 128 threads of the warpgroup
 * have issued it with the same operands: A (64 rows) and B (N rows) read through their shared-memory descriptors
 * (K-major, 128-byte swizzle applied to the final address), the product in double added once to each thread's fp32
 * accumulators, laid out by the PTX ISA's table for m64nN f32 accumulators. It completes when issued: wgmma.commit/wait
 * and the fences are no-ops. */
static inline uint32_t smem_offset(const void *p) {
    State &s = st();
    const unsigned char *c = (const unsigned char *)p;
    if (c < s.smem || c > s.smem + s.smem_bytes) error("%s: a generic address outside shared memory", "cvta.shared");
    return (uint32_t)(c - s.smem);
}
static inline State::Bar *bar_at(uint32_t off, const char *what) {
    for (auto &b : st().bars)
        if (b.first == off) return &b.second;
    error("%s: no mbarrier was initialised at shared offset %ld", what, (long)off);
    return nullptr;
}
static inline void bar_init(uint32_t off, int count) {
    State &s = st();
    if ((off & 7) || off + 8 > s.smem_bytes)
        error("%s: mbarrier at shared offset %ld misaligned or outside", "mbarrier.init", (long)off);
    for (auto &b : s.bars)
        if (b.first == off) {
            b.second = State::Bar{count, count, 0, 0};
            return;
        }
    s.bars.push_back({off, State::Bar{count, count, 0, 0}});
}
static inline void bar_settle(State::Bar &b) {
    if (b.pending == 0 && b.tx == 0) b.phase++, b.pending = b.count;
}
static inline void bar_arrive(uint32_t off) {
    State::Bar *b = bar_at(off, "mbarrier.arrive");
    if (!b) return;
    if (--b->pending < 0) error("%s: more arrivals than the count (offset %ld)", "mbarrier.arrive", (long)off);
    bar_settle(*b);
}
static inline void bar_expect_tx(uint32_t off, long bytes) {
    State::Bar *b = bar_at(off, "mbarrier.arrive.expect_tx");
    if (!b) return;
    b->tx += bytes;
    bar_arrive(off);
}
static inline void bar_complete_tx(uint32_t off, long bytes) {
    State::Bar *b = bar_at(off, "complete_tx");
    if (!b) return;
    b->tx -= bytes;
    bar_settle(*b);
}
static inline bool bar_try_wait(uint32_t off, uint32_t parity) {
    State::Bar *b = bar_at(off, "mbarrier.try_wait.parity");
    return !b || (b->phase & 1u) != (parity & 1u);
}
static inline void yield() {
    arrive(OP_YIELD);
}

/* the emulated CUtensorMap (its 128 opaque bytes), as encode_tiled writes it */
struct TensorMap {
    uint64_t magic;
    const unsigned char *base;
    uint64_t dims[2], stride; /* elements (inner, rows); bytes between rows */
    uint32_t box[2], es;      /* elements, rows; element bytes */
};
static const uint64_t TMAP_MAGIC = 0x7370616d74756d65ull;
static_assert(sizeof(TensorMap) <= sizeof(CUtensorMap), "TensorMap fits in a CUtensorMap");

/* cuTensorMapEncodeTiled for what the emulator moves: rank 2, the 128-byte swizzle with a box 128
 * bytes wide, element strides 1; the driver's own limits checked (16-byte aligned address and
 * row stride, box dimensions 1..256). Anything else is CUDA_ERROR_INVALID_VALUE. */
static inline CUresult encode_tiled(CUtensorMap *m, CUtensorMapDataType t, cuuint32_t rank, void *addr,
                                    const cuuint64_t *dims, const cuuint64_t *strides, const cuuint32_t *box,
                                    const cuuint32_t *estr, CUtensorMapInterleave il, CUtensorMapSwizzle sw,
                                    CUtensorMapL2promotion l2, CUtensorMapFloatOOBfill oob) {
    (void)l2;
    const uint32_t es = t == CU_TENSOR_MAP_DATA_TYPE_UINT8                                              ? 1
                        : t == CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 || t == CU_TENSOR_MAP_DATA_TYPE_FLOAT16 ? 2
                                                                                                        : 0;
    if (!m || rank != 2 || !es || !addr || ((uintptr_t)addr & 15) || (strides[0] & 15) ||
        il != CU_TENSOR_MAP_INTERLEAVE_NONE || sw != CU_TENSOR_MAP_SWIZZLE_128B ||
        oob != CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE || estr[0] != 1 || estr[1] != 1 || box[0] * es != 128 || box[1] < 1 ||
        box[1] > 256 || dims[0] < 1 || dims[1] < 1)
        return CUDA_ERROR_INVALID_VALUE;
    TensorMap tm = {TMAP_MAGIC, (const unsigned char *)addr, {dims[0], dims[1]}, strides[0], {box[0], box[1]}, es};
    memset((void *)m, 0, sizeof *m);
    memcpy((void *)m, &tm, sizeof tm);
    return CUDA_SUCCESS;
}

/* cp.async.bulk.tensor.2d: the box at (x elements, y rows) into shared offset dst (1024-byte
 * aligned, as the 128-byte swizzle needs), its bytes completed on the mbarrier at bar */
static inline void tma_load(uint32_t dst, const void *map, uint32_t bar, int x, int y) {
    State &s = st();
    TensorMap tm;
    memcpy(&tm, map, sizeof tm);
    if (tm.magic != TMAP_MAGIC) {
        error("%s: not a tensor map encode_tiled made", "cp.async.bulk.tensor");
        return;
    }
    const size_t bytes = (size_t)tm.box[0] * tm.es * tm.box[1];
    if ((dst & 1023) || dst + bytes > s.smem_bytes) {
        error("%s: destination at shared offset %ld not 1024-byte aligned or past the end", "cp.async.bulk.tensor",
              (long)dst);
        return;
    }
    if (x < 0 || y < 0) { /* legal on the device (the box then starts outside, read as zeros); not emulated */
        error("%s: a box at negative coordinates x %ld, y %ld (not emulated)", "cp.async.bulk.tensor", x, y);
        return;
    }
    auto land = [tm, dst, bar, x, y, bytes] {
        State &s = st();
        for (uint32_t r = 0; r < tm.box[1]; r++)
            for (uint32_t b = 0; b < 128; b++) {
                const uint64_t gy = (uint64_t)y + r, gx = (uint64_t)x * tm.es + b; /* bytes into the row */
                unsigned char v = 0;
                if (gy < tm.dims[1] && gx < tm.dims[0] * tm.es) {
                    const unsigned char *src = tm.base + gy * tm.stride + gx;
                    if (!in_region(src, 1)) {
                        error("%s: a source byte outside the registered global memory (row %ld)",
                              "cp.async.bulk.tensor", (long)gy);
                        return;
                    }
                    v = *src;
                }
                s.smem[dst + r * 128 + ((((b >> 4) ^ (r & 7)) << 4) | (b & 15))] = v;
            }
        bar_complete_tx(bar, (long)bytes);
    };
    if (s.opt.tma_delay <= 0) {
        land();
        return;
    }
    s.bulk.push_back(land);
    s.bulk_due.push_back(s.round + 1 +
                         (s.opt.seed ? (long)(next_rand() % (unsigned)s.opt.tma_delay) : s.opt.tma_delay));
}

/* element (row r, byte k of the K slice) of a wgmma operand whose descriptor starts at shared
 * offset start: rows 128 bytes apart, the swizzle applied to the final address */
static inline float wg_elem(uint32_t start, int r, int kb, int type) {
    const uint32_t u = start + (uint32_t)r * 128 + (uint32_t)kb, a = u ^ (((u >> 7) & 7) << 4);
    const unsigned char *p = st().smem + a;
    if (type == 2) { /* E4M3 */
        const __half_raw h = __nv_cvt_fp8_to_halfraw((__nv_fp8_storage_t)*p, __NV_E4M3);
        return __half2float(__half(h));
    }
    uint16_t bits;
    memcpy(&bits, p, 2);
    return half_bits(bits, 0, type == 0 ? OP_MMA_BF16 : OP_MMA_F16);
}

/* one wgmma.mma_async of warpgroup G (its 128 lanes, all waiting at OP_WGMMA) */
static inline void exec_wgmma(Lane *G) {
    State &s = st();
    const Lane &l0 = G[0];
    for (int t = 1; t < 128; t++)
        if (G[t].wg_da != l0.wg_da || G[t].wg_db != l0.wg_db || G[t].wg_n != l0.wg_n || G[t].wg_type != l0.wg_type ||
            G[t].wg_scale_d != l0.wg_scale_d) {
            error("%s: the threads of a warpgroup issued different operands (thread %ld)", "wgmma.mma_async", t);
            return;
        }
    const uint64_t desc[2] = {l0.wg_da, l0.wg_db};
    for (uint64_t d : desc) /* the layout the kernels use: K-major, 128-byte swizzle, 8-row groups 1024 bytes apart */
        if ((d >> 62) != 1 || ((d >> 32) & 0x3fff) != 1024 / 16 || ((d >> 49) & 7) != 0) {
            error("%s: a descriptor other than K-major with the 128-byte swizzle (%lx)", "wgmma.mma_async",
                  (long)(d >> 32));
            return;
        }
    const uint32_t a = (uint32_t)(l0.wg_da & 0x3fff) << 4, b = (uint32_t)(l0.wg_db & 0x3fff) << 4;
    const int N = l0.wg_n, kbytes = 32, es = l0.wg_type == 2 ? 1 : 2;
    if (a + 64 * 128 > s.smem_bytes || b + (uint32_t)N * 128 > s.smem_bytes) {
        error("%s: an operand past the end of shared memory", "wgmma.mma_async");
        return;
    }
    std::vector<double> D((size_t)64 * N, 0.0);
    for (int m = 0; m < 64; m++)
        for (int n = 0; n < N; n++) {
            double acc = 0;
            for (int kb = 0; kb < kbytes; kb += es)
                acc += (double)wg_elem(a, m, kb, l0.wg_type) * wg_elem(b, n, kb, l0.wg_type);
            D[(size_t)m * N + n] = acc;
        }
    for (int t = 0; t < 128; t++) { /* PTX ISA, wgmma .m64nNk16 f32 accumulators: D fragments */
        const int w = t / 32, lane = t % 32;
        for (int i = 0; i < N / 2; i++) {
            const int row = 16 * w + lane / 4 + 8 * ((i / 2) % 2), col = 8 * (i / 4) + 2 * (lane % 4) + i % 2;
            G[t].wg_d[i] = (float)((l0.wg_scale_d ? (double)G[t].wg_d[i] : 0.0) + D[(size_t)row * N + col]);
        }
    }
}

/* the warpgroup collectives and the yields of one round; true when anything ran */
static inline bool hopper_round(size_t nthreads) {
    State &s = st();
    bool moved = false;
    for (size_t g = 0; g + 128 <= nthreads; g += 128) {
        Lane *G = &s.lanes[g];
        size_t at = 0, live = 0;
        for (int t = 0; t < 128; t++) live += !G[t].done, at += !G[t].done && G[t].waiting && G[t].op == OP_WGMMA;
        if (at == 0 || at < live) continue;
        if (live < 128) {
            error("%s: a warpgroup with exited threads (warpgroup %ld)", "wgmma.mma_async", (long)(g / 128));
            return false;
        }
        exec_wgmma(G);
        for (int t = 0; t < 128; t++) G[t].waiting = false;
        moved = true;
    }
    for (size_t i = 0; i < nthreads; i++)
        if (!s.lanes[i].done && s.lanes[i].waiting && s.lanes[i].op == OP_YIELD)
            s.lanes[i].waiting = false, moved = true;
    for (size_t i = 0; i < s.bulk.size();) { /* the TMA loads whose round has come */
        if (s.bulk_due[i] <= s.round) {
            const std::function<void()> f = s.bulk[i];
            s.bulk.erase(s.bulk.begin() + (long)i), s.bulk_due.erase(s.bulk_due.begin() + (long)i);
            f();
        } else {
            i++;
        }
    }
    moved |= !s.bulk.empty(); /* time passes while loads are in flight */
    s.round++;
    return moved;
}

/* thread i's stack, mapped once and kept for every later block */
static inline void *stack_for(size_t i) {
    static std::vector<void *> pool;
    while (pool.size() <= i) {
        void *p = mmap(nullptr, STACK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            fprintf(stderr, "simt: cannot map a fiber stack\n");
            abort();
        }
        pool.push_back(p);
    }
    return pool[i];
}

/* one block: fibers for its threads, run until all exit (or nothing can move: an error) */
static inline void run_block(size_t nthreads) {
    State &s = st();
    /* fibers persist from block to block and launch to launch: never moved (a parked one holds its
     * Lane's address), so room for CUDA's largest block is made once */
    if (s.lanes.capacity() < 1024) s.lanes.reserve(1024);
    if (s.lanes.size() < nthreads) s.lanes.resize(nthreads);
    for (size_t i = 0; i < nthreads; i++) {
        Lane &l = s.lanes[i];
        l.id = (int)i;
        l.tid = uint3{(unsigned)(i % s.block.x), (unsigned)(i / s.block.x % s.block.y),
                      (unsigned)(i / s.block.x / s.block.y)};
        l.done = l.waiting = false;
        l.op = OP_NONE;
        l.pending.clear();
        l.groups = 0;
        if (!l.started || l.stuck) { /* a fresh fiber */
            l.stack = stack_for(i);
#ifdef BS_EMU_ASAN
            __asan_unpoison_memory_region(l.stack, STACK_BYTES);
#endif
            getcontext(&l.ctx);
            l.ctx.uc_stack.ss_sp = l.stack;
            l.ctx.uc_stack.ss_size = STACK_BYTES;
            l.ctx.uc_link = nullptr;
            makecontext(&l.ctx, lane_main, 0);
            l.started = l.stuck = false;
        }
    }
    std::vector<int> order(nthreads), worder(nthreads / 32);
    for (size_t i = 0; i < nthreads; i++) order[i] = (int)i;
    for (size_t w = 0; w < worder.size(); w++) worder[w] = (int)w;
    for (;;) {
        if (s.opt.seed) shuffle(order), shuffle(worder);
        bool moved = false;
        if (s.opt.greedy) {
            for (int w : worder)
                while (step_warp(w, order)) moved = true;
        } else {
            for (int i : order) {
                Lane &l = s.lanes[i];
                if (!l.done && !l.waiting) run_lane(l), moved = true;
            }
            for (int w : worder) moved |= collective(w);
        }
        moved |= hopper_round(nthreads);
        size_t live = 0, at_bar = 0;
        for (size_t i = 0; i < nthreads; i++) {
            const Lane &l = s.lanes[i];
            live += !l.done, at_bar += !l.done && l.waiting && l.op == OP_SYNCTHREADS;
        }
        if (live == 0) {
            if (!s.bulk.empty())
                error("%s: %ld TMA loads still in flight when the block ended", "cp.async.bulk.tensor",
                      (long)s.bulk.size());
            s.bulk.clear(), s.bulk_due.clear();
            break;
        }
        if (at_bar == live) { /* __syncthreads: every live thread is there */
            for (size_t i = 0; i < nthreads; i++) s.lanes[i].waiting = false;
            continue;
        }
        if (!moved) {
            error("%s: no thread can move (a collective some thread never reaches)", "deadlock");
            for (size_t i = 0; i < nthreads; i++) s.lanes[i].stuck = !s.lanes[i].done;
            break;
        }
    }
}

/* Runs body (a call of the kernel function) as a grid of blocks, one after another. */
static inline void launch(dim3 grid, dim3 block, size_t smem_bytes, const std::function<void()> &body) {
    State &s = st();
    const size_t nthreads = (size_t)block.x * block.y * block.z;
    if (nthreads == 0 || nthreads % 32 || nthreads > 1024) {
        error("%s: block of %ld threads (a multiple of 32 up to 1024 is emulated)", "launch", (long)nthreads);
        return;
    }
    std::vector<unsigned char> smem(smem_bytes + 16);
    s.smem = smem.data();
    s.smem_bytes = smem_bytes;
    s.grid = grid, s.block = block, s.body = &body;
    for (unsigned z = 0; z < grid.z; z++)
        for (unsigned y = 0; y < grid.y; y++)
            for (unsigned x = 0; x < grid.x; x++) {
                s.bidx = uint3{x, y, z};
                memset(s.smem, 0xff, smem_bytes);
                s.bars.clear(), s.bulk.clear(), s.bulk_due.clear();
                s.round = 0;
                run_block(nthreads);
            }
    s.smem = nullptr, s.body = nullptr;
}

/* Where a launch goes: unset, it runs at once; a CUDA runtime emulation (tests/emu/cuda_emu.hpp)
 * sets it to queue the launch on its stream (or into the graph being captured there). */
typedef std::function<void(const void *stream, std::function<void()> run)> submit_fn;
static inline submit_fn &submit_hook() {
    static submit_fn h;
    return h;
}

/* A launch as BS_LAUNCH(grid, block, smem, stream, kernel)(args) writes it (dtype.h): the
 * launcher code of a kernel file (kernels/NAME.cu) runs as it is. The arguments are copied at
 * the call, as a real launch copies them. */
template <typename... P> struct launcher_t {
    void (*k)(P...);
    dim3 grid, block;
    size_t smem;
    const void *stream;
    template <typename... A> void operator()(A... a) const {
        void (*kk)(P...) = k;
        const dim3 g = grid, b = block;
        const size_t sm = smem;
        std::function<void()> run = [=] { launch(g, b, sm, [&] { kk(a...); }); };
        if (submit_hook())
            submit_hook()(stream, std::move(run));
        else
            run();
    }
};
template <typename... P>
static inline launcher_t<P...> launcher(void (*k)(P...), dim3 grid, dim3 block, size_t smem, const void *stream) {
    return launcher_t<P...>{k, grid, block, smem, stream};
}

} // namespace bs_emu

/* ---- what the kernel sees ---- */

#define threadIdx (bs_emu::st().cur->tid)
#define blockIdx (bs_emu::st().bidx)
#define blockDim (bs_emu::st().block)
#define gridDim (bs_emu::st().grid)
#define BS_DYN_SMEM(name) unsigned char *name = bs_emu::st().smem
#define BS_LAUNCH(grid, block, smem, stream, ...)                                                                      \
    bs_emu::launcher(&__VA_ARGS__, grid, block, smem, (const void *)(stream))

/* the launchers' error check: a launch the emulator found wrong reads as a failed launch */
extern "C" cudaError_t cudaGetLastError(void) {
    return bs_emu::errors() ? cudaErrorLaunchFailure : cudaSuccess;
}

static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline float rsqrtf(float x) { /* the device's is within 2 ulp of this */
    return 1.0f / sqrtf(x);
}

using std::max;
using std::min;

static inline void __syncthreads() {
    bs_emu::arrive(bs_emu::OP_SYNCTHREADS);
}
static inline void __syncwarp(unsigned mask = 0xffffffffu) {
    if (mask != 0xffffffffu) bs_emu::error("%s: partial mask", "__syncwarp");
    bs_emu::arrive(bs_emu::OP_SYNCWARP);
}
/* a shuffle: OP_SHFL reads lane (lane ^ m), OP_SHFL_IDX lane m */
static inline float bs_emu_shfl(unsigned mask, float v, int m, int op) {
    if (mask != 0xffffffffu) bs_emu::error("%s: partial mask", bs_emu::op_name(op));
    bs_emu::Lane *l = bs_emu::st().cur;
    l->shfl_v = v, l->shfl_m = m;
    bs_emu::arrive(op);
    return bs_emu::st().cur->shfl_out;
}
static inline float __shfl_xor_sync(unsigned mask, float v, int m) {
    return bs_emu_shfl(mask, v, m, bs_emu::OP_SHFL);
}
static inline float __shfl_sync(unsigned mask, float v, int src) {
    return bs_emu_shfl(mask, v, src, bs_emu::OP_SHFL_IDX);
}

/* mma_ops.cuh's wrappers */
static inline void cp_async16(void *dst, const void *src, int src_bytes) {
    bs_emu::Lane *l = bs_emu::st().cur;
    if (!bs_emu::in_smem(dst, 16) || ((uintptr_t)dst & 15)) {
        bs_emu::error("%s: destination outside shared memory or not 16-byte aligned", "cp.async");
        return;
    }
    if (src_bytes < 0 || src_bytes > 16) {
        bs_emu::error("%s: src-size %ld", "cp.async", src_bytes);
        return;
    }
    if (src_bytes > 0 && (((uintptr_t)src & 15) || !bs_emu::in_region(src, (size_t)src_bytes))) {
        bs_emu::error("%s: source outside the registered global memory or not 16-byte aligned", "cp.async");
        return;
    }
    if (bs_emu::st().opt.late_copies) {
        l->pending.push_back({dst, src, src_bytes, -1});
        return;
    }
    if (src_bytes) memcpy(dst, src, (size_t)src_bytes);
    memset((unsigned char *)dst + src_bytes, 0, (size_t)(16 - src_bytes));
}
static inline void cp_async_commit() {
    bs_emu::Lane *l = bs_emu::st().cur;
    bool any = false;
    for (auto &c : l->pending)
        if (c.group < 0) c.group = l->groups, any = true;
    l->groups++;
    (void)any;
}
/* cp.async.wait_group N: every committed group but the N most recent has landed */
template <int N> static inline void cp_async_wait() {
    bs_emu::Lane *l = bs_emu::st().cur;
    std::vector<bs_emu::Copy> keep;
    for (auto &c : l->pending) {
        if (c.group >= 0 && c.group < l->groups - N) {
            if (c.bytes) memcpy(c.dst, c.src, (size_t)c.bytes);
            memset((unsigned char *)c.dst + c.bytes, 0, (size_t)(16 - c.bytes));
        } else {
            keep.push_back(c);
        }
    }
    l->pending.swap(keep);
}
static inline void bs_emu_ldsm(uint32_t (&r)[4], const void *p, int op) {
    bs_emu::st().cur->ldsm_p = p;
    bs_emu::arrive(op);
    memcpy(r, bs_emu::st().cur->ldsm_out, sizeof r);
}
static inline void ldsm_x4(uint32_t (&r)[4], const void *p) {
    bs_emu_ldsm(r, p, bs_emu::OP_LDSM);
}
static inline void ldsm_x4_trans(uint32_t (&r)[4], const void *p) {
    bs_emu_ldsm(r, p, bs_emu::OP_LDSM_T);
}
static inline void bs_emu_mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, int op) {
    bs_emu::Lane *l = bs_emu::st().cur;
    memcpy(l->a, a, sizeof l->a), memcpy(l->d, d, sizeof l->d);
    l->b0 = b0, l->b1 = b1;
    bs_emu::arrive(op);
    memcpy(d, bs_emu::st().cur->d, sizeof bs_emu::st().cur->d);
}
template <typename T> struct mma_t;
template <> struct mma_t<__nv_bfloat16> {
    static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        bs_emu_mma(d, a, b0, b1, bs_emu::OP_MMA_BF16);
    }
};
template <> struct mma_t<__half> {
    static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        bs_emu_mma(d, a, b0, b1, bs_emu::OP_MMA_F16);
    }
};
template <> struct mma_t<__nv_fp8_e4m3> { /* m16n8k32 */
    static void run(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
        bs_emu_mma(d, a, b0, b1, bs_emu::OP_MMA_E4M3);
    }
};

/* ---- nvcuda::wmma, 16x16x16 (kernels/attention.cu's WMMA kernel) ----
 * A fragment's layout is opaque in CUDA; here lane l holds elements 8l..8l+7 of the tile in
 * row-major order, so element-wise code on x[] behaves as on the device. load/store touch only the
 * lane's own elements; mma_sync is a warp collective. */
namespace nvcuda {
namespace wmma {
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
template <typename Use, int M, int N, int K, typename T, typename Layout = void> struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator has wmma 16x16x16 only");
    enum { num_elements = 8 };
    T x[8];
};
template <typename T> static inline float wmma_f(T v) {
    return (float)v;
}
static inline float wmma_f(__half v) {
    return __half2float(v);
}
static inline float wmma_f(__nv_bfloat16 v) {
    return __bfloat162float(v);
}
template <typename Use, typename T, typename Layout, typename P>
static inline void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout> &f, const P *p, unsigned ldm) {
    const int lane = (int)(bs_emu::st().cur->id & 31);
    for (int i = 0; i < 8; i++) {
        const int e = 8 * lane + i, r = e / 16, c = e % 16;
        f.x[i] = std::is_same<Layout, col_major>::value ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}
template <typename T>
static inline void load_matrix_sync(fragment<accumulator, 16, 16, 16, T> &f, const T *p, unsigned ldm, layout_t l) {
    const int lane = (int)(bs_emu::st().cur->id & 31);
    for (int i = 0; i < 8; i++) {
        const int e = 8 * lane + i, r = e / 16, c = e % 16;
        f.x[i] = l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c];
    }
}
template <typename T>
static inline void store_matrix_sync(T *p, const fragment<accumulator, 16, 16, 16, T> &f, unsigned ldm, layout_t l) {
    const int lane = (int)(bs_emu::st().cur->id & 31);
    for (int i = 0; i < 8; i++) {
        const int e = 8 * lane + i, r = e / 16, c = e % 16;
        (l == mem_col_major ? p[(size_t)c * ldm + r] : p[(size_t)r * ldm + c]) = f.x[i];
    }
}
template <typename T, typename V> static inline void fill_fragment(fragment<accumulator, 16, 16, 16, T> &f, V v) {
    for (int i = 0; i < 8; i++) f.x[i] = (T)v;
}
template <typename TA, typename LA, typename LB>
static inline void
mma_sync(fragment<accumulator, 16, 16, 16, float> &d, const fragment<matrix_a, 16, 16, 16, TA, LA> &a,
         const fragment<matrix_b, 16, 16, 16, TA, LB> &b, const fragment<accumulator, 16, 16, 16, float> &c) {
    bs_emu::Lane *l = bs_emu::st().cur;
    for (int i = 0; i < 8; i++) l->wa[i] = wmma_f(a.x[i]), l->wb[i] = wmma_f(b.x[i]), l->wc[i] = c.x[i];
    bs_emu::arrive(bs_emu::OP_WMMA);
    l = bs_emu::st().cur;
    for (int i = 0; i < 8; i++) d.x[i] = l->wc[i];
}
} // namespace wmma
} // namespace nvcuda

#endif
