/* The wire layer: exact Avro bytes (computed by hand: zigzag varints, little-endian floats),
 * round trips through every record and framing, and one test per dead-letter code. */
#include <jansson.h>
#include <pthread.h>

#include "codec.h"
#include "test.h"

static bs_codec *codec;
static char err[BS_ERRLEN];

#define BYTES(...) ((const uint8_t[]){__VA_ARGS__}), sizeof((const uint8_t[]){__VA_ARGS__})

static int bytes_equal(const bs_buf *b, const uint8_t *want, size_t n) {
    if (b->len != n || memcmp(b->data, want, n) != 0) {
        fprintf(stderr, "  got %zu bytes:", b->len);
        for (size_t i = 0; i < b->len; i++) fprintf(stderr, " %02x", b->data[i]);
        fprintf(stderr, "\n  want %zu bytes:", n);
        for (size_t i = 0; i < n; i++) fprintf(stderr, " %02x", want[i]);
        fprintf(stderr, "\n");
        return 0;
    }
    return 1;
}

/* Decodes an Avro Review and returns its dead-letter code ("ok" on success). */
static const char *review_code(bs_framing f, int32_t expect, const void *v, size_t n) {
    bs_review r;
    const char *code = NULL;
    if (codec_decode_review(codec, f, expect, v, n, NULL, 0, "t", 0, 0, &r, &code, err) == BS_OK) return "ok";
    return code ? code : "(null)";
}

static void codec_embedded_schemas_equal_avsc_files(void) {
    for (int s = 0; s < BS_SCHEMA_COUNT; s++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/schemas/%s.avsc", BS_SOURCE_DIR, codec_schema_name((bs_schema)s));
        json_error_t je;
        json_t *file = json_load_file(path, 0, &je);
        json_t *emb = json_loads(codec_schema_json((bs_schema)s), 0, &je);
        CHECK(file != NULL);
        CHECK(emb != NULL);
        if (file && emb && !json_equal(file, emb)) {
            fprintf(stderr, "  %s: embedded schema differs from the file\n", path);
            CHECK(0);
        }
        json_decref(file);
        json_decref(emb);
    }
}

static void codec_review_score_has_exact_avro_bytes(void) {
    bs_review_score s = {.review_id = "r1",
                         .review_id_len = 2,
                         .label = "positive",
                         .probability = 0.5f,
                         .logit = -1.0f,
                         .tokens = 5,
                         .truncated = 1,
                         .head_version = -1,
                         .model_id = "m",
                         .scored_at = 1000,
                         .source_partition = 2,
                         .source_offset = 7};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review_score(codec, BS_FRAMING_AVRO, 0, &s, &b, err), BS_OK);
    /* "r1": len 2 -> zigzag 4; "positive": len 8 -> 0x10; 0.5f = 0x3f000000 LE; -1.0f = 0xbf800000 LE;
     * tokens 5 -> 0x0a; true -> 0x01; head_version -1 -> zigzag 1; "m"; scored_at 1000 -> zigzag 2000 =
     * 0x7d0 -> d0 0f; partition 2 -> 0x04; offset 7 -> 0x0e */
    CHECK(bytes_equal(&b, BYTES(0x04, 'r', '1', 0x10, 'p', 'o', 's', 'i', 't', 'i', 'v', 'e', 0x00, 0x00, 0x00, 0x3f,
                                0x00, 0x00, 0x80, 0xbf, 0x0a, 0x01, 0x01, 0x02, 'm', 0xd0, 0x0f, 0x04, 0x0e)));
    /* confluent: magic 0, id 258 big-endian, then the same Avro bytes */
    CHECK_INT(codec_encode_review_score(codec, BS_FRAMING_CONFLUENT, 258, &s, &b, err), BS_OK);
    CHECK_INT(b.len, 5 + 29);
    CHECK(b.data[0] == 0 && b.data[1] == 0 && b.data[2] == 0 && b.data[3] == 1 && b.data[4] == 2);
    CHECK(b.data[5] == 0x04 && b.data[6] == 'r');
    bs_buf_free(&b);
}

static void codec_review_has_exact_avro_bytes(void) {
    bs_review r = {
        .review_id = "a", .review_id_len = 1, .text = "", .text_len = 0, .has_created_at = 1, .created_at = -65};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review(codec, BS_FRAMING_AVRO, 0, &r, &b, err), BS_OK);
    /* "a"; "" -> 0x00; source null -> branch 0; created_at branch 1 -> 0x02, -65 -> zigzag 129 -> 81 01 */
    CHECK(bytes_equal(&b, BYTES(0x02, 'a', 0x00, 0x00, 0x02, 0x81, 0x01)));
    r.has_source = 1, r.source = "imdb", r.source_len = 4, r.has_created_at = 0;
    CHECK_INT(codec_encode_review(codec, BS_FRAMING_AVRO, 0, &r, &b, err), BS_OK);
    CHECK(bytes_equal(&b, BYTES(0x02, 'a', 0x00, 0x02, 0x08, 'i', 'm', 'd', 'b', 0x00)));
    bs_buf_free(&b);
}

static void codec_decodes_hand_written_review(void) {
    const uint8_t v[] = {0x04, 'i', 'd', 0x0a, 'h', 'e', 'l', 'l', 'o', 0x02, 0x02, 'x', 0x02, 0xd0, 0x0f};
    bs_review r;
    const char *code = NULL;
    CHECK_INT(codec_decode_review(codec, BS_FRAMING_AVRO, -1, v, sizeof v, NULL, 0, "t", 0, 0, &r, &code, err), BS_OK);
    CHECK_INT(r.review_id_len, 2);
    CHECK(memcmp(r.review_id, "id", 2) == 0);
    CHECK_INT(r.text_len, 5);
    CHECK(memcmp(r.text, "hello", 5) == 0);
    CHECK_INT(r.has_source, 1);
    CHECK_INT(r.source_len, 1);
    CHECK(r.source[0] == 'x');
    CHECK_INT(r.has_created_at, 1);
    CHECK_INT(r.created_at, 1000);
}

static void codec_review_round_trips_in_every_framing(void) {
    const char text[] = "Gr\xc3\xa9"
                        "at \"film\"\n\twith a NUL \0 inside";
    bs_review in = {.review_id = "rev-1",
                    .review_id_len = 5,
                    .text = text,
                    .text_len = sizeof text - 1,
                    .has_source = 1,
                    .source = "imdb",
                    .source_len = 4,
                    .has_created_at = 1,
                    .created_at = 1700000000123LL};
    bs_framing fr[] = {BS_FRAMING_AVRO, BS_FRAMING_CONFLUENT, BS_FRAMING_JSON};
    bs_buf b = {0};
    for (int i = 0; i < 3; i++) {
        CHECK_INT(codec_encode_review(codec, fr[i], 42, &in, &b, err), BS_OK);
        bs_review out;
        const char *code = NULL;
        CHECK_INT(codec_decode_review(codec, fr[i], 42, b.data, b.len, NULL, 0, "t", 0, 0, &out, &code, err), BS_OK);
        CHECK_INT(out.review_id_len, 5);
        CHECK(memcmp(out.review_id, "rev-1", 5) == 0);
        CHECK_INT(out.text_len, sizeof text - 1);
        CHECK(memcmp(out.text, text, sizeof text - 1) == 0);
        CHECK_INT(out.has_source, 1);
        CHECK(out.source_len == 4 && memcmp(out.source, "imdb", 4) == 0);
        CHECK_INT(out.has_created_at, 1);
        CHECK_INT(out.created_at, 1700000000123LL);
    }
    /* optional fields absent */
    in.has_source = 0, in.has_created_at = 0;
    for (int i = 0; i < 3; i++) {
        CHECK_INT(codec_encode_review(codec, fr[i], 42, &in, &b, err), BS_OK);
        bs_review out;
        CHECK_INT(codec_decode_review(codec, fr[i], 42, b.data, b.len, NULL, 0, "t", 0, 0, &out, NULL, err), BS_OK);
        CHECK_INT(out.has_source, 0);
        CHECK_INT(out.has_created_at, 0);
    }
    bs_buf_free(&b);
}

static void codec_text_framing_takes_id_from_key_or_position(void) {
    bs_review r;
    const char *code = NULL;
    CHECK_INT(codec_decode_review(codec, BS_FRAMING_TEXT, -1, "great", 5, "k7", 2, "reviews", 3, 99, &r, &code, err),
              BS_OK);
    CHECK(r.review_id_len == 2 && memcmp(r.review_id, "k7", 2) == 0);
    CHECK(r.text_len == 5 && memcmp(r.text, "great", 5) == 0);
    CHECK_INT(r.has_source, 0);
    CHECK_INT(codec_decode_review(codec, BS_FRAMING_TEXT, -1, "great", 5, NULL, 0, "reviews", 3, 99, &r, &code, err),
              BS_OK);
    CHECK_STR(r.review_id, "reviews/3/99");
    CHECK_INT(r.review_id_len, 12);
    /* a key that is not UTF-8 is not an id */
    CHECK_INT(codec_decode_review(codec, BS_FRAMING_TEXT, -1, "x", 1, "\xff", 1, "reviews", 0, 5, &r, &code, err),
              BS_OK);
    CHECK_STR(r.review_id, "reviews/0/5");
    /* an empty text is a valid review */
    CHECK_INT(codec_decode_review(codec, BS_FRAMING_TEXT, -1, NULL, 0, NULL, 0, "t", 0, 1, &r, &code, err), BS_OK);
    CHECK_INT(r.text_len, 0);
}

static void codec_labeled_review_round_trips(void) {
    bs_labeled_review in = {.review_id = "L1", .review_id_len = 2, .text = "bad", .text_len = 3, .label = 1};
    bs_buf b = {0};
    CHECK_INT(codec_encode_labeled_review(codec, BS_FRAMING_AVRO, 0, &in, &b, err), BS_OK);
    CHECK(bytes_equal(&b, BYTES(0x04, 'L', '1', 0x06, 'b', 'a', 'd', 0x02)));
    bs_framing fr[] = {BS_FRAMING_AVRO, BS_FRAMING_CONFLUENT, BS_FRAMING_JSON};
    for (int i = 0; i < 3; i++) {
        in.label = i == 2 ? 0 : 1;
        CHECK_INT(codec_encode_labeled_review(codec, fr[i], 7, &in, &b, err), BS_OK);
        bs_labeled_review out;
        CHECK_INT(codec_decode_labeled_review(codec, fr[i], 7, b.data, b.len, &out, NULL, err), BS_OK);
        CHECK(out.review_id_len == 2 && memcmp(out.review_id, "L1", 2) == 0);
        CHECK(out.text_len == 3 && memcmp(out.text, "bad", 3) == 0);
        CHECK_INT(out.label, in.label);
    }
    bs_buf_free(&b);
}

static void codec_review_score_round_trips(void) {
    bs_review_score in = {.review_id = "abc",
                          .review_id_len = 3,
                          .label = "negative",
                          .probability = 0.123456789f,
                          .logit = -1.96f,
                          .tokens = 128,
                          .truncated = 1,
                          .head_version = 1234567890123LL,
                          .model_id = "bert-base-uncased",
                          .scored_at = 1700000000000LL,
                          .source_partition = 11,
                          .source_offset = 9876543210LL};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review_score(codec, BS_FRAMING_CONFLUENT, 3, &in, &b, err), BS_OK);
    bs_review_score out;
    CHECK_INT(codec_decode_review_score(codec, BS_FRAMING_CONFLUENT, 3, b.data, b.len, &out, NULL, err), BS_OK);
    CHECK(out.review_id_len == 3 && memcmp(out.review_id, "abc", 3) == 0);
    CHECK_STR(out.label, "negative");
    CHECK(out.probability == in.probability);
    CHECK(out.logit == in.logit);
    CHECK_INT(out.tokens, 128);
    CHECK_INT(out.truncated, 1);
    CHECK_INT(out.head_version, 1234567890123LL);
    CHECK_STR(out.model_id, "bert-base-uncased");
    CHECK_INT(out.scored_at, 1700000000000LL);
    CHECK_INT(out.source_partition, 11);
    CHECK_INT(out.source_offset, 9876543210LL);
    bs_buf_free(&b);
}

static void codec_head_weights_round_trip_with_metrics_and_signature(void) {
    enum { C = 3, Hd = 2 };
    float w1[Hd * C] = {1, -2, 3.5f, 0.25f, -0.125f, 1e-8f}, b1[Hd] = {0.5f, -0.5f}, w2[Hd] = {2, -3}, b2[1] = {0.1f};
    const char *names[] = {"accuracy", "loss"};
    double vals[] = {0.626, 0.41};
    uint8_t sig[] = {0xde, 0xad, 0xbe, 0xef};
    bs_head_weights in = {.version = 17,
                          .encoder_id = "bert-base-uncased@abc",
                          .feature = "pooler",
                          .input_dim = C,
                          .hidden_dim = Hd,
                          .fc1_weight = w1,
                          .fc1_bias = b1,
                          .fc2_weight = w2,
                          .fc2_bias = b2,
                          .n_metrics = 2,
                          .metric_names = names,
                          .metric_values = vals,
                          .created_at = 1700000000001LL,
                          .has_signature = 1,
                          .signature = sig,
                          .signature_len = 4};
    bs_buf b = {0};
    CHECK_INT(codec_encode_head_weights(codec, BS_FRAMING_AVRO, 0, &in, &b, err), BS_OK);
    /* version 17 -> 0x22, then encoder_id (len 21 -> 0x2a) */
    CHECK(b.len > 2 && b.data[0] == 0x22 && b.data[1] == 0x2a);
    bs_head_weights out;
    const char *code = NULL;
    CHECK_INT(codec_decode_head_weights(codec, BS_FRAMING_AVRO, -1, b.data, b.len, &out, &code, err), BS_OK);
    CHECK_INT(out.version, 17);
    CHECK_STR(out.encoder_id, "bert-base-uncased@abc");
    CHECK_STR(out.feature, "pooler");
    CHECK_INT(out.input_dim, C);
    CHECK_INT(out.hidden_dim, Hd);
    CHECK(memcmp(out.fc1_weight, w1, sizeof w1) == 0);
    CHECK(memcmp(out.fc1_bias, b1, sizeof b1) == 0);
    CHECK(memcmp(out.fc2_weight, w2, sizeof w2) == 0);
    CHECK(memcmp(out.fc2_bias, b2, sizeof b2) == 0);
    CHECK_INT(out.n_metrics, 2);
    for (int i = 0; i < out.n_metrics && i < 2; i++) {
        CHECK_STR(out.metric_names[i], names[i]);
        CHECK(out.metric_values[i] == vals[i]);
    }
    CHECK_INT(out.created_at, 1700000000001LL);
    CHECK_INT(out.has_signature, 1);
    CHECK(out.signature_len == 4 && memcmp(out.signature, sig, 4) == 0);
    /* tensors are little-endian F32 on the wire: fc1_weight starts with 1.0f = 00 00 80 3f after its
     * length (24 bytes -> zigzag 48 = 0x30) */
    const uint8_t pat[] = {0x30, 0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x00, 0xc0};
    CHECK(memmem(b.data, b.len, pat, sizeof pat) != NULL);
    /* unsigned variant: signature null is the last byte (branch 0) */
    in.has_signature = 0;
    CHECK_INT(codec_encode_head_weights(codec, BS_FRAMING_CONFLUENT, 5, &in, &b, err), BS_OK);
    CHECK_INT(b.data[b.len - 1], 0x00);
    CHECK_INT(codec_decode_head_weights(codec, BS_FRAMING_CONFLUENT, 5, b.data, b.len, &out, &code, err), BS_OK);
    CHECK_INT(out.has_signature, 0);
    CHECK(out.signature == NULL);
    bs_buf_free(&b);
}

static void codec_head_weights_with_wrong_tensor_size_is_wrong_type(void) {
    float w1[4] = {0}, b1[2] = {0}, w2[2] = {0}, b2[1] = {0};
    bs_head_weights in = {.version = 1,
                          .encoder_id = "e",
                          .feature = "cls",
                          .input_dim = 2,
                          .hidden_dim = 2,
                          .fc1_weight = w1,
                          .fc1_bias = b1,
                          .fc2_weight = w2,
                          .fc2_bias = b2};
    bs_buf b = {0};
    CHECK_INT(codec_encode_head_weights(codec, BS_FRAMING_AVRO, 0, &in, &b, err), BS_OK);
    /* claim input_dim 3 (field 4: after version 0x02, "e", "cls"): bytes 02 | 02 'e' | 06 'c' 'l' 's' | 04 -> 06 */
    CHECK_INT(b.data[7], 0x04);
    b.data[7] = 0x06;
    bs_head_weights out;
    const char *code = NULL;
    CHECK_INT(codec_decode_head_weights(codec, BS_FRAMING_AVRO, -1, b.data, b.len, &out, &code, err), BS_ERR);
    CHECK_STR(code, BS_DL_WRONG_TYPE);
    CHECK_CONTAINS(err, "fc1_weight");
    bs_buf_free(&b);
}

static void codec_empty_or_truncated_avro_is_truncated_avro(void) {
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, NULL, 0), BS_DL_TRUNCATED_AVRO);
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, "", 0), BS_DL_TRUNCATED_AVRO);
    bs_review in = {.review_id = "abc",
                    .review_id_len = 3,
                    .text = "some text",
                    .text_len = 9,
                    .has_source = 1,
                    .source = "s",
                    .source_len = 1,
                    .has_created_at = 1,
                    .created_at = 1LL << 40};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review(codec, BS_FRAMING_AVRO, 0, &in, &b, err), BS_OK);
    for (size_t n = 0; n < b.len; n++) CHECK_STR(review_code(BS_FRAMING_AVRO, -1, b.data, n), BS_DL_TRUNCATED_AVRO);
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, b.data, b.len), "ok");
    /* a length prefix of ~2^62 is refused before anything is allocated */
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, BYTES(0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 'a')),
              BS_DL_TRUNCATED_AVRO);
    CHECK_CONTAINS(err, "review_id");
    bs_buf_free(&b);
}

static void codec_malformed_avro_is_invalid_avro(void) {
    /* trailing byte after a complete record */
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, BYTES(0x02, 'a', 0x00, 0x00, 0x00, 0x00)), BS_DL_INVALID_AVRO);
    CHECK_CONTAINS(err, "trailing");
    /* negative string length (zigzag 0x01 = -1) */
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, BYTES(0x01, 'a', 0x00, 0x00, 0x00)), BS_DL_INVALID_AVRO);
    CHECK_CONTAINS(err, "negative");
    /* a varint longer than 64 bits */
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, BYTES(0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f)),
              BS_DL_INVALID_AVRO);
    /* union index 2 of a 2-branch union */
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, BYTES(0x02, 'a', 0x00, 0x04, 0x00)), BS_DL_INVALID_AVRO);
    CHECK_CONTAINS(err, "source");
    /* a boolean byte other than 0/1 in a ReviewScore */
    bs_review_score s = {.review_id = "r", .review_id_len = 1, .label = "positive", .model_id = "m"};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review_score(codec, BS_FRAMING_AVRO, 0, &s, &b, err), BS_OK);
    size_t tpos = 2 + 9 + 8 + 1; /* "r", "positive", two floats, tokens */
    CHECK_INT(b.data[tpos], 0);
    b.data[tpos] = 2;
    bs_review_score out;
    const char *code = NULL;
    CHECK_INT(codec_decode_review_score(codec, BS_FRAMING_AVRO, -1, b.data, b.len, &out, &code, err), BS_ERR);
    CHECK_STR(code, BS_DL_INVALID_AVRO);
    CHECK_CONTAINS(err, "truncated");
    /* an int out of the int32 range in LabeledReview.label (zigzag 2^32 = 2^31 * 2) */
    bs_labeled_review lr;
    CHECK_INT(codec_decode_labeled_review(codec, BS_FRAMING_AVRO, -1, BYTES(0x00, 0x00, 0x80, 0x80, 0x80, 0x80, 0x10),
                                          &lr, &code, err),
              BS_ERR);
    CHECK_STR(code, BS_DL_INVALID_AVRO);
    bs_buf_free(&b);
}

static void codec_non_utf8_string_is_invalid_utf8(void) {
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, BYTES(0x02, 'a', 0x04, 0xc3, 0x28, 0x00, 0x00)), BS_DL_INVALID_UTF8);
    CHECK_CONTAINS(err, "text");
    CHECK_STR(review_code(BS_FRAMING_AVRO, -1, BYTES(0x02, 0xff, 0x00, 0x00, 0x00)), BS_DL_INVALID_UTF8);
    CHECK_STR(review_code(BS_FRAMING_TEXT, -1, "ab\xed\xa0\x80", 5), BS_DL_INVALID_UTF8); /* a surrogate */
    CHECK_STR(review_code(BS_FRAMING_JSON, -1, "{\"review_id\":\"a\",\"text\":\"\xc0\x80\"}", 29), BS_DL_INVALID_UTF8);
    bs_review r = {.review_id = "a", .review_id_len = 1, .text = "\xff", .text_len = 1};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review(codec, BS_FRAMING_AVRO, 0, &r, &b, err), BS_ERR);
    CHECK_CONTAINS(err, "text");
    bs_buf_free(&b);
}

static void codec_confluent_header_errors(void) {
    bs_review in = {.review_id = "a", .review_id_len = 1, .text = "t", .text_len = 1};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review(codec, BS_FRAMING_CONFLUENT, 9, &in, &b, err), BS_OK);
    CHECK_STR(review_code(BS_FRAMING_CONFLUENT, 9, b.data, b.len), "ok");
    CHECK_STR(review_code(BS_FRAMING_CONFLUENT, -1, b.data, b.len), "ok");
    CHECK_STR(review_code(BS_FRAMING_CONFLUENT, 10, b.data, b.len), BS_DL_UNKNOWN_SCHEMA_ID);
    CHECK_CONTAINS(err, "9");
    b.data[0] = 1;
    CHECK_STR(review_code(BS_FRAMING_CONFLUENT, 9, b.data, b.len), BS_DL_BAD_MAGIC_BYTE);
    CHECK_STR(review_code(BS_FRAMING_CONFLUENT, 9, BYTES(0x00, 0x00, 0x00)), BS_DL_TRUNCATED_AVRO);
    CHECK_STR(review_code(BS_FRAMING_CONFLUENT, 9, NULL, 0), BS_DL_TRUNCATED_AVRO);
    /* plain Avro read as confluent: first byte is a string length, not 0 */
    CHECK_INT(codec_encode_review(codec, BS_FRAMING_AVRO, 9, &in, &b, err), BS_OK);
    CHECK_STR(review_code(BS_FRAMING_CONFLUENT, 9, b.data, b.len), BS_DL_BAD_MAGIC_BYTE);
    bs_buf_free(&b);
}

static void codec_json_framing_errors(void) {
    const char *ok = "{\"review_id\":\"r\",\"text\":\"fine\",\"extra\":1}";
    CHECK_STR(review_code(BS_FRAMING_JSON, -1, ok, strlen(ok)), "ok");
    const char *bad[] = {"{\"review_id\":", "", "not json"};
    for (int i = 0; i < 3; i++) CHECK_STR(review_code(BS_FRAMING_JSON, -1, bad[i], strlen(bad[i])), BS_DL_INVALID_JSON);
    const char *wrong[] = {"[1,2]",
                           "\"text\"",
                           "{\"review_id\":\"r\"}",
                           "{\"text\":\"t\"}",
                           "{\"review_id\":1,\"text\":\"t\"}",
                           "{\"review_id\":\"r\",\"text\":5}",
                           "{\"review_id\":\"r\",\"text\":\"t\",\"created_at\":\"yesterday\"}",
                           "{\"review_id\":\"r\",\"text\":\"t\",\"source\":3}"};
    for (int i = 0; i < 8; i++)
        CHECK_STR(review_code(BS_FRAMING_JSON, -1, wrong[i], strlen(wrong[i])), BS_DL_WRONG_TYPE);
    bs_labeled_review lr;
    const char *code = NULL;
    const char *nolabel = "{\"review_id\":\"r\",\"text\":\"t\",\"label\":\"pos\"}";
    CHECK_INT(codec_decode_labeled_review(codec, BS_FRAMING_JSON, -1, nolabel, strlen(nolabel), &lr, &code, err),
              BS_ERR);
    CHECK_STR(code, BS_DL_WRONG_TYPE);
}

static void codec_value_above_limit_is_too_large(void) {
    bs_codec *c = codec_new(err);
    CHECK(c != NULL);
    if (!c) return;
    codec_set_max_value_bytes(c, 8);
    bs_review r;
    const char *code = NULL;
    const char *v = "123456789";
    bs_framing fr[] = {BS_FRAMING_AVRO, BS_FRAMING_CONFLUENT, BS_FRAMING_JSON, BS_FRAMING_TEXT};
    for (int i = 0; i < 4; i++) {
        code = NULL;
        CHECK_INT(codec_decode_review(c, fr[i], -1, v, 9, NULL, 0, "t", 0, 0, &r, &code, err), BS_ERR);
        CHECK_STR(code, BS_DL_TOO_LARGE);
    }
    CHECK_INT(codec_decode_review(c, BS_FRAMING_TEXT, -1, v, 8, NULL, 0, "t", 0, 0, &r, &code, err), BS_OK);
    codec_free(c);
}

static void codec_unsupported_framing_is_reported(void) {
    bs_review_score s;
    const char *code = NULL;
    CHECK_INT(codec_decode_review_score(codec, BS_FRAMING_TEXT, -1, "x", 1, &s, &code, err), BS_ERR);
    CHECK_STR(code, BS_DL_UNSUPPORTED_FRAMING);
    bs_review_score in = {.review_id = "r", .review_id_len = 1, .label = "positive", .model_id = "m"};
    bs_buf b = {0};
    CHECK_INT(codec_encode_review_score(codec, BS_FRAMING_JSON, 0, &in, &b, err), BS_ERR);
    CHECK_CONTAINS(err, "json");
    bs_buf_free(&b);
}

static void codec_dead_letter_code_list_is_complete(void) {
    const char *want[] = {BS_DL_TRUNCATED_AVRO, BS_DL_INVALID_AVRO,      BS_DL_WRONG_TYPE,
                          BS_DL_INVALID_UTF8,   BS_DL_UNKNOWN_SCHEMA_ID, BS_DL_BAD_MAGIC_BYTE,
                          BS_DL_INVALID_JSON,   BS_DL_TOO_LARGE,         BS_DL_UNSUPPORTED_FRAMING};
    CHECK_INT(codec_dead_letter_code_count, 9);
    for (int i = 0; i < 9 && i < codec_dead_letter_code_count; i++) CHECK_STR(codec_dead_letter_codes[i], want[i]);
}

static void codec_utf8_validator_rejects_overlongs_surrogates_and_beyond_u10ffff(void) {
    CHECK(codec_utf8_valid("", 0));
    CHECK(codec_utf8_valid("a\0b", 3));
    CHECK(codec_utf8_valid("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xf4\x8f\xbf\xbf", 13));
    CHECK(!codec_utf8_valid("\xc0\x80", 2));         /* overlong NUL */
    CHECK(!codec_utf8_valid("\xe0\x80\xaf", 3));     /* overlong '/' */
    CHECK(!codec_utf8_valid("\xed\xa0\x80", 3));     /* U+D800 */
    CHECK(!codec_utf8_valid("\xf4\x90\x80\x80", 4)); /* U+110000 */
    CHECK(!codec_utf8_valid("\xe2\x82", 2));         /* cut */
    CHECK(!codec_utf8_valid("\x80", 1));
}

static void codec_json_appenders_escape_and_round_floats(void) {
    bs_buf b = {0};
    CHECK_INT(bs_buf_append_json_string(&b, "a\"b\\c\n\x01\xc3\xa9", 9), BS_OK);
    CHECK_STR((const char *)b.data, "\"a\\\"b\\\\c\\n\\u0001\xc3\xa9\"");
    b.len = 0;
    bs_buf_append_json_float(&b, 0.1f);
    bs_buf_append(&b, " ", 1);
    bs_buf_append_json_float(&b, 0.123456789f);
    bs_buf_append(&b, " ", 1);
    bs_buf_append_json_double(&b, 0.626);
    bs_buf_append(&b, " ", 1);
    bs_buf_append_json_float(&b, NAN);
    CHECK_STR((const char *)b.data, "0.1 0.12345679 0.626 null");
    bs_buf_free(&b);
}

static void codec_framing_and_schema_names_parse(void) {
    bs_framing f;
    CHECK_INT(codec_framing_parse("confluent", &f, err), BS_OK);
    CHECK_INT(f, BS_FRAMING_CONFLUENT);
    CHECK_INT(codec_framing_parse("protobuf", &f, err), BS_ERR);
    CHECK_CONTAINS(err, "protobuf");
    bs_schema s;
    CHECK_INT(codec_schema_parse("head_weights", &s, err), BS_OK);
    CHECK_INT(s, BS_SCHEMA_HEAD_WEIGHTS);
    CHECK_STR(codec_framing_name(BS_FRAMING_TEXT), "text");
}

static void codec_reuse_keeps_earlier_results_independent(void) {
    /* the same codec decodes many messages; each result reflects its own message only */
    bs_buf b = {0};
    char id[32], text[64];
    for (int i = 0; i < 2000; i++) {
        snprintf(id, sizeof id, "id-%d", i);
        int tl = snprintf(text, sizeof text, "text number %d %s", i, i % 2 ? "odd" : "even");
        bs_review in = {.review_id = id,
                        .review_id_len = strlen(id),
                        .text = text,
                        .text_len = (size_t)tl,
                        .has_source = i % 3 == 0,
                        .source = "s",
                        .source_len = 1};
        if (codec_encode_review(codec, BS_FRAMING_CONFLUENT, 1, &in, &b, err) != BS_OK) {
            CHECK(0);
            break;
        }
        bs_review out;
        if (codec_decode_review(codec, BS_FRAMING_CONFLUENT, 1, b.data, b.len, NULL, 0, "t", 0, 0, &out, NULL, err) !=
                BS_OK ||
            out.text_len != (size_t)tl || memcmp(out.text, text, (size_t)tl) != 0 || out.has_source != (i % 3 == 0)) {
            CHECK(0);
            break;
        }
    }
    bs_buf_free(&b);
}

/* One codec per thread is the contract: codecs on different threads must not share state. */
static void *thread_round_trips(void *arg) {
    long id = (long)arg, bad = 0;
    char terr[BS_ERRLEN], text[64];
    bs_codec *c = codec_new(terr);
    bs_buf b = {0};
    if (!c) return (void *)1;
    for (int i = 0; i < 3000; i++) {
        int tl = snprintf(text, sizeof text, "thread %ld message %d", id, i);
        bs_review_score s = {.review_id = text,
                             .review_id_len = (size_t)tl,
                             .label = "positive",
                             .tokens = i,
                             .model_id = "m",
                             .source_offset = id};
        bs_review_score out;
        if (codec_encode_review_score(c, BS_FRAMING_CONFLUENT, (int32_t)id, &s, &b, terr) != BS_OK ||
            codec_decode_review_score(c, BS_FRAMING_CONFLUENT, (int32_t)id, b.data, b.len, &out, NULL, terr) != BS_OK ||
            out.review_id_len != (size_t)tl || memcmp(out.review_id, text, (size_t)tl) != 0 || out.tokens != i ||
            out.source_offset != id)
            bad++;
    }
    bs_buf_free(&b);
    codec_free(c);
    return (void *)bad;
}

static void codec_per_thread_codecs_do_not_interfere(void) {
    pthread_t t[4];
    for (long i = 0; i < 4; i++) CHECK_INT(pthread_create(&t[i], NULL, thread_round_trips, (void *)i), 0);
    for (int i = 0; i < 4; i++) {
        void *bad = NULL;
        pthread_join(t[i], &bad);
        CHECK_INT((long)bad, 0);
    }
}

int main(void) {
    codec = codec_new(err);
    if (!codec) {
        fprintf(stderr, "codec_new: %s\n", err);
        return 1;
    }
    RUN(codec_embedded_schemas_equal_avsc_files);
    RUN(codec_review_score_has_exact_avro_bytes);
    RUN(codec_review_has_exact_avro_bytes);
    RUN(codec_decodes_hand_written_review);
    RUN(codec_review_round_trips_in_every_framing);
    RUN(codec_text_framing_takes_id_from_key_or_position);
    RUN(codec_labeled_review_round_trips);
    RUN(codec_review_score_round_trips);
    RUN(codec_head_weights_round_trip_with_metrics_and_signature);
    RUN(codec_head_weights_with_wrong_tensor_size_is_wrong_type);
    RUN(codec_empty_or_truncated_avro_is_truncated_avro);
    RUN(codec_malformed_avro_is_invalid_avro);
    RUN(codec_non_utf8_string_is_invalid_utf8);
    RUN(codec_confluent_header_errors);
    RUN(codec_json_framing_errors);
    RUN(codec_value_above_limit_is_too_large);
    RUN(codec_unsupported_framing_is_reported);
    RUN(codec_dead_letter_code_list_is_complete);
    RUN(codec_utf8_validator_rejects_overlongs_surrogates_and_beyond_u10ffff);
    RUN(codec_json_appenders_escape_and_round_floats);
    RUN(codec_framing_and_schema_names_parse);
    RUN(codec_reuse_keeps_earlier_results_independent);
    RUN(codec_per_thread_codecs_do_not_interfere);
    codec_free(codec);
    return bs_test_done();
}
