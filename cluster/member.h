/*
 * member.h - cluster membership in etcd.
 *
 * Every node registers itself at
 *     /keel/<cluster>/members/<role>/<id>
 * under a lease of its own, kept alive in the background.  The value is a
 * JSON object:
 *     {"role":"server","id":"s1","address":"127.0.0.1:7001",
 *      "incarnation":42,"start_time_ms":1767225600000,"pid":1234}
 * The key is created only if absent (a transaction comparing its create
 * revision with 0), so two nodes can never hold the same role and id: the
 * second is refused with an error naming the id and the holder.
 *
 * Incarnation: the etcd revision read just before registering, plus one.  It
 * is unique and grows with every registration of the same id, across restarts,
 * without trusting clocks (the previous registration was created at or before
 * the revision read, so its incarnation is at most that revision).
 *
 * A node whose lease is lost must stop acting in its role at once (the
 * on_lost callback tells it), then call keel_member_rejoin(), which registers
 * again under a new lease with a new incarnation.  A node that may go on
 * serving meanwhile (a server) lets keel_member_keep() do that instead: a
 * thread that registers again every time the lease is lost, retrying every
 * second for as long as etcd is away.
 *
 * Thread safety: a keel_member is used by one thread (the node's main loop,
 * or its keeper once keel_member_keep() was called); keel_member_alive() may
 * be called from any thread.
 */
#ifndef KEEL_MEMBER_H
#define KEEL_MEMBER_H

#include <stddef.h>
#include <stdint.h>

#include "etcd.h"

typedef struct keel_member keel_member;

struct keel_member_opts {
    const char *cluster; /* [cluster] name */
    const char *role;    /* "coordinator", "server", "worker": 1-32 of a-z */
    const char *id;      /* [node] id */
    const char *address; /* where peers reach this node; "" when it serves nothing */
    int64_t ttl_s;       /* lease TTL */
    /*
     * When the key is already taken, how long to wait for it to go away before
     * refusing: a node restarted right after a crash finds its previous
     * registration until that lease expires.  0 refuses at once.
     */
    uint64_t wait_ms;
    keel_etcd_lease_lost_fn *on_lost; /* called from the keep-alive thread; may be NULL */
    void *user;
};

/*
 * Register.  Errors: KEEL_EEXIST when another node holds role/id for longer
 * than opts->wait_ms ("member 'coordinator/c1' is already registered by
 * 127.0.0.1:7000 (incarnation 12, pid 99); ..."); KEEL_EINVAL for a bad
 * role or id; the etcd client's errors.
 */
int keel_member_join(keel_etcd *c, const struct keel_member_opts *o, keel_member **out,
                     struct keel_error *err);

/*
 * After the lease was lost: drop it, take a new one and register again with a
 * new incarnation (waiting up to wait_ms for the old key to expire).  On error
 * the member is left without a lease; calling again is allowed.
 */
int keel_member_rejoin(keel_member *m, struct keel_error *err);

/*
 * Keep the registration from now on: whenever the lease is lost (after
 * opts->on_lost has run), a thread calls keel_member_rejoin() every second
 * until it succeeds, however long etcd is away, then `on_rejoined` (may be
 * NULL) with the new incarnation.  The thread ends in keel_member_leave().
 * After this call only that thread rejoins; call it once, from the owner.
 */
void keel_member_keep(keel_member *m, void (*on_rejoined)(void *user, uint64_t incarnation),
                      void *user);

/* 1 while the registration's lease is held (see keel_etcd_lease_alive()). */
int keel_member_alive(const keel_member *m);

/* The lease of the current registration (0 while there is none). */
int64_t keel_member_lease(const keel_member *m);

uint64_t keel_member_incarnation(const keel_member *m);

/* The member's key; valid for the member's life. */
const char *keel_member_key(const keel_member *m);

/*
 * Leave: revoke the lease (deleting the key at once) and free `m`.  Returns
 * the revoke's error, if any; `m` is freed all the same.
 */
int keel_member_leave(keel_member *m, struct keel_error *err);

/* struct keel_member_info, a registration as read back: keel/kv.h. */

/*
 * Decode a member value (JSON from etcd: untrusted).  Errors: KEEL_ECORRUPT
 * naming the field that is missing or of the wrong type.
 */
int keel_member_decode(const void *value, size_t len, struct keel_member_info *out,
                       struct keel_error *err);

/*
 * Every registered member of `role` (NULL or "" for every role) in `cluster`,
 * sorted by key, into a keel_malloc()ed array *out of *n entries, freed with
 * keel_member_list_free().  A value that does not decode is skipped with a
 * warning in the log.
 */
/*
 * Report server `id` as not answering (suspects/<id>, value `by`, under
 * member `m`'s lease), for the coordinator's leader to probe at once.
 * Nothing while `m` holds no lease.  Errors: the etcd client's.
 */
int keel_member_suspect(keel_member *m, keel_etcd *c, const char *cluster, const char *id,
                        const char *by, struct keel_error *err);

int keel_member_list(keel_etcd *c, const char *cluster, const char *role,
                     struct keel_member_info **out, size_t *n, struct keel_error *err);

void keel_member_list_free(struct keel_member_info *list, size_t n);

#endif
