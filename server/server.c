/*
 * server.c - keel-server: the wiring of store, transport, etcd and ranges.
 *
 * Threads: the listener's I/O threads run handle() for every request; the
 * etcd watch thread keeps the cluster view (cview.h) up to date and runs
 * on_view(); the storage thread commits the update log in groups, sends the
 * ACKs that waited for it, writes snapshots and takes the job's checkpoints
 * every checkpoint_interval clocks (and one when the job ends, on the watch
 * thread); the sender thread streams ranges to their backups (replica.c,
 * which also holds a backup's side and the replica report).
 * srv->lock guards the job (ps, spec), the assignment and the queues; the
 * ranges themselves are guarded inside struct keel_ps.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "keel/assign.h"
#include "keel/checkpoint.h"
#include "cli.h"
#include "clock.h"
#include "keel/dataset.h"
#include "cview.h"
#include "etcd.h"
#include "keel/jobs.h"
#include "keys.h"
#include "log.h"
#include "member.h"
#include "net.h"
#include "ps.h"
#include "keel/range.h"
#include "signals.h"
#include "keel/snapshot.h"
#include "keel/store.h"
#include "keel/replicas.h"
#include "keel/ulog.h"
#include "server.h"
#include "gcommit.h"
#include "server_int.h"

/* ---- ranges follow the assignment (srv->lock held) ------------------------ */

static int shard_moved(void *user, const struct keel_etcd_kv *kv)
{
    struct srv *s = user;
    struct keel_shard sh;
    struct keel_key k;

    return keel_key_parse(kv->key, s->cluster, &k) == KEEL_KEY_JOB_SHARD &&
           keel_shard_decode(kv->value, kv->value_len, s->spec.epochs, &sh, NULL) == 0 &&
           (sh.pass > 0 || sh.batch > 0);
}

/* Call `fn` on each of the running job's shard keys until it returns non-zero; that value. */
static int each_shard(struct srv *s, int (*fn)(void *user, const struct keel_etcd_kv *kv))
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    int rc;

    keel_key_job_prefix(&prefix, s->cluster, s->job);
    keel_buf_add_str(&prefix, "shards/");
    rc = keel_cview_each(s->view, keel_key_str(&prefix), fn, s);
    keel_buf_release(&prefix);
    return rc;
}

static int any_key(void *user, const struct keel_etcd_kv *kv)
{
    (void)user;
    (void)kv;
    return 1;
}

/* Whether the running job has trained: a shard of it has moved in etcd. */
static int job_trained(struct srv *s)
{
    return each_shard(s, shard_moved) != 0;
}

/* Whether a coordinator leases the running job's shards (it can rewind them). */
static int job_leased(struct srv *s)
{
    return each_shard(s, any_key) != 0;
}

/*
 * Whether range `r`, just opened from the initializer because the store had
 * nothing of it, must not be: it has rows, the job has trained (a shard has
 * moved), and this store did not hold the job's ranges before (it is new or
 * was wiped).  Its updates would then be lost silently.
 */
static int state_lost(struct srv *s, unsigned r)
{
    if (s->store_had_job || keel_ps_rows(s->ps, r) == 0)
        return 0;
    return job_trained(s);
}

static void apply_assignment(struct srv *s)
{
    struct keel_error err;
    const char *self = s->config->node_id;
    unsigned opened = 0, closed = 0, restored = 0, promoted = 0, demoted = 0, held_back = 0,
             rewound = 0;
    uint64_t replayed = 0;

    if (s->ps == NULL || s->assign == NULL)
        return;
    keel_error_init(&err);
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        const char *ids[KEEL_ASSIGN_MAX_REPLICATION];
        size_t n = keel_assign_replicas(s->assign, r, ids, KEEL_ASSIGN_MAX_REPLICATION);
        int pos = keel_assign_position(s->assign, r, self);
        int held = keel_ps_holds(s->ps, r);
        uint64_t term = keel_assign_term(s->assign, r);
        struct keel_restore_stats st;

        if (pos == 0) {
            if (held && !keel_ps_is_primary(s->ps, r) && s->report.terms[r] == 0 &&
                s->stored[r] > 0) {
                /*
                 * Led from a copy this server never confirmed: the leader can
                 * only have picked it for the state its store holds.  Restore
                 * that, and let the job be rewound to it.
                 */
                KEEL_LOG_WARN("range %u: told to lead it while its copy from the last primary "
                              "is unconfirmed: restoring it from the store instead",
                              r);
                keel_ps_close_range(s->ps, r);
                held = 0;
            }
            if (!held) {
                /* A fresh range, or one whose every replica was lost: from the store. */
                if (keel_ps_open_range(s->ps, s->store, r, &st, &err) != 0) {
                    KEEL_LOG_ERROR("cannot open range %u: %s", r, err.msg);
                    s->nstreams[r] = 0;
                    continue;
                }
                if (st.lsn == 0 && state_lost(s, r) && s->spec.lost_ranges_rewind) {
                    /*
                     * The job asks for a range nothing holds to start again:
                     * from its initializer, every shard rewound to the start.
                     */
                    if (!s->report.restoring[r])
                        KEEL_LOG_WARN("job %s: told to lead range %u, but this server's store "
                                      "holds none of its state and the job has trained: "
                                      "starting it from its initializer (lost_ranges = rewind)",
                                      s->job, r);
                } else if (st.lsn == 0 && state_lost(s, r)) {
                    keel_ps_close_range(s->ps, r);
                    s->nstreams[r] = 0;
                    if (!s->report.lost[r])
                        KEEL_LOG_ERROR("job %s: told to lead range %u, but this server's store "
                                       "holds none of its state and the job has trained: not "
                                       "starting it from its initializer (a lost disk?)",
                                       s->job, r);
                    s->report_dirty |= !s->report.lost[r];
                    s->report.lost[r] = 1;
                    continue;
                }
                opened++;
                if (st.lsn > 0) {
                    restored++;
                    replayed += st.replayed;
                }
                /*
                 * State from the store while the job trains (or after a
                 * restart) may lack updates that were acknowledged: its
                 * pushes wait until the leader has rewound the shards to
                 * what it holds (keel/replicas.h).  Not without a
                 * coordinator: nothing would rewind them.
                 */
                if (keel_ps_rows(s->ps, r) > 0 && job_leased(s) &&
                    (st.lsn > 0 || s->store_had_job || job_trained(s))) {
                    s->report.restoring[r] = 1;
                    s->report_dirty = 1;
                    held_back++;
                }
            } else if (!keel_ps_is_primary(s->ps, r)) {
                keel_ps_set_primary(s->ps, r, 1);
                s->promoted_ms[r] = keel_clock_wall_ms();
                promoted++;
            } else if (s->report.restoring[r] && s->report.terms[r] != term) {
                /* The leader rewound the shards, then gave the range a new term. */
                s->report.restoring[r] = 0;
                s->report_dirty = 1;
                rewound++;
            }
            if (s->report.terms[r] != term)
                s->report_dirty = 1;
            s->report.terms[r] = term;
            repl_streams_set(s, r, ids + 1, n - 1, term);
            continue;
        }
        s->nstreams[r] = 0;
        s->report_dirty |= s->report.lost[r] | s->report.restoring[r];
        s->report.lost[r] = 0;
        s->report.restoring[r] = 0;
        s->promoted_ms[r] = 0;
        if (pos > 0) {
            /* A backup: its copy comes from the primary (RANGE_COPY). */
            if (held && keel_ps_is_primary(s->ps, r)) {
                keel_ps_set_primary(s->ps, r, 0);
                demoted++;
            }
        } else {
            if (held) {
                uint64_t lsn = keel_ps_lsn(s->ps, r);

                if (lsn > 0) /* the store holds this much of it (or will, once committed) */
                    s->stored[r] = lsn;
                keel_ps_close_range(s->ps, r);
                closed++;
            }
            if (s->report.terms[r] != 0)
                s->report_dirty = 1;
            s->report.terms[r] = 0;
        }
    }
    if (opened || closed || promoted || demoted)
        KEEL_LOG_INFO("assignment version %" PRIu64 ": opened %u range(s) (%u restored from the "
                      "store, %" PRIu64 " log record(s) replayed), promoted %u, demoted %u, "
                      "closed %u",
                      s->assign_version, opened, restored, replayed, promoted, demoted, closed);
    if (held_back)
        KEEL_LOG_INFO("job %s: %u range(s) restored from the store while the job trains: their "
                      "pushes wait until the leader rewinds the job's shards to the positions "
                      "they hold",
                      s->job, held_back);
    if (rewound)
        KEEL_LOG_INFO("job %s: the shards were rewound for %u restored range(s) (assignment "
                      "version %" PRIu64 "): serving their pushes again",
                      s->job, rewound, s->assign_version);
    repl_start_copies(s);
    repl_release_waiting(s);
}

void srv_log_behind(struct srv *s, struct pending_ack *a)
{
    struct pending_ack *log;

    if (a->result.napplied == 0)
        return;
    log = keel_calloc(1, sizeof(*log));
    log->kind = ACK_LOG;
    log->result = a->result;
    snprintf(log->worker, sizeof(log->worker), "%s", a->worker);
    for (size_t i = 0; i < log->result.napplied; i++)
        log->result.applied[i].push.worker_id = keel_str_of(log->worker);
    memset(&a->result, 0, sizeof(a->result));
    a->result.lsn = log->result.lsn;
    a->result.duplicate = log->result.duplicate;
    srv_queue_pending(s, log, NULL, NULL);
}

/* ---- parked pulls ------------------------------------------------------------ */

/* Log the first push or pull reply of each row encoding in the job (srv->lock held). */
static void note_enc(struct srv *s, unsigned bit, const char *what)
{
    if (s->enc_seen & (1u << bit))
        return;
    s->enc_seen |= 1u << bit;
    KEEL_LOG_INFO("job %s: first %s with %s rows (compression = %s)", s->job, what,
                  (bit & 3) == KEEL_ROWS_F32 ? "32-bit" : keel_rows_enc_name(bit & 3),
                  keel_rows_enc_name(s->spec.compression));
}

static void answer_pull(struct srv *s, struct keel_conn *conn, const struct keel_frame_header *req,
                        uint32_t table_id, uint32_t width, const uint64_t *keys, uint32_t nkeys)
{
    struct keel_error err;
    struct keel_msg reply;
    size_t n = (size_t)nkeys * width;
    float *rows = keel_calloc(n + 1, sizeof(float));
    uint16_t *half = NULL;
    uint32_t enc = keel_proto_flags_enc(req->flags); /* the encoding the pull asked for */

    keel_error_init(&err);
    note_enc(s, 4 + enc, "pull answered");
    if (keel_ps_pull(s->ps, table_id, width, keys, nkeys, rows, &err) != 0) {
        keel_conn_reply_error(conn, req, err.code, err.msg);
    } else {
        memset(&reply, 0, sizeof(reply));
        reply.hdr.type = KEEL_MSG_PULL_REPLY;
        reply.hdr.epoch = 0;
        reply.u.pull_reply.clock = keel_ps_min_clock(s->ps);
        reply.u.pull_reply.data = (struct keel_rows){table_id, width, nkeys, keys, rows, 0, NULL};
        if (enc != KEEL_ROWS_F32) {
            half = keel_malloc((n + 1) * sizeof(uint16_t));
            keel_half_narrow((enum keel_rows_enc)enc, rows, half, n);
            reply.u.pull_reply.data.enc = enc;
            reply.u.pull_reply.data.rows = NULL;
            reply.u.pull_reply.data.half = half;
        }
        keel_conn_reply(conn, req, &reply, NULL);
    }
    free(half);
    free(rows);
}

/* Answer the parked pulls whose clock is now allowed (srv->lock held). */
static void release_parked(struct srv *s)
{
    struct parked_pull **p = &s->parked;

    while (*p) {
        struct parked_pull *pp = *p;

        if (s->ps != NULL && !keel_ps_clock_ready(s->ps, pp->clock)) {
            p = &pp->next;
            continue;
        }
        *p = pp->next;
        if (s->ps != NULL)
            answer_pull(s, pp->conn, &pp->req, pp->table_id, pp->row_width, pp->keys, pp->nkeys);
        else
            keel_conn_reply_error(pp->conn, &pp->req, KEEL_EUNAVAILABLE, "the job ended");
        keel_conn_unref(pp->conn);
        free(pp->keys);
        free(pp);
    }
}

/* ---- requests (I/O threads) -------------------------------------------------- */

int srv_redirect(struct srv *s, struct keel_conn *conn, const struct keel_frame_header *req,
                 const char *why)
{
    struct keel_msg m;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_ERROR;
    m.u.error.code = KEEL_EREDIRECT;
    m.u.error.assignment_version = s->assign_version;
    m.u.error.message = keel_str_of(why);
    return keel_conn_reply(conn, req, &m, NULL);
}

/*
 * Fencing on the data path: a PUSH or PULL routed by an assignment older
 * than the one this server applied is redirected with the current version,
 * so a sender with a stale view never reaches a range through a server that
 * is no longer its primary.  srv->lock held.  1 when redirected.
 */
static int stale_sender(struct srv *s, struct keel_conn *conn, const struct keel_msg *msg,
                        uint64_t version)
{
    char why[128];

    if (version >= s->assign_version)
        return 0;
    snprintf(why, sizeof(why), "routed by assignment version %" PRIu64 ", this server has %" PRIu64,
             version, s->assign_version);
    srv_redirect(s, conn, &msg->hdr, why);
    return 1;
}

/* The ranges `push` touches, each with its LSN now: what the backups must confirm. */
static void push_waits(struct srv *s, const struct keel_msg_push *push, struct pending_ack *a)
{
    unsigned char seen[KEEL_PROTO_NRANGES] = {0};

    KEEL_ALLOC_ARRAY(a->waits, push->data.nkeys ? push->data.nkeys : 1);
    for (uint32_t k = 0; k < push->data.nkeys; k++) {
        unsigned r = keel_range_of(push->data.keys[k]);

        if (seen[r]++)
            continue;
        a->waits[a->nwaits].range = r;
        a->waits[a->nwaits].lsn = keel_ps_lsn(s->ps, r);
        a->nwaits++;
    }
}

/* The bytes `a` writes to the store: its update-log records, or the copy it installs. */
static uint64_t pending_bytes(const struct pending_ack *a)
{
    uint64_t bytes = 0;

    if (a->kind == ACK_COPY) {
        for (size_t t = 0; t < a->copy.ntables; t++)
            bytes += a->copy.tables[t].nrows *
                     keel_row_bytes(a->copy.tables[t].width, a->copy.tables[t].state_width);
        return bytes;
    }
    for (size_t i = 0; i < a->result.napplied; i++)
        bytes += a->result.applied[i].push.data.nkeys *
                 keel_row_bytes(a->result.applied[i].push.data.row_width, 0);
    return bytes;
}

void srv_queue_pending(struct srv *s, struct pending_ack *a, struct keel_conn *conn,
                       const struct keel_frame_header *req)
{
    if (conn != NULL)
        keel_conn_ref(conn);
    a->conn = conn;
    if (req != NULL)
        a->req = *req;
    a->bytes = pending_bytes(a);
    if (s->nacks == 0)
        s->acks_since = keel_clock_mono_ms();
    s->nacks++;
    s->acks_bytes += a->bytes;
    *s->acks_tail = a;
    s->acks_tail = &a->next;
    pthread_cond_signal(&s->wake);
}

/*
 * A push moves its shard's exactly-once position: only the worker the shard
 * is leased to may send one (the worker id is the certificate's, checked in
 * handle()).  The view may lag behind a lease just granted, so the refusal
 * is one to retry (KEEL_EUNAVAILABLE).  No check while etcd holds no lease
 * of the job (a server used without a coordinator).  srv->lock held.
 */
static int check_lease(struct srv *s, const struct keel_msg_push *p, struct keel_error *err)
{
    if (s->nleases == 0)
        return 0;
    if (p->shard >= s->nleases)
        return keel_err_set(err, KEEL_EINVAL, "job %s has %" PRIu32 " shards, not shard %" PRIu32,
                            s->job, s->nleases, p->shard);
    if (p->worker_id.len != strlen(s->leases[p->shard]) ||
        memcmp(p->worker_id.ptr, s->leases[p->shard], p->worker_id.len) != 0)
        return keel_err_set(err, KEEL_EUNAVAILABLE,
                            "shard %" PRIu32 " is leased to '%s', not to '%.*s', as far as this "
                            "server knows",
                            p->shard, s->leases[p->shard][0] ? s->leases[p->shard] : "nobody",
                            (int)p->worker_id.len, p->worker_id.ptr);
    if (p->lease < s->lease_tokens[p->shard])
        return keel_err_set(err, KEEL_EEPOCH,
                            "shard %" PRIu32 ": lease %" PRIu64 " is over, the shard's lease is "
                            "%" PRIu64 " (the shard was rewound or leased again)",
                            p->shard, p->lease, s->lease_tokens[p->shard]);
    if (p->lease > s->lease_tokens[p->shard])
        return keel_err_set(err, KEEL_EUNAVAILABLE,
                            "shard %" PRIu32 ": lease %" PRIu64 " is newer than this server "
                            "knows (%" PRIu64 ")",
                            p->shard, p->lease, s->lease_tokens[p->shard]);
    return 0;
}

/* A push that touches a range restored from the store, before the shards were rewound. */
static int restoring_range(struct srv *s, const struct keel_msg_push *p, struct keel_error *err)
{
    unsigned any = 0;

    /* 256 flags first: the keys are hashed only while a range is held back. */
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES && !any; r++)
        any = s->report.restoring[r];
    for (uint32_t k = 0; any && k < p->data.nkeys; k++) {
        unsigned r = keel_range_of(p->data.keys[k]);

        if (s->report.restoring[r])
            return keel_err_set(err, KEEL_EUNAVAILABLE,
                                "range %u was restored from this server's store and waits for "
                                "the job's shards to be rewound",
                                r);
    }
    return 0;
}

static int handle_push(struct srv *s, struct keel_conn *conn, const struct keel_msg *msg,
                       struct keel_error *err)
{
    struct pending_ack *a = keel_calloc(1, sizeof(*a));
    int rc;

    pthread_mutex_lock(&s->lock);
    if (s->ps == NULL) {
        pthread_mutex_unlock(&s->lock);
        free(a);
        return keel_err_set(err, KEEL_EUNAVAILABLE, "no job is running on this server");
    }
    if (stale_sender(s, conn, msg, msg->u.push.assignment_version)) {
        pthread_mutex_unlock(&s->lock);
        free(a);
        return 0;
    }
    if ((rc = check_lease(s, &msg->u.push, err)) != 0 ||
        (rc = restoring_range(s, &msg->u.push, err)) != 0 ||
        (rc = srv_cut_holds(s, &msg->u.push, err)) != 0) {
        pthread_mutex_unlock(&s->lock);
        free(a);
        return rc;
    }
    note_enc(s, msg->u.push.data.enc & 3, "push");
    rc = keel_ps_push(s->ps, &msg->u.push, &a->result, err);
    if (rc == KEEL_EREDIRECT) {
        keel_ps_result_release(&a->result);
        free(a);
        srv_redirect(s, conn, &msg->hdr, err->msg);
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    if (rc != 0) {
        keel_ps_result_release(&a->result);
        pthread_mutex_unlock(&s->lock);
        free(a);
        return rc;
    }
    /*
     * The ACK goes out once the storage thread has logged the update and every
     * in-sync backup of its ranges has it; the frame is not kept that long.
     */
    a->kind = ACK_PUSH;
    snprintf(a->worker, sizeof(a->worker), "%.*s", (int)msg->u.push.worker_id.len,
             msg->u.push.worker_id.ptr);
    a->seq = msg->u.push.seq;
    a->shard = msg->u.push.shard;
    for (size_t i = 0; i < a->result.napplied; i++) {
        a->result.applied[i].push.worker_id = keel_str_of(a->worker);
        repl_forward(s, &a->result.applied[i], a->worker);
    }
    /* After the forwards: they follow the cut the ranges were last copied at. */
    srv_cut_check(s); /* this push may have brought ranges to the checkpoint's clock */
    push_waits(s, &msg->u.push, a);
    if (s->spec.durability_disk) {
        srv_queue_pending(s, a, conn, &msg->hdr); /* logged first, then waits for the backups */
    } else {
        srv_log_behind(s, a);
        keel_conn_ref(conn);
        a->conn = conn;
        a->req = msg->hdr;
        a->next = s->waiting;
        s->waiting = a;
        repl_release_waiting(s);
    }
    release_parked(s); /* this push may have moved the slowest clock */
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int handle_pull(struct srv *s, struct keel_conn *conn, const struct keel_msg *msg,
                       struct keel_error *err)
{
    const struct keel_msg_pull *p = &msg->u.pull;
    int rc;

    pthread_mutex_lock(&s->lock);
    if (s->ps == NULL) {
        pthread_mutex_unlock(&s->lock);
        return keel_err_set(err, KEEL_EUNAVAILABLE, "no job is running on this server");
    }
    if (stale_sender(s, conn, msg, p->assignment_version)) {
        pthread_mutex_unlock(&s->lock);
        return 0;
    }
    /* Sizes first: nothing is allocated for rows the job does not have. */
    if ((rc = keel_ps_check_pull(s->ps, p->data.table_id, p->data.row_width, p->data.nkeys,
                                 s->config->max_frame_size, err)) != 0) {
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    /* The pull says where the worker is: that may free pulls parked for it. */
    keel_ps_pulled(s->ps, p->worker_id, p->clock);
    release_parked(s);
    if (keel_ps_clock_ready(s->ps, p->clock)) {
        answer_pull(s, conn, &msg->hdr, p->data.table_id, p->data.row_width, p->data.keys,
                    p->data.nkeys);
    } else {
        struct parked_pull *pp;
        unsigned mine = 0, all = 0;

        for (pp = s->parked; pp != NULL; pp = pp->next) {
            mine += pp->conn == conn;
            all++;
        }
        if (mine >= KEEL_PARKED_PER_CONN || all >= KEEL_PARKED_MAX) {
            pthread_mutex_unlock(&s->lock);
            return keel_err_set(err, KEEL_EUNAVAILABLE,
                                "%u pulls are already waiting for their clock (%s, at most %d): "
                                "this one is refused",
                                mine >= KEEL_PARKED_PER_CONN ? mine : all,
                                mine >= KEEL_PARKED_PER_CONN ? "on this connection" : "in all",
                                mine >= KEEL_PARKED_PER_CONN ? KEEL_PARKED_PER_CONN
                                                             : KEEL_PARKED_MAX);
        }
        pp = keel_calloc(1, sizeof(*pp));
        keel_conn_ref(conn);
        pp->conn = conn;
        pp->req = msg->hdr;
        pp->table_id = p->data.table_id;
        pp->row_width = p->data.row_width;
        pp->nkeys = p->data.nkeys;
        pp->clock = p->clock;
        pp->keys = keel_malloc((size_t)p->data.nkeys * 8 + 8);
        memcpy(pp->keys, p->data.keys, (size_t)p->data.nkeys * 8);
        pp->next = s->parked;
        s->parked = pp;
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

keel_dataset *srv_dataset_of(struct srv *s, struct keel_str name, struct keel_error *err)
{
    char n[KEEL_ID_MAX + 1];
    keel_dataset *ds;

    snprintf(n, sizeof(n), "%.*s", (int)name.len, name.ptr);
    for (size_t i = 0; i < s->ndatasets; i++)
        if (strcmp(s->datasets[i].name, n) == 0)
            return s->datasets[i].ds;
    if (keel_dataset_open(s->store, n, &ds, err) != 0)
        return NULL;
    KEEL_REALLOC_ARRAY(s->datasets, s->ndatasets + 1);
    snprintf(s->datasets[s->ndatasets].name, sizeof(s->datasets[0].name), "%s", n);
    s->datasets[s->ndatasets++].ds = ds;
    return ds;
}

static int handle_shard_read(struct srv *s, struct keel_conn *conn, const struct keel_msg *msg,
                             struct keel_error *err)
{
    const struct keel_msg_shard_read *r = &msg->u.shard_read;
    struct keel_shard_batch batch;
    struct keel_msg reply;
    keel_dataset *ds;
    int rc;

    pthread_mutex_lock(&s->lock);
    ds = srv_dataset_of(s, r->dataset, err);
    pthread_mutex_unlock(&s->lock);
    if (ds == NULL)
        return err->code;
    keel_shard_batch_init(&batch);
    rc = keel_dataset_read(ds, r->shard, r->first, r->max_records,
                           (size_t)s->config->max_frame_size - KEEL_PROTO_HEADER_SIZE, &batch, err);
    if (rc == 0) {
        memset(&reply, 0, sizeof(reply));
        reply.hdr.type = KEEL_MSG_SHARD_DATA;
        if (keel_shard_batch_message(&batch, &reply.u.shard_data))
            reply.hdr.flags |= KEEL_FLAG_LAST;
        rc = keel_conn_reply(conn, &msg->hdr, &reply, err);
    }
    keel_shard_batch_release(&batch);
    return rc;
}

/*
 * The worker id in a PUSH or PULL names whose clock and position it moves:
 * it must be the peer's own, as its certificate says.
 */
static int check_sender(const struct keel_cert_identity *peer, struct keel_str worker,
                        const char *what, struct keel_error *err)
{
    if (worker.len != strlen(peer->id) || memcmp(worker.ptr, peer->id, worker.len) != 0)
        return keel_err_set(err, KEEL_EPERM,
                            "a %s as worker '%.*s' from keel://%s/%s: not its own id", what,
                            (int)worker.len, worker.ptr, keel_role_name(peer->role), peer->id);
    return 0;
}

static int handle(void *ctx, struct keel_conn *conn, const struct keel_cert_identity *peer,
                  const struct keel_msg *msg, struct keel_error *err)
{
    struct srv *s = ctx;
    int rc;

    if (msg->hdr.type == KEEL_MSG_PUSH &&
        (rc = check_sender(peer, msg->u.push.worker_id, "PUSH", err)) != 0)
        return rc;
    if (msg->hdr.type == KEEL_MSG_PULL &&
        (rc = check_sender(peer, msg->u.pull.worker_id, "PULL", err)) != 0)
        return rc;
    switch (msg->hdr.type) {
    case KEEL_MSG_PUSH:
        return handle_push(s, conn, msg, err);
    case KEEL_MSG_PULL:
        return handle_pull(s, conn, msg, err);
    case KEEL_MSG_SHARD_READ:
        return handle_shard_read(s, conn, msg, err);
    case KEEL_MSG_REPLICATE:
        return repl_handle_replicate(s, conn, peer, msg, err);
    case KEEL_MSG_RANGE_COPY:
        return repl_handle_range_copy(s, conn, peer, msg, err);
    default:
        return keel_err_set(err, KEEL_ENOTIMPL, "keel-server does not serve %s",
                            keel_msg_type_name(msg->hdr.type));
    }
}

/* ---- storage thread ---------------------------------------------------------- */

/*
 * Fail-stop.  What failed to reach the disk is applied in memory but on no
 * disk, so no acknowledgement may go out for it, nor for a retry of it (a
 * retry is a duplicate in memory).  Nothing else is written on the way out
 * either: the restarted server restores what its store holds, and the
 * workers push again what was never acknowledged.
 */
static void fail_stop(const char *what, const struct keel_error *err)
{
    KEEL_LOG_ERROR("cannot %s: %s; stopping now, without acknowledging it (fail-stop)", what,
                   err->msg);
    _exit(KEEL_EXIT_FAILURE);
}

/* Append the log records gathered so far, in one durable transaction. */
static void flush_records(struct srv *s, struct keel_ulog_record *recs, size_t *n, uint64_t *bytes)
{
    struct keel_error err;
    char what[96];

    keel_error_init(&err);
    for (size_t i = 0; i < *n; i++)
        *bytes += recs[i].push.data.nkeys * keel_row_bytes(recs[i].push.data.row_width, 0);
    if (*n > 0 && keel_ulog_append(s->store, recs, *n, &err) != 0) {
        snprintf(what, sizeof(what), "commit %zu update-log record(s)", *n);
        fail_stop(what, &err);
    }
    *n = 0;
}

/*
 * Log `acks` in their order (update-log records in groups; a backup's copy
 * of a range replaces the range's snapshot and log where it falls), then
 * answer them: a backup's at once, a push once its backups have it.
 */
static void commit_and_ack(struct srv *s, struct pending_ack *acks)
{
    struct keel_ulog_record *recs = NULL;
    struct keel_error err;
    size_t n = 0, cap = 0;
    uint64_t logged = 0;

    keel_error_init(&err);
    for (struct pending_ack *a = acks; a; a = a->next) {
        if (a->kind == ACK_COPY) {
            flush_records(s, recs, &n, &logged);
            if (keel_snapshot_install(s->store, &a->copy, &err) != 0)
                fail_stop("install a copy of a range", &err);
            continue;
        }
        for (size_t i = 0; i < a->result.napplied; i++) {
            if (n == cap) {
                cap = cap ? cap * 2 : 64;
                KEEL_REALLOC_ARRAY(recs, cap);
            }
            recs[n].range = a->result.applied[i].range;
            recs[n].lsn = a->result.applied[i].lsn;
            recs[n].push = a->result.applied[i].push;
            n++;
        }
    }
    flush_records(s, recs, &n, &logged);
    free(recs);
    pthread_mutex_lock(&s->lock);
    s->log_bytes += logged;
    while (acks) {
        struct pending_ack *a = acks;

        acks = a->next;
        switch (a->kind) {
        case ACK_PUSH:
            a->next = s->waiting;
            s->waiting = a;
            continue;
        case ACK_COPY:
            s->installs[a->copy.range]--;
            if (s->ps != NULL && keel_ps_holds(s->ps, a->copy.range) &&
                !keel_ps_is_primary(s->ps, a->copy.range)) {
                s->report.terms[a->copy.range] = a->term;
                s->report_dirty = 1;
            }
            repl_send_ack(a, a->lsn, 0);
            break;
        case ACK_REPLICATE:
            repl_send_ack(a, a->lsn, 0);
            break;
        case ACK_LOG:
            break;
        }
        repl_pending_free(a);
    }
    repl_release_waiting(s);
    pthread_mutex_unlock(&s->lock);
}

/*
 * Copies of every range held, taken under srv->lock (each under its range's
 * lock), to be written in one transaction, with or without srv->lock.
 */
struct snap_set {
    struct srv *s;
    uint64_t gen; /* srv->job_gen when copied */
    struct keel_snapshot *snaps;
    size_t n;
};

/* Whether the job the copies are of is still the one served (inside the write). */
static int same_job(void *ctx)
{
    const struct snap_set *set = ctx;

    return __atomic_load_n(&set->s->job_gen, __ATOMIC_ACQUIRE) == set->gen;
}

static void snap_copy(struct srv *s, struct snap_set *set)
{
    struct keel_error err;
    uint64_t bytes = 0;

    keel_error_init(&err);
    memset(set, 0, sizeof(*set));
    set->s = s;
    set->gen = __atomic_load_n(&s->job_gen, __ATOMIC_ACQUIRE);
    KEEL_ALLOC_ARRAY(set->snaps, KEEL_PROTO_NRANGES);
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES && s->ps; r++) {
        struct keel_snapshot *snap = &set->snaps[set->n];

        /* A copy on its way to the store would replace this snapshot with an older one. */
        if (s->installs[r] > 0 || !keel_ps_holds(s->ps, r) ||
            keel_ps_snapshot(s->ps, r, snap, &err) != 0)
            continue;
        for (size_t t = 0; t < snap->ntables; t++)
            bytes += snap->tables[t].nrows *
                     keel_row_bytes(snap->tables[t].width, snap->tables[t].state_width);
        set->n++;
    }
    s->state_bytes = bytes;
    s->log_bytes = 0; /* what was logged so far, the copies hold */
}

/* Write the copies in one durable transaction (unless the job changed since), and free them. */
static void snap_write(struct snap_set *set)
{
    struct keel_error err;

    keel_error_init(&err);
    if (set->n > 0) {
        int rc = keel_snapshot_write_many(set->s->store, set->snaps, set->n, same_job, set, &err);

        if (rc == KEEL_ECANCELED)
            KEEL_LOG_DEBUG("snapshots of %zu range(s) not written: the job changed", set->n);
        else if (rc != 0)
            KEEL_LOG_ERROR("snapshots of %zu range(s): %s", set->n, err.msg);
        else
            KEEL_LOG_DEBUG("snapshots of %zu range(s) written", set->n);
    }
    for (size_t i = 0; i < set->n; i++)
        keel_snapshot_release(&set->snaps[i]);
    free(set->snaps);
    set->snaps = NULL;
    set->n = 0;
}

/*
 * Snapshots of every range held: copied under srv->lock, written without it,
 * so that pushes go on meanwhile (storage thread).
 */
static void snapshot_all(struct srv *s)
{
    struct snap_set set;

    pthread_mutex_lock(&s->lock);
    snap_copy(s, &set);
    pthread_mutex_unlock(&s->lock);
    snap_write(&set);
}

/*
 * Whether the log written since the last snapshot is [server]
 * snapshot_log_factor times the state held (at least 1 MiB): a snapshot then
 * lets its records go, so a store holds a few snapshots' worth of the
 * parameters and not a snapshot interval of gradients.
 */
static int log_due(struct srv *s)
{
    uint64_t f = s->config->server_snapshot_log_factor, floor = 1u << 20;
    int due;

    pthread_mutex_lock(&s->lock);
    due = f > 0 && s->log_bytes >= (f * s->state_bytes > floor ? f * s->state_bytes : floor);
    pthread_mutex_unlock(&s->lock);
    return due;
}

/*
 * Checkpoint `n` copies of job `p->job`'s ranges into the store, signed
 * with the cluster key, then prune the oldest past [server]
 * checkpoint_keep; `why` goes to the log.
 */
static void checkpoint_write(struct srv *s, struct keel_ckpt_params *p,
                             const struct keel_snapshot *copies, size_t n, const char *why)
{
    struct keel_error err;
    uint64_t id, t0 = keel_clock_mono_ms(), bytes = 0;
    size_t pruned = 0;

    keel_error_init(&err);
    if (n == 0) {
        /* Not the store's snapshots instead: they may be from before a restart. */
        KEEL_LOG_INFO("job %s: no checkpoint at clock %" PRIu64 " (%s): this server holds no "
                      "range of the job",
                      p->job, p->clock, why);
        return;
    }
    for (size_t i = 0; i < n; i++)
        for (size_t t = 0; t < copies[i].ntables; t++)
            bytes += copies[i].tables[t].nrows *
                     keel_row_bytes(copies[i].tables[t].width, copies[i].tables[t].state_width);
    p->snaps = copies;
    p->nsnaps = n;
    if (keel_checkpoint_take(s->store, &s->ckpt_key, p, &id, &err) != 0) {
        KEEL_LOG_ERROR("job %s: checkpoint at clock %" PRIu64 " failed: %s", p->job, p->clock,
                       err.msg);
        return;
    }
    if (keel_checkpoint_prune(s->store, s->config->server_checkpoint_keep, &pruned, &err) != 0)
        KEEL_LOG_ERROR("job %s: pruning checkpoints: %s", p->job, err.msg);
    KEEL_LOG_INFO("job %s: checkpoint %" PRIu64 " at clock %" PRIu64 " (%s): %zu range(s), "
                  "%" PRIu64 " bytes, written in %" PRIu64 " ms%s",
                  p->job, id, p->clock, why, n, bytes, keel_clock_mono_ms() - t0,
                  pruned ? ", older ones pruned" : "");
}

/* What a checkpoint of the running job says of it (srv->lock held). */
static void checkpoint_params(struct srv *s, struct keel_ckpt_params *p, char *job, uint64_t clock)
{
    memset(p, 0, sizeof(*p));
    snprintf(job, KEEL_ID_MAX + 1, "%s", s->job);
    p->job = job;
    p->server = s->config->node_id;
    p->clock = clock;
    keel_jobspec_digest(&s->spec, p->spec_sha256);
}

/*
 * The job's last checkpoint, as it ends (srv->lock held): fresh copies of
 * every range held, written as its snapshots and as the checkpoint.
 */
static void checkpoint_locked(struct srv *s, uint64_t clock, const char *why)
{
    struct keel_ckpt_params p;
    char job[KEEL_ID_MAX + 1];
    struct snap_set set;
    uint64_t t0 = keel_clock_mono_ms();

    checkpoint_params(s, &p, job, clock);
    snap_copy(s, &set);
    checkpoint_write(s, &p, set.snaps, set.n, why);
    snap_write(&set);
    srv_cut_end(s);
    KEEL_LOG_DEBUG("job %s: last checkpoint (%s) in %" PRIu64 " ms", s->job, why,
                   keel_clock_mono_ms() - t0);
}

/*
 * Write the checkpoint of the cut under way once every range held is copied
 * at its clock or left out (storage thread; written outside srv->lock),
 * then begin the next one.  Also follows the slowest worker's clock, which
 * names the job's last checkpoint.
 */
static void checkpoint_cut(struct srv *s)
{
    struct keel_snapshot *copies = NULL;
    uint64_t skipped = 0;
    size_t n = 0;

    pthread_mutex_lock(&s->lock);
    while (s->ps != NULL && s->ckpt_next > 0) {
        uint64_t c = keel_ps_min_clock(s->ps), clock = s->cut.clock, gen;
        struct keel_ckpt_params p;
        char why[160], job[KEEL_ID_MAX + 1];

        if (c > s->ckpt_clock)
            s->ckpt_clock = c;
        if (clock == 0 || !srv_cut_take(s, &copies, &n))
            break;
        snprintf(why, sizeof(why),
                 "cut: pushes past it held back %" PRIu64 " ms, %" PRIu64 " refusals; ranges "
                 "copied %" PRIu64 " ms after it began",
                 s->cut.held_ms, s->cut.nheld, keel_clock_mono_ms() - s->cut.began_ms);
        s->ckpt_next = clock + s->spec.checkpoint_interval;
        if (!srv_cut_begin(s, s->ckpt_next))
            s->ckpt_next = 0; /* past the job's end: the end takes the last one */
        if (n == 0) {
            free(copies); /* every range here was past it or copied in meanwhile: the next */
            skipped = clock;
            continue;
        }
        checkpoint_params(s, &p, job, clock);
        gen = __atomic_load_n(&s->job_gen, __ATOMIC_ACQUIRE);
        pthread_mutex_unlock(&s->lock);
        if (__atomic_load_n(&s->job_gen, __ATOMIC_ACQUIRE) == gen)
            checkpoint_write(s, &p, copies, n, why);
        for (size_t i = 0; i < n; i++)
            keel_snapshot_release(&copies[i]);
        free(copies);
        pthread_mutex_lock(&s->lock);
    }
    if (skipped > 0)
        KEEL_LOG_INFO("job %s: no range here was copied at clock %" PRIu64 " (past it, or "
                      "copied in meanwhile): the next checkpoint is at clock %" PRIu64,
                      s->job, skipped, s->ckpt_next);
    pthread_mutex_unlock(&s->lock);
}

/*
 * Take from the queue what the next commit writes (srv->lock held): nothing
 * while the group-commit rule says to wait, waiting on s->wake meanwhile;
 * everything when stopping.  Waits at most 200 ms when nothing is queued, so
 * that the thread's other duties run.
 */
static struct pending_ack *take_commit(struct srv *s, const struct keel_gcommit *g)
{
    struct pending_ack *head, **tail;
    uint64_t d, bytes = 0;
    size_t n = 0;

    if (s->nacks == 0 && !s->stopping)
        keel_cond_timedwait_ms(&s->wake, &s->lock, 200);
    while (!s->stopping &&
           (d = keel_gcommit_wait_ms(g, s->nacks, s->acks_bytes,
                                     keel_clock_mono_ms() - s->acks_since)) > 0 &&
           d != KEEL_GCOMMIT_IDLE)
        keel_cond_timedwait_ms(&s->wake, &s->lock, d);
    head = s->acks;
    tail = &s->acks;
    while (*tail != NULL && (s->stopping || keel_gcommit_joins(g, n, bytes, (*tail)->bytes))) {
        n++;
        bytes += (*tail)->bytes;
        tail = &(*tail)->next;
    }
    s->acks = *tail;
    *tail = NULL;
    if (s->acks == NULL)
        s->acks_tail = &s->acks;
    s->nacks -= n;
    s->acks_bytes -= bytes; /* what is left behind commits next, without waiting again */
    return n > 0 ? head : NULL;
}

static void *storage_main(void *arg)
{
    struct srv *s = arg;
    uint64_t next_snapshot = keel_clock_mono_ms() + s->config->server_snapshot_interval_ms;
    struct keel_gcommit g = {s->config->server_group_commit_ms, KEEL_GCOMMIT_MAX_ACKS,
                             KEEL_GCOMMIT_MAX_BYTES};

    for (;;) {
        struct pending_ack *acks;
        int stopping;

        /*
         * Group commit (gcommit.h): what arrives while a commit is in flight
         * joins the next one; [server] group_commit may hold a commit back
         * for more, up to a full batch.
         */
        pthread_mutex_lock(&s->lock);
        acks = take_commit(s, &g);
        stopping = s->stopping;
        pthread_mutex_unlock(&s->lock);
        if (acks)
            commit_and_ack(s, acks);
        pthread_mutex_lock(&s->lock);
        repl_start_copies(s);    /* streams that failed, once their delay has passed */
        repl_release_waiting(s); /* backups that confirmed meanwhile */
        pthread_mutex_unlock(&s->lock);
        repl_write_report(s);
        repl_report_suspects(s);
        checkpoint_cut(s);
        if (stopping || keel_clock_mono_ms() >= next_snapshot || log_due(s)) {
            snapshot_all(s);
            next_snapshot = keel_clock_mono_ms() + s->config->server_snapshot_interval_ms;
        }
        if (stopping)
            return NULL;
    }
}

/* ---- etcd: assignment, jobs, workers (watch thread) --------------------------- */

static int lowest_candidate(void *user, const struct keel_etcd_kv *kv)
{
    int64_t *low = user;

    if (kv->create_revision > 0 && (*low == 0 || kv->create_revision < *low))
        *low = kv->create_revision;
    return 0;
}

/*
 * The coordinator leader's epoch as the view has it: the create revision of
 * the oldest election candidate (the leader, as etcd's election API
 * decides), 0 when no coordinator campaigns (a server used without one).
 */
static uint64_t leader_epoch(struct srv *s)
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    int64_t low = 0;

    keel_key_election(&prefix, s->cluster);
    keel_buf_add_str(&prefix, "/");
    keel_cview_each(s->view, keel_key_str(&prefix), lowest_candidate, &low);
    keel_buf_release(&prefix);
    return (uint64_t)low;
}

static void set_assignment(struct srv *s, const struct keel_etcd_kv *kv)
{
    struct keel_error err;
    uint64_t leader;
    keel_assign *a;

    keel_error_init(&err);
    if (keel_assign_decode(kv->value, kv->value_len, &a, &err) != 0) {
        KEEL_LOG_ERROR("ignoring a bad assignment in etcd: %s", err.msg);
        return;
    }
    if ((leader = leader_epoch(s)) > 0 && keel_assign_epoch(a) != leader) {
        /* Only the current leader writes the table: anything else is stale or forged. */
        KEEL_LOG_WARN("ignoring assignment version %" PRIu64 ": written under epoch %" PRIu64
                      ", the leader's epoch is %" PRIu64,
                      keel_assign_version(a), keel_assign_epoch(a), leader);
        keel_assign_free(a);
        return;
    }
    if (s->assign != NULL && keel_assign_version(a) <= s->assign_version) {
        /* Versions only rise: an older table is a stale or forged write. */
        KEEL_LOG_WARN("ignoring assignment version %" PRIu64 ": not above version %" PRIu64
                      ", which this server applied",
                      keel_assign_version(a), s->assign_version);
        keel_assign_free(a);
        return;
    }
    keel_assign_free(s->assign);
    s->assign = a;
    s->assign_version = keel_assign_version(a);
    apply_assignment(s);
}

/* The distinct owners of the running job's unfinished shards, gathered from the view. */
struct owners {
    struct srv *s;
    char (*ids)[KEEL_ID_MAX + 1];
    size_t n, seen;
};

static int add_owner(void *user, const struct keel_etcd_kv *kv)
{
    struct owners *o = user;
    struct keel_shard sh;
    struct keel_key k;
    size_t i;

    if (keel_key_parse(kv->key, o->s->cluster, &k) != KEEL_KEY_JOB_SHARD)
        return 0;
    o->seen++;
    /* A free or done shard, or one that does not decode, holds nobody back. */
    if (keel_shard_decode(kv->value, kv->value_len, o->s->spec.epochs, &sh, NULL) != 0)
        return 0;
    if (k.num < o->s->nleases)
        o->s->lease_tokens[k.num] = sh.lease;
    if (sh.owner[0] == '\0')
        return 0;
    if (k.num < o->s->nleases)
        snprintf(o->s->leases[k.num], KEEL_ID_MAX + 1, "%s", sh.owner);
    for (i = 0; i < o->n && strcmp(o->ids[i], sh.owner) != 0; i++)
        ;
    if (i == o->n) {
        KEEL_REALLOC_ARRAY(o->ids, o->n + 1);
        snprintf(o->ids[o->n++], KEEL_ID_MAX + 1, "%s", sh.owner);
    }
    return 0;
}

/*
 * Tell the running job's clocks who holds its unfinished shards (srv->lock
 * held).  Nothing when etcd has no lease of the job: a server used without a
 * coordinator keeps the clock set of the workers that trained.
 */
static void set_owners(struct srv *s)
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    struct owners o = {s, NULL, 0, 0};
    const char **ids;

    if (s->ps == NULL)
        return;
    keel_key_job_prefix(&prefix, s->cluster, s->job);
    keel_buf_add_str(&prefix, "shards/");
    s->nleases = s->spec.shards;
    KEEL_REALLOC_ARRAY(s->leases, s->nleases ? s->nleases : 1);
    KEEL_REALLOC_ARRAY(s->lease_tokens, s->nleases ? s->nleases : 1);
    memset(s->leases, 0, (size_t)s->nleases * sizeof(s->leases[0]));
    memset(s->lease_tokens, 0, (size_t)s->nleases * sizeof(s->lease_tokens[0]));
    keel_cview_each(s->view, keel_key_str(&prefix), add_owner, &o);
    keel_buf_release(&prefix);
    if (o.seen == 0)
        s->nleases = 0; /* no lease of the job in etcd: a server used without a coordinator */
    if (o.seen > 0) {
        KEEL_ALLOC_ARRAY(ids, o.n + 1);
        for (size_t i = 0; i < o.n; i++)
            ids[i] = o.ids[i];
        keel_ps_set_owners(s->ps, ids, o.n);
        release_parked(s);
        free(ids);
    }
    free(o.ids);
}

/*
 * Make the store's range state the job's (see keel_snapshot_claim()): a
 * restarted server finds its own job's snapshots and log again, while a new
 * job never starts from the rows and exactly-once positions of the last one.
 */
static int claim_store(struct srv *s, const char *job, struct keel_error *err)
{
    char owner[KEEL_SNAPSHOT_OWNER_MAX + 1], prev[KEEL_SNAPSHOT_OWNER_MAX + 1];
    char digest[KEEL_JOBSPEC_DIGEST_SIZE * 2 + 1];
    unsigned dropped = 0;
    int rc;

    keel_jobspec_digest_hex(&s->spec, digest);
    snprintf(owner, sizeof(owner), "%s sha256:%s", job, digest);
    s->store_had_job =
        keel_snapshot_owner(s->store, prev, sizeof(prev), NULL) == 0 && strcmp(prev, owner) == 0;
    rc = keel_snapshot_claim(s->store, owner, prev, sizeof(prev), &dropped, err);
    if (rc == 0 && prev[0] != '\0')
        KEEL_LOG_WARN("job %s: the store held the parameters of '%s'; dropped its snapshots and "
                      "update log (%u range%s) so that %s starts from its initializers",
                      job, prev, dropped, dropped == 1 ? "" : "s", job);
    return rc;
}

/* The job's state changed: take up a running job, drop an ended one. */
static void set_job_state(struct srv *s, const char *job, const struct keel_etcd_kv *kv,
                          int deleted)
{
    struct keel_job_status st;
    struct keel_error err;
    struct keel_etcd_kv spec_kv;
    struct keel_buf key = KEEL_BUF_INIT;

    keel_error_init(&err);
    memset(&st, 0, sizeof(st));
    if (deleted || keel_job_status_decode(kv->value, kv->value_len, &st, &err) != 0 ||
        st.state != KEEL_JOB_RUNNING) {
        if (s->ps != NULL && strcmp(s->job, job) == 0) {
            if (s->spec.checkpoint_interval > 0 && s->ckpt_keyed && !deleted) {
                /* Named by the clock every batch is done at, when the job is done. */
                uint64_t end = st.state == KEEL_JOB_DONE ? srv_cut_end_clock(s) : 0;

                checkpoint_locked(s, end > s->ckpt_clock ? end : s->ckpt_clock,
                                  st.state == KEEL_JOB_DONE ? "the job is done" : "the job ended");
            }
            srv_cut_end(s);
            s->ckpt_next = 0;
            KEEL_LOG_INFO("job %s is no longer running: releasing its ranges", job);
            __atomic_add_fetch(&s->job_gen, 1, __ATOMIC_ACQ_REL);
            keel_ps_free(s->ps);
            s->ps = NULL;
            s->job[0] = '\0';
            memset(s->nstreams, 0, sizeof(s->nstreams));
            memset(s->cut_mark, 0, sizeof(s->cut_mark));
            memset(s->report.terms, 0, sizeof(s->report.terms));
            memset(s->report.lost, 0, sizeof(s->report.lost));
            memset(s->stored, 0, sizeof(s->stored));
            s->report_dirty = 1;
            s->nleases = 0;
            release_parked(s);
            repl_release_waiting(s); /* each is told the job ended (no range is led) */
        }
        return;
    }
    if (s->ps != NULL && strcmp(s->job, job) == 0)
        return;
    if (s->ps != NULL) {
        KEEL_LOG_WARN("job %s is running but this server serves %s: ignoring it", job, s->job);
        return;
    }
    keel_key_job_spec(&key, s->cluster, job);
    memset(&spec_kv, 0, sizeof(spec_kv));
    if (keel_etcd_get(s->etcd, keel_key_str(&key), &spec_kv, NULL, &err) != 0 ||
        keel_jobspec_decode(spec_kv.value, spec_kv.value_len, &s->spec, &err) != 0 ||
        keel_ps_new(&s->spec, &s->ps, &err) != 0) {
        KEEL_LOG_ERROR("cannot take up job %s: %s", job, err.msg);
        keel_etcd_kv_release(&spec_kv);
        keel_buf_release(&key);
        return;
    }
    keel_etcd_kv_release(&spec_kv);
    keel_buf_release(&key);
    __atomic_add_fetch(&s->job_gen, 1, __ATOMIC_ACQ_REL); /* before the store changes hands */
    if (claim_store(s, job, &err) != 0) {
        KEEL_LOG_ERROR("cannot take up job %s: %s", job, err.msg);
        keel_ps_free(s->ps);
        s->ps = NULL;
        return;
    }
    snprintf(s->job, sizeof(s->job), "%s", job);
    s->enc_seen = 0;
    KEEL_LOG_INFO("serving job %s", job);
    if (keel_restore_lsns(s->store, s->stored, KEEL_PROTO_NRANGES, &err) != 0) {
        KEEL_LOG_WARN("job %s: cannot read which ranges the store holds (none offered for a "
                      "restore): %s",
                      job, err.msg);
        keel_error_init(&err);
    }
    memset(s->nstreams, 0, sizeof(s->nstreams));
    memset(s->cut_mark, 0, sizeof(s->cut_mark));
    memset(s->report.terms, 0, sizeof(s->report.terms));
    memset(s->report.lost, 0, sizeof(s->report.lost));
    s->report_dirty = 1;
    s->ckpt_clock = 0;
    s->ckpt_next = 0;
    if (s->spec.checkpoint_interval > 0 && s->ckpt_keyed)
        s->ckpt_next = s->spec.checkpoint_interval; /* its cut begins once ranges are held */
    else if (s->spec.checkpoint_interval > 0)
        KEEL_LOG_WARN("job %s asks for a checkpoint every %" PRIu64 " clocks, but [server] "
                      "checkpoint_key is not set: this server takes none",
                      job, s->spec.checkpoint_interval);
    keel_ps_set_workers(s->ps, (const char *const *)s->workers, s->nworkers);
    set_owners(s);
    apply_assignment(s);
    if (s->ckpt_next > 0 && !srv_cut_begin(s, s->ckpt_next))
        s->ckpt_next = 0;
}

static int add_worker(void *user, const struct keel_etcd_kv *kv)
{
    struct srv *s = user;
    struct keel_key k;

    if (keel_key_parse(kv->key, s->cluster, &k) != KEEL_KEY_MEMBER || strcmp(k.role, "worker") != 0)
        return 0;
    KEEL_REALLOC_ARRAY(s->workers, s->nworkers + 1);
    s->workers[s->nworkers++] = keel_strdup(k.id);
    return 0;
}

static void workers_clear(struct srv *s)
{
    while (s->nworkers)
        free(s->workers[--s->nworkers]);
}

/* The registered workers changed: take them from the view (srv->lock held). */
static void set_workers(struct srv *s)
{
    struct keel_buf prefix = KEEL_BUF_INIT;

    workers_clear(s);
    keel_key_members(&prefix, s->cluster, "worker");
    keel_cview_each(s->view, keel_key_str(&prefix), add_worker, s);
    keel_buf_release(&prefix);
    if (s->ps != NULL)
        keel_ps_set_workers(s->ps, (const char *const *)s->workers, s->nworkers);
    release_parked(s);
}

/*
 * The view applied a batch (watch thread): follow the assignment, the jobs'
 * states, the registered workers and the running job's shard leases.
 */
static void on_view(void *user, keel_cview *v, const struct keel_etcd_watch_batch *b)
{
    struct srv *s = user;
    int relisted = b->reset; /* a fresh listing: every worker and lease may have changed */
    int workers = relisted, owners = relisted;

    (void)v;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < b->n; i++) {
        const struct keel_etcd_event *ev = &b->events[i];
        int deleted = ev->type == KEEL_ETCD_DELETE;
        struct keel_key k;

        switch (keel_key_parse(ev->kv.key, s->cluster, &k)) {
        case KEEL_KEY_ASSIGNMENT:
            if (!deleted)
                set_assignment(s, &ev->kv);
            break;
        case KEEL_KEY_MEMBER:
            workers |= strcmp(k.role, "worker") == 0;
            break;
        case KEEL_KEY_JOB_STATE:
            set_job_state(s, k.job, &ev->kv, deleted);
            break;
        case KEEL_KEY_JOB_SHARD:
            owners |= s->ps != NULL && strcmp(k.job, s->job) == 0;
            break;
        default:
            break;
        }
    }
    if (workers)
        set_workers(s);
    if (owners)
        set_owners(s);
    pthread_mutex_unlock(&s->lock);
}

/* ---- start and stop ------------------------------------------------------------ */

/* The member's keeper registered this server again after its lease was lost. */
static void on_rejoined(void *user, uint64_t incarnation)
{
    struct srv *s = user;

    KEEL_LOG_INFO("server %s registered again, incarnation %" PRIu64, s->config->node_id,
                  incarnation);
    pthread_mutex_lock(&s->lock);
    s->report_dirty = 1; /* the report went with the old lease */
    pthread_mutex_unlock(&s->lock);
}

int keel_server_run(const struct keel_config *config)
{
    struct srv s;
    struct keel_store_options so = {0};
    struct keel_listener_options lo;
    struct keel_tls_files files = keel_tls_files_of(config);
    struct keel_etcd_options eo;
    struct keel_member_opts mo = {0};
    struct keel_error err;
    char address[64];
    int rc = KEEL_EXIT_FAILURE;

    memset(&s, 0, sizeof(s));
    s.config = config;
    s.acks_tail = &s.acks;
    s.out_tail = &s.out;
    pthread_mutex_init(&s.lock, NULL);
    pthread_mutex_init(&s.report_lock, NULL);
    keel_cond_init_mono(&s.wake);
    pthread_cond_init(&s.out_wake, NULL);
    s.cluster = config->cluster_name;
    keel_error_init(&err);
    keel_signals_block();
    keel_store_tune_malloc(0);

    if (keel_store_open(&s.store, config->data_dir, &so, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        goto out;
    }
    if (config->server_checkpoint_key[0] != '\0') {
        if (keel_ckpt_key_load(&s.ckpt_key, config->server_checkpoint_key, &err) != 0) {
            KEEL_LOG_ERROR("[server] checkpoint_key: %s", err.msg);
            rc = KEEL_EXIT_CONFIG;
            goto close_store;
        }
        s.ckpt_keyed = 1;
    }
    if (keel_tls_new(&files, &s.tls, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        rc = KEEL_EXIT_CONFIG;
        goto close_store;
    }
    if (keel_tls_check_self(s.tls, KEEL_ROLE_SERVER, config->node_id, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        rc = KEEL_EXIT_CONFIG;
        goto free_tls;
    }
    keel_listener_options_of(config, &lo);
    lo.handler = handle;
    lo.handler_ctx = &s;
    if (keel_listener_start(&lo, s.tls, &s.listener, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        goto free_tls;
    }
    pthread_create(&s.storage_tid, NULL, storage_main, &s);
    pthread_create(&s.sender_tid, NULL, repl_sender_main, &s);

    keel_etcd_options_from_config(config, &eo);
    if (keel_etcd_new(&eo, &s.etcd, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        goto stop_listener;
    }
    snprintf(address, sizeof(address), "127.0.0.1:%u", keel_listener_port(s.listener));
    if (strncmp(config->listen, "127.0.0.1:", 10) != 0) {
        /* Advertise the configured host with the bound port. */
        const char *colon = strrchr(config->listen, ':');
        snprintf(address, sizeof(address), "%.*s:%u", (int)(colon - config->listen), config->listen,
                 keel_listener_port(s.listener));
    }
    mo.cluster = config->cluster_name;
    mo.role = "server";
    mo.id = config->node_id;
    mo.address = address;
    mo.ttl_s = (int64_t)(config->etcd_lease_ttl_ms / 1000);
    mo.wait_ms = config->etcd_lease_ttl_ms + 2000;
    {
        keel_member *m;

        if (keel_member_join(s.etcd, &mo, &m, &err) != 0) {
            KEEL_LOG_ERROR("%s", err.msg);
            goto free_etcd;
        }
        pthread_mutex_lock(&s.lock);
        s.member = m; /* the storage thread writes the replica report under its lease */
        pthread_mutex_unlock(&s.lock);
    }
    /* The data path does not need etcd: serve on, and register again after an outage. */
    keel_member_keep(s.member, on_rejoined, &s);
    if (keel_cview_start(s.etcd, s.cluster, on_view, &s, &s.view, &err) != 0) {
        KEEL_LOG_ERROR("%s", err.msg);
        goto leave;
    }
    KEEL_LOG_INFO("server %s serving at %s (data in %s)", config->node_id, address,
                  config->data_dir);

    keel_signals_wait(s.tls);
    rc = KEEL_EXIT_OK;

    keel_cview_stop(s.view);
    s.view = NULL;
leave : {
    keel_member *m;

    /* No report is being written once s.member is NULL under report_lock. */
    pthread_mutex_lock(&s.report_lock);
    pthread_mutex_lock(&s.lock);
    m = s.member;
    s.member = NULL;
    pthread_mutex_unlock(&s.lock);
    pthread_mutex_unlock(&s.report_lock);
    keel_member_leave(m, NULL);
}
free_etcd:
    keel_etcd_free(s.etcd);
stop_listener:
    keel_listener_stop(s.listener);
    pthread_mutex_lock(&s.lock);
    s.stopping = 1;
    pthread_cond_signal(&s.wake);
    pthread_cond_broadcast(&s.out_wake);
    pthread_mutex_unlock(&s.lock);
    pthread_join(s.storage_tid, NULL); /* commits what is queued, writes final snapshots */
    pthread_join(s.sender_tid, NULL);
    release_parked(&s);
    keel_ps_free(s.ps);
    keel_assign_free(s.assign);
    srv_cut_end(&s);
    for (size_t i = 0; i < s.ndatasets; i++)
        keel_dataset_close(s.datasets[i].ds);
    free(s.datasets);
    workers_clear(&s);
    free(s.workers);
    free(s.leases);
    free(s.lease_tokens);
free_tls:
    keel_tls_free(s.tls);
close_store:
    keel_store_close(s.store);
out:
    return rc;
}
