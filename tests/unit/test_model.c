/* Model loading: the golden sharded tiny-bert, save/load round trips, the bert.-prefixed,
 * legacy-LayerNorm, F16 and BF16 variants of the same weights, one broken directory per
 * failure, config.json parsing, random init and the documented encoder_id definition. */
#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "commands.h"
#include "common.h"
#include "model.h"
#include "safetensors.h"
#include "test.h"
#include "tokenizer.h"

static char tmp[256];

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static const char *golden_dir(void) {
    static char dir[1024];
    const char *cfg = bs_test_data("golden/tiny-bert/config.json");
    snprintf(dir, sizeof dir, "%s", cfg);
    *strrchr(dir, '/') = '\0';
    return dir;
}

static const char *subdir(const char *name) {
    static char d[8][512];
    static int next;
    char *p = d[next++ % 8];
    snprintf(p, 512, "%s/%s", tmp, name);
    mkdir(p, 0755);
    return p;
}

static void write_text(const char *dir, const char *file, const char *text) {
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, file);
    FILE *f = fopen(p, "w");
    fputs(text, f);
    fclose(f);
}

/* The Hugging Face BertModel tensors of m, written out here independently of model.c. */
typedef struct {
    char name[128];
    int ndim;
    int64_t shape[2];
    const float *data;
} named;

static int hf_tensors(const bs_model *m, const char *prefix, int legacy_ln, named *out) {
    const bs_bert_config *c = &m->cfg;
    int64_t C = c->hidden, I = c->intermediate;
    int n = 0;
    const char *lw = legacy_ln ? "gamma" : "weight", *lb = legacy_ln ? "beta" : "bias";
#define T(nd, d0, d1, ptr, ...)                                                                                        \
    do {                                                                                                               \
        char nm_[112];                                                                                                 \
        snprintf(nm_, sizeof nm_, __VA_ARGS__);                                                                        \
        snprintf(out[n].name, sizeof out[n].name, "%s%s", prefix, nm_);                                                \
        out[n].ndim = nd;                                                                                              \
        out[n].shape[0] = d0;                                                                                          \
        out[n].shape[1] = d1;                                                                                          \
        out[n].data = ptr;                                                                                             \
        n++;                                                                                                           \
    } while (0)
    T(2, c->vocab_size, C, m->word_emb, "embeddings.word_embeddings.weight");
    T(2, c->max_positions, C, m->pos_emb, "embeddings.position_embeddings.weight");
    T(2, c->type_vocab_size, C, m->type_emb, "embeddings.token_type_embeddings.weight");
    T(1, C, 0, m->emb_ln_w, "embeddings.LayerNorm.%s", lw);
    T(1, C, 0, m->emb_ln_b, "embeddings.LayerNorm.%s", lb);
    const char *qkv[3] = {"query", "key", "value"};
    for (int l = 0; l < c->layers; l++) {
        const bs_layer_weights *w = &m->layer[l];
        for (int j = 0; j < 3; j++) {
            T(2, C, C, w->qkv_w + j * C * C, "encoder.layer.%d.attention.self.%s.weight", l, qkv[j]);
            T(1, C, 0, w->qkv_b + j * C, "encoder.layer.%d.attention.self.%s.bias", l, qkv[j]);
        }
        T(2, C, C, w->ao_w, "encoder.layer.%d.attention.output.dense.weight", l);
        T(1, C, 0, w->ao_b, "encoder.layer.%d.attention.output.dense.bias", l);
        T(1, C, 0, w->ln1_w, "encoder.layer.%d.attention.output.LayerNorm.%s", l, lw);
        T(1, C, 0, w->ln1_b, "encoder.layer.%d.attention.output.LayerNorm.%s", l, lb);
        T(2, I, C, w->ff1_w, "encoder.layer.%d.intermediate.dense.weight", l);
        T(1, I, 0, w->ff1_b, "encoder.layer.%d.intermediate.dense.bias", l);
        T(2, C, I, w->ff2_w, "encoder.layer.%d.output.dense.weight", l);
        T(1, C, 0, w->ff2_b, "encoder.layer.%d.output.dense.bias", l);
        T(1, C, 0, w->ln2_w, "encoder.layer.%d.output.LayerNorm.%s", l, lw);
        T(1, C, 0, w->ln2_b, "encoder.layer.%d.output.LayerNorm.%s", l, lb);
    }
    T(2, C, C, m->pool_w, "pooler.dense.weight");
    T(1, C, 0, m->pool_b, "pooler.dense.bias");
#undef T
    return n;
}

static size_t numel(const named *t) {
    return (size_t)t->shape[0] * (size_t)(t->ndim == 2 ? t->shape[1] : 1);
}

/* f32 -> f16 with round-to-nearest-even (the test's own, independent of the loader's f16 -> f32). */
static uint16_t f32_to_f16(float f) {
    uint32_t x = bits(f), sign = (x >> 16) & 0x8000u, m = x & 0x7fffffu;
    int e = (int)((x >> 23) & 0xff) - 127 + 15;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00u | (m ? 0x200u : 0));
    if (e >= 31) return (uint16_t)(sign | 0x7c00u);
    if (e <= 0) {
        if (e < -10) return (uint16_t)sign;
        m |= 0x800000u;
        int shift = 14 - e;
        uint32_t hm = m >> shift, rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (hm & 1))) hm++;
        return (uint16_t)(sign | hm);
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (m >> 13), rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) h++;
    return (uint16_t)h;
}

static float f16_value(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v);
}

static uint16_t f32_to_bf16(float f) {
    uint32_t x = bits(f);
    return (uint16_t)((x + 0x7fffu + ((x >> 16) & 1)) >> 16);
}

/* Writes m's tensors as DIR/model.safetensors in the given dtype, with a name prefix and optional
 * legacy LayerNorm names; `skip` drops one tensor, `reshape` gives one tensor a wrong shape, and
 * extra classifier tensors are added when with_classifier. */
static int write_variant(const bs_model *m, const char *dir, const char *prefix, int legacy_ln, st_dtype dt,
                         const char *skip, const char *reshape, int with_classifier, void **buf_out) {
    static named t[64];
    static st_out_tensor o[66];
    char err[BS_ERRLEN];
    int n = hf_tensors(m, prefix, legacy_ln, t), k = 0;
    uint16_t *half = malloc(m->n_params * sizeof *half);
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        size_t ne = numel(&t[i]);
        if (skip && strcmp(t[i].name, skip) == 0) continue;
        o[k] = (st_out_tensor){.name = t[i].name, .dtype = dt, .ndim = t[i].ndim, .data = t[i].data};
        o[k].shape[0] = t[i].shape[0];
        o[k].shape[1] = t[i].shape[1];
        if (reshape && strcmp(t[i].name, reshape) == 0) o[k].shape[1] = t[i].shape[1] / 2;
        if (dt != ST_F32) {
            for (size_t j = 0; j < ne; j++)
                half[off + j] = dt == ST_F16 ? f32_to_f16(t[i].data[j]) : f32_to_bf16(t[i].data[j]);
            o[k].data = half + off;
            off += ne;
        }
        k++;
    }
    static const float cls_w[2 * 128] = {0}, cls_b[2] = {0.5f, -0.5f};
    if (with_classifier) {
        o[k++] =
            (st_out_tensor){.name = "classifier.weight", .dtype = ST_F32, .ndim = 2, .shape = {2, 128}, .data = cls_w};
        o[k++] = (st_out_tensor){.name = "classifier.bias", .dtype = ST_F32, .ndim = 1, .shape = {2}, .data = cls_b};
    }
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", dir);
    int rc = st_write(p, o, k, NULL, err);
    if (rc != BS_OK) fprintf(stderr, "write_variant: %s\n", err);
    if (buf_out)
        *buf_out = half;
    else
        free(half);
    return rc;
}

static bs_model *golden;

static void model_loads_golden_sharded_tiny_bert(void) {
    char err[BS_ERRLEN] = "";
    golden = model_load(golden_dir(), err);
    CHECK(golden != NULL);
    if (!golden) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    const bs_bert_config *c = &golden->cfg;
    CHECK_INT(c->vocab_size, 30522);
    CHECK_INT(c->hidden, 128);
    CHECK_INT(c->layers, 2);
    CHECK_INT(c->heads, 2);
    CHECK_INT(c->intermediate, 512);
    CHECK_INT(c->max_positions, 512);
    CHECK_INT(c->type_vocab_size, 2);
    CHECK(c->ln_eps == 1e-12f);
    CHECK_INT(golden->n_params, 4385920); /* the index's metadata.total_parameters */
    CHECK_STR(golden->dir, golden_dir());
    CHECK_INT(strlen(golden->encoder_id), 71);
    CHECK(strncmp(golden->encoder_id, "sha256:", 7) == 0);

    /* values read with numpy from the shards */
    CHECK_INT(bits(golden->word_emb[1 * 128 + 0]), 0xbbf3c21bu);
    CHECK_INT(bits(golden->word_emb[30521 * 128 + 127]), 0xbc78753eu);
    CHECK_INT(bits(golden->layer[1].ff2_w[5 * 512 + 2]), 0xbbf6e602u);
    CHECK_INT(bits(golden->layer[0].qkv_w[128 * 128 + 3 * 128 + 7]), 0xbd08fa37u); /* key block */
    CHECK_INT(bits(golden->pool_w[127 * 128]), 0xbc99f417u);

    /* whole q, k, v blocks against the shard, read with st_open */
    char p[1200];
    snprintf(p, sizeof p, "%s/model-00002-of-00002.safetensors", golden_dir());
    st_file *f = st_open(p, err);
    CHECK(f != NULL);
    if (!f) return;
    const char *qkv[3] = {"query", "key", "value"};
    for (int l = 0; l < 2; l++)
        for (int j = 0; j < 3; j++) {
            char n[128];
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.weight", l, qkv[j]);
            const st_tensor *t = st_find(f, n);
            CHECK(t && memcmp(t->data, golden->layer[l].qkv_w + j * 128 * 128, t->nbytes) == 0);
            snprintf(n, sizeof n, "encoder.layer.%d.attention.self.%s.bias", l, qkv[j]);
            t = st_find(f, n);
            CHECK(t && memcmp(t->data, golden->layer[l].qkv_b + j * 128, t->nbytes) == 0);
        }
    const st_tensor *t = st_find(f, "encoder.layer.1.output.LayerNorm.weight");
    CHECK(t && memcmp(t->data, golden->layer[1].ln2_w, t->nbytes) == 0);
    st_close(f);
}

static int strcmp_ptr(const char **a, const char **b) {
    return strcmp(*a, *b);
}

static int same_params(const bs_model *a, const bs_model *b) {
    return a->n_params == b->n_params && memcmp(a->params, b->params, a->n_params * sizeof(float)) == 0;
}

static void model_save_then_load_round_trips_bit_exactly(void) {
    if (!golden) return;
    char err[BS_ERRLEN] = "";
    const char *d = subdir("saved");
    CHECK_INT(model_save(golden, d, err), BS_OK);
    bs_model *m = model_load(d, err);
    CHECK(m != NULL);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK(same_params(golden, m));
    CHECK_STR(m->encoder_id, golden->encoder_id); /* sharded and single file: one id */
    CHECK(memcmp(&m->cfg, &golden->cfg, sizeof m->cfg) == 0);
    /* the saved file uses plain Hugging Face names, split back into query/key/value */
    char p[1024];
    snprintf(p, sizeof p, "%s/model.safetensors", d);
    st_file *f = st_open(p, err);
    CHECK(f && st_count(f) == 39);
    if (f) {
        CHECK_STR(st_metadata(f, "format"), "pt");
        CHECK(st_find(f, "encoder.layer.1.attention.self.value.bias") != NULL);
        CHECK(st_find(f, "bert.pooler.dense.weight") == NULL);
    }
    st_close(f);
    bs_bert_config cfg;
    snprintf(p, sizeof p, "%s/config.json", d);
    CHECK_INT(bert_config_load(p, &cfg, err), BS_OK);
    size_t len;
    char *text = bs_read_file(p, &len, err);
    CHECK(text && strstr(text, "\"layer_norm_eps\": 1e-12,") && strstr(text, "\"architectures\": [\"BertModel\"]") &&
          strstr(text, "\"model_type\": \"bert\"") && strstr(text, "\"hidden_act\": \"gelu\""));
    free(text);
    model_free(m);
}

static void model_bert_prefixed_checkpoint_gives_the_same_id(void) {
    if (!golden) return;
    char err[BS_ERRLEN] = "";
    const char *d = subdir("prefixed");
    CHECK_INT(model_save(golden, d, err), BS_OK);
    CHECK_INT(write_variant(golden, d, "bert.", 0, ST_F32, NULL, NULL, 1, NULL), BS_OK);
    bs_model *m = model_load(d, err);
    CHECK(m != NULL);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK(same_params(golden, m));
    CHECK_STR(m->encoder_id, golden->encoder_id);
    model_free(m);
}

static void model_accepts_legacy_layernorm_gamma_beta(void) {
    if (!golden) return;
    char err[BS_ERRLEN] = "";
    const char *d = subdir("legacy");
    CHECK_INT(model_save(golden, d, err), BS_OK);
    CHECK_INT(write_variant(golden, d, "", 1, ST_F32, NULL, NULL, 0, NULL), BS_OK);
    bs_model *m = model_load(d, err);
    CHECK(m != NULL);
    if (m) CHECK_STR(m->encoder_id, golden->encoder_id);
    model_free(m);
}

/* F16/BF16: every loaded value equals the stored half converted by its definition. */
static void check_half_variant(st_dtype dt) {
    char err[BS_ERRLEN] = "";
    const char *d = subdir(dt == ST_F16 ? "f16" : "bf16");
    CHECK_INT(model_save(golden, d, err), BS_OK);
    uint16_t *half = NULL;
    CHECK_INT(write_variant(golden, d, "", 0, dt, NULL, NULL, 0, (void **)&half), BS_OK);
    bs_model *m = model_load(d, err);
    CHECK(m != NULL);
    if (!m) {
        fprintf(stderr, "%s\n", err);
        free(half);
        return;
    }
    static named t[64];
    int n = hf_tensors(m, "", 0, t);
    size_t off = 0, bad = 0, changed = 0;
    for (int i = 0; i < n; i++) {
        for (size_t j = 0; j < numel(&t[i]); j++) {
            uint16_t h = half[off + j];
            float want = dt == ST_F16 ? f16_value(h) : 0;
            if (dt == ST_BF16) {
                uint32_t u = (uint32_t)h << 16;
                memcpy(&want, &u, 4);
            }
            if (bits(t[i].data[j]) != bits(want)) bad++;
        }
        off += numel(&t[i]);
    }
    for (size_t i = 0; i < m->n_params; i++) changed += m->params[i] != golden->params[i];
    CHECK_INT(bad, 0);
    CHECK(changed > 0); /* rounding happened, so this really is the half-precision file */
    CHECK_INT(off, m->n_params);
    CHECK(strcmp(m->encoder_id, golden->encoder_id) != 0);
    model_free(m);
    free(half);
}

static void model_loads_f16_weights(void) {
    if (golden) check_half_variant(ST_F16);
}
static void model_loads_bf16_weights(void) {
    if (golden) check_half_variant(ST_BF16);
}

static void model_load_reports_missing_tensor(void) {
    if (!golden) return;
    char err[BS_ERRLEN] = "";
    const char *d = subdir("missing");
    CHECK_INT(model_save(golden, d, err), BS_OK);
    CHECK_INT(write_variant(golden, d, "", 0, ST_F32, "encoder.layer.1.output.dense.bias", NULL, 0, NULL), BS_OK);
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "missing/model.safetensors: tensor 'encoder.layer.1.output.dense.bias' is missing");
}

static void model_load_reports_wrong_shape(void) {
    if (!golden) return;
    char err[BS_ERRLEN] = "";
    const char *d = subdir("shape");
    CHECK_INT(model_save(golden, d, err), BS_OK);
    CHECK_INT(write_variant(golden, d, "bert.", 0, ST_F32, NULL, "bert.pooler.dense.weight", 0, NULL), BS_OK);
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "shape/model.safetensors: tensor 'bert.pooler.dense.weight': shape [128, 64], expected "
                        "[128, 128]");
}

/* A sharded dir made of links to the golden files, with one piece changed. */
static const char *sharded_dir(const char *name, int link_shard2, const char *index_text) {
    const char *d = subdir(name);
    char src[1200], dst[1200];
    const char *files[3] = {"config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    for (int i = 0; i < (link_shard2 ? 3 : 2); i++) {
        snprintf(src, sizeof src, "%s/%s", golden_dir(), files[i]);
        snprintf(dst, sizeof dst, "%s/%s", d, files[i]);
        if (symlink(src, dst) != 0 && errno != EEXIST) perror("symlink");
    }
    if (index_text) {
        write_text(d, "model.safetensors.index.json", index_text);
    } else {
        snprintf(src, sizeof src, "%s/model.safetensors.index.json", golden_dir());
        snprintf(dst, sizeof dst, "%s/model.safetensors.index.json", d);
        if (symlink(src, dst) != 0 && errno != EEXIST) perror("symlink");
    }
    return d;
}

static void model_load_reports_missing_shard(void) {
    if (!golden) return;
    char err[BS_ERRLEN] = "";
    const char *d = sharded_dir("noshard", 0, NULL);
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "noshard/model.safetensors.index.json: tensor '");
    CHECK_CONTAINS(err, "is mapped to shard 'model-00002-of-00002.safetensors'");
    CHECK_CONTAINS(err, "No such file or directory");
    /* the same dir with every shard present loads to the golden id */
    d = sharded_dir("allshards", 1, NULL);
    bs_model *m = model_load(d, err);
    CHECK(m && strcmp(m->encoder_id, golden->encoder_id) == 0);
    model_free(m);
}

static void model_load_reports_shard_without_its_tensor(void) {
    if (!golden) return;
    char err[BS_ERRLEN] = "";
    const char *d = sharded_dir("wrongmap", 1,
                                "{\"weight_map\": {\"embeddings.word_embeddings.weight\": "
                                "\"model-00001-of-00002.safetensors\", \"pooler.dense.weight\": "
                                "\"model-00001-of-00002.safetensors\"}}");
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "wrongmap/model.safetensors.index.json: tensor 'pooler.dense.weight' is mapped to shard "
                        "'model-00001-of-00002.safetensors', which does not contain it");
    /* a weight_map that leaves a tensor out */
    d = sharded_dir("partialmap", 1,
                    "{\"weight_map\": {\"embeddings.word_embeddings.weight\": \"model-00001-of-00002.safetensors\"}}");
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "partialmap/model.safetensors.index.json: tensor 'embeddings.position_embeddings.weight' is "
                        "missing");
    /* a shard name that climbs out of the directory */
    d = sharded_dir("escape", 1, "{\"weight_map\": {\"pooler.dense.bias\": \"../x.safetensors\"}}");
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "weight_map key 'pooler.dense.bias': shard is not a plain file name");
}

static void model_load_reports_config_without_required_key(void) {
    char err[BS_ERRLEN] = "";
    const char *d = subdir("nolayers");
    write_text(d, "config.json",
               "{\"hidden_size\": 128, \"num_attention_heads\": 2, \"intermediate_size\": 512, \"vocab_size\": 30522, "
               "\"max_position_embeddings\": 512, \"hidden_act\": \"gelu\"}");
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "nolayers/config.json: key 'num_hidden_layers' is required");
}

static void model_load_reports_unsupported_hidden_act(void) {
    char err[BS_ERRLEN] = "";
    const char *d = subdir("gelunew");
    write_text(d, "config.json",
               "{\"hidden_size\": 128, \"num_hidden_layers\": 2, \"num_attention_heads\": 2, \"intermediate_size\": "
               "512, \"vocab_size\": 30522, \"max_position_embeddings\": 512, \"hidden_act\": \"gelu_new\"}");
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "gelunew/config.json: key 'hidden_act': \"gelu_new\" is not supported");
}

static void model_load_reports_dir_without_weights(void) {
    char err[BS_ERRLEN] = "";
    const char *d = subdir("noweights");
    write_text(d, "config.json",
               "{\"hidden_size\": 8, \"num_hidden_layers\": 1, \"num_attention_heads\": 2, \"intermediate_size\": 16, "
               "\"vocab_size\": 10, \"max_position_embeddings\": 4}");
    CHECK(model_load(d, err) == NULL);
    CHECK_CONTAINS(err, "noweights: neither model.safetensors nor model.safetensors.index.json exists");
    CHECK(model_load("/nonexistent-model-dir", err) == NULL);
    CHECK_CONTAINS(err, "/nonexistent-model-dir/config.json: No such file or directory");
}

static int parse(const char *json, bs_bert_config *cfg, char *err) {
    return bert_config_parse(json, strlen(json), "c.json", cfg, err);
}

static void bert_config_applies_defaults_and_checks_values(void) {
    char err[BS_ERRLEN] = "";
    bs_bert_config c;
    const char *base = "{\"hidden_size\": 64, \"num_hidden_layers\": 3, \"num_attention_heads\": 4, "
                       "\"intermediate_size\": 256, \"vocab_size\": 100, \"max_position_embeddings\": 32";
    char j[512];
    snprintf(j, sizeof j, "%s}", base);
    CHECK_INT(parse(j, &c, err), BS_OK);
    CHECK_INT(c.type_vocab_size, 2);
    CHECK(c.ln_eps == 1e-12f);
    CHECK_INT(c.hidden, 64);
    CHECK_INT(c.layers, 3);
    snprintf(j, sizeof j, "%s, \"type_vocab_size\": 1, \"layer_norm_eps\": 1e-5}", base);
    CHECK_INT(parse(j, &c, err), BS_OK);
    CHECK_INT(c.type_vocab_size, 1);
    CHECK(c.ln_eps == 1e-5f);

    snprintf(j, sizeof j, "%s, \"num_attention_heads\": 5}", base); /* the later duplicate wins in jansson */
    CHECK_INT(parse(j, &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: key 'num_attention_heads': hidden_size 64 is not a multiple of 5");
    snprintf(j, sizeof j, "%s, \"hidden_act\": \"relu\"}", base);
    CHECK_INT(parse(j, &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: key 'hidden_act': \"relu\" is not supported (only \"gelu\", the erf form)");
    snprintf(j, sizeof j, "%s, \"layer_norm_eps\": \"small\"}", base);
    CHECK_INT(parse(j, &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: key 'layer_norm_eps': expected a number");
    snprintf(j, sizeof j, "%s, \"layer_norm_eps\": 0}", base);
    CHECK_INT(parse(j, &c, err), BS_ERR);
    CHECK_CONTAINS(err, "key 'layer_norm_eps'");
    snprintf(j, sizeof j, "%s, \"vocab_size\": -3}", base);
    CHECK_INT(parse(j, &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: key 'vocab_size': expected an integer");
    snprintf(j, sizeof j, "%s, \"hidden_size\": 64.0}", base);
    CHECK_INT(parse(j, &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: key 'hidden_size': expected an integer");
    snprintf(j, sizeof j, "%s, \"position_embedding_type\": \"relative_key\"}", base);
    CHECK_INT(parse(j, &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: key 'position_embedding_type'");
    CHECK_INT(parse("[1]", &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: not a JSON object");
    CHECK_INT(parse("{\"hidden_size\": ", &c, err), BS_ERR);
    CHECK_CONTAINS(err, "c.json: not valid JSON");
}

static void bert_config_reads_the_golden_config(void) {
    char err[BS_ERRLEN];
    bs_bert_config c, t;
    CHECK_INT(bert_config_load(bs_test_data("golden/tiny-bert/config.json"), &c, err), BS_OK);
    CHECK_INT(bert_config_preset("tiny", &t, err), BS_OK);
    CHECK(memcmp(&c, &t, sizeof c) == 0); /* the tiny preset is the golden shape */
}

static void bert_config_presets(void) {
    char err[BS_ERRLEN] = "";
    bs_bert_config c;
    CHECK_INT(bert_config_preset("base", &c, err), BS_OK);
    CHECK_INT(c.vocab_size, 30522);
    CHECK_INT(c.hidden, 768);
    CHECK_INT(c.layers, 12);
    CHECK_INT(c.heads, 12);
    CHECK_INT(c.intermediate, 3072);
    CHECK_INT(c.max_positions, 512);
    CHECK_INT(c.type_vocab_size, 2);
    CHECK(c.ln_eps == 1e-12f);
    CHECK_INT(bert_config_preset("large", &c, err), BS_ERR);
    CHECK_CONTAINS(err, "unknown preset 'large'");
}

static const bs_bert_config small = {50, 16, 2, 4, 32, 10, 2, 1e-12f};

static void model_init_random_is_seeded_like_hugging_face(void) {
    char err[BS_ERRLEN] = "";
    bs_bert_config cfg;
    bert_config_preset("tiny", &cfg, err);
    bs_model *a = model_init_random(&cfg, 7, err), *b = model_init_random(&cfg, 7, err),
             *c = model_init_random(&cfg, 8, err);
    CHECK(a && b && c);
    if (!a || !b || !c) goto out;
    CHECK(same_params(a, b));
    CHECK_STR(a->encoder_id, b->encoder_id);
    CHECK(strcmp(a->encoder_id, c->encoder_id) != 0);
    CHECK_STR(a->dir, "");
    /* LayerNorm 1/0, biases 0, padding row 0 of the word embeddings zeroed */
    int ok = 1;
    for (int i = 0; i < 128; i++) {
        ok &= a->emb_ln_w[i] == 1.0f && a->emb_ln_b[i] == 0.0f && a->layer[1].ln2_w[i] == 1.0f;
        ok &= a->layer[0].ln1_b[i] == 0.0f && a->pool_b[i] == 0.0f && a->word_emb[i] == 0.0f;
    }
    for (int i = 0; i < 3 * 128; i++) ok &= a->layer[1].qkv_b[i] == 0.0f;
    CHECK(ok);
    /* weights ~ normal(0, 0.02): 3.9M draws in the word embeddings */
    double s = 0, s2 = 0;
    size_t n = (size_t)(30522 - 1) * 128;
    for (size_t i = 0; i < n; i++) {
        double v = a->word_emb[128 + i];
        s += v;
        s2 += v * v;
    }
    CHECK_NEAR(s / n, 0.0, 1e-4);
    CHECK_NEAR(sqrt(s2 / n), 0.02, 1e-4);
    s2 = 0;
    for (int i = 0; i < 512 * 128; i++) s2 += (double)a->layer[0].ff1_w[i] * a->layer[0].ff1_w[i];
    CHECK_NEAR(sqrt(s2 / (512 * 128)), 0.02, 3e-4);
out:
    model_free(a);
    model_free(b);
    model_free(c);
}

static void model_init_random_rejects_bad_config(void) {
    char err[BS_ERRLEN] = "";
    bs_bert_config cfg = small;
    cfg.heads = 3;
    CHECK(model_init_random(&cfg, 1, err) == NULL);
    CHECK_CONTAINS(err, "hidden_size 16 is not a multiple of 3");
    cfg = small;
    cfg.layers = 0;
    CHECK(model_init_random(&cfg, 1, err) == NULL);
    CHECK_CONTAINS(err, "key 'num_hidden_layers': 0 is out of range");
}

/* encoder_id as docs/formats.md defines it, recomputed here from the saved file's tensors. */
static void model_encoder_id_matches_documented_definition(void) {
    char err[BS_ERRLEN] = "";
    bs_model *m = model_init_random(&small, 3, err);
    CHECK(m != NULL);
    if (!m) return;
    static named t[64];
    int n = hf_tensors(m, "", 0, t);
    CHECK_INT(n, 5 + 16 * 2 + 2);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
    for (int i = 0; i < n; i++) {
        unsigned char hdr[20];
        uint32_t nd = (uint32_t)t[i].ndim;
        for (int b = 0; b < 4; b++) hdr[b] = (unsigned char)(nd >> (8 * b));
        for (int d = 0; d < t[i].ndim; d++)
            for (int b = 0; b < 8; b++) hdr[4 + 8 * d + b] = (unsigned char)((uint64_t)t[i].shape[d] >> (8 * b));
        EVP_DigestUpdate(ctx, t[i].name, strlen(t[i].name) + 1);
        EVP_DigestUpdate(ctx, hdr, 4 + 8 * (size_t)nd);
        for (size_t j = 0; j < numel(&t[i]); j++) {
            uint32_t u = bits(t[i].data[j]);
            unsigned char le[4] = {(unsigned char)u, (unsigned char)(u >> 8), (unsigned char)(u >> 16),
                                   (unsigned char)(u >> 24)};
            EVP_DigestUpdate(ctx, le, 4);
        }
    }
    unsigned char md[32];
    unsigned int len;
    EVP_DigestFinal_ex(ctx, md, &len);
    EVP_MD_CTX_free(ctx);
    char want[72] = "sha256:";
    for (int i = 0; i < 32; i++) sprintf(want + 7 + 2 * i, "%02x", md[i]);
    CHECK_STR(m->encoder_id, want);

    /* one changed value changes the id; model_compute_id picks it up */
    m->layer[1].ff2_b[3] = 1e-30f;
    model_compute_id(m);
    CHECK(strcmp(m->encoder_id, want) != 0);
    model_free(m);
}

static int files_equal(const char *a_dir, const char *b_dir, const char *file) {
    char pa[1024], pb[1024], err[BS_ERRLEN];
    snprintf(pa, sizeof pa, "%s/%s", a_dir, file);
    snprintf(pb, sizeof pb, "%s/%s", b_dir, file);
    size_t la, lb;
    char *a = bs_read_file(pa, &la, err), *b = bs_read_file(pb, &lb, err);
    int same = a && b && la == lb && memcmp(a, b, la) == 0;
    free(a);
    free(b);
    return same;
}

static int run_init_model(const char *seed, const char *out) {
    char *argv[] = {"init-model", "--preset", "tiny", "--seed", (char *)seed, "--out", (char *)out, NULL};
    return cmd_init_model(7, argv);
}

static void init_model_command_is_deterministic_and_loadable(void) {
    char a[512], b[512], c[512], err[BS_ERRLEN] = "";
    snprintf(a, sizeof a, "%s/init-a/nested", tmp);
    snprintf(b, sizeof b, "%s/init-b", tmp);
    snprintf(c, sizeof c, "%s/init-c", tmp);
    CHECK_INT(run_init_model("42", a), 0);
    CHECK_INT(run_init_model("42", b), 0);
    CHECK_INT(run_init_model("43", c), 0);
    CHECK(files_equal(a, b, "config.json") && files_equal(a, b, "model.safetensors") && files_equal(a, b, "vocab.txt"));
    CHECK(!files_equal(a, c, "model.safetensors"));
    bs_model *m = model_load(a, err), *r = NULL;
    bs_bert_config tiny;
    bert_config_preset("tiny", &tiny, err);
    CHECK(m != NULL);
    if (m) {
        CHECK(memcmp(&m->cfg, &tiny, sizeof tiny) == 0);
        r = model_init_random(&tiny, 42, err);
        CHECK(r && same_params(m, r) && strcmp(m->encoder_id, r->encoder_id) == 0);
    }
    model_free(m);
    model_free(r);

    /* synthetic vocab: vocab_size distinct lines, bert-base's special ids, ASCII spellable */
    char p[1024];
    snprintf(p, sizeof p, "%s/vocab.txt", a);
    size_t len;
    char *text = bs_read_file(p, &len, err);
    CHECK(text != NULL);
    if (!text) return;
    static char *line[30522 + 1];
    int n = 0;
    for (char *s = text, *nl; *s && (nl = strchr(s, '\n')) && n <= 30522; s = nl + 1) {
        *nl = '\0';
        line[n++] = s;
    }
    CHECK_INT(n, 30522);
    CHECK_STR(line[0], "[PAD]");
    CHECK_STR(line[1], "[unused0]");
    CHECK_STR(line[100], "[UNK]");
    CHECK_STR(line[101], "[CLS]");
    CHECK_STR(line[102], "[SEP]");
    CHECK_STR(line[103], "[MASK]");
    int has_the = 0, has_s = 0, has_z = 0, has_bang = 0, real = 0;
    for (int i = 0; i < n; i++) {
        has_the |= strcmp(line[i], "the") == 0;
        has_s |= strcmp(line[i], "##s") == 0;
        has_z |= strcmp(line[i], "##z") == 0;
        has_bang |= strcmp(line[i], "!") == 0;
        real += strncmp(line[i], "[unused", 7) != 0;
    }
    CHECK(has_the && has_s && has_z && has_bang);
    CHECK(real > 500);
    qsort(line, (size_t)n, sizeof line[0], (int (*)(const void *, const void *))strcmp_ptr);
    int dups = 0;
    for (int i = 1; i < n; i++) dups += strcmp(line[i - 1], line[i]) == 0;
    CHECK_INT(dups, 0);
    free(text);

    /* English becomes whole words and ##-pieces, no [UNK] */
    bs_tokenizer *tk = tokenizer_new(p, err);
    CHECK(tk != NULL);
    if (!tk) return;
    bs_tokens out = {0};
    const char *review = "This movie was wonderfully boring, and the actors overacted in 2019!";
    CHECK_INT(tokenizer_encode(tk, review, strlen(review), 0, &out, err), BS_OK);
    int unk = 0, movie = 0, wonderful_ly = 0;
    for (int i = 0; i < out.n; i++) {
        unk += out.ids[i] == 100;
        movie += out.ids[i] == tokenizer_token_id(tk, "movie");
        wonderful_ly += i > 0 && out.ids[i - 1] == tokenizer_token_id(tk, "wonderful") &&
                        out.ids[i] == tokenizer_token_id(tk, "##ly");
    }
    CHECK_INT(unk, 0);
    CHECK_INT(movie, 1);
    CHECK_INT(wonderful_ly, 1);
    CHECK(out.n > 15 && out.n < 40); /* pieces, not one token per character */
    CHECK_INT(out.ids[0], 101);
    CHECK_INT(out.ids[out.n - 1], 102);
    tokens_free(&out);
    tokenizer_free(tk);
}

static void init_model_command_rejects_bad_arguments(void) {
    char out[512];
    snprintf(out, sizeof out, "%s/init-bad", tmp);
    char *no_out[] = {"init-model", "--preset", "tiny", "--seed", "1", NULL};
    CHECK_INT(cmd_init_model(5, no_out), 2);
    char *bad_preset[] = {"init-model", "--preset", "huge", "--seed", "1", "--out", out, NULL};
    CHECK_INT(cmd_init_model(7, bad_preset), 2);
    char *bad_seed[] = {"init-model", "--preset", "tiny", "--seed", "x", "--out", out, NULL};
    CHECK_INT(cmd_init_model(7, bad_seed), 2);
    char *bad_vocab[] = {"init-model", "--preset", "tiny",    "--seed",       "1",
                         "--out",      out,        "--vocab", "/nonexistent", NULL};
    CHECK_INT(cmd_init_model(9, bad_vocab), 1);
    struct stat sb;
    CHECK(stat(out, &sb) != 0); /* nothing written */
    char *help[] = {"init-model", "--help", NULL};
    CHECK_INT(cmd_init_model(2, help), 0);
}

int main(void) {
    snprintf(tmp, sizeof tmp, "%s", bs_test_tmpdir());
    RUN(bert_config_applies_defaults_and_checks_values);
    RUN(bert_config_presets);
    RUN(model_init_random_is_seeded_like_hugging_face);
    RUN(model_init_random_rejects_bad_config);
    RUN(model_encoder_id_matches_documented_definition);
    RUN(model_load_reports_config_without_required_key);
    RUN(model_load_reports_unsupported_hidden_act);
    RUN(model_load_reports_dir_without_weights);
    RUN(init_model_command_is_deterministic_and_loadable);
    RUN(init_model_command_rejects_bad_arguments);
    RUN(bert_config_reads_the_golden_config);
    RUN(model_loads_golden_sharded_tiny_bert);
    RUN(model_save_then_load_round_trips_bit_exactly);
    RUN(model_bert_prefixed_checkpoint_gives_the_same_id);
    RUN(model_accepts_legacy_layernorm_gamma_beta);
    RUN(model_loads_f16_weights);
    RUN(model_loads_bf16_weights);
    RUN(model_load_reports_missing_tensor);
    RUN(model_load_reports_wrong_shape);
    RUN(model_load_reports_missing_shard);
    RUN(model_load_reports_shard_without_its_tensor);
    model_free(golden);
    bs_test_rmtree(tmp);
    return bs_test_done();
}
