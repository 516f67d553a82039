/* Feature cache: hits across reopen, misses, changed text, another encoder or feature, a torn last
 * record, duplicate keys (last wins), header mismatches and the exclusive lock. */
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "featcache.h"
#include "test.h"

#define C 5

static void fill(float *f, float base) {
    for (int c = 0; c < C; c++) f[c] = base + 0.25f * (float)c;
}

static void key_of(bs_featcache *fc, const char *id, const char *text, uint8_t *key) {
    featcache_key(fc, id, strlen(id), text, strlen(text), key);
}

static void featcache_hits_after_reopen_and_misses_unknown_reviews(void) {
    char err[BS_ERRLEN];
    const char *dir = bs_test_tmpdir();
    char sub[512];
    snprintf(sub, sizeof sub, "%s/a/b", dir); /* created on demand */
    bs_featcache *fc = featcache_open(sub, "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    uint8_t k1[32], k2[32], k3[32];
    float f[C], g[C];
    key_of(fc, "r1", "great movie", k1);
    key_of(fc, "r2", "awful movie", k2);
    key_of(fc, "r3", "unseen", k3);
    CHECK_INT(featcache_get(fc, k1, g, err), 0);
    fill(f, 1.0f);
    CHECK_INT(featcache_put(fc, k1, f, err), BS_OK);
    fill(f, -3.0f);
    CHECK_INT(featcache_put(fc, k2, f, err), BS_OK);
    /* readable at once, in the same session */
    CHECK_INT(featcache_get(fc, k1, g, err), 1);
    CHECK(g[0] == 1.0f && g[4] == 2.0f);
    CHECK_INT(featcache_sync(fc, err), BS_OK);
    CHECK_INT(featcache_count(fc), 2);
    featcache_close(fc);

    fc = featcache_open(sub, "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    CHECK_INT(featcache_loaded(fc), 2);
    CHECK_INT(featcache_torn_bytes(fc), 0);
    CHECK_INT(featcache_get(fc, k2, g, err), 1);
    CHECK(g[0] == -3.0f && g[1] == -2.75f && g[4] == -2.0f);
    CHECK_INT(featcache_get(fc, k3, g, err), 0);
    /* the file is exactly header + 2 records of 32 + 4 C bytes */
    struct stat st;
    CHECK_INT(stat(featcache_path(fc), &st), 0);
    CHECK_INT(st.st_size, 128 + 2 * (32 + 4 * C));
    featcache_close(fc);
}

static void featcache_misses_when_the_text_or_id_changes(void) {
    char err[BS_ERRLEN];
    bs_featcache *fc = featcache_open(bs_test_tmpdir(), "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    uint8_t k[32], k_text[32], k_id[32], k_split[32];
    float f[C], g[C];
    key_of(fc, "r1", "great movie", k);
    key_of(fc, "r1", "great movie!", k_text);
    key_of(fc, "r2", "great movie", k_id);
    /* the review id's length is part of the key: "r1"+"x..." can never pose as "r1x"+"..." */
    key_of(fc, "r1g", "reat movie", k_split);
    fill(f, 7.0f);
    CHECK_INT(featcache_put(fc, k, f, err), BS_OK);
    CHECK_INT(featcache_get(fc, k, g, err), 1);
    CHECK_INT(featcache_get(fc, k_text, g, err), 0);
    CHECK_INT(featcache_get(fc, k_id, g, err), 0);
    CHECK_INT(featcache_get(fc, k_split, g, err), 0);
    /* same inputs, same key */
    uint8_t again[32];
    key_of(fc, "r1", "great movie", again);
    CHECK(memcmp(k, again, 32) == 0);
    featcache_close(fc);
}

static void featcache_keeps_encoders_and_features_apart(void) {
    char err[BS_ERRLEN];
    const char *dir = bs_test_tmpdir();
    bs_featcache *a = featcache_open(dir, "sha256:enc1", "pooler", C, err);
    CHECK(a != NULL);
    if (!a) return;
    uint8_t ka[32], kb[32], kc[32];
    float f[C], g[C];
    key_of(a, "r1", "text", ka);
    fill(f, 1.0f);
    CHECK_INT(featcache_put(a, ka, f, err), BS_OK);
    featcache_close(a);

    bs_featcache *b = featcache_open(dir, "sha256:enc2", "pooler", C, err);
    CHECK(b != NULL);
    if (!b) return;
    key_of(b, "r1", "text", kb);
    CHECK(memcmp(ka, kb, 32) != 0);
    CHECK_INT(featcache_loaded(b), 0); /* its own file */
    CHECK_INT(featcache_get(b, kb, g, err), 0);
    CHECK_INT(featcache_get(b, ka, g, err), 0);
    featcache_close(b);

    bs_featcache *c = featcache_open(dir, "sha256:enc1", "mean", C, err);
    CHECK(c != NULL);
    if (!c) return;
    key_of(c, "r1", "text", kc);
    CHECK(memcmp(ka, kc, 32) != 0);
    CHECK_INT(featcache_get(c, kc, g, err), 0);
    featcache_close(c);

    /* the first cache still holds its record */
    a = featcache_open(dir, "sha256:enc1", "pooler", C, err);
    CHECK(a != NULL);
    if (!a) return;
    CHECK_INT(featcache_get(a, ka, g, err), 1);
    CHECK(g[0] == 1.0f);
    featcache_close(a);
}

static void featcache_cuts_a_torn_last_record(void) {
    char err[BS_ERRLEN], path[4096];
    const char *dir = bs_test_tmpdir();
    bs_featcache *fc = featcache_open(dir, "sha256:enc1", "cls", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    uint8_t k1[32], k2[32], k3[32];
    float f[C], g[C];
    key_of(fc, "r1", "one", k1);
    key_of(fc, "r2", "two", k2);
    key_of(fc, "r3", "three", k3);
    fill(f, 1.0f);
    CHECK_INT(featcache_put(fc, k1, f, err), BS_OK);
    fill(f, 2.0f);
    CHECK_INT(featcache_put(fc, k2, f, err), BS_OK);
    snprintf(path, sizeof path, "%s", featcache_path(fc));
    featcache_close(fc);
    /* a crash in the middle of appending the second record */
    off_t full = 128 + 2 * (32 + 4 * C);
    CHECK_INT(truncate(path, full - 7), 0);

    fc = featcache_open(dir, "sha256:enc1", "cls", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    CHECK_INT(featcache_loaded(fc), 1);
    CHECK_INT(featcache_torn_bytes(fc), 32 + 4 * C - 7);
    CHECK_INT(featcache_get(fc, k1, g, err), 1);
    CHECK(g[0] == 1.0f);
    CHECK_INT(featcache_get(fc, k2, g, err), 0);
    /* appends after the cut stay aligned */
    fill(f, 3.0f);
    CHECK_INT(featcache_put(fc, k3, f, err), BS_OK);
    featcache_close(fc);
    fc = featcache_open(dir, "sha256:enc1", "cls", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    CHECK_INT(featcache_loaded(fc), 2);
    CHECK_INT(featcache_torn_bytes(fc), 0);
    CHECK_INT(featcache_get(fc, k3, g, err), 1);
    CHECK(g[0] == 3.0f && g[4] == 4.0f);
    featcache_close(fc);
}

static void featcache_last_write_of_a_key_wins(void) {
    char err[BS_ERRLEN];
    const char *dir = bs_test_tmpdir();
    bs_featcache *fc = featcache_open(dir, "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    uint8_t k[32];
    float f[C], g[C];
    key_of(fc, "r1", "same", k);
    fill(f, 1.0f);
    CHECK_INT(featcache_put(fc, k, f, err), BS_OK);
    fill(f, 5.0f);
    CHECK_INT(featcache_put(fc, k, f, err), BS_OK);
    CHECK_INT(featcache_count(fc), 1);
    CHECK_INT(featcache_get(fc, k, g, err), 1);
    CHECK(g[0] == 5.0f);
    featcache_close(fc);
    fc = featcache_open(dir, "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    CHECK_INT(featcache_loaded(fc), 2);
    CHECK_INT(featcache_count(fc), 1);
    CHECK_INT(featcache_get(fc, k, g, err), 1);
    CHECK(g[0] == 5.0f);
    featcache_close(fc);
}

static void featcache_index_grows_past_its_first_table(void) {
    char err[BS_ERRLEN];
    const char *dir = bs_test_tmpdir();
    bs_featcache *fc = featcache_open(dir, "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    float f[C], g[C];
    char id[32];
    uint8_t k[32];
    for (int i = 0; i < 3000; i++) {
        snprintf(id, sizeof id, "review-%d", i);
        key_of(fc, id, "text", k);
        fill(f, (float)i);
        if (featcache_put(fc, k, f, err) != BS_OK) {
            CHECK(!"put failed");
            break;
        }
    }
    featcache_close(fc);
    fc = featcache_open(dir, "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    CHECK_INT(featcache_count(fc), 3000);
    int bad = 0;
    for (int i = 0; i < 3000; i++) {
        snprintf(id, sizeof id, "review-%d", i);
        key_of(fc, id, "text", k);
        if (featcache_get(fc, k, g, err) != 1 || g[0] != (float)i) bad++;
    }
    CHECK_INT(bad, 0);
    featcache_close(fc);
}

static void featcache_refuses_a_foreign_header_and_a_second_opener(void) {
    char err[BS_ERRLEN], path[4096];
    const char *dir = bs_test_tmpdir();
    bs_featcache *fc = featcache_open(dir, "sha256:enc1", "pooler", C, err);
    CHECK(fc != NULL);
    if (!fc) return;
    snprintf(path, sizeof path, "%s", featcache_path(fc));
    /* locked while open */
    CHECK(featcache_open(dir, "sha256:enc1", "pooler", C, err) == NULL);
    CHECK_CONTAINS(err, "in use");
    featcache_close(fc);
    /* same file name, other dimension */
    CHECK(featcache_open(dir, "sha256:enc1", "pooler", C + 1, err) == NULL);
    CHECK_CONTAINS(err, path);
    /* not a cache file */
    int fd = open(path, O_WRONLY);
    CHECK(fd >= 0);
    CHECK_INT(pwrite(fd, "XXXXXXXX", 8, 0), 8);
    close(fd);
    CHECK(featcache_open(dir, "sha256:enc1", "pooler", C, err) == NULL);
    CHECK_CONTAINS(err, "bad magic");
}

int main(void) {
    RUN(featcache_hits_after_reopen_and_misses_unknown_reviews);
    RUN(featcache_misses_when_the_text_or_id_changes);
    RUN(featcache_keeps_encoders_and_features_apart);
    RUN(featcache_cuts_a_torn_last_record);
    RUN(featcache_last_write_of_a_key_wins);
    RUN(featcache_index_grows_past_its_first_table);
    RUN(featcache_refuses_a_foreign_header_and_a_second_opener);
    return bs_test_done();
}
