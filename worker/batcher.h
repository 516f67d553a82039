/* The micro-batcher: gathers tokenized sequences until the batch is full (batch.max_sequences or
 * batch.max_tokens) or its oldest sequence has waited batch.max_delay_ms, then hands them out
 * sorted by length. Single-threaded (the engine thread owns it); no allocation after batcher_new.
 *
 * Why sorted: the engines are padding-free, but their attention still works per sequence and the
 * CUDA engine groups sequences of similar length into buckets (one launch per bucket, shapes that
 * are multiples of the bucket length). Sequences handed over in length order fall into the fewest,
 * fullest buckets and give neighbouring sequences similar work, which is what keeps the GPU busy;
 * on the CPU it keeps the per-sequence attention loops uniform. Results are published in any
 * order anyway: offsets advance per partition only over contiguous acknowledged messages. */
#ifndef BS_BATCHER_H
#define BS_BATCHER_H

#include <stdint.h>

#include "common.h"

typedef struct bs_batcher bs_batcher;

/* The shortest sequence the tokenizer produces ([CLS] [SEP]). */
#define BATCHER_MIN_TOKENS 2

/* max_sequences >= 1, max_tokens >= 1, max_delay_ms >= 0. NULL when out of memory or out of range. */
bs_batcher *batcher_new(int max_sequences, int max_tokens, int max_delay_ms);
void batcher_free(bs_batcher *b);

/* Adds one sequence: item is the caller's handle (e.g. a slot index), n_tokens its length
 * (1..max_tokens), now a monotonic time in seconds (bs_now()). Returns BS_OK, or BS_ERR when it
 * does not fit (take the batch first, then add again) or n_tokens is out of range. */
int batcher_add(bs_batcher *b, int32_t item, int n_tokens, double now);

int batcher_count(const bs_batcher *b);  /* sequences pending */
int batcher_tokens(const bs_batcher *b); /* their total tokens */

/* 1 when the pending batch should run now: it is full (max_sequences, or no room for even the
 * shortest sequence within max_tokens) or its oldest sequence has waited max_delay_ms. */
int batcher_due(const bs_batcher *b, double now);
/* Seconds until batcher_due becomes 1 (0 when due, a negative value when empty). */
double batcher_wait(const bs_batcher *b, double now);

/* Moves every pending sequence out, shortest first (equal lengths keep arrival order), and
 * empties the batcher. items and lens must hold max_sequences entries; either may be NULL.
 * Returns the number of sequences. */
int batcher_take(bs_batcher *b, int32_t *items, int32_t *lens);

#endif
