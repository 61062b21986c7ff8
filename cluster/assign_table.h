/*
 * assign_table.h - the inside of a keel_assign, shared by the table's own
 * code (cluster/assignment.c: accessors and the JSON form) and the
 * coordinator's rebalancer and failover (coordinator/assign.c,
 * coordinator/failover.c), the only code that changes a table's replica sets.
 */
#ifndef KEEL_ASSIGN_TABLE_H
#define KEEL_ASSIGN_TABLE_H

#include <stdint.h>

#include "keel/assign.h"

#define KEEL_ASSIGN_NONE UINT16_MAX

struct keel_assign {
    uint64_t version;
    uint64_t epoch; /* the epoch of the leader that wrote it; 0: none said */
    unsigned replication;
    size_t nservers;
    char **servers; /* sorted, unique, owned */
    uint8_t count[KEEL_PROTO_NRANGES];
    uint16_t replica[KEEL_PROTO_NRANGES]
                    [KEEL_ASSIGN_MAX_REPLICATION]; /* indexes into servers; [0] is the primary */
    uint64_t term[KEEL_PROTO_NRANGES];  /* version at which the primary was chosen; 0 if empty */
    uint8_t insync[KEEL_PROTO_NRANGES]; /* leading replicas in sync: 1..count, 0 if empty */
};

/* Whether server index `s` is among the first `n` of `set`. */
int keel_assign_in_set(const uint16_t *set, unsigned n, uint16_t s);

/*
 * Check the live ids `live[0..nlive)` as keel_assign_update() documents
 * (valid, distinct, at most KEEL_ASSIGN_MAX_SERVERS): returns a keel_malloc()ed
 * copy of the pointers sorted by strcmp, or NULL with `err` set (KEEL_EINVAL).
 */
const char **keel_assign_sorted_ids(const char *const *live, size_t nlive, struct keel_error *err);

#endif
