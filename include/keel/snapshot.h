/*
 * snapshot.h - range snapshots in LMDB, and restore = snapshot + log replay.
 *
 * A snapshot is everything a server needs to bring one key range back: the
 * rows of every table in the range (keyed by the full uint64 key,
 * table_id << 48 | row), each row's optimizer state, the range's LSN (the
 * last update applied into these rows), and the exactly-once table: per data
 * shard, the last position (seq) applied, with the worker id and incarnation
 * that pushed it (the worker progress the range has seen).
 *
 * Layout (docs/storage.md gives every byte): `snap_head` holds one header per
 * range; `snap_rows` holds the rows in blocks of at most
 * KEEL_SNAPSHOT_BLOCK_BYTES; `shard_pos` holds the shard table.  Every block
 * and shard entry carries an XXH3-64 checksum, and the header (itself
 * checksummed) holds a digest of all of them.
 *
 * Invariants:
 *  - A snapshot is written in one LMDB transaction that also removes the
 *    previous one's leftovers and the log records it covers: a reader (or a
 *    restart after a crash at any moment) sees the whole previous snapshot
 *    or the whole new one.
 *  - Tables are in increasing table id; keys strictly increasing within a
 *    table, each with its table id in the top 16 bits; so the snapshot's rows
 *    are in canonical (key) order.  Shards are in increasing shard id.
 *  - Reading verifies every checksum and structural rule; a damaged snapshot
 *    is reported (KEEL_ECHECKSUM / KEEL_ECORRUPT) naming range and block.
 *
 * Thread safety: as store.h; struct keel_snapshot belongs to its caller.
 */
#ifndef KEEL_SNAPSHOT_H
#define KEEL_SNAPSHOT_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/proto.h"
#include "keel/store.h"
#include "keel/ulog.h"

/* A block of rows is at most this big, unless one row alone is bigger. */
#define KEEL_SNAPSHOT_BLOCK_BYTES ((size_t)1 << 20)

#define KEEL_KEY_TABLE(key) ((uint32_t)((key) >> 48))

/* Bytes of one stored row: its key, `width` floats and `state_width` optimizer floats. */
static inline uint64_t keel_row_bytes(uint32_t width, uint32_t state_width)
{
    return 8 + 4 * ((uint64_t)width + state_width);
}

/* The rows of one table in one range. */
struct keel_snap_table {
    uint32_t table_id;    /* < 65536 */
    uint32_t width;       /* floats per row, 1..KEEL_PROTO_MAX_ROW_WIDTH */
    uint32_t state_width; /* optimizer floats per row, 0..KEEL_PROTO_MAX_ROW_WIDTH */
    uint64_t nrows;
    uint64_t *keys; /* nrows keys, strictly increasing */
    float *rows;    /* nrows * width floats; row i at rows[i * width] */
    float *state;   /* nrows * state_width floats, or NULL when state_width is 0 */
};

/*
 * A position id names a data shard and a table: the exactly-once position of
 * a push is kept per (shard, table), the id being the shard for table 1 and
 * the shard plus (table - 1) << 16 for the others.
 */
static inline uint32_t keel_position_id(uint32_t shard, uint32_t table_id)
{
    return ((table_id - 1) << 16) | shard;
}

/* The data shard a position id names. */
static inline uint32_t keel_position_shard(uint32_t id)
{
    return id & 0xffff;
}

/* One entry of the exactly-once table: the last push applied from a shard. */
struct keel_shard_pos {
    uint32_t shard;
    uint64_t seq;         /* the last applied position in the shard */
    uint64_t incarnation; /* of the worker that pushed it */
    char worker_id[KEEL_ID_MAX + 1];
};

/*
 * A snapshot in memory.  As input to keel_snapshot_write() the caller owns
 * every array; from keel_snapshot_load() everything is owned by the struct
 * and freed by keel_snapshot_release().
 */
struct keel_snapshot {
    uint32_t range;
    uint64_t lsn;        /* the last log record applied into these rows */
    uint64_t created_ns; /* wall clock, nanoseconds since the epoch; set by write */
    size_t ntables;
    struct keel_snap_table *tables;
    size_t nshards;
    struct keel_shard_pos *shards; /* increasing shard id */
    int owned;                     /* set by load: release frees the arrays */
};

/* Free what keel_snapshot_load() allocated and zero the struct; safe on a zeroed one. */
void keel_snapshot_release(struct keel_snapshot *snap);

/*
 * Write `snap` as the range's snapshot, replacing the previous one, and
 * delete the range's log records with LSN <= snap->lsn, in a durable
 * transaction of its own (the map grows as needed).  created_ns is taken
 * from the clock when 0.
 */
int keel_snapshot_write(keel_store *s, const struct keel_snapshot *snap, struct keel_error *err);

/*
 * Write snaps[0..n) as keel_snapshot_write() writes one, all in one durable
 * transaction (one commit for a server's every range).  `still` (may be
 * NULL) is asked first, inside the transaction, so after any other writer
 * has committed: when it returns 0 nothing is written (KEEL_ECANCELED); a
 * server passes "the job is still the one these are of".  On any error
 * nothing is written.
 */
int keel_snapshot_write_many(keel_store *s, const struct keel_snapshot *snaps, size_t n,
                             int (*still)(void *ctx), void *ctx, struct keel_error *err);

/* What a snapshot header says, without the rows. */
struct keel_snapshot_info {
    uint32_t range;
    uint64_t lsn;
    uint64_t created_ns;
    uint64_t nrows;
    uint32_t ntables;
    uint32_t nblocks;
    uint32_t nshards;
    uint64_t bytes; /* bytes of keys, rows and state */
};

/*
 * Load and verify the range's snapshot into *snap (owned; release it), in a
 * read transaction of its own.  Every block's checksum, the header digest,
 * the table directory and the key order are checked.  KEEL_ENOTFOUND when
 * the range has none.
 */
int keel_snapshot_read(keel_store *s, uint32_t range, struct keel_snapshot *snap,
                       struct keel_error *err);

/*
 * The range state of a store (every range's snapshot and update log) belongs
 * to one job at a time, named by `owner` (the job's name and spec digest).
 * The meta key "ranges_owner" records it.  keel_snapshot_claim() makes
 * `owner` the owner in one durable transaction:
 *  - no owner recorded, or the same one: nothing else changes (*dropped = 0);
 *  - another owner: every range's snapshot, shard positions and log records
 *    are deleted first, so a new job never starts from the rows or the
 *    exactly-once positions of the one before; *dropped is the number of
 *    ranges that had a snapshot or log records, and the previous owner is
 *    copied into prev (NUL-terminated, cut to prevlen).
 * `owner` is 1-255 bytes.
 */
#define KEEL_SNAPSHOT_OWNER_MAX 255
int keel_snapshot_claim(keel_store *s, const char *owner, char *prev, size_t prevlen,
                        unsigned *dropped, struct keel_error *err);

/*
 * The owner recorded in the store (NUL-terminated, cut to len), in a read
 * transaction of its own; KEEL_ENOTFOUND (and "") when none is.
 */
int keel_snapshot_owner(keel_store *s, char *out, size_t len, struct keel_error *err);

/*
 * Find `key` in a table: its row index, or -1.  Binary search.
 */
int64_t keel_snap_table_find(const struct keel_snap_table *t, uint64_t key);

/* The table with this id in the snapshot, or NULL. */
struct keel_snap_table *keel_snapshot_table(struct keel_snapshot *snap, uint32_t table_id);

/*
 * Apply one logged push to the in-memory snapshot: the caller's optimizer.
 * Return 0 or a negative error (which stops the restore).
 */
typedef int (*keel_apply_fn)(struct keel_snapshot *snap, const struct keel_ulog_record *rec,
                             void *ctx, struct keel_error *err);

/* What a restore did. */
struct keel_restore_stats {
    uint64_t replayed;   /* log records applied */
    uint64_t duplicates; /* records skipped: their (shard, seq) was already applied */
    uint64_t lsn;        /* the range's LSN after replay */
};

/*
 * Restore a range: load its latest snapshot (an empty one with LSN 0 when it
 * has none) and replay its log after the snapshot's LSN in one read
 * transaction.  A record whose seq is at or below the shard's position is a
 * duplicate and skipped; an applied record moves its shard's position (and
 * worker, incarnation) and the snapshot's LSN.  `apply` changes the rows.
 */
int keel_restore(keel_store *s, uint32_t range, struct keel_snapshot *snap, keel_apply_fn apply,
                 void *ctx, struct keel_restore_stats *stats, struct keel_error *err);

/*
 * The LSN up to which the store holds each of ranges 0..n-1 (what a restore
 * would reach: the later of its snapshot's LSN and its last log record's),
 * 0 for a range with nothing stored, in one read transaction.  Headers and
 * log keys only: no rows are read or verified.  On error *lsns is zeroed.
 */
int keel_restore_lsns(keel_store *s, uint64_t *lsns, uint32_t n, struct keel_error *err);

/*
 * Find or add the exactly-once entry of `shard` in an owned snapshot (from
 * keel_snapshot_load or keel_restore), keeping the shards sorted.
 */
struct keel_shard_pos *keel_snapshot_shard(struct keel_snapshot *snap, uint32_t shard);

/*
 * Primary-backup replication: a primary sends a backup a whole range as one
 * opaque byte string (the "packed" form, docs/storage.md), which the backup
 * checks and installs.  The packed form is the snapshot header, then the row
 * blocks and shard entries, each with an explicit length: the same encoders
 * and checksums as in the store, and every decodable string has exactly one
 * encoding.
 */

/*
 * Append `snap` (checked with the same rules as a write) to `out` as one
 * self-contained, checksummed byte string: the range's "packed" form, sent
 * to a backup.  created_ns is packed as it is (0 stays 0).  On error
 * (KEEL_EINVAL) nothing is appended.
 */
int keel_snapshot_pack(const struct keel_snapshot *snap, struct keel_buf *out,
                       struct keel_error *err);

/*
 * Decode `len` bytes from anywhere (the network: trusted in nothing, any
 * alignment) into *snap (owned: release it).  Every length, count, width and
 * checksum is checked against the bytes present (overflow-checked), keys must
 * be strictly increasing within their table and carry its id, shards
 * increasing, blocks split as keel_snapshot_pack() splits them, and no bytes
 * may follow.  `max_rows_bytes` bounds what may be allocated for the rows
 * (keys, rows and state, as keel_snapshot_info.bytes): a larger snapshot is
 * refused with KEEL_EINVAL before anything is allocated (the table and shard
 * arrays are bounded by the bytes present).  Damage is KEEL_ECORRUPT or
 * KEEL_ECHECKSUM, naming what is wrong ("packed snapshot of range 3: block 2:
 * block checksum mismatch"); *snap is zeroed on error.
 */
int keel_snapshot_unpack(const void *data, size_t len, uint64_t max_rows_bytes,
                         struct keel_snapshot *snap, struct keel_error *err);

/*
 * Make `snap` the range's state in the store, in one durable transaction of
 * its own: the range's previous snapshot and EVERY update-log record of the
 * range (any LSN, also above snap->lsn: a backup's divergent tail) are
 * deleted and `snap` written as its snapshot (checked as by
 * keel_snapshot_write(); created_ns taken from the clock when 0).  A restore
 * afterwards gives exactly `snap`.  Nothing changes on error.
 */
int keel_snapshot_install(keel_store *s, const struct keel_snapshot *snap, struct keel_error *err);

#endif
