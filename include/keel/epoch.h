/*
 * epoch.h - the receiver's side of fencing: keep the highest leader epoch seen.
 *
 * Every command a coordinator sends carries its epoch (the create revision of
 * its leader key in etcd, which only grows from one leader to the next).  A
 * receiver passes each command's epoch to keel_epoch_check(): a newer epoch
 * raises the mark, the current one passes, an older one is refused, so a
 * deposed leader that still believes it leads cannot make anyone act.
 *
 * Invariant: the mark never decreases.  Thread-safe and lock-free: any number
 * of threads may check at once.
 */
#ifndef KEEL_EPOCH_H
#define KEEL_EPOCH_H

#include <stdint.h>

#include "keel/err.h"

struct keel_epoch_tracker {
    int64_t highest; /* atomic; 0 before any epoch was seen */
};

/* Start at `initial` (0, or a mark restored from disk). */
void keel_epoch_init(struct keel_epoch_tracker *t, int64_t initial);

/*
 * Accept `epoch` if it is at least the highest seen, raising the mark to it.
 * Errors: KEEL_EEPOCH ("stale epoch 7, newest seen is 9"); KEEL_EINVAL for an
 * epoch <= 0, which no leader has.
 */
int keel_epoch_check(struct keel_epoch_tracker *t, int64_t epoch, struct keel_error *err);

/* The highest epoch accepted so far. */
int64_t keel_epoch_highest(const struct keel_epoch_tracker *t);

#endif
