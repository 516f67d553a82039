/* libFuzzer target: st_open_mem on arbitrary bytes. Whatever it accepts must be safe to use:
 * every tensor's bytes are read and float tensors converted into a bounded buffer. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "safetensors.h"

#define MAX_FLOATS (1 << 16)

static float out[MAX_FLOATS];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char err[BS_ERRLEN];
    st_file *f = st_open_mem(data, size, "fuzz.safetensors", err);
    if (!f) {
        /* errors are one line */
        if (strchr(err, '\n')) __builtin_trap();
        return 0;
    }
    volatile uint8_t sink = 0;
    for (int i = 0; i < st_count(f); i++) {
        const st_tensor *t = st_at(f, i);
        if (st_find(f, t->name) != t) __builtin_trap();
        const uint8_t *p = t->data;
        if (p < data || p + t->nbytes > data + size) __builtin_trap();
        for (size_t k = 0; k < t->nbytes; k++) sink ^= p[k]; /* ASan checks each byte is in the input */
        if ((size_t)t->numel * st_dtype_size(t->dtype) != t->nbytes) __builtin_trap();
        if (t->numel <= MAX_FLOATS) {
            int rc = st_to_f32(t, out, err);
            int is_float = t->dtype == ST_F32 || t->dtype == ST_F16 || t->dtype == ST_BF16;
            if ((rc == BS_OK) != is_float) __builtin_trap();
            int64_t shape[ST_MAX_DIMS];
            memcpy(shape, t->shape, sizeof shape);
            if (is_float && !st_expect(f, t->name, t->ndim, shape, err)) __builtin_trap();
        }
    }
    (void)st_metadata(f, "format");
    (void)sink;
    st_close(f);
    return 0;
}
