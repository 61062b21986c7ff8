/*
 * etcd.h - a client for etcd v3 over its JSON gateway (libcurl + jansson).
 *
 * Invariants and conventions:
 *  - Keys are C strings (Keel's keys are text); values are bytes with a length.
 *    Everything that comes back (keys and values) is NUL-terminated in
 *    addition to its length, so text can be used as a C string.
 *  - Every int64 of etcd (revisions, lease ids, TTLs) is an int64_t parsed
 *    from the decimal string the gateway sends; a lease id above 2^53 is exact.
 *  - Zero values the gateway leaves out (an empty range has no "kvs", a failed
 *    txn no "succeeded", a lost lease no "TTL") read as 0 / empty / false.
 *  - Every reply is untrusted: a field of the wrong type or a missing required
 *    field is KEEL_EETCD with a message naming the call and the field.
 *
 * Errors every call may return (besides those listed with the call):
 *  KEEL_EUNAVAILABLE  no endpoint answered within the retry time
 *                     ([etcd] retry_timeout), or etcd said it is unavailable
 *  KEEL_EINDOUBT      a write that is not idempotent (a txn with a put or a
 *                     delete) was sent, and its outcome is unknown; it is never
 *                     retried blindly: read back to see whether it happened
 *  KEEL_ETLS          the TLS handshake with etcd failed (bad CA, a refused
 *                     client certificate): not retried
 *  KEEL_EETCD         etcd refused the request, or its reply was malformed
 *  KEEL_ECANCELED     the caller's cancel fd became readable (blocking calls)
 *
 * Retries: a call that finds an endpoint unavailable (connection refused or
 * reset, time-out, HTTP 503 / gRPC code 14, "request timed out") moves to the
 * next endpoint and tries again after a backoff (50 ms doubling to 1 s, with
 * jitter) until the retry time has passed.  Reads, plain puts and deletes,
 * lease calls and election calls are retried whatever happened; a txn that
 * writes is retried only when it cannot have reached etcd (the connection was
 * never made).  The endpoint that last answered is used first next time.
 *
 * Thread safety: a keel_etcd handle may be used by any number of threads at
 * once; each call uses its own HTTP connection from a small pool.  Result
 * structs belong to the caller and are not shared.
 */
#ifndef KEEL_ETCD_H
#define KEEL_ETCD_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/config.h"
#include "keel/err.h"
#include "keel/kv.h"

/* keel_etcd, the client handle, is declared in keel/kv.h. */

struct keel_etcd_options {
    const char *endpoints;       /* comma-separated http:// or https:// URLs (required) */
    const char *ca_file;         /* CA that signed etcd's certificate; NULL or "" = system */
    const char *cert_file;       /* client certificate (PEM); NULL or "" = none */
    const char *key_file;        /* its private key (PEM) */
    uint64_t connect_timeout_ms; /* one connection attempt; 0 = 2 s */
    uint64_t request_timeout_ms; /* one HTTP exchange of a unary call; 0 = 5 s */
    uint64_t retry_timeout_ms;   /* how long a call keeps retrying; 0 = 10 s */
    size_t max_message;          /* largest reply or stream message accepted; 0 = 64 MiB */
};

/*
 * Fill `o` from the configuration: [cluster] etcd, the [etcd] timeouts, and
 * the certificate files of [etcd] ca/cert/key, or of [tls] when those are
 * empty.  The strings point into `c`, which must outlive the client's creation.
 */
void keel_etcd_options_from_config(const struct keel_config *c, struct keel_etcd_options *o);

/*
 * Create a client.  Nothing is sent yet: an unreachable etcd shows up at the
 * first call.  Errors: KEEL_EINVAL for an empty or malformed endpoint list, a
 * certificate without its key (or the reverse), -errno for an unreadable file.
 */
int keel_etcd_new(const struct keel_etcd_options *o, keel_etcd **out, struct keel_error *err);

/* Free the client; no call may be in progress and every stream must be stopped. */
void keel_etcd_free(keel_etcd *c);

/*
 * From now on calls give up after `ms` of retrying (0: one attempt per
 * endpoint, no waiting).  Used when shutting down.  Thread-safe.
 */
void keel_etcd_set_retry_timeout(keel_etcd *c, uint64_t ms);

/* ---- key/value ---------------------------------------------------------- */

/* struct keel_etcd_kv and struct keel_etcd_kvs: keel/kv.h. */

/*
 * Put `value` at `key`, attached to `lease` (0 for none).  `revision`, when
 * non-NULL, receives the revision of the write.  Retried on unavailability
 * (the result is the same as one put).
 */
int keel_etcd_put(keel_etcd *c, const char *key, const void *value, size_t len, int64_t lease,
                  int64_t *revision, struct keel_error *err);

/*
 * Read one key into `out` (released by the caller).  `revision`, when
 * non-NULL, receives the store revision.  Errors: KEEL_ENOTFOUND when absent.
 */
int keel_etcd_get(keel_etcd *c, const char *key, struct keel_etcd_kv *out, int64_t *revision,
                  struct keel_error *err);

struct keel_etcd_range_opts {
    int64_t revision; /* read as of this revision; 0 = latest */
    int64_t limit;    /* at most this many keys; 0 = all */
    int keys_only;    /* 1: values are left empty */
    int serializable; /* 1: read the local member's copy (may be stale) */
};

/*
 * Every key that starts with `prefix` ("" means every key), sorted by key.
 * `opts` may be NULL.  `out` is released by the caller.
 */
int keel_etcd_range_prefix(keel_etcd *c, const char *prefix,
                           const struct keel_etcd_range_opts *opts, struct keel_etcd_kvs *out,
                           struct keel_error *err);

/*
 * Delete `key`, or with `prefix` every key starting with it.  `deleted` and
 * `revision` (each may be NULL) receive the number of keys deleted and the
 * revision after the call.  Deleting nothing is not an error.
 */
int keel_etcd_delete(keel_etcd *c, const char *key, int prefix, int64_t *deleted, int64_t *revision,
                     struct keel_error *err);

/*
 * The exclusive end of the range of keys starting with `prefix` (the prefix
 * with its last byte incremented, trailing 0xff bytes dropped), written to
 * `out` (reset first).  An empty result (prefix empty or all 0xff) means "to
 * the end of the key space", which etcd spells as a single NUL byte.
 */
void keel_etcd_prefix_end(const char *prefix, struct keel_buf *out);

/* ---- transactions ------------------------------------------------------- */

enum keel_etcd_target {
    KEEL_ETCD_VERSION = 0, /* number of changes since creation; 0 = absent */
    KEEL_ETCD_CREATE = 1,  /* create revision; 0 = absent */
    KEEL_ETCD_MOD = 2,     /* revision of the last change; 0 = absent */
    KEEL_ETCD_VALUE = 3,   /* the value's bytes */
    KEEL_ETCD_LEASE = 4,   /* lease id; 0 = none */
};

enum keel_etcd_cmp {
    KEEL_ETCD_EQUAL = 0,
    KEEL_ETCD_GREATER = 1,
    KEEL_ETCD_LESS = 2,
    KEEL_ETCD_NOT_EQUAL = 3,
};

enum keel_etcd_branch {
    KEEL_ETCD_THEN = 0, /* run when every compare holds */
    KEEL_ETCD_ELSE = 1, /* run otherwise */
};

/*
 * A transaction under construction: compares, then the operations of each
 * branch, in the order added.  Building never fails (out of memory aborts);
 * etcd refuses more than 128 operations per branch or a key written twice.
 * Not thread-safe; one owner.
 */
typedef struct keel_etcd_txn keel_etcd_txn;

keel_etcd_txn *keel_etcd_txn_new(void);
void keel_etcd_txn_free(keel_etcd_txn *t);

/* Compare a number of `key`: target KEEL_ETCD_VERSION, _CREATE, _MOD or _LEASE. */
void keel_etcd_txn_compare(keel_etcd_txn *t, const char *key, enum keel_etcd_target target,
                           enum keel_etcd_cmp cmp, int64_t number);

/* Compare the value of `key` with `len` bytes at `value`. */
void keel_etcd_txn_compare_value(keel_etcd_txn *t, const char *key, enum keel_etcd_cmp cmp,
                                 const void *value, size_t len);

void keel_etcd_txn_put(keel_etcd_txn *t, enum keel_etcd_branch b, const char *key,
                       const void *value, size_t len, int64_t lease);
void keel_etcd_txn_get(keel_etcd_txn *t, enum keel_etcd_branch b, const char *key, int prefix);
void keel_etcd_txn_delete(keel_etcd_txn *t, enum keel_etcd_branch b, const char *key, int prefix);

/*
 * Run `inner` (its compares and branches, copied now) as one operation of
 * branch `b`: a transaction inside a transaction, as etcd allows.  The
 * fenced commit of election.h is built with it.
 */
void keel_etcd_txn_nest(keel_etcd_txn *t, enum keel_etcd_branch b, const keel_etcd_txn *inner);

/* 1 when the transaction holds a put or a delete (is not idempotent). */
int keel_etcd_txn_writes(const keel_etcd_txn *t);

enum keel_etcd_op {
    KEEL_ETCD_OP_PUT = 1,
    KEEL_ETCD_OP_RANGE,
    KEEL_ETCD_OP_DELETE,
    KEEL_ETCD_OP_TXN
};

struct keel_etcd_txn_result;

struct keel_etcd_op_result {
    enum keel_etcd_op op;
    struct keel_etcd_kvs range;       /* KEEL_ETCD_OP_RANGE: the keys read */
    int64_t deleted;                  /* KEEL_ETCD_OP_DELETE: keys deleted */
    struct keel_etcd_txn_result *txn; /* KEEL_ETCD_OP_TXN: the nested result (owned) */
};

struct keel_etcd_txn_result {
    int succeeded;    /* 1: the compares held and THEN ran; 0: ELSE ran */
    int64_t revision; /* store revision after the txn */
    size_t n;         /* one result per operation of the branch that ran */
    struct keel_etcd_op_result *ops;
};

void keel_etcd_txn_result_release(struct keel_etcd_txn_result *r);

/*
 * Run `t` (which stays the caller's).  `out` (may be NULL) is released by the
 * caller.  Errors: KEEL_EINDOUBT when the txn writes and its outcome is
 * unknown (see the top of this file); KEEL_EETCD when etcd refuses it.
 */
int keel_etcd_txn_commit(keel_etcd *c, const keel_etcd_txn *t, struct keel_etcd_txn_result *out,
                         struct keel_error *err);

/* ---- leases (single calls) ---------------------------------------------- */

/*
 * Grant a lease of `ttl_s` seconds (etcd raises anything below its minimum,
 * 2 s by default).  The id is chosen here at random, so that a grant retried
 * after an unknown outcome is recognised instead of leaking a second lease.
 * `id` and `granted_ttl` (may be NULL) receive the lease and its TTL.
 */
int keel_etcd_grant(keel_etcd *c, int64_t ttl_s, int64_t *id, int64_t *granted_ttl,
                    struct keel_error *err);

/*
 * Refresh lease `id` once; `ttl` receives its renewed TTL in seconds.
 * Errors: KEEL_ENOTFOUND when the lease has expired or never existed (etcd
 * answers without a TTL): the lease is lost for good.
 */
int keel_etcd_keepalive(keel_etcd *c, int64_t id, int64_t *ttl, struct keel_error *err);

/*
 * Revoke lease `id`, deleting every key attached to it.  Errors:
 * KEEL_ENOTFOUND when there is no such lease (already expired or revoked).
 */
int keel_etcd_revoke(keel_etcd *c, int64_t id, struct keel_error *err);

/*
 * Seconds lease `id` has left (whole seconds, rounded down: 0 in its last
 * second).  Errors: KEEL_ENOTFOUND when it has expired.
 */
int keel_etcd_timetolive(keel_etcd *c, int64_t id, int64_t *remaining, struct keel_error *err);

/* ---- a lease kept alive by a background thread -------------------------- */

/*
 * A granted lease with a thread that sends a keep-alive every TTL/3.  The
 * lease is *lost* when etcd answers a keep-alive without a TTL, or when no
 * keep-alive has succeeded for a whole TTL counted from when the last good one
 * was sent (etcd may then have expired it; Keel assumes it did).  A lost lease
 * never comes back: the holder stops acting on it and takes a new one.
 */
typedef struct keel_etcd_lease keel_etcd_lease;

/*
 * Called once, from the keep-alive thread, when the lease is lost; `why` is a
 * sentence for the log.  It must be short and thread-safe (set a flag, wake a
 * loop); it must not free the lease.
 */
typedef void keel_etcd_lease_lost_fn(void *user, int64_t id, const char *why);

/*
 * Grant a lease of `ttl_s` seconds and start keeping it alive.  `on_lost` may
 * be NULL.  Errors: those of keel_etcd_grant(); -errno when the thread cannot
 * start.
 */
int keel_etcd_lease_new(keel_etcd *c, int64_t ttl_s, keel_etcd_lease_lost_fn *on_lost, void *user,
                        keel_etcd_lease **out, struct keel_error *err);

int64_t keel_etcd_lease_id(const keel_etcd_lease *l);

/* The TTL in seconds etcd granted. */
int64_t keel_etcd_lease_ttl(const keel_etcd_lease *l);

/*
 * 1 while the lease is held: not reported lost, and the last good keep-alive
 * was sent less than a TTL ago (checked against the clock on every call, so a
 * process resumed after a long stop sees 0 at once).  Thread-safe.
 */
int keel_etcd_lease_alive(const keel_etcd_lease *l);

/*
 * Stop the keep-alive thread and, when `revoke` is set and the lease is not
 * known lost, revoke it (deleting its keys); then free `l`.  Returns the
 * revoke's error, if any (the lease is freed all the same).
 */
int keel_etcd_lease_free(keel_etcd_lease *l, int revoke, struct keel_error *err);

/* ---- election ----------------------------------------------------------- */

/* A leadership won by keel_etcd_campaign(). */
struct keel_etcd_leader {
    char *name; /* the election's name */
    size_t name_len;
    char *key; /* the leader key: <name>/<lease in hex> */
    size_t key_len;
    int64_t rev;   /* the leader key's create revision */
    int64_t lease; /* the lease it is attached to */
};

void keel_etcd_leader_release(struct keel_etcd_leader *l);

/*
 * Campaign in election `name` with `value`, under the caller's `lease`, and
 * block until leader.  When `cancel_fd` >= 0 and becomes readable, the
 * campaign stops (etcd withdraws the candidacy when the connection closes)
 * and KEEL_ECANCELED is returned; the fd is not read.  Campaigning again with
 * the same lease is harmless (etcd returns the same leader key), so this call
 * retries across endpoint failures until the lease is gone.
 * Errors: KEEL_EETCD when the lease does not exist.
 */
int keel_etcd_campaign(keel_etcd *c, const char *name, const void *value, size_t len, int64_t lease,
                       int cancel_fd, struct keel_etcd_leader *out, struct keel_error *err);

/*
 * The current leader of election `name`: its key, value, create revision and
 * lease.  Errors: KEEL_ENOTFOUND when there is none.
 */
int keel_etcd_election_leader(keel_etcd *c, const char *name, struct keel_etcd_kv *out,
                              struct keel_error *err);

/* Set the leader's value.  Errors: KEEL_EETCD when `l` is no longer the leader. */
int keel_etcd_proclaim(keel_etcd *c, const struct keel_etcd_leader *l, const void *value,
                       size_t len, struct keel_error *err);

/* Give up leadership `l` (deleting its key).  Harmless when already deposed. */
int keel_etcd_resign(keel_etcd *c, const struct keel_etcd_leader *l, struct keel_error *err);

/* ---- streams: watch and observe ------------------------------------------ */

/*
 * A stream runs on its own thread: it connects, reads the gateway's stream of
 * JSON objects (one per line, each at most max_message bytes), calls the
 * callback, and reconnects after a failure (next endpoint, with backoff) until
 * stopped.  Callbacks run on the stream's thread, one at a time; what they are
 * given is valid during the call only.
 */
typedef struct keel_etcd_stream keel_etcd_stream;

enum keel_etcd_event_type { KEEL_ETCD_PUT = 0, KEEL_ETCD_DELETE = 1 };

struct keel_etcd_event {
    enum keel_etcd_event_type type;
    struct keel_etcd_kv kv;      /* a DELETE has the key and mod_revision only */
    struct keel_etcd_kv prev_kv; /* the key before the change, when asked for */
    int has_prev;
};

struct keel_etcd_watch_batch {
    /*
     * 1: `events` are PUTs of every key in the watched range as of `revision`
     * (a fresh listing): replace what you hold.  Sent first when the watch
     * starts at revision 0, and after the history needed to resume was
     * compacted away.
     */
    int reset;
    int64_t revision; /* every change up to this revision has been delivered */
    size_t n;
    struct keel_etcd_event *events; /* in revision order */
};

typedef void keel_etcd_watch_fn(void *user, const struct keel_etcd_watch_batch *b);

struct keel_etcd_watch_opts {
    const char *key;        /* the key, or the prefix when `prefix` is set */
    int prefix;             /* watch every key starting with `key` */
    int64_t start_revision; /* first revision to deliver; 0 = list now, then watch */
    int prev_kv;            /* deliver each event's previous key/value */
};

/*
 * Watch keys.  Changes are delivered exactly once, in order: after a
 * disconnect the watch resumes from the last delivered revision + 1; when
 * that history has been compacted it lists the range again and delivers a
 * reset batch.  Errors: KEEL_EINVAL for a missing key; -errno when the thread
 * cannot start.  Connection problems are never returned: the stream retries.
 */
int keel_etcd_watch_start(keel_etcd *c, const struct keel_etcd_watch_opts *o,
                          keel_etcd_watch_fn *fn, void *user, keel_etcd_stream **out,
                          struct keel_error *err);

/*
 * Called with each leader of election `name`: the one in office when the
 * stream (re)connects, then each new leader or proclaimed value.  Nothing is
 * delivered while there is no leader.
 */
typedef void keel_etcd_observe_fn(void *user, const struct keel_etcd_kv *leader);

int keel_etcd_observe_start(keel_etcd *c, const char *name, keel_etcd_observe_fn *fn, void *user,
                            keel_etcd_stream **out, struct keel_error *err);

/* Stop the stream, wait for its thread (a callback in progress finishes) and free it. */
void keel_etcd_stream_stop(keel_etcd_stream *s);

/* Times the stream has connected (1 after the first connection); for tests and logs. */
unsigned keel_etcd_stream_connects(const keel_etcd_stream *s);

#endif
