/*
 * store.h - a node's LMDB environment and its named databases.
 *
 * Everything a Keel node must not lose lives in one LMDB environment in the
 * node's data directory (files data.mdb and lock.mdb).  Inside it, named
 * databases hold the different kinds of state; enum keel_db lists them and
 * keel_store_dbi() gives the handle of each.  The byte layout of every
 * database is documented in docs/storage.md.
 *
 * Invariants:
 *  - Every named database exists once the store is open (they are created on
 *    first open), so keel_store_dbi() never fails.
 *  - The `meta` database holds the key "format" with the store's format
 *    version (uint32 little-endian).  A store whose version is not
 *    KEEL_STORE_FORMAT is refused at open with KEEL_EFORMAT.
 *  - Every write goes through keel_store_write(): one LMDB write transaction
 *    that is committed durably (fsync) or not at all.  A crash at any moment
 *    leaves the last committed state.
 *  - The map grows on demand: when a write finds the map full, the
 *    transaction is aborted, the map size doubled (up to the configured
 *    limit) and the write run again from the start.  Only at the limit does
 *    the write fail, with -ENOSPC and a message naming the store and limit.
 *  - Stale reader slots left by killed processes are cleared at open.
 *
 * Errors: functions return 0 or a negative code (keel/err.h); LMDB's codes
 * are translated at this boundary by keel_store_mdb_err().
 *
 * Thread safety: a struct keel_store may be shared by threads.  Writes are
 * serialized (LMDB allows one writer); any number of read transactions may
 * run at once in any threads (the environment uses MDB_NOTLS).  Growing the
 * map waits until no read transaction of this process is open, so keep read
 * transactions short, and never start a write from inside a read callback
 * (that would wait for itself).  Several processes may open the same store.
 */
#ifndef KEEL_STORE_H
#define KEEL_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "keel/err.h"

/* The on-disk format version this build reads and writes. */
#define KEEL_STORE_FORMAT 1u

/*
 * The named databases: X(ENUM, "name").  Append only: the names are on disk.
 *   META            store-wide settings: "format" -> u32 version
 *   SNAP_HEAD       one snapshot header per range (LSN, tables, digests)
 *   SNAP_ROWS       the rows of the current snapshot of each range, in blocks
 *   SHARD_POS       per range and shard: last applied position, worker, incarnation
 *   LOG             the update log: (range, LSN) -> record
 *   CKPT_MANIFEST   signed checkpoint manifests by checkpoint id
 *   CKPT_ROWS       the rows copied into each checkpoint
 *   AUDIT           the hash-chained audit log by sequence number
 *   DATASETS        dataset catalogue (owned by storage/dataset.c)
 *   DATASET_RECORDS dataset shards' records (owned by storage/dataset.c)
 */
#define KEEL_DB_MAP(X)                                                                             \
    X(META, "meta")                                                                                \
    X(SNAP_HEAD, "snap_head")                                                                      \
    X(SNAP_ROWS, "snap_rows")                                                                      \
    X(SHARD_POS, "shard_pos")                                                                      \
    X(LOG, "log")                                                                                  \
    X(CKPT_MANIFEST, "ckpt_manifest")                                                              \
    X(CKPT_ROWS, "ckpt_rows")                                                                      \
    X(AUDIT, "audit")                                                                              \
    X(DATASETS, "datasets")                                                                        \
    X(DATASET_RECORDS, "dataset_records")

enum keel_db {
#define KEEL__DB_ENUM(name, str) KEEL_DB_##name,
    KEEL_DB_MAP(KEEL__DB_ENUM)
#undef KEEL__DB_ENUM
        KEEL_DB__COUNT
};

/* Defaults for struct keel_store_options. */
#define KEEL_STORE_MAP_INITIAL ((size_t)64 << 20) /* 64 MiB */
#define KEEL_STORE_MAP_MAX     ((size_t)1 << 40)  /* 1 TiB of address space */

struct keel_store_options {
    size_t map_initial; /* map size of a new store; 0 = KEEL_STORE_MAP_INITIAL */
    size_t map_max;     /* the map never grows past this; 0 = KEEL_STORE_MAP_MAX */
    int read_only;      /* open without writing (no creation, no format stamp) */
};

typedef struct keel_store keel_store;

/*
 * Open (creating when needed, also its parent directories, mode 0700) the
 * store in directory `dir`.  `opts` may be NULL for the defaults.  On success
 * *out is a handle the caller frees with keel_store_close().
 *
 * A new store is stamped with KEEL_STORE_FORMAT.  An existing store keeps its
 * map size when that is larger than map_initial.
 *
 * Errors: -errno from creating the directory (with its path), KEEL_EFORMAT
 * for an unknown format version, KEEL_ECORRUPT when the files are not an
 * LMDB environment or are damaged, KEEL_ESTORE for other LMDB failures.
 */
int keel_store_open(keel_store **out, const char *dir, const struct keel_store_options *opts,
                    struct keel_error *err);

/* Close the store; no transaction may be open.  NULL is allowed. */
void keel_store_close(keel_store *s);

/* The directory the store was opened in; valid until keel_store_close(). */
const char *keel_store_dir(const keel_store *s);

/* The handle of a named database, valid for any transaction of this store. */
MDB_dbi keel_store_dbi(const keel_store *s, enum keel_db db);

/* The name of a database ("snap_rows"), or "unknown". */
const char *keel_store_db_name(enum keel_db db);

/*
 * The LMDB environment, for what this API does not wrap (mdb_env_stat,
 * mdb_env_copy, mdb_reader_list).  Do not close it or change its map size.
 */
MDB_env *keel_store_env(keel_store *s);

/* The current map size in bytes. */
size_t keel_store_map_size(keel_store *s);

/*
 * Process-wide, optional: make the C library keep the memory of large write
 * transactions for the next one instead of returning it to the kernel after
 * every commit (LMDB allocates a snapshot's dirty pages with malloc; getting
 * them back from the kernel costs a page fault and a zeroed page each, which
 * is most of a big snapshot write).  Sets glibc's trim threshold to `keep`
 * bytes (0: 512 MiB), so up to that much freed memory stays in the process,
 * and its mmap threshold to min(keep, 32 MiB), so that blocks come from the
 * heap.  Meant for a server's start-up, before threads; keelctl and tests
 * need not call it.  Returns 0, or -ENOTSUP without glibc.
 */
int keel_store_tune_malloc(size_t keep);

/*
 * A unit of work inside a transaction.  Return 0 on success or a negative
 * code (set `err`).  A write callback that gets an LMDB error should return
 * keel_store_mdb_err(err, rc, ...) so that a full map (-ENOSPC) is noticed
 * and the write retried with a larger map.  The callback may therefore run
 * several times: it must not keep effects outside the transaction that a
 * second run would repeat (or must undo them itself).
 */
typedef int (*keel_store_fn)(MDB_txn *txn, void *ctx, struct keel_error *err);

/*
 * Run `fn` in a write transaction and commit it durably when `fn` returns 0;
 * abort it (nothing written) when `fn` fails, returning fn's code.  A full
 * map grows and retries as described above; at the limit the result is
 * -ENOSPC ("store 'DIR' is full: ..."), and nothing was written.  A failed
 * commit (a full disk: -ENOSPC, EIO, ...) is reported with the store's path;
 * the previous committed state is intact.  Not allowed on a read-only store
 * (KEEL_EPERM).
 */
int keel_store_write(keel_store *s, keel_store_fn fn, void *ctx, struct keel_error *err);

/*
 * Run `fn` in a read-only transaction, a consistent view of the last commit.
 * Pointers LMDB hands out inside it are valid only until `fn` returns.
 * Returns fn's result, or an error starting the transaction.
 */
int keel_store_read(keel_store *s, keel_store_fn fn, void *ctx, struct keel_error *err);

/*
 * The same as a begin/end pair, for a reader that must keep its view across
 * calls: *txn is valid until keel_store_read_end(), which must be called
 * exactly once (it aborts the transaction) in the same process.  While it is
 * open, the map cannot grow, so writers needing more space wait.
 */
int keel_store_read_begin(keel_store *s, MDB_txn **txn, struct keel_error *err);
void keel_store_read_end(keel_store *s, MDB_txn *txn);

/*
 * Translate LMDB's return code `rc` (non-zero) into a Keel code and record
 * "<printf context>: <mdb_strerror>" in `err`.  Mapping: MDB_NOTFOUND ->
 * KEEL_ENOTFOUND, MDB_KEYEXIST -> KEEL_EEXIST, MDB_MAP_FULL -> -ENOSPC,
 * MDB_CORRUPTED, MDB_PAGE_NOTFOUND, MDB_INVALID -> KEEL_ECORRUPT,
 * MDB_VERSION_MISMATCH -> KEEL_EFORMAT, a positive errno -> -errno, anything
 * else KEEL_ESTORE.  Returns the Keel code.
 */
int keel_store_mdb_err(struct keel_error *err, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Helpers for one value in one database, each inside the caller's
 * transaction.  keel_store_get() points *val at LMDB's copy (valid until the
 * transaction ends); KEEL_ENOTFOUND when the key is absent.
 */
int keel_store_get(keel_store *s, MDB_txn *txn, enum keel_db db, const void *key, size_t klen,
                   MDB_val *val, struct keel_error *err);
int keel_store_put(keel_store *s, MDB_txn *txn, enum keel_db db, const void *key, size_t klen,
                   const void *val, size_t vlen, struct keel_error *err);
/* Delete a key; an absent key is not an error. */
int keel_store_del(keel_store *s, MDB_txn *txn, enum keel_db db, const void *key, size_t klen,
                   struct keel_error *err);

/* Big-endian integers for keys, so that LMDB's byte order is numeric order. */
static inline void keel_store_be16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static inline void keel_store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void keel_store_be64(unsigned char *p, uint64_t v)
{
    keel_store_be32(p, (uint32_t)(v >> 32));
    keel_store_be32(p + 4, (uint32_t)v);
}

static inline uint16_t keel_store_load_be16(const unsigned char *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static inline uint32_t keel_store_load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static inline uint64_t keel_store_load_be64(const unsigned char *p)
{
    return (uint64_t)keel_store_load_be32(p) << 32 | keel_store_load_be32(p + 4);
}

#endif
