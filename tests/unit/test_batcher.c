/* Micro-batcher: flushes on max_sequences, max_tokens and max_delay_ms, hands sequences out
 * shortest first with ties in arrival order, and is reusable after each take. */
#include "batcher.h"
#include "test.h"

static void batcher_is_due_when_max_sequences_reached(void) {
    bs_batcher *b = batcher_new(3, 1000, 50);
    CHECK_INT(batcher_add(b, 0, 5, 0.0), BS_OK);
    CHECK_INT(batcher_add(b, 1, 5, 0.0), BS_OK);
    CHECK_INT(batcher_due(b, 0.0), 0);
    CHECK_INT(batcher_add(b, 2, 5, 0.0), BS_OK);
    CHECK_INT(batcher_due(b, 0.0), 1);
    CHECK_NEAR(batcher_wait(b, 0.0), 0.0, 0);
    CHECK_INT(batcher_add(b, 3, 5, 0.0), BS_ERR); /* full: the caller takes first */
    CHECK_INT(batcher_count(b), 3);
    batcher_free(b);
}

static void batcher_rejects_sequence_past_max_tokens(void) {
    bs_batcher *b = batcher_new(100, 20, 50);
    CHECK_INT(batcher_add(b, 0, 12, 0.0), BS_OK);
    CHECK_INT(batcher_add(b, 1, 9, 0.0), BS_ERR); /* 21 > 20 */
    CHECK_INT(batcher_due(b, 0.0), 0);            /* 8 tokens of room left */
    CHECK_INT(batcher_add(b, 1, 7, 0.0), BS_OK);
    CHECK_INT(batcher_tokens(b), 19);
    CHECK_INT(batcher_due(b, 0.0), 1); /* not even [CLS] [SEP] fits in the last token */
    CHECK_INT(batcher_add(b, 2, 0, 0.0), BS_ERR);
    CHECK_INT(batcher_add(b, 2, 21, 0.0), BS_ERR);
    batcher_free(b);
}

static void batcher_is_due_after_max_delay_of_oldest(void) {
    bs_batcher *b = batcher_new(100, 1000, 20);
    CHECK_NEAR(batcher_wait(b, 5.0), -1.0, 0);
    CHECK_INT(batcher_due(b, 5.0), 0);
    CHECK_INT(batcher_add(b, 7, 4, 10.000), BS_OK);
    CHECK_INT(batcher_add(b, 8, 4, 10.015), BS_OK);
    CHECK_INT(batcher_due(b, 10.019), 0);
    CHECK_NEAR(batcher_wait(b, 10.010), 0.010, 1e-9);
    CHECK_INT(batcher_due(b, 10.020), 1); /* the oldest decides, not the newest */
    CHECK_NEAR(batcher_wait(b, 10.5), 0.0, 0);
    batcher_free(b);
}

static void batcher_with_zero_delay_is_due_at_once(void) {
    bs_batcher *b = batcher_new(100, 1000, 0);
    CHECK_INT(batcher_add(b, 1, 3, 1.0), BS_OK);
    CHECK_INT(batcher_due(b, 1.0), 1);
    batcher_free(b);
}

static void batcher_take_sorts_by_length_stable(void) {
    bs_batcher *b = batcher_new(16, 1000, 20);
    int lens[] = {9, 3, 7, 3, 12, 2, 7, 9, 3};
    for (int i = 0; i < 9; i++) CHECK_INT(batcher_add(b, 100 + i, lens[i], 0.0), BS_OK);
    int32_t items[16], out_lens[16];
    CHECK_INT(batcher_take(b, items, out_lens), 9);
    int32_t want_items[] = {105, 101, 103, 108, 102, 106, 100, 107, 104};
    int32_t want_lens[] = {2, 3, 3, 3, 7, 7, 9, 9, 12};
    for (int i = 0; i < 9; i++) {
        CHECK_INT(items[i], want_items[i]);
        CHECK_INT(out_lens[i], want_lens[i]);
    }
    CHECK_INT(batcher_count(b), 0);
    CHECK_INT(batcher_tokens(b), 0);
    batcher_free(b);
}

static void batcher_take_sorts_large_batches(void) {
    enum { N = 1000 };
    bs_batcher *b = batcher_new(N, N * 128, 20);
    bs_rng r = {.s = 42};
    for (int i = 0; i < N; i++) CHECK_INT(batcher_add(b, i, 2 + (int)(bs_rng_next(&r) % 127), 0.0), BS_OK);
    static int32_t items[N], lens[N];
    CHECK_INT(batcher_take(b, items, lens), N);
    int sorted = 1, seen_sum = 0;
    for (int i = 1; i < N; i++)
        if (lens[i] < lens[i - 1] || (lens[i] == lens[i - 1] && items[i] < items[i - 1])) sorted = 0;
    for (int i = 0; i < N; i++) seen_sum += items[i];
    CHECK_INT(sorted, 1);
    CHECK_INT(seen_sum, N * (N - 1) / 2); /* every item exactly once */
    batcher_free(b);
}

static void batcher_restarts_delay_clock_after_take(void) {
    bs_batcher *b = batcher_new(4, 1000, 20);
    CHECK_INT(batcher_add(b, 1, 3, 0.0), BS_OK);
    CHECK_INT(batcher_take(b, NULL, NULL), 1);
    CHECK_INT(batcher_add(b, 2, 3, 5.0), BS_OK);
    CHECK_INT(batcher_due(b, 5.010), 0);
    CHECK_INT(batcher_due(b, 5.020), 1);
    batcher_free(b);
}

static void batcher_new_rejects_bad_limits(void) {
    CHECK(batcher_new(0, 10, 1) == NULL);
    CHECK(batcher_new(1, 0, 1) == NULL);
    CHECK(batcher_new(1, 10, -1) == NULL);
}

int main(void) {
    RUN(batcher_is_due_when_max_sequences_reached);
    RUN(batcher_rejects_sequence_past_max_tokens);
    RUN(batcher_is_due_after_max_delay_of_oldest);
    RUN(batcher_with_zero_delay_is_due_at_once);
    RUN(batcher_take_sorts_by_length_stable);
    RUN(batcher_take_sorts_large_batches);
    RUN(batcher_restarts_delay_clock_after_take);
    RUN(batcher_new_rejects_bad_limits);
    return bs_test_done();
}
