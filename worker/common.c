/* Implementation of the shared helpers declared in common.h. */
#define _POSIX_C_SOURCE 200809L
#include "common.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

static void verr(char *err, const char *fmt, va_list ap) {
    if (err) vsnprintf(err, BS_ERRLEN, fmt, ap);
}

int bs_err(char *err, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    verr(err, fmt, ap);
    va_end(ap);
    return BS_ERR;
}

int bs_err_code(const char **code_out, const char *code, char *err, const char *fmt, ...) {
    if (code_out) *code_out = code;
    va_list ap;
    va_start(ap, fmt);
    verr(err, fmt, ap);
    va_end(ap);
    return BS_ERR;
}

char *bs_read_file(const char *path, size_t *len, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        bs_err(err, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 1 >= cap) {
            size_t ncap = cap ? cap * 2 : 65536;
            char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                fclose(f);
                bs_err(err, "%s: out of memory", path);
                return NULL;
            }
            buf = nb;
            cap = ncap;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, f);
        n += r;
        if (r == 0) break;
    }
    if (ferror(f)) {
        free(buf);
        fclose(f);
        bs_err(err, "%s: read error", path);
        return NULL;
    }
    fclose(f);
    buf[n] = '\0';
    if (len) *len = n;
    return buf;
}

int bs_mkdir_p(const char *path, char *err) {
    char p[4096];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return bs_err(err, "%s: path too long", path);
    for (char *s = p + 1; *s; s++) {
        if (*s != '/') continue;
        *s = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST) return bs_err(err, "%s: %s", p, strerror(errno));
        *s = '/';
    }
    if (mkdir(p, 0755) != 0 && errno != EEXIST) return bs_err(err, "%s: %s", p, strerror(errno));
    struct stat sb;
    if (stat(p, &sb) != 0 || !S_ISDIR(sb.st_mode)) return bs_err(err, "%s: not a directory", p);
    return BS_OK;
}

double bs_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int64_t bs_wall_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double bs_rng_normal(bs_rng *r) {
    double u1 = bs_rng_uniform(r), u2 = bs_rng_uniform(r);
    if (u1 < 1e-300) u1 = 1e-300;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}
