/* The Kafka wire layer: Avro binary through Avro-C, the four framings, dead-letter codes.
 * Decoding never trusts a byte: a schema-driven walk checks every varint, length, union
 * index and UTF-8 string against the remaining data before Avro-C reads the value. */
#include "codec.h"

#include <avro.h>
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- embedded schemas: must equal schemas/<name>.avsc as parsed JSON (test_codec pins it) ---- */

static const char review_schema_json[] =
    "{\"type\": \"record\", \"name\": \"Review\", \"namespace\": \"bertstream\","
    " \"doc\": \"A review to score (input topic).\","
    " \"fields\": ["
    "{\"name\": \"review_id\", \"type\": \"string\"},"
    "{\"name\": \"text\", \"type\": \"string\"},"
    "{\"name\": \"source\", \"type\": [\"null\", \"string\"], \"default\": null},"
    "{\"name\": \"created_at\", \"type\": [\"null\", {\"type\": \"long\", \"logicalType\": \"timestamp-millis\"}],"
    " \"default\": null}]}";

static const char labeled_review_schema_json[] =
    "{\"type\": \"record\", \"name\": \"LabeledReview\", \"namespace\": \"bertstream\","
    " \"doc\": \"A review with its sentiment label (labeled topic): 0 negative, 1 positive.\","
    " \"fields\": ["
    "{\"name\": \"review_id\", \"type\": \"string\"},"
    "{\"name\": \"text\", \"type\": \"string\"},"
    "{\"name\": \"label\", \"type\": \"int\"}]}";

static const char review_score_schema_json[] =
    "{\"type\": \"record\", \"name\": \"ReviewScore\", \"namespace\": \"bertstream\","
    " \"doc\": \"The worker's result for one review (output topic).\","
    " \"fields\": ["
    "{\"name\": \"review_id\", \"type\": \"string\"},"
    "{\"name\": \"label\", \"type\": \"string\"},"
    "{\"name\": \"probability\", \"type\": \"float\"},"
    "{\"name\": \"logit\", \"type\": \"float\"},"
    "{\"name\": \"tokens\", \"type\": \"int\"},"
    "{\"name\": \"truncated\", \"type\": \"boolean\"},"
    "{\"name\": \"head_version\", \"type\": \"long\"},"
    "{\"name\": \"model_id\", \"type\": \"string\"},"
    "{\"name\": \"scored_at\", \"type\": {\"type\": \"long\", \"logicalType\": \"timestamp-millis\"}},"
    "{\"name\": \"source_partition\", \"type\": \"int\"},"
    "{\"name\": \"source_offset\", \"type\": \"long\"}]}";

static const char head_weights_schema_json[] =
    "{\"type\": \"record\", \"name\": \"HeadWeights\", \"namespace\": \"bertstream\","
    " \"doc\": \"A trained head (heads topic). Tensors are little-endian F32, row-major: fc1_weight [hidden_dim,"
    " input_dim], fc1_bias [hidden_dim], fc2_weight [1, hidden_dim], fc2_bias [1].\","
    " \"fields\": ["
    "{\"name\": \"version\", \"type\": \"long\"},"
    "{\"name\": \"encoder_id\", \"type\": \"string\"},"
    "{\"name\": \"feature\", \"type\": \"string\"},"
    "{\"name\": \"input_dim\", \"type\": \"int\"},"
    "{\"name\": \"hidden_dim\", \"type\": \"int\"},"
    "{\"name\": \"fc1_weight\", \"type\": \"bytes\"},"
    "{\"name\": \"fc1_bias\", \"type\": \"bytes\"},"
    "{\"name\": \"fc2_weight\", \"type\": \"bytes\"},"
    "{\"name\": \"fc2_bias\", \"type\": \"bytes\"},"
    "{\"name\": \"metrics\", \"type\": {\"type\": \"map\", \"values\": \"double\"}},"
    "{\"name\": \"created_at\", \"type\": {\"type\": \"long\", \"logicalType\": \"timestamp-millis\"}},"
    "{\"name\": \"signature\", \"type\": [\"null\", \"bytes\"], \"default\": null}]}";

static const char *const schema_json[BS_SCHEMA_COUNT] = {review_schema_json, labeled_review_schema_json,
                                                         review_score_schema_json, head_weights_schema_json};
static const char *const schema_names[BS_SCHEMA_COUNT] = {"review", "labeled_review", "review_score", "head_weights"};

/* Field positions, in schema order. */
enum { RV_ID, RV_TEXT, RV_SOURCE, RV_CREATED_AT };
enum { LR_ID, LR_TEXT, LR_LABEL };
enum {
    RS_ID,
    RS_LABEL,
    RS_PROB,
    RS_LOGIT,
    RS_TOKENS,
    RS_TRUNCATED,
    RS_HEAD_VERSION,
    RS_MODEL_ID,
    RS_SCORED_AT,
    RS_PARTITION,
    RS_OFFSET
};
enum {
    HW_VERSION,
    HW_ENCODER_ID,
    HW_FEATURE,
    HW_INPUT_DIM,
    HW_HIDDEN_DIM,
    HW_FC1_W,
    HW_FC1_B,
    HW_FC2_W,
    HW_FC2_B,
    HW_METRICS,
    HW_CREATED_AT,
    HW_SIGNATURE
};

const char *const codec_dead_letter_codes[] = {
    BS_DL_TRUNCATED_AVRO, BS_DL_INVALID_AVRO, BS_DL_WRONG_TYPE, BS_DL_INVALID_UTF8,        BS_DL_UNKNOWN_SCHEMA_ID,
    BS_DL_BAD_MAGIC_BYTE, BS_DL_INVALID_JSON, BS_DL_TOO_LARGE,  BS_DL_UNSUPPORTED_FRAMING,
};
const int codec_dead_letter_code_count = (int)(sizeof codec_dead_letter_codes / sizeof codec_dead_letter_codes[0]);

struct bs_codec {
    avro_schema_t schema[BS_SCHEMA_COUNT];
    avro_value_iface_t *iface[BS_SCHEMA_COUNT];
    avro_value_t value[BS_SCHEMA_COUNT]; /* reused for every decode and encode of that record */
    int value_ok[BS_SCHEMA_COUNT];
    avro_reader_t reader; /* memory reader, re-pointed at each message */
    avro_writer_t writer; /* memory writer, re-pointed at each output buffer */
    size_t max_value;
    json_t *json;       /* last parsed JSON value: decoded strings point into it */
    bs_buf id;          /* text framing's "topic/partition/offset" review id */
    bs_buf strs;        /* NUL-terminated copies of encode-side strings */
    float *tensors;     /* decoded head tensors, fc1_w | fc1_b | fc2_w | fc2_b */
    size_t tensors_cap; /* in floats */
    const char **metric_names;
    double *metric_values;
    int metrics_cap;
};

/* ---- small helpers ---- */

void bs_buf_free(bs_buf *b) {
    if (!b) return;
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

int bs_buf_reserve(bs_buf *b, size_t extra) {
    if (extra > SIZE_MAX - b->len) return BS_ERR;
    size_t need = b->len + extra;
    if (need <= b->cap) return BS_OK;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need) cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint8_t *p = realloc(b->data, cap);
    if (!p) return BS_ERR;
    b->data = p;
    b->cap = cap;
    return BS_OK;
}

int bs_buf_append(bs_buf *b, const void *data, size_t len) {
    if (bs_buf_reserve(b, len + 1) != BS_OK) return BS_ERR;
    if (len) memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = 0; /* always NUL-terminated, not counted */
    return BS_OK;
}

int bs_buf_printf(bs_buf *b, const char *fmt, ...) {
    char tmp[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) return BS_ERR;
    if ((size_t)n < sizeof tmp) return bs_buf_append(b, tmp, (size_t)n);
    if (bs_buf_reserve(b, (size_t)n + 1) != BS_OK) return BS_ERR;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return BS_OK;
}

int bs_buf_append_json_string(bs_buf *b, const char *s, size_t len) {
    static const char hex[] = "0123456789abcdef";
    if (bs_buf_reserve(b, len + 3) != BS_OK) return BS_ERR;
    b->data[b->len++] = '"';
    size_t run = 0; /* bytes copied verbatim in one go */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\' && ch != 0x7f) continue;
        if (bs_buf_append(b, s + run, i - run) != BS_OK) return BS_ERR;
        char esc[7] = {'\\', 0, 0, 0, 0, 0, 0};
        size_t n = 2;
        switch (ch) {
        case '"':
            esc[1] = '"';
            break;
        case '\\':
            esc[1] = '\\';
            break;
        case '\n':
            esc[1] = 'n';
            break;
        case '\r':
            esc[1] = 'r';
            break;
        case '\t':
            esc[1] = 't';
            break;
        case '\b':
            esc[1] = 'b';
            break;
        case '\f':
            esc[1] = 'f';
            break;
        default:
            esc[1] = 'u', esc[2] = '0', esc[3] = '0', esc[4] = hex[ch >> 4], esc[5] = hex[ch & 15];
            n = 6;
        }
        if (bs_buf_append(b, esc, n) != BS_OK) return BS_ERR;
        run = i + 1;
    }
    if (bs_buf_append(b, s + run, len - run) != BS_OK) return BS_ERR;
    return bs_buf_append(b, "\"", 1);
}

/* The shortest %g form that reads back to the same value; JSON has no NaN/Inf: null. */
int bs_buf_append_json_float(bs_buf *b, float f) {
    if (!isfinite(f)) return bs_buf_append(b, "null", 4);
    char tmp[32];
    for (int p = 1; p <= 9; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, (double)f);
        if (strtof(tmp, NULL) == f) break;
    }
    return bs_buf_append(b, tmp, strlen(tmp));
}

int bs_buf_append_json_double(bs_buf *b, double d) {
    if (!isfinite(d)) return bs_buf_append(b, "null", 4);
    char tmp[40];
    for (int p = 1; p <= 17; p++) {
        snprintf(tmp, sizeof tmp, "%.*g", p, d);
        if (strtod(tmp, NULL) == d) break;
    }
    return bs_buf_append(b, tmp, strlen(tmp));
}

int codec_utf8_valid(const char *str, size_t len) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < len) {
        unsigned c = s[i];
        if (c < 0x80) {
            /* ASCII runs (most review text) 8 bytes at a time */
            uint64_t w;
            while (len - i >= 8 && (memcpy(&w, s + i, 8), (w & 0x8080808080808080ull) == 0)) i += 8;
            if (i < len && s[i] < 0x80) i++;
            continue;
        }
        size_t n;
        unsigned lo = 0x80, hi = 0xBF; /* allowed range of the second byte */
        if (c >= 0xC2 && c <= 0xDF)
            n = 2;
        else if (c == 0xE0)
            n = 3, lo = 0xA0;
        else if (c == 0xED)
            n = 3, hi = 0x9F; /* no UTF-16 surrogates */
        else if (c >= 0xE1 && c <= 0xEF)
            n = 3;
        else if (c == 0xF0)
            n = 4, lo = 0x90;
        else if (c >= 0xF1 && c <= 0xF3)
            n = 4;
        else if (c == 0xF4)
            n = 4, hi = 0x8F; /* <= U+10FFFF */
        else
            return 0;
        if (len - i < n) return 0;
        if (s[i + 1] < lo || s[i + 1] > hi) return 0;
        for (size_t k = 2; k < n; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        i += n;
    }
    return 1;
}

/* Byte offset of the first invalid UTF-8 sequence (for error messages). */
static size_t utf8_bad_offset(const char *s, size_t len) {
    size_t lo = 0, hi = len;
    /* the longest valid prefix, by bisection on whole-prefix validity (rare path) */
    while (lo < hi) {
        size_t mid = lo + (hi - lo + 1) / 2;
        if (codec_utf8_valid(s, mid))
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

int codec_framing_parse(const char *name, bs_framing *out, char *err) {
    static const char *const names[] = {"avro", "confluent", "json", "text"};
    for (int i = 0; i < 4; i++)
        if (name && strcmp(name, names[i]) == 0) {
            *out = (bs_framing)i;
            return BS_OK;
        }
    return bs_err(err, "unknown framing '%s' (avro|confluent|json|text)", name ? name : "(null)");
}

const char *codec_framing_name(bs_framing f) {
    switch (f) {
    case BS_FRAMING_AVRO:
        return "avro";
    case BS_FRAMING_CONFLUENT:
        return "confluent";
    case BS_FRAMING_JSON:
        return "json";
    case BS_FRAMING_TEXT:
        return "text";
    }
    return "?";
}

int codec_schema_parse(const char *name, bs_schema *out, char *err) {
    for (int i = 0; i < BS_SCHEMA_COUNT; i++)
        if (name && strcmp(name, schema_names[i]) == 0) {
            *out = (bs_schema)i;
            return BS_OK;
        }
    return bs_err(err, "unknown schema '%s' (review|labeled_review|review_score|head_weights)", name ? name : "(null)");
}

const char *codec_schema_name(bs_schema s) {
    return (unsigned)s < BS_SCHEMA_COUNT ? schema_names[s] : "?";
}
const char *codec_schema_json(bs_schema s) {
    return (unsigned)s < BS_SCHEMA_COUNT ? schema_json[s] : NULL;
}

/* ---- construction ---- */

bs_codec *codec_new(char *err) {
    bs_codec *c = calloc(1, sizeof *c);
    if (!c) {
        bs_err(err, "codec: out of memory");
        return NULL;
    }
    c->max_value = CODEC_DEFAULT_MAX_VALUE_BYTES;
    for (int i = 0; i < BS_SCHEMA_COUNT; i++) {
        if (avro_schema_from_json_length(schema_json[i], strlen(schema_json[i]), &c->schema[i]) != 0) {
            bs_err(err, "codec: embedded schema %s does not parse: %s", schema_names[i], avro_strerror());
            goto fail;
        }
        c->iface[i] = avro_generic_class_from_schema(c->schema[i]);
        if (!c->iface[i] || avro_generic_value_new(c->iface[i], &c->value[i]) != 0) {
            bs_err(err, "codec: cannot build an Avro value for %s: %s", schema_names[i], avro_strerror());
            goto fail;
        }
        c->value_ok[i] = 1;
    }
    c->reader = avro_reader_memory("", 0);
    c->writer = avro_writer_memory("", 0);
    if (!c->reader || !c->writer) {
        bs_err(err, "codec: cannot create Avro memory reader/writer");
        goto fail;
    }
    return c;
fail:
    codec_free(c);
    return NULL;
}

void codec_free(bs_codec *c) {
    if (!c) return;
    for (int i = 0; i < BS_SCHEMA_COUNT; i++) {
        if (c->value_ok[i]) {
            avro_value_reset(&c->value[i]); /* drop wrapped buffers that point at caller memory */
            avro_value_decref(&c->value[i]);
        }
        if (c->iface[i]) avro_value_iface_decref(c->iface[i]);
        if (c->schema[i]) avro_schema_decref(c->schema[i]);
    }
    if (c->reader) avro_reader_free(c->reader);
    if (c->writer) avro_writer_free(c->writer);
    if (c->json) json_decref(c->json);
    bs_buf_free(&c->id);
    bs_buf_free(&c->strs);
    free(c->tensors);
    free(c->metric_names);
    free(c->metric_values);
    free(c);
}

void codec_set_max_value_bytes(bs_codec *c, size_t max_bytes) {
    c->max_value = max_bytes;
}

/* ---- the validating walk: exactly one record of `schema` in [p, end), nothing after ---- */

typedef struct {
    const uint8_t *p, *end;
    const char **err_code;
    char *err;
} walk;

static int walk_varint(walk *w, int64_t *out, const char *what) {
    uint64_t v = 0;
    for (int i = 0;; i++) {
        if (w->p == w->end)
            return bs_err_code(w->err_code, BS_DL_TRUNCATED_AVRO, w->err, "%s: data ends inside a varint", what);
        uint8_t b = *w->p++;
        if (i == 9 && b > 1)
            return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: varint longer than 64 bits", what);
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) break;
    }
    *out = (int64_t)((v >> 1) ^ (0 - (v & 1))); /* zigzag */
    return BS_OK;
}

/* Length-prefixed string/bytes: the length must fit the remaining data. */
static int walk_blob(walk *w, int is_string, const char *what) {
    int64_t n;
    if (walk_varint(w, &n, what) != BS_OK) return BS_ERR;
    if (n < 0) return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: negative length %" PRId64, what, n);
    size_t left = (size_t)(w->end - w->p);
    if ((uint64_t)n > left)
        return bs_err_code(w->err_code, BS_DL_TRUNCATED_AVRO, w->err, "%s: length %" PRId64 " but only %zu bytes left",
                           what, n, left);
    if (is_string && !codec_utf8_valid((const char *)w->p, (size_t)n))
        return bs_err_code(w->err_code, BS_DL_INVALID_UTF8, w->err, "%s: invalid UTF-8 at byte %zu", what,
                           utf8_bad_offset((const char *)w->p, (size_t)n));
    w->p += n;
    return BS_OK;
}

static int walk_fixed(walk *w, size_t n, const char *what) {
    if ((size_t)(w->end - w->p) < n)
        return bs_err_code(w->err_code, BS_DL_TRUNCATED_AVRO, w->err, "%s: needs %zu bytes, %zu left", what, n,
                           (size_t)(w->end - w->p));
    w->p += n;
    return BS_OK;
}

static int walk_value(walk *w, avro_schema_t s, const char *what) {
    int64_t v;
    switch (avro_typeof(s)) {
    case AVRO_NULL:
        return BS_OK;
    case AVRO_BOOLEAN:
        if (walk_fixed(w, 1, what) != BS_OK) return BS_ERR;
        if (w->p[-1] > 1)
            return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: boolean byte %u", what, w->p[-1]);
        return BS_OK;
    case AVRO_INT32:
        if (walk_varint(w, &v, what) != BS_OK) return BS_ERR;
        if (v < INT32_MIN || v > INT32_MAX)
            return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: %" PRId64 " out of range for int", what,
                               v);
        return BS_OK;
    case AVRO_INT64:
        return walk_varint(w, &v, what);
    case AVRO_FLOAT:
        return walk_fixed(w, 4, what);
    case AVRO_DOUBLE:
        return walk_fixed(w, 8, what);
    case AVRO_STRING:
        return walk_blob(w, 1, what);
    case AVRO_BYTES:
        return walk_blob(w, 0, what);
    case AVRO_RECORD: {
        size_t n = avro_schema_record_size(s);
        for (size_t i = 0; i < n; i++)
            if (walk_value(w, avro_schema_record_field_get_by_index(s, (int)i),
                           avro_schema_record_field_name(s, (int)i)) != BS_OK)
                return BS_ERR;
        return BS_OK;
    }
    case AVRO_UNION:
        if (walk_varint(w, &v, what) != BS_OK) return BS_ERR;
        if (v < 0 || (uint64_t)v >= avro_schema_union_size(s))
            return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: union index %" PRId64 " out of range",
                               what, v);
        return walk_value(w, avro_schema_union_branch(s, (int)v), what);
    case AVRO_MAP: {
        avro_schema_t values = avro_schema_map_values(s);
        for (;;) {
            int64_t count;
            if (walk_varint(w, &count, what) != BS_OK) return BS_ERR;
            if (count == 0) return BS_OK;
            if (count < 0) {
                int64_t block_bytes;
                if (count == INT64_MIN)
                    return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: bad map block count", what);
                count = -count;
                if (walk_varint(w, &block_bytes, what) != BS_OK) return BS_ERR;
                if (block_bytes < 0)
                    return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: negative map block size", what);
            }
            /* every entry takes at least one byte (its key length), so this bounds the loop */
            if ((uint64_t)count > (size_t)(w->end - w->p))
                return bs_err_code(w->err_code, BS_DL_TRUNCATED_AVRO, w->err,
                                   "%s: %" PRId64 " map entries in %zu bytes", what, count, (size_t)(w->end - w->p));
            for (int64_t i = 0; i < count; i++)
                if (walk_blob(w, 1, what) != BS_OK || walk_value(w, values, what) != BS_OK) return BS_ERR;
        }
    }
    default:
        return bs_err_code(w->err_code, BS_DL_INVALID_AVRO, w->err, "%s: schema type not supported by the codec", what);
    }
}

/* Strips the framing, checks the Avro data, and reads it into c->value[s]. */
static int read_avro(bs_codec *c, bs_schema s, bs_framing framing, int32_t expect_id, const void *val, size_t len,
                     const char **err_code, char *err) {
    const uint8_t *p = val;
    if (len > c->max_value)
        return bs_err_code(err_code, BS_DL_TOO_LARGE, err, "value of %zu bytes exceeds the limit of %zu", len,
                           c->max_value);
    if (framing == BS_FRAMING_CONFLUENT) {
        if (len == 0) return bs_err_code(err_code, BS_DL_TRUNCATED_AVRO, err, "empty value (confluent framing)");
        if (p[0] != 0)
            return bs_err_code(err_code, BS_DL_BAD_MAGIC_BYTE, err, "magic byte is 0x%02x, expected 0x00", p[0]);
        if (len < 5)
            return bs_err_code(err_code, BS_DL_TRUNCATED_AVRO, err, "confluent header needs 5 bytes, got %zu", len);
        int32_t id = (int32_t)((uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4]);
        if (expect_id >= 0 && id != expect_id)
            return bs_err_code(err_code, BS_DL_UNKNOWN_SCHEMA_ID, err, "schema id %" PRId32 ", expected %" PRId32, id,
                               expect_id);
        p += 5;
        len -= 5;
    } else if (framing != BS_FRAMING_AVRO) {
        return bs_err_code(err_code, BS_DL_UNSUPPORTED_FRAMING, err, "%s framing is not supported for %s",
                           codec_framing_name(framing), schema_names[s]);
    }
    if (len == 0) return bs_err_code(err_code, BS_DL_TRUNCATED_AVRO, err, "empty Avro value");
    walk w = {p, p + len, err_code, err};
    if (walk_value(&w, c->schema[s], schema_names[s]) != BS_OK) return BS_ERR;
    if (w.p != w.end)
        return bs_err_code(err_code, BS_DL_INVALID_AVRO, err, "%zu trailing bytes after the %s record",
                           (size_t)(w.end - w.p), schema_names[s]);
    avro_reader_memory_set_source(c->reader, (const char *)p, (int64_t)len);
    if (avro_value_read(c->reader, &c->value[s]) != 0)
        return bs_err_code(err_code, BS_DL_INVALID_AVRO, err, "Avro-C: %s", avro_strerror());
    return BS_OK;
}

/* Field accessors on a value the walk has vetted: failures here are codec bugs, reported as invalid_avro. */
static int get_string(avro_value_t *rec, size_t idx, const char **s, size_t *len) {
    avro_value_t f;
    size_t size = 0;
    if (avro_value_get_by_index(rec, idx, &f, NULL) != 0 || avro_value_get_string(&f, s, &size) != 0) return BS_ERR;
    *len = size ? size - 1 : 0; /* Avro-C counts the NUL */
    if (!*s) *s = "";
    return BS_OK;
}

static int get_bytes(avro_value_t *rec, size_t idx, const void **b, size_t *len) {
    avro_value_t f;
    return avro_value_get_by_index(rec, idx, &f, NULL) == 0 && avro_value_get_bytes(&f, b, len) == 0 ? BS_OK : BS_ERR;
}

static int get_int(avro_value_t *rec, size_t idx, int32_t *v) {
    avro_value_t f;
    return avro_value_get_by_index(rec, idx, &f, NULL) == 0 && avro_value_get_int(&f, v) == 0 ? BS_OK : BS_ERR;
}

static int get_long(avro_value_t *rec, size_t idx, int64_t *v) {
    avro_value_t f;
    return avro_value_get_by_index(rec, idx, &f, NULL) == 0 && avro_value_get_long(&f, v) == 0 ? BS_OK : BS_ERR;
}

static int get_float(avro_value_t *rec, size_t idx, float *v) {
    avro_value_t f;
    return avro_value_get_by_index(rec, idx, &f, NULL) == 0 && avro_value_get_float(&f, v) == 0 ? BS_OK : BS_ERR;
}

/* A ["null", X] union field: *branch gets X when present (returns 1), 0 when null. */
static int get_optional(avro_value_t *rec, size_t idx, avro_value_t *branch) {
    avro_value_t f;
    int disc = 0;
    if (avro_value_get_by_index(rec, idx, &f, NULL) != 0 || avro_value_get_discriminant(&f, &disc) != 0) return -1;
    if (disc == 0) return 0;
    return avro_value_get_current_branch(&f, branch) == 0 ? 1 : -1;
}

static int internal_fail(const char **err_code, char *err, const char *what) {
    return bs_err_code(err_code, BS_DL_INVALID_AVRO, err, "cannot read %s from the Avro value: %s", what,
                       avro_strerror());
}

/* ---- JSON framing helpers ---- */

static int json_parse(bs_codec *c, const void *val, size_t len, const char **err_code, char *err) {
    if (c->json) {
        json_decref(c->json);
        c->json = NULL;
    }
    if (len > c->max_value)
        return bs_err_code(err_code, BS_DL_TOO_LARGE, err, "value of %zu bytes exceeds the limit of %zu", len,
                           c->max_value);
    if (!codec_utf8_valid(val, len))
        return bs_err_code(err_code, BS_DL_INVALID_UTF8, err, "JSON value: invalid UTF-8 at byte %zu",
                           utf8_bad_offset(val, len));
    json_error_t je;
    c->json = json_loadb(val, len, JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
    if (!c->json)
        return bs_err_code(err_code, BS_DL_INVALID_JSON, err, "JSON value: %s at byte %d", je.text, je.position);
    if (!json_is_object(c->json)) return bs_err_code(err_code, BS_DL_WRONG_TYPE, err, "JSON value is not an object");
    return BS_OK;
}

static int json_string_field(json_t *o, const char *name, int required, const char **s, size_t *len,
                             const char **err_code, char *err) {
    json_t *v = json_object_get(o, name);
    if (!v || json_is_null(v)) {
        if (required) return bs_err_code(err_code, BS_DL_WRONG_TYPE, err, "JSON field \"%s\" is missing", name);
        *s = NULL;
        *len = 0;
        return BS_OK;
    }
    if (!json_is_string(v))
        return bs_err_code(err_code, BS_DL_WRONG_TYPE, err, "JSON field \"%s\" is not a string", name);
    *s = json_string_value(v);
    *len = json_string_length(v);
    return BS_OK;
}

/* ---- decoders ---- */

int codec_decode_review(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                        const void *key, size_t key_len, const char *topic, int32_t partition, int64_t offset,
                        bs_review *out, const char **err_code, char *err) {
    memset(out, 0, sizeof *out);
    if (!val) val = "";
    if (framing == BS_FRAMING_TEXT) {
        if (len > c->max_value)
            return bs_err_code(err_code, BS_DL_TOO_LARGE, err, "value of %zu bytes exceeds the limit of %zu", len,
                               c->max_value);
        if (!codec_utf8_valid(val, len))
            return bs_err_code(err_code, BS_DL_INVALID_UTF8, err, "text: invalid UTF-8 at byte %zu",
                               utf8_bad_offset(val, len));
        out->text = val;
        out->text_len = len;
        if (key && key_len > 0 && codec_utf8_valid(key, key_len)) {
            out->review_id = key;
            out->review_id_len = key_len;
        } else {
            c->id.len = 0;
            if (bs_buf_printf(&c->id, "%s/%" PRId32 "/%" PRId64, topic ? topic : "", partition, offset) != BS_OK)
                return bs_err_code(err_code, BS_DL_TOO_LARGE, err, "out of memory for the review id");
            out->review_id = (const char *)c->id.data;
            out->review_id_len = c->id.len;
        }
        return BS_OK;
    }
    if (framing == BS_FRAMING_JSON) {
        if (json_parse(c, val, len, err_code, err) != BS_OK) return BS_ERR;
        if (json_string_field(c->json, "review_id", 1, &out->review_id, &out->review_id_len, err_code, err) != BS_OK ||
            json_string_field(c->json, "text", 1, &out->text, &out->text_len, err_code, err) != BS_OK ||
            json_string_field(c->json, "source", 0, &out->source, &out->source_len, err_code, err) != BS_OK)
            return BS_ERR;
        out->has_source = out->source != NULL;
        json_t *ts = json_object_get(c->json, "created_at");
        if (ts && !json_is_null(ts)) {
            if (!json_is_integer(ts))
                return bs_err_code(err_code, BS_DL_WRONG_TYPE, err, "JSON field \"created_at\" is not an integer (ms)");
            out->has_created_at = 1;
            out->created_at = json_integer_value(ts);
        }
        return BS_OK;
    }
    if (read_avro(c, BS_SCHEMA_REVIEW, framing, expect_schema_id, val, len, err_code, err) != BS_OK) return BS_ERR;
    avro_value_t *rec = &c->value[BS_SCHEMA_REVIEW], br;
    if (get_string(rec, RV_ID, &out->review_id, &out->review_id_len) != BS_OK ||
        get_string(rec, RV_TEXT, &out->text, &out->text_len) != BS_OK)
        return internal_fail(err_code, err, "review_id/text");
    int has = get_optional(rec, RV_SOURCE, &br);
    size_t size = 0;
    if (has < 0 || (has && avro_value_get_string(&br, &out->source, &size) != 0))
        return internal_fail(err_code, err, "source");
    out->has_source = has;
    out->source_len = size ? size - 1 : 0;
    has = get_optional(rec, RV_CREATED_AT, &br);
    if (has < 0 || (has && avro_value_get_long(&br, &out->created_at) != 0))
        return internal_fail(err_code, err, "created_at");
    out->has_created_at = has;
    return BS_OK;
}

int codec_decode_labeled_review(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                                bs_labeled_review *out, const char **err_code, char *err) {
    memset(out, 0, sizeof *out);
    if (!val) val = "";
    if (framing == BS_FRAMING_JSON) {
        if (json_parse(c, val, len, err_code, err) != BS_OK) return BS_ERR;
        if (json_string_field(c->json, "review_id", 1, &out->review_id, &out->review_id_len, err_code, err) != BS_OK ||
            json_string_field(c->json, "text", 1, &out->text, &out->text_len, err_code, err) != BS_OK)
            return BS_ERR;
        json_t *l = json_object_get(c->json, "label");
        if (!l || !json_is_integer(l) || json_integer_value(l) < INT32_MIN || json_integer_value(l) > INT32_MAX)
            return bs_err_code(err_code, BS_DL_WRONG_TYPE, err, "JSON field \"label\" is missing or not an int");
        out->label = (int32_t)json_integer_value(l);
        return BS_OK;
    }
    if (read_avro(c, BS_SCHEMA_LABELED_REVIEW, framing, expect_schema_id, val, len, err_code, err) != BS_OK)
        return BS_ERR;
    avro_value_t *rec = &c->value[BS_SCHEMA_LABELED_REVIEW];
    if (get_string(rec, LR_ID, &out->review_id, &out->review_id_len) != BS_OK ||
        get_string(rec, LR_TEXT, &out->text, &out->text_len) != BS_OK || get_int(rec, LR_LABEL, &out->label) != BS_OK)
        return internal_fail(err_code, err, "a LabeledReview field");
    return BS_OK;
}

int codec_decode_review_score(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                              bs_review_score *out, const char **err_code, char *err) {
    memset(out, 0, sizeof *out);
    if (!val) val = "";
    if (read_avro(c, BS_SCHEMA_REVIEW_SCORE, framing, expect_schema_id, val, len, err_code, err) != BS_OK)
        return BS_ERR;
    avro_value_t *rec = &c->value[BS_SCHEMA_REVIEW_SCORE], f;
    size_t label_len, model_len;
    int truncated = 0;
    if (get_string(rec, RS_ID, &out->review_id, &out->review_id_len) != BS_OK ||
        get_string(rec, RS_LABEL, &out->label, &label_len) != BS_OK ||
        get_float(rec, RS_PROB, &out->probability) != BS_OK || get_float(rec, RS_LOGIT, &out->logit) != BS_OK ||
        get_int(rec, RS_TOKENS, &out->tokens) != BS_OK || avro_value_get_by_index(rec, RS_TRUNCATED, &f, NULL) != 0 ||
        avro_value_get_boolean(&f, &truncated) != 0 || get_long(rec, RS_HEAD_VERSION, &out->head_version) != BS_OK ||
        get_string(rec, RS_MODEL_ID, &out->model_id, &model_len) != BS_OK ||
        get_long(rec, RS_SCORED_AT, &out->scored_at) != BS_OK ||
        get_int(rec, RS_PARTITION, &out->source_partition) != BS_OK ||
        get_long(rec, RS_OFFSET, &out->source_offset) != BS_OK)
        return internal_fail(err_code, err, "a ReviewScore field");
    out->truncated = truncated != 0;
    return BS_OK;
}

/* Little-endian F32 bytes -> host floats (the wire format is fixed, the host may not be LE). */
static void f32_from_le(float *dst, const uint8_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u = (uint32_t)src[4 * i] | (uint32_t)src[4 * i + 1] << 8 | (uint32_t)src[4 * i + 2] << 16 |
                     (uint32_t)src[4 * i + 3] << 24;
        memcpy(&dst[i], &u, 4);
    }
}

static void f32_to_le(uint8_t *dst, const float *src, size_t n) {
    for (size_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &src[i], 4);
        dst[4 * i] = (uint8_t)u, dst[4 * i + 1] = (uint8_t)(u >> 8), dst[4 * i + 2] = (uint8_t)(u >> 16),
                dst[4 * i + 3] = (uint8_t)(u >> 24);
    }
}

int codec_decode_head_weights(bs_codec *c, bs_framing framing, int32_t expect_schema_id, const void *val, size_t len,
                              bs_head_weights *out, const char **err_code, char *err) {
    memset(out, 0, sizeof *out);
    if (!val) val = "";
    if (read_avro(c, BS_SCHEMA_HEAD_WEIGHTS, framing, expect_schema_id, val, len, err_code, err) != BS_OK)
        return BS_ERR;
    avro_value_t *rec = &c->value[BS_SCHEMA_HEAD_WEIGHTS], br, map;
    size_t slen;
    const void *t[4];
    size_t tlen[4];
    if (get_long(rec, HW_VERSION, &out->version) != BS_OK ||
        get_string(rec, HW_ENCODER_ID, &out->encoder_id, &slen) != BS_OK ||
        get_string(rec, HW_FEATURE, &out->feature, &slen) != BS_OK ||
        get_int(rec, HW_INPUT_DIM, &out->input_dim) != BS_OK ||
        get_int(rec, HW_HIDDEN_DIM, &out->hidden_dim) != BS_OK ||
        get_long(rec, HW_CREATED_AT, &out->created_at) != BS_OK)
        return internal_fail(err_code, err, "a HeadWeights field");
    for (int i = 0; i < 4; i++)
        if (get_bytes(rec, HW_FC1_W + i, &t[i], &tlen[i]) != BS_OK) return internal_fail(err_code, err, "a tensor");
    int64_t C = out->input_dim, Hd = out->hidden_dim;
    if (C <= 0 || Hd <= 0)
        return bs_err_code(err_code, BS_DL_WRONG_TYPE, err,
                           "HeadWeights: input_dim %" PRId64 " and hidden_dim %" PRId64 " must be positive", C, Hd);
    /* floats per tensor: fc1_weight (Hd, C), fc1_bias (Hd), fc2_weight (1, Hd), fc2_bias (1) */
    const int64_t want[4] = {Hd * C, Hd, Hd, 1};
    static const char *const names[4] = {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"};
    size_t total = 0;
    for (int i = 0; i < 4; i++) {
        if ((uint64_t)tlen[i] != (uint64_t)want[i] * 4)
            return bs_err_code(err_code, BS_DL_WRONG_TYPE, err,
                               "HeadWeights: %s has %zu bytes, expected %" PRId64 " (F32 x %" PRId64 ")", names[i],
                               tlen[i], want[i] * 4, want[i]);
        total += (size_t)want[i];
    }
    if (total > c->tensors_cap) {
        float *p = realloc(c->tensors, total * sizeof *p);
        if (!p) return bs_err_code(err_code, BS_DL_TOO_LARGE, err, "HeadWeights: out of memory for %zu floats", total);
        c->tensors = p;
        c->tensors_cap = total;
    }
    float *dst = c->tensors;
    const float **outs[4] = {&out->fc1_weight, &out->fc1_bias, &out->fc2_weight, &out->fc2_bias};
    for (int i = 0; i < 4; i++) {
        f32_from_le(dst, t[i], (size_t)want[i]);
        *outs[i] = dst;
        dst += want[i];
    }
    size_t n = 0;
    if (avro_value_get_by_index(rec, HW_METRICS, &map, NULL) != 0 || avro_value_get_size(&map, &n) != 0)
        return internal_fail(err_code, err, "metrics");
    if ((int)n > c->metrics_cap) {
        const char **nm = realloc(c->metric_names, n * sizeof *nm);
        if (nm) c->metric_names = nm;
        double *mv = realloc(c->metric_values, n * sizeof *mv);
        if (mv) c->metric_values = mv;
        if (!nm || !mv) return bs_err_code(err_code, BS_DL_TOO_LARGE, err, "HeadWeights: out of memory for metrics");
        c->metrics_cap = (int)n;
    }
    for (size_t i = 0; i < n; i++) {
        avro_value_t v;
        if (avro_value_get_by_index(&map, i, &v, &c->metric_names[i]) != 0 ||
            avro_value_get_double(&v, &c->metric_values[i]) != 0)
            return internal_fail(err_code, err, "a metric");
    }
    out->n_metrics = (int)n;
    out->metric_names = c->metric_names;
    out->metric_values = c->metric_values;
    int has = get_optional(rec, HW_SIGNATURE, &br);
    const void *sig = NULL;
    if (has < 0 || (has && avro_value_get_bytes(&br, &sig, &out->signature_len) != 0))
        return internal_fail(err_code, err, "signature");
    out->has_signature = has;
    out->signature = has ? sig : NULL;
    return BS_OK;
}

/* ---- encoders ---- */

/* Strings handed to Avro-C without a copy: a non-owning wrapped buffer whose size counts a NUL
 * (Avro-C's convention) that must really be there. Avro-C writes size-1 bytes. */
static int give_string(avro_value_t *f, const char *s, size_t len_with_nul) {
    avro_wrapped_buffer_t wb;
    if (avro_wrapped_buffer_new(&wb, s, len_with_nul) != 0) return BS_ERR;
    return avro_value_give_string_len(f, &wb) == 0 ? BS_OK : BS_ERR;
}

static int set_cstring(avro_value_t *rec, size_t idx, const char *s, const char *name, char *err) {
    avro_value_t f;
    if (!s) s = "";
    size_t n = strlen(s);
    if (!codec_utf8_valid(s, n)) return bs_err(err, "%s: invalid UTF-8 at byte %zu", name, utf8_bad_offset(s, n));
    if (avro_value_get_by_index(rec, idx, &f, NULL) != 0 || give_string(&f, s, n + 1) != BS_OK)
        return bs_err(err, "%s: %s", name, avro_strerror());
    return BS_OK;
}

/* A (pointer, length) string that may lack a NUL: copied into c->strs first. The copies of one
 * record are laid out back to back, so the buffer is sized once up front (no realloc between). */
static int set_lstring(avro_value_t *rec, size_t idx, const char *s, size_t len, size_t *at, bs_buf *strs,
                       const char *name, char *err) {
    avro_value_t f;
    if (!s) s = "", len = 0;
    if (!codec_utf8_valid(s, len)) return bs_err(err, "%s: invalid UTF-8 at byte %zu", name, utf8_bad_offset(s, len));
    char *dst = (char *)strs->data + *at;
    if (len) memcpy(dst, s, len);
    dst[len] = 0;
    *at += len + 1;
    if (avro_value_get_by_index(rec, idx, &f, NULL) != 0 || give_string(&f, dst, len + 1) != BS_OK)
        return bs_err(err, "%s: %s", name, avro_strerror());
    return BS_OK;
}

static int prepare_strs(bs_buf *strs, size_t total, char *err) {
    strs->len = 0;
    if (bs_buf_reserve(strs, total) != BS_OK) return bs_err(err, "codec: out of memory (%zu bytes)", total);
    return BS_OK;
}

static int set_int(avro_value_t *rec, size_t idx, int32_t v) {
    avro_value_t f;
    return avro_value_get_by_index(rec, idx, &f, NULL) == 0 && avro_value_set_int(&f, v) == 0 ? BS_OK : BS_ERR;
}

static int set_long(avro_value_t *rec, size_t idx, int64_t v) {
    avro_value_t f;
    return avro_value_get_by_index(rec, idx, &f, NULL) == 0 && avro_value_set_long(&f, v) == 0 ? BS_OK : BS_ERR;
}

static int set_float(avro_value_t *rec, size_t idx, float v) {
    avro_value_t f;
    return avro_value_get_by_index(rec, idx, &f, NULL) == 0 && avro_value_set_float(&f, v) == 0 ? BS_OK : BS_ERR;
}

/* ["null", X]: select branch 1 into *branch, or set null. */
static int set_optional(avro_value_t *rec, size_t idx, int present, avro_value_t *branch) {
    avro_value_t f, b;
    if (avro_value_get_by_index(rec, idx, &f, NULL) != 0) return BS_ERR;
    if (!present) return avro_value_set_branch(&f, 0, &b) == 0 && avro_value_set_null(&b) == 0 ? BS_OK : BS_ERR;
    return avro_value_set_branch(&f, 1, branch) == 0 ? BS_OK : BS_ERR;
}

/* Serialises c->value[s] into out with the framing's header. */
static int write_avro(bs_codec *c, bs_schema s, bs_framing framing, int32_t schema_id, bs_buf *out, char *err) {
    size_t size = 0, hdr = framing == BS_FRAMING_CONFLUENT ? 5 : 0;
    if (avro_value_sizeof(&c->value[s], &size) != 0) return bs_err(err, "codec: Avro-C sizeof: %s", avro_strerror());
    out->len = 0;
    if (bs_buf_reserve(out, hdr + size + 1) != BS_OK) return bs_err(err, "codec: out of memory (%zu bytes)", size);
    if (hdr) {
        uint32_t id = (uint32_t)schema_id;
        out->data[0] = 0;
        out->data[1] = (uint8_t)(id >> 24), out->data[2] = (uint8_t)(id >> 16), out->data[3] = (uint8_t)(id >> 8),
        out->data[4] = (uint8_t)id;
    }
    avro_writer_memory_set_dest(c->writer, (const char *)out->data + hdr, (int64_t)size);
    if (avro_value_write(c->writer, &c->value[s]) != 0 || avro_writer_tell(c->writer) != (int64_t)size)
        return bs_err(err, "codec: Avro-C write of %s: %s", schema_names[s], avro_strerror());
    out->len = hdr + size;
    /* the wrapped strings point at caller memory: drop them now so nothing dangles */
    avro_value_reset(&c->value[s]);
    return BS_OK;
}

static int check_avro_framing(bs_framing framing, const char *what, char *err) {
    if (framing == BS_FRAMING_AVRO || framing == BS_FRAMING_CONFLUENT) return BS_OK;
    return bs_err(err, "%s framing is not supported for %s", codec_framing_name(framing), what);
}

int codec_encode_review(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_review *r, bs_buf *out,
                        char *err) {
    if (framing == BS_FRAMING_TEXT) {
        if (!codec_utf8_valid(r->text, r->text_len)) return bs_err(err, "text: invalid UTF-8");
        out->len = 0;
        return bs_buf_append(out, r->text, r->text_len) == BS_OK ? BS_OK : bs_err(err, "codec: out of memory");
    }
    if (framing == BS_FRAMING_JSON) {
        if (!codec_utf8_valid(r->review_id, r->review_id_len) || !codec_utf8_valid(r->text, r->text_len) ||
            (r->has_source && !codec_utf8_valid(r->source, r->source_len)))
            return bs_err(err, "review: invalid UTF-8 in a string field");
        out->len = 0;
        int rc = bs_buf_append(out, "{\"review_id\":", 13) |
                 bs_buf_append_json_string(out, r->review_id, r->review_id_len) | bs_buf_append(out, ",\"text\":", 8) |
                 bs_buf_append_json_string(out, r->text, r->text_len);
        if (r->has_source)
            rc |= bs_buf_append(out, ",\"source\":", 10) | bs_buf_append_json_string(out, r->source, r->source_len);
        if (r->has_created_at) rc |= bs_buf_printf(out, ",\"created_at\":%" PRId64, r->created_at);
        rc |= bs_buf_append(out, "}", 1);
        return rc == BS_OK ? BS_OK : bs_err(err, "codec: out of memory");
    }
    if (check_avro_framing(framing, "review", err) != BS_OK) return BS_ERR;
    avro_value_t *rec = &c->value[BS_SCHEMA_REVIEW], br;
    size_t at = 0;
    avro_value_reset(rec);
    if (prepare_strs(&c->strs, r->review_id_len + r->text_len + (r->has_source ? r->source_len : 0) + 3, err) !=
            BS_OK ||
        set_lstring(rec, RV_ID, r->review_id, r->review_id_len, &at, &c->strs, "review_id", err) != BS_OK ||
        set_lstring(rec, RV_TEXT, r->text, r->text_len, &at, &c->strs, "text", err) != BS_OK)
        goto fail;
    if (set_optional(rec, RV_SOURCE, r->has_source, &br) != BS_OK) goto avro_fail;
    if (r->has_source) {
        if (!codec_utf8_valid(r->source, r->source_len)) {
            bs_err(err, "source: invalid UTF-8");
            goto fail;
        }
        char *dst = (char *)c->strs.data + at;
        if (r->source_len) memcpy(dst, r->source, r->source_len);
        dst[r->source_len] = 0;
        if (give_string(&br, dst, r->source_len + 1) != BS_OK) goto avro_fail;
    }
    if (set_optional(rec, RV_CREATED_AT, r->has_created_at, &br) != BS_OK ||
        (r->has_created_at && avro_value_set_long(&br, r->created_at) != 0))
        goto avro_fail;
    return write_avro(c, BS_SCHEMA_REVIEW, framing, schema_id, out, err);
avro_fail:
    bs_err(err, "codec: Avro-C: %s", avro_strerror());
fail:
    avro_value_reset(rec);
    return BS_ERR;
}

int codec_encode_labeled_review(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_labeled_review *r,
                                bs_buf *out, char *err) {
    if (framing == BS_FRAMING_JSON) {
        if (!codec_utf8_valid(r->review_id, r->review_id_len) || !codec_utf8_valid(r->text, r->text_len))
            return bs_err(err, "labeled review: invalid UTF-8 in a string field");
        out->len = 0;
        int rc = bs_buf_append(out, "{\"review_id\":", 13) |
                 bs_buf_append_json_string(out, r->review_id, r->review_id_len) | bs_buf_append(out, ",\"text\":", 8) |
                 bs_buf_append_json_string(out, r->text, r->text_len) |
                 bs_buf_printf(out, ",\"label\":%" PRId32 "}", r->label);
        return rc == BS_OK ? BS_OK : bs_err(err, "codec: out of memory");
    }
    if (check_avro_framing(framing, "labeled_review", err) != BS_OK) return BS_ERR;
    avro_value_t *rec = &c->value[BS_SCHEMA_LABELED_REVIEW];
    size_t at = 0;
    avro_value_reset(rec);
    if (prepare_strs(&c->strs, r->review_id_len + r->text_len + 2, err) != BS_OK ||
        set_lstring(rec, LR_ID, r->review_id, r->review_id_len, &at, &c->strs, "review_id", err) != BS_OK ||
        set_lstring(rec, LR_TEXT, r->text, r->text_len, &at, &c->strs, "text", err) != BS_OK)
        goto fail;
    if (set_int(rec, LR_LABEL, r->label) != BS_OK) {
        bs_err(err, "codec: Avro-C: %s", avro_strerror());
        goto fail;
    }
    return write_avro(c, BS_SCHEMA_LABELED_REVIEW, framing, schema_id, out, err);
fail:
    avro_value_reset(rec);
    return BS_ERR;
}

int codec_encode_review_score(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_review_score *s, bs_buf *out,
                              char *err) {
    if (check_avro_framing(framing, "review_score", err) != BS_OK) return BS_ERR;
    avro_value_t *rec = &c->value[BS_SCHEMA_REVIEW_SCORE], f;
    size_t at = 0;
    avro_value_reset(rec);
    if (prepare_strs(&c->strs, s->review_id_len + 1, err) != BS_OK ||
        set_lstring(rec, RS_ID, s->review_id, s->review_id_len, &at, &c->strs, "review_id", err) != BS_OK ||
        set_cstring(rec, RS_LABEL, s->label, "label", err) != BS_OK ||
        set_cstring(rec, RS_MODEL_ID, s->model_id, "model_id", err) != BS_OK)
        goto fail;
    if (set_float(rec, RS_PROB, s->probability) != BS_OK || set_float(rec, RS_LOGIT, s->logit) != BS_OK ||
        set_int(rec, RS_TOKENS, s->tokens) != BS_OK || avro_value_get_by_index(rec, RS_TRUNCATED, &f, NULL) != 0 ||
        avro_value_set_boolean(&f, s->truncated != 0) != 0 ||
        set_long(rec, RS_HEAD_VERSION, s->head_version) != BS_OK ||
        set_long(rec, RS_SCORED_AT, s->scored_at) != BS_OK ||
        set_int(rec, RS_PARTITION, s->source_partition) != BS_OK ||
        set_long(rec, RS_OFFSET, s->source_offset) != BS_OK) {
        bs_err(err, "codec: Avro-C: %s", avro_strerror());
        goto fail;
    }
    return write_avro(c, BS_SCHEMA_REVIEW_SCORE, framing, schema_id, out, err);
fail:
    avro_value_reset(rec);
    return BS_ERR;
}

int codec_encode_head_weights(bs_codec *c, bs_framing framing, int32_t schema_id, const bs_head_weights *h, bs_buf *out,
                              char *err) {
    if (check_avro_framing(framing, "head_weights", err) != BS_OK) return BS_ERR;
    if (h->input_dim <= 0 || h->hidden_dim <= 0)
        return bs_err(err, "head_weights: input_dim %d and hidden_dim %d must be positive", h->input_dim,
                      h->hidden_dim);
    avro_value_t *rec = &c->value[BS_SCHEMA_HEAD_WEIGHTS], f, br;
    size_t C = (size_t)h->input_dim, Hd = (size_t)h->hidden_dim, fc1;
    if (!bs_mul_ok(C, Hd, &fc1) || !bs_mul_ok(fc1 + 2 * Hd + 1, 4, &(size_t){0}))
        return bs_err(err, "head_weights: %zu x %zu is too large", Hd, C);
    const size_t nfl[4] = {fc1, Hd, Hd, 1};
    const float *src[4] = {h->fc1_weight, h->fc1_bias, h->fc2_weight, h->fc2_bias};
    static const char *const names[4] = {"fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"};
    for (int i = 0; i < 4; i++)
        if (!src[i]) return bs_err(err, "head_weights: %s is missing", names[i]);
    /* little-endian copies of the four tensors, back to back in c->strs */
    if (prepare_strs(&c->strs, 4 * (fc1 + 2 * Hd + 1), err) != BS_OK) return BS_ERR;
    avro_value_reset(rec);
    uint8_t *dst = c->strs.data;
    for (int i = 0; i < 4; i++) {
        avro_wrapped_buffer_t wb;
        f32_to_le(dst, src[i], nfl[i]);
        if (avro_value_get_by_index(rec, HW_FC1_W + i, &f, NULL) != 0 ||
            avro_wrapped_buffer_new(&wb, dst, 4 * nfl[i]) != 0 || avro_value_give_bytes(&f, &wb) != 0)
            goto avro_fail;
        dst += 4 * nfl[i];
    }
    if (set_cstring(rec, HW_ENCODER_ID, h->encoder_id, "encoder_id", err) != BS_OK ||
        set_cstring(rec, HW_FEATURE, h->feature, "feature", err) != BS_OK)
        goto fail;
    if (set_long(rec, HW_VERSION, h->version) != BS_OK || set_int(rec, HW_INPUT_DIM, h->input_dim) != BS_OK ||
        set_int(rec, HW_HIDDEN_DIM, h->hidden_dim) != BS_OK || set_long(rec, HW_CREATED_AT, h->created_at) != BS_OK ||
        avro_value_get_by_index(rec, HW_METRICS, &f, NULL) != 0)
        goto avro_fail;
    for (int i = 0; i < h->n_metrics; i++) {
        avro_value_t v;
        const char *name = h->metric_names[i] ? h->metric_names[i] : "";
        if (!codec_utf8_valid(name, strlen(name))) {
            bs_err(err, "head_weights: metric name %d is not UTF-8", i);
            goto fail;
        }
        if (avro_value_add(&f, name, &v, NULL, NULL) != 0 || avro_value_set_double(&v, h->metric_values[i]) != 0)
            goto avro_fail;
    }
    if (set_optional(rec, HW_SIGNATURE, h->has_signature, &br) != BS_OK) goto avro_fail;
    if (h->has_signature) {
        avro_wrapped_buffer_t wb;
        if (avro_wrapped_buffer_new(&wb, h->signature ? (const void *)h->signature : "", h->signature_len) != 0 ||
            avro_value_give_bytes(&br, &wb) != 0)
            goto avro_fail;
    }
    return write_avro(c, BS_SCHEMA_HEAD_WEIGHTS, framing, schema_id, out, err);
avro_fail:
    bs_err(err, "codec: Avro-C: %s", avro_strerror());
fail:
    avro_value_reset(rec);
    return BS_ERR;
}
