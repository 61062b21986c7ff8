/*
 * replicas.h - what a server reports holding, in etcd at replicas/<id>
 * (under the server's member lease): for each range it holds, the term at
 * which it holds it and its LSN there.
 *
 * A primary reports the ranges it leads at their term; a backup reports a
 * range once it has installed the primary's copy of it (RANGE_COPY) at that
 * term.  The coordinator's leader reads the reports to move a syncing backup
 * into a range's in-sync set (keel_assign_failover()); keelctl status shows
 * each backup's lag from them.
 *
 * A server also reports the ranges it was told to lead but could not: its
 * store holds none of their state while the job has trained (a lost disk),
 * and starting them from the initializer would lose every update silently.
 * The leader then takes the server out of those ranges' in-sync sets, or,
 * when no other replica is in sync, fails the job naming them.
 *
 * A primary that opened a range from its store while the job had trained
 * (a restart, or a store that is older than the updates acknowledged) holds
 * the range's pushes and reports it as restoring, with the floor of its
 * exactly-once positions: for each shard the lowest seq any range it
 * restores has applied.  The leader rewinds the job's shards to that floor
 * (keel_shards_rewind()) and then gives those ranges a new term, which ends
 * the hold: the workers replay their data from there, and every range skips
 * what it already holds.
 *
 * A server also reports the state its store holds of ranges it does not
 * hold in memory (it led or backed them up before, or before a restart): the
 * LSN up to which a restore would bring each.  When every in-sync replica of
 * a range is dead for long enough, the leader makes the live server whose
 * store holds the newest of that state the range's primary, which restores
 * it from its store and is rewound as above.
 *
 * JSON: {"incarnation":7,"lost":[range,...],"ranges":[[range,term,lsn,pledged...],...]},
 * ranges increasing in both lists; a range's entry ends with the ids of the
 * backups its primary pledged (none for a backup's own entry).  With ranges
 * restoring, two more keys: "restoring":[range,...] (each listed in
 * "ranges") and "floor":[seq of shard 0, seq of shard 1, ...].  With state
 * stored of ranges not held, "stored":[[range,lsn],...] (ranges increasing,
 * none listed in "ranges", LSNs at least 1).
 */
#ifndef KEEL_REPLICAS_H
#define KEEL_REPLICAS_H

#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/id.h"
#include "keel/proto.h" /* KEEL_PROTO_NRANGES */

#define KEEL_REPLICAS_MAX_JSON    (256u << 10)
#define KEEL_REPLICAS_MAX_PLEDGED 4    /* backups of one range: replication at most 5 */
#define KEEL_REPLICAS_MAX_SHARDS  4096 /* a job's shards at most (keel/jobspec.h) */

struct keel_replica_report {
    uint64_t incarnation;                   /* of the reporting server's registration */
    uint64_t terms[KEEL_PROTO_NRANGES];     /* 0: the range is not held */
    uint64_t lsns[KEEL_PROTO_NRANGES];      /* LSN at the last report */
    unsigned char lost[KEEL_PROTO_NRANGES]; /* 1: told to lead it, holds none of its state */
    /*
     * A primary's pledges: the backups of a range it leads whose stream is
     * live at the range's term, and that it waits for before it acknowledges
     * any push from the moment it lists them here until they leave the
     * range.  The leader moves a backup into the in-sync set only once its
     * primary pledges it (and the backup holds the copy of the term).
     */
    uint8_t npledged[KEEL_PROTO_NRANGES];
    char pledged[KEEL_PROTO_NRANGES][KEEL_REPLICAS_MAX_PLEDGED][KEEL_ID_MAX + 1];
    /* Ranges restored from the store, pushes held until the shards are rewound. */
    unsigned char restoring[KEEL_PROTO_NRANGES];
    uint32_t nfloor;                          /* shards in floor[]; 0 when nothing restores */
    uint64_t floor[KEEL_REPLICAS_MAX_SHARDS]; /* per shard: the lowest seq restored ranges hold */
    /* Ranges not held (terms[r] == 0): the LSN the store holds of each, 0 for none. */
    uint64_t stored[KEEL_PROTO_NRANGES];
};

/* The canonical JSON of `r` (only ranges with a term). */
void keel_replica_report_encode(const struct keel_replica_report *r, struct keel_buf *out);

/*
 * Decode a report from anywhere: an object with the three keys, and
 * "restoring" and "floor" together or neither, and "stored" or not; at most
 * KEEL_REPLICAS_MAX_JSON bytes; ranges below 256, strictly increasing in
 * each list, terms at least 1, integers within int64, at most
 * KEEL_REPLICAS_MAX_PLEDGED distinct valid ids after an entry's numbers, a
 * restoring range held at a term, at most KEEL_REPLICAS_MAX_SHARDS floor
 * entries.  KEEL_ECORRUPT naming the field; *r is zeroed on error.
 */
int keel_replica_report_decode(const void *data, size_t len, struct keel_replica_report *r,
                               struct keel_error *err);

#endif
