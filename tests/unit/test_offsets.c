/* Offset tracker: the commit position moves only over a contiguous run of acknowledged offsets,
 * whatever order acknowledgements arrive in; gaps in offsets are fine; a reset (revocation)
 * makes older tickets stale; a ring full of awaited offsets refuses pushes; and it is safe across
 * threads. Also the delivery-error classification the worker's retry policy rests on. */
#include <pthread.h>

#include "kafka.h"
#include "test.h"

static void offsets_advance_only_over_contiguous_acks(void) {
    bs_offsets *o = offsets_new(8);
    bs_offset_ticket t[5];
    for (int i = 0; i < 5; i++) CHECK_INT(offsets_push(o, 100 + i, &t[i]), BS_OK);
    int64_t next = 0;
    CHECK_INT(offsets_advance(o, &next), 0);
    CHECK_INT(next, -1);
    CHECK_INT(offsets_done(o, t[1]), 1);
    CHECK_INT(offsets_done(o, t[3]), 1);
    CHECK_INT(offsets_advance(o, &next), 0); /* 100 still in flight */
    CHECK_INT(offsets_in_flight(o), 3);
    CHECK_INT(offsets_done(o, t[0]), 1);
    CHECK_INT(offsets_advance(o, &next), 1);
    CHECK_INT(next, 102); /* 100 and 101 done; 102 is the next to consume */
    CHECK_INT(offsets_in_flight(o), 2);
    CHECK_INT(offsets_done(o, t[2]), 1);
    CHECK_INT(offsets_done(o, t[4]), 1);
    CHECK_INT(offsets_advance(o, &next), 1);
    CHECK_INT(next, 105);
    CHECK_INT(offsets_committable(o), 105);
    CHECK_INT(offsets_in_flight(o), 0);
    offsets_free(o);
}

static void offsets_skip_gaps_between_consumed_offsets(void) {
    /* Compacted topics and transaction markers leave holes in the offsets a consumer sees. */
    bs_offsets *o = offsets_new(4);
    bs_offset_ticket a, b;
    CHECK_INT(offsets_push(o, 10, &a), BS_OK);
    CHECK_INT(offsets_push(o, 17, &b), BS_OK);
    CHECK_INT(offsets_done(o, b), 1);
    CHECK_INT(offsets_done(o, a), 1);
    int64_t next;
    CHECK_INT(offsets_advance(o, &next), 1);
    CHECK_INT(next, 18);
    CHECK_INT(offsets_position(o), 18);
    offsets_free(o);
}

static void offsets_refuse_push_when_full_or_not_increasing(void) {
    bs_offsets *o = offsets_new(3); /* rounded up to 4 */
    bs_offset_ticket t[5];
    for (int i = 0; i < 4; i++) CHECK_INT(offsets_push(o, i, &t[i]), BS_OK);
    CHECK_INT(offsets_push(o, 4, &t[4]), OFFSETS_FULL); /* all four still awaited */
    CHECK_INT(offsets_done(o, t[0]), 1);
    CHECK_INT(offsets_advance(o, NULL), 1);
    CHECK_INT(offsets_push(o, 4, &t[4]), BS_OK); /* the ring wrapped */
    CHECK_INT(offsets_push(o, 4, &t[4]), OFFSETS_DUPLICATE);
    CHECK_INT(offsets_push(o, 2, &t[4]), OFFSETS_DUPLICATE);
    offsets_free(o);
}

/* The bug this pins: acknowledged entries that no advance has popped yet must not make the ring
 * look full (the worker advances only every few milliseconds). */
static void offsets_push_makes_room_from_acknowledged_entries(void) {
    bs_offsets *o = offsets_new(4);
    bs_offset_ticket t[8];
    for (int i = 0; i < 4; i++) CHECK_INT(offsets_push(o, 10 + i, &t[i]), BS_OK);
    CHECK_INT(offsets_done(o, t[0]), 1);
    CHECK_INT(offsets_done(o, t[1]), 1);
    CHECK_INT(offsets_done(o, t[3]), 1);
    CHECK_INT(offsets_push(o, 14, &t[4]), BS_OK); /* 10 and 11 popped to make room */
    CHECK_INT(offsets_push(o, 15, &t[5]), BS_OK);
    CHECK_INT(offsets_push(o, 16, &t[6]), OFFSETS_FULL); /* 12 is awaited: 13 cannot be popped past it */
    int64_t next;
    CHECK_INT(offsets_advance(o, &next), 1); /* the pops inside push still count as a move */
    CHECK_INT(next, 12);
    CHECK_INT(offsets_advance(o, &next), 0);
    CHECK_INT(offsets_done(o, t[2]), 1);
    CHECK_INT(offsets_advance(o, &next), 1);
    CHECK_INT(next, 14);
    offsets_free(o);
}

static void offsets_reset_makes_old_tickets_stale(void) {
    bs_offsets *o = offsets_new(8);
    bs_offset_ticket old, fresh;
    CHECK_INT(offsets_push(o, 50, &old), BS_OK);
    offsets_reset(o);
    CHECK_INT(offsets_committable(o), -1);
    CHECK_INT(offsets_position(o), -1);
    CHECK_INT(offsets_push(o, 40, &fresh), BS_OK); /* re-assigned from an older committed offset */
    CHECK_INT(fresh.seq, old.seq);                 /* same slot number, other epoch */
    CHECK_INT(offsets_done(o, old), 0);
    int64_t next;
    CHECK_INT(offsets_advance(o, &next), 0);
    CHECK_INT(offsets_settled_through(o, old), 1); /* stale: nothing to wait for */
    CHECK_INT(offsets_settled_through(o, fresh), 0);
    CHECK_INT(offsets_done(o, fresh), 1);
    CHECK_INT(offsets_settled_through(o, fresh), 0); /* done but not yet advanced over */
    CHECK_INT(offsets_advance(o, &next), 1);
    CHECK_INT(next, 41);
    CHECK_INT(offsets_settled_through(o, fresh), 1);
    offsets_free(o);
}

static void offsets_ignore_double_ack_after_advance(void) {
    bs_offsets *o = offsets_new(4);
    bs_offset_ticket a, b;
    offsets_push(o, 1, &a);
    CHECK_INT(offsets_done(o, a), 1);
    CHECK_INT(offsets_advance(o, NULL), 1);
    CHECK_INT(offsets_done(o, a), 0); /* already popped */
    offsets_push(o, 2, &b);
    CHECK_INT(offsets_advance(o, NULL), 0);
    offsets_free(o);
}

static void offsets_track_highest_emitted_until_reset(void) {
    bs_offsets *o = offsets_new(4);
    CHECK_INT(offsets_emitted(o), -1);
    offsets_note_emitted(o, 7);
    offsets_note_emitted(o, 5); /* out of order: the highest stays */
    CHECK_INT(offsets_emitted(o), 7);
    offsets_reset(o);
    CHECK_INT(offsets_emitted(o), -1);
    offsets_free(o);
}

static void offsets_hand_over_lasts_until_reset(void) {
    bs_offsets *o = offsets_new(4);
    CHECK_INT(offsets_handing_over(o), 0);
    offsets_hand_over(o);
    CHECK_INT(offsets_handing_over(o), 1);
    offsets_hand_over(o); /* twice is once */
    CHECK_INT(offsets_handing_over(o), 1);
    offsets_reset(o); /* the revocation's end, or a new assignment */
    CHECK_INT(offsets_handing_over(o), 0);
    offsets_free(o);
}

static void offsets_never_pass_an_abandoned_offset(void) {
    bs_offsets *o = offsets_new(8);
    bs_offset_ticket t[4];
    for (int i = 0; i < 4; i++) offsets_push(o, 20 + i, &t[i]);
    CHECK_INT(offsets_done(o, t[0]), 1);
    CHECK_INT(offsets_abandon(o, t[1]), 1);
    CHECK_INT(offsets_done(o, t[1]), 0); /* abandoned stays abandoned */
    CHECK_INT(offsets_done(o, t[2]), 1);
    CHECK_INT(offsets_in_flight(o), 1); /* only 23 still awaits an outcome */
    int64_t next;
    CHECK_INT(offsets_advance(o, &next), 1);
    CHECK_INT(next, 21); /* stops before the abandoned 21 for good */
    CHECK_INT(offsets_done(o, t[3]), 1);
    CHECK_INT(offsets_advance(o, &next), 0);
    CHECK_INT(next, 21);
    CHECK_INT(offsets_in_flight(o), 0); /* 22 and 23 are done, stuck behind the abandoned 21 */
    offsets_reset(o);
    CHECK_INT(offsets_in_flight(o), 0);
    CHECK_INT(offsets_abandon(o, t[0]), 0); /* stale */
    offsets_free(o);
}

static void kafka_classifies_delivery_errors(void) {
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR__MSG_TIMED_OUT), 1);
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR__TRANSPORT), 1);
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION), 1);
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART), 1);
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR__PURGE_QUEUE), 1);
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR_INVALID_RECORD), 0);
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE), 0);
    CHECK_INT(kafka_err_is_transient(RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED), 0);
}

/* Four threads acknowledge a shuffled half each while the main thread pushes and advances. */
#define MT_N 200000
#define MT_RING 1024 /* far fewer than MT_N: pushes must make room from acknowledged entries */
static bs_offsets *mt_o;
static bs_offset_ticket mt_t[MT_N];
static volatile int mt_pushed;

static void *mt_acker(void *arg) {
    int part = (int)(intptr_t)arg;
    for (int i = part; i < MT_N; i += 4) {
        while (__atomic_load_n(&mt_pushed, __ATOMIC_ACQUIRE) <= i) {
        }
        offsets_done(mt_o, mt_t[i]);
    }
    return NULL;
}

static void offsets_are_consistent_across_threads(void) {
    mt_o = offsets_new(MT_RING);
    pthread_t th[4];
    for (int k = 0; k < 4; k++) pthread_create(&th[k], NULL, mt_acker, (void *)(intptr_t)k);
    int64_t next = -1, prev = -1, monotonic = 1;
    for (int i = 0; i < MT_N; i++) {
        while (offsets_push(mt_o, 2 * i, &mt_t[i]) == OFFSETS_FULL) {
        }
        __atomic_store_n(&mt_pushed, i + 1, __ATOMIC_RELEASE);
        if (offsets_advance(mt_o, &next)) {
            if (next <= prev) monotonic = 0;
            prev = next;
        }
    }
    for (int k = 0; k < 4; k++) pthread_join(th[k], NULL);
    offsets_advance(mt_o, &next);
    CHECK_INT(monotonic, 1);
    CHECK_INT(next, 2 * (MT_N - 1) + 1);
    CHECK_INT(offsets_in_flight(mt_o), 0);
    offsets_free(mt_o);
}

int main(void) {
    RUN(offsets_advance_only_over_contiguous_acks);
    RUN(offsets_skip_gaps_between_consumed_offsets);
    RUN(offsets_refuse_push_when_full_or_not_increasing);
    RUN(offsets_push_makes_room_from_acknowledged_entries);
    RUN(offsets_reset_makes_old_tickets_stale);
    RUN(offsets_ignore_double_ack_after_advance);
    RUN(offsets_track_highest_emitted_until_reset);
    RUN(offsets_hand_over_lasts_until_reset);
    RUN(offsets_never_pass_an_abandoned_offset);
    RUN(kafka_classifies_delivery_errors);
    RUN(offsets_are_consistent_across_threads);
    return bs_test_done();
}
