/* librdkafka plumbing: client configuration from bs_config (and the helpers the other Kafka
 * clients share), the per-partition offset tracker (a ring of in-flight offsets with done flags)
 * and the rebalance callback. */
#include "kafka.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* ---------------------------------------------------------------------------------------------
 * Offset tracker
 * ------------------------------------------------------------------------------------------- */

enum { ENTRY_PENDING, ENTRY_DONE, ENTRY_ABANDONED };

struct bs_offsets {
    pthread_mutex_t mu;
    int64_t *offset; /* (cap) offset of each ring entry */
    uint8_t *done;   /* (cap) ENTRY_* state */
    int n_pending;   /* ENTRY_PENDING entries between head and tail */
    uint64_t head;   /* seq of the oldest entry not yet popped */
    uint64_t tail;   /* seq the next push gets */
    uint64_t mask;   /* cap - 1 (cap is a power of two) */
    uint32_t epoch;
    int64_t next;            /* commit position: last popped offset + 1, -1 unknown */
    int64_t reported;        /* the position offsets_advance last returned as moved */
    int64_t last;            /* last pushed offset, -1 none */
    int64_t emitted;         /* highest offset handed to the producer, -1 none */
    atomic_int handing_over; /* a revocation has begun (offsets_hand_over), until the next reset */
};

bs_offsets *offsets_new(int capacity) {
    if (capacity < 1) capacity = 1;
    uint64_t cap = 1;
    while (cap < (uint64_t)capacity) cap <<= 1;
    bs_offsets *o = calloc(1, sizeof *o);
    if (!o) return NULL;
    o->offset = malloc(sizeof(int64_t) * cap);
    o->done = calloc(cap, 1);
    if (!o->offset || !o->done) {
        free(o->offset);
        free(o->done);
        free(o);
        return NULL;
    }
    pthread_mutex_init(&o->mu, NULL);
    o->mask = cap - 1;
    o->next = o->last = o->emitted = o->reported = -1;
    return o;
}

void offsets_free(bs_offsets *o) {
    if (!o) return;
    pthread_mutex_destroy(&o->mu);
    free(o->offset);
    free(o->done);
    free(o);
}

void offsets_reset(bs_offsets *o) {
    pthread_mutex_lock(&o->mu);
    for (uint64_t s = o->head; s != o->tail; s++) o->done[s & o->mask] = 0;
    o->head = o->tail = 0;
    o->n_pending = 0;
    o->epoch++;
    o->next = o->last = o->emitted = o->reported = -1;
    atomic_store(&o->handing_over, 0);
    pthread_mutex_unlock(&o->mu);
}

/* Pops the contiguous done prefix (caller holds the lock). */
static void pop_done(bs_offsets *o) {
    while (o->head != o->tail && o->done[o->head & o->mask] == ENTRY_DONE) {
        uint64_t i = o->head & o->mask;
        o->next = o->offset[i] + 1;
        o->done[i] = ENTRY_PENDING;
        o->head++;
    }
}

int offsets_push(bs_offsets *o, int64_t offset, bs_offset_ticket *ticket) {
    int rc;
    pthread_mutex_lock(&o->mu);
    /* Acknowledged entries wait in the ring until the next advance: make room from them first. */
    if (o->tail - o->head > o->mask) pop_done(o);
    if (offset <= o->last) {
        rc = OFFSETS_DUPLICATE;
    } else if (o->tail - o->head > o->mask) {
        rc = OFFSETS_FULL;
    } else {
        uint64_t i = o->tail & o->mask;
        o->offset[i] = offset;
        o->done[i] = ENTRY_PENDING;
        o->n_pending++;
        ticket->epoch = o->epoch;
        ticket->seq = o->tail++;
        o->last = offset;
        rc = BS_OK;
    }
    pthread_mutex_unlock(&o->mu);
    return rc;
}

int offsets_done(bs_offsets *o, bs_offset_ticket t) {
    int ok = 0;
    pthread_mutex_lock(&o->mu);
    if (t.epoch == o->epoch && t.seq >= o->head && t.seq < o->tail && o->done[t.seq & o->mask] == ENTRY_PENDING) {
        o->done[t.seq & o->mask] = ENTRY_DONE;
        o->n_pending--;
        ok = 1;
    }
    pthread_mutex_unlock(&o->mu);
    return ok;
}

int offsets_abandon(bs_offsets *o, bs_offset_ticket t) {
    int ok = 0;
    pthread_mutex_lock(&o->mu);
    if (t.epoch == o->epoch && t.seq >= o->head && t.seq < o->tail && o->done[t.seq & o->mask] == ENTRY_PENDING) {
        o->done[t.seq & o->mask] = ENTRY_ABANDONED;
        o->n_pending--;
        ok = 1;
    }
    pthread_mutex_unlock(&o->mu);
    return ok;
}

int offsets_advance(bs_offsets *o, int64_t *next) {
    pthread_mutex_lock(&o->mu);
    pop_done(o);
    int moved = o->next != o->reported;
    o->reported = o->next;
    if (next) *next = o->next;
    pthread_mutex_unlock(&o->mu);
    return moved;
}

int64_t offsets_committable(bs_offsets *o) {
    pthread_mutex_lock(&o->mu);
    int64_t n = o->next;
    pthread_mutex_unlock(&o->mu);
    return n;
}

int offsets_in_flight(bs_offsets *o) {
    pthread_mutex_lock(&o->mu);
    int n = o->n_pending;
    pthread_mutex_unlock(&o->mu);
    return n;
}

int offsets_settled_through(bs_offsets *o, bs_offset_ticket t) {
    pthread_mutex_lock(&o->mu);
    int r = t.epoch != o->epoch || t.seq < o->head;
    pthread_mutex_unlock(&o->mu);
    return r;
}

int64_t offsets_position(bs_offsets *o) {
    pthread_mutex_lock(&o->mu);
    int64_t p = o->last < 0 ? -1 : o->last + 1;
    pthread_mutex_unlock(&o->mu);
    return p;
}

uint32_t offsets_epoch(bs_offsets *o) {
    pthread_mutex_lock(&o->mu);
    uint32_t e = o->epoch;
    pthread_mutex_unlock(&o->mu);
    return e;
}

void offsets_note_emitted(bs_offsets *o, int64_t offset) {
    pthread_mutex_lock(&o->mu);
    if (offset > o->emitted) o->emitted = offset;
    pthread_mutex_unlock(&o->mu);
}

int64_t offsets_emitted(bs_offsets *o) {
    pthread_mutex_lock(&o->mu);
    int64_t e = o->emitted;
    pthread_mutex_unlock(&o->mu);
    return e;
}

void offsets_hand_over(bs_offsets *o) {
    atomic_store(&o->handing_over, 1);
}

int offsets_handing_over(bs_offsets *o) {
    return atomic_load(&o->handing_over);
}

/* ---------------------------------------------------------------------------------------------
 * Rebalance
 * ------------------------------------------------------------------------------------------- */

void kafka_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque) {
    kafka_rebalance_hooks *h = opaque;
    int cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
        rd_kafka_error_t *e = NULL;
        rd_kafka_resp_err_t r = RD_KAFKA_RESP_ERR_NO_ERROR;
        if (cooperative)
            e = rd_kafka_incremental_assign(rk, parts);
        else
            r = rd_kafka_assign(rk, parts);
        if (e || r) {
            log_error("partition assignment failed", "error=\"%s\" partitions=%d",
                      e ? rd_kafka_error_string(e) : rd_kafka_err2str(r), parts->cnt);
            if (e) rd_kafka_error_destroy(e);
            return;
        }
        log_info("partitions assigned", "protocol=%s count=%d", cooperative ? "cooperative" : "eager", parts->cnt);
        if (h && h->assigned) h->assigned(h->ctx, rk, parts);
    } else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
        int lost = rd_kafka_assignment_lost(rk);
        log_info("partitions revoked", "protocol=%s count=%d lost=%d", cooperative ? "cooperative" : "eager",
                 parts->cnt, lost);
        if (h && h->revoking) h->revoking(h->ctx, rk, parts, lost);
        rd_kafka_error_t *e = NULL;
        rd_kafka_resp_err_t r = RD_KAFKA_RESP_ERR_NO_ERROR;
        if (cooperative)
            e = rd_kafka_incremental_unassign(rk, parts);
        else
            r = rd_kafka_assign(rk, NULL);
        if (e || r) {
            log_error("partition unassignment failed", "error=\"%s\"",
                      e ? rd_kafka_error_string(e) : rd_kafka_err2str(r));
            if (e) rd_kafka_error_destroy(e);
        }
    } else {
        log_error("rebalance error", "error=\"%s\"", rd_kafka_err2str(err));
        if (cooperative) {
            rd_kafka_error_t *e = rd_kafka_incremental_unassign(rk, parts);
            if (e) rd_kafka_error_destroy(e);
        } else {
            rd_kafka_assign(rk, NULL);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Clients
 * ------------------------------------------------------------------------------------------- */

/* config_kv_get's lookup, local so that the offset tracker links without the config module. */
static const char *kv_get(const bs_kvlist *l, const char *key) {
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i].key, key) == 0) return l->items[i].value;
    return NULL;
}

int kafka_conf_set(rd_kafka_conf_t *conf, const char *section, const char *key, const char *value, char *err) {
    char errstr[512];
    if (rd_kafka_conf_set(conf, key, value, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        return bs_err(err, "%s%s%s: %s", section, *section ? "." : "", key, errstr);
    return BS_OK;
}

int kafka_conf_apply(rd_kafka_conf_t *conf, const char *section, const bs_kvlist *l, char *err) {
    for (size_t i = 0; i < l->n; i++)
        if (kafka_conf_set(conf, section, l->items[i].key, l->items[i].value, err) != BS_OK) return BS_ERR;
    return BS_OK;
}

int kafka_conf_default(rd_kafka_conf_t *conf, const bs_kvlist *a, const bs_kvlist *b, const char *key,
                       const char *value, char *err) {
    if (kv_get(a, key) || kv_get(b, key)) return BS_OK;
    return kafka_conf_set(conf, "", key, value, err);
}

void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    /* syslog levels: 0..3 error, 4 warning, 5..6 info, 7 debug */
    bs_log_level l = level <= 3 ? BS_LOG_ERROR : level == 4 ? BS_LOG_WARN : level <= 6 ? BS_LOG_INFO : BS_LOG_DEBUG;
    bs_log(l, "librdkafka", "client=%s facility=%s detail=\"%s\"", rd_kafka_name(rk), fac, buf);
}

void kafka_error_cb(rd_kafka_t *rk, int e, const char *reason, void *opaque) {
    (void)opaque;
    rd_kafka_resp_err_t err = (rd_kafka_resp_err_t)e;
    /* Transport errors and "all brokers down" are routine during broker restarts: warn only. */
    int fatal = err == RD_KAFKA_RESP_ERR__FATAL;
    bs_log(fatal ? BS_LOG_ERROR : BS_LOG_WARN, "kafka client error", "client=%s code=%s reason=\"%s\"",
           rd_kafka_name(rk), rd_kafka_err2name(err), reason);
}

int kafka_conf_set_arg(rd_kafka_conf_t *conf, const char *arg, int *verbose, char *err) {
    char errstr[512], name[256];
    const char *eq = strchr(arg, '=');
    if (!eq || eq == arg) return bs_err(err, "-X: expected property=value, got '%s'", arg);
    snprintf(name, sizeof name, "%.*s", (int)(eq - arg), arg);
    if (strcmp(name, "debug") == 0 || strcmp(name, "log_level") == 0) *verbose = 1;
    if (rd_kafka_conf_set(conf, name, eq + 1, errstr, sizeof errstr) != RD_KAFKA_CONF_OK)
        return bs_err(err, "-X %s: %s", name, errstr);
    return BS_OK;
}

static void cli_log_stderr(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk;
    fprintf(stderr, "%%%d|%s|%s\n", level, fac, buf);
}

static void cli_log_quiet(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
    (void)rk, (void)level, (void)fac, (void)buf;
}

void kafka_conf_set_cli_log(rd_kafka_conf_t *conf, int verbose) {
    rd_kafka_conf_set_log_cb(conf, verbose ? cli_log_stderr : cli_log_quiet);
}

static void kafka_commit_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *offsets,
                            void *opaque) {
    (void)rk;
    (void)opaque;
    if (err == RD_KAFKA_RESP_ERR__NO_OFFSET) return;
    if (err) {
        log_warn("offset commit failed", "error=\"%s\"", rd_kafka_err2str(err));
        return;
    }
    for (int i = 0; offsets && i < offsets->cnt; i++)
        log_debug("offset committed", "topic=%s partition=%d offset=%lld", offsets->elems[i].topic,
                  (int)offsets->elems[i].partition, (long long)offsets->elems[i].offset);
}

const char *kafka_transactional_id(const bs_config *c, char *buf, size_t cap) {
    const char *tid = kv_get(&c->producer, "transactional.id");
    if (!tid) tid = kv_get(&c->kafka, "transactional.id");
    if (tid) {
        snprintf(buf, cap, "%s", tid);
        return buf;
    }
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    const char *group = kv_get(&c->consumer, "group.id");
    snprintf(buf, cap, "bertstream-%s-%s", group ? group : "bertstream", host);
    return buf;
}

rd_kafka_t *kafka_consumer_new(const bs_config *c, kafka_rebalance_hooks *hooks, char *err) {
    char errstr[512], qmin[32];
    /* Prefetch about what the worker can hold: more is wasted, because every backpressure pause
     * discards the prefetched messages of the paused partitions and the resume fetches them again. */
    snprintf(qmin, sizeof qmin, "%lld", (long long)c->worker.queue_depth);
    rd_kafka_t *rk = NULL;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    rd_kafka_topic_partition_list_t *topics = NULL;
    const bs_kvlist *k = &c->kafka, *u = &c->consumer;
    if (kafka_conf_default(conf, k, u, "partition.assignment.strategy", "cooperative-sticky", err) != BS_OK ||
        kafka_conf_default(conf, k, u, "auto.offset.reset", "earliest", err) != BS_OK ||
        kafka_conf_default(conf, k, u, "client.id", "bertstream-worker", err) != BS_OK ||
        kafka_conf_default(conf, k, u, "auto.commit.interval.ms", "1000", err) != BS_OK ||
        kafka_conf_default(conf, k, u, "queued.min.messages", qmin, err) != BS_OK ||
        kafka_conf_apply(conf, "kafka", k, err) != BS_OK || kafka_conf_apply(conf, "consumer", u, err) != BS_OK)
        goto fail;
    if (!kv_get(k, "group.id") && !kv_get(u, "group.id") &&
        kafka_conf_set(conf, "consumer", "group.id", "bertstream", err) != BS_OK)
        goto fail;
    /* The guarantees: offsets are stored only by the worker, after acknowledgement. */
    if (kafka_conf_set(conf, "", "enable.auto.offset.store", "false", err) != BS_OK) goto fail;
    if (c->delivery == BS_DELIVERY_EXACTLY_ONCE) {
        if (kafka_conf_set(conf, "", "enable.auto.commit", "false", err) != BS_OK ||
            kafka_conf_set(conf, "", "isolation.level", "read_committed", err) != BS_OK)
            goto fail;
    }
    rd_kafka_conf_set_rebalance_cb(conf, kafka_rebalance_cb);
    rd_kafka_conf_set_offset_commit_cb(conf, kafka_commit_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    rd_kafka_conf_set_opaque(conf, hooks);

    rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof errstr);
    if (!rk) {
        bs_err(err, "kafka consumer: %s", errstr);
        goto fail;
    }
    conf = NULL; /* rd_kafka_new() took ownership of conf */
    rd_kafka_poll_set_consumer(rk);

    topics = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(topics, c->topics.input, RD_KAFKA_PARTITION_UA);
    rd_kafka_resp_err_t e = rd_kafka_subscribe(rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (e) {
        bs_err(err, "kafka consumer: subscribe to '%s': %s", c->topics.input, rd_kafka_err2str(e));
        goto fail;
    }
    return rk;
fail:
    if (conf) rd_kafka_conf_destroy(conf);
    if (rk) rd_kafka_destroy(rk);
    return NULL;
}

rd_kafka_t *kafka_producer_new(const bs_config *c, void (*dr_msg_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *),
                               void *opaque, char *err) {
    char errstr[512], buf[512];
    rd_kafka_t *rk = NULL;
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    const bs_kvlist *k = &c->kafka, *u = &c->producer;
    /* A dead letter carries the original value, which may be larger than worker.max_message_bytes
     * (that is what too_large means): as large as anything the consumer can receive. The broker's
     * limit for the dead-letter topic still applies: keep it at least the input topic's. */
    if (kafka_conf_default(conf, k, u, "message.max.bytes", KAFKA_PRODUCER_MESSAGE_MAX_BYTES, err) != BS_OK ||
        kafka_conf_default(conf, k, u, "client.id", "bertstream-worker", err) != BS_OK ||
        kafka_conf_apply(conf, "kafka", k, err) != BS_OK || kafka_conf_apply(conf, "producer", u, err) != BS_OK)
        goto fail;
    if (c->delivery == BS_DELIVERY_EXACTLY_ONCE &&
        kafka_conf_set(conf, "producer", "transactional.id", kafka_transactional_id(c, buf, sizeof buf), err) != BS_OK)
        goto fail;
    rd_kafka_conf_set_dr_msg_cb(conf, dr_msg_cb);
    rd_kafka_conf_set_error_cb(conf, kafka_error_cb);
    rd_kafka_conf_set_log_cb(conf, kafka_log_cb);
    rd_kafka_conf_set_opaque(conf, opaque);
    rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof errstr);
    if (!rk) {
        bs_err(err, "kafka producer: %s", errstr);
        goto fail;
    }
    return rk; /* rd_kafka_new() took ownership of conf */
fail:
    if (conf) rd_kafka_conf_destroy(conf);
    return NULL;
}

int kafka_err_is_transient(rd_kafka_resp_err_t err) {
    switch (err) {
    case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT:
    case RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
    case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN:
    case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
    case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
    case RD_KAFKA_RESP_ERR__QUEUE_FULL:
    case RD_KAFKA_RESP_ERR__FENCED:
    case RD_KAFKA_RESP_ERR__STATE:
    case RD_KAFKA_RESP_ERR__RETRY:
    case RD_KAFKA_RESP_ERR__WAIT_COORD:
    case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
    case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC: /* retriable in Kafka too: wait for the topic, do not divert */
    case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
    case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT:
    case RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION:
    case RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS:
    case RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND:
    case RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION:
    case RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR:
    case RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH:
    case RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_PREFERRED_LEADER_NOT_AVAILABLE:
    case RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
        return 1;
    default:
        return 0;
    }
}
