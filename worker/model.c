/* BERT weights: config.json parsing, loading a Hugging Face model directory (single or sharded
 * safetensors, optional "bert." prefix, F32/F16/BF16) into one F32 allocation, random init like
 * Hugging Face's _init_weights, saving, and the encoder_id hash (docs/formats.md). */
#include "model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "safetensors.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#error "encoder_id hashes the F32 values as stored in memory: little-endian hosts only"
#endif

/* Keys, tensor names and jansson's messages come from files: keep the error one printable line. */
static void err_one_line(char *err) {
    for (char *c = err; c && *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

/* ---- config.json ---- */

/* Upper bounds keep every size product far from overflow and reject garbage early. */
static const struct {
    const char *key;
    size_t off;
    int min, max;
    int required;
    int def;
} config_ints[] = {
    {"vocab_size", offsetof(bs_bert_config, vocab_size), 1, 10000000, 1, 0},
    {"hidden_size", offsetof(bs_bert_config, hidden), 1, 65536, 1, 0},
    {"num_hidden_layers", offsetof(bs_bert_config, layers), 1, 1000, 1, 0},
    {"num_attention_heads", offsetof(bs_bert_config, heads), 1, 65536, 1, 0},
    {"intermediate_size", offsetof(bs_bert_config, intermediate), 1, 1 << 20, 1, 0},
    {"max_position_embeddings", offsetof(bs_bert_config, max_positions), 1, 1 << 20, 1, 0},
    {"type_vocab_size", offsetof(bs_bert_config, type_vocab_size), 1, 1 << 16, 0, 2},
};
#define N_CONFIG_INTS ((int)(sizeof config_ints / sizeof config_ints[0]))

static int config_check(const bs_bert_config *c, const char *path, char *err) {
    for (int i = 0; i < N_CONFIG_INTS; i++) {
        int v = *(const int *)((const char *)c + config_ints[i].off);
        if (v < config_ints[i].min || v > config_ints[i].max)
            return bs_err(err, "%s: key '%s': %d is out of range [%d, %d]", path, config_ints[i].key, v,
                          config_ints[i].min, config_ints[i].max);
    }
    if (c->hidden % c->heads != 0)
        return bs_err(err, "%s: key 'num_attention_heads': hidden_size %d is not a multiple of %d", path, c->hidden,
                      c->heads);
    if (!(c->ln_eps > 0.0f && c->ln_eps < 1.0f))
        return bs_err(err, "%s: key 'layer_norm_eps': %g is out of range (0, 1)", path, (double)c->ln_eps);
    return BS_OK;
}

int bert_config_parse(const char *json, size_t len, const char *path, bs_bert_config *cfg, char *err) {
    json_error_t je;
    json_t *root = json_loadb(json, len, 0, &je);
    int rc = BS_ERR;
    if (!root) {
        bs_err(err, "%s: not valid JSON: %s (line %d)", path, je.text, je.line);
        err_one_line(err);
        return BS_ERR;
    }
    if (!json_is_object(root)) {
        bs_err(err, "%s: not a JSON object", path);
        goto out;
    }
    bs_bert_config c = {0};
    for (int i = 0; i < N_CONFIG_INTS; i++) {
        int *dst = (int *)((char *)&c + config_ints[i].off);
        json_t *v = json_object_get(root, config_ints[i].key);
        if (!v || json_is_null(v)) {
            if (config_ints[i].required) {
                bs_err(err, "%s: key '%s' is required", path, config_ints[i].key);
                goto out;
            }
            *dst = config_ints[i].def;
            continue;
        }
        json_int_t x;
        if (!json_is_integer(v) || (x = json_integer_value(v)) < config_ints[i].min || x > config_ints[i].max) {
            bs_err(err, "%s: key '%s': expected an integer in [%d, %d]", path, config_ints[i].key, config_ints[i].min,
                   config_ints[i].max);
            goto out;
        }
        *dst = (int)x;
    }
    c.ln_eps = 1e-12f;
    json_t *v = json_object_get(root, "layer_norm_eps");
    if (v && !json_is_null(v)) {
        if (!json_is_number(v)) {
            bs_err(err, "%s: key 'layer_norm_eps': expected a number", path);
            goto out;
        }
        c.ln_eps = (float)json_number_value(v);
    }
    v = json_object_get(root, "hidden_act");
    if (v && !json_is_null(v)) {
        if (!json_is_string(v) || strcmp(json_string_value(v), "gelu") != 0) {
            bs_err(err, "%s: key 'hidden_act': %.40s%s%s is not supported (only \"gelu\", the erf form)", path,
                   json_is_string(v) ? "\"" : "", json_is_string(v) ? json_string_value(v) : "a non-string value",
                   json_is_string(v) ? "\"" : "");
            goto out;
        }
    }
    /* Relative position embeddings change the attention itself: refuse rather than compute something else. */
    v = json_object_get(root, "position_embedding_type");
    if (v && !json_is_null(v) && (!json_is_string(v) || strcmp(json_string_value(v), "absolute") != 0)) {
        bs_err(err, "%s: key 'position_embedding_type': only \"absolute\" is supported", path);
        goto out;
    }
    if (config_check(&c, path, err) != BS_OK) goto out;
    *cfg = c;
    rc = BS_OK;
out:
    if (rc != BS_OK) err_one_line(err);
    json_decref(root);
    return rc;
}

int bert_config_load(const char *path, bs_bert_config *cfg, char *err) {
    size_t len;
    char *buf = bs_read_file(path, &len, err);
    if (!buf) return BS_ERR;
    int rc = bert_config_parse(buf, len, path, cfg, err);
    free(buf);
    return rc;
}

int bert_config_preset(const char *name, bs_bert_config *cfg, char *err) {
    if (name && strcmp(name, "tiny") == 0) {
        *cfg = (bs_bert_config){30522, 128, 2, 2, 512, 512, 2, 1e-12f};
        return BS_OK;
    }
    if (name && strcmp(name, "base") == 0) {
        *cfg = (bs_bert_config){30522, 768, 12, 12, 3072, 512, 2, 1e-12f};
        return BS_OK;
    }
    return bs_err(err, "unknown preset '%s' (tiny or base)", name ? name : "");
}

/* ---- the canonical tensor list ---- */

enum { T_WEIGHT, T_BIAS, T_LN_W, T_LN_B };

typedef struct {
    char name[96]; /* Hugging Face BertModel name, without "bert." */
    int ndim;
    int64_t shape[2];
    float *dst; /* into m->params; query/key/value are row blocks of qkv_w / qkv_b */
    int kind;
} model_tensor;

static int n_tensors(const bs_bert_config *c) {
    return 5 + 16 * c->layers + 2;
}

static void add(model_tensor *t, int *n, int kind, float *dst, int64_t d0, int64_t d1, const char *fmt, ...)
    BS_PRINTF(7, 8);
static void add(model_tensor *t, int *n, int kind, float *dst, int64_t d0, int64_t d1, const char *fmt, ...) {
    model_tensor *x = &t[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(x->name, sizeof x->name, fmt, ap);
    va_end(ap);
    x->kind = kind;
    x->dst = dst;
    x->ndim = d1 ? 2 : 1;
    x->shape[0] = d0;
    x->shape[1] = d1;
}

/* The order here is the encoder_id order (Hugging Face's named_parameters order). */
static void model_tensors(const bs_model *m, model_tensor *t) {
    const bs_bert_config *c = &m->cfg;
    int64_t C = c->hidden, I = c->intermediate;
    int n = 0;
    add(t, &n, T_WEIGHT, m->word_emb, c->vocab_size, C, "embeddings.word_embeddings.weight");
    add(t, &n, T_WEIGHT, m->pos_emb, c->max_positions, C, "embeddings.position_embeddings.weight");
    add(t, &n, T_WEIGHT, m->type_emb, c->type_vocab_size, C, "embeddings.token_type_embeddings.weight");
    add(t, &n, T_LN_W, m->emb_ln_w, C, 0, "embeddings.LayerNorm.weight");
    add(t, &n, T_LN_B, m->emb_ln_b, C, 0, "embeddings.LayerNorm.bias");
    static const char *const qkv[3] = {"query", "key", "value"};
    for (int l = 0; l < c->layers; l++) {
        const bs_layer_weights *w = &m->layer[l];
        for (int j = 0; j < 3; j++) {
            add(t, &n, T_WEIGHT, w->qkv_w + (size_t)j * C * C, C, C, "encoder.layer.%d.attention.self.%s.weight", l,
                qkv[j]);
            add(t, &n, T_BIAS, w->qkv_b + (size_t)j * C, C, 0, "encoder.layer.%d.attention.self.%s.bias", l, qkv[j]);
        }
        add(t, &n, T_WEIGHT, w->ao_w, C, C, "encoder.layer.%d.attention.output.dense.weight", l);
        add(t, &n, T_BIAS, w->ao_b, C, 0, "encoder.layer.%d.attention.output.dense.bias", l);
        add(t, &n, T_LN_W, w->ln1_w, C, 0, "encoder.layer.%d.attention.output.LayerNorm.weight", l);
        add(t, &n, T_LN_B, w->ln1_b, C, 0, "encoder.layer.%d.attention.output.LayerNorm.bias", l);
        add(t, &n, T_WEIGHT, w->ff1_w, I, C, "encoder.layer.%d.intermediate.dense.weight", l);
        add(t, &n, T_BIAS, w->ff1_b, I, 0, "encoder.layer.%d.intermediate.dense.bias", l);
        add(t, &n, T_WEIGHT, w->ff2_w, C, I, "encoder.layer.%d.output.dense.weight", l);
        add(t, &n, T_BIAS, w->ff2_b, C, 0, "encoder.layer.%d.output.dense.bias", l);
        add(t, &n, T_LN_W, w->ln2_w, C, 0, "encoder.layer.%d.output.LayerNorm.weight", l);
        add(t, &n, T_LN_B, w->ln2_b, C, 0, "encoder.layer.%d.output.LayerNorm.bias", l);
    }
    add(t, &n, T_WEIGHT, m->pool_w, C, C, "pooler.dense.weight");
    add(t, &n, T_BIAS, m->pool_b, C, 0, "pooler.dense.bias");
}

static size_t numel_of(const model_tensor *t) {
    return (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
}

/* ---- allocation: one block of floats, pointers carved in a fixed order ---- */

static int acc_add(size_t *acc, size_t a, size_t b) {
    size_t p;
    if (!bs_mul_ok(a, b, &p) || *acc + p < *acc) return 0;
    *acc += p;
    return 1;
}

static bs_model *model_alloc(const bs_bert_config *cfg, const char *what, char *err) {
    if (config_check(cfg, what, err) != BS_OK) return NULL;
    size_t V = (size_t)cfg->vocab_size, P = (size_t)cfg->max_positions, TV = (size_t)cfg->type_vocab_size;
    size_t C = (size_t)cfg->hidden, I = (size_t)cfg->intermediate, L = (size_t)cfg->layers;
    size_t per_layer = 0, total = 0;
    int ok = acc_add(&per_layer, 4 * C, C) && acc_add(&per_layer, 2, I * C) && acc_add(&per_layer, 9, C) &&
             acc_add(&per_layer, 1, I);
    ok = ok && acc_add(&total, V + P + TV, C) && acc_add(&total, 2, C) && acc_add(&total, L, per_layer) &&
         acc_add(&total, C + 1, C) && total <= SIZE_MAX / sizeof(float);
    if (!ok) {
        bs_err(err, "%s: model size overflows", what);
        return NULL;
    }
    bs_model *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    m->cfg = *cfg;
    m->n_params = total;
    m->params = malloc(total * sizeof(float));
    m->layer = calloc(L, sizeof *m->layer);
    if (!m->params || !m->layer) goto oom;
    float *p = m->params;
#define CARVE(field, count) (field = p, p += (count))
    CARVE(m->word_emb, V * C);
    CARVE(m->pos_emb, P * C);
    CARVE(m->type_emb, TV * C);
    CARVE(m->emb_ln_w, C);
    CARVE(m->emb_ln_b, C);
    for (size_t l = 0; l < L; l++) {
        bs_layer_weights *w = &m->layer[l];
        CARVE(w->qkv_w, 3 * C * C);
        CARVE(w->qkv_b, 3 * C);
        CARVE(w->ao_w, C * C);
        CARVE(w->ao_b, C);
        CARVE(w->ln1_w, C);
        CARVE(w->ln1_b, C);
        CARVE(w->ff1_w, I * C);
        CARVE(w->ff1_b, I);
        CARVE(w->ff2_w, C * I);
        CARVE(w->ff2_b, C);
        CARVE(w->ln2_w, C);
        CARVE(w->ln2_b, C);
    }
    CARVE(m->pool_w, C * C);
    CARVE(m->pool_b, C);
#undef CARVE
    return m;
oom:
    bs_err(err, "%s: out of memory for %zu parameters", what, total);
    model_free(m);
    return NULL;
}

void model_free(bs_model *m) {
    if (!m) return;
    free(m->params);
    free(m->layer);
    free(m);
}

/* ---- encoder_id ---- */

void model_compute_id(bs_model *m) {
    int nt = n_tensors(&m->cfg);
    model_tensor *t = malloc(sizeof *t * (size_t)nt);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char md[32];
    unsigned int mdlen = 0;
    int ok = t && ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    if (ok) model_tensors(m, t);
    for (int i = 0; ok && i < nt; i++) {
        unsigned char dims[4 + 16];
        uint32_t nd = (uint32_t)t[i].ndim;
        for (int b = 0; b < 4; b++) dims[b] = (unsigned char)(nd >> (8 * b));
        for (int d = 0; d < t[i].ndim; d++)
            for (int b = 0; b < 8; b++) dims[4 + 8 * d + b] = (unsigned char)((uint64_t)t[i].shape[d] >> (8 * b));
        ok = EVP_DigestUpdate(ctx, t[i].name, strlen(t[i].name) + 1) &&
             EVP_DigestUpdate(ctx, dims, 4 + 8 * (size_t)t[i].ndim) &&
             EVP_DigestUpdate(ctx, t[i].dst, numel_of(&t[i]) * sizeof(float));
    }
    ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen) && mdlen == 32;
    if (ok) {
        char *o = m->encoder_id + sprintf(m->encoder_id, "sha256:");
        for (int i = 0; i < 32; i++) o += sprintf(o, "%02x", md[i]);
    } else {
        m->encoder_id[0] = '\0';
    }
    EVP_MD_CTX_free(ctx);
    free(t);
}

/* ---- loading ---- */

/* Where tensors come from: one file, or an index whose weight_map names a shard per tensor. */
typedef struct {
    char path[1280]; /* model.safetensors or model.safetensors.index.json, for errors */
    json_t *index;   /* the parsed index, or NULL for a single file */
    json_t *weight_map;
    int nfiles;
    st_file **files;
    char **names; /* shard file names (index mode) */
} tensor_source;

static void source_close(tensor_source *s) {
    for (int i = 0; i < s->nfiles; i++) {
        st_close(s->files[i]);
        if (s->names) free(s->names[i]);
    }
    free(s->files);
    free(s->names);
    json_decref(s->index);
}

static int shard_name_ok(const char *s) {
    return *s && !strchr(s, '/') && strcmp(s, ".") != 0 && strcmp(s, "..") != 0;
}

static int source_open_index(tensor_source *s, const char *dir, char *err) {
    json_error_t je;
    s->index = json_load_file(s->path, JSON_REJECT_DUPLICATES, &je);
    if (!s->index) return bs_err(err, "%s: not valid JSON: %s (line %d)", s->path, je.text, je.line);
    s->weight_map = json_object_get(s->index, "weight_map");
    if (!json_is_object(s->weight_map)) return bs_err(err, "%s: key 'weight_map' is missing or not an object", s->path);
    size_t n = json_object_size(s->weight_map);
    s->files = calloc(n ? n : 1, sizeof *s->files);
    s->names = calloc(n ? n : 1, sizeof *s->names);
    if (!s->files || !s->names) return bs_err(err, "%s: out of memory", s->path);
    const char *name;
    json_t *v;
    json_object_foreach(s->weight_map, name, v) {
        if (!json_is_string(v) || !shard_name_ok(json_string_value(v)))
            return bs_err(err, "%s: weight_map key '%s': shard is not a plain file name", s->path, name);
        const char *shard = json_string_value(v);
        int k = 0;
        while (k < s->nfiles && strcmp(s->names[k], shard) != 0) k++;
        if (k == s->nfiles) {
            char sp[2400], e2[BS_ERRLEN];
            snprintf(sp, sizeof sp, "%s/%s", dir, shard);
            s->names[k] = strdup(shard);
            if (!s->names[k]) return bs_err(err, "%s: out of memory", s->path);
            s->nfiles++;
            s->files[k] = st_open(sp, e2);
            if (!s->files[k])
                return bs_err(err, "%s: tensor '%s' is mapped to shard '%s': %s", s->path, name, shard, e2);
        }
        if (!st_find(s->files[k], name))
            return bs_err(err, "%s: tensor '%s' is mapped to shard '%s', which does not contain it", s->path, name,
                          shard);
    }
    return BS_OK;
}

static const st_file *source_file_of(const tensor_source *s, const char *name) {
    if (!s->index) return st_find(s->files[0], name) ? s->files[0] : NULL;
    json_t *v = json_object_get(s->weight_map, name);
    if (!v) return NULL;
    for (int k = 0; k < s->nfiles; k++)
        if (strcmp(s->names[k], json_string_value(v)) == 0) return s->files[k];
    return NULL;
}

/* Finds PREFIX+name, or the legacy LayerNorm gamma/beta spelling; checks dtype and shape. */
static const st_tensor *source_get(const tensor_source *s, const char *prefix, const model_tensor *want, char *err) {
    char full[160], legacy[160];
    snprintf(full, sizeof full, "%s%s", prefix, want->name);
    const st_file *f = source_file_of(s, full);
    if (!f) {
        size_t n = strlen(full);
        const char *alt = NULL;
        if (n > 16 && strcmp(full + n - 16, "LayerNorm.weight") == 0) alt = "gamma";
        if (n > 14 && strcmp(full + n - 14, "LayerNorm.bias") == 0) alt = "beta";
        if (alt) {
            snprintf(legacy, sizeof legacy, "%.*s%s", (int)(strrchr(full, '.') + 1 - full), full, alt);
            f = source_file_of(s, legacy);
            if (f) return st_expect(f, legacy, want->ndim, want->shape, err);
        }
        bs_err(err, "%s: tensor '%s' is missing", s->path, full);
        return NULL;
    }
    return st_expect(f, full, want->ndim, want->shape, err);
}

bs_model *model_load(const char *dir, char *err) {
    char cfg_path[1280];
    bs_bert_config cfg;
    tensor_source src = {0};
    bs_model *m = NULL;
    model_tensor *specs = NULL;
    struct stat sb;

    if (strlen(dir) >= sizeof m->dir) {
        bs_err(err, "%s: model directory path too long", dir);
        return NULL;
    }
    snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
    if (bert_config_load(cfg_path, &cfg, err) != BS_OK) return NULL;

    snprintf(src.path, sizeof src.path, "%s/model.safetensors", dir);
    if (stat(src.path, &sb) == 0) {
        src.files = calloc(1, sizeof *src.files);
        if (!src.files) {
            bs_err(err, "%s: out of memory", src.path);
            goto fail;
        }
        src.files[0] = st_open(src.path, err);
        if (!src.files[0]) goto fail;
        src.nfiles = 1;
    } else {
        snprintf(src.path, sizeof src.path, "%s/model.safetensors.index.json", dir);
        if (stat(src.path, &sb) != 0) {
            bs_err(err, "%s: neither model.safetensors nor model.safetensors.index.json exists", dir);
            goto fail;
        }
        if (source_open_index(&src, dir, err) != BS_OK) goto fail;
    }

    m = model_alloc(&cfg, cfg_path, err);
    if (!m) goto fail;
    int nt = n_tensors(&cfg);
    specs = malloc(sizeof *specs * (size_t)nt);
    if (!specs) {
        bs_err(err, "%s: out of memory", dir);
        goto fail;
    }
    model_tensors(m, specs);
    /* A BertForSequenceClassification checkpoint names everything "bert.*" (plus classifier.*, ignored). */
    const char *prefix = "";
    if (!source_file_of(&src, "embeddings.word_embeddings.weight") &&
        source_file_of(&src, "bert.embeddings.word_embeddings.weight"))
        prefix = "bert.";
    for (int i = 0; i < nt; i++) {
        const st_tensor *t = source_get(&src, prefix, &specs[i], err);
        if (!t || st_to_f32(t, specs[i].dst, err) != BS_OK) goto fail;
    }
    snprintf(m->dir, sizeof m->dir, "%s", dir);
    model_compute_id(m);
    free(specs);
    source_close(&src);
    return m;
fail:
    err_one_line(err);
    free(specs);
    model_free(m);
    source_close(&src);
    return NULL;
}

/* Two standard normals from two bs_rng draws (Box-Muller, both outputs, in float): bert-base has
 * 110M weights, and this is 2.5x faster than one bs_rng_normal() per weight. 24-bit uniforms cut
 * the tails at 5.8 sigma, which an init at 0.02 does not miss. */
static void normal_pair(bs_rng *r, float z[2]) {
    float u1 = (float)((bs_rng_next(r) >> 40) + 1) * (1.0f / 16777216.0f); /* (0, 1] */
    float u2 = (float)(bs_rng_next(r) >> 40) * (1.0f / 16777216.0f);       /* [0, 1) */
    float rad = sqrtf(-2.0f * logf(u1)), s, c;
    sincosf(6.28318530718f * u2, &s, &c);
    z[0] = rad * c;
    z[1] = rad * s;
}

bs_model *model_init_random(const bs_bert_config *cfg, uint64_t seed, char *err) {
    bs_model *m = model_alloc(cfg, "config", err);
    if (!m) return NULL;
    int nt = n_tensors(cfg);
    model_tensor *t = malloc(sizeof *t * (size_t)nt);
    if (!t) {
        bs_err(err, "out of memory");
        model_free(m);
        return NULL;
    }
    model_tensors(m, t);
    bs_rng rng = {seed};
    for (int i = 0; i < nt; i++) {
        size_t n = numel_of(&t[i]);
        float *d = t[i].dst;
        switch (t[i].kind) {
        case T_WEIGHT:
            for (size_t j = 0; j < n; j += 2) {
                float z[2];
                normal_pair(&rng, z);
                d[j] = 0.02f * z[0];
                if (j + 1 < n) d[j + 1] = 0.02f * z[1];
            }
            break;
        case T_LN_W:
            for (size_t j = 0; j < n; j++) d[j] = 1.0f;
            break;
        default:
            memset(d, 0, n * sizeof *d);
        }
    }
    /* nn.Embedding(padding_idx=pad_token_id=0): Hugging Face zeroes that row after the normal init. */
    memset(m->word_emb, 0, (size_t)cfg->hidden * sizeof(float));
    free(t);
    model_compute_id(m);
    return m;
}

/* Shortest %g form that reads back as the same float: "1e-12", not "9.9999999600419720e-13". */
static void float_repr(char *buf, size_t cap, float x) {
    for (int p = 1; p <= 9; p++) {
        snprintf(buf, cap, "%.*g", p, (double)x);
        if (strtof(buf, NULL) == x) return;
    }
}

int model_save(const bs_model *m, const char *dir, char *err) {
    char path[1280], eps[32];
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) return bs_err(err, "%s: %s", dir, strerror(errno));

    const bs_bert_config *c = &m->cfg;
    snprintf(path, sizeof path, "%s/config.json", dir);
    float_repr(eps, sizeof eps, c->ln_eps);
    FILE *fp = fopen(path, "w");
    if (!fp) return bs_err(err, "%s: %s", path, strerror(errno));
    fprintf(fp,
            "{\n"
            "  \"architectures\": [\"BertModel\"],\n"
            "  \"attention_probs_dropout_prob\": 0.1,\n"
            "  \"hidden_act\": \"gelu\",\n"
            "  \"hidden_dropout_prob\": 0.1,\n"
            "  \"hidden_size\": %d,\n"
            "  \"initializer_range\": 0.02,\n"
            "  \"intermediate_size\": %d,\n"
            "  \"layer_norm_eps\": %s,\n"
            "  \"max_position_embeddings\": %d,\n"
            "  \"model_type\": \"bert\",\n"
            "  \"num_attention_heads\": %d,\n"
            "  \"num_hidden_layers\": %d,\n"
            "  \"pad_token_id\": 0,\n"
            "  \"position_embedding_type\": \"absolute\",\n"
            "  \"torch_dtype\": \"float32\",\n"
            "  \"type_vocab_size\": %d,\n"
            "  \"vocab_size\": %d\n"
            "}\n",
            c->hidden, c->intermediate, eps, c->max_positions, c->heads, c->layers, c->type_vocab_size, c->vocab_size);
    if (fclose(fp) != 0) return bs_err(err, "%s: write failed: %s", path, strerror(errno));

    int nt = n_tensors(c);
    model_tensor *t = malloc(sizeof *t * (size_t)nt);
    st_out_tensor *o = malloc(sizeof *o * (size_t)nt);
    if (!t || !o) {
        free(t);
        free(o);
        return bs_err(err, "%s: out of memory", dir);
    }
    model_tensors(m, t);
    for (int i = 0; i < nt; i++) {
        o[i] = (st_out_tensor){.name = t[i].name, .dtype = ST_F32, .ndim = t[i].ndim, .data = t[i].dst};
        o[i].shape[0] = t[i].shape[0];
        o[i].shape[1] = t[i].shape[1];
    }
    /* transformers refuses a safetensors file without format metadata */
    static const char *const meta[] = {"format", "pt", NULL};
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    int rc = st_write(path, o, nt, meta, err);
    free(t);
    free(o);
    return rc;
}
