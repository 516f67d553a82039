/* A small test harness: each tests/unit/test_*.c is one executable whose main() runs
 * TEST functions with RUN(). Checks print file:line and the values, then count a failure.
 * Reference data comes from $BERTSTREAM_DATA (../shared/data); when it is absent the
 * test skips (exit 77), except under CI=true where a missing file is a failure. */
#ifndef BS_TEST_H
#define BS_TEST_H

#include <ftw.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"
#include "safetensors.h"

static int bs_test_failures = 0;
static int bs_test_checks = 0;
static const char *bs_test_current = "";

#define CHECK(cond)                                                                                                    \
    do {                                                                                                               \
        bs_test_checks++;                                                                                              \
        if (!(cond)) {                                                                                                 \
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__, bs_test_current, #cond);              \
            bs_test_failures++;                                                                                        \
        }                                                                                                              \
    } while (0)

#define CHECK_INT(a, b)                                                                                                \
    do {                                                                                                               \
        long long _a = (long long)(a), _b = (long long)(b);                                                            \
        bs_test_checks++;                                                                                              \
        if (_a != _b) {                                                                                                \
            fprintf(stderr, "%s:%d: %s: %s == %lld, expected %lld\n", __FILE__, __LINE__, bs_test_current, #a, _a,     \
                    _b);                                                                                               \
            bs_test_failures++;                                                                                        \
        }                                                                                                              \
    } while (0)

#define CHECK_STR(a, b)                                                                                                \
    do {                                                                                                               \
        const char *_a = (a), *_b = (b);                                                                               \
        bs_test_checks++;                                                                                              \
        if (!_a || !_b || strcmp(_a, _b) != 0) {                                                                       \
            fprintf(stderr, "%s:%d: %s: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, bs_test_current, #a,     \
                    _a ? _a : "(null)", _b ? _b : "(null)");                                                           \
            bs_test_failures++;                                                                                        \
        }                                                                                                              \
    } while (0)

/* |a - b| <= tol */
#define CHECK_NEAR(a, b, tol)                                                                                          \
    do {                                                                                                               \
        double _a = (double)(a), _b = (double)(b);                                                                     \
        bs_test_checks++;                                                                                              \
        if (!(fabs(_a - _b) <= (tol))) {                                                                               \
            fprintf(stderr, "%s:%d: %s: %s == %.9g, expected %.9g (tol %g)\n", __FILE__, __LINE__, bs_test_current,    \
                    #a, _a, _b, (double)(tol));                                                                        \
            bs_test_failures++;                                                                                        \
        }                                                                                                              \
    } while (0)

/* err buffer must contain the substring */
#define CHECK_CONTAINS(s, sub)                                                                                         \
    do {                                                                                                               \
        const char *_s = (s);                                                                                          \
        bs_test_checks++;                                                                                              \
        if (!_s || !strstr(_s, (sub))) {                                                                               \
            fprintf(stderr, "%s:%d: %s: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__, bs_test_current,        \
                    _s ? _s : "(null)", (sub));                                                                        \
            bs_test_failures++;                                                                                        \
        }                                                                                                              \
    } while (0)

/* 1 when the comma-separated list l names fn */
static inline int bs_test_listed(const char *l, const char *fn) {
    const size_t n = strlen(fn);
    for (const char *p = l ? strstr(l, fn) : NULL; p; p = strstr(p + 1, fn))
        if ((p == l || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return 1;
    return 0;
}

/* Why test function fn does not run here, or NULL: BS_TEST_SKIP names it (the GPU tests' copies on
 * the CPU emulator leave out what only a GPU can measure), or BS_TEST_ONLY is set and does not (a
 * developer running one test). Each skipped test is named in the log. */
static inline const char *bs_test_skip_reason(const char *fn) {
    const char *only = getenv("BS_TEST_ONLY");
    if (bs_test_listed(getenv("BS_TEST_SKIP"), fn)) return "BS_TEST_SKIP";
    if (only && *only && !bs_test_listed(only, fn)) return "BS_TEST_ONLY";
    return NULL;
}

#define RUN(fn)                                                                                                        \
    do {                                                                                                               \
        int _before = bs_test_failures;                                                                                \
        const char *_why = bs_test_skip_reason(#fn);                                                                   \
        bs_test_current = #fn;                                                                                         \
        if (_why) {                                                                                                    \
            fprintf(stderr, "skip %s (%s)\n", #fn, _why);                                                              \
            break;                                                                                                     \
        }                                                                                                              \
        fn();                                                                                                          \
        fprintf(stderr, "%s %s\n", bs_test_failures == _before ? "ok  " : "FAIL", #fn);                                \
    } while (0)

static inline int bs_test_done(void) {
    fprintf(stderr, "%d checks, %d failed\n", bs_test_checks, bs_test_failures);
    return bs_test_failures ? 1 : 0;
}

static inline int bs_test_in_ci(void) {
    const char *ci = getenv("CI");
    return ci && (strcmp(ci, "true") == 0 || strcmp(ci, "1") == 0);
}

/* Path of a file under the reference data dir. Missing: skip the whole test (77), or fail in CI. */
static inline const char *bs_test_data(const char *rel) {
    static char paths[8][1024];
    static int next = 0;
    const char *root = getenv("BERTSTREAM_DATA");
    if (!root || !*root) root = BS_SOURCE_DIR "/../shared/data";
    char *p = paths[next++ % 8];
    snprintf(p, 1024, "%s/%s", root, rel);
    struct stat st;
    if (stat(p, &st) != 0) {
        if (bs_test_in_ci()) {
            fprintf(stderr, "FAIL: reference file %s is missing (CI=true: a missing file is a failure)\n", p);
            exit(1);
        }
        fprintf(stderr, "SKIP: reference file %s is missing (clone ../shared/data beside the repo)\n", p);
        exit(77);
    }
    return p;
}

/* A fresh temporary directory (mkdtemp). */
static inline const char *bs_test_tmpdir(void) {
    static char dir[256];
    snprintf(dir, sizeof dir, "/tmp/bertstream-test-XXXXXX");
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(1);
    }
    return dir;
}

static inline int bs_test_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

/* rm -rf dir (a bs_test_tmpdir at the end of a test). */
static inline void bs_test_rmtree(const char *dir) {
    nftw(dir, bs_test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Reference tensor `name` of f as F32 in a malloc'd buffer (caller frees). A missing tensor, one
 * of another size than expect_numel (when >= 0) or one that does not convert ends the test
 * (exit 1): the reference data is broken. */
static inline float *bs_test_f32(const st_file *f, const char *name, int64_t expect_numel) {
    const st_tensor *t = st_find(f, name);
    if (!t || (expect_numel >= 0 && t->numel != expect_numel)) {
        fprintf(stderr, "golden tensor %s missing or of the wrong size\n", name);
        exit(1);
    }
    float *d =
        (float *)malloc(sizeof(float) * (size_t)t->numel); /* a cast: C++ includes this too (the emulation tests) */
    char err[BS_ERRLEN];
    if (!d || st_to_f32(t, d, err) != BS_OK) {
        fprintf(stderr, "%s\n", d ? err : "out of memory");
        exit(1);
    }
    return d;
}

/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */
static inline double bs_test_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (isnan(d)) return d; /* a NaN anywhere fails every tolerance check */
        if (d > m) m = d;
    }
    return m;
}

/* cos(a, b) over n floats in double; 1 when both are zero, 0 when one is. */
static inline double bs_test_cosine(const float *a, const float *b, int n) {
    double ab = 0, aa = 0, bb = 0;
    for (int i = 0; i < n; i++) ab += (double)a[i] * b[i], aa += (double)a[i] * a[i], bb += (double)b[i] * b[i];
    return aa > 0 && bb > 0 ? ab / sqrt(aa * bb) : (aa == bb ? 1.0 : 0.0);
}

/* The smallest cosine over the rows of two (rows, n) matrices (NaN anywhere: NaN). */
static inline double bs_test_min_row_cosine(const float *a, const float *b, int rows, int n) {
    double m = 1;
    for (int r = 0; r < rows; r++) {
        double c = bs_test_cosine(a + (size_t)r * n, b + (size_t)r * n, n);
        if (!(c >= m)) m = c;
    }
    return m;
}

#endif
