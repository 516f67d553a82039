/* Fixtures shared by the engine tests (CPU and GPU): packed batches, the first IMDB reviews of the
 * reference data tokenized, and random models whose LayerNorms and biases matter. Include after
 * test.h's dependencies (common.h). */
#ifndef BS_TEST_FIXTURES_H
#define BS_TEST_FIXTURES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "model.h"
#include "test.h"
#include "tokenizer.h"

/* sequences back to back: B of them, T ids, L the longest allowed; cu (B + 1) */
typedef struct {
    int B, T, L;
    int32_t *ids, *cu;
} packed_batch;

typedef struct {
    int n;
    packed_batch *batches;
} review_set;

/* The first n IMDB reviews of the reference data, tokenized to 128 ids, in batches of up to per;
 * BS_TEST_REVIEWS caps n (the GPU tests' copies on the CPU emulator, which is slow). */
static inline review_set bs_test_imdb_reviews(int n, int per) {
    char err[BS_ERRLEN];
    review_set rs = {0};
    const int cap = getenv("BS_TEST_REVIEWS") ? atoi(getenv("BS_TEST_REVIEWS")) : 0;
    if (cap > 0 && cap < n) {
        fprintf(stderr, "  %d of %d IMDB reviews (BS_TEST_REVIEWS)\n", cap, n);
        n = cap;
    }
    bs_tokenizer *tk = tokenizer_new(bs_test_data("bert-base-uncased/vocab.txt"), err);
    size_t len = 0;
    char *tsv = bs_read_file(bs_test_data("imdb/reviews.tsv"), &len, err);
    if (!tk || !tsv) {
        fprintf(stderr, "  %s\n", err);
        exit(1);
    }
    const int nb = (n + per - 1) / per;
    rs.batches = calloc((size_t)nb, sizeof(packed_batch));
    bs_tokens toks = {0};
    char *line = strchr(tsv, '\n'); /* skip the header */
    int done = 0;
    for (int b = 0; b < nb; b++) {
        packed_batch *pb = &rs.batches[b];
        pb->ids = malloc(sizeof(int32_t) * (size_t)per * 128);
        pb->cu = malloc(sizeof(int32_t) * (size_t)(per + 1));
        pb->cu[0] = 0;
        pb->L = 128;
        while (pb->B < per && done < n && line && line[1]) {
            char *text = strchr(line + 1, '\t'), *end = strchr(line + 1, '\n');
            if (!end) end = tsv + len;
            if (!text || text > end) break;
            text++;
            if (tokenizer_encode(tk, text, (size_t)(end - text), 128, &toks, err) != BS_OK) {
                fprintf(stderr, "  tokenize: %s\n", err);
                exit(1);
            }
            memcpy(pb->ids + pb->cu[pb->B], toks.ids, sizeof(int32_t) * (size_t)toks.n);
            pb->cu[pb->B + 1] = pb->cu[pb->B] + toks.n;
            pb->B++;
            done++;
            line = end < tsv + len ? end : NULL;
        }
        pb->T = pb->cu[pb->B];
        if (pb->B) rs.n++;
    }
    tokens_free(&toks);
    tokenizer_free(tk);
    free(tsv);
    return rs;
}

static inline void review_set_free(review_set *rs) {
    for (int b = 0; b < rs->n; b++) free(rs->batches[b].ids), free(rs->batches[b].cu);
    free(rs->batches);
}

/* HF's init is N(0, 0.02) with zero biases and LayerNorm 1/0: bump gains and biases so they
 * matter (every GEMM's bias: a bias dropped or added twice must show) */
static inline void bs_test_bump_gains_and_biases(bs_model *m, bs_rng *r) {
    for (int l = 0; l < m->cfg.layers; l++)
        for (int k = 0; k < m->cfg.hidden; k++) {
            m->layer[l].ln1_w[k] = 1.0f + 0.3f * (float)bs_rng_normal(r);
            m->layer[l].ln2_b[k] = 0.1f * (float)bs_rng_normal(r);
            m->layer[l].qkv_b[k] = 0.1f * (float)bs_rng_normal(r);
            m->layer[l].ff2_b[k] = 0.1f * (float)bs_rng_normal(r);
        }
    for (int l = 0; l < m->cfg.layers; l++) {
        for (int k = 0; k < m->cfg.hidden; k++) m->layer[l].ao_b[k] = 0.1f * (float)bs_rng_normal(r);
        for (int k = 0; k < m->cfg.intermediate; k++) m->layer[l].ff1_b[k] = 0.1f * (float)bs_rng_normal(r);
    }
}

#endif
