/*
 * election.h - the coordinators' election, the leader's epoch, fenced writes.
 *
 * Coordinators campaign in the etcd election
 *     /keel/<cluster>/election/coordinator
 * each with its own lease (its membership lease) and its node id as value.
 * The winner's leader key is <election>/<lease in hex>; the key's create
 * revision is the leader's *epoch*.  Revisions only grow, so every new leader
 * has a higher epoch than all before it.
 *
 * Fencing.  A leader may be deposed without knowing it (stopped past its
 * lease, cut off from etcd).  So every write a coordinator makes goes through
 * keel_election_commit(): one etcd transaction that runs the caller's
 * transaction only if the leader key still exists with create revision ==
 * epoch.  Once the lease expired (deleting the key) or another leader took
 * over, the write changes nothing and returns KEEL_EEPOCH.  The epoch is
 * what the replication work will make every command carry; no receiver
 * checks it yet.
 *
 * Thread safety: a keel_election belongs to one thread (the coordinator's
 * loop), except keel_election_epoch(), which any thread may read.
 */
#ifndef KEEL_ELECTION_H
#define KEEL_ELECTION_H

#include <stdint.h>

#include "etcd.h"

typedef struct keel_election keel_election;

/*
 * An election handle for cluster `cluster`, campaigning with `value` (the
 * node id).  Nothing is sent yet.  Errors: KEEL_EINVAL for an empty name.
 */
int keel_election_new(keel_etcd *c, const char *cluster, const char *value, keel_election **out,
                      struct keel_error *err);

/* Free `e` (without resigning). */
void keel_election_free(keel_election *e);

/* The election's name: /keel/<cluster>/election/coordinator. */
const char *keel_election_name(const keel_election *e);

/*
 * Campaign with `lease` and block until leader, or until `cancel_fd` (>= 0)
 * becomes readable (KEEL_ECANCELED).  Errors: KEEL_ENOTFOUND when the lease is
 * gone; the client's errors when etcd stays unavailable.
 */
int keel_election_campaign(keel_election *e, int64_t lease, int cancel_fd, struct keel_error *err);

/* The epoch while leader, 0 otherwise. */
int64_t keel_election_epoch(const keel_election *e);

/* The leader key while leader, "" otherwise. */
const char *keel_election_key(const keel_election *e);

/*
 * Run `t` fenced: only if our leader key still exists with create revision ==
 * epoch.  `out` (may be NULL) receives the result of `t` itself.
 * Errors: KEEL_EEPOCH when not leader or deposed (the election then counts as
 * not leading: epoch 0); KEEL_EINDOUBT when the outcome is unknown (read back
 * before trying again); the client's errors.
 */
int keel_election_commit(keel_election *e, const keel_etcd_txn *t, struct keel_etcd_txn_result *out,
                         struct keel_error *err);

/* A fenced put of one key; errors as keel_election_commit(). */
int keel_election_put(keel_election *e, const char *key, const void *value, size_t len,
                      struct keel_error *err);

/*
 * Check with etcd that we still lead.  Errors: KEEL_EEPOCH when not (and the
 * election is marked not leading); the client's errors.
 */
int keel_election_verify(keel_election *e, struct keel_error *err);

/* Resign (deleting our leader key) and stop leading.  Harmless when not leading. */
int keel_election_resign(keel_election *e, struct keel_error *err);

/* Stop leading at once without talking to etcd (the lease is lost). */
void keel_election_step_down(keel_election *e);

/*
 * The current leader of cluster `cluster`'s election: its kv (value = node
 * id, create_revision = epoch).  Errors: KEEL_ENOTFOUND when there is none.
 */
int keel_election_current(keel_etcd *c, const char *cluster, struct keel_etcd_kv *out,
                          struct keel_error *err);

#endif
