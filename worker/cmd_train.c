/* `bertstream train`: the trainer job. Reads the labeled topic up to the end offsets captured at start,
 * encodes only the reviews the feature cache lacks, trains a head (AdamW + BCE, trainer.h), gates it
 * against the current head on the same held-out split, publishes it to the heads topic, and prints one
 * JSON summary line. docs/retraining.md describes every step. */
#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codec.h"
#include "commands.h"
#include "common.h"
#include "config.h"
#include "engine.h"
#include "featcache.h"
#include "head.h"
#include "heads.h"
#include "log.h"
#include "model.h"
#include "tokenizer.h"
#include "trainer.h"

#define TRAIN_HIDDEN 64               /* the notebook's ClassificationHead width */
#define TRAIN_INIT_SALT 0x68656164ull /* as train-head: the same seed gives the same init */
#define TRAIN_META_TIMEOUT_MS 10000
#define TRAIN_PUBLISH_TIMEOUT_MS 30000
#define TRAIN_GATE_EPS 1e-12 /* accuracies are k/n: absorb the rounding of cur - max_regression */

static const char usage[] =
    "usage: bertstream train --config FILE [-o section.key=value ...] [--force]\n"
    "\n"
    "The trainer job: reads LabeledReview records from topics.labeled (format.input framing: avro, confluent\n"
    "or json) up to the end offsets at start (latest label per review_id wins), splits them by a hash of\n"
    "review_id (train.eval_fraction held out), computes model.dir's train.feature for the reviews not in\n"
    "train.cache_dir, trains Linear(H,64) -> ReLU -> Linear(64,1) with train.* (AdamW + BCE), then gates:\n"
    "the new head is published to topics.heads (version = last + 1, signed with head.hmac_key when set) only\n"
    "if its eval accuracy >= the current head's - train.max_regression. Published heads are also written to\n"
    "train.out_dir as head-v<version>.safetensors and head-v<version>.json.\n"
    "\n"
    "  --config FILE     YAML configuration (repeatable); BERTSTREAM_<SECTION>_<KEY> variables and -o override it\n"
    "  -o key=value      override one key, e.g. -o train.epochs=20\n"
    "  --force           publish even when the gate refuses\n"
    "\n"
    "stdout: one JSON line {\"status\": \"published\" | \"gated\", \"version\", \"reason\", \"metrics\", \"current\",\n"
    "\"counts\", ...}. Exit 0 when published or gated, 1 on errors, 2 on usage errors.\n";

/* ---- labeled reviews, latest per review_id ---- */

typedef struct {
    char *id, *text;
    size_t id_len, text_len;
    int label;
    int live; /* 0 after a tombstone */
    int32_t partition;
    int64_t offset, ts;
} lrec;

typedef struct {
    lrec *recs;
    size_t n, cap;
    int64_t *slots; /* (slot_cap) index into recs, -1 empty; open addressing on FNV-1a of the id */
    size_t slot_cap;
} lstore;

typedef struct {
    int64_t messages, undecodable, bad_label, tombstones, superseded, untokenizable;
    int64_t encoded, cached;
    int reviews, n_train, n_eval;
    int partial; /* stopped by train.read_timeout_ms before the end offsets */
} train_counts;

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 1099511628211ull;
    return h;
}

static int64_t *store_slot(lstore *st, const char *id, size_t len) {
    size_t j = (size_t)fnv1a(id, len) & (st->slot_cap - 1);
    while (st->slots[j] >= 0) {
        lrec *r = &st->recs[st->slots[j]];
        if (r->id_len == len && memcmp(r->id, id, len) == 0) break;
        j = (j + 1) & (st->slot_cap - 1);
    }
    return &st->slots[j];
}

static int store_grow(lstore *st) {
    size_t ncap = st->slot_cap ? st->slot_cap * 2 : 4096;
    int64_t *ns = malloc(sizeof *ns * ncap);
    if (!ns) return BS_ERR;
    for (size_t i = 0; i < ncap; i++) ns[i] = -1;
    free(st->slots);
    st->slots = ns;
    st->slot_cap = ncap;
    for (size_t i = 0; i < st->n; i++) *store_slot(st, st->recs[i].id, st->recs[i].id_len) = (int64_t)i;
    return BS_OK;
}

static char *dup_bytes(const char *s, size_t n) {
    char *d = malloc(n + 1);
    if (!d) return NULL;
    if (n) memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* The record stored for id, or a new empty one. NULL when out of memory. */
static lrec *store_get(lstore *st, const char *id, size_t len, int create) {
    if ((st->n + 1) * 2 > st->slot_cap && store_grow(st) != BS_OK) return NULL;
    int64_t *slot = store_slot(st, id, len);
    if (*slot >= 0) return &st->recs[*slot];
    if (!create) return NULL;
    if (st->n == st->cap) {
        size_t ncap = st->cap ? st->cap * 2 : 1024;
        lrec *nr = realloc(st->recs, sizeof *nr * ncap);
        if (!nr) return NULL;
        st->recs = nr;
        st->cap = ncap;
    }
    lrec *r = &st->recs[st->n];
    memset(r, 0, sizeof *r);
    if (!(r->id = dup_bytes(id, len))) return NULL;
    r->id_len = len;
    r->partition = -1;
    *slot = (int64_t)st->n++;
    return r;
}

static void store_free(lstore *st) {
    for (size_t i = 0; i < st->n; i++) {
        free(st->recs[i].id);
        free(st->recs[i].text);
    }
    free(st->recs);
    free(st->slots);
}

/* Same partition: the later offset wins (consume order). Across partitions: the later message timestamp
 * (producers should key by review_id so one review stays in one partition). */
static int newer(const lrec *old, int32_t partition, int64_t ts) {
    return old->partition < 0 || old->partition == partition || ts >= old->ts;
}

static void take_message(lstore *st, bs_codec *codec, bs_framing framing, const rd_kafka_message_t *m,
                         train_counts *cnt, int *oom) {
    char err[BS_ERRLEN];
    const char *code = NULL;
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(m, &tstype);
    cnt->messages++;
    if (!m->payload) {
        /* a tombstone keyed by review_id removes that review */
        cnt->tombstones++;
        lrec *r = m->key_len ? store_get(st, m->key, m->key_len, 0) : NULL;
        if (r && newer(r, m->partition, ts)) {
            r->live = 0;
            r->partition = m->partition, r->offset = m->offset, r->ts = ts;
        }
        return;
    }
    bs_labeled_review lr;
    if (codec_decode_labeled_review(codec, framing, -1, m->payload, m->len, &lr, &code, err) != BS_OK) {
        if (cnt->undecodable++ < 5)
            log_warn("labeled review skipped: undecodable", "partition=%d offset=%lld code=%s detail=\"%s\"",
                     (int)m->partition, (long long)m->offset, code ? code : "?", err);
        return;
    }
    if (lr.label != 0 && lr.label != 1) {
        if (cnt->bad_label++ < 5)
            log_warn("labeled review skipped: label is not 0 or 1", "partition=%d offset=%lld label=%d",
                     (int)m->partition, (long long)m->offset, (int)lr.label);
        return;
    }
    lrec *r = store_get(st, lr.review_id, lr.review_id_len, 1);
    if (!r) {
        *oom = 1;
        return;
    }
    if (r->partition >= 0) {
        if (!newer(r, m->partition, ts)) {
            cnt->superseded++;
            return;
        }
        cnt->superseded++;
    }
    char *text = dup_bytes(lr.text, lr.text_len);
    if (!text) {
        *oom = 1;
        return;
    }
    free(r->text);
    r->text = text;
    r->text_len = lr.text_len;
    r->label = lr.label;
    r->live = 1;
    r->partition = m->partition, r->offset = m->offset, r->ts = ts;
}

static int read_labeled(const bs_config *cfg, bs_framing framing, lstore *st, train_counts *cnt, char *err) {
    char errstr[512];
    int rc = BS_ERR, oom = 0;
    rd_kafka_topic_partition_list_t *ends = NULL;
    bs_codec *codec = codec_new(err);
    if (!codec) return BS_ERR;
    rd_kafka_conf_t *conf = heads_consumer_conf(cfg, "bertstream-trainer", err);
    rd_kafka_t *rk = NULL;
    if (!conf) goto out;
    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        bs_err(err, "labeled consumer: %s", errstr);
        goto out;
    }
    conf = NULL; /* rd_kafka_new() took ownership of conf */
    rd_kafka_poll_set_consumer(rk);
    if (heads_assign_from_start(rk, cfg->topics.labeled, TRAIN_META_TIMEOUT_MS, &ends, err) != BS_OK) goto out;
    int64_t total = 0;
    int pending = 0;
    for (int i = 0; i < ends->cnt; i++) {
        total += ends->elems[i].offset;
        pending += ends->elems[i].offset > 0;
    }
    log_info("reading labeled reviews", "topic=%s partitions=%d end_offsets_total=%lld", cfg->topics.labeled, ends->cnt,
             (long long)total);
    double last = bs_now(), last_log = bs_now();
    while (pending > 0 && !oom) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
        double now = bs_now();
        if (!m) {
            if ((now - last) * 1000 >= (double)cfg->train.read_timeout_ms) {
                log_warn("labeled topic: stopped before its end offsets (train.read_timeout_ms)",
                         "partitions_pending=%d read=%lld", pending, (long long)cnt->messages);
                cnt->partial = 1;
                break;
            }
            continue;
        }
        last = now;
        int64_t next = -1;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            next = m->offset;
        } else if (m->err) {
            log_warn("labeled topic: consume error", "error=\"%s\"", rd_kafka_message_errstr(m));
        } else {
            take_message(st, codec, framing, m, cnt, &oom);
            next = m->offset + 1;
        }
        if (next >= 0) {
            for (int i = 0; i < ends->cnt; i++) {
                rd_kafka_topic_partition_t *tp = &ends->elems[i];
                if (tp->partition == m->partition && tp->offset > 0 && next >= tp->offset) {
                    tp->offset = 0; /* reached */
                    pending--;
                }
            }
        }
        rd_kafka_message_destroy(m);
        if (now - last_log >= 10) {
            log_info("reading labeled reviews", "read=%lld distinct=%zu", (long long)cnt->messages, st->n);
            last_log = now;
        }
    }
    if (oom) {
        bs_err(err, "out of memory holding the labeled reviews");
        goto out;
    }
    rc = BS_OK;
out:
    if (ends) rd_kafka_topic_partition_list_destroy(ends);
    if (rk) {
        rd_kafka_consumer_close(rk);
        rd_kafka_destroy(rk);
    }
    codec_free(codec);
    return rc;
}

/* ---- split, features ---- */

static int cmp_rec(const void *a, const void *b) {
    const lrec *x = *(const lrec *const *)a, *y = *(const lrec *const *)b;
    size_t n = x->id_len < y->id_len ? x->id_len : y->id_len;
    int c = memcmp(x->id, y->id, n);
    return c ? c : (x->id_len > y->id_len) - (x->id_len < y->id_len);
}

/* 1 when review_id falls in the eval split: the first 8 bytes of SHA-256("bertstream.split\0" id),
 * read big-endian, divided by 2^64, is below eval_fraction. Stable across runs and data growth. */
static int in_eval(const char *id, size_t len, double eval_fraction) {
    static const char tag[] = "bertstream.split";
    uint8_t h[32];
    unsigned int hl = 0;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) == 1 && EVP_DigestUpdate(ctx, tag, sizeof tag) == 1 &&
             (len == 0 || EVP_DigestUpdate(ctx, id, len) == 1) && EVP_DigestFinal_ex(ctx, h, &hl) == 1;
    EVP_MD_CTX_free(ctx);
    if (!ok) return 0;
    uint64_t u = 0;
    for (int i = 0; i < 8; i++) u = u << 8 | h[i];
    return (double)u / 18446744073709551616.0 < eval_fraction;
}

typedef struct {
    int is_tty;
    double start, last;
    int total;
} progress;

static void progress_show(progress *p, int done) {
    double now = bs_now();
    int end = done >= p->total;
    if (!end && now - p->last < (p->is_tty ? 0.2 : 10.0)) return;
    p->last = now;
    double rate = done / (now - p->start > 1e-9 ? now - p->start : 1e-9);
    if (p->is_tty) {
        int w = 30, fill = p->total ? (int)((double)w * done / p->total) : w;
        char bar[31];
        for (int i = 0; i < w; i++) bar[i] = i < fill ? '#' : '.';
        bar[w] = 0;
        fprintf(stderr, "\rencoding [%s] %d/%d reviews %.1f/s", bar, done, p->total, rate);
        if (end) fputc('\n', stderr);
        fflush(stderr);
    } else {
        log_info("encoding", "done=%d total=%d reviews_per_s=%.1f", done, p->total, rate);
    }
}

typedef struct {
    const bs_config *cfg;
    bs_model *model;
    bs_tokenizer *tok;
    bs_engine *engine;
    bs_featcache *cache;
    int C, max_len, batch;
    bs_tokens tk;
    int32_t *ids, *cu;
    float *feat;
    int *rows; /* (batch) row of X each batch sequence goes to */
    const lrec **recs;
    uint8_t (*keys)[FEATCACHE_KEY_LEN];
} encoder;

static int encode_flush(encoder *en, int n_seq, float *X, char *err) {
    if (n_seq == 0) return BS_OK;
    bs_batch b = {.n_seq = n_seq, .ids = en->ids, .cu_seqlens = en->cu};
    bs_outputs out = {0};
    bs_feature f = en->cfg->train.feature;
    if (f == BS_FEATURE_POOLER)
        out.pooler = en->feat;
    else if (f == BS_FEATURE_CLS)
        out.cls = en->feat;
    else
        out.mean = en->feat;
    if (engine_forward(en->engine, &b, &out, err) != BS_OK) return BS_ERR;
    for (int k = 0; k < n_seq; k++) {
        int row = en->rows[k];
        const float *src = en->feat + (size_t)k * en->C;
        memcpy(X + (size_t)row * en->C, src, sizeof(float) * (size_t)en->C);
        if (featcache_put(en->cache, en->keys[row], src, err) != BS_OK) return BS_ERR;
    }
    return BS_OK;
}

/* Fills X (n, C) for recs[0..n): cache hits first, then the misses through the engine in batches.
 * ok[i] = 0 for a review the tokenizer refused (its row is left undefined), else 1. */
static int compute_features(encoder *en, int n, float *X, int *ok, train_counts *cnt, char *err) {
    int misses = 0;
    for (int i = 0; i < n; i++) {
        const lrec *r = en->recs[i];
        featcache_key(en->cache, r->id, r->id_len, r->text, r->text_len, en->keys[i]);
        int hit = featcache_get(en->cache, en->keys[i], X + (size_t)i * en->C, err);
        if (hit < 0) return BS_ERR;
        ok[i] = hit ? 1 : -1; /* -1: to encode */
        if (hit)
            cnt->cached++;
        else
            misses++;
    }
    log_info("feature cache", "file=%s hits=%lld to_encode=%d", featcache_path(en->cache), (long long)cnt->cached,
             misses);
    progress p = {.is_tty = isatty(2), .start = bs_now(), .total = misses};
    int n_seq = 0, done = 0;
    en->cu[0] = 0;
    for (int i = 0; i < n; i++) {
        if (ok[i] != -1) continue;
        const lrec *r = en->recs[i];
        char terr[BS_ERRLEN];
        if (tokenizer_encode(en->tok, r->text, r->text_len, en->max_len, &en->tk, terr) != BS_OK) {
            ok[i] = 0;
            if (cnt->untokenizable++ < 5)
                log_warn("labeled review skipped: tokenizer", "review_id=%.64s detail=\"%s\"", r->id, terr);
            done++;
            continue;
        }
        ok[i] = 1;
        memcpy(en->ids + en->cu[n_seq], en->tk.ids, sizeof(int32_t) * (size_t)en->tk.n);
        en->cu[n_seq + 1] = en->cu[n_seq] + en->tk.n;
        en->rows[n_seq++] = i;
        if (n_seq == en->batch) {
            if (encode_flush(en, n_seq, X, err) != BS_OK) return BS_ERR;
            cnt->encoded += n_seq;
            done += n_seq;
            n_seq = 0;
            progress_show(&p, done);
        }
    }
    if (encode_flush(en, n_seq, X, err) != BS_OK) return BS_ERR;
    cnt->encoded += n_seq;
    done += n_seq;
    if (misses > 0) progress_show(&p, done);
    return featcache_sync(en->cache, err);
}

/* ---- training with per-epoch evaluation ---- */

typedef struct {
    bs_head *h;
    const float *Xe, *ye;
    int n_eval;
    int64_t steps_per_epoch;
    double loss_sum;
    int64_t loss_steps;
    double last_epoch_loss;
} fit_ctx;

static int on_step(void *ctx, int epoch, int64_t step, double loss) {
    fit_ctx *f = ctx;
    f->loss_sum += loss;
    f->loss_steps++;
    if (step % f->steps_per_epoch != 0) return 0;
    /* the epoch's last step: the head now holds this epoch's weights */
    f->last_epoch_loss = f->loss_sum / (double)f->loss_steps;
    f->loss_sum = 0;
    f->loss_steps = 0;
    trainer_metrics m = {0};
    char err[BS_ERRLEN];
    if (f->n_eval > 0 && trainer_eval(f->h, f->Xe, f->ye, f->n_eval, &m, err) == BS_OK)
        log_info("epoch", "epoch=%d train_loss=%.6f eval_loss=%.6f eval_accuracy=%.4f eval_auc=%.4f", epoch,
                 f->last_epoch_loss, m.loss, m.accuracy, m.auc);
    else
        log_info("epoch", "epoch=%d train_loss=%.6f", epoch, f->last_epoch_loss);
    return 0;
}

/* ---- publishing ---- */

typedef struct {
    int done;
    rd_kafka_resp_err_t err;
    int32_t partition;
    int64_t offset;
} delivery;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
    (void)rk;
    (void)opaque;
    delivery *d = m->_private;
    if (!d) return;
    d->done = 1;
    d->err = m->err;
    d->partition = m->partition;
    d->offset = m->offset;
}

static int publish(const bs_config *cfg, const bs_head_weights *hw, delivery *d, char *err) {
    char errstr[512];
    int rc = BS_ERR;
    bs_buf buf = {0};
    bs_codec *codec = codec_new(err);
    rd_kafka_t *rk = NULL;
    if (!codec) return BS_ERR;
    if (codec_encode_head_weights(codec, BS_FRAMING_AVRO, 0, hw, &buf, err) != BS_OK) goto out;
    rd_kafka_conf_t *conf = heads_producer_conf(cfg, "bertstream-trainer", err);
    if (!conf) goto out;
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        bs_err(err, "heads producer: %s", errstr);
        goto out;
    }
    conf = NULL; /* rd_kafka_new() took ownership of conf */
    rd_kafka_resp_err_t e =
        rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(cfg->topics.heads),
                          RD_KAFKA_V_KEY(hw->encoder_id, strlen(hw->encoder_id)), RD_KAFKA_V_VALUE(buf.data, buf.len),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
    if (e) {
        bs_err(err, "publish to %s: %s", cfg->topics.heads, rd_kafka_err2str(e));
        goto out;
    }
    rd_kafka_flush(rk, TRAIN_PUBLISH_TIMEOUT_MS);
    rd_kafka_poll(rk, 0);
    if (!d->done) {
        bs_err(err, "publish to %s: no delivery report within %d ms", cfg->topics.heads, TRAIN_PUBLISH_TIMEOUT_MS);
        goto out;
    }
    if (d->err) {
        bs_err(err, "publish to %s: %s", cfg->topics.heads, rd_kafka_err2str(d->err));
        goto out;
    }
    rc = BS_OK;
out:
    if (rk) rd_kafka_destroy(rk);
    bs_buf_free(&buf);
    codec_free(codec);
    return rc;
}

/* A finite double as JSON, else null (NaN AUC with one class, metrics of an empty split). */
static json_t *jnum(double v) {
    return isfinite(v) ? json_real(v) : json_null();
}

/* Counts (n_train, n_eval) print as integers; the record's map holds them as doubles. */
static json_t *metrics_json(const char *const *names, const double *values, int n) {
    json_t *o = json_object();
    for (int i = 0; i < n; i++)
        json_object_set_new(o, names[i],
                            !strncmp(names[i], "n_", 2) && isfinite(values[i]) ? json_integer((json_int_t)values[i])
                                                                               : jnum(values[i]));
    return o;
}

static json_t *counts_json(const train_counts *c) {
    json_t *o = json_object();
    json_object_set_new(o, "messages", json_integer(c->messages));
    json_object_set_new(o, "reviews", json_integer(c->reviews));
    json_object_set_new(o, "train", json_integer(c->n_train));
    json_object_set_new(o, "eval", json_integer(c->n_eval));
    json_object_set_new(o, "encoded", json_integer(c->encoded));
    json_object_set_new(o, "cached", json_integer(c->cached));
    json_object_set_new(o, "undecodable", json_integer(c->undecodable));
    json_object_set_new(o, "bad_label", json_integer(c->bad_label));
    json_object_set_new(o, "untokenizable", json_integer(c->untokenizable));
    json_object_set_new(o, "tombstones", json_integer(c->tombstones));
    json_object_set_new(o, "superseded", json_integer(c->superseded));
    return o;
}

/* head-v<version>.safetensors (the tensors) and head-v<version>.json (everything about them) in
 * train.out_dir; hpath and jpath (4096 bytes each) get the paths. */
static int write_head_files(const bs_config *cfg, const bs_head *head, const bs_head_weights *hw, const delivery *d,
                            const trainer_opts *to, int max_len, bs_precision prec, const char *gate, char *hpath,
                            char *jpath, char *err) {
    if (bs_mkdir_p(cfg->train.out_dir, err) != BS_OK) return BS_ERR;
    snprintf(hpath, 4096, "%s/head-v%lld.safetensors", cfg->train.out_dir, (long long)hw->version);
    snprintf(jpath, 4096, "%s/head-v%lld.json", cfg->train.out_dir, (long long)hw->version);
    if (head_save(head, hpath, err) != BS_OK) return BS_ERR;
    json_t *meta = json_object();
    json_object_set_new(meta, "version", json_integer(hw->version));
    json_object_set_new(meta, "encoder_id", json_string(hw->encoder_id));
    json_object_set_new(meta, "feature", json_string(hw->feature));
    json_object_set_new(meta, "input_dim", json_integer(hw->input_dim));
    json_object_set_new(meta, "hidden_dim", json_integer(hw->hidden_dim));
    json_object_set_new(meta, "created_at", json_integer(hw->created_at));
    json_object_set_new(meta, "metrics", metrics_json(hw->metric_names, hw->metric_values, hw->n_metrics));
    char sighex[2 * HEADS_SIGNATURE_LEN + 1] = "";
    for (size_t i = 0; hw->has_signature && i < hw->signature_len && i < HEADS_SIGNATURE_LEN; i++)
        sprintf(sighex + 2 * i, "%02x", hw->signature[i]);
    json_object_set_new(meta, "signature", hw->has_signature ? json_string(sighex) : json_null());
    json_object_set_new(meta, "topic", json_string(cfg->topics.heads));
    json_object_set_new(meta, "partition", json_integer(d->partition));
    json_object_set_new(meta, "offset", json_integer(d->offset));
    json_object_set_new(meta, "model_dir", json_string(cfg->model.dir));
    json_object_set_new(meta, "gate", json_string(gate));
    json_t *hp = json_object();
    json_object_set_new(hp, "epochs", json_integer(to->epochs));
    json_object_set_new(hp, "batch", json_integer(to->batch));
    json_object_set_new(hp, "lr", json_real(to->lr));
    json_object_set_new(hp, "weight_decay", json_real(to->weight_decay));
    json_object_set_new(hp, "seed", json_integer((json_int_t)to->seed));
    json_object_set_new(hp, "eval_fraction", json_real(cfg->train.eval_fraction));
    json_object_set_new(hp, "max_seq_len", json_integer(max_len));
    json_object_set_new(hp, "precision", json_string(bs_precision_name(prec)));
    json_object_set_new(meta, "train", hp);
    int wr = json_dump_file(meta, jpath, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(meta);
    if (wr != 0) return bs_err(err, "%s: cannot write", jpath);
    return BS_OK;
}

/* ---- the command ---- */

typedef struct {
    int64_t version; /* 0: head.file */
    const char *source;
    trainer_metrics m;
    int evaluated;
} current_head;

int cmd_train(int argc, char **argv) {
    char err[BS_ERRLEN] = "";
    int rc = 1, force = 0;
    bs_config *cfg = config_new_defaults();
    lstore st = {0};
    train_counts cnt = {0};
    encoder en = {0};
    bs_heads *heads = NULL;
    bs_head *head = NULL, *cur = NULL;
    float *X = NULL, *Xt = NULL, *yt = NULL, *Xe = NULL, *ye = NULL;
    int *ok = NULL;
    json_t *summary = NULL;
    if (!cfg) {
        fprintf(stderr, "bertstream train: out of memory\n");
        return 1;
    }
    force = config_take_flag(&argc, argv, "--force"); /* ours; the rest is config_parse_args' */
    int pr = config_parse_args(cfg, argc, argv, NULL, err);
    if (pr == CONFIG_HELP) {
        fputs(usage, stdout);
        rc = 0;
        goto done;
    }
    if (pr != BS_OK) {
        fprintf(stderr, "bertstream train: %s\n", err);
        rc = 2;
        goto done;
    }
    config_apply_logging(cfg);
    bs_framing framing;
    switch (cfg->format.input) {
    case BS_FORMAT_AVRO:
        framing = BS_FRAMING_AVRO;
        break;
    case BS_FORMAT_CONFLUENT:
        framing = BS_FRAMING_CONFLUENT;
        break;
    case BS_FORMAT_JSON:
        framing = BS_FRAMING_JSON;
        break;
    default:
        bs_err(err, "format.input: %s cannot carry labels for topics.labeled (use avro, confluent or json)",
               config_format_name(cfg->format.input));
        goto fail;
    }
    if (!*cfg->topics.labeled || !*cfg->topics.heads) {
        bs_err(err, "topics.labeled and topics.heads must both be set for train");
        goto fail;
    }
    /* hyper-parameters first: a bad one should fail before minutes of encoding */
    trainer_opts to;
    trainer_opts_default(&to);
    to.epochs = (int)cfg->train.epochs;
    to.batch = (int)cfg->train.batch;
    to.lr = cfg->train.lr;
    to.weight_decay = cfg->train.weight_decay;
    to.seed = (uint64_t)cfg->train.seed;
    if (trainer_opts_check(&to, err) != BS_OK) goto fail;
    /* The trainer's feature is train.feature: heads are validated against it, not model.feature. */
    cfg->model.feature = cfg->train.feature;
    const char *feature = bs_feature_name(cfg->train.feature);

    /* model, tokenizer, engine */
    char vocab[4096];
    config_vocab_path(cfg, vocab, sizeof vocab);
    if (!(en.tok = tokenizer_new(vocab, err))) goto fail;
    if (!(en.model = model_load(cfg->model.dir, err))) goto fail;
    if (tokenizer_check_model_vocab(en.tok, vocab, en.model->cfg.vocab_size, err) != BS_OK) goto fail;
    en.cfg = cfg;
    en.C = en.model->cfg.hidden;
    en.max_len = (int)cfg->model.max_seq_len;
    if (en.max_len > en.model->cfg.max_positions) en.max_len = en.model->cfg.max_positions;
    const char *encoder_id = en.model->encoder_id;
    int C = en.C;

    /* the heads follower reads the heads topic in the background while the labeled topic is read */
    if (!(heads = heads_new(cfg, encoder_id, C, NULL, err))) goto fail;

    double t0 = bs_now();
    if (read_labeled(cfg, framing, &st, &cnt, err) != BS_OK) goto fail;
    double t_read = bs_now() - t0;

    /* live reviews in review_id order: the order of rows is independent of partitions and arrival */
    const lrec **recs = malloc(sizeof *recs * (st.n ? st.n : 1));
    if (!recs) {
        bs_err(err, "out of memory");
        goto fail;
    }
    en.recs = recs;
    int n = 0;
    for (size_t i = 0; i < st.n; i++)
        if (st.recs[i].live) recs[n++] = &st.recs[i];
    qsort(recs, (size_t)n, sizeof *recs, cmp_rec);
    cnt.reviews = n;
    if (n == 0) {
        bs_err(err, "no labeled reviews in %s (%lld messages read, %lld undecodable, %lld with a bad label)",
               cfg->topics.labeled, (long long)cnt.messages, (long long)cnt.undecodable, (long long)cnt.bad_label);
        goto fail;
    }

    /* features */
    int is_cpu = !strcmp(cfg->model.device, "cpu") || engine_cuda_device_count() == 0;
    en.batch = is_cpu ? 32 : 256;
    bs_engine_opts eo = {.device = cfg->model.device,
                         .precision = cfg->model.precision,
                         .max_seqs = en.batch,
                         .max_tokens = en.batch * en.max_len,
                         .max_seq_len = en.max_len};
    if (!(en.engine = engine_new(en.model, &eo, err))) goto fail;
    char variant[32];
    snprintf(variant, sizeof variant, "%s/%s/%d", feature, bs_precision_name(engine_precision(en.engine)), en.max_len);
    if (!(en.cache = featcache_open(cfg->train.cache_dir, encoder_id, variant, C, err))) goto fail;
    log_info("trainer", "model=%s encoder_id=%s engine=\"%s\" feature=%s reviews=%d", cfg->model.dir, encoder_id,
             engine_describe(en.engine), variant, n);
    X = malloc(sizeof(float) * (size_t)n * (size_t)C);
    ok = malloc(sizeof(int) * (size_t)n);
    en.keys = malloc(sizeof *en.keys * (size_t)n);
    en.ids = malloc(sizeof(int32_t) * (size_t)en.batch * (size_t)en.max_len);
    en.cu = malloc(sizeof(int32_t) * (size_t)(en.batch + 1));
    en.feat = malloc(sizeof(float) * (size_t)en.batch * (size_t)C);
    en.rows = malloc(sizeof(int) * (size_t)en.batch);
    Xt = malloc(sizeof(float) * (size_t)n * (size_t)C);
    Xe = malloc(sizeof(float) * (size_t)n * (size_t)C);
    yt = malloc(sizeof(float) * (size_t)n);
    ye = malloc(sizeof(float) * (size_t)n);
    if (!X || !ok || !en.keys || !en.ids || !en.cu || !en.feat || !en.rows || !Xt || !Xe || !yt || !ye) {
        bs_err(err, "out of memory for %d reviews x %d features", n, C);
        goto fail;
    }
    t0 = bs_now();
    if (compute_features(&en, n, X, ok, &cnt, err) != BS_OK) goto fail;
    double t_encode = bs_now() - t0;

    /* the split */
    for (int i = 0; i < n; i++) {
        if (!ok[i]) continue;
        const float *row = X + (size_t)i * C;
        float lab = (float)recs[i]->label;
        if (in_eval(recs[i]->id, recs[i]->id_len, cfg->train.eval_fraction)) {
            memcpy(Xe + (size_t)cnt.n_eval * C, row, sizeof(float) * (size_t)C);
            ye[cnt.n_eval++] = lab;
        } else {
            memcpy(Xt + (size_t)cnt.n_train * C, row, sizeof(float) * (size_t)C);
            yt[cnt.n_train++] = lab;
        }
    }
    if (cnt.n_train == 0) {
        bs_err(err, "no training rows: %d reviews, all in the eval split (train.eval_fraction %g)", n,
               cfg->train.eval_fraction);
        goto fail;
    }

    /* training */
    if (!(head = head_new(C, TRAIN_HIDDEN))) {
        bs_err(err, "out of memory");
        goto fail;
    }
    bs_rng init_rng = {to.seed ^ TRAIN_INIT_SALT};
    trainer_init_head(head, &init_rng);
    fit_ctx fc = {.h = head,
                  .Xe = Xe,
                  .ye = ye,
                  .n_eval = cnt.n_eval,
                  .steps_per_epoch = (cnt.n_train + to.batch - 1) / to.batch,
                  .last_epoch_loss = NAN};
    log_info("training", "n_train=%d n_eval=%d epochs=%d batch=%d lr=%g weight_decay=%g seed=%llu", cnt.n_train,
             cnt.n_eval, to.epochs, to.batch, to.lr, to.weight_decay, (unsigned long long)to.seed);
    t0 = bs_now();
    if (trainer_fit(head, Xt, yt, cnt.n_train, &to, on_step, &fc, err) != BS_OK) goto fail;
    double t_train = bs_now() - t0;
    trainer_metrics em = {.loss = NAN, .accuracy = NAN, .auc = NAN};
    if (cnt.n_eval > 0 && trainer_eval(head, Xe, ye, cnt.n_eval, &em, err) != BS_OK) goto fail;

    /* the gate: the head workers serve now, judged on the same eval rows */
    heads_wait(heads, (int)cfg->train.read_timeout_ms);
    if (!heads_caught_up(heads)) {
        bs_err(err,
               "%s: not read to its end within train.read_timeout_ms (%lld ms): cannot tell the current head "
               "or the next version",
               cfg->topics.heads, (long long)cfg->train.read_timeout_ms);
        goto fail;
    }
    current_head ch = {.source = NULL};
    if ((cur = heads_acquire_newer(heads, 0))) {
        ch.version = cur->version;
        ch.source = "topic";
    } else if (*cfg->head.file && access(cfg->head.file, R_OK) == 0) {
        char herr[BS_ERRLEN];
        cur = head_load(cfg->head.file, NULL, herr);
        if (cur && head_validate(cur, C, herr) != BS_OK) {
            head_free(cur);
            cur = NULL;
        }
        if (cur)
            ch.source = "file";
        else
            log_warn("head.file ignored as the current head", "detail=\"%s\"", herr);
    }
    if (cur && cnt.n_eval > 0) {
        if (trainer_eval(cur, Xe, ye, cnt.n_eval, &ch.m, err) != BS_OK) goto fail;
        ch.evaluated = 1;
    }
    int publish_it, forced = 0;
    char reason[256];
    if (!cur) {
        publish_it = 1;
        snprintf(reason, sizeof reason, "no current head");
    } else if (!ch.evaluated) {
        publish_it = forced = force;
        snprintf(reason, sizeof reason, "no eval reviews to compare with the current head v%lld%s",
                 (long long)ch.version, force ? " (forced)" : "");
    } else if (em.accuracy + TRAIN_GATE_EPS >= ch.m.accuracy - cfg->train.max_regression) {
        publish_it = 1;
        snprintf(reason, sizeof reason, "eval accuracy %.4f >= current v%lld %.4f - max_regression %g", em.accuracy,
                 (long long)ch.version, ch.m.accuracy, cfg->train.max_regression);
    } else {
        publish_it = forced = force;
        snprintf(reason, sizeof reason, "eval accuracy %.4f < current v%lld %.4f - max_regression %g%s", em.accuracy,
                 (long long)ch.version, ch.m.accuracy, cfg->train.max_regression, force ? " (forced)" : "");
    }
    log_info(publish_it ? "gate: publish" : "gate: refused", "reason=\"%s\"", reason);

    /* metrics carried by the record: only finite values (no AUC with one class, nothing for an empty split) */
    const char *mnames[6];
    double mvalues[6];
    int nm = 0;
    const char *all_names[6] = {"train_loss", "eval_loss", "eval_accuracy", "eval_auc", "n_train", "n_eval"};
    const double all_values[6] = {fc.last_epoch_loss, em.loss, em.accuracy, em.auc, cnt.n_train, cnt.n_eval};
    for (int i = 0; i < 6; i++)
        if (isfinite(all_values[i])) mnames[nm] = all_names[i], mvalues[nm++] = all_values[i];

    summary = json_object();
    json_object_set_new(summary, "status", json_string(publish_it ? "published" : "gated"));
    json_object_set_new(summary, "reason", json_string(reason));
    json_object_set_new(summary, "forced", json_boolean(forced));
    json_object_set_new(summary, "encoder_id", json_string(encoder_id));
    json_object_set_new(summary, "feature", json_string(feature));
    json_object_set_new(summary, "metrics", metrics_json(all_names, all_values, 6));
    if (cur) {
        json_t *c = json_object();
        json_object_set_new(c, "version", json_integer(ch.version));
        json_object_set_new(c, "source", json_string(ch.source));
        json_object_set_new(c, "eval_loss", ch.evaluated ? jnum(ch.m.loss) : json_null());
        json_object_set_new(c, "eval_accuracy", ch.evaluated ? jnum(ch.m.accuracy) : json_null());
        json_object_set_new(c, "eval_auc", ch.evaluated ? jnum(ch.m.auc) : json_null());
        json_object_set_new(summary, "current", c);
    } else {
        json_object_set_new(summary, "current", json_null());
    }
    json_object_set_new(summary, "counts", counts_json(&cnt));
    json_object_set_new(summary, "partial_read", json_boolean(cnt.partial));
    json_t *js = json_object();
    json_object_set_new(js, "read", json_real(t_read));
    json_object_set_new(js, "encode", json_real(t_encode));
    json_object_set_new(js, "train", json_real(t_train));
    json_object_set_new(summary, "seconds", js);

    if (publish_it) {
        int64_t maxv = heads_max_version(heads);
        if (maxv == INT64_MAX) {
            bs_err(err, "%s: version %lld cannot be incremented", cfg->topics.heads, (long long)maxv);
            goto fail;
        }
        bs_head_weights hw = {.version = maxv + 1,
                              .encoder_id = encoder_id,
                              .feature = feature,
                              .input_dim = C,
                              .hidden_dim = TRAIN_HIDDEN,
                              .fc1_weight = head->fc1_w,
                              .fc1_bias = head->fc1_b,
                              .fc2_weight = head->fc2_w,
                              .fc2_bias = head->fc2_b,
                              .n_metrics = nm,
                              .metric_names = mnames,
                              .metric_values = mvalues,
                              .created_at = bs_wall_ms()};
        uint8_t sig[HEADS_SIGNATURE_LEN];
        const char *key = cfg->head.hmac_key;
        if (*key) {
            if (heads_sign(&hw, key, strlen(key), sig, err) != BS_OK) goto fail;
            hw.has_signature = 1, hw.signature = sig, hw.signature_len = sizeof sig;
        }
        /* what every worker will check, checked here first */
        const char *why = NULL;
        if (heads_validate(&hw, encoder_id, C, feature, key, &why, err) != BS_OK) goto fail;
        delivery d = {0};
        if (publish(cfg, &hw, &d, err) != BS_OK) goto fail;
        head->version = hw.version;
        log_info("head published", "topic=%s version=%lld partition=%d offset=%lld signed=%d", cfg->topics.heads,
                 (long long)hw.version, (int)d.partition, (long long)d.offset, hw.has_signature);

        /* the same head on disk, for audits and offline `score --head` */
        char hpath[4096], jpath[4096];
        if (write_head_files(cfg, head, &hw, &d, &to, en.max_len, engine_precision(en.engine), reason, hpath, jpath,
                             err) != BS_OK)
            goto fail;
        json_object_set_new(summary, "version", json_integer(hw.version));
        json_object_set_new(summary, "signed", json_boolean(hw.has_signature));
        json_t *files = json_object();
        json_object_set_new(files, "head", json_string(hpath));
        json_object_set_new(files, "meta", json_string(jpath));
        json_object_set_new(summary, "files", files);
    } else {
        json_object_set_new(summary, "version", json_null());
        json_object_set_new(summary, "files", json_null());
    }
    json_dumpf(summary, stdout, JSON_COMPACT | JSON_REAL_PRECISION(9));
    fputc('\n', stdout);
    fflush(stdout);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "bertstream train: %s\n", err);
    rc = 1;
done:
    json_decref(summary);
    heads_free(heads);
    head_free(head);
    head_free(cur);
    featcache_close(en.cache);
    engine_free(en.engine);
    model_free(en.model);
    tokenizer_free(en.tok);
    tokens_free(&en.tk);
    free((void *)en.recs);
    free(en.keys);
    free(en.ids);
    free(en.cu);
    free(en.feat);
    free(en.rows);
    free(X);
    free(Xt);
    free(yt);
    free(Xe);
    free(ye);
    free(ok);
    store_free(&st);
    config_free(cfg);
    return rc;
}
