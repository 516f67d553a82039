/* `bertstream tokenize`: JSONL {"text": ...} on stdin -> {"ids": [...]} on stdout, one output line per
 * input line and in order; a bad line gets {"error": "..."} and the rest go on. A hidden `--bench FILE`
 * times the tokenizer on a TSV of reviews (label<TAB>text, header skipped): scripts/bench-tokenizer.sh. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <utf8proc.h>

#include "commands.h"
#include "common.h"
#include "tokenizer.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: bertstream tokenize --vocab FILE [--max-len N]\n"
            "\n"
            "Reads JSON lines {\"text\": \"...\"} on stdin and writes {\"ids\": [...]} for each, in order,\n"
            "with bert-base-uncased's tokenizer ([CLS] ... [SEP]). A line that is not a JSON object with a\n"
            "\"text\" string, or whose text is not valid UTF-8, gets {\"error\": \"...\"} and the next lines go on.\n"
            "\n"
            "  --vocab FILE   WordPiece vocabulary, one token per line (vocab.txt)\n"
            "  --max-len N    at most N ids including [CLS] and [SEP] (N >= 2); 0 or absent: no truncation\n"
            "  --help         this text\n"
            "\n"
            "Exit status: 0 once stdin was read to its end (bad lines included), 1 on a read or write error,\n"
            "2 on a usage error or an unreadable vocabulary.\n");
}

/* A growing output line; one per process, reused for every input line. */
typedef struct {
    char *p;
    size_t n, cap;
} obuf;

static int ob_reserve(obuf *b, size_t more) {
    if (b->n + more <= b->cap) return BS_OK;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->n + more) cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) return BS_ERR;
    b->p = p;
    b->cap = cap;
    return BS_OK;
}

static int ob_put(obuf *b, const char *s, size_t n) {
    if (ob_reserve(b, n) != BS_OK) return BS_ERR;
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return BS_OK;
}

/* A JSON string literal of s; bytes that are not valid UTF-8 become U+FFFD so the line stays valid JSON. */
static int ob_json_string(obuf *b, const char *s) {
    const utf8proc_uint8_t *u = (const utf8proc_uint8_t *)s;
    size_t len = strlen(s);
    if (ob_reserve(b, len * 6 + 2) != BS_OK) return BS_ERR;
    char *o = b->p + b->n;
    *o++ = '"';
    for (size_t i = 0; i < len;) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(u + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k < 1) {
            memcpy(o, "\\ufffd", 6);
            o += 6;
            i++;
            continue;
        }
        if (cp == '"' || cp == '\\') {
            *o++ = '\\';
            *o++ = (char)cp;
        } else if (cp < 0x20) {
            static const char hex[] = "0123456789abcdef";
            memcpy(o, "\\u00", 4);
            o[4] = hex[cp >> 4];
            o[5] = hex[cp & 15];
            o += 6;
        } else {
            memcpy(o, s + i, (size_t)k);
            o += k;
        }
        i += (size_t)k;
    }
    *o++ = '"';
    b->n = (size_t)(o - b->p);
    return BS_OK;
}

static int ob_ids(obuf *b, const bs_tokens *tk) {
    /* 12 bytes per id covers "-2147483648, " */
    if (ob_reserve(b, (size_t)tk->n * 12 + 16) != BS_OK) return BS_ERR;
    char *o = b->p + b->n;
    memcpy(o, "{\"ids\": [", 9);
    o += 9;
    for (int i = 0; i < tk->n; i++) {
        if (i) {
            *o++ = ',';
            *o++ = ' ';
        }
        /* ids are non-negative vocabulary indices */
        char tmp[12];
        int k = 0;
        uint32_t v = (uint32_t)tk->ids[i];
        do tmp[k++] = (char)('0' + v % 10);
        while ((v /= 10) != 0);
        while (k) *o++ = tmp[--k];
    }
    memcpy(o, "]}\n", 3);
    o += 3;
    b->n = (size_t)(o - b->p);
    return BS_OK;
}

static int ob_error(obuf *b, long line, const char *msg) {
    char text[BS_ERRLEN + 64];
    snprintf(text, sizeof text, "line %ld: %s", line, msg);
    if (ob_put(b, "{\"error\": ", 10) != BS_OK || ob_json_string(b, text) != BS_OK) return BS_ERR;
    return ob_put(b, "}\n", 2);
}

/* One input line (without its newline) -> one output line in b. */
static int tokenize_line(const bs_tokenizer *t, const char *line, size_t len, long lineno, int max_len, bs_tokens *tk,
                         obuf *b) {
    json_error_t je;
    json_t *o = json_loadb(line, len, JSON_ALLOW_NUL, &je);
    int rc;
    if (!o) {
        char msg[BS_ERRLEN];
        snprintf(msg, sizeof msg, "not JSON: %s (column %d)", je.text, je.column);
        rc = ob_error(b, lineno, msg);
    } else {
        json_t *text = json_object_get(o, "text");
        char err[BS_ERRLEN];
        if (!json_is_object(o))
            rc = ob_error(b, lineno, "not a JSON object");
        else if (!json_is_string(text))
            rc = ob_error(b, lineno, "no \"text\" string");
        else if (tokenizer_encode(t, json_string_value(text), json_string_length(text), max_len, tk, err) != BS_OK)
            rc = ob_error(b, lineno, err);
        else
            rc = ob_ids(b, tk);
        json_decref(o);
    }
    return rc;
}

static int run_stream(const bs_tokenizer *t, int max_len) {
    static char outbuf[1 << 16];
    setvbuf(stdout, outbuf, _IOFBF, sizeof outbuf);
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    long lineno = 0;
    bs_tokens tk = {0};
    obuf b = {0};
    int status = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        lineno++;
        size_t len = (size_t)n;
        if (len > 0 && line[len - 1] == '\n') len--;
        if (len > 0 && line[len - 1] == '\r') len--;
        b.n = 0;
        if (tokenize_line(t, line, len, lineno, max_len, &tk, &b) != BS_OK) {
            fprintf(stderr, "bertstream tokenize: line %ld: out of memory\n", lineno);
            status = 1;
            break;
        }
        if (fwrite(b.p, 1, b.n, stdout) != b.n) break;
    }
    if (status == 0 && ferror(stdin)) {
        fprintf(stderr, "bertstream tokenize: reading stdin: %s\n", strerror(errno));
        status = 1;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "bertstream tokenize: writing stdout: %s\n", strerror(errno));
        status = 1;
    }
    free(line);
    free(b.p);
    tokens_free(&tk);
    return status;
}

/* CPU time of this thread: on a shared machine it shows the tokenizer's own cost beside the wall clock. */
static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Hidden: tokenizes every review of a TSV (split on '\n' only, header skipped, text after the first TAB)
 * repeatedly for `seconds`, one thread, and prints one JSON line with reviews/s and tokens/s. */
static int run_bench(const bs_tokenizer *t, const char *path, int max_len, double seconds) {
    char err[BS_ERRLEN];
    size_t len;
    char *buf = bs_read_file(path, &len, err);
    if (!buf) {
        fprintf(stderr, "bertstream tokenize: %s\n", err);
        return 1;
    }
    size_t cap = 1024, n = 0;
    const char **text = malloc(cap * sizeof *text);
    size_t *tlen = malloc(cap * sizeof *tlen);
    int status = 1;
    bs_tokens tk = {0};
    if (!text || !tlen) goto done;
    int first = 1;
    for (char *p = buf; p < buf + len;) {
        char *nl = memchr(p, '\n', (size_t)(buf + len - p));
        char *end = nl ? nl : buf + len;
        char *tab = memchr(p, '\t', (size_t)(end - p));
        if (!first && tab) {
            if (n == cap) {
                cap *= 2;
                const char **nt = realloc(text, cap * sizeof *text);
                if (nt) text = nt;
                size_t *nlen = realloc(tlen, cap * sizeof *tlen);
                if (nlen) tlen = nlen;
                if (!nt || !nlen) goto done;
            }
            text[n] = tab + 1;
            tlen[n++] = (size_t)(end - tab - 1);
        }
        first = 0;
        p = end + 1;
    }
    if (n == 0) {
        fprintf(stderr, "bertstream tokenize: %s: no reviews (label<TAB>text after a header line)\n", path);
        goto done;
    }
    /* One pass to warm up and check every text encodes. */
    long long tokens = 0, passes = 0;
    for (size_t i = 0; i < n; i++)
        if (tokenizer_encode(t, text[i], tlen[i], max_len, &tk, err) != BS_OK) {
            fprintf(stderr, "bertstream tokenize: %s review %zu: %s\n", path, i + 1, err);
            goto done;
        }
    double t0 = bs_now(), c0 = thread_cpu_s(), el;
    do {
        for (size_t i = 0; i < n; i++) {
            tokenizer_encode(t, text[i], tlen[i], max_len, &tk, err);
            tokens += tk.n;
        }
        passes++;
    } while ((el = bs_now() - t0) < seconds);
    double cpu = thread_cpu_s() - c0, reviews = (double)(passes * (long long)n);
    printf("{\"file\": \"%s\", \"reviews\": %zu, \"passes\": %lld, \"max_len\": %d, \"seconds\": %.3f, "
           "\"reviews_per_s\": %.0f, \"tokens_per_s\": %.0f, \"cpu_seconds\": %.3f, \"reviews_per_cpu_s\": %.0f, "
           "\"mean_ids\": %.1f}\n",
           path, n, passes, max_len, el, reviews / el, (double)tokens / el, cpu, reviews / cpu,
           (double)tokens / reviews);
    status = 0;
done:
    if (status && !text) fprintf(stderr, "bertstream tokenize: out of memory\n");
    free(text);
    free(tlen);
    free(buf);
    tokens_free(&tk);
    return status;
}

static int parse_int(const char *s, long lo, long hi, long *out) {
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) return BS_ERR;
    *out = v;
    return BS_OK;
}

int cmd_tokenize(int argc, char **argv) {
    const char *vocab = NULL, *bench = NULL;
    long max_len = 0;
    double seconds = 3.0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--vocab") == 0 && v) {
            vocab = v;
            i++;
        } else if (strcmp(a, "--max-len") == 0 && v) {
            if (parse_int(v, 0, 1 << 30, &max_len) != BS_OK || max_len == 1) {
                fprintf(stderr, "bertstream tokenize: --max-len %s: expected 0 or an integer >= 2\n", v);
                return 2;
            }
            i++;
        } else if (strcmp(a, "--bench") == 0 && v) {
            bench = v;
            i++;
        } else if (strcmp(a, "--seconds") == 0 && v) {
            char *end;
            seconds = strtod(v, &end);
            if (end == v || *end || !(seconds >= 0 && seconds < 3600)) {
                fprintf(stderr, "bertstream tokenize: --seconds %s: expected a number of seconds\n", v);
                return 2;
            }
            i++;
        } else {
            int known = strcmp(a, "--vocab") == 0 || strcmp(a, "--max-len") == 0 || strcmp(a, "--bench") == 0 ||
                        strcmp(a, "--seconds") == 0;
            fprintf(stderr, "bertstream tokenize: %s '%s' (bertstream tokenize --help)\n",
                    known ? "missing value for" : "unknown argument", a);
            return 2;
        }
    }
    if (!vocab) {
        fprintf(stderr, "bertstream tokenize: --vocab FILE is required (bertstream tokenize --help)\n");
        return 2;
    }
    char err[BS_ERRLEN];
    bs_tokenizer *t = tokenizer_new(vocab, err);
    if (!t) {
        fprintf(stderr, "bertstream tokenize: %s\n", err);
        return 2;
    }
    int status = bench ? run_bench(t, bench, (int)max_len, seconds) : run_stream(t, (int)max_len);
    tokenizer_free(t);
    return status;
}
