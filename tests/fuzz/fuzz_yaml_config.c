/* libFuzzer target for the configuration loader: any bytes as a YAML file, as one -o override and as one
 * BERTSTREAM_ variable. Whatever loads must dump to YAML that loads back and dumps identically. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"

static char *dump(const bs_config *c, size_t *len) {
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    if (!f) abort();
    config_dump(c, f);
    fclose(f);
    return buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[BS_ERRLEN];
    bs_config *c = config_new_defaults();
    if (!c) return 0;
    if (config_load_string(c, (const char *)data, size, "fuzz.yaml", err) == BS_OK) {
        config_validate(c, err);
        size_t n1, n2;
        char *d1 = dump(c, &n1);
        bs_config *back = config_new_defaults();
        if (config_load_string(back, d1, n1, "dump.yaml", err) != BS_OK) {
            fprintf(stderr, "dump did not load back: %s\n%s", err, d1);
            abort();
        }
        char *d2 = dump(back, &n2);
        if (n1 != n2 || memcmp(d1, d2, n1) != 0) {
            fprintf(stderr, "dump changed on reload:\n%s\n---\n%s", d1, d2);
            abort();
        }
        free(d1);
        free(d2);
        config_free(back);
    } else if (!memchr(err, '\0', BS_ERRLEN)) {
        abort(); /* the message must be a terminated line */
    }
    config_free(c);

    /* The same bytes as `-o ...` and as a BERTSTREAM_ variable (NUL-terminated copies). */
    if (size > 4096) return 0;
    char *arg = malloc(size + 16);
    if (!arg) return 0;
    memcpy(arg, data, size);
    arg[size] = '\0';
    c = config_new_defaults();
    config_set(c, arg, err);
    memcpy(arg, "BERTSTREAM_", 11);
    memcpy(arg + 11, data, size);
    arg[size + 11] = '\0';
    char *envp[] = {arg, NULL};
    config_apply_env(c, envp, err);
    config_free(c);
    free(arg);
    return 0;
}
