/*
 * train.c - keel-worker's life: registration, what it knows from etcd,
 * waiting for a job and a shard lease, the batches of a lease, progress
 * reports, and a clean stop.
 *
 * Threads are described in worker_internal.h.  w->lock and w->rep_lock are
 * never held together, nor across a network call.
 */
#include <cblas.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "cli.h"
#include "clock.h"
#include "keel/jobs.h"
#include "keys.h"
#include "log.h"
#include "signals.h"
#include "worker_internal.h"

/* ---- the keys the worker follows ------------------------------------------------ */

/* The assignment, a server's registration, a job's state, spec or shard leases. */
static int followed(const struct keel_key *k)
{
    switch (k->type) {
    case KEEL_KEY_ASSIGNMENT:
    case KEEL_KEY_JOB_STATE:
    case KEEL_KEY_JOB_SPEC:
    case KEEL_KEY_JOB_SHARD:
        return 1;
    case KEEL_KEY_MEMBER:
        return strcmp(k->role, "server") == 0;
    default:
        return 0;
    }
}

/* The view applied a batch (watch thread): wake the training thread if it matters. */
static void on_view(void *user, keel_cview *v, const struct keel_etcd_watch_batch *b)
{
    struct wk *w = user;
    int changed = b->reset;

    (void)v;
    for (size_t i = 0; i < b->n && !changed; i++) {
        struct keel_key k;

        keel_key_parse(b->events[i].kv.key, w->cluster, &k);
        changed = followed(&k);
    }
    if (changed) {
        pthread_mutex_lock(&w->lock);
        w->generation++;
        pthread_cond_broadcast(&w->cond);
        pthread_mutex_unlock(&w->lock);
    }
}

int wk_key_copy(struct wk *w, const char *key, struct keel_buf *out, int64_t *mod_revision)
{
    return keel_cview_get(w->view, key, out, mod_revision);
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

struct server_list {
    struct wk *w;
    char (*ids)[KEEL_ID_MAX + 1];
    size_t n, alloc;
};

static int add_server(void *user, const struct keel_etcd_kv *kv)
{
    struct server_list *l = user;
    struct keel_key k;

    if (keel_key_parse(kv->key, l->w->cluster, &k) != KEEL_KEY_MEMBER ||
        strcmp(k.role, "server") != 0)
        return 0;
    if (l->n == l->alloc) {
        l->alloc = l->alloc ? 2 * l->alloc : 8;
        KEEL_REALLOC_ARRAY(l->ids, l->alloc);
    }
    snprintf(l->ids[l->n++], KEEL_ID_MAX + 1, "%s", k.id);
    return 0;
}

size_t wk_servers(struct wk *w, char (**ids)[KEEL_ID_MAX + 1])
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    struct server_list l = {w, NULL, 0, 0};

    keel_key_members(&prefix, w->cluster, "server");
    keel_cview_each(w->view, keel_key_str(&prefix), add_server, &l);
    keel_buf_release(&prefix);
    if (l.ids == NULL)
        KEEL_ALLOC_ARRAY(l.ids, 1);
    qsort(l.ids, l.n, sizeof(*l.ids), cmp_id);
    *ids = l.ids;
    return l.n;
}

/* ---- connections and the route (training thread) ------------------------------- */

struct keel_client *wk_conn_of(struct wk *w, const char *id)
{
    struct keel_member_info info;
    struct keel_client_options o;
    struct keel_error err;
    struct keel_buf value, key = KEEL_BUF_INIT;
    struct wk_conn *c = NULL;
    int rc;

    keel_error_init(&err);
    keel_buf_init(&value, 0);
    keel_key_member(&key, w->cluster, "server", id);
    rc = wk_key_copy(w, keel_key_str(&key), &value, NULL);
    keel_buf_release(&key);
    if (rc != 0) {
        keel_buf_release(&value);
        return NULL;
    }
    if (keel_member_decode(value.buf, value.len, &info, &err) != 0) {
        KEEL_LOG_WARN("server %s: ignoring its registration: %s", id, err.msg);
        keel_buf_release(&value);
        return NULL;
    }
    keel_buf_release(&value);
    for (size_t i = 0; i < w->nconns; i++)
        if (strcmp(w->conns[i].id, id) == 0)
            c = &w->conns[i];
    if (c != NULL && strcmp(c->address, info.address) == 0) {
        keel_member_info_release(&info);
        return c->client;
    }
    if (c == NULL) {
        KEEL_REALLOC_ARRAY(w->conns, w->nconns + 1);
        c = &w->conns[w->nconns++];
        memset(c, 0, sizeof(*c));
        snprintf(c->id, sizeof(c->id), "%s", id);
    } else {
        KEEL_LOG_INFO("server %s moved from %s to %s", id, c->address, info.address);
        keel_client_free(c->client);
        c->client = NULL;
    }
    snprintf(c->address, sizeof(c->address), "%s", info.address);
    keel_member_info_release(&info);
    keel_client_options_default(&o);
    o.address = c->address;
    o.expect_role = KEEL_ROLE_SERVER;
    o.max_frame_size = w->config->max_frame_size;
    if (keel_client_new(&o, w->tls, &c->client, &err) != 0) {
        KEEL_LOG_WARN("server %s at %s: %s", id, c->address, err.msg);
        c->client = NULL;
        c->address[0] = '\0';
    }
    return c->client;
}

void wk_suspect(struct wk *w, const char *id)
{
    struct keel_error err;
    struct wk_conn *c = NULL;
    uint64_t now = keel_clock_mono_ms();

    for (size_t i = 0; i < w->nconns; i++)
        if (strcmp(w->conns[i].id, id) == 0)
            c = &w->conns[i];
    if (c == NULL || now - c->suspected_ms < 1000)
        return;
    c->suspected_ms = now;
    keel_error_init(&err);
    if (keel_member_suspect(w->member, w->etcd, w->cluster, id, w->id, &err) != 0)
        KEEL_LOG_DEBUG("cannot report server %s as suspect: %s", id, err.msg);
    else
        KEEL_LOG_INFO("server %s is not connected and did not answer: reported it to the leader",
                      id);
}

int wk_refresh_route(struct wk *w, int fresh, struct keel_error *err)
{
    struct keel_buf value, key = KEEL_BUF_INIT;
    struct keel_etcd_kv kv;
    keel_assign *a = NULL;
    int64_t rev = 0;
    int rc;

    keel_buf_init(&value, 0);
    memset(&kv, 0, sizeof(kv));
    keel_key_assignment(&key, w->cluster);
    if (fresh) {
        if ((rc = keel_etcd_get(w->etcd, keel_key_str(&key), &kv, NULL, err)) != 0)
            goto out;
        keel_buf_add(&value, kv.value, kv.value_len);
        rev = kv.mod_revision;
    } else if (wk_key_copy(w, keel_key_str(&key), &value, &rev) != 0) {
        rc = keel_err_set(err, KEEL_ENOTFOUND, "no assignment in etcd yet");
        goto out;
    }
    if (w->assign != NULL && rev == w->assign_revision) {
        rc = 0;
        goto out;
    }
    if ((rc = keel_assign_decode(value.buf, value.len, &a, err)) != 0)
        goto out;
    if (w->assign != NULL && keel_assign_version(a) <= keel_assign_version(w->assign) &&
        w->route.ntables > 0) {
        keel_assign_free(a); /* not newer than what we route by */
        rc = 0;
        goto out;
    }
    if (w->job.name[0] != '\0') {
        struct keel_route r;

        if ((rc = keel_route_build(&r, &w->job.model, a, err)) != 0) {
            keel_assign_free(a);
            goto out;
        }
        keel_route_release(&w->route);
        w->route = r;
    }
    keel_assign_free(w->assign);
    w->assign = a;
    w->assign_revision = rev;
    KEEL_LOG_INFO("routing by assignment version %" PRIu64 " (%zu primaries)",
                  keel_assign_version(a), w->route.nprimaries);
    rc = 1;
out:
    keel_etcd_kv_release(&kv);
    keel_buf_release(&key);
    keel_buf_release(&value);
    return rc;
}

/* ---- progress reports (reporter thread) ------------------------------------------ */

static void *reporter_main(void *arg)
{
    struct wk *w = arg;
    uint64_t last = 0, failures = 0;

    pthread_mutex_lock(&w->rep_lock);
    for (;;) {
        struct keel_progress p;
        struct keel_error err;
        struct keel_buf json, key = KEEL_BUF_INIT;
        uint64_t want, now = keel_clock_mono_ms();
        int rc;

        if (w->rep_want == w->rep_done) {
            if (w->rep_stop)
                break;
            pthread_cond_wait(&w->rep_cond, &w->rep_lock);
            continue;
        }
        /* Rate limit, unless a caller waits for this report or we are stopping. */
        if (!w->rep_urgent && !w->rep_stop && last != 0 &&
            now < last + w->config->worker_progress_interval_ms) {
            struct timespec until =
                keel_cond_deadline(last + w->config->worker_progress_interval_ms - now);

            pthread_cond_timedwait(&w->rep_cond, &w->rep_lock, &until);
            continue;
        }
        want = w->rep_want;
        p = w->rep_progress;
        keel_key_job_progress(&key, w->cluster, w->rep_job, w->rep_shard);
        pthread_mutex_unlock(&w->rep_lock);

        keel_error_init(&err);
        keel_buf_init(&json, 0);
        keel_progress_encode(&p, &json);
        rc = keel_etcd_put(w->etcd, keel_key_str(&key), json.buf, json.len, 0, NULL, &err);
        keel_buf_release(&json);

        pthread_mutex_lock(&w->rep_lock);
        last = keel_clock_mono_ms();
        if (rc == 0) {
            failures = 0;
            if (want > w->rep_done)
                w->rep_done = want;
            if (w->rep_done == w->rep_want)
                w->rep_urgent = 0;
            pthread_cond_broadcast(&w->rep_cond);
        } else {
            if (failures++ % 10 == 0)
                KEEL_LOG_WARN("cannot report progress to '%s': %s (retrying)", keel_key_str(&key),
                              err.msg);
            if (w->rep_stop && failures >= 3) {
                w->rep_done = w->rep_want; /* give up: the servers have the pushes anyway */
                pthread_cond_broadcast(&w->rep_cond);
            } else {
                struct timespec until = keel_cond_deadline(500);

                pthread_cond_timedwait(&w->rep_cond, &w->rep_lock, &until);
            }
        }
        keel_buf_release(&key);
    }
    pthread_mutex_unlock(&w->rep_lock);
    return NULL;
}

/*
 * Ask for progress (pass, batch) of `shard` to be written; with `wait`,
 * return once it is (or the reporter gave up).
 */
static void report(struct wk *w, uint32_t shard, uint32_t pass, uint32_t batch, int wait)
{
    uint64_t mine, incarnation;

    pthread_mutex_lock(&w->lock);
    incarnation = w->incarnation;
    pthread_mutex_unlock(&w->lock);
    pthread_mutex_lock(&w->rep_lock);
    snprintf(w->rep_job, sizeof(w->rep_job), "%s", w->job.name);
    w->rep_shard = shard;
    snprintf(w->rep_progress.worker, sizeof(w->rep_progress.worker), "%s", w->id);
    w->rep_progress.incarnation = incarnation;
    w->rep_progress.pass = pass;
    w->rep_progress.batch = batch;
    w->rep_progress.lease = w->job.lease;
    mine = ++w->rep_want;
    if (wait)
        w->rep_urgent = 1;
    pthread_cond_broadcast(&w->rep_cond);
    while (wait && w->rep_done < mine)
        pthread_cond_wait(&w->rep_cond, &w->rep_lock);
    pthread_mutex_unlock(&w->rep_lock);
}

static int write_eval(struct wk *w, const struct keel_eval *e, struct keel_error *err)
{
    struct keel_buf json, key = KEEL_BUF_INIT;
    int rc;

    keel_key_job_eval(&key, w->cluster, w->job.name, e->pass, w->id);
    keel_buf_init(&json, 0);
    keel_eval_encode(e, &json);
    rc = keel_etcd_put(w->etcd, keel_key_str(&key), json.buf, json.len, 0, NULL, err);
    keel_buf_release(&json);
    keel_buf_release(&key);
    return rc;
}

/* ---- the job -------------------------------------------------------------------------- */

static void job_release(struct wk_job *j)
{
    keel_model_work_free(j->work);
    keel_model_params_release(&j->params);
    keel_model_params_release(&j->grads);
    keel_model_params_release(&j->pushed);
    free(j->x);
    free(j->labels);
    free(j->floor);
    memset(j, 0, sizeof(*j));
}

/*
 * Take up job `name` with the spec JSON `spec` (revision `rev`): decode it and
 * set up the model's buffers.  A spec that cannot be used marks the job failed.
 */
static void job_take_up(struct wk *w, const char *name, const struct keel_buf *spec, int64_t rev)
{
    struct wk_job *j = &w->job;
    struct keel_error err;
    char model[KEEL_MODEL_SPEC_MAX], consistency[32];

    keel_error_init(&err);
    job_release(j);
    keel_route_release(&w->route);
    snprintf(j->name, sizeof(j->name), "%s", name);
    j->spec_revision = rev;
    if (keel_jobspec_decode(spec->buf, spec->len, &j->spec, &err) != 0) {
        KEEL_LOG_ERROR("job %s: cannot take it up: %s", name, err.msg);
        j->failed = 1;
        return;
    }
    j->model = j->spec.model;
    j->max_batch = j->spec.batch_size > WK_EVAL_RECORDS ? j->spec.batch_size : WK_EVAL_RECORDS;
    j->work = keel_model_work_new(&j->model, j->max_batch);
    keel_model_params_init(&j->params, &j->model);
    keel_model_params_init(&j->grads, &j->model);
    keel_model_params_init(&j->pushed, &j->model);
    KEEL_ALLOC_ARRAY(j->x, keel_size_mul(j->max_batch, j->model.sizes[0]));
    KEEL_ALLOC_ARRAY(j->labels, j->max_batch);
    KEEL_ALLOC_ARRAY(j->floor, j->spec.shards);
    keel_jobspec_model_string(&j->spec, model, sizeof(model));
    keel_consistency_string(&j->spec, consistency, sizeof(consistency));
    KEEL_LOG_INFO("job %s: %s on '%s' (test '%s'), batch %" PRIu32 ", %" PRIu32
                  " epoch(s), %" PRIu32 " shard(s), %s, optimizer %s",
                  name, model, j->spec.dataset, j->spec.test_dataset[0] ? j->spec.test_dataset : "",
                  j->spec.batch_size, j->spec.epochs, j->spec.shards, consistency,
                  keel_optim_name(j->spec.optimizer.type));
    /* The route follows the model: rebuild it with the assignment we have. */
    keel_assign_free(w->assign);
    w->assign = NULL;
    w->assign_revision = 0;
}

/* What find_work() found. */
struct lease {
    uint32_t shard;
    uint32_t pass, batch; /* where to start */
    uint64_t token;       /* the lease's fencing token (keel_shard.lease) */
};

struct running {
    const char *cluster;
    char *job;
    size_t n;
};

static int check_running(void *user, const struct keel_etcd_kv *kv)
{
    struct running *r = user;
    struct keel_job_status st;
    struct keel_key k;

    if (keel_key_parse(kv->key, r->cluster, &k) != KEEL_KEY_JOB_STATE ||
        keel_job_status_decode(kv->value, kv->value_len, &st, NULL) != 0 ||
        st.state != KEEL_JOB_RUNNING)
        return 0;
    if (r->job[0] == '\0' || strcmp(k.job, r->job) < 0)
        snprintf(r->job, r->n, "%s", k.job);
    return 0;
}

/* The lowest-named running job, or "" when none. */
static void running_job(struct wk *w, char *job, size_t n)
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    struct running r = {w->cluster, job, n};

    job[0] = '\0';
    keel_key_prefix(&prefix, w->cluster);
    keel_buf_add_str(&prefix, "jobs/");
    keel_cview_each(w->view, keel_key_str(&prefix), check_running, &r);
    keel_buf_release(&prefix);
}

struct lease_search {
    struct wk *w;
    char needle[KEEL_ID_MAX + 3];
    uint64_t incarnation;
    struct lease *out;
};

static int check_lease(void *user, const struct keel_etcd_kv *kv)
{
    struct lease_search *ls = user;
    struct wk *w = ls->w;
    struct wk_job *j = &w->job;
    struct keel_shard s;
    struct keel_key k;
    uint32_t n, pass, batch;

    if (strstr((const char *)kv->value, ls->needle) == NULL ||
        keel_key_parse(kv->key, w->cluster, &k) != KEEL_KEY_JOB_SHARD ||
        strcmp(k.job, j->name) != 0 || (n = k.num) >= j->spec.shards)
        return 0;
    if (keel_shard_decode(kv->value, kv->value_len, j->spec.epochs, &s, NULL) != 0 || s.done ||
        strcmp(s.owner, w->id) != 0 || s.incarnation != ls->incarnation)
        return 0;
    pass = s.pass;
    batch = s.batch;
    /*
     * What this worker had acknowledged under this very lease may be ahead of
     * what the coordinator recorded; a new token (a rewind) starts from the record.
     */
    if (j->floor[n].known && j->floor[n].lease == s.lease &&
        (j->floor[n].pass > pass || (j->floor[n].pass == pass && j->floor[n].batch > batch))) {
        pass = j->floor[n].pass;
        batch = j->floor[n].batch;
    }
    if (pass != s.pass || pass >= j->spec.epochs)
        return 0; /* this pass is finished here; wait for the next lease */
    ls->out->shard = n;
    ls->out->pass = pass;
    ls->out->batch = batch;
    ls->out->token = s.lease;
    return 1;
}

/*
 * Under w->lock: the shard of the current job leased to this worker's
 * incarnation, if it may be worked on now.  A lease lasts one pass: a shard
 * whose recorded pass is behind what this worker already finished waits
 * for the coordinator to record the new pass.
 */
static int find_lease(struct wk *w, struct lease *out)
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    struct lease_search ls;
    int found;

    ls.w = w;
    snprintf(ls.needle, sizeof(ls.needle), "\"%s\"", w->id);
    ls.incarnation = w->incarnation;
    ls.out = out;
    keel_key_job_prefix(&prefix, w->cluster, w->job.name);
    keel_buf_add_str(&prefix, "shards/");
    found = keel_cview_each(w->view, keel_key_str(&prefix), check_lease, &ls);
    keel_buf_release(&prefix);
    return found;
}

/*
 * Under w->lock: whether `shard` of the current job is still leased to this
 * incarnation, under the lease `token`.
 */
static int lease_holds(struct wk *w, uint32_t shard, uint64_t token)
{
    struct keel_buf key = KEEL_BUF_INIT, value = KEEL_BUF_INIT;
    struct keel_shard s;
    char job[KEEL_ID_MAX + 1];
    int holds = 0;

    running_job(w, job, sizeof(job));
    if (strcmp(job, w->job.name) != 0)
        return 0;
    keel_key_job_shard(&key, w->cluster, w->job.name, shard);
    if (wk_key_copy(w, keel_key_str(&key), &value, NULL) == 0 &&
        keel_shard_decode(value.buf, value.len, w->job.spec.epochs, &s, NULL) == 0)
        holds = !s.done && strcmp(s.owner, w->id) == 0 && s.incarnation == w->incarnation &&
                s.lease == token;
    keel_buf_release(&key);
    keel_buf_release(&value);
    return holds;
}

int wk_job_running(struct wk *w)
{
    char job[KEEL_ID_MAX + 1];

    pthread_mutex_lock(&w->lock);
    running_job(w, job, sizeof(job));
    pthread_mutex_unlock(&w->lock);
    return strcmp(job, w->job.name) == 0;
}

/* ---- training ------------------------------------------------------------------------- */

/* Why a lease ended. */
enum lease_end {
    LEASE_PASS_DONE,
    LEASE_STOPPED,
    LEASE_LOST,
    LEASE_FAILED,
    LEASE_FATAL,
    LEASE_GOING, /* not an end: the lease goes on (the steps of run_lease()) */
};

struct window {
    uint64_t t0;
    uint32_t batches;
    uint64_t examples;
    double loss;
    uint64_t correct;
};

static const char *lease_end_name(enum lease_end e)
{
    switch (e) {
    case LEASE_PASS_DONE:
        return "pass done";
    case LEASE_STOPPED:
        return "stopped";
    case LEASE_LOST:
        return "lease lost";
    case LEASE_FAILED:
        return "failed";
    default:
        return "fatal";
    }
}

/* "bsp allows 0", "ssp:2 allows 2", "asp has no bound": the lead the job's consistency allows. */
static void lead_bound(const struct keel_jobspec *spec, char *out, size_t n)
{
    char c[32];

    keel_consistency_string(spec, c, sizeof(c));
    if (spec->consistency == KEEL_CONSISTENCY_ASP)
        snprintf(out, n, "%s has no bound", c);
    else
        snprintf(out, n, "%s allows %" PRIu32, c,
                 spec->consistency == KEEL_CONSISTENCY_SSP ? spec->staleness : 0);
}

/*
 * Count a training pull's clock lead (xs->lead over xs->replies replies) in
 * the lease's and the job's; a new high for the job is logged at once, so
 * that a worker killed before its lease ends has said what it saw.
 */
static void lead_add(struct wk_job *j, struct wk_lead *lease, const struct wk_xstats *xs)
{
    char bound[64];

    if (xs->replies == 0)
        return;
    if (lease->pulls++ == 0 || xs->lead > lease->max)
        lease->max = xs->lead;
    if (j->lead.pulls++ > 0 && xs->lead <= j->lead.max)
        return;
    j->lead.max = xs->lead;
    if (xs->lead < 0) /* behind the slowest as the servers count (a replay): not worth a line */
        return;
    lead_bound(&j->spec, bound, sizeof(bound));
    KEEL_LOG_INFO("job %s: clock lead over the slowest live worker: %" PRId64
                  ", a new high, at clock %" PRIu64 " (%s)",
                  j->name, xs->lead, j->clock, bound);
}

/* A lease being worked on (training thread): where it is and what it counted. */
struct lease_run {
    const struct lease *l;
    struct wk_reader rd;
    uint32_t pass, batch, nbatches;    /* the next batch; batches per pass of the shard */
    uint32_t acked;                    /* batches acknowledged in this lease */
    uint32_t dup_run, dup_first;       /* a run of batches acknowledged only as duplicates */
    uint64_t acks, acks_dup, last_seq; /* ACKs, of which duplicates; the last seq pushed */
    uint64_t gen;                      /* w->generation when the lease was last checked */
    struct window win;                 /* the batches since the last progress line */
    struct wk_lead lead;               /* the clock leads of this lease's pulls */
};

/*
 * Before the first batch: check the job's dataset once, route by the
 * assignment.  LEASE_GOING, or why the lease ends at once.
 */
static enum lease_end lease_prepare(struct wk *w, struct keel_error *err)
{
    struct wk_job *j = &w->job;
    int rc;

    if (!j->checked) {
        rc = wk_check_dataset(w, err);
        if (rc == KEEL_EINVAL) {
            KEEL_LOG_ERROR("job %s: %s", j->name, err->msg);
            return LEASE_FATAL;
        }
        if (rc != 0) {
            KEEL_LOG_WARN("job %s: cannot check dataset '%s': %s", j->name, j->spec.dataset,
                          err->msg);
            return rc == KEEL_ECANCELED ? LEASE_STOPPED : LEASE_FAILED;
        }
        j->checked = 1;
    }
    if (wk_refresh_route(w, 0, err) < 0) {
        KEEL_LOG_WARN("job %s: cannot route requests: %s", j->name, err->msg);
        return LEASE_FAILED;
    }
    return LEASE_GOING;
}

/* Open the shard's records at the lease's position.  LEASE_GOING, or why the lease ends. */
static enum lease_end lease_open(struct wk *w, struct lease_run *r, struct keel_error *err)
{
    struct wk_job *j = &w->job;
    const struct lease *l = r->l;
    uint32_t B = j->spec.batch_size;
    int rc;

    if ((rc = wk_reader_open(w, &r->rd, (uint64_t)r->batch * B, err)) != 0) {
        KEEL_LOG_WARN("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err->msg);
        return rc == KEEL_EINVAL      ? LEASE_FATAL
               : rc == KEEL_ECANCELED ? LEASE_STOPPED
                                      : LEASE_FAILED;
    }
    r->nbatches = keel_worker_nbatches(r->rd.total, B);
    if (r->batch > r->nbatches) {
        KEEL_LOG_ERROR("job %s: shard %" PRIu32 ": recorded batch %" PRIu32
                       " is past the shard's %" PRIu32 " batches",
                       j->name, l->shard, r->batch, r->nbatches);
        return LEASE_FATAL;
    }
    j->clock = keel_worker_clock(j->nb_max, r->pass, r->batch);
    KEEL_LOG_INFO("job %s: shard %" PRIu32 " (%" PRIu64 " records, %" PRIu32
                  " batches): starting at pass %" PRIu32 " batch %" PRIu32 ", clock %" PRIu64,
                  j->name, l->shard, r->rd.total, r->nbatches, r->pass, r->batch, j->clock);
    pthread_mutex_lock(&w->lock);
    r->gen = w->generation;
    pthread_mutex_unlock(&w->lock);
    r->win.t0 = keel_clock_mono_ms();
    return LEASE_GOING;
}

/* Before each batch: stopping, the membership lost, or the lease moved away? */
static enum lease_end lease_check(struct wk *w, struct lease_run *r)
{
    if (atomic_load(&w->stopping))
        return LEASE_STOPPED;
    if (atomic_load(&w->member_lost))
        return LEASE_LOST;
    pthread_mutex_lock(&w->lock);
    if (w->generation != r->gen) {
        r->gen = w->generation;
        if (!lease_holds(w, r->l->shard, r->l->token)) {
            pthread_mutex_unlock(&w->lock);
            KEEL_LOG_INFO("job %s: shard %" PRIu32 " is no longer leased to this worker",
                          w->job.name, r->l->shard);
            return LEASE_LOST;
        }
    }
    pthread_mutex_unlock(&w->lock);
    return LEASE_GOING;
}

/*
 * Batch `b` of `n` records: read it, pull the model, compute the gradient
 * into w->job.grads.  LEASE_GOING, or why the lease ends.
 */
static enum lease_end lease_batch(struct wk *w, struct lease_run *r, uint32_t b, uint32_t n,
                                  struct keel_model_stats *ms, struct wk_xstats *xs,
                                  struct keel_error *err)
{
    struct wk_job *j = &w->job;
    const struct lease *l = r->l;
    uint32_t B = j->spec.batch_size;
    int rc;

    if ((rc = wk_reader_fill(w, &r->rd, (uint64_t)b * B, n, err)) != 0) {
        if (rc == KEEL_ECANCELED)
            KEEL_LOG_INFO("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err->msg);
        else
            KEEL_LOG_ERROR("job %s: %s", j->name, err->msg);
        return rc == KEEL_ECANCELED ? LEASE_STOPPED
               : (rc == KEEL_EINVAL || rc == KEEL_ESHORTBODY || rc == KEEL_ERESERVED ||
                  rc == KEEL_EPADDING || rc == KEEL_ETRAILING || rc == KEEL_EUNSORTED)
                   ? LEASE_FATAL
                   : LEASE_FAILED;
    }
    j->clock = keel_worker_clock(j->nb_max, r->pass, b);
    if ((rc = wk_pull_all(w, j->clock, 0, xs, err)) != 0) {
        if (rc == KEEL_ECANCELED) {
            KEEL_LOG_INFO("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err->msg);
            return LEASE_STOPPED;
        }
        KEEL_LOG_ERROR("job %s: pull for clock %" PRIu64 ": %s", j->name, j->clock, err->msg);
        return LEASE_FAILED;
    }
    lead_add(j, &r->lead, xs);
    if (keel_model_grad(&j->model, j->work, &j->params, j->x, j->labels, n, &j->grads, ms, err) !=
        0) {
        KEEL_LOG_ERROR("job %s: shard %" PRIu32 " batch %" PRIu32 ": %s", j->name, l->shard, b,
                       err->msg);
        return LEASE_FATAL;
    }
    return LEASE_GOING;
}

/*
 * The push in flight, of the batch after the last acknowledged one (r->batch):
 * sent once its gradient is computed, and seen through after the next
 * batch's pull and gradient, so that its acknowledgements (a round trip to
 * each primary, and from it to every in-sync backup) overlap them.  One at a
 * time, so a shard's pushes reach every server in order.
 */
struct in_flight {
    struct wk_push *push; /* NULL: none */
    uint32_t n;           /* records of its batch */
    struct keel_model_stats ms;
    struct wk_xstats xs; /* its pull's, then its ACKs */
};

/* See the push in flight through.  LEASE_GOING once every primary acknowledged it. */
static enum lease_end push_finish(struct wk *w, struct lease_run *r, struct in_flight *f,
                                  struct keel_error *err)
{
    struct wk_job *j = &w->job;
    const struct lease *l = r->l;
    int rc = wk_push_finish(w, f->push, &f->xs, err);

    f->push = NULL;
    if (rc == 0)
        return LEASE_GOING;
    if (rc == KEEL_ECANCELED) {
        KEEL_LOG_INFO("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err->msg);
        return LEASE_STOPPED;
    }
    if (rc == KEEL_EEPOCH) { /* the coordinator rewound the shard or leased it again */
        KEEL_LOG_INFO("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err->msg);
        return LEASE_LOST;
    }
    KEEL_LOG_ERROR("job %s: push of shard %" PRIu32 " pass %" PRIu32 " batch %" PRIu32 ": %s",
                   j->name, l->shard, r->pass, r->batch, err->msg);
    return LEASE_FAILED;
}

/*
 * A batch of `n` records was acknowledged: count it, note runs of
 * duplicates, move to the next batch, report the progress, and log the
 * window of batches every worker_log_every.
 */
static void lease_acked(struct wk *w, struct lease_run *r, uint32_t n,
                        const struct keel_model_stats *ms, const struct wk_xstats *xs)
{
    struct wk_job *j = &w->job;
    const struct lease *l = r->l;

    w->total_batches++;
    w->total_duplicates += xs->duplicates;
    r->acked++;
    r->acks += xs->acks;
    r->acks_dup += xs->duplicates;
    r->last_seq = keel_worker_seq(r->pass, r->batch);
    if (xs->acks > 0 && xs->duplicates == xs->acks) {
        if (r->dup_run++ == 0)
            r->dup_first = r->batch;
    } else if (r->dup_run > 0) {
        KEEL_LOG_INFO("job %s: shard %" PRIu32 ": batches %" PRIu32 "-%" PRIu32 " of pass %" PRIu32
                      " had been applied before: the servers"
                      " acknowledged them as duplicates and did not apply them again",
                      j->name, l->shard, r->dup_first, r->dup_first + r->dup_run - 1, r->pass);
        r->dup_run = 0;
    }
    keel_worker_next(r->nbatches, &r->pass, &r->batch);
    j->floor[l->shard] = (struct wk_pos){r->pass, r->batch, 1, l->token};
    if (r->pass == l->pass)
        report(w, l->shard, r->pass, r->batch, 0);

    r->win.batches++;
    r->win.examples += n;
    r->win.loss += ms->loss * n;
    r->win.correct += ms->ncorrect;
    if (r->win.batches >= w->config->worker_log_every || r->pass != l->pass) {
        uint64_t dt = keel_clock_mono_ms() - r->win.t0;

        KEEL_LOG_INFO("job %s: shard %" PRIu32 " pass %" PRIu32 " batch %" PRIu32 "/%" PRIu32
                      ": %.0f examples/s, loss %.4f, train accuracy %.4f"
                      " (last %" PRIu32 " batches)",
                      j->name, l->shard, r->pass == l->pass ? r->pass : l->pass,
                      r->pass == l->pass ? r->batch : r->nbatches, r->nbatches,
                      dt ? (double)r->win.examples * 1000.0 / (double)dt : 0.0,
                      r->win.loss / (double)r->win.examples,
                      (double)r->win.correct / (double)r->win.examples, r->win.batches);
        memset(&r->win, 0, sizeof(r->win));
        r->win.t0 = keel_clock_mono_ms();
    }
}

/* The pass is over: measure the model on the test set and record it. */
static void lease_pass_done(struct wk *w, struct lease_run *r, struct keel_error *err)
{
    struct wk_job *j = &w->job;
    const struct lease *l = r->l;
    struct keel_eval e;
    uint64_t t0;
    int rc;

    if (r->dup_run > 0)
        KEEL_LOG_INFO("job %s: shard %" PRIu32 ": batches %" PRIu32 "-%" PRIu32
                      " had been applied before: acknowledged as duplicates, not applied again",
                      j->name, l->shard, r->dup_first, r->dup_first + r->dup_run - 1);
    if (r->batch == r->nbatches && r->pass == l->pass) { /* an empty shard: trivially done */
        r->pass++;
        r->batch = 0;
        j->floor[l->shard] = (struct wk_pos){r->pass, r->batch, 1, l->token};
    }
    t0 = keel_clock_mono_ms();
    memset(&e, 0, sizeof(e));
    rc = wk_evaluate(w, &e, err);
    if (rc == 0 && e.examples > 0) {
        snprintf(e.worker, sizeof(e.worker), "%s", w->id);
        e.pass = l->pass;
        e.time_ms = (uint64_t)keel_clock_wall_ms();
        KEEL_LOG_INFO("job %s: pass %" PRIu32 " (shard %" PRIu32 ") done: test accuracy %.4f,"
                      " loss %.4f on %" PRIu64 " examples (%.2f s)",
                      j->name, l->pass, l->shard, e.accuracy, e.loss, e.examples,
                      (double)(keel_clock_mono_ms() - t0) / 1000.0);
        if (write_eval(w, &e, err) != 0)
            KEEL_LOG_WARN("job %s: cannot record the test accuracy: %s", j->name, err->msg);
    } else if (rc == 0) {
        KEEL_LOG_INFO("job %s: pass %" PRIu32 " (shard %" PRIu32
                      ") done; the job has no test dataset",
                      j->name, l->pass, l->shard);
    } else if (rc != KEEL_ECANCELED) {
        KEEL_LOG_WARN("job %s: pass %" PRIu32 ": cannot measure test accuracy: %s", j->name,
                      l->pass, err->msg);
    }
}

/*
 * The lease ended (`end`): report where the shard is (unless the lease was
 * lost: that is someone else's to report), and log what the servers
 * acknowledged in this lease and the clock leads its pulls saw.
 */
static void lease_ended(struct wk *w, const struct lease_run *r, enum lease_end end)
{
    struct wk_job *j = &w->job;
    const struct lease *l = r->l;
    uint64_t incarnation;

    if (end != LEASE_LOST)
        report(w, l->shard, r->pass, r->batch, 1);
    pthread_mutex_lock(&w->lock);
    incarnation = w->incarnation;
    pthread_mutex_unlock(&w->lock);
    if (r->acked > 0)
        KEEL_LOG_INFO("job %s: shard %" PRIu32 " pass %" PRIu32
                      " lease ended (%s): batches %" PRIu32 "-%" PRIu32 " acknowledged, %" PRIu64
                      " of %" PRIu64 " ACKs as duplicates; last seq %" PRIu64
                      ", incarnation %" PRIu64,
                      j->name, l->shard, l->pass, lease_end_name(end), l->batch,
                      l->batch + r->acked - 1, r->acks_dup, r->acks, r->last_seq, incarnation);
    else
        KEEL_LOG_INFO("job %s: shard %" PRIu32 " pass %" PRIu32
                      " lease ended (%s): no batch acknowledged, incarnation %" PRIu64,
                      j->name, l->shard, l->pass, lease_end_name(end), incarnation);
    if (r->lead.pulls > 0) {
        char bound[64];

        lead_bound(&j->spec, bound, sizeof(bound));
        KEEL_LOG_INFO("job %s: largest clock lead over the slowest live worker: %" PRId64
                      " (%s); in this lease of shard %" PRIu32 ": %" PRId64 " over %" PRIu64
                      " pulls",
                      j->name, j->lead.max, bound, l->shard, r->lead.max, r->lead.pulls);
    }
}

/* Work on `shard` from (pass, batch) until the pass ends or the lease does. */
static enum lease_end run_lease(struct wk *w, const struct lease *l)
{
    struct wk_job *j = &w->job;
    uint32_t B = j->spec.batch_size;
    struct lease_run r;
    struct in_flight f = {0};
    struct keel_error err;
    enum lease_end end;

    keel_error_init(&err);
    memset(&r, 0, sizeof(r));
    r.l = l;
    r.pass = l->pass;
    r.batch = l->batch;
    j->lease = l->token;
    if ((end = lease_prepare(w, &err)) != LEASE_GOING)
        return end;
    wk_reader_init(&r.rd, j->spec.dataset, l->shard);
    if ((end = lease_open(w, &r, &err)) != LEASE_GOING)
        goto out;
    for (;;) {
        /* The batch to compute: the one after the push in flight, if any. */
        uint32_t b = r.batch + (f.push != NULL), n;
        struct in_flight next = {0};

        if (r.pass != l->pass || b >= r.nbatches)
            break;
        n = (uint64_t)(b + 1) * B <= r.rd.total ? B : (uint32_t)(r.rd.total - (uint64_t)b * B);
        if ((end = lease_check(w, &r)) != LEASE_GOING ||
            (end = lease_batch(w, &r, b, n, &next.ms, &next.xs, &err)) != LEASE_GOING)
            goto ended;
        if (f.push != NULL) {
            if ((end = push_finish(w, &r, &f, &err)) != LEASE_GOING)
                goto ended;
            lease_acked(w, &r, f.n, &f.ms, &f.xs);
        }
        /* Once sent, a push is seen through (a stop waits for it): it is idempotent. */
        next.n = n;
        next.push = wk_push_start(w, l->shard, keel_worker_seq(r.pass, b), j->clock);
        f = next;
    }
    if (f.push != NULL) {
        if ((end = push_finish(w, &r, &f, &err)) != LEASE_GOING)
            goto ended;
        lease_acked(w, &r, f.n, &f.ms, &f.xs);
    }
    lease_pass_done(w, &r, &err);
    end = LEASE_PASS_DONE;
ended:
    if (f.push != NULL) {
        /* A stop sees the push through (the next life would send it again anyway). */
        if (end == LEASE_STOPPED && push_finish(w, &r, &f, &err) == LEASE_GOING)
            lease_acked(w, &r, f.n, &f.ms, &f.xs);
        wk_push_drop(f.push);
    }
    lease_ended(w, &r, end);
out:
    wk_reader_release(&r.rd);
    return end;
}

/* Re-register after the membership lease was lost (training thread). */
static void rejoin(struct wk *w)
{
    struct keel_error err;

    keel_error_init(&err);
    KEEL_LOG_WARN("worker %s: membership lease lost: stopped working, registering again", w->id);
    while (!atomic_load(&w->stopping)) {
        if (keel_member_rejoin(w->member, &err) == 0) {
            pthread_mutex_lock(&w->lock);
            w->incarnation = keel_member_incarnation(w->member);
            pthread_mutex_unlock(&w->lock);
            atomic_store(&w->member_lost, 0);
            KEEL_LOG_INFO("worker %s registered again, incarnation %" PRIu64, w->id,
                          keel_member_incarnation(w->member));
            return;
        }
        KEEL_LOG_WARN("worker %s: cannot register again: %s", w->id, err.msg);
        pthread_mutex_lock(&w->lock);
        {
            struct timespec until = keel_cond_deadline(1000);

            if (!atomic_load(&w->stopping))
                pthread_cond_timedwait(&w->cond, &w->lock, &until);
        }
        pthread_mutex_unlock(&w->lock);
    }
}

static void *train_main(void *arg)
{
    struct wk *w = arg;
    char said[256] = "";
    uint64_t seen = UINT64_MAX, retry_at = 0;

    while (!atomic_load(&w->stopping)) {
        char job[KEEL_ID_MAX + 1], why[256];
        struct keel_buf spec, key = KEEL_BUF_INIT;
        struct lease l;
        int64_t rev = 0;
        int have = 0;
        enum lease_end end;

        if (atomic_load(&w->member_lost)) {
            rejoin(w);
            continue;
        }
        keel_buf_init(&spec, 0);
        pthread_mutex_lock(&w->lock);
        /* Sleep until something changes, or a failed lease is due for a retry. */
        while (!atomic_load(&w->stopping) && !atomic_load(&w->member_lost) &&
               w->generation == seen && (retry_at == 0 || keel_clock_mono_ms() < retry_at)) {
            struct timespec until =
                keel_cond_deadline(retry_at ? retry_at - keel_clock_mono_ms() + 1 : 5000);

            pthread_cond_timedwait(&w->cond, &w->lock, &until);
        }
        seen = w->generation;
        retry_at = 0;
        running_job(w, job, sizeof(job));
        pthread_mutex_unlock(&w->lock);
        if (job[0] != '\0') {
            keel_key_job_spec(&key, w->cluster, job);
            if (wk_key_copy(w, keel_key_str(&key), &spec, &rev) != 0)
                keel_buf_reset(&spec);
            keel_buf_release(&key);
        }
        if (atomic_load(&w->stopping) || atomic_load(&w->member_lost)) {
            keel_buf_release(&spec);
            continue;
        }

        if (job[0] == '\0') {
            snprintf(why, sizeof(why), "no job is running");
        } else if (spec.len == 0) {
            snprintf(why, sizeof(why), "job %s is running but has no spec", job);
        } else {
            if (strcmp(job, w->job.name) != 0 || rev != w->job.spec_revision)
                job_take_up(w, job, &spec, rev);
            if (w->job.failed) {
                snprintf(why, sizeof(why), "job %s cannot be worked on (see above)", job);
            } else {
                pthread_mutex_lock(&w->lock);
                have = find_lease(w, &l);
                pthread_mutex_unlock(&w->lock);
                snprintf(why, sizeof(why), "job %s: no shard is leased to worker %s", job, w->id);
            }
        }
        keel_buf_release(&spec);
        if (!have) {
            if (strcmp(why, said) != 0)
                KEEL_LOG_INFO("waiting: %s", why);
            snprintf(said, sizeof(said), "%s", why);
            continue;
        }
        said[0] = '\0';
        end = run_lease(w, &l);
        if (end == LEASE_FATAL) {
            KEEL_LOG_ERROR("job %s: stopped working on it; it needs an operator", w->job.name);
            w->job.failed = 1;
        } else if (end == LEASE_FAILED) {
            retry_at = keel_clock_mono_ms() + 2000; /* try again, without spinning */
        } else if (end == LEASE_PASS_DONE || end == LEASE_LOST) {
            seen = UINT64_MAX; /* look again at once */
        }
    }
    return NULL;
}

/* ---- start and stop ----------------------------------------------------------------- */

static void on_member_lost(void *user, int64_t id, const char *why)
{
    struct wk *w = user;

    (void)id;
    KEEL_LOG_WARN("membership lease lost: %s", why);
    atomic_store(&w->member_lost, 1);
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
}

int keel_worker_run(const struct keel_config *config)
{
    struct wk *w = keel_calloc(1, sizeof(*w));
    struct keel_tls_files files = keel_tls_files_of(config);
    struct keel_etcd_options eo;
    struct keel_member_opts mo = {0};
    struct keel_error err;
    int rc = KEEL_EXIT_FAILURE;

    w->config = config;
    w->id = config->node_id;
    w->cluster = config->cluster_name;
    pthread_mutex_init(&w->lock, NULL);
    keel_cond_init_mono(&w->cond);
    pthread_mutex_init(&w->rep_lock, NULL);
    keel_cond_init_mono(&w->rep_cond);
    keel_error_init(&err);
    keel_signals_block();
    openblas_set_num_threads(1); /* one compute thread; servers share the cores */

    if (keel_tls_new(&files, &w->tls, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        rc = KEEL_EXIT_CONFIG;
        goto out;
    }
    if (keel_tls_check_self(w->tls, KEEL_ROLE_WORKER, config->node_id, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        rc = KEEL_EXIT_CONFIG;
        goto free_tls;
    }
    keel_etcd_options_from_config(config, &eo);
    if (keel_etcd_new(&eo, &w->etcd, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        rc = KEEL_EXIT_CONFIG;
        goto free_tls;
    }
    mo.cluster = config->cluster_name;
    mo.role = "worker";
    mo.id = config->node_id;
    mo.address = "";
    mo.ttl_s = (int64_t)((config->etcd_lease_ttl_ms + 999) / 1000);
    mo.wait_ms = config->etcd_lease_ttl_ms + 2000;
    mo.on_lost = on_member_lost;
    mo.user = w;
    if (keel_member_join(w->etcd, &mo, &w->member, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        goto free_etcd;
    }
    w->incarnation = keel_member_incarnation(w->member);
    if (keel_cview_start(w->etcd, w->cluster, on_view, w, &w->view, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        goto leave;
    }
    pthread_create(&w->rep_tid, NULL, reporter_main, w);
    pthread_create(&w->train_tid, NULL, train_main, w);
    KEEL_LOG_INFO("worker %s registered (incarnation %" PRIu64 ") in cluster %s", w->id,
                  w->incarnation, config->cluster_name);

    keel_signals_wait(w->tls);
    rc = KEEL_EXIT_OK;

    /* Stop: the training thread finishes its batch and reports where it is. */
    atomic_store(&w->stopping, 1);
    pthread_mutex_lock(&w->lock);
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->train_tid, NULL);
    pthread_mutex_lock(&w->rep_lock);
    w->rep_stop = 1;
    pthread_cond_broadcast(&w->rep_cond);
    pthread_mutex_unlock(&w->rep_lock);
    pthread_join(w->rep_tid, NULL);
    KEEL_LOG_INFO("worker %s stopping: %" PRIu64 " batches computed, %" PRIu64
                  " push(es) acknowledged as duplicates",
                  w->id, w->total_batches, w->total_duplicates);
    keel_cview_stop(w->view);
    w->view = NULL;
leave:
    keel_etcd_set_retry_timeout(w->etcd, 2000);
    if (keel_member_leave(w->member, &err) != 0)
        KEEL_LOG_WARN("leaving the membership: %s", err.msg);
free_etcd:
    for (size_t i = 0; i < w->nconns; i++)
        keel_client_free(w->conns[i].client);
    free(w->conns);
    keel_etcd_free(w->etcd);
free_tls:
    keel_tls_free(w->tls);
out:
    job_release(&w->job);
    keel_route_release(&w->route);
    keel_assign_free(w->assign);
    pthread_cond_destroy(&w->rep_cond);
    pthread_mutex_destroy(&w->rep_lock);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
    return rc;
}
