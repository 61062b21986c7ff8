/*
 * keys.h - the etcd keys of a Keel cluster, built and parsed in one place.
 *
 * Everything a cluster keeps in etcd is under /keel/<cluster>/:
 *
 *   members/<role>/<id>                  a registered node (member.h)
 *   election/coordinator/<lease hex>     a coordinator's candidacy (election.h)
 *   leader                               the coordinator leader's record
 *   assignment                           the range assignment (assign.h)
 *   jobs/<job>/spec                      a job's spec (jobspec.h)
 *   jobs/<job>/state                     its state (jobs.h)
 *   jobs/<job>/shards/<n>                the leader's record of shard n (jobs.h)
 *   jobs/<job>/progress/<n>              a worker's progress on shard n (progress.h)
 *   jobs/<job>/eval/<pass>/<worker>      a worker's test accuracy after a pass
 *
 * The builders reset `out` and leave the whole key in it, NUL-terminated
 * (keel_key_str() gives it as a C string).  Their arguments are the caller's
 * (ids already checked); they never fail.
 *
 * The parsers take untrusted text (keys come from etcd): a key is recognised
 * only when every part is well formed: ids of 1-KEEL_ID_MAX characters of
 * [A-Za-z0-9_-], numbers in decimal without sign or leading zeros that fit
 * in 32 bits, the candidate's lease 1-16 lowercase hex digits naming 1 to
 * 2^63-1, and nothing
 * after the last part.  Anything else is KEEL_KEY_OTHER.  No state;
 * thread-safe.
 */
#ifndef KEEL_KEYS_H
#define KEEL_KEYS_H

#include <stdint.h>

#include "keel/buf.h"
#include "keel/id.h"

/* The cluster's prefix: "/keel/<cluster>/". */
void keel_key_prefix(struct keel_buf *out, const char *cluster);

/* "/keel/<cluster>/members/", or "/keel/<cluster>/members/<role>/" when `role` is not NULL or "".
 */
void keel_key_members(struct keel_buf *out, const char *cluster, const char *role);
void keel_key_member(struct keel_buf *out, const char *cluster, const char *role, const char *id);

/* The coordinators' election: "/keel/<cluster>/election/coordinator" (no trailing slash). */
void keel_key_election(struct keel_buf *out, const char *cluster);
void keel_key_leader(struct keel_buf *out, const char *cluster);
void keel_key_assignment(struct keel_buf *out, const char *cluster);
/* replicas/<id>: what server `id` holds in sync (its own lease); id NULL: the prefix. */
void keel_key_replicas(struct keel_buf *out, const char *cluster, const char *id);
/* suspects/<id>: a worker saw server `id` refuse connections (its own lease); NULL: the prefix. */
void keel_key_suspect(struct keel_buf *out, const char *cluster, const char *id);

/* "/keel/<cluster>/jobs/<job>/", the prefix of every key of a job. */
void keel_key_job_prefix(struct keel_buf *out, const char *cluster, const char *job);
void keel_key_job_spec(struct keel_buf *out, const char *cluster, const char *job);
void keel_key_job_state(struct keel_buf *out, const char *cluster, const char *job);
void keel_key_job_shard(struct keel_buf *out, const char *cluster, const char *job, uint32_t shard);
void keel_key_job_progress(struct keel_buf *out, const char *cluster, const char *job,
                           uint32_t shard);
void keel_key_job_eval(struct keel_buf *out, const char *cluster, const char *job, uint32_t pass,
                       const char *worker);

/* A built key as a C string. */
static inline const char *keel_key_str(const struct keel_buf *b)
{
    return (const char *)b->buf;
}

enum keel_key_type {
    KEEL_KEY_OTHER = 0,    /* not a key of this list (or malformed) */
    KEEL_KEY_MEMBER,       /* members/<role>/<id>: role, id */
    KEEL_KEY_CANDIDATE,    /* election/coordinator/<lease hex>: lease */
    KEEL_KEY_LEADER,       /* leader */
    KEEL_KEY_ASSIGNMENT,   /* assignment */
    KEEL_KEY_REPLICAS,     /* replicas/<id>: id */
    KEEL_KEY_SUSPECT,      /* suspects/<id>: id */
    KEEL_KEY_JOB_SPEC,     /* jobs/<job>/spec: job */
    KEEL_KEY_JOB_STATE,    /* jobs/<job>/state: job */
    KEEL_KEY_JOB_SHARD,    /* jobs/<job>/shards/<n>: job, num = n */
    KEEL_KEY_JOB_PROGRESS, /* jobs/<job>/progress/<n>: job, num = n */
    KEEL_KEY_JOB_EVAL,     /* jobs/<job>/eval/<pass>/<worker>: job, num = pass, id = worker */
    KEEL_KEY_JOB_OTHER,    /* jobs/<job>/<anything else>: job */
};

struct keel_key {
    enum keel_key_type type;
    char role[KEEL_ID_MAX + 1]; /* MEMBER */
    char id[KEEL_ID_MAX + 1];   /* MEMBER: the member; JOB_EVAL: the worker */
    char job[KEEL_ID_MAX + 1];  /* JOB_* */
    uint32_t num;               /* JOB_SHARD, JOB_PROGRESS: the shard; JOB_EVAL: the pass */
    int64_t lease;              /* CANDIDATE */
};

/*
 * Parse `rel`, the part of a key after "/keel/<cluster>/", into `out`
 * (zeroed first; on KEEL_KEY_OTHER only `type` is set).  Returns out->type.
 */
enum keel_key_type keel_key_parse_rel(const char *rel, struct keel_key *out);

/*
 * Parse the part of a key after "jobs/<job>/" (spec, state, shards/<n>, ...)
 * into out->type (JOB_OTHER for anything else), out->num and out->id; the
 * other fields are left as they are.
 */
enum keel_key_type keel_key_parse_job_rest(const char *rest, struct keel_key *out);

/*
 * The part of `key` after `prefix` ("/keel/<cluster>/", as keel_key_prefix()
 * builds it), or NULL when `key` does not start with it.
 */
const char *keel_key_rel(const char *key, const char *prefix);

/*
 * Parse a whole key of cluster `cluster`: KEEL_KEY_OTHER for a key outside
 * /keel/<cluster>/, else keel_key_parse_rel() of the rest.
 */
enum keel_key_type keel_key_parse(const char *key, const char *cluster, struct keel_key *out);

#endif
