/* bert-base-uncased's tokenizer (Hugging Face BertWordPieceTokenizer, lowercase):
 * clean text, CJK spacing, NFD + strip Mn, lowercase, split on whitespace and
 * punctuation, greedy longest-match WordPiece, [CLS] ... [SEP]. Thread-safe after
 * tokenizer_new: encode writes only into the caller's bs_tokens. */
#ifndef BS_TOKENIZER_H
#define BS_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

typedef struct bs_tokenizer bs_tokenizer;

/* Reusable output (and scratch) buffer: zero-initialise, reuse across calls, free with tokens_free. */
typedef struct {
    int32_t *ids; /* [n]: [CLS] pieces... [SEP] */
    int n;
    int cap;
    int truncated; /* 1 when max_len cut pieces off */
    void *scratch; /* tokenizer-private working memory */
    size_t scratch_cap;
} bs_tokens;

bs_tokenizer *tokenizer_new(const char *vocab_path, char *err);
/* Vocabulary from memory: one token per line (LF or CRLF). */
bs_tokenizer *tokenizer_new_from_buffer(const char *buf, size_t len, const char *name, char *err);
void tokenizer_free(bs_tokenizer *t);

int tokenizer_vocab_size(const bs_tokenizer *t);
/* Id of a vocabulary entry, or -1. */
int32_t tokenizer_token_id(const bs_tokenizer *t, const char *token);
int32_t tokenizer_pad_id(const bs_tokenizer *t);
/* The vocabulary must fit the model's embedding table: BS_ERR naming vocab_path otherwise. */
int tokenizer_check_model_vocab(const bs_tokenizer *t, const char *vocab_path, int model_vocab_size, char *err);

/* Encodes UTF-8 text of len bytes (may hold NUL). max_len 0 = no truncation; else at most max_len
 * ids including [CLS] and [SEP], and reading stops once max_len-2 pieces exist.
 * Invalid UTF-8 -> BS_ERR with "invalid UTF-8 at byte N". */
int tokenizer_encode(const bs_tokenizer *t, const char *text, size_t len, int max_len, bs_tokens *out, char *err);
void tokens_free(bs_tokens *tk);

#endif
