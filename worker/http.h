/* The worker's HTTP endpoints (libmicrohttpd, one internal polling thread):
 *   GET /metrics  200 text/plain; version=0.0.4, the registry's Prometheus text
 *   GET /healthz  200 "ok\n" while the process serves requests
 *   GET /readyz   200 "ready\n", or 503 with the reason ("not ready: model not loaded, no partitions assigned\n")
 * Any other path is 404, any method but GET (and HEAD) 405. */
#ifndef BS_HTTP_H
#define BS_HTTP_H

#include <stddef.h>

#include "common.h"
#include "metrics.h"

typedef struct bs_http bs_http;

/* Readiness conditions for /readyz (DESIGN.md: model loaded, head loaded, partitions assigned). */
#define BS_READY_MODEL 1u      /* "model not loaded" */
#define BS_READY_HEAD 2u       /* "head not loaded" */
#define BS_READY_PARTITIONS 4u /* "no partitions assigned" */
#define BS_READY_ALL (BS_READY_MODEL | BS_READY_HEAD | BS_READY_PARTITIONS)

typedef struct {
    bs_metrics *metrics; /* rendered on /metrics; NULL = empty body. Must outlive the server. */
    /* When set, /readyz calls it (from the HTTP thread) instead of using the flags: return 1 when ready,
     * else 0 with a one-line reason written into reason (cap bytes). */
    int (*ready)(void *ctx, char *reason, size_t cap);
    void *ctx;
    /* Conditions that must all be set with http_set_ready for /readyz to answer 200 (0 = BS_READY_ALL;
     * e.g. BS_READY_MODEL | BS_READY_PARTITIONS when no head is expected yet). */
    unsigned required;
} bs_http_opts;

/* Listens on "HOST:PORT" ("0.0.0.0:9464", "127.0.0.1:0", "[::]:9464", ":9464" = every address) and serves
 * from a background thread. Port 0 picks a free port (see http_port). NULL + err ("http.listen
 * '1.2.3.4:80': Cannot assign requested address") on failure. http.listen "" means no server: the caller
 * does not call http_start then. */
bs_http *http_start(const char *listen, const bs_http_opts *opts, char *err);
/* The port actually bound. */
int http_port(const bs_http *h);
/* Sets (on = 1) or clears (on = 0) readiness conditions; thread-safe. */
void http_set_ready(bs_http *h, unsigned flags, int on);
/* Stops the thread, closes the socket, frees h. NULL is a no-op. */
void http_stop(bs_http *h);

#endif
