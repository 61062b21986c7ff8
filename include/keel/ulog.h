/*
 * ulog.h - the update log: every applied push of a range, by LSN, in LMDB.
 *
 * A server gives each push it applies to a range a log sequence number (LSN)
 * and appends a record to the `log` database; a restart loads the range's
 * latest snapshot and replays the records after it (see snapshot.h).
 *
 * A record is the push as it arrived (worker id, incarnation, shard, seq,
 * clock, table, keys, rows) plus the range and LSN, in a binary encoding
 * with an XXH3-64 checksum over everything after the checksum field.
 * docs/storage.md gives it byte by byte.  The LMDB key is the range (u32
 * big-endian) then the LSN (u64 big-endian), so a range's records are
 * contiguous and in LSN order.
 *
 * Invariants kept by the encoder and checked by the decoder:
 *  - magic, version known; flags and reserved bytes zero; checksum matches;
 *  - the worker id is 1..KEEL_ID_MAX bytes without NUL, zero-padded to
 *    a multiple of 8;
 *  - row width 1..KEEL_PROTO_MAX_ROW_WIDTH; nkeys keys strictly increasing,
 *    each with the table id in its top 16 bits; the fields fill the record
 *    exactly.
 *
 * Thread safety: the codec keeps no state.  Store functions follow store.h.
 */
#ifndef KEEL_ULOG_H
#define KEEL_ULOG_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/proto.h"
#include "keel/store.h"

#define KEEL_ULOG_MAGIC       UINT32_C(0x474F4C4B) /* the bytes 'K' 'L' 'O' 'G' */
#define KEEL_ULOG_VERSION     1
#define KEEL_ULOG_HEADER_SIZE 72 /* fixed part before the worker id */
#define KEEL_ULOG_KEY_SIZE    12 /* range u32 BE, LSN u64 BE */

/* One log record: where it belongs and the push it holds. */
struct keel_ulog_record {
    uint32_t range;
    uint64_t lsn;
    struct keel_msg_push push;
};

/*
 * Append `n` records in a transaction of their own, committed durably.  An
 * existing (range, LSN) is refused with KEEL_EEXIST.
 */
int keel_ulog_append(keel_store *s, const struct keel_ulog_record *recs, size_t n,
                     struct keel_error *err);

/*
 * Called for each record read; return 0 to go on, a positive value to stop
 * (returned by the reader), or a negative error.  *rec is valid only during
 * the call.
 */
typedef int (*keel_ulog_fn)(const struct keel_ulog_record *rec, void *ctx, struct keel_error *err);

/*
 * Call `fn` for every record of `range` with LSN >= from_lsn, in LSN order,
 * in a read transaction of its own.  A record that does not decode, or whose
 * range/LSN differ from its key, stops the read with its error and "log of
 * range R, LSN L: ..." in the message.
 */
int keel_ulog_read(keel_store *s, uint32_t range, uint64_t from_lsn, keel_ulog_fn fn, void *ctx,
                   struct keel_error *err);

/*
 * Delete the records of `range` with LSN <= upto_lsn (those a snapshot
 * covers), in a transaction of its own; *deleted (may be NULL) gets how many.
 */
int keel_ulog_truncate(keel_store *s, uint32_t range, uint64_t upto_lsn, uint64_t *deleted,
                       struct keel_error *err);

#endif
