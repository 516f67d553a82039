/* Engine selection and the parts every implementation shares: option parsing,
 * batch validation and the FLOP count used by benchmarks. */
#include "engine.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static const char *prec_names[] = {"auto", "fp32", "fp16", "bf16", "fp8"};
static const char *feature_names[] = {"pooler", "cls", "mean"};

int bs_precision_parse(const char *s, bs_precision *out, char *err) {
    for (int i = 0; i < 5; i++)
        if (strcmp(s, prec_names[i]) == 0) {
            *out = (bs_precision)i;
            return BS_OK;
        }
    return bs_err(err, "unknown precision '%s' (auto, fp32, fp16, bf16, fp8)", s);
}

const char *bs_precision_name(bs_precision p) {
    return prec_names[p];
}

int bs_feature_parse(const char *s, bs_feature *out, char *err) {
    for (int i = 0; i < 3; i++)
        if (strcmp(s, feature_names[i]) == 0) {
            *out = (bs_feature)i;
            return BS_OK;
        }
    return bs_err(err, "unknown feature '%s' (pooler, cls, mean)", s);
}

const char *bs_feature_name(bs_feature f) {
    return feature_names[f];
}

static const char *skip_names[] = {"gemm", "attention", "layernorm", "other"};

int bs_skip_parse(const char *s, unsigned *out, char *err) {
    *out = 0;
    if (strcmp(s, "none") == 0) return BS_OK;
    for (const char *p = s;;) {
        const size_t n = strcspn(p, ",");
        int k = 0;
        while (k < 4 && !(strlen(skip_names[k]) == n && strncmp(p, skip_names[k], n) == 0)) k++;
        if (k == 4)
            return bs_err(err, "--skip: unknown part '%.*s' in '%s' (gemm, attention, layernorm, other, or none)",
                          (int)n, p, s);
        *out |= 1u << k;
        if (p[n] == 0) return BS_OK;
        p += n + 1;
    }
}

const char *bs_skip_name(unsigned skip, char *buf, size_t n) {
    size_t o = 0;
    for (int k = 0; k < 4; k++)
        if (skip & (1u << k)) {
            const int w = snprintf(buf + o, n - o, "%s%s", o ? "," : "", skip_names[k]);
            if (w < 0 || (size_t)w >= n - o) break;
            o += (size_t)w;
        }
    if (!o) snprintf(buf, n, "none");
    return buf;
}

bs_engine *engine_new(const bs_model *m, const bs_engine_opts *opts, char *err) {
    const char *dev = opts->device ? opts->device : "auto";
    if (opts->skip & ~(unsigned)BS_SKIP_ALL) {
        bs_err(err, "engine: unknown skip bits 0x%x", opts->skip);
        return NULL;
    }
    if (opts->skip && (strcmp(dev, "cpu") == 0 || (strcmp(dev, "auto") == 0 && engine_cuda_device_count() == 0))) {
        bs_err(err, "--skip times the CUDA engine's parts: it needs a CUDA device (%s)",
               strcmp(dev, "cpu") == 0 ? "--device cpu" : "none here");
        return NULL;
    }
    if (opts->max_seqs < 1 || opts->max_tokens < 1 || opts->max_seq_len < 2) {
        bs_err(err, "engine: max_seqs, max_tokens and max_seq_len must be positive");
        return NULL;
    }
    if (opts->max_seq_len > m->cfg.max_positions) {
        bs_err(err, "engine: max_seq_len %d exceeds the model's max_position_embeddings %d", opts->max_seq_len,
               m->cfg.max_positions);
        return NULL;
    }
    if (strcmp(dev, "cpu") == 0) {
        if (opts->precision != BS_PREC_AUTO && opts->precision != BS_PREC_FP32) {
            bs_err(err, "the CPU engine runs fp32 only (asked for %s)", bs_precision_name(opts->precision));
            return NULL;
        }
        return engine_cpu_new(m, opts, err);
    }
    if (strncmp(dev, "cuda", 4) == 0) return engine_cuda_new(m, opts, err);
    if (strcmp(dev, "auto") == 0) {
        if (engine_cuda_device_count() > 0) return engine_cuda_new(m, opts, err);
        if (opts->precision != BS_PREC_AUTO && opts->precision != BS_PREC_FP32) {
            bs_err(err, "no CUDA device: the CPU engine runs fp32 only (asked for %s)",
                   bs_precision_name(opts->precision));
            return NULL;
        }
        return engine_cpu_new(m, opts, err);
    }
    bs_err(err, "unknown device '%s' (auto, cpu, cuda, cuda:N)", dev);
    return NULL;
}

int engine_cls_only(const bs_engine *e, const bs_outputs *out) {
    if (out->hidden || out->mean || (e && e->cls_off)) return 0;
    const char *v = getenv("BERTSTREAM_LAST_LAYER");
    return !(v && strcmp(v, "full") == 0);
}

int engine_forward(bs_engine *e, const bs_batch *b, const bs_outputs *out, char *err) {
    if (engine_check_batch(e->model, &e->opts, b, err) != BS_OK) return BS_ERR;
    /* An asynchronous engine's forward is submit + wait on a free slot (engine_cuda.c). */
    if (e->submit && e->slot_busy[0] && e->slot_busy[1])
        return bs_err(err, "engine_forward: both engine slots hold a batch (engine_wait one first)");
    return e->forward(e, b, out, err);
}

/* ---- two batches in flight (engine.h) ---- */

static int slot_ok(int slot, const char *fn, char *err) {
    if (slot < 0 || slot >= BS_ENGINE_SLOTS)
        return bs_err(err, "%s: engine slot %d does not exist (0..%d)", fn, slot, BS_ENGINE_SLOTS - 1);
    return BS_OK;
}

int engine_submit(bs_engine *e, int slot, const bs_batch *b, const bs_outputs *out, char *err) {
    if (slot_ok(slot, "engine_submit", err) != BS_OK) return BS_ERR;
    if (e->slot_busy[slot])
        return bs_err(err, "engine_submit: engine slot %d already holds a batch (engine_wait it first)", slot);
    if (engine_check_batch(e->model, &e->opts, b, err) != BS_OK) return BS_ERR;
    if (e->submit) {
        if (e->submit(e, slot, b, out, err) != BS_OK) return BS_ERR; /* nothing in flight there */
    } else {
        /* synchronous engine: the batch is done before submit returns; wait reports how it went */
        e->slot_err[slot][0] = '\0';
        e->slot_rc[slot] = e->forward(e, b, out, e->slot_err[slot]);
    }
    e->slot_busy[slot] = 1;
    return BS_OK;
}

int engine_wait(bs_engine *e, int slot, char *err) {
    if (slot_ok(slot, "engine_wait", err) != BS_OK) return BS_ERR;
    if (!e->slot_busy[slot]) return bs_err(err, "engine_wait: engine slot %d holds no batch", slot);
    e->slot_busy[slot] = 0; /* free again whatever the outcome */
    if (e->wait) return e->wait(e, slot, err);
    if (e->slot_rc[slot] != BS_OK) return bs_err(err, "%s", e->slot_err[slot]);
    return BS_OK;
}

int engine_ready(bs_engine *e, int slot) {
    if (slot < 0 || slot >= BS_ENGINE_SLOTS || !e->slot_busy[slot]) return 0;
    return e->ready ? e->ready(e, slot) : 1;
}

int engine_slots(const bs_engine *e) {
    return e->n_slots > 0 ? e->n_slots : 1;
}

void engine_free(bs_engine *e) {
    if (e) e->destroy(e);
}

const char *engine_describe(const bs_engine *e) {
    return e->desc;
}
bs_precision engine_precision(const bs_engine *e) {
    return e->precision;
}
int engine_is_cuda(const bs_engine *e) {
    return e->is_cuda;
}

int engine_check_batch(const bs_model *m, const bs_engine_opts *o, const bs_batch *b, char *err) {
    if (b->n_seq < 1 || b->n_seq > o->max_seqs)
        return bs_err(err, "batch of %d sequences (engine limit %d)", b->n_seq, o->max_seqs);
    if (b->cu_seqlens[0] != 0) return bs_err(err, "cu_seqlens[0] must be 0");
    for (int i = 0; i < b->n_seq; i++) {
        int len = b->cu_seqlens[i + 1] - b->cu_seqlens[i];
        if (len < 1 || len > o->max_seq_len)
            return bs_err(err, "sequence %d has %d tokens (1..%d allowed)", i, len, o->max_seq_len);
    }
    int T = b->cu_seqlens[b->n_seq];
    if (T > o->max_tokens) return bs_err(err, "batch of %d tokens (engine limit %d)", T, o->max_tokens);
    for (int t = 0; t < T; t++)
        if (b->ids[t] < 0 || b->ids[t] >= m->cfg.vocab_size)
            return bs_err(err, "token id %d at position %d is outside the vocabulary (%d)", b->ids[t], t,
                          m->cfg.vocab_size);
    return BS_OK;
}

double engine_flops(const bs_bert_config *c, const bs_batch *b, int cls_only) {
    double C = c->hidden, I = c->intermediate, T = b->cu_seqlens[b->n_seq], B = b->n_seq;
    double attn = 0, attn_cls = 0;
    for (int i = 0; i < b->n_seq; i++) {
        double n = b->cu_seqlens[i + 1] - b->cu_seqlens[i];
        attn += 2.0 * 2.0 * n * n * C; /* Q K^T and P V over all heads */
        attn_cls += 2.0 * 2.0 * n * C; /* the CLS query's */
    }
    const double per_layer = 2.0 * T * C * (3 * C) + 2.0 * T * C * C + 2.0 * 2.0 * T * C * I + attn;
    /* the last layer on the CLS rows: QKV over every row, the rest over B rows */
    const double last_cls = 2.0 * T * C * (3 * C) + 2.0 * B * C * C + 2.0 * 2.0 * B * C * I + attn_cls;
    return per_layer * (c->layers - (cls_only ? 1 : 0)) + (cls_only ? last_cls : 0) + 2.0 * B * C * C; /* + pooler */
}
