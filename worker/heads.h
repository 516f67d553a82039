/* Versioned heads on the heads topic: canonical HMAC-SHA256 signing, validation with stable
 * rejection reasons, and the follower (a background Kafka reader) that keeps the latest valid
 * head for one encoder so the worker can swap heads between batches without a restart.
 * docs/retraining.md describes the protocol. */
#ifndef BS_HEADS_H
#define BS_HEADS_H

#include <librdkafka/rdkafka.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"
#include "common.h"
#include "config.h"
#include "head.h"
#include "metrics.h"

/* ---- signing ----
 * signature = HMAC-SHA256(key = the bytes of head.hmac_key, message = the canonical bytes), 32 bytes.
 * The canonical bytes of a HeadWeights record (integers little-endian, "str" = u32 byte length + bytes):
 *   "bertstream.head.v1\n"                   19 bytes, domain separation
 *   version                                  i64
 *   encoder_id, feature                      str, str
 *   input_dim C, hidden_dim Hd               i32, i32
 *   fc1_weight, fc1_bias, fc2_weight, fc2_bias   Hd*C, Hd, Hd, 1 floats as IEEE-754 F32 bit patterns (u32 each)
 *   created_at                               i64 (ms since the Unix epoch)
 *   n_metrics                                u32
 *   per metric, sorted by name (bytewise):   str name, f64 value as IEEE-754 bit pattern (u64)
 * The metrics ARE covered (an operator reading eval_accuracy off the topic can trust it); the
 * signature field itself is not. Independent of Avro, so any encoder of the same record verifies. */
#define HEADS_SIGNATURE_LEN 32

/* Writes the canonical bytes into out (overwritten). BS_ERR on bad dims, missing tensors or no memory. */
int heads_canonical(const bs_head_weights *hw, bs_buf *out, char *err);
/* sig[32] = HMAC-SHA256 of the canonical bytes with key (key_len bytes, may be 0). */
int heads_sign(const bs_head_weights *hw, const char *key, size_t key_len, uint8_t sig[HEADS_SIGNATURE_LEN], char *err);
/* 1 when hw carries a signature that matches (constant-time compare), 0 when it does not or is absent. */
int heads_verify(const bs_head_weights *hw, const char *key, size_t key_len);

/* ---- validation ----
 * Stable reason codes: the `reason` label of bertstream_heads_rejected_total. Never rename one. */
#define HEADS_R_ENCODER_MISMATCH "encoder_mismatch" /* encoder_id differs from the worker's model */
#define HEADS_R_BAD_SHAPE "bad_shape"               /* input_dim != model hidden, hidden_dim < 1, tensor missing */
#define HEADS_R_NOT_FINITE "not_finite"             /* a NaN or infinity in a tensor */
#define HEADS_R_FEATURE_MISMATCH "feature_mismatch" /* feature differs from the worker's model.feature */
#define HEADS_R_UNSIGNED "unsigned"                 /* a key is configured and the head carries no signature */
#define HEADS_R_BAD_SIGNATURE "bad_signature"       /* a key is configured and the signature does not match */
#define HEADS_R_UNDECODABLE "undecodable"           /* the message is not a HeadWeights record */

extern const char *const heads_reject_reasons[];
extern const int heads_reject_reason_count;

/* Checks, in this order: encoder_id == expect_encoder_id; shape (input_dim == expect_input_dim,
 * hidden_dim >= 1, the four tensors present); feature == expect_feature ("pooler" | "cls" | "mean");
 * when hmac_key is not NULL and not "": signature present, then valid; every value finite.
 * BS_OK, or BS_ERR with *reason_code = one of HEADS_R_* (when not NULL) and one line in err. */
int heads_validate(const bs_head_weights *hw, const char *expect_encoder_id, int expect_input_dim,
                   const char *expect_feature, const char *hmac_key, const char **reason_code, char *err);

/* Decodes one heads-topic value: bare Avro (what `train` publishes) or, when that fails and the
 * value starts with the Confluent magic byte, Confluent framing with any schema id. */
int heads_decode(bs_codec *codec, const void *val, size_t len, bs_head_weights *out, char *err);

/* One heads-topic value, as the follower judges it: heads_decode (undecodable on failure), then
 * heads_validate. *out points into codec memory (valid until the codec's next decode). */
int heads_check(bs_codec *codec, const void *val, size_t len, const char *expect_encoder_id, int expect_input_dim,
                const char *expect_feature, const char *hmac_key, bs_head_weights *out, const char **reason_code,
                char *err);

/* A new bs_head holding hw's tensors, with ->version = hw->version. NULL when out of memory or bad dims. */
bs_head *heads_to_head(const bs_head_weights *hw);

/* ---- the follower ----
 * Its own librdkafka consumer (kafka.* then consumer.* properties, auto-commit off, no group join:
 * every partition of topics.heads is assigned from the beginning), read by a background thread.
 * For each message: decode, validate (encoder_id, input_dim, cfg->model.feature, head.hmac_key),
 * then keep it when its version is above the held one; versions at or below it are ignored.
 * Each accepted or rejected head is logged with its version and reason; rejections increment
 * rejected{reason} when given. A topic that does not exist yet is looked up again every few
 * seconds, and partitions added later are picked up. */
typedef struct bs_heads bs_heads;

/* rejected_or_NULL: the labelled counter family bertstream_heads_rejected_total{reason} (the worker
 * passes bs_worker_metrics->heads_rejected); every reason's series is created at 0.
 * Fails (NULL + err) when topics.heads is "" or the consumer cannot be created. */
bs_heads *heads_new(const bs_config *cfg, const char *encoder_id, int input_dim, bs_metric *rejected_or_NULL,
                    char *err);
/* Blocks until every partition has been read up to the end offsets captured at heads_new (or
 * timeout_ms passes; < 0 = no limit). Returns 1 when a valid head is held, else 0. */
int heads_wait(bs_heads *hs, int timeout_ms);
/* 1 once the end offsets captured at heads_new have been consumed. */
int heads_caught_up(bs_heads *hs);
/* A clone of the held head (the caller owns it, head_free) when its version > have_version, else NULL.
 * Cheap when there is nothing newer (one atomic load): call it between batches. */
bs_head *heads_acquire_newer(bs_heads *hs, int64_t have_version);
/* Version of the held head (0 = none). */
int64_t heads_version(bs_heads *hs);
/* The highest version seen for this encoder_id in any record that decoded and passed the signature
 * check (when a key is set), valid or not; 0 when none. The trainer publishes this + 1. */
int64_t heads_max_version(bs_heads *hs);
/* Counters since heads_new (for logs and tests). */
int64_t heads_accepted_count(bs_heads *hs);
int64_t heads_rejected_count(bs_heads *hs);
void heads_free(bs_heads *hs);

/* ---- shared with the trainer ----
 * Builds a consumer conf: kafka.*, then consumer.*, then enable.auto.commit=false,
 * enable.auto.offset.store=false, enable.partition.eof=true and client.id (when the config sets none). */
rd_kafka_conf_t *heads_consumer_conf(const bs_config *cfg, const char *client_id, char *err);
/* Producer conf: kafka.*, then producer.*. */
rd_kafka_conf_t *heads_producer_conf(const bs_config *cfg, const char *client_id, char *err);
/* Assigns every partition of topic from OFFSET_BEGINNING and captures each one's high watermark.
 * *parts gets the assigned list (offset = high watermark at the time of the call; the caller
 * destroys it). A topic that does not exist gives an empty list and BS_OK. */
int heads_assign_from_start(rd_kafka_t *rk, const char *topic, int timeout_ms, rd_kafka_topic_partition_list_t **parts,
                            char *err);

#endif
