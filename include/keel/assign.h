/*
 * assign.h - the assignment table: which servers hold each key range.
 *
 * The key space is cut into KEEL_PROTO_NRANGES (256) ranges (keel/range.h).
 * The assignment table gives every range a replica set: an ordered list of
 * distinct servers, the first of which is the range's primary and the rest
 * its backups.  The coordinator's leader computes the table from the set of
 * live servers and stores it in etcd; servers and workers decode it.
 *
 * For replication each range also has a term, the table version at which
 * its current primary was chosen (0 for an empty range), and an in-sync
 * count: how many leading replicas of its set hold every update the primary
 * acknowledged.  The primary is always in sync, so a non-empty range has
 * 1..count of them; sets are ordered [primary, in-sync backups..., syncing
 * backups...].
 *
 * Invariants of every table keel_assign_update() and its wrappers return or
 * leave behind (not of keel_assign_failover()'s, see there), with N the
 * number of servers in the table and r its replication:
 *  - every range has exactly min(r, N) replicas, all distinct, all in the
 *    table's server list (so with no server every range is empty, and with
 *    fewer servers than r every server holds every range);
 *  - replica balance: every server holds between floor(256 * min(r, N) / N)
 *    and ceil(256 * min(r, N) / N) replicas (one tighter than the promised
 *    ceil(256 * r / N) + 1);
 *  - primary balance: every server leads at most ceil(256 / N) + 1 ranges
 *    after a single join or leave, a replication change, or a call with the
 *    table's own server list.  After several servers left at once, promotion
 *    may pile primaries up; calling keel_assign_update() again with the same
 *    servers ("settling") restores the bound by role swaps alone;
 *  - every replica is in sync (they run while no job does: no data yet);
 *  - the server list is sorted by id (strcmp) and holds no duplicate.
 *
 * What a change guarantees, comparing a range before and after one call of
 * keel_assign_update() (or join/leave/set_replication):
 *  - promotion: when a range's primary leaves and a backup survives, the new
 *    primary is one of its previous backups (it already has the data);
 *  - continuity: when some previous replica of the range is alive, the new
 *    primary was a replica of it before, or the previous primary is alive
 *    (a hand-over: the new primary copies the range from it first).  After
 *    a single join or leave with min(r, N) >= 2 the previous primary even
 *    stays in the set, and the set keeps one of its previous replicas;
 *  - minimal movement: replicas stay where they are unless balance needs
 *    them moved.  A join places replicas only on the joining server, at most
 *    ceil(256 * min(r, N) / N) of them; a leave places one new replica for
 *    each range the leaver held (none when N falls below r), and moves other
 *    replicas only when the replica sets leave a survivor no other way to
 *    reach the balance floor (stats->placed says how many were placed);
 *  - terms: a range whose primary is not the one before (or that was
 *    empty) gets the new version as its term; the others keep theirs;
 *  - the version is incremented exactly when anything but the version
 *    changed (servers, replication, a replica set or an in-sync count).
 * docs/coordinator.md explains the algorithm.
 *
 * A keel_assign is a plain value: not thread-safe, owned by one thread; it
 * may be copied with keel_assign_clone() for another.
 */
#ifndef KEEL_ASSIGN_H
#define KEEL_ASSIGN_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/proto.h"
#include "keel/replicas.h"

#define KEEL_ASSIGN_MAX_REPLICATION 5
#define KEEL_ASSIGN_MAX_SERVERS     1024
#define KEEL_ASSIGN_MAX_JSON        (4u << 20) /* largest encoded table accepted */

typedef struct keel_assign keel_assign;

/* What one change did, for logs and tests. */
struct keel_assign_stats {
    unsigned placed;          /* (range, server) pairs that are new: data to copy */
    unsigned removed;         /* (range, server) pairs that are gone */
    unsigned primary_changes; /* ranges whose primary is not the one before */
    unsigned promoted;        /* of those: ranges whose primary left, backup promoted */
    int changed;              /* the version was incremented */
};

/*
 * A table of version 0 with no servers (every range empty) and replication
 * `replication` (1..KEEL_ASSIGN_MAX_REPLICATION, else NULL).  Free it with
 * keel_assign_free().
 */
keel_assign *keel_assign_new(unsigned replication);

void keel_assign_free(keel_assign *a);

/* A deep copy; free it with keel_assign_free(). */
keel_assign *keel_assign_clone(const keel_assign *a);

uint64_t keel_assign_version(const keel_assign *a);

/*
 * The epoch of the coordinator leader that wrote the table (its election
 * key's create revision), 0 when none was set.  Servers apply a table only
 * under the leader's epoch (server/server.c), so a new leader first writes
 * the table again under its own.  keel_assign_set_epoch() is a change: the
 * version rises when the epoch is not the table's already (returns 1 then,
 * else 0).  Nothing else changes the epoch.
 */
uint64_t keel_assign_epoch(const keel_assign *a);
int keel_assign_set_epoch(keel_assign *a, uint64_t epoch);

/*
 * A new term, at a new version, for every range `r` with ranges[r] set that
 * has replicas, primaries unchanged: the leader's word that it rewound the
 * job's shards for ranges restored from a store (keel/replicas.h).  Returns
 * how many ranges got one (0: the table is unchanged).
 */
unsigned keel_assign_renew_terms(keel_assign *a, const unsigned char *ranges);
unsigned keel_assign_replication(const keel_assign *a);
size_t keel_assign_server_count(const keel_assign *a);

/* Server `i` (< server count) in id order; valid until the table changes. */
const char *keel_assign_server(const keel_assign *a, size_t i);

/*
 * The replica set of `range` (< KEEL_PROTO_NRANGES): stores up to `max` ids,
 * primary first, into `ids` and returns how many replicas the range has.
 * The pointers are valid until the table changes.
 */
size_t keel_assign_replicas(const keel_assign *a, unsigned range, const char **ids, size_t max);

/* The primary of `range`, or NULL when the table has no server. */
const char *keel_assign_primary(const keel_assign *a, unsigned range);

/* The index of server `id` in the table's server list (keel_assign_server()), or -1. */
long keel_assign_find_server(const keel_assign *a, const char *id);

/* Position of server `id` in the replica set of `range` (0 = primary), or -1. */
int keel_assign_position(const keel_assign *a, unsigned range, const char *id);

/* The term of `range`: the version at which its primary was chosen (0 when empty). */
uint64_t keel_assign_term(const keel_assign *a, unsigned range);

/* How many leading replicas of `range` are in sync (0 when empty, else 1..count). */
unsigned keel_assign_insync(const keel_assign *a, unsigned range);

/* 1 when server `id` is among the in-sync replicas of `range`, else 0. */
int keel_assign_is_insync(const keel_assign *a, unsigned range, const char *id);

/* How many ranges server `id` holds, and of those how many as primary (0, 0 when unknown). */
void keel_assign_load(const keel_assign *a, const char *id, unsigned *replicas,
                      unsigned *primaries);

/*
 * Make the table describe the live servers `live[0..nlive)` (ids, any order):
 * servers not in the list leave, new ones join, then replicas are added,
 * removed and moved as the invariants above require.  Leaves are handled
 * before joins, so one call may report several changes of membership.  The
 * version is incremented when the table changed.  `stats` may be NULL.
 * Errors: KEEL_EINVAL for an id that is not 1-64 of [A-Za-z0-9_-], an id
 * listed twice, or more than KEEL_ASSIGN_MAX_SERVERS servers; the table is
 * then unchanged.
 */
int keel_assign_update(keel_assign *a, const char *const *live, size_t nlive,
                       struct keel_assign_stats *stats, struct keel_error *err);

/*
 * One server joins / leaves: keel_assign_update() with the current servers
 * plus / minus `id`.  Errors: as keel_assign_update(); KEEL_EEXIST when
 * joining an id already present, KEEL_ENOTFOUND when an absent id leaves.
 */
int keel_assign_join(keel_assign *a, const char *id, struct keel_assign_stats *stats,
                     struct keel_error *err);
int keel_assign_leave(keel_assign *a, const char *id, struct keel_assign_stats *stats,
                      struct keel_error *err);

/*
 * Change the replication to `replication` (1..KEEL_ASSIGN_MAX_REPLICATION) and
 * add or drop backups to match; primaries stay.  Errors: KEEL_EINVAL.
 */
int keel_assign_set_replication(keel_assign *a, unsigned replication,
                                struct keel_assign_stats *stats, struct keel_error *err);

/*
 * What a server reports holding: terms[r] is the term at which it holds a
 * copy of range r taken from that term's primary, 0 when none.
 */
struct keel_assign_synced {
    const char *id;
    const uint64_t *terms;     /* KEEL_PROTO_NRANGES entries */
    const unsigned char *lost; /* KEEL_PROTO_NRANGES flags, or NULL: told to lead the range,
                                  the server holds none of its state */
    /* The server's whole report, for its pledges as a primary (keel/replicas.h); may be NULL. */
    const struct keel_replica_report *report;
};

/*
 * Change the table while a job runs, when servers hold data: no replica moves
 * for balance, and no range is led by a replica that may lack acknowledged
 * updates.  The new version V is the old one + 1, taken only if anything
 * changed (stats->changed).  For every range:
 *  - an in-sync replica that `synced` reports as having lost the range's
 *    state leaves the in-sync prefix (first among the syncing backups), so
 *    that the range is led by another in-sync replica, live or not (term V
 *    when the primary changes) - unless it is the only one: the caller
 *    fails the job then (keel_assign_lost());
 *  - dead replicas (ids not in `live[0..nlive)`) are removed, keeping the
 *    order; the in-sync count drops by the in-sync ones removed.  When the
 *    primary died, the first live in-sync backup leads, with term V
 *    (stats->promoted);
 *  - when the primary and every in-sync backup are dead, the range waits for
 *    one to return: its set, in-sync count and term stay as they are, and
 *    its dead servers stay in the server list;
 *  - otherwise the last replicas (syncing first, never the primary) are
 *    dropped down to `replication`, and syncing backups appended up to
 *    min(replication, nlive), each on the live server outside the set that
 *    holds the fewest replicas (then primaries, then id order).  An empty
 *    range's first replica leads, in sync, with term V;
 *  - a syncing backup that `synced[0..nsynced)` reports holding at the
 *    range's term (after promotion), and that the range's primary reports
 *    pledged at that term (it waits for it from then on), joins the in-sync
 *    prefix, after the replicas already there.
 * The server list becomes the live servers plus those a waiting range
 * names; the table's replication becomes `replication`.  The balance bounds
 * and the replica count min(r, N) promised above do not hold for the tables
 * this returns: sets may be short (too few live servers) or long (a waiting
 * range after the replication fell), and loads follow failures.  `stats`
 * may be NULL (placed counts syncing backups placed).  Errors: KEEL_EINVAL
 * for a replication outside 1..KEEL_ASSIGN_MAX_REPLICATION, an id refused
 * as by keel_assign_update(), or more than KEEL_ASSIGN_MAX_SERVERS servers
 * to list; the table is then unchanged.
 */
/*
 * Whether range `range` lost its state for good: every replica of its in-sync
 * prefix is reported in `synced` as holding none of it.
 */
int keel_assign_lost(const keel_assign *a, unsigned range, const struct keel_assign_synced *synced,
                     size_t nsynced);

int keel_assign_failover(keel_assign *a, unsigned replication, const char *const *live,
                         size_t nlive, const struct keel_assign_synced *synced, size_t nsynced,
                         struct keel_assign_stats *stats, struct keel_error *err);

/*
 * Restore ranges from stores while a job runs: a range marked in
 * `waited[0..KEEL_PROTO_NRANGES)` (the caller's clock: it has waited long
 * enough) whose primary and in-sync backups are all dead (not in
 * `live[0..nlive)`) is led instead by the live server of the table whose
 * replica report (synced[].report->stored) holds the newest state of it
 * (the highest LSN; then the one leading the fewest ranges, then id order).
 * It leads alone in sync with term V = version + 1, and restores the range
 * from its store (which the job then rewinds to, keel/replicas.h); the
 * range's live syncing backups stay as syncing, its dead replicas leave.  A
 * range marked in `rowless` (the job's model has no row in it: there is no
 * state to lose) goes the same way to the live server leading the fewest
 * ranges, then id order, store or not.  Any other range that no live store
 * holds keeps waiting.  Returns how many ranges moved (the version is
 * raised once when any did); `stats` may be NULL.
 */
unsigned keel_assign_restore_from_stores(keel_assign *a, const char *const *live, size_t nlive,
                                         const struct keel_assign_synced *synced, size_t nsynced,
                                         const unsigned char *waited, const unsigned char *rowless,
                                         struct keel_assign_stats *stats);

/*
 * Whether range `r` has replicas but none of its in-sync ones is in
 * `live[0..nlive)`: it waits for one to return (or to be restored from a
 * store).
 */
int keel_assign_waiting(const keel_assign *a, unsigned r, const char *const *live, size_t nlive);

/*
 * Share the primaries again while a job runs (after keel_assign_failover()
 * has brought backups back in sync): a range whose primary is live and
 * leads more than ceil(P / N) ranges (P ranges led by the N live servers of
 * the table) is led instead by its live in-sync backup that leads the
 * fewest, if that one leads at least two fewer than it: a role swap, no data
 * moves.  The backup was in sync, so it holds every acknowledged update (its
 * primary pledged it, keel/replicas.h).  The old primary stays in sync,
 * first among the backups: it holds every update it acknowledged, and the
 * new primary acknowledges nothing it has not confirmed (its stream starts
 * with a copy of the range at the new term, since it may also hold updates
 * it applied and the new primary never had).  So a swap never leaves a range
 * with fewer in-sync replicas.  Each swapped range's term becomes the new
 * version V = old + 1, taken only when a range was swapped.  Returns the swaps made;
 * `stats` (may be NULL) gets changed and primary_changes.
 */
unsigned keel_assign_balance_primaries(keel_assign *a, const char *const *live, size_t nlive,
                                       struct keel_assign_stats *stats);

/*
 * Append the table's canonical JSON to `out`:
 *   {"epoch":1234,"insync":[2,1,...],"ranges":[[0,2,1],...],"replication":3,
 *    "servers":["s1","s2","s3"],"terms":[7,3,...],"version":7}
 * keys sorted, no whitespace, "epoch" only when it is not 0; "ranges" has KEEL_PROTO_NRANGES arrays
 * of indexes into "servers", primary first; "insync" and "terms" have KEEL_PROTO_NRANGES integers,
 * each range's in-sync count and term.  The same table always gives the same bytes.
 */
void keel_assign_encode(const keel_assign *a, struct keel_buf *out);

/*
 * Decode a table from `len` bytes of JSON at `data`, which may come from
 * anywhere: every field is checked (an object with exactly the six keys
 * above, and "epoch" or not; epoch an integer >= 1; version an integer >= 0;
 * replication 1..KEEL_ASSIGN_MAX_REPLICATION; at most KEEL_ASSIGN_MAX_SERVERS distinct valid ids in
 * increasing order; exactly KEEL_PROTO_NRANGES replica sets, each of 1..KEEL_ASSIGN_MAX_REPLICATION
 * distinct indexes below the server count, or empty when there is no server;
 * in-sync counts 1..count, 0 for an empty set; terms at most the version, 0
 * for an empty set; input at most KEEL_ASSIGN_MAX_JSON bytes).  Neither the
 * balance bound nor min(replication, servers) replicas per range is required
 * of a decoded table: keel_assign_failover() does not keep them.
 * On success *out is a new table the caller frees with keel_assign_free().
 * Errors: KEEL_ECORRUPT naming the field at fault ("assignment: ranges[17][1]:
 * index 9 is not below the server count 4"); *out is then NULL.
 */
int keel_assign_decode(const void *data, size_t len, keel_assign **out, struct keel_error *err);

/* Non-zero when the two tables are equal in everything, version included. */
int keel_assign_equal(const keel_assign *a, const keel_assign *b);

#endif
