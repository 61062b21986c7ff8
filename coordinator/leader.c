/*
 * leader.c - the coordinator leader's work (see leader.h): each tick takes
 * the cluster's keys at one revision from the watched cluster view (or from
 * one range read while the view has not caught up with the leader's own
 * writes), then moves jobs, leases shards and keeps the range assignment,
 * writing every change fenced.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/assign.h"
#include "keel/buf.h"
#include "clock.h"
#include "cview.h"
#include "keel/cstate.h"
#include "election.h"
#include "keel/jobs.h"
#include "keys.h"
#include "leader.h"
#include "log.h"
#include "probe.h"
#include "keel/model.h"
#include "keel/progress.h"
#include "keel/range.h"
#include "keel/replicas.h"

/*
 * Shards written per transaction.  etcd allows 128 compares and 128
 * operations per transaction; each shard takes one of each, the job's state
 * one compare and perhaps one put.
 */
#define SHARDS_PER_TXN 100

struct server_seen {
    char id[KEEL_ID_MAX + 1];
    uint64_t incarnation;
};

struct keel_leader {
    keel_etcd *etcd;
    char *cluster;
    keel_coordinator *co;
    keel_cview *view; /* the cluster's keys, kept by a watch while leading */
    /* Per leadership, dropped when it ends. */
    int64_t newest;              /* the newest revision read or written */
    int read_etcd;               /* the next tick reads etcd, not the view */
    struct server_seen *servers; /* live servers at the last assignment written or checked */
    int waiting_logged;          /* said once that the oldest pending job waits for a server */
    size_t nservers;
    int servers_known;         /* `servers` holds what the last tick saw */
    char job[KEEL_ID_MAX + 1]; /* the job `seen` belongs to */
    int64_t *seen;             /* per shard: mod revision of the last progress handled */
    uint32_t nseen;
    uint64_t settle_ms;       /* keel_leader_opts */
    uint64_t settled_ms;      /* monotonic ms of the last failover change or of taking the lead */
    uint64_t restore_wait_ms; /* keel_leader_opts */
    uint64_t
        waiting_ms[KEEL_PROTO_NRANGES]; /* monotonic ms a range began to wait, 0: it does not */
    char rows_job[KEEL_ID_MAX + 1];     /* the job `rowless` was computed for */
    unsigned char rowless[KEEL_PROTO_NRANGES]; /* ranges its model has no row in */
};

static void wake(keel_leader *l)
{
    if (l->co)
        keel_coordinator_wake(l->co);
}

/* Forget what this leadership learnt. */
static void forget(keel_leader *l)
{
    free(l->servers);
    l->servers = NULL;
    l->nservers = 0;
    l->servers_known = 0;
    free(l->seen);
    l->seen = NULL;
    l->nseen = 0;
    l->job[0] = '\0';
    l->newest = 0;
    l->read_etcd = 1;
    l->settled_ms = 0;
    memset(l->waiting_ms, 0, sizeof(l->waiting_ms));
    l->rows_job[0] = '\0';
}

/*
 * Commit `t` fenced.  Returns 0 with *applied = 1 when its compares held and
 * *applied = 0 when a key had changed since it was read (the next tick reads
 * again); KEEL_EEPOCH when deposed; KEEL_EINDOUBT or another client error
 * otherwise.  `rev` (may be NULL) receives the revision of the write.
 */
static int commit(keel_leader *l, keel_election *e, const keel_etcd_txn *t, const char *what,
                  int *applied, int64_t *rev, struct keel_error *err)
{
    struct keel_etcd_txn_result r;
    int rc;

    *applied = 0;
    rc = keel_election_commit(e, t, &r, err);
    if (rc == KEEL_EINDOUBT)
        l->read_etcd = 1;
    if (rc == KEEL_EINDOUBT) {
        KEEL_LOG_WARN("%s: outcome unknown, reading again: %s", what, err->msg);
        wake(l);
        return rc;
    }
    if (rc != 0)
        return rc;
    *applied = r.succeeded;
    if (r.revision > l->newest)
        l->newest = r.revision; /* the next tick sees this write, or what made it fail */
    if (rev)
        *rev = r.revision;
    keel_etcd_txn_result_release(&r);
    if (!*applied) {
        KEEL_LOG_INFO("%s: changed in etcd since it was read, reading again", what);
        wake(l);
    }
    return 0;
}

/* ---- job states ----------------------------------------------------------- */

/*
 * Write `st` as job `j`'s state if the state key is still as read.  Returns
 * 0 (see *applied), or the error of commit().
 */
static int write_state(keel_leader *l, keel_election *e, const struct keel_cstate_job *j,
                       const struct keel_job_status *st, int *applied, struct keel_error *err)
{
    struct keel_buf key = KEEL_BUF_INIT, val = KEEL_BUF_INIT;
    keel_etcd_txn *t = keel_etcd_txn_new();
    char what[128];
    int rc;

    keel_key_job_state(&key, l->cluster, j->name);
    keel_job_status_encode(st, &val);
    keel_etcd_txn_compare(t, (const char *)key.buf, KEEL_ETCD_MOD, KEEL_ETCD_EQUAL,
                          j->state_kv ? j->state_kv->mod_revision : 0);
    keel_etcd_txn_put(t, KEEL_ETCD_THEN, (const char *)key.buf, val.buf, val.len, 0);
    snprintf(what, sizeof(what), "job '%s': state", j->name);
    rc = commit(l, e, t, what, applied, NULL, err);
    keel_etcd_txn_free(t);
    keel_buf_release(&key);
    keel_buf_release(&val);
    return rc;
}

/* Move job `j` to failed with `reason` (also when its state is unreadable). */
static int fail_job(keel_leader *l, keel_election *e, const struct keel_cstate_job *j,
                    const char *reason, struct keel_error *err)
{
    struct keel_job_status st;
    int applied, rc;

    if (j->status_ok) {
        st = j->status;
        if (keel_job_status_move(&st, KEEL_JOB_FAILED, (uint64_t)keel_clock_wall_ms(), reason,
                                 NULL) != 0)
            return 0; /* already final */
    } else {
        keel_job_status_init(&st, (uint64_t)keel_clock_wall_ms());
        st.state = KEEL_JOB_FAILED;
        snprintf(st.reason, sizeof(st.reason), "%s", reason);
    }
    rc = write_state(l, e, j, &st, &applied, err);
    if (rc == 0 && applied)
        KEEL_LOG_WARN("job '%s': failed: %s", j->name, reason);
    return rc;
}

/* ---- shards --------------------------------------------------------------- */

/* Log what changed in shard `n` from `was` to `now`. */
static void log_shard(const char *job, uint32_t n, const struct keel_shard *was,
                      const struct keel_shard *now)
{
    if (was->owner[0] &&
        (strcmp(was->owner, now->owner) != 0 || was->incarnation != now->incarnation)) {
        if (now->done)
            KEEL_LOG_INFO("job '%s': shard %" PRIu32 " done (by '%s')", job, n, was->owner);
        else if (now->pass > was->pass)
            KEEL_LOG_INFO("job '%s': shard %" PRIu32 " finished pass %" PRIu32
                          " (by '%s'), lease ended",
                          job, n, was->pass, was->owner);
        else
            KEEL_LOG_INFO("job '%s': shard %" PRIu32 " released by '%s' (incarnation %" PRIu64
                          ") at (%" PRIu32 ", %" PRIu32 ")",
                          job, n, was->owner, was->incarnation, now->pass, now->batch);
    }
    if (now->owner[0] &&
        (strcmp(was->owner, now->owner) != 0 || was->incarnation != now->incarnation))
        KEEL_LOG_INFO("job '%s': shard %" PRIu32 " leased to '%s' (incarnation %" PRIu64
                      ") at (%" PRIu32 ", %" PRIu32 ")",
                      job, n, now->owner, now->incarnation, now->pass, now->batch);
    else if (now->owner[0] && (now->pass != was->pass || now->batch != was->batch))
        KEEL_LOG_DEBUG("job '%s': shard %" PRIu32 " at (%" PRIu32 ", %" PRIu32 ") by '%s'", job, n,
                       now->pass, now->batch, now->owner);
}

/*
 * Write the shards of `t` marked in `changed`, and `final_state` (may be
 * NULL) after them, in transactions of at most SHARDS_PER_TXN shards, each
 * comparing the job's state and every shard it writes with their mod
 * revisions as read (`mods`).  `done_marks` (may be NULL) receives, for each
 * shard written, `pending[n]`, the progress mod revision it consumed.
 * Returns 0 when everything was written, 1 when a compare failed (the rest is
 * left for the next tick), or the error of commit().
 */
static int write_shards(keel_leader *l, keel_election *e, const struct keel_cstate_job *j,
                        const struct keel_shard_table *t, const unsigned char *changed,
                        const int64_t *mods, const struct keel_job_status *final_state,
                        const int64_t *pending, struct keel_error *err)
{
    struct keel_buf state_key = KEEL_BUF_INIT, key = KEEL_BUF_INIT, val = KEEL_BUF_INIT;
    uint32_t n = 0;
    int rc = 0;

    keel_key_job_state(&state_key, l->cluster, j->name);
    for (;;) {
        keel_etcd_txn *t_ = keel_etcd_txn_new();
        uint32_t first = n, count = 0;
        char what[128];
        int applied;

        keel_etcd_txn_compare(t_, (const char *)state_key.buf, KEEL_ETCD_MOD, KEEL_ETCD_EQUAL,
                              j->state_kv ? j->state_kv->mod_revision : 0);
        for (; n < t->nshards && count < SHARDS_PER_TXN; n++) {
            if (!changed[n])
                continue;
            keel_key_job_shard(&key, l->cluster, j->name, n);
            keel_buf_reset(&val);
            keel_shard_encode(&t->shards[n], &val);
            keel_etcd_txn_compare(t_, (const char *)key.buf, KEEL_ETCD_MOD, KEEL_ETCD_EQUAL,
                                  mods[n]);
            keel_etcd_txn_put(t_, KEEL_ETCD_THEN, (const char *)key.buf, val.buf, val.len, 0);
            count++;
        }
        if (n >= t->nshards && final_state) {
            keel_buf_reset(&val);
            keel_job_status_encode(final_state, &val);
            keel_etcd_txn_put(t_, KEEL_ETCD_THEN, (const char *)state_key.buf, val.buf, val.len, 0);
        } else if (count == 0) {
            keel_etcd_txn_free(t_);
            break;
        }
        snprintf(what, sizeof(what), "job '%s': shards", j->name);
        rc = commit(l, e, t_, what, &applied, NULL, err);
        keel_etcd_txn_free(t_);
        if (rc != 0)
            break;
        if (!applied) {
            rc = 1;
            break;
        }
        if (pending && l->seen)
            for (uint32_t i = first; i < n && i < l->nseen; i++)
                if (changed[i] && pending[i])
                    l->seen[i] = pending[i];
        if (n >= t->nshards)
            break;
    }
    keel_buf_release(&state_key);
    keel_buf_release(&key);
    keel_buf_release(&val);
    return rc;
}

/* The live workers, as shard leases need them; `refs` has room for s->nmembers. */
static size_t live_workers(const struct keel_cstate *s, struct keel_worker_ref *refs)
{
    const struct keel_member_info *w;
    size_t n;

    w = keel_cstate_members(s, "worker", &n);
    for (size_t i = 0; i < n; i++) {
        refs[i].id = w[i].id;
        refs[i].incarnation = w[i].incarnation;
    }
    return n;
}

/*
 * Whether a shard of `j` may be leased: its value names an owner.  A cheap
 * look at the bytes as keel_shard_encode() writes them, so that ended jobs
 * cost no decoding tick after tick; keel_cstate_shards() decides for real.
 */
static int any_owned(const struct keel_cstate_job *j)
{
    for (size_t i = 0; i < j->nshards; i++)
        if (strstr((const char *)j->shards[i].kv->value, "\"owner\":null") == NULL)
            return 1;
    return 0;
}

/* A job that ended: free any shard still leased, so its workers are free. */
static int release_ended(keel_leader *l, keel_election *e, const struct keel_cstate_job *j,
                         struct keel_error *err)
{
    struct keel_shard_table t;
    struct keel_shard *was;
    unsigned char *changed;
    int64_t *mods;
    int rc = 0;

    if (!j->spec_ok || !any_owned(j))
        return 0;
    mods = keel_calloc(j->spec.shards, sizeof(*mods));
    if (keel_cstate_shards(j, &t, mods, err) != 0) {
        KEEL_LOG_WARN("%s", err->msg);
        free(mods);
        return 0;
    }
    changed = keel_calloc(t.nshards, 1);
    was = keel_calloc(t.nshards, sizeof(*was));
    memcpy(was, t.shards, sizeof(*was) * t.nshards);
    if (keel_shards_assign(&t, NULL, 0, changed) > 0 &&
        (rc = write_shards(l, e, j, &t, changed, mods, NULL, NULL, err)) == 0) {
        for (uint32_t n = 0; n < t.nshards; n++)
            if (changed[n])
                KEEL_LOG_INFO("job '%s' is %s: shard %" PRIu32 " released by '%s' at (%" PRIu32
                              ", %" PRIu32 ")",
                              j->name, keel_job_state_name(j->status.state), n, was[n].owner,
                              t.shards[n].pass, t.shards[n].batch);
    }
    if (rc == 1)
        rc = 0; /* changed under us: the next tick decides again */
    free(was);
    free(changed);
    free(mods);
    keel_shards_release(&t);
    return rc;
}

/* Make `l->seen` track job `j` (a new running job starts with nothing handled). */
static void track_job(keel_leader *l, const struct keel_cstate_job *j)
{
    if (strcmp(l->job, j->name) == 0 && l->nseen == j->spec.shards)
        return;
    free(l->seen);
    l->seen = keel_calloc(j->spec.shards, sizeof(*l->seen));
    l->nseen = j->spec.shards;
    snprintf(l->job, sizeof(l->job), "%s", j->name);
}

/*
 * Apply progress report `p` (key `it`) to `t`.  Returns 1 when the shard
 * changed, 0 when the report changed nothing (a repeat) or was refused
 * (logged).
 */
static int apply_progress(const struct keel_cstate_job *j, struct keel_shard_table *t,
                          const struct keel_cstate_item *it)
{
    struct keel_progress p;
    struct keel_shard *sh;
    struct keel_error e;

    keel_error_init(&e);
    if (keel_progress_decode(it->kv->value, it->kv->value_len, &p, &e) != 0) {
        KEEL_LOG_WARN("job '%s': ignoring progress/%" PRIu32 ": %s", j->name, it->num, e.msg);
        return 0;
    }
    sh = &t->shards[it->num];
    if (keel_shard_seq(p.pass, p.batch) == keel_shard_seq(sh->pass, sh->batch))
        return 0; /* already recorded (or written again after a restart) */
    if (sh->owner[0] != '\0' && p.lease != sh->lease) {
        KEEL_LOG_INFO("job '%s': progress of '%s' on shard %" PRIu32 " under lease %" PRIu64
                      " ignored: the shard's lease is %" PRIu64 " (rewound or leased again)",
                      j->name, p.worker, it->num, p.lease, sh->lease);
        return 0;
    }
    if (keel_shards_progress(t, it->num, p.worker, p.incarnation, p.pass, p.batch, &e) != 0) {
        KEEL_LOG_WARN("job '%s': progress of '%s' (incarnation %" PRIu64 ") refused: %s", j->name,
                      p.worker, p.incarnation, e.msg);
        return 0;
    }
    return 1;
}

/* One tick of the running job `j`: progress, leases, done. */
static int run_job(keel_leader *l, keel_election *e, const struct keel_cstate *s,
                   const struct keel_cstate_job *j, struct keel_error *err)
{
    struct keel_worker_ref *refs;
    struct keel_shard_table t;
    struct keel_job_status done_st;
    struct keel_shard *was;
    unsigned char *changed, *leased;
    int64_t *mods, *pending;
    size_t nrefs;
    int rc, all_done;

    mods = keel_calloc(j->spec.shards, sizeof(*mods));
    if (keel_cstate_shards(j, &t, mods, err) != 0) {
        char reason[KEEL_JOB_REASON_MAX];

        free(mods);
        snprintf(reason, sizeof(reason), "unreadable shard lease in etcd: %.200s", err->msg);
        keel_error_init(err);
        return fail_job(l, e, j, reason, err);
    }
    track_job(l, j);
    changed = keel_calloc(t.nshards, 1);
    pending = keel_calloc(t.nshards, sizeof(*pending));
    was = keel_calloc(t.nshards, sizeof(*was));
    memcpy(was, t.shards, sizeof(*was) * t.nshards);

    /* Reports first: one from a worker that has just gone still counts. */
    for (size_t i = 0; i < j->nprogress; i++) {
        const struct keel_cstate_item *it = &j->progress[i];

        if (it->num >= t.nshards || it->kv->mod_revision == l->seen[it->num])
            continue;
        if (apply_progress(j, &t, it)) {
            changed[it->num] = 1;
            pending[it->num] = it->kv->mod_revision; /* handled once written */
        } else {
            l->seen[it->num] = it->kv->mod_revision;
        }
    }
    refs = keel_calloc(s->nmembers + 1, sizeof(*refs));
    nrefs = live_workers(s, refs);
    leased = keel_calloc(t.nshards, 1); /* keel_shards_assign() clears what it is given */
    keel_shards_assign(&t, refs, nrefs, leased);
    for (uint32_t n = 0; n < t.nshards; n++)
        changed[n] |= leased[n];
    free(leased);
    free(refs);

    all_done = keel_shards_all_done(&t);
    if (all_done) {
        done_st = j->status;
        if (keel_job_status_move(&done_st, KEEL_JOB_DONE, (uint64_t)keel_clock_wall_ms(), NULL,
                                 err) != 0) {
            rc = 0;
            goto out;
        }
    }
    rc = write_shards(l, e, j, &t, changed, mods, all_done ? &done_st : NULL, pending, err);
    if (rc == 1) {
        rc = 0; /* the next tick decides again, and logs what it writes */
        goto out;
    }
    if (rc != 0)
        goto out;
    for (uint32_t n = 0; n < t.nshards; n++)
        if (changed[n])
            log_shard(j->name, n, &was[n], &t.shards[n]);
    if (all_done)
        KEEL_LOG_INFO("job '%s': done: all %" PRIu32 " shards finished %" PRIu32 " epoch%s",
                      j->name, t.nshards, t.epochs, t.epochs == 1 ? "" : "s");
out:
    free(was);
    free(pending);
    free(changed);
    free(mods);
    keel_shards_release(&t);
    return rc;
}

/* ---- jobs ----------------------------------------------------------------- */

/*
 * Sort out every job: fail unreadable ones, release ended ones, start the
 * oldest pending one when none runs, and run the running one.  *running
 * receives the running job (NULL when none), for the replication.
 */
static int jobs_tick(keel_leader *l, keel_election *e, const struct keel_cstate *s,
                     const struct keel_cstate_job **running, struct keel_error *err)
{
    const struct keel_cstate_job *oldest = NULL;
    int rc;

    *running = NULL;
    for (size_t i = 0; i < s->njobs; i++) {
        const struct keel_cstate_job *j = &s->jobs[i];

        if (j->state_kv == NULL)
            continue; /* not a job (yet): submit writes spec and state together */
        if (!j->status_ok || (!j->spec_ok && !keel_job_state_is_final(j->status.state))) {
            if ((rc = fail_job(l, e, j, j->error, err)) != 0)
                return rc;
            continue;
        }
        switch (j->status.state) {
        case KEEL_JOB_RUNNING:
            if (*running == NULL)
                *running = j;
            else
                KEEL_LOG_WARN("job '%s' is running as well as '%s': only one is served", j->name,
                              (*running)->name);
            break;
        case KEEL_JOB_PENDING:
            if (oldest == NULL || j->state_kv->create_revision < oldest->state_kv->create_revision)
                oldest = j;
            break;
        default:
            if ((rc = release_ended(l, e, j, err)) != 0)
                return rc;
            break;
        }
    }
    if (*running == NULL && oldest != NULL) {
        struct keel_job_status st = oldest->status;
        size_t nservers = 0;
        int applied;

        /* The assignment freezes once the job runs: start it on live servers. */
        (void)keel_cstate_members(s, "server", &nservers);
        if (nservers == 0 || s->assignment == NULL) {
            if (!l->waiting_logged)
                KEEL_LOG_INFO("job '%s' waits for a server to register", oldest->name);
            l->waiting_logged = 1;
            return 0;
        }
        l->waiting_logged = 0;
        if (keel_job_status_move(&st, KEEL_JOB_RUNNING, (uint64_t)keel_clock_wall_ms(), NULL,
                                 err) != 0)
            return 0;
        if ((rc = write_state(l, e, oldest, &st, &applied, err)) != 0)
            return rc;
        if (applied) {
            char model[64];

            keel_jobspec_model_string(&oldest->spec, model, sizeof(model));
            KEEL_LOG_INFO("job '%s': started: model %s, dataset '%s' (%" PRIu32
                          " shard%s), %" PRIu32 " epoch%s, replication %u",
                          oldest->name, model, oldest->spec.dataset, oldest->spec.shards,
                          oldest->spec.shards == 1 ? "" : "s", oldest->spec.epochs,
                          oldest->spec.epochs == 1 ? "" : "s", oldest->spec.replication);
            wake(l); /* lease its shards with a fresh read */
            *running = oldest;
        }
        return 0;
    }
    if (*running)
        return run_job(l, e, s, *running, err);
    return 0;
}

/* ---- assignment ----------------------------------------------------------- */

static int server_known(const keel_leader *l, const char *id, uint64_t *inc)
{
    for (size_t i = 0; i < l->nservers; i++)
        if (strcmp(l->servers[i].id, id) == 0) {
            *inc = l->servers[i].incarnation;
            return 1;
        }
    return 0;
}

/* "s1 s2" of the servers in `a` and not in `b` into `out`; "-" when none. */
static void server_diff(const keel_assign *a, const keel_assign *b, struct keel_buf *out)
{
    size_t start = out->len;

    for (size_t i = 0; i < keel_assign_server_count(a); i++) {
        const char *id = keel_assign_server(a, i);
        size_t k;

        for (k = 0; k < keel_assign_server_count(b); k++)
            if (strcmp(keel_assign_server(b, k), id) == 0)
                break;
        if (k == keel_assign_server_count(b))
            keel_buf_addf(out, "%s%s", out->len > start ? " " : "", id);
    }
    if (out->len == start)
        keel_buf_add_str(out, "-");
}

/* Write `a` if the key is still at *mod; then *mod is the write's revision. */
static int write_assignment(keel_leader *l, keel_election *e, const keel_assign *before,
                            const keel_assign *a, const struct keel_assign_stats *st,
                            const char *why, int64_t *mod, struct keel_error *err)
{
    struct keel_buf key = KEEL_BUF_INIT, val = KEEL_BUF_INIT, left = KEEL_BUF_INIT,
                    joined = KEEL_BUF_INIT;
    keel_etcd_txn *t = keel_etcd_txn_new();
    int64_t rev = 0;
    int applied, rc;

    keel_key_assignment(&key, l->cluster);
    keel_assign_encode(a, &val);
    keel_etcd_txn_compare(t, (const char *)key.buf, KEEL_ETCD_MOD, KEEL_ETCD_EQUAL, *mod);
    keel_etcd_txn_put(t, KEEL_ETCD_THEN, (const char *)key.buf, val.buf, val.len, 0);
    rc = commit(l, e, t, "assignment", &applied, &rev, err);
    if (rc == 0 && !applied)
        rc = 1;
    if (rc == 0) {
        *mod = rev;
        server_diff(before, a, &left);
        server_diff(a, before, &joined);
        KEEL_LOG_INFO("assignment version %" PRIu64 " (%s): %zu server%s, replication %u; "
                      "left: %s; joined: %s; %u replicas placed, %u removed, %u primaries "
                      "changed (%u promoted)",
                      keel_assign_version(a), why, keel_assign_server_count(a),
                      keel_assign_server_count(a) == 1 ? "" : "s", keel_assign_replication(a),
                      (const char *)left.buf, (const char *)joined.buf, st->placed, st->removed,
                      st->primary_changes, st->promoted);
    }
    keel_etcd_txn_free(t);
    keel_buf_release(&key);
    keel_buf_release(&val);
    keel_buf_release(&left);
    keel_buf_release(&joined);
    return rc;
}

/* Whether a job is running: its rows live on the replicas it started with. */
static int a_job_running(const struct keel_cstate *s)
{
    for (size_t i = 0; i < s->njobs; i++)
        if (s->jobs[i].status_ok && s->jobs[i].spec_ok &&
            s->jobs[i].status.state == KEEL_JOB_RUNNING)
            return 1;
    return 0;
}

/* The live servers' replica reports, from the keys replicas/<id> of their current registration. */
struct reports {
    struct keel_replica_report *r;
    struct keel_assign_synced *synced;
    size_t n;
};

static void reports_read(const struct keel_cstate *s, const struct keel_member_info *srv,
                         size_t nsrv, struct reports *out)
{
    memset(out, 0, sizeof(*out));
    out->r = keel_calloc(nsrv + 1, sizeof(*out->r));
    out->synced = keel_calloc(nsrv + 1, sizeof(*out->synced));
    for (size_t i = 0; i < s->kvs.n; i++) {
        const struct keel_etcd_kv *kv = &s->kvs.kvs[i];
        struct keel_key k;
        size_t m;

        if (keel_key_parse_rel(kv->key + strlen(s->prefix), &k) != KEEL_KEY_REPLICAS)
            continue;
        for (m = 0; m < nsrv && strcmp(srv[m].id, k.id) != 0; m++)
            ;
        if (m == nsrv ||
            keel_replica_report_decode(kv->value, kv->value_len, &out->r[out->n], NULL) != 0 ||
            out->r[out->n].incarnation != srv[m].incarnation)
            continue; /* gone, unreadable, or from before a restart */
        out->synced[out->n].id = srv[m].id;
        out->synced[out->n].terms = out->r[out->n].terms;
        out->synced[out->n].lost = out->r[out->n].lost;
        out->synced[out->n].report = &out->r[out->n];
        out->n++;
    }
}

static void reports_release(struct reports *r)
{
    free(r->r);
    free(r->synced);
}

/* Whether a live server reports a range restored from its store, waiting for a rewind. */
static int reports_restoring(const struct reports *r)
{
    for (size_t i = 0; i < r->n; i++)
        if (r->r[i].nfloor > 0)
            return 1;
    return 0;
}

/*
 * For ranges that a primary restored from its store while `j` trains (its
 * replica report lists them as restoring, at the range's current term), the
 * floor of the shard positions they hold, over every such report, into
 * floor[0..nshards) (UINT64_MAX where no report says); valid[r] marks the
 * ranges.  Returns how many ranges.
 */
static unsigned restored_floor(const keel_assign *a, const struct reports *rep, uint32_t nshards,
                               uint64_t *floor, unsigned char *valid)
{
    unsigned n = 0;

    for (uint32_t k = 0; k < nshards; k++)
        floor[k] = UINT64_MAX;
    for (size_t i = 0; i < rep->n; i++) {
        const struct keel_replica_report *p = &rep->r[i];
        int any = 0;

        if (p->nfloor == 0)
            continue;
        for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
            const char *primary = keel_assign_primary(a, r);

            if (!p->restoring[r] || p->terms[r] != keel_assign_term(a, r) || primary == NULL ||
                strcmp(primary, rep->synced[i].id) != 0)
                continue;
            valid[r] = 1;
            any = 1;
            n++;
        }
        for (uint32_t k = 0; any && k < nshards; k++) {
            uint64_t f = k < p->nfloor ? p->floor[k] : 0;

            if (f < floor[k])
                floor[k] = f;
        }
    }
    return n;
}

/*
 * Ranges restored from a store hold their pushes until the running job's
 * shards are rewound to the positions they hold (keel/replicas.h): rewind
 * the shards (every lease gets a new token, so nothing pushed under the old
 * ones lands), then give those ranges a new term, which ends their hold.
 * Two writes, in that order; a leader that dies between them leaves the
 * reports in place, and the next one rewinds again.  Returns 1 when it
 * wrote (the tick ends there), 0 when nothing restores, or a fencing error.
 */
static int rewind_tick(keel_leader *l, keel_election *e, const struct keel_cstate *s,
                       struct keel_error *err)
{
    const struct keel_cstate_job *j = NULL;
    const struct keel_member_info *srv;
    unsigned char valid[KEEL_PROTO_NRANGES] = {0}, *changed = NULL;
    struct keel_shard_table t = {0};
    struct keel_shard *was = NULL;
    struct reports rep;
    keel_assign *a = NULL, *before = NULL;
    uint64_t *floor = NULL;
    int64_t *mods = NULL, amod;
    size_t nsrv;
    unsigned nranges, moved;
    int rc = 0;

    for (size_t i = 0; i < s->njobs && j == NULL; i++)
        if (s->jobs[i].status_ok && s->jobs[i].spec_ok &&
            s->jobs[i].status.state == KEEL_JOB_RUNNING)
            j = &s->jobs[i];
    if (j == NULL || s->assignment == NULL)
        return 0;
    srv = keel_cstate_members(s, "server", &nsrv);
    reports_read(s, srv, nsrv, &rep);
    /* The common case: nothing restores, and the assignment need not be decoded. */
    if (!reports_restoring(&rep) ||
        keel_assign_decode(s->assignment->value, s->assignment->value_len, &a, NULL) != 0)
        goto out;
    floor = keel_calloc(j->spec.shards, sizeof(*floor));
    if ((nranges = restored_floor(a, &rep, j->spec.shards, floor, valid)) == 0)
        goto out;
    mods = keel_calloc(j->spec.shards, sizeof(*mods));
    if (keel_cstate_shards(j, &t, mods, err) != 0) {
        KEEL_LOG_WARN("job '%s': cannot rewind: %s", j->name, err->msg);
        keel_error_init(err);
        goto out;
    }
    changed = keel_calloc(t.nshards, 1);
    was = keel_calloc(t.nshards, sizeof(*was));
    memcpy(was, t.shards, sizeof(*was) * t.nshards);
    moved = keel_shards_rewind(&t, floor, changed);
    if ((rc = write_shards(l, e, j, &t, changed, mods, NULL, NULL, err)) != 0)
        goto out; /* 1: changed under us, the next tick tries again */
    KEEL_LOG_INFO("job '%s': %u range(s) restored from a store: %u of %" PRIu32 " shard(s) "
                  "rewound to the positions they hold, every shard lease renewed",
                  j->name, nranges, moved, t.nshards);
    for (uint32_t n = 0; n < t.nshards; n++)
        if (keel_shard_seq(t.shards[n].pass, t.shards[n].batch) !=
            keel_shard_seq(was[n].pass, was[n].batch))
            KEEL_LOG_INFO("job '%s': shard %" PRIu32 " rewound from (%" PRIu32 ", %" PRIu32
                          ") to (%" PRIu32 ", %" PRIu32 "): its batches since are replayed",
                          j->name, n, was[n].pass, was[n].batch, t.shards[n].pass,
                          t.shards[n].batch);
    before = keel_assign_clone(a);
    if (keel_election_epoch(e) > 0)
        keel_assign_set_epoch(a, (uint64_t)keel_election_epoch(e));
    keel_assign_renew_terms(a, valid);
    {
        struct keel_assign_stats st;

        memset(&st, 0, sizeof(st));
        st.changed = 1;
        amod = s->assignment->mod_revision;
        rc = write_assignment(l, e, before, a, &st, "shards rewound for restored ranges", &amod,
                              err);
    }
    if (rc == 0)
        rc = 1;
out:
    keel_assign_free(before);
    keel_assign_free(a);
    keel_shards_release(&t);
    free(was);
    free(changed);
    free(mods);
    free(floor);
    reports_release(&rep);
    return rc == KEEL_EEPOCH ? rc : rc != 0;
}

/*
 * Bring the assignment up to date with the live servers and `replication`,
 * writing every version that results (see leader.h for the steps).
 *
 * With no job running there is no data to keep: the rebalancer places and
 * balances replicas freely.  While a job runs, replica sets change only by
 * failover (keel_assign_failover()): a dead primary's range is led by an
 * in-sync backup, new backups start out of sync and enter the in-sync set
 * once their replica report shows the primary's copy at the range's term,
 * and a range with no live in-sync replica waits for its primary; then
 * primaries are shared again by role swaps with in-sync backups
 * (keel_assign_balance_primaries()), unless a range waits for a rewind.  A server
 * that restarted (a new incarnation) lost its memory: it first leaves every
 * range ("stay" excludes it), then joins again as a new replica.
 */
/*
 * Fail the running job `j` if a range lost its state for good: every
 * in-sync replica reports holding none of it (keel_assign_lost()).  1 when
 * it was failed (or that write's outcome is unknown), 0 when nothing is
 * lost.
 */
static int fail_lost(keel_leader *l, keel_election *e, const struct keel_cstate_job *j,
                     const keel_assign *a, const struct reports *rep, int *rc,
                     struct keel_error *err)
{
    struct keel_buf why = KEEL_BUF_INIT;
    unsigned n = 0;

    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        if (keel_assign_lost(a, r, rep->synced, rep->n)) {
            keel_buf_addf(&why, "%s%u", n ? ", " : "", r);
            n++;
        }
    if (n == 0) {
        keel_buf_release(&why);
        return 0;
    }
    {
        char reason[512];

        snprintf(reason, sizeof(reason),
                 "range%s %.300s lost: no replica holds %s state (the servers that led %s "
                 "came back without it, and no other replica was in sync)",
                 n == 1 ? "" : "s", (const char *)why.buf, n == 1 ? "its" : "their",
                 n == 1 ? "it" : "them");
        *rc = fail_job(l, e, j, reason, err);
    }
    keel_buf_release(&why);
    return 1;
}

/*
 * Mark in waited[] the ranges of `a` that have waited restore_wait_ms for an
 * in-sync replica to return (keel_assign_waiting()), as this leadership has
 * seen them; a range that waits no more starts again from zero.
 */
static void restore_waited(keel_leader *l, const keel_assign *a, const char *const *live,
                           size_t nlive, unsigned char *waited)
{
    uint64_t now = keel_clock_mono_ms();

    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        waited[r] = 0;
        if (!keel_assign_waiting(a, r, live, nlive)) {
            l->waiting_ms[r] = 0;
            continue;
        }
        if (l->waiting_ms[r] == 0)
            l->waiting_ms[r] = now;
        waited[r] = now - l->waiting_ms[r] >= l->restore_wait_ms;
    }
}

/* The ranges that job `j`'s model has no row in (computed once per job). */
static const unsigned char *rowless_of(keel_leader *l, const struct keel_cstate_job *j)
{
    struct keel_table_desc t[KEEL_MODEL_MAX_LAYERS];
    size_t n;
    unsigned with_rows = 0;

    if (strcmp(l->rows_job, j->name) == 0)
        return l->rowless;
    memset(l->rowless, 1, sizeof(l->rowless));
    n = keel_jobspec_tables(&j->spec, t, KEEL_MODEL_MAX_LAYERS);
    for (size_t i = 0; i < n; i++)
        for (uint64_t row = 0; row < t[i].rows && with_rows < KEEL_PROTO_NRANGES; row++) {
            unsigned r = keel_range_of(keel_key_make(t[i].id, row));

            with_rows += l->rowless[r];
            l->rowless[r] = 0;
        }
    snprintf(l->rows_job, sizeof(l->rows_job), "%s", j->name);
    return l->rowless;
}

/* Say which ranges keel_assign_restore_from_stores() gave to which store. */
static void log_restores(const keel_leader *l, const keel_assign *before, const keel_assign *a,
                         const struct reports *rep)
{
    uint64_t now = keel_clock_mono_ms();

    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        const char *was = keel_assign_primary(before, r), *now_id = keel_assign_primary(a, r);
        uint64_t lsn = 0;

        if (now_id == NULL || (was != NULL && strcmp(was, now_id) == 0))
            continue;
        for (size_t i = 0; i < rep->n; i++)
            if (strcmp(rep->synced[i].id, now_id) == 0)
                lsn = rep->r[i].stored[r];
        if (l->rowless[r]) {
            KEEL_LOG_INFO("range %u: no in-sync replica alive for %" PRIu64 " s (it was led by "
                          "%s): it holds no row of the model, so server %s leads it now",
                          r, (now - l->waiting_ms[r]) / 1000, was ? was : "-", now_id);
            continue;
        }
        KEEL_LOG_WARN("range %u: no in-sync replica alive for %" PRIu64 " s (it was led by %s): "
                      "restoring it from server %s's store, at LSN %" PRIu64
                      "; the job's shards are rewound to what it holds",
                      r, (now - l->waiting_ms[r]) / 1000, was ? was : "-", now_id, lsn);
    }
}

static int assignment_tick(keel_leader *l, keel_election *e, const struct keel_cstate *s,
                           const struct keel_cstate_job *job, struct keel_error *err)
{
    unsigned replication = job ? job->spec.replication : 1;
    const struct keel_member_info *srv;
    const char **live, **stay;
    keel_assign *a = NULL, *before;
    size_t nlive, nstay = 0;
    int64_t mod = s->assignment ? s->assignment->mod_revision : 0;
    int running = s->assignment != NULL && a_job_running(s);
    struct reports rep;
    int rc = 0;

    srv = keel_cstate_members(s, "server", &nlive);
    live = keel_calloc(nlive + 1, sizeof(*live));
    stay = keel_calloc(nlive + 1, sizeof(*stay));
    for (size_t i = 0; i < nlive; i++) {
        uint64_t inc;

        live[i] = srv[i].id;
        if (l->servers_known && server_known(l, srv[i].id, &inc) && inc != srv[i].incarnation)
            KEEL_LOG_INFO("server '%s' restarted (incarnation %" PRIu64 " -> %" PRIu64
                          "): it leaves and joins again",
                          srv[i].id, inc, srv[i].incarnation);
        else
            stay[nstay++] = srv[i].id;
    }
    reports_read(s, srv, nlive, &rep);
    if (s->assignment) {
        if (keel_assign_decode(s->assignment->value, s->assignment->value_len, &a, err) != 0) {
            KEEL_LOG_ERROR("the assignment in etcd is unreadable, computing a new one: %s",
                           err->msg);
            keel_error_init(err);
            running = 0; /* nothing to fail over from */
        }
    }
    if (a == NULL)
        a = keel_assign_new(replication);
    if (running && job != NULL && fail_lost(l, e, job, a, &rep, &rc, err))
        goto out;
    /*
     * Servers apply tables of the current leader's epoch only: a table of an
     * earlier leader is written again under ours first (a new one is written
     * with ours by the steps below).
     */
    if (keel_election_epoch(e) > 0) {
        struct keel_assign_stats st;

        before = keel_assign_clone(a);
        memset(&st, 0, sizeof(st));
        st.changed = keel_assign_set_epoch(a, (uint64_t)keel_election_epoch(e));
        if (st.changed && s->assignment != NULL)
            rc = write_assignment(l, e, before, a, &st, "new leader epoch", &mod, err);
        keel_assign_free(before);
    }
    /* Each step: from a copy, so the log can say what changed. */
    for (int step = 0; step < 5 && rc == 0; step++) {
        static const char *const why[] = {"replication", "servers changed",
                                          "restarted servers rejoined", "settled", ""};
        static const char *const fwhy[] = {"failover", "restarted servers rejoined",
                                           "backups in sync", "ranges restored from stores",
                                           "primaries shared again"};
        struct keel_assign_stats st;

        memset(&st, 0, sizeof(st));
        before = keel_assign_clone(a);
        if (running && step == 3) {
            /* Ranges whose in-sync replicas stayed dead too long: from the newest store. */
            unsigned char waited[KEEL_PROTO_NRANGES];

            restore_waited(l, a, live, nlive, waited);
            if (job != NULL && keel_assign_restore_from_stores(a, live, nlive, rep.synced, rep.n,
                                                               waited, rowless_of(l, job), &st))
                log_restores(l, before, a, &rep);
        } else if (running && step == 4) {
            /*
             * Once failover has settled (see keel_leader_opts), and not while
             * a range waits for a rewind: its backups copy what it restored.
             */
            if (keel_clock_mono_ms() - l->settled_ms >= l->settle_ms && !reports_restoring(&rep))
                keel_assign_balance_primaries(a, live, nlive, &st);
        } else if (running) {
            rc = keel_assign_failover(a, replication, step == 0 ? stay : live,
                                      step == 0 ? nstay : nlive, rep.synced, rep.n, &st, err);
        } else if (step == 0 && keel_assign_replication(a) != replication) {
            rc = keel_assign_set_replication(a, replication, &st, err);
        } else if (step == 1) {
            rc = keel_assign_update(a, stay, nstay, &st, err);
        } else if (step == 2 || step == 3) {
            rc = keel_assign_update(a, live, nlive, &st, err);
        }
        if (l->settled_ms == 0 || (running && step < 4 && st.changed))
            l->settled_ms = keel_clock_mono_ms();
        if (rc == 0 && st.changed)
            rc =
                write_assignment(l, e, before, a, &st, running ? fwhy[step] : why[step], &mod, err);
        keel_assign_free(before);
    }
    if (rc == 1) {
        rc = 0; /* changed under us: the next tick starts again from etcd */
    } else if (rc == 0) {
        free(l->servers);
        l->servers = keel_calloc(nlive + 1, sizeof(*l->servers));
        for (size_t i = 0; i < nlive; i++) {
            snprintf(l->servers[i].id, sizeof(l->servers[i].id), "%s", srv[i].id);
            l->servers[i].incarnation = srv[i].incarnation;
        }
        l->nservers = nlive;
        l->servers_known = 1;
    } else if (rc != KEEL_EEPOCH && rc != KEEL_EINDOUBT) {
        KEEL_LOG_WARN("assignment: %s", err->msg);
    }
out:
    reports_release(&rep);
    keel_assign_free(a);
    free(live);
    free(stay);
    return rc == KEEL_EEPOCH ? rc : 0;
}

/* ---- the hooks ------------------------------------------------------------ */

/*
 * The cluster's keys for one tick: the view's, once it holds every revision
 * this leadership has read or written (so a tick always sees its own
 * writes); otherwise, and after a write of unknown outcome, one range read.
 */
static int read_state(keel_leader *l, struct keel_cstate *s, struct keel_error *err)
{
    int64_t rev = l->view ? keel_cview_revision(l->view) : 0;
    int rc;

    if (!l->read_etcd && rev > 0 && rev >= l->newest) {
        keel_cview_snapshot(l->view, s);
        return 0;
    }
    rc = keel_cstate_read(l->etcd, l->cluster, s, err);
    if (rc == 0) {
        l->read_etcd = 0;
        if (s->revision > l->newest)
            l->newest = s->revision;
    }
    return rc;
}

/*
 * Act on the workers' reports of servers that did not answer
 * (suspects/<id>, probe.h): a registered server whose address refuses a
 * connection has no process listening any more, so its lease is revoked now
 * and its ranges fail over on the next tick rather than after the lease's
 * TTL.  Each report is deleted once looked at.  Errors are only logged: the
 * lease expires in any case.
 */
static void check_suspects(keel_leader *l, const struct keel_cstate *s)
{
    const struct keel_member_info *srv;
    size_t nsrv;

    srv = keel_cstate_members(s, "server", &nsrv);
    for (size_t i = 0; i < s->kvs.n; i++) {
        const struct keel_etcd_kv *kv = &s->kvs.kvs[i];
        struct keel_error err;
        struct keel_key k;
        size_t m;

        if (keel_key_parse_rel(kv->key + strlen(s->prefix), &k) != KEEL_KEY_SUSPECT)
            continue;
        keel_error_init(&err);
        for (m = 0; m < nsrv && strcmp(srv[m].id, k.id) != 0; m++)
            ;
        if (m < nsrv && srv[m].address[0] != '\0' && keel_probe_refused(srv[m].address, 300)) {
            KEEL_LOG_INFO("server '%s' refuses connections at %s (reported by %.*s): revoking "
                          "its lease %llx so that its ranges fail over now",
                          k.id, srv[m].address, (int)kv->value_len, (const char *)kv->value,
                          (unsigned long long)srv[m].lease);
            if (keel_etcd_revoke(l->etcd, srv[m].lease, &err) != 0 && err.code != KEEL_ENOTFOUND)
                KEEL_LOG_WARN("cannot revoke the lease of server '%s': %s", k.id, err.msg);
            keel_error_init(&err);
        }
        if (keel_etcd_delete(l->etcd, kv->key, 0, NULL, NULL, &err) != 0)
            KEEL_LOG_DEBUG("cannot delete %s: %s", kv->key, err.msg);
    }
}

static int tick(keel_leader *l, keel_election *e, struct keel_error *err)
{
    const struct keel_cstate_job *running;
    struct keel_cstate s;
    int rc;

    rc = read_state(l, &s, err);
    if (rc != 0) {
        keel_cstate_release(&s);
        return rc;
    }
    check_suspects(l, &s);
    rc = rewind_tick(l, e, &s, err);
    if (rc != 0) { /* it wrote: the next tick sees the rewound shards */
        keel_cstate_release(&s);
        return rc == KEEL_EEPOCH ? rc : 0;
    }
    rc = jobs_tick(l, e, &s, &running, err);
    if (rc == KEEL_EINDOUBT)
        rc = 0; /* logged; the next tick reads back what happened */
    if (rc != KEEL_EEPOCH) {
        struct keel_error aerr;
        int arc;

        keel_error_init(&aerr);
        arc = assignment_tick(l, e, &s, running, &aerr);
        if (arc == KEEL_EEPOCH) {
            *err = aerr;
            rc = arc;
        }
    }
    keel_cstate_release(&s);
    return rc;
}

/* A change the leader should act on: members, a job's spec or state, a progress report. */
static int interesting(const keel_leader *l, const char *key)
{
    struct keel_key k;

    switch (keel_key_parse(key, l->cluster, &k)) {
    case KEEL_KEY_MEMBER:
    case KEEL_KEY_REPLICAS: /* a backup may be in sync now */
    case KEEL_KEY_SUSPECT:  /* a server may be gone */
    case KEEL_KEY_JOB_SPEC:
    case KEEL_KEY_JOB_STATE:
    case KEEL_KEY_JOB_PROGRESS:
        return 1;
    default:
        return 0;
    }
}

static void on_view(void *user, keel_cview *v, const struct keel_etcd_watch_batch *b)
{
    keel_leader *l = user;

    (void)v;
    if (b->reset) {
        wake(l);
        return;
    }
    for (size_t i = 0; i < b->n; i++)
        if (interesting(l, b->events[i].kv.key)) {
            wake(l);
            return;
        }
}

static void stop_view(keel_leader *l)
{
    if (l->view) {
        keel_cview_stop(l->view);
        l->view = NULL;
    }
}

static int on_elected(void *user, keel_election *e, struct keel_error *err)
{
    keel_leader *l = user;
    struct keel_error verr;

    forget(l);
    KEEL_LOG_INFO("leader work starts (epoch %lld)", (long long)keel_election_epoch(e));
    if (l->co && l->view == NULL) {
        keel_error_init(&verr);
        if (keel_cview_start(l->etcd, l->cluster, on_view, l, &l->view, &verr) != 0)
            KEEL_LOG_WARN("cannot watch the cluster's keys, reading them at each heartbeat: %s",
                          verr.msg);
    }
    return tick(l, e, err);
}

static int on_lead(void *user, keel_election *e, struct keel_error *err)
{
    return tick(user, e, err);
}

static void on_deposed(void *user, const char *why)
{
    keel_leader *l = user;

    stop_view(l);
    forget(l);
    KEEL_LOG_INFO("leader work stops: %s", why);
}

int keel_leader_new(const struct keel_leader_opts *o, keel_leader **out, struct keel_error *err)
{
    keel_leader *l;

    *out = NULL;
    if (o->etcd == NULL || o->cluster == NULL || o->cluster[0] == '\0')
        return keel_err_set(err, KEEL_EINVAL, "leader work needs etcd and a cluster name");
    l = keel_calloc(1, sizeof(*l));
    l->etcd = o->etcd;
    l->cluster = keel_strdup(o->cluster);
    l->settle_ms = o->settle_ms;
    l->restore_wait_ms = o->restore_wait_ms;
    *out = l;
    return 0;
}

void keel_leader_free(keel_leader *l)
{
    if (l == NULL)
        return;
    stop_view(l);
    forget(l);
    free(l->cluster);
    free(l);
}

void keel_leader_hooks(keel_leader *l, struct keel_coordinator_hooks *hooks)
{
    memset(hooks, 0, sizeof(*hooks));
    hooks->user = l;
    hooks->elected = on_elected;
    hooks->lead = on_lead;
    hooks->deposed = on_deposed;
}

void keel_leader_attach(keel_leader *l, keel_coordinator *co)
{
    l->co = co;
}
