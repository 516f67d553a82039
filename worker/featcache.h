/* On-disk cache of encoder features, so a retraining run only encodes reviews that are new or
 * whose text changed. One append-only file per (encoder_id, feature) in a directory, named
 * <first 16 hex of SHA-256(encoder_id)>-<feature, [^A-Za-z0-9.-] -> _>.bsfeat:
 *   header  "BSFEAT01" | u32 C | u32 0 | encoder_id (80 bytes, NUL-padded) | feature (32 bytes, NUL-padded)
 *   records [key: 32 bytes][features: C little-endian F32], back to back
 * key = SHA-256("bertstream.feat.v1\0" encoder_id "\0" feature "\0" u64le(len review_id) review_id
 *               SHA-256(text)), so a changed text or another encoder never hits.
 * At open the records are indexed in an open-addressing table (a key written twice: the last wins);
 * a torn last record (a crash mid-append) is cut off. The file is locked (flock) while open. */
#ifndef BS_FEATCACHE_H
#define BS_FEATCACHE_H

#include <stddef.h>
#include <stdint.h>

#define FEATCACHE_KEY_LEN 32

typedef struct bs_featcache bs_featcache;

/* Opens (creating dir and file as needed) the cache of encoder_id + feature with C-float records.
 * feature names everything besides the weights that changes the vectors: the trainer passes
 * "<feature>/<precision>/<max_seq_len>", e.g. "pooler/fp32/128" (at most 31 bytes; encoder_id at most 79).
 * A file whose header names another encoder, feature or C is an error naming the file. */
bs_featcache *featcache_open(const char *dir, const char *encoder_id, const char *feature, int C, char *err);
void featcache_close(bs_featcache *fc);

/* The record key of one review under this cache's encoder and feature. */
void featcache_key(const bs_featcache *fc, const char *review_id, size_t review_id_len, const char *text,
                   size_t text_len, uint8_t key[FEATCACHE_KEY_LEN]);

/* 1 and feat (C) filled on a hit, 0 on a miss, BS_ERR (with err) on a read error. */
int featcache_get(bs_featcache *fc, const uint8_t key[FEATCACHE_KEY_LEN], float *feat, char *err);
/* Appends one record (one write(2)) and indexes it. */
int featcache_put(bs_featcache *fc, const uint8_t key[FEATCACHE_KEY_LEN], const float *feat, char *err);
/* fdatasync: what was put survives a crash. */
int featcache_sync(bs_featcache *fc, char *err);

/* Distinct keys held; records found at open; bytes dropped at open as a torn tail. */
size_t featcache_count(const bs_featcache *fc);
size_t featcache_loaded(const bs_featcache *fc);
size_t featcache_torn_bytes(const bs_featcache *fc);
/* Path of the cache file. */
const char *featcache_path(const bs_featcache *fc);

#endif
