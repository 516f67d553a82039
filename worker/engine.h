/* The encoder engine: one interface, two implementations (engine_cpu.c with
 * OpenBLAS, engine_cuda.c with cuBLASLt/cuDNN). Batches are padding-free: the
 * tokens of B sequences are packed back to back and cu_seqlens marks where each
 * sequence starts.
 *
 * Legend: B sequences in the batch, T total tokens (sum of lengths), C hidden,
 * NH heads, HS head size, I intermediate, L layers. */
#ifndef BS_ENGINE_H
#define BS_ENGINE_H

#include <stdint.h>

#include "common.h"
#include "model.h"

typedef enum { BS_PREC_AUTO, BS_PREC_FP32, BS_PREC_FP16, BS_PREC_BF16, BS_PREC_FP8 } bs_precision;
typedef enum { BS_FEATURE_POOLER, BS_FEATURE_CLS, BS_FEATURE_MEAN } bs_feature;

int bs_precision_parse(const char *s, bs_precision *out, char *err);
const char *bs_precision_name(bs_precision p);
int bs_feature_parse(const char *s, bs_feature *out, char *err);
const char *bs_feature_name(bs_feature f);

typedef struct {
    int n_seq;                 /* B */
    const int32_t *ids;        /* (T) token ids, sequences back to back */
    const int32_t *cu_seqlens; /* (B+1) cu_seqlens[0] = 0, cu_seqlens[B] = T */
} bs_batch;

/* Outputs wanted from a forward pass; NULL members are not computed/copied. */
typedef struct {
    float *pooler; /* (B, C) tanh(W h_CLS + b) */
    float *cls;    /* (B, C) h_CLS */
    float *mean;   /* (B, C) mean over the sequence's tokens */
    float *hidden; /* (T, C) last_hidden_state, packed */
} bs_outputs;

/* What a benchmark may leave out of every forward pass, to time the rest under the same sustained
 * load (bench --skip): the GEMMs (with their input casts and any epilogue fallback), attention, the
 * residual LayerNorms, or the rest (embeddings, the CLS rows' gather, pooling, the pooler). The
 * outputs are then meaningless, so nothing but bench sets it, and only the CUDA engine takes it
 * (engine_new refuses it on the CPU). */
enum { BS_SKIP_GEMM = 1, BS_SKIP_ATTENTION = 2, BS_SKIP_LAYERNORM = 4, BS_SKIP_OTHER = 8, BS_SKIP_ALL = 15 };
/* "gemm,attention" -> mask (the four names above, comma-separated, or "none" for 0) */
int bs_skip_parse(const char *s, unsigned *out, char *err);
/* mask -> "gemm,attention" ("none" for 0) into buf */
const char *bs_skip_name(unsigned skip, char *buf, size_t n);

typedef struct {
    const char *device;     /* "auto", "cpu", "cuda", "cuda:N" */
    bs_precision precision; /* AUTO: fp32 on CPU, bf16 on CUDA */
    int max_seqs;           /* largest B forward will be given */
    int max_tokens;         /* largest T */
    int max_seq_len;        /* longest sequence (<= max_positions) */
    unsigned skip;          /* BS_SKIP_*: benchmarks only (see above); 0 everywhere else */
} bs_engine_opts;

typedef struct bs_engine bs_engine;

/* Picks the implementation (auto = CUDA when a device is present, else CPU). The model must
 * outlive the engine. Errors are one line ("no CUDA device", "fp8 needs compute capability 8.9+"...). */
bs_engine *engine_new(const bs_model *m, const bs_engine_opts *opts, char *err);
int engine_forward(bs_engine *e, const bs_batch *b, const bs_outputs *out, char *err);
void engine_free(bs_engine *e);
const char *engine_describe(const bs_engine *e); /* "cpu fp32 openblas", "cuda:0 NVIDIA H100 bf16 sdpa=cudnn" */
bs_precision engine_precision(const bs_engine *e);
int engine_is_cuda(const bs_engine *e);

/* 1 when a forward of engine e (NULL: any engine) with these outputs runs its last layer on the
 * CLS rows only: neither the hidden states nor mean pooling asked for (pooler and cls need nothing
 * else), unless BERTSTREAM_LAST_LAYER=full (every row, as before: for comparison and diagnosis) or
 * the engine turned it off (its start-up self-check failed: bs_engine.cls_off). Both engines
 * then compute the last layer's keys and values over every row, its attention for the CLS query
 * alone, and the rest of the layer on B rows instead of T. Read at every call (the environment
 * may change). */
int engine_cls_only(const bs_engine *e, const bs_outputs *out);

/* ---- Two batches in flight ----
 *
 * engine_forward is host in, host out. The asynchronous pair below lets the caller keep the
 * device busy: while the GPU computes the batch in one slot, the host tokenizes the next batch,
 * submits it to the other slot (its inputs are staged and copied in while the first computes) and
 * collects the first one's features (copied out while the second computes).
 *
 *   engine_submit(e, slot, b, out) starts a forward pass of b in slot 0 or 1 and returns. It reads
 *     b (ids, cu_seqlens) only while it runs: those arrays may be reused as soon as it returns.
 *     out's buffers are written by engine_wait (out->hidden, rarely wanted, already by submit,
 *     which then blocks until the batch is computed); the caller must not read or free them until
 *     engine_wait(slot) returns. The bs_outputs struct itself is copied.
 *   engine_wait(e, slot) blocks until that slot's features are in out's buffers; the slot is then
 *     free again, whatever the result.
 *   engine_ready(e, slot) is 1 when the slot holds a batch that engine_wait would return without
 *     blocking, 0 otherwise (still computing, or nothing submitted): poll it between other work.
 *   engine_slots(e) is how many slots are worth keeping in flight: 2 on CUDA; 1 on the CPU, whose
 *     submit computes the whole batch before it returns (its wait returns the stored status).
 *     Both slot numbers are accepted by every engine, so one caller loop serves both; a caller
 *     that keeps only engine_slots(e) batches in flight gets overlap on CUDA and no added latency
 *     on the CPU.
 *
 * Errors (one line in err): a slot other than 0 or 1, a slot already holding a batch ("submit
 * twice"), engine_wait on a slot holding none, an invalid batch (engine_check_batch). A batch can
 * fail in engine_submit (nothing is then in flight in that slot: do not wait for it) or in
 * engine_wait; either way its outputs are not valid. engine_forward is engine_submit + engine_wait
 * on a free slot (it fails only if both slots are in flight). On CUDA the two slots compute on
 * two lanes at once (unless BERTSTREAM_LANES=1), so a later batch may be ready first; each wait
 * returns its own slot's batch. One thread at a time per engine; engine_free with batches in
 * flight waits for the device and drops their outputs. Every buffer is sized at engine_new but
 * CUDA's second lane, allocated once, on slot 1's first batch; nothing is allocated per batch. */
#define BS_ENGINE_SLOTS 2

int engine_submit(bs_engine *e, int slot, const bs_batch *b, const bs_outputs *out, char *err);
int engine_wait(bs_engine *e, int slot, char *err);
int engine_ready(bs_engine *e, int slot);
int engine_slots(const bs_engine *e);

/* Validates a batch against the engine's limits and the model (ids in vocab, lengths). */
int engine_check_batch(const bs_model *m, const bs_engine_opts *o, const bs_batch *b, char *err);

/* FLOPs of one forward pass over a batch (GEMMs + attention), for benchmarks; cls_only: with the
 * last layer on the CLS rows (engine_cls_only), the FLOPs that pass executes (its attention for
 * the CLS query alone, as both engines run it). */
double engine_flops(const bs_bert_config *c, const bs_batch *b, int cls_only);

/* Implementation vtable: engine_cpu.c and engine_cuda.c fill one. */
struct bs_engine {
    int (*forward)(bs_engine *e, const bs_batch *b, const bs_outputs *out, char *err);
    void (*destroy)(bs_engine *e);
    const bs_model *model;
    bs_engine_opts opts;
    bs_precision precision;
    int is_cuda;
    int cls_off;    /* the last layer on the CLS rows failed the engine's start-up self-check: never used */
    char desc[512]; /* engine_describe: room for every part of the CUDA engine's line */

    /* Asynchronous entry points (engine.c checks the slot, its state and the batch first). An
     * implementation that leaves submit NULL is synchronous: engine.c runs forward inside
     * engine_submit and engine_wait returns the stored status (that is the CPU engine). */
    int (*submit)(bs_engine *e, int slot, const bs_batch *b, const bs_outputs *out, char *err);
    int (*wait)(bs_engine *e, int slot, char *err);
    int (*ready)(bs_engine *e, int slot); /* NULL: always ready */
    int n_slots;                          /* engine_slots(); 0 means 1 */

    /* engine.c's bookkeeping per slot */
    int slot_busy[BS_ENGINE_SLOTS];            /* submitted, not yet waited */
    int slot_rc[BS_ENGINE_SLOTS];              /* synchronous engines: forward's status */
    char slot_err[BS_ENGINE_SLOTS][BS_ERRLEN]; /* and its message */
};

bs_engine *engine_cpu_new(const bs_model *m, const bs_engine_opts *opts, char *err);
/* Present in every build; without CUDA support it returns NULL with a clear error. */
bs_engine *engine_cuda_new(const bs_model *m, const bs_engine_opts *opts, char *err);
/* Number of CUDA devices usable (0 without CUDA support or a driver). */
int engine_cuda_device_count(void);

#endif
