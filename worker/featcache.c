/* The feature cache: an append-only record file per (encoder_id, feature), indexed at open by an
 * open-addressing table of key -> record number. Records are read back with pread, so only the
 * index (40 bytes a record) lives in memory, whatever C is. */
#include "featcache.h"

#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

#define FC_MAGIC "BSFEAT01"
#define FC_ID_LEN 80
#define FC_FEAT_LEN 32
#define FC_HEADER (8 + 4 + 4 + FC_ID_LEN + FC_FEAT_LEN) /* 128 bytes */
#define FC_KEY_TAG "bertstream.feat.v1"

typedef struct {
    uint8_t key[FEATCACHE_KEY_LEN];
    int64_t rec; /* record number; -1 = empty slot */
} fc_slot;

struct bs_featcache {
    int fd;
    int C;
    size_t rec_bytes;  /* 32 + 4 C */
    int64_t n_records; /* records in the file (duplicates included) */
    fc_slot *slots;    /* (cap) */
    size_t cap, count; /* power of two; distinct keys */
    size_t loaded, torn;
    char encoder_id[FC_ID_LEN];
    char feature[FC_FEAT_LEN];
    uint8_t *rec; /* (rec_bytes) scratch for one record */
    char path[4096];
};

static void sha256_parts(const void *const *parts, const size_t *lens, int n, uint8_t out[32]) {
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned int len = 0;
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) goto fail;
    for (int i = 0; i < n; i++)
        if (lens[i] && EVP_DigestUpdate(ctx, parts[i], lens[i]) != 1) goto fail;
    if (EVP_DigestFinal_ex(ctx, out, &len) != 1 || len != 32) goto fail;
    EVP_MD_CTX_free(ctx);
    return;
fail:
    /* only when libcrypto itself is broken; a zero key can never collide with a real one */
    memset(out, 0, 32);
    EVP_MD_CTX_free(ctx);
}

void featcache_key(const bs_featcache *fc, const char *review_id, size_t review_id_len, const char *text,
                   size_t text_len, uint8_t key[FEATCACHE_KEY_LEN]) {
    uint8_t text_hash[32], idlen[8];
    const void *tp[1] = {text};
    size_t tl[1] = {text_len};
    sha256_parts(tp, tl, 1, text_hash);
    for (int i = 0; i < 8; i++) idlen[i] = (uint8_t)((uint64_t)review_id_len >> (8 * i));
    const void *parts[5] = {FC_KEY_TAG, fc->encoder_id, fc->feature, idlen, review_id};
    /* the NULs after the tag, encoder_id and feature separate them */
    size_t lens[5] = {sizeof FC_KEY_TAG, strlen(fc->encoder_id) + 1, strlen(fc->feature) + 1, 8, review_id_len};
    uint8_t head[32];
    sha256_parts(parts, lens, 5, head);
    const void *p2[2] = {head, text_hash};
    size_t l2[2] = {32, 32};
    sha256_parts(p2, l2, 2, key);
}

static uint64_t key_hash(const uint8_t *key) {
    uint64_t h;
    memcpy(&h, key, 8); /* keys are SHA-256 outputs: any 8 bytes are uniform */
    return h;
}

static int index_grow(bs_featcache *fc) {
    size_t ncap = fc->cap ? fc->cap * 2 : 1024;
    fc_slot *ns = malloc(sizeof *ns * ncap);
    if (!ns) return BS_ERR;
    for (size_t i = 0; i < ncap; i++) ns[i].rec = -1;
    for (size_t i = 0; i < fc->cap; i++) {
        if (fc->slots[i].rec < 0) continue;
        size_t j = (size_t)key_hash(fc->slots[i].key) & (ncap - 1);
        while (ns[j].rec >= 0) j = (j + 1) & (ncap - 1);
        ns[j] = fc->slots[i];
    }
    free(fc->slots);
    fc->slots = ns;
    fc->cap = ncap;
    return BS_OK;
}

/* The slot holding key, or the empty slot where it would go. */
static fc_slot *index_find(const bs_featcache *fc, const uint8_t *key) {
    size_t j = (size_t)key_hash(key) & (fc->cap - 1);
    while (fc->slots[j].rec >= 0 && memcmp(fc->slots[j].key, key, FEATCACHE_KEY_LEN) != 0) j = (j + 1) & (fc->cap - 1);
    return &fc->slots[j];
}

static int index_put(bs_featcache *fc, const uint8_t *key, int64_t rec) {
    if ((fc->count + 1) * 2 > fc->cap && index_grow(fc) != BS_OK) return BS_ERR; /* load <= 1/2 */
    fc_slot *s = index_find(fc, key);
    if (s->rec < 0) {
        memcpy(s->key, key, FEATCACHE_KEY_LEN);
        fc->count++;
    }
    s->rec = rec; /* a key written again: the newer record wins */
    return BS_OK;
}

static void put_u32(uint8_t *d, uint32_t v) {
    for (int i = 0; i < 4; i++) d[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get_u32(const uint8_t *d) {
    return (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
}

static int write_all(int fd, const void *buf, size_t n, off_t at) {
    const uint8_t *p = buf;
    while (n) {
        ssize_t w = pwrite(fd, p, n, at);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return BS_ERR;
        p += w, n -= (size_t)w, at += w;
    }
    return BS_OK;
}

static int read_all(int fd, void *buf, size_t n, off_t at) {
    uint8_t *p = buf;
    while (n) {
        ssize_t r = pread(fd, p, n, at);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return BS_ERR;
        p += r, n -= (size_t)r, at += r;
    }
    return BS_OK;
}

/* Reads every record key into the index; cuts a torn tail. */
static int load(bs_featcache *fc, off_t size, char *err) {
    off_t body = size - FC_HEADER;
    int64_t n = (int64_t)(body / (off_t)fc->rec_bytes);
    off_t tail = body - (off_t)n * (off_t)fc->rec_bytes;
    if (tail) {
        /* A crash mid-append leaves part of a record: drop it so later appends stay aligned. */
        if (ftruncate(fc->fd, size - tail) != 0)
            return bs_err(err, "%s: truncate torn record: %s", fc->path, strerror(errno));
        fc->torn = (size_t)tail;
    }
    /* read keys in chunks of records */
    size_t chunk_recs = ((size_t)1 << 22) / fc->rec_bytes + 1;
    uint8_t *buf = malloc(chunk_recs * fc->rec_bytes);
    if (!buf) return bs_err(err, "%s: out of memory", fc->path);
    for (int64_t r = 0; r < n;) {
        size_t k = (size_t)(n - r) < chunk_recs ? (size_t)(n - r) : chunk_recs;
        if (read_all(fc->fd, buf, k * fc->rec_bytes, (off_t)FC_HEADER + (off_t)r * (off_t)fc->rec_bytes) != BS_OK) {
            free(buf);
            return bs_err(err, "%s: read: %s", fc->path, strerror(errno ? errno : EIO));
        }
        for (size_t i = 0; i < k; i++)
            if (index_put(fc, buf + i * fc->rec_bytes, r + (int64_t)i) != BS_OK) {
                free(buf);
                return bs_err(err, "%s: out of memory for the index", fc->path);
            }
        r += (int64_t)k;
    }
    free(buf);
    fc->n_records = n;
    fc->loaded = (size_t)n;
    return BS_OK;
}

bs_featcache *featcache_open(const char *dir, const char *encoder_id, const char *feature, int C, char *err) {
    if (C < 1 || C > (1 << 20)) {
        bs_err(err, "feature cache: dimension %d out of range", C);
        return NULL;
    }
    if (strlen(encoder_id) >= FC_ID_LEN || strlen(feature) >= FC_FEAT_LEN) {
        bs_err(err, "feature cache: encoder_id or feature name too long");
        return NULL;
    }
    bs_featcache *fc = calloc(1, sizeof *fc);
    if (!fc) {
        bs_err(err, "out of memory");
        return NULL;
    }
    fc->fd = -1;
    fc->C = C;
    fc->rec_bytes = FEATCACHE_KEY_LEN + 4 * (size_t)C;
    snprintf(fc->encoder_id, sizeof fc->encoder_id, "%s", encoder_id);
    snprintf(fc->feature, sizeof fc->feature, "%s", feature);
    if (!(fc->rec = malloc(fc->rec_bytes)) || index_grow(fc) != BS_OK) {
        bs_err(err, "out of memory");
        goto fail;
    }
    if (bs_mkdir_p(dir, err) != BS_OK) goto fail;
    uint8_t idh[32];
    const void *p[1] = {encoder_id};
    size_t l[1] = {strlen(encoder_id)};
    sha256_parts(p, l, 1, idh);
    char hex[17];
    for (int i = 0; i < 8; i++) snprintf(hex + 2 * i, 3, "%02x", idh[i]);
    char fname[FC_FEAT_LEN];
    snprintf(fname, sizeof fname, "%s", feature);
    for (char *q = fname; *q; q++)
        if (!((*q >= 'a' && *q <= 'z') || (*q >= 'A' && *q <= 'Z') || (*q >= '0' && *q <= '9') || *q == '-' ||
              *q == '.'))
            *q = '_';
    if (snprintf(fc->path, sizeof fc->path, "%s/%s-%s.bsfeat", dir, hex, fname) >= (int)sizeof fc->path) {
        bs_err(err, "%s: path too long", dir);
        goto fail;
    }
    fc->fd = open(fc->path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fc->fd < 0) {
        bs_err(err, "%s: %s", fc->path, strerror(errno));
        goto fail;
    }
    if (flock(fc->fd, LOCK_EX | LOCK_NB) != 0) {
        bs_err(err, "%s: in use by another process (%s)", fc->path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fc->fd, &st) != 0) {
        bs_err(err, "%s: %s", fc->path, strerror(errno));
        goto fail;
    }
    uint8_t hdr[FC_HEADER] = {0};
    if (st.st_size < FC_HEADER) {
        /* new file (or one torn inside its header): start it over */
        memcpy(hdr, FC_MAGIC, 8);
        put_u32(hdr + 8, (uint32_t)C);
        memcpy(hdr + 16, fc->encoder_id, strlen(fc->encoder_id));
        memcpy(hdr + 16 + FC_ID_LEN, fc->feature, strlen(fc->feature));
        if (ftruncate(fc->fd, 0) != 0 || write_all(fc->fd, hdr, FC_HEADER, 0) != BS_OK) {
            bs_err(err, "%s: write header: %s", fc->path, strerror(errno));
            goto fail;
        }
        return fc;
    }
    if (read_all(fc->fd, hdr, FC_HEADER, 0) != BS_OK) {
        bs_err(err, "%s: read header: %s", fc->path, strerror(errno ? errno : EIO));
        goto fail;
    }
    char fid[FC_ID_LEN + 1] = {0}, ffeat[FC_FEAT_LEN + 1] = {0};
    memcpy(fid, hdr + 16, FC_ID_LEN);
    memcpy(ffeat, hdr + 16 + FC_ID_LEN, FC_FEAT_LEN);
    if (memcmp(hdr, FC_MAGIC, 8) != 0) {
        bs_err(err, "%s: not a bertstream feature cache (bad magic)", fc->path);
        goto fail;
    }
    if (get_u32(hdr + 8) != (uint32_t)C || strcmp(fid, fc->encoder_id) != 0 || strcmp(ffeat, fc->feature) != 0) {
        bs_err(err, "%s: holds encoder %.80s feature %s C %u, expected %.80s %s %d", fc->path, fid, ffeat,
               get_u32(hdr + 8), fc->encoder_id, fc->feature, C);
        goto fail;
    }
    if (load(fc, st.st_size, err) != BS_OK) goto fail;
    return fc;
fail:
    featcache_close(fc);
    return NULL;
}

void featcache_close(bs_featcache *fc) {
    if (!fc) return;
    if (fc->fd >= 0) close(fc->fd); /* releases the flock */
    free(fc->slots);
    free(fc->rec);
    free(fc);
}

int featcache_get(bs_featcache *fc, const uint8_t key[FEATCACHE_KEY_LEN], float *feat, char *err) {
    fc_slot *s = index_find(fc, key);
    if (s->rec < 0) return 0;
    if (read_all(fc->fd, fc->rec, fc->rec_bytes, (off_t)FC_HEADER + (off_t)s->rec * (off_t)fc->rec_bytes) != BS_OK)
        return bs_err(err, "%s: read record %lld: %s", fc->path, (long long)s->rec, strerror(errno ? errno : EIO));
    const uint8_t *d = fc->rec + FEATCACHE_KEY_LEN;
    for (int c = 0; c < fc->C; c++) {
        uint32_t u = get_u32(d + 4 * c);
        memcpy(&feat[c], &u, 4);
    }
    return 1;
}

int featcache_put(bs_featcache *fc, const uint8_t key[FEATCACHE_KEY_LEN], const float *feat, char *err) {
    memcpy(fc->rec, key, FEATCACHE_KEY_LEN);
    uint8_t *d = fc->rec + FEATCACHE_KEY_LEN;
    for (int c = 0; c < fc->C; c++) {
        uint32_t u;
        memcpy(&u, &feat[c], 4);
        put_u32(d + 4 * c, u);
    }
    off_t at = (off_t)FC_HEADER + (off_t)fc->n_records * (off_t)fc->rec_bytes;
    if (write_all(fc->fd, fc->rec, fc->rec_bytes, at) != BS_OK) {
        int e = errno ? errno : EIO;
        /* leave no partial record behind (best effort: the next open would cut it anyway) */
        int trunc_rc = ftruncate(fc->fd, at);
        (void)trunc_rc;
        return bs_err(err, "%s: write: %s", fc->path, strerror(e));
    }
    if (index_put(fc, key, fc->n_records) != BS_OK) return bs_err(err, "%s: out of memory for the index", fc->path);
    fc->n_records++;
    return BS_OK;
}

int featcache_sync(bs_featcache *fc, char *err) {
    if (fdatasync(fc->fd) != 0) return bs_err(err, "%s: fdatasync: %s", fc->path, strerror(errno));
    return BS_OK;
}

size_t featcache_count(const bs_featcache *fc) {
    return fc->count;
}
size_t featcache_loaded(const bs_featcache *fc) {
    return fc->loaded;
}
size_t featcache_torn_bytes(const bs_featcache *fc) {
    return fc->torn;
}
const char *featcache_path(const bs_featcache *fc) {
    return fc->path;
}
