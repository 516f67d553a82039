/* Command-line helpers (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>

#include "common.h"

int cli_int(const char *flag, const char *s, long long min, long long max, long long *out, char *err) {
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (!*s || *end || errno || v < min || v > max)
        return bs_err(err, "%s: expected an integer in %lld..%lld, got '%s'", flag, min, max, s);
    *out = v;
    return BS_OK;
}

int cli_double(const char *flag, const char *s, double min, double max, double *out, char *err) {
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (!*s || *end || errno || !isfinite(v) || v < min || v > max)
        return bs_err(err, "%s: expected a number in %g..%g, got '%s'", flag, min, max, s);
    *out = v;
    return BS_OK;
}

const char *cli_value(int argc, char **argv, int *i, char *err) {
    if (*i + 1 >= argc) {
        bs_err(err, "%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}
