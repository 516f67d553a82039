/* The streaming pipeline: consumer thread -> tokenizer threads -> engine thread -> producer ->
 * delivery thread. Every consumed message lives in one preallocated slot from consume to
 * acknowledgement; a slot belongs to exactly one stage at a time (handed over through the two
 * queues, the producer's opaque and the retry list), so its fields need no lock of their own.
 * docs/architecture.md describes the threads, queues, ownership, offsets, rebalances and shutdown. */
#include "worker.h"

#include <errno.h>
#include <librdkafka/rdkafka.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "batcher.h"
#include "codec.h"
#include "engine.h"
#include "heads.h"
#include "http.h"
#include "kafka.h"
#include "log.h"
#include "metrics.h"
#include "model.h"
#include "tokenizer.h"

#define POLL_MS 50         /* consumer poll timeout: bounds shutdown and offset-store latency */
#define STORE_EVERY_S 0.02 /* how often acknowledged offsets are stored (then auto-committed) */
#define LAG_EVERY_S 1.0    /* consumer_lag refresh */
#define HOLD_MAX 256       /* messages kept while no slot is free (pause makes this rare) */
#define RETRY_MIN_S 0.1    /* produce retry backoff: doubles per attempt up to RETRY_MAX_S */
#define RETRY_MAX_S 10.0
#define REVOKE_WAIT_MAX_S 10.0 /* longest wait for the in-flight work of revoked partitions */
#define TXN_MAX_OPEN_S 1.0     /* exactly_once: commit even with offset gaps after this long */
#define STALL_WARN_S 10.0      /* log a partition whose commit position is stuck this long */
#define ENGINE_POLL_S 0.0002   /* engine_ready poll period while a batch is in flight */

typedef enum { OUT_NONE, OUT_RESULT, OUT_DEAD_LETTER } out_kind;

typedef struct wslot {
    int32_t index;
    rd_kafka_message_t *msg; /* the consumed message; owns the key and value bytes until release */
    bs_offsets *tracker;     /* its partition's tracker (stable while the worker lives) */
    bs_offset_ticket ticket;
    int32_t partition;
    int64_t offset;
    int64_t ts_ms; /* input message timestamp (-1 when absent) */
    /* tokenizer thread */
    int32_t *ids; /* (max_seq_len) carved out of one allocation */
    int n_tokens, truncated;
    char *review_id; /* grow-only copy (decoded strings die with the next decode) */
    size_t review_id_len, review_id_cap;
    const char *dl_code; /* non-NULL: dead letter with this code */
    char dl_reason[256];
    /* engine thread */
    int64_t head_version;
    bs_buf out; /* encoded ReviewScore, kept for re-produce */
    out_kind kind;
    /* delivery side */
    int attempts;
    double retry_at;
    struct wslot *next_retry;
    atomic_int txn_err; /* exactly_once: delivery error seen for this slot's message */
} wslot;

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t *ring;
    int cap, head, n;
} slot_queue;

/* One encoder batch from engine_submit to engine_wait; eb[i] is engine slot i (sized at start). */
typedef struct {
    int32_t *items;    /* (B) wslot indices, shortest sequence first */
    int32_t *cu;       /* (B+1) cu_seqlens */
    float *feat;       /* (B, C) the feature engine_wait delivers */
    int n;             /* B */
    int attempts;      /* submits so far (a failed batch is tried twice) */
    double t_submit;   /* engine_submit called */
    double t_returned; /* engine_submit returned (the test latency counts from here) */
} wbatch;

typedef struct {
    bs_offsets *tracker;
    int assigned;
    bs_series *lag;
    int64_t seen_pos; /* commit position at the last check, and when it last moved: a */
    double moved_at;  /* partition stuck behind an unacknowledged message gets logged */
    double warned_at;
} wpart;

struct bs_worker {
    const bs_config *cfg;
    int eos;
    bs_framing in_framing, out_framing;
    int max_seq_len;
    /* model side */
    bs_tokenizer *tok;
    bs_model *model;
    bs_engine *engine;
    bs_head *head; /* owned by the engine thread once running */
    int64_t head_version;
    worker_head_fn head_fn;
    void *head_ctx;
    bs_heads *heads; /* the heads-topic follower (topics.heads), the default head source */
    /* observability */
    bs_worker_metrics *m;
    bs_http *http;
    bs_series *dl_series[16];
    const char *dl_codes[16];
    int n_dl_codes;
    /* kafka */
    rd_kafka_t *consumer, *producer;
    kafka_rebalance_hooks hooks;
    /* slots */
    wslot *slots;
    int n_slots;
    int32_t *ids_mem;
    pthread_mutex_t free_mu;
    int32_t *free_stack;
    atomic_int n_free;
    slot_queue tokq, engq;
    /* partitions (consumer thread only) */
    wpart *parts;
    int n_parts;
    rd_kafka_message_t *held[HOLD_MAX];
    int n_held;
    int bp_paused;
    /* threads */
    int n_tok_threads;
    pthread_t *tok_threads;
    bs_codec **tok_codecs;
    pthread_t engine_thread, delivery_thread;
    int threads_started;
    atomic_int stop_tok, stop_engine, stop_delivery;
    atomic_int draining; /* flush batches at once, do not resume partitions */
    atomic_int abandon;  /* second signal: stop waiting for in-flight work */
    atomic_int fatal;
    char fatal_msg[BS_ERRLEN];
    /* engine thread */
    bs_batcher *batcher;
    int batch_full;             /* the next queued sequence does not fit: the batch goes first */
    wbatch eb[BS_ENGINE_SLOTS]; /* the batches in flight: eb[e_head], then eb[(e_head + 1) % e_slots] */
    int e_slots, e_head, e_inflight;
    int32_t *b_ids; /* (max_tokens) staging for engine_submit, shared by the slots */
    float *b_logit, *b_prob;
    wslot **dl_pending;
    bs_codec *enc_codec;
    int test_delay_ms;
    double test_latency_s;
    double busy_at_window, busy_window_start, busy_through; /* busy seconds counted when the window began */
    int64_t n_batches, n_overlapped; /* batches submitted; of those, submitted with another in flight */
    /* retry list (delivery thread consumes; any thread adds) */
    pthread_mutex_t retry_mu;
    wslot *retry_head;
    /* exactly_once (engine thread) */
    wslot **txn_slots;
    int txn_n, txn_open;
    double txn_began;
    atomic_int txn_outstanding; /* messages of the open transaction without a delivery report */
    atomic_int txn_produce_failed;
    atomic_int barrier_req, barrier_done;
    double revoke_wait_s;
};

/* ---------------------------------------------------------------------------------------------
 * Small helpers
 * ------------------------------------------------------------------------------------------- */

static void sleep_s(double s) {
    struct timespec ts = {.tv_sec = (time_t)s, .tv_nsec = (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) == -1 && errno == EINTR) {
    }
}

static void abs_deadline(struct timespec *ts, double wait_s) {
    clock_gettime(CLOCK_MONOTONIC, ts);
    double t = (double)ts->tv_sec + (double)ts->tv_nsec * 1e-9 + wait_s;
    ts->tv_sec = (time_t)t;
    ts->tv_nsec = (long)((t - (double)ts->tv_sec) * 1e9);
}

static int queue_init(slot_queue *q, int cap) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, &ca);
    pthread_condattr_destroy(&ca);
    q->ring = malloc(sizeof(int32_t) * (size_t)cap);
    q->cap = cap;
    q->head = q->n = 0;
    return q->ring ? BS_OK : BS_ERR;
}

static void queue_destroy(slot_queue *q) {
    if (!q->ring) return;
    pthread_mutex_destroy(&q->mu);
    pthread_cond_destroy(&q->cv);
    free(q->ring);
    q->ring = NULL;
}

/* Never full: the queues hold as many entries as there are slots. */
static void queue_push(slot_queue *q, int32_t v) {
    pthread_mutex_lock(&q->mu);
    q->ring[(q->head + q->n) % q->cap] = v;
    q->n++;
    pthread_cond_signal(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

static void queue_wake(slot_queue *q) {
    pthread_mutex_lock(&q->mu);
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

static int32_t free_pop(bs_worker *w) {
    int32_t idx = -1;
    pthread_mutex_lock(&w->free_mu);
    int n = atomic_load(&w->n_free);
    if (n > 0) {
        idx = w->free_stack[n - 1];
        atomic_store(&w->n_free, n - 1);
    }
    pthread_mutex_unlock(&w->free_mu);
    return idx;
}

/* Gives a slot back: destroys the consumed message (its offset is settled or abandoned). */
static void slot_release(bs_worker *w, wslot *s) {
    if (s->msg) rd_kafka_message_destroy(s->msg);
    s->msg = NULL;
    s->kind = OUT_NONE;
    pthread_mutex_lock(&w->free_mu);
    int n = atomic_load(&w->n_free);
    w->free_stack[n] = s->index;
    atomic_store(&w->n_free, n + 1);
    pthread_mutex_unlock(&w->free_mu);
}

static int slot_stale(const wslot *s) {
    return offsets_epoch(s->tracker) != s->ticket.epoch;
}

static bs_series *dl_series(bs_worker *w, const char *code) {
    for (int i = 0; i < w->n_dl_codes; i++)
        if (strcmp(w->dl_codes[i], code) == 0) return w->dl_series[i];
    return metrics_with(w->m->dead_letters, code);
}

static void slot_dead_letter(wslot *s, const char *code, const char *reason) {
    s->dl_code = code;
    size_t n = strnlen(reason, sizeof s->dl_reason - 1); /* reasons are cut to fit a header */
    memcpy(s->dl_reason, reason, n);
    s->dl_reason[n] = '\0';
    s->kind = OUT_DEAD_LETTER;
}

/* ---------------------------------------------------------------------------------------------
 * Producing results and dead letters
 * ------------------------------------------------------------------------------------------- */

static rd_kafka_resp_err_t slot_produce(bs_worker *w, wslot *s) {
    const rd_kafka_message_t *m = s->msg;
    if (s->kind == OUT_RESULT) {
        const void *key = m->key;
        size_t key_len = m->key_len;
        if (!key) { /* output key = input key, else review_id */
            key = s->review_id;
            key_len = s->review_id_len;
        }
        return rd_kafka_producev(w->producer, RD_KAFKA_V_TOPIC(w->cfg->topics.output), RD_KAFKA_V_KEY(key, key_len),
                                 RD_KAFKA_V_VALUE(s->out.data, s->out.len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
                                 RD_KAFKA_V_OPAQUE(s), RD_KAFKA_V_END);
    }
    /* Dead letter: the original key and value bytes, unchanged, and the reason in headers. */
    char part[16], off[24];
    snprintf(part, sizeof part, "%d", (int)s->partition);
    snprintf(off, sizeof off, "%lld", (long long)s->offset);
    return rd_kafka_producev(w->producer, RD_KAFKA_V_TOPIC(w->cfg->topics.dead_letter),
                             RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
                             RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_OPAQUE(s),
                             RD_KAFKA_V_HEADER("bertstream.error.code", s->dl_code, -1),
                             RD_KAFKA_V_HEADER("bertstream.error.reason", s->dl_reason, -1),
                             RD_KAFKA_V_HEADER("bertstream.source.topic", w->cfg->topics.input, -1),
                             RD_KAFKA_V_HEADER("bertstream.source.partition", part, -1),
                             RD_KAFKA_V_HEADER("bertstream.source.offset", off, -1), RD_KAFKA_V_END);
}

static void retry_schedule(bs_worker *w, wslot *s, double delay_s) {
    s->retry_at = bs_now() + delay_s;
    pthread_mutex_lock(&w->retry_mu);
    s->next_retry = w->retry_head;
    w->retry_head = s;
    pthread_mutex_unlock(&w->retry_mu);
}

/* At-least-once: a produce (or its delivery) failed. A result that can never be delivered becomes a
 * dead letter (produce_failed); anything else is produced again after a backoff, and its offset is
 * not stored meanwhile, so the worker waits rather than skips. */
static void slot_delivery_failed(bs_worker *w, wslot *s, rd_kafka_resp_err_t err) {
    if (atomic_load(&w->abandon) || slot_stale(s)) {
        slot_release(w, s); /* not acknowledged: its offset stays uncommitted */
        return;
    }
    if (s->kind == OUT_RESULT && !kafka_err_is_transient(err)) {
        log_warn("result produce failed permanently, dead-lettering the input", "partition=%d offset=%lld error=\"%s\"",
                 (int)s->partition, (long long)s->offset, rd_kafka_err2str(err));
        char reason[256];
        snprintf(reason, sizeof reason, "producing the result to %s failed: %s", w->cfg->topics.output,
                 rd_kafka_err2str(err));
        slot_dead_letter(s, WORKER_DL_PRODUCE_FAILED, reason);
        s->attempts = 0;
        retry_schedule(w, s, 0);
        return;
    }
    s->attempts++;
    double backoff = RETRY_MIN_S * (double)(1u << (s->attempts < 8 ? s->attempts - 1 : 7));
    if (backoff > RETRY_MAX_S) backoff = RETRY_MAX_S;
    bs_log(s->kind == OUT_DEAD_LETTER ? BS_LOG_ERROR : BS_LOG_WARN,
           s->kind == OUT_DEAD_LETTER ? "dead letter produce failed, retrying; offsets wait for it"
                                      : "result produce failed, retrying",
           "topic=%s partition=%d offset=%lld attempt=%d backoff_s=%.1f error=\"%s\"",
           s->kind == OUT_DEAD_LETTER ? w->cfg->topics.dead_letter : w->cfg->topics.output, (int)s->partition,
           (long long)s->offset, s->attempts, backoff, rd_kafka_err2str(err));
    retry_schedule(w, s, backoff);
}

/* The broker acknowledged the slot's result or dead letter: count it and free its offset. */
static void slot_acknowledged(bs_worker *w, wslot *s) {
    if (s->kind == OUT_RESULT) {
        metrics_inc(w->m->scored);
        if (s->ts_ms > 0) metrics_observe(w->m->end_to_end_seconds, (double)(bs_wall_ms() - s->ts_ms) / 1000.0);
    } else {
        metrics_inc(dl_series(w, s->dl_code));
    }
    if (!w->eos) offsets_done(s->tracker, s->ticket);
    slot_release(w, s);
}

static void dr_msg_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque) {
    (void)rk;
    bs_worker *w = opaque;
    wslot *s = rkm->_private;
    if (w->eos) { /* the engine thread settles transactional slots at commit or abort */
        if (rkm->err) atomic_store(&s->txn_err, (int)rkm->err);
        atomic_fetch_sub(&w->txn_outstanding, 1);
        return;
    }
    if (rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR)
        slot_acknowledged(w, s);
    else
        slot_delivery_failed(w, s, rkm->err);
}

/* At-least-once produce from the engine thread: waits out a full local queue, treats any other
 * immediate error like a failed delivery. */
static void produce_or_retry(bs_worker *w, wslot *s) {
    for (;;) {
        rd_kafka_resp_err_t e = slot_produce(w, s);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return;
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && !atomic_load(&w->abandon)) {
            sleep_s(0.005); /* the delivery thread drains the queue */
            continue;
        }
        slot_delivery_failed(w, s, e);
        return;
    }
}

static void *delivery_main(void *arg) {
    bs_worker *w = arg;
    while (!atomic_load(&w->stop_delivery)) {
        rd_kafka_poll(w->producer, 20);
        if (w->eos) continue;
        /* Produce again whatever is due. */
        double now = bs_now();
        wslot *due = NULL;
        pthread_mutex_lock(&w->retry_mu);
        for (wslot **pp = &w->retry_head; *pp;) {
            wslot *s = *pp;
            if (s->retry_at <= now || atomic_load(&w->abandon)) {
                *pp = s->next_retry;
                s->next_retry = due;
                due = s;
            } else {
                pp = &s->next_retry;
            }
        }
        pthread_mutex_unlock(&w->retry_mu);
        while (due) {
            wslot *s = due;
            due = s->next_retry;
            if (atomic_load(&w->abandon) || slot_stale(s)) {
                slot_release(w, s);
                continue;
            }
            rd_kafka_resp_err_t e = slot_produce(w, s);
            if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
                retry_schedule(w, s, 0.01);
            else if (e)
                slot_delivery_failed(w, s, e);
        }
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Tokenizer threads: decode + tokenize into the slot
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    bs_worker *w;
    int id;
} tok_arg;

static void tokenize_slot(bs_worker *w, bs_codec *codec, bs_tokens *tk, wslot *s) {
    const rd_kafka_message_t *m = s->msg;
    char err[BS_ERRLEN];
    const char *code = NULL;
    bs_review r;
    s->dl_code = NULL;
    s->kind = OUT_RESULT;
    if (codec_decode_review(codec, w->in_framing, (int32_t)w->cfg->format.input_schema_id, m->payload, m->len, m->key,
                            m->key_len, w->cfg->topics.input, s->partition, s->offset, &r, &code, err) != BS_OK) {
        slot_dead_letter(s, code ? code : BS_DL_INVALID_AVRO, err);
        return;
    }
    if (r.review_id_len + 1 > s->review_id_cap) { /* grows once per slot to the longest id seen */
        size_t cap = r.review_id_len + 64;
        char *p = realloc(s->review_id, cap);
        if (!p) {
            slot_dead_letter(s, BS_DL_TOO_LARGE, "out of memory copying review_id");
            return;
        }
        s->review_id = p;
        s->review_id_cap = cap;
    }
    memcpy(s->review_id, r.review_id, r.review_id_len);
    s->review_id[r.review_id_len] = '\0';
    s->review_id_len = r.review_id_len;
    if (tokenizer_encode(w->tok, r.text, r.text_len, w->max_seq_len, tk, err) != BS_OK) {
        slot_dead_letter(s, BS_DL_INVALID_UTF8, err);
        return;
    }
    memcpy(s->ids, tk->ids, sizeof(int32_t) * (size_t)tk->n);
    s->n_tokens = tk->n;
    s->truncated = tk->truncated;
}

static void *tokenizer_main(void *arg) {
    tok_arg *a = arg;
    bs_worker *w = a->w;
    bs_codec *codec = w->tok_codecs[a->id];
    bs_tokens tk = {0};
    free(a);
    slot_queue *q = &w->tokq;
    for (;;) {
        pthread_mutex_lock(&q->mu);
        while (q->n == 0 && !atomic_load(&w->stop_tok)) pthread_cond_wait(&q->cv, &q->mu);
        if (q->n == 0) {
            pthread_mutex_unlock(&q->mu);
            break;
        }
        int32_t idx = q->ring[q->head];
        q->head = (q->head + 1) % q->cap;
        q->n--;
        pthread_mutex_unlock(&q->mu);
        wslot *s = &w->slots[idx];
        tokenize_slot(w, codec, &tk, s);
        queue_push(&w->engq, idx);
    }
    tokens_free(&tk);
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Engine thread: batches, encoder, head, results
 * ------------------------------------------------------------------------------------------- */

static void engine_fatal(bs_worker *w, const char *what, const rd_kafka_error_t *e) {
    snprintf(w->fatal_msg, sizeof w->fatal_msg, "%s: %s", what, e ? rd_kafka_error_string(e) : "failed");
    log_error("fatal producer error, stopping", "what=%s error=\"%s\"", what, e ? rd_kafka_error_string(e) : "");
    atomic_store(&w->fatal, 1);
    atomic_store(&w->abandon, 1);
}

/* exactly_once: produce one slot's output inside the open transaction (begun on demand). */
static void txn_add(bs_worker *w, wslot *s) {
    if (atomic_load(&w->fatal)) return;
    if (!w->txn_open) {
        rd_kafka_error_t *e = rd_kafka_begin_transaction(w->producer);
        if (e) {
            engine_fatal(w, "begin_transaction", e);
            rd_kafka_error_destroy(e);
            return;
        }
        w->txn_open = 1;
        w->txn_began = bs_now();
    }
    atomic_store(&s->txn_err, 0);
    w->txn_slots[w->txn_n++] = s;
    atomic_fetch_add(&w->txn_outstanding, 1);
    for (;;) {
        rd_kafka_resp_err_t e = slot_produce(w, s);
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return;
        if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL && !atomic_load(&w->abandon)) {
            sleep_s(0.005);
            continue;
        }
        atomic_store(&s->txn_err, (int)e);
        atomic_fetch_sub(&w->txn_outstanding, 1);
        atomic_store(&w->txn_produce_failed, 1);
        return;
    }
}

static void emit(bs_worker *w, wslot *s) {
    if (slot_stale(s)) {
        slot_release(w, s); /* its partition was revoked: the new owner redoes it */
        return;
    }
    offsets_note_emitted(s->tracker, s->offset);
    if (w->eos)
        txn_add(w, s);
    else
        produce_or_retry(w, s);
}

/* Graceful stop, or the revocation of the message's partition (offsets_hand_over): a queued
 * message is still worth finishing only when something after it on its partition was already
 * emitted (else the commit could not move past it anyway). The rest are released unproduced and
 * uncommitted: the next owner scores them, once. So a revocation waits only for the batches the
 * engine already holds, and its commit lands before the group's next generation. */
static int drain_drops(bs_worker *w, const wslot *s) {
    if (!atomic_load(&w->draining) && !offsets_handing_over(s->tracker)) return 0;
    return s->offset > offsets_emitted(s->tracker);
}

static void wait_txn_reports(bs_worker *w) {
    while (atomic_load(&w->txn_outstanding) > 0) sleep_s(0.001);
}

/* exactly_once: commit the open transaction with the offsets it settles. On an abortable error
 * the transaction is aborted and replayed from the slots (they still hold every output), with
 * results that failed permanently turned into dead letters; a fatal error stops the worker. */
static void txn_commit(bs_worker *w) {
    if (!w->txn_open) return;
    int n_offs = 0;
    for (int attempt = 0; !atomic_load(&w->fatal); attempt++) {
        rd_kafka_error_t *e = NULL;
        const char *what = "produce";
        if (!atomic_load(&w->txn_produce_failed)) {
            /* Offsets: the contiguous settled position of every live partition in the transaction. */
            for (int i = 0; i < w->txn_n; i++)
                if (!slot_stale(w->txn_slots[i])) offsets_done(w->txn_slots[i]->tracker, w->txn_slots[i]->ticket);
            rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(8);
            for (int i = 0; i < w->txn_n; i++) {
                wslot *s = w->txn_slots[i];
                if (slot_stale(s) || rd_kafka_topic_partition_list_find(offs, w->cfg->topics.input, s->partition))
                    continue;
                int64_t next;
                offsets_advance(s->tracker, &next);
                if (next >= 0)
                    rd_kafka_topic_partition_list_add(offs, w->cfg->topics.input, s->partition)->offset = next;
            }
            what = "send_offsets_to_transaction";
            n_offs = offs->cnt;
            if (offs->cnt > 0) {
                rd_kafka_consumer_group_metadata_t *cg = rd_kafka_consumer_group_metadata(w->consumer);
                e = rd_kafka_send_offsets_to_transaction(w->producer, offs, cg, -1);
                rd_kafka_consumer_group_metadata_destroy(cg);
            }
            rd_kafka_topic_partition_list_destroy(offs);
            if (!e) {
                what = "commit_transaction";
                e = rd_kafka_commit_transaction(w->producer, -1);
            }
            if (!e) {
                wait_txn_reports(w);
                for (int i = 0; i < w->txn_n; i++) slot_acknowledged(w, w->txn_slots[i]);
                log_debug("transaction committed", "messages=%d offsets_partitions=%d", w->txn_n, n_offs);
                w->txn_n = 0;
                w->txn_open = 0;
                return;
            }
            if (rd_kafka_error_is_fatal(e)) {
                engine_fatal(w, what, e);
                rd_kafka_error_destroy(e);
                return;
            }
            if (rd_kafka_error_is_retriable(e) && !rd_kafka_error_txn_requires_abort(e)) {
                log_warn("transaction step failed, retrying", "what=%s error=\"%s\"", what, rd_kafka_error_string(e));
                rd_kafka_error_destroy(e);
                sleep_s(RETRY_MIN_S);
                continue;
            }
        }
        log_warn("aborting transaction and replaying it", "what=%s messages=%d attempt=%d error=\"%s\"", what, w->txn_n,
                 attempt, e ? rd_kafka_error_string(e) : "a produce failed");
        if (e) rd_kafka_error_destroy(e);
        e = rd_kafka_abort_transaction(w->producer, -1);
        if (e) {
            if (rd_kafka_error_is_fatal(e)) {
                engine_fatal(w, "abort_transaction", e);
                rd_kafka_error_destroy(e);
                return;
            }
            rd_kafka_error_destroy(e);
            sleep_s(RETRY_MIN_S);
            continue; /* abort again */
        }
        wait_txn_reports(w);
        /* Replay: a result that failed for a reason it will meet again becomes a dead letter. */
        int n = w->txn_n;
        w->txn_n = 0;
        w->txn_open = 0;
        atomic_store(&w->txn_produce_failed, 0);
        double backoff = RETRY_MIN_S * (double)(1u << (attempt < 6 ? attempt : 6));
        sleep_s(backoff);
        for (int i = 0; i < n; i++) {
            wslot *s = w->txn_slots[i];
            rd_kafka_resp_err_t se = (rd_kafka_resp_err_t)atomic_load(&s->txn_err);
            if (s->kind == OUT_RESULT && se && !kafka_err_is_transient(se)) {
                char reason[256];
                snprintf(reason, sizeof reason, "producing the result to %s failed: %s", w->cfg->topics.output,
                         rd_kafka_err2str(se));
                slot_dead_letter(s, WORKER_DL_PRODUCE_FAILED, reason);
            }
            if (slot_stale(s)) {
                slot_release(w, s);
                continue;
            }
            txn_add(w, s);
        }
    }
}

/* exactly_once: 1 when committing now settles every offset the transaction produced for (no
 * message before one of them is still on its way through the pipeline). */
static int txn_gapless(bs_worker *w) {
    for (int i = 0; i < w->txn_n; i++)
        if (!slot_stale(w->txn_slots[i])) offsets_done(w->txn_slots[i]->tracker, w->txn_slots[i]->ticket);
    for (int i = 0; i < w->txn_n; i++) {
        wslot *s = w->txn_slots[i];
        offsets_advance(s->tracker, NULL);
        if (!offsets_settled_through(s->tracker, s->ticket)) return 0;
    }
    return 1;
}

/* ---- The encoder pipeline (engine.h, "Two batches in flight") ----
 *
 * A batch goes batcher -> engine slot (engine_submit) -> engine_wait -> head -> results, and up to
 * e_slots batches are in flight: engine_slots() is 2 on CUDA, where the host gathers, packs and
 * publishes one batch while the device computes the other, and 1 on the CPU, whose submit
 * computes the whole batch, so the batch is collected at once, exactly as a plain forward pass.
 * Batches are collected in submission order (on CUDA the two compute at once, on two lanes, and
 * the later may finish first): the ones in flight are eb[e_head], eb[e_head + 1]
 * (mod e_slots), and each still owns its wslots (their messages, ids and trackers) until it is
 * collected, which is why every stop, drain and transaction barrier collects them first. */

static int batch_ready(bs_worker *w, int slot) {
    if (!engine_ready(w->engine, slot)) return 0;
    return w->test_latency_s <= 0 || bs_now() - w->eb[slot].t_returned >= w->test_latency_s;
}

/* bertstream_gpu_busy_seconds_total: the time with a batch in the engine (submit to the return of
 * its wait), a counter, so a scraper takes the share over any window it likes;
 * bertstream_gpu_busy_ratio: that share over windows of a second or more, from the counter. busy_through
 * is how far busy time has been counted, so overlapping batches count once; a running batch counts
 * up to now at every tick, so a long batch or an idle engine shows in the window where it happens. */
static void engine_busy(bs_worker *w, double t_submit, double now) {
    double from = t_submit > w->busy_through ? t_submit : w->busy_through;
    if (now > from) metrics_add(w->m->gpu_busy_seconds, now - from);
    if (now > w->busy_through) w->busy_through = now;
}

static void engine_busy_tick(bs_worker *w, double now) {
    if (w->e_inflight > 0) engine_busy(w, w->eb[w->e_head].t_submit, now);
    double span = now - w->busy_window_start;
    if (span < 1.0) return;
    const double busy = metrics_value(w->m->gpu_busy_seconds);
    double r = (busy - w->busy_at_window) / span;
    metrics_set(w->m->gpu_busy_ratio, r > 1 ? 1 : r);
    w->busy_at_window = busy;
    w->busy_window_start = now;
}

/* Packs the batch's token ids into b_ids (engine_submit reads them only while it runs, so one
 * buffer serves every slot) and submits it. */
static int batch_submit(bs_worker *w, int slot, char *err) {
    wbatch *b = &w->eb[slot];
    for (int i = 0; i < b->n; i++) {
        const wslot *s = &w->slots[b->items[i]];
        memcpy(w->b_ids + b->cu[i], s->ids, sizeof(int32_t) * (size_t)s->n_tokens);
    }
    bs_batch bb = {.n_seq = b->n, .ids = w->b_ids, .cu_seqlens = b->cu};
    bs_outputs out = {0};
    if (w->cfg->model.feature == BS_FEATURE_POOLER)
        out.pooler = b->feat;
    else if (w->cfg->model.feature == BS_FEATURE_CLS)
        out.cls = b->feat;
    else
        out.mean = b->feat;
    b->attempts++;
    b->t_submit = bs_now();
    int rc = engine_submit(w->engine, slot, &bb, &out, err);
    b->t_returned = bs_now();
    return rc;
}

static void batch_failed(bs_worker *w, const wbatch *b, const char *err) {
    log_error("engine failed a batch, dead-lettering it", "sequences=%d tokens=%d error=\"%s\"", b->n, b->cu[b->n],
              err);
    for (int i = 0; i < b->n; i++) {
        wslot *s = &w->slots[b->items[i]];
        slot_dead_letter(s, WORKER_DL_ENGINE_FAILED, err);
        emit(w, s);
    }
}

/* The batcher's sequences go into the next engine slot. A batch the engine refuses is tried once
 * more (a device hiccup should not cost reviews), then dead-lettered: nothing is in flight then. */
static void submit_batch(bs_worker *w) {
    int slot = (w->e_head + w->e_inflight) % w->e_slots;
    wbatch *b = &w->eb[slot];
    w->batch_full = 0;
    b->n = batcher_take(w->batcher, b->items, NULL);
    if (b->n == 0) return;
    b->cu[0] = 0;
    for (int i = 0; i < b->n; i++) b->cu[i + 1] = b->cu[i] + w->slots[b->items[i]].n_tokens;
    b->attempts = 0;
    char err[BS_ERRLEN];
    int rc = batch_submit(w, slot, err);
    if (rc != BS_OK) {
        log_warn("engine failed a batch, retrying it once", "sequences=%d tokens=%d error=\"%s\"", b->n, b->cu[b->n],
                 err);
        rc = batch_submit(w, slot, err);
    }
    if (rc != BS_OK) {
        batch_failed(w, b, err);
        return;
    }
    w->n_batches++;
    if (w->e_inflight > 0) w->n_overlapped++;
    w->e_inflight++;
}

/* The oldest batch in flight: wait for its features, apply the head in use now (a swap since the
 * submit is fine: every result carries the version of the head that actually scored it), publish. */
static void collect_batch(bs_worker *w) {
    int slot = w->e_head;
    wbatch *b = &w->eb[slot];
    char err[BS_ERRLEN];
    int rc = engine_wait(w->engine, slot, err);
    if (rc != BS_OK && b->attempts < 2) {
        /* The slot is free again whatever happened; a batch in the other slot, submitted after this
         * one, now completes first, and this wait covers both. */
        log_warn("engine failed a batch, retrying it once", "sequences=%d tokens=%d error=\"%s\"", b->n, b->cu[b->n],
                 err);
        rc = batch_submit(w, slot, err);
        if (rc == BS_OK) rc = engine_wait(w->engine, slot, err);
    }
    double t1 = bs_now();
    w->e_head = (slot + 1) % w->e_slots;
    w->e_inflight--;
    engine_busy(w, b->t_submit, t1);
    if (rc != BS_OK) {
        batch_failed(w, b, err);
        return;
    }
    int n = b->n;
    head_apply(w->head, b->feat, n, w->b_logit, w->b_prob);
    metrics_observe(w->m->batch_sequences, n);
    metrics_observe(w->m->batch_tokens, b->cu[n]);
    metrics_observe(w->m->encode_seconds, t1 - b->t_submit);
    if (w->test_delay_ms > 0) sleep_s(w->test_delay_ms / 1000.0);
    int64_t now_ms = bs_wall_ms();
    for (int i = 0; i < n; i++) {
        wslot *s = &w->slots[b->items[i]];
        bs_review_score rs = {
            .review_id = s->review_id,
            .review_id_len = s->review_id_len,
            .label = head_label(w->b_prob[i]),
            .probability = w->b_prob[i],
            .logit = w->b_logit[i],
            .tokens = s->n_tokens,
            .truncated = s->truncated,
            .head_version = w->head_version,
            .model_id = w->model->encoder_id,
            .scored_at = now_ms,
            .source_partition = s->partition,
            .source_offset = s->offset,
        };
        s->head_version = w->head_version;
        if (codec_encode_review_score(w->enc_codec, w->out_framing, (int32_t)w->cfg->format.output_schema_id, &rs,
                                      &s->out, err) != BS_OK) {
            slot_dead_letter(s, WORKER_DL_PRODUCE_FAILED, err);
        }
        emit(w, s);
    }
}

/* Between head applications only: take a newer head from the source, if any. Batches may be in
 * the encoder meanwhile; the head is applied when they are collected. */
static void maybe_swap_head(bs_worker *w) {
    if (!w->head_fn) return;
    bs_head *h = w->head_fn(w->head_ctx, w->head ? w->head_version : -1);
    if (!h) return;
    char err[BS_ERRLEN];
    if (head_validate(h, w->model->cfg.hidden, err) != BS_OK) {
        log_error("new head rejected", "version=%lld error=\"%s\"", (long long)h->version, err);
        head_free(h);
        return;
    }
    log_info("head swapped", "from_version=%lld to_version=%lld batches_in_flight=%d",
             (long long)(w->head ? w->head_version : -1), (long long)h->version, w->e_inflight);
    head_free(w->head);
    w->head = h;
    w->head_version = h->version;
    metrics_set(w->m->head_version, (double)h->version);
    if (w->http) http_set_ready(w->http, BS_READY_HEAD, 1);
}

/* One loop: (1) gather ready slots (dead letters straight out, sequences into the batcher), (2)
 * submit the batch when it is due and a slot is free, (3) collect finished batches, oldest first.
 * While a batch is in flight the gather step waits at most ENGINE_POLL_S, so the engine is polled
 * (engine_wait would spin a core) and the next batch is ready when a slot frees. */
static void *engine_main(void *arg) {
    bs_worker *w = arg;
    slot_queue *q = &w->engq;
    int ndl = 0;
    w->busy_window_start = w->busy_through = bs_now();
    w->busy_at_window = metrics_value(w->m->gpu_busy_seconds);
    for (;;) {
        maybe_swap_head(w);
        double now = bs_now();
        engine_busy_tick(w, now);
        int draining = atomic_load(&w->draining) || atomic_load(&w->abandon);
        int barrier = atomic_load(&w->barrier_req) != atomic_load(&w->barrier_done);
        int can_submit = w->e_inflight < w->e_slots, pending = batcher_count(w->batcher);
        int submit_now = can_submit && (w->batch_full || batcher_due(w->batcher, now) || (draining && pending > 0));
        int collect_now = w->e_inflight > 0 && (draining || batch_ready(w, w->e_head));
        pthread_mutex_lock(&q->mu);
        int gather_now = q->n > 0 && w->head && !w->batch_full;
        if (!submit_now && !collect_now && !gather_now && !barrier && !atomic_load(&w->stop_engine)) {
            /* Nothing to do before the batch deadline; wake at least every 100 ms for head swaps and
             * the stop and drain flags (every 10 ms while a transaction is open). */
            double wait = 0.1;
            if (can_submit && pending > 0 && batcher_wait(w->batcher, now) < wait) wait = batcher_wait(w->batcher, now);
            if (w->eos && w->txn_open && wait > 0.01) wait = 0.01;
            if (w->e_inflight > 0 && wait > ENGINE_POLL_S) wait = ENGINE_POLL_S;
            struct timespec ts;
            abs_deadline(&ts, wait);
            pthread_cond_timedwait(&q->cv, &q->mu, &ts);
        }
        /* (1) Pull what is ready: dead letters go straight out, sequences into the batcher. */
        while (q->n > 0) {
            wslot *s = &w->slots[q->ring[q->head]];
            int direct = s->dl_code || slot_stale(s) || drain_drops(w, s); /* these skip the batch */
            if (!direct) {
                if (!w->head) break; /* no head yet: wait for one */
                if (batcher_add(w->batcher, s->index, s->n_tokens, bs_now()) != BS_OK) {
                    w->batch_full = 1; /* the next sequence does not fit: the batch goes first */
                    break;
                }
                /* A graceful stop finishes every batched message, so from now on it counts as
                 * emitted for drain_drops: an earlier message of its partition still queued (the
                 * tokenizer threads reorder) is then finished too, never dropped below it. */
                offsets_note_emitted(s->tracker, s->offset);
            }
            q->head = (q->head + 1) % q->cap;
            q->n--;
            if (direct) w->dl_pending[ndl++] = s; /* produced (or released) below, outside the lock */
        }
        pthread_mutex_unlock(&q->mu);
        for (int i = 0; i < ndl; i++) {
            wslot *s = w->dl_pending[i];
            if (drain_drops(w, s)) {
                offsets_abandon(s->tracker, s->ticket);
                slot_release(w, s);
            } else {
                emit(w, s);
            }
        }
        ndl = 0;
        /* (2) Submit. */
        draining = atomic_load(&w->draining) || atomic_load(&w->abandon);
        if (w->e_inflight < w->e_slots &&
            (w->batch_full || batcher_due(w->batcher, bs_now()) || (draining && batcher_count(w->batcher) > 0)))
            submit_batch(w);
        /* (3) Collect what the engine finished; everything in flight at a drain, a transaction
         * barrier (a revocation waits for those results), a stop or a fatal error. */
        barrier = atomic_load(&w->barrier_req) != atomic_load(&w->barrier_done);
        int flush = draining || barrier || atomic_load(&w->stop_engine) || atomic_load(&w->fatal);
        while (w->e_inflight > 0 && (flush || batch_ready(w, w->e_head))) collect_batch(w);
        if (w->eos && w->txn_open) {
            if (barrier || draining || bs_now() - w->txn_began >= TXN_MAX_OPEN_S || txn_gapless(w)) txn_commit(w);
        }
        int req = atomic_load(&w->barrier_req);
        if (req != atomic_load(&w->barrier_done) && !w->txn_open && w->e_inflight == 0)
            atomic_store(&w->barrier_done, req);
        if (atomic_load(&w->stop_engine)) {
            pthread_mutex_lock(&q->mu);
            int idle = q->n == 0 || atomic_load(&w->abandon) || !w->head;
            pthread_mutex_unlock(&q->mu);
            if (idle && (batcher_count(w->batcher) == 0 || atomic_load(&w->abandon)) && !w->txn_open &&
                w->e_inflight == 0)
                break;
        }
        if (atomic_load(&w->fatal) && w->e_inflight == 0) break;
    }
    return NULL;
}

/* ---------------------------------------------------------------------------------------------
 * Consumer thread: partitions, dispatch, backpressure, offsets
 * ------------------------------------------------------------------------------------------- */

static wpart *part_get(bs_worker *w, int32_t p, int create) {
    if (p < 0) return NULL;
    if (p >= w->n_parts) {
        if (!create) return NULL;
        int n = p + 1;
        wpart *np = realloc(w->parts, sizeof(wpart) * (size_t)n);
        if (!np) return NULL;
        memset(np + w->n_parts, 0, sizeof(wpart) * (size_t)(n - w->n_parts));
        w->parts = np;
        w->n_parts = n;
    }
    wpart *pp = &w->parts[p];
    if (!pp->tracker && create) {
        pp->tracker = offsets_new(w->n_slots);
        char label[16];
        snprintf(label, sizeof label, "%d", (int)p);
        pp->lag = metrics_with(w->m->consumer_lag, label);
        if (!pp->tracker) return NULL;
    }
    return pp;
}

static int any_assigned(bs_worker *w) {
    for (int p = 0; p < w->n_parts; p++)
        if (w->parts[p].assigned) return 1;
    return 0;
}

/* Pauses or resumes every assigned partition (backpressure, drain). */
static void set_paused(bs_worker *w, int pause) {
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(w->n_parts > 0 ? w->n_parts : 1);
    for (int p = 0; p < w->n_parts; p++)
        if (w->parts[p].assigned) rd_kafka_topic_partition_list_add(l, w->cfg->topics.input, p);
    if (l->cnt > 0) {
        rd_kafka_resp_err_t e =
            pause ? rd_kafka_pause_partitions(w->consumer, l) : rd_kafka_resume_partitions(w->consumer, l);
        if (e) log_warn(pause ? "pause failed" : "resume failed", "error=\"%s\"", rd_kafka_err2str(e));
    }
    rd_kafka_topic_partition_list_destroy(l);
}

static void drop_held(bs_worker *w, int32_t partition) {
    int k = 0;
    for (int i = 0; i < w->n_held; i++) {
        if (partition < 0 || w->held[i]->partition == partition)
            rd_kafka_message_destroy(w->held[i]);
        else
            w->held[k++] = w->held[i];
    }
    w->n_held = k;
}

/* Hands a message to the pipeline. 0 when no slot is free (the caller keeps it). */
static int dispatch(bs_worker *w, rd_kafka_message_t *m) {
    wpart *pp = part_get(w, m->partition, 0);
    if (!pp || !pp->assigned) { /* not ours (any more): whoever owns it consumes it */
        rd_kafka_message_destroy(m);
        return 1;
    }
    int32_t idx = free_pop(w);
    if (idx < 0) return 0;
    wslot *s = &w->slots[idx];
    int rc = offsets_push(pp->tracker, m->offset, &s->ticket);
    if (rc == OFFSETS_DUPLICATE) { /* a re-delivery: the first copy is tracked and in flight already */
        log_debug("duplicate delivery dropped", "partition=%d offset=%lld", (int)m->partition, (long long)m->offset);
        rd_kafka_message_destroy(m);
        slot_release(w, s);
        return 1;
    }
    if (rc != BS_OK) { /* OFFSETS_FULL: cannot happen with a ring of queue_depth; keep it for later */
        slot_release(w, s);
        return 0;
    }
    s->msg = m;
    s->tracker = pp->tracker;
    s->partition = m->partition;
    s->offset = m->offset;
    rd_kafka_timestamp_type_t tt;
    s->ts_ms = rd_kafka_message_timestamp(m, &tt);
    s->attempts = 0;
    s->kind = OUT_NONE;
    metrics_inc(w->m->consumed);
    queue_push(&w->tokq, idx);
    return 1;
}

/* A consumed message that must wait for a slot. Partitions are paused at once, so at most a few
 * arrive; should the buffer ever fill, the partition is rewound instead (nothing of it is tracked
 * past its first held message, so seeking there loses and duplicates nothing). */
static void hold(bs_worker *w, rd_kafka_message_t *m) {
    if (!w->bp_paused) {
        set_paused(w, 1);
        w->bp_paused = 1;
    }
    if (w->n_held < HOLD_MAX) {
        w->held[w->n_held++] = m;
        return;
    }
    int64_t first = m->offset;
    for (int i = 0; i < w->n_held; i++)
        if (w->held[i]->partition == m->partition && w->held[i]->offset < first) first = w->held[i]->offset;
    int32_t p = m->partition;
    rd_kafka_message_destroy(m);
    drop_held(w, p);
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
    rd_kafka_topic_partition_list_add(l, w->cfg->topics.input, p)->offset = first;
    rd_kafka_error_t *e = rd_kafka_seek_partitions(w->consumer, l, 0);
    if (e) {
        log_error("seek after hold overflow failed", "partition=%d error=\"%s\"", (int)p, rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    rd_kafka_topic_partition_list_destroy(l);
    log_warn("hold buffer full, partition rewound", "partition=%d offset=%lld", (int)p, (long long)first);
}

/* Stores the acknowledged position of every assigned partition that moved (at-least-once).
 * parts: only these partitions (NULL = all assigned). Returns the list stored (caller destroys) when
 * want_list, else NULL. */
static rd_kafka_topic_partition_list_t *store_offsets(bs_worker *w, const rd_kafka_topic_partition_list_t *parts,
                                                      int want_list) {
    rd_kafka_topic_partition_list_t *l = NULL;
    int n = parts ? parts->cnt : w->n_parts;
    for (int i = 0; i < n; i++) {
        int32_t p = parts ? parts->elems[i].partition : i;
        wpart *pp = part_get(w, p, 0);
        if (!pp || !pp->assigned || !pp->tracker) continue;
        int64_t next;
        int moved = offsets_advance(pp->tracker, &next);
        if (next < 0 || (!moved && !want_list)) continue;
        if (!l) l = rd_kafka_topic_partition_list_new(n);
        rd_kafka_topic_partition_list_add(l, w->cfg->topics.input, p)->offset = next;
    }
    if (l && !w->eos) {
        rd_kafka_resp_err_t e = rd_kafka_offsets_store(w->consumer, l);
        if (e) log_warn("offsets store failed", "error=\"%s\"", rd_kafka_err2str(e));
    }
    if (!want_list && l) {
        rd_kafka_topic_partition_list_destroy(l);
        l = NULL;
    }
    return l;
}

/* Stores the acknowledged positions of parts (NULL = every assigned partition) and commits them
 * synchronously. */
static void commit_stored(bs_worker *w, const rd_kafka_topic_partition_list_t *parts, const char *why) {
    if (w->eos) return; /* offsets travel in the transactions */
    rd_kafka_topic_partition_list_t *l = store_offsets(w, parts, 1);
    if (!l) return;
    rd_kafka_resp_err_t e = rd_kafka_commit(w->consumer, l, 0);
    if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        log_warn("synchronous commit failed", "why=%s error=\"%s\"", why, rd_kafka_err2str(e));
    else
        log_info("offsets committed", "why=%s partitions=%d", why, l->cnt);
    rd_kafka_topic_partition_list_destroy(l);
}

static void update_lag(bs_worker *w) {
    double now = bs_now();
    for (int p = 0; p < w->n_parts; p++) {
        wpart *pp = &w->parts[p];
        if (!pp->assigned) continue;
        int64_t lo, hi, pos = offsets_committable(pp->tracker);
        int waiting = offsets_in_flight(pp->tracker);
        if (pos != pp->seen_pos || waiting == 0) {
            pp->seen_pos = pos;
            pp->moved_at = now;
        } else if (now - pp->moved_at >= STALL_WARN_S && now - pp->warned_at >= STALL_WARN_S) {
            log_warn("offsets waiting for an acknowledgement",
                     "partition=%d committable=%lld in_flight=%d waited_s=%.0f", p, (long long)pos, waiting,
                     now - pp->moved_at);
            pp->warned_at = now;
        }
        if (rd_kafka_get_watermark_offsets(w->consumer, w->cfg->topics.input, p, &lo, &hi) || hi < 0) continue;
        if (pos < 0) pos = offsets_position(pp->tracker);
        if (pos < 0) continue;
        metrics_set(pp->lag, hi > pos ? (double)(hi - pos) : 0.0);
    }
}

/* exactly_once: asks the engine thread to commit its open transaction and waits for it. */
static void txn_barrier(bs_worker *w, double max_s) {
    int req = atomic_fetch_add(&w->barrier_req, 1) + 1;
    queue_wake(&w->engq);
    double until = bs_now() + max_s;
    while (atomic_load(&w->barrier_done) < req && bs_now() < until && !atomic_load(&w->fatal)) sleep_s(0.002);
}

static void on_assigned(void *ctx, rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts) {
    (void)rk;
    bs_worker *w = ctx;
    for (int i = 0; i < parts->cnt; i++) {
        if (strcmp(parts->elems[i].topic, w->cfg->topics.input) != 0) continue;
        wpart *pp = part_get(w, parts->elems[i].partition, 1);
        if (!pp) {
            log_error("out of memory tracking a partition", "partition=%d", (int)parts->elems[i].partition);
            continue;
        }
        offsets_reset(pp->tracker); /* new epoch: late results of an earlier assignment are ignored */
        pp->assigned = 1;
    }
    if ((w->bp_paused || atomic_load(&w->draining)) && parts->cnt > 0) {
        rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(parts);
        rd_kafka_pause_partitions(w->consumer, l);
        rd_kafka_topic_partition_list_destroy(l);
    }
    if (w->http) http_set_ready(w->http, BS_READY_PARTITIONS, any_assigned(w));
}

/* Messages of these (assigned) partitions not yet acknowledged; moves their commit positions. */
static int revoking_in_flight(bs_worker *w, const rd_kafka_topic_partition_list_t *parts) {
    int left = 0;
    for (int i = 0; i < parts->cnt; i++) {
        wpart *pp = part_get(w, parts->elems[i].partition, 0);
        if (!pp || !pp->assigned) continue;
        if (!w->eos) offsets_advance(pp->tracker, NULL);
        left += offsets_in_flight(pp->tracker);
    }
    return left;
}

/* Revocation: drop the queued messages of these partitions (drain_drops), commit what is already
 * acknowledged, wait (bounded) for what the engine already holds of them to be acknowledged, commit
 * that, then abandon whatever is left (a new epoch makes its late results harmless; the new owner
 * scores those messages again: the duplicates at-least-once allows). Lost partitions are not ours
 * to commit: they are abandoned at once.
 * The first commit is there because the group may refuse the second one: another member can start
 * the next rebalance while this one waits for the engine, and from then on the coordinator answers
 * REBALANCE_IN_PROGRESS (a real broker while it completes the rebalance; librdkafka's mock broker
 * from the first JoinGroup on, and it starts one whenever a follower's SyncGroup comes after the
 * leader's). Had nothing been committed since the last periodic commit, which the same rebalance
 * may have refused for seconds, the new owner would score all of that again, not just what the
 * engine held. */
static void on_revoking(void *ctx, rd_kafka_t *rk, const rd_kafka_topic_partition_list_t *parts, int lost) {
    (void)rk;
    bs_worker *w = ctx;
    for (int i = 0; i < parts->cnt; i++) drop_held(w, parts->elems[i].partition);
    if (!lost) {
        for (int i = 0; i < parts->cnt; i++) { /* their queued messages are dropped, not scored */
            wpart *pp = part_get(w, parts->elems[i].partition, 0);
            if (pp && pp->assigned && strcmp(parts->elems[i].topic, w->cfg->topics.input) == 0)
                offsets_hand_over(pp->tracker);
        }
        queue_wake(&w->engq);
        double t0 = bs_now(), until = t0 + w->revoke_wait_s;
        int left = revoking_in_flight(w, parts);
        if (left > 0) commit_stored(w, parts, "revoke_acknowledged");
        while (left > 0 && bs_now() < until && !atomic_load(&w->abandon) && !atomic_load(&w->fatal)) {
            sleep_s(0.002);
            left = revoking_in_flight(w, parts);
        }
        if (w->eos && w->threads_started) txn_barrier(w, w->revoke_wait_s);
        commit_stored(w, parts, "revoke");
        log_info("revoked partitions drained", "partitions=%d abandoned=%d wait_s=%.3f", parts->cnt, left,
                 bs_now() - t0);
    }
    for (int i = 0; i < parts->cnt; i++) {
        wpart *pp = part_get(w, parts->elems[i].partition, 0);
        if (!pp) continue;
        offsets_reset(pp->tracker);
        pp->assigned = 0;
        metrics_hide(pp->lag);
    }
    if (w->http) http_set_ready(w->http, BS_READY_PARTITIONS, any_assigned(w));
}

/* ---------------------------------------------------------------------------------------------
 * Lifecycle
 * ------------------------------------------------------------------------------------------- */

static int64_t kv_int(const bs_config *c, const char *key, int64_t def) {
    const char *v = config_kv_get(&c->consumer, key);
    if (!v) v = config_kv_get(&c->kafka, key);
    return v ? strtoll(v, NULL, 10) : def;
}

static bs_head *heads_source(void *ctx, int64_t have_version) {
    return heads_acquire_newer(ctx, have_version);
}

bs_worker *worker_new(const bs_config *c, char *err) {
    char vocab[2048];
    bs_worker *w = calloc(1, sizeof *w);
    if (!w) {
        bs_err(err, "out of memory");
        return NULL;
    }
    w->cfg = c;
    w->eos = c->delivery == BS_DELIVERY_EXACTLY_ONCE;
    w->in_framing = (bs_framing)c->format.input;
    w->out_framing = (bs_framing)c->format.output;
    w->head_version = -1;
    pthread_mutex_init(&w->free_mu, NULL);
    pthread_mutex_init(&w->retry_mu, NULL);
    const char *delay = getenv(WORKER_TEST_BATCH_DELAY_ENV);
    if (delay && *delay) {
        w->test_delay_ms = atoi(delay);
        log_warn("test hook active: every batch is slowed down", "env=%s delay_ms=%d", WORKER_TEST_BATCH_DELAY_ENV,
                 w->test_delay_ms);
    }
    double mpi = (double)kv_int(c, "max.poll.interval.ms", 300000) / 1000.0;
    w->revoke_wait_s = mpi / 2 < REVOKE_WAIT_MAX_S ? mpi / 2 : REVOKE_WAIT_MAX_S;

    /* Metrics and HTTP first, so /healthz answers while the model loads. */
    if (!(w->m = metrics_worker_new(err))) goto fail;
    for (int i = 0; i < codec_dead_letter_code_count && w->n_dl_codes < 14; i++)
        w->dl_codes[w->n_dl_codes++] = codec_dead_letter_codes[i];
    w->dl_codes[w->n_dl_codes++] = WORKER_DL_PRODUCE_FAILED;
    w->dl_codes[w->n_dl_codes++] = WORKER_DL_ENGINE_FAILED;
    for (int i = 0; i < w->n_dl_codes; i++) w->dl_series[i] = metrics_with(w->m->dead_letters, w->dl_codes[i]);
    if (c->http.listen[0]) {
        bs_http_opts ho = {.metrics = w->m->registry, .required = BS_READY_ALL};
        if (!(w->http = http_start(c->http.listen, &ho, err))) goto fail;
        log_info("http listening", "listen=%s port=%d", c->http.listen, http_port(w->http));
    }

    /* Model side. */
    config_vocab_path(c, vocab, sizeof vocab);
    if (!(w->tok = tokenizer_new(vocab, err))) goto fail;
    if (!(w->model = model_load(c->model.dir, err))) goto fail;
    if (tokenizer_check_model_vocab(w->tok, vocab, w->model->cfg.vocab_size, err) != BS_OK) goto fail;
    w->max_seq_len = (int)c->model.max_seq_len;
    if (w->max_seq_len > w->model->cfg.max_positions) {
        log_warn("model.max_seq_len above the model's max_position_embeddings, clamped", "max_seq_len=%d clamped=%d",
                 w->max_seq_len, w->model->cfg.max_positions);
        w->max_seq_len = w->model->cfg.max_positions;
    }
    int max_seqs = (int)c->batch.max_sequences, max_tokens = (int)c->batch.max_tokens;
    if (max_tokens < w->max_seq_len) max_tokens = w->max_seq_len;
    bs_engine_opts eo = {.device = c->model.device,
                         .precision = c->model.precision,
                         .max_seqs = max_seqs,
                         .max_tokens = max_tokens,
                         .max_seq_len = w->max_seq_len};
    if (!(w->engine = engine_new(w->model, &eo, err))) goto fail;
    w->e_slots = engine_slots(w->engine);
    const char *slots = getenv(WORKER_TEST_ENGINE_SLOTS_ENV);
    if (slots && *slots) {
        char *end;
        long n = strtol(slots, &end, 10);
        if (*end || n < 1 || n > BS_ENGINE_SLOTS) {
            bs_err(err, "%s=%s: expected 1..%d", WORKER_TEST_ENGINE_SLOTS_ENV, slots, BS_ENGINE_SLOTS);
            goto fail;
        }
        w->e_slots = (int)n;
        log_warn("test hook active: engine slots overridden", "env=%s engine_slots=%d", WORKER_TEST_ENGINE_SLOTS_ENV,
                 w->e_slots);
    }
    const char *latency = getenv(WORKER_TEST_ENGINE_LATENCY_ENV);
    if (latency && *latency) {
        w->test_latency_s = atof(latency) / 1000.0;
        log_warn("test hook active: batches complete no sooner than the latency", "env=%s latency_ms=%.0f",
                 WORKER_TEST_ENGINE_LATENCY_ENV, w->test_latency_s * 1000.0);
    }
    if (w->http) http_set_ready(w->http, BS_READY_MODEL, 1);
    /* The head: the newest valid one on topics.heads (waiting up to head.wait_ms for it), else
     * head.file, else none yet (the engine thread waits for the follower; /readyz says so). */
    const char *head_from = "(none yet)";
    if (c->topics.heads[0]) {
        if (!(w->heads = heads_new(c, w->model->encoder_id, w->model->cfg.hidden, w->m->heads_rejected, err)))
            goto fail;
        worker_set_head_source(w, heads_source, w->heads);
        if (heads_wait(w->heads, (int)c->head.wait_ms) && (w->head = heads_acquire_newer(w->heads, -1)))
            head_from = c->topics.heads;
    }
    if (!w->head && c->head.file[0]) {
        if (!(w->head = head_load(c->head.file, NULL, err))) goto fail;
        if (head_validate(w->head, w->model->cfg.hidden, err) != BS_OK) goto fail;
        head_from = c->head.file;
    }
    if (w->head) {
        w->head_version = w->head->version;
        metrics_set(w->m->head_version, (double)w->head_version);
        if (w->http) http_set_ready(w->http, BS_READY_HEAD, 1);
    }
    log_info("model loaded", "dir=%s encoder_id=%s engine=\"%s\" feature=%s max_seq_len=%d head=%s head_version=%lld",
             c->model.dir, w->model->encoder_id, engine_describe(w->engine), bs_feature_name(c->model.feature),
             w->max_seq_len, head_from, (long long)w->head_version);

    /* Slots, queues and the engine thread's buffers: everything the hot path touches, sized once. */
    w->n_slots = (int)c->worker.queue_depth;
    w->slots = calloc((size_t)w->n_slots, sizeof(wslot));
    w->ids_mem = malloc(sizeof(int32_t) * (size_t)w->n_slots * (size_t)w->max_seq_len);
    w->free_stack = malloc(sizeof(int32_t) * (size_t)w->n_slots);
    w->dl_pending = malloc(sizeof(wslot *) * (size_t)w->n_slots);
    w->txn_slots = malloc(sizeof(wslot *) * (size_t)w->n_slots);
    w->batcher = batcher_new(max_seqs, max_tokens, (int)c->batch.max_delay_ms);
    w->b_ids = malloc(sizeof(int32_t) * (size_t)max_tokens);
    w->b_logit = malloc(sizeof(float) * (size_t)max_seqs);
    w->b_prob = malloc(sizeof(float) * (size_t)max_seqs);
    int eb_ok = 1;
    for (int i = 0; i < w->e_slots; i++) {
        wbatch *b = &w->eb[i];
        b->items = malloc(sizeof(int32_t) * (size_t)max_seqs);
        b->cu = malloc(sizeof(int32_t) * (size_t)(max_seqs + 1));
        b->feat = malloc(sizeof(float) * (size_t)max_seqs * (size_t)w->model->cfg.hidden);
        eb_ok = eb_ok && b->items && b->cu && b->feat;
    }
    if (!w->slots || !w->ids_mem || !w->free_stack || !w->dl_pending || !w->txn_slots || !w->batcher || !eb_ok ||
        !w->b_ids || !w->b_logit || !w->b_prob || queue_init(&w->tokq, w->n_slots) != BS_OK ||
        queue_init(&w->engq, w->n_slots) != BS_OK) {
        bs_err(err, "out of memory allocating %d slots", w->n_slots);
        goto fail;
    }
    for (int i = 0; i < w->n_slots; i++) {
        w->slots[i].index = i;
        w->slots[i].ids = w->ids_mem + (size_t)i * (size_t)w->max_seq_len;
        w->free_stack[i] = w->n_slots - 1 - i;
    }
    atomic_store(&w->n_free, w->n_slots);
    w->n_tok_threads = (int)c->worker.tokenizer_threads;
    w->tok_codecs = calloc((size_t)w->n_tok_threads, sizeof(bs_codec *));
    w->tok_threads = calloc((size_t)w->n_tok_threads, sizeof(pthread_t));
    if (!w->tok_codecs || !w->tok_threads) {
        bs_err(err, "out of memory");
        goto fail;
    }
    for (int i = 0; i < w->n_tok_threads; i++) {
        if (!(w->tok_codecs[i] = codec_new(err))) goto fail;
        codec_set_max_value_bytes(w->tok_codecs[i], (size_t)c->worker.max_message_bytes);
    }
    if (!(w->enc_codec = codec_new(err))) goto fail;

    /* Kafka. */
    if (!(w->producer = kafka_producer_new(c, dr_msg_cb, w, err))) goto fail;
    if (w->eos) {
        rd_kafka_error_t *e = rd_kafka_init_transactions(w->producer, 30000);
        if (e) {
            bs_err(err, "init_transactions: %s", rd_kafka_error_string(e));
            rd_kafka_error_destroy(e);
            goto fail;
        }
        char tid[512];
        log_info("transactional producer ready", "transactional.id=%s", kafka_transactional_id(c, tid, sizeof tid));
    }
    w->hooks = (kafka_rebalance_hooks){.assigned = on_assigned, .revoking = on_revoking, .ctx = w};
    if (!(w->consumer = kafka_consumer_new(c, &w->hooks, err))) goto fail;
    log_info("worker ready",
             "input=%s output=%s dead_letter=%s delivery=%s tokenizer_threads=%d queue_depth=%d "
             "max_sequences=%d max_tokens=%d max_delay_ms=%d engine_slots=%d",
             c->topics.input, c->topics.output, c->topics.dead_letter, config_delivery_name(c->delivery),
             w->n_tok_threads, w->n_slots, max_seqs, max_tokens, (int)c->batch.max_delay_ms, w->e_slots);
    return w;
fail:
    worker_free(w);
    return NULL;
}

void worker_set_head_source(bs_worker *w, worker_head_fn fn, void *ctx) {
    w->head_fn = fn;
    w->head_ctx = ctx;
}

int worker_http_port(const bs_worker *w) {
    return w->http ? http_port(w->http) : -1;
}

static int start_threads(bs_worker *w, char *err) {
    /* The threads inherit this mask: SIGTERM/SIGINT reach the consumer thread (librdkafka's threads
     * block them too), which polls with short timeouts and so notices the flag promptly. */
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    sigaddset(&term, SIGINT);
    pthread_sigmask(SIG_BLOCK, &term, &old);
    int rc = BS_OK;
    for (int i = 0; i < w->n_tok_threads && rc == BS_OK; i++) {
        tok_arg *a = malloc(sizeof *a);
        if (!a)
            rc = bs_err(err, "out of memory");
        else {
            *a = (tok_arg){.w = w, .id = i};
            if (pthread_create(&w->tok_threads[i], NULL, tokenizer_main, a)) {
                free(a);
                rc = bs_err(err, "cannot start tokenizer thread");
            } else {
                w->threads_started |= 1;
            }
        }
    }
    if (rc == BS_OK && pthread_create(&w->engine_thread, NULL, engine_main, w))
        rc = bs_err(err, "cannot start engine thread");
    else if (rc == BS_OK)
        w->threads_started |= 2;
    if (rc == BS_OK && pthread_create(&w->delivery_thread, NULL, delivery_main, w))
        rc = bs_err(err, "cannot start delivery thread");
    else if (rc == BS_OK)
        w->threads_started |= 4;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return rc;
}

/* Stops the worker threads in pipeline order and frees whatever slots they left behind. */
static void stop_threads(bs_worker *w) {
    if (w->threads_started & 1) {
        atomic_store(&w->stop_tok, 1);
        queue_wake(&w->tokq);
        for (int i = 0; i < w->n_tok_threads; i++)
            if (w->tok_threads[i]) pthread_join(w->tok_threads[i], NULL);
    }
    if (w->threads_started & 2) {
        atomic_store(&w->stop_engine, 1);
        queue_wake(&w->engq);
        pthread_join(w->engine_thread, NULL);
    }
    if (w->threads_started & 4) {
        /* Whatever the producer still holds is purged (abandon) or flushed; reports release slots. */
        if (atomic_load(&w->abandon)) rd_kafka_purge(w->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
        rd_kafka_flush(w->producer, atomic_load(&w->abandon) ? 1000 : 10000);
        atomic_store(&w->stop_delivery, 1);
        pthread_join(w->delivery_thread, NULL);
        rd_kafka_poll(w->producer, 0);
    }
    w->threads_started = 0;
    /* Slots still holding a message (abandoned work) give it back before the consumer closes. */
    for (int i = 0; i < w->n_slots; i++)
        if (w->slots[i].msg) {
            rd_kafka_message_destroy(w->slots[i].msg);
            w->slots[i].msg = NULL;
        }
    w->retry_head = NULL;
}

int worker_run(bs_worker *w, volatile sig_atomic_t *stop, char *err) {
    if (start_threads(w, err) != BS_OK) {
        atomic_store(&w->abandon, 1);
        stop_threads(w);
        return BS_ERR;
    }
    double last_store = 0, last_lag = 0;
    int rc = BS_OK;
    while (!*stop && !atomic_load(&w->fatal)) {
        /* Messages held for want of a slot go first, in order. */
        while (w->n_held > 0 && dispatch(w, w->held[0])) {
            memmove(w->held, w->held + 1, sizeof(w->held[0]) * (size_t)(w->n_held - 1));
            w->n_held--;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(w->consumer, POLL_MS);
        if (m) {
            if (m->err) {
                if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                    log_warn("consumer error", "error=\"%s\" detail=\"%s\"", rd_kafka_err2str(m->err),
                             rd_kafka_message_errstr(m));
                rd_kafka_message_destroy(m);
            } else if (w->n_held > 0 || !dispatch(w, m)) {
                hold(w, m);
            }
        }
        /* Backpressure: pause before the last slot goes, resume once half are free again. */
        int nfree = atomic_load(&w->n_free);
        if (!w->bp_paused && nfree == 0) {
            set_paused(w, 1);
            w->bp_paused = 1;
            log_debug("backpressure: partitions paused", "queue_depth=%d", w->n_slots);
        } else if (w->bp_paused && w->n_held == 0 && nfree >= (w->n_slots + 1) / 2) {
            set_paused(w, 0);
            w->bp_paused = 0;
            log_debug("backpressure: partitions resumed", "free_slots=%d", nfree);
        }
        double now = bs_now();
        if (!w->eos && now - last_store >= STORE_EVERY_S) {
            store_offsets(w, NULL, 0);
            last_store = now;
        }
        if (now - last_lag >= LAG_EVERY_S) {
            update_lag(w);
            last_lag = now;
        }
    }

    /* Shutdown: stop fetching, finish what is in flight, commit, leave the group. */
    log_info("stopping: draining in-flight messages", "in_flight=%d", w->n_slots - atomic_load(&w->n_free));
    atomic_store(&w->draining, 1);
    set_paused(w, 1);
    drop_held(w, -1);
    queue_wake(&w->engq);
    double t0 = bs_now(), last_log = t0;
    while (atomic_load(&w->n_free) < w->n_slots && !atomic_load(&w->fatal)) {
        if (*stop >= 2 && !atomic_load(&w->abandon)) {
            log_warn("second signal: abandoning in-flight messages", "in_flight=%d",
                     w->n_slots - atomic_load(&w->n_free));
            atomic_store(&w->abandon, 1);
            break;
        }
        rd_kafka_message_t *m = rd_kafka_consumer_poll(w->consumer, POLL_MS); /* keeps the group session */
        if (m) rd_kafka_message_destroy(m); /* paused: only stragglers; never tracked, never committed */
        if (!w->eos) store_offsets(w, NULL, 0);
        if (bs_now() - last_log >= 5.0) {
            log_info("still draining", "in_flight=%d waited_s=%.0f", w->n_slots - atomic_load(&w->n_free),
                     bs_now() - t0);
            last_log = bs_now();
        }
    }
    if (atomic_load(&w->fatal)) {
        atomic_store(&w->abandon, 1);
        rc = bs_err(err, "%s", w->fatal_msg);
    }
    stop_threads(w);
    commit_stored(w, NULL, "shutdown");
    rd_kafka_resp_err_t e = rd_kafka_consumer_close(w->consumer);
    if (e) log_warn("consumer close failed", "error=\"%s\"", rd_kafka_err2str(e));
    log_info("worker stopped", "drain_s=%.3f consumed=%.0f scored=%.0f engine_slots=%d batches=%lld overlapped=%lld",
             bs_now() - t0, metrics_value(w->m->consumed), metrics_value(w->m->scored), w->e_slots,
             (long long)w->n_batches, (long long)w->n_overlapped);
    return rc;
}

void worker_free(bs_worker *w) {
    if (!w) return;
    if (w->threads_started) {
        atomic_store(&w->abandon, 1);
        stop_threads(w);
    }
    for (int i = 0; w->slots && i < w->n_slots; i++) {
        if (w->slots[i].msg) rd_kafka_message_destroy(w->slots[i].msg);
        free(w->slots[i].review_id);
        bs_buf_free(&w->slots[i].out);
    }
    for (int i = 0; i < w->n_held; i++) rd_kafka_message_destroy(w->held[i]);
    if (w->consumer) rd_kafka_destroy(w->consumer);
    if (w->producer) {
        rd_kafka_flush(w->producer, 1000);
        rd_kafka_destroy(w->producer);
    }
    for (int p = 0; p < w->n_parts; p++) offsets_free(w->parts[p].tracker);
    free(w->parts);
    for (int i = 0; w->tok_codecs && i < w->n_tok_threads; i++) codec_free(w->tok_codecs[i]);
    free(w->tok_codecs);
    free(w->tok_threads);
    codec_free(w->enc_codec);
    queue_destroy(&w->tokq);
    queue_destroy(&w->engq);
    batcher_free(w->batcher);
    free(w->b_logit);
    free(w->b_prob);
    free(w->slots);
    free(w->ids_mem);
    free(w->free_stack);
    free(w->dl_pending);
    free(w->txn_slots);
    http_stop(w->http);
    heads_free(w->heads);
    head_free(w->head);
    engine_free(w->engine); /* nothing is in flight (the engine thread collects all before it ends) */
    for (int i = 0; i < BS_ENGINE_SLOTS; i++) {
        free(w->eb[i].items);
        free(w->eb[i].cu);
        free(w->eb[i].feat);
    }
    free(w->b_ids);
    model_free(w->model);
    tokenizer_free(w->tok);
    if (w->m) metrics_worker_free(w->m);
    pthread_mutex_destroy(&w->free_mu);
    pthread_mutex_destroy(&w->retry_mu);
    free(w);
}
