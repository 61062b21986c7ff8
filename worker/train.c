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
#include "log.h"
#include "signals.h"
#include "worker_internal.h"

/* ---- the keys the worker follows (w->lock held) -------------------------------- */

/* "assignment", "members/server/<id>", "jobs/<job>/{state,spec,shards/<n>}". */
static int relevant(const char *k)
{
    const char *rest;

    if (strcmp(k, "assignment") == 0)
        return 1;
    if (strncmp(k, "members/server/", 15) == 0)
        return k[15] != '\0' && strchr(k + 15, '/') == NULL;
    if (strncmp(k, "jobs/", 5) != 0 || (rest = strchr(k + 5, '/')) == NULL || rest == k + 5)
        return 0;
    rest++;
    if (strcmp(rest, "state") == 0 || strcmp(rest, "spec") == 0)
        return 1;
    return strncmp(rest, "shards/", 7) == 0 && rest[7] != '\0' && strchr(rest + 7, '/') == NULL;
}

static struct wk_kv *key_find(struct wk *w, const char *rel)
{
    for (size_t i = 0; i < w->nkeys; i++)
        if (strcmp(w->keys[i].key, rel) == 0)
            return &w->keys[i];
    return NULL;
}

static void key_put(struct wk *w, const char *rel, const unsigned char *value, size_t len,
                    int64_t mod_revision)
{
    struct wk_kv *kv = key_find(w, rel);

    if (kv == NULL) {
        KEEL_REALLOC_ARRAY(w->keys, w->nkeys + 1);
        kv = &w->keys[w->nkeys++];
        kv->key = keel_strdup(rel);
    } else {
        free(kv->value);
    }
    kv->value = keel_malloc(len + 1);
    memcpy(kv->value, value, len);
    kv->value[len] = '\0';
    kv->len = len;
    kv->mod_revision = mod_revision;
}

static void key_delete(struct wk *w, const char *rel)
{
    struct wk_kv *kv = key_find(w, rel);

    if (kv == NULL)
        return;
    free(kv->key);
    free(kv->value);
    *kv = w->keys[--w->nkeys];
}

static void keys_clear(struct wk *w)
{
    while (w->nkeys > 0)
        key_delete(w, w->keys[0].key);
}

static void on_watch(void *user, const struct keel_etcd_watch_batch *b)
{
    struct wk *w = user;
    size_t plen = strlen(w->prefix);
    int changed = b->reset;

    pthread_mutex_lock(&w->lock);
    if (b->reset)
        keys_clear(w);
    for (size_t i = 0; i < b->n; i++) {
        const struct keel_etcd_event *ev = &b->events[i];
        const char *rel;

        if (strncmp(ev->kv.key, w->prefix, plen) != 0)
            continue;
        rel = ev->kv.key + plen;
        if (!relevant(rel))
            continue;
        if (ev->type == KEEL_ETCD_DELETE)
            key_delete(w, rel);
        else
            key_put(w, rel, ev->kv.value, ev->kv.value_len, ev->kv.mod_revision);
        changed = 1;
    }
    if (changed) {
        w->generation++;
        pthread_cond_broadcast(&w->cond);
    }
    pthread_mutex_unlock(&w->lock);
}

int wk_key_copy(struct wk *w, const char *rel, struct keel_buf *out, int64_t *mod_revision)
{
    struct wk_kv *kv;
    int rc = KEEL_ENOTFOUND;

    pthread_mutex_lock(&w->lock);
    if ((kv = key_find(w, rel)) != NULL) {
        keel_buf_reset(out);
        keel_buf_add(out, kv->value, kv->len);
        if (mod_revision)
            *mod_revision = kv->mod_revision;
        rc = 0;
    }
    pthread_mutex_unlock(&w->lock);
    return rc;
}

static int cmp_id(const void *a, const void *b)
{
    return strcmp(a, b);
}

size_t wk_servers(struct wk *w, char (**ids)[KEEL_ID_MAX + 1])
{
    size_t n = 0;

    pthread_mutex_lock(&w->lock);
    KEEL_ALLOC_ARRAY(*ids, w->nkeys + 1);
    for (size_t i = 0; i < w->nkeys; i++)
        if (strncmp(w->keys[i].key, "members/server/", 15) == 0)
            snprintf((*ids)[n++], KEEL_ID_MAX + 1, "%s", w->keys[i].key + 15);
    pthread_mutex_unlock(&w->lock);
    qsort(*ids, n, sizeof(**ids), cmp_id);
    return n;
}

/* ---- connections and the route (training thread) ------------------------------- */

struct keel_client *wk_conn_of(struct wk *w, const char *id)
{
    struct keel_member_info info;
    struct keel_client_options o;
    struct keel_error err;
    struct keel_buf value;
    char rel[96];
    struct wk_conn *c = NULL;

    keel_error_init(&err);
    keel_buf_init(&value, 0);
    snprintf(rel, sizeof(rel), "members/server/%s", id);
    if (wk_key_copy(w, rel, &value, NULL) != 0) {
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

int wk_refresh_route(struct wk *w, int fresh, struct keel_error *err)
{
    struct keel_buf value;
    struct keel_etcd_kv kv;
    keel_assign *a = NULL;
    int64_t rev = 0;
    int rc;

    keel_buf_init(&value, 0);
    memset(&kv, 0, sizeof(kv));
    if (fresh) {
        char key[256];

        snprintf(key, sizeof(key), "%sassignment", w->prefix);
        if ((rc = keel_etcd_get(w->etcd, key, &kv, NULL, err)) != 0)
            goto out;
        keel_buf_add(&value, kv.value, kv.value_len);
        rev = kv.mod_revision;
    } else if (wk_key_copy(w, "assignment", &value, &rev) != 0) {
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
        struct keel_buf json;
        char key[256];
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
        snprintf(key, sizeof(key), "%sjobs/%s/progress/%" PRIu32, w->prefix, w->rep_job,
                 w->rep_shard);
        pthread_mutex_unlock(&w->rep_lock);

        keel_error_init(&err);
        keel_buf_init(&json, 0);
        keel_progress_encode(&p, &json);
        rc = keel_etcd_put(w->etcd, key, json.buf, json.len, 0, NULL, &err);
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
                KEEL_LOG_WARN("cannot report progress to '%s': %s (retrying)", key, err.msg);
            if (w->rep_stop && failures >= 3) {
                w->rep_done = w->rep_want; /* give up: the servers have the pushes anyway */
                pthread_cond_broadcast(&w->rep_cond);
            } else {
                struct timespec until = keel_cond_deadline(500);

                pthread_cond_timedwait(&w->rep_cond, &w->rep_lock, &until);
            }
        }
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
    struct keel_buf json;
    char key[256];
    int rc;

    snprintf(key, sizeof(key), "%sjobs/%s/eval/%" PRIu32 "/%s", w->prefix, w->job.name, e->pass,
             w->id);
    keel_buf_init(&json, 0);
    keel_eval_encode(e, &json);
    rc = keel_etcd_put(w->etcd, key, json.buf, json.len, 0, NULL, err);
    keel_buf_release(&json);
    return rc;
}

/* ---- the job -------------------------------------------------------------------------- */

static void job_release(struct wk_job *j)
{
    keel_model_work_free(j->work);
    keel_model_params_release(&j->params);
    keel_model_params_release(&j->grads);
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
};

/*
 * Under w->lock: the lowest-named running job, or "" when none.
 */
static void running_job(struct wk *w, char *job, size_t n)
{
    job[0] = '\0';
    for (size_t i = 0; i < w->nkeys; i++) {
        const struct wk_kv *kv = &w->keys[i];
        struct keel_job_status st;
        char name[KEEL_ID_MAX + 1];
        size_t len;

        if (strncmp(kv->key, "jobs/", 5) != 0)
            continue;
        len = strlen(kv->key);
        if (len < 11 || strcmp(kv->key + len - 6, "/state") != 0 || len - 11 > KEEL_ID_MAX)
            continue;
        snprintf(name, sizeof(name), "%.*s", (int)(len - 11), kv->key + 5);
        if (strchr(name, '/') != NULL)
            continue;
        if (keel_job_status_decode(kv->value, kv->len, &st, NULL) != 0 ||
            st.state != KEEL_JOB_RUNNING)
            continue;
        if (job[0] == '\0' || strcmp(name, job) < 0)
            snprintf(job, n, "%s", name);
    }
}

/*
 * Under w->lock: the shard of the current job leased to this worker's
 * incarnation, if it may be worked on now.  A lease lasts one pass: a shard
 * whose recorded pass is behind what this worker already finished waits
 * for the coordinator to record the new pass.
 */
static int find_lease(struct wk *w, struct lease *out)
{
    struct wk_job *j = &w->job;
    char prefix[96], needle[96];
    size_t plen;

    snprintf(prefix, sizeof(prefix), "jobs/%s/shards/", j->name);
    snprintf(needle, sizeof(needle), "\"%s\"", w->id);
    plen = strlen(prefix);
    for (size_t i = 0; i < w->nkeys; i++) {
        const struct wk_kv *kv = &w->keys[i];
        struct keel_shard s;
        unsigned long n;
        char *end;
        uint32_t pass, batch;

        if (strncmp(kv->key, prefix, plen) != 0 || strstr((const char *)kv->value, needle) == NULL)
            continue;
        errno = 0;
        n = strtoul(kv->key + plen, &end, 10);
        if (errno || *end != '\0' || end == kv->key + plen || n >= j->spec.shards)
            continue;
        if (keel_shard_decode(kv->value, kv->len, j->spec.epochs, &s, NULL) != 0 || s.done ||
            strcmp(s.owner, w->id) != 0 || s.incarnation != w->incarnation)
            continue;
        pass = s.pass;
        batch = s.batch;
        if (j->floor[n].known &&
            (j->floor[n].pass > pass || (j->floor[n].pass == pass && j->floor[n].batch > batch))) {
            pass = j->floor[n].pass;
            batch = j->floor[n].batch;
        }
        if (pass != s.pass || pass >= j->spec.epochs)
            continue; /* this pass is finished here; wait for the next lease */
        out->shard = (uint32_t)n;
        out->pass = pass;
        out->batch = batch;
        return 1;
    }
    return 0;
}

/* Under w->lock: whether `shard` of the current job is still leased to this incarnation. */
static int lease_holds(struct wk *w, uint32_t shard)
{
    struct wk_kv *kv;
    struct keel_shard s;
    char rel[128], job[KEEL_ID_MAX + 1];

    running_job(w, job, sizeof(job));
    if (strcmp(job, w->job.name) != 0)
        return 0;
    snprintf(rel, sizeof(rel), "jobs/%s/shards/%" PRIu32, w->job.name, shard);
    if ((kv = key_find(w, rel)) == NULL ||
        keel_shard_decode(kv->value, kv->len, w->job.spec.epochs, &s, NULL) != 0)
        return 0;
    return !s.done && strcmp(s.owner, w->id) == 0 && s.incarnation == w->incarnation;
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
enum lease_end { LEASE_PASS_DONE, LEASE_STOPPED, LEASE_LOST, LEASE_FAILED, LEASE_FATAL };

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

/* Work on `shard` from (pass, batch) until the pass ends or the lease does. */
static enum lease_end run_lease(struct wk *w, const struct lease *l)
{
    struct wk_job *j = &w->job;
    struct wk_reader rd;
    struct keel_error err;
    struct window win = {0};
    struct wk_lead lead = {0, 0};
    uint32_t pass = l->pass, batch = l->batch, nbatches, dup_run = 0, dup_first = 0;
    uint32_t B = j->spec.batch_size, acked = 0;
    uint64_t acks = 0, acks_dup = 0;
    uint64_t gen, last_seq = 0, incarnation;
    enum lease_end end = LEASE_FAILED;
    int rc;

    keel_error_init(&err);
    if (!j->checked) {
        rc = wk_check_dataset(w, &err);
        if (rc == KEEL_EINVAL) {
            KEEL_LOG_ERROR("job %s: %s", j->name, err.msg);
            return LEASE_FATAL;
        }
        if (rc != 0) {
            KEEL_LOG_WARN("job %s: cannot check dataset '%s': %s", j->name, j->spec.dataset,
                          err.msg);
            return rc == KEEL_ECANCELED ? LEASE_STOPPED : LEASE_FAILED;
        }
        j->checked = 1;
    }
    if ((rc = wk_refresh_route(w, 0, &err)) < 0) {
        KEEL_LOG_WARN("job %s: cannot route requests: %s", j->name, err.msg);
        return LEASE_FAILED;
    }
    wk_reader_init(&rd, j->spec.dataset, l->shard);
    if ((rc = wk_reader_open(w, &rd, (uint64_t)batch * B, &err)) != 0) {
        KEEL_LOG_WARN("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err.msg);
        end = rc == KEEL_EINVAL ? LEASE_FATAL : rc == KEEL_ECANCELED ? LEASE_STOPPED : LEASE_FAILED;
        goto out;
    }
    nbatches = keel_worker_nbatches(rd.total, B);
    if (batch > nbatches) {
        KEEL_LOG_ERROR("job %s: shard %" PRIu32 ": recorded batch %" PRIu32
                       " is past the shard's %" PRIu32 " batches",
                       j->name, l->shard, batch, nbatches);
        end = LEASE_FATAL;
        goto out;
    }
    j->clock = keel_worker_clock(j->nb_max, pass, batch);
    KEEL_LOG_INFO("job %s: shard %" PRIu32 " (%" PRIu64 " records, %" PRIu32
                  " batches): starting at pass %" PRIu32 " batch %" PRIu32 ", clock %" PRIu64,
                  j->name, l->shard, rd.total, nbatches, pass, batch, j->clock);
    pthread_mutex_lock(&w->lock);
    gen = w->generation;
    pthread_mutex_unlock(&w->lock);
    win.t0 = keel_clock_mono_ms();

    while (pass == l->pass && batch < nbatches) {
        uint32_t n =
            (uint32_t)((uint64_t)(batch + 1) * B <= rd.total ? B : rd.total - (uint64_t)batch * B);
        struct keel_model_stats ms;
        struct wk_xstats xs = {0};

        if (atomic_load(&w->stopping)) {
            end = LEASE_STOPPED;
            goto report;
        }
        if (atomic_load(&w->member_lost)) {
            end = LEASE_LOST;
            goto report;
        }
        pthread_mutex_lock(&w->lock);
        if (w->generation != gen) {
            gen = w->generation;
            if (!lease_holds(w, l->shard)) {
                pthread_mutex_unlock(&w->lock);
                KEEL_LOG_INFO("job %s: shard %" PRIu32 " is no longer leased to this worker",
                              j->name, l->shard);
                end = LEASE_LOST;
                goto report;
            }
        }
        pthread_mutex_unlock(&w->lock);

        if ((rc = wk_reader_fill(w, &rd, (uint64_t)batch * B, n, &err)) != 0) {
            if (rc == KEEL_ECANCELED)
                KEEL_LOG_INFO("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err.msg);
            else
                KEEL_LOG_ERROR("job %s: %s", j->name, err.msg);
            end = rc == KEEL_ECANCELED ? LEASE_STOPPED
                  : (rc == KEEL_EINVAL || rc == KEEL_ESHORTBODY || rc == KEEL_ERESERVED ||
                     rc == KEEL_EPADDING || rc == KEEL_ETRAILING || rc == KEEL_EUNSORTED)
                      ? LEASE_FATAL
                      : LEASE_FAILED;
            goto report;
        }
        j->clock = keel_worker_clock(j->nb_max, pass, batch);
        if ((rc = wk_pull_all(w, j->clock, &xs, &err)) != 0) {
            if (rc == KEEL_ECANCELED) {
                KEEL_LOG_INFO("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err.msg);
                end = LEASE_STOPPED;
            } else {
                KEEL_LOG_ERROR("job %s: pull for clock %" PRIu64 ": %s", j->name, j->clock,
                               err.msg);
                end = LEASE_FAILED;
            }
            goto report;
        }
        lead_add(j, &lead, &xs);
        if (keel_model_grad(&j->model, j->work, &j->params, j->x, j->labels, n, &j->grads, &ms,
                            &err) != 0) {
            KEEL_LOG_ERROR("job %s: shard %" PRIu32 " batch %" PRIu32 ": %s", j->name, l->shard,
                           batch, err.msg);
            end = LEASE_FATAL;
            goto report;
        }
        /* Once sent, a push is seen through (a stop waits for it): it is idempotent. */
        if ((rc = wk_push_all(w, l->shard, keel_worker_seq(pass, batch), j->clock, &xs, &err)) !=
            0) {
            if (rc == KEEL_ECANCELED) {
                KEEL_LOG_INFO("job %s: shard %" PRIu32 ": %s", j->name, l->shard, err.msg);
                end = LEASE_STOPPED;
            } else {
                KEEL_LOG_ERROR("job %s: push of shard %" PRIu32 " pass %" PRIu32 " batch %" PRIu32
                               ": %s",
                               j->name, l->shard, pass, batch, err.msg);
                end = LEASE_FAILED;
            }
            goto report;
        }
        w->total_batches++;
        w->total_duplicates += xs.duplicates;
        acked++;
        acks += xs.acks;
        acks_dup += xs.duplicates;
        last_seq = keel_worker_seq(pass, batch);
        if (xs.acks > 0 && xs.duplicates == xs.acks) {
            if (dup_run++ == 0)
                dup_first = batch;
        } else if (dup_run > 0) {
            KEEL_LOG_INFO("job %s: shard %" PRIu32 ": batches %" PRIu32 "-%" PRIu32
                          " of pass %" PRIu32 " had been applied before: the servers"
                          " acknowledged them as duplicates and did not apply them again",
                          j->name, l->shard, dup_first, dup_first + dup_run - 1, pass);
            dup_run = 0;
        }
        keel_worker_next(nbatches, &pass, &batch);
        j->floor[l->shard] = (struct wk_pos){pass, batch, 1};
        if (pass == l->pass)
            report(w, l->shard, pass, batch, 0);

        win.batches++;
        win.examples += n;
        win.loss += ms.loss * n;
        win.correct += ms.ncorrect;
        if (win.batches >= w->config->worker_log_every || pass != l->pass) {
            uint64_t dt = keel_clock_mono_ms() - win.t0;

            KEEL_LOG_INFO("job %s: shard %" PRIu32 " pass %" PRIu32 " batch %" PRIu32 "/%" PRIu32
                          ": %.0f examples/s, loss %.4f, train accuracy %.4f"
                          " (last %" PRIu32 " batches)",
                          j->name, l->shard, pass == l->pass ? pass : l->pass,
                          pass == l->pass ? batch : nbatches, nbatches,
                          dt ? (double)win.examples * 1000.0 / (double)dt : 0.0,
                          win.loss / (double)win.examples,
                          (double)win.correct / (double)win.examples, win.batches);
            memset(&win, 0, sizeof(win));
            win.t0 = keel_clock_mono_ms();
        }
    }
    if (dup_run > 0)
        KEEL_LOG_INFO("job %s: shard %" PRIu32 ": batches %" PRIu32 "-%" PRIu32
                      " had been applied before: acknowledged as duplicates, not applied again",
                      j->name, l->shard, dup_first, dup_first + dup_run - 1);
    if (batch == nbatches && pass == l->pass) { /* an empty shard: the pass is trivially done */
        pass++;
        batch = 0;
        j->floor[l->shard] = (struct wk_pos){pass, batch, 1};
    }
    /* The pass is over: measure the model on the test set, then hand the shard back. */
    {
        struct keel_eval e;
        uint64_t t0 = keel_clock_mono_ms();

        memset(&e, 0, sizeof(e));
        rc = wk_evaluate(w, &e, &err);
        if (rc == 0 && e.examples > 0) {
            snprintf(e.worker, sizeof(e.worker), "%s", w->id);
            e.pass = l->pass;
            e.time_ms = (uint64_t)keel_clock_wall_ms();
            KEEL_LOG_INFO("job %s: pass %" PRIu32 " (shard %" PRIu32 ") done: test accuracy %.4f,"
                          " loss %.4f on %" PRIu64 " examples (%.2f s)",
                          j->name, l->pass, l->shard, e.accuracy, e.loss, e.examples,
                          (double)(keel_clock_mono_ms() - t0) / 1000.0);
            if (write_eval(w, &e, &err) != 0)
                KEEL_LOG_WARN("job %s: cannot record the test accuracy: %s", j->name, err.msg);
        } else if (rc == 0) {
            KEEL_LOG_INFO("job %s: pass %" PRIu32 " (shard %" PRIu32
                          ") done; the job has no test dataset",
                          j->name, l->pass, l->shard);
        } else if (rc != KEEL_ECANCELED) {
            KEEL_LOG_WARN("job %s: pass %" PRIu32 ": cannot measure test accuracy: %s", j->name,
                          l->pass, err.msg);
        }
    }
    end = LEASE_PASS_DONE;
report:
    if (end != LEASE_LOST) /* a lost lease is someone else's to report */
        report(w, l->shard, pass, batch, 1);
    /* What the servers acknowledged in this lease, and the clock leads its pulls saw. */
    pthread_mutex_lock(&w->lock);
    incarnation = w->incarnation;
    pthread_mutex_unlock(&w->lock);
    if (acked > 0)
        KEEL_LOG_INFO("job %s: shard %" PRIu32 " pass %" PRIu32
                      " lease ended (%s): batches %" PRIu32 "-%" PRIu32 " acknowledged, %" PRIu64
                      " of %" PRIu64 " ACKs as duplicates; last seq %" PRIu64
                      ", incarnation %" PRIu64,
                      j->name, l->shard, l->pass, lease_end_name(end), l->batch,
                      l->batch + acked - 1, acks_dup, acks, last_seq, incarnation);
    else
        KEEL_LOG_INFO("job %s: shard %" PRIu32 " pass %" PRIu32
                      " lease ended (%s): no batch acknowledged, incarnation %" PRIu64,
                      j->name, l->shard, l->pass, lease_end_name(end), incarnation);
    if (lead.pulls > 0) {
        char bound[64];

        lead_bound(&j->spec, bound, sizeof(bound));
        KEEL_LOG_INFO("job %s: largest clock lead over the slowest live worker: %" PRId64
                      " (%s); in this lease of shard %" PRIu32 ": %" PRId64 " over %" PRIu64
                      " pulls",
                      j->name, j->lead.max, bound, l->shard, lead.max, lead.pulls);
    }
out:
    wk_reader_release(&rd);
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
        char job[KEEL_ID_MAX + 1], why[256], rel[96];
        struct keel_buf spec;
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
        snprintf(rel, sizeof(rel), "jobs/%s/spec", job);
        if (job[0] != '\0' && key_find(w, rel) != NULL) {
            struct wk_kv *kv = key_find(w, rel);

            keel_buf_add(&spec, kv->value, kv->len);
            rev = kv->mod_revision;
        }
        pthread_mutex_unlock(&w->lock);
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
    struct keel_etcd_watch_opts wo = {0};
    struct keel_error err;
    int rc = KEEL_EXIT_FAILURE;

    w->config = config;
    w->id = config->node_id;
    snprintf(w->prefix, sizeof(w->prefix), "/keel/%s/", config->cluster_name);
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
    wo.key = w->prefix;
    wo.prefix = 1;
    if (keel_etcd_watch_start(w->etcd, &wo, on_watch, w, &w->watch, &err) != 0) {
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
    keel_etcd_stream_stop(w->watch);
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
    keys_clear(w);
    free(w->keys);
    pthread_cond_destroy(&w->rep_cond);
    pthread_mutex_destroy(&w->rep_lock);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w);
    return rc;
}
