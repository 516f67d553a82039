/* `bertstream broker`: an embedded development Kafka cluster (librdkafka's mock cluster) on
 * loopback. Prints its bootstrap servers as the first stdout line, then serves until SIGINT or
 * SIGTERM, taking fault-injection commands on stdin, one per line, answered "ok" or "error: ...". */
#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "commands.h"
#include "common.h"

#define BROKER_DEFAULT_TOPICS "reviews:4,review-scores:4,reviews-dlq:1,bertstream-heads:1,reviews-labeled:1"

static volatile sig_atomic_t run = 1;

static void on_signal(int sig) {
    (void)sig;
    run = 0;
}

static void usage(FILE *f) {
    fprintf(f,
            "usage: bertstream broker [--brokers N] [--topics name:partitions,...]\n"
            "\n"
            "Runs librdkafka's mock Kafka cluster on 127.0.0.1 (ephemeral ports) for development and tests.\n"
            "The first line on stdout is the bootstrap server list; it serves until SIGINT or SIGTERM (or 'quit').\n"
            "Data lives in memory only. Clients may also create topics on first use (4 partitions).\n"
            "\n"
            "  --brokers N    brokers in the cluster, ids 1..N (default 1)\n"
            "  --topics LIST  topics to create, name[:partitions] comma-separated (default\n"
            "                 " BROKER_DEFAULT_TOPICS ";\n"
            "                 an empty LIST creates none); replication factor min(3, N)\n"
            "  --help         this text\n"
            "\n"
            "Control channel: one command per line on stdin, each answered on stdout with \"ok\" or\n"
            "\"error: REASON\" (stdin EOF leaves the cluster running):\n"
            "  broker-down ID | broker-up ID          disconnect / reconnect broker ID (-1: all); no leader change\n"
            "  rtt ID MS                              add MS milliseconds of round-trip time to broker ID (-1: all)\n"
            "  push-errors API ERR[,ERR...]           the next requests of API (e.g. Produce, Fetch, OffsetCommit,\n"
            "                                         or a number) fail with these errors in order\n"
            "                                         (e.g. NOT_LEADER_FOR_PARTITION,REQUEST_TIMED_OUT, _TRANSPORT)\n"
            "  clear-errors API                       drop the errors still pushed for API\n"
            "  coordinator group|txn KEY ID           make broker ID the coordinator of group/transactional id KEY\n"
            "  leader TOPIC PARTITION ID              move the partition's leader to broker ID (-1: none)\n"
            "  create-topic NAME PARTITIONS           create a topic\n"
            "  quit                                   stop the cluster and exit 0\n");
}

/* Kafka protocol ApiKeys the mock broker implements (names as in the Kafka protocol guide). */
static const struct {
    const char *name;
    int16_t key;
} api_keys[] = {
    {"Produce", 0},
    {"Fetch", 1},
    {"ListOffsets", 2},
    {"Metadata", 3},
    {"OffsetCommit", 8},
    {"OffsetFetch", 9},
    {"FindCoordinator", 10},
    {"JoinGroup", 11},
    {"Heartbeat", 12},
    {"LeaveGroup", 13},
    {"SyncGroup", 14},
    {"DescribeGroups", 15},
    {"ListGroups", 16},
    {"SaslHandshake", 17},
    {"ApiVersions", 18},
    {"CreateTopics", 19},
    {"DeleteTopics", 20},
    {"InitProducerId", 22},
    {"AddPartitionsToTxn", 24},
    {"AddOffsetsToTxn", 25},
    {"EndTxn", 26},
    {"TxnOffsetCommit", 28},
    {"SaslAuthenticate", 36},
};

static int parse_api_key(const char *s, int16_t *out, char *err) {
    for (size_t i = 0; i < sizeof api_keys / sizeof api_keys[0]; i++)
        if (strcasecmp(s, api_keys[i].name) == 0 || (strncasecmp(s, api_keys[i].name, strlen(api_keys[i].name)) == 0 &&
                                                     strcasecmp(s + strlen(api_keys[i].name), "Request") == 0)) {
            *out = api_keys[i].key;
            return BS_OK;
        }
    long long v;
    if (cli_int("API", s, 0, 32767, &v, NULL) == BS_OK) {
        *out = (int16_t)v;
        return BS_OK;
    }
    return bs_err(err, "unknown API '%s' (a name such as Produce, Fetch, OffsetCommit, or a number)", s);
}

/* "NOT_LEADER_FOR_PARTITION", "RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION", "_TRANSPORT" or a number. */
static int parse_err_name(const char *s, rd_kafka_resp_err_t *out, char *err) {
    const struct rd_kafka_err_desc *descs;
    size_t n;
    if (strncmp(s, "RD_KAFKA_RESP_ERR_", 18) == 0) s += 18;
    rd_kafka_get_err_descs(&descs, &n);
    for (size_t i = 0; i < n; i++)
        if (descs[i].name && strcasecmp(descs[i].name, s) == 0) {
            *out = descs[i].code;
            return BS_OK;
        }
    long long v;
    if (cli_int("ERR", s, -200, 10000, &v, NULL) == BS_OK) {
        *out = (rd_kafka_resp_err_t)v;
        return BS_OK;
    }
    return bs_err(err, "unknown error name '%s'", s);
}

static int parse_id(const char *s, const char *what, int32_t *out, char *err) {
    long long v;
    if (!s) return bs_err(err, "missing %s", what);
    if (cli_int(what, s, -1, INT32_MAX, &v, err) != BS_OK) return BS_ERR;
    *out = (int32_t)v;
    return BS_OK;
}

static int mock_status(rd_kafka_resp_err_t e, char *err) {
    return e ? bs_err(err, "%s", rd_kafka_err2str(e)) : BS_OK;
}

static int create_topic(rd_kafka_mock_cluster_t *mc, const char *name, int partitions, int brokers, char *err) {
    if (!*name) return bs_err(err, "empty topic name");
    int repl = brokers < 3 ? brokers : 3;
    rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, name, partitions, repl);
    if (e) return bs_err(err, "topic %s: %s", name, rd_kafka_err2str(e));
    return BS_OK;
}

/* Runs one control command (line is modified). Returns 1 for quit, else BS_OK/BS_ERR. */
static int control(rd_kafka_mock_cluster_t *mc, int brokers, char *line, char *err) {
    char *save = NULL;
    char *cmd = strtok_r(line, " \t", &save);
    char *a1 = strtok_r(NULL, " \t", &save), *a2 = strtok_r(NULL, " \t", &save), *a3 = strtok_r(NULL, " \t", &save);
    char *extra = strtok_r(NULL, " \t", &save);
    int32_t id = 0, part = 0;
    long long v = 0;
    int nargs = !!a1 + !!a2 + !!a3 + !!extra;
#define NEED(n, use)                                                                                                   \
    do {                                                                                                               \
        if (nargs != (n)) return bs_err(err, "%s takes %d argument(s): %s", cmd, (n), use);                            \
    } while (0)
    if (strcmp(cmd, "quit") == 0) {
        NEED(0, "quit");
        return 1;
    }
    if (strcmp(cmd, "broker-down") == 0 || strcmp(cmd, "broker-up") == 0) {
        NEED(1, "ID");
        if (parse_id(a1, "ID", &id, err) != BS_OK) return BS_ERR;
        if (id != -1 && (id < 1 || id > brokers)) return bs_err(err, "no broker %d (ids are 1..%d)", id, brokers);
        return mock_status(cmd[7] == 'd' ? rd_kafka_mock_broker_set_down(mc, id) : rd_kafka_mock_broker_set_up(mc, id),
                           err);
    }
    if (strcmp(cmd, "rtt") == 0) {
        NEED(2, "ID MS");
        if (parse_id(a1, "ID", &id, err) != BS_OK || cli_int("MS", a2, 0, 3600000, &v, err) != BS_OK) return BS_ERR;
        if (id != -1 && (id < 1 || id > brokers)) return bs_err(err, "no broker %d (ids are 1..%d)", id, brokers);
        return mock_status(rd_kafka_mock_broker_set_rtt(mc, id, (int)v), err);
    }
    if (strcmp(cmd, "push-errors") == 0) {
        NEED(2, "API ERR[,ERR...]");
        int16_t key;
        rd_kafka_resp_err_t errs[64];
        size_t n = 0;
        if (parse_api_key(a1, &key, err) != BS_OK) return BS_ERR;
        char *s2 = NULL;
        for (char *e = strtok_r(a2, ",", &s2); e; e = strtok_r(NULL, ",", &s2)) {
            if (n == sizeof errs / sizeof errs[0]) return bs_err(err, "at most 64 errors per command");
            if (parse_err_name(e, &errs[n++], err) != BS_OK) return BS_ERR;
        }
        if (n == 0) return bs_err(err, "no error names given");
        rd_kafka_mock_push_request_errors_array(mc, key, n, errs);
        return BS_OK;
    }
    if (strcmp(cmd, "clear-errors") == 0) {
        NEED(1, "API");
        int16_t key;
        if (parse_api_key(a1, &key, err) != BS_OK) return BS_ERR;
        rd_kafka_mock_clear_request_errors(mc, key);
        return BS_OK;
    }
    if (strcmp(cmd, "coordinator") == 0) {
        NEED(3, "group|txn KEY ID");
        const char *type = strcmp(a1, "group") == 0                                     ? "group"
                           : (strcmp(a1, "txn") == 0 || strcmp(a1, "transaction") == 0) ? "transaction"
                                                                                        : NULL;
        if (!type) return bs_err(err, "coordinator type must be group or txn, got '%s'", a1);
        if (parse_id(a3, "ID", &id, err) != BS_OK) return BS_ERR;
        return mock_status(rd_kafka_mock_coordinator_set(mc, type, a2, id), err);
    }
    if (strcmp(cmd, "leader") == 0) {
        NEED(3, "TOPIC PARTITION ID");
        if (cli_int("PARTITION", a2, 0, INT32_MAX, &v, err) != BS_OK || parse_id(a3, "ID", &id, err) != BS_OK)
            return BS_ERR;
        part = (int32_t)v;
        if (id != -1 && (id < 1 || id > brokers)) return bs_err(err, "no broker %d (ids are 1..%d)", id, brokers);
        return mock_status(rd_kafka_mock_partition_set_leader(mc, a1, part, id), err);
    }
    if (strcmp(cmd, "create-topic") == 0) {
        NEED(2, "NAME PARTITIONS");
        if (cli_int("PARTITIONS", a2, 1, 100000, &v, err) != BS_OK) return BS_ERR;
        return create_topic(mc, a1, (int)v, brokers, err);
    }
#undef NEED
    return bs_err(err,
                  "unknown command '%s' (broker-down, broker-up, rtt, push-errors, clear-errors, coordinator, "
                  "leader, create-topic, quit)",
                  cmd);
}

/* Creates the --topics list: "name[:partitions],..." */
static int create_topics(rd_kafka_mock_cluster_t *mc, const char *list, int brokers, char *err) {
    char *copy = strdup(list), *save = NULL;
    if (!copy) return bs_err(err, "out of memory");
    int rc = BS_OK;
    for (char *t = strtok_r(copy, ",", &save); t && rc == BS_OK; t = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(t, ':');
        long long parts = 1;
        if (colon) {
            *colon = 0;
            rc = cli_int("--topics partitions", colon + 1, 1, 100000, &parts, err);
        }
        if (rc == BS_OK) rc = create_topic(mc, t, (int)parts, brokers, err);
    }
    free(copy);
    return rc;
}

/* Reads what stdin has and runs each complete line. Returns 1 on quit, -1 on EOF, 0 otherwise. */
static int serve_stdin(rd_kafka_mock_cluster_t *mc, int brokers, char *line, size_t cap, size_t *used) {
    ssize_t n = read(STDIN_FILENO, line + *used, cap - 1 - *used);
    if (n < 0) return errno == EINTR || errno == EAGAIN ? 0 : -1;
    if (n == 0) return -1;
    *used += (size_t)n;
    for (;;) {
        char *nl = memchr(line, '\n', *used);
        if (!nl) {
            if (*used == cap - 1) { /* an over-long line: answer and drop it */
                printf("error: command longer than %zu bytes\n", cap - 2);
                fflush(stdout);
                *used = 0;
            }
            return 0;
        }
        *nl = 0;
        size_t len = (size_t)(nl - line);
        if (len && line[len - 1] == '\r') line[len - 1] = 0;
        char err[BS_ERRLEN] = "";
        int rc = BS_OK, quit = 0;
        if (line[strspn(line, " \t")] != 0) { /* blank lines get no answer */
            rc = control(mc, brokers, line, err);
            quit = rc == 1;
            if (rc == BS_ERR)
                printf("error: %s\n", err);
            else
                printf("ok\n");
            fflush(stdout);
        }
        memmove(line, nl + 1, *used - len - 1);
        *used -= len + 1;
        if (quit) return 1;
    }
}

int cmd_broker(int argc, char **argv) {
    char err[BS_ERRLEN], errstr[512];
    long long brokers = 1;
    const char *topics = BROKER_DEFAULT_TOPICS;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (strcmp(a, "--brokers") == 0) {
            if (!(v = cli_value(argc, argv, &i, err)) || cli_int("--brokers", v, 1, 64, &brokers, err) != BS_OK) {
                fprintf(stderr, "bertstream broker: %s\n", err);
                return 2;
            }
        } else if (strcmp(a, "--topics") == 0) {
            if (!(topics = cli_value(argc, argv, &i, err))) {
                fprintf(stderr, "bertstream broker: %s\n", err);
                return 2;
            }
        } else {
            fprintf(stderr, "bertstream broker: unknown option '%s' (bertstream broker --help)\n", a);
            return 2;
        }
    }

    /* before any librdkafka thread exists, so every thread inherits the same dispositions */
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal; /* no SA_RESTART: poll() returns EINTR promptly */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a closed stdout must not kill the cluster */

    /* The mock cluster needs an rd_kafka_t to own it; a producer that never produces will do. */
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    if (rd_kafka_conf_set(conf, "client.id", "bertstream-broker", errstr, sizeof errstr) != RD_KAFKA_CONF_OK ||
        rd_kafka_conf_set(conf, "log_level", "4", errstr, sizeof errstr) != RD_KAFKA_CONF_OK) {
        fprintf(stderr, "bertstream broker: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        fprintf(stderr, "bertstream broker: %s\n", errstr);
        rd_kafka_conf_destroy(conf);
        return 1;
    }
    conf = NULL; /* rd_kafka_new() took ownership */
    rd_kafka_mock_cluster_t *mc = rd_kafka_mock_cluster_new(rk, (int)brokers);
    if (!mc) {
        fprintf(stderr, "bertstream broker: cannot start a mock cluster of %lld brokers\n", brokers);
        rd_kafka_destroy(rk);
        return 1;
    }
    if (create_topics(mc, topics, (int)brokers, err) != BS_OK) {
        fprintf(stderr, "bertstream broker: --topics: %s\n", err);
        rd_kafka_mock_cluster_destroy(mc);
        rd_kafka_destroy(rk);
        return 2;
    }

    printf("%s\n", rd_kafka_mock_cluster_bootstraps(mc));
    fflush(stdout);
    fprintf(stderr, "bertstream broker: %lld broker(s) at %s, topics: %s\n", brokers,
            rd_kafka_mock_cluster_bootstraps(mc), *topics ? topics : "(none)");

    char line[4096];
    size_t used = 0;
    int stdin_open = 1, rc = 0;
    while (run) {
        struct pollfd pfd = {.fd = stdin_open ? STDIN_FILENO : -1, .events = POLLIN};
        int n = poll(&pfd, 1, 200);
        rd_kafka_poll(rk, 0);
        if (n > 0 && (pfd.revents & (POLLIN | POLLHUP | POLLERR))) {
            int s = serve_stdin(mc, (int)brokers, line, sizeof line, &used);
            if (s == 1) break;
            if (s < 0) stdin_open = 0; /* EOF: keep serving until a signal */
        }
    }
    fprintf(stderr, "bertstream broker: stopping\n");
    rd_kafka_mock_cluster_destroy(mc);
    rd_kafka_destroy(rk);
    return rc;
}
