/* Shared conventions for every bertstream module: status codes, error buffers,
 * small helpers. Functions return BS_OK / BS_ERR and write one line into a
 * caller's `char err[BS_ERRLEN]`; nothing below main() exits the process. */
#ifndef BS_COMMON_H
#define BS_COMMON_H

#include <stddef.h>
#include <stdint.h>

#define BS_OK 0
#define BS_ERR (-1)
#define BS_ERRLEN 512

#if defined(__GNUC__)
#define BS_PRINTF(f, a) __attribute__((format(printf, f, a)))
#else
#define BS_PRINTF(f, a)
#endif

/* Hot CPU loops get AVX-512 / AVX2 clones picked at load time, so one portable binary (the GPU
 * bundle runs on other hosts) still uses the wide vector units. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__SANITIZE_ADDRESS__) && !defined(BS_NO_CLONES)
#define BS_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define BS_VECTOR_CLONES
#endif

/* Writes a formatted message into err (BS_ERRLEN bytes) when err is not NULL. Returns BS_ERR. */
int bs_err(char *err, const char *fmt, ...) BS_PRINTF(2, 3);
/* bs_err for errors counted by a stable reason: also sets *code_out = code (when code_out is not NULL). */
int bs_err_code(const char **code_out, const char *code, char *err, const char *fmt, ...) BS_PRINTF(4, 5);

/* Reads a whole file into a NUL-terminated heap buffer; *len gets the size without the NUL. */
char *bs_read_file(const char *path, size_t *len, char *err);

/* mkdir -p: creates path and any missing parents (mode 0755). BS_ERR when one cannot be created
 * or path exists and is not a directory; the error names the component. */
int bs_mkdir_p(const char *path, char *err);

/* Monotonic clock in seconds. */
double bs_now(void);

/* Wall clock in milliseconds since the Unix epoch. */
int64_t bs_wall_ms(void);

/* Overflow-checked size arithmetic: return 0 on overflow, 1 on success. */
static inline int bs_mul_ok(size_t a, size_t b, size_t *out) {
    if (a != 0 && b > SIZE_MAX / a) return 0;
    *out = a * b;
    return 1;
}

/* Deterministic PRNG (splitmix64 seeded xoshiro-free): used for weights init, shuffles, benches. */
typedef struct {
    uint64_t s;
} bs_rng;
static inline uint64_t bs_rng_next(bs_rng *r) {
    uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
/* Uniform in [0, 1). */
static inline double bs_rng_uniform(bs_rng *r) {
    return (double)(bs_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}
/* Standard normal (Box-Muller). */
double bs_rng_normal(bs_rng *r);

#endif
