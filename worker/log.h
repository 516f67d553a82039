/* Logging: one line per event on stderr, level-gated before formatting,
 * as `ts=... level=... msg="..." key=value` (logfmt) or one JSON object per line. */
#ifndef BS_LOG_H
#define BS_LOG_H

#include "common.h"

typedef enum { BS_LOG_DEBUG, BS_LOG_INFO, BS_LOG_WARN, BS_LOG_ERROR, BS_LOG_OFF } bs_log_level;

extern bs_log_level bs_log_min;

int bs_log_set_level(const char *name);  /* debug|info|warn|error|off; BS_ERR on an unknown name */
int bs_log_set_format(const char *name); /* logfmt|json */

/* msg is a constant event description; fmt formats extra key=value pairs (may be NULL). */
void bs_log_write(bs_log_level lvl, const char *msg, const char *fmt, ...) BS_PRINTF(3, 4);

#define bs_log(lvl, msg, ...)                                                                                          \
    do {                                                                                                               \
        if ((lvl) >= bs_log_min) bs_log_write((lvl), (msg), __VA_ARGS__);                                              \
    } while (0)
#define log_debug(msg, ...) bs_log(BS_LOG_DEBUG, msg, __VA_ARGS__)
#define log_info(msg, ...) bs_log(BS_LOG_INFO, msg, __VA_ARGS__)
#define log_warn(msg, ...) bs_log(BS_LOG_WARN, msg, __VA_ARGS__)
#define log_error(msg, ...) bs_log(BS_LOG_ERROR, msg, __VA_ARGS__)

#endif
