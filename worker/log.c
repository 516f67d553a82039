/* Logging implementation: formats into a stack buffer and writes one line with a single
 * fwrite so lines from different threads never interleave. */
#include "log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

bs_log_level bs_log_min = BS_LOG_INFO;
static int log_json = 0;

static const char *level_names[] = {"debug", "info", "warn", "error", "off"};

int bs_log_set_level(const char *name) {
    for (int i = 0; i <= BS_LOG_OFF; i++)
        if (strcmp(name, level_names[i]) == 0) {
            bs_log_min = (bs_log_level)i;
            return BS_OK;
        }
    return BS_ERR;
}

int bs_log_set_format(const char *name) {
    if (strcmp(name, "json") == 0)
        log_json = 1;
    else if (strcmp(name, "logfmt") == 0)
        log_json = 0;
    else
        return BS_ERR;
    return BS_OK;
}

/* Appends s escaped for a JSON or logfmt quoted string. */
static size_t put_quoted(char *dst, size_t cap, size_t n, const char *s) {
    for (; *s && n + 3 < cap; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            dst[n++] = '\\';
            dst[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)snprintf(dst + n, cap - n, "\\u%04x", c);
        } else {
            dst[n++] = (char)c;
        }
    }
    return n < cap ? n : cap - 1;
}

void bs_log_write(bs_log_level lvl, const char *msg, const char *fmt, ...) {
    char line[2048];
    char extra[1536] = "";
    if (fmt && *fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(extra, sizeof extra, fmt, ap);
        va_end(ap);
    }
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    char tbuf[96];
    snprintf(tbuf, sizeof tbuf, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
             tm.tm_hour, tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000);
    size_t n;
    if (log_json) {
        n = (size_t)snprintf(line, sizeof line, "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"", tbuf, level_names[lvl]);
        n = put_quoted(line, sizeof line, n, msg);
        n += (size_t)snprintf(line + n, sizeof line - n, "\"");
        if (extra[0] && n < sizeof line) {
            /* key=value pairs become a single "fields" string: keeps the line valid JSON. */
            n += (size_t)snprintf(line + n, sizeof line - n, ",\"fields\":\"");
            if (n < sizeof line) n = put_quoted(line, sizeof line, n, extra);
            if (n < sizeof line) n += (size_t)snprintf(line + n, sizeof line - n, "\"");
        }
        if (n < sizeof line) n += (size_t)snprintf(line + n, sizeof line - n, "}\n");
    } else {
        n = (size_t)snprintf(line, sizeof line, "ts=%s level=%s msg=\"", tbuf, level_names[lvl]);
        n = put_quoted(line, sizeof line, n, msg);
        n += (size_t)snprintf(line + n, sizeof line - n, "\"%s%s\n", extra[0] ? " " : "", extra);
    }
    if (n >= sizeof line) {
        n = sizeof line - 1;
        line[n - 1] = '\n';
    }
    fwrite(line, 1, n, stderr);
}
