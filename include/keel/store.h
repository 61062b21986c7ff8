/*
 * store.h - a node's LMDB environment and its named databases.
 *
 * Everything a Keel node must not lose lives in one LMDB environment in the
 * node's data directory (files data.mdb and lock.mdb).  Inside it, named
 * databases hold the different kinds of state; enum keel_db lists them (the
 * LMDB handle of each is storage's business, storage/store_int.h).  The byte
 * layout of every database is documented in docs/storage.md.
 *
 * Invariants:
 *  - Every named database exists once the store is open (they are created on
 *    first open).
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
 * are translated inside storage/ (keel_store_mdb_err(), store_int.h).
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
 * A transaction of a store, opaque: it is handed to a keel_store_fn and by
 * keel_store_read_begin(), and passed on to the storage functions that work
 * inside the caller's transaction (keel_snapshot_put, keel_ulog_scan, ...).
 */
typedef struct keel_txn keel_txn;

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

/* The name of a database ("snap_rows"), or "unknown". */
const char *keel_store_db_name(enum keel_db db);

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
 * code (set `err`).  A write callback that fails because the map is full
 * must return -ENOSPC (keel_store_mdb_err() in storage/store_int.h does so
 * for LMDB's code) so that the write is retried with a larger map.  The
 * callback may therefore run several times: it must not keep effects outside
 * the transaction that a second run would repeat (or must undo them itself).
 */
typedef int (*keel_store_fn)(keel_txn *txn, void *ctx, struct keel_error *err);

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
int keel_store_read_begin(keel_store *s, keel_txn **txn, struct keel_error *err);
void keel_store_read_end(keel_store *s, keel_txn *txn);

#endif
