/* Heads on the heads topic: canonical HMAC-SHA256 signing (OpenSSL), validation with stable reasons,
 * and the follower thread that keeps the newest valid head for one encoder. The worker polls
 * heads_acquire_newer() between batches, so a swap never happens inside a batch. */
#include "heads.h"

#include <inttypes.h>
#include <math.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kafka.h"
#include "log.h"

const char *const heads_reject_reasons[] = {HEADS_R_ENCODER_MISMATCH, HEADS_R_BAD_SHAPE, HEADS_R_NOT_FINITE,
                                            HEADS_R_FEATURE_MISMATCH, HEADS_R_UNSIGNED,  HEADS_R_BAD_SIGNATURE,
                                            HEADS_R_UNDECODABLE};
const int heads_reject_reason_count = (int)(sizeof heads_reject_reasons / sizeof heads_reject_reasons[0]);

/* ---- canonical bytes and signatures ---- */

#define CANON_TAG "bertstream.head.v1\n"

static int put_u32(bs_buf *b, uint32_t v) {
    uint8_t x[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return bs_buf_append(b, x, 4);
}

static int put_u64(bs_buf *b, uint64_t v) {
    uint8_t x[8];
    for (int i = 0; i < 8; i++) x[i] = (uint8_t)(v >> (8 * i));
    return bs_buf_append(b, x, 8);
}

static int put_str(bs_buf *b, const char *s) {
    if (!s) s = "";
    size_t n = strlen(s);
    if (n > UINT32_MAX) return BS_ERR;
    return put_u32(b, (uint32_t)n) | bs_buf_append(b, s, n);
}

static int put_floats(bs_buf *b, const float *f, size_t n) {
    if (bs_buf_reserve(b, 4 * n) != BS_OK) return BS_ERR;
    uint8_t *d = b->data + b->len;
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &f[i], 4);
        d[4 * i] = (uint8_t)u, d[4 * i + 1] = (uint8_t)(u >> 8), d[4 * i + 2] = (uint8_t)(u >> 16),
              d[4 * i + 3] = (uint8_t)(u >> 24);
    }
    b->len += 4 * n;
    b->data[b->len] = 0;
    return BS_OK;
}

static const char *metric_name(const bs_head_weights *hw, int i) {
    return hw->metric_names[i] ? hw->metric_names[i] : "";
}

int heads_canonical(const bs_head_weights *hw, bs_buf *out, char *err) {
    if (hw->input_dim <= 0 || hw->hidden_dim <= 0 || hw->input_dim > (1 << 20) || hw->hidden_dim > (1 << 20))
        return bs_err(err, "head v%" PRId64 ": input_dim %d and hidden_dim %d out of range", hw->version, hw->input_dim,
                      hw->hidden_dim);
    if (!hw->fc1_weight || !hw->fc1_bias || !hw->fc2_weight || !hw->fc2_bias)
        return bs_err(err, "head v%" PRId64 ": a tensor is missing", hw->version);
    if (hw->n_metrics < 0 || (hw->n_metrics > 0 && (!hw->metric_names || !hw->metric_values)))
        return bs_err(err, "head v%" PRId64 ": bad metrics", hw->version);
    size_t C = (size_t)hw->input_dim, Hd = (size_t)hw->hidden_dim;
    out->len = 0;
    int rc = bs_buf_append(out, CANON_TAG, sizeof CANON_TAG - 1) | put_u64(out, (uint64_t)hw->version) |
             put_str(out, hw->encoder_id) | put_str(out, hw->feature) | put_u32(out, (uint32_t)hw->input_dim) |
             put_u32(out, (uint32_t)hw->hidden_dim) | put_floats(out, hw->fc1_weight, Hd * C) |
             put_floats(out, hw->fc1_bias, Hd) | put_floats(out, hw->fc2_weight, Hd) |
             put_floats(out, hw->fc2_bias, 1) | put_u64(out, (uint64_t)hw->created_at) |
             put_u32(out, (uint32_t)hw->n_metrics);
    if (rc != BS_OK) return bs_err(err, "head v%" PRId64 ": out of memory for the canonical bytes", hw->version);
    if (hw->n_metrics > 0) {
        int *order = malloc(sizeof(int) * (size_t)hw->n_metrics);
        if (!order) return bs_err(err, "out of memory");
        /* insertion sort by name: a handful of metrics, and qsort has no context argument */
        for (int i = 0; i < hw->n_metrics; i++) {
            int j = i;
            for (; j > 0 && strcmp(metric_name(hw, order[j - 1]), metric_name(hw, i)) > 0; j--) order[j] = order[j - 1];
            order[j] = i;
        }
        for (int i = 0; i < hw->n_metrics && rc == BS_OK; i++) {
            uint64_t bits;
            memcpy(&bits, &hw->metric_values[order[i]], 8);
            rc = put_str(out, metric_name(hw, order[i])) | put_u64(out, bits);
        }
        free(order);
        if (rc != BS_OK) return bs_err(err, "out of memory for the canonical bytes");
    }
    return BS_OK;
}

static int hmac_canonical(const bs_head_weights *hw, const char *key, size_t key_len, uint8_t sig[32], char *err) {
    bs_buf buf = {0};
    int rc = BS_ERR;
    static const unsigned char empty_key[1] = {0};
    unsigned int mdlen = 0;
    if (heads_canonical(hw, &buf, err) != BS_OK) goto out;
    if (!HMAC(EVP_sha256(), key_len ? (const void *)key : empty_key, (int)key_len, buf.data, buf.len, sig, &mdlen) ||
        mdlen != HEADS_SIGNATURE_LEN) {
        bs_err(err, "HMAC-SHA256 failed");
        goto out;
    }
    rc = BS_OK;
out:
    bs_buf_free(&buf);
    return rc;
}

int heads_sign(const bs_head_weights *hw, const char *key, size_t key_len, uint8_t sig[HEADS_SIGNATURE_LEN],
               char *err) {
    return hmac_canonical(hw, key, key_len, sig, err);
}

int heads_verify(const bs_head_weights *hw, const char *key, size_t key_len) {
    uint8_t want[HEADS_SIGNATURE_LEN];
    if (!hw->has_signature || !hw->signature || hw->signature_len != HEADS_SIGNATURE_LEN) return 0;
    if (hmac_canonical(hw, key, key_len, want, NULL) != BS_OK) return 0;
    return CRYPTO_memcmp(want, hw->signature, HEADS_SIGNATURE_LEN) == 0;
}

/* ---- validation ---- */

static int all_finite(const float *f, size_t n, size_t *bad) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(f[i])) {
            *bad = i;
            return 0;
        }
    return 1;
}

int heads_validate(const bs_head_weights *hw, const char *expect_encoder_id, int expect_input_dim,
                   const char *expect_feature, const char *hmac_key, const char **reason_code, char *err) {
    if (reason_code) *reason_code = NULL;
    const char *enc = hw->encoder_id ? hw->encoder_id : "";
    if (strcmp(enc, expect_encoder_id ? expect_encoder_id : "") != 0)
        return bs_err_code(reason_code, HEADS_R_ENCODER_MISMATCH, err,
                           "head v%" PRId64 ": encoder_id %.80s is not %.80s", hw->version, enc,
                           expect_encoder_id ? expect_encoder_id : "");
    if (hw->input_dim != expect_input_dim)
        return bs_err_code(reason_code, HEADS_R_BAD_SHAPE, err,
                           "head v%" PRId64 ": input_dim %d, the model's hidden size is %d", hw->version, hw->input_dim,
                           expect_input_dim);
    if (hw->hidden_dim < 1 || hw->hidden_dim > (1 << 20))
        return bs_err_code(reason_code, HEADS_R_BAD_SHAPE, err,
                           "head v%" PRId64 ": hidden_dim %d is out of range 1..%d", hw->version, hw->hidden_dim,
                           1 << 20);
    if (!hw->fc1_weight || !hw->fc1_bias || !hw->fc2_weight || !hw->fc2_bias)
        return bs_err_code(reason_code, HEADS_R_BAD_SHAPE, err, "head v%" PRId64 ": a tensor is missing", hw->version);
    const char *feat = hw->feature ? hw->feature : "";
    if (strcmp(feat, expect_feature ? expect_feature : "") != 0)
        return bs_err_code(reason_code, HEADS_R_FEATURE_MISMATCH, err,
                           "head v%" PRId64 ": feature '%.32s', the model uses '%.32s'", hw->version, feat,
                           expect_feature ? expect_feature : "");
    if (hmac_key && *hmac_key) {
        if (!hw->has_signature)
            return bs_err_code(reason_code, HEADS_R_UNSIGNED, err,
                               "head v%" PRId64 ": unsigned, and head.hmac_key is set", hw->version);
        if (!heads_verify(hw, hmac_key, strlen(hmac_key)))
            return bs_err_code(reason_code, HEADS_R_BAD_SIGNATURE, err,
                               "head v%" PRId64 ": signature (%zu bytes) does not match head.hmac_key", hw->version,
                               hw->signature_len);
    }
    size_t Hd = (size_t)hw->hidden_dim, C = (size_t)hw->input_dim, bad = 0;
    const float *t[4] = {hw->fc1_weight, hw->fc1_bias, hw->fc2_weight, hw->fc2_bias};
    const size_t n[4] = {Hd * C, Hd, Hd, 1};
    static const char *const names[4] = {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"};
    for (int i = 0; i < 4; i++)
        if (!all_finite(t[i], n[i], &bad))
            return bs_err_code(reason_code, HEADS_R_NOT_FINITE, err, "head v%" PRId64 ": %s[%zu] is %g", hw->version,
                               names[i], bad, (double)t[i][bad]);
    return BS_OK;
}

int heads_decode(bs_codec *codec, const void *val, size_t len, bs_head_weights *out, char *err) {
    const char *code = NULL;
    if (codec_decode_head_weights(codec, BS_FRAMING_AVRO, -1, val, len, out, &code, err) == BS_OK) return BS_OK;
    if (val && len > 5 && ((const uint8_t *)val)[0] == 0) {
        char err2[BS_ERRLEN];
        if (codec_decode_head_weights(codec, BS_FRAMING_CONFLUENT, -1, val, len, out, &code, err2) == BS_OK)
            return BS_OK;
    }
    return BS_ERR;
}

int heads_check(bs_codec *codec, const void *val, size_t len, const char *expect_encoder_id, int expect_input_dim,
                const char *expect_feature, const char *hmac_key, bs_head_weights *out, const char **reason_code,
                char *err) {
    if (reason_code) *reason_code = NULL;
    if (heads_decode(codec, val, len, out, err) != BS_OK) {
        if (reason_code) *reason_code = HEADS_R_UNDECODABLE;
        return BS_ERR;
    }
    return heads_validate(out, expect_encoder_id, expect_input_dim, expect_feature, hmac_key, reason_code, err);
}

bs_head *heads_to_head(const bs_head_weights *hw) {
    bs_head *h = head_new(hw->input_dim, hw->hidden_dim);
    if (!h) return NULL;
    size_t Hd = (size_t)hw->hidden_dim, C = (size_t)hw->input_dim;
    memcpy(h->fc1_w, hw->fc1_weight, sizeof(float) * Hd * C);
    memcpy(h->fc1_b, hw->fc1_bias, sizeof(float) * Hd);
    memcpy(h->fc2_w, hw->fc2_weight, sizeof(float) * Hd);
    h->fc2_b[0] = hw->fc2_bias[0];
    h->version = hw->version;
    return h;
}

/* ---- librdkafka plumbing shared with the trainer ---- */

/* client.id (unless the user set one), then kafka.* and the client's own section (consumer.* or
 * producer.*), with kafka.c's log and error callbacks. */
static rd_kafka_conf_t *client_conf(const bs_config *cfg, const char *section, const bs_kvlist *own,
                                    const char *client_id, char *err) {
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (kafka_conf_default(conf, &cfg->kafka, own, "client.id", client_id, err) != BS_OK ||
        kafka_conf_apply(conf, "kafka", &cfg->kafka, err) != BS_OK ||
        kafka_conf_apply(conf, section, own, err) != BS_OK) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    return conf;
}

rd_kafka_conf_t *heads_consumer_conf(const bs_config *cfg, const char *client_id, char *err) {
    rd_kafka_conf_t *conf = client_conf(cfg, "consumer", &cfg->consumer, client_id, err);
    if (!conf) return NULL;
    /* An assign-only reader: it never joins a group and never commits, so whatever group.id the
     * config carries (the worker's own) is left untouched. */
    if (kafka_conf_set(conf, "", "enable.auto.commit", "false", err) != BS_OK ||
        kafka_conf_set(conf, "", "enable.auto.offset.store", "false", err) != BS_OK ||
        kafka_conf_set(conf, "", "enable.partition.eof", "true", err) != BS_OK) {
        rd_kafka_conf_destroy(conf);
        return NULL;
    }
    return conf;
}

rd_kafka_conf_t *heads_producer_conf(const bs_config *cfg, const char *client_id, char *err) {
    return client_conf(cfg, "producer", &cfg->producer, client_id, err);
}

/* Partition ids of topic (empty when it does not exist). *ids is malloc'd. */
static int topic_partitions(rd_kafka_t *rk, const char *topic, int timeout_ms, int32_t **ids, int *n, char *err) {
    *ids = NULL;
    *n = 0;
    rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
    if (!rkt) return bs_err(err, "topic %s: %s", topic, rd_kafka_err2str(rd_kafka_last_error()));
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms);
    rd_kafka_topic_destroy(rkt);
    if (e) return bs_err(err, "topic %s: metadata: %s", topic, rd_kafka_err2str(e));
    int rc = BS_OK;
    for (int i = 0; i < md->topic_cnt; i++) {
        const struct rd_kafka_metadata_topic *t = &md->topics[i];
        if (strcmp(t->topic, topic) != 0) continue;
        if (t->err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART || t->err == RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE ||
            t->partition_cnt == 0)
            break;
        if (t->err) {
            rc = bs_err(err, "topic %s: metadata: %s", topic, rd_kafka_err2str(t->err));
            break;
        }
        *ids = malloc(sizeof(int32_t) * (size_t)t->partition_cnt);
        if (!*ids) {
            rc = bs_err(err, "out of memory");
            break;
        }
        for (int p = 0; p < t->partition_cnt; p++) (*ids)[p] = t->partitions[p].id;
        *n = t->partition_cnt;
    }
    rd_kafka_metadata_destroy(md);
    return rc;
}

int heads_assign_from_start(rd_kafka_t *rk, const char *topic, int timeout_ms, rd_kafka_topic_partition_list_t **parts,
                            char *err) {
    int32_t *ids = NULL;
    int n = 0;
    *parts = NULL;
    if (topic_partitions(rk, topic, timeout_ms, &ids, &n, err) != BS_OK) return BS_ERR;
    rd_kafka_topic_partition_list_t *assign = rd_kafka_topic_partition_list_new(n > 0 ? n : 1);
    rd_kafka_topic_partition_list_t *ends = rd_kafka_topic_partition_list_new(n > 0 ? n : 1);
    for (int i = 0; i < n; i++) {
        int64_t lo = 0, hi = 0;
        rd_kafka_resp_err_t e = rd_kafka_query_watermark_offsets(rk, topic, ids[i], &lo, &hi, timeout_ms);
        if (e) {
            bs_err(err, "topic %s partition %d: watermarks: %s", topic, (int)ids[i], rd_kafka_err2str(e));
            goto fail;
        }
        rd_kafka_topic_partition_list_add(assign, topic, ids[i])->offset = RD_KAFKA_OFFSET_BEGINNING;
        rd_kafka_topic_partition_t *tp = rd_kafka_topic_partition_list_add(ends, topic, ids[i]);
        /* an empty partition (hi <= lo) is already read to its end */
        tp->offset = hi > lo ? hi : 0;
    }
    rd_kafka_resp_err_t e = rd_kafka_assign(rk, assign);
    if (e) {
        bs_err(err, "topic %s: assign: %s", topic, rd_kafka_err2str(e));
        goto fail;
    }
    free(ids);
    rd_kafka_topic_partition_list_destroy(assign);
    *parts = ends;
    return BS_OK;
fail:
    free(ids);
    rd_kafka_topic_partition_list_destroy(assign);
    rd_kafka_topic_partition_list_destroy(ends);
    return BS_ERR;
}

/* ---- the follower ---- */

#define HEADS_META_TIMEOUT_MS 10000
#define HEADS_RECHECK_EMPTY_S 2.0 /* topic missing: look again this often */
#define HEADS_RECHECK_S 30.0      /* topic present: look for new partitions this often */

typedef struct {
    int32_t partition;
    int64_t end; /* high watermark captured at start (0: nothing to read) */
    int reached;
} heads_part;

struct bs_heads {
    rd_kafka_t *rk;
    bs_codec *codec; /* follower thread only */
    char *topic, *encoder_id, *feature, *hmac_key;
    int input_dim;
    bs_series *rejected_series[8]; /* by reason, in heads_reject_reasons order */

    heads_part *parts; /* follower thread only after start */
    int n_parts;
    double next_recheck;

    pthread_t thread;
    int thread_started;
    atomic_int stop;

    pthread_mutex_t lock; /* guards head, caught_up, max_version; cond signals changes */
    pthread_cond_t cond;
    bs_head *head;
    int caught_up;
    int64_t max_version;
    atomic_llong version;
    atomic_llong n_accepted, n_rejected;
};

static void count_rejection(bs_heads *hs, const char *reason) {
    atomic_fetch_add(&hs->n_rejected, 1);
    for (int i = 0; i < heads_reject_reason_count; i++)
        if (strcmp(reason, heads_reject_reasons[i]) == 0) metrics_inc(hs->rejected_series[i]);
}

/* Must hold the lock. */
static void update_caught_up(bs_heads *hs) {
    if (hs->caught_up) return;
    for (int i = 0; i < hs->n_parts; i++)
        if (!hs->parts[i].reached) return;
    hs->caught_up = 1;
    log_info("heads topic read to its end", "topic=%s version=%lld", hs->topic, (long long)atomic_load(&hs->version));
    pthread_cond_broadcast(&hs->cond);
}

static heads_part *find_part(bs_heads *hs, int32_t partition) {
    for (int i = 0; i < hs->n_parts; i++)
        if (hs->parts[i].partition == partition) return &hs->parts[i];
    return NULL;
}

static void mark_position(bs_heads *hs, int32_t partition, int64_t next_offset) {
    heads_part *p = find_part(hs, partition);
    if (!p || p->reached || next_offset < p->end) return;
    pthread_mutex_lock(&hs->lock);
    p->reached = 1;
    update_caught_up(hs);
    pthread_mutex_unlock(&hs->lock);
}

static void handle_message(bs_heads *hs, const rd_kafka_message_t *m) {
    char err[BS_ERRLEN];
    bs_head_weights hw;
    const char *reason = NULL;
    if (!m->payload) {
        log_debug("heads topic: tombstone ignored", "partition=%d offset=%lld", (int)m->partition,
                  (long long)m->offset);
        return;
    }
    int rc = heads_check(hs->codec, m->payload, m->len, hs->encoder_id, hs->input_dim, hs->feature, hs->hmac_key, &hw,
                         &reason, err);
    if (reason && strcmp(reason, HEADS_R_UNDECODABLE) == 0) {
        count_rejection(hs, reason);
        log_warn("head rejected", "reason=%s partition=%d offset=%lld detail=\"%s\"", reason, (int)m->partition,
                 (long long)m->offset, err);
        return;
    }
    int same_encoder = hw.encoder_id && strcmp(hw.encoder_id, hs->encoder_id) == 0;
    /* The next version the trainer publishes is above every authentic one, valid or not. */
    if (same_encoder && (!*hs->hmac_key || heads_verify(&hw, hs->hmac_key, strlen(hs->hmac_key)))) {
        pthread_mutex_lock(&hs->lock);
        if (hw.version > hs->max_version) hs->max_version = hw.version;
        pthread_mutex_unlock(&hs->lock);
    }
    if (rc != BS_OK) {
        count_rejection(hs, reason);
        /* Heads of other models on a shared topic are routine: info, not warn. */
        bs_log(same_encoder ? BS_LOG_WARN : BS_LOG_INFO, "head rejected",
               "reason=%s version=%lld partition=%d offset=%lld detail=\"%s\"", reason, (long long)hw.version,
               (int)m->partition, (long long)m->offset, err);
        return;
    }
    int64_t have = atomic_load(&hs->version);
    if (hw.version <= have) {
        log_debug("head ignored: not newer", "version=%lld held=%lld", (long long)hw.version, (long long)have);
        return;
    }
    bs_head *h = heads_to_head(&hw);
    if (!h) {
        log_error("head dropped: out of memory", "version=%lld", (long long)hw.version);
        return;
    }
    double acc = NAN;
    for (int i = 0; i < hw.n_metrics; i++)
        if (strcmp(hw.metric_names[i], "eval_accuracy") == 0) acc = hw.metric_values[i];
    pthread_mutex_lock(&hs->lock);
    bs_head *old = hs->head;
    hs->head = h;
    atomic_store(&hs->version, hw.version);
    pthread_cond_broadcast(&hs->cond);
    pthread_mutex_unlock(&hs->lock);
    head_free(old);
    atomic_fetch_add(&hs->n_accepted, 1);
    log_info("head accepted", "version=%lld feature=%s hidden_dim=%d created_at=%lld eval_accuracy=%.4f signed=%d",
             (long long)hw.version, hw.feature, hw.hidden_dim, (long long)hw.created_at, acc, hw.has_signature);
}

/* Looks for partitions that appeared since the last look (the topic created late, or grown) and
 * assigns them from the beginning, keeping the positions of those already assigned. */
static void recheck_partitions(bs_heads *hs) {
    char err[BS_ERRLEN];
    int32_t *ids = NULL;
    int n = 0;
    if (topic_partitions(hs->rk, hs->topic, 2000, &ids, &n, err) != BS_OK) {
        log_debug("heads topic metadata failed", "detail=\"%s\"", err);
        return;
    }
    int added = 0;
    for (int i = 0; i < n; i++) added += find_part(hs, ids[i]) == NULL;
    if (added) {
        heads_part *np = realloc(hs->parts, sizeof *np * (size_t)(hs->n_parts + added));
        rd_kafka_topic_partition_list_t *cur = NULL, *l = rd_kafka_topic_partition_list_new(n);
        if (np && rd_kafka_assignment(hs->rk, &cur) == RD_KAFKA_RESP_ERR_NO_ERROR) {
            hs->parts = np;
            rd_kafka_position(hs->rk, cur);
            for (int i = 0; i < cur->cnt; i++)
                rd_kafka_topic_partition_list_add(l, hs->topic, cur->elems[i].partition)->offset =
                    cur->elems[i].offset >= 0 ? cur->elems[i].offset : RD_KAFKA_OFFSET_BEGINNING;
            for (int i = 0; i < n; i++) {
                if (find_part(hs, ids[i])) continue;
                rd_kafka_topic_partition_list_add(l, hs->topic, ids[i])->offset = RD_KAFKA_OFFSET_BEGINNING;
                /* not part of the end offsets captured at start: counts as read */
                hs->parts[hs->n_parts++] = (heads_part){.partition = ids[i], .end = 0, .reached = 1};
            }
            rd_kafka_resp_err_t e = rd_kafka_assign(hs->rk, l);
            if (e)
                log_warn("heads topic: assign failed", "error=\"%s\"", rd_kafka_err2str(e));
            else
                log_info("heads topic: partitions assigned", "topic=%s partitions=%d", hs->topic, l->cnt);
        } else if (np) {
            hs->parts = np;
        }
        if (cur) rd_kafka_topic_partition_list_destroy(cur);
        rd_kafka_topic_partition_list_destroy(l);
    }
    free(ids);
}

static void *follower_main(void *arg) {
    bs_heads *hs = arg;
    while (!atomic_load(&hs->stop)) {
        double now = bs_now();
        if (now >= hs->next_recheck) {
            recheck_partitions(hs);
            hs->next_recheck = bs_now() + (hs->n_parts ? HEADS_RECHECK_S : HEADS_RECHECK_EMPTY_S);
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(hs->rk, 100);
        if (!m) continue;
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
            mark_position(hs, m->partition, m->offset);
        } else if (m->err) {
            log_warn("heads topic: consume error", "error=\"%s\"", rd_kafka_message_errstr(m));
        } else {
            handle_message(hs, m);
            mark_position(hs, m->partition, m->offset + 1);
        }
        rd_kafka_message_destroy(m);
    }
    return NULL;
}

bs_heads *heads_new(const bs_config *cfg, const char *encoder_id, int input_dim, bs_metric *rejected_or_NULL,
                    char *err) {
    char errstr[512];
    rd_kafka_topic_partition_list_t *ends = NULL;
    if (!cfg->topics.heads || !*cfg->topics.heads) {
        bs_err(err, "topics.heads is empty: no head updates to follow");
        return NULL;
    }
    bs_heads *hs = calloc(1, sizeof *hs);
    if (!hs) {
        bs_err(err, "out of memory");
        return NULL;
    }
    pthread_mutex_init(&hs->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&hs->cond, &ca);
    pthread_condattr_destroy(&ca);
    hs->topic = strdup(cfg->topics.heads);
    hs->encoder_id = strdup(encoder_id ? encoder_id : "");
    hs->feature = strdup(bs_feature_name(cfg->model.feature));
    hs->hmac_key = strdup(cfg->head.hmac_key ? cfg->head.hmac_key : "");
    hs->input_dim = input_dim;
    if (!hs->topic || !hs->encoder_id || !hs->feature || !hs->hmac_key) {
        bs_err(err, "out of memory");
        goto fail;
    }
    for (int i = 0; rejected_or_NULL && i < heads_reject_reason_count; i++) {
        hs->rejected_series[i] = metrics_with(rejected_or_NULL, heads_reject_reasons[i]);
        metrics_add(hs->rejected_series[i], 0);
    }
    if (!(hs->codec = codec_new(err))) goto fail;
    rd_kafka_conf_t *conf = heads_consumer_conf(cfg, "bertstream-heads", err);
    if (!conf) goto fail;
    hs->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!hs->rk) {
        rd_kafka_conf_destroy(conf);
        bs_err(err, "heads consumer: %s", errstr);
        goto fail;
    }
    conf = NULL; /* rd_kafka_new() took ownership of conf */
    rd_kafka_poll_set_consumer(hs->rk);
    if (heads_assign_from_start(hs->rk, hs->topic, HEADS_META_TIMEOUT_MS, &ends, err) != BS_OK) goto fail;
    hs->n_parts = ends->cnt;
    hs->parts = calloc((size_t)(ends->cnt > 0 ? ends->cnt : 1), sizeof *hs->parts);
    if (!hs->parts) {
        bs_err(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < ends->cnt; i++)
        hs->parts[i] = (heads_part){
            .partition = ends->elems[i].partition, .end = ends->elems[i].offset, .reached = ends->elems[i].offset <= 0};
    rd_kafka_topic_partition_list_destroy(ends);
    ends = NULL;
    update_caught_up(hs);
    hs->next_recheck = bs_now() + (hs->n_parts ? HEADS_RECHECK_S : HEADS_RECHECK_EMPTY_S);
    if (pthread_create(&hs->thread, NULL, follower_main, hs) != 0) {
        bs_err(err, "heads: cannot start the follower thread");
        goto fail;
    }
    hs->thread_started = 1;
    log_info("following heads", "topic=%s partitions=%d encoder_id=%s feature=%s signed=%s", hs->topic, hs->n_parts,
             hs->encoder_id, hs->feature, *hs->hmac_key ? "required" : "not checked");
    return hs;
fail:
    if (ends) rd_kafka_topic_partition_list_destroy(ends);
    heads_free(hs);
    return NULL;
}

int heads_wait(bs_heads *hs, int timeout_ms) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    if (timeout_ms >= 0) {
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) until.tv_sec++, until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&hs->lock);
    while (!hs->caught_up) {
        if (timeout_ms < 0)
            pthread_cond_wait(&hs->cond, &hs->lock);
        else if (pthread_cond_timedwait(&hs->cond, &hs->lock, &until) != 0)
            break;
    }
    int have = hs->head != NULL;
    pthread_mutex_unlock(&hs->lock);
    return have;
}

int heads_caught_up(bs_heads *hs) {
    pthread_mutex_lock(&hs->lock);
    int c = hs->caught_up;
    pthread_mutex_unlock(&hs->lock);
    return c;
}

bs_head *heads_acquire_newer(bs_heads *hs, int64_t have_version) {
    if (atomic_load(&hs->version) <= have_version) return NULL;
    pthread_mutex_lock(&hs->lock);
    bs_head *c = hs->head && hs->head->version > have_version ? head_clone(hs->head) : NULL;
    pthread_mutex_unlock(&hs->lock);
    return c;
}

int64_t heads_version(bs_heads *hs) {
    return atomic_load(&hs->version);
}

int64_t heads_max_version(bs_heads *hs) {
    pthread_mutex_lock(&hs->lock);
    int64_t v = hs->max_version;
    pthread_mutex_unlock(&hs->lock);
    return v;
}

int64_t heads_accepted_count(bs_heads *hs) {
    return atomic_load(&hs->n_accepted);
}
int64_t heads_rejected_count(bs_heads *hs) {
    return atomic_load(&hs->n_rejected);
}

void heads_free(bs_heads *hs) {
    if (!hs) return;
    if (hs->thread_started) {
        atomic_store(&hs->stop, 1);
        pthread_join(hs->thread, NULL);
    }
    if (hs->rk) {
        rd_kafka_consumer_close(hs->rk);
        rd_kafka_destroy(hs->rk);
    }
    codec_free(hs->codec);
    head_free(hs->head);
    free(hs->parts);
    free(hs->topic);
    free(hs->encoder_id);
    free(hs->feature);
    free(hs->hmac_key);
    pthread_cond_destroy(&hs->cond);
    pthread_mutex_destroy(&hs->lock);
    free(hs);
}
