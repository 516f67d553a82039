/* HTTP endpoints: starts the server on 127.0.0.1:0 and talks to it over a plain socket, checking
 * status lines, content types and bodies of /metrics, /healthz, /readyz, 404 and 405. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "http.h"
#include "test.h"

static char err[BS_ERRLEN];

typedef struct {
    char status[64]; /* "HTTP/1.1 200 OK" */
    char headers[1024];
    char body[8192];
} response;

/* Sends one raw request and reads until the server closes the connection. */
static int request(int port, const char *raw, response *out) {
    memset(out, 0, sizeof *out);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    size_t left = strlen(raw);
    for (const char *p = raw; left;) {
        ssize_t n = write(fd, p, left);
        if (n <= 0) break;
        p += n;
        left -= (size_t)n;
    }
    static char buf[16384];
    size_t len = 0;
    for (ssize_t n; len + 1 < sizeof buf && (n = read(fd, buf + len, sizeof buf - 1 - len)) > 0;) len += (size_t)n;
    buf[len] = '\0';
    close(fd);
    char *eol = strstr(buf, "\r\n"), *eoh = strstr(buf, "\r\n\r\n");
    if (!eol || !eoh) return -1;
    snprintf(out->status, sizeof out->status, "%.*s", (int)(eol - buf), buf);
    snprintf(out->headers, sizeof out->headers, "%.*s", (int)(eoh - eol), eol);
    snprintf(out->body, sizeof out->body, "%s", eoh + 4);
    return 0;
}

static int get(int port, const char *path, response *out) {
    char raw[512];
    snprintf(raw, sizeof raw, "GET %s HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", path);
    return request(port, raw, out);
}

static void http_serves_metrics_health_and_errors(void) {
    bs_metrics *m = metrics_new();
    bs_series *c = metrics_with(metrics_counter(m, "t_total", "Things.", NULL, 0, err), NULL);
    metrics_add(c, 5);
    bs_http_opts opts = {.metrics = m};
    bs_http *h = http_start("127.0.0.1:0", &opts, err);
    CHECK(h != NULL);
    if (!h) {
        fprintf(stderr, "%s\n", err);
        metrics_free(m);
        return;
    }
    int port = http_port(h);
    CHECK(port > 0 && port < 65536);
    response r;
    CHECK_INT(get(port, "/metrics", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 200 OK");
    CHECK_CONTAINS(r.headers, "\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8");
    CHECK_STR(r.body, "# HELP t_total Things.\n# TYPE t_total counter\nt_total 5\n");
    metrics_inc(c); /* every scrape renders the current values */
    CHECK_INT(get(port, "/metrics?x=1", &r), 0);
    CHECK_STR(r.body, "# HELP t_total Things.\n# TYPE t_total counter\nt_total 6\n");

    CHECK_INT(get(port, "/healthz", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 200 OK");
    CHECK_CONTAINS(r.headers, "\r\nContent-Type: text/plain; charset=utf-8");
    CHECK_STR(r.body, "ok\n");

    CHECK_INT(get(port, "/nope", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 404 Not Found");
    CHECK_STR(r.body, "not found\n");
    CHECK_INT(get(port, "/metrics/", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 404 Not Found");

    CHECK_INT(
        request(port, "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 405 Method Not Allowed");
    CHECK_CONTAINS(r.headers, "\r\nAllow: GET, HEAD");
    CHECK_STR(r.body, "method not allowed\n");
    CHECK_INT(request(port, "DELETE /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 405 Method Not Allowed");

    CHECK_INT(request(port, "HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 200 OK");
    CHECK_STR(r.body, "");

    /* HTTP/1.0 clients (some probes) get an answer too */
    CHECK_INT(request(port, "GET /healthz HTTP/1.0\r\n\r\n", &r), 0);
    CHECK_CONTAINS(r.status, " 200 OK");
    CHECK_STR(r.body, "ok\n");
    http_stop(h);
    metrics_free(m);
}

static void http_readyz_follows_flags(void) {
    bs_http *h = http_start("127.0.0.1:0", NULL, err);
    CHECK(h != NULL);
    if (!h) return;
    int port = http_port(h);
    response r;
    CHECK_INT(get(port, "/readyz", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 503 Service Unavailable");
    CHECK_STR(r.body, "not ready: model not loaded, head not loaded, no partitions assigned\n");
    http_set_ready(h, BS_READY_MODEL, 1);
    http_set_ready(h, BS_READY_HEAD, 1);
    CHECK_INT(get(port, "/readyz", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 503 Service Unavailable");
    CHECK_STR(r.body, "not ready: no partitions assigned\n");
    http_set_ready(h, BS_READY_PARTITIONS, 1);
    CHECK_INT(get(port, "/readyz", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 200 OK");
    CHECK_STR(r.body, "ready\n");
    http_set_ready(h, BS_READY_HEAD, 0); /* e.g. a rebalance or a rejected head */
    CHECK_INT(get(port, "/readyz", &r), 0);
    CHECK_STR(r.body, "not ready: head not loaded\n");
    /* /metrics without a registry is an empty 200 */
    CHECK_INT(get(port, "/metrics", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 200 OK");
    CHECK_STR(r.body, "");
    http_stop(h);

    /* a reduced requirement: no head needed */
    bs_http_opts o = {.required = BS_READY_MODEL | BS_READY_PARTITIONS};
    h = http_start("127.0.0.1:0", &o, err);
    CHECK(h != NULL);
    if (!h) return;
    http_set_ready(h, BS_READY_MODEL | BS_READY_PARTITIONS, 1);
    CHECK_INT(get(http_port(h), "/readyz", &r), 0);
    CHECK_STR(r.body, "ready\n");
    http_stop(h);
}

static int ready_calls;
static int ready_cb(void *ctx, char *reason, size_t cap) {
    ready_calls++;
    if (*(int *)ctx) return 1;
    snprintf(reason, cap, "draining");
    return 0;
}

static void http_readyz_uses_callback_when_given(void) {
    int ok = 0;
    bs_http_opts o = {.ready = ready_cb, .ctx = &ok};
    bs_http *h = http_start("127.0.0.1:0", &o, err);
    CHECK(h != NULL);
    if (!h) return;
    response r;
    CHECK_INT(get(http_port(h), "/readyz", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 503 Service Unavailable");
    CHECK_STR(r.body, "not ready: draining\n");
    ok = 1;
    CHECK_INT(get(http_port(h), "/readyz", &r), 0);
    CHECK_STR(r.status, "HTTP/1.1 200 OK");
    CHECK_STR(r.body, "ready\n");
    CHECK_INT(ready_calls, 2);
    http_stop(h);
}

static void http_start_reports_bad_listen_addresses(void) {
    CHECK(http_start("no-port", NULL, err) == NULL);
    CHECK_STR(err, "http.listen 'no-port': expected HOST:PORT");
    CHECK(http_start("256.1.1.1:80", NULL, err) == NULL);
    CHECK_CONTAINS(err, "http.listen '256.1.1.1:80': ");
    /* a port already in use */
    bs_http *a = http_start("127.0.0.1:0", NULL, err);
    CHECK(a != NULL);
    if (!a) return;
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", http_port(a));
    CHECK(http_start(addr, NULL, err) == NULL);
    char want[128];
    snprintf(want, sizeof want, "http.listen '%s': Address already in use", addr);
    CHECK_STR(err, want);
    http_stop(a);
    http_stop(NULL);
}

static void http_stop_releases_the_port(void) {
    bs_http *a = http_start("127.0.0.1:0", NULL, err);
    CHECK(a != NULL);
    if (!a) return;
    int port = http_port(a);
    http_stop(a);
    char addr[64];
    snprintf(addr, sizeof addr, "127.0.0.1:%d", port);
    bs_http *b = http_start(addr, NULL, err); /* same port again: the socket was closed */
    CHECK(b != NULL);
    if (b) CHECK_INT(http_port(b), port);
    http_stop(b);
}

int main(void) {
    RUN(http_serves_metrics_health_and_errors);
    RUN(http_readyz_follows_flags);
    RUN(http_readyz_uses_callback_when_given);
    RUN(http_start_reports_bad_listen_addresses);
    RUN(http_stop_releases_the_port);
    return bs_test_done();
}
