/*
 * dataset_corrupt.c - test helper: flip one byte of one stored record.
 *
 *   keel-test-dataset-corrupt STORE NAME SHARD INDEX
 *
 * Finds the block of dataset NAME that holds record INDEX of shard SHARD
 * (the layout of docs/datasets.md) and flips the lowest bit of the record's
 * last byte, in place, in one store transaction: what bit rot on the disk
 * would do, for verify and reads to find.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/buf.h"
#include "keel/store.h"
#include "store_int.h"

struct target {
    keel_store *s;
    const char *name;
    uint32_t shard;
    uint64_t index;
};

static int flip(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct target *t = ctx;
    unsigned char nk[1 + 64], key[20], *copy;
    MDB_cursor *cur;
    MDB_val k, v;
    uint64_t id, first;
    uint32_t nrec, start, end;
    size_t nl = strlen(t->name), data;
    int rc;

    if (nl > 64)
        return keel_err_set(err, KEEL_EINVAL, "name too long");
    nk[0] = 'N';
    memcpy(nk + 1, t->name, nl);
    if ((rc = keel_store_get(t->s, txn, KEEL_DB_DATASETS, nk, nl + 1, &v, err)) != 0)
        return rc;
    id = keel_store_load_be64(v.mv_data);
    keel_store_be64(key, id);
    keel_store_be32(key + 8, t->shard);
    keel_store_be64(key + 12, t->index);
    k.mv_size = sizeof(key);
    k.mv_data = key;
    if ((rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(t->s, KEEL_DB_DATASET_RECORDS),
                              &cur)) != 0)
        return keel_store_mdb_err(err, rc, "cursor");
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc != 0 || memcmp(k.mv_data, key, 12) != 0 ||
        keel_store_load_be64((unsigned char *)k.mv_data + 12) > t->index)
        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
    mdb_cursor_close(cur);
    if (rc != 0 || memcmp(k.mv_data, key, 12) != 0)
        return keel_err_set(err, KEEL_ENOTFOUND, "no block holds the record");
    first = keel_store_load_be64((unsigned char *)k.mv_data + 12);
    memcpy(key, k.mv_data, sizeof(key));
    nrec = keel_load_u32le(v.mv_data);
    if (t->index - first >= nrec)
        return keel_err_set(err, KEEL_ENOTFOUND, "record past its block");
    /* k, reserved, k checksums, k + 1 offsets, records */
    data = 8 + 8 * (size_t)nrec + 4 * ((size_t)nrec + 1);
    start = keel_load_u32le((unsigned char *)v.mv_data + 8 + 8 * nrec + 4 * (t->index - first));
    end = keel_load_u32le((unsigned char *)v.mv_data + 8 + 8 * nrec + 4 * (t->index - first + 1));
    if (end <= start || data + end > v.mv_size)
        return keel_err_set(err, KEEL_ECORRUPT, "block malformed");
    copy = keel_malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[data + end - 1] ^= 0x01;
    rc = keel_store_put(t->s, txn, KEEL_DB_DATASET_RECORDS, key, sizeof(key), copy, v.mv_size, err);
    free(copy);
    return rc;
}

int main(int argc, char **argv)
{
    struct target t;
    struct keel_error err;
    int rc;

    if (argc != 5) {
        fprintf(stderr, "usage: %s STORE NAME SHARD INDEX\n", argv[0]);
        return 64;
    }
    keel_error_init(&err);
    t.name = argv[2];
    t.shard = (uint32_t)strtoul(argv[3], NULL, 10);
    t.index = strtoull(argv[4], NULL, 10);
    if (keel_store_open(&t.s, argv[1], NULL, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    rc = keel_store_write(t.s, flip, &t, &err);
    keel_store_close(t.s);
    if (rc != 0) {
        fprintf(stderr, "cannot corrupt: %s\n", err.msg);
        return 1;
    }
    printf("flipped a byte of record %" PRIu64 " of shard %" PRIu32 "\n", t.index, t.shard);
    return 0;
}
