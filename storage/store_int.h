/*
 * store_int.h - the LMDB level under keel/store.h, for the storage code and
 * the tests that inspect or damage a store directly (not a public API).
 *
 * A keel_txn is the LMDB transaction itself: keel_txn_mdb() and keel_txn_of()
 * only change the pointer's type, so a transaction costs nothing extra.
 */
#ifndef KEEL_STORE_INT_H
#define KEEL_STORE_INT_H

#include <stddef.h>
#include <stdint.h>

#include <lmdb.h>

#include "keel/err.h"
#include "keel/store.h"

/* The LMDB transaction of `txn`, and the other way round. */
static inline MDB_txn *keel_txn_mdb(keel_txn *txn)
{
    return (MDB_txn *)txn;
}

static inline keel_txn *keel_txn_of(MDB_txn *txn)
{
    return (keel_txn *)txn;
}

/* The handle of a named database, valid for any transaction of this store. */
MDB_dbi keel_store_dbi(const keel_store *s, enum keel_db db);

/*
 * The LMDB environment, for what this API does not wrap (mdb_env_stat,
 * mdb_env_copy, mdb_reader_list).  Do not close it or change its map size.
 */
MDB_env *keel_store_env(keel_store *s);

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
int keel_store_get(keel_store *s, keel_txn *txn, enum keel_db db, const void *key, size_t klen,
                   MDB_val *val, struct keel_error *err);
int keel_store_put(keel_store *s, keel_txn *txn, enum keel_db db, const void *key, size_t klen,
                   const void *val, size_t vlen, struct keel_error *err);
/* Delete a key; an absent key is not an error. */
int keel_store_del(keel_store *s, keel_txn *txn, enum keel_db db, const void *key, size_t klen,
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
