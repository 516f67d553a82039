/* libFuzzer target: arbitrary bytes through tokenizer_encode, without truncation and at max_len 128,
 * with bert-base-uncased's vocabulary when $BERTSTREAM_DATA has it, else a small built-in one. Besides
 * "no crash, no out-of-bounds read", it checks the invariants that tie the two encodings together. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "tokenizer.h"

static const char small_vocab[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n##s\na\n##a\nb\n##b\n,\n.\n!\n'\n"
                                  "movie\n##ing\ne\n##e\n\xe4\xb8\x80\n\xc3\xa9\n##\xc3\xa9\n\xe2\x80\x94\n";

static bs_tokenizer *tok;
static int32_t cls_id, sep_id;

static void init(void) {
    char err[BS_ERRLEN];
    const char *data = getenv("BERTSTREAM_DATA");
    if (data && *data) {
        char path[4096];
        snprintf(path, sizeof path, "%s/bert-base-uncased/vocab.txt", data);
        tok = tokenizer_new(path, err);
    }
    if (!tok) tok = tokenizer_new_from_buffer(small_vocab, sizeof small_vocab - 1, "built-in", err);
    if (!tok) {
        fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        abort();
    }
    cls_id = tokenizer_token_id(tok, "[CLS]");
    sep_id = tokenizer_token_id(tok, "[SEP]");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static bs_tokens full, cut; /* reused across inputs, as a worker reuses them */
    if (!tok) init();
    char err_full[BS_ERRLEN] = "", err_cut[BS_ERRLEN] = "";
    int rc_full = tokenizer_encode(tok, (const char *)data, size, 0, &full, err_full);
    int rc_cut = tokenizer_encode(tok, (const char *)data, size, 128, &cut, err_cut);

    if (rc_full != BS_OK) {
        /* reading stops early under truncation, so only an error before the cut is shared */
        if (strncmp(err_full, "invalid UTF-8 at byte ", 22) != 0) abort();
        if (rc_cut != BS_OK && strcmp(err_full, err_cut) != 0) abort();
    }
    if (rc_cut != BS_OK) {
        if (rc_full == BS_OK) abort(); /* what the full read accepts, the shorter read accepts */
        return 0;
    }
    if (cut.n < 2 || cut.n > 128 || cut.ids[0] != cls_id || cut.ids[cut.n - 1] != sep_id) abort();
    for (int i = 0; i < cut.n; i++)
        if (cut.ids[i] < 0 || cut.ids[i] >= tokenizer_vocab_size(tok)) abort();
    if (rc_full == BS_OK) {
        if (full.truncated || full.n < 2 || full.ids[0] != cls_id || full.ids[full.n - 1] != sep_id) abort();
        /* the truncated ids are the full ids cut to 126 pieces, and the flag says whether anything was cut */
        if (cut.truncated != (full.n > 128)) abort();
        int pieces = cut.n - 2;
        if (pieces != (full.n - 2 < 126 ? full.n - 2 : 126)) abort();
        if (memcmp(cut.ids, full.ids, (size_t)(pieces + 1) * sizeof *cut.ids) != 0) abort();
    }
    return 0;
}
