/* safetensors reader and writer. The reader maps the file read-only, parses the
 * JSON header with bounds checks (header length, offsets, shapes, dtype sizes,
 * overlaps) and hands out tensors without copying; st_to_f32 converts F32/F16/BF16. */
#ifndef BS_SAFETENSORS_H
#define BS_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_DIMS 8

typedef enum {
    ST_F64,
    ST_F32,
    ST_F16,
    ST_BF16,
    ST_I64,
    ST_I32,
    ST_I16,
    ST_I8,
    ST_U8,
    ST_BOOL,
    ST_F8_E4M3,
    ST_F8_E5M2,
    ST_U16,
    ST_U32,
    ST_U64
} st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    int64_t numel;
    const void *data; /* into the mapping; valid until st_close */
    size_t nbytes;
} st_tensor;

typedef struct st_file st_file;

/* Opens and validates a file. Errors name the file and the tensor or key. */
st_file *st_open(const char *path, char *err);
/* Parses a buffer already in memory (not copied: it must outlive the st_file). `name` is used in errors. */
st_file *st_open_mem(const void *buf, size_t len, const char *name, char *err);
void st_close(st_file *f);

int st_count(const st_file *f);
const st_tensor *st_at(const st_file *f, int i);
const st_tensor *st_find(const st_file *f, const char *name); /* NULL when absent */
const char *st_path(const st_file *f);
/* A value from "__metadata__" (string values only), or NULL. */
const char *st_metadata(const st_file *f, const char *key);

size_t st_dtype_size(st_dtype d);
const char *st_dtype_name(st_dtype d);

/* Converts F32/F16/BF16 (any layout is row-major already) into dst[numel]. BS_ERR for other dtypes. */
int st_to_f32(const st_tensor *t, float *dst, char *err);

/* Finds `name` and checks it is a float tensor with exactly the given shape (ndim dims). */
const st_tensor *st_expect(const st_file *f, const char *name, int ndim, const int64_t *shape, char *err);

/* Writer: one call writes a whole file (header sorted by name, 8-byte aligned). */
typedef struct {
    const char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[ST_MAX_DIMS];
    const void *data;
} st_out_tensor;

/* metadata: NULL or NULL-terminated key/value string pairs. */
int st_write(const char *path, const st_out_tensor *ts, int n, const char *const *metadata, char *err);

#endif
