/*
 * replica.c - keel-server's replication: a primary's streams of its ranges
 * to their backups (a RANGE_COPY, then every update as a REPLICATE, in LSN
 * order, sent by one sender thread), the acknowledgements that wait for the
 * in-sync backups, a backup's side of the stream (fenced by the range's
 * term), and the replica report in etcd.
 */
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "keys.h"
#include "log.h"
#include "server_int.h"

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
void repl_streams_set(struct srv *s, unsigned range, const char *const *backups, size_t n,
                      uint64_t term)
{
    struct stream kept[MAX_BACKUPS] = {0};
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
            kept[nkept].pledged = 0; /* a new term's backups start from its table */
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
void repl_start_copies(struct srv *s)
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
void repl_forward(struct srv *s, const struct keel_ps_applied *a, const char *worker)
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
        o->msg.u.replicate.cut = s->cut_mark[a->range];
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

void repl_pending_free(struct pending_ack *a)
{
    if (a->conn)
        keel_conn_unref(a->conn);
    keel_ps_result_release(&a->result);
    keel_snapshot_release(&a->copy);
    free(a->waits);
    free(a);
}

void repl_send_ack(struct pending_ack *a, uint64_t lsn, int duplicate)
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
        /* And every backup pledged: the leader may count it in sync before this table says so. */
        for (unsigned k = 0; k < s->nstreams[r]; k++) {
            const struct stream *st = &s->streams[r][k];

            if (st->pledged && (st->state != STREAM_LIVE || st->acked < a->waits[i].lsn)) {
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
void repl_release_waiting(struct srv *s)
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
            repl_send_ack(a, a->result.lsn, a->result.duplicate);
            note_first_ack(s, a);
        } else {
            char why[96];

            snprintf(why, sizeof(why), "range %u is no longer led here", range);
            srv_redirect(s, a->conn, &a->req, why);
        }
        repl_pending_free(a);
    }
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

int repl_handle_replicate(struct srv *s, struct keel_conn *conn,
                          const struct keel_cert_identity *peer, const struct keel_msg *msg,
                          struct keel_error *err)
{
    const struct keel_msg_replicate *m = &msg->u.replicate;
    const struct keel_rows *d = &m->push.data;
    struct pending_ack *a;
    int rc;

    pthread_mutex_lock(&s->lock);
    if ((rc = check_stream(s, peer, m->range, m->term, err)) != 0) {
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    srv_cut_before(s, m->range, m->cut, m->push.clock); /* the checkpoint's copy, if first */
    if ((rc = keel_ps_replicate(s->ps, m->range, m->lsn, &m->push, err)) < 0) {
        pthread_mutex_unlock(&s->lock);
        return rc;
    }
    srv_cut_check(s);
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
    if (s->spec.durability_disk) {
        srv_queue_pending(s, a, conn, &msg->hdr); /* confirmed once logged */
    } else {
        /* Confirmed once applied; the log is written behind. */
        srv_log_behind(s, a);
        keel_conn_ref(conn);
        a->conn = conn;
        a->req = msg->hdr;
        repl_send_ack(a, a->lsn, 0);
        repl_pending_free(a);
    }
    pthread_mutex_unlock(&s->lock);
    return 0;
}

int repl_handle_range_copy(struct srv *s, struct keel_conn *conn,
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
    srv_cut_installed(s, m->range);
    a = keel_calloc(1, sizeof(*a));
    a->kind = ACK_COPY;
    a->lsn = disk.lsn;
    a->term = m->term;
    a->copy = disk;
    s->installs[m->range]++;
    KEEL_LOG_DEBUG("range %u: copy at LSN %" PRIu64 ", term %" PRIu64 " from %s", m->range, a->lsn,
                   m->term, peer->id);
    srv_queue_pending(s, a, conn, &msg->hdr);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

/*
 * Write what this server holds to replicas/<id> under its lease: when it
 * changed, and every 2 s for the LSNs (the backups' lag in keelctl status).
 */
void repl_write_report(struct srv *s)
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
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        s->report.lsns[r] = s->ps != NULL && s->report.terms[r] ? keel_ps_lsn(s->ps, r) : 0;
        s->report.stored[r] =
            s->ps != NULL && !s->report.terms[r] && !keel_ps_holds(s->ps, r) ? s->stored[r] : 0;
        s->report.npledged[r] = 0;
        for (unsigned k = 0; k < s->nstreams[r] && k < KEEL_REPLICAS_MAX_PLEDGED; k++)
            if (s->streams[r][k].pledged && s->streams[r][k].term == s->report.terms[r])
                snprintf(s->report.pledged[r][s->report.npledged[r]++], KEEL_ID_MAX + 1, "%s",
                         s->streams[r][k].backup);
    }
    s->report.nfloor = 0;
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES && s->ps != NULL; r++) {
        if (!s->report.restoring[r] || s->report.terms[r] == 0)
            continue;
        if (s->report.nfloor == 0) {
            s->report.nfloor = s->spec.shards < KEEL_REPLICAS_MAX_SHARDS ? s->spec.shards
                                                                         : KEEL_REPLICAS_MAX_SHARDS;
            for (uint32_t n = 0; n < s->report.nfloor; n++)
                s->report.floor[n] = UINT64_MAX;
        }
        keel_ps_floor(s->ps, r, s->report.floor, s->report.nfloor);
    }
    for (uint32_t n = 0; n < s->report.nfloor; n++)
        if (s->report.floor[n] == UINT64_MAX)
            s->report.floor[n] = 0; /* no table of a restored range has rows: cannot happen */
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

/* Note backup `id` for the next report of suspects (srv->lock taken). */
static void suspect(struct srv *s, const char *id)
{
    unsigned i;

    pthread_mutex_lock(&s->lock);
    for (i = 0; i < s->nsuspects && strcmp(s->suspects[i].id, id) != 0; i++)
        ;
    if (i == s->nsuspects && i < sizeof(s->suspects) / sizeof(s->suspects[0])) {
        snprintf(s->suspects[i].id, sizeof(s->suspects[i].id), "%s", id);
        s->suspects[i].reported_ms = 0;
        s->nsuspects++;
    }
    pthread_mutex_unlock(&s->lock);
}

void repl_report_suspects(struct srv *s)
{
    char ids[sizeof(s->suspects) / sizeof(s->suspects[0])][KEEL_ID_MAX + 1];
    keel_member *m;
    unsigned n = 0;
    uint64_t now = keel_clock_mono_ms();

    /* Each at most once a second; a suspect that answered again is dropped. */
    pthread_mutex_lock(&s->lock);
    for (unsigned i = 0; i < s->nsuspects;) {
        struct suspect *p = &s->suspects[i];

        if (p->reported_ms != 0 && now - p->reported_ms >= 1000) {
            *p = s->suspects[--s->nsuspects];
            continue;
        }
        if (p->reported_ms == 0) {
            p->reported_ms = now;
            snprintf(ids[n++], KEEL_ID_MAX + 1, "%s", p->id);
        }
        i++;
    }
    pthread_mutex_unlock(&s->lock);
    pthread_mutex_lock(&s->report_lock); /* s->member stays */
    pthread_mutex_lock(&s->lock);
    m = s->member;
    pthread_mutex_unlock(&s->lock);
    for (unsigned i = 0; i < n && m != NULL; i++) {
        struct keel_error err;

        keel_error_init(&err);
        if (keel_member_suspect(m, s->etcd, s->cluster, ids[i], s->config->node_id, &err) != 0)
            KEEL_LOG_DEBUG("cannot report backup %s as suspect: %s", ids[i], err.msg);
        else
            KEEL_LOG_INFO("backup %s did not answer: reported it to the leader", ids[i]);
    }
    pthread_mutex_unlock(&s->report_lock);
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
            if (c->copy) {
                st->state = STREAM_LIVE;
                if (!st->pledged) {
                    /* From now on every acknowledgement waits for it; then say so. */
                    st->pledged = 1;
                    s->report_dirty = 1;
                }
            }
            if (c->lsn > st->acked)
                st->acked = c->lsn;
            st->failures = 0;
            /* Answer here what this confirmation completes: the storage thread
             * may be in a commit (or a snapshot) for a while. */
            repl_release_waiting(s);
            if (c->copy)
                pthread_cond_signal(&s->wake); /* the report says the new backup pledged */
        }
        pthread_mutex_unlock(&s->lock);
    } else {
        if (rc == 0 && reply->msg.hdr.type == KEEL_MSG_ERROR)
            snprintf(why, sizeof(why), "%s: %.*s", keel_err_name(reply->msg.u.error.code),
                     (int)reply->msg.u.error.message.len, reply->msg.u.error.message.ptr);
        else
            snprintf(why, sizeof(why), "%s", rc == 0 ? "an unexpected reply" : err->msg);
        stream_failed(s, c, why);
        if (rc != 0)
            suspect(s, c->backup); /* no answer at all: is it still there? */
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

void *repl_sender_main(void *arg)
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
