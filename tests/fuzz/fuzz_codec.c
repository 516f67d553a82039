/* libFuzzer target for the wire layer: any bytes through every decoder and framing must give
 * BS_OK or a dead-letter code, never a crash, a leak or a large allocation; and whatever decodes
 * must re-encode and decode to the same record. Byte 0 picks the framing and confluent id check. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"

static bs_codec *codec;
static bs_buf buf;

static void check_review_round_trip(const bs_review *r, bs_framing f) {
    char err[BS_ERRLEN];
    bs_review copy = *r, back;
    /* the decoded strings live in the codec: re-encoding and decoding reuses that memory, so keep copies */
    char *id = malloc(r->review_id_len + 1), *text = malloc(r->text_len + 1), *src = malloc(r->source_len + 1);
    if (!id || !text || !src) abort();
    if (r->review_id_len) memcpy(id, r->review_id, r->review_id_len);
    if (r->text_len) memcpy(text, r->text, r->text_len);
    if (r->source_len) memcpy(src, r->source, r->source_len);
    copy.review_id = id, copy.text = text, copy.source = src;
    if (f == BS_FRAMING_TEXT) f = BS_FRAMING_AVRO;
    if (codec_encode_review(codec, f, 7, &copy, &buf, err) != BS_OK) abort();
    if (codec_decode_review(codec, f, 7, buf.data, buf.len, NULL, 0, "t", 0, 0, &back, NULL, err) != BS_OK) abort();
    if (back.review_id_len != copy.review_id_len || memcmp(back.review_id, id, copy.review_id_len) != 0 ||
        back.text_len != copy.text_len || memcmp(back.text, text, copy.text_len) != 0 ||
        back.has_source != copy.has_source || back.has_created_at != copy.has_created_at ||
        (copy.has_created_at && back.created_at != copy.created_at))
        abort();
    free(id);
    free(text);
    free(src);
}

/* Freed at exit so LeakSanitizer sees Avro-C's internal tables released (it cannot trace
 * every pointer Avro-C keeps, and reports them when the codec is left alive). */
static void codec_done(void) {
    codec_free(codec);
    bs_buf_free(&buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[BS_ERRLEN];
    const char *code;
    if (!codec) {
        codec = codec_new(err);
        if (!codec) abort();
        codec_set_max_value_bytes(codec, 1 << 16);
        atexit(codec_done);
    }
    if (size < 1) return 0;
    bs_framing f = (bs_framing)(data[0] & 3);
    int32_t expect = (data[0] & 4) ? 7 : -1;
    const uint8_t *v = data + 1;
    size_t n = size - 1;

    bs_review r;
    code = NULL;
    if (codec_decode_review(codec, f, expect, v, n, v, n > 4 ? 4 : n, "topic", 1, 2, &r, &code, err) == BS_OK) {
        check_review_round_trip(&r, f);
    } else if (!code) {
        abort(); /* every failure carries a dead-letter code */
    }
    bs_framing af = (data[0] & 8) ? BS_FRAMING_CONFLUENT : BS_FRAMING_AVRO;
    bs_labeled_review lr;
    code = NULL;
    if (codec_decode_labeled_review(codec, (data[0] & 16) ? BS_FRAMING_JSON : af, expect, v, n, &lr, &code, err) !=
            BS_OK &&
        !code)
        abort();
    bs_review_score s;
    code = NULL;
    if (codec_decode_review_score(codec, af, expect, v, n, &s, &code, err) != BS_OK && !code) abort();
    bs_head_weights h;
    code = NULL;
    if (codec_decode_head_weights(codec, af, expect, v, n, &h, &code, err) == BS_OK) {
        volatile float sum = 0; /* touch every decoded float: the buffers must be as large as the dims say */
        for (int64_t i = 0; i < (int64_t)h.input_dim * h.hidden_dim; i++) sum += h.fc1_weight[i];
        for (int i = 0; i < h.hidden_dim; i++) sum += h.fc1_bias[i] + h.fc2_weight[i];
        sum += h.fc2_bias[0];
        for (int i = 0; i < h.n_metrics; i++) sum += (float)h.metric_values[i] + (float)strlen(h.metric_names[i]);
        (void)sum;
    } else if (!code) {
        abort();
    }
    return 0;
}
