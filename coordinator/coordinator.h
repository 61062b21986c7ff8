/*
 * coordinator.h - the coordinator's life: member, candidate, leader.
 *
 * keel_coordinator_run() is a state machine on the calling thread:
 *
 *   JOINING    register /keel/<cluster>/members/coordinator/<id> under a new
 *              lease (kept alive in the background)
 *   CAMPAIGN   campaign in /keel/<cluster>/election/coordinator with that
 *              lease; blocks until leader, the lease is lost, or stop
 *   LEADING    epoch = the leader key's create revision; every tick
 *              ([coordinator] heartbeat) write the fenced leader record
 *              /keel/<cluster>/leader and call hooks->lead(); a tick woken
 *              early (keel_coordinator_wake()) skips the record when it was
 *              written less than half a heartbeat ago
 *   LOST       the lease is gone: step down at once (hooks->deposed), then
 *              register again with a new incarnation and campaign again
 *   STOPPING   resign if leading, revoke the lease (deleting the member key
 *              and the leader key at once), return
 *
 * The lease is watched by its keep-alive thread, which wakes the loop the
 * moment it is lost; a leader also checks the lease against the clock before
 * every tick, so one resumed after a long stop steps down before it writes.
 * Every write the leader makes goes through keel_election_commit() and is
 * refused by etcd once another leader exists.
 *
 * Leader work (assignment, jobs) plugs in through the hooks; they run on the
 * coordinator's thread, one at a time, only between elected() and deposed().
 */
#ifndef KEEL_COORDINATOR_H
#define KEEL_COORDINATOR_H

#include <stdint.h>

#include "election.h"
#include "etcd.h"

typedef struct keel_coordinator keel_coordinator;

enum keel_coordinator_state {
    KEEL_COORD_JOINING = 0,
    KEEL_COORD_CAMPAIGN,
    KEEL_COORD_LEADING,
    KEEL_COORD_LOST,
    KEEL_COORD_STOPPING,
};

struct keel_coordinator_hooks {
    void *user;
    /*
     * Just became leader; the epoch is keel_election_epoch(e).  Load state
     * from etcd here.  Returning KEEL_EEPOCH steps down; any other error is
     * logged and leadership goes on (the next tick runs lead()).
     */
    int (*elected)(void *user, keel_election *e, struct keel_error *err);
    /*
     * One tick of leader work, every [coordinator] heartbeat or sooner after
     * keel_coordinator_wake().  Write only through keel_election_commit().
     * Returning KEEL_EEPOCH steps down; other errors are logged.
     */
    int (*lead)(void *user, keel_election *e, struct keel_error *err);
    /* Leadership ended (`why` says how): stop acting on it at once. */
    void (*deposed)(void *user, const char *why);
};

struct keel_coordinator_opts {
    keel_etcd *etcd;       /* borrowed; outlives the coordinator */
    const char *cluster;   /* [cluster] name */
    const char *id;        /* [node] id */
    const char *address;   /* published in the member record */
    int64_t lease_ttl_s;   /* [etcd] lease_ttl */
    uint64_t heartbeat_ms; /* [coordinator] heartbeat */
    uint64_t join_wait_ms; /* how long an old registration of our id may linger */
};

/* Errors: KEEL_EINVAL for a missing option; -errno when the wake-up fd cannot be made. */
int keel_coordinator_new(const struct keel_coordinator_opts *o,
                         const struct keel_coordinator_hooks *hooks, keel_coordinator **out,
                         struct keel_error *err);

void keel_coordinator_free(keel_coordinator *co);

/*
 * Run until keel_coordinator_stop().  Returns 0 after a clean stop; an error
 * when the coordinator cannot go on: KEEL_EEXIST when another node holds our
 * id (after waiting join_wait_ms for it to expire).  etcd being unavailable
 * is not an error: the loop waits and tries again.
 */
int keel_coordinator_run(keel_coordinator *co, struct keel_error *err);

/* Ask run() to finish.  Async-signal-safe and thread-safe. */
void keel_coordinator_stop(keel_coordinator *co);

/* Run the leader's tick now rather than at the next heartbeat.  Thread-safe. */
void keel_coordinator_wake(keel_coordinator *co);

enum keel_coordinator_state keel_coordinator_state(const keel_coordinator *co);

/* "joining", "campaign", "leading", "lost", "stopping". */
const char *keel_coordinator_state_name(enum keel_coordinator_state s);

#endif
