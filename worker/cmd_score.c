/* `bertstream score`: offline scoring. JSONL {"id", "text"} in, one JSON line out per input
 * line in input order; a bad line gets {"id", "error"} and the rest still score. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "commands.h"
#include "common.h"
#include "engine.h"
#include "head.h"
#include "model.h"
#include "tokenizer.h"

static const char *usage =
    "usage: bertstream score --model DIR [--vocab FILE] [--head FILE] [--feature pooler|cls|mean]\n"
    "                        [--device auto|cpu|cuda[:N]] [--precision auto|fp32|fp16|bf16|fp8]\n"
    "                        [--max-len 128] [--batch 32] [--emit-features]\n"
    "stdin: JSON lines {\"id\": ..., \"text\": \"...\"}\n"
    "stdout: {\"id\", \"label\", \"probability\", \"logit\", \"tokens\", \"truncated\"} (+ \"features\" with\n"
    "        --emit-features; without --head the features only); a bad line gives {\"id\", \"error\"}.\n";

typedef struct {
    json_t *id; /* owned reference (json null when absent) */
    char error[BS_ERRLEN];
    int ok;
    int seq; /* index in the engine batch */
    int tokens;
    int truncated;
} score_item;

typedef struct {
    const bs_tokenizer *tok;
    bs_engine *engine;
    const bs_head *head;
    bs_feature feature;
    int max_len, emit_features, C;
    bs_tokens tk;
    int32_t *ids, *cu;
    float *feat, *logit, *prob;
    score_item *items;
} scorer;

static void item_parse(scorer *s, score_item *it, const char *line, size_t len, int *n_seq) {
    json_error_t jerr;
    it->ok = 0;
    it->id = json_null();
    json_t *root = json_loadb(line, len, JSON_ALLOW_NUL | JSON_REJECT_DUPLICATES, &jerr);
    if (!root) {
        snprintf(it->error, sizeof it->error, "invalid JSON: %s", jerr.text);
        return;
    }
    json_t *id = json_is_object(root) ? json_object_get(root, "id") : NULL;
    if (id) it->id = json_incref(id);
    json_t *text = json_is_object(root) ? json_object_get(root, "text") : NULL;
    if (!json_is_string(text)) {
        snprintf(it->error, sizeof it->error, "expected an object with a string \"text\"");
        json_decref(root);
        return;
    }
    char err[BS_ERRLEN];
    if (tokenizer_encode(s->tok, json_string_value(text), json_string_length(text), s->max_len, &s->tk, err) != BS_OK) {
        snprintf(it->error, sizeof it->error, "%s", err);
        json_decref(root);
        return;
    }
    json_decref(root);
    int k = (*n_seq)++;
    memcpy(s->ids + s->cu[k], s->tk.ids, sizeof(int32_t) * (size_t)s->tk.n);
    s->cu[k + 1] = s->cu[k] + s->tk.n;
    it->seq = k;
    it->tokens = s->tk.n;
    it->truncated = s->tk.truncated;
    it->ok = 1;
}

static void item_print(scorer *s, score_item *it) {
    json_t *o = json_object();
    json_object_set_new(o, "id", it->id);
    it->id = NULL;
    if (!it->ok) {
        json_object_set_new(o, "error", json_string(it->error));
    } else {
        const float *f = s->feat + (size_t)it->seq * s->C;
        if (s->head) {
            float p = s->prob[it->seq];
            json_object_set_new(o, "label", json_string(head_label(p)));
            json_object_set_new(o, "probability", json_real(p));
            json_object_set_new(o, "logit", json_real(s->logit[it->seq]));
        }
        json_object_set_new(o, "tokens", json_integer(it->tokens));
        json_object_set_new(o, "truncated", json_boolean(it->truncated));
        if (s->emit_features || !s->head) {
            json_t *a = json_array();
            for (int c = 0; c < s->C; c++) json_array_append_new(a, json_real(f[c]));
            json_object_set_new(o, "features", a);
        }
    }
    json_dumpf(o, stdout, JSON_COMPACT | JSON_REAL_PRECISION(9));
    fputc('\n', stdout);
    json_decref(o);
}

/* Runs the encoder over the parsed items, then prints them all in order. */
static int flush_batch(scorer *s, int n_items, int n_seq, char *err) {
    if (n_seq > 0) {
        bs_batch b = {.n_seq = n_seq, .ids = s->ids, .cu_seqlens = s->cu};
        bs_outputs out = {0};
        if (s->feature == BS_FEATURE_POOLER)
            out.pooler = s->feat;
        else if (s->feature == BS_FEATURE_CLS)
            out.cls = s->feat;
        else
            out.mean = s->feat;
        if (engine_forward(s->engine, &b, &out, err) != BS_OK) return BS_ERR;
        if (s->head) head_apply(s->head, s->feat, n_seq, s->logit, s->prob);
    }
    for (int i = 0; i < n_items; i++) item_print(s, &s->items[i]);
    fflush(stdout);
    return BS_OK;
}

int cmd_score(int argc, char **argv) {
    char err[BS_ERRLEN];
    const char *model_dir = NULL, *vocab = NULL, *head_path = NULL, *device = "auto";
    bs_precision prec = BS_PREC_AUTO;
    bs_feature feature = BS_FEATURE_POOLER;
    long long max_len = 128, batch = 32;
    int emit = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = NULL;
        if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            fputs(usage, stdout);
            return 0;
        } else if (!strcmp(a, "--emit-features")) {
            emit = 1;
            continue;
        }
        if (!(v = cli_value(argc, argv, &i, err))) goto usage_err;
        if (!strcmp(a, "--model"))
            model_dir = v;
        else if (!strcmp(a, "--vocab"))
            vocab = v;
        else if (!strcmp(a, "--head"))
            head_path = v;
        else if (!strcmp(a, "--device"))
            device = v;
        else if (!strcmp(a, "--precision")) {
            if (bs_precision_parse(v, &prec, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--feature")) {
            if (bs_feature_parse(v, &feature, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--max-len")) {
            if (cli_int("--max-len", v, 2, 8192, &max_len, err) != BS_OK) goto usage_err;
        } else if (!strcmp(a, "--batch")) {
            if (cli_int("--batch", v, 1, 65536, &batch, err) != BS_OK) goto usage_err;
        } else {
            bs_err(err, "unknown option '%s' (see --help)", a);
            goto usage_err;
        }
    }
    if (!model_dir) {
        bs_err(err, "--model DIR is required (see --help)");
        goto usage_err;
    }

    int rc = 1;
    char vocab_path[2048];
    if (!vocab) {
        snprintf(vocab_path, sizeof vocab_path, "%s/vocab.txt", model_dir);
        vocab = vocab_path;
    }
    scorer s = {.feature = feature, .max_len = (int)max_len, .emit_features = emit};
    bs_model *m = NULL;
    bs_head *head = NULL;
    bs_tokenizer *tok = tokenizer_new(vocab, err);
    if (!tok) goto fail;
    if (!(m = model_load(model_dir, err))) goto fail;
    if (tokenizer_check_model_vocab(tok, vocab, m->cfg.vocab_size, err) != BS_OK) goto fail;
    if (max_len > m->cfg.max_positions) max_len = s.max_len = m->cfg.max_positions;
    if (head_path) {
        if (!(head = head_load(head_path, NULL, err))) goto fail;
        if (head_validate(head, m->cfg.hidden, err) != BS_OK) goto fail;
    }
    bs_engine_opts o = {.device = device,
                        .precision = prec,
                        .max_seqs = (int)batch,
                        .max_tokens = (int)(batch * max_len),
                        .max_seq_len = (int)max_len};
    if (!(s.engine = engine_new(m, &o, err))) goto fail;
    s.tok = tok;
    s.head = head;
    s.C = m->cfg.hidden;
    s.ids = malloc(sizeof(int32_t) * (size_t)(batch * max_len));
    s.cu = malloc(sizeof(int32_t) * (size_t)(batch + 1));
    s.feat = malloc(sizeof(float) * (size_t)(batch * s.C));
    s.logit = malloc(sizeof(float) * (size_t)batch);
    s.prob = malloc(sizeof(float) * (size_t)batch);
    s.items = calloc((size_t)batch, sizeof(score_item));
    if (!s.ids || !s.cu || !s.feat || !s.logit || !s.prob || !s.items) {
        bs_err(err, "out of memory");
        goto fail;
    }
    fprintf(stderr, "score: model %s (%s), engine %s, feature %s, head %s\n", model_dir, m->encoder_id,
            engine_describe(s.engine), bs_feature_name(feature), head_path ? head_path : "none (features only)");

    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int n_items = 0, n_seq = 0;
    s.cu[0] = 0;
    while ((n = getline(&line, &cap, stdin)) >= 0) {
        size_t len = (size_t)n;
        if (len && line[len - 1] == '\n') len--;
        if (len && line[len - 1] == '\r') len--;
        item_parse(&s, &s.items[n_items++], line, len, &n_seq);
        if (n_items == (int)batch) {
            if (flush_batch(&s, n_items, n_seq, err) != BS_OK) break;
            n_items = n_seq = 0;
        }
    }
    free(line);
    if (n_items && flush_batch(&s, n_items, n_seq, err) != BS_OK) n_items = -1;
    if (n_items < 0 || (n >= 0)) goto fail;
    rc = 0;
fail:
    if (rc) fprintf(stderr, "bertstream score: %s\n", err);
    for (int i = 0; s.items && i < (int)batch; i++) json_decref(s.items[i].id);
    free(s.items);
    free(s.ids);
    free(s.cu);
    free(s.feat);
    free(s.logit);
    free(s.prob);
    tokens_free(&s.tk);
    engine_free(s.engine);
    head_free(head);
    model_free(m);
    tokenizer_free(tok);
    return rc;
usage_err:
    fprintf(stderr, "bertstream score: %s\n", err);
    return 2;
}
