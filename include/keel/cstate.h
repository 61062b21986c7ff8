/*
 * cstate.h - a cluster's keys in etcd, read at one revision and sorted out.
 *
 * One range read of /keel/<cluster>/ gives every key the coordinator's
 * leader and keelctl look at; keel_cstate_read() sorts them into:
 *  - the election's leader: the oldest candidate key under
 *    election/coordinator/ (value: its node id; create revision: its epoch),
 *    and the `leader` record;
 *  - the members, from members/<role>/<id> (values that do not decode, or
 *    whose role and id differ from the key's, are skipped with a warning);
 *  - the `assignment` key;
 *  - the jobs, from jobs/<job>/...: spec, state, shards/<n>, progress/<n> and
 *    eval/<pass>/<worker>, with the spec and the state decoded.
 * Everything is one consistent snapshot of etcd (the read's revision).  The
 * values are untrusted: a job whose spec or state does not decode is kept,
 * with the decoder's message in `error`, so callers can report it.
 *
 * A struct keel_cstate owns everything it points to; pointers into it stay
 * valid until keel_cstate_release().  Not thread-safe; one owner.
 */
#ifndef KEEL_CSTATE_H
#define KEEL_CSTATE_H

#include <stddef.h>
#include <stdint.h>

#include "keel/id.h"
#include "keel/jobs.h"
#include "keel/jobspec.h"
#include "keel/kv.h"

/* A numbered key of a job: shards/<num>, progress/<num> or eval/<num>/<worker>. */
struct keel_cstate_item {
    uint32_t num;
    char worker[KEEL_ID_MAX + 1]; /* eval only */
    const struct keel_etcd_kv *kv;
};

struct keel_cstate_job {
    char name[KEEL_ID_MAX + 1];
    const struct keel_etcd_kv *spec_kv;  /* jobs/<job>/spec, NULL when absent */
    const struct keel_etcd_kv *state_kv; /* jobs/<job>/state, NULL when absent */
    int spec_ok;                         /* spec decoded into `spec` */
    int status_ok;                       /* state decoded into `status` */
    struct keel_jobspec spec;
    struct keel_job_status status;
    char error[KEEL_ERROR_MSG_MAX]; /* why the spec or the state is unusable; "" when both ok */
    /* Sorted by num (eval: by num, then worker). */
    struct keel_cstate_item *shards, *progress, *eval;
    size_t nshards, nprogress, neval;
};

struct keel_cstate {
    int64_t revision;                         /* the store revision everything was read at */
    struct keel_etcd_kvs kvs;                 /* every key under the prefix, sorted by key */
    char *prefix;                             /* "/keel/<cluster>/" */
    const struct keel_etcd_kv *leader;        /* the election's leader key, NULL when none */
    const struct keel_etcd_kv *leader_record; /* `leader`, NULL when absent */
    const struct keel_etcd_kv *assignment;    /* `assignment`, NULL when absent */
    struct keel_member_info *members;         /* sorted by role, then id */
    size_t nmembers;
    struct keel_cstate_job *jobs; /* sorted by name */
    size_t njobs;
};

/*
 * Read every key under /keel/<cluster>/ in one request and sort them out.
 * `out` is released by the caller (also after an error).  Errors: the etcd
 * client's (KEEL_EUNAVAILABLE when etcd does not answer).
 */
int keel_cstate_read(keel_etcd *c, const char *cluster, struct keel_cstate *out,
                     struct keel_error *err);

/*
 * Sort out `kvs` (every key under /keel/<cluster>/, as a prefix range read
 * returns them), taking ownership of it (`kvs` is left empty).  What
 * keel_cstate_read() does after its read; never fails.
 */
void keel_cstate_parse(struct keel_cstate *out, const char *cluster, struct keel_etcd_kvs *kvs);

void keel_cstate_release(struct keel_cstate *s);

/* The key's part after "/keel/<cluster>/"; "" for a key outside it. */
const char *keel_cstate_rel(const struct keel_cstate *s, const struct keel_etcd_kv *kv);

/* The job named `name`, or NULL. */
const struct keel_cstate_job *keel_cstate_job(const struct keel_cstate *s, const char *name);

/*
 * The shard table of job `j` (whose spec must have decoded): fresh shards
 * from the spec's shards and epochs, then every shards/<n> key with n below
 * the shard count decoded into its entry (a key past the count is ignored).
 * `mod_revs`, when non-NULL, receives spec.shards entries: each shard key's
 * mod revision, 0 when the key is absent.  On success `t` is the caller's to
 * release with keel_shards_release().  Errors: KEEL_EINVAL when the spec did
 * not decode; KEEL_ECORRUPT naming the shard whose value does not decode
 * ("job 'j1': shard 3: pass: 12 is past the job's 10 epochs"); `t` is then
 * released.
 */
int keel_cstate_shards(const struct keel_cstate_job *j, struct keel_shard_table *t,
                       int64_t *mod_revs, struct keel_error *err);

/* The members of `role`: a pointer to the first and their count (they are contiguous). */
const struct keel_member_info *keel_cstate_members(const struct keel_cstate *s, const char *role,
                                                   size_t *n);

#endif
