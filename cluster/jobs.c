/*
 * jobs.c - job states and shard leases: transitions, assignment, progress,
 * and their JSON forms for etcd.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "json.h"
#include "alloc.h"
#include "keel/jobs.h"

static const char *const state_names[] = {NULL, "pending", "running", "done", "failed", "stopped"};

const char *keel_job_state_name(enum keel_job_state s)
{
    return s >= KEEL_JOB_PENDING && s <= KEEL_JOB_STOPPED ? state_names[s] : "unknown";
}

enum keel_job_state keel_job_state_parse(const char *name)
{
    for (int s = KEEL_JOB_PENDING; s <= KEEL_JOB_STOPPED; s++)
        if (strcmp(state_names[s], name) == 0)
            return (enum keel_job_state)s;
    return (enum keel_job_state)0;
}

int keel_job_state_is_final(enum keel_job_state s)
{
    return s == KEEL_JOB_DONE || s == KEEL_JOB_FAILED || s == KEEL_JOB_STOPPED;
}

int keel_job_state_can_move(enum keel_job_state from, enum keel_job_state to)
{
    switch (from) {
    case KEEL_JOB_PENDING:
        return to == KEEL_JOB_RUNNING || to == KEEL_JOB_FAILED || to == KEEL_JOB_STOPPED;
    case KEEL_JOB_RUNNING:
        return to == KEEL_JOB_DONE || to == KEEL_JOB_FAILED || to == KEEL_JOB_STOPPED;
    case KEEL_JOB_DONE:
    case KEEL_JOB_FAILED:
    case KEEL_JOB_STOPPED:
        return to == KEEL_JOB_PENDING; /* keelctl job rollback: trained again from a checkpoint */
    default:
        return 0;
    }
}

void keel_job_status_init(struct keel_job_status *st, uint64_t now_ms)
{
    memset(st, 0, sizeof(*st));
    st->state = KEEL_JOB_PENDING;
    st->changed_ms = now_ms;
}

int keel_job_status_move(struct keel_job_status *st, enum keel_job_state to, uint64_t now_ms,
                         const char *reason, struct keel_error *err)
{
    if (!keel_job_state_can_move(st->state, to))
        return keel_err_set(err, KEEL_EINVAL, "job state: cannot go from '%s' to '%s'",
                            keel_job_state_name(st->state), keel_job_state_name(to));
    st->state = to;
    st->changed_ms = now_ms;
    snprintf(st->reason, sizeof(st->reason), "%s", reason ? reason : "");
    return 0;
}

void keel_job_status_encode(const struct keel_job_status *st, struct keel_buf *out)
{
    json_t *root = json_object();

    json_object_set_new(root, "state", json_string(keel_job_state_name(st->state)));
    json_object_set_new(root, "changed_ms", json_integer((json_int_t)st->changed_ms));
    json_object_set_new(root, "reason", json_string(st->reason));
    keel__json_dump_record(root, out);
}

int keel_job_status_decode(const void *data, size_t len, struct keel_job_status *st,
                           struct keel_error *err)
{
    static const char *const keys[] = {"state", "changed_ms", "reason", NULL};
    json_t *root, *state, *reason;
    uint64_t ms;
    int rc;

    memset(st, 0, sizeof(*st));
    root = keel__json_load_record(data, len, KEEL_JOBS_MAX_JSON, "job state", keys, 0, err);
    if (root == NULL)
        return KEEL_ECORRUPT;
    state = json_object_get(root, "state");
    reason = json_object_get(root, "reason");
    if (!json_is_string(state) || keel_job_state_parse(json_string_value(state)) == 0) {
        rc = keel__json_corrupt(err, "job state",
                                "state: must be pending, running, done, failed or stopped");
        goto out;
    }
    if (!json_is_string(reason) || json_string_length(reason) >= KEEL_JOB_REASON_MAX) {
        rc = keel__json_corrupt(err, "job state", "reason: must be a string of at most %d bytes",
                                KEEL_JOB_REASON_MAX - 1);
        goto out;
    }
    if ((rc = keel__json_get_uint(root, "job state", "changed_ms", INT64_MAX, &ms, err)) != 0)
        goto out;
    st->state = keel_job_state_parse(json_string_value(state));
    st->changed_ms = ms;
    memcpy(st->reason, json_string_value(reason), json_string_length(reason) + 1);
out:
    json_decref(root);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* Shards                                                                    */
/* ------------------------------------------------------------------------ */

void keel_shards_init(struct keel_shard_table *t, uint32_t nshards, uint32_t epochs)
{
    t->nshards = nshards;
    t->epochs = epochs;
    t->shards = keel_calloc(nshards ? nshards : 1, sizeof(struct keel_shard));
}

void keel_shards_release(struct keel_shard_table *t)
{
    free(t->shards);
    t->shards = NULL;
    t->nshards = 0;
}

static void free_shard(struct keel_shard *s)
{
    s->owner[0] = '\0';
    s->incarnation = 0;
}

long keel_shards_owned_by(const struct keel_shard_table *t, const char *id, uint64_t incarnation)
{
    for (uint32_t i = 0; i < t->nshards; i++)
        if (t->shards[i].owner[0] != '\0' && t->shards[i].incarnation == incarnation &&
            strcmp(t->shards[i].owner, id) == 0)
            return (long)i;
    return -1;
}

static int cmp_worker(const void *a, const void *b)
{
    const struct keel_worker_ref *x = a, *y = b;
    int c = strcmp(x->id, y->id);

    if (c != 0)
        return c;
    return x->incarnation < y->incarnation ? -1 : x->incarnation > y->incarnation;
}

unsigned keel_shards_assign(struct keel_shard_table *t, const struct keel_worker_ref *live,
                            size_t nlive, unsigned char *changed)
{
    struct keel_worker_ref *w = keel_calloc(nlive ? nlive : 1, sizeof(*w));
    unsigned char *mark;
    size_t n = 0;
    unsigned nchanged = 0;

    /* Valid, distinct ids only, sorted so the outcome does not depend on order. */
    for (size_t i = 0; i < nlive; i++)
        if (live[i].id != NULL && keel_id_valid(live[i].id))
            w[n++] = live[i];
    qsort(w, n, sizeof(*w), cmp_worker);
    {
        /* An id listed twice means membership is confused: lease to neither. */
        size_t k = 0, i = 0;

        while (i < n) {
            size_t j = i + 1;

            while (j < n && strcmp(w[j].id, w[i].id) == 0)
                j++;
            if (j == i + 1)
                w[k++] = w[i];
            i = j;
        }
        n = k;
    }
    mark = changed ? changed : keel_calloc(t->nshards ? t->nshards : 1, 1);
    memset(mark, 0, t->nshards);

    /* Leases of workers that are gone (or came back as a new incarnation) end. */
    for (uint32_t i = 0; i < t->nshards; i++) {
        struct keel_shard *s = &t->shards[i];
        struct keel_worker_ref key = {s->owner, s->incarnation};

        if (s->owner[0] == '\0' || bsearch(&key, w, n, sizeof(*w), cmp_worker) != NULL)
            continue;
        free_shard(s);
        mark[i] = 1;
    }

    /* Idle workers take the free shards that are furthest behind. */
    for (size_t i = 0; i < n; i++) {
        long best = -1;

        if (keel_shards_owned_by(t, w[i].id, w[i].incarnation) >= 0)
            continue;
        for (uint32_t k = 0; k < t->nshards; k++) {
            const struct keel_shard *s = &t->shards[k];

            if (s->done || s->owner[0] != '\0')
                continue;
            if (best < 0 || s->pass < t->shards[best].pass)
                best = (long)k;
        }
        if (best < 0)
            break;
        snprintf(t->shards[best].owner, sizeof(t->shards[best].owner), "%s", w[i].id);
        t->shards[best].incarnation = w[i].incarnation;
        t->shards[best].lease++;
        mark[best] = 1;
    }
    for (uint32_t k = 0; k < t->nshards; k++)
        nchanged += mark[k];
    if (mark != changed)
        free(mark);
    free(w);
    return nchanged;
}

int keel_shards_progress(struct keel_shard_table *t, uint32_t shard, const char *worker,
                         uint64_t incarnation, uint32_t pass, uint32_t batch,
                         struct keel_error *err)
{
    struct keel_shard *s;
    uint64_t at, to;

    if (shard >= t->nshards)
        return keel_err_set(err, KEEL_EINVAL,
                            "shard %" PRIu32 ": no such shard (the job has %" PRIu32 ")", shard,
                            t->nshards);
    s = &t->shards[shard];
    at = keel_shard_seq(s->pass, s->batch);
    to = keel_shard_seq(pass, batch);
    if (s->owner[0] != '\0' && (strcmp(s->owner, worker) != 0 || s->incarnation != incarnation))
        return keel_err_set(err, KEEL_EPERM,
                            "shard %" PRIu32 ": '%s' (incarnation %" PRIu64
                            ") does not hold it, '%s' (incarnation %" PRIu64 ") does",
                            shard, worker, incarnation, s->owner, s->incarnation);
    if (to == at)
        return 0; /* a repeated report */
    if (s->done)
        return keel_err_set(err, KEEL_EINVAL, "shard %" PRIu32 ": already done", shard);
    if (s->owner[0] == '\0')
        return keel_err_set(err, KEEL_EPERM, "shard %" PRIu32 ": '%s' does not hold it", shard,
                            worker);
    if (pass > t->epochs || (pass == t->epochs && batch != 0))
        return keel_err_set(err, KEEL_EINVAL,
                            "shard %" PRIu32 ": progress (%" PRIu32 ", %" PRIu32
                            ") is past the end (%" PRIu32 ", 0)",
                            shard, pass, batch, t->epochs);
    if (to < at)
        return keel_err_set(err, KEEL_EINVAL,
                            "shard %" PRIu32 ": progress (%" PRIu32 ", %" PRIu32
                            ") is behind the recorded (%" PRIu32 ", %" PRIu32 ")",
                            shard, pass, batch, s->pass, s->batch);
    if (pass > s->pass)
        free_shard(s); /* a lease lasts one pass */
    s->pass = pass;
    s->batch = batch;
    s->done = pass == t->epochs;
    return 0;
}

unsigned keel_shards_rewind(struct keel_shard_table *t, const uint64_t *floor,
                            unsigned char *changed)
{
    unsigned rewound = 0;

    for (uint32_t i = 0; i < t->nshards; i++) {
        struct keel_shard *s = &t->shards[i];
        /* The seq of batch b of pass p is (p, b + 1): the position after it. */
        uint32_t pass = (uint32_t)(floor[i] >> 32), batch = (uint32_t)floor[i];

        if (pass > t->epochs || (pass == t->epochs && batch != 0))
            pass = t->epochs, batch = 0;
        if (keel_shard_seq(pass, batch) < keel_shard_seq(s->pass, s->batch)) {
            s->pass = pass;
            s->batch = batch;
            s->done = 0;
            rewound++;
        }
        s->lease++;
        if (changed)
            changed[i] = 1;
    }
    return rewound;
}

int keel_shards_all_done(const struct keel_shard_table *t)
{
    for (uint32_t i = 0; i < t->nshards; i++)
        if (!t->shards[i].done)
            return 0;
    return 1;
}

void keel_shards_summary(const struct keel_shard_table *t, uint32_t *done, uint64_t *passes)
{
    uint32_t d = 0;
    uint64_t p = 0;

    for (uint32_t i = 0; i < t->nshards; i++) {
        d += t->shards[i].done != 0;
        p += t->shards[i].pass;
    }
    if (done)
        *done = d;
    if (passes)
        *passes = p;
}

void keel_shard_encode(const struct keel_shard *s, struct keel_buf *out)
{
    json_t *root = json_object();

    if (s->owner[0] != '\0') {
        json_object_set_new(root, "owner", json_string(s->owner));
        json_object_set_new(root, "incarnation", json_integer((json_int_t)s->incarnation));
    } else {
        json_object_set_new(root, "owner", json_null());
    }
    json_object_set_new(root, "pass", json_integer(s->pass));
    json_object_set_new(root, "batch", json_integer(s->batch));
    json_object_set_new(root, "done", json_boolean(s->done));
    json_object_set_new(root, "lease", json_integer((json_int_t)s->lease));
    keel__json_dump_record(root, out);
}

int keel_shard_decode(const void *data, size_t len, uint32_t epochs, struct keel_shard *s,
                      struct keel_error *err)
{
    static const char *const keys[] = {"owner", "incarnation", "pass", "batch",
                                       "done",  "lease",       NULL};
    json_t *root, *owner, *done;
    uint64_t pass, batch, inc = 0, lease = 0;
    int rc;

    memset(s, 0, sizeof(*s));
    root = keel__json_load_record(data, len, KEEL_JOBS_MAX_JSON, "shard", keys, 0, err);
    if (root == NULL)
        return KEEL_ECORRUPT;
    owner = json_object_get(root, "owner");
    done = json_object_get(root, "done");
    if (owner == NULL || (!json_is_null(owner) &&
                          (!json_is_string(owner) || !keel_id_valid(json_string_value(owner))))) {
        rc = keel__json_corrupt(err, "shard",
                                "owner: must be null or a worker id of 1-%d of [A-Za-z0-9_-]",
                                KEEL_ID_MAX);
        goto out;
    }
    if (json_is_string(owner)) {
        if ((rc = keel__json_get_uint(root, "shard", "incarnation", INT64_MAX, &inc, err)) != 0)
            goto out;
    } else if (json_object_get(root, "incarnation") != NULL) {
        rc = keel__json_corrupt(err, "shard", "incarnation: given without an owner");
        goto out;
    }
    if ((rc = keel__json_get_uint(root, "shard", "pass", UINT32_MAX, &pass, err)) != 0 ||
        (rc = keel__json_get_uint(root, "shard", "batch", UINT32_MAX, &batch, err)) != 0)
        goto out;
    if (json_object_get(root, "lease") != NULL &&
        (rc = keel__json_get_uint(root, "shard", "lease", INT64_MAX, &lease, err)) != 0)
        goto out;
    if (!json_is_boolean(done)) {
        rc = keel__json_corrupt(err, "shard", "done: must be true or false");
        goto out;
    }
    if (pass > epochs) {
        rc = keel__json_corrupt(
            err, "shard", "pass: %" PRIu64 " is past the job's %" PRIu32 " epochs", pass, epochs);
        goto out;
    }
    if (json_is_true(done) != (pass == epochs)) {
        rc = keel__json_corrupt(
            err, "shard", "done: must be true exactly when pass is the job's %" PRIu32 " epochs",
            epochs);
        goto out;
    }
    if (pass == epochs && (batch != 0 || json_is_string(owner))) {
        rc = keel__json_corrupt(err, "shard", "a done shard must be at batch 0 and have no owner");
        goto out;
    }
    if (json_is_string(owner))
        snprintf(s->owner, sizeof(s->owner), "%s", json_string_value(owner));
    s->incarnation = inc;
    s->lease = lease;
    s->pass = (uint32_t)pass;
    s->batch = (uint32_t)batch;
    s->done = pass == epochs;
    rc = 0;
out:
    json_decref(root);
    return rc;
}
