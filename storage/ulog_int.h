/*
 * ulog_int.h - the update log inside the caller's transaction, for storage/
 * and the tests (not a public API; keel/ulog.h has the calls that run their
 * own transaction).
 */
#ifndef KEEL_ULOG_INT_H
#define KEEL_ULOG_INT_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/store.h"
#include "keel/ulog.h"

/*
 * Append the encoding of `rec` to `out`.  The push must be valid (the caller
 * built it or decoded it): KEEL_EINVAL otherwise, naming the field.
 */
int keel_ulog_encode(struct keel_buf *out, const struct keel_ulog_record *rec,
                     struct keel_error *err);

/*
 * Decode `len` bytes at `data` (any alignment) into *rec.  The keys and rows
 * are copied into `scratch` (reset first) so that they are aligned; the worker
 * id points into `data`.  *rec is valid while both `data` and `scratch` are
 * unchanged.  Errors: KEEL_ETRUNCATED (shorter than the header), KEEL_EMAGIC,
 * KEEL_EVERSION, KEEL_ERESERVED, KEEL_ECHECKSUM, KEEL_ESTRING,
 * KEEL_EPADDING, KEEL_EROWWIDTH, KEEL_ECOUNT (sizes do not fill the record),
 * KEEL_EUNSORTED, KEEL_EINVAL (a key outside the table); the message gives
 * the byte offset.
 */
int keel_ulog_decode(const void *data, size_t len, struct keel_ulog_record *rec,
                     struct keel_buf *scratch, struct keel_error *err);

/* The LMDB key of (range, lsn) in `key` (KEEL_ULOG_KEY_SIZE bytes). */
void keel_ulog_key(unsigned char *key, uint32_t range, uint64_t lsn);

/*
 * Append `n` records inside the caller's write transaction (group commit:
 * the server collects records and writes them in one keel_store_write()).
 * An existing (range, LSN) is refused with KEEL_EEXIST.  `scratch` is used
 * for the encoding.
 */
int keel_ulog_put(keel_store *s, keel_txn *txn, const struct keel_ulog_record *recs, size_t n,
                  struct keel_buf *scratch, struct keel_error *err);

/*
 * Call `fn` for every record of `range` with LSN >= from_lsn, in LSN order,
 * inside the caller's read (or write) transaction.  A record that does not
 * decode, or whose range/LSN differ from its key, stops the read with its
 * error and "log of range R, LSN L: ..." in the message.
 */
int keel_ulog_scan(keel_store *s, keel_txn *txn, uint32_t range, uint64_t from_lsn, keel_ulog_fn fn,
                   void *ctx, struct keel_error *err);

/*
 * Delete the records of `range` with LSN <= upto_lsn (those a snapshot
 * covers), in the caller's write transaction; *deleted (may be NULL) gets
 * how many.
 */
int keel_ulog_truncate_txn(keel_store *s, keel_txn *txn, uint32_t range, uint64_t upto_lsn,
                           uint64_t *deleted, struct keel_error *err);

/* The highest LSN logged for `range`, or 0 when it has none, in the caller's txn. */
int keel_ulog_last_lsn(keel_store *s, keel_txn *txn, uint32_t range, uint64_t *lsn,
                       struct keel_error *err);

#endif
