/*
 * epoch.c - highest-epoch-seen tracking for receivers of coordinator commands.
 */
#include "keel/epoch.h"

void keel_epoch_init(struct keel_epoch_tracker *t, int64_t initial)
{
    __atomic_store_n(&t->highest, initial < 0 ? 0 : initial, __ATOMIC_RELEASE);
}

int keel_epoch_check(struct keel_epoch_tracker *t, int64_t epoch, struct keel_error *err)
{
    int64_t seen = __atomic_load_n(&t->highest, __ATOMIC_ACQUIRE);

    if (epoch <= 0)
        return keel_err_set(err, KEEL_EINVAL, "epoch %lld is not a leader's epoch",
                            (long long)epoch);
    /* Raise the mark with a CAS loop; a failed CAS reloads `seen`. */
    while (epoch > seen) {
        if (__atomic_compare_exchange_n(&t->highest, &seen, epoch, 1, __ATOMIC_ACQ_REL,
                                        __ATOMIC_ACQUIRE))
            return 0;
    }
    if (epoch < seen)
        return keel_err_set(err, KEEL_EEPOCH, "stale epoch %lld, newest seen is %lld",
                            (long long)epoch, (long long)seen);
    return 0;
}

int64_t keel_epoch_highest(const struct keel_epoch_tracker *t)
{
    return __atomic_load_n(&t->highest, __ATOMIC_ACQUIRE);
}
