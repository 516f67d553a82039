/* The streaming scorer behind `bertstream worker`: consume reviews from Kafka, decode and tokenize
 * them on worker threads, micro-batch them through the encoder and the head, publish Avro
 * ReviewScores, dead-letter bad input, and commit an input offset only once the result (or dead
 * letter) of every message up to it was acknowledged by the broker. docs/architecture.md draws the
 * threads, queues and who owns what. */
#ifndef BS_WORKER_H
#define BS_WORKER_H

#include <signal.h>
#include <stdint.h>

#include "common.h"
#include "config.h"
#include "head.h"

/* Dead-letter codes the worker adds to codec.h's decode codes (same stability rules). */
#define WORKER_DL_PRODUCE_FAILED "produce_failed" /* the result's produce failed permanently */
#define WORKER_DL_ENGINE_FAILED "engine_failed"   /* the encoder rejected or failed the batch */

/* Test hook (documented in docs/architecture.md): when set, the engine thread sleeps this many
 * milliseconds after every batch, to make scoring slower than max.poll.interval.ms in tests. */
#define WORKER_TEST_BATCH_DELAY_ENV "BERTSTREAM_TEST_BATCH_DELAY_MS"
/* Test hooks for the two-batch pipeline on the CPU: the number of batches kept in flight (1..2,
 * instead of engine_slots()), and a latency in milliseconds before a submitted batch counts as
 * finished (a stand-in for a device computing it asynchronously), so two batches really overlap. */
#define WORKER_TEST_ENGINE_SLOTS_ENV "BERTSTREAM_TEST_ENGINE_SLOTS"
#define WORKER_TEST_ENGINE_LATENCY_ENV "BERTSTREAM_TEST_ENGINE_LATENCY_MS"

typedef struct bs_worker bs_worker;

/* The head hot-swap hook. The engine thread calls it between head applications only (never while a
 * batch's head runs; encoder batches may be in flight: the head is applied when each is collected),
 * with the version it scores with now (-1 when it has none). It returns a newer, already validated
 * head (ownership passes to the worker, which frees the one it replaces) or NULL to keep the current
 * one. Every result carries the head_version of the head that scored it. */
typedef bs_head *(*worker_head_fn)(void *ctx, int64_t have_version);

/* Loads the tokenizer, model, engine and head.file (when set), starts the HTTP server and creates
 * the Kafka clients (the consumer subscribes to topics.input). c must outlive the worker. */
bs_worker *worker_new(const bs_config *c, char *err);

/* Installs the head source (e.g. the heads-topic follower). Call before worker_run. */
void worker_set_head_source(bs_worker *w, worker_head_fn fn, void *ctx);

/* Runs the pipeline on the calling thread (the consumer thread) until *stop becomes non-zero
 * (a signal handler increments it): 1 = graceful stop (stop fetching, finish the batches in
 * flight, flush, commit, leave the group), 2 or more = stop waiting for in-flight work, commit
 * what was acknowledged and leave. Returns BS_OK after a clean stop, BS_ERR (with err) on a
 * fatal error (e.g. a fenced transactional producer). */
int worker_run(bs_worker *w, volatile sig_atomic_t *stop, char *err);

/* The HTTP port actually bound (http.listen with port 0 picks one), or -1 without HTTP. */
int worker_http_port(const bs_worker *w);

void worker_free(bs_worker *w);

#endif
