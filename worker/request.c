/*
 * request.c - keel-worker's requests to servers: pulls and pushes routed to
 * the primaries of their ranges and retried until they are answered, data
 * records read from any server that holds them, and the test evaluation.
 *
 * Everything here runs on the training thread, except on_reply(), which
 * runs on a client's thread and only records the reply.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "alloc.h"
#include "clock.h"
#include "log.h"
#include "worker_internal.h"

#define READ_AHEAD_BATCHES 8     /* a training read asks for this many batches of records */
#define MAX_READ_RECORDS   65536 /* ... but never more records than this */
#define DOWN_TIMEOUT_MS    2000  /* wait for a server we are not connected to */

static void sleep_ms(uint64_t ms)
{
    struct timespec d = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};

    nanosleep(&d, NULL);
}

/* Requests that only a change on the server's side could make succeed. */
static int fatal_code(int code)
{
    switch (code) {
    case KEEL_EINVAL:
    case KEEL_EPERM:
    case KEEL_ENOTIMPL:
    case KEEL_EMAGIC:
    case KEEL_EVERSION:
    case KEEL_ETYPE:
    case KEEL_EFLAGS:
    case KEEL_ERESERVED:
    case KEEL_EFRAMESIZE:
        return 1;
    default:
        return 0;
    }
}

/* ---- one round of requests, answered in parallel -------------------------------- */

enum { X_PULL = 1, X_PUSH = 2 };

/* Keys of one table for one server. */
struct part {
    unsigned table; /* layer index */
    struct keel_route_group g;
};

struct xchg;

struct call {
    struct xchg *x;
    int answered;
    int rc; /* the transport's result */
    char msg[KEEL_ERROR_MSG_MAX];
    struct keel_reply *reply;
};

/*
 * The requests of one round.  Freed by whoever drops the last reference:
 * the caller holds one, each request in flight one, so a caller that stops
 * waiting (a stop during a pull) leaves it to the last reply.
 */
struct xchg {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    size_t ncalls, waiting;
    int refs;
    struct call *calls;
};

static struct xchg *xchg_new(size_t n)
{
    struct xchg *x = keel_calloc(1, sizeof(*x));

    pthread_mutex_init(&x->lock, NULL);
    keel_cond_init_mono(&x->cond);
    x->ncalls = n;
    x->refs = 1;
    KEEL_ALLOC_ARRAY(x->calls, n ? n : 1);
    for (size_t i = 0; i < n; i++)
        x->calls[i].x = x;
    return x;
}

static void xchg_free(struct xchg *x)
{
    for (size_t i = 0; i < x->ncalls; i++)
        if (x->calls[i].reply)
            keel_reply_free(x->calls[i].reply);
    free(x->calls);
    pthread_cond_destroy(&x->cond);
    pthread_mutex_destroy(&x->lock);
    free(x);
}

static void xchg_put(struct xchg *x)
{
    int last;

    pthread_mutex_lock(&x->lock);
    last = --x->refs == 0;
    pthread_mutex_unlock(&x->lock);
    if (last)
        xchg_free(x);
}

static void on_reply(void *arg, int rc, struct keel_reply *reply, const struct keel_error *err)
{
    struct call *c = arg;
    struct xchg *x = c->x;
    int last;

    pthread_mutex_lock(&x->lock);
    if (c->answered) { /* given up on (the route moved away from its server): dropped */
        last = --x->refs == 0;
        pthread_mutex_unlock(&x->lock);
        if (reply)
            keel_reply_free(reply);
        if (last)
            xchg_free(x);
        return;
    }
    c->rc = rc;
    c->reply = reply;
    if (rc != 0)
        snprintf(c->msg, sizeof(c->msg), "%s", err && err->msg[0] ? err->msg : keel_strerror(rc));
    c->answered = 1;
    x->waiting--;
    last = --x->refs == 0;
    pthread_cond_signal(&x->cond);
    pthread_mutex_unlock(&x->lock);
    if (last)
        xchg_free(x);
}

/* Whether server `id` leads some range in the worker's route. */
static int routed_to(const struct wk *w, const char *id)
{
    for (size_t k = 0; k < w->route.nprimaries; k++)
        if (strcmp(w->route.primaries[k], id) == 0)
            return 1;
    return 0;
}

/*
 * Give up on the unanswered requests to servers that lead nothing in the
 * current route (x->lock held): a stalled or deposed server may hold them
 * until the request time-out, while its ranges are led elsewhere already.
 * They fail with KEEL_EUNAVAILABLE and are sent again by the new route; a
 * push sent twice is applied once (its data position).
 */
static void drop_moved(struct wk *w, struct xchg *x, const struct part *parts)
{
    for (size_t i = 0; i < x->ncalls; i++) {
        struct call *c = &x->calls[i];

        if (c->answered || routed_to(w, parts[i].g.server))
            continue;
        c->rc = KEEL_EUNAVAILABLE;
        snprintf(c->msg, sizeof(c->msg),
                 "no answer, and it leads no range since assignment "
                 "version %" PRIu64,
                 w->route.version);
        c->answered = 1;
        x->waiting--;
    }
}

/*
 * Report the servers that unanswered requests wait for while their client is
 * not connected (a crashed server: its port is closed), so that the leader
 * checks them now (wk_suspect()).  Training thread; x->lock not held.
 */
static void suspect_silent(struct wk *w, struct xchg *x, const struct part *parts)
{
    for (size_t i = 0; i < x->ncalls; i++) {
        struct keel_client *cl;
        int answered;

        pthread_mutex_lock(&x->lock);
        answered = x->calls[i].answered;
        pthread_mutex_unlock(&x->lock);
        if (answered)
            continue;
        cl = wk_conn_of(w, parts[i].g.server);
        if (cl != NULL && !keel_client_connected(cl))
            wk_suspect(w, parts[i].g.server);
    }
}

/*
 * Wait for every reply; with `abandon`, give up when the worker is stopping.
 * Requests to servers the route no longer uses are given up on at once, and
 * every half second without every reply the servers still silent and not
 * connected are reported, the route is brought up to date from the watch,
 * and requests to servers it no longer uses are given up on again.
 */
static int xchg_wait(struct wk *w, struct xchg *x, const struct part *parts, int abandon)
{
    uint64_t check = keel_clock_mono_ms() + 500;

    pthread_mutex_lock(&x->lock);
    /* A push seen through after the next pull may wait on servers that left the route since. */
    drop_moved(w, x, parts);
    while (x->waiting > 0) {
        if (abandon && atomic_load(&w->stopping)) {
            pthread_mutex_unlock(&x->lock);
            xchg_put(x);
            return KEEL_ECANCELED;
        }
        keel_cond_timedwait_ms(&x->cond, &x->lock, 100);
        if (x->waiting > 0 && keel_clock_mono_ms() >= check) {
            pthread_mutex_unlock(&x->lock); /* replies go on arriving meanwhile */
            suspect_silent(w, x, parts);
            wk_refresh_route(w, 0, NULL);
            pthread_mutex_lock(&x->lock);
            drop_moved(w, x, parts);
            check = keel_clock_mono_ms() + 500;
        }
    }
    pthread_mutex_unlock(&x->lock);
    return 0;
}

static uint64_t timeout_for(struct wk *w, struct keel_client *cl)
{
    uint64_t t = w->config->request_timeout_ms;

    return keel_client_connected(cl) || t < DOWN_TIMEOUT_MS ? t : DOWN_TIMEOUT_MS;
}

static void send_part(struct wk *w, struct xchg *x, const struct part *p, struct call *c, int kind,
                      uint64_t clock, uint32_t shard, uint64_t seq)
{
    static const uint64_t no_key = 0;
    static const float no_row = 0;
    struct wk_job *j = &w->job;
    struct keel_client *cl = wk_conn_of(w, p->g.server);
    uint32_t width = keel_model_row_width(&j->model, p->table);
    struct keel_rows data = {keel_model_table_id(p->table),
                             width,
                             p->g.nkeys,
                             p->g.nkeys ? p->g.keys : &no_key,
                             NULL,
                             kind == X_PULL ? j->pull_enc : j->spec.compression,
                             NULL};
    struct keel_error e;
    struct keel_msg m;
    float *rows = NULL;
    uint16_t *half = NULL;

    keel_error_init(&e);
    if (cl == NULL) {
        c->answered = 1;
        c->rc = KEEL_EUNAVAILABLE;
        snprintf(c->msg, sizeof(c->msg), "server %s is not registered", p->g.server);
        return;
    }
    memset(&m, 0, sizeof(m));
    if (kind == X_PULL) {
        m.hdr.type = KEEL_MSG_PULL;
        m.u.pull.worker_id = keel_str_of(w->id);
        m.u.pull.clock = clock;
        m.u.pull.assignment_version = w->route.version;
        m.u.pull.data = data;
    } else {
        const float *table = j->pushed.table[p->table];
        size_t n = keel_size_mul(p->g.nkeys, width);

        /* The rows of the model this server leads, gathered (and narrowed, when compressed). */
        if (data.enc == KEEL_ROWS_F32) {
            rows = keel_malloc(keel_size_mul(n, sizeof(float)));
            for (uint32_t i = 0; i < p->g.nkeys; i++)
                memcpy(rows + (size_t)i * width, table + (size_t)p->g.rows[i] * width,
                       (size_t)width * sizeof(float));
            data.rows = p->g.nkeys ? rows : &no_row;
        } else {
            half = keel_malloc(keel_size_mul(n + 1, sizeof(uint16_t)));
            for (uint32_t i = 0; i < p->g.nkeys; i++)
                keel_half_narrow((enum keel_rows_enc)data.enc, table + (size_t)p->g.rows[i] * width,
                                 half + (size_t)i * width, width);
            data.half = half;
        }
        m.hdr.type = KEEL_MSG_PUSH;
        m.u.push.worker_id = keel_str_of(w->id);
        m.u.push.shard = shard;
        pthread_mutex_lock(&w->lock);
        m.u.push.incarnation = w->incarnation;
        pthread_mutex_unlock(&w->lock);
        m.u.push.seq = seq;
        m.u.push.clock = clock;
        m.u.push.assignment_version = w->route.version;
        m.u.push.lease = w->job.lease;
        m.u.push.data = data;
    }
    pthread_mutex_lock(&x->lock);
    x->waiting++;
    x->refs++;
    pthread_mutex_unlock(&x->lock);
    if (keel_client_send(cl, &m, timeout_for(w, cl), on_reply, c, &e) != 0) {
        pthread_mutex_lock(&x->lock);
        x->waiting--;
        x->refs--;
        c->answered = 1;
        c->rc = e.code;
        snprintf(c->msg, sizeof(c->msg), "%s", e.msg);
        pthread_mutex_unlock(&x->lock);
    }
    free(rows);
    free(half);
}

/* Copy a pull's rows into the model's parameters; the reply must match the request. */
static int take_rows(struct wk_job *j, const struct part *p, const struct keel_msg_pull_reply *r,
                     struct keel_error *err)
{
    uint32_t width = keel_model_row_width(&j->model, p->table);
    float *table = j->params.table[p->table];

    if (r->data.table_id != keel_model_table_id(p->table) || r->data.row_width != width ||
        r->data.nkeys != p->g.nkeys ||
        (p->g.nkeys && memcmp(r->data.keys, p->g.keys, (size_t)p->g.nkeys * 8) != 0))
        return keel_err_set(err, KEEL_EINVAL,
                            "server %s answered a pull of %" PRIu32
                            " rows of table %u with %" PRIu32 " rows of table %" PRIu32
                            " (width %" PRIu32 ")",
                            p->g.server, p->g.nkeys, keel_model_table_id(p->table), r->data.nkeys,
                            r->data.table_id, r->data.row_width);
    for (uint32_t i = 0; i < p->g.nkeys; i++) /* widened, when the rows came as 16-bit floats */
        keel_rows_widen(&r->data, i, 1, table + (size_t)p->g.rows[i] * width);
    return 0;
}

static void parts_free(struct part *parts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(parts[i].g.keys);
        free(parts[i].g.rows);
    }
    free(parts);
}

/* Split the failed parts again by the current route; empty pushes stay with live primaries. */
static struct part *regroup(struct wk *w, struct part *failed, size_t nfailed, size_t *n,
                            struct keel_error *err)
{
    struct part *out = NULL;
    int rc = 0;

    *n = 0;
    for (size_t i = 0; i < nfailed && rc == 0; i++) {
        struct keel_route_group *g = NULL;
        size_t ng = 0;

        if (failed[i].g.nkeys == 0) {
            for (size_t k = 0; k < w->route.nprimaries; k++)
                if (strcmp(w->route.primaries[k], failed[i].g.server) == 0) {
                    KEEL_REALLOC_ARRAY(out, *n + 1);
                    out[(*n)++] = failed[i];
                    failed[i].g.keys = NULL;
                    failed[i].g.rows = NULL;
                    break;
                }
            continue;
        }
        rc = keel_route_group(w->assign, failed[i].g.keys, failed[i].g.rows, failed[i].g.nkeys, &g,
                              &ng, err);
        if (rc != 0) {
            /* No primary for some range now: keep the part as it was and retry later. */
            KEEL_REALLOC_ARRAY(out, *n + 1);
            out[(*n)++] = failed[i];
            failed[i].g.keys = NULL;
            failed[i].g.rows = NULL;
            rc = 0;
            continue;
        }
        KEEL_REALLOC_ARRAY(out, *n + ng);
        for (size_t k = 0; k < ng; k++) {
            out[*n].table = failed[i].table;
            out[*n].g = g[k];
            (*n)++;
        }
        free(g); /* the keys and rows moved to `out` */
    }
    parts_free(failed, nfailed);
    return out;
}

/*
 * Send every part, and send again what failed for a reason that can pass (a
 * lost connection, a time-out, a redirect, a server not serving the job
 * yet), re-routed by the newest assignment, until everything is answered or
 * [worker] retry_timeout has passed.  KEEL_ECANCELED when the worker stops
 * (a pull is abandoned at once, a push once its first answers are in) or
 * the job stops running.  Takes ownership of `parts`.
 */
/* A round of requests sent and not yet seen through (exchange_send(), exchange_finish()). */
struct wk_push {
    int kind;
    struct xchg *x; /* the round in flight, or NULL */
    struct part *parts;
    size_t nparts;
    uint64_t clock, seq, start;
    uint32_t shard;
};

/* Send every part of a round; exchange_finish() sees it through.  Takes ownership of `parts`. */
static struct wk_push *exchange_send(struct wk *w, int kind, struct part *parts, size_t nparts,
                                     uint64_t clock, uint32_t shard, uint64_t seq)
{
    struct wk_push *r = keel_calloc(1, sizeof(*r));

    r->kind = kind;
    r->parts = parts;
    r->nparts = nparts;
    r->clock = clock;
    r->shard = shard;
    r->seq = seq;
    r->start = keel_clock_mono_ms();
    if (nparts > 0) {
        r->x = xchg_new(nparts);
        for (size_t i = 0; i < nparts; i++)
            send_part(w, r->x, &parts[i], &r->x->calls[i], kind, clock, shard, seq);
    }
    return r;
}

/* Drop a round: its replies, if any come, are thrown away. */
static void exchange_drop(struct wk_push *r)
{
    if (r == NULL)
        return;
    if (r->x != NULL)
        xchg_put(r->x);
    parts_free(r->parts, r->nparts);
    free(r);
}

/*
 * Wait for every reply of round `r` and send again what failed for a reason
 * that can pass (a lost connection, a time-out, a redirect, a server not
 * serving the job yet), re-routed by the newest assignment, until
 * everything is answered or [worker] retry_timeout has passed since the
 * first send.  KEEL_ECANCELED when the worker stops (a pull is abandoned at
 * once, a push once its first answers are in) or the job stops running.
 * Frees `r`.
 */
static int exchange_finish(struct wk *w, struct wk_push *r, struct wk_xstats *st,
                           struct keel_error *err)
{
    int kind = r->kind;
    const char *what = kind == X_PULL ? "pull" : "push";
    uint64_t start = r->start, backoff = 50, clock = r->clock, seq = r->seq;
    uint32_t shard = r->shard;
    struct part *parts = r->parts;
    size_t nparts = r->nparts;
    struct xchg *x = r->x;
    unsigned round = 0;
    int rc = 0;

    free(r);
    while (nparts > 0) {
        struct part *failed;
        size_t nfailed = 0;
        char problem[KEEL_ERROR_MSG_MAX + 128] = "";
        int stale = 0, changed;

        if (x == NULL) {
            x = xchg_new(nparts);
            for (size_t i = 0; i < nparts; i++)
                send_part(w, x, &parts[i], &x->calls[i], kind, clock, shard, seq);
        }
        if (xchg_wait(w, x, parts, kind == X_PULL) != 0) {
            parts_free(parts, nparts);
            return keel_err_set(err, KEEL_ECANCELED, "stopping");
        }
        KEEL_ALLOC_ARRAY(failed, nparts);
        for (size_t i = 0; i < nparts && rc == 0; i++) {
            struct part *p = &parts[i];
            struct call *c = &x->calls[i];
            int code = c->rc;
            char why[KEEL_ERROR_MSG_MAX];

            snprintf(why, sizeof(why), "%s", c->msg);
            if (code == 0) {
                const struct keel_msg *m = &c->reply->msg;

                if (m->hdr.type == KEEL_MSG_ERROR) {
                    code = m->u.error.code;
                    snprintf(why, sizeof(why), "%.*s", (int)m->u.error.message.len,
                             m->u.error.message.ptr);
                    if (code == KEEL_EREDIRECT)
                        stale = 1;
                } else if (kind == X_PULL && m->hdr.type == KEEL_MSG_PULL_REPLY) {
                    rc = take_rows(&w->job, p, &m->u.pull_reply, err);
                    if (rc == 0 && st) {
                        /* Clocks stay far below 2^63: the difference fits. */
                        int64_t lead = (int64_t)clock - (int64_t)m->u.pull_reply.clock;

                        if (st->replies++ == 0 || lead > st->lead)
                            st->lead = lead;
                    }
                    continue;
                } else if (kind == X_PUSH && m->hdr.type == KEEL_MSG_ACK) {
                    if (st) {
                        st->acks++;
                        st->duplicates += m->u.ack.status == KEEL_ACK_DUPLICATE;
                    }
                    continue;
                } else {
                    rc = keel_err_set(err, KEEL_EINVAL, "server %s answered a %s with %s",
                                      p->g.server, what, keel_msg_type_name(m->hdr.type));
                    break;
                }
            }
            if (kind == X_PUSH && code == KEEL_EEPOCH) { /* the lease is over: see train.c */
                rc = keel_err_set(err, code, "server %s refused a push: %s", p->g.server, why);
                break;
            }
            if (fatal_code(code)) {
                rc = keel_err_set(err, code, "server %s refused a %s of table %u: %s", p->g.server,
                                  what, keel_model_table_id(p->table), why);
                break;
            }
            snprintf(problem, sizeof(problem), "server %s: %s", p->g.server, why);
            if (c->rc != 0) { /* no answer at all: is the server still there? */
                struct keel_client *cl = wk_conn_of(w, p->g.server);

                if (cl == NULL || !keel_client_connected(cl))
                    wk_suspect(w, p->g.server);
            }
            failed[nfailed++] = *p;
            p->g.keys = NULL;
            p->g.rows = NULL;
        }
        xchg_put(x);
        x = NULL;
        parts_free(parts, nparts);
        parts = NULL;
        nparts = 0;
        if (rc != 0 || nfailed == 0) {
            parts_free(failed, nfailed);
            break;
        }
        if (keel_clock_mono_ms() - start >= w->config->worker_retry_timeout_ms) {
            parts_free(failed, nfailed);
            rc = keel_err_set(err, KEEL_ETIMEDOUT, "%zu request(s) still failing after %.1f s: %s",
                              nfailed, (double)(keel_clock_mono_ms() - start) / 1000.0, problem);
            break;
        }
        if (round++ % 5 == 0)
            KEEL_LOG_WARN("%s of clock %" PRIu64 ": retrying %zu request(s): %s", what, clock,
                          nfailed, problem);
        changed = wk_refresh_route(w, stale, err);
        if (changed <= 0) {
            sleep_ms(backoff);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
            wk_refresh_route(w, 0, NULL); /* the watch may have brought a newer one meanwhile */
        }
        if (atomic_load(&w->stopping)) {
            /* A push is not retried past a stop: the next life re-sends it (idempotent). */
            parts_free(failed, nfailed);
            return keel_err_set(err, KEEL_ECANCELED, "stopping with %zu request(s) unanswered: %s",
                                nfailed, problem);
        }
        if (!wk_job_running(w)) { /* the servers dropped it: nothing left to apply or read */
            parts_free(failed, nfailed);
            return keel_err_set(err, KEEL_ECANCELED, "job %s is no longer running", w->job.name);
        }
        parts = regroup(w, failed, nfailed, &nparts, err);
    }
    parts_free(parts, nparts);
    return rc;
}

static int exchange(struct wk *w, int kind, struct part *parts, size_t nparts, uint64_t clock,
                    uint32_t shard, uint64_t seq, struct wk_xstats *st, struct keel_error *err)
{
    return exchange_finish(w, exchange_send(w, kind, parts, nparts, clock, shard, seq), st, err);
}

static void group_copy(struct keel_route_group *dst, const struct keel_route_group *src)
{
    *dst = *src;
    KEEL_ALLOC_ARRAY(dst->keys, src->nkeys ? src->nkeys : 1);
    KEEL_ALLOC_ARRAY(dst->rows, src->nkeys ? src->nkeys : 1);
    memcpy(dst->keys, src->keys, (size_t)src->nkeys * sizeof(*src->keys));
    memcpy(dst->rows, src->rows, (size_t)src->nkeys * sizeof(*src->rows));
}

/* Every group of the route; with `every_primary`, an empty part for each primary without keys. */
static struct part *route_parts(struct wk *w, int every_primary, size_t *n)
{
    const struct keel_route *r = &w->route;
    struct part *parts;
    size_t total = r->nprimaries;

    for (unsigned t = 0; t < r->ntables; t++)
        total += r->ngroups[t];
    KEEL_ALLOC_ARRAY(parts, total ? total : 1);
    *n = 0;
    for (unsigned t = 0; t < r->ntables; t++)
        for (size_t g = 0; g < r->ngroups[t]; g++) {
            parts[*n].table = t;
            group_copy(&parts[*n].g, &r->groups[t][g]);
            (*n)++;
        }
    for (size_t p = 0; every_primary && p < r->nprimaries; p++) {
        int has = 0;

        for (unsigned t = 0; t < r->ntables && !has; t++)
            for (size_t g = 0; g < r->ngroups[t] && !has; g++)
                has = strcmp(r->groups[t][g].server, r->primaries[p]) == 0;
        if (!has) {
            memset(&parts[*n], 0, sizeof(parts[*n]));
            snprintf(parts[*n].g.server, sizeof(parts[*n].g.server), "%s", r->primaries[p]);
            (*n)++;
        }
    }
    return parts;
}

int wk_pull_all(struct wk *w, uint64_t clock, int exact, struct wk_xstats *st,
                struct keel_error *err)
{
    size_t n;
    struct part *parts = route_parts(w, 0, &n);

    w->job.pull_enc = exact ? KEEL_ROWS_F32 : w->job.spec.compression;
    return exchange(w, X_PULL, parts, n, clock, 0, 0, st, err);
}

struct wk_push *wk_push_start(struct wk *w, uint32_t shard, uint64_t seq, uint64_t clock)
{
    struct wk_job *j = &w->job;
    struct keel_model_params t = j->pushed;
    size_t n;
    struct part *parts = route_parts(w, 1, &n);

    j->pushed = j->grads; /* read by every send of this push, retries included */
    j->grads = t;
    return exchange_send(w, X_PUSH, parts, n, clock, shard, seq);
}

int wk_push_finish(struct wk *w, struct wk_push *p, struct wk_xstats *st, struct keel_error *err)
{
    return exchange_finish(w, p, st, err);
}

void wk_push_drop(struct wk_push *p)
{
    exchange_drop(p);
}

/* ---- data records ---------------------------------------------------------------------- */

/*
 * How long to wait for a read: a request's time, but at most one lease TTL.
 * A server silent that long is dead or stalled past what its lease allows,
 * and reads are idempotent: any other server holding the dataset answers
 * the same (a push or pull instead waits until the route moves away).
 */
static uint64_t read_timeout(struct wk *w, struct keel_client *cl)
{
    uint64_t t = timeout_for(w, cl), ttl = w->config->etcd_lease_ttl_ms;

    return ttl > 0 && ttl < t ? ttl : t;
}

/*
 * Records [first, first + max) of `shard` of `dataset` (fewer when the
 * server's frame or the shard ends first), from the server read last if it
 * still answers, else the next registered server that holds the dataset.
 * KEEL_EINVAL when a server holding the dataset says the shard does not
 * exist; after [worker] retry_timeout of failures, the last one.  With
 * `sticky` (training reads), the server that answered is the one asked first
 * next time, and a change of it is logged.
 */
static int read_records(struct wk *w, const char *dataset, uint32_t shard, uint64_t first,
                        uint32_t max, int sticky, struct keel_reply **out, struct keel_error *err)
{
    uint64_t start = keel_clock_mono_ms(), backoff = 100;
    unsigned round = 0;

    *out = NULL;
    for (;;) {
        char(*ids)[KEEL_ID_MAX + 1];
        size_t n = wk_servers(w, &ids), from = n ? shard % n : 0;
        char problem[KEEL_ERROR_MSG_MAX + 128];

        snprintf(problem, sizeof(problem), "no server is registered");
        for (size_t k = 0; k < n; k++)
            if (strcmp(ids[k], w->data_server) == 0)
                from = k;
        for (size_t k = 0; k < n; k++) {
            const char *id = ids[(from + k) % n];
            struct keel_client *cl = wk_conn_of(w, id);
            struct keel_reply *reply = NULL;
            struct keel_error e;
            struct keel_msg m;
            int rc;

            keel_error_init(&e);
            if (cl == NULL)
                continue;
            memset(&m, 0, sizeof(m));
            m.hdr.type = KEEL_MSG_SHARD_READ;
            m.u.shard_read.dataset = keel_str_of(dataset);
            m.u.shard_read.shard = shard;
            m.u.shard_read.first = first;
            m.u.shard_read.max_records = max;
            if ((rc = keel_client_call(cl, &m, read_timeout(w, cl), &reply, &e)) != 0) {
                snprintf(problem, sizeof(problem), "server %s: %s", id, e.msg);
                continue;
            }
            if (reply->msg.hdr.type == KEEL_MSG_SHARD_DATA) {
                const struct keel_msg_shard_data *d = &reply->msg.u.shard_data;

                if (d->shard != shard || d->first != first || d->nrecords > max) {
                    snprintf(problem, sizeof(problem),
                             "server %s answered with records %" PRIu64 "+%" PRIu32
                             " of shard %" PRIu32,
                             id, d->first, d->nrecords, d->shard);
                    keel_reply_free(reply);
                    continue;
                }
                if (sticky && strcmp(w->data_server, id) != 0) {
                    KEEL_LOG_INFO("reading dataset '%s' from server %s", dataset, id);
                    snprintf(w->data_server, sizeof(w->data_server), "%s", id);
                }
                free(ids);
                *out = reply;
                return 0;
            }
            if (reply->msg.hdr.type == KEEL_MSG_ERROR) {
                const struct keel_msg_error *me = &reply->msg.u.error;

                snprintf(problem, sizeof(problem), "server %s: %.*s", id, (int)me->message.len,
                         me->message.ptr);
                if (me->code == KEEL_EINVAL) {
                    keel_reply_free(reply);
                    free(ids);
                    return keel_err_set(err, KEEL_EINVAL, "%s", problem);
                }
            } else {
                snprintf(problem, sizeof(problem), "server %s answered SHARD_READ with %s", id,
                         keel_msg_type_name(reply->msg.hdr.type));
            }
            keel_reply_free(reply);
        }
        free(ids);
        if (sticky)
            w->data_server[0] = '\0';
        if (atomic_load(&w->stopping))
            return keel_err_set(err, KEEL_ECANCELED, "stopping");
        if (!wk_job_running(w))
            return keel_err_set(err, KEEL_ECANCELED, "job %s is no longer running", w->job.name);
        if (keel_clock_mono_ms() - start >= w->config->worker_retry_timeout_ms)
            return keel_err_set(err, KEEL_ETIMEDOUT,
                                "cannot read shard %" PRIu32 " of dataset '%s' from any server"
                                " for %.1f s: %s",
                                shard, dataset, (double)(keel_clock_mono_ms() - start) / 1000.0,
                                problem);
        if (round++ % 5 == 0)
            KEEL_LOG_WARN("cannot read shard %" PRIu32 " of dataset '%s' yet: %s", shard, dataset,
                          problem);
        sleep_ms(backoff);
        backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
    }
}

void wk_reader_init(struct wk_reader *r, const char *dataset, uint32_t shard)
{
    memset(r, 0, sizeof(*r));
    snprintf(r->dataset, sizeof(r->dataset), "%s", dataset);
    r->shard = shard;
}

void wk_reader_release(struct wk_reader *r)
{
    if (r->reply)
        keel_reply_free(r->reply);
    r->reply = NULL;
    r->n = 0;
}

static int reader_load(struct wk *w, struct wk_reader *r, uint64_t from, struct keel_error *err)
{
    uint64_t want = (uint64_t)w->job.spec.batch_size * READ_AHEAD_BATCHES;
    struct keel_reply *reply;
    int rc;

    if (want > MAX_READ_RECORDS)
        want = MAX_READ_RECORDS;
    if ((rc = read_records(w, r->dataset, r->shard, from, (uint32_t)want, 1, &reply, err)) != 0)
        return rc;
    wk_reader_release(r);
    r->reply = reply;
    r->first = from;
    r->n = reply->msg.u.shard_data.nrecords;
    r->total = reply->msg.u.shard_data.total;
    r->have_total = 1;
    return 0;
}

int wk_reader_open(struct wk *w, struct wk_reader *r, uint64_t from, struct keel_error *err)
{
    return r->have_total ? 0 : reader_load(w, r, from, err);
}

int wk_reader_fill(struct wk *w, struct wk_reader *r, uint64_t from, uint32_t n,
                   struct keel_error *err)
{
    struct wk_job *j = &w->job;
    uint32_t nf = j->model.sizes[0], nclasses = j->model.sizes[j->model.nlayers];
    uint32_t done = 0;
    int rc;

    while (done < n) {
        uint64_t at = from + done;
        const struct keel_msg_shard_data *d;
        struct keel_record_run run;
        uint32_t k;

        if (r->reply == NULL || at < r->first || at >= r->first + r->n) {
            if ((rc = reader_load(w, r, at, err)) != 0)
                return rc;
            if (r->n == 0)
                return keel_err_set(err, KEEL_EINVAL,
                                    "dataset '%s' shard %" PRIu32 " has %" PRIu64
                                    " records; record %" PRIu64 " was wanted",
                                    r->dataset, r->shard, r->total, at);
        }
        d = &r->reply->msg.u.shard_data;
        run = (struct keel_record_run){d->nrecords, d->offsets, d->data, d->offsets[d->nrecords]};
        k = (uint32_t)(r->first + r->n - at < n - done ? r->first + r->n - at : n - done);
        rc = keel_worker_batch(&run, (uint32_t)(at - r->first), k, nf, nclasses,
                               j->x + (size_t)done * nf, j->labels + done, err);
        if (rc != 0)
            return keel_err_prefix(err, rc, "dataset '%s' shard %" PRIu32 " from index %" PRIu64,
                                   r->dataset, r->shard, r->first);
        done += k;
    }
    return 0;
}

int wk_check_dataset(struct wk *w, struct keel_error *err)
{
    const struct keel_jobspec *s = &w->job.spec;
    struct keel_reply *reply = NULL;
    int rc;

    rc = read_records(w, s->dataset, s->shards, 0, 1, 0, &reply, err);
    if (rc == 0) {
        keel_reply_free(reply);
        return keel_err_set(err, KEEL_EINVAL,
                            "dataset '%s' has more shards than the job's %" PRIu32
                            ": the records of the others would never be trained on (import the"
                            " dataset with --shards %" PRIu32 ", or give the job its shard count)",
                            s->dataset, s->shards, s->shards);
    }
    if (rc != KEEL_EINVAL)
        return rc;
    rc = read_records(w, s->dataset, s->shards - 1, 0, 1, 0, &reply, err);
    if (rc == KEEL_EINVAL)
        return keel_err_prefix(err, rc,
                               "dataset '%s' has fewer shards than the job's %" PRIu32
                               " (give the job the dataset's shard count)",
                               s->dataset, s->shards);
    if (rc != 0)
        return rc;
    keel_reply_free(reply);
    /* Shard 0 is the largest (round-robin): its batches per pass space the clocks. */
    if ((rc = read_records(w, s->dataset, 0, 0, 1, 0, &reply, err)) != 0)
        return rc;
    w->job.nb_max = keel_worker_nbatches(reply->msg.u.shard_data.total, s->batch_size);
    keel_reply_free(reply);
    return 0;
}

/* ---- evaluation -------------------------------------------------------------------------- */

int wk_evaluate(struct wk *w, struct keel_eval *e, struct keel_error *err)
{
    struct wk_job *j = &w->job;
    struct keel_eval_sums sums = {0};
    int rc;

    e->examples = 0;
    if (j->spec.test_dataset[0] == '\0')
        return 0;
    /* Clock 0: measure the model as the servers hold it now, without waiting for anyone. */
    if ((rc = wk_pull_all(w, 0, 1, NULL, err)) != 0) /* the model exactly as the servers hold it */
        return rc;
    for (uint32_t shard = 0;; shard++) {
        uint64_t first = 0;

        for (;;) {
            const struct keel_msg_shard_data *d;
            struct keel_record_run run;
            struct keel_reply *reply;
            int last;

            rc = read_records(w, j->spec.test_dataset, shard, first, WK_EVAL_RECORDS, 0, &reply,
                              err);
            if (rc == KEEL_EINVAL && shard > 0 && first == 0)
                goto done; /* past the last shard */
            if (rc != 0)
                return rc;
            d = &reply->msg.u.shard_data;
            if (d->nrecords == 0) {
                keel_reply_free(reply);
                break;
            }
            run =
                (struct keel_record_run){d->nrecords, d->offsets, d->data, d->offsets[d->nrecords]};
            rc = keel_worker_eval(&j->model, j->work, &j->params, &run, 0, d->nrecords, j->x,
                                  j->labels, &sums, err);
            if (rc != 0) {
                keel_reply_free(reply);
                return keel_err_prefix(err, rc, "test dataset '%s' shard %" PRIu32,
                                       j->spec.test_dataset, shard);
            }
            first += d->nrecords;
            last = (reply->msg.hdr.flags & KEEL_FLAG_LAST) != 0;
            keel_reply_free(reply);
            if (last)
                break;
        }
    }
done:
    if (sums.n == 0)
        return keel_err_set(err, KEEL_EINVAL, "test dataset '%s' has no records",
                            j->spec.test_dataset);
    e->examples = sums.n;
    e->accuracy = (double)sums.correct / (double)sums.n;
    e->loss = sums.loss / (double)sums.n;
    return 0;
}
