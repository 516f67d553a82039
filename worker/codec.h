/* The Kafka wire layer: Avro binary (Avro-C) encode/decode of bertstream's four records
 * (schemas/<name>.avsc, embedded at build time) in the framings of DESIGN.md, and the stable
 * dead-letter codes a decode failure maps to. One bs_codec per thread; reused per message. */
#ifndef BS_CODEC_H
#define BS_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"

/* ---- framings ----
 * AVRO       bare Avro binary of the record.
 * CONFLUENT  byte 0 = 0x00 (magic), bytes 1..4 = schema id (big-endian int32), then Avro binary.
 * JSON       one JSON object: {"review_id","text"[,"source"][,"created_at"]} (Review; input only),
 *            {"review_id","text","label"} (LabeledReview).
 * TEXT       the whole value is the review text (Review; input only); review_id = the message key
 *            when it is non-empty valid UTF-8, else "topic/partition/offset". */
typedef enum { BS_FRAMING_AVRO, BS_FRAMING_CONFLUENT, BS_FRAMING_JSON, BS_FRAMING_TEXT } bs_framing;

/* "avro" | "confluent" | "json" | "text" -> BS_OK; anything else -> BS_ERR naming the value. */
int codec_framing_parse(const char *name, bs_framing *out, char *err);
const char *codec_framing_name(bs_framing f);

/* ---- schemas ---- */
typedef enum { BS_SCHEMA_REVIEW, BS_SCHEMA_LABELED_REVIEW, BS_SCHEMA_REVIEW_SCORE, BS_SCHEMA_HEAD_WEIGHTS } bs_schema;
#define BS_SCHEMA_COUNT 4

/* "review" | "labeled_review" | "review_score" | "head_weights" (the .avsc base names). */
int codec_schema_parse(const char *name, bs_schema *out, char *err);
const char *codec_schema_name(bs_schema s);
/* The embedded schema JSON, identical (as parsed JSON) to schemas/<name>.avsc; a unit test pins that. */
const char *codec_schema_json(bs_schema s);

/* ---- dead-letter codes ----
 * Stable strings: the value of the `bertstream.error.code` header and of the `code` label of
 * bertstream_dead_letters_total. Never rename one; add new ones at the end. */
#define BS_DL_TRUNCATED_AVRO "truncated_avro"       /* Avro data ends inside the record (incl. an empty value) */
#define BS_DL_INVALID_AVRO "invalid_avro"           /* bad varint, negative length, bad union index, trailing bytes */
#define BS_DL_WRONG_TYPE "wrong_type"               /* JSON not an object, a field missing or of the wrong type */
#define BS_DL_INVALID_UTF8 "invalid_utf8"           /* a string field (or the text framing value) is not UTF-8 */
#define BS_DL_UNKNOWN_SCHEMA_ID "unknown_schema_id" /* confluent schema id differs from the expected one */
#define BS_DL_BAD_MAGIC_BYTE "bad_magic_byte"       /* confluent value shorter than 5 bytes or byte 0 != 0 */
#define BS_DL_INVALID_JSON "invalid_json"           /* json framing value does not parse */
#define BS_DL_TOO_LARGE "too_large"                 /* value longer than the codec's max_value_bytes */
#define BS_DL_UNSUPPORTED_FRAMING "unsupported_framing" /* e.g. text framing asked of a ReviewScore */

/* Every code above, for pre-registering metric label values. */
extern const char *const codec_dead_letter_codes[];
extern const int codec_dead_letter_code_count;

/* ---- records ----
 * Decoded records point into memory owned by the codec (valid until the next decode call on
 * the same codec, or codec_free) or, for the text framing, into the caller's value/key bytes.
 * Strings are NOT guaranteed NUL-terminated: always use the _len fields. */
typedef struct {
    const char *review_id;
    size_t review_id_len;
    const char *text; /* may be empty ("" is a valid review) */
    size_t text_len;
    int has_source; /* 0: source is null */
    const char *source;
    size_t source_len;
    int has_created_at; /* 0: created_at is null */
    int64_t created_at; /* ms since the Unix epoch (timestamp-millis) */
} bs_review;

typedef struct {
    const char *review_id;
    size_t review_id_len;
    const char *text;
    size_t text_len;
    int32_t label; /* 0 negative, 1 positive; the codec does not range-check it (the trainer does) */
} bs_labeled_review;

/* Encode-side strings are NUL-terminated C strings except review_id (length given). */
typedef struct {
    const char *review_id;
    size_t review_id_len;
    const char *label; /* "positive" | "negative" (head_label) */
    float probability;
    float logit;
    int32_t tokens; /* ids fed to the encoder, [CLS] and [SEP] included */
    int truncated;  /* 1 when max_seq_len cut the review */
    int64_t head_version;
    const char *model_id;
    int64_t scored_at; /* ms since the Unix epoch */
    int32_t source_partition;
    int64_t source_offset;
} bs_review_score;

/* Tensors are host floats here; on the wire they are little-endian F32, row-major.
 * Decoded: the float pointers point into codec-owned, float-aligned buffers. */
typedef struct {
    int64_t version;
    const char *encoder_id;  /* NUL-terminated (decoded: codec-owned copy) */
    const char *feature;     /* "pooler" | "cls" | "mean" (not checked by the codec) */
    int32_t input_dim;       /* C */
    int32_t hidden_dim;      /* Hd */
    const float *fc1_weight; /* (Hd, C) */
    const float *fc1_bias;   /* (Hd) */
    const float *fc2_weight; /* (1, Hd) */
    const float *fc2_bias;   /* (1) */
    int n_metrics;
    const char *const *metric_names; /* [n_metrics] NUL-terminated; decoded: in wire order */
    const double *metric_values;     /* [n_metrics] */
    int64_t created_at;              /* ms since the Unix epoch */
    int has_signature;               /* 0: signature is null */
    const uint8_t *signature;
    size_t signature_len;
} bs_head_weights;

/* A growing output buffer owned by the caller: zero-initialise, reuse, free with bs_buf_free.
 * Each encode call overwrites it (len = bytes of the encoded message). */
typedef struct {
    uint8_t *data;
    size_t len;
    size_t cap;
} bs_buf;
void bs_buf_free(bs_buf *b);
/* Appenders (used for JSON output): BS_ERR only when memory runs out. The data stays NUL-terminated
 * (the NUL is not counted in len). */
int bs_buf_reserve(bs_buf *b, size_t extra);
int bs_buf_append(bs_buf *b, const void *data, size_t len);
int bs_buf_printf(bs_buf *b, const char *fmt, ...) BS_PRINTF(2, 3);
/* A JSON string literal of UTF-8 s[0..len) (quotes, backslash and control characters escaped). */
int bs_buf_append_json_string(bs_buf *b, const char *s, size_t len);
/* Shortest decimal that reads back to the same float/double; NaN and Inf become null. */
int bs_buf_append_json_float(bs_buf *b, float f);
int bs_buf_append_json_double(bs_buf *b, double d);

/* ---- the codec ---- */
typedef struct bs_codec bs_codec;

#define CODEC_DEFAULT_MAX_VALUE_BYTES ((size_t)16 << 20)

/* Parses the embedded schemas and builds reusable Avro-C values, readers and writers.
 * Not thread-safe: one per thread. */
bs_codec *codec_new(char *err);
void codec_free(bs_codec *c);
/* Values longer than this decode as too_large (default CODEC_DEFAULT_MAX_VALUE_BYTES). */
void codec_set_max_value_bytes(bs_codec *c, size_t max_bytes);

/* Decoders: BS_OK, or BS_ERR with *err_code = one of the BS_DL_* codes (when err_code is not
 * NULL) and a one-line reason in err. Any bytes are safe to pass (fuzzed): lengths are
 * checked against the remaining data before Avro-C reads them, so a hostile length prefix
 * never becomes a large allocation. Avro data must be exactly one record: trailing bytes
 * are invalid_avro. Every string field is checked to be UTF-8 (invalid_utf8).
 * expect_schema_id: for the confluent framing, the id the value must carry (< 0: any id). */

/* Review in any framing. key/key_len (may be NULL/0), topic, partition and offset are only used
 * by the text framing (review_id fallback "topic/partition/offset"). */
int codec_decode_review(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                        const void *key, size_t key_len, const char *topic, int32_t partition, int64_t offset,
                        bs_review *out, const char **err_code, char *err);
/* LabeledReview: avro | confluent | json. */
int codec_decode_labeled_review(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                                bs_labeled_review *out, const char **err_code, char *err);
/* ReviewScore: avro | confluent. Decoded strings are NUL-terminated codec-owned copies. */
int codec_decode_review_score(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                              bs_review_score *out, const char **err_code, char *err);
/* HeadWeights: avro | confluent. Also checks the tensor byte lengths against the dims
 * (fc1_weight = 4*Hd*C ...; dims > 0) -> wrong_type. Values are not checked for finiteness
 * (head_validate does that). */
int codec_decode_head_weights(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                              bs_head_weights *out, const char **err_code, char *err);

/* Encoders: write the framed message into out (overwriting it). schema_id is used by the
 * confluent framing only. BS_ERR (with err) for an unsupported framing, a string that is not
 * UTF-8, or an allocation failure. */

/* Review: avro | confluent | json ({"review_id","text"[,"source"][,"created_at"]}) | text (the text alone). */
int codec_encode_review(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_review *r, bs_buf *out, char *err);
/* LabeledReview: avro | confluent | json. */
int codec_encode_labeled_review(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_labeled_review *r,
                                bs_buf *out, char *err);
/* ReviewScore: avro | confluent. */
int codec_encode_review_score(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_review_score *s, bs_buf *out,
                              char *err);
/* HeadWeights: avro | confluent. The signature is opaque bytes here (heads.h defines what it signs). */
int codec_encode_head_weights(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_head_weights *h, bs_buf *out,
                              char *err);

/* 1 when s[0..len) is well-formed UTF-8 (no overlongs, no surrogates, <= U+10FFFF). */
int codec_utf8_valid(const char *s, size_t len);

#endif
