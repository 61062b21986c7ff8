/*
 * audit_int.h - the audit chain inside the caller's transaction, for
 * storage/ (not a public API; keel/audit.h appends in a transaction of its
 * own).
 */
#ifndef KEEL_AUDIT_INT_H
#define KEEL_AUDIT_INT_H

#include <stdint.h>

#include "keel/audit.h"
#include "keel/err.h"
#include "keel/store.h"

/*
 * Append an event inside the caller's write transaction: the next sequence
 * number, chained to the head.  `job` and `detail` may be NULL; longer ones
 * are cut to the limits.  *seq (may be NULL) gets the record's number.
 */
int keel_audit_append_txn(keel_store *s, keel_txn *txn, unsigned event, const char *job,
                          uint64_t checkpoint, const char *detail, uint64_t *seq,
                          struct keel_error *err);

#endif
