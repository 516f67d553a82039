/* Tokenizer tests: every record of golden/tokenizer.jsonl (Hugging Face BertWordPieceTokenizer on
 * bert-base-uncased) must match exactly, and each named behaviour is pinned on a tiny in-memory
 * vocabulary whose special tokens sit at unusual ids. */
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>

#include "common.h"
#include "test.h"
#include "tokenizer.h"

/* ---- tiny vocabulary: ids chosen so that nothing can assume bert's 0/100/101/102 ---- */
static const char tiny_vocab[] = "hello\n"                             /* 0 */
                                 "[SEP]\n"                             /* 1 */
                                 "##ing\n"                             /* 2 */
                                 "[CLS]\n"                             /* 3 */
                                 "play\n"                              /* 4 */
                                 ",\n"                                 /* 5 */
                                 "!\n"                                 /* 6 */
                                 "[UNK]\n"                             /* 7 */
                                 "[PAD]\n"                             /* 8 */
                                 "resume\n"                            /* 9 */
                                 "cafe\n"                              /* 10 */
                                 "\xe4\xb8\x9c\n"                      /* 11: U+4E1C */
                                 "\xe4\xba\xac\n"                      /* 12: U+4EAC */
                                 "badmovie\n"                          /* 13 */
                                 "bad\n"                               /* 14 */
                                 "movie\n"                             /* 15 */
                                 "##s\n"                               /* 16 */
                                 "a\n"                                 /* 17 */
                                 "##a\n"                               /* 18 */
                                 "\xe2\x80\x94\n"                      /* 19: U+2014 EM DASH */
                                 "k\n"                                 /* 20 */
                                 "pla\n"                               /* 21 */
                                 "##ying\n"                            /* 22 */
                                 "x\xf0\x9d\x85\xa5\xf0\x9d\x85\xad\n" /* 23: x U+1D165 (ccc 216) U+1D16D (ccc 226) */
                                 "\xe8\xb1\x88\n"                      /* 24: U+8C48, NFD of U+F900 */
                                 "##\xc3\xa9\n"; /* 25: ##é (never matched: é loses its accent) */

static bs_tokenizer *tiny(void) {
    char err[BS_ERRLEN] = "";
    bs_tokenizer *t = tokenizer_new_from_buffer(tiny_vocab, sizeof tiny_vocab - 1, "tiny", err);
    if (!t) {
        fprintf(stderr, "tiny vocab: %s\n", err);
        exit(1);
    }
    return t;
}

/* Encodes a copy of text[0..len) in a heap block of exactly len bytes, so ASan sees any read past len. */
static int enc(const bs_tokenizer *t, const char *text, size_t len, int max_len, bs_tokens *tk, char *err) {
    char *copy = malloc(len ? len : 1);
    memcpy(copy, text, len);
    int rc = tokenizer_encode(t, len ? copy : NULL, len, max_len, tk, err);
    free(copy);
    return rc;
}

/* Checks that text encodes (max_len 0) to exactly the n ids given. */
static void expect_ids_at(int line, const bs_tokenizer *t, const char *text, size_t len, const int32_t *want, int n) {
    bs_tokens tk = {0};
    char err[BS_ERRLEN] = "";
    int rc = enc(t, text, len, 0, &tk, err);
    bs_test_checks++;
    int same = rc == BS_OK && tk.n == n && memcmp(tk.ids, want, (size_t)n * sizeof *want) == 0;
    if (!same) {
        fprintf(stderr, "%s:%d: %s: text \"%.*s\": rc %d (%s), got [", __FILE__, line, bs_test_current, (int)len, text,
                rc, err);
        for (int i = 0; rc == BS_OK && i < tk.n; i++) fprintf(stderr, "%s%d", i ? ", " : "", tk.ids[i]);
        fprintf(stderr, "], expected [");
        for (int i = 0; i < n; i++) fprintf(stderr, "%s%d", i ? ", " : "", want[i]);
        fprintf(stderr, "]\n");
        bs_test_failures++;
    }
    tokens_free(&tk);
}

#define EXPECT(t, text, ...)                                                                                           \
    do {                                                                                                               \
        static const int32_t _w[] = {__VA_ARGS__};                                                                     \
        expect_ids_at(__LINE__, t, text, sizeof(text) - 1, _w, (int)(sizeof _w / sizeof _w[0]));                       \
    } while (0)

static void tokenizer_empty_text_is_cls_sep(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "", 3, 1);
    EXPECT(t, " \t\r\n\x01\x7f", 3, 1);
    EXPECT(t, "\xcc\x81\xcc\x81", 3, 1); /* only combining marks: nothing survives */
    bs_tokens tk = {0};
    char err[BS_ERRLEN];
    CHECK_INT(tokenizer_encode(t, NULL, 0, 128, &tk, err), BS_OK);
    CHECK_INT(tk.n, 2);
    CHECK_INT(tk.truncated, 0);
    tokens_free(&tk);
    tokenizer_free(t);
}

static void tokenizer_special_ids_come_from_vocab(void) {
    bs_tokenizer *t = tiny();
    CHECK_INT(tokenizer_vocab_size(t), 26);
    CHECK_INT(tokenizer_token_id(t, "[CLS]"), 3);
    CHECK_INT(tokenizer_token_id(t, "[SEP]"), 1);
    CHECK_INT(tokenizer_token_id(t, "[UNK]"), 7);
    CHECK_INT(tokenizer_pad_id(t), 8);
    CHECK_INT(tokenizer_token_id(t, "##ing"), 2);
    CHECK_INT(tokenizer_token_id(t, "ing"), -1);
    CHECK_INT(tokenizer_token_id(t, "hello"), 0);
    CHECK_INT(tokenizer_token_id(t, "nope"), -1);
    tokenizer_free(t);
}

static void tokenizer_vocab_accepts_crlf_and_no_final_newline(void) {
    static const char v[] = "[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhi \r\n##s";
    char err[BS_ERRLEN] = "";
    bs_tokenizer *t = tokenizer_new_from_buffer(v, sizeof v - 1, "crlf", err);
    CHECK(t != NULL);
    if (!t) return;
    CHECK_INT(tokenizer_vocab_size(t), 6);
    CHECK_INT(tokenizer_token_id(t, "hi"), 4); /* trailing whitespace trimmed like HF's vocab reader */
    EXPECT(t, "HIs", 2, 4, 5, 3);
    tokenizer_free(t);
}

static void tokenizer_vocab_without_special_token_fails(void) {
    static const char v[] = "[PAD]\n[CLS]\n[SEP]\nhello\n";
    char err[BS_ERRLEN] = "";
    CHECK(tokenizer_new_from_buffer(v, sizeof v - 1, "nounk.txt", err) == NULL);
    CHECK_CONTAINS(err, "nounk.txt");
    CHECK_CONTAINS(err, "[UNK]");
    CHECK(tokenizer_new_from_buffer("", 0, "empty.txt", err) == NULL);
    CHECK_CONTAINS(err, "empty.txt");
    static const char bad[] = "[PAD]\n[UNK]\n[CLS]\n[SEP]\nh\xffi\n";
    CHECK(tokenizer_new_from_buffer(bad, sizeof bad - 1, "bad.txt", err) == NULL);
    CHECK_CONTAINS(err, "bad.txt line 5: invalid UTF-8");
}

static void tokenizer_new_reports_missing_file(void) {
    char err[BS_ERRLEN] = "";
    CHECK(tokenizer_new("/nonexistent/vocab.txt", err) == NULL);
    CHECK_CONTAINS(err, "/nonexistent/vocab.txt");
}

static void tokenizer_strips_accents_after_nfd(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "R\xc3\x89SUM\xc3\x89 Caf\xc3\xa9", 3, 9, 10, 1);    /* precomposed É, é */
    EXPECT(t, "re\xcc\x81sume\xcc\x81 cafe\xcc\x80", 3, 9, 10, 1); /* e + U+0301 / U+0300 */
    EXPECT(t, "cafe\xcc\x81\xcc\xa7\xcc\x81", 3, 10, 1);           /* several marks */
    tokenizer_free(t);
}

static void tokenizer_lowercases_char_by_char(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "HeLLo PLAY", 3, 0, 4, 1);
    EXPECT(t, "\xe2\x84\xaa", 3, 20, 1); /* U+212A KELVIN SIGN: NFD gives K, then k */
    tokenizer_free(t);
}

static void tokenizer_spaces_cjk_ideographs(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "\xe4\xb8\x9c\xe4\xba\xac", 3, 11, 12, 1); /* without spacing it would be one [UNK] */
    EXPECT(t, "hello\xe4\xb8\x9c\xe4\xba\xacplay", 3, 0, 11, 12, 4, 1);
    EXPECT(t, "\xef\xa4\x80", 3, 24, 1); /* U+F900 compatibility ideograph: spaced, then NFD to U+8C48 */
    tokenizer_free(t);
}

static void tokenizer_drops_controls_and_joins_words(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "bad\xc2\x85movie", 3, 13, 1);     /* U+0085 NEL is Cc: dropped, not a space */
    EXPECT(t, "bad\xe2\x80\x8bmovie", 3, 13, 1); /* U+200B ZERO WIDTH SPACE is Cf */
    EXPECT(t, "bad\x0bmovie", 3, 13, 1);         /* VT and FF are Cc: dropped before whitespace mapping */
    EXPECT(t, "bad\x0cmovie", 3, 13, 1);
    EXPECT(t, "bad\0movie", 3, 13, 1);           /* embedded NUL */
    EXPECT(t, "bad\xef\xbf\xbdmovie", 3, 13, 1); /* U+FFFD */
    EXPECT(t, "bad\xee\x80\x80movie", 3, 13, 1); /* U+E000 private use */
    EXPECT(t, "bad\xef\xbb\xbfmovie", 3, 13, 1); /* U+FEFF BOM */
    tokenizer_free(t);
}

/* Hugging Face's categories are the unicode_categories crate's: Unicode 9.0 tables, and "other" is only
 * Cc | Cf | Co. So unassigned code points stay, and so do characters assigned later whatever they are now. */
static void tokenizer_follows_hf_unicode_9_categories(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "bad\xcd\xb8movie", 3, 7, 1);                 /* U+0378 unassigned (Cn): kept, the word is [UNK] */
    EXPECT(t, "bad\xf3\xa0\x80\x80movie", 3, 7, 1);         /* U+E0000 unassigned */
    EXPECT(t, "bad\xe0\xa2\x90movie", 3, 7, 1);             /* U+0890 Cf since 14.0: kept */
    EXPECT(t, "bad\xe1\xaa\xbfmovie", 3, 7, 1);             /* U+1ABF Mn since 13.0: kept */
    EXPECT(t, "bad\xe2\xb9\x85movie", 3, 7, 1);             /* U+2E45 Po since 10.0: not a split */
    EXPECT(t, "bad\xe1\x9c\xb4movie", 3, 13, 1);            /* U+1734: Mn in 9.0 (Mc now): stripped */
    EXPECT(t, "bad\xea\xa6\xbdmovie", 3, 7, 1);             /* U+A9BD: Mc in 9.0 (Mn now): kept */
    EXPECT(t, "bad\xe1\x99\xadmovie", 3, 14, 7, 15, 1);     /* U+166D: Po in 9.0 (So now): split */
    EXPECT(t, "bad\xf0\x91\x87\x89movie", 3, 14, 7, 15, 1); /* U+111C9: Po in 9.0 (Mn now): split */
    EXPECT(t, "bad\xe2\x80\x8emovie", 3, 13, 1);            /* U+200E Cf: dropped */
    tokenizer_free(t);
}

static void tokenizer_maps_whitespace_to_space(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "bad\tmovie", 3, 14, 15, 1);
    EXPECT(t, "bad\r\nmovie", 3, 14, 15, 1);
    EXPECT(t, "bad\xc2\xa0movie", 3, 14, 15, 1);     /* U+00A0 */
    EXPECT(t, "bad\xe3\x80\x80movie", 3, 14, 15, 1); /* U+3000 */
    EXPECT(t, "bad\xe2\x80\xa8movie", 3, 14, 15, 1); /* U+2028 */
    tokenizer_free(t);
}

static void tokenizer_splits_on_punctuation(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "hello,play!", 3, 0, 5, 4, 6, 1);
    EXPECT(t, "hello,,!", 3, 0, 5, 5, 6, 1);
    EXPECT(t, "hello\xe2\x80\x94play", 3, 0, 19, 4, 1); /* U+2014 (Pd) */
    EXPECT(t, "hello\xc2\xbfplay", 3, 0, 7, 4, 1);      /* U+00BF (Po) not in vocab: [UNK] alone */
    EXPECT(t, "hello?play", 3, 0, 7, 4, 1);             /* ASCII punctuation not in vocab */
    EXPECT(t, "hello$play", 3, 0, 7, 4, 1);             /* $ is Sc but ASCII punctuation */
    tokenizer_free(t);
}

static void tokenizer_wordpiece_uses_continuations(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "playing", 3, 4, 2, 1); /* longest first: play ##ing, not pla ##ying */
    EXPECT(t, "plays", 3, 4, 16, 1);
    EXPECT(t, "playings", 3, 4, 2, 16, 1);
    EXPECT(t, "aaa", 3, 17, 18, 18, 1);
    tokenizer_free(t);
}

static void tokenizer_unk_for_unmatched_word(void) {
    bs_tokenizer *t = tiny();
    EXPECT(t, "playx hello", 3, 7, 0, 1); /* "##x" missing: the whole word is one [UNK] */
    EXPECT(t, "xplay", 3, 7, 1);
    EXPECT(t, "caf\xc3\xa9s", 3, 10, 16, 1); /* ##é exists but é was stripped to e first */
    tokenizer_free(t);
}

static void tokenizer_unk_for_word_over_100_chars(void) {
    bs_tokenizer *t = tiny();
    char text[1024];
    int32_t want[128];
    bs_tokens tk = {0};
    char err[BS_ERRLEN];

    memset(text, 'a', 100);
    want[0] = 3;
    want[1] = 17;
    for (int i = 2; i <= 100; i++) want[i] = 18;
    want[101] = 1;
    expect_ids_at(__LINE__, t, text, 100, want, 102); /* exactly 100 chars: still WordPiece */

    memset(text, 'a', 101);
    static const int32_t unk[] = {3, 7, 1};
    expect_ids_at(__LINE__, t, text, 101, unk, 3);

    /* 101 "á": each loses its mark after NFD, the word is still 101 chars */
    for (int i = 0; i < 101; i++) memcpy(text + 2 * i, "\xc3\xa1", 2);
    expect_ids_at(__LINE__, t, text, 202, unk, 3);
    expect_ids_at(__LINE__, t, text, 200, want, 102);

    /* marks do not count: "a" + 300 U+0301 is one char */
    text[0] = 'a';
    for (int i = 0; i < 300; i++) memcpy(text + 1 + 2 * i, "\xcc\x81", 2);
    static const int32_t one_a[] = {3, 17, 1};
    expect_ids_at(__LINE__, t, text, 601, one_a, 3);
    tokens_free(&tk);
    (void)err;
    tokenizer_free(t);
}

static void tokenizer_reorders_surviving_non_starters(void) {
    bs_tokenizer *t = tiny();
    /* x U+1D16D (Mc, ccc 226) U+1D165 (Mc, ccc 216): NFD puts 216 first, giving vocab entry 23 */
    EXPECT(t, "x\xf0\x9d\x85\xad\xf0\x9d\x85\xa5", 3, 23, 1);
    EXPECT(t, "x\xf0\x9d\x85\xa5\xf0\x9d\x85\xad", 3, 23, 1);
    /* a Mn between them is dropped but does not block the reordering */
    EXPECT(t, "x\xf0\x9d\x85\xad\xcc\x81\xf0\x9d\x85\xa5", 3, 23, 1);
    tokenizer_free(t);
}

static void tokenizer_truncates_to_max_len(void) {
    bs_tokenizer *t = tiny();
    bs_tokens tk = {0};
    char err[BS_ERRLEN] = "";
    const char *s = "hello play hello";
    CHECK_INT(enc(t, s, strlen(s), 4, &tk, err), BS_OK);
    CHECK_INT(tk.n, 4);
    CHECK_INT(tk.ids[0], 3);
    CHECK_INT(tk.ids[1], 0);
    CHECK_INT(tk.ids[2], 4);
    CHECK_INT(tk.ids[3], 1);
    CHECK_INT(tk.truncated, 1);
    CHECK_INT(enc(t, s, strlen(s), 5, &tk, err), BS_OK);
    CHECK_INT(tk.n, 5);
    CHECK_INT(tk.truncated, 0);
    CHECK_INT(tk.ids[4], 1);

    s = "playing hello"; /* the cut falls inside a word's pieces */
    CHECK_INT(enc(t, s, strlen(s), 3, &tk, err), BS_OK);
    CHECK_INT(tk.n, 3);
    CHECK_INT(tk.ids[1], 4);
    CHECK_INT(tk.ids[2], 1);
    CHECK_INT(tk.truncated, 1);

    s = "hello \x01 \xc2\x85 "; /* nothing after the last piece but spaces and controls */
    CHECK_INT(enc(t, s, strlen(s), 3, &tk, err), BS_OK);
    CHECK_INT(tk.n, 3);
    CHECK_INT(tk.truncated, 0);
    s = "hello !";
    CHECK_INT(enc(t, s, strlen(s), 3, &tk, err), BS_OK);
    CHECK_INT(tk.n, 3);
    CHECK_INT(tk.truncated, 1);

    CHECK_INT(enc(t, "hello", 5, 2, &tk, err), BS_OK);
    CHECK_INT(tk.n, 2);
    CHECK_INT(tk.ids[0], 3);
    CHECK_INT(tk.ids[1], 1);
    CHECK_INT(tk.truncated, 1);
    CHECK_INT(enc(t, " ", 1, 2, &tk, err), BS_OK);
    CHECK_INT(tk.truncated, 0);

    CHECK_INT(enc(t, "hello", 5, 1, &tk, err), BS_ERR);
    CHECK_CONTAINS(err, "max_len 1");
    CHECK_INT(enc(t, "hello", 5, -1, &tk, err), BS_ERR);
    tokens_free(&tk);
    tokenizer_free(t);
}

/* Reading stops once max_len is settled: bytes after that point are never looked at, so a long text
 * with garbage at its end encodes under truncation and fails without it. */
static void tokenizer_stops_reading_at_max_len(void) {
    bs_tokenizer *t = tiny();
    size_t len = (size_t)16 << 20;
    char *text = malloc(len + 1);
    for (size_t i = 0; i < len; i += 6) memcpy(text + i, "hello ", len - i < 6 ? len - i : 6);
    text[len] = '\xff';
    bs_tokens tk = {0};
    char err[BS_ERRLEN] = "";
    CHECK_INT(tokenizer_encode(t, text, len + 1, 128, &tk, err), BS_OK);
    CHECK_INT(tk.n, 128);
    CHECK_INT(tk.truncated, 1);
    CHECK_INT(tk.ids[127], 1);
    CHECK_INT(tokenizer_encode(t, text, len + 1, 0, &tk, err), BS_ERR);
    CHECK_STR(err, "invalid UTF-8 at byte 16777216");
    CHECK_INT(tokenizer_encode(t, text, len, 0, &tk, err), BS_OK);
    CHECK_INT(tk.n, (int)(len / 6) + 3); /* 2796202 "hello" + a final "hell"->[UNK] + [CLS] [SEP] */
    CHECK_INT(tk.ids[tk.n - 2], 7);
    free(text);
    tokens_free(&tk);
    tokenizer_free(t);
}

static void tokenizer_rejects_invalid_utf8_with_offset(void) {
    bs_tokenizer *t = tiny();
    static const struct {
        const char *text;
        size_t len;
        const char *msg;
    } cases[] = {
        {"ab\x80", 3, "invalid UTF-8 at byte 2"},            /* stray continuation */
        {"\xc0\xaf", 2, "invalid UTF-8 at byte 0"},          /* overlong '/' */
        {"hi \xc1\xbf", 5, "invalid UTF-8 at byte 3"},       /* overlong, C1 lead */
        {"\xe0\x80\xaf", 3, "invalid UTF-8 at byte 0"},      /* overlong 3-byte */
        {"x\xf0\x80\x80\xaf", 5, "invalid UTF-8 at byte 1"}, /* overlong 4-byte */
        {"x\xed\xa0\x80", 4, "invalid UTF-8 at byte 1"},     /* surrogate U+D800 */
        {"\xed\xbf\xbf", 3, "invalid UTF-8 at byte 0"},      /* surrogate U+DFFF */
        {"\xf4\x90\x80\x80", 4, "invalid UTF-8 at byte 0"},  /* U+110000 */
        {"\xf5\x80\x80\x80", 4, "invalid UTF-8 at byte 0"},  /* lead F5 */
        {"\xff", 1, "invalid UTF-8 at byte 0"},
        {"abc\xe2\x82", 5, "invalid UTF-8 at byte 3"},    /* truncated at the end */
        {"abc\xe2\x82xyz", 7, "invalid UTF-8 at byte 3"}, /* truncated mid-text */
        {"\xc3\xa9\xc3", 3, "invalid UTF-8 at byte 2"},
        {"\xf0\x9f\x98", 3, "invalid UTF-8 at byte 0"},
    };
    bs_tokens tk = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char err[BS_ERRLEN] = "";
        CHECK_INT(enc(t, cases[i].text, cases[i].len, 0, &tk, err), BS_ERR);
        CHECK_STR(err, cases[i].msg);
    }
    /* the largest valid code points and the edges around surrogates are fine */
    /* U+10FFFF and U+D7FF (Cn, kept: one word, [UNK]), U+E000 (Co, dropped) */
    EXPECT(t, "\xf4\x8f\xbf\xbf\xed\x9f\xbf\xee\x80\x80", 3, 7, 1);
    tokens_free(&tk);
    tokenizer_free(t);
}

static void tokenizer_never_reads_past_len(void) {
    bs_tokenizer *t = tiny();
    /* the bytes after len would be invalid or change the word; enc() copies exactly len bytes */
    static const int32_t hello[] = {3, 0, 1};
    expect_ids_at(__LINE__, t, "hello\xe2\x82", 5, hello, 3);
    expect_ids_at(__LINE__, t, "helloing", 5, hello, 3);
    expect_ids_at(__LINE__, t, "hello\xc3", 5, hello, 3);
    tokenizer_free(t);
}

static void tokenizer_reuses_its_buffers(void) {
    bs_tokenizer *t = tiny();
    bs_tokens tk = {0};
    char err[BS_ERRLEN];
    const char *s = "hello play playing, hello!";
    CHECK_INT(tokenizer_encode(t, s, strlen(s), 128, &tk, err), BS_OK);
    int32_t *ids = tk.ids;
    int cap = tk.cap;
    for (int i = 0; i < 100; i++) CHECK_INT(tokenizer_encode(t, s, strlen(s), 128, &tk, err), BS_OK);
    CHECK(tk.ids == ids);
    CHECK_INT(tk.cap, cap);
    CHECK_INT(tk.n, 9); /* hello play play ##ing , hello ! */
    tokens_free(&tk);
    CHECK(tk.ids == NULL);
    tokenizer_free(t);
}

/* ---- the golden file ---- */

typedef struct {
    char *text;
    size_t len;
    int32_t *ids_128, *ids_full;
    int n_128, n_full;
} golden_rec;

static int32_t *json_ids(json_t *a, int *n) {
    *n = (int)json_array_size(a);
    int32_t *ids = malloc(((size_t)*n + 1) * sizeof *ids);
    for (int i = 0; i < *n; i++) ids[i] = (int32_t)json_integer_value(json_array_get(a, (size_t)i));
    return ids;
}

static golden_rec *golden_load(int *count) {
    const char *path = bs_test_data("golden/tokenizer.jsonl");
    char err[BS_ERRLEN];
    size_t len;
    char *buf = bs_read_file(path, &len, err);
    if (!buf) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    golden_rec *recs = NULL;
    int n = 0, cap = 0;
    for (char *line = buf; line < buf + len;) {
        char *nl = memchr(line, '\n', (size_t)(buf + len - line));
        size_t ll = nl ? (size_t)(nl - line) : (size_t)(buf + len - line);
        if (ll > 0) {
            json_error_t je;
            json_t *o = json_loadb(line, ll, JSON_ALLOW_NUL, &je);
            json_t *text = json_object_get(o, "text");
            if (!o || !json_is_string(text)) {
                fprintf(stderr, "%s line %d: %s\n", path, n + 1, je.text);
                exit(1);
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 1024;
                recs = realloc(recs, (size_t)cap * sizeof *recs);
            }
            golden_rec *r = &recs[n++];
            r->len = json_string_length(text);
            r->text = malloc(r->len + 1);
            memcpy(r->text, json_string_value(text), r->len + 1);
            r->ids_128 = json_ids(json_object_get(o, "ids_128"), &r->n_128);
            r->ids_full = json_ids(json_object_get(o, "ids_full"), &r->n_full);
            json_decref(o);
        }
        line += ll + 1;
    }
    free(buf);
    *count = n;
    return recs;
}

static void golden_free(golden_rec *recs, int n) {
    for (int i = 0; i < n; i++) {
        free(recs[i].text);
        free(recs[i].ids_128);
        free(recs[i].ids_full);
    }
    free(recs);
}

static bs_tokenizer *bert(void) {
    char err[BS_ERRLEN];
    bs_tokenizer *t = tokenizer_new(bs_test_data("bert-base-uncased/vocab.txt"), err);
    if (!t) {
        fprintf(stderr, "%s\n", err);
        exit(1);
    }
    return t;
}

static int report_mismatch(int rec, const golden_rec *r, int max_len, const bs_tokens *tk, int rc, const char *err,
                           const int32_t *want, int n_want) {
    int i = 0;
    if (rc == BS_OK)
        while (i < tk->n && i < n_want && tk->ids[i] == want[i]) i++;
    fprintf(stderr, "%s: record %d (max_len %d): rc %d %s, %d ids (want %d), first difference at %d: got %d want %d\n",
            bs_test_current, rec + 1, max_len, rc, rc ? err : "", rc ? 0 : tk->n, n_want, i,
            rc == BS_OK && i < tk->n ? tk->ids[i] : -1, i < n_want ? want[i] : -1);
    fprintf(stderr, "  text: %.*s\n", r->len > 300 ? 300 : (int)r->len, r->text);
    return 1;
}

static void tokenizer_matches_hf_golden(void) {
    bs_tokenizer *t = bert();
    int n;
    golden_rec *recs = golden_load(&n);
    CHECK_INT(n, 552);
    bs_tokens tk = {0};
    int shown = 0, bad = 0;
    for (int i = 0; i < n; i++) {
        golden_rec *r = &recs[i];
        for (int pass = 0; pass < 2; pass++) {
            int max_len = pass == 0 ? 128 : 0;
            const int32_t *want = pass == 0 ? r->ids_128 : r->ids_full;
            int n_want = pass == 0 ? r->n_128 : r->n_full;
            char err[BS_ERRLEN] = "";
            int rc = enc(t, r->text, r->len, max_len, &tk, err);
            int ok = rc == BS_OK && tk.n == n_want && memcmp(tk.ids, want, (size_t)n_want * sizeof *want) == 0;
            if (ok && pass == 0) ok = tk.truncated == (r->n_full > 128);
            if (ok && pass == 1) ok = tk.truncated == 0;
            if (!ok) {
                bad++;
                if (shown++ < 5) report_mismatch(i, r, max_len, &tk, rc, err, want, n_want);
            }
        }
    }
    bs_test_checks++;
    if (bad) {
        fprintf(stderr, "%s: %d of %d encodings differ from the golden file\n", bs_test_current, bad, 2 * n);
        bs_test_failures++;
    }
    tokens_free(&tk);
    golden_free(recs, n);
    tokenizer_free(t);
}

static void tokenizer_bert_named_cases(void) {
    bs_tokenizer *t = bert();
    CHECK_INT(tokenizer_token_id(t, "[CLS]"), 101);
    CHECK_INT(tokenizer_pad_id(t), 0);
    CHECK_INT(tokenizer_vocab_size(t), 30522);
    EXPECT(t, "r\xc3\xa9sum\xc3\xa9 caf\xc3\xa9", 101, 13746, 7668, 102); /* resume cafe */
    EXPECT(t, "\xc2\x85next\xc2\x96line\xc2\x97", 101, 2279, 4179, 102);  /* next ##line: C1 controls join */
    EXPECT(t, "Straße", 101, 2358, 27807, 102);
    EXPECT(t, "ΣΣ", 101, 1173, 29733, 102);                      /* σ ##σ: no final-sigma rule */
    EXPECT(t, "\xe6\x9d\xb1\xe4\xba\xac", 101, 1879, 1755, 102); /* 東 京 */
    EXPECT(t, "don't", 101, 2123, 1005, 1056, 102);
    tokenizer_free(t);
}

/* ---- thread safety: one shared tokenizer, one bs_tokens per thread ---- */

typedef struct {
    const bs_tokenizer *t;
    const golden_rec *recs;
    int n, bad;
} thread_job;

static void *thread_main(void *arg) {
    thread_job *j = arg;
    bs_tokens tk = {0};
    char err[BS_ERRLEN];
    for (int round = 0; round < 3; round++)
        for (int i = 0; i < j->n; i++) {
            const golden_rec *r = &j->recs[(i * 7 + round) % j->n];
            if (tokenizer_encode(j->t, r->text, r->len, 128, &tk, err) != BS_OK || tk.n != r->n_128 ||
                memcmp(tk.ids, r->ids_128, (size_t)tk.n * sizeof *tk.ids) != 0)
                j->bad++;
        }
    tokens_free(&tk);
    return NULL;
}

static void tokenizer_is_thread_safe(void) {
    bs_tokenizer *t = bert();
    int n;
    golden_rec *recs = golden_load(&n);
    pthread_t th[4];
    thread_job jobs[4];
    for (int i = 0; i < 4; i++) {
        jobs[i] = (thread_job){t, recs, n, 0};
        pthread_create(&th[i], NULL, thread_main, &jobs[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(th[i], NULL);
        CHECK_INT(jobs[i].bad, 0);
    }
    golden_free(recs, n);
    tokenizer_free(t);
}

int main(void) {
    RUN(tokenizer_empty_text_is_cls_sep);
    RUN(tokenizer_special_ids_come_from_vocab);
    RUN(tokenizer_vocab_accepts_crlf_and_no_final_newline);
    RUN(tokenizer_vocab_without_special_token_fails);
    RUN(tokenizer_new_reports_missing_file);
    RUN(tokenizer_strips_accents_after_nfd);
    RUN(tokenizer_lowercases_char_by_char);
    RUN(tokenizer_spaces_cjk_ideographs);
    RUN(tokenizer_drops_controls_and_joins_words);
    RUN(tokenizer_follows_hf_unicode_9_categories);
    RUN(tokenizer_maps_whitespace_to_space);
    RUN(tokenizer_splits_on_punctuation);
    RUN(tokenizer_wordpiece_uses_continuations);
    RUN(tokenizer_unk_for_unmatched_word);
    RUN(tokenizer_unk_for_word_over_100_chars);
    RUN(tokenizer_reorders_surviving_non_starters);
    RUN(tokenizer_truncates_to_max_len);
    RUN(tokenizer_stops_reading_at_max_len);
    RUN(tokenizer_rejects_invalid_utf8_with_offset);
    RUN(tokenizer_never_reads_past_len);
    RUN(tokenizer_reuses_its_buffers);
    /* the rest needs ../shared/data (skips outside CI when absent) */
    RUN(tokenizer_bert_named_cases);
    RUN(tokenizer_matches_hf_golden);
    RUN(tokenizer_is_thread_safe);
    return bs_test_done();
}
