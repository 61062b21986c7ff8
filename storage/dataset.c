/*
 * dataset.c - immutable, sharded datasets in the store: import, metadata,
 * verification and the reads a data server makes.
 *
 * Layout (docs/datasets.md has every byte):
 *   DATASETS        "N" name           -> u64 BE dataset id
 *                   "D" id             -> metadata (state, shape, digest, ...)
 *                   "S" id shard       -> shard info (records, bytes, SHA-256)
 *                   "Q"                -> u64 LE next dataset id
 *   DATASET_RECORDS id shard first     -> a block of records first, first+1, ...
 * Integers in keys are big-endian, so blocks sort by dataset, shard and
 * index.  A block holds up to BLOCK_TARGET bytes of records with their
 * checksums and offsets; a shard is a run of blocks whose first indices
 * follow each other.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <xxhash.h>

#include "dataset_int.h"
#include "alloc.h"
#include "keel/dataset.h"
#include "log.h"
#include "store_int.h"

#define META_LAYOUT     1u
#define STATE_IMPORTING 1u
#define STATE_COMPLETE  2u
#define META_FIXED      96 /* bytes before the strings */
#define SHARD_INFO_SIZE 64
#define BLOCK_KEY_SIZE  20
#define BLOCK_HEADER    8
#define BLOCK_TARGET    (64u << 10) /* close a block past this many record bytes */
#define BATCH_TARGET    (16u << 20) /* write a transaction past this many bytes */
#define DELETE_BATCH    1024        /* blocks deleted per transaction */
#define DIGEST_TRAILER  24

/* ---- keys and values ---------------------------------------------------- */

static void block_key(unsigned char *k, uint64_t id, uint32_t shard, uint64_t first)
{
    keel_store_be64(k, id);
    keel_store_be32(k + 8, shard);
    keel_store_be64(k + 12, first);
}

/* The checksum of a record binds it to its dataset, shard and index. */
static uint64_t record_checksum(uint64_t id, uint32_t shard, uint64_t index,
                                const unsigned char *rec, size_t len)
{
    unsigned char k[BLOCK_KEY_SIZE];

    block_key(k, id, shard, index);
    return XXH3_64bits_withSeed(rec, len, XXH3_64bits(k, sizeof(k)));
}

static void sha_update_record(EVP_MD_CTX *sha, const unsigned char *rec, size_t len)
{
    unsigned char n[4];

    keel_store_u32le(n, (uint32_t)len);
    EVP_DigestUpdate(sha, n, 4);
    EVP_DigestUpdate(sha, rec, len);
}

static void sha_final_dataset(EVP_MD_CTX *sha, const struct keel_dataset_shape *shape,
                              unsigned char *out)
{
    unsigned char t[DIGEST_TRAILER];

    keel_store_u32le(t, shape->encoding);
    keel_store_u32le(t + 4, shape->nfeatures);
    keel_store_u32le(t + 8, shape->nclasses);
    keel_store_u32le(t + 12, 0);
    keel_store_u64le(t + 16, shape->nrecords);
    EVP_DigestUpdate(sha, t, sizeof(t));
    EVP_DigestFinal_ex(sha, out, NULL);
}

static EVP_MD_CTX *sha_new(void)
{
    EVP_MD_CTX *c = EVP_MD_CTX_new();

    if (c == NULL || EVP_DigestInit_ex(c, EVP_sha256(), NULL) != 1) {
        fprintf(stderr, "keel: cannot start a SHA-256 digest\n");
        abort();
    }
    return c;
}

static void meta_encode(struct keel_buf *b, const struct keel_dataset_info *in, uint32_t state)
{
    size_t nl = strlen(in->name), sl = strlen(in->split), srl = strlen(in->sources);
    unsigned char *p;

    keel_buf_reset(b);
    p = keel_buf_add_zero(b, META_FIXED);
    keel_store_u32le(p, META_LAYOUT);
    keel_store_u32le(p + 4, state);
    keel_store_u32le(p + 8, in->shape.format);
    keel_store_u32le(p + 12, in->shape.encoding);
    keel_store_u32le(p + 16, in->shape.nfeatures);
    keel_store_u32le(p + 20, in->shape.nclasses);
    keel_store_u32le(p + 24, in->nshards);
    keel_store_u32le(p + 28, in->importer_pid);
    keel_store_u64le(p + 32, in->shape.nrecords);
    keel_store_u64le(p + 40, in->bytes);
    keel_store_u64le(p + 48, in->created);
    memcpy(p + 56, in->digest, KEEL_DATASET_DIGEST_SIZE);
    keel_store_u16le(p + 88, (uint16_t)nl);
    keel_store_u16le(p + 90, (uint16_t)sl);
    keel_store_u16le(p + 92, (uint16_t)srl);
    keel_buf_add(b, in->name, nl);
    keel_buf_add(b, in->split, sl);
    keel_buf_add(b, in->sources, srl);
    keel_buf_add_u64le(b, XXH3_64bits(b->buf, b->len));
}

/* Decode metadata read from the store; nothing in it is trusted. */
int keel__dataset_meta_decode(const void *value, size_t len, const char *what,
                              struct keel_dataset_info *out, struct keel_error *err)
{
    const unsigned char *p = value;
    size_t nl, sl, srl;
    uint32_t state;

    memset(out, 0, sizeof(*out));
    if (len < META_FIXED + 8)
        return keel_err_set(err, KEEL_ECORRUPT, "dataset '%s': metadata of %zu bytes is short",
                            what, len);
    if (XXH3_64bits(p, len - 8) != keel_load_u64le(p + len - 8))
        return keel_err_set(err, KEEL_ECHECKSUM, "dataset '%s': metadata checksum mismatch", what);
    if (keel_load_u32le(p) != META_LAYOUT)
        return keel_err_set(err, KEEL_ECORRUPT, "dataset '%s': unknown metadata layout %" PRIu32,
                            what, keel_load_u32le(p));
    state = keel_load_u32le(p + 4);
    nl = keel_load_u16le(p + 88);
    sl = keel_load_u16le(p + 90);
    srl = keel_load_u16le(p + 92);
    if ((state != STATE_IMPORTING && state != STATE_COMPLETE) || nl == 0 || nl > KEEL_ID_MAX ||
        sl > KEEL_DATASET_SPLIT_MAX || srl > KEEL_DATASET_SOURCES_MAX ||
        META_FIXED + nl + sl + srl + 8 != len)
        return keel_err_set(err, KEEL_ECORRUPT, "dataset '%s': malformed metadata", what);
    out->complete = state == STATE_COMPLETE;
    out->shape.format = keel_load_u32le(p + 8);
    out->shape.encoding = keel_load_u32le(p + 12);
    out->shape.nfeatures = keel_load_u32le(p + 16);
    out->shape.nclasses = keel_load_u32le(p + 20);
    out->nshards = keel_load_u32le(p + 24);
    out->importer_pid = keel_load_u32le(p + 28);
    out->shape.nrecords = keel_load_u64le(p + 32);
    out->bytes = keel_load_u64le(p + 40);
    out->created = keel_load_u64le(p + 48);
    memcpy(out->digest, p + 56, KEEL_DATASET_DIGEST_SIZE);
    memcpy(out->name, p + META_FIXED, nl);
    memcpy(out->split, p + META_FIXED + nl, sl);
    memcpy(out->sources, p + META_FIXED + nl + sl, srl);
    if (out->nshards == 0 || out->nshards > KEEL_DATASET_MAX_SHARDS ||
        keel_record_size(out->shape.encoding, 0) == 0)
        return keel_err_set(err, KEEL_ECORRUPT, "dataset '%s': malformed metadata", what);
    return 0;
}

static void shard_info_encode(unsigned char *p, const struct keel_dataset_shard *si)
{
    memset(p, 0, SHARD_INFO_SIZE);
    keel_store_u64le(p, si->nrecords);
    keel_store_u64le(p + 8, si->bytes);
    keel_store_u32le(p + 16, si->nblocks);
    memcpy(p + 24, si->sha, 32);
    keel_store_u64le(p + 56, XXH3_64bits(p, 56));
}

int keel__dataset_shard_decode(const void *value, size_t len, const char *name, uint32_t shard,
                               struct keel_dataset_shard *si, struct keel_error *err)
{
    const unsigned char *p = value;

    if (len != SHARD_INFO_SIZE || XXH3_64bits(p, 56) != keel_load_u64le(p + 56))
        return keel_err_set(err, KEEL_ECHECKSUM,
                            "dataset '%s': shard %" PRIu32 ": shard metadata damaged", name, shard);
    si->nrecords = keel_load_u64le(p);
    si->bytes = keel_load_u64le(p + 8);
    si->nblocks = keel_load_u32le(p + 16);
    memcpy(si->sha, p + 24, 32);
    return 0;
}

/* A block of records: k, reserved, k checksums, k + 1 offsets, the records. */
int keel__dataset_block_decode(const void *value, size_t len, struct keel__ds_block *b)
{
    const unsigned char *p = value;
    size_t head;

    if (len < BLOCK_HEADER)
        return -1;
    b->k = keel_load_u32le(p);
    if (b->k == 0 || keel_load_u32le(p + 4) != 0 || b->k > (len - BLOCK_HEADER) / 12)
        return -1;
    head = BLOCK_HEADER + 12 * (size_t)b->k + 4;
    if (head > len)
        return -1;
    b->sums = p + BLOCK_HEADER;
    b->offs = b->sums + 8 * (size_t)b->k;
    b->data = p + head;
    b->data_len = len - head;
    if (keel_load_u32le(b->offs) != 0 || keel_load_u32le(b->offs + 4 * (size_t)b->k) != b->data_len)
        return -1;
    for (uint32_t i = 0; i < b->k; i++)
        if (keel_load_u32le(b->offs + 4 * (size_t)i + 4) < keel_load_u32le(b->offs + 4 * (size_t)i))
            return -1;
    return 0;
}

/* Record i of a decoded block. */
const unsigned char *keel__dataset_block_record(const struct keel__ds_block *b, uint32_t i,
                                                size_t *len, uint64_t *sum)
{
    uint32_t o = keel_load_u32le(b->offs + 4 * (size_t)i);

    *len = keel_load_u32le(b->offs + 4 * (size_t)i + 4) - o;
    *sum = keel_load_u64le(b->sums + 8 * (size_t)i);
    return b->data + o;
}

/* ---- names and lookups -------------------------------------------------- */

int keel_dataset_name_check(const char *name, struct keel_error *err)
{
    size_t n = strlen(name);

    if (n == 0 || n > KEEL_ID_MAX)
        return keel_err_set(err, KEEL_EINVAL, "dataset name '%s' must have 1 to %d characters",
                            name, KEEL_ID_MAX);
    if (name[0] == '.' || name[0] == '-')
        return keel_err_set(err, KEEL_EINVAL, "dataset name '%s' must not start with '.' or '-'",
                            name);
    for (size_t i = 0; i < n; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return keel_err_set(err, KEEL_EINVAL,
                                "dataset name '%s' may only hold letters, digits, '.', '_' and "
                                "'-'",
                                name);
    }
    return 0;
}

static size_t name_key(unsigned char *k, const char *name)
{
    size_t n = strlen(name);

    k[0] = 'N';
    memcpy(k + 1, name, n);
    return n + 1;
}

static void meta_key(unsigned char *k, uint64_t id)
{
    k[0] = 'D';
    keel_store_be64(k + 1, id);
}

static void shard_key(unsigned char *k, uint64_t id, uint32_t shard)
{
    k[0] = 'S';
    keel_store_be64(k + 1, id);
    keel_store_be32(k + 9, shard);
}

/* Find dataset `name`: its id and metadata.  KEEL_ENOTFOUND when absent. */
static int lookup(keel_store *s, keel_txn *txn, const char *name, uint64_t *id,
                  struct keel_dataset_info *info, struct keel_error *err)
{
    unsigned char k[1 + KEEL_ID_MAX], mk[9];
    MDB_val v;
    int rc;

    rc = keel_store_get(s, txn, KEEL_DB_DATASETS, k, name_key(k, name), &v, err);
    if (rc == KEEL_ENOTFOUND)
        return keel_err_set(err, KEEL_ENOTFOUND, "no dataset '%s' in store '%s'", name,
                            keel_store_dir(s));
    if (rc != 0)
        return rc;
    if (v.mv_size != 8)
        return keel_err_set(err, KEEL_ECORRUPT, "dataset '%s': malformed name entry", name);
    *id = keel_store_load_be64(v.mv_data);
    meta_key(mk, *id);
    rc = keel_store_get(s, txn, KEEL_DB_DATASETS, mk, sizeof(mk), &v, err);
    if (rc == KEEL_ENOTFOUND)
        return keel_err_set(err, KEEL_ECORRUPT, "dataset '%s': metadata missing", name);
    if (rc != 0)
        return rc;
    rc = keel__dataset_meta_decode(v.mv_data, v.mv_size, name, info, err);
    if (rc == 0 && strcmp(info->name, name) != 0)
        return keel_err_set(err, KEEL_ECORRUPT, "dataset '%s': metadata names '%s'", name,
                            info->name);
    return rc;
}

static int refuse_incomplete(const struct keel_dataset_info *info, struct keel_error *err)
{
    return keel_err_set(err, KEEL_ENOTFOUND,
                        "dataset '%s' is incomplete: its import (process %" PRIu32
                        ") has not finished",
                        info->name, info->importer_pid);
}

struct stat_ctx {
    const char *name;
    uint64_t id;
    struct keel_dataset_info *info;
    keel_store *s;
};

static int stat_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct stat_ctx *c = ctx;

    return lookup(c->s, txn, c->name, &c->id, c->info, err);
}

int keel_dataset_stat(keel_store *s, const char *name, struct keel_dataset_info *info,
                      struct keel_error *err)
{
    struct stat_ctx c = {name, 0, info, s};
    int rc;

    if ((rc = keel_dataset_name_check(name, err)) != 0)
        return rc;
    if ((rc = keel_store_read(s, stat_txn, &c, err)) != 0)
        return rc;
    if (!info->complete)
        return refuse_incomplete(info, err);
    return 0;
}

struct list_ctx {
    keel_store *s;
    int (*fn)(void *ctx, const struct keel_dataset_info *info);
    void *ctx;
};

static int list_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct list_ctx *c = ctx;
    MDB_cursor *cur;
    MDB_val k = {1, "N"}, v;
    int rc;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(c->s, KEEL_DB_DATASETS), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot list datasets");
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        char name[KEEL_ID_MAX + 1];
        struct keel_dataset_info info;
        uint64_t id;

        if (k.mv_size < 2 || ((const char *)k.mv_data)[0] != 'N')
            break;
        if (k.mv_size - 1 > KEEL_ID_MAX) {
            rc = keel_err_set(err, KEEL_ECORRUPT, "malformed dataset name entry");
            goto out;
        }
        memcpy(name, (const char *)k.mv_data + 1, k.mv_size - 1);
        name[k.mv_size - 1] = '\0';
        if ((rc = lookup(c->s, txn, name, &id, &info, err)) != 0)
            goto out;
        if ((rc = c->fn(c->ctx, &info)) != 0)
            goto out;
    }
    if (rc != MDB_NOTFOUND && rc != 0)
        rc = keel_store_mdb_err(err, rc, "cannot list datasets");
    else
        rc = 0;
out:
    mdb_cursor_close(cur);
    return rc;
}

int keel_dataset_list(keel_store *s, int (*fn)(void *ctx, const struct keel_dataset_info *info),
                      void *ctx, struct keel_error *err)
{
    struct list_ctx c = {s, fn, ctx};

    return keel_store_read(s, list_txn, &c, err);
}

/* ---- removing a dataset's entries --------------------------------------- */

struct remove_ctx {
    keel_store *s;
    uint64_t id;
    const char *name;
    uint32_t nshards;
    int more; /* out: blocks remain */
};

/* Delete up to DELETE_BATCH blocks of the dataset; the entries at the end. */
static int remove_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct remove_ctx *c = ctx;
    unsigned char k0[BLOCK_KEY_SIZE], nk[1 + KEEL_ID_MAX], mk[9], sk[13];
    MDB_cursor *cur;
    MDB_val k = {8, k0}, v;
    int rc, n = 0;

    keel_store_be64(k0, c->id);
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(c->s, KEEL_DB_DATASET_RECORDS), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "dataset '%s': cannot remove records", c->name);
    c->more = 0;
    for (;;) {
        k.mv_size = 8;
        k.mv_data = k0;
        if ((rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE)) != 0)
            break;
        if (k.mv_size != BLOCK_KEY_SIZE || keel_store_load_be64(k.mv_data) != c->id)
            break;
        if (n++ == DELETE_BATCH) {
            c->more = 1;
            break;
        }
        if ((rc = mdb_cursor_del(cur, 0)) != 0)
            break;
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "dataset '%s': cannot remove records", c->name);
    if (c->more)
        return 0;
    for (uint32_t sh = 0; sh < c->nshards; sh++) {
        shard_key(sk, c->id, sh);
        if ((rc = keel_store_del(c->s, txn, KEEL_DB_DATASETS, sk, sizeof(sk), err)) != 0)
            return rc;
    }
    meta_key(mk, c->id);
    if ((rc = keel_store_del(c->s, txn, KEEL_DB_DATASETS, mk, sizeof(mk), err)) != 0)
        return rc;
    return keel_store_del(c->s, txn, KEEL_DB_DATASETS, nk, name_key(nk, c->name), err);
}

/* Remove every entry of dataset `id` (named `name`), a batch per transaction. */
static int remove_dataset(keel_store *s, uint64_t id, const char *name, uint32_t nshards,
                          struct keel_error *err)
{
    struct remove_ctx c = {s, id, name, nshards, 1};
    int rc = 0;

    while (c.more && rc == 0)
        rc = keel_store_write(s, remove_txn, &c, err);
    return rc;
}

/* ---- import ------------------------------------------------------------- */

/* The block a shard is filling. */
struct open_block {
    struct keel_buf sums, offs, data;
    uint32_t k;
    uint64_t first; /* shard index of its first record */
};

struct pending {
    unsigned char key[BLOCK_KEY_SIZE];
    struct keel_buf val;
};

struct import {
    keel_store *s;
    uint64_t id;
    const char *name;
    uint32_t nshards;
    struct open_block *open;
    struct keel_dataset_shard *shards;
    EVP_MD_CTX **shard_sha;
    EVP_MD_CTX *sha;
    struct pending *pend;
    size_t npend, pend_cap, pend_bytes;
    uint64_t nrecords, bytes, written_records, written_bytes;
    keel_dataset_progress_fn progress;
    void *progress_ctx;
    struct keel_dataset_info info; /* metadata written at the start and at the end */
    struct keel_buf meta;
};

static void close_block(struct import *im, uint32_t shard)
{
    struct open_block *ob = &im->open[shard];
    struct pending *p;
    unsigned char *h;

    if (ob->k == 0)
        return;
    if (im->npend == im->pend_cap) {
        im->pend_cap = im->pend_cap ? im->pend_cap * 2 : 64;
        KEEL_REALLOC_ARRAY(im->pend, im->pend_cap);
    }
    p = &im->pend[im->npend++];
    block_key(p->key, im->id, shard, ob->first);
    keel_buf_init(&p->val, BLOCK_HEADER + ob->sums.len + ob->offs.len + 4 + ob->data.len);
    h = keel_buf_add_zero(&p->val, BLOCK_HEADER);
    keel_store_u32le(h, ob->k);
    keel_buf_add(&p->val, ob->sums.buf, ob->sums.len);
    keel_buf_add(&p->val, ob->offs.buf, ob->offs.len);
    keel_buf_add_u32le(&p->val, (uint32_t)ob->data.len);
    keel_buf_add(&p->val, ob->data.buf, ob->data.len);
    im->shards[shard].nblocks++;
    ob->first += ob->k;
    ob->k = 0;
    keel_buf_reset(&ob->sums);
    keel_buf_reset(&ob->offs);
    keel_buf_reset(&ob->data);
}

static int write_blocks_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct import *im = ctx;
    MDB_dbi dbi = keel_store_dbi(im->s, KEEL_DB_DATASET_RECORDS);

    for (size_t i = 0; i < im->npend; i++) {
        MDB_val k = {BLOCK_KEY_SIZE, im->pend[i].key};
        MDB_val v = {im->pend[i].val.len, im->pend[i].val.buf};
        int rc = mdb_put(keel_txn_mdb(txn), dbi, &k, &v, MDB_NOOVERWRITE);

        if (rc != 0)
            return keel_store_mdb_err(err, rc, "dataset '%s': cannot write records", im->name);
    }
    return 0;
}

/* Close every open block and write the pending ones in one transaction. */
static int flush(struct import *im, struct keel_error *err)
{
    int rc;

    for (uint32_t sh = 0; sh < im->nshards; sh++)
        close_block(im, sh);
    if (im->npend == 0)
        return 0;
    rc = keel_store_write(im->s, write_blocks_txn, im, err);
    for (size_t i = 0; i < im->npend; i++)
        keel_buf_release(&im->pend[i].val);
    im->npend = 0;
    im->pend_bytes = 0;
    if (rc != 0)
        return rc;
    im->written_records = im->nrecords;
    im->written_bytes = im->bytes;
    if (im->progress)
        im->progress(im->progress_ctx, im->written_records, im->written_bytes);
    return 0;
}

/* The parser's callback: deal record g to its shard. */
static int add_record(void *ctx, uint64_t g, const unsigned char *rec, size_t len,
                      struct keel_error *err)
{
    struct import *im = ctx;
    uint32_t shard = (uint32_t)(g % im->nshards);
    uint64_t index = g / im->nshards;
    struct open_block *ob = &im->open[shard];

    keel_buf_add_u64le(&ob->sums, record_checksum(im->id, shard, index, rec, len));
    keel_buf_add_u32le(&ob->offs, (uint32_t)ob->data.len);
    keel_buf_add(&ob->data, rec, len);
    ob->k++;
    sha_update_record(im->sha, rec, len);
    sha_update_record(im->shard_sha[shard], rec, len);
    im->shards[shard].nrecords++;
    im->shards[shard].bytes += len;
    im->nrecords++;
    im->bytes += len;
    im->pend_bytes += len + 12;
    if (ob->data.len >= BLOCK_TARGET)
        close_block(im, shard);
    if (im->pend_bytes >= BATCH_TARGET)
        return flush(im, err);
    return 0;
}

struct begin_ctx {
    struct import *im;
    uint64_t stale_id; /* out: an abandoned import of the name to remove first */
    uint32_t stale_shards;
};

/* Claim the name: refuse an existing dataset or a live import of it. */
static int begin_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct begin_ctx *c = ctx;
    struct import *im = c->im;
    struct keel_dataset_info old;
    unsigned char nk[1 + KEEL_ID_MAX], mk[9], idv[8], q[1] = {'Q'};
    uint64_t id;
    MDB_val v;
    int rc;

    c->stale_id = 0;
    rc = lookup(im->s, txn, im->name, &id, &old, err);
    if (rc == 0) {
        if (old.complete)
            return keel_err_set(err, KEEL_EEXIST,
                                "dataset '%s' already exists in store '%s' (datasets are "
                                "immutable: import under another name)",
                                im->name, keel_store_dir(im->s));
        if (old.importer_pid && (kill((pid_t)old.importer_pid, 0) == 0 || errno == EPERM))
            return keel_err_set(err, KEEL_EEXIST,
                                "dataset '%s' is being imported by process %" PRIu32, im->name,
                                old.importer_pid);
        c->stale_id = id;
        c->stale_shards = old.nshards;
        return 0;
    }
    if (rc != KEEL_ENOTFOUND)
        return rc;
    rc = keel_store_get(im->s, txn, KEEL_DB_DATASETS, q, 1, &v, err);
    if (rc == 0 && v.mv_size == 8)
        id = keel_load_u64le(v.mv_data);
    else if (rc == KEEL_ENOTFOUND || rc == 0)
        id = 1;
    else
        return rc;
    im->id = id;
    keel_store_u64le(idv, id + 1);
    if ((rc = keel_store_put(im->s, txn, KEEL_DB_DATASETS, q, 1, idv, 8, err)) != 0)
        return rc;
    keel_store_be64(idv, id);
    if ((rc = keel_store_put(im->s, txn, KEEL_DB_DATASETS, nk, name_key(nk, im->name), idv, 8,
                             err)) != 0)
        return rc;
    meta_encode(&im->meta, &im->info, STATE_IMPORTING);
    meta_key(mk, id);
    return keel_store_put(im->s, txn, KEEL_DB_DATASETS, mk, sizeof(mk), im->meta.buf, im->meta.len,
                          err);
}

/* Write the shard infos and mark the dataset complete. */
static int finish_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct import *im = ctx;
    unsigned char sk[13], mk[9], v[SHARD_INFO_SIZE];
    int rc;

    for (uint32_t sh = 0; sh < im->nshards; sh++) {
        shard_key(sk, im->id, sh);
        shard_info_encode(v, &im->shards[sh]);
        if ((rc = keel_store_put(im->s, txn, KEEL_DB_DATASETS, sk, sizeof(sk), v, sizeof(v),
                                 err)) != 0)
            return rc;
    }
    meta_encode(&im->meta, &im->info, STATE_COMPLETE);
    meta_key(mk, im->id);
    return keel_store_put(im->s, txn, KEEL_DB_DATASETS, mk, sizeof(mk), im->meta.buf, im->meta.len,
                          err);
}

static void import_release(struct import *im)
{
    for (uint32_t sh = 0; im->open && sh < im->nshards; sh++) {
        keel_buf_release(&im->open[sh].sums);
        keel_buf_release(&im->open[sh].offs);
        keel_buf_release(&im->open[sh].data);
        EVP_MD_CTX_free(im->shard_sha[sh]);
    }
    for (size_t i = 0; i < im->npend; i++)
        keel_buf_release(&im->pend[i].val);
    free(im->pend);
    free(im->open);
    free(im->shards);
    free(im->shard_sha);
    EVP_MD_CTX_free(im->sha);
    keel_buf_release(&im->meta);
}

static const char *base_name(const char *path)
{
    const char *slash = strrchr(path, '/');

    return slash ? slash + 1 : path;
}

/* Fill the sources string: the files' base names, cut to fit. */
static void set_sources(char *out, const char *const *files, size_t nfiles)
{
    size_t len = 0;

    out[0] = '\0';
    for (size_t i = 0; i < nfiles; i++) {
        int n = snprintf(out + len, KEEL_DATASET_SOURCES_MAX + 1 - len, "%s%s", i ? ", " : "",
                         base_name(files[i]));

        if (n < 0 || (size_t)n >= KEEL_DATASET_SOURCES_MAX + 1 - len) {
            out[KEEL_DATASET_SOURCES_MAX] = '\0';
            return;
        }
        len += (size_t)n;
    }
}

/* Parse the files, handing records to the import. */
static int parse_files(struct import *im, unsigned format, const char *const *files, size_t nfiles,
                       const struct keel_dsparse_opts *popts, struct keel_dataset_shape *shape,
                       struct keel_error *err)
{
    keel_dsparse *p = keel_dsparse_new(format, popts, add_record, im);
    struct keel_buf a = KEEL_BUF_INIT, b = KEEL_BUF_INIT;
    int rc = 0;

    if (format == KEEL_DATASET_IDX) {
        if ((rc = keel_dataset_load_file(files[0], KEEL_DATASET_MAX_FILE, &a, err)) != 0 ||
            (rc = keel_dataset_load_file(files[1], KEEL_DATASET_MAX_FILE, &b, err)) != 0)
            goto out;
        rc = keel_dsparse_idx(p, files[0], keel_buf_view(&a), files[1], keel_buf_view(&b), err);
    } else {
        for (size_t i = 0; i < nfiles && rc == 0; i++) {
            keel_buf_reset(&a);
            if ((rc = keel_dataset_load_file(files[i], KEEL_DATASET_MAX_FILE, &a, err)) != 0)
                goto out;
            rc = keel_dsparse_text(p, files[i], keel_buf_view(&a), err);
        }
    }
    if (rc == 0)
        rc = keel_dsparse_finish(p, shape, err);
out:
    keel_buf_release(&a);
    keel_buf_release(&b);
    keel_dsparse_free(p);
    return rc;
}

int keel_dataset_import(keel_store *s, const char *name, unsigned format, const char *const *files,
                        size_t nfiles, const struct keel_dataset_import_opts *opts,
                        struct keel_dataset_info *info, struct keel_error *err)
{
    struct import im;
    struct begin_ctx bc = {&im, 0, 0};
    struct keel_dataset_shape shape;
    int rc;

    if ((rc = keel_dataset_name_check(name, err)) != 0)
        return rc;
    if (format < KEEL_DATASET_IDX || format > KEEL_DATASET_CSV)
        return keel_err_set(err, KEEL_EINVAL, "unknown dataset format %u", format);
    if (format == KEEL_DATASET_IDX && nfiles != 2)
        return keel_err_set(err, KEEL_EINVAL,
                            "an IDX dataset is two files, the images then the labels; got %zu",
                            nfiles);
    if (nfiles == 0)
        return keel_err_set(err, KEEL_EINVAL, "no file to import");
    if (opts->nshards < 1 || opts->nshards > KEEL_DATASET_MAX_SHARDS)
        return keel_err_set(err, KEEL_EINVAL, "shard count %" PRIu32 " not within 1..%d",
                            opts->nshards, KEEL_DATASET_MAX_SHARDS);
    if (opts->split && strlen(opts->split) > KEEL_DATASET_SPLIT_MAX)
        return keel_err_set(err, KEEL_EINVAL, "split '%s' is longer than %d bytes", opts->split,
                            KEEL_DATASET_SPLIT_MAX);

    memset(&im, 0, sizeof(im));
    im.s = s;
    im.name = name;
    im.nshards = opts->nshards;
    im.progress = opts->progress;
    im.progress_ctx = opts->progress_ctx;
    keel_buf_init(&im.meta, 0);
    snprintf(im.info.name, sizeof(im.info.name), "%s", name);
    snprintf(im.info.split, sizeof(im.info.split), "%s", opts->split ? opts->split : "");
    set_sources(im.info.sources, files, nfiles);
    im.info.shape.format = format;
    im.info.shape.encoding = KEEL_RECORD_DENSE_F32; /* until the parse says */
    im.info.nshards = opts->nshards;
    im.info.importer_pid = (uint32_t)getpid();
    im.info.created = (uint64_t)time(NULL);

    rc = keel_store_write(s, begin_txn, &bc, err);
    if (rc == 0 && bc.stale_id) {
        KEEL_LOG_INFO("dataset '%s': removing an unfinished import", name);
        rc = remove_dataset(s, bc.stale_id, name, bc.stale_shards, err);
        if (rc == 0)
            rc = keel_store_write(s, begin_txn, &bc, err);
        if (rc == 0 && bc.stale_id)
            rc =
                keel_err_set(err, KEEL_EEXIST, "dataset '%s' is being imported concurrently", name);
    }
    if (rc != 0) {
        keel_buf_release(&im.meta);
        return rc;
    }

    KEEL_ALLOC_ARRAY(im.open, im.nshards);
    KEEL_ALLOC_ARRAY(im.shards, im.nshards);
    KEEL_ALLOC_ARRAY(im.shard_sha, im.nshards);
    for (uint32_t sh = 0; sh < im.nshards; sh++) {
        keel_buf_init(&im.open[sh].sums, 0);
        keel_buf_init(&im.open[sh].offs, 0);
        keel_buf_init(&im.open[sh].data, 0);
        im.shard_sha[sh] = sha_new();
    }
    im.sha = sha_new();

    rc = parse_files(&im, format, files, nfiles, &opts->parse, &shape, err);
    if (rc == 0)
        rc = flush(&im, err);
    if (rc == 0) {
        im.info.shape = shape;
        im.info.bytes = im.bytes;
        im.info.importer_pid = 0;
        sha_final_dataset(im.sha, &shape, im.info.digest);
        for (uint32_t sh = 0; sh < im.nshards; sh++)
            EVP_DigestFinal_ex(im.shard_sha[sh], im.shards[sh].sha, NULL);
        rc = keel_store_write(s, finish_txn, &im, err);
    }
    if (rc != 0) {
        struct keel_error ignored;

        /* Take back what was written; a failure here leaves an incomplete
         * dataset that readers refuse and the next import removes. */
        if (remove_dataset(s, im.id, name, im.nshards, &ignored) != 0)
            KEEL_LOG_WARN("dataset '%s': cannot remove the failed import: %s", name, ignored.msg);
    } else {
        im.info.complete = 1;
        if (info)
            *info = im.info;
        KEEL_LOG_DEBUG("dataset '%s': %" PRIu64 " records in %" PRIu32 " shards", name,
                       shape.nrecords, im.nshards);
    }
    import_release(&im);
    return rc;
}

/* ---- reading ------------------------------------------------------------ */

struct keel_dataset {
    keel_store *s;
    uint64_t id;
    struct keel_dataset_info info;
    struct keel_dataset_shard *shards; /* info.nshards of them */
};

struct open_ctx {
    keel_dataset *ds;
    const char *name;
};

static int open_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct open_ctx *c = ctx;
    keel_dataset *ds = c->ds;
    uint64_t total = 0;
    int rc;

    if ((rc = lookup(ds->s, txn, c->name, &ds->id, &ds->info, err)) != 0)
        return rc;
    if (!ds->info.complete)
        return refuse_incomplete(&ds->info, err);
    KEEL_ALLOC_ARRAY(ds->shards, ds->info.nshards);
    for (uint32_t sh = 0; sh < ds->info.nshards; sh++) {
        unsigned char sk[13];
        struct keel_dataset_shard si;
        MDB_val v;

        shard_key(sk, ds->id, sh);
        rc = keel_store_get(ds->s, txn, KEEL_DB_DATASETS, sk, sizeof(sk), &v, err);
        if (rc == KEEL_ENOTFOUND)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "dataset '%s': shard %" PRIu32 ": metadata missing", c->name, sh);
        if (rc != 0 ||
            (rc = keel__dataset_shard_decode(v.mv_data, v.mv_size, c->name, sh, &si, err)) != 0)
            return rc;
        if (si.nrecords != ds->info.shape.nrecords / ds->info.nshards +
                               (sh < ds->info.shape.nrecords % ds->info.nshards))
            return keel_err_set(err, KEEL_ECORRUPT,
                                "dataset '%s': shard %" PRIu32 " has %" PRIu64
                                " records, round-robin dealing gives it %" PRIu64,
                                c->name, sh, si.nrecords,
                                ds->info.shape.nrecords / ds->info.nshards +
                                    (sh < ds->info.shape.nrecords % ds->info.nshards));
        ds->shards[sh] = si;
        total += si.nrecords;
    }
    if (total != ds->info.shape.nrecords)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "dataset '%s': shards hold %" PRIu64
                            " records, the metadata says %" PRIu64,
                            c->name, total, ds->info.shape.nrecords);
    return 0;
}

int keel_dataset_open(keel_store *s, const char *name, keel_dataset **out, struct keel_error *err)
{
    keel_dataset *ds;
    struct open_ctx c;
    int rc;

    *out = NULL;
    if ((rc = keel_dataset_name_check(name, err)) != 0)
        return rc;
    ds = keel_calloc(1, sizeof(*ds));
    ds->s = s;
    c.ds = ds;
    c.name = name;
    if ((rc = keel_store_read(s, open_txn, &c, err)) != 0) {
        keel_dataset_close(ds);
        return rc;
    }
    *out = ds;
    return 0;
}

void keel_dataset_close(keel_dataset *ds)
{
    if (!ds)
        return;
    free(ds->shards);
    free(ds);
}

const struct keel_dataset_info *keel_dataset_get_info(const keel_dataset *ds)
{
    return &ds->info;
}

uint64_t keel_dataset_shard_records(const keel_dataset *ds, uint32_t shard)
{
    return shard < ds->info.nshards ? ds->shards[shard].nrecords : 0;
}

const struct keel_dataset_shard *keel_dataset_shard(const keel_dataset *ds, uint32_t shard)
{
    return shard < ds->info.nshards ? &ds->shards[shard] : NULL;
}

void keel_shard_batch_init(struct keel_shard_batch *b)
{
    memset(b, 0, sizeof(*b));
    keel_buf_init(&b->offsets, 0);
    keel_buf_init(&b->data, 0);
}

void keel_shard_batch_release(struct keel_shard_batch *b)
{
    keel_buf_release(&b->offsets);
    keel_buf_release(&b->data);
}

int keel_shard_batch_message(const struct keel_shard_batch *b, struct keel_msg_shard_data *m)
{
    m->shard = b->shard;
    m->nrecords = b->nrecords;
    m->first = b->first;
    m->total = b->total;
    m->offsets = (const uint32_t *)(const void *)b->offsets.buf;
    m->data = b->data.buf;
    return b->first + b->nrecords >= b->total;
}

/*
 * Find the block of `shard` that holds record `index`: the block with the
 * largest first index <= index.  On success *first is that block's first
 * index and *b the decoded block.
 */
static int find_block(const keel_dataset *ds, MDB_cursor *cur, uint32_t shard, uint64_t index,
                      struct keel__ds_block *b, uint64_t *first, struct keel_error *err)
{
    unsigned char key[BLOCK_KEY_SIZE];
    MDB_val k = {sizeof(key), key}, v;
    int rc;

    block_key(key, ds->id, shard, index);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && (k.mv_size != BLOCK_KEY_SIZE || memcmp(k.mv_data, key, 12) != 0 ||
                    keel_store_load_be64((const unsigned char *)k.mv_data + 12) != index))
        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
    else if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "dataset '%s': cannot read shard %" PRIu32,
                                  ds->info.name, shard);
    if (rc == MDB_NOTFOUND || k.mv_size != BLOCK_KEY_SIZE || memcmp(k.mv_data, key, 12) != 0)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "dataset '%s': shard %" PRIu32 ": no block holds record %" PRIu64,
                            ds->info.name, shard, index);
    *first = keel_store_load_be64((const unsigned char *)k.mv_data + 12);
    if (keel__dataset_block_decode(v.mv_data, v.mv_size, b) != 0)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "dataset '%s': shard %" PRIu32 ": block at record %" PRIu64
                            " is malformed",
                            ds->info.name, shard, *first);
    if (index - *first >= b->k)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "dataset '%s': shard %" PRIu32 ": record %" PRIu64 " is missing",
                            ds->info.name, shard, index);
    return 0;
}

struct read_ctx {
    keel_dataset *ds;
    uint32_t shard;
    uint64_t first;
    uint32_t max_records;
    size_t max_body;
    struct keel_shard_batch *out;
};

static int read_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct read_ctx *c = ctx;
    keel_dataset *ds = c->ds;
    struct keel_shard_batch *out = c->out;
    uint64_t total = ds->shards[c->shard].nrecords, index = c->first, bfirst = 0;
    size_t body = 24 + 4;
    MDB_cursor *cur;
    struct keel__ds_block b;
    int rc;

    if (c->first >= total || c->max_records == 0)
        return 0;
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(ds->s, KEEL_DB_DATASET_RECORDS), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "dataset '%s': cannot read", ds->info.name);
    if ((rc = find_block(ds, cur, c->shard, index, &b, &bfirst, err)) != 0)
        goto out;
    while (out->nrecords < c->max_records && index < total) {
        uint32_t i = (uint32_t)(index - bfirst);
        const unsigned char *rec;
        uint64_t sum;
        size_t len;

        if (i == b.k) {
            MDB_val k, v;

            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
            if (rc != 0 || k.mv_size != BLOCK_KEY_SIZE ||
                keel_store_load_be64(k.mv_data) != ds->id ||
                keel_store_load_be32((const unsigned char *)k.mv_data + 8) != c->shard ||
                keel_store_load_be64((const unsigned char *)k.mv_data + 12) != index ||
                keel__dataset_block_decode(v.mv_data, v.mv_size, &b) != 0) {
                rc = keel_err_set(err, KEEL_ECORRUPT,
                                  "dataset '%s': shard %" PRIu32 ": block at record %" PRIu64
                                  " missing or malformed",
                                  ds->info.name, c->shard, index);
                goto out;
            }
            bfirst = index;
            i = 0;
        }
        rec = keel__dataset_block_record(&b, i, &len, &sum);
        if (body + 4 + len > c->max_body) {
            if (out->nrecords == 0)
                rc = keel_err_set(err, KEEL_EFRAMESIZE,
                                  "dataset '%s': shard %" PRIu32 ": record %" PRIu64
                                  " of %zu bytes does not fit in a body of %zu",
                                  ds->info.name, c->shard, index, len, c->max_body);
            break;
        }
        if (record_checksum(ds->id, c->shard, index, rec, len) != sum) {
            rc = keel_err_set(err, KEEL_ECHECKSUM,
                              "dataset '%s': shard %" PRIu32 ", record %" PRIu64
                              ": checksum mismatch",
                              ds->info.name, c->shard, index);
            goto out;
        }
        keel_buf_add(&out->data, rec, len);
        {
            uint32_t o = (uint32_t)out->data.len;

            keel_buf_add(&out->offsets, &o, sizeof(o));
        }
        body += 4 + len;
        out->nrecords++;
        index++;
    }
out:
    mdb_cursor_close(cur);
    return rc;
}

int keel_dataset_read(keel_dataset *ds, uint32_t shard, uint64_t first, uint32_t max_records,
                      size_t max_body, struct keel_shard_batch *out, struct keel_error *err)
{
    struct read_ctx c = {ds, shard, first, max_records, max_body, out};
    uint32_t zero = 0;
    int rc;

    keel_buf_reset(&out->offsets);
    keel_buf_reset(&out->data);
    out->shard = shard;
    out->first = first;
    out->nrecords = 0;
    out->total = keel_dataset_shard_records(ds, shard);
    keel_buf_add(&out->offsets, &zero, sizeof(zero));
    if (shard >= ds->info.nshards)
        return keel_err_set(err, KEEL_EINVAL,
                            "dataset '%s' has no shard %" PRIu32 " (%" PRIu32 " shards)",
                            ds->info.name, shard, ds->info.nshards);
    rc = keel_store_read(ds->s, read_txn, &c, err);
    if (rc != 0) {
        keel_buf_setlen(&out->offsets, sizeof(zero));
        keel_buf_reset(&out->data);
        out->nrecords = 0;
    }
    return rc;
}

/* ---- verify ------------------------------------------------------------- */

struct verify_ctx {
    keel_dataset *ds;
    void (*report)(void *ctx, const char *problem);
    void *report_ctx;
    unsigned max_reports;
    uint64_t problems;
    char first[KEEL_ERROR_MSG_MAX];
    int first_code;
};

static void problem(struct verify_ctx *c, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void problem(struct verify_ctx *c, int code, const char *fmt, ...)
{
    char msg[KEEL_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (c->problems == 0) {
        snprintf(c->first, sizeof(c->first), "%s", msg);
        c->first_code = code;
    }
    if (c->report && c->problems < c->max_reports)
        c->report(c->report_ctx, msg);
    c->problems++;
}

/* Where verification stands in one shard. */
struct shard_cursor {
    struct keel__ds_block b;
    uint64_t bfirst; /* first index of b */
    uint64_t next;   /* next index to read */
    int have;        /* b is valid */
    int dead;        /* a structural problem stopped this shard */
    uint32_t nblocks;
    EVP_MD_CTX *sha;
};

/*
 * Walk every record in dataset order (record g is shard g mod N, index
 * g div N), checking checksums and feeding the shard and dataset digests,
 * then compare what was found with the metadata.
 */
static int verify_txn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct verify_ctx *c = ctx;
    keel_dataset *ds = c->ds;
    uint32_t n = ds->info.nshards;
    MDB_dbi dbi = keel_store_dbi(ds->s, KEEL_DB_DATASET_RECORDS);
    struct shard_cursor *sc;
    EVP_MD_CTX *sha = sha_new();
    unsigned char digest[32], k0[BLOCK_KEY_SIZE];
    MDB_cursor *cur;
    MDB_val k = {8, k0}, v;
    uint64_t blocks = 0;
    int rc;

    KEEL_ALLOC_ARRAY(sc, n);
    for (uint32_t sh = 0; sh < n; sh++)
        sc[sh].sha = sha_new();
    for (uint64_t g = 0; g < ds->info.shape.nrecords; g++) {
        uint32_t sh = (uint32_t)(g % n);
        uint64_t index = g / n;
        struct shard_cursor *s = &sc[sh];
        const unsigned char *rec;
        uint64_t sum;
        size_t len;

        if (s->dead)
            continue;
        if (!s->have || index - s->bfirst == s->b.k) {
            unsigned char key[BLOCK_KEY_SIZE];
            MDB_val bk = {sizeof(key), key};

            block_key(key, ds->id, sh, index);
            rc = mdb_get(keel_txn_mdb(txn), dbi, &bk, &v);
            if (rc == 0 && keel__dataset_block_decode(v.mv_data, v.mv_size, &s->b) != 0)
                rc = -1;
            if (rc != 0) {
                problem(c, KEEL_ECORRUPT,
                        "record %" PRIu64 " (shard %" PRIu32 ", index %" PRIu64 "): %s", g, sh,
                        index, rc == -1 ? "its block is malformed" : "no block starts here");
                s->dead = 1;
                continue;
            }
            s->have = 1;
            s->bfirst = index;
            s->nblocks++;
        }
        rec = keel__dataset_block_record(&s->b, (uint32_t)(index - s->bfirst), &len, &sum);
        if (record_checksum(ds->id, sh, index, rec, len) != sum)
            problem(c, KEEL_ECHECKSUM,
                    "record %" PRIu64 " (shard %" PRIu32 ", index %" PRIu64 "): checksum mismatch",
                    g, sh, index);
        else if (keel_record_decode(rec, len, ds->info.shape.nfeatures, &(struct keel_record){0},
                                    NULL) != 0)
            problem(c, KEEL_ECORRUPT,
                    "record %" PRIu64 " (shard %" PRIu32 ", index %" PRIu64 "): malformed", g, sh,
                    index);
        sha_update_record(sha, rec, len);
        sha_update_record(s->sha, rec, len);
    }
    for (uint32_t sh = 0; sh < n; sh++) {
        unsigned char d[32];

        EVP_DigestFinal_ex(sc[sh].sha, d, NULL);
        if (!sc[sh].dead && sc[sh].have && sc[sh].bfirst + sc[sh].b.k != ds->shards[sh].nrecords)
            problem(c, KEEL_ECORRUPT,
                    "shard %" PRIu32 ": its last block ends at record %" PRIu64
                    ", the shard has %" PRIu64,
                    sh, sc[sh].bfirst + sc[sh].b.k, ds->shards[sh].nrecords);
        else if (!sc[sh].dead && memcmp(d, ds->shards[sh].sha, 32) != 0)
            problem(c, KEEL_ECHECKSUM, "shard %" PRIu32 ": SHA-256 mismatch", sh);
        blocks += sc[sh].nblocks;
    }
    sha_final_dataset(sha, &ds->info.shape, digest);
    if (c->problems == 0 && memcmp(digest, ds->info.digest, 32) != 0)
        problem(c, KEEL_ECHECKSUM, "content digest mismatch");

    /* Blocks that no record led to: left over, or misplaced. */
    keel_store_be64(k0, ds->id);
    rc = mdb_cursor_open(keel_txn_mdb(txn), dbi, &cur);
    if (rc == 0) {
        uint64_t seen = 0;

        for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0;
             rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
            if (k.mv_size < 8 || keel_store_load_be64(k.mv_data) != ds->id)
                break;
            seen++;
        }
        mdb_cursor_close(cur);
        if (rc == 0 || rc == MDB_NOTFOUND) {
            rc = 0;
            if (seen != blocks)
                problem(c, KEEL_ECORRUPT,
                        "%" PRIu64 " blocks in the store, %" PRIu64 " belong to the records", seen,
                        blocks);
        }
    }
    if (rc != 0)
        rc = keel_store_mdb_err(err, rc, "dataset '%s': cannot scan blocks", ds->info.name);
    for (uint32_t sh = 0; sh < n; sh++)
        EVP_MD_CTX_free(sc[sh].sha);
    free(sc);
    EVP_MD_CTX_free(sha);
    return rc;
}

int keel_dataset_verify(keel_store *s, const char *name,
                        void (*report)(void *ctx, const char *problem), void *ctx,
                        unsigned max_reports, struct keel_error *err)
{
    struct verify_ctx vc;
    keel_dataset *ds;
    int rc;

    /* The metadata and shard infos (which hold the expected digests), then the walk. */
    if ((rc = keel_dataset_open(s, name, &ds, err)) != 0)
        return rc;
    memset(&vc, 0, sizeof(vc));
    vc.ds = ds;
    vc.report = report;
    vc.report_ctx = ctx;
    vc.max_reports = max_reports;
    rc = keel_store_read(s, verify_txn, &vc, err);
    if (rc == 0 && vc.problems)
        rc = keel_err_set(err, vc.first_code, "dataset '%s': %" PRIu64 " problem%s, the first: %s",
                          name, vc.problems, vc.problems == 1 ? "" : "s", vc.first);
    keel_dataset_close(ds);
    return rc;
}
