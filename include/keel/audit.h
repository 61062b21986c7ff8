/*
 * audit.h - the append-only, hash-chained audit log of checkpoint events.
 *
 * Every event on a checkpoint (taken, verified, exported, restored, pruned)
 * appends one record to the `audit` database under the next sequence number
 * (u64 big-endian key, from 1).  Each record holds the SHA-256 of the whole
 * previous record (zeros for the first), and `meta` holds the chain head
 * ("audit_head": the last sequence number and its record's SHA-256), both
 * updated in the same transaction.  So a changed byte, a removed record (in
 * the middle or at the end) or a reordered one is found by
 * keel_audit_verify(), which names the record.  The encoding is in
 * docs/storage.md.
 *
 * Thread safety: as store.h.
 */
#ifndef KEEL_AUDIT_H
#define KEEL_AUDIT_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/store.h"

#define KEEL_AUDIT_MAGIC       UINT32_C(0x4455414B) /* 'K' 'A' 'U' 'D' */
#define KEEL_AUDIT_VERSION     1
#define KEEL_AUDIT_HEADER_SIZE 72
#define KEEL_AUDIT_MAX_JOB     128
#define KEEL_AUDIT_MAX_DETAIL  1024

/* Event kinds; the numbers are on disk.  X(NAME, number, "name"). */
#define KEEL_AUDIT_EVENT_MAP(X)                                                                    \
    X(TAKEN, 1, "taken")                                                                           \
    X(VERIFIED, 2, "verified")                                                                     \
    X(EXPORTED, 3, "exported")                                                                     \
    X(RESTORED, 4, "restored")                                                                     \
    X(PRUNED, 5, "pruned")

enum keel_audit_event {
#define KEEL__AUDIT_ENUM(name, num, str) KEEL_AUDIT_##name = num,
    KEEL_AUDIT_EVENT_MAP(KEEL__AUDIT_ENUM)
#undef KEEL__AUDIT_ENUM
};

/* "taken", ... or "unknown". */
const char *keel_audit_event_name(unsigned event);

/* A decoded record; job and detail are NUL-terminated copies. */
struct keel_audit_record {
    uint64_t seq;
    uint64_t time_ns;
    uint64_t checkpoint;
    unsigned event;
    unsigned char prev[32]; /* SHA-256 of the previous record's bytes */
    unsigned char hash[32]; /* SHA-256 of this record's bytes */
    char job[KEEL_AUDIT_MAX_JOB + 1];
    char detail[KEEL_AUDIT_MAX_DETAIL + 1];
};

/* Append the encoding of `rec` (hash is not encoded; it is computed). */
void keel_audit_encode(struct keel_buf *out, const struct keel_audit_record *rec);

/*
 * Decode and check a record and compute its hash.  Errors: KEEL_ETRUNCATED,
 * KEEL_EMAGIC, KEEL_EVERSION, KEEL_ERESERVED, KEEL_ESTRING, KEEL_ECOUNT
 * (lengths do not fill the record), KEEL_EINVAL (unknown event).
 */
int keel_audit_decode(const void *data, size_t len, struct keel_audit_record *rec,
                      struct keel_error *err);

/*
 * Append an event in a durable transaction of its own: the next sequence
 * number, chained to the head.  `job` and `detail` may be NULL; longer ones
 * are cut to the limits.  *seq (may be NULL) gets the record's number.
 */
int keel_audit_append(keel_store *s, unsigned event, const char *job, uint64_t checkpoint,
                      const char *detail, uint64_t *seq, struct keel_error *err);

/* Called for each record, in order; non-zero stops the walk with that value. */
typedef int (*keel_audit_fn)(const struct keel_audit_record *rec, void *ctx,
                             struct keel_error *err);

/*
 * Walk the whole chain in a read transaction, calling `fn` (may be NULL) for
 * each record that verified, and check it: every record decodes, sequence
 * numbers run 1, 2, 3... without a gap, each record's `prev` is the hash of
 * the one before, and the last matches the head in `meta`.  Returns 0 when
 * all holds (*count gets the number of records), else KEEL_ECORRUPT or
 * KEEL_ECHECKSUM with "audit record N: ..." naming the first bad place.
 */
int keel_audit_verify(keel_store *s, keel_audit_fn fn, void *ctx, uint64_t *count,
                      struct keel_error *err);

#endif
