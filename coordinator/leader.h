/*
 * leader.h - the coordinator leader's work: the range assignment and the
 * jobs, driven from etcd.
 *
 * Plugged into keel_coordinator_run() as its hooks (keel_leader_hooks()).
 * Every tick, and at once when a watched key changes, the leader takes every
 * key of the cluster at one revision (keel/cstate.h) from the cluster view
 * that a watch keeps while it leads (cview.h), or, while that view has not
 * yet reached the newest revision this leadership read or wrote (or after a
 * write of unknown outcome), from one range read; so a tick always sees the
 * leader's own writes.  Then:
 *
 *  - jobs: a job whose spec or state cannot be read is failed, naming why;
 *    the oldest pending job is started (-> running) when no job is running,
 *    so one job runs at a time and later ones wait; for the running job, new
 *    progress reports (jobs/<job>/progress/<n>, keel/progress.h) are applied
 *    to the shard leases, shards of workers that are gone (or came back with
 *    a new incarnation) are freed at their recorded position, free shards are
 *    leased to live workers without one, the shards that changed are written
 *    (jobs/<job>/shards/<n>), and when every shard is done the job is moved
 *    to done; a job that ended (done, failed, stopped) has any shard still
 *    held released;
 *  - assignment: the table is brought up to date with the live servers
 *    (members/server/...) and the replication of the running job (1 when no
 *    job runs): servers that left or restarted leave first (their ranges'
 *    backups promoted), then new ones join, then a settling pass; each
 *    version that results is written.
 *
 * Every write is a transaction through keel_election_commit(), so a deposed
 * leader changes nothing.  Inside it, each key written is compared with the
 * mod revision it was read at, and shard writes with the job state's, so a
 * write based on a stale read (keelctl job stop racing the leader, a write
 * whose outcome was unknown) does nothing and the next tick reads again.
 * A worker's report that is refused (behind, past the end, not the holder)
 * is logged and otherwise ignored.
 *
 * What the leader remembers between ticks (servers' incarnations, the mod
 * revision of each progress report already handled) is only an
 * optimisation and a way to notice restarts; it is dropped when leadership
 * ends, and a new leader starts from etcd alone.
 *
 * Thread safety: the hooks run on the coordinator's thread; the view's
 * watch thread, started while leading, keeps the view and wakes the
 * coordinator.
 */
#ifndef KEEL_LEADER_H
#define KEEL_LEADER_H

#include "coordinator.h"
#include "etcd.h"

typedef struct keel_leader keel_leader;

struct keel_leader_opts {
    keel_etcd *etcd;     /* borrowed; outlives the leader */
    const char *cluster; /* [cluster] name */
    /*
     * While a job runs, primaries are shared again only once failover has
     * left the assignment unchanged this long (and this long after the
     * leadership began): a server that is dying but not yet known dead is
     * found out first.  keel-coordinator uses two lease TTLs; 0: at once.
     */
    uint64_t settle_ms;
    /*
     * While a job runs, a range whose in-sync replicas have all been dead
     * this long is restored from the newest state a live server's store
     * holds of it (keel_assign_restore_from_stores()), and the job rewound
     * to it; until then it waits for one of them to return with its
     * memory's state.  keel-coordinator: [coordinator] restore_wait.
     */
    uint64_t restore_wait_ms;
};

/* Errors: KEEL_EINVAL for a missing option. */
int keel_leader_new(const struct keel_leader_opts *o, keel_leader **out, struct keel_error *err);

/* Stop any watch and free `l`; the coordinator using its hooks must have stopped. */
void keel_leader_free(keel_leader *l);

/* Fill `hooks` with the leader's elected/lead/deposed, `l` as their user. */
void keel_leader_hooks(keel_leader *l, struct keel_coordinator_hooks *hooks);

/*
 * Wake `co` (keel_coordinator_wake()) whenever a member, a job's spec or
 * state, or a progress report changes, so the leader acts at once rather
 * than at the next heartbeat.  Call before keel_coordinator_run().
 */
void keel_leader_attach(keel_leader *l, keel_coordinator *co);

#endif
