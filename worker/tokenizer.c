/* bert-base-uncased's WordPiece tokenizer, byte-for-byte the pipeline of Hugging Face's
 * BertWordPieceTokenizer(lowercase=True): one streaming pass over the UTF-8 text that cleans, spaces
 * CJK, NFDs, strips Mn, lowercases, splits and WordPieces, and stops as soon as max_len is settled.
 * ASCII goes through table lookups; every other code point through utf8proc. See docs/tokenizer.md. */
#include "tokenizer.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "common.h"

/* A word longer than this many (normalised) code points is one [UNK] (HF max_input_chars_per_word). */
#define TK_MAX_WORD_CHARS 100
/* Bytes of a word we keep: 100 code points of at most 4 bytes, plus one more char and slack. */
#define TK_WORD_BYTES 512

/* Classes of an ASCII byte in the *input* (before normalisation). */
enum { TK_WORD = 0, TK_SPACE, TK_DROP, TK_PUNCT };

typedef struct {
    uint32_t hash;
    int32_t id; /* -1: empty */
} tk_slot;

struct bs_tokenizer {
    char *pool;       /* every token, NUL-terminated, in id order */
    const char **key; /* [n] token bytes without a leading "##" */
    uint32_t *keylen; /* [n] */
    uint8_t *cont;    /* [n] 1 for a "##" continuation token */
    int n;            /* ids 0..n-1 (one per vocabulary line) */
    tk_slot *slots;   /* open addressing, linear probing, load <= 1/2 */
    uint32_t mask;
    int shift;
    int max_key[2]; /* longest key in bytes: [0] word-initial, [1] continuation */
    int32_t unk, cls, sep, pad;
    int32_t ascii_id[128];    /* id of a one-character ASCII word (punctuation), else [UNK] */
    uint8_t ascii_class[128]; /* TK_* for the input byte */
    uint8_t ascii_lower[128]; /* lowercased byte for a word character, 0 otherwise */
};

/* ---- hashing: FNV-1a is prefix-incremental, so one pass gives the hash of every prefix of a word ---- */

#define TK_FNV_PRIME 16777619u
static const uint32_t tk_seed[2] = {2166136261u, 0x9747b28cu};

static inline uint32_t tk_hash(int cont, const uint8_t *s, size_t n) {
    uint32_t h = tk_seed[cont];
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * TK_FNV_PRIME;
    return h;
}

static inline uint32_t tk_index(const bs_tokenizer *t, uint32_t h) {
    return (h * 0x9E3779B1u) >> t->shift;
}

static inline int32_t tk_lookup(const bs_tokenizer *t, int cont, uint32_t h, const uint8_t *s, uint32_t n) {
    for (uint32_t i = tk_index(t, h);; i = (i + 1) & t->mask) {
        const tk_slot *sl = &t->slots[i];
        if (sl->id < 0) return -1;
        if (sl->hash == h && t->keylen[sl->id] == n && t->cont[sl->id] == cont && memcmp(t->key[sl->id], s, n) == 0)
            return sl->id;
    }
}

/* ---- Unicode classes (Hugging Face's definitions, Rust char semantics) ---- */

/* Rust char::is_whitespace: the Unicode White_Space property. */
static int tk_is_white(uint32_t c) {
    if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

static int tk_is_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
           (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* Hugging Face classifies characters with the unicode_categories crate (0.1.1, Unicode 9.0 tables), whose
 * is_other() is Cc | Cf | Co only: unassigned code points (Cn) are kept, not dropped. utf8proc knows
 * Unicode 15, so characters assigned after 9.0 that would now be dropped, stripped or split are listed
 * here and stay ordinary word characters, as they are for Hugging Face. Derived once from utf8proc 2.8's
 * categories and the Unicode Age property (Perl's Unicode::UCD): Mn, P*, Cc, Cf, Co with Age > 9.0. */
static const uint32_t tk_post9[][2] = {
    {0x061D, 0x061D},   {0x07FD, 0x07FD},   {0x0890, 0x0891},   {0x0898, 0x089F},   {0x08CA, 0x08D3},
    {0x09FD, 0x09FE},   {0x0A76, 0x0A76},   {0x0AFA, 0x0AFF},   {0x0B55, 0x0B55},   {0x0C04, 0x0C04},
    {0x0C3C, 0x0C3C},   {0x0C77, 0x0C77},   {0x0C84, 0x0C84},   {0x0D00, 0x0D00},   {0x0D3B, 0x0D3C},
    {0x0D81, 0x0D81},   {0x0EBA, 0x0EBA},   {0x0ECE, 0x0ECE},   {0x180F, 0x180F},   {0x1ABF, 0x1ACE},
    {0x1B7D, 0x1B7E},   {0x1DF6, 0x1DFA},   {0x2E45, 0x2E4F},   {0x2E52, 0x2E5D},   {0xA82C, 0xA82C},
    {0xA8FF, 0xA8FF},   {0x10D24, 0x10D27}, {0x10EAB, 0x10EAD}, {0x10EFD, 0x10EFF}, {0x10F46, 0x10F50},
    {0x10F55, 0x10F59}, {0x10F82, 0x10F89}, {0x11070, 0x11070}, {0x11073, 0x11074}, {0x110C2, 0x110C2},
    {0x110CD, 0x110CD}, {0x111CF, 0x111CF}, {0x11241, 0x11241}, {0x1133B, 0x1133B}, {0x1145A, 0x1145A},
    {0x1145E, 0x1145E}, {0x116B9, 0x116B9}, {0x1182F, 0x11837}, {0x11839, 0x1183B}, {0x1193B, 0x1193C},
    {0x1193E, 0x1193E}, {0x11943, 0x11946}, {0x119D4, 0x119D7}, {0x119DA, 0x119DB}, {0x119E0, 0x119E0},
    {0x119E2, 0x119E2}, {0x11A01, 0x11A0A}, {0x11A33, 0x11A38}, {0x11A3B, 0x11A47}, {0x11A51, 0x11A56},
    {0x11A59, 0x11A5B}, {0x11A8A, 0x11A96}, {0x11A98, 0x11A9C}, {0x11A9E, 0x11AA2}, {0x11B00, 0x11B09},
    {0x11D31, 0x11D36}, {0x11D3A, 0x11D3A}, {0x11D3C, 0x11D3D}, {0x11D3F, 0x11D45}, {0x11D47, 0x11D47},
    {0x11D90, 0x11D91}, {0x11D95, 0x11D95}, {0x11D97, 0x11D97}, {0x11EF3, 0x11EF4}, {0x11EF7, 0x11EF8},
    {0x11F00, 0x11F01}, {0x11F36, 0x11F3A}, {0x11F40, 0x11F40}, {0x11F42, 0x11F4F}, {0x11FFF, 0x11FFF},
    {0x12FF1, 0x12FF2}, {0x13430, 0x13440}, {0x13447, 0x13455}, {0x16E97, 0x16E9A}, {0x16F4F, 0x16F4F},
    {0x16FE2, 0x16FE2}, {0x16FE4, 0x16FE4}, {0x1CF00, 0x1CF2D}, {0x1CF30, 0x1CF46}, {0x1E08F, 0x1E08F},
    {0x1E130, 0x1E136}, {0x1E2AE, 0x1E2AE}, {0x1E2EC, 0x1E2EF}, {0x1E4EC, 0x1E4EF},
};

enum { TKU_WORD = 0, TKU_DROP, TKU_MN, TKU_PUNCT };

static int tk_is_post9(uint32_t c) {
    int lo = 0, hi = (int)(sizeof tk_post9 / sizeof tk_post9[0]) - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (c < tk_post9[mid][0])
            hi = mid - 1;
        else if (c > tk_post9[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

/* The class of a non-ASCII code point as Hugging Face sees it (Unicode 9.0 categories). */
static int tk_uclass(uint32_t c) {
    switch (c) { /* assigned by 9.0, category changed since */
    case 0x1734:
        return TKU_MN; /* Mn in 9.0, Mc since 14.0 */
    case 0xA9BD:
        return TKU_WORD; /* Mc in 9.0, Mn since 12.0 */
    case 0x166D:
    case 0x111C9:
        return TKU_PUNCT; /* Po in 9.0, So / Mn since */
    }
    int cat = utf8proc_category((utf8proc_int32_t)c), cls = TKU_WORD;
    if (cat == UTF8PROC_CATEGORY_CC || cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_CO)
        cls = TKU_DROP;
    else if (cat == UTF8PROC_CATEGORY_MN)
        cls = TKU_MN;
    else if (cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO)
        cls = TKU_PUNCT;
    if (cls != TKU_WORD && c >= tk_post9[0][0] && tk_is_post9(c)) cls = TKU_WORD;
    return cls;
}

static int tk_is_ascii_punct(uint32_t c) {
    return (c >= 0x21 && c <= 0x2F) || (c >= 0x3A && c <= 0x40) || (c >= 0x5B && c <= 0x60) || (c >= 0x7B && c <= 0x7E);
}

static int tk_utf8_put(uint8_t *d, uint32_t c) {
    if (c < 0x80) {
        d[0] = (uint8_t)c;
        return 1;
    }
    if (c < 0x800) {
        d[0] = (uint8_t)(0xC0 | (c >> 6));
        d[1] = (uint8_t)(0x80 | (c & 0x3F));
        return 2;
    }
    if (c < 0x10000) {
        d[0] = (uint8_t)(0xE0 | (c >> 12));
        d[1] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
        d[2] = (uint8_t)(0x80 | (c & 0x3F));
        return 3;
    }
    d[0] = (uint8_t)(0xF0 | (c >> 18));
    d[1] = (uint8_t)(0x80 | ((c >> 12) & 0x3F));
    d[2] = (uint8_t)(0x80 | ((c >> 6) & 0x3F));
    d[3] = (uint8_t)(0x80 | (c & 0x3F));
    return 4;
}

/* Strict UTF-8 (as Rust's str): no overlongs, no surrogates, nothing above U+10FFFF, no truncation.
 * Reads at most n bytes. Returns the sequence length (2..4), or 0 when invalid. */
static int tk_utf8_get(const uint8_t *s, size_t n, uint32_t *cp) {
    uint8_t b = s[0];
    if (b >= 0xC2 && b <= 0xDF) {
        if (n < 2 || (s[1] & 0xC0) != 0x80) return 0;
        *cp = ((uint32_t)(b & 0x1F) << 6) | (s[1] & 0x3F);
        return 2;
    }
    if (b >= 0xE0 && b <= 0xEF) {
        uint8_t lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
        if (n < 3 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80) return 0;
        *cp = ((uint32_t)(b & 0x0F) << 12) | ((uint32_t)(s[1] & 0x3F) << 6) | (s[2] & 0x3F);
        return 3;
    }
    if (b >= 0xF0 && b <= 0xF4) {
        uint8_t lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
        if (n < 4 || s[1] < lo || s[1] > hi || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80) return 0;
        *cp = ((uint32_t)(b & 0x07) << 18) | ((uint32_t)(s[1] & 0x3F) << 12) | ((uint32_t)(s[2] & 0x3F) << 6) |
              (s[3] & 0x3F);
        return 4;
    }
    return 0; /* 0x80..0xC1 (stray continuation, overlong lead), 0xF5..0xFF */
}

/* ---- vocabulary ---- */

static int tk_find_special(bs_tokenizer *t, const char *tok, int32_t *id, const char *name, char *err) {
    *id = tokenizer_token_id(t, tok);
    if (*id < 0) return bs_err(err, "%s: vocabulary has no %s token", name, tok);
    return BS_OK;
}

/* Length of s[0..n) without trailing White_Space (Rust str::trim_end, as HF's vocab reader does). */
static size_t tk_trim_end(const uint8_t *s, size_t n) {
    while (n > 0) {
        if (s[n - 1] < 0x80) {
            if (!tk_is_white(s[n - 1])) break;
            n--;
            continue;
        }
        size_t k = n - 1;
        while (k > 0 && n - k < 4 && (s[k] & 0xC0) == 0x80) k--;
        uint32_t cp;
        if (tk_utf8_get(s + k, n - k, &cp) != (int)(n - k) || !tk_is_white(cp)) break;
        n = k;
    }
    return n;
}

bs_tokenizer *tokenizer_new_from_buffer(const char *buf, size_t len, const char *name, char *err) {
    if (!name) name = "vocabulary";
    if (!buf && len) {
        bs_err(err, "%s: no buffer", name);
        return NULL;
    }
    bs_tokenizer *t = calloc(1, sizeof *t);
    if (!t) goto oom;
    /* Lines split on '\n' (a last line without one still counts; a final '\n' adds no empty token). */
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) lines += buf[i] == '\n';
    if (len > 0 && buf[len - 1] != '\n') lines++;
    if (lines == 0) {
        bs_err(err, "%s: empty vocabulary", name);
        goto fail;
    }
    if (lines > (size_t)INT32_MAX / 4) {
        bs_err(err, "%s: too many lines", name);
        goto fail;
    }
    t->n = (int)lines;
    t->pool = malloc(len + 1);
    t->key = malloc(lines * sizeof *t->key);
    t->keylen = malloc(lines * sizeof *t->keylen);
    t->cont = malloc(lines);
    uint32_t nslots = 64;
    while (nslots < 2 * lines) nslots *= 2;
    t->slots = malloc((size_t)nslots * sizeof *t->slots);
    if (!t->pool || !t->key || !t->keylen || !t->cont || !t->slots) goto oom;
    t->mask = nslots - 1;
    t->shift = 32;
    for (uint32_t s = nslots; s > 1; s >>= 1) t->shift--;
    for (uint32_t i = 0; i < nslots; i++) t->slots[i].id = -1;

    size_t pos = 0, off = 0;
    for (int id = 0; id < t->n; id++) {
        const char *line = buf + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - line) : len - pos;
        pos += ll + (nl != NULL);
        const uint8_t *u = (const uint8_t *)line;
        for (size_t i = 0; i < ll;) {
            uint32_t cp;
            int k = u[i] < 0x80 ? 1 : tk_utf8_get(u + i, ll - i, &cp);
            if (!k) {
                bs_err(err, "%s line %d: invalid UTF-8", name, id + 1);
                goto fail;
            }
            i += (size_t)k;
        }
        ll = tk_trim_end(u, ll);
        char *tok = t->pool + off;
        memcpy(tok, line, ll);
        tok[ll] = '\0';
        off += ll + 1;
        int cont = ll > 2 && tok[0] == '#' && tok[1] == '#';
        t->cont[id] = (uint8_t)cont;
        t->key[id] = tok + (cont ? 2 : 0);
        t->keylen[id] = (uint32_t)(ll - (cont ? 2 : 0));
        if ((int)t->keylen[id] > t->max_key[cont]) t->max_key[cont] = (int)t->keylen[id];
        /* A repeated token keeps its last line's id, like HF's HashMap insert. */
        uint32_t h = tk_hash(cont, (const uint8_t *)t->key[id], t->keylen[id]);
        for (uint32_t i = tk_index(t, h);; i = (i + 1) & t->mask) {
            tk_slot *sl = &t->slots[i];
            if (sl->id < 0 || (sl->hash == h && t->keylen[sl->id] == t->keylen[id] && t->cont[sl->id] == cont &&
                               memcmp(t->key[sl->id], t->key[id], t->keylen[id]) == 0)) {
                sl->hash = h;
                sl->id = id;
                break;
            }
        }
    }
    if (tk_find_special(t, "[UNK]", &t->unk, name, err) || tk_find_special(t, "[CLS]", &t->cls, name, err) ||
        tk_find_special(t, "[SEP]", &t->sep, name, err) || tk_find_special(t, "[PAD]", &t->pad, name, err))
        goto fail;

    for (int c = 0; c < 128; c++) {
        uint8_t cls = TK_WORD;
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            cls = TK_SPACE;
        else if (c < 0x20 || c == 0x7F)
            cls = TK_DROP; /* Cc (VT and FF too: dropped before whitespace mapping) */
        else if (tk_is_ascii_punct((uint32_t)c))
            cls = TK_PUNCT;
        t->ascii_class[c] = cls;
        t->ascii_lower[c] = cls == TK_WORD ? (uint8_t)(c >= 'A' && c <= 'Z' ? c + 32 : c) : 0;
        uint8_t ch = (uint8_t)c;
        int32_t id = tk_lookup(t, 0, tk_hash(0, &ch, 1), &ch, 1);
        t->ascii_id[c] = id >= 0 ? id : t->unk;
    }
    return t;

oom:
    bs_err(err, "%s: out of memory", name);
fail:
    tokenizer_free(t);
    return NULL;
}

bs_tokenizer *tokenizer_new(const char *vocab_path, char *err) {
    size_t len;
    char *buf = bs_read_file(vocab_path, &len, err);
    if (!buf) return NULL;
    bs_tokenizer *t = tokenizer_new_from_buffer(buf, len, vocab_path, err);
    free(buf);
    return t;
}

void tokenizer_free(bs_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->key);
    free(t->keylen);
    free(t->cont);
    free(t->slots);
    free(t);
}

int tokenizer_vocab_size(const bs_tokenizer *t) {
    return t->n;
}

int32_t tokenizer_token_id(const bs_tokenizer *t, const char *token) {
    size_t n = strlen(token);
    int cont = n > 2 && token[0] == '#' && token[1] == '#';
    const uint8_t *k = (const uint8_t *)token + (cont ? 2 : 0);
    n -= cont ? 2 : 0;
    if (n > UINT32_MAX) return -1;
    return tk_lookup(t, cont, tk_hash(cont, k, n), k, (uint32_t)n);
}

int32_t tokenizer_pad_id(const bs_tokenizer *t) {
    return t->pad;
}

void tokens_free(bs_tokens *tk) {
    if (!tk) return;
    free(tk->ids);
    free(tk->scratch);
    memset(tk, 0, sizeof *tk);
}

/* ---- encoding ---- */

typedef struct {
    const bs_tokenizer *t;
    bs_tokens *out;
    int n;      /* ids written, [CLS] included */
    int limit;  /* most pieces kept (INT_MAX: no truncation) */
    int oom;    /* growing out->ids failed, or more than INT_MAX ids */
    int wbytes; /* current word: bytes kept in word[] */
    int wchars; /* its length in code points, saturating at TK_MAX_WORD_CHARS + 1 */
    uint8_t word[TK_WORD_BYTES];
} tk_enc;

static int tk_reserve(bs_tokens *out, int need) {
    if (need <= out->cap) return BS_OK;
    size_t cap = out->cap > 0 ? (size_t)out->cap : 64;
    while (cap < (size_t)need) cap *= 2;
    if (cap > INT_MAX) cap = INT_MAX;
    int32_t *ids = realloc(out->ids, cap * sizeof *ids);
    if (!ids) return BS_ERR;
    out->ids = ids;
    out->cap = (int)cap;
    return BS_OK;
}

/* Greedy longest-match-first WordPiece of word[0..n) (a whole word of <= 100 code points).
 * Writes its pieces to ids (room for TK_MAX_WORD_CHARS) and returns their count; no match anywhere: [UNK]. */
static int tk_wordpiece(const bs_tokenizer *t, const uint8_t *w, int n, int32_t *ids) {
    uint32_t h[TK_WORD_BYTES + 1];
    int np = 0;
    for (int start = 0, cont = 0; start < n; cont = 1) {
        int most = n - start < t->max_key[cont] ? n - start : t->max_key[cont];
        const uint8_t *s = w + start;
        h[0] = tk_seed[cont];
        for (int k = 0; k < most; k++) h[k + 1] = (h[k] ^ s[k]) * TK_FNV_PRIME;
        int32_t id = -1;
        int k = most;
        for (; k > 0; k--) {
            if (k < n - start && (s[k] & 0xC0) == 0x80) continue; /* not a code point boundary */
            if ((id = tk_lookup(t, cont, h[k], s, (uint32_t)k)) >= 0) break;
        }
        if (id < 0) {
            ids[0] = t->unk;
            return 1;
        }
        ids[np++] = id;
        start += k;
    }
    return np;
}

/* Appends pieces; returns 1 when the limit cut some off (then truncated is set and reading stops). */
static int tk_emit(tk_enc *e, const int32_t *ids, int k) {
    if (e->n > INT_MAX - TK_MAX_WORD_CHARS - 2) { /* only a text of gigabytes gets here */
        e->oom = 1;
        return 1;
    }
    int room = e->limit - (e->n - 1);
    int take = k < room ? k : room;
    if (e->limit == INT_MAX && tk_reserve(e->out, e->n + take + 1) != BS_OK) {
        e->oom = 1;
        return 1;
    }
    memcpy(e->out->ids + e->n, ids, (size_t)take * sizeof *ids);
    e->n += take;
    if (take < k) {
        e->out->truncated = 1;
        return 1;
    }
    return 0;
}

static int tk_end_word(tk_enc *e) {
    if (e->wchars == 0) return 0;
    int32_t ids[TK_MAX_WORD_CHARS];
    int k;
    if (e->wchars > TK_MAX_WORD_CHARS) {
        ids[0] = e->t->unk;
        k = 1;
    } else {
        k = tk_wordpiece(e->t, e->word, e->wbytes, ids);
    }
    e->wbytes = e->wchars = 0;
    return tk_emit(e, ids, k);
}

/* A new word (or a punctuation piece) starts: once all allowed pieces exist, this one is the first
 * that does not fit, so the result is settled. */
static inline int tk_full(tk_enc *e) {
    if (e->n - 1 < e->limit) return 0;
    e->out->truncated = 1;
    return 1;
}

static int tk_punct(tk_enc *e, int32_t id) {
    if (tk_end_word(e) || tk_full(e)) return 1;
    return tk_emit(e, &id, 1);
}

/* Appends normalised code point c (canonical combining class ccc) to the current word. */
static int tk_word_push(tk_enc *e, uint32_t c, int ccc) {
    if (e->wchars == 0 && tk_full(e)) return 1;
    if (e->wchars > TK_MAX_WORD_CHARS) return 0; /* already [UNK]: only its end matters */
    uint8_t u[4];
    int nb = tk_utf8_put(u, c);
    int at = e->wbytes;
    /* NFD's canonical ordering: a non-starter moves before preceding non-starters of higher class.
     * Only non-starters that survive (not Mn) can be here, and those are rare (some Mc). */
    while (ccc > 0 && at > 0 && e->wchars < TK_MAX_WORD_CHARS) {
        int q = at - 1;
        while (q > 0 && (e->word[q] & 0xC0) == 0x80) q--;
        uint32_t prev = e->word[q];
        if (prev >= 0x80) tk_utf8_get(e->word + q, (size_t)(at - q), &prev);
        if (utf8proc_get_property((utf8proc_int32_t)prev)->combining_class <= ccc) break;
        at = q;
    }
    memmove(e->word + at + nb, e->word + at, (size_t)(e->wbytes - at));
    memcpy(e->word + at, u, (size_t)nb);
    e->wbytes += nb;
    e->wchars++;
    return 0;
}

/* One code point of the normalised text (after NFD, Mn removal and lowercasing): the pre-tokenizer. */
static int tk_norm_char(tk_enc *e, uint32_t c, int ccc) {
    if (c < 0x80) {
        if (tk_is_white(c)) return tk_end_word(e);
        if (tk_is_ascii_punct(c)) return tk_punct(e, e->t->ascii_id[c]);
        return tk_word_push(e, c, 0);
    }
    if (tk_is_white(c)) return tk_end_word(e);
    if (tk_uclass(c) == TKU_PUNCT) {
        uint8_t u[4];
        int nb = tk_utf8_put(u, c);
        int32_t id = tk_lookup(e->t, 0, tk_hash(0, u, (size_t)nb), u, (uint32_t)nb);
        return tk_punct(e, id >= 0 ? id : e->t->unk);
    }
    return tk_word_push(e, c, ccc);
}

/* One non-ASCII code point of the input: clean, CJK spacing, NFD, strip Mn, lowercase. */
static int tk_input_char(tk_enc *e, uint32_t cp) {
    if (cp == 0xFFFD || tk_uclass(cp) == TKU_DROP) return 0;
    if (tk_is_white(cp)) return tk_end_word(e);
    int cjk = tk_is_cjk(cp);
    if (cjk && tk_end_word(e)) return 1;
    utf8proc_int32_t d[32];
    int boundclass = 0;
    utf8proc_ssize_t nd = utf8proc_decompose_char((utf8proc_int32_t)cp, d, 32, UTF8PROC_DECOMPOSE, &boundclass);
    if (nd < 1 || nd > 32) { /* cannot happen for a valid code point; keep it as it is */
        d[0] = (utf8proc_int32_t)cp;
        nd = 1;
    }
    for (utf8proc_ssize_t j = 0; j < nd; j++) {
        if (d[j] >= 0x80 && tk_uclass((uint32_t)d[j]) == TKU_MN) continue;
        int ccc = utf8proc_get_property(d[j])->combining_class;
        if (tk_norm_char(e, (uint32_t)utf8proc_tolower(d[j]), ccc)) return 1;
    }
    return cjk ? tk_end_word(e) : 0;
}

int tokenizer_encode(const bs_tokenizer *t, const char *text, size_t len, int max_len, bs_tokens *out, char *err) {
    if (!t || !out || (!text && len)) return bs_err(err, "tokenizer_encode: missing argument");
    if (max_len < 0 || max_len == 1)
        return bs_err(err, "tokenizer_encode: max_len %d (0 = no limit, else >= 2)", max_len);
    out->n = 0;
    out->truncated = 0;
    if (tk_reserve(out, max_len > 0 ? max_len : 64) != BS_OK) return bs_err(err, "tokenizer_encode: out of memory");
    tk_enc e;
    e.t = t;
    e.out = out;
    e.n = 1;
    e.limit = max_len > 0 ? max_len - 2 : INT_MAX;
    e.oom = 0;
    e.wbytes = e.wchars = 0;
    out->ids[0] = t->cls;

    const uint8_t *p = (const uint8_t *)text;
    size_t i = 0;
    int stop = 0;
    while (i < len && !stop) {
        uint8_t b = p[i];
        if (b < 0x80) {
            uint8_t c = t->ascii_lower[b];
            if (c) {
                if (e.wchars == 0 && tk_full(&e)) break;
                /* The hot loop: a run of ASCII word characters. */
                do {
                    if (e.wchars <= TK_MAX_WORD_CHARS) {
                        e.word[e.wbytes++] = c;
                        e.wchars++;
                    }
                    i++;
                } while (i < len && p[i] < 0x80 && (c = t->ascii_lower[p[i]]) != 0);
                continue;
            }
            switch (t->ascii_class[b]) {
            case TK_SPACE:
                stop = tk_end_word(&e);
                break;
            case TK_PUNCT:
                stop = tk_punct(&e, t->ascii_id[b]);
                break;
            default: /* TK_DROP: NUL and other C0 controls, DEL */
                break;
            }
            i++;
        } else {
            uint32_t cp;
            int nb = tk_utf8_get(p + i, len - i, &cp);
            if (!nb) return bs_err(err, "invalid UTF-8 at byte %zu", i);
            i += (size_t)nb;
            stop = tk_input_char(&e, cp);
        }
    }
    if (!stop) tk_end_word(&e);
    if (e.oom) return bs_err(err, "tokenizer_encode: out of memory (text of %zu bytes)", len);
    out->ids[e.n++] = t->sep;
    out->n = e.n;
    return BS_OK;
}

int tokenizer_check_model_vocab(const bs_tokenizer *t, const char *vocab_path, int model_vocab_size, char *err) {
    if (tokenizer_vocab_size(t) > model_vocab_size)
        return bs_err(err, "%s has %d tokens but the model's vocab_size is %d", vocab_path, tokenizer_vocab_size(t),
                      model_vocab_size);
    return BS_OK;
}
