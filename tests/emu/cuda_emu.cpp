/* The CUDA engine on the CPU: the CUDA runtime, cuBLASLt and cuDNN calls that worker/engine_cuda.c
 * and the GPU tests make, emulated on the host, with every kernel of kernels/ run from its own
 * source on the warp emulator (simt.hpp). Linked instead of libcudart/libcublasLt/libcudnn into
 * copies of the GPU tests (CTest label unit, names *_on_emu), so the engine's host code (plans,
 * graphs, streams and events, the two batches in flight, the CLS-row compaction, the self-checks,
 * fp8 scales) runs in CI where no GPU exists.
 *
 * What is emulated, and how strictly:
 *  - Device memory is host memory (256-byte aligned, like cudaMalloc). Every copy and memset is
 *    checked against the live allocations: a device range outside them, or a "host" pointer that
 *    is device memory, is cudaErrorInvalidValue and a message on stderr.
 *  - Streams are queues that run only when something waits for them (a synchronize, an event
 *    query or synchronize, a blocking copy, cudaFree): a pinned host buffer changed before the
 *    copy that reads it has run, or a result read before its stream was waited for, gives
 *    different numbers, as it can on a GPU. Copies from pageable memory are staged at the call and
 *    copies to it return when done, as CUDA's are. The legacy stream (0) runs at once after the
 *    blocking streams.
 *  - Events mark a position in a stream; cudaStreamWaitEvent makes a stream run the other stream
 *    up to that mark first.
 *  - BS_EMU_INTERLEAVE=1: streams run as if concurrent, one op each in turn (run_until), so that
 *    work on two streams that shares a buffer without an event between gives other numbers.
 *  - Graph capture records the work queued on the capturing stream; a synchronizing call on it
 *    during capture invalidates the capture (cudaErrorStreamCaptureInvalidated at its end).
 *  - cuBLASLt: column-major layouts, TRANSA/TRANSB, the epilogues DEFAULT, BIAS, GELU, GELU_BIAS,
 *    RELU, RELU_BIAS (GELU in its tanh form, as cuBLASLt computes it), A/B/D scale pointers,
 *    bias data type; types f32 (no TF32), f16, bf16, and E4M3 A/B only transposed-A/non-transposed-B
 *    with C in f16/bf16/f32 and D in C's type or E4M3 (saturated). Anything else is
 *    CUBLAS_STATUS_NOT_SUPPORTED, as a missing algorithm is. Products accumulate in fp32 in 16
 *    partial sums, rounded once to the output type.
 *    BS_EMU_CUBLASLT_REFUSE (a comma list) makes it refuse more, as another host's cuBLASLt might,
 *    so that the engine's fallbacks run: `epilogue` (every epilogue but DEFAULT), `e4m3-out` (D in
 *    E4M3), `beta` (beta != 0, refused at launch as the H100's refusals came), `fp8` (E4M3 A/B).
 *  - cuDNN reports version 9.14 and refuses the backend graph (as the H100 host's did): the
 *    engine's SDPA path is refused and our kernels run.
 *  - gemm_ln_sm90_forward (kernels/gemm_ln.h: the Hopper GEMM with the LayerNorm in its epilogue,
 *    TMA and wgmma, which the warp emulator cannot run) is a library call here too: by default
 *    cudaErrorNoKernelImageForDevice, as on a GPU without sm_90a code; BS_EMU_GEMM_LN=cpu runs its
 *    CPU twin (fp32 products, double statistics, the output rounded to its type and the E4M3 copy
 *    made from that) on the stream, so the engine's fused path runs; BS_EMU_GEMM_LN=wrong the same
 *    without the residual, a kernel bug the engine's start-up check must catch.
 *  - gemm_sm90_forward (kernels/gemm_sm90.h: our persistent Hopper GEMM, TMA and wgmma as well)
 *    likewise: cudaErrorNoKernelImageForDevice by default; BS_EMU_GEMM_SM90=kernel runs the kernel
 *    itself, from its source, on the warp emulator's mbarriers, TMA and wgmma (tests/emu/simt.hpp;
 *    the tensor maps from cudaGetDriverEntryPointByVersion's emulated encoder); =cpu its CPU twin
 *    (fp32 products summed in order, the epilogue in fp32, rounded once to the output type, E4M3
 *    through the D scale), so the engine's BERTSTREAM_GEMM_KERNEL=sm90 path runs;
 *    (both forms alike: the twin ignores the form and the CTA count but for the shapes they take);
 *    BS_EMU_GEMM_SM90=wrong the same with the tile's last column never written (a kernel bug the
 *    engine's start-up check must catch).
 *  - BS_EMU_STATS=1: at exit, one line on stderr with the number of kernels and cuBLASLt matmuls
 *    that ran (graph replays included; work still queued at exit is not counted), so a test can
 *    check what a forward pass runs (tests/cli/test_cuda_cli_on_emu.sh: bench --skip).
 * Not modelled: timing (events give host time), overlap within an op (a kernel runs whole), and
 * the tensor cores' own rounding. */
#include "emu/simt.hpp"

#include <cublasLt.h>
#include <cudnn.h>

#include <sstream>
#include <string>

/* The kernels' cudaFuncSetAttribute(kernel, ...) takes the kernel function itself: the runtime
 * header's template overload is nvcc's. The largest opt-in of an H100 is accepted. */
template <typename F> static inline cudaError_t cudaFuncSetAttribute(F *, enum cudaFuncAttribute a, int v) {
    return a == cudaFuncAttributeMaxDynamicSharedMemorySize && v <= 227 * 1024 ? cudaSuccess : cudaErrorInvalidValue;
}

#include "attention.cu"
#include "attention_cudnn.cu"
#include "attention_mma.cu"
#include "convert.cu"
#include "cuda_check.cu"
#include "gelu.cu"
#include "gemm_ln_sm90.cu" /* gemm_ln_sm90_shape_ok; gemm_ln_sm90_forward is emulated below */
/* gemm_sm90_shape_ok, and the kernel itself on the warp emulator's Hopper model, its launcher
 * renamed: gemm_sm90_forward is the library call below, which runs it (BS_EMU_GEMM_SM90=kernel) or
 * its CPU twin */
#define BS_EMU_SM90 1
#define gemm_sm90_forward gemm_sm90_forward_kernel
#include "gemm_sm90.cu"
#undef gemm_sm90_forward
#include "layernorm.cu"
#include "pooling.cu"

#include <stdarg.h>

#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>

/* ---------------------------------------------------------------- runtime ---- */

namespace cuda_emu {

typedef std::function<void()> op_fn;

struct graph {
    std::vector<op_fn> ops;
};

} // namespace cuda_emu

struct CUstream_st {
    struct op {
        cuda_emu::op_fn f;         /* the work; empty for a wait */
        CUstream_st *on = nullptr; /* a wait (cudaStreamWaitEvent): blocked until on has run seq ops */
        long seq = 0;
    };
    std::deque<op> q;
    long enq = 0, done = 0; /* ops queued and run so far */
    bool blocking = true;
    cuda_emu::graph *cap = nullptr; /* the graph being captured */
    bool cap_broken = false;
};
struct CUevent_st {
    CUstream_st *s = nullptr;
    long seq = 0;
    double t = 0; /* host seconds when the mark ran */
};
struct CUgraph_st : cuda_emu::graph {};
struct CUgraphExec_st : cuda_emu::graph {};

namespace cuda_emu {

static std::recursive_mutex mu; /* the engine is used from one thread at a time; tests may not be */
static std::map<uintptr_t, size_t> allocs, pinned;
static std::vector<CUstream_st *> streams;
static size_t allocated = 0;
static long reported = 0;
static long ran_kernels = 0, ran_matmuls = 0; /* BS_EMU_STATS: kernels and cuBLASLt matmuls run (not queued) */
static const size_t TOTAL = (size_t)80 << 30;

static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

static cudaError_t fail(cudaError_t e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static cudaError_t fail(cudaError_t e, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cuda_emu: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    return e;
}

/* the end of the range of m (address -> bytes) that holds address p, or 0 */
static uintptr_t range_end(const std::map<uintptr_t, size_t> &m, const void *p) {
    auto it = m.upper_bound((uintptr_t)p);
    if (it == m.begin()) return 0;
    --it;
    const uintptr_t end = it->first + it->second;
    return (uintptr_t)p < end ? end : 0;
}

/* [p, p + n) inside one device allocation; *partly: it starts in one and runs past its end */
static bool device_range(const void *p, size_t n, bool *partly = nullptr) {
    const uintptr_t end = range_end(allocs, p);
    if (partly) *partly = end && (uintptr_t)p + n > end;
    return end && (uintptr_t)p + n <= end;
}

static bool is_pinned(const void *p, size_t n) {
    const uintptr_t end = range_end(pinned, p);
    return end && (uintptr_t)p + n <= end;
}

/* a kernel error the emulator found, once, on stderr; sticky, as a device fault is */
static cudaError_t sticky() {
    if (bs_emu::errors() == 0) return cudaSuccess;
    if (reported != bs_emu::errors()) {
        reported = bs_emu::errors();
        fprintf(stderr, "cuda_emu: kernel error: %s\n", bs_emu::first_error());
    }
    return cudaErrorLaunchFailure;
}

/* runs s's next op (a wait whose mark has been reached just leaves the queue) */
static void step(CUstream_st *s) {
    CUstream_st::op o = std::move(s->q.front());
    s->q.pop_front();
    if (o.f) o.f();
    s->done++;
}

/* s's next op is a wait whose mark the other stream has not reached */
static bool blocked(const CUstream_st *s) {
    const CUstream_st::op &o = s->q.front();
    return o.on && o.on->done < o.seq;
}

/* BS_EMU_INTERLEAVE=1: while a stream runs, every other stream with work queued (and not blocked
 * by a wait) runs one op per op of it, as concurrent streams may on a GPU, so that two streams
 * sharing a buffer without an event between them give wrong numbers instead of passing because
 * each ran to its end before the other began. */
static bool interleave() {
    static const int on = [] {
        const char *v = getenv("BS_EMU_INTERLEAVE");
        return v && !strcmp(v, "1");
    }();
    return on;
}

/* runs s until it has run seq ops (or has none left); a wait first runs the stream it waits on */
static void run_until(CUstream_st *s, long seq) {
    while (s->done < seq && !s->q.empty()) {
        if (interleave())
            for (size_t i = 0; i < streams.size(); i++) {
                CUstream_st *o = streams[i];
                if (o != s && !o->q.empty() && !o->cap && !blocked(o)) step(o);
            }
        if (s->done >= seq || s->q.empty()) break;
        if (blocked(s)) {
            CUstream_st *on = s->q.front().on;
            const long mark = s->q.front().seq;
            run_until(on, mark);
            if (on->done < mark) break; /* cannot be reached: nothing is queued up to it */
            continue;
        }
        step(s);
    }
}
static void drain(CUstream_st *s) {
    run_until(s, s->enq);
}
static void drain_all(bool blocking_only) {
    for (CUstream_st *s : streams)
        if (!blocking_only || s->blocking) drain(s);
}

/* queues f on s: into the graph s captures, at once on the legacy stream, else in order */
static void submit(CUstream_st *s, op_fn f) {
    if (!s) {
        drain_all(true);
        f();
        return;
    }
    if (s->cap) {
        s->cap->ops.push_back(std::move(f));
        return;
    }
    s->q.push_back({std::move(f)});
    s->enq++;
}

/* a synchronizing call on a capturing stream breaks the capture, as on a GPU */
static bool capturing(CUstream_st *s, const char *what) {
    if (s && s->cap) {
        s->cap_broken = true;
        fail(cudaErrorStreamCaptureUnsupported, "%s on a stream being captured", what);
        return true;
    }
    return false;
}

static void install() {
    static bool done = false;
    if (done) return;
    done = true;
    bs_emu::reset(bs_emu::Options{});
    bs_emu::submit_hook() = [](const void *stream, std::function<void()> run) {
        submit((CUstream_st *)stream, [run = std::move(run)] {
            ran_kernels++;
            run();
        });
    };
    const char *stats = getenv("BS_EMU_STATS");
    if (stats && !strcmp(stats, "1"))
        atexit([] { fprintf(stderr, "cuda_emu: ran kernels=%ld matmuls=%ld\n", ran_kernels, ran_matmuls); });
}

} // namespace cuda_emu

using namespace cuda_emu;

#define LOCK std::lock_guard<std::recursive_mutex> lock_(cuda_emu::mu)

extern "C" {

cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
    LOCK;
    install();
    return d == 0 ? cudaSuccess : cudaErrorInvalidDevice;
}
cudaError_t cudaGetDevice(int *d) {
    *d = 0;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(struct cudaDeviceProp *p, int d) {
    if (d != 0) return cudaErrorInvalidDevice;
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "SIMT emulator (sm_90)");
    p->major = 9, p->minor = 0;
    p->totalGlobalMem = TOTAL;
    p->multiProcessorCount = 132;
    p->sharedMemPerBlock = 48 * 1024;
    p->sharedMemPerBlockOptin = 227 * 1024;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *v, enum cudaDeviceAttr a, int d) {
    if (d != 0) return cudaErrorInvalidDevice;
    switch (a) {
    case cudaDevAttrComputeCapabilityMajor:
        *v = 9;
        return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor:
        *v = 0;
        return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin:
        *v = 227 * 1024;
        return cudaSuccess;
    case cudaDevAttrMultiProcessorCount:
        *v = 132;
        return cudaSuccess;
    default:
        return fail(cudaErrorInvalidValue, "cudaDeviceGetAttribute(%d) is not emulated", (int)a);
    }
}
/* the driver entry point the Hopper kernels' launchers ask for: the emulator's tensor-map encoder */
cudaError_t cudaGetDriverEntryPointByVersion(const char *sym, void **fn, unsigned int, unsigned long long,
                                             cudaDriverEntryPointQueryResult *q) {
    const bool ok = !strcmp(sym, "cuTensorMapEncodeTiled");
    *fn = ok ? (void *)&bs_emu::encode_tiled : nullptr;
    if (q) *q = ok ? cudaDriverEntryPointSuccess : cudaDriverEntryPointSymbolNotFound;
    return cudaSuccess;
}
const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess:
        return "no error";
    case cudaErrorInvalidValue:
        return "invalid argument";
    case cudaErrorMemoryAllocation:
        return "out of memory";
    case cudaErrorLaunchFailure:
        return "unspecified launch failure (emulated kernel error)";
    case cudaErrorNotReady:
        return "device not ready";
    case cudaErrorStreamCaptureUnsupported:
        return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated:
        return "operation failed due to a previous error during capture";
    case cudaErrorInvalidDevice:
        return "invalid device ordinal";
    default:
        return "cuda_emu error";
    }
}
cudaError_t cudaMemGetInfo(size_t *free_b, size_t *total) {
    LOCK;
    *total = TOTAL;
    *free_b = TOTAL - allocated;
    return cudaSuccess;
}

cudaError_t cudaMalloc(void **p, size_t n) {
    LOCK;
    install();
    *p = nullptr;
    if (n == 0) return cudaSuccess;
    if (allocated + n > TOTAL) return cudaErrorMemoryAllocation;
    void *q = aligned_alloc(256, (n + 255) / 256 * 256);
    if (!q) return cudaErrorMemoryAllocation;
    memset(q, 0xa5, n); /* not zeroed, as on a GPU */
    allocs[(uintptr_t)q] = n;
    allocated += n;
    bs_emu::global_region(q, n);
    *p = q;
    return cudaSuccess;
}
cudaError_t cudaFree(void *p) {
    LOCK;
    install();
    drain_all(false); /* cudaFree synchronizes the device */
    if (!p) return cudaSuccess;
    auto it = allocs.find((uintptr_t)p);
    if (it == allocs.end()) return fail(cudaErrorInvalidValue, "cudaFree(%p): not a device allocation", p);
    allocated -= it->second;
    auto &r = bs_emu::st().regions;
    for (size_t i = 0; i < r.size(); i++)
        if (r[i].first == (const unsigned char *)p) {
            r.erase(r.begin() + (long)i);
            break;
        }
    allocs.erase(it);
    free(p);
    return cudaSuccess;
}
cudaError_t cudaHostAlloc(void **p, size_t n, unsigned int flags) {
    LOCK;
    (void)flags;
    *p = aligned_alloc(256, (n ? n + 255 : 256) / 256 * 256);
    if (*p) pinned[(uintptr_t)*p] = n;
    return *p ? cudaSuccess : cudaErrorMemoryAllocation;
}
cudaError_t cudaMallocHost(void **p, size_t n) {
    return cudaHostAlloc(p, n, 0);
}
cudaError_t cudaFreeHost(void *p) {
    LOCK;
    drain_all(false); /* as cudaFree */
    pinned.erase((uintptr_t)p);
    free(p);
    return cudaSuccess;
}

static cudaError_t check_copy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k) {
    bool dp = false, sp = false;
    const bool dd = device_range(dst, n, &dp), sd = device_range(src, n, &sp);
    if (dp || sp)
        return fail(cudaErrorInvalidValue, "copy of %zu bytes %p -> %p runs past the end of a device allocation", n,
                    src, dst);
    const bool want_dd = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
    const bool want_sd = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
    if (k != cudaMemcpyDefault && (dd != want_dd || sd != want_sd))
        return fail(cudaErrorInvalidValue, "copy of %zu bytes %p -> %p: kind %d, but the %s is %s memory", n, src, dst,
                    (int)k, dd != want_dd ? "destination" : "source", (dd != want_dd ? dd : sd) ? "device" : "host");
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n, enum cudaMemcpyKind k, cudaStream_t s) {
    LOCK;
    if (n == 0) return cudaSuccess;
    cudaError_t e = check_copy(dst, src, n, k);
    if (e != cudaSuccess) return e;
    const bool from_host = !device_range(src, n), to_host = !device_range(dst, n);
    if (from_host && !is_pinned(src, n)) {
        /* pageable source: staged at the call, so the caller may reuse it once this returns */
        std::shared_ptr<std::vector<unsigned char>> st =
            std::make_shared<std::vector<unsigned char>>((const unsigned char *)src, (const unsigned char *)src + n);
        submit(s, [=] { memcpy(dst, st->data(), n); });
    } else {
        submit(s, [=] { memmove(dst, src, n); });
    }
    if (to_host && !is_pinned(dst, n) && s && !s->cap) drain(s); /* pageable destination: returns when done */
    return sticky();
}
cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k) {
    LOCK;
    if (n == 0) return cudaSuccess;
    cudaError_t e = check_copy(dst, src, n, k);
    if (e != cudaSuccess) return e;
    drain_all(true); /* the legacy stream: after the blocking streams' work, not the non-blocking ones' */
    memmove(dst, src, n);
    return sticky();
}
cudaError_t cudaMemsetAsync(void *p, int v, size_t n, cudaStream_t s) {
    LOCK;
    if (n == 0) return cudaSuccess;
    if (!device_range(p, n)) return fail(cudaErrorInvalidValue, "memset of %zu bytes at %p: not device memory", n, p);
    submit(s, [=] { memset(p, v, n); });
    return sticky();
}
cudaError_t cudaMemset(void *p, int v, size_t n) {
    return cudaMemsetAsync(p, v, n, 0);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
    LOCK;
    install();
    CUstream_st *x = new CUstream_st;
    x->blocking = !(flags & cudaStreamNonBlocking);
    streams.push_back(x);
    *s = x;
    return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t *s) {
    return cudaStreamCreateWithFlags(s, cudaStreamDefault);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    LOCK;
    if (!s) return cudaErrorInvalidValue;
    drain(s); /* its work still completes */
    streams.erase(std::find(streams.begin(), streams.end(), s));
    delete s->cap;
    delete s;
    return cudaSuccess;
}
/* the emulator runs a stream's work when it is waited for or queried: done on return either way */
static cudaError_t finish_stream(cudaStream_t s, const char *who) {
    LOCK;
    if (capturing(s, who)) return cudaErrorStreamCaptureUnsupported;
    if (s)
        drain(s);
    else
        drain_all(true);
    return sticky();
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    return finish_stream(s, "cudaStreamSynchronize");
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
    return finish_stream(s, "cudaStreamQuery");
}
cudaError_t cudaDeviceSynchronize(void) {
    LOCK;
    for (CUstream_st *s : streams)
        if (capturing(s, "cudaDeviceSynchronize")) return cudaErrorStreamCaptureUnsupported;
    drain_all(false);
    return sticky();
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
    (void)flags;
    *e = new CUevent_st;
    return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t *e) {
    return cudaEventCreateWithFlags(e, 0);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    LOCK;
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    LOCK;
    if (s && s->cap) {
        s->cap_broken = true;
        return fail(cudaErrorStreamCaptureUnsupported, "cudaEventRecord inside a capture is not emulated");
    }
    if (!s) {
        drain_all(true);
        e->s = nullptr, e->seq = 0, e->t = now();
        return sticky();
    }
    e->s = s;
    submit(s, [e] { e->t = now(); });
    e->seq = s->enq;
    return sticky();
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
    LOCK;
    if (e->s) {
        if (capturing(e->s, "cudaEventSynchronize")) return cudaErrorStreamCaptureUnsupported;
        run_until(e->s, e->seq);
    }
    return sticky();
}
/* runs the stream up to the event: a poll always finds it done */
cudaError_t cudaEventQuery(cudaEvent_t e) {
    return cudaEventSynchronize(e);
}
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
    *ms = (float)((b->t - a->t) * 1e3);
    return cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
    LOCK;
    (void)flags;
    if (!e->s || e->s == s) return cudaSuccess;
    if (s && s->cap) {
        s->cap_broken = true;
        return fail(cudaErrorStreamCaptureIsolation,
                    "a captured stream waits on an event recorded outside the capture");
    }
    if (!s) { /* the legacy stream runs at once */
        run_until(e->s, e->seq);
        return cudaSuccess;
    }
    s->q.push_back({op_fn(), e->s, e->seq});
    s->enq++;
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, enum cudaStreamCaptureMode mode) {
    LOCK;
    (void)mode;
    if (!s || s->cap) return cudaErrorInvalidValue;
    drain(s);
    s->cap = new graph;
    s->cap_broken = false;
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *g) {
    LOCK;
    if (!s || !s->cap) return cudaErrorInvalidValue;
    CUgraph_st *x = new CUgraph_st;
    x->ops = std::move(s->cap->ops);
    delete s->cap;
    s->cap = nullptr;
    if (s->cap_broken) {
        delete x;
        *g = nullptr;
        return cudaErrorStreamCaptureInvalidated;
    }
    *g = x;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *x, cudaGraph_t g, unsigned long long flags) {
    (void)flags;
    CUgraphExec_st *e = new CUgraphExec_st;
    e->ops = g->ops;
    *x = e;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t x, cudaStream_t s) {
    LOCK;
    for (const op_fn &f : x->ops) submit(s, f); /* op by op: BS_EMU_INTERLEAVE can run others between */
    return sticky();
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t x) {
    LOCK;
    drain_all(false); /* a queued launch still refers to it */
    delete x;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t g) {
    delete g;
    return cudaSuccess;
}

} // extern "C"

/* ---------------------------------------------------------------- cuBLASLt ---- */

struct cublasLtContext {
    int unused;
};

namespace cuda_emu {

struct lt_desc {
    cublasComputeType_t compute;
    cudaDataType_t scale;
    int32_t transa = CUBLAS_OP_N, transb = CUBLAS_OP_N;
    uint32_t epilogue = CUBLASLT_EPILOGUE_DEFAULT;
    const void *bias = nullptr;
    int32_t bias_type = -1; /* -1: the default (D's type; C's when D is E4M3) */
    const float *a_scale = nullptr, *b_scale = nullptr, *d_scale = nullptr;
    int8_t fast_accum = 0;
};
struct lt_layout {
    cudaDataType_t type;
    uint64_t rows, cols;
    int64_t ld;
};

static size_t type_size(cudaDataType_t t) {
    return t == CUDA_R_32F ? 4 : t == CUDA_R_16F || t == CUDA_R_16BF ? 2 : t == CUDA_R_8F_E4M3 ? 1 : 0;
}
static float load(const void *p, cudaDataType_t t, size_t i) {
    switch (t) {
    case CUDA_R_32F:
        return ((const float *)p)[i];
    case CUDA_R_16F:
        return __half2float(((const __half *)p)[i]);
    case CUDA_R_16BF:
        return __bfloat162float(((const __nv_bfloat16 *)p)[i]);
    default:
        return (float)((const __nv_fp8_e4m3 *)p)[i];
    }
}
static void store(void *p, cudaDataType_t t, size_t i, float v) {
    switch (t) {
    case CUDA_R_32F:
        ((float *)p)[i] = v;
        break;
    case CUDA_R_16F:
        ((__half *)p)[i] = __float2half_rn(v);
        break;
    case CUDA_R_16BF:
        ((__nv_bfloat16 *)p)[i] = __float2bfloat16_rn(v);
        break;
    default:
        ((__nv_fp8_storage_t *)p)[i] = __nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3);
        break;
    }
}

enum { REFUSE_EPILOGUE = 1, REFUSE_E4M3_OUT = 2, REFUSE_BETA = 4, REFUSE_FP8 = 8 };

/* BS_EMU_CUBLASLT_REFUSE, read once; an unknown word is reported and ignored */
static unsigned refused() {
    static const unsigned bits = [] {
        unsigned b = 0;
        const char *v = getenv("BS_EMU_CUBLASLT_REFUSE");
        std::stringstream all(v ? v : "");
        for (std::string w; std::getline(all, w, ',');) {
            if (w == "epilogue")
                b |= REFUSE_EPILOGUE;
            else if (w == "e4m3-out")
                b |= REFUSE_E4M3_OUT;
            else if (w == "beta")
                b |= REFUSE_BETA;
            else if (w == "fp8")
                b |= REFUSE_FP8;
            else if (!w.empty())
                fprintf(stderr, "cublas_emu: BS_EMU_CUBLASLT_REFUSE: unknown '%s' ignored\n", w.c_str());
        }
        return b;
    }();
    return bits;
}

/* what the emulated cuBLASLt runs; NOT_SUPPORTED is "no algorithm", as the real one says */
static cublasStatus_t validate(const lt_desc &d, const lt_layout &a, const lt_layout &b, const lt_layout &c,
                               const lt_layout &o) {
    if (d.compute != CUBLAS_COMPUTE_32F || d.scale != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
    const unsigned no = refused();
    if ((no & REFUSE_EPILOGUE) && d.epilogue != CUBLASLT_EPILOGUE_DEFAULT) return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((no & REFUSE_E4M3_OUT) && o.type == CUDA_R_8F_E4M3) return CUBLAS_STATUS_NOT_SUPPORTED;
    if ((no & REFUSE_FP8) && a.type == CUDA_R_8F_E4M3) return CUBLAS_STATUS_NOT_SUPPORTED;
    const uint64_t m = o.rows, n = o.cols;
    const uint64_t am = d.transa == CUBLAS_OP_N ? a.rows : a.cols, ak = d.transa == CUBLAS_OP_N ? a.cols : a.rows;
    const uint64_t bk = d.transb == CUBLAS_OP_N ? b.rows : b.cols, bn = d.transb == CUBLAS_OP_N ? b.cols : b.rows;
    if (am != m || bn != n || ak != bk || c.rows != m || c.cols != n) return CUBLAS_STATUS_INVALID_VALUE;
    if (a.ld < (int64_t)a.rows || b.ld < (int64_t)b.rows || c.ld < (int64_t)c.rows || o.ld < (int64_t)o.rows)
        return CUBLAS_STATUS_INVALID_VALUE;
    if (a.type != b.type) return CUBLAS_STATUS_NOT_SUPPORTED;
    const bool f8 = a.type == CUDA_R_8F_E4M3;
    if (f8) {
        if (d.transa != CUBLAS_OP_T || d.transb != CUBLAS_OP_N) return CUBLAS_STATUS_NOT_SUPPORTED; /* "TN" only */
        if (c.type != CUDA_R_16BF && c.type != CUDA_R_16F && c.type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
        if (o.type != c.type && !(o.type == CUDA_R_8F_E4M3 && c.type != CUDA_R_32F)) return CUBLAS_STATUS_NOT_SUPPORTED;
        if (a.ld % 16 || b.ld % 16) return CUBLAS_STATUS_NOT_SUPPORTED; /* 16-byte leading dimensions */
    } else {
        if (a.type != CUDA_R_32F && a.type != CUDA_R_16F && a.type != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
        if (c.type != o.type || (c.type != a.type && c.type != CUDA_R_32F)) return CUBLAS_STATUS_NOT_SUPPORTED;
        if (d.a_scale || d.b_scale || d.d_scale) return CUBLAS_STATUS_NOT_SUPPORTED; /* fp8 only */
    }
    if (o.type != CUDA_R_8F_E4M3 && d.d_scale) return CUBLAS_STATUS_NOT_SUPPORTED;
    switch (d.epilogue) {
    case CUBLASLT_EPILOGUE_DEFAULT:
    case CUBLASLT_EPILOGUE_RELU:
    case CUBLASLT_EPILOGUE_GELU:
        break;
    case CUBLASLT_EPILOGUE_BIAS:
    case CUBLASLT_EPILOGUE_RELU_BIAS:
    case CUBLASLT_EPILOGUE_GELU_BIAS: {
        if (!d.bias) return CUBLAS_STATUS_INVALID_VALUE;
        const int32_t bt = d.bias_type >= 0 ? d.bias_type : (o.type == CUDA_R_8F_E4M3 ? c.type : o.type);
        if (bt != CUDA_R_32F && bt != CUDA_R_16F && bt != CUDA_R_16BF) return CUBLAS_STATUS_NOT_SUPPORTED;
        if (f8 ? bt == CUDA_R_32F && c.type != CUDA_R_32F : bt != (o.type == CUDA_R_8F_E4M3 ? c.type : o.type))
            return CUBLAS_STATUS_NOT_SUPPORTED;
        break;
    }
    default:
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
    return CUBLAS_STATUS_SUCCESS;
}

/* a . b over k: reads only the host copies matmul() makes (their loads from device memory stay
 * checked), so the sanitizers may leave this inner loop alone: it is most of a GEMM's time */
__attribute__((no_sanitize("address", "undefined"))) static float dot16(const float *x, const float *y, size_t k) {
    float part[16] = {0};
    size_t kk = 0;
    for (; kk + 16 <= k; kk += 16)
        for (int u = 0; u < 16; u++) part[u] += x[kk + u] * y[kk + u];
    for (; kk < k; kk++) part[kk % 16] += x[kk] * y[kk];
    float acc = 0;
    for (int u = 0; u < 16; u++) acc += part[u];
    return acc;
}

static void matmul(const lt_desc d, const lt_layout la, const lt_layout lb, const lt_layout lc, const lt_layout lo,
                   float alpha, float beta, const void *A, const void *B, const void *C, void *D) {
    const size_t m = lo.rows, n = lo.cols;
    const size_t k = d.transa == CUBLAS_OP_N ? la.cols : la.rows;
    std::vector<float> a(m * k), b(n * k); /* op(A) rows and op(B) columns, contiguous in k */
    for (size_t i = 0; i < m; i++)
        for (size_t kk = 0; kk < k; kk++)
            a[i * k + kk] = load(A, la.type, d.transa == CUBLAS_OP_N ? i + kk * la.ld : kk + i * la.ld);
    for (size_t j = 0; j < n; j++)
        for (size_t kk = 0; kk < k; kk++)
            b[j * k + kk] = load(B, lb.type, d.transb == CUBLAS_OP_N ? kk + j * lb.ld : j + kk * lb.ld);
    const float s = alpha * (d.a_scale ? *d.a_scale : 1.0f) * (d.b_scale ? *d.b_scale : 1.0f);
    const float ds = d.d_scale ? *d.d_scale : 1.0f;
    const bool has_bias = d.epilogue & CUBLASLT_EPILOGUE_BIAS;
    const cudaDataType_t bt =
        (cudaDataType_t)(d.bias_type >= 0 ? d.bias_type : (lo.type == CUDA_R_8F_E4M3 ? lc.type : lo.type));
    for (size_t j = 0; j < n; j++)
        for (size_t i = 0; i < m; i++) {
            float v = s * dot16(&a[i * k], &b[j * k], k);
            if (beta != 0.0f && C) v += beta * load(C, lc.type, i + j * lc.ld);
            if (has_bias) v += load(d.bias, bt, i);
            if (d.epilogue & CUBLASLT_EPILOGUE_RELU) v = v > 0 ? v : 0;
            if (d.epilogue & CUBLASLT_EPILOGUE_GELU)
                v = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
            store(D, lo.type, i + j * lo.ld, lo.type == CUDA_R_8F_E4M3 ? v * ds : v);
        }
}

} // namespace cuda_emu

#define DESC(x) (*reinterpret_cast<cuda_emu::lt_desc *>(x))
#define LAYOUT(x) (*reinterpret_cast<const cuda_emu::lt_layout *>(x))

extern "C" {

cublasStatus_t cublasLtCreate(cublasLtHandle_t *h) {
    *h = new cublasLtContext;
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtDestroy(cublasLtHandle_t h) {
    delete h;
    return CUBLAS_STATUS_SUCCESS;
}
const char *cublasGetStatusString(cublasStatus_t s) {
    switch (s) {
    case CUBLAS_STATUS_SUCCESS:
        return "the operation completed successfully";
    case CUBLAS_STATUS_NOT_SUPPORTED:
        return "the functionality requested is not supported";
    case CUBLAS_STATUS_INVALID_VALUE:
        return "an invalid value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED:
        return "the GPU program failed to execute";
    default:
        return "cublas_emu status";
    }
}
cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t *d, cublasComputeType_t c, cudaDataType_t s) {
    cuda_emu::lt_desc *x = new cuda_emu::lt_desc;
    x->compute = c, x->scale = s;
    *d = reinterpret_cast<cublasLtMatmulDesc_t>(x);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t d) {
    delete reinterpret_cast<cuda_emu::lt_desc *>(d);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const void *buf,
                                              size_t n) {
    cuda_emu::lt_desc &x = DESC(d);
#define SET(field)                                                                                                     \
    do {                                                                                                               \
        if (n != sizeof x.field) return CUBLAS_STATUS_INVALID_VALUE;                                                   \
        memcpy(&x.field, buf, n);                                                                                      \
        return CUBLAS_STATUS_SUCCESS;                                                                                  \
    } while (0)
    switch (a) {
    case CUBLASLT_MATMUL_DESC_TRANSA:
        SET(transa);
    case CUBLASLT_MATMUL_DESC_TRANSB:
        SET(transb);
    case CUBLASLT_MATMUL_DESC_EPILOGUE:
        SET(epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER:
        SET(bias);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE:
        SET(bias_type);
    case CUBLASLT_MATMUL_DESC_A_SCALE_POINTER:
        SET(a_scale);
    case CUBLASLT_MATMUL_DESC_B_SCALE_POINTER:
        SET(b_scale);
    case CUBLASLT_MATMUL_DESC_D_SCALE_POINTER:
        SET(d_scale);
    case CUBLASLT_MATMUL_DESC_FAST_ACCUM:
        SET(fast_accum);
    default:
        fprintf(stderr, "cublas_emu: matmul attribute %d is not emulated\n", (int)a);
        return CUBLAS_STATUS_NOT_SUPPORTED;
    }
#undef SET
}
cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t *l, cudaDataType t, uint64_t rows, uint64_t cols,
                                          int64_t ld) {
    if (cuda_emu::type_size(t) == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
    *l = reinterpret_cast<cublasLtMatrixLayout_t>(new cuda_emu::lt_layout{t, rows, cols, ld});
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t l) {
    delete reinterpret_cast<cuda_emu::lt_layout *>(l);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t *p) {
    *p = reinterpret_cast<cublasLtMatmulPreference_t>(new size_t(0));
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t p) {
    delete reinterpret_cast<size_t *>(p);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t p,
                                                    cublasLtMatmulPreferenceAttributes_t a, const void *buf, size_t n) {
    if (a != CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES || n != sizeof(size_t)) return CUBLAS_STATUS_NOT_SUPPORTED;
    memcpy(reinterpret_cast<size_t *>(p), buf, n);
    return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t d, cublasLtMatrixLayout_t a,
                                              cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                              cublasLtMatrixLayout_t o, cublasLtMatmulPreference_t p, int want,
                                              cublasLtMatmulHeuristicResult_t *res, int *n) {
    (void)h, (void)p;
    *n = 0;
    const cublasStatus_t st = cuda_emu::validate(DESC(d), LAYOUT(a), LAYOUT(b), LAYOUT(c), LAYOUT(o));
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (want < 1) return CUBLAS_STATUS_INVALID_VALUE;
    memset(&res[0], 0, sizeof res[0]);
    res[0].algo.data[0] = 0x656d75; /* "emu" */
    res[0].state = CUBLAS_STATUS_SUCCESS;
    res[0].wavesCount = 1.0f;
    *n = 1;
    return CUBLAS_STATUS_SUCCESS;
}
/* gemm_ln_sm90_forward: see the head of this file */
/* the cuBLASLt emulation's element type for a bs_dtype (its load and store serve the twin too) */
static cudaDataType_t emu_type(bs_dtype t) {
    return t == BS_DT_F32 ? CUDA_R_32F : t == BS_DT_F16 ? CUDA_R_16F : t == BS_DT_BF16 ? CUDA_R_16BF : CUDA_R_8F_E4M3;
}
extern "C" cudaError_t gemm_ln_sm90_forward(void *out, void *q8, const float *q8_scale, const void *X, const void *W,
                                            int M, int K, int C, bs_dtype in, bs_dtype act, const float *sa,
                                            const float *sb, const float *bias, const void *res, const float *gamma,
                                            const float *beta, float eps, cudaStream_t s) {
    LOCK;
    const char *mode = getenv("BS_EMU_GEMM_LN");
    if (!mode || (strcmp(mode, "cpu") && strcmp(mode, "wrong"))) return cudaErrorNoKernelImageForDevice;
    const bool wrong = !strcmp(mode, "wrong");
    if (!gemm_ln_sm90_shape_ok(C, K, in, act) || M < 0 || !out || !X || !W || !bias || !res || !gamma || !beta ||
        (q8 && !q8_scale) || (in == BS_DT_E4M3 && (!sa || !sb)))
        return cudaErrorInvalidValue;
    auto al = [](const void *p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; };
    if (!al(X, 16) || !al(W, 16) || !al(out, 16) || !al(res, 16) || !al(q8, 16) || !al(bias, 8) || !al(gamma, 8) ||
        !al(beta, 8))
        return cudaErrorMisalignedAddress;
    if (M == 0) return cudaSuccess;
    const size_t as = bs_dtype_size(act), is = bs_dtype_size(in);
    if (!cuda_emu::device_range(X, (size_t)M * K * is) || !cuda_emu::device_range(W, (size_t)C * K * is) ||
        !cuda_emu::device_range(out, (size_t)M * C * as) || !cuda_emu::device_range(res, (size_t)M * C * as) ||
        (q8 && !cuda_emu::device_range(q8, (size_t)M * C))) {
        fprintf(stderr, "gemm_ln_emu: an operand is not inside device memory\n");
        return cudaErrorInvalidValue;
    }
    cuda_emu::submit(s, [=] {
        const float scale = in == BS_DT_E4M3 ? *sa * *sb : 1.0f, qs = q8 ? *q8_scale : 1.0f;
        std::vector<float> v((size_t)C);
        std::vector<float> xr((size_t)K);
        for (int t = 0; t < M; t++) { /* every input of row t is read before any output of it is written */
            for (int k = 0; k < K; k++) xr[k] = cuda_emu::load(X, emu_type(in), (size_t)t * K + k);
            double mean = 0, var = 0;
            for (int o = 0; o < C; o++) {
                float acc = 0;
                for (int k = 0; k < K; k++) acc += xr[k] * cuda_emu::load(W, emu_type(in), (size_t)o * K + k);
                v[o] = acc * scale + bias[o] + (wrong ? 0.0f : cuda_emu::load(res, emu_type(act), (size_t)t * C + o));
                mean += v[o];
            }
            mean /= C;
            for (int o = 0; o < C; o++) var += (v[o] - mean) * (v[o] - mean);
            const char *dbg = getenv("BS_GEMM_LN_DEBUG"); /* gemm_ln.h: v itself, no normalisation */
            const bool raw = dbg && !strcmp(dbg, "gemm");
            const float m = raw ? 0.0f : (float)mean, rstd = raw ? 1.0f : (float)(1.0 / sqrt(var / C + eps));
            for (int o = 0; o < C; o++) {
                cuda_emu::store(out, emu_type(act), (size_t)t * C + o, (v[o] - m) * rstd * gamma[o] + beta[o]);
                if (q8)
                    ((uint8_t *)q8)[(size_t)t * C + o] = __nv_cvt_float_to_fp8(
                        cuda_emu::load(out, emu_type(act), (size_t)t * C + o) / qs, __NV_SATFINITE, __NV_E4M3);
            }
        }
    });
    return cudaSuccess;
}

/* gemm_sm90_forward: see the head of this file */
extern "C" cudaError_t gemm_sm90_forward(void *Y, const void *X, const void *W, int M, int N, int K, bs_dtype in,
                                         bs_dtype act, const float *sa, const float *sb, const void *bias, int epi,
                                         const void *res, const float *dscale, int ctas, int form, cudaStream_t s) {
    LOCK;
    (void)ctas;
    const char *mode = getenv("BS_EMU_GEMM_SM90");
    if (mode && !strcmp(mode, "kernel"))
        return gemm_sm90_forward_kernel(Y, X, W, M, N, K, in, act, sa, sb, bias, epi, res, dscale, ctas, form, s);
    if (!mode || (strcmp(mode, "cpu") && strcmp(mode, "wrong"))) return cudaErrorNoKernelImageForDevice;
    const bool wrong = !strcmp(mode, "wrong");
    if (!gemm_sm90_shape_ok(N, K, in, act, dscale != NULL, epi, form) || M < 0) return cudaErrorInvalidValue;
    if (!Y || !X || !W || !bias || (epi == BS_GS_BIAS_RES && !res) || (in == BS_DT_E4M3 && (!sa || !sb)))
        return cudaErrorInvalidValue;
    auto al = [](const void *p, uintptr_t a) { return ((uintptr_t)p & (a - 1)) == 0; };
    if (!al(X, 16) || !al(W, 16) || !al(Y, 16) || !al(res, 16) || !al(bias, 4)) return cudaErrorMisalignedAddress;
    if (M == 0) return cudaSuccess;
    const size_t as = bs_dtype_size(act), is = bs_dtype_size(in), os = dscale ? 1 : as;
    if (!cuda_emu::device_range(X, (size_t)M * K * is) || !cuda_emu::device_range(W, (size_t)N * K * is) ||
        !cuda_emu::device_range(Y, (size_t)M * N * os) || !cuda_emu::device_range(bias, (size_t)N * as) ||
        (epi == BS_GS_BIAS_RES && !cuda_emu::device_range(res, (size_t)M * N * as))) {
        fprintf(stderr, "gemm_sm90_emu: an operand is not inside device memory\n");
        return cudaErrorInvalidValue;
    }
    cuda_emu::submit(s, [=] {
        const float scale = in == BS_DT_E4M3 ? *sa * *sb : 1.0f, ds = dscale ? *dscale : 1.0f;
        for (int t = 0; t < M; t++)
            for (int o = 0; o < N; o++) {
                if (wrong && o % 128 == 127) continue;
                float acc = 0;
                for (int k = 0; k < K; k++)
                    acc += cuda_emu::load(X, emu_type(in), (size_t)t * K + k) *
                           cuda_emu::load(W, emu_type(in), (size_t)o * K + k);
                float v = acc * scale + cuda_emu::load(bias, emu_type(act), (size_t)o);
                if (epi == BS_GS_BIAS_GELU)
                    v = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
                if (epi == BS_GS_BIAS_RES) v += cuda_emu::load(res, emu_type(act), (size_t)t * N + o);
                if (dscale)
                    ((uint8_t *)Y)[(size_t)t * N + o] = __nv_cvt_float_to_fp8(v * ds, __NV_SATFINITE, __NV_E4M3);
                else
                    cuda_emu::store(Y, emu_type(act), (size_t)t * N + o, v);
            }
    });
    return cudaSuccess;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t d, const void *alpha, const void *A,
                              cublasLtMatrixLayout_t a, const void *B, cublasLtMatrixLayout_t b, const void *beta,
                              const void *C, cublasLtMatrixLayout_t c, void *D, cublasLtMatrixLayout_t o,
                              const cublasLtMatmulAlgo_t *algo, void *ws, size_t ws_bytes, cudaStream_t s) {
    LOCK;
    (void)h, (void)ws, (void)ws_bytes;
    const cuda_emu::lt_desc x = DESC(d);
    const cuda_emu::lt_layout la = LAYOUT(a), lb = LAYOUT(b), lc = LAYOUT(c), lo = LAYOUT(o);
    cublasStatus_t st = cuda_emu::validate(x, la, lb, lc, lo);
    if (st != CUBLAS_STATUS_SUCCESS) return st;
    if (algo && algo->data[0] != 0x656d75) return CUBLAS_STATUS_INVALID_VALUE;
    const float al = *(const float *)alpha, be = *(const float *)beta;
    if (be != 0.0f && !C) return CUBLAS_STATUS_INVALID_VALUE;
    if (be != 0.0f && (cuda_emu::refused() & cuda_emu::REFUSE_BETA)) return CUBLAS_STATUS_NOT_SUPPORTED;
    /* every operand inside device memory */
    struct {
        const void *p;
        const cuda_emu::lt_layout *l;
        const char *name;
    } ops[4] = {{A, &la, "A"}, {B, &lb, "B"}, {be != 0.0f ? C : nullptr, &lc, "C"}, {D, &lo, "D"}};
    for (auto &op : ops) {
        if (!op.p) continue;
        const size_t bytes = ((op.l->cols - 1) * (size_t)op.l->ld + op.l->rows) * cuda_emu::type_size(op.l->type);
        if (!cuda_emu::device_range(op.p, bytes)) {
            fprintf(stderr, "cublas_emu: %s (%zu bytes at %p) is not inside device memory\n", op.name, bytes, op.p);
            return CUBLAS_STATUS_INVALID_VALUE;
        }
    }
    cuda_emu::submit(s, [=] {
        cuda_emu::ran_matmuls++;
        cuda_emu::matmul(x, la, lb, lc, lo, al, be, A, B, C, D);
    });
    return CUBLAS_STATUS_SUCCESS;
}

/* ---------------------------------------------------------------- cuDNN ---- */

struct cudnnContext {
    cudaStream_t s;
};

size_t cudnnGetVersion(void) {
    return 91400;
}
const char *cudnnGetErrorString(cudnnStatus_t s) {
    return s == CUDNN_STATUS_SUCCESS ? "CUDNN_STATUS_SUCCESS" : "CUDNN_STATUS_NOT_SUPPORTED (cudnn_emu: no backend)";
}
cudnnStatus_t cudnnCreate(cudnnHandle_t *h) {
    *h = new cudnnContext{nullptr};
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnDestroy(cudnnHandle_t h) {
    delete h;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnSetStream(cudnnHandle_t h, cudaStream_t s) {
    h->s = s;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t t, cudnnBackendDescriptor_t *d) {
    (void)t;
    *d = nullptr;
    return CUDNN_STATUS_NOT_SUPPORTED;
}
cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t d) {
    (void)d;
    return CUDNN_STATUS_SUCCESS;
}
cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t d) {
    (void)d;
    return CUDNN_STATUS_NOT_SUPPORTED;
}
cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t a,
                                       cudnnBackendAttributeType_t t, int64_t n, const void *v) {
    (void)d, (void)a, (void)t, (void)n, (void)v;
    return CUDNN_STATUS_NOT_SUPPORTED;
}
cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t const d, cudnnBackendAttributeName_t a,
                                       cudnnBackendAttributeType_t t, int64_t want, int64_t *n, void *v) {
    (void)d, (void)a, (void)t, (void)want, (void)v;
    if (n) *n = 0;
    return CUDNN_STATUS_NOT_SUPPORTED;
}
cudnnStatus_t cudnnBackendExecute(cudnnHandle_t h, cudnnBackendDescriptor_t p, cudnnBackendDescriptor_t v) {
    (void)h, (void)p, (void)v;
    return CUDNN_STATUS_NOT_SUPPORTED;
}

} // extern "C"
