/* safetensors reader and writer (https://github.com/huggingface/safetensors): u64 little-endian
 * header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, "__metadata__": {...}},
 * then the data. Every length and offset in the header is untrusted and checked before use. */
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

/* The reference implementation refuses headers over 100 MB; so do we (a header is names and numbers). */
#define ST_MAX_HEADER (100u * 1000u * 1000u)

struct st_file {
    char *path; /* name used in errors */
    void *map;  /* mmap'd file, or NULL for st_open_mem */
    size_t map_len;
    int n;
    st_tensor *t; /* [n], sorted by name */
    int n_meta;
    char **meta; /* [2 * n_meta] key, value */
};

static const struct {
    const char *name;
    size_t size;
} dtypes[] = {
    [ST_F64] = {"F64", 8}, [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},         [ST_BF16] = {"BF16", 2},
    [ST_I64] = {"I64", 8}, [ST_I32] = {"I32", 4},   [ST_I16] = {"I16", 2},         [ST_I8] = {"I8", 1},
    [ST_U8] = {"U8", 1},   [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
    [ST_U16] = {"U16", 2}, [ST_U32] = {"U32", 4},   [ST_U64] = {"U64", 8},
};
#define ST_NDTYPES ((int)(sizeof dtypes / sizeof dtypes[0]))

size_t st_dtype_size(st_dtype d) {
    return (int)d >= 0 && (int)d < ST_NDTYPES ? dtypes[d].size : 0;
}
const char *st_dtype_name(st_dtype d) {
    return (int)d >= 0 && (int)d < ST_NDTYPES ? dtypes[d].name : "?";
}

static int dtype_parse(const char *s, st_dtype *out) {
    for (int i = 0; i < ST_NDTYPES; i++)
        if (strcmp(s, dtypes[i].name) == 0) {
            *out = (st_dtype)i;
            return 1;
        }
    return 0;
}

/* "[2, 3]" into buf; used by every shape message. */
static const char *shape_str(char *buf, size_t cap, int ndim, const int64_t *shape) {
    size_t n = 0;
    n += (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < ndim && n < cap; i++)
        n += (size_t)snprintf(buf + n, cap - n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (n < cap) snprintf(buf + n, cap - n, "]");
    return buf;
}

/* Names, keys and jansson's messages come from the file: keep the error one printable line. */
static void err_one_line(char *err) {
    for (char *c = err; c && *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}

static int cmp_tensor_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

typedef struct {
    size_t begin, end;
    int idx;
} span;

static int cmp_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* jansson reports a duplicate key by byte position only. Walk the header up to that point to
 * recover the key text and whether it was a top-level (tensor) key or one inside an entry. */
static void describe_duplicate(const char *hdr, size_t len, size_t pos, char *key, size_t keycap, int *depth_out) {
    int depth = 0, in_str = 0, esc = 0;
    size_t str_start = 0, last_start = 0, last_end = 0;
    if (pos > len) pos = len;
    for (size_t i = 0; i < pos; i++) {
        char c = hdr[i];
        if (in_str) {
            if (esc)
                esc = 0;
            else if (c == '\\')
                esc = 1;
            else if (c == '"') {
                in_str = 0;
                last_start = str_start;
                last_end = i;
            }
        } else if (c == '"') {
            in_str = 1;
            str_start = i + 1;
        } else if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            depth--;
        }
    }
    size_t n = last_end > last_start ? last_end - last_start : 0;
    if (n >= keycap) n = keycap - 1;
    memcpy(key, hdr + last_start, n);
    key[n] = '\0';
    *depth_out = depth;
}

/* Reads a non-negative JSON integer; 0 when the value is anything else. */
static int json_uint(const json_t *v, uint64_t *out) {
    if (!json_is_integer(v)) return 0;
    json_int_t x = json_integer_value(v);
    if (x < 0) return 0;
    *out = (uint64_t)x;
    return 1;
}

static int parse_tensor(st_file *f, const char *name, json_t *v, const uint8_t *data, size_t data_len, st_tensor *t,
                        char *err) {
    const char *p = f->path;
    if (!json_is_object(v)) return bs_err(err, "%s: tensor '%s': entry is not a JSON object", p, name);

    json_t *jd = json_object_get(v, "dtype");
    if (!jd) return bs_err(err, "%s: tensor '%s': missing key 'dtype'", p, name);
    if (!json_is_string(jd)) return bs_err(err, "%s: tensor '%s': 'dtype' is not a string", p, name);
    if (!dtype_parse(json_string_value(jd), &t->dtype))
        return bs_err(err, "%s: tensor '%s': unknown dtype '%.32s'", p, name, json_string_value(jd));

    json_t *js = json_object_get(v, "shape");
    if (!js) return bs_err(err, "%s: tensor '%s': missing key 'shape'", p, name);
    if (!json_is_array(js)) return bs_err(err, "%s: tensor '%s': 'shape' is not a list", p, name);
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS)
        return bs_err(err, "%s: tensor '%s': shape has %zu dims (at most %d)", p, name, nd, ST_MAX_DIMS);
    t->ndim = (int)nd;
    size_t numel = 1;
    int numel_ok = 1;
    for (size_t i = 0; i < nd; i++) {
        uint64_t d;
        if (!json_uint(json_array_get(js, i), &d) || d > (uint64_t)INT64_MAX)
            return bs_err(err, "%s: tensor '%s': shape[%zu] is not a non-negative integer", p, name, i);
        t->shape[i] = (int64_t)d;
        if (d > SIZE_MAX || !bs_mul_ok(numel, (size_t)d, &numel)) numel_ok = 0;
    }
    size_t need = 0;
    char sb[160];
    if (!numel_ok || !bs_mul_ok(numel, st_dtype_size(t->dtype), &need) || numel > (size_t)INT64_MAX)
        return bs_err(err, "%s: tensor '%s': shape %s %s is too large", p, name,
                      shape_str(sb, sizeof sb, t->ndim, t->shape), st_dtype_name(t->dtype));
    t->numel = (int64_t)numel;

    json_t *jo = json_object_get(v, "data_offsets");
    if (!jo) return bs_err(err, "%s: tensor '%s': missing key 'data_offsets'", p, name);
    uint64_t b, e;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_uint(json_array_get(jo, 0), &b) ||
        !json_uint(json_array_get(jo, 1), &e))
        return bs_err(err, "%s: tensor '%s': 'data_offsets' is not [begin, end] (non-negative integers)", p, name);
    if (b > e)
        return bs_err(err, "%s: tensor '%s': data_offsets [%llu, %llu] begin after end", p, name, (unsigned long long)b,
                      (unsigned long long)e);
    if (e > data_len)
        return bs_err(err, "%s: tensor '%s': data_offsets [%llu, %llu] run past the data (%zu bytes)", p, name,
                      (unsigned long long)b, (unsigned long long)e, data_len);
    if (e - b != need)
        return bs_err(err, "%s: tensor '%s': data_offsets [%llu, %llu] hold %llu bytes, shape %s %s needs %zu", p, name,
                      (unsigned long long)b, (unsigned long long)e, (unsigned long long)(e - b),
                      shape_str(sb, sizeof sb, t->ndim, t->shape), st_dtype_name(t->dtype), need);
    t->data = data + b;
    t->nbytes = need;
    return BS_OK;
}

static int parse_metadata(st_file *f, json_t *v, char *err) {
    if (!json_is_object(v)) return bs_err(err, "%s: key '__metadata__' is not a JSON object", f->path);
    size_t n = json_object_size(v);
    f->meta = calloc(2 * n + 1, sizeof *f->meta);
    if (!f->meta) return bs_err(err, "%s: out of memory", f->path);
    const char *k;
    json_t *val;
    json_object_foreach(v, k, val) {
        if (!json_is_string(val)) return bs_err(err, "%s: __metadata__ key '%s': value is not a string", f->path, k);
        f->meta[2 * f->n_meta] = strdup(k);
        f->meta[2 * f->n_meta + 1] = strdup(json_string_value(val));
        f->n_meta++;
        if (!f->meta[2 * f->n_meta - 2] || !f->meta[2 * f->n_meta - 1])
            return bs_err(err, "%s: out of memory", f->path);
    }
    return BS_OK;
}

/* Parses buf[len] into f (whose path is set). */
static int st_parse(st_file *f, const uint8_t *buf, size_t len, char *err) {
    const char *p = f->path;
    if (len < 8) return bs_err(err, "%s: file is %zu bytes, shorter than the 8-byte header length", p, len);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--) hl = (hl << 8) | buf[i];
    if (hl > len - 8)
        return bs_err(err, "%s: header length %llu runs past the end of the file (%zu bytes)", p,
                      (unsigned long long)hl, len);
    if (hl > ST_MAX_HEADER)
        return bs_err(err, "%s: header length %llu is over the %u-byte limit", p, (unsigned long long)hl,
                      ST_MAX_HEADER);
    const char *hdr = (const char *)buf + 8;
    const uint8_t *data = buf + 8 + hl;
    size_t data_len = len - 8 - (size_t)hl;

    json_error_t je;
    json_t *root = json_loadb(hdr, (size_t)hl, JSON_REJECT_DUPLICATES, &je);
    span *spans = NULL;
    int rc = BS_ERR;
    if (!root) {
        if (json_error_code(&je) == json_error_duplicate_key) {
            char key[128];
            int depth;
            describe_duplicate(hdr, (size_t)hl, (size_t)je.position, key, sizeof key, &depth);
            if (depth <= 1)
                bs_err(err, "%s: tensor '%s': duplicate name in header", p, key);
            else
                bs_err(err, "%s: key '%s': duplicate inside a header entry", p, key);
        } else {
            bs_err(err, "%s: header is not valid JSON: %s (byte %d)", p, je.text, je.position);
        }
        return BS_ERR;
    }
    if (!json_is_object(root)) {
        bs_err(err, "%s: header is not a JSON object", p);
        goto out;
    }

    size_t nkeys = json_object_size(root);
    f->t = calloc(nkeys ? nkeys : 1, sizeof *f->t);
    spans = calloc(nkeys ? nkeys : 1, sizeof *spans);
    if (!f->t || !spans) {
        bs_err(err, "%s: out of memory", p);
        goto out;
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) {
            if (parse_metadata(f, val, err) != BS_OK) goto out;
            continue;
        }
        st_tensor *t = &f->t[f->n];
        if (parse_tensor(f, key, val, data, data_len, t, err) != BS_OK) goto out;
        t->name = strdup(key);
        if (!t->name) {
            bs_err(err, "%s: out of memory", p);
            goto out;
        }
        f->n++;
    }

    /* Overlaps: sort by begin; an empty tensor occupies nothing and cannot overlap. */
    int ns = 0;
    for (int i = 0; i < f->n; i++) {
        if (f->t[i].nbytes == 0) continue;
        size_t b = (size_t)((const uint8_t *)f->t[i].data - data);
        spans[ns++] = (span){b, b + f->t[i].nbytes, i};
    }
    qsort(spans, (size_t)ns, sizeof *spans, cmp_span);
    int far = -1; /* span reaching furthest so far */
    for (int i = 0; i < ns; i++) {
        if (far >= 0 && spans[i].begin < spans[far].end) {
            bs_err(err, "%s: tensor '%s': data_offsets [%zu, %zu] overlap tensor '%s' [%zu, %zu]", p,
                   f->t[spans[i].idx].name, spans[i].begin, spans[i].end, f->t[spans[far].idx].name, spans[far].begin,
                   spans[far].end);
            goto out;
        }
        if (far < 0 || spans[i].end > spans[far].end) far = i;
    }
    qsort(f->t, (size_t)f->n, sizeof *f->t, cmp_tensor_name);
    rc = BS_OK;
out:
    free(spans);
    json_decref(root);
    return rc;
}

static st_file *st_alloc(const char *name, char *err) {
    st_file *f = calloc(1, sizeof *f);
    if (f) f->path = strdup(name ? name : "(memory)");
    if (!f || !f->path) {
        free(f);
        bs_err(err, "%s: out of memory", name ? name : "(memory)");
        return NULL;
    }
    return f;
}

st_file *st_open_mem(const void *buf, size_t len, const char *name, char *err) {
    st_file *f = st_alloc(name, err);
    if (!f) return NULL;
    if (st_parse(f, buf, len, err) != BS_OK) {
        err_one_line(err);
        st_close(f);
        return NULL;
    }
    return f;
}

st_file *st_open(const char *path, char *err) {
    st_file *f = st_alloc(path, err);
    if (!f) return NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat sb;
    if (fd < 0 || fstat(fd, &sb) != 0) {
        bs_err(err, "%s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(sb.st_mode)) {
        bs_err(err, "%s: not a regular file", path);
        goto fail;
    }
    size_t len = (size_t)sb.st_size;
    if (len >= 8) {
        void *m = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            bs_err(err, "%s: mmap: %s", path, strerror(errno));
            goto fail;
        }
        f->map = m;
        f->map_len = len;
    }
    close(fd);
    fd = -1;
    if (st_parse(f, f->map, len, err) != BS_OK) goto fail;
    return f;
fail:
    err_one_line(err);
    if (fd >= 0) close(fd);
    st_close(f);
    return NULL;
}

void st_close(st_file *f) {
    if (!f) return;
    for (int i = 0; i < f->n; i++) free(f->t[i].name);
    free(f->t);
    for (int i = 0; i < 2 * f->n_meta; i++) free(f->meta[i]);
    free(f->meta);
    if (f->map) munmap(f->map, f->map_len);
    free(f->path);
    free(f);
}

int st_count(const st_file *f) {
    return f->n;
}
const st_tensor *st_at(const st_file *f, int i) {
    return i >= 0 && i < f->n ? &f->t[i] : NULL;
}
const char *st_path(const st_file *f) {
    return f->path;
}

const st_tensor *st_find(const st_file *f, const char *name) {
    st_tensor key = {.name = (char *)name};
    return bsearch(&key, f->t, (size_t)f->n, sizeof *f->t, cmp_tensor_name);
}

const char *st_metadata(const st_file *f, const char *key) {
    for (int i = 0; i < f->n_meta; i++)
        if (strcmp(f->meta[2 * i], key) == 0) return f->meta[2 * i + 1];
    return NULL;
}

/* IEEE half -> single, exact for every input: subnormals are renormalised, inf and NaN
 * (payload and sign included) carried over. */
static inline uint32_t f16_bits_to_f32_bits(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
    if (exp == 0x1f) return sign | 0x7f800000u | (man << 13);
    if (exp != 0) return sign | ((exp + 112u) << 23) | (man << 13);
    if (man == 0) return sign;
    uint32_t e = 113; /* 2^-14 is the subnormal scale: shift the mantissa up to an implicit 1 */
    while (!(man & 0x400u)) {
        man <<= 1;
        e--;
    }
    return sign | (e << 23) | ((man & 0x3ffu) << 13);
}

int st_to_f32(const st_tensor *t, float *dst, char *err) {
    const uint8_t *s = t->data;
    size_t n = (size_t)t->numel;
    switch (t->dtype) {
    case ST_F32:
        if (n) memcpy(dst, s, n * 4);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        for (size_t i = 0; i < n; i++) {
            uint32_t u = (uint32_t)s[4 * i] | (uint32_t)s[4 * i + 1] << 8 | (uint32_t)s[4 * i + 2] << 16 |
                         (uint32_t)s[4 * i + 3] << 24;
            memcpy(&dst[i], &u, 4);
        }
#endif
        return BS_OK;
    case ST_F16:
        for (size_t i = 0; i < n; i++) {
            uint32_t u = f16_bits_to_f32_bits((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
            memcpy(&dst[i], &u, 4);
        }
        return BS_OK;
    case ST_BF16:
        for (size_t i = 0; i < n; i++) {
            uint32_t u = ((uint32_t)s[2 * i] | (uint32_t)s[2 * i + 1] << 8) << 16;
            memcpy(&dst[i], &u, 4);
        }
        return BS_OK;
    default:
        return bs_err(err, "tensor '%s': dtype %s cannot be converted to F32 (F32, F16 or BF16 only)",
                      t->name ? t->name : "?", st_dtype_name(t->dtype));
    }
}

const st_tensor *st_expect(const st_file *f, const char *name, int ndim, const int64_t *shape, char *err) {
    const st_tensor *t = st_find(f, name);
    if (!t) {
        bs_err(err, "%s: tensor '%s' is missing", f->path, name);
        return NULL;
    }
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16) {
        bs_err(err, "%s: tensor '%s': dtype %s, expected F32, F16 or BF16", f->path, name, st_dtype_name(t->dtype));
        return NULL;
    }
    int same = t->ndim == ndim;
    for (int i = 0; same && i < ndim; i++) same = t->shape[i] == shape[i];
    if (!same) {
        char a[160], b[160];
        bs_err(err, "%s: tensor '%s': shape %s, expected %s", f->path, name, shape_str(a, sizeof a, t->ndim, t->shape),
               shape_str(b, sizeof b, ndim, shape));
        return NULL;
    }
    return t;
}

/* ---- writer ---- */

static int cmp_out_index(const void *a, const void *b, void *ts) {
    const st_out_tensor *t = ts;
    return strcmp(t[*(const int *)a].name, t[*(const int *)b].name);
}

static int write_all(FILE *fp, const void *p, size_t n) {
    return n == 0 || fwrite(p, 1, n, fp) == n;
}

int st_write(const char *path, const st_out_tensor *ts, int n, const char *const *metadata, char *err) {
    int rc = BS_ERR;
    int *order = NULL;
    json_t *root = NULL;
    char *hdr = NULL;
    FILE *fp = NULL;
    char tmp[4096];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof tmp)
        return bs_err(err, "%s: path too long", path);

    order = malloc(sizeof *order * (size_t)(n > 0 ? n : 1));
    root = json_object();
    if (!order || !root) {
        bs_err(err, "%s: out of memory", path);
        goto out;
    }
    if (metadata && metadata[0]) {
        json_t *md = json_object();
        for (int i = 0; md && metadata[i] && metadata[i + 1]; i += 2)
            json_object_set_new(md, metadata[i], json_string(metadata[i + 1]));
        if (!md || json_object_set_new(root, "__metadata__", md) != 0) {
            bs_err(err, "%s: out of memory", path);
            goto out;
        }
    }
    for (int i = 0; i < n; i++) order[i] = i;
    qsort_r(order, (size_t)n, sizeof *order, cmp_out_index, (void *)ts);

    size_t off = 0;
    for (int k = 0; k < n; k++) {
        const st_out_tensor *t = &ts[order[k]];
        if (k > 0 && strcmp(t->name, ts[order[k - 1]].name) == 0) {
            bs_err(err, "%s: tensor '%s': duplicate name", path, t->name);
            goto out;
        }
        if (strcmp(t->name, "__metadata__") == 0 || st_dtype_size(t->dtype) == 0 || t->ndim < 0 ||
            t->ndim > ST_MAX_DIMS) {
            bs_err(err, "%s: tensor '%s': invalid name, dtype or rank", path, t->name);
            goto out;
        }
        size_t numel = 1, nb;
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) {
            if (t->shape[d] < 0 || !bs_mul_ok(numel, (size_t)t->shape[d], &numel)) numel = SIZE_MAX;
            json_array_append_new(shape, json_integer(t->shape[d]));
        }
        if (numel == SIZE_MAX || !bs_mul_ok(numel, st_dtype_size(t->dtype), &nb) || off + nb < off) {
            json_decref(shape);
            bs_err(err, "%s: tensor '%s': negative or too large shape", path, t->name);
            goto out;
        }
        if (nb > 0 && !t->data) {
            json_decref(shape);
            bs_err(err, "%s: tensor '%s': no data", path, t->name);
            goto out;
        }
        json_t *e = json_object();
        json_object_set_new(e, "dtype", json_string(st_dtype_name(t->dtype)));
        json_object_set_new(e, "shape", shape);
        json_object_set_new(e, "data_offsets", json_pack("[II]", (json_int_t)off, (json_int_t)(off + nb)));
        if (json_object_set_new(root, t->name, e) != 0) {
            bs_err(err, "%s: out of memory", path);
            goto out;
        }
        off += nb;
    }
    hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    if (!hdr) {
        bs_err(err, "%s: out of memory", path);
        goto out;
    }
    size_t hl = strlen(hdr);
    size_t padded = (hl + 7) & ~(size_t)7; /* data starts 8-byte aligned, like the reference writer */
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));

    /* Write beside the target and rename: a reader never sees half a file. */
    fp = fopen(tmp, "wb");
    if (!fp) {
        bs_err(err, "%s: %s", tmp, strerror(errno));
        goto out;
    }
    int ok = write_all(fp, len8, 8) && write_all(fp, hdr, hl);
    for (size_t i = hl; ok && i < padded; i++) ok = fputc(' ', fp) != EOF;
    for (int k = 0; ok && k < n; k++) {
        const st_out_tensor *t = &ts[order[k]];
        size_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= (size_t)t->shape[d];
        ok = write_all(fp, t->data, numel * st_dtype_size(t->dtype));
    }
    if (fclose(fp) != 0) ok = 0;
    fp = NULL;
    if (!ok) {
        bs_err(err, "%s: write failed: %s", tmp, strerror(errno));
        unlink(tmp);
        goto out;
    }
    if (rename(tmp, path) != 0) {
        bs_err(err, "%s: rename: %s", path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    rc = BS_OK;
out:
    free(hdr);
    json_decref(root);
    free(order);
    return rc;
}
