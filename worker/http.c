/* HTTP endpoints on libmicrohttpd with its internal polling thread. The listening socket is opened here
 * (getaddrinfo, bind, listen) and handed to MHD, so any HOST:PORT form works and port 0 can be read back. */
#include "http.h"

#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "log.h"

struct bs_http {
    struct MHD_Daemon *daemon;
    int port;
    bs_http_opts opts;
    _Atomic unsigned ready; /* BS_READY_* bits set so far */
};

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof msg, fmt, ap);
    size_t n = strlen(msg);
    while (n && (msg[n - 1] == '\n' || msg[n - 1] == '\r')) msg[--n] = '\0';
    log_warn("http server", "error=\"%s\"", msg);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *type, char *body, size_t len,
                             enum MHD_ResponseMemoryMode mode, int allow) {
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE) free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (allow) MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
    enum MHD_Result ret = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return ret;
}

#define TEXT "text/plain; charset=utf-8"
#define STATIC_BODY(conn, status, s, allow)                                                                            \
    reply(conn, status, TEXT, (char *)(s), sizeof(s) - 1, MHD_RESPMEM_PERSISTENT, allow)

static enum MHD_Result readyz(bs_http *h, struct MHD_Connection *conn) {
    char reason[256] = "";
    int ok;
    if (h->opts.ready) {
        ok = h->opts.ready(h->opts.ctx, reason, sizeof reason);
    } else {
        unsigned missing = h->opts.required & ~atomic_load(&h->ready);
        ok = missing == 0;
        size_t n = 0;
        static const struct {
            unsigned bit;
            const char *text;
        } conds[] = {{BS_READY_MODEL, "model not loaded"},
                     {BS_READY_HEAD, "head not loaded"},
                     {BS_READY_PARTITIONS, "no partitions assigned"}};
        for (size_t i = 0; i < sizeof conds / sizeof conds[0] && n < sizeof reason; i++)
            if (missing & conds[i].bit)
                n += (size_t)snprintf(reason + n, sizeof reason - n, "%s%s", n ? ", " : "", conds[i].text);
    }
    if (ok) return STATIC_BODY(conn, MHD_HTTP_OK, "ready\n", 0);
    char *body = malloc(sizeof reason + 16);
    if (!body) return MHD_NO;
    int len = snprintf(body, sizeof reason + 16, "not ready: %s\n", reason[0] ? reason : "unknown");
    return reply(conn, MHD_HTTP_SERVICE_UNAVAILABLE, TEXT, body, (size_t)len, MHD_RESPMEM_MUST_FREE, 0);
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_data_size, void **req_cls) {
    (void)version;
    (void)upload_data;
    (void)upload_data_size;
    (void)req_cls;
    bs_http *h = cls;
    /* HEAD is GET without the body (MHD drops it); anything else is refused before reading a body. */
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return STATIC_BODY(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", 1);
    if (strcmp(url, "/metrics") == 0) {
        size_t len = 0;
        char *body = h->opts.metrics ? metrics_render_alloc(h->opts.metrics, &len) : calloc(1, 1);
        if (!body) return MHD_NO;
        return reply(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len, MHD_RESPMEM_MUST_FREE,
                     0);
    }
    if (strcmp(url, "/healthz") == 0) return STATIC_BODY(conn, MHD_HTTP_OK, "ok\n", 0);
    if (strcmp(url, "/readyz") == 0) return readyz(h, conn);
    return STATIC_BODY(conn, MHD_HTTP_NOT_FOUND, "not found\n", 0);
}

/* Opens a listening socket for "HOST:PORT"; returns the fd or -1 with err set. */
static int open_listener(const char *listen_addr, int *family, int *port, char *err) {
    char host[256];
    const char *colon = strrchr(listen_addr, ':');
    if (!colon || (size_t)(colon - listen_addr) >= sizeof host)
        return bs_err(err, "http.listen '%s': expected HOST:PORT", listen_addr), -1;
    size_t hn = (size_t)(colon - listen_addr);
    memcpy(host, listen_addr, hn);
    host[hn] = '\0';
    if (hn >= 2 && host[0] == '[' && host[hn - 1] == ']') { /* [::1]:9464 */
        memmove(host, host + 1, hn - 2);
        host[hn - 2] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV},
                    *res = NULL;
    int rc = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (rc != 0) return bs_err(err, "http.listen '%s': %s", listen_addr, gai_strerror(rc)), -1;
    int fd = -1, saved = 0;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, ai->ai_protocol);
        if (fd < 0) {
            saved = errno;
            continue;
        }
        int one = 1, zero = 0;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        /* ":9464" on an IPv6 wildcard serves IPv4 clients too. */
        if (ai->ai_family == AF_INET6 && !host[0]) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 64) == 0) {
            *family = ai->ai_family;
            break;
        }
        saved = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0) return bs_err(err, "http.listen '%s': %s", listen_addr, strerror(saved ? saved : EINVAL)), -1;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0) {
        bs_err(err, "http.listen '%s': getsockname: %s", listen_addr, strerror(errno));
        close(fd);
        return -1;
    }
    *port = ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                     : ntohs(((struct sockaddr_in *)&ss)->sin_port);
    return fd;
}

bs_http *http_start(const char *listen_addr, const bs_http_opts *opts, char *err) {
    bs_http *h = calloc(1, sizeof *h);
    if (!h) {
        bs_err(err, "out of memory");
        return NULL;
    }
    if (opts) h->opts = *opts;
    if (!h->opts.required) h->opts.required = BS_READY_ALL;
    int family = AF_INET;
    int fd = open_listener(listen_addr, &family, &h->port, err);
    if (fd < 0) goto err;
    unsigned flags = MHD_USE_POLL_INTERNAL_THREAD | MHD_USE_ERROR_LOG | (family == AF_INET6 ? MHD_USE_IPv6 : 0);
    h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, handle, h, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL,
                                 MHD_OPTION_LISTEN_SOCKET, fd, MHD_OPTION_CONNECTION_LIMIT, 64u,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (!h->daemon) {
        close(fd);
        bs_err(err, "http.listen '%s': cannot start the HTTP server", listen_addr);
        goto err;
    }
    return h; /* MHD owns fd now and closes it in MHD_stop_daemon */
err:
    free(h);
    return NULL;
}

int http_port(const bs_http *h) {
    return h->port;
}

void http_set_ready(bs_http *h, unsigned flags, int on) {
    if (on)
        atomic_fetch_or(&h->ready, flags);
    else
        atomic_fetch_and(&h->ready, ~flags);
}

void http_stop(bs_http *h) {
    if (!h) return;
    MHD_stop_daemon(h->daemon);
    free(h);
}
