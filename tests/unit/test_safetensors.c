/* safetensors reader and writer: the real Hugging Face files in golden/tiny-bert, one broken
 * file per malformation (each error must name the file and the tensor or key), exact F16/BF16
 * conversion, and the writer's layout. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "safetensors.h"
#include "test.h"

static char tmp[256];

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

/* Writes u64 length + header + data_len bytes (i & 0xff) into tmp/name; returns the path. */
static const char *write_raw(const char *name, const char *header, size_t data_len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmp, name);
    FILE *f = fopen(path, "wb");
    uint64_t n = strlen(header);
    for (int i = 0; i < 8; i++) fputc((int)((n >> (8 * i)) & 0xff), f);
    fwrite(header, 1, n, f);
    for (size_t i = 0; i < data_len; i++) fputc((int)(i & 0xff), f);
    fclose(f);
    return path;
}

/* Opens a broken file and checks the error names the file and the given tensor/key text. */
static void expect_error(const char *name, const char *header, size_t data_len, const char *sub1, const char *sub2) {
    char err[BS_ERRLEN] = "";
    const char *p = write_raw(name, header, data_len);
    st_file *f = st_open(p, err);
    CHECK(f == NULL);
    st_close(f);
    CHECK_CONTAINS(err, name);
    if (sub1) CHECK_CONTAINS(err, sub1);
    if (sub2) CHECK_CONTAINS(err, sub2);
    CHECK(strchr(err, '\n') == NULL);
}

static void st_reads_golden_head_file(void) {
    char err[BS_ERRLEN];
    st_file *f = st_open(bs_test_data("golden/tiny-bert/head.safetensors"), err);
    CHECK(f != NULL);
    if (!f) return;
    CHECK_INT(st_count(f), 4);
    CHECK_STR(st_at(f, 0)->name, "fc1.bias"); /* sorted by name */
    CHECK_STR(st_at(f, 3)->name, "fc2.weight");
    const st_tensor *t = st_find(f, "fc1.weight");
    CHECK(t != NULL);
    if (!t) goto out;
    CHECK_INT(t->dtype, ST_F32);
    CHECK_INT(t->ndim, 2);
    CHECK_INT(t->shape[0], 64);
    CHECK_INT(t->shape[1], 128);
    CHECK_INT(t->numel, 8192);
    CHECK_INT(t->nbytes, 32768);
    static float w[8192];
    CHECK_INT(st_to_f32(t, w, err), BS_OK);
    /* values read with numpy from the file's bytes */
    CHECK_INT(bits(w[0]), 0xbd825f67u);
    CHECK_INT(bits(w[63 * 128 + 127]), 0xbd250e45u);
    float b2;
    CHECK_INT(st_to_f32(st_find(f, "fc2.bias"), &b2, err), BS_OK);
    CHECK_INT(bits(b2), 0x3db31082u);
    CHECK(st_find(f, "fc3.weight") == NULL);
    CHECK(st_metadata(f, "format") == NULL);
out:
    st_close(f);
}

static void st_reads_golden_shard_metadata_and_offsets(void) {
    char err[BS_ERRLEN];
    st_file *f = st_open(bs_test_data("golden/tiny-bert/model-00002-of-00002.safetensors"), err);
    CHECK(f != NULL);
    if (!f) return;
    CHECK_INT(st_count(f), 38); /* 4 embedding tensors + 16 per layer x 2 + pooler 2 */
    CHECK_STR(st_metadata(f, "format"), "pt");
    const st_tensor *t = st_find(f, "encoder.layer.0.attention.self.key.weight");
    CHECK(t != NULL);
    if (t) {
        float v;
        memcpy(&v, (const char *)t->data + (3 * 128 + 7) * 4, 4);
        CHECK_INT(bits(v), 0xbd08fa37u);
    }
    CHECK(strstr(st_path(f), "model-00002-of-00002.safetensors") != NULL);
    st_close(f);
}

static void st_to_f32_refuses_integer_tensors(void) {
    char err[BS_ERRLEN] = "";
    st_file *f = st_open(bs_test_data("golden/tiny-bert/golden.safetensors"), err);
    CHECK(f != NULL);
    if (!f) return;
    const st_tensor *t = st_find(f, "input_ids");
    CHECK(t != NULL);
    if (t) {
        CHECK_INT(t->dtype, ST_I32);
        CHECK_INT(((const int32_t *)t->data)[0], 101); /* [CLS] */
        static float out[16 * 128];
        CHECK_INT(st_to_f32(t, out, err), BS_ERR);
        CHECK_CONTAINS(err, "input_ids");
        CHECK_CONTAINS(err, "I32");
    }
    int64_t shape[2] = {16, 128};
    CHECK(st_expect(f, "input_ids", 2, shape, err) == NULL);
    CHECK_CONTAINS(err, "dtype I32");
    st_close(f);
}

static void st_rejects_file_shorter_than_8_bytes(void) {
    char path[512], err[BS_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/short.safetensors", tmp);
    FILE *f = fopen(path, "wb");
    fwrite("\x05\0\0", 1, 3, f);
    fclose(f);
    CHECK(st_open(path, err) == NULL);
    CHECK_CONTAINS(err, "short.safetensors");
    CHECK_CONTAINS(err, "shorter than the 8-byte header length");
    /* an empty file too (mmap of 0 bytes is not even attempted) */
    f = fopen(path, "wb");
    fclose(f);
    CHECK(st_open(path, err) == NULL);
    CHECK_CONTAINS(err, "file is 0 bytes");
}

static void st_rejects_header_length_past_end(void) {
    char path[512], err[BS_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/hlen.safetensors", tmp);
    FILE *f = fopen(path, "wb");
    fwrite("\xff\xff\xff\xff\xff\xff\xff\xff{}", 1, 10, f); /* 2^64-1: must not wrap around */
    fclose(f);
    CHECK(st_open(path, err) == NULL);
    CHECK_CONTAINS(err, "hlen.safetensors");
    CHECK_CONTAINS(err, "header length 18446744073709551615 runs past the end of the file (10 bytes)");
}

static void st_rejects_header_that_is_not_a_json_object(void) {
    expect_error("list.safetensors", "[1, 2]", 0, "header is not a JSON object", NULL);
    expect_error("junk.safetensors", "{\"a\": ", 0, "header is not valid JSON", NULL);
}

static void st_rejects_unknown_dtype(void) {
    expect_error("dtype.safetensors", "{\"w\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                 "tensor 'w'", "unknown dtype 'F33'");
}

static void st_errors_stay_on_one_line(void) {
    /* a name with an escaped newline, and a JSON error whose token holds a raw newline */
    expect_error("nl.safetensors", "{\"a\\nb\":{\"dtype\":\"F33\",\"shape\":[2],\"data_offsets\":[0,8]}}", 8,
                 "tensor 'a?b'", "unknown dtype");
    expect_error("nl2.safetensors", "{\"a\n", 0, "header is not valid JSON", NULL);
}

static void st_rejects_negative_or_fractional_shape(void) {
    expect_error("neg.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,0]}}", 0,
                 "tensor 'w'", "shape[1] is not a non-negative integer");
    expect_error("frac.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4,
                 "tensor 'w'", "shape[0] is not a non-negative integer");
    expect_error("noshape.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":3,\"data_offsets\":[0,12]}}", 12,
                 "tensor 'w'", "'shape' is not a list");
}

static void st_rejects_more_than_max_dims(void) {
    expect_error("dims.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,1]}}",
                 1, "tensor 'w'", "shape has 9 dims (at most 8)");
}

static void st_rejects_shape_whose_size_overflows(void) {
    expect_error("huge.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4611686018427387904],"
                 "\"data_offsets\":[0,0]}}",
                 0, "tensor 'w'", "is too large");
    /* numel fits, numel * 4 bytes does not */
    expect_error("huge2.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[4611686018427387905],\"data_offsets\":[0,4]}}", 4, "tensor 'w'",
                 "is too large");
}

static void st_rejects_data_offsets_not_a_pair(void) {
    expect_error("pair.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", 8,
                 "tensor 'w'", "'data_offsets' is not [begin, end]");
    expect_error("pairneg.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", 8,
                 "tensor 'w'", "'data_offsets' is not [begin, end]");
    expect_error("nooff.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[1]}}", 8, "tensor 'w'",
                 "missing key 'data_offsets'");
}

static void st_rejects_begin_after_end(void) {
    expect_error("order.safetensors", "{\"w\":{\"dtype\":\"U8\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8,
                 "tensor 'w'", "data_offsets [8, 4] begin after end");
}

static void st_rejects_offsets_past_the_data(void) {
    expect_error("past.safetensors", "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[4,20]}}", 16,
                 "tensor 'w'", "data_offsets [4, 20] run past the data (16 bytes)");
}

static void st_rejects_size_not_matching_shape(void) {
    expect_error("model.safetensors",
                 "{\"pooler.dense.weight\":{\"dtype\":\"F32\",\"shape\":[128,128],\"data_offsets\":[0,100]}}", 100,
                 "model.safetensors: tensor 'pooler.dense.weight': data_offsets [0, 100] hold 100 bytes, shape "
                 "[128, 128] F32 needs 65536",
                 NULL);
}

static void st_rejects_overlapping_tensors(void) {
    expect_error("overlap.safetensors",
                 "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                 "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[24,32]},"
                 "\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                 32, "tensor 'c'", "overlap tensor 'a' [0, 16]");
    /* a tensor nested inside a longer one is caught even when a short one sits between them */
    expect_error("nested.safetensors",
                 "{\"a\":{\"dtype\":\"U8\",\"shape\":[32],\"data_offsets\":[0,32]},"
                 "\"b\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[2,4]},"
                 "\"c\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[20,22]}}",
                 32, "tensor 'b'", "overlap tensor 'a'");
}

static void st_rejects_duplicate_tensor_names(void) {
    expect_error("dup.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                 "\"w\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                 8, "tensor 'w'", "duplicate name");
    expect_error("dupkey.safetensors",
                 "{\"w\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "key 'dtype'",
                 "duplicate");
}

static void st_rejects_non_string_metadata(void) {
    expect_error("meta.safetensors", "{\"__metadata__\":{\"format\":\"pt\",\"step\":3}}", 0, "__metadata__ key 'step'",
                 "not a string");
    expect_error("meta2.safetensors", "{\"__metadata__\":[1]}", 0, "key '__metadata__'", "not a JSON object");
}

static void st_rejects_entry_that_is_not_an_object(void) {
    expect_error("entry.safetensors", "{\"w\":[1,2]}", 0, "tensor 'w'", "entry is not a JSON object");
    expect_error("nodtype.safetensors", "{\"w\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'w'",
                 "missing key 'dtype'");
}

static void st_accepts_empty_tensors_padding_and_holes(void) {
    char err[BS_ERRLEN] = "";
    /* an empty tensor at an offset inside another, trailing spaces in the header, unused bytes */
    const char *p = write_raw("ok.safetensors",
                              "{\"a\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]},"
                              "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[4,4]},"
                              "\"s\":{\"dtype\":\"I16\",\"shape\":[],\"data_offsets\":[10,12]}}    ",
                              16);
    st_file *f = st_open(p, err);
    CHECK(f != NULL);
    if (!f) {
        fprintf(stderr, "%s\n", err);
        return;
    }
    CHECK_INT(st_count(f), 3);
    const st_tensor *e = st_find(f, "e");
    CHECK_INT(e->numel, 0);
    CHECK_INT(e->nbytes, 0);
    const st_tensor *s = st_find(f, "s");
    CHECK_INT(s->ndim, 0);
    CHECK_INT(s->numel, 1); /* a scalar */
    CHECK_INT(((const uint8_t *)s->data)[0], 10);
    CHECK_INT(((const uint8_t *)st_find(f, "a")->data)[7], 7);
    st_close(f);
}

static void st_open_mem_names_the_buffer_in_errors(void) {
    char err[BS_ERRLEN] = "";
    const char buf[] = "\x02\0\0\0\0\0\0\0{}";
    st_file *f = st_open_mem(buf, 10, "heads-topic message", err);
    CHECK(f != NULL);
    if (f) CHECK_INT(st_count(f), 0);
    st_close(f);
    CHECK(st_open_mem(buf, 9, "heads-topic message", err) == NULL);
    CHECK_CONTAINS(err, "heads-topic message: header length 2 runs past the end");
}

/* Reference: the value of a half by its definition, built with ldexp. */
static float f16_reference(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 0x1f, m = h & 0x3ff;
    double v;
    if (e == 0)
        v = ldexp(m, -24);
    else if (e == 31)
        v = m ? NAN : INFINITY;
    else
        v = ldexp(1024 + m, e - 25);
    return (float)(s ? -v : v);
}

static void st_f16_converts_all_65536_values_exactly(void) {
    static uint16_t h[65536];
    static float out[65536];
    for (int i = 0; i < 65536; i++) h[i] = (uint16_t)i;
    st_tensor t = {
        .name = "h", .dtype = ST_F16, .ndim = 1, .shape = {65536}, .numel = 65536, .data = h, .nbytes = sizeof h};
    char err[BS_ERRLEN];
    CHECK_INT(st_to_f32(&t, out, err), BS_OK);
    int bad = 0;
    for (int i = 0; i < 65536; i++) {
        float r = f16_reference((uint16_t)i);
        if (isnan(r)) {
            /* NaN: sign and payload carried into the top mantissa bits */
            uint32_t u = bits(out[i]);
            if (!isnan(out[i]) || (u >> 31) != (uint32_t)(i >> 15) || ((u >> 13) & 0x3ff) != (uint32_t)(i & 0x3ff))
                bad++;
        } else if (bits(out[i]) != bits(r)) {
            bad++;
        }
    }
    CHECK_INT(bad, 0);
    CHECK_INT(bits(out[0x0001]), bits(5.9604644775390625e-08f));  /* smallest subnormal 2^-24 */
    CHECK_INT(bits(out[0x03ff]), bits(6.09755516052246094e-05f)); /* largest subnormal */
    CHECK_INT(bits(out[0x8000]), 0x80000000u);                    /* -0 */
    CHECK_INT(bits(out[0x7c00]), 0x7f800000u);                    /* +inf */
    CHECK_INT(bits(out[0xfc00]), 0xff800000u);                    /* -inf */
    CHECK_INT(bits(out[0x7bff]), bits(65504.0f));                 /* largest finite */
}

static void st_bf16_is_the_top_half_of_f32(void) {
    const uint16_t b[4] = {0x3f80, 0xc049, 0x7f80, 0x0001};
    float out[4];
    st_tensor t = {.name = "b", .dtype = ST_BF16, .ndim = 1, .shape = {4}, .numel = 4, .data = b, .nbytes = 8};
    char err[BS_ERRLEN];
    CHECK_INT(st_to_f32(&t, out, err), BS_OK);
    CHECK(out[0] == 1.0f);
    CHECK_INT(bits(out[1]), 0xc0490000u);
    CHECK(isinf(out[2]) && out[2] > 0);
    CHECK_INT(bits(out[3]), 0x00010000u);
}

static void st_write_sorts_by_name_aligns_and_round_trips(void) {
    char path[512], err[BS_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/w.safetensors", tmp);
    const float a[6] = {1, 2, 3, 4, 5, 6};
    const uint16_t h[3] = {0x3c00, 0xc000, 0x7bff};
    const int32_t ids[2] = {101, -7};
    st_out_tensor ts[3] = {
        {.name = "zeta", .dtype = ST_F32, .ndim = 2, .shape = {2, 3}, .data = a},
        {.name = "alpha", .dtype = ST_F16, .ndim = 1, .shape = {3}, .data = h},
        {.name = "mid", .dtype = ST_I32, .ndim = 1, .shape = {2}, .data = ids},
    };
    const char *meta[] = {"format", "pt", "by", "bertstream", NULL};
    CHECK_INT(st_write(path, ts, 3, meta, err), BS_OK);

    size_t len;
    char *raw = bs_read_file(path, &len, err);
    CHECK(raw != NULL);
    if (!raw) return;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | (uint8_t)raw[i];
    CHECK_INT(hl % 8, 0);
    CHECK_INT(len, 8 + hl + 6 + 24 + 8);
    CHECK(raw[8] == '{');
    CHECK(raw[8 + hl - 1] == ' ' || raw[8 + hl - 1] == '}');
    /* tensors laid out in name order: alpha (6 bytes), mid (8), zeta (24) */
    CHECK(strstr(raw + 8, "\"alpha\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[0,6]}") != NULL);
    CHECK(strstr(raw + 8, "\"mid\":{\"dtype\":\"I32\",\"shape\":[2],\"data_offsets\":[6,14]}") != NULL);
    CHECK(strstr(raw + 8, "\"zeta\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[14,38]}") != NULL);
    free(raw);

    st_file *f = st_open(path, err);
    CHECK(f != NULL);
    if (!f) return;
    CHECK_STR(st_metadata(f, "by"), "bertstream");
    CHECK_STR(st_metadata(f, "format"), "pt");
    float z[6], al[3];
    CHECK_INT(st_to_f32(st_find(f, "zeta"), z, err), BS_OK);
    CHECK(memcmp(z, a, sizeof a) == 0);
    CHECK_INT(st_to_f32(st_find(f, "alpha"), al, err), BS_OK);
    CHECK(al[0] == 1.0f && al[1] == -2.0f && al[2] == 65504.0f);
    CHECK(memcmp(st_find(f, "mid")->data, ids, 8) == 0);
    st_close(f);

    /* same input, same bytes */
    char path2[512];
    snprintf(path2, sizeof path2, "%s/w2.safetensors", tmp);
    CHECK_INT(st_write(path2, ts, 3, meta, err), BS_OK);
    size_t l1, l2;
    char *r1 = bs_read_file(path, &l1, err), *r2 = bs_read_file(path2, &l2, err);
    CHECK(r1 && r2 && l1 == l2 && memcmp(r1, r2, l1) == 0);
    free(r1);
    free(r2);
}

static void st_write_rejects_duplicate_names(void) {
    char path[512], err[BS_ERRLEN] = "";
    snprintf(path, sizeof path, "%s/dupw.safetensors", tmp);
    const float a[1] = {1};
    st_out_tensor ts[2] = {
        {.name = "x", .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = a},
        {.name = "x", .dtype = ST_F32, .ndim = 1, .shape = {1}, .data = a},
    };
    CHECK_INT(st_write(path, ts, 2, NULL, err), BS_ERR);
    CHECK_CONTAINS(err, "dupw.safetensors: tensor 'x': duplicate name");
    FILE *fp = fopen(path, "rb");
    CHECK(fp == NULL); /* nothing left behind */
    if (fp) fclose(fp);
}

static void st_expect_names_expected_and_actual_shape(void) {
    char err[BS_ERRLEN] = "";
    st_file *f = st_open(bs_test_data("golden/tiny-bert/head.safetensors"), err);
    CHECK(f != NULL);
    if (!f) return;
    int64_t good[2] = {64, 128}, bad[2] = {64, 768};
    CHECK(st_expect(f, "fc1.weight", 2, good, err) != NULL);
    CHECK(st_expect(f, "fc1.weight", 2, bad, err) == NULL);
    CHECK_CONTAINS(err, "head.safetensors: tensor 'fc1.weight': shape [64, 128], expected [64, 768]");
    CHECK(st_expect(f, "fc9.weight", 2, good, err) == NULL);
    CHECK_CONTAINS(err, "head.safetensors: tensor 'fc9.weight' is missing");
    st_close(f);
}

static void st_open_reports_missing_file(void) {
    char err[BS_ERRLEN] = "";
    CHECK(st_open("/nonexistent/dir/x.safetensors", err) == NULL);
    CHECK_CONTAINS(err, "/nonexistent/dir/x.safetensors: No such file or directory");
    CHECK(st_open(tmp, err) == NULL);
    CHECK_CONTAINS(err, "not a regular file");
}

int main(void) {
    snprintf(tmp, sizeof tmp, "%s", bs_test_tmpdir());
    RUN(st_reads_golden_head_file);
    RUN(st_reads_golden_shard_metadata_and_offsets);
    RUN(st_to_f32_refuses_integer_tensors);
    RUN(st_rejects_file_shorter_than_8_bytes);
    RUN(st_rejects_header_length_past_end);
    RUN(st_rejects_header_that_is_not_a_json_object);
    RUN(st_rejects_unknown_dtype);
    RUN(st_errors_stay_on_one_line);
    RUN(st_rejects_negative_or_fractional_shape);
    RUN(st_rejects_more_than_max_dims);
    RUN(st_rejects_shape_whose_size_overflows);
    RUN(st_rejects_data_offsets_not_a_pair);
    RUN(st_rejects_begin_after_end);
    RUN(st_rejects_offsets_past_the_data);
    RUN(st_rejects_size_not_matching_shape);
    RUN(st_rejects_overlapping_tensors);
    RUN(st_rejects_duplicate_tensor_names);
    RUN(st_rejects_non_string_metadata);
    RUN(st_rejects_entry_that_is_not_an_object);
    RUN(st_accepts_empty_tensors_padding_and_holes);
    RUN(st_open_mem_names_the_buffer_in_errors);
    RUN(st_f16_converts_all_65536_values_exactly);
    RUN(st_bf16_is_the_top_half_of_f32);
    RUN(st_write_sorts_by_name_aligns_and_round_trips);
    RUN(st_write_rejects_duplicate_names);
    RUN(st_expect_names_expected_and_actual_shape);
    RUN(st_open_reports_missing_file);
    bs_test_rmtree(tmp);
    return bs_test_done();
}
