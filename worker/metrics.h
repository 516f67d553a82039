/* Metrics: a registry of counters, gauges and histograms rendered as Prometheus text (format 0.0.4).
 * Updates are lock-free atomics on preallocated series, safe from any thread and allocation-free;
 * a labelled series is created once, on first use, under the family's lock. */
#ifndef BS_METRICS_H
#define BS_METRICS_H

#include <stddef.h>

#include "common.h"

typedef struct bs_metrics bs_metrics; /* the registry */
typedef struct bs_metric bs_metric;   /* one family: a name, help, type, at most one label name */
typedef struct bs_series bs_series;   /* one time series of a family (one label value) */

typedef enum { BS_METRIC_COUNTER, BS_METRIC_GAUGE, BS_METRIC_HISTOGRAM } bs_metric_type;

/* Most series one labelled family holds when max_series is 0 at registration. */
#define METRICS_DEFAULT_MAX_SERIES 512

bs_metrics *metrics_new(void);
/* Frees the registry and every family and series in it. No update may run concurrently. */
void metrics_free(bs_metrics *r);

/* Registers a family. label is NULL for an unlabelled family, else a label name ([a-zA-Z_][a-zA-Z0-9_]*,
 * not "le" for histograms). max_series bounds the label values (0 = METRICS_DEFAULT_MAX_SERIES).
 * Histogram bounds are the finite upper bounds, strictly increasing; +Inf is implied.
 * NULL + err on a bad or duplicate name. Register at start-up, before the hot path. */
bs_metric *metrics_counter(bs_metrics *r, const char *name, const char *help, const char *label, int max_series,
                           char *err);
bs_metric *metrics_gauge(bs_metrics *r, const char *name, const char *help, const char *label, int max_series,
                         char *err);
bs_metric *metrics_histogram(bs_metrics *r, const char *name, const char *help, const char *label, const double *bounds,
                             int n_bounds, int max_series, char *err);

/* The series for a label value (NULL for an unlabelled family), created on first use. The pointer is
 * stable until metrics_free: cache it. Returns NULL when the family already holds max_series values;
 * every update below ignores a NULL series, so a flood of label values cannot grow memory. */
bs_series *metrics_with(bs_metric *m, const char *label_value);

/* Hot-path updates: atomic, no locks, no allocation. */
void metrics_inc(bs_series *s);               /* counter or gauge += 1 */
void metrics_add(bs_series *s, double v);     /* counter (v >= 0) or gauge += v */
void metrics_set(bs_series *s, double v);     /* gauge = v (also shows a hidden series again) */
void metrics_observe(bs_series *s, double v); /* histogram: one observation */
/* A gauge series disappears from the output until its next metrics_set (e.g. the lag of a revoked
 * partition). */
void metrics_hide(bs_series *s);

/* Current value of a counter or gauge; for a histogram, its count. (For tests and the worker's logs.) */
double metrics_value(const bs_series *s);
/* Histogram sum of observations. */
double metrics_sum(const bs_series *s);

/* fn runs at the start of every render, under the registry lock, on the rendering (HTTP) thread: it may
 * update series (e.g. refresh consumer lag) but must not register families. One per registry. */
void metrics_on_collect(bs_metrics *r, void (*fn)(void *ctx), void *ctx);

/* Renders the exposition text into buf (NUL-terminated when cap > 0). Returns the length the whole text
 * needs without the NUL, like snprintf: a return >= cap means it was cut. */
size_t metrics_render(bs_metrics *r, char *buf, size_t cap);
/* The exposition text in a malloc'd buffer (free() it); *len gets its length. NULL on out of memory. */
char *metrics_render_alloc(bs_metrics *r, size_t *len);

/* The worker's metrics, registered in one registry with the names DESIGN.md fixes. */
typedef struct {
    bs_metrics *registry;
    bs_series *consumed;           /* bertstream_messages_consumed_total */
    bs_series *scored;             /* bertstream_messages_scored_total */
    bs_metric *dead_letters;       /* bertstream_dead_letters_total{code} */
    bs_series *batch_sequences;    /* bertstream_batch_sequences (histogram) */
    bs_series *batch_tokens;       /* bertstream_batch_tokens (histogram) */
    bs_series *encode_seconds;     /* bertstream_encode_seconds (histogram) */
    bs_series *end_to_end_seconds; /* bertstream_end_to_end_seconds (histogram, input timestamp -> ack) */
    bs_series *head_version;       /* bertstream_head_version (gauge) */
    bs_metric *consumer_lag;       /* bertstream_consumer_lag{partition} (gauge) */
    bs_metric *heads_rejected;     /* bertstream_heads_rejected_total{reason} */
    bs_series *gpu_busy_ratio;     /* bertstream_gpu_busy_ratio (gauge, 0..1) */
    bs_series *gpu_busy_seconds;   /* bertstream_gpu_busy_seconds_total (counter: the ratio's numerator) */
    bs_metric *build_info;         /* bertstream_build_info{version} (gauge, 1) */
} bs_worker_metrics;

/* Registers every worker metric (build_info{version=BS_VERSION} set to 1). NULL + err on failure. */
bs_worker_metrics *metrics_worker_new(char *err);
void metrics_worker_free(bs_worker_metrics *w);

#endif
