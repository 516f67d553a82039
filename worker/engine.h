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

#include "model.h"

typedef enum { BS_PREC_AUTO, BS_PREC_FP32, BS_PREC_FP16, BS_PREC_BF16, BS_PREC_FP8 } bs_precision;
typedef enum { BS_FEATURE_POOLER, BS_FEATURE_CLS, BS_FEATURE_MEAN } bs_feature;

int bs_precision_parse(const char *s, bs_precision *out, char *err);
const char *bs_precision_name(bs_precision p);
int bs_feature_parse(const char *s, bs_feature *out, char *err);
const char *bs_feature_name(bs_feature f);

typedef struct {
    int n_seq;                  /* B */
    const int32_t *ids;         /* (T) token ids, sequences back to back */
    const int32_t *cu_seqlens;  /* (B+1) cu_seqlens[0] = 0, cu_seqlens[B] = T */
} bs_batch;

/* Outputs wanted from a forward pass; NULL members are not computed/copied. */
typedef struct {
    float *pooler; /* (B, C) tanh(W h_CLS + b) */
    float *cls;    /* (B, C) h_CLS */
    float *mean;   /* (B, C) mean over the sequence's tokens */
    float *hidden; /* (T, C) last_hidden_state, packed */
} bs_outputs;

typedef struct {
    const char *device;      /* "auto", "cpu", "cuda", "cuda:N" */
    bs_precision precision;  /* AUTO: fp32 on CPU, bf16 on CUDA */
    int max_seqs;            /* largest B forward will be given */
    int max_tokens;          /* largest T */
    int max_seq_len;         /* longest sequence (<= max_positions) */
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

/* Validates a batch against the engine's limits and the model (ids in vocab, lengths). */
int engine_check_batch(const bs_model *m, const bs_engine_opts *o, const bs_batch *b, char *err);

/* FLOPs of one forward pass over a batch (GEMMs + attention), for benchmarks. */
double engine_flops(const bs_bert_config *c, const bs_batch *b);

/* Implementation vtable: engine_cpu.c and engine_cuda.c fill one. */
struct bs_engine {
    int (*forward)(bs_engine *e, const bs_batch *b, const bs_outputs *out, char *err);
    void (*destroy)(bs_engine *e);
    const bs_model *model;
    bs_engine_opts opts;
    bs_precision precision;
    int is_cuda;
    char desc[256];
};

bs_engine *engine_cpu_new(const bs_model *m, const bs_engine_opts *opts, char *err);
/* Present in every build; without CUDA support it returns NULL with a clear error. */
bs_engine *engine_cuda_new(const bs_model *m, const bs_engine_opts *opts, char *err);
/* Number of CUDA devices usable (0 without CUDA support or a driver). */
int engine_cuda_device_count(void);

#endif
