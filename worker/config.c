/* Configuration: one table row per key (type, bounds, default, field offset), and three sources applied
 * through the same setter: a YAML file (libyaml's document API), BERTSTREAM_* variables, -o overrides.
 * Defaults are text in the table and go through the setter too, so a default can never be out of bounds. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

extern char **environ;

typedef enum { T_STRING, T_INT, T_DOUBLE, T_ENUM, T_BOOL, T_MAP } cfg_type;

/* Extra checks on strings. */
enum { F_NONEMPTY = 1, F_DEVICE = 2, F_LISTEN = 4 };

typedef struct {
    const char *name; /* "section.key"; "delivery" for the top-level scalar; the section for a map */
    cfg_type type;
    size_t off;
    const char *def;          /* default as text (NULL for maps) */
    int64_t imin, imax;       /* T_INT */
    double dmin, dmax;        /* T_DOUBLE */
    const char *const *names; /* T_ENUM: names in enum order, NULL-terminated */
    int flags;
} cfg_key;

static const char *const formats_in[] = {"avro", "confluent", "json", "text", NULL};
static const char *const formats_out[] = {"avro", "confluent", NULL};
static const char *const features[] = {"pooler", "cls", "mean", NULL};
static const char *const precisions[] = {"auto", "fp32", "fp16", "bf16", "fp8", NULL};
static const char *const deliveries[] = {"at_least_once", "exactly_once", NULL};
static const char *const log_levels[] = {"debug", "info", "warn", "error", NULL};
static const char *const log_formats[] = {"logfmt", "json", NULL};

/* The enum fields are written as int: they must have its size, and the name lists their order. */
_Static_assert(sizeof(bs_format) == sizeof(int), "enum size");
_Static_assert(sizeof(bs_delivery) == sizeof(int), "enum size");
_Static_assert(sizeof(bs_feature) == sizeof(int), "enum size");
_Static_assert(sizeof(bs_precision) == sizeof(int), "enum size");
_Static_assert(sizeof(bs_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(bs_log_format) == sizeof(int), "enum size");
_Static_assert(BS_FEATURE_MEAN == 2 && BS_PREC_FP8 == 4 && BS_LOG_ERROR == 3, "enum order matches the name lists");

#define OFF(f) offsetof(bs_config, f)
#define STR(n, f, d, fl)                                                                                               \
    { n, T_STRING, OFF(f), d, 0, 0, 0, 0, NULL, fl }
#define INT(n, f, d, lo, hi)                                                                                           \
    { n, T_INT, OFF(f), d, lo, hi, 0, 0, NULL, 0 }
#define DBL(n, f, d, lo, hi)                                                                                           \
    { n, T_DOUBLE, OFF(f), d, 0, 0, lo, hi, NULL, 0 }
#define ENUM(n, f, d, names)                                                                                           \
    { n, T_ENUM, OFF(f), d, 0, 0, 0, 0, names, 0 }
#define MAP(n, f)                                                                                                      \
    { n, T_MAP, OFF(f), NULL, 0, 0, 0, 0, NULL, 0 }

static const cfg_key keys[] = {
    MAP("kafka", kafka),
    MAP("consumer", consumer),
    MAP("producer", producer),
    STR("topics.input", topics.input, "reviews", F_NONEMPTY),
    STR("topics.output", topics.output, "review-scores", F_NONEMPTY),
    STR("topics.dead_letter", topics.dead_letter, "reviews-dlq", F_NONEMPTY),
    STR("topics.heads", topics.heads, "bertstream-heads", 0),
    STR("topics.labeled", topics.labeled, "reviews-labeled", F_NONEMPTY),
    ENUM("format.input", format.input, "avro", formats_in),
    ENUM("format.output", format.output, "avro", formats_out),
    INT("format.input_schema_id", format.input_schema_id, "1", 0, 2147483647),
    INT("format.output_schema_id", format.output_schema_id, "2", 0, 2147483647),
    STR("model.dir", model.dir, "models/bert-base-uncased", F_NONEMPTY),
    STR("model.vocab", model.vocab, "", 0),
    INT("model.max_seq_len", model.max_seq_len, "128", 2, 8192),
    ENUM("model.feature", model.feature, "pooler", features),
    STR("model.device", model.device, "auto", F_DEVICE),
    ENUM("model.precision", model.precision, "auto", precisions),
    STR("head.file", head.file, "models/head.safetensors", 0),
    STR("head.hmac_key", head.hmac_key, "", 0),
    INT("head.wait_ms", head.wait_ms, "0", 0, 3600000),
    INT("batch.max_sequences", batch.max_sequences, "256", 1, 65536),
    INT("batch.max_tokens", batch.max_tokens, "32768", 2, 1048576),
    INT("batch.max_delay_ms", batch.max_delay_ms, "20", 0, 60000),
    STR("http.listen", http.listen, "0.0.0.0:9464", F_LISTEN),
    ENUM("delivery", delivery, "at_least_once", deliveries),
    INT("worker.tokenizer_threads", worker.tokenizer_threads, "2", 1, 64),
    INT("worker.max_message_bytes", worker.max_message_bytes, "16777216", 1, 1000000000),
    INT("worker.queue_depth", worker.queue_depth, "16384", 1, 1048576),
    ENUM("log.level", log.level, "info", log_levels),
    ENUM("log.format", log.format, "logfmt", log_formats),
    ENUM("train.feature", train.feature, "pooler", features),
    DBL("train.eval_fraction", train.eval_fraction, "0.1", 0, 0.9),
    DBL("train.max_regression", train.max_regression, "0.01", 0, 1),
    INT("train.epochs", train.epochs, "10", 1, 100000),
    INT("train.batch", train.batch, "16", 1, 65536),
    DBL("train.lr", train.lr, "2e-4", 0, 1),
    DBL("train.weight_decay", train.weight_decay, "0.01", 0, 1),
    INT("train.seed", train.seed, "0", 0, INT64_MAX),
    STR("train.cache_dir", train.cache_dir, "cache/features", F_NONEMPTY),
    STR("train.out_dir", train.out_dir, "out/heads", F_NONEMPTY),
    INT("train.read_timeout_ms", train.read_timeout_ms, "30000", 1, 86400000),
};
#define N_KEYS (sizeof keys / sizeof keys[0])

/* ---- small helpers ---- */

static int ieq_prefix(const char *s, const char *prefix) {
    for (; *prefix; s++, prefix++)
        if (tolower((unsigned char)*s) != tolower((unsigned char)*prefix)) return 0;
    return 1;
}

int config_is_secret(const char *key) {
    static const char *const words[] = {"password", "secret", "hmac_key", "sasl.oauthbearer", "ssl.key"};
    for (const char *p = key; *p; p++)
        for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
            if (ieq_prefix(p, words[i])) return 1;
    return 0;
}

/* A value quoted into an error message: printable, at most 64 bytes, never a secret. */
static const char *shown(const char *v, char *buf, size_t cap) {
    size_t n = 0;
    for (; *v && n + 4 < cap && n < 64; v++) buf[n++] = (unsigned char)*v < 0x20 || *v == 0x7f ? '?' : *v;
    if (*v) {
        memcpy(buf + n, "...", 3);
        n += 3;
    }
    buf[n] = '\0';
    return buf;
}

/* Section length of a row name ("batch.max_sequences" -> 5; "delivery" -> 8). */
static size_t section_len(const char *name) {
    const char *dot = strchr(name, '.');
    return dot ? (size_t)(dot - name) : strlen(name);
}

static const cfg_key *find_key(const char *name) {
    for (size_t i = 0; i < N_KEYS; i++)
        if (keys[i].type != T_MAP && strcmp(keys[i].name, name) == 0) return &keys[i];
    return NULL;
}

/* What a top-level name is: a map section, a table section, the top-level scalar, or nothing. */
enum { SEC_NONE, SEC_MAP, SEC_TABLE, SEC_SCALAR };
static int section_kind(const char *sec, size_t len, const cfg_key **row) {
    for (size_t i = 0; i < N_KEYS; i++) {
        const char *n = keys[i].name;
        size_t sl = section_len(n);
        if (sl != len || strncmp(n, sec, len) != 0) continue;
        if (row) *row = &keys[i];
        if (keys[i].type == T_MAP) return SEC_MAP;
        return n[sl] == '.' ? SEC_TABLE : SEC_SCALAR;
    }
    return SEC_NONE;
}

static bs_kvlist *map_field(bs_config *c, const cfg_key *k) {
    return (bs_kvlist *)((char *)c + k->off);
}

/* ---- maps ---- */

const char *config_kv_get(const bs_kvlist *l, const char *key) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].key, key) == 0) return l->items[i].value;
    return NULL;
}

int config_kv_set(bs_kvlist *l, const char *key, const char *value, char *err) {
    char *v = strdup(value);
    if (!v) return bs_err(err, "out of memory");
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].key, key) == 0) {
            free(l->items[i].value);
            l->items[i].value = v;
            return BS_OK;
        }
    if (l->n == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 8;
        bs_kv *ni = realloc(l->items, ncap * sizeof *ni);
        if (!ni) {
            free(v);
            return bs_err(err, "out of memory");
        }
        l->items = ni;
        l->cap = ncap;
    }
    char *k = strdup(key);
    if (!k) {
        free(v);
        return bs_err(err, "out of memory");
    }
    l->items[l->n].key = k;
    l->items[l->n].value = v;
    l->n++;
    return BS_OK;
}

static void kv_free(bs_kvlist *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].key);
        free(l->items[i].value);
    }
    free(l->items);
    memset(l, 0, sizeof *l);
}

/* ---- values ---- */

static int parse_int(const char *s, int64_t *out) {
    if (!*s || isspace((unsigned char)*s)) return 0;
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || *end) return 0;
    *out = v;
    return 1;
}

static int parse_double(const char *s, double *out) {
    if (!*s || isspace((unsigned char)*s)) return 0;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v)) return 0;
    *out = v;
    return 1;
}

/* YAML 1.1 booleans, as users write them. */
static int parse_bool(const char *s, int *out) {
    static const char *const t[] = {"true", "True", "TRUE", "yes", "Yes", "YES", "on", "On", "ON"};
    static const char *const f[] = {"false", "False", "FALSE", "no", "No", "NO", "off", "Off", "OFF"};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        if (strcmp(s, t[i]) == 0) return *out = 1, 1;
        if (strcmp(s, f[i]) == 0) return *out = 0, 1;
    }
    return 0;
}

/* Shortest text that reads back as the same double. */
static void fmt_double(char *buf, size_t cap, double v) {
    for (int p = 15; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v) return;
    }
}

static int valid_device(const char *s) {
    if (!strcmp(s, "auto") || !strcmp(s, "cpu") || !strcmp(s, "cuda")) return 1;
    if (strncmp(s, "cuda:", 5) != 0) return 0;
    s += 5;
    size_t n = strspn(s, "0123456789");
    return n >= 1 && n <= 3 && s[n] == '\0';
}

/* "" or HOST:PORT where HOST is empty, a name/IPv4 address, or [IPv6]; PORT 0..65535. */
static int valid_listen(const char *s) {
    if (!*s) return 1;
    const char *colon = strrchr(s, ':');
    if (!colon) return 0;
    const char *port = colon + 1;
    size_t pn = strspn(port, "0123456789");
    if (pn < 1 || pn > 5 || port[pn] || atoi(port) > 65535) return 0;
    size_t hn = (size_t)(colon - s);
    for (size_t i = 0; i < hn; i++)
        if (isspace((unsigned char)s[i]) || (unsigned char)s[i] < 0x20) return 0;
    if (hn && s[0] == '[') return s[hn - 1] == ']' && hn > 2;
    return memchr(s, ':', hn) == NULL; /* a bare IPv6 address needs brackets */
}

/* Writes text into row k of c. On a bad value writes "expected ..., got '...'" into msg. */
static int set_value(bs_config *c, const cfg_key *k, const char *text, char *msg) {
    char *field = (char *)c + k->off;
    char sh[96];
    const char *got = config_is_secret(k->name) ? "***" : shown(text, sh, sizeof sh);
    switch (k->type) {
    case T_STRING: {
        if ((k->flags & F_NONEMPTY) && !*text) return bs_err(msg, "expected a non-empty string, got ''");
        if ((k->flags & F_DEVICE) && !valid_device(text))
            return bs_err(msg, "expected auto, cpu, cuda or cuda:N, got '%s'", got);
        if ((k->flags & F_LISTEN) && !valid_listen(text))
            return bs_err(msg, "expected HOST:PORT with a port in 0..65535 (\"\" disables), got '%s'", got);
        char *v = strdup(text);
        if (!v) return bs_err(msg, "out of memory");
        char **p = (char **)field;
        free(*p);
        *p = v;
        return BS_OK;
    }
    case T_INT: {
        int64_t v;
        if (!parse_int(text, &v) || v < k->imin || v > k->imax)
            return bs_err(msg, "expected an integer in %lld..%lld, got '%s'", (long long)k->imin, (long long)k->imax,
                          got);
        memcpy(field, &v, sizeof v);
        return BS_OK;
    }
    case T_DOUBLE: {
        double v;
        if (!parse_double(text, &v) || v < k->dmin || v > k->dmax) {
            char lo[32], hi[32];
            fmt_double(lo, sizeof lo, k->dmin);
            fmt_double(hi, sizeof hi, k->dmax);
            return bs_err(msg, "expected a number in %s..%s, got '%s'", lo, hi, got);
        }
        memcpy(field, &v, sizeof v);
        return BS_OK;
    }
    case T_ENUM: {
        for (int i = 0; k->names[i]; i++)
            if (strcmp(text, k->names[i]) == 0) {
                memcpy(field, &i, sizeof i);
                return BS_OK;
            }
        char list[128] = "";
        size_t n = 0;
        for (int i = 0; k->names[i] && n < sizeof list; i++)
            n += (size_t)snprintf(list + n, sizeof list - n, "%s%s", i ? "|" : "", k->names[i]);
        return bs_err(msg, "expected one of %s, got '%s'", list, got);
    }
    case T_BOOL: {
        int b;
        if (!parse_bool(text, &b)) return bs_err(msg, "expected true or false, got '%s'", got);
        memcpy(field, &b, sizeof b);
        return BS_OK;
    }
    case T_MAP:
        break;
    }
    return bs_err(msg, "internal error: bad key type");
}

/* ---- lifecycle ---- */

bs_config *config_new_defaults(void) {
    bs_config *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    char msg[BS_ERRLEN];
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].type == T_MAP) continue;
        if (set_value(c, &keys[i], keys[i].def, msg) != BS_OK) goto err;
    }
    if (config_kv_set(&c->consumer, "group.id", "bertstream", msg) != BS_OK) goto err;
    return c;
err:
    config_free(c);
    return NULL;
}

void config_free(bs_config *c) {
    if (!c) return;
    for (size_t i = 0; i < N_KEYS; i++) {
        if (keys[i].type == T_STRING) free(*(char **)((char *)c + keys[i].off));
        if (keys[i].type == T_MAP) kv_free(map_field(c, &keys[i]));
    }
    free(c);
}

/* ---- one assignment from any source: section, key (NULL for "delivery"), value ---- */

/* loc: "FILE:LINE", "environment NAME" or "-o K=V". Writes the full error line into err. */
static int assign(bs_config *c, const char *sec, size_t sec_len, const char *key, const char *value, int yaml_plain,
                  const char *loc, char *err) {
    const cfg_key *row = NULL;
    int kind = section_kind(sec, sec_len, &row);
    char full[512];
    snprintf(full, sizeof full, "%.*s%s%s", (int)sec_len, sec, key ? "." : "", key ? key : "");
    if (kind == SEC_NONE || (kind == SEC_SCALAR && key) || (kind != SEC_SCALAR && (!key || !*key)))
        return bs_err(err, "%s: unknown key '%s'", loc, shown(full, (char[96]){0}, 96));
    if (kind == SEC_MAP) {
        char tmp[BS_ERRLEN];
        const char *v = value;
        int b;
        /* YAML 1.1 reads `yes`/`on` as booleans; librdkafka wants true/false. */
        if (yaml_plain && parse_bool(value, &b)) v = b ? "true" : "false";
        if (config_kv_set(map_field(c, row), key, v, tmp) != BS_OK) return bs_err(err, "%s: %s", loc, tmp);
        return BS_OK;
    }
    if (kind == SEC_TABLE) {
        row = find_key(full);
        if (!row) return bs_err(err, "%s: unknown key '%s'", loc, shown(full, (char[96]){0}, 96));
    }
    char msg[BS_ERRLEN];
    if (set_value(c, row, value, msg) != BS_OK) return bs_err(err, "%s: %s: %s", loc, row->name, msg);
    return BS_OK;
}

/* ---- YAML ---- */

typedef struct {
    const char *name;
    yaml_document_t *doc;
    char *err;
    char (*seen)[128]; /* full key names already set by this document, for duplicate detection */
    int *seen_line;
    size_t n_seen, cap_seen;
} yaml_ctx;

static int node_line(const yaml_node_t *n) {
    return (int)n->start_mark.line + 1;
}

static int is_null_scalar(const yaml_node_t *n) {
    if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return 0;
    const char *s = (const char *)n->data.scalar.value;
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") || !strcmp(s, "NULL");
}

static const char *node_kind(const yaml_node_t *n) {
    return n->type == YAML_MAPPING_NODE ? "a mapping" : n->type == YAML_SEQUENCE_NODE ? "a sequence" : "a scalar";
}

/* A scalar's text; BS_ERR for a NUL inside (C strings cannot hold it). */
static int scalar_text(yaml_ctx *y, const yaml_node_t *n, const char *what, const char **out) {
    if (memchr(n->data.scalar.value, 0, n->data.scalar.length))
        return bs_err(y->err, "%s:%d: %s contains a NUL character", y->name, node_line(n), what);
    *out = (const char *)n->data.scalar.value;
    return BS_OK;
}

static int mark_seen(yaml_ctx *y, const char *full, int line) {
    for (size_t i = 0; i < y->n_seen; i++)
        if (strcmp(y->seen[i], full) == 0)
            return bs_err(y->err, "%s:%d: duplicate key '%s' (first at line %d)", y->name, line, full, y->seen_line[i]);
    if (strlen(full) >= sizeof y->seen[0]) return BS_OK; /* too long to be a real key; the setter rejects it */
    if (y->n_seen == y->cap_seen) {
        size_t ncap = y->cap_seen ? y->cap_seen * 2 : 32;
        void *ns = realloc(y->seen, ncap * sizeof y->seen[0]);
        if (!ns) return bs_err(y->err, "out of memory");
        y->seen = ns;
        void *nl = realloc(y->seen_line, ncap * sizeof y->seen_line[0]);
        if (!nl) return bs_err(y->err, "out of memory");
        y->seen_line = nl;
        y->cap_seen = ncap;
    }
    snprintf(y->seen[y->n_seen], sizeof y->seen[0], "%s", full);
    y->seen_line[y->n_seen++] = line;
    return BS_OK;
}

static int yaml_section(bs_config *c, yaml_ctx *y, const char *sec, const yaml_node_t *val) {
    char loc[300];
    int kind = section_kind(sec, strlen(sec), NULL);
    if (kind == SEC_SCALAR) {
        snprintf(loc, sizeof loc, "%s:%d", y->name, node_line(val));
        const cfg_key *row = find_key(sec);
        if (val->type != YAML_SCALAR_NODE)
            return bs_err(y->err, "%s: %s: expected a scalar, got %s", loc, row->name, node_kind(val));
        const char *text = NULL;
        if (scalar_text(y, val, sec, &text) != BS_OK) return BS_ERR;
        return assign(c, sec, strlen(sec), NULL, text, val->data.scalar.style == YAML_PLAIN_SCALAR_STYLE, loc, y->err);
    }
    if (is_null_scalar(val)) return BS_OK; /* `producer:` with nothing under it */
    if (val->type != YAML_MAPPING_NODE)
        return bs_err(y->err, "%s:%d: section '%s' must be a mapping, got %s", y->name, node_line(val), sec,
                      node_kind(val));
    for (yaml_node_pair_t *p = val->data.mapping.pairs.start; p < val->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(y->doc, p->value);
        if (!kn || !vn) return bs_err(y->err, "%s: malformed YAML document", y->name);
        if (kn->type != YAML_SCALAR_NODE)
            return bs_err(y->err, "%s:%d: expected a key name in section '%s', got %s", y->name, node_line(kn), sec,
                          node_kind(kn));
        const char *key = NULL;
        if (scalar_text(y, kn, "a key", &key) != BS_OK) return BS_ERR;
        char full[512];
        snprintf(full, sizeof full, "%s.%s", sec, key);
        snprintf(loc, sizeof loc, "%s:%d", y->name, node_line(kn));
        if (kind == SEC_NONE || !*key || (kind == SEC_TABLE && !find_key(full))) {
            char sh[96];
            return bs_err(y->err, "%s: unknown key '%s'", loc, shown(full, sh, sizeof sh));
        }
        if (mark_seen(y, full, node_line(kn)) != BS_OK) return BS_ERR;
        if (vn->type != YAML_SCALAR_NODE)
            return bs_err(y->err, "%s:%d: %s: expected a scalar, got %s", y->name, node_line(vn), full, node_kind(vn));
        const char *text = NULL;
        if (scalar_text(y, vn, full, &text) != BS_OK) return BS_ERR;
        int plain = vn->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
        if (is_null_scalar(vn)) text = "";
        snprintf(loc, sizeof loc, "%s:%d", y->name, node_line(vn));
        if (assign(c, sec, strlen(sec), key, text, plain, loc, y->err) != BS_OK) return BS_ERR;
    }
    return BS_OK;
}

/* Line (1-based) of a byte offset, for reader errors that carry no mark. */
static int line_of(const char *s, size_t len, size_t off) {
    int line = 1;
    for (size_t i = 0; i < off && i < len; i++) line += s[i] == '\n';
    return line;
}

static int yaml_error(const yaml_parser_t *p, const char *yaml, size_t len, const char *name, char *err) {
    if (p->error == YAML_MEMORY_ERROR) return bs_err(err, "%s: out of memory reading YAML", name);
    if (p->error == YAML_READER_ERROR)
        return bs_err(err, "%s:%d: YAML: %s", name, line_of(yaml, len, p->problem_offset),
                      p->problem ? p->problem : "unreadable input");
    if (p->context)
        return bs_err(err, "%s:%d: YAML: %s %s (column %d)", name, (int)p->problem_mark.line + 1, p->problem,
                      p->context, (int)p->problem_mark.column + 1);
    return bs_err(err, "%s:%d: YAML: %s (column %d)", name, (int)p->problem_mark.line + 1,
                  p->problem ? p->problem : "syntax error", (int)p->problem_mark.column + 1);
}

/* A configuration is two levels deep. libyaml's scanner costs O(depth) per token, so a file of 200,000
 * nested brackets takes minutes: an event pass stops at the first node nested too deep. Syntax errors are
 * left to the document loader, which reports them the same way. */
#define CONFIG_MAX_DEPTH 16
static int yaml_depth_ok(const char *yaml, size_t len, const char *name, char *err) {
    yaml_parser_t p;
    yaml_event_t ev;
    int depth = 0, rc = BS_OK;
    if (!yaml_parser_initialize(&p)) return bs_err(err, "%s: out of memory", name);
    yaml_parser_set_input_string(&p, (const unsigned char *)yaml, len);
    while (yaml_parser_parse(&p, &ev)) {
        yaml_event_type_t t = ev.type;
        int line = (int)ev.start_mark.line + 1;
        yaml_event_delete(&ev);
        if (t == YAML_STREAM_END_EVENT) break;
        if (t == YAML_SEQUENCE_END_EVENT || t == YAML_MAPPING_END_EVENT) depth--;
        if ((t == YAML_SEQUENCE_START_EVENT || t == YAML_MAPPING_START_EVENT) && ++depth > CONFIG_MAX_DEPTH) {
            rc = bs_err(err, "%s:%d: YAML: nested deeper than %d levels", name, line, CONFIG_MAX_DEPTH);
            break;
        }
    }
    yaml_parser_delete(&p);
    return rc;
}

int config_load_string(bs_config *c, const char *yaml, size_t len, const char *name, char *err) {
    if (yaml_depth_ok(yaml, len, name, err) != BS_OK) return BS_ERR;
    yaml_parser_t parser;
    yaml_document_t doc;
    int rc = BS_ERR, have_doc = 0;
    yaml_ctx y = {.name = name, .doc = &doc, .err = err};
    if (!yaml_parser_initialize(&parser)) return bs_err(err, "%s: out of memory", name);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_error(&parser, yaml, len, name, err);
        goto done;
    }
    have_doc = 1;
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root || is_null_scalar(root)) {
        rc = BS_OK; /* an empty file: every key keeps its value */
        goto done;
    }
    if (root->type != YAML_MAPPING_NODE) {
        bs_err(err, "%s:%d: expected a mapping of sections at the top level, got %s", name, node_line(root),
               node_kind(root));
        goto done;
    }
    for (yaml_node_pair_t *p = root->data.mapping.pairs.start; p < root->data.mapping.pairs.top; p++) {
        yaml_node_t *kn = yaml_document_get_node(&doc, p->key);
        yaml_node_t *vn = yaml_document_get_node(&doc, p->value);
        if (!kn || !vn) {
            bs_err(err, "%s: malformed YAML document", name);
            goto done;
        }
        if (kn->type != YAML_SCALAR_NODE) {
            bs_err(err, "%s:%d: expected a section name, got %s", name, node_line(kn), node_kind(kn));
            goto done;
        }
        const char *sec = NULL;
        if (scalar_text(&y, kn, "a section name", &sec) != BS_OK) goto done;
        if (section_kind(sec, strlen(sec), NULL) == SEC_NONE || strchr(sec, '.')) {
            char sh[96];
            bs_err(err, "%s:%d: unknown key '%s'", name, node_line(kn), shown(sec, sh, sizeof sh));
            goto done;
        }
        if (mark_seen(&y, sec, node_line(kn)) != BS_OK) goto done;
        if (yaml_section(c, &y, sec, vn) != BS_OK) goto done;
    }
    /* One document per file: a second one would be silently ignored otherwise. */
    yaml_document_delete(&doc);
    have_doc = 0;
    if (!yaml_parser_load(&parser, &doc)) {
        yaml_error(&parser, yaml, len, name, err);
        goto done;
    }
    have_doc = 1;
    if (yaml_document_get_root_node(&doc)) {
        bs_err(err, "%s:%d: only one YAML document is allowed", name, (int)doc.start_mark.line + 1);
        goto done;
    }
    rc = BS_OK;
done:
    if (have_doc) yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    free(y.seen);
    free(y.seen_line);
    return rc;
}

int config_load_file(bs_config *c, const char *path, char *err) {
    size_t len;
    char *text = bs_read_file(path, &len, err);
    if (!text) return BS_ERR;
    int rc = config_load_string(c, text, len, path, err);
    free(text);
    return rc;
}

/* ---- environment and -o ---- */

int config_apply_env(bs_config *c, char **envp, char *err) {
    static const char prefix[] = "BERTSTREAM_";
    if (!envp) envp = environ;
    for (char **e = envp; e && *e; e++) {
        const char *eq = strchr(*e, '=');
        if (!eq || strncmp(*e, prefix, sizeof prefix - 1) != 0) continue;
        const char *rest = *e + sizeof prefix - 1;
        size_t rlen = (size_t)(eq - rest);
        /* Which section does the rest start with? (No section name is a prefix of another.) */
        const cfg_key *row = NULL;
        size_t sl = 0;
        for (size_t i = 0; i < N_KEYS && !row; i++) {
            sl = section_len(keys[i].name);
            if (sl > rlen || (sl < rlen && rest[sl] != '_')) continue;
            size_t j = 0;
            while (j < sl && toupper((unsigned char)keys[i].name[j]) == rest[j]) j++;
            if (j == sl) row = &keys[i];
        }
        if (!row) continue; /* BERTSTREAM_DATA, BERTSTREAM_BIN...: not configuration */
        const char *sub = sl < rlen ? rest + sl + 1 : NULL;
        size_t kn = sub ? (size_t)(eq - sub) : 0;
        /* Kubernetes service links: a Service named bertstream-worker injects BERTSTREAM_WORKER_PORT,
         * BERTSTREAM_WORKER_SERVICE_HOST, BERTSTREAM_WORKER_PORT_9464_TCP_ADDR... No key has such a name. */
        if (sub && ((kn == 4 && !strncmp(sub, "PORT", 4)) || !strncmp(sub, "PORT_", 5) ||
                    !strncmp(sub, "SERVICE_HOST", 12) || !strncmp(sub, "SERVICE_PORT", 12)))
            continue;
        char var[256], loc[300], sec[32], key[256];
        snprintf(var, sizeof var, "%.*s", (int)(eq - *e), *e);
        snprintf(loc, sizeof loc, "environment %s", var);
        snprintf(sec, sizeof sec, "%.*s", (int)sl, row->name);
        if (kn >= sizeof key) return bs_err(err, "%s: unknown key (name too long)", loc);
        if (sub) {
            int is_map = row->type == T_MAP;
            for (size_t j = 0; j < kn; j++) {
                char ch = (char)tolower((unsigned char)sub[j]);
                key[j] = is_map && ch == '_' ? '.' : ch; /* BERTSTREAM_KAFKA_SASL_PASSWORD -> sasl.password */
            }
            key[kn] = '\0';
        }
        if (assign(c, sec, sl, sub ? key : NULL, eq + 1, 0, loc, err) != BS_OK) return BS_ERR;
    }
    return BS_OK;
}

int config_set(bs_config *c, const char *kv, char *err) {
    const char *eq = strchr(kv, '=');
    char loc[600], keybuf[512];
    if (!eq || eq == kv) {
        char sh[96];
        return bs_err(err, "-o %s: expected section.key=value", shown(kv, sh, sizeof sh));
    }
    size_t kl = (size_t)(eq - kv);
    if (kl >= sizeof keybuf) return bs_err(err, "-o: key too long");
    memcpy(keybuf, kv, kl);
    keybuf[kl] = '\0';
    char sh[96];
    snprintf(loc, sizeof loc, "-o %s=%s", keybuf, config_is_secret(keybuf) ? "***" : shown(eq + 1, sh, sizeof sh));
    const char *dot = strchr(keybuf, '.');
    size_t sl = dot ? (size_t)(dot - keybuf) : kl;
    return assign(c, keybuf, sl, dot ? dot + 1 : NULL, eq + 1, 0, loc, err);
}

int config_validate(const bs_config *c, char *err) {
    if (c->batch.max_tokens < c->model.max_seq_len)
        return bs_err(err, "batch.max_tokens (%lld) must be at least model.max_seq_len (%lld)",
                      (long long)c->batch.max_tokens, (long long)c->model.max_seq_len);
    return BS_OK;
}

int config_take_flag(int *argc, char **argv, const char *flag) {
    int found = 0, n = 1;
    for (int i = 1; i < *argc; i++) {
        if (!strcmp(argv[i], flag)) {
            found = 1;
            continue;
        }
        argv[n++] = argv[i];
        if ((!strcmp(argv[i], "-o") || !strcmp(argv[i], "--config")) && i + 1 < *argc) argv[n++] = argv[++i];
    }
    *argc = n;
    return found;
}

int config_parse_args(bs_config *c, int argc, char **argv, char **envp, char *err) {
    /* First pass: syntax and --help; files load before env and -o whatever the argument order. */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) return CONFIG_HELP;
        if (!strcmp(a, "--config") || !strcmp(a, "-o")) {
            if (i + 1 >= argc) return bs_err(err, "%s needs a value", a);
            i++;
        } else if (strncmp(a, "--config=", 9) != 0 && strncmp(a, "-o", 2) != 0) {
            char sh[96];
            return bs_err(err, "unknown argument '%s' (expected --config FILE or -o section.key=value)",
                          shown(a, sh, sizeof sh));
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            if (config_load_file(c, argv[++i], err) != BS_OK) return BS_ERR;
        } else if (!strncmp(a, "--config=", 9)) {
            if (config_load_file(c, a + 9, err) != BS_OK) return BS_ERR;
        } else if (!strcmp(a, "-o")) {
            i++;
        }
    }
    if (config_apply_env(c, envp, err) != BS_OK) return BS_ERR;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--config")) {
            i++;
        } else if (!strcmp(a, "-o")) {
            if (config_set(c, argv[++i], err) != BS_OK) return BS_ERR;
        } else if (!strncmp(a, "-o", 2)) {
            if (config_set(c, a + 2, err) != BS_OK) return BS_ERR;
        }
    }
    return config_validate(c, err);
}

/* ---- output ---- */

/* Decodes one UTF-8 sequence; returns its length, or 0 when it is not valid UTF-8. */
static int utf8_decode(const unsigned char *s, uint32_t *cp) {
    if (s[0] < 0x80) return *cp = s[0], 1;
    int n = s[0] >= 0xf0 ? 4 : s[0] >= 0xe0 ? 3 : s[0] >= 0xc2 ? 2 : 0;
    if (!n || s[0] > 0xf4) return 0;
    uint32_t v = s[0] & (0x7f >> n);
    for (int i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        v = v << 6 | (s[i] & 0x3f);
    }
    static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
    if (v < min[n] || v > 0x10ffff || (v >= 0xd800 && v <= 0xdfff)) return 0;
    *cp = v;
    return n;
}

/* A YAML double-quoted scalar that reads back as the same bytes: escapes quotes, backslashes, every
 * character YAML does not print (C0/C1 controls, DEL, U+FFFE/FFFF) and the line breaks it would fold
 * (NEL, LS, PS). A byte that is not UTF-8 (only possible from the environment or -o) becomes \xNN. */
static void put_yaml_string(FILE *f, const char *str) {
    const unsigned char *s = (const unsigned char *)str;
    fputc('"', f);
    while (*s) {
        uint32_t cp;
        int n = utf8_decode(s, &cp);
        if (!n) {
            fprintf(f, "\\x%02x", *s++);
            continue;
        }
        if (cp == '"' || cp == '\\')
            fprintf(f, "\\%c", (char)cp);
        else if (cp == '\n')
            fputs("\\n", f);
        else if (cp == '\t')
            fputs("\\t", f);
        else if (cp < 0x20 || (cp >= 0x7f && cp < 0xa0) || cp == 0x2028 || cp == 0x2029 || cp == 0xfeff ||
                 cp == 0xfffe || cp == 0xffff)
            fprintf(f, cp < 0x100 ? "\\x%02x" : "\\u%04x", (unsigned)cp);
        else
            fwrite(s, 1, (size_t)n, f);
        s += n;
    }
    fputc('"', f);
}

/* Text of a table row's value (strings unquoted). */
static void value_text(const bs_config *c, const cfg_key *k, char *buf, size_t cap) {
    const char *field = (const char *)c + k->off;
    switch (k->type) {
    case T_STRING:
        snprintf(buf, cap, "%s", *(char *const *)field);
        break;
    case T_INT: {
        int64_t v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, cap, "%lld", (long long)v);
        break;
    }
    case T_DOUBLE: {
        double v;
        memcpy(&v, field, sizeof v);
        fmt_double(buf, cap, v);
        break;
    }
    case T_ENUM: {
        int v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, cap, "%s", k->names[v]);
        break;
    }
    case T_BOOL: {
        int v;
        memcpy(&v, field, sizeof v);
        snprintf(buf, cap, "%s", v ? "true" : "false");
        break;
    }
    case T_MAP:
        buf[0] = '\0';
        break;
    }
}

int config_get(const bs_config *c, const char *key, char *buf, size_t cap, char *err) {
    const cfg_key *row = find_key(key);
    if (row) {
        if (row->type == T_STRING) {
            const char *s = *(char *const *)((const char *)c + row->off);
            if (strlen(s) >= cap) return bs_err(err, "%s: value longer than the buffer", key);
        }
        value_text(c, row, buf, cap);
        return BS_OK;
    }
    const char *dot = strchr(key, '.');
    if (dot && section_kind(key, (size_t)(dot - key), &row) == SEC_MAP) {
        const char *v = config_kv_get((const bs_kvlist *)((const char *)c + row->off), dot + 1);
        if (!v) return bs_err(err, "%s: not set", key);
        if (strlen(v) >= cap) return bs_err(err, "%s: value longer than the buffer", key);
        snprintf(buf, cap, "%s", v);
        return BS_OK;
    }
    return bs_err(err, "unknown key '%s'", key);
}

int config_dump(const bs_config *c, FILE *f) {
    size_t last_sec = 0;
    const char *last = NULL;
    for (size_t i = 0; i < N_KEYS; i++) {
        const cfg_key *k = &keys[i];
        size_t sl = section_len(k->name);
        if (k->type == T_MAP) {
            const bs_kvlist *l = (const bs_kvlist *)((const char *)c + k->off);
            fprintf(f, "%s:%s\n", k->name, l->n ? "" : " {}");
            for (size_t j = 0; j < l->n; j++) {
                fputs("  ", f);
                put_yaml_string(f, l->items[j].key);
                fputs(": ", f);
                put_yaml_string(f, config_is_secret(l->items[j].key) ? "***" : l->items[j].value);
                fputc('\n', f);
            }
            last = NULL;
            continue;
        }
        int scalar = k->name[sl] == '\0';
        if (!scalar && (!last || sl != last_sec || strncmp(last, k->name, sl) != 0))
            fprintf(f, "%.*s:\n", (int)sl, k->name);
        last = scalar ? NULL : k->name;
        last_sec = sl;
        char val[4096];
        value_text(c, k, val, sizeof val);
        fprintf(f, scalar ? "%s: " : "  %s: ", scalar ? k->name : k->name + sl + 1);
        if (k->type == T_STRING) {
            const char *s = *(char *const *)((const char *)c + k->off);
            put_yaml_string(f, config_is_secret(k->name) && *s ? "***" : s);
        } else {
            fputs(val, f);
        }
        fputc('\n', f);
    }
    return ferror(f) ? BS_ERR : BS_OK;
}

const char *config_vocab_path(const bs_config *c, char *buf, size_t cap) {
    if (*c->model.vocab)
        snprintf(buf, cap, "%s", c->model.vocab);
    else
        snprintf(buf, cap, "%s/vocab.txt", c->model.dir);
    return buf;
}

void config_apply_logging(const bs_config *c) {
    bs_log_set_level(log_levels[c->log.level]);
    bs_log_set_format(log_formats[c->log.format]);
}

const char *config_format_name(bs_format f) {
    return (unsigned)f < 4 ? formats_in[f] : "?";
}
const char *config_delivery_name(bs_delivery d) {
    return (unsigned)d < 2 ? deliveries[d] : "?";
}
