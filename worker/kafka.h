/* librdkafka plumbing for the worker: consumer and producer set up from bs_config, the
 * per-partition offset tracker that decides how far an input partition may be committed, and
 * the rebalance callback (cooperative or eager) that hands assign/revoke to the worker. Also the
 * configuration helpers the other Kafka clients (heads, produce, consume) share. */
#ifndef BS_KAFKA_H
#define BS_KAFKA_H

#include <librdkafka/rdkafka.h>
#include <stdint.h>

#include "common.h"
#include "config.h"

/* ---- offset tracker ----
 * One per assigned input partition. The consumer thread pushes every consumed offset in
 * consume order and gets a ticket; whichever thread sees the result (or dead letter) acknowledged
 * marks that ticket done; offsets_advance then moves the commit position over the contiguous run
 * of done offsets from the oldest one. So an offset is never committed while a message before it
 * on the same partition is still in flight, whatever order results come back in.
 *
 * A ring of `capacity` entries (no allocation after offsets_new); capacity = worker.queue_depth,
 * the most messages the worker ever holds, so push never finds it full in the worker.
 * Internally locked: push/advance/reset (consumer thread) and done (delivery thread) may race.
 * offsets_reset starts a new epoch (partition revoked or re-assigned): tickets of older epochs
 * are ignored by offsets_done, so late acknowledgements of abandoned work cannot move offsets. */
typedef struct bs_offsets bs_offsets;

typedef struct {
    uint32_t epoch;
    uint64_t seq;
} bs_offset_ticket;

bs_offsets *offsets_new(int capacity);
void offsets_free(bs_offsets *o);
/* Drops every entry and starts a new epoch; the commit position becomes unknown (-1). */
void offsets_reset(bs_offsets *o);
/* Records a consumed offset (offsets must increase; gaps are fine) and fills *ticket: BS_OK.
 * OFFSETS_DUPLICATE: the offset is at or before the last one pushed (a re-delivery of a message
 * already tracked). OFFSETS_FULL: no room even after popping the acknowledged prefix (every entry
 * is still awaited). Acknowledged entries are popped on demand, so a ring as large as the number of
 * messages in flight never fills, however seldom offsets_advance runs. */
#define OFFSETS_DUPLICATE 1
#define OFFSETS_FULL 2
int offsets_push(bs_offsets *o, int64_t offset, bs_offset_ticket *ticket);
/* Marks a ticket acknowledged. Returns 1, or 0 for a stale ticket (older epoch) that was ignored. */
int offsets_done(bs_offsets *o, bs_offset_ticket ticket);
/* Marks a ticket abandoned: its message was dropped unproduced (graceful stop), so the commit position
 * never passes it and nothing waits for it any more (offsets_in_flight leaves it out). Returns 1, or 0
 * for a stale ticket. */
int offsets_abandon(bs_offsets *o, bs_offset_ticket ticket);
/* Pops the contiguous done prefix. Returns 1 when the commit position moved since the last call
 * that returned 1 (pushes may pop too), and sets *next to it (last acknowledged offset + 1: what
 * Kafka stores as the committed offset). */
int offsets_advance(bs_offsets *o, int64_t *next);
/* Commit position after the last advance (-1 = nothing acknowledged since the reset). */
int64_t offsets_committable(bs_offsets *o);
/* Offsets pushed and neither done nor abandoned: the outcomes still awaited. */
int offsets_in_flight(bs_offsets *o);
/* 1 when every ticket up to and including seq (same epoch) has been popped by offsets_advance. */
int offsets_settled_through(bs_offsets *o, bs_offset_ticket ticket);
/* Offset of the last push + 1 (-1 = none since the reset): the consume position. */
int64_t offsets_position(bs_offsets *o);
uint32_t offsets_epoch(bs_offsets *o);
/* The highest offset whose output is committed to being produced: its message entered an engine
 * batch, or its result or dead letter went to the producer (-1 none since the reset). A graceful
 * stop finishes every message below it and drops (leaves uncommitted) the rest: then nothing
 * produced lies beyond the final commit, so a restart repeats nothing. */
void offsets_note_emitted(bs_offsets *o, int64_t offset);
int64_t offsets_emitted(bs_offsets *o);
/* A revocation has begun: the worker hands the partition over, so its messages not yet in an
 * engine batch are dropped as in a graceful stop (the rule above, per partition) and the revoke
 * waits only for what the engine already holds. offsets_reset (the revocation's end, or a new
 * assignment) clears it. */
void offsets_hand_over(bs_offsets *o);
int offsets_handing_over(bs_offsets *o);

/* ---- rebalance ----
 * kafka_consumer_new installs kafka_rebalance_cb with a pointer to these hooks as opaque.
 * On assignment the callback assigns first (incremental for COOPERATIVE, full for EAGER), then
 * calls assigned(). On revocation it calls revoking() (lost = 1 when the partitions were lost,
 * e.g. session timeout: their offsets must not be committed), then unassigns. Both hooks run on
 * the thread that calls rd_kafka_consumer_poll. */
typedef struct {
    void (*assigned)(void *ctx, rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts);
    void (*revoking)(void *ctx, rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, int lost);
    void *ctx;
} kafka_rebalance_hooks;

void kafka_rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t *parts, void *opaque);

/* ---- clients ----
 * Properties are applied in this order: the worker's defaults, kafka.*, consumer.* (or producer.*),
 * then the settings the worker's guarantees depend on, which override the user:
 *   consumer: enable.auto.offset.store=false; with exactly_once also enable.auto.commit=false.
 *   producer: with exactly_once, transactional.id (producer.transactional.id, else
 *             "bertstream-<group.id>-<hostname>").
 * Defaults the user may override: consumer partition.assignment.strategy=cooperative-sticky,
 * auto.offset.reset=earliest, auto.commit.interval.ms=1000 (what a kill -9 can repeat),
 * queued.min.messages=worker.queue_depth (a pause drops the prefetch: keep it near what fits),
 * client.id=bertstream-worker; producer message.max.bytes =
 * KAFKA_PRODUCER_MESSAGE_MAX_BYTES (a dead letter carries a too_large value unchanged),
 * client.id=bertstream-worker.
 * The consumer is subscribed to topics.input and its main queue is redirected to the consumer
 * queue (rd_kafka_poll_set_consumer). Errors are one line naming the property. */
#define KAFKA_PRODUCER_MESSAGE_MAX_BYTES "100000000" /* librdkafka's receive.message.max.bytes default */

rd_kafka_t *kafka_consumer_new(const bs_config *c, kafka_rebalance_hooks *hooks, char *err);
rd_kafka_t *kafka_producer_new(const bs_config *c, void (*dr_msg_cb)(rd_kafka_t *, const rd_kafka_message_t *, void *),
                               void *opaque, char *err);

/* ---- configuration helpers ----
 * The pieces kafka_consumer_new/kafka_producer_new build from; heads.c builds its own clients
 * (the heads follower, the trainer's publisher) from them too. */
/* rd_kafka_conf_set; the error names "section.key" ("key" when section is ""). */
int kafka_conf_set(rd_kafka_conf_t *conf, const char *section, const char *key, const char *value, char *err);
/* Every key=value of l in order; errors name "section.key". */
int kafka_conf_apply(rd_kafka_conf_t *conf, const char *section, const bs_kvlist *l, char *err);
/* A default the user may override: sets key=value only when neither a (kafka.*) nor b (consumer.* or
 * producer.*) has the key. */
int kafka_conf_default(rd_kafka_conf_t *conf, const bs_kvlist *a, const bs_kvlist *b, const char *key,
                       const char *value, char *err);
/* librdkafka's log lines and client errors into bertstream's log (syslog levels mapped to ours;
 * client errors warn unless fatal): install with rd_kafka_conf_set_log_cb / _set_error_cb. */
void kafka_log_cb(const rd_kafka_t *rk, int level, const char *fac, const char *buf);
void kafka_error_cb(rd_kafka_t *rk, int err, const char *reason, void *opaque);

/* ---- command-line clients (produce, consume) ----
 * One `-X property=value` argument: sets the property on conf (error "-X name: reason", or a usage
 * line when there is no '='). Sets *verbose to 1 when the property is debug or log_level: the user
 * asked to see librdkafka's log. */
int kafka_conf_set_arg(rd_kafka_conf_t *conf, const char *arg, int *verbose, char *err);
/* librdkafka's log on stderr ("%level|facility|message") when verbose, else nothing at all, so that
 * an error is the one line a command prints. */
void kafka_conf_set_cli_log(rd_kafka_conf_t *conf, int verbose);

/* The transactional.id kafka_producer_new uses with exactly_once (buf of cap bytes). */
const char *kafka_transactional_id(const bs_config *c, char *buf, size_t cap);

/* 1 for delivery errors worth producing again later (broker down, timed out, purged, unknown
 * topic or partition: Kafka's retriable errors), 0 for errors the same message will meet again
 * (too large, invalid record, authorization...). */
int kafka_err_is_transient(rd_kafka_resp_err_t err);

#endif
