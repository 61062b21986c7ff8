/*
 * server.c - keel-server: the wiring of store, transport, etcd and ranges.
 *
 * Threads: the listener's I/O threads run handle() for every request; the
 * etcd watch thread keeps the cluster view (cview.h) up to date and runs
 * on_view(); the storage thread commits the update log in groups, sends the
 * ACKs that waited for it, writes snapshots and takes the job's checkpoints
 * every checkpoint_interval clocks (and one when the job ends, on the watch
 * thread).
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

/* What a pending acknowledgement answers. */
enum ack_kind {
    ACK_PUSH,      /* a worker's push to a primary */
    ACK_REPLICATE, /* a primary's update, on a backup */
    ACK_COPY,      /* a primary's copy of a range, on a backup */
};

/* A range a push touched, and the LSN every in-sync backup must have before it is acknowledged. */
struct range_wait {
    uint32_t range;
    uint64_t lsn;
};

/*
 * A request applied in memory, waiting for its log records to be committed
 * (the storage thread) and, for a push, for every in-sync backup of the
 * ranges it touched to confirm it (release_waiting()).
 */
struct pending_ack {
    struct pending_ack *next;
    enum ack_kind kind;
    struct keel_conn *conn;
    struct keel_frame_header req;
    struct keel_ps_result result;
    char worker[KEEL_ID_MAX + 1]; /* the push's worker id: the frame is not kept */
    uint64_t seq;
    uint32_t shard;
    struct range_wait *waits; /* ACK_PUSH */
    size_t nwaits;
    uint64_t lsn;              /* ACK_REPLICATE, ACK_COPY: echoed in the ACK */
    uint64_t term;             /* ACK_COPY: the term the copy was taken at */
    struct keel_snapshot copy; /* ACK_COPY: installed in the store in log order */
};

#define MAX_BACKUPS (KEEL_ASSIGN_MAX_REPLICATION - 1)

/*
 * A primary's stream of one range to one backup: a RANGE_COPY first, then
 * every update in LSN order.  A failure (a lost connection, a refusal) starts
 * it again with a new copy; replies to an older start (gen) are ignored.
 */
enum stream_state {
    STREAM_COPY,    /* a copy must be sent */
    STREAM_COPYING, /* the copy is on its way; updates follow it */
    STREAM_LIVE,    /* the backup installed the copy */
};

struct stream {
    char backup[KEEL_ID_MAX + 1];
    uint64_t term;
    enum stream_state state;
    uint64_t acked;    /* the backup has every update of this start up to this LSN */
    uint64_t gen;      /* bumped at every start */
    uint64_t retry_at; /* monotonic ms: no copy before, after a failure */
    unsigned failures; /* in a row, for the log */
};

/* A message for a backup, queued in the order it must be sent. */
struct outgoing {
    struct outgoing *next;
    char backup[KEEL_ID_MAX + 1];
    uint32_t range;
    uint64_t gen, lsn;
    struct keel_msg msg;
    struct keel_buf payload; /* RANGE_COPY: the packed range */
    uint64_t *keys;          /* REPLICATE: the update's keys, rows and worker id */
    float *rows;
    char worker[KEEL_ID_MAX + 1];
};

/* A connection to another server (sender thread only). */
struct peer {
    char id[KEEL_ID_MAX + 1];
    char address[128];
    struct keel_client *client;
};

/* A pull waiting for the slowest worker (BSP/SSP). */
struct parked_pull {
    struct parked_pull *next;
    struct keel_conn *conn;
    struct keel_frame_header req;
    uint32_t table_id, row_width, nkeys;
    uint64_t clock;
    uint64_t *keys;
};

struct open_dataset {
    char name[KEEL_ID_MAX + 1];
    keel_dataset *ds;
};

struct srv {
    const struct keel_config *config;
    const char *cluster;
    keel_store *store;
    struct keel_tls *tls;
    struct keel_listener *listener;
    keel_etcd *etcd;
    keel_member *member;
    keel_cview *view; /* the cluster's keys, kept up to date by a watch */

    pthread_mutex_t lock;
    pthread_cond_t wake; /* the storage thread: work or stop */
    int stopping;
    struct keel_ps *ps; /* the running job's ranges, NULL when none */
    struct keel_jobspec spec;
    char job[KEEL_ID_MAX + 1];
    keel_assign *assign;
    uint64_t assign_version;
    struct pending_ack *acks, **acks_tail; /* applied, to be logged */
    struct pending_ack *waiting;           /* pushes logged, waiting for backups */
    struct parked_pull *parked;
    /* replication */
    struct stream streams[KEEL_PROTO_NRANGES][MAX_BACKUPS];
    uint8_t nstreams[KEEL_PROTO_NRANGES];
    unsigned installs[KEEL_PROTO_NRANGES]; /* copies received and not yet in the store */
    struct outgoing *out, **out_tail;
    pthread_cond_t out_wake; /* the sender thread: messages or stop */
    pthread_t sender_tid;
    struct peer *peers;
    size_t npeers;
    struct keel_replica_report report; /* what this server holds, for etcd */
    int store_had_job; /* the store held this job's ranges before it was taken up here */
    /* wall ms when this server was promoted to lead the range, until its
     * first push there is acknowledged (logged once); 0: none pending */
    int64_t promoted_ms[KEEL_PROTO_NRANGES];
    int report_dirty;
    uint64_t report_at;              /* monotonic ms of the last report written */
    pthread_mutex_t report_lock;     /* held while a report is written: s->member stays */
    char **workers;                  /* live worker ids, as the view has them */
    char (*leases)[KEEL_ID_MAX + 1]; /* the running job's shards' owners ("": free), by shard */
    uint32_t nleases;                /* 0: no lease of the job is known (no coordinator) */
    size_t nworkers;
    struct open_dataset *datasets;
    size_t ndatasets;
    pthread_t storage_tid;
    /* checkpoints */
    struct keel_ckpt_key ckpt_key; /* loaded from [server] checkpoint_key */
    int ckpt_keyed;                /* a key was configured and loaded */
    uint64_t ckpt_next;            /* the job's clock of the next checkpoint; 0: none */
    uint64_t ckpt_clock;           /* the highest slowest-worker clock seen */
};

/* ---- streams to backups (srv->lock held) ------------------------------------ */

static struct stream *stream_find(struct srv *s, unsigned range, const char *backup)
{
    for (unsigned i = 0; i < s->nstreams[range]; i++)
        if (strcmp(s->streams[range][i].backup, backup) == 0)
            return &s->streams[range][i];
    return NULL;
}

/* Start `st` again: a fresh copy goes first, no sooner than `delay_ms` from now. */
static void stream_restart(struct stream *st, uint64_t delay_ms)
{
    st->state = STREAM_COPY;
    st->acked = 0;
    st->gen++;
    st->retry_at = keel_clock_mono_ms() + delay_ms;
}

/* The streams of `range` become one per backup in `backups`, at `term`. */
static void streams_set(struct srv *s, unsigned range, const char *const *backups, size_t n,
                        uint64_t term)
{
    struct stream kept[MAX_BACKUPS];
    unsigned nkept = 0;

    for (size_t i = 0; i < n && nkept < MAX_BACKUPS; i++) {
        struct stream *st = stream_find(s, range, backups[i]);

        if (st != NULL) {
            kept[nkept] = *st;
        } else {
            memset(&kept[nkept], 0, sizeof(kept[0]));
            snprintf(kept[nkept].backup, sizeof(kept[0].backup), "%s", backups[i]);
            kept[nkept].term = term;
            stream_restart(&kept[nkept], 0);
        }
        if (kept[nkept].term != term) {
            kept[nkept].term = term;
            stream_restart(&kept[nkept], 0);
        }
        nkept++;
    }
    memcpy(s->streams[range], kept, nkept * sizeof(kept[0]));
    s->nstreams[range] = (uint8_t)nkept;
}

static void outgoing_free(struct outgoing *o)
{
    keel_buf_release(&o->payload);
    free(o->keys);
    free(o->rows);
    free(o);
}

static void send_later(struct srv *s, struct outgoing *o)
{
    *s->out_tail = o;
    s->out_tail = &o->next;
    pthread_cond_signal(&s->out_wake);
}

/* Queue a copy of every range whose stream needs one (and may have it now). */
static void start_copies(struct srv *s)
{
    uint64_t now = keel_clock_mono_ms();
    struct keel_error err;

    if (s->ps == NULL)
        return;
    keel_error_init(&err);
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        for (unsigned i = 0; i < s->nstreams[r]; i++) {
            struct stream *st = &s->streams[r][i];
            struct keel_snapshot snap;
            struct outgoing *o;

            if (st->state != STREAM_COPY || st->retry_at > now || !keel_ps_is_primary(s->ps, r))
                continue;
            if (keel_ps_snapshot(s->ps, r, &snap, &err) != 0)
                continue;
            o = keel_calloc(1, sizeof(*o));
            keel_buf_init(&o->payload, 0);
            if (keel_snapshot_pack(&snap, &o->payload, &err) != 0) {
                KEEL_LOG_ERROR("range %u: cannot pack a copy for %s: %s", r, st->backup, err.msg);
                keel_snapshot_release(&snap);
                outgoing_free(o);
                stream_restart(st, 1000);
                continue;
            }
            st->state = STREAM_COPYING;
            st->gen++;
            snprintf(o->backup, sizeof(o->backup), "%s", st->backup);
            o->range = r;
            o->gen = st->gen;
            o->lsn = snap.lsn;
            o->msg.hdr.type = KEEL_MSG_RANGE_COPY;
            o->msg.u.range_copy.range = r;
            o->msg.u.range_copy.term = st->term;
            o->msg.u.range_copy.payload = keel_view_make(o->payload.buf, o->payload.len);
            keel_snapshot_release(&snap);
            send_later(s, o);
        }
    }
}

/* Queue update `a` (applied here as primary) for every backup streaming its range. */
static void replicate(struct srv *s, const struct keel_ps_applied *a, const char *worker)
{
    const struct keel_rows *d = &a->push.data;

    for (unsigned i = 0; i < s->nstreams[a->range]; i++) {
        struct stream *st = &s->streams[a->range][i];
        struct outgoing *o;

        if (st->state == STREAM_COPY)
            continue; /* the copy to come covers it */
        o = keel_calloc(1, sizeof(*o));
        keel_buf_init(&o->payload, 0);
        snprintf(o->backup, sizeof(o->backup), "%s", st->backup);
        snprintf(o->worker, sizeof(o->worker), "%s", worker);
        o->range = a->range;
        o->gen = st->gen;
        o->lsn = a->lsn;
        KEEL_ALLOC_ARRAY(o->keys, d->nkeys ? d->nkeys : 1);
        o->rows = keel_malloc(keel_size_mul(keel_size_mul(d->nkeys, d->row_width), 4) + 4);
        memcpy(o->keys, d->keys, (size_t)d->nkeys * 8);
        memcpy(o->rows, d->rows, (size_t)d->nkeys * d->row_width * 4);
        o->msg.hdr.type = KEEL_MSG_REPLICATE;
        o->msg.u.replicate.range = a->range;
        o->msg.u.replicate.term = st->term;
        o->msg.u.replicate.lsn = a->lsn;
        o->msg.u.replicate.push = a->push;
        o->msg.u.replicate.push.worker_id = keel_str_of(o->worker);
        o->msg.u.replicate.push.data.keys = o->keys;
        o->msg.u.replicate.push.data.rows = o->rows;
        send_later(s, o);
    }
}

/* ---- acknowledgements that wait for backups (srv->lock held) ------------------ */

static void pending_free(struct pending_ack *a)
{
    if (a->conn)
        keel_conn_unref(a->conn);
    keel_ps_result_release(&a->result);
    keel_snapshot_release(&a->copy);
    free(a->waits);
    free(a);
}

static void send_ack(struct pending_ack *a, uint64_t lsn, int duplicate)
{
    struct keel_msg m;

    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_ACK;
    m.u.ack.lsn = lsn;
    m.u.ack.seq = a->seq;
    m.u.ack.shard = a->shard;
    m.u.ack.status = duplicate ? KEEL_ACK_DUPLICATE : KEEL_ACK_APPLIED;
    keel_conn_reply(a->conn, &a->req, &m, NULL);
}

static int redirect(struct srv *s, struct keel_conn *conn, const struct keel_frame_header *req,
                    const char *why);

/*
 * Whether push `a` may be acknowledged: 1 when every in-sync backup of every
 * range it touched has confirmed the range's updates up to its wait LSN, 0
 * while one has not, -1 when this server no longer leads one of the ranges
 * (the push must go to the new primary, which answers a duplicate if it has it).
 */
static int push_ready(struct srv *s, const struct pending_ack *a, unsigned *late_range)
{
    for (size_t i = 0; i < a->nwaits; i++) {
        unsigned r = a->waits[i].range;
        const char *ids[KEEL_ASSIGN_MAX_REPLICATION];
        unsigned insync;
        uint64_t term;

        if (s->ps == NULL || s->assign == NULL || !keel_ps_is_primary(s->ps, r)) {
            *late_range = r;
            return -1;
        }
        keel_assign_replicas(s->assign, r, ids, KEEL_ASSIGN_MAX_REPLICATION);
        insync = keel_assign_insync(s->assign, r);
        term = keel_assign_term(s->assign, r);
        for (unsigned k = 1; k < insync; k++) {
            const struct stream *st = stream_find(s, r, ids[k]);

            if (st == NULL || st->term != term || st->state != STREAM_LIVE ||
                st->acked < a->waits[i].lsn) {
                *late_range = r;
                return 0;
            }
        }
    }
    return 1;
}

/*
 * Log, once per promotion, the first push acknowledged in a range this
 * server was promoted to lead: how long the range went without one after
 * the promotion, and the wall-clock time of the acknowledgement (for
 * measuring a failover from the outside).
 */
static void note_first_ack(struct srv *s, const struct pending_ack *a)
{
    for (size_t i = 0; i < a->nwaits; i++) {
        unsigned r = a->waits[i].range;
        int64_t now;

        if (s->promoted_ms[r] == 0)
            continue;
        now = keel_clock_wall_ms();
        KEEL_LOG_INFO("range %u: first push acknowledged as primary %" PRId64
                      " ms after promotion, at %" PRId64 " ms since the epoch",
                      r, now - s->promoted_ms[r], now);
        s->promoted_ms[r] = 0;
    }
}

/* Answer every logged push whose backups all have it. */
static void release_waiting(struct srv *s)
{
    struct pending_ack **p = &s->waiting;

    while (*p) {
        struct pending_ack *a = *p;
        unsigned range = 0;
        int ready = push_ready(s, a, &range);

        if (ready == 0) {
            p = &a->next;
            continue;
        }
        *p = a->next;
        if (ready > 0) {
            send_ack(a, a->result.lsn, a->result.duplicate);
            note_first_ack(s, a);
        } else {
            char why[96];

            snprintf(why, sizeof(why), "range %u is no longer led here", range);
            redirect(s, a->conn, &a->req, why);
        }
        pending_free(a);
    }
}

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

/*
 * Whether range `r`, just opened from the initializer because the store had
 * nothing of it, must not be: it has rows, the job has trained (a shard has
 * moved), and this store did not hold the job's ranges before (it is new or
 * was wiped).  Its updates would then be lost silently.
 */
static int state_lost(struct srv *s, unsigned r)
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    int trained;

    if (s->store_had_job || keel_ps_rows(s->ps, r) == 0)
        return 0;
    keel_key_job_prefix(&prefix, s->cluster, s->job);
    keel_buf_add_str(&prefix, "shards/");
    trained = keel_cview_each(s->view, keel_key_str(&prefix), shard_moved, s) != 0;
    keel_buf_release(&prefix);
    return trained;
}

static void apply_assignment(struct srv *s)
{
    struct keel_error err;
    const char *self = s->config->node_id;
    unsigned opened = 0, closed = 0, restored = 0, promoted = 0, demoted = 0;
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
            if (!held) {
                /* A fresh range, or one whose every replica was lost: from the store. */
                if (keel_ps_open_range(s->ps, s->store, r, &st, &err) != 0) {
                    KEEL_LOG_ERROR("cannot open range %u: %s", r, err.msg);
                    s->nstreams[r] = 0;
                    continue;
                }
                if (st.lsn == 0 && state_lost(s, r)) {
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
            } else if (!keel_ps_is_primary(s->ps, r)) {
                keel_ps_set_primary(s->ps, r, 1);
                s->promoted_ms[r] = keel_clock_wall_ms();
                promoted++;
            }
            if (s->report.terms[r] != term)
                s->report_dirty = 1;
            s->report.terms[r] = term;
            streams_set(s, r, ids + 1, n - 1, term);
            continue;
        }
        s->nstreams[r] = 0;
        s->report_dirty |= s->report.lost[r];
        s->report.lost[r] = 0;
        s->promoted_ms[r] = 0;
        if (pos > 0) {
            /* A backup: its copy comes from the primary (RANGE_COPY). */
            if (held && keel_ps_is_primary(s->ps, r)) {
                keel_ps_set_primary(s->ps, r, 0);
                demoted++;
            }
        } else {
            if (held) {
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
    start_copies(s);
    release_waiting(s);
}

/* ---- parked pulls ------------------------------------------------------------ */

static void answer_pull(struct srv *s, struct keel_conn *conn, const struct keel_frame_header *req,
                        uint32_t table_id, uint32_t width, const uint64_t *keys, uint32_t nkeys)
{
    struct keel_error err;
    struct keel_msg reply;
    float *rows = keel_calloc((size_t)nkeys * width + 1, sizeof(float));

    keel_error_init(&err);
    if (keel_ps_pull(s->ps, table_id, width, keys, nkeys, rows, &err) != 0) {
        keel_conn_reply_error(conn, req, err.code, err.msg);
    } else {
        memset(&reply, 0, sizeof(reply));
        reply.hdr.type = KEEL_MSG_PULL_REPLY;
        reply.hdr.epoch = 0;
        reply.u.pull_reply.clock = keel_ps_min_clock(s->ps);
        reply.u.pull_reply.data = (struct keel_rows){table_id, width, nkeys, keys, rows};
        keel_conn_reply(conn, req, &reply, NULL);
    }
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

static int redirect(struct srv *s, struct keel_conn *conn, const struct keel_frame_header *req,
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
    redirect(s, conn, &msg->hdr, why);
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

static void queue_pending(struct srv *s, struct pending_ack *a, struct keel_conn *conn,
                          const struct keel_frame_header *req)
{
    keel_conn_ref(conn);
    a->conn = conn;
    a->req = *req;
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
    if ((rc = check_lease(s, &msg->u.push, err)) != 0) {
        pthread_mutex_unlock(&s->lock);
        free(a);
        return rc;
    }
    rc = keel_ps_push(s->ps, &msg->u.push, &a->result, err);
    if (rc == KEEL_EREDIRECT) {
        keel_ps_result_release(&a->result);
        free(a);
        redirect(s, conn, &msg->hdr, err->msg);
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
        replicate(s, &a->result.applied[i], a->worker);
    }
    push_waits(s, &msg->u.push, a);
    queue_pending(s, a, conn, &msg->hdr);
    release_parked(s); /* this push may have moved the slowest clock */
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/*
 * Fencing of the replication stream: a REPLICATE or RANGE_COPY must come from
 * the range's primary at the range's term as this server knows them, to a
 * backup of it.  An older term is refused for good (KEEL_EEPOCH: a deposed
 * primary gets no confirmation); a newer one only until this server has
 * caught up with the assignment (KEEL_EUNAVAILABLE).  srv->lock held.
 */
static int check_stream(struct srv *s, const struct keel_cert_identity *peer, unsigned range,
                        uint64_t term, struct keel_error *err)
{
    uint64_t known;
    const char *primary;

    if (s->ps == NULL || s->assign == NULL)
        return keel_err_set(err, KEEL_EUNAVAILABLE, "no job is running on this server");
    known = keel_assign_term(s->assign, range);
    if (term < known)
        return keel_err_set(err, KEEL_EEPOCH,
                            "range %u: term %" PRIu64 " is older than its term %" PRIu64, range,
                            term, known);
    if (term > known)
        return keel_err_set(err, KEEL_EUNAVAILABLE,
                            "range %u: term %" PRIu64 " is not known here yet (%" PRIu64 ")", range,
                            term, known);
    primary = keel_assign_primary(s->assign, range);
    if (primary == NULL || strcmp(primary, peer->id) != 0 ||
        keel_assign_position(s->assign, range, s->config->node_id) <= 0)
        return keel_err_set(err, KEEL_EEPOCH,
                            "range %u at term %" PRIu64 ": %s is not its primary, or this server "
                            "not its backup",
                            range, term, peer->id);
    return 0;
}

static int handle_replicate(struct srv *s, struct keel_conn *conn,
                            const struct keel_cert_identity *peer, const struct keel_msg *msg,
                            struct keel_error *err)
{
    const struct keel_msg_replicate *m = &msg->u.replicate;
    const struct keel_rows *d = &m->push.data;
    struct pending_ack *a;
    int rc;

    pthread_mutex_lock(&s->lock);
    if ((rc = check_stream(s, peer, m->range, m->term, err)) != 0 ||
        (rc = keel_ps_replicate(s->ps, m->range, m->lsn, &m->push, err)) < 0) {
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    a = keel_calloc(1, sizeof(*a));
    a->kind = ACK_REPLICATE;
    a->lsn = m->lsn;
    if (rc == 0) { /* applied: log it as the primary did */
        struct keel_ps_applied *ap;

        snprintf(a->worker, sizeof(a->worker), "%.*s", (int)m->push.worker_id.len,
                 m->push.worker_id.ptr);
        KEEL_ALLOC_ARRAY(a->result.applied, 1);
        KEEL_ALLOC_ARRAY(a->result.owner, d->nkeys ? d->nkeys : 1);
        a->result.owner_rows =
            keel_malloc(keel_size_mul(keel_size_mul(d->nkeys, d->row_width), 4) + 4);
        memcpy(a->result.owner, d->keys, (size_t)d->nkeys * 8);
        memcpy(a->result.owner_rows, d->rows, (size_t)d->nkeys * d->row_width * 4);
        ap = &a->result.applied[0];
        ap->range = m->range;
        ap->lsn = m->lsn;
        ap->push = m->push;
        ap->push.worker_id = keel_str_of(a->worker);
        ap->push.data.keys = a->result.owner;
        ap->push.data.rows = a->result.owner_rows;
        a->result.napplied = 1;
        a->result.lsn = m->lsn;
    }
    queue_pending(s, a, conn, &msg->hdr);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static int handle_range_copy(struct srv *s, struct keel_conn *conn,
                             const struct keel_cert_identity *peer, const struct keel_msg *msg,
                             struct keel_error *err)
{
    const struct keel_msg_range_copy *m = &msg->u.range_copy;
    struct keel_snapshot mem, disk;
    struct pending_ack *a;
    int rc;

    /* Two decodes: one copy for memory now, one for the store in log order. */
    if ((rc = keel_snapshot_unpack(m->payload.data, m->payload.len, s->config->max_frame_size, &mem,
                                   err)) != 0)
        return keel_err_prefix(err, rc, "copy of range %u from %s", m->range, peer->id);
    if (mem.range != m->range) {
        keel_snapshot_release(&mem);
        return keel_err_set(err, KEEL_EINVAL, "a copy of range %" PRIu32 " sent as range %u",
                            mem.range, m->range);
    }
    keel_snapshot_unpack(m->payload.data, m->payload.len, s->config->max_frame_size, &disk, NULL);
    pthread_mutex_lock(&s->lock);
    if ((rc = check_stream(s, peer, m->range, m->term, err)) != 0 ||
        (rc = keel_ps_install(s->ps, m->range, &mem, err)) != 0) {
        pthread_mutex_unlock(&s->lock);
        keel_snapshot_release(&mem);
        keel_snapshot_release(&disk);
        return rc;
    }
    a = keel_calloc(1, sizeof(*a));
    a->kind = ACK_COPY;
    a->lsn = disk.lsn;
    a->term = m->term;
    a->copy = disk;
    s->installs[m->range]++;
    KEEL_LOG_DEBUG("range %u: copy at LSN %" PRIu64 ", term %" PRIu64 " from %s", m->range, a->lsn,
                   m->term, peer->id);
    queue_pending(s, a, conn, &msg->hdr);
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
        struct parked_pull *pp = keel_calloc(1, sizeof(*pp));

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

static keel_dataset *dataset_of(struct srv *s, struct keel_str name, struct keel_error *err)
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
    ds = dataset_of(s, r->dataset, err);
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
        return handle_replicate(s, conn, peer, msg, err);
    case KEEL_MSG_RANGE_COPY:
        return handle_range_copy(s, conn, peer, msg, err);
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
static void flush_records(struct srv *s, struct keel_ulog_record *recs, size_t *n)
{
    struct keel_error err;
    char what[96];

    keel_error_init(&err);
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

    keel_error_init(&err);
    for (struct pending_ack *a = acks; a; a = a->next) {
        if (a->kind == ACK_COPY) {
            flush_records(s, recs, &n);
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
    flush_records(s, recs, &n);
    free(recs);
    pthread_mutex_lock(&s->lock);
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
            send_ack(a, a->lsn, 0);
            break;
        case ACK_REPLICATE:
            send_ack(a, a->lsn, 0);
            break;
        }
        pending_free(a);
    }
    release_waiting(s);
    pthread_mutex_unlock(&s->lock);
}

/* Write a snapshot of every range held (srv->lock held: the job cannot change). */
static void snapshot_locked(struct srv *s)
{
    struct keel_error err;
    unsigned written = 0;

    keel_error_init(&err);
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES && s->ps; r++) {
        struct keel_snapshot snap;

        /* A copy on its way to the store would replace this snapshot with an older one. */
        if (s->installs[r] > 0 || !keel_ps_holds(s->ps, r) ||
            keel_ps_snapshot(s->ps, r, &snap, &err) != 0)
            continue;
        if (keel_snapshot_write(s->store, &snap, &err) != 0)
            KEEL_LOG_ERROR("snapshot of range %u: %s", r, err.msg);
        else
            written++;
        keel_snapshot_release(&snap);
    }
    if (written)
        KEEL_LOG_DEBUG("snapshots of %u range(s) written", written);
}

static void snapshot_all(struct srv *s)
{
    pthread_mutex_lock(&s->lock);
    snapshot_locked(s);
    pthread_mutex_unlock(&s->lock);
}

/*
 * A checkpoint of the running job (srv->lock held): fresh snapshots of every
 * range held, then a signed checkpoint of them in the store, then the oldest
 * pruned past [server] checkpoint_keep.  Pushes wait meanwhile, so the
 * ranges are copied at one moment.  `clock` names it in the manifest (the
 * interval's multiple the slowest worker has passed, or the last clock seen
 * at the job's end); `why` goes to the log.
 */
static void checkpoint_locked(struct srv *s, uint64_t clock, const char *why)
{
    struct keel_ckpt_params p;
    struct keel_error err;
    uint64_t id, t0 = keel_clock_mono_ms();
    size_t pruned = 0;

    keel_error_init(&err);
    memset(&p, 0, sizeof(p));
    p.job = s->job;
    p.clock = clock;
    keel_jobspec_digest(&s->spec, p.spec_sha256);
    snapshot_locked(s);
    if (keel_checkpoint_take(s->store, &s->ckpt_key, &p, &id, &err) != 0) {
        KEEL_LOG_ERROR("job %s: checkpoint at clock %" PRIu64 " failed: %s", s->job, p.clock,
                       err.msg);
        return;
    }
    if (keel_checkpoint_prune(s->store, s->config->server_checkpoint_keep, &pruned, &err) != 0)
        KEEL_LOG_ERROR("job %s: pruning checkpoints: %s", s->job, err.msg);
    KEEL_LOG_INFO("job %s: checkpoint %" PRIu64 " at clock %" PRIu64 " (%s) in %" PRIu64 " ms%s",
                  s->job, id, p.clock, why, keel_clock_mono_ms() - t0,
                  pruned ? ", older ones pruned" : "");
}

/* Take the interval's checkpoint when the slowest worker has reached it. */
static void checkpoint_if_due(struct srv *s)
{
    uint64_t every = s->spec.checkpoint_interval, c;

    pthread_mutex_lock(&s->lock);
    if (s->ps != NULL && s->ckpt_next > 0) {
        c = keel_ps_min_clock(s->ps);
        if (c > s->ckpt_clock)
            s->ckpt_clock = c;
        if (c >= s->ckpt_next) {
            /* Named by the multiple passed, so that every server names this round alike
             * (a server restarted later takes it at a later clock under the same name). */
            checkpoint_locked(s, c / every * every, "interval");
            s->ckpt_next = (c / every + 1) * every;
        }
    }
    pthread_mutex_unlock(&s->lock);
}

/*
 * Write what this server holds to replicas/<id> under its lease: when it
 * changed, and every 2 s for the LSNs (the backups' lag in keelctl status).
 */
static void write_report(struct srv *s)
{
    struct keel_buf key = KEEL_BUF_INIT, val = KEEL_BUF_INIT;
    struct keel_error err;
    uint64_t now = keel_clock_mono_ms();
    int64_t lease;

    pthread_mutex_lock(&s->report_lock);
    pthread_mutex_lock(&s->lock);
    if (s->member == NULL || (!s->report_dirty && (s->ps == NULL || now - s->report_at < 2000)) ||
        (lease = keel_member_lease(s->member)) == 0) {
        pthread_mutex_unlock(&s->lock);
        pthread_mutex_unlock(&s->report_lock);
        return;
    }
    s->report.incarnation = keel_member_incarnation(s->member);
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        s->report.lsns[r] = s->ps != NULL && s->report.terms[r] ? keel_ps_lsn(s->ps, r) : 0;
    keel_replica_report_encode(&s->report, &val);
    s->report_dirty = 0;
    s->report_at = now;
    pthread_mutex_unlock(&s->lock);
    keel_error_init(&err);
    keel_key_replicas(&key, s->cluster, s->config->node_id);
    if (keel_etcd_put(s->etcd, keel_key_str(&key), val.buf, val.len, lease, NULL, &err) != 0) {
        KEEL_LOG_DEBUG("cannot write the replica report: %s", err.msg);
        pthread_mutex_lock(&s->lock);
        s->report_dirty = 1;
        pthread_mutex_unlock(&s->lock);
    }
    pthread_mutex_unlock(&s->report_lock);
    keel_buf_release(&key);
    keel_buf_release(&val);
}

static void *storage_main(void *arg)
{
    struct srv *s = arg;
    uint64_t next_snapshot = keel_clock_mono_ms() + s->config->server_snapshot_interval_ms;

    for (;;) {
        struct pending_ack *acks;
        int stopping, some;

        pthread_mutex_lock(&s->lock);
        if (s->acks == NULL && !s->stopping)
            keel_cond_timedwait_ms(&s->wake, &s->lock, 200);
        stopping = s->stopping;
        some = s->acks != NULL;
        pthread_mutex_unlock(&s->lock);
        /* Group commit: let more requests join this transaction, briefly. */
        if (!stopping && some) {
            struct timespec d = {0, (long)s->config->server_group_commit_ms * 1000000L};
            nanosleep(&d, NULL);
        }
        pthread_mutex_lock(&s->lock);
        acks = s->acks;
        s->acks = NULL;
        s->acks_tail = &s->acks;
        pthread_mutex_unlock(&s->lock);
        if (acks)
            commit_and_ack(s, acks);
        pthread_mutex_lock(&s->lock);
        start_copies(s);    /* streams that failed, once their delay has passed */
        release_waiting(s); /* backups that confirmed meanwhile */
        pthread_mutex_unlock(&s->lock);
        write_report(s);
        checkpoint_if_due(s);
        if (stopping || keel_clock_mono_ms() >= next_snapshot) {
            snapshot_all(s);
            next_snapshot = keel_clock_mono_ms() + s->config->server_snapshot_interval_ms;
        }
        if (stopping)
            return NULL;
    }
}

/* ---- sender thread: the streams to backups ----------------------------------- */

/* What a reply from a backup is about. */
struct stream_call {
    struct srv *s;
    char backup[KEEL_ID_MAX + 1];
    uint32_t range;
    uint64_t gen, lsn;
    int copy;
};

/* A stream's message failed: start it again with a copy, a little later. */
static void stream_failed(struct srv *s, const struct stream_call *c, const char *why)
{
    struct stream *st;

    pthread_mutex_lock(&s->lock);
    st = stream_find(s, c->range, c->backup);
    if (st != NULL && st->gen == c->gen) {
        if (st->failures++ % 20 == 0)
            KEEL_LOG_WARN("range %" PRIu32 ": streaming to backup %s failed (%s); sending a "
                          "fresh copy",
                          c->range, c->backup, why);
        stream_restart(st, st->failures > 3 ? 500 : 50);
    }
    pthread_mutex_unlock(&s->lock);
}

static void on_backup_reply(void *arg, int rc, struct keel_reply *reply,
                            const struct keel_error *err)
{
    struct stream_call *c = arg;
    struct srv *s = c->s;
    char why[KEEL_ERROR_MSG_MAX + 32];

    if (rc == 0 && reply->msg.hdr.type == KEEL_MSG_ACK) {
        struct stream *st;

        pthread_mutex_lock(&s->lock);
        st = stream_find(s, c->range, c->backup);
        if (st != NULL && st->gen == c->gen) {
            if (c->copy)
                st->state = STREAM_LIVE;
            if (c->lsn > st->acked)
                st->acked = c->lsn;
            st->failures = 0;
            pthread_cond_signal(&s->wake);
        }
        pthread_mutex_unlock(&s->lock);
    } else {
        if (rc == 0 && reply->msg.hdr.type == KEEL_MSG_ERROR)
            snprintf(why, sizeof(why), "%s: %.*s", keel_err_name(reply->msg.u.error.code),
                     (int)reply->msg.u.error.message.len, reply->msg.u.error.message.ptr);
        else
            snprintf(why, sizeof(why), "%s", rc == 0 ? "an unexpected reply" : err->msg);
        stream_failed(s, c, why);
    }
    if (reply)
        keel_reply_free(reply);
    free(c);
}

/* The address server `id` registered, from the view; 0 or -1. */
static int address_of(struct srv *s, const char *id, char *out, size_t outlen)
{
    struct keel_buf key = KEEL_BUF_INIT, value;
    struct keel_member_info info;
    int rc = -1;

    keel_buf_init(&value, 0);
    keel_key_member(&key, s->cluster, "server", id);
    if (s->view != NULL && keel_cview_get(s->view, keel_key_str(&key), &value, NULL) == 0 &&
        keel_member_decode(value.buf, value.len, &info, NULL) == 0) {
        snprintf(out, outlen, "%s", info.address);
        keel_member_info_release(&info);
        rc = 0;
    }
    keel_buf_release(&key);
    keel_buf_release(&value);
    return rc;
}

/* A connection to backup `id` at the address it registered, or NULL. */
static struct keel_client *peer_client(struct srv *s, const char *id)
{
    struct keel_client_options o;
    struct keel_error err;
    struct peer *p = NULL;
    char address[sizeof(p->address)];

    if (address_of(s, id, address, sizeof(address)) != 0)
        return NULL;
    for (size_t i = 0; i < s->npeers; i++)
        if (strcmp(s->peers[i].id, id) == 0)
            p = &s->peers[i];
    if (p != NULL && p->client != NULL && strcmp(p->address, address) == 0)
        return p->client;
    if (p == NULL) {
        KEEL_REALLOC_ARRAY(s->peers, s->npeers + 1);
        p = &s->peers[s->npeers++];
        memset(p, 0, sizeof(*p));
        snprintf(p->id, sizeof(p->id), "%s", id);
    }
    keel_client_free(p->client);
    p->client = NULL;
    snprintf(p->address, sizeof(p->address), "%s", address);
    keel_error_init(&err);
    keel_client_options_default(&o);
    o.address = p->address;
    o.expect_role = KEEL_ROLE_SERVER;
    o.max_frame_size = s->config->max_frame_size;
    if (keel_client_new(&o, s->tls, &p->client, &err) != 0) {
        KEEL_LOG_WARN("backup %s at %s: %s", id, p->address, err.msg);
        p->client = NULL;
    }
    return p->client;
}

static void *sender_main(void *arg)
{
    struct srv *s = arg;

    for (;;) {
        struct outgoing *o;

        pthread_mutex_lock(&s->lock);
        while (s->out == NULL && !s->stopping)
            pthread_cond_wait(&s->out_wake, &s->lock);
        o = s->out;
        s->out = NULL;
        s->out_tail = &s->out;
        pthread_mutex_unlock(&s->lock);
        if (o == NULL)
            break; /* stopping, and nothing left to send */
        while (o) {
            struct outgoing *next = o->next;
            struct stream_call *c = keel_calloc(1, sizeof(*c));
            struct keel_client *cl = peer_client(s, o->backup);
            struct keel_error err;

            c->s = s;
            snprintf(c->backup, sizeof(c->backup), "%s", o->backup);
            c->range = o->range;
            c->gen = o->gen;
            c->lsn = o->lsn;
            c->copy = o->msg.hdr.type == KEEL_MSG_RANGE_COPY;
            keel_error_init(&err);
            if (cl == NULL) {
                stream_failed(s, c, "no connection");
                free(c);
            } else if (keel_client_send(cl, &o->msg, s->config->request_timeout_ms, on_backup_reply,
                                        c, &err) != 0) {
                stream_failed(s, c, err.msg);
                free(c);
            }
            outgoing_free(o);
            o = next;
        }
    }
    for (size_t i = 0; i < s->npeers; i++)
        keel_client_free(s->peers[i].client);
    free(s->peers);
    return NULL;
}

/* ---- etcd: assignment, jobs, workers (watch thread) --------------------------- */

static void set_assignment(struct srv *s, const struct keel_etcd_kv *kv)
{
    struct keel_error err;
    keel_assign *a;

    keel_error_init(&err);
    if (keel_assign_decode(kv->value, kv->value_len, &a, &err) != 0) {
        KEEL_LOG_ERROR("ignoring a bad assignment in etcd: %s", err.msg);
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
    if (keel_shard_decode(kv->value, kv->value_len, o->s->spec.epochs, &sh, NULL) != 0 ||
        sh.owner[0] == '\0')
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
    memset(s->leases, 0, (size_t)s->nleases * sizeof(s->leases[0]));
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
            if (s->ckpt_next > 0 && !deleted)
                checkpoint_locked(s, s->ckpt_clock,
                                  st.state == KEEL_JOB_DONE ? "the job is done" : "the job ended");
            KEEL_LOG_INFO("job %s is no longer running: releasing its ranges", job);
            keel_ps_free(s->ps);
            s->ps = NULL;
            s->job[0] = '\0';
            memset(s->nstreams, 0, sizeof(s->nstreams));
            memset(s->report.terms, 0, sizeof(s->report.terms));
            memset(s->report.lost, 0, sizeof(s->report.lost));
            s->report_dirty = 1;
            s->nleases = 0;
            release_parked(s);
            release_waiting(s); /* each is told the job ended (no range is led) */
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
    if (claim_store(s, job, &err) != 0) {
        KEEL_LOG_ERROR("cannot take up job %s: %s", job, err.msg);
        keel_ps_free(s->ps);
        s->ps = NULL;
        return;
    }
    snprintf(s->job, sizeof(s->job), "%s", job);
    KEEL_LOG_INFO("serving job %s", job);
    memset(s->nstreams, 0, sizeof(s->nstreams));
    memset(s->report.terms, 0, sizeof(s->report.terms));
    memset(s->report.lost, 0, sizeof(s->report.lost));
    s->report_dirty = 1;
    s->ckpt_clock = 0;
    s->ckpt_next = 0;
    if (s->spec.checkpoint_interval > 0 && s->ckpt_keyed)
        s->ckpt_next = s->spec.checkpoint_interval;
    else if (s->spec.checkpoint_interval > 0)
        KEEL_LOG_WARN("job %s asks for a checkpoint every %" PRIu64 " clocks, but [server] "
                      "checkpoint_key is not set: this server takes none",
                      job, s->spec.checkpoint_interval);
    keel_ps_set_workers(s->ps, (const char *const *)s->workers, s->nworkers);
    set_owners(s);
    apply_assignment(s);
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
    pthread_create(&s.sender_tid, NULL, sender_main, &s);

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
    for (size_t i = 0; i < s.ndatasets; i++)
        keel_dataset_close(s.datasets[i].ds);
    free(s.datasets);
    workers_clear(&s);
    free(s.workers);
    free(s.leases);
free_tls:
    keel_tls_free(s.tls);
close_store:
    keel_store_close(s.store);
out:
    return rc;
}
