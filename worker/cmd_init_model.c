/* `bertstream init-model`: writes a randomly initialised model directory (config.json,
 * model.safetensors, vocab.txt) for offline demos and benchmarks. Same seed, same bytes.
 * Without --vocab the vocabulary is synthetic: bert-base's special-token layout plus enough
 * characters, words and ##-pieces that English text tokenizes into something non-trivial. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "common.h"
#include "model.h"

static const char *usage =
    "usage: bertstream init-model --preset tiny|base --seed N --out DIR [--vocab FILE]\n"
    "Writes DIR/config.json, DIR/model.safetensors (F32, Hugging Face BertModel names, weights drawn\n"
    "like transformers' _init_weights: normal(0, 0.02), LayerNorm 1/0, biases 0) and DIR/vocab.txt\n"
    "(a copy of --vocab, or a synthetic vocabulary of the model's vocab_size lines with [PAD] 0,\n"
    "[UNK] 100, [CLS] 101, [SEP] 102, [MASK] 103 as in bert-base-uncased). The same seed gives the\n"
    "same bytes. Prints one JSON line: {\"out\", \"preset\", \"seed\", \"params\", \"encoder_id\"}.\n"
    "  tiny: vocab 30522, hidden 128, 2 layers, 2 heads, intermediate 512 (the golden tiny-bert shape)\n"
    "  base: vocab 30522, hidden 768, 12 layers, 12 heads, intermediate 3072 (bert-base-uncased)\n";

/* Frequent English words (movie-review flavoured); with the single characters and ##-pieces
 * below, ordinary sentences become a mix of whole words and word pieces. */
static const char *const words[] = {
    "the",         "of",        "and",        "to",          "in",           "was",        "he",        "is",
    "for",         "it",        "with",       "as",          "his",          "on",         "be",        "at",
    "by",          "had",       "are",        "but",         "from",         "or",         "have",      "an",
    "they",        "which",     "one",        "you",         "were",         "her",        "all",       "she",
    "there",       "would",     "their",      "we",          "him",          "been",       "has",       "when",
    "who",         "will",      "more",       "no",          "if",           "out",        "so",        "said",
    "what",        "up",        "its",        "about",       "into",         "than",       "them",      "can",
    "only",        "other",     "new",        "some",        "could",        "time",       "these",     "two",
    "may",         "then",      "do",         "first",       "any",          "my",         "now",       "such",
    "like",        "our",       "over",       "man",         "me",           "even",       "most",      "made",
    "after",       "also",      "did",        "many",        "before",       "must",       "through",   "back",
    "years",       "where",     "much",       "your",        "way",          "well",       "down",      "should",
    "because",     "each",      "just",       "those",       "people",       "how",        "too",       "little",
    "state",       "good",      "very",       "make",        "world",        "still",      "own",       "see",
    "men",         "work",      "long",       "get",         "here",         "between",    "both",      "life",
    "being",       "under",     "never",      "day",         "same",         "another",    "know",      "while",
    "last",        "might",     "us",         "great",       "old",          "year",       "off",       "come",
    "since",       "against",   "go",         "came",        "right",        "used",       "take",      "three",
    "himself",     "few",       "house",      "use",         "during",       "without",    "again",     "place",
    "around",      "however",   "home",       "small",       "found",        "thought",    "went",      "say",
    "part",        "once",      "general",    "high",        "upon",         "school",     "every",     "don",
    "does",        "got",       "left",       "number",      "course",       "war",        "until",     "always",
    "away",        "something", "fact",       "though",      "water",        "less",       "public",    "put",
    "think",       "almost",    "hand",       "enough",      "far",          "took",       "head",      "yet",
    "government",  "system",    "better",     "set",         "told",         "nothing",    "night",     "end",
    "why",         "called",    "didn",       "eyes",        "find",         "going",      "look",      "asked",
    "later",       "knew",      "point",      "next",        "city",         "give",       "group",     "toward",
    "young",       "let",       "room",       "side",        "social",       "given",      "present",   "several",
    "order",       "national",  "possible",   "rather",      "second",       "face",       "per",       "among",
    "form",        "important", "often",      "things",      "looked",       "early",      "white",     "john",
    "become",      "case",      "large",      "big",         "need",         "four",       "within",    "felt",
    "along",       "children",  "saw",        "best",        "church",       "ever",       "least",     "power",
    "development", "light",     "thing",      "seemed",      "family",       "interest",   "want",      "members",
    "mind",        "country",   "area",       "done",        "turned",       "help",       "real",      "although",
    "open",        "god",       "really",     "love",        "bad",          "movie",      "film",      "films",
    "movies",      "story",     "plot",       "acting",      "actor",        "actors",     "actress",   "character",
    "characters",  "scene",     "scenes",     "director",    "watch",        "watching",   "watched",   "seen",
    "show",        "series",    "cast",       "role",        "script",       "funny",      "comedy",    "horror",
    "drama",       "action",    "music",      "performance", "performances", "ending",     "minutes",   "worst",
    "waste",       "boring",    "terrible",   "awful",       "excellent",    "wonderful",  "beautiful", "perfect",
    "loved",       "enjoyed",   "recommend",  "favorite",    "brilliant",    "amazing",    "poor",      "stupid",
    "worse",       "lame",      "dull",       "fun",         "interesting",  "original",   "special",   "effects",
    "dialogue",    "camera",    "screen",     "budget",      "hollywood",    "audience",   "fans",      "book",
    "version",     "point",     "lot",        "pretty",      "quite",        "actually",   "probably",  "maybe",
    "sure",        "seems",     "kind",       "sort",        "whole",        "feel",       "believe",   "anything",
    "everything",  "someone",   "everyone",   "nice",        "fine",         "true",       "hard",      "guy",
    "girl",        "woman",     "women",      "job",         "money",        "times",      "tv",        "dvd",
    "ten",         "not",       "this",       "that",        "what",         "am",         "hour",      "hours",
    "half",        "plays",     "played",     "playing",     "makes",        "making",     "gets",      "goes",
    "gave",        "star",      "stars",      "rating",      "review",       "reviews",    "classic",   "style",
    "worth",       "top",       "low",        "full",        "simply",       "completely", "totally",   "absolutely",
    "definitely",  "highly",    "especially", "instead",     "nothing",      "least",      "wrong",     "sense",
    "moments",     "moment",    "yes",        "oh",          "ok",           "okay",
};

/* Common English suffixes and a few frequent word endings, as WordPiece continuations. */
static const char *const pieces[] = {
    "##s",    "##ed",   "##ing",   "##ly",   "##er",    "##ers",  "##est",  "##es",    "##ies",  "##ied",  "##y",
    "##ness", "##ment", "##ments", "##tion", "##tions", "##sion", "##able", "##ible",  "##ful",  "##less", "##ity",
    "##al",   "##ally", "##ous",   "##ive",  "##ize",   "##ized", "##ise",  "##en",    "##an",   "##ian",  "##ist",
    "##ism",  "##ic",   "##ical",  "##ish",  "##ant",   "##ent",  "##ence", "##ance",  "##ship", "##hood", "##ward",
    "##wise", "##like", "##th",    "##ty",   "##ry",    "##le",   "##el",   "##on",    "##in",   "##ar",   "##or",
    "##ing",  "##ings", "##ling",  "##ther", "##ter",   "##ted",  "##ting", "##ly",    "##lly",  "##ness", "##re",
    "##ve",   "##ll",   "##nt",    "##st",   "##nd",    "##ck",   "##ch",   "##sh",    "##ph",   "##ght",  "##ight",
    "##ould", "##ome",  "##ake",   "##ine",  "##ine",   "##ate",  "##ated", "##ating",
};

/* A growing list of distinct tokens; O(n) membership is fine for the ~1,000 non-filler lines. */
typedef struct {
    char **tok;
    int n, cap;
} token_list;

static int token_add(token_list *v, const char *s) {
    for (int i = 0; i < v->n; i++)
        if (strcmp(v->tok[i], s) == 0) return BS_OK;
    if (v->n == v->cap) return BS_ERR;
    v->tok[v->n] = strdup(s);
    if (!v->tok[v->n]) return BS_ERR;
    v->n++;
    return BS_OK;
}

/* Writes vocab_size distinct lines to path. */
static int write_synthetic_vocab(const char *path, int vocab_size, char *err) {
    if (vocab_size < 104) return bs_err(err, "%s: vocab_size %d leaves no room for [UNK] at 100", path, vocab_size);
    int rc = BS_ERR;
    token_list v = {calloc(2048, sizeof(char *)), 0, 2048};
    FILE *fp = NULL;
    char buf[32];
    if (!v.tok) return bs_err(err, "%s: out of memory", path);
    if (token_add(&v, "[PAD]") != BS_OK) goto oom;
    for (int i = 0; i < 99; i++) {
        snprintf(buf, sizeof buf, "[unused%d]", i);
        if (token_add(&v, buf) != BS_OK) goto oom;
    }
    const char *special[4] = {"[UNK]", "[CLS]", "[SEP]", "[MASK]"};
    for (int i = 0; i < 4; i++)
        if (token_add(&v, special[i]) != BS_OK) goto oom;
    /* every printable ASCII character but uppercase (the tokenizer lowercases), then letters and
     * digits as continuations: any ASCII word can be spelled, none becomes [UNK] */
    for (int c = '!'; c <= '~'; c++) {
        if (c >= 'A' && c <= 'Z') continue;
        snprintf(buf, sizeof buf, "%c", c);
        if (token_add(&v, buf) != BS_OK) goto oom;
    }
    for (int c = '0'; c <= 'z'; c++) {
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z'))) continue;
        snprintf(buf, sizeof buf, "##%c", c);
        if (token_add(&v, buf) != BS_OK) goto oom;
    }
    for (size_t i = 0; i < sizeof words / sizeof words[0]; i++)
        if (token_add(&v, words[i]) != BS_OK) goto oom;
    for (size_t i = 0; i < sizeof pieces / sizeof pieces[0]; i++)
        if (token_add(&v, pieces[i]) != BS_OK) goto oom;

    fp = fopen(path, "w");
    if (!fp) {
        bs_err(err, "%s: %s", path, strerror(errno));
        goto out;
    }
    int n = v.n < vocab_size ? v.n : vocab_size;
    for (int i = 0; i < n; i++) fprintf(fp, "%s\n", v.tok[i]);
    /* the rest is filler that never matches text: brackets are split off as punctuation */
    for (int i = n, k = 99; i < vocab_size; i++, k++) fprintf(fp, "[unused%d]\n", k);
    if (fclose(fp) != 0) {
        fp = NULL;
        bs_err(err, "%s: write failed: %s", path, strerror(errno));
        goto out;
    }
    fp = NULL;
    rc = BS_OK;
    goto out;
oom:
    bs_err(err, "%s: out of memory", path);
out:
    for (int i = 0; i < v.n; i++) free(v.tok[i]);
    free(v.tok);
    return rc;
}

int cmd_init_model(int argc, char **argv) {
    char err[BS_ERRLEN];
    const char *preset = NULL, *out = NULL, *vocab = NULL;
    long long seed = -1;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        }
        if (!(v = cli_value(argc, argv, &i, err))) goto usage_err;
        if (!strcmp(a, "--preset"))
            preset = v;
        else if (!strcmp(a, "--out"))
            out = v;
        else if (!strcmp(a, "--vocab"))
            vocab = v;
        else if (!strcmp(a, "--seed")) {
            if (cli_int(a, v, 0, INT64_MAX, &seed, err) != BS_OK) goto usage_err;
        } else {
            bs_err(err, "unknown option '%s' (see --help)", a);
            goto usage_err;
        }
    }
    if (!preset || !out || seed < 0) {
        bs_err(err, "--preset, --seed and --out are required (see --help)");
        goto usage_err;
    }
    bs_bert_config cfg;
    if (bert_config_preset(preset, &cfg, err) != BS_OK) goto usage_err;

    int rc = 1;
    char *vocab_text = NULL;
    bs_model *m = NULL;
    size_t vlen = 0;
    /* read --vocab first: a bad vocabulary must not leave a half-written model directory */
    if (vocab) {
        if (!(vocab_text = bs_read_file(vocab, &vlen, err))) goto done;
        size_t lines = 0;
        for (size_t i = 0; i < vlen; i++) lines += vocab_text[i] == '\n';
        if (vlen && vocab_text[vlen - 1] != '\n') lines++;
        if (lines == 0 || lines > (size_t)cfg.vocab_size) {
            bs_err(err, "%s: %zu lines, the %s preset has vocab_size %d", vocab, lines, preset, cfg.vocab_size);
            goto done;
        }
    }
    if (!(m = model_init_random(&cfg, (uint64_t)seed, err))) goto done;
    if (bs_mkdir_p(out, err) != BS_OK || model_save(m, out, err) != BS_OK) goto done;

    char path[4200];
    snprintf(path, sizeof path, "%s/vocab.txt", out);
    if (vocab_text) {
        FILE *fp = fopen(path, "wb");
        if (!fp) {
            bs_err(err, "%s: %s", path, strerror(errno));
            goto done;
        }
        size_t w = fwrite(vocab_text, 1, vlen, fp);
        if (fclose(fp) != 0 || w != vlen) {
            bs_err(err, "%s: write failed", path);
            goto done;
        }
    } else if (write_synthetic_vocab(path, cfg.vocab_size, err) != BS_OK) {
        goto done;
    }
    printf("{\"out\": \"");
    for (const char *s = out; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", *s);
        else
            putchar(*s);
    }
    printf("\", \"preset\": \"%s\", \"seed\": %lld, \"params\": %zu, \"encoder_id\": \"%s\"}\n", preset, seed,
           m->n_params, m->encoder_id);
    rc = 0;
done:
    if (rc) fprintf(stderr, "bertstream init-model: %s\n", err);
    model_free(m);
    free(vocab_text);
    return rc;
usage_err:
    fprintf(stderr, "bertstream init-model: %s\n", err);
    return 2;
}
