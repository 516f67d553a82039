/* Heads: the canonical signed bytes (pinned against an independent Python HMAC), validation with
 * each stable rejection reason, and the follower against librdkafka's in-process mock cluster
 * (catch-up to the end offsets, latest valid version, rejections counted, live updates). */
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <math.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

#include "codec.h"
#include "config.h"
#include "heads.h"
#include "log.h"
#include "metrics.h"
#include "test.h"

/* The fixed record whose signature is pinned below. */
static const float k_w1[4] = {0.5f, -1.0f, 2.0f, 0.25f}, k_b1[2] = {0.125f, -0.5f}, k_w2[2] = {1.0f, -2.0f},
                   k_b2[1] = {0.75f};
static const char *const k_names[2] = {"n_train", "eval_accuracy"}; /* not sorted on purpose */
static const double k_values[2] = {900.0, 0.75};

static bs_head_weights fixed_head(void) {
    return (bs_head_weights){.version = 7,
                             .encoder_id = "sha256:test",
                             .feature = "pooler",
                             .input_dim = 2,
                             .hidden_dim = 2,
                             .fc1_weight = k_w1,
                             .fc1_bias = k_b1,
                             .fc2_weight = k_w2,
                             .fc2_bias = k_b2,
                             .n_metrics = 2,
                             .metric_names = k_names,
                             .metric_values = k_values,
                             .created_at = 1700000000000LL};
}

static void hex(const uint8_t *b, size_t n, char *out) {
    for (size_t i = 0; i < n; i++) sprintf(out + 2 * i, "%02x", b[i]);
}

static void heads_canonical_bytes_follow_the_documented_layout(void) {
    char err[BS_ERRLEN];
    bs_head_weights hw = fixed_head();
    bs_buf b = {0};
    CHECK_INT(heads_canonical(&hw, &b, err), BS_OK);
    /* hand-laid: tag, i64 version, str encoder_id, str feature, i32 C, i32 Hd, 9 floats, i64 created_at,
     * u32 n_metrics, then metrics sorted by name */
    CHECK_INT(b.len, 152);
    CHECK(memcmp(b.data, "bertstream.head.v1\n", 19) == 0);
    CHECK_INT(b.data[19], 7);
    CHECK_INT(b.data[27], 11); /* strlen("sha256:test") */
    CHECK(memcmp(b.data + 31, "sha256:test", 11) == 0);
    CHECK_INT(b.data[42], 6);
    CHECK(memcmp(b.data + 46, "pooler", 6) == 0);
    CHECK_INT(b.data[52], 2);
    CHECK_INT(b.data[56], 2);
    float f0;
    memcpy(&f0, b.data + 60, 4);
    CHECK(f0 == 0.5f);
    /* after 9 floats (36 bytes) and created_at (8): n_metrics, then the first name is eval_accuracy */
    CHECK_INT(b.data[60 + 36 + 8], 2);
    CHECK_INT(b.data[60 + 36 + 8 + 4], 13);
    CHECK(memcmp(b.data + 60 + 36 + 8 + 8, "eval_accuracy", 13) == 0);
    bs_buf_free(&b);
}

static void heads_sign_matches_python_hmac_sha256(void) {
    char err[BS_ERRLEN], h[65];
    bs_head_weights hw = fixed_head();
    uint8_t sig[HEADS_SIGNATURE_LEN];
    CHECK_INT(heads_sign(&hw, "k3y", 3, sig, err), BS_OK);
    hex(sig, sizeof sig, h);
    /* hmac.new(b"k3y", canonical, hashlib.sha256).hexdigest() from an independent Python layout */
    CHECK_STR(h, "a72fa5836c321591b9ee139c9d1ef7eca290111086706e43df95c27c69cb28d6");
}

static void heads_signature_ignores_metric_order_but_covers_every_field(void) {
    char err[BS_ERRLEN];
    bs_head_weights hw = fixed_head();
    uint8_t sig[32], sig2[32];
    CHECK_INT(heads_sign(&hw, "k3y", 3, sig, err), BS_OK);
    const char *names[2] = {"eval_accuracy", "n_train"};
    const double values[2] = {0.75, 900.0};
    bs_head_weights re = hw;
    re.metric_names = names, re.metric_values = values;
    CHECK_INT(heads_sign(&re, "k3y", 3, sig2, err), BS_OK);
    CHECK(memcmp(sig, sig2, 32) == 0);

    hw.has_signature = 1, hw.signature = sig, hw.signature_len = 32;
    CHECK_INT(heads_verify(&hw, "k3y", 3), 1);
    CHECK_INT(heads_verify(&hw, "k3Y", 3), 0);
    bs_head_weights t = hw;
    t.version = 8;
    CHECK_INT(heads_verify(&t, "k3y", 3), 0);
    t = hw, t.created_at++;
    CHECK_INT(heads_verify(&t, "k3y", 3), 0);
    t = hw, t.feature = "cls";
    CHECK_INT(heads_verify(&t, "k3y", 3), 0);
    const double v2[2] = {900.0, 0.76};
    t = hw, t.metric_values = v2;
    CHECK_INT(heads_verify(&t, "k3y", 3), 0);
    float w[4] = {0.5f, -1.0f, 2.0f, 0.25f};
    uint32_t u;
    memcpy(&u, &w[3], 4);
    u ^= 1; /* one bit of one weight */
    memcpy(&w[3], &u, 4);
    t = hw, t.fc1_weight = w;
    CHECK_INT(heads_verify(&t, "k3y", 3), 0);
    t = hw, t.signature_len = 31;
    CHECK_INT(heads_verify(&t, "k3y", 3), 0);
}

static void heads_signature_survives_an_avro_round_trip(void) {
    char err[BS_ERRLEN];
    bs_codec *codec = codec_new(err);
    bs_head_weights hw = fixed_head(), out;
    uint8_t sig[32];
    CHECK_INT(heads_sign(&hw, "k3y", 3, sig, err), BS_OK);
    hw.has_signature = 1, hw.signature = sig, hw.signature_len = 32;
    bs_buf b = {0};
    CHECK_INT(codec_encode_head_weights(codec, BS_FRAMING_AVRO, 0, &hw, &b, err), BS_OK);
    const char *reason = "x";
    CHECK_INT(heads_check(codec, b.data, b.len, "sha256:test", 2, "pooler", "k3y", &out, &reason, err), BS_OK);
    CHECK(reason == NULL);
    CHECK_INT(out.version, 7);
    /* Confluent framing decodes too (any schema id) */
    CHECK_INT(codec_encode_head_weights(codec, BS_FRAMING_CONFLUENT, 42, &hw, &b, err), BS_OK);
    CHECK_INT(heads_check(codec, b.data, b.len, "sha256:test", 2, "pooler", "k3y", &out, &reason, err), BS_OK);
    bs_head *h = heads_to_head(&out);
    CHECK(h != NULL);
    CHECK_INT(h->version, 7);
    CHECK_INT(h->in_dim, 2);
    CHECK_INT(h->hidden, 2);
    CHECK(h->fc1_w[2] == 2.0f && h->fc1_b[1] == -0.5f && h->fc2_w[1] == -2.0f && h->fc2_b[0] == 0.75f);
    head_free(h);
    bs_buf_free(&b);
    codec_free(codec);
}

/* Validates hw and returns the reason code ("ok" when accepted). */
static const char *reason_of(const bs_head_weights *hw, const char *key) {
    char err[BS_ERRLEN];
    const char *reason = NULL;
    int rc = heads_validate(hw, "sha256:test", 2, "pooler", key, &reason, err);
    if (rc == BS_OK) return reason == NULL ? "ok" : "ok-with-reason?";
    if (!*err) return "no-error-message";
    return reason ? reason : "no-reason";
}

static void heads_validate_rejects_each_fault_with_its_reason(void) {
    char err[BS_ERRLEN];
    bs_head_weights hw = fixed_head();
    CHECK_STR(reason_of(&hw, NULL), "ok");
    CHECK_STR(reason_of(&hw, ""), "ok"); /* an empty key checks nothing */

    bs_head_weights t = hw;
    t.encoder_id = "sha256:other";
    CHECK_STR(reason_of(&t, NULL), HEADS_R_ENCODER_MISMATCH);
    t = hw, t.input_dim = 3;
    CHECK_STR(reason_of(&t, NULL), HEADS_R_BAD_SHAPE);
    t = hw, t.hidden_dim = 0;
    CHECK_STR(reason_of(&t, NULL), HEADS_R_BAD_SHAPE);
    t = hw, t.fc2_bias = NULL;
    CHECK_STR(reason_of(&t, NULL), HEADS_R_BAD_SHAPE);
    t = hw, t.feature = "mean";
    CHECK_STR(reason_of(&t, NULL), HEADS_R_FEATURE_MISMATCH);

    float nan_w[4] = {0.5f, NAN, 2.0f, 0.25f}, inf_b[1] = {INFINITY};
    t = hw, t.fc1_weight = nan_w;
    CHECK_STR(reason_of(&t, NULL), HEADS_R_NOT_FINITE);
    t = hw, t.fc2_bias = inf_b;
    CHECK_STR(reason_of(&t, NULL), HEADS_R_NOT_FINITE);

    /* signatures: only checked when a key is configured */
    CHECK_STR(reason_of(&hw, "k3y"), HEADS_R_UNSIGNED);
    uint8_t sig[32];
    CHECK_INT(heads_sign(&hw, "k3y", 3, sig, err), BS_OK);
    t = hw, t.has_signature = 1, t.signature = sig, t.signature_len = 32;
    CHECK_STR(reason_of(&t, "k3y"), "ok");
    CHECK_STR(reason_of(&t, NULL), "ok");
    CHECK_STR(reason_of(&t, "wrong key"), HEADS_R_BAD_SIGNATURE);
    uint8_t bad[32];
    memcpy(bad, sig, 32);
    bad[31] ^= 0x80;
    t.signature = bad;
    CHECK_STR(reason_of(&t, "k3y"), HEADS_R_BAD_SIGNATURE);
    t.signature = sig, t.signature_len = 0;
    CHECK_STR(reason_of(&t, "k3y"), HEADS_R_BAD_SIGNATURE);
    /* a signed head with a NaN: the signature is checked first, the values next */
    uint8_t sig_nan[32];
    t = hw, t.fc1_weight = nan_w;
    CHECK_INT(heads_sign(&t, "k3y", 3, sig_nan, err), BS_OK);
    t.has_signature = 1, t.signature = sig_nan, t.signature_len = 32;
    CHECK_STR(reason_of(&t, "k3y"), HEADS_R_NOT_FINITE);

    /* the error line names the version */
    const char *reason = NULL;
    t = hw, t.encoder_id = "sha256:other";
    CHECK_INT(heads_validate(&t, "sha256:test", 2, "pooler", NULL, &reason, err), BS_ERR);
    CHECK_CONTAINS(err, "head v7");
    CHECK_CONTAINS(err, "sha256:other");
}

static void heads_check_reports_undecodable_values(void) {
    char err[BS_ERRLEN];
    bs_codec *codec = codec_new(err);
    bs_head_weights out;
    const char *reason = NULL;
    CHECK_INT(heads_check(codec, "", 0, "sha256:test", 2, "pooler", NULL, &out, &reason, err), BS_ERR);
    CHECK_STR(reason, HEADS_R_UNDECODABLE);
    const uint8_t junk[7] = {0, 0, 0, 0, 1, 0xff, 0xff};
    reason = NULL;
    CHECK_INT(heads_check(codec, junk, sizeof junk, "sha256:test", 2, "pooler", NULL, &out, &reason, err), BS_ERR);
    CHECK_STR(reason, HEADS_R_UNDECODABLE);
    /* a well-formed LabeledReview is not a HeadWeights */
    bs_buf b = {0};
    bs_labeled_review lr = {.review_id = "r1", .review_id_len = 2, .text = "fine", .text_len = 4, .label = 1};
    CHECK_INT(codec_encode_labeled_review(codec, BS_FRAMING_AVRO, 0, &lr, &b, err), BS_OK);
    reason = NULL;
    CHECK_INT(heads_check(codec, b.data, b.len, "sha256:test", 2, "pooler", NULL, &out, &reason, err), BS_ERR);
    CHECK_STR(reason, HEADS_R_UNDECODABLE);
    bs_buf_free(&b);
    codec_free(codec);
}

/* ---- the follower on the mock cluster ---- */

typedef struct {
    rd_kafka_t *rk;
    rd_kafka_mock_cluster_t *mc;
    bs_codec *codec;
    bs_buf buf;
} mock_env;

static int mock_start(mock_env *e) {
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "log_level", "0", NULL, 0);
    e->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!e->rk) return BS_ERR;
    e->mc = rd_kafka_mock_cluster_new(e->rk, 1);
    if (!e->mc) return BS_ERR;
    rd_kafka_mock_topic_create(e->mc, "heads", 2, 1);
    e->codec = codec_new(NULL);
    return e->codec ? BS_OK : BS_ERR;
}

static void mock_stop(mock_env *e) {
    bs_buf_free(&e->buf);
    codec_free(e->codec);
    if (e->mc) rd_kafka_mock_cluster_destroy(e->mc);
    if (e->rk) rd_kafka_destroy(e->rk);
}

/* Produces raw bytes to heads/partition and waits for delivery. */
static void produce_raw(mock_env *e, int32_t partition, const void *val, size_t len) {
    char errstr[512];
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_conf_set(conf, "bootstrap.servers", rd_kafka_mock_cluster_bootstraps(e->mc), errstr, sizeof errstr);
    rd_kafka_t *p = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    CHECK(p != NULL);
    if (!p) return;
    rd_kafka_resp_err_t err =
        rd_kafka_producev(p, RD_KAFKA_V_TOPIC("heads"), RD_KAFKA_V_PARTITION(partition),
                          RD_KAFKA_V_VALUE((void *)val, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
    CHECK_INT(err, 0);
    CHECK_INT(rd_kafka_flush(p, 10000), 0);
    rd_kafka_destroy(p);
}

static void produce_head(mock_env *e, int32_t partition, int64_t version, const char *encoder_id, float fc2_bias,
                         const char *key) {
    char err[BS_ERRLEN];
    const float b2[1] = {fc2_bias};
    bs_head_weights hw = fixed_head();
    hw.version = version;
    hw.encoder_id = encoder_id;
    hw.fc2_bias = b2;
    uint8_t sig[32];
    if (key) {
        CHECK_INT(heads_sign(&hw, key, strlen(key), sig, err), BS_OK);
        hw.has_signature = 1, hw.signature = sig, hw.signature_len = 32;
    }
    CHECK_INT(codec_encode_head_weights(e->codec, BS_FRAMING_AVRO, 0, &hw, &e->buf, err), BS_OK);
    produce_raw(e, partition, e->buf.data, e->buf.len);
}

static bs_config *follower_config(mock_env *e, const char *key) {
    char err[BS_ERRLEN], kv[600];
    bs_config *cfg = config_new_defaults();
    snprintf(kv, sizeof kv, "kafka.bootstrap.servers=%s", rd_kafka_mock_cluster_bootstraps(e->mc));
    CHECK_INT(config_set(cfg, kv, err), BS_OK);
    CHECK_INT(config_set(cfg, "topics.heads=heads", err), BS_OK);
    CHECK_INT(config_set(cfg, "model.feature=pooler", err), BS_OK);
    if (key) {
        snprintf(kv, sizeof kv, "head.hmac_key=%s", key);
        CHECK_INT(config_set(cfg, kv, err), BS_OK);
    }
    return cfg;
}

static void heads_follower_keeps_the_latest_valid_version_and_counts_rejections(void) {
    char err[BS_ERRLEN];
    mock_env e = {0};
    if (mock_start(&e) != BS_OK) {
        CHECK(!"mock cluster did not start");
        mock_stop(&e);
        return;
    }
    const char *key = "s3cret";
    /* partition 0 holds the valid history in order; partition 1 only rejects, so the counts do not
     * depend on which partition the follower reads first */
    produce_head(&e, 0, 1, "sha256:test", 0.5f, key);     /* valid */
    produce_head(&e, 0, 2, "sha256:test", 1.5f, key);     /* valid, newer */
    produce_head(&e, 0, 1, "sha256:test", 7.0f, key);     /* an old version again: ignored */
    produce_head(&e, 1, 5, "sha256:test", 9.0f, "wrong"); /* bad signature */
    produce_head(&e, 1, 6, "sha256:test", 9.0f, NULL);    /* unsigned */
    produce_head(&e, 1, 9, "sha256:other", 9.0f, key);    /* another model's head */
    produce_raw(&e, 1, "\x02garbage", 8);                 /* undecodable */

    bs_config *cfg = follower_config(&e, key);
    bs_metrics *reg = metrics_new();
    bs_metric *rejected = metrics_counter(reg, "bertstream_heads_rejected_total", "rejected heads", "reason", 0, err);
    CHECK(rejected != NULL);
    bs_heads *hs = heads_new(cfg, "sha256:test", 2, rejected, err);
    CHECK(hs != NULL);
    if (!hs) {
        fprintf(stderr, "heads_new: %s\n", err);
        goto out;
    }
    CHECK_INT(heads_wait(hs, 20000), 1);
    CHECK_INT(heads_caught_up(hs), 1);
    CHECK_INT(heads_version(hs), 2);
    CHECK_INT(heads_max_version(hs), 2); /* the unsigned and badly signed v5, v6 are not authentic */
    CHECK_INT(heads_accepted_count(hs), 2);
    CHECK_INT(heads_rejected_count(hs), 4);
    CHECK_INT(metrics_value(metrics_with(rejected, HEADS_R_BAD_SIGNATURE)), 1);
    CHECK_INT(metrics_value(metrics_with(rejected, HEADS_R_UNSIGNED)), 1);
    CHECK_INT(metrics_value(metrics_with(rejected, HEADS_R_ENCODER_MISMATCH)), 1);
    CHECK_INT(metrics_value(metrics_with(rejected, HEADS_R_UNDECODABLE)), 1);
    CHECK_INT(metrics_value(metrics_with(rejected, HEADS_R_NOT_FINITE)), 0);
    char *text = metrics_render_alloc(reg, NULL);
    CHECK_CONTAINS(text, "bertstream_heads_rejected_total{reason=\"feature_mismatch\"} 0");
    free(text);

    bs_head *h = heads_acquire_newer(hs, 0);
    CHECK(h != NULL);
    if (h) {
        CHECK_INT(h->version, 2);
        CHECK(h->fc2_b[0] == 1.5f);
        head_free(h);
    }
    CHECK(heads_acquire_newer(hs, 2) == NULL);

    /* a live update: the next version arrives while the follower runs */
    produce_head(&e, 1, 3, "sha256:test", 2.5f, key);
    h = NULL;
    for (int i = 0; i < 200 && !h; i++) {
        h = heads_acquire_newer(hs, 2);
        if (!h) usleep(50 * 1000);
    }
    CHECK(h != NULL);
    if (h) {
        CHECK_INT(h->version, 3);
        CHECK(h->fc2_b[0] == 2.5f);
        head_free(h);
    }
    CHECK_INT(heads_max_version(hs), 3);
    heads_free(hs);
out:
    metrics_free(reg);
    config_free(cfg);
    mock_stop(&e);
}

static void heads_follower_on_a_missing_topic_is_caught_up_without_a_head(void) {
    char err[BS_ERRLEN];
    mock_env e = {0};
    if (mock_start(&e) != BS_OK) {
        CHECK(!"mock cluster did not start");
        mock_stop(&e);
        return;
    }
    bs_config *cfg = follower_config(&e, NULL);
    CHECK_INT(config_set(cfg, "topics.heads=no-such-topic", err), BS_OK);
    bs_heads *hs = heads_new(cfg, "sha256:test", 2, NULL, err);
    CHECK(hs != NULL);
    if (hs) {
        CHECK_INT(heads_wait(hs, 10000), 0);
        CHECK_INT(heads_caught_up(hs), 1);
        CHECK_INT(heads_version(hs), 0);
        CHECK_INT(heads_max_version(hs), 0);
        CHECK(heads_acquire_newer(hs, 0) == NULL);
        heads_free(hs);
    }
    /* an empty topics.heads is an error naming the key */
    CHECK_INT(config_set(cfg, "topics.heads=", err), BS_OK);
    CHECK(heads_new(cfg, "sha256:test", 2, NULL, err) == NULL);
    CHECK_CONTAINS(err, "topics.heads");
    config_free(cfg);
    mock_stop(&e);
}

int main(void) {
    bs_log_set_level("warn");
    RUN(heads_canonical_bytes_follow_the_documented_layout);
    RUN(heads_sign_matches_python_hmac_sha256);
    RUN(heads_signature_ignores_metric_order_but_covers_every_field);
    RUN(heads_signature_survives_an_avro_round_trip);
    RUN(heads_validate_rejects_each_fault_with_its_reason);
    RUN(heads_check_reports_undecodable_values);
    RUN(heads_follower_keeps_the_latest_valid_version_and_counts_rejections);
    RUN(heads_follower_on_a_missing_topic_is_caught_up_without_a_head);
    return bs_test_done();
}
