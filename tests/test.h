/* A small test harness: each tests/unit/test_*.c is one executable whose main() runs
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
 * TEST functions with RUN(). Checks print file:line and the values, then count a failure.
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
 * Reference data comes from $BERTSTREAM_DATA (../shared/data); when it is absent the
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
 * test skips (exit 77), except under CI=true where a missing file is a failure. */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#ifndef BS_TEST_H
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#define BS_TEST_H
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include <ftw.h>
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include <math.h>
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include <stdint.h>
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include <stdio.h>
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include <stdlib.h>
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include <string.h>
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include <sys/stat.h>
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include "common.h"
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#include "safetensors.h"
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static int bs_test_failures = 0;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static int bs_test_checks = 0;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static const char *bs_test_current = "";
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#define CHECK(cond)                                                                         \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    do {                                                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        bs_test_checks++;                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (!(cond)) {                                                                      \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            fprintf(stderr, "%s:%d: %s: CHECK(%s) failed\n", __FILE__, __LINE__,            \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
                    bs_test_current, #cond);                                                \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            bs_test_failures++;                                                             \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        }                                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    } while (0)
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#define CHECK_INT(a, b)                                                                     \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    do {                                                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        long long _a = (long long)(a), _b = (long long)(b);                                 \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        bs_test_checks++;                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (_a != _b) {                                                                     \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            fprintf(stderr, "%s:%d: %s: %s == %lld, expected %lld\n", __FILE__, __LINE__,   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
                    bs_test_current, #a, _a, _b);                                           \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            bs_test_failures++;                                                             \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        }                                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    } while (0)
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#define CHECK_STR(a, b)                                                                     \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    do {                                                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        const char *_a = (a), *_b = (b);                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        bs_test_checks++;                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (!_a || !_b || strcmp(_a, _b) != 0) {                                            \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            fprintf(stderr, "%s:%d: %s: %s == \"%s\", expected \"%s\"\n", __FILE__,         \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
                    __LINE__, bs_test_current, #a, _a ? _a : "(null)", _b ? _b : "(null)"); \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            bs_test_failures++;                                                             \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        }                                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    } while (0)
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
/* |a - b| <= tol */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#define CHECK_NEAR(a, b, tol)                                                               \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    do {                                                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        double _a = (double)(a), _b = (double)(b);                                          \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        bs_test_checks++;                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (!(fabs(_a - _b) <= (tol))) {                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            fprintf(stderr, "%s:%d: %s: %s == %.9g, expected %.9g (tol %g)\n", __FILE__,    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
                    __LINE__, bs_test_current, #a, _a, _b, (double)(tol));                  \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            bs_test_failures++;                                                             \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        }                                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    } while (0)
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
/* err buffer must contain the substring */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#define CHECK_CONTAINS(s, sub)                                                              \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    do {                                                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        const char *_s = (s);                                                               \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        bs_test_checks++;                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (!_s || !strstr(_s, (sub))) {                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            fprintf(stderr, "%s:%d: %s: \"%s\" does not contain \"%s\"\n", __FILE__,        \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
                    __LINE__, bs_test_current, _s ? _s : "(null)", (sub));                  \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            bs_test_failures++;                                                             \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        }                                                                                   \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    } while (0)
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#define RUN(fn)                                                                             \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    do {                                                                                    \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        int _before = bs_test_failures;                                                     \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        bs_test_current = #fn;                                                              \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        fn();                                                                               \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        fprintf(stderr, "%s %s\n", bs_test_failures == _before ? "ok  " : "FAIL", #fn);     \
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    } while (0)
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline int bs_test_done(void) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    fprintf(stderr, "%d checks, %d failed\n", bs_test_checks, bs_test_failures);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    return bs_test_failures ? 1 : 0;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline int bs_test_in_ci(void) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    const char *ci = getenv("CI");
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    return ci && (strcmp(ci, "true") == 0 || strcmp(ci, "1") == 0);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
/* Path of a file under the reference data dir. Missing: skip the whole test (77), or fail in CI. */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline const char *bs_test_data(const char *rel) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    static char paths[8][1024];
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    static int next = 0;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    const char *root = getenv("BERTSTREAM_DATA");
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    if (!root || !*root) root = BS_SOURCE_DIR "/../shared/data";
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    char *p = paths[next++ % 8];
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    snprintf(p, 1024, "%s/%s", root, rel);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    struct stat st;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    if (stat(p, &st) != 0) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (bs_test_in_ci()) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            fprintf(stderr, "FAIL: reference file %s is missing (CI=true: a missing file is a failure)\n", p);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
            exit(1);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        }
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        fprintf(stderr, "SKIP: reference file %s is missing (clone ../shared/data beside the repo)\n", p);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        exit(77);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    }
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    return p;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
/* A fresh temporary directory (mkdtemp). */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline const char *bs_test_tmpdir(void) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    static char dir[256];
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    snprintf(dir, sizeof dir, "/tmp/bertstream-test-XXXXXX");
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    if (!mkdtemp(dir)) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        perror("mkdtemp");
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        exit(1);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    }
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    return dir;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline int bs_test_rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    (void)sb;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    (void)flag;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    (void)ftw;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    return remove(path);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
/* rm -rf dir (a bs_test_tmpdir at the end of a test). */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline void bs_test_rmtree(const char *dir) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    nftw(dir, bs_test_rm_entry, 16, FTW_DEPTH | FTW_PHYS);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
/* Reference tensor `name` of f as F32 in a malloc'd buffer (caller frees). A missing tensor, one
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
 * of another size than expect_numel (when >= 0) or one that does not convert ends the test
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
 * (exit 1): the reference data is broken. */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline float *bs_test_f32(const st_file *f, const char *name, int64_t expect_numel) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    const st_tensor *t = st_find(f, name);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    if (!t || (expect_numel >= 0 && t->numel != expect_numel)) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        fprintf(stderr, "golden tensor %s missing or of the wrong size\n", name);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        exit(1);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    }
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    float *d = malloc(sizeof(float) * (size_t)t->numel);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    char err[BS_ERRLEN];
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    if (!d || st_to_f32(t, d, err) != BS_OK) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        fprintf(stderr, "%s\n", d ? err : "out of memory");
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        exit(1);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    }
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    return d;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
a[i] - b[i]|a[i] - b[i]|; a NaN difference replaces the running maximum (it is not skipped). */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
static inline double bs_test_max_abs_diff(const float *a, const float *b, size_t n) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    double m = 0;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    for (size_t i = 0; i < n; i++) {
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        double d = fabs((double)a[i] - (double)b[i]);
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (isnan(d)) return d; /* a NaN anywhere fails every tolerance check */
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
        if (d > m) m = d;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    }
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
    return m;
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
}
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|

NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
#endif
NaN difference replaces the running maximum (it is not skipped). */|/* max |a[i] - b[i]|, or NaN as soon as any difference is NaN. */|
