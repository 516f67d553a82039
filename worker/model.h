/* BERT weights: config.json, (sharded) safetensors, random init and save.
 * All parameters live in one F32 allocation; the pointers below are carved out of it.
 * Dimensions: V vocab, P max positions, TV token types, C hidden, NH heads,
 * HS = C/NH head size, I intermediate, L layers. Linear weights keep Hugging Face's
 * (out, in) row-major layout; Q, K and V are concatenated into one (3C, C) matrix. */
#ifndef BS_MODEL_H
#define BS_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int vocab_size;      /* V */
    int hidden;          /* C */
    int layers;          /* L */
    int heads;           /* NH */
    int intermediate;    /* I */
    int max_positions;   /* P */
    int type_vocab_size; /* TV */
    float ln_eps;
} bs_bert_config;

typedef struct {
    float *qkv_w; /* (3C, C) rows: query, key, value */
    float *qkv_b; /* (3C) */
    float *ao_w;  /* (C, C) attention.output.dense */
    float *ao_b;  /* (C) */
    float *ln1_w; /* (C) attention.output.LayerNorm */
    float *ln1_b; /* (C) */
    float *ff1_w; /* (I, C) intermediate.dense */
    float *ff1_b; /* (I) */
    float *ff2_w; /* (C, I) output.dense */
    float *ff2_b; /* (C) */
    float *ln2_w; /* (C) output.LayerNorm */
    float *ln2_b; /* (C) */
} bs_layer_weights;

typedef struct {
    bs_bert_config cfg;
    float *params; /* one allocation of n_params floats */
    size_t n_params;
    float *word_emb;         /* (V, C) */
    float *pos_emb;          /* (P, C) */
    float *type_emb;         /* (TV, C) */
    float *emb_ln_w;         /* (C) */
    float *emb_ln_b;         /* (C) */
    bs_layer_weights *layer; /* [L] */
    float *pool_w;           /* (C, C) */
    float *pool_b;           /* (C) */
    char encoder_id[72];     /* "sha256:" + 64 hex: hash of the loaded weights, names and shapes */
    char dir[1024];          /* where it was loaded from ("" when generated) */
} bs_model;

/* config.json: parses the keys bertstream needs; missing or out-of-range keys are errors naming the key. */
int bert_config_parse(const char *json, size_t len, const char *path, bs_bert_config *cfg, char *err);
int bert_config_load(const char *path, bs_bert_config *cfg, char *err);
/* Presets for init-model and bench: "tiny" (the golden tiny-bert shape) and "base" (bert-base-uncased). */
int bert_config_preset(const char *name, bs_bert_config *cfg, char *err);

/* Loads DIR/config.json and DIR/model.safetensors or DIR/model.safetensors.index.json + shards.
 * Accepts a "bert." name prefix. F32/F16/BF16 tensors are converted to F32. */
bs_model *model_load(const char *dir, char *err);
/* Random weights as Hugging Face initialises them (normal(0, 0.02), LayerNorm 1/0), seeded. */
bs_model *model_init_random(const bs_bert_config *cfg, uint64_t seed, char *err);
/* Writes DIR/config.json and DIR/model.safetensors (F32, Hugging Face names). */
int model_save(const bs_model *m, const char *dir, char *err);
void model_free(bs_model *m);

/* Recomputes m->encoder_id from the weights. */
void model_compute_id(bs_model *m);

#endif
