// cuDNN fused SDPA through the cuDNN 9 backend API (see attention_cudnn.h). Host code only.
//
// Graph: one SDPA_FWD operation. Q, K, V are (B, NH, S, HS) views into the packed QKV buffer
// (strides: head HS, token 3C, dim 1) and O a (B, NH, S, HS) view into the (T, C) output; each
// carries a ragged-offset tensor (B+1, int32) that says where sequence b starts, and SEQ_LEN_Q/KV
// (B, int32) bound the softmax to the sequence's own tokens. No stats tensor: inference mode.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "attention_cudnn.h"

enum {
    UID_Q = 1,
    UID_K,
    UID_V,
    UID_O,
    UID_SCALE,
    UID_SEQ_Q,
    UID_SEQ_KV,
    UID_OFF_Q,
    UID_OFF_K,
    UID_OFF_V,
    UID_OFF_O,
    N_UIDS = UID_OFF_O
};
#define MAX_DESCS 64

struct bs_sdpa {
    cudnnBackendDescriptor_t descs[MAX_DESCS]; // everything created, destroyed in reverse
    int n_descs;
    cudnnBackendDescriptor_t plan, pack;
    float scale;      // by-value tensor: the pack points here
    cudnnStatus_t st; // first failure
    const char *what; // the step that failed
};

static cudnnBackendDescriptor_t mk(bs_sdpa *p, cudnnBackendDescriptorType_t type, const char *what) {
    cudnnBackendDescriptor_t d = nullptr;
    if (p->st != CUDNN_STATUS_SUCCESS) return nullptr;
    if (p->n_descs >= MAX_DESCS) {
        p->st = CUDNN_STATUS_INTERNAL_ERROR, p->what = "descriptor table full";
        return nullptr;
    }
    p->st = cudnnBackendCreateDescriptor(type, &d);
    if (p->st != CUDNN_STATUS_SUCCESS) {
        p->what = what;
        return nullptr;
    }
    p->descs[p->n_descs++] = d;
    return d;
}

static void set(bs_sdpa *p, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name,
                cudnnBackendAttributeType_t type, int64_t n, const void *v, const char *what) {
    if (p->st != CUDNN_STATUS_SUCCESS) return;
    p->st = cudnnBackendSetAttribute(d, name, type, n, v);
    if (p->st != CUDNN_STATUS_SUCCESS) p->what = what;
}

static void fin(bs_sdpa *p, cudnnBackendDescriptor_t d, const char *what) {
    if (p->st != CUDNN_STATUS_SUCCESS) return;
    p->st = cudnnBackendFinalize(d);
    if (p->st != CUDNN_STATUS_SUCCESS) p->what = what;
}

static void link(bs_sdpa *p, cudnnBackendDescriptor_t d, cudnnBackendAttributeName_t name, cudnnBackendDescriptor_t v,
                 const char *what) {
    set(p, d, name, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &v, what);
}

static cudnnBackendDescriptor_t tensor(bs_sdpa *p, int64_t uid, cudnnDataType_t type, const int64_t dims[4],
                                       const int64_t strides[4], int by_value, cudnnBackendDescriptor_t ragged,
                                       const char *what) {
    cudnnBackendDescriptor_t t = mk(p, CUDNN_BACKEND_TENSOR_DESCRIPTOR, what);
    const int64_t align = by_value ? 4 : 16;
    const bool virt = false, byv = by_value != 0;
    set(p, t, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid, what);
    set(p, t, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type, what);
    set(p, t, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims, what);
    set(p, t, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, strides, what);
    set(p, t, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align, what);
    set(p, t, CUDNN_ATTR_TENSOR_IS_VIRTUAL, CUDNN_TYPE_BOOLEAN, 1, &virt, what);
    if (byv) set(p, t, CUDNN_ATTR_TENSOR_IS_BY_VALUE, CUDNN_TYPE_BOOLEAN, 1, &byv, what);
    if (ragged) link(p, t, CUDNN_ATTR_TENSOR_RAGGED_OFFSET_DESC, ragged, what);
    fin(p, t, what);
    return t;
}

extern "C" void sdpa_cudnn_free(bs_sdpa *p) {
    if (!p) return;
    for (int i = p->n_descs - 1; i >= 0; i--) cudnnBackendDestroyDescriptor(p->descs[i]);
    free(p);
}

extern "C" bs_sdpa *sdpa_cudnn_new(cudnnHandle_t h, const bs_sdpa_desc *d, char *err) {
    if (d->dt != BS_DT_F16 && d->dt != BS_DT_BF16) {
        snprintf(err, 512, "cuDNN SDPA: %s is not supported (fp16 and bf16 only)", bs_dtype_name(d->dt));
        return nullptr;
    }
    const int64_t C = (int64_t)d->NH * d->HS, B = d->B, S = d->S, NH = d->NH, HS = d->HS;
    if ((C * (int64_t)bs_dtype_size(d->dt)) % 16 != 0 || HS % 8 != 0) {
        snprintf(err, 512, "cuDNN SDPA: hidden %lld / head size %lld not 16-byte aligned", (long long)C, (long long)HS);
        return nullptr;
    }
    bs_sdpa *p = (bs_sdpa *)calloc(1, sizeof *p);
    if (!p) {
        snprintf(err, 512, "cuDNN SDPA: out of memory");
        return nullptr;
    }
    p->scale = 1.0f / sqrtf((float)d->HS);
    const cudnnDataType_t io = d->dt == BS_DT_F16 ? CUDNN_DATA_HALF : CUDNN_DATA_BFLOAT16;

    const int64_t d_off[4] = {B + 1, 1, 1, 1}, s_off[4] = {1, 1, 1, 1};
    const int64_t d_len[4] = {B, 1, 1, 1}, s_len[4] = {1, 1, 1, 1};
    const int64_t d_one[4] = {1, 1, 1, 1};
    const int64_t d_x[4] = {B, NH, S, HS};
    const int64_t s_qkv[4] = {S * 3 * C, HS, 3 * C, 1}, s_o[4] = {S * C, HS, C, 1};

    cudnnBackendDescriptor_t off_q = tensor(p, UID_OFF_Q, CUDNN_DATA_INT32, d_off, s_off, 0, nullptr, "ragged offsets");
    cudnnBackendDescriptor_t off_k = tensor(p, UID_OFF_K, CUDNN_DATA_INT32, d_off, s_off, 0, nullptr, "ragged offsets");
    cudnnBackendDescriptor_t off_v = tensor(p, UID_OFF_V, CUDNN_DATA_INT32, d_off, s_off, 0, nullptr, "ragged offsets");
    cudnnBackendDescriptor_t off_o = tensor(p, UID_OFF_O, CUDNN_DATA_INT32, d_off, s_off, 0, nullptr, "ragged offsets");
    cudnnBackendDescriptor_t q = tensor(p, UID_Q, io, d_x, s_qkv, 0, off_q, "Q tensor");
    cudnnBackendDescriptor_t k = tensor(p, UID_K, io, d_x, s_qkv, 0, off_k, "K tensor");
    cudnnBackendDescriptor_t v = tensor(p, UID_V, io, d_x, s_qkv, 0, off_v, "V tensor");
    cudnnBackendDescriptor_t o = tensor(p, UID_O, io, d_x, s_o, 0, off_o, "O tensor");
    cudnnBackendDescriptor_t sc = tensor(p, UID_SCALE, CUDNN_DATA_FLOAT, d_one, d_one, 1, nullptr, "scale tensor");
    cudnnBackendDescriptor_t lq = tensor(p, UID_SEQ_Q, CUDNN_DATA_INT32, d_len, s_len, 0, nullptr, "seq_len_q");
    cudnnBackendDescriptor_t lkv = tensor(p, UID_SEQ_KV, CUDNN_DATA_INT32, d_len, s_len, 0, nullptr, "seq_len_kv");

    cudnnBackendDescriptor_t op = mk(p, CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "SDPA_FWD operation");
    link(p, op, CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, q, "SDPA Q");
    link(p, op, CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, k, "SDPA K");
    link(p, op, CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, v, "SDPA V");
    link(p, op, CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, o, "SDPA O");
    link(p, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, sc, "SDPA scale");
    link(p, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_QDESC, lq, "SDPA seq_len_q");
    link(p, op, CUDNN_ATTR_OPERATION_SDPA_FWD_SEQ_LEN_KVDESC, lkv, "SDPA seq_len_kv");
    fin(p, op, "SDPA operation finalize");

    cudnnBackendDescriptor_t graph = mk(p, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph");
    set(p, graph, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op, "graph ops");
    set(p, graph, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1, &h, "graph handle");
    fin(p, graph, "operation graph finalize");

    cudnnBackendDescriptor_t heur = mk(p, CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics");
    const cudnnBackendHeurMode_t mode = CUDNN_HEUR_MODE_A;
    link(p, heur, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, graph, "heuristics graph");
    set(p, heur, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &mode, "heuristics mode");
    fin(p, heur, "heuristics finalize");

    int64_t n_cfg = 0;
    if (p->st == CUDNN_STATUS_SUCCESS) {
        p->st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &n_cfg,
                                         nullptr);
        if (p->st != CUDNN_STATUS_SUCCESS) p->what = "heuristics results";
    }
    if (n_cfg > 8) n_cfg = 8;
    cudnnBackendDescriptor_t cfgs[8] = {};
    for (int64_t i = 0; i < n_cfg; i++) cfgs[i] = mk(p, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config");
    int64_t got = 0;
    if (p->st == CUDNN_STATUS_SUCCESS && n_cfg > 0) {
        p->st = cudnnBackendGetAttribute(heur, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR, n_cfg,
                                         &got, cfgs);
        if (p->st != CUDNN_STATUS_SUCCESS) p->what = "heuristics results";
    }
    int64_t ws = 0;
    for (int64_t i = 0; i < got && p->st == CUDNN_STATUS_SUCCESS && !p->plan; i++) {
        cudnnBackendDescriptor_t plan = mk(p, CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan");
        set(p, plan, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1, &h, "plan handle"); // required to finalize
        link(p, plan, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, cfgs[i], "plan engine config");
        if (p->st != CUDNN_STATUS_SUCCESS || cudnnBackendFinalize(plan) != CUDNN_STATUS_SUCCESS) continue;
        int64_t n = 0, bytes = 0;
        if (cudnnBackendGetAttribute(plan, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &n, &bytes) !=
                CUDNN_STATUS_SUCCESS ||
            bytes < 0 || (size_t)bytes > d->workspace_cap)
            continue; // needs more workspace than we keep: try the next engine
        p->plan = plan;
        ws = bytes;
    }
    if (p->st == CUDNN_STATUS_SUCCESS && !p->plan) {
        snprintf(err, 512, "cuDNN SDPA: none of %lld engine configs finalizes for B=%lld S=%lld NH=%lld HS=%lld %s",
                 (long long)got, (long long)B, (long long)S, (long long)NH, (long long)HS, bs_dtype_name(d->dt));
        sdpa_cudnn_free(p);
        return nullptr;
    }

    // Variant pack: fixed pointers (the engine's buffers never move), built once.
    const char *base = (const char *)d->qkv;
    const size_t esz = bs_dtype_size(d->dt);
    const int64_t uids[N_UIDS] = {UID_Q,      UID_K,     UID_V,     UID_O,     UID_SCALE, UID_SEQ_Q,
                                  UID_SEQ_KV, UID_OFF_Q, UID_OFF_K, UID_OFF_V, UID_OFF_O};
    void *ptrs[N_UIDS] = {(void *)base,
                          (void *)(base + C * esz),
                          (void *)(base + 2 * C * esz),
                          d->out,
                          &p->scale,
                          (void *)d->seqlen,
                          (void *)d->seqlen,
                          (void *)d->off_qkv,
                          (void *)d->off_qkv,
                          (void *)d->off_qkv,
                          (void *)d->off_out};
    void *wsp = ws > 0 ? d->workspace : nullptr;
    p->pack = mk(p, CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack");
    set(p, p->pack, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, N_UIDS, uids, "variant pack uids");
    set(p, p->pack, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, N_UIDS, ptrs, "variant pack pointers");
    set(p, p->pack, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &wsp, "variant pack workspace");
    fin(p, p->pack, "variant pack finalize");

    if (p->st != CUDNN_STATUS_SUCCESS) {
        snprintf(err, 512, "cuDNN SDPA: %s failed: %s", p->what ? p->what : "?", cudnnGetErrorString(p->st));
        sdpa_cudnn_free(p);
        return nullptr;
    }
    return p;
}

extern "C" int sdpa_cudnn_run(bs_sdpa *p, cudnnHandle_t h, char *err) {
    cudnnStatus_t st = cudnnBackendExecute(h, p->plan, p->pack);
    if (st == CUDNN_STATUS_SUCCESS) return 0;
    snprintf(err, 512, "cudnnBackendExecute(SDPA) failed: %s", cudnnGetErrorString(st));
    return -1;
}
