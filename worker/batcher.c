/* Micro-batcher implementation: arrays sized once; the length sort is a bottom-up merge sort on
 * (length << 32 | arrival index) keys into a preallocated scratch array, so it is stable, O(n log n)
 * and never allocates (qsort may). */
#include "batcher.h"

#include <stdlib.h>

/* Deadlines compare with 1 us of slack so a wait of exactly max_delay is due despite rounding. */
#define BATCHER_CLOCK_SLACK 1e-6

struct bs_batcher {
    int max_seqs, max_tokens;
    double max_delay; /* seconds */
    int n, tokens;
    double first_at; /* arrival time of the oldest pending sequence */
    int32_t *items;  /* (max_seqs) in arrival order */
    int32_t *lens;   /* (max_seqs) */
    uint64_t *keys;  /* (max_seqs) sort keys */
    uint64_t *tmp;   /* (max_seqs) merge scratch */
};

bs_batcher *batcher_new(int max_sequences, int max_tokens, int max_delay_ms) {
    if (max_sequences < 1 || max_tokens < 1 || max_delay_ms < 0) return NULL;
    bs_batcher *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->max_seqs = max_sequences;
    b->max_tokens = max_tokens;
    b->max_delay = max_delay_ms / 1000.0;
    b->items = malloc(sizeof(int32_t) * (size_t)max_sequences);
    b->lens = malloc(sizeof(int32_t) * (size_t)max_sequences);
    b->keys = malloc(sizeof(uint64_t) * (size_t)max_sequences);
    b->tmp = malloc(sizeof(uint64_t) * (size_t)max_sequences);
    if (!b->items || !b->lens || !b->keys || !b->tmp) {
        batcher_free(b);
        return NULL;
    }
    return b;
}

void batcher_free(bs_batcher *b) {
    if (!b) return;
    free(b->items);
    free(b->lens);
    free(b->keys);
    free(b->tmp);
    free(b);
}

int batcher_add(bs_batcher *b, int32_t item, int n_tokens, double now) {
    if (n_tokens < 1 || n_tokens > b->max_tokens) return BS_ERR;
    if (b->n == b->max_seqs || b->tokens + n_tokens > b->max_tokens) return BS_ERR;
    if (b->n == 0) b->first_at = now;
    b->items[b->n] = item;
    b->lens[b->n] = n_tokens;
    b->n++;
    b->tokens += n_tokens;
    return BS_OK;
}

int batcher_count(const bs_batcher *b) {
    return b->n;
}
int batcher_tokens(const bs_batcher *b) {
    return b->tokens;
}

static int batcher_full(const bs_batcher *b) {
    return b->n == b->max_seqs || b->tokens + BATCHER_MIN_TOKENS > b->max_tokens;
}

int batcher_due(const bs_batcher *b, double now) {
    if (b->n == 0) return 0;
    return batcher_full(b) || now >= b->first_at + b->max_delay - BATCHER_CLOCK_SLACK;
}

double batcher_wait(const bs_batcher *b, double now) {
    if (b->n == 0) return -1.0;
    if (batcher_full(b)) return 0.0;
    double w = b->first_at + b->max_delay - now;
    return w > BATCHER_CLOCK_SLACK ? w : 0.0;
}

int batcher_take(bs_batcher *b, int32_t *items, int32_t *lens) {
    int n = b->n;
    uint64_t *src = b->keys, *dst = b->tmp;
    for (int i = 0; i < n; i++) src[i] = (uint64_t)(uint32_t)b->lens[i] << 32 | (uint32_t)i;
    for (int w = 1; w < n; w *= 2) {
        for (int lo = 0; lo < n; lo += 2 * w) {
            int mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n;
            int i = lo, j = mid, k = lo;
            while (i < mid && j < hi) dst[k++] = src[i] <= src[j] ? src[i++] : src[j++];
            while (i < mid) dst[k++] = src[i++];
            while (j < hi) dst[k++] = src[j++];
        }
        uint64_t *t = src;
        src = dst;
        dst = t;
    }
    for (int i = 0; i < n; i++) {
        uint32_t at = (uint32_t)src[i];
        if (items) items[i] = b->items[at];
        if (lens) lens[i] = b->lens[at];
    }
    b->n = 0;
    b->tokens = 0;
    return n;
}
