/* Prometheus metrics registry. Values are doubles kept as bits in 64-bit atomics (counters and sums are
 * added with a compare-and-swap loop), histogram buckets are per-bucket atomic counts made cumulative at
 * render time, so an update never takes a lock. Series pointers live in an array sized at registration
 * and are published with a release store of the count, so readers scan without the lock. */
#include "metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef BS_VERSION
#define BS_VERSION "unknown"
#endif

struct bs_series {
    _Atomic uint64_t value;    /* counter/gauge value (double bits) */
    _Atomic uint64_t sum;      /* histogram: sum of observations (double bits) */
    _Atomic int hidden;        /* gauge hidden until the next set */
    _Atomic uint64_t *buckets; /* histogram: (n_bounds + 1) counts, last = above every bound */
    char *raw;                 /* label value as given (NULL for an unlabelled family) */
    char *escaped;             /* label value escaped for the exposition format */
    bs_metric *family;
};

struct bs_metric {
    bs_metric_type type;
    char *name, *help, *label;
    double *bounds; /* histogram: (n_bounds) strictly increasing */
    int n_bounds;
    int max_series;
    bs_series **series; /* (max_series) */
    _Atomic int n_series;
    pthread_mutex_t lock; /* serialises series creation */
    bs_metric *next;
};

struct bs_metrics {
    pthread_mutex_t lock; /* registration and rendering */
    bs_metric *first, *last;
    void (*collect)(void *ctx);
    void *collect_ctx;
};

static double bits_to_double(uint64_t b) {
    double d;
    memcpy(&d, &b, sizeof d);
    return d;
}

static uint64_t double_to_bits(double d) {
    uint64_t b;
    memcpy(&b, &d, sizeof b);
    return b;
}

static void atomic_add_double(_Atomic uint64_t *p, double v) {
    uint64_t old = atomic_load_explicit(p, memory_order_relaxed), next;
    do {
        next = double_to_bits(bits_to_double(old) + v);
    } while (!atomic_compare_exchange_weak_explicit(p, &old, next, memory_order_relaxed, memory_order_relaxed));
}

/* ---- registry ---- */

bs_metrics *metrics_new(void) {
    bs_metrics *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    pthread_mutex_init(&r->lock, NULL);
    return r;
}

static void series_free(bs_series *s) {
    if (!s) return;
    free(s->buckets);
    free(s->raw);
    free(s->escaped);
    free(s);
}

static void family_free(bs_metric *m) {
    int n = atomic_load(&m->n_series);
    for (int i = 0; i < n; i++) series_free(m->series[i]);
    free(m->series);
    free(m->bounds);
    free(m->name);
    free(m->help);
    free(m->label);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void metrics_free(bs_metrics *r) {
    if (!r) return;
    for (bs_metric *m = r->first, *next; m; m = next) {
        next = m->next;
        family_free(m);
    }
    pthread_mutex_destroy(&r->lock);
    free(r);
}

static int valid_name(const char *s, int allow_colon) {
    if (!s || !*s) return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (allow_colon && c == ':') ||
                 (p > s && c >= '0' && c <= '9');
        if (!ok) return 0;
    }
    return 1;
}

/* Escapes for label values (\\ \" \n) or help text (\\ \n). */
static char *escape(const char *s, int quote) {
    size_t n = 0;
    for (const char *p = s; *p; p++) n += (*p == '\\' || *p == '\n' || (quote && *p == '"')) ? 2 : 1;
    char *out = malloc(n + 1), *o = out;
    if (!out) return NULL;
    for (const char *p = s; *p; p++) {
        if (*p == '\\' || (quote && *p == '"')) {
            *o++ = '\\';
            *o++ = *p;
        } else if (*p == '\n') {
            *o++ = '\\';
            *o++ = 'n';
        } else {
            *o++ = *p;
        }
    }
    *o = '\0';
    return out;
}

static bs_series *series_new(bs_metric *m, const char *label_value) {
    bs_series *s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->family = m;
    if (m->type == BS_METRIC_HISTOGRAM) {
        s->buckets = calloc((size_t)m->n_bounds + 1, sizeof *s->buckets);
        if (!s->buckets) goto err;
    }
    if (label_value) {
        s->raw = strdup(label_value);
        s->escaped = escape(label_value, 1);
        if (!s->raw || !s->escaped) goto err;
    }
    return s;
err:
    series_free(s);
    return NULL;
}

static bs_metric *family_new(bs_metrics *r, bs_metric_type type, const char *name, const char *help, const char *label,
                             const double *bounds, int n_bounds, int max_series, char *err) {
    if (!valid_name(name, 1)) {
        bs_err(err, "metric name '%s' is not a valid Prometheus name", name ? name : "(null)");
        return NULL;
    }
    if (label && (!valid_name(label, 0) || strncmp(label, "__", 2) == 0 ||
                  (type == BS_METRIC_HISTOGRAM && strcmp(label, "le") == 0))) {
        bs_err(err, "metric %s: label name '%s' is not allowed", name, label);
        return NULL;
    }
    if (type == BS_METRIC_HISTOGRAM) {
        if (n_bounds < 1 || !bounds) {
            bs_err(err, "metric %s: a histogram needs at least one bucket bound", name);
            return NULL;
        }
        for (int i = 0; i < n_bounds; i++)
            if (!isfinite(bounds[i]) || (i > 0 && bounds[i] <= bounds[i - 1])) {
                bs_err(err, "metric %s: bucket bounds must be finite and strictly increasing", name);
                return NULL;
            }
    }
    if (max_series <= 0) max_series = METRICS_DEFAULT_MAX_SERIES;
    if (!label) max_series = 1;

    bs_metric *m = calloc(1, sizeof *m);
    if (!m) goto oom;
    pthread_mutex_init(&m->lock, NULL);
    m->type = type;
    m->max_series = max_series;
    m->name = strdup(name);
    m->help = escape(help ? help : "", 0);
    m->label = label ? strdup(label) : NULL;
    m->series = calloc((size_t)max_series, sizeof *m->series);
    if (!m->name || !m->help || (label && !m->label) || !m->series) goto oom;
    if (type == BS_METRIC_HISTOGRAM) {
        m->bounds = malloc((size_t)n_bounds * sizeof *m->bounds);
        if (!m->bounds) goto oom;
        memcpy(m->bounds, bounds, (size_t)n_bounds * sizeof *bounds);
        m->n_bounds = n_bounds;
    }
    if (!label) { /* the one series exists from the start */
        m->series[0] = series_new(m, NULL);
        if (!m->series[0]) goto oom;
        atomic_store(&m->n_series, 1);
    }

    pthread_mutex_lock(&r->lock);
    for (bs_metric *o = r->first; o; o = o->next)
        if (strcmp(o->name, name) == 0) {
            pthread_mutex_unlock(&r->lock);
            bs_err(err, "metric %s is already registered", name);
            family_free(m);
            return NULL;
        }
    if (r->last)
        r->last->next = m;
    else
        r->first = m;
    r->last = m;
    pthread_mutex_unlock(&r->lock);
    return m;
oom:
    bs_err(err, "metric %s: out of memory", name);
    if (m) family_free(m);
    return NULL;
}

bs_metric *metrics_counter(bs_metrics *r, const char *name, const char *help, const char *label, int max_series,
                           char *err) {
    return family_new(r, BS_METRIC_COUNTER, name, help, label, NULL, 0, max_series, err);
}

bs_metric *metrics_gauge(bs_metrics *r, const char *name, const char *help, const char *label, int max_series,
                         char *err) {
    return family_new(r, BS_METRIC_GAUGE, name, help, label, NULL, 0, max_series, err);
}

bs_metric *metrics_histogram(bs_metrics *r, const char *name, const char *help, const char *label, const double *bounds,
                             int n_bounds, int max_series, char *err) {
    return family_new(r, BS_METRIC_HISTOGRAM, name, help, label, bounds, n_bounds, max_series, err);
}

static bs_series *find_series(bs_metric *m, int from, int to, const char *label_value) {
    for (int i = from; i < to; i++)
        if (strcmp(m->series[i]->raw, label_value) == 0) return m->series[i];
    return NULL;
}

bs_series *metrics_with(bs_metric *m, const char *label_value) {
    if (!m) return NULL;
    if (!m->label) return m->series[0];
    if (!label_value) label_value = "";
    int n = atomic_load_explicit(&m->n_series, memory_order_acquire);
    bs_series *s = find_series(m, 0, n, label_value);
    if (s) return s;
    pthread_mutex_lock(&m->lock);
    int n2 = atomic_load_explicit(&m->n_series, memory_order_relaxed);
    s = find_series(m, n, n2, label_value); /* another thread may have created it meanwhile */
    if (!s && n2 < m->max_series) {
        s = series_new(m, label_value);
        if (s) {
            m->series[n2] = s;
            atomic_store_explicit(&m->n_series, n2 + 1, memory_order_release);
        }
    }
    pthread_mutex_unlock(&m->lock);
    return s;
}

/* ---- updates ---- */

void metrics_inc(bs_series *s) {
    metrics_add(s, 1.0);
}

void metrics_add(bs_series *s, double v) {
    if (s) atomic_add_double(&s->value, v);
}

void metrics_set(bs_series *s, double v) {
    if (!s) return;
    atomic_store_explicit(&s->value, double_to_bits(v), memory_order_relaxed);
    if (atomic_load_explicit(&s->hidden, memory_order_relaxed))
        atomic_store_explicit(&s->hidden, 0, memory_order_relaxed);
}

void metrics_hide(bs_series *s) {
    if (s) atomic_store_explicit(&s->hidden, 1, memory_order_relaxed);
}

void metrics_observe(bs_series *s, double v) {
    if (!s || !s->buckets) return;
    const bs_metric *m = s->family;
    int lo = 0, hi = m->n_bounds; /* first bound >= v; n_bounds when above all (NaN lands there too) */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (v <= m->bounds[mid])
            hi = mid;
        else
            lo = mid + 1;
    }
    atomic_fetch_add_explicit(&s->buckets[lo], 1, memory_order_relaxed);
    atomic_add_double(&s->sum, v);
}

double metrics_value(const bs_series *s) {
    if (!s) return 0;
    if (s->buckets) {
        uint64_t n = 0;
        for (int i = 0; i <= s->family->n_bounds; i++) n += atomic_load_explicit(&s->buckets[i], memory_order_relaxed);
        return (double)n;
    }
    return bits_to_double(atomic_load_explicit(&((bs_series *)s)->value, memory_order_relaxed));
}

double metrics_sum(const bs_series *s) {
    if (!s) return 0;
    return bits_to_double(atomic_load_explicit(&((bs_series *)s)->sum, memory_order_relaxed));
}

void metrics_on_collect(bs_metrics *r, void (*fn)(void *ctx), void *ctx) {
    pthread_mutex_lock(&r->lock);
    r->collect = fn;
    r->collect_ctx = ctx;
    pthread_mutex_unlock(&r->lock);
}

/* ---- rendering ---- */

typedef struct {
    char *buf;
    size_t cap, len; /* len counts every byte, even those past cap */
} writer;

BS_PRINTF(2, 3) static void wr(writer *w, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    size_t room = w->len < w->cap ? w->cap - w->len : 0;
    int n = vsnprintf(room ? w->buf + w->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n > 0) w->len += (size_t)n;
}

/* Prometheus float text: shortest round-trip form, +Inf/-Inf/NaN spelled its way. */
static const char *num(char *buf, size_t cap, double v) {
    if (isnan(v)) return "NaN";
    if (isinf(v)) return v > 0 ? "+Inf" : "-Inf";
    for (int p = 15; p <= 17; p++) {
        snprintf(buf, cap, "%.*g", p, v);
        if (strtod(buf, NULL) == v) break;
    }
    return buf;
}

static void render_family(writer *w, bs_metric *m) {
    static const char *const types[] = {"counter", "gauge", "histogram"};
    char a[40], b[40];
    if (m->help[0]) wr(w, "# HELP %s %s\n", m->name, m->help); /* an empty HELP line is left out */
    wr(w, "# TYPE %s %s\n", m->name, types[m->type]);
    int n = atomic_load_explicit(&m->n_series, memory_order_acquire);
    for (int i = 0; i < n; i++) {
        bs_series *s = m->series[i];
        /* "{label="v"" without the closing brace, so a histogram can append le. */
        char open[8] = "";
        const char *lname = m->label ? m->label : "", *lval = s->escaped ? s->escaped : "";
        if (m->type != BS_METRIC_HISTOGRAM) {
            if (atomic_load_explicit(&s->hidden, memory_order_relaxed)) continue;
            if (m->label)
                wr(w, "%s{%s=\"%s\"} %s\n", m->name, lname, lval, num(a, sizeof a, metrics_value(s)));
            else
                wr(w, "%s %s\n", m->name, num(a, sizeof a, metrics_value(s)));
            continue;
        }
        if (m->label) snprintf(open, sizeof open, ",");
        uint64_t cum = 0;
        for (int j = 0; j <= m->n_bounds; j++) {
            cum += atomic_load_explicit(&s->buckets[j], memory_order_relaxed);
            const char *le = j < m->n_bounds ? num(a, sizeof a, m->bounds[j]) : "+Inf";
            if (m->label)
                wr(w, "%s_bucket{%s=\"%s\"%sle=\"%s\"} %llu\n", m->name, lname, lval, open, le,
                   (unsigned long long)cum);
            else
                wr(w, "%s_bucket{le=\"%s\"} %llu\n", m->name, le, (unsigned long long)cum);
        }
        /* _count is the +Inf bucket as read above, so the two always agree in one scrape. */
        if (m->label) {
            wr(w, "%s_sum{%s=\"%s\"} %s\n", m->name, lname, lval, num(b, sizeof b, metrics_sum(s)));
            wr(w, "%s_count{%s=\"%s\"} %llu\n", m->name, lname, lval, (unsigned long long)cum);
        } else {
            wr(w, "%s_sum %s\n", m->name, num(b, sizeof b, metrics_sum(s)));
            wr(w, "%s_count %llu\n", m->name, (unsigned long long)cum);
        }
    }
}

size_t metrics_render(bs_metrics *r, char *buf, size_t cap) {
    writer w = {buf, cap, 0};
    pthread_mutex_lock(&r->lock);
    if (r->collect) r->collect(r->collect_ctx);
    for (bs_metric *m = r->first; m; m = m->next) render_family(&w, m);
    pthread_mutex_unlock(&r->lock);
    if (cap) buf[w.len < cap ? w.len : cap - 1] = '\0';
    return w.len;
}

char *metrics_render_alloc(bs_metrics *r, size_t *len) {
    size_t cap = 16384;
    for (int tries = 0; tries < 8; tries++) { /* series may appear between two renders: retry bigger */
        char *buf = malloc(cap);
        if (!buf) return NULL;
        size_t n = metrics_render(r, buf, cap);
        if (n < cap) {
            if (len) *len = n;
            return buf;
        }
        free(buf);
        cap = n + 4096;
    }
    return NULL;
}

/* ---- the worker's metrics ---- */

bs_worker_metrics *metrics_worker_new(char *err) {
    static const double seqs[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536};
    static const double toks[] = {64,    128,   256,   512,    1024,   2048,   4096,   8192,
                                  16384, 32768, 65536, 131072, 262144, 524288, 1048576};
    static const double enc[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};
    static const double e2e[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300};
#define NB(a) (int)(sizeof(a) / sizeof(a[0]))
    bs_worker_metrics *w = calloc(1, sizeof *w);
    if (!w || !(w->registry = metrics_new())) {
        free(w);
        bs_err(err, "out of memory");
        return NULL;
    }
    bs_metrics *r = w->registry;
    bs_metric *m;
#define SERIES(field, call)                                                                                            \
    do {                                                                                                               \
        if (!(m = (call))) goto err;                                                                                   \
        w->field = metrics_with(m, NULL);                                                                              \
    } while (0)
#define FAMILY(field, call)                                                                                            \
    do {                                                                                                               \
        if (!(w->field = (call))) goto err;                                                                            \
    } while (0)
    SERIES(consumed, metrics_counter(r, "bertstream_messages_consumed_total", "Messages read from the input topic.",
                                     NULL, 0, err));
    SERIES(scored, metrics_counter(r, "bertstream_messages_scored_total",
                                   "Results acknowledged by the broker on the output topic.", NULL, 0, err));
    FAMILY(dead_letters,
           metrics_counter(r, "bertstream_dead_letters_total",
                           "Input messages sent to the dead-letter topic, by error code.", "code", 64, err));
    SERIES(batch_sequences, metrics_histogram(r, "bertstream_batch_sequences", "Sequences per encoder batch.", NULL,
                                              seqs, NB(seqs), 0, err));
    SERIES(batch_tokens, metrics_histogram(r, "bertstream_batch_tokens", "Tokens per encoder batch (no padding).", NULL,
                                           toks, NB(toks), 0, err));
    SERIES(encode_seconds, metrics_histogram(r, "bertstream_encode_seconds",
                                             "Seconds per encoder forward pass and head.", NULL, enc, NB(enc), 0, err));
    SERIES(end_to_end_seconds,
           metrics_histogram(r, "bertstream_end_to_end_seconds",
                             "Seconds from the input message timestamp to the acknowledgement of its result.", NULL,
                             e2e, NB(e2e), 0, err));
    SERIES(head_version,
           metrics_gauge(r, "bertstream_head_version", "Version of the head in use (0 = from a file).", NULL, 0, err));
    FAMILY(consumer_lag, metrics_gauge(r, "bertstream_consumer_lag",
                                       "Messages between the committed offset and the end of each assigned partition.",
                                       "partition", 4096, err));
    FAMILY(heads_rejected,
           metrics_counter(r, "bertstream_heads_rejected_total",
                           "Heads from the heads topic that failed validation, by reason.", "reason", 64, err));
    SERIES(gpu_busy_ratio,
           metrics_gauge(r, "bertstream_gpu_busy_ratio",
                         "Share of wall time the encoder spent in forward passes (0..1).", NULL, 0, err));
    SERIES(gpu_busy_seconds,
           metrics_counter(r, "bertstream_gpu_busy_seconds_total",
                           "Seconds with at least one batch in the encoder (overlapping batches count once).", NULL, 0,
                           err));
    FAMILY(build_info,
           metrics_gauge(r, "bertstream_build_info", "Build of the running worker (always 1).", "version", 4, err));
    metrics_set(metrics_with(w->build_info, BS_VERSION), 1);
    return w;
#undef SERIES
#undef FAMILY
#undef NB
err:
    metrics_worker_free(w);
    return NULL;
}

void metrics_worker_free(bs_worker_metrics *w) {
    if (!w) return;
    metrics_free(w->registry);
    free(w);
}
