/* Metrics registry: exact Prometheus text for a small registry, escaping, limits, thread safety of
 * updates and series creation, and the worker's pre-registered metric names. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "test.h"

static char err[BS_ERRLEN];

static void metrics_render_small_registry_exactly(void) {
    bs_metrics *r = metrics_new();
    bs_metric *c = metrics_counter(r, "t_requests_total", "Requests.", NULL, 0, err);
    bs_metric *dl = metrics_counter(r, "t_errors_total", "Errors by code.", "code", 0, err);
    bs_metric *g = metrics_gauge(r, "t_temperature", "Temperature.", NULL, 0, err);
    static const double bounds[] = {0.1, 1};
    bs_metric *h = metrics_histogram(r, "t_seconds", "Latency.", NULL, bounds, 2, 0, err);
    bs_metric *hl = metrics_histogram(r, "t_size", "Size by kind.", "kind", bounds, 2, 0, err);
    bs_metric *empty = metrics_gauge(r, "t_lag", "Lag.", "partition", 0, err);
    CHECK(c && dl && g && h && hl && empty);
    metrics_inc(metrics_with(c, NULL));
    metrics_add(metrics_with(c, NULL), 2);
    metrics_inc(metrics_with(dl, "bad_utf8"));
    metrics_add(metrics_with(dl, "decode"), 4);
    metrics_inc(metrics_with(dl, "bad_utf8"));
    metrics_set(metrics_with(g, NULL), -1.5);
    bs_series *hs = metrics_with(h, NULL);
    metrics_observe(hs, 0.05);
    metrics_observe(hs, 0.1); /* bounds are inclusive: le="0.1" */
    metrics_observe(hs, 0.5);
    metrics_observe(hs, 5);
    metrics_observe(metrics_with(hl, "a"), 2);
    char buf[4096];
    size_t n = metrics_render(r, buf, sizeof buf);
    const char *want = "# HELP t_requests_total Requests.\n"
                       "# TYPE t_requests_total counter\n"
                       "t_requests_total 3\n"
                       "# HELP t_errors_total Errors by code.\n"
                       "# TYPE t_errors_total counter\n"
                       "t_errors_total{code=\"bad_utf8\"} 2\n"
                       "t_errors_total{code=\"decode\"} 4\n"
                       "# HELP t_temperature Temperature.\n"
                       "# TYPE t_temperature gauge\n"
                       "t_temperature -1.5\n"
                       "# HELP t_seconds Latency.\n"
                       "# TYPE t_seconds histogram\n"
                       "t_seconds_bucket{le=\"0.1\"} 2\n"
                       "t_seconds_bucket{le=\"1\"} 3\n"
                       "t_seconds_bucket{le=\"+Inf\"} 4\n"
                       "t_seconds_sum 5.65\n"
                       "t_seconds_count 4\n"
                       "# HELP t_size Size by kind.\n"
                       "# TYPE t_size histogram\n"
                       "t_size_bucket{kind=\"a\",le=\"0.1\"} 0\n"
                       "t_size_bucket{kind=\"a\",le=\"1\"} 0\n"
                       "t_size_bucket{kind=\"a\",le=\"+Inf\"} 1\n"
                       "t_size_sum{kind=\"a\"} 2\n"
                       "t_size_count{kind=\"a\"} 1\n"
                       "# HELP t_lag Lag.\n"
                       "# TYPE t_lag gauge\n";
    CHECK_STR(buf, want);
    CHECK_INT(n, strlen(want));
    CHECK_INT(metrics_value(hs), 4);
    CHECK_NEAR(metrics_sum(hs), 5.65, 1e-12);
    metrics_free(r);
}

static void metrics_escape_label_values_and_help(void) {
    bs_metrics *r = metrics_new();
    bs_metric *c = metrics_counter(r, "t_total", "Line one\nback\\slash \"quoted\"", "reason", 0, err);
    metrics_inc(metrics_with(c, "a\"b\\c\nd"));
    char buf[1024];
    metrics_render(r, buf, sizeof buf);
    CHECK_STR(buf, "# HELP t_total Line one\\nback\\\\slash \"quoted\"\n"
                   "# TYPE t_total counter\n"
                   "t_total{reason=\"a\\\"b\\\\c\\nd\"} 1\n");
    metrics_free(r);
}

static void metrics_numbers_use_shortest_round_trip_text(void) {
    bs_metrics *r = metrics_new();
    bs_metric *g = metrics_gauge(r, "g", "", "k", 0, err);
    metrics_set(metrics_with(g, "a"), 0.1 + 0.2);
    metrics_set(metrics_with(g, "b"), 1e21);
    metrics_set(metrics_with(g, "c"), INFINITY);
    metrics_set(metrics_with(g, "d"), -INFINITY);
    metrics_set(metrics_with(g, "e"), NAN);
    metrics_set(metrics_with(g, "f"), 123456789012.0);
    char buf[1024];
    metrics_render(r, buf, sizeof buf);
    CHECK_STR(buf, "# TYPE g gauge\n"
                   "g{k=\"a\"} 0.30000000000000004\n"
                   "g{k=\"b\"} 1e+21\n"
                   "g{k=\"c\"} +Inf\n"
                   "g{k=\"d\"} -Inf\n"
                   "g{k=\"e\"} NaN\n"
                   "g{k=\"f\"} 123456789012\n");
    metrics_free(r);
}

static void metrics_rejects_bad_and_duplicate_names(void) {
    bs_metrics *r = metrics_new();
    static const double b[] = {1, 2}, bad[] = {2, 1};
    CHECK(metrics_counter(r, "ok_total", "", NULL, 0, err) != NULL);
    CHECK(metrics_counter(r, "ok_total", "", NULL, 0, err) == NULL);
    CHECK_STR(err, "metric ok_total is already registered");
    CHECK(metrics_gauge(r, "9lives", "", NULL, 0, err) == NULL);
    CHECK_STR(err, "metric name '9lives' is not a valid Prometheus name");
    CHECK(metrics_gauge(r, "has-dash", "", NULL, 0, err) == NULL);
    CHECK(metrics_gauge(r, "g", "", "bad label", 0, err) == NULL);
    CHECK_STR(err, "metric g: label name 'bad label' is not allowed");
    CHECK(metrics_gauge(r, "g", "", "__reserved", 0, err) == NULL);
    CHECK(metrics_histogram(r, "h", "", "le", b, 2, 0, err) == NULL);
    CHECK_STR(err, "metric h: label name 'le' is not allowed");
    CHECK(metrics_histogram(r, "h", "", NULL, bad, 2, 0, err) == NULL);
    CHECK_STR(err, "metric h: bucket bounds must be finite and strictly increasing");
    CHECK(metrics_histogram(r, "h", "", NULL, b, 0, 0, err) == NULL);
    CHECK_STR(err, "metric h: a histogram needs at least one bucket bound");
    CHECK(metrics_histogram(r, "h", "", NULL, b, 2, 0, err) != NULL);
    metrics_free(r);
}

static void metrics_series_limit_returns_null_and_updates_ignore_it(void) {
    bs_metrics *r = metrics_new();
    bs_metric *c = metrics_counter(r, "c_total", "", "k", 2, err);
    bs_series *a = metrics_with(c, "a"), *b = metrics_with(c, "b");
    CHECK(a && b && a != b);
    CHECK(metrics_with(c, "a") == a); /* the same pointer every time */
    CHECK(metrics_with(c, "c") == NULL);
    metrics_inc(NULL); /* no-ops */
    metrics_add(NULL, 1);
    metrics_set(NULL, 1);
    metrics_observe(NULL, 1);
    metrics_hide(NULL);
    metrics_inc(a);
    char buf[256];
    metrics_render(r, buf, sizeof buf);
    CHECK_STR(buf, "# TYPE c_total counter\nc_total{k=\"a\"} 1\nc_total{k=\"b\"} 0\n");
    metrics_free(r);
}

static void metrics_render_returns_full_length_when_cut(void) {
    bs_metrics *r = metrics_new();
    metrics_inc(metrics_with(metrics_counter(r, "c_total", "Help.", NULL, 0, err), NULL));
    char full[256], small[10];
    size_t n = metrics_render(r, full, sizeof full);
    CHECK_INT(metrics_render(r, small, sizeof small), n);
    CHECK_INT(strlen(small), sizeof small - 1);
    CHECK(strncmp(small, full, sizeof small - 1) == 0);
    CHECK_INT(metrics_render(r, NULL, 0), n);
    size_t len = 0;
    char *a = metrics_render_alloc(r, &len);
    CHECK_INT(len, n);
    CHECK_STR(a, full);
    free(a);
    metrics_free(r);
}

static void metrics_hidden_gauge_returns_on_next_set(void) {
    bs_metrics *r = metrics_new();
    bs_metric *lag = metrics_gauge(r, "lag", "", "partition", 0, err);
    metrics_set(metrics_with(lag, "0"), 5);
    metrics_set(metrics_with(lag, "1"), 7);
    metrics_hide(metrics_with(lag, "0"));
    char buf[256];
    metrics_render(r, buf, sizeof buf);
    CHECK_STR(buf, "# TYPE lag gauge\nlag{partition=\"1\"} 7\n");
    metrics_set(metrics_with(lag, "0"), 3);
    metrics_render(r, buf, sizeof buf);
    CHECK_STR(buf, "# TYPE lag gauge\nlag{partition=\"0\"} 3\nlag{partition=\"1\"} 7\n");
    metrics_free(r);
}

static int collect_calls;
static void collect(void *ctx) {
    collect_calls++;
    metrics_set(ctx, collect_calls * 10);
}

static void metrics_collect_callback_runs_before_each_render(void) {
    bs_metrics *r = metrics_new();
    bs_series *g = metrics_with(metrics_gauge(r, "g", "", NULL, 0, err), NULL);
    metrics_on_collect(r, collect, g);
    char buf[256];
    metrics_render(r, buf, sizeof buf);
    metrics_render(r, buf, sizeof buf);
    CHECK_INT(collect_calls, 2);
    CHECK_STR(buf, "# TYPE g gauge\ng 20\n");
    metrics_free(r);
}

enum { THREADS = 4, ITERS = 50000 };
typedef struct {
    bs_metric *labelled;
    bs_series *counter, *hist;
    int id;
} worker_arg;

static void *hammer(void *p) {
    worker_arg *a = p;
    char label[16];
    for (int i = 0; i < ITERS; i++) {
        metrics_inc(a->counter);
        metrics_observe(a->hist, (double)(i % 4));
        snprintf(label, sizeof label, "p%d", i % 37); /* every thread races to create the same 37 series */
        metrics_add(metrics_with(a->labelled, label), 0.5);
    }
    return NULL;
}

static void metrics_concurrent_updates_are_not_lost(void) {
    bs_metrics *r = metrics_new();
    static const double b[] = {0.5, 1.5, 2.5};
    bs_metric *lab = metrics_counter(r, "lab_total", "", "p", 64, err);
    worker_arg args[THREADS];
    pthread_t th[THREADS];
    bs_series *cnt = metrics_with(metrics_counter(r, "n_total", "", NULL, 0, err), NULL);
    bs_series *hist = metrics_with(metrics_histogram(r, "h", "", NULL, b, 3, 0, err), NULL);
    for (int t = 0; t < THREADS; t++) {
        args[t] = (worker_arg){lab, cnt, hist, t};
        pthread_create(&th[t], NULL, hammer, &args[t]);
    }
    for (int t = 0; t < THREADS; t++) pthread_join(th[t], NULL);
    CHECK_INT(metrics_value(cnt), THREADS * ITERS);
    CHECK_INT(metrics_value(hist), THREADS * ITERS);
    CHECK_NEAR(metrics_sum(hist), THREADS * (ITERS / 4) * (0 + 1 + 2 + 3), 0);
    double total = 0;
    int distinct = 0;
    for (int i = 0; i < 37; i++) {
        char label[16];
        snprintf(label, sizeof label, "p%d", i);
        total += metrics_value(metrics_with(lab, label));
    }
    size_t len;
    char *text = metrics_render_alloc(r, &len);
    for (char *p = text; (p = strstr(p, "lab_total{")); p++) distinct++;
    free(text);
    CHECK_INT(distinct, 37); /* no label value was created twice */
    CHECK_NEAR(total, THREADS * ITERS * 0.5, 0);
    metrics_free(r);
}

static void metrics_worker_registers_design_names(void) {
    bs_worker_metrics *w = metrics_worker_new(err);
    CHECK(w != NULL);
    if (!w) return;
    metrics_inc(w->consumed);
    metrics_inc(w->scored);
    metrics_inc(metrics_with(w->dead_letters, "invalid_utf8"));
    metrics_observe(w->batch_sequences, 3);
    metrics_observe(w->batch_tokens, 300);
    metrics_observe(w->encode_seconds, 0.004);
    metrics_observe(w->end_to_end_seconds, 0.2);
    metrics_set(w->head_version, 42);
    metrics_set(metrics_with(w->consumer_lag, "3"), 17);
    metrics_inc(metrics_with(w->heads_rejected, "bad_signature"));
    metrics_set(w->gpu_busy_ratio, 0.75);
    metrics_add(w->gpu_busy_seconds, 1.5);
    metrics_add(w->gpu_busy_seconds, 0.25);
    size_t len;
    char *t = metrics_render_alloc(w->registry, &len);
    CHECK_CONTAINS(t, "# TYPE bertstream_messages_consumed_total counter\nbertstream_messages_consumed_total 1\n");
    CHECK_CONTAINS(t, "# TYPE bertstream_messages_scored_total counter\nbertstream_messages_scored_total 1\n");
    CHECK_CONTAINS(t, "bertstream_dead_letters_total{code=\"invalid_utf8\"} 1\n");
    CHECK_CONTAINS(t, "# TYPE bertstream_batch_sequences histogram\n");
    CHECK_CONTAINS(t, "bertstream_batch_sequences_bucket{le=\"2\"} 0\nbertstream_batch_sequences_bucket{le=\"4\"} 1\n");
    CHECK_CONTAINS(t, "bertstream_batch_sequences_bucket{le=\"65536\"} 1\n");
    CHECK_CONTAINS(t, "bertstream_batch_tokens_bucket{le=\"512\"} 1\n");
    CHECK_CONTAINS(t, "bertstream_batch_tokens_bucket{le=\"1048576\"} 1\n");
    CHECK_CONTAINS(
        t, "bertstream_encode_seconds_bucket{le=\"0.0025\"} 0\nbertstream_encode_seconds_bucket{le=\"0.005\"} 1\n");
    CHECK_CONTAINS(t, "bertstream_end_to_end_seconds_bucket{le=\"0.25\"} 1\n");
    CHECK_CONTAINS(t, "bertstream_end_to_end_seconds_count 1\n");
    CHECK_CONTAINS(t, "# TYPE bertstream_head_version gauge\nbertstream_head_version 42\n");
    CHECK_CONTAINS(t, "bertstream_consumer_lag{partition=\"3\"} 17\n");
    CHECK_CONTAINS(t, "bertstream_heads_rejected_total{reason=\"bad_signature\"} 1\n");
    CHECK_CONTAINS(t, "bertstream_gpu_busy_ratio 0.75\n");
    CHECK_CONTAINS(t, "# TYPE bertstream_gpu_busy_seconds_total counter\nbertstream_gpu_busy_seconds_total 1.75\n");
    CHECK_CONTAINS(t, "bertstream_build_info{version=\"" BS_VERSION "\"} 1\n");
    free(t);
    metrics_worker_free(w);
}

int main(void) {
    RUN(metrics_render_small_registry_exactly);
    RUN(metrics_escape_label_values_and_help);
    RUN(metrics_numbers_use_shortest_round_trip_text);
    RUN(metrics_rejects_bad_and_duplicate_names);
    RUN(metrics_series_limit_returns_null_and_updates_ignore_it);
    RUN(metrics_render_returns_full_length_when_cut);
    RUN(metrics_hidden_gauge_returns_on_next_set);
    RUN(metrics_collect_callback_runs_before_each_render);
    RUN(metrics_concurrent_updates_are_not_lost);
    RUN(metrics_worker_registers_design_names);
    return bs_test_done();
}
