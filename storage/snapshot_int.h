/*
 * snapshot_int.h - the byte layout of snapshot headers, row blocks and shard
 * entries, shared by snapshot.c and checkpoint.c (not a public API).
 *
 * Every decoder here trusts nothing: sizes are checked against the value's
 * length with overflow-free arithmetic before anything is read, and the
 * returned pointers point into the value (any alignment: read them with
 * memcpy or the keel_load_* helpers).
 */
#ifndef KEEL_SNAPSHOT_INT_H
#define KEEL_SNAPSHOT_INT_H

#include <stddef.h>
#include <stdint.h>

#include <xxhash.h>

#include "keel/err.h"
#include "keel/snapshot.h"
#include "store_int.h"

#define KEEL__SNAP_MAGIC      UINT32_C(0x504E534B) /* 'K' 'S' 'N' 'P' */
#define KEEL__SNAP_VERSION    1
#define KEEL__SNAP_HEAD_SIZE  64
#define KEEL__SNAP_TABLE_SIZE 24
#define KEEL__BLOCK_HEAD_SIZE 24
#define KEEL__SHARD_HEAD_SIZE 32
#define KEEL__SNAP_MAX_TABLES 65536
#define KEEL__SNAP_MAX_SHARDS (1u << 20)

/* One table's entry in the header's directory. */
struct keel__snap_dir {
    uint32_t table_id;
    uint32_t width;
    uint32_t state_width;
    uint32_t nblocks;
    uint64_t nrows;
};

/* A decoded header; `dir` is allocated (free it). */
struct keel__snap_head {
    uint32_t range;
    uint32_t ntables;
    uint32_t nblocks;
    uint32_t nshards;
    uint64_t lsn;
    uint64_t created_ns;
    uint64_t nrows;
    uint64_t digest;
    struct keel__snap_dir *dir;
};

/* A decoded block of rows: pointers into the value. */
struct keel__snap_block {
    uint64_t checksum;
    uint32_t table_id;
    uint32_t width;
    uint32_t state_width;
    uint32_t count;
    const unsigned char *keys;  /* count u64 LE */
    const unsigned char *rows;  /* count * width f32 LE */
    const unsigned char *state; /* count * state_width f32 LE */
};

/* Encode a header into `out` (appended). */
void keel__snap_head_encode(struct keel_buf *out, const struct keel__snap_head *h);

/* Decode and check a header; h->dir is allocated on success only. */
int keel__snap_head_decode(const void *data, size_t len, struct keel__snap_head *h,
                           struct keel_error *err);

/* Bytes of a block holding `count` rows of these widths. */
size_t keel__block_size(uint32_t count, uint32_t width, uint32_t state_width);

/* Rows per block for these widths (at least 1). */
uint32_t keel__block_rows(uint32_t width, uint32_t state_width);

/*
 * Fill `dst` (keel__block_size bytes) with a block of rows [first, first+count)
 * of `t`, checksum included; returns the checksum.
 */
uint64_t keel__block_fill(unsigned char *dst, const struct keel_snap_table *t, uint64_t first,
                          uint32_t count);

/* Decode a block and verify its checksum and sizes. */
int keel__block_decode(const void *data, size_t len, struct keel__snap_block *b,
                       struct keel_error *err);

/* Shard entries of the `shard_pos` database. */
size_t keel__shard_encode(unsigned char *dst, size_t cap, const struct keel_shard_pos *p);
int keel__shard_decode(const void *data, size_t len, struct keel_shard_pos *p, uint64_t *checksum,
                       struct keel_error *err);

/* Block and shard keys: range u32 BE then index/shard u32 BE. */
static inline void keel__snap_key(unsigned char *key, uint32_t range, uint32_t index)
{
    keel_store_be32(key, range);
    keel_store_be32(key + 4, index);
}

/* ---- inside the caller's transaction (storage/ and the tests) ---- */

/* Check the structural rules above, naming the table/row/shard that breaks one. */
int keel_snapshot_check(const struct keel_snapshot *snap, struct keel_error *err);

/*
 * Write `snap` as the range's snapshot, replacing the previous one, and
 * delete the range's log records with LSN <= snap->lsn, all in the caller's
 * write transaction.  created_ns is taken from the clock when 0.
 */
int keel_snapshot_put(keel_store *s, keel_txn *txn, const struct keel_snapshot *snap,
                      struct keel_error *err);

/*
 * Read the header of the range's snapshot (checksum verified).
 * KEEL_ENOTFOUND when the range has none.
 */
int keel_snapshot_stat(keel_store *s, keel_txn *txn, uint32_t range,
                       struct keel_snapshot_info *info, struct keel_error *err);

/* The ranges that have a snapshot, increasing, into *ranges (caller frees). */
int keel_snapshot_ranges(keel_store *s, keel_txn *txn, uint32_t **ranges, size_t *n,
                         struct keel_error *err);

/*
 * Load and verify the range's snapshot into *snap (owned; release it).
 * Every block's checksum, the header digest, the table directory and the key
 * order are checked.  KEEL_ENOTFOUND when the range has none.
 */
int keel_snapshot_load(keel_store *s, keel_txn *txn, uint32_t range, struct keel_snapshot *snap,
                       struct keel_error *err);

#endif
