/*
 * net_client.c - a connection to one peer, with many requests in flight.
 *
 * The client owns an event-loop thread.  Callers hand requests over through
 * a queue and a user-triggered event; everything else (the connection,
 * the table of requests in flight, timers, reconnection) lives on the loop
 * thread.  c->lock guards the hand-over queue, the byte count in flight and
 * the `stopping` flag; c->room is signalled when bytes in flight go down.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>

#include "alloc.h"
#include "clock.h"
#include "log.h"
#include "net.h"
#include "net_internal.h"

#define NBUCKETS 1024 /* request table; a power of two */

struct request {
    uint64_t id;
    struct keel_buf frame; /* released once written to the connection */
    size_t bytes;          /* counted in c->inflight until answered */
    int sent;
    keel_reply_fn done;
    void *arg;
    uint64_t deadline_ms; /* monotonic */
    struct event *timer;
    struct keel_client *c;
    struct request *next_q;        /* hand-over queue, or waiting-for-connection list */
    struct request *bprev, *bnext; /* bucket chain */
};

enum conn_state { DISCONNECTED, CONNECTING, CONNECTED };

struct keel_client {
    struct keel_client_options o;
    char *address;
    struct keel_tls *tls;
    struct sockaddr_in sa;
    pthread_t tid;
    struct event_base *base;
    struct event *wake;      /* new requests or stop */
    struct event *reconnect; /* backoff timer */

    pthread_mutex_t lock;
    pthread_cond_t room;
    struct request *queue_head, *queue_tail; /* hand-over from callers */
    size_t inflight;
    int stopping;
    struct keel_cert_identity shown_peer; /* the peer of the last connection, for other threads */
    uint64_t next_id;

    /* loop thread only */
    enum conn_state state;
    struct bufferevent *bev;  /* TLS, over sock */
    struct bufferevent *sock; /* the socket; freed with bev */
    SSL *ssl;
    struct keel_cert_identity peer;
    int connected_flag; /* atomic copy of state == CONNECTED for other threads */
    unsigned attempt;
    struct request *buckets[NBUCKETS];
    struct request *waiting_head, *waiting_tail; /* not yet written */
    struct keel_buf frame;
    unsigned rng;
};

void keel_client_options_default(struct keel_client_options *o)
{
    memset(o, 0, sizeof(*o));
    o->max_frame_size = 64u << 20;
    o->max_inflight = 256u << 20;
    o->connect_timeout_ms = 5000;
    o->backoff_min_ms = 50;
    o->backoff_max_ms = 5000;
}

void keel_reply_free(struct keel_reply *r)
{
    if (r == NULL)
        return;
    keel_buf_release(&r->frame);
    free(r);
}

/* ---- request table (loop thread) ------------------------------------------ */

static struct request **bucket(struct keel_client *c, uint64_t id)
{
    return &c->buckets[id & (NBUCKETS - 1)];
}

static void table_insert(struct keel_client *c, struct request *r)
{
    struct request **b = bucket(c, r->id);

    r->bprev = NULL;
    r->bnext = *b;
    if (*b)
        (*b)->bprev = r;
    *b = r;
}

static struct request *table_find(struct keel_client *c, uint64_t id)
{
    for (struct request *r = *bucket(c, id); r; r = r->bnext)
        if (r->id == id)
            return r;
    return NULL;
}

static void table_remove(struct keel_client *c, struct request *r)
{
    if (r->bprev)
        r->bprev->bnext = r->bnext;
    else
        *bucket(c, r->id) = r->bnext;
    if (r->bnext)
        r->bnext->bprev = r->bprev;
}

static void waiting_remove(struct keel_client *c, struct request *r)
{
    struct request **p = &c->waiting_head;

    c->waiting_tail = NULL;
    while (*p) {
        if (*p == r)
            *p = r->next_q;
        else {
            c->waiting_tail = *p;
            p = &(*p)->next_q;
        }
    }
}

/* Finish `r`: out of every list, bytes returned, callback called, freed. */
static void request_finish(struct keel_client *c, struct request *r, int rc,
                           struct keel_reply *reply, const struct keel_error *err)
{
    table_remove(c, r);
    if (!r->sent)
        waiting_remove(c, r);
    if (r->timer)
        event_free(r->timer);
    pthread_mutex_lock(&c->lock);
    c->inflight -= r->bytes;
    pthread_cond_broadcast(&c->room);
    pthread_mutex_unlock(&c->lock);
    r->done(r->arg, rc, reply, err);
    keel_buf_release(&r->frame);
    free(r);
}

static void request_fail(struct keel_client *c, struct request *r, int code, const char *why)
{
    struct keel_error err;

    keel_err_set(&err, code, "request %" PRIu64 " to %s: %s", r->id, c->address, why);
    request_finish(c, r, code, NULL, &err);
}

static void request_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct request *r = arg;

    request_fail(r->c, r, KEEL_ETIMEDOUT, "no reply in time");
}

/* ---- connection (loop thread) -------------------------------------------- */

static void client_connect(struct keel_client *c);

/* evbuffer cleanup: the frame's memory, handed over in write_waiting(). */
static void free_frame(const void *data, size_t len, void *arg)
{
    free(arg);
}

/* Write the requests waiting for the connection; their frames move into the output as is. */
static void write_waiting(struct keel_client *c)
{
    struct evbuffer *out = bufferevent_get_output(c->bev);

    while (c->waiting_head) {
        struct request *r = c->waiting_head;
        unsigned char *p;
        size_t len;

        c->waiting_head = r->next_q;
        if (c->waiting_head == NULL)
            c->waiting_tail = NULL;
        p = keel_buf_detach(&r->frame, &len);
        evbuffer_add_reference(out, p, len, free_frame, p);
        r->sent = 1;
    }
}

/* Drop the connection; fail what was sent on it; schedule the next attempt. */
static void connection_lost(struct keel_client *c, const char *why)
{
    unsigned base_ms;
    uint64_t delay;
    struct timeval tv;

    if (c->bev) {
        SSL_set_shutdown(c->ssl, SSL_RECEIVED_SHUTDOWN | SSL_SENT_SHUTDOWN);
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->state == CONNECTED)
        KEEL_LOG_WARN("connection to %s lost: %s", c->address, why);
    else
        KEEL_LOG_DEBUG("cannot connect to %s: %s", c->address, why);
    c->state = DISCONNECTED;
    __atomic_store_n(&c->connected_flag, 0, __ATOMIC_RELEASE);
    /* A request already written may or may not have been applied: its caller decides. */
    for (unsigned i = 0; i < NBUCKETS; i++) {
        struct request *r = c->buckets[i], *next;

        for (; r; r = next) {
            next = r->bnext;
            if (r->sent)
                request_fail(c, r, KEEL_EUNAVAILABLE, why);
        }
    }
    if (c->stopping)
        return;
    /* Jittered exponential backoff: uniform in [d/2, d], d doubling to the maximum. */
    base_ms = (unsigned)(c->o.backoff_min_ms << (c->attempt < 16 ? c->attempt : 16));
    if (base_ms > c->o.backoff_max_ms || base_ms == 0)
        base_ms = (unsigned)c->o.backoff_max_ms;
    delay = base_ms / 2 + (uint64_t)rand_r(&c->rng) % (base_ms / 2 + 1);
    c->attempt++;
    tv = keel__ms_to_tv(delay);
    evtimer_add(c->reconnect, &tv);
}

static void client_read_cb(struct bufferevent *bev, void *arg)
{
    struct keel_client *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct keel_frame_header h;
    struct keel_error err;
    int rc;

    keel_error_init(&err);
    while (c->bev != NULL) {
        struct keel_reply *reply;
        struct request *r;

        rc = keel__net_take_frame(in, c->o.max_frame_size, &c->frame, &h, &err);
        if (rc == 0)
            return;
        if (rc < 0) {
            connection_lost(c, err.msg);
            return;
        }
        reply = keel_calloc(1, sizeof(*reply));
        reply->frame = c->frame; /* hand the frame's memory to the reply */
        keel_buf_init(&c->frame, 0);
        rc = keel_proto_decode(reply->frame.buf, reply->frame.len, c->o.max_frame_size, &reply->msg,
                               &err);
        r = table_find(c, h.request_id);
        if (rc != 0 || !(h.flags & KEEL_FLAG_REPLY) || r == NULL || !r->sent) {
            KEEL_LOG_WARN("%s from %s for request %" PRIu64 ": %s",
                          rc != 0 ? "bad reply" : "unexpected frame", c->address, h.request_id,
                          rc != 0 ? err.msg : "no such request in flight");
            if (rc != 0 && r != NULL && r->sent)
                request_finish(c, r, rc, NULL, &err);
            keel_reply_free(reply);
            continue;
        }
        request_finish(c, r, 0, reply, NULL);
    }
}

static void client_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct keel_client *c = arg;
    struct keel_error err;
    char why[256] = "";

    keel_error_init(&err);
    if (what & BEV_EVENT_CONNECTED) {
        keel__net_nodelay(bufferevent_getfd(c->sock));
        if (keel_tls_peer(c->ssl, &c->peer, &err) != 0) {
            connection_lost(c, err.msg);
            return;
        }
        if (c->o.expect_role && c->peer.role != c->o.expect_role) {
            snprintf(why, sizeof(why), "peer is %s/%s, expected a %s", keel_role_name(c->peer.role),
                     c->peer.id, keel_role_name(c->o.expect_role));
            connection_lost(c, why);
            return;
        }
        bufferevent_set_timeouts(bev, NULL, NULL);
        pthread_mutex_lock(&c->lock);
        c->shown_peer = c->peer;
        pthread_mutex_unlock(&c->lock);
        c->state = CONNECTED;
        c->attempt = 0;
        __atomic_store_n(&c->connected_flag, 1, __ATOMIC_RELEASE);
        KEEL_LOG_DEBUG("connected to %s/%s at %s", keel_role_name(c->peer.role), c->peer.id,
                       c->address);
        write_waiting(c);
        return;
    }
    if (what & BEV_EVENT_TIMEOUT)
        snprintf(why, sizeof(why), "%s timed out",
                 c->state == CONNECTING ? "connect/handshake" : "read");
    else if (what & BEV_EVENT_ERROR) {
        unsigned long e = bufferevent_get_openssl_error(bev);

        if (e != 0 || c->state == CONNECTING)
            keel_tls_failure(c->ssl, e, why, sizeof(why));
        if (e == 0 && why[0] == '\0')
            snprintf(why, sizeof(why), "%s",
                     EVUTIL_SOCKET_ERROR() ? evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR())
                                           : "closed by the peer");
    } else
        snprintf(why, sizeof(why), "closed by the peer");
    connection_lost(c, why);
}

static void client_connect(struct keel_client *c)
{
    struct timeval tv = keel__ms_to_tv(c->o.connect_timeout_ms);

    c->ssl = keel_tls_ssl_new(c->tls);
    c->bev = keel__tls_bufferevent(c->base, -1, c->ssl, 0, &c->sock);
    if (c->bev == NULL) {
        connection_lost(c, "cannot create a connection");
        return;
    }
    c->state = CONNECTING;
    bufferevent_setcb(c->bev, client_read_cb, NULL, client_event_cb, c);
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    if (bufferevent_socket_connect(c->sock, (struct sockaddr *)&c->sa, sizeof(c->sa)) != 0)
        connection_lost(c, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void reconnect_cb(evutil_socket_t fd, short what, void *arg)
{
    struct keel_client *c = arg;

    if (c->state == DISCONNECTED && !c->stopping)
        client_connect(c);
}

/* New requests from callers, or the stop signal. */
static void wake_cb(evutil_socket_t fd, short what, void *arg)
{
    struct keel_client *c = arg;
    struct request *r, *next;
    struct timeval tv;
    uint64_t now;
    int stopping;

    pthread_mutex_lock(&c->lock);
    r = c->queue_head;
    c->queue_head = c->queue_tail = NULL;
    stopping = c->stopping;
    pthread_mutex_unlock(&c->lock);

    for (; r; r = next) {
        next = r->next_q;
        r->next_q = NULL;
        table_insert(c, r);
        if (c->waiting_tail)
            c->waiting_tail->next_q = r;
        else
            c->waiting_head = r;
        c->waiting_tail = r;
        /* The timeout counts from the caller's call, not from now. */
        now = keel_clock_mono_ms();
        tv = keel__ms_to_tv(r->deadline_ms > now ? r->deadline_ms - now : 0);
        r->timer = evtimer_new(c->base, request_timeout_cb, r);
        evtimer_add(r->timer, &tv);
    }
    if (stopping) {
        for (unsigned i = 0; i < NBUCKETS; i++)
            while (c->buckets[i])
                request_fail(c, c->buckets[i], KEEL_ECANCELED, "client closed");
        if (c->bev) {
            SSL_set_shutdown(c->ssl, SSL_RECEIVED_SHUTDOWN | SSL_SENT_SHUTDOWN);
            bufferevent_free(c->bev);
            c->bev = NULL;
        }
        event_base_loopbreak(c->base);
        return;
    }
    if (c->state == CONNECTED)
        write_waiting(c);
}

static void *client_main(void *arg)
{
    struct keel_client *c = arg;

    client_connect(c);
    event_base_loop(c->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

int keel_client_new(const struct keel_client_options *o, struct keel_tls *tls,
                    struct keel_client **out, struct keel_error *err)
{
    struct keel_client *c;
    struct sockaddr_in sa;
    int rc;

    keel__net_init();
    if ((rc = keel__net_parse_addr(o->address, &sa, err)) != 0)
        return rc;
    c = keel_calloc(1, sizeof(*c));
    c->o = *o;
    c->address = keel_strdup(o->address);
    c->o.address = c->address;
    c->tls = tls;
    c->sa = sa;
    c->rng = (unsigned)time(NULL) ^ (unsigned)(uintptr_t)c;
    c->next_id = 1;
    keel_buf_init(&c->frame, 0);
    pthread_mutex_init(&c->lock, NULL);
    keel_cond_init_mono(&c->room);
    c->base = event_base_new();
    c->wake = event_new(c->base, -1, EV_PERSIST, wake_cb, c);
    event_add(c->wake, NULL);
    c->reconnect = evtimer_new(c->base, reconnect_cb, c);
    pthread_create(&c->tid, NULL, client_main, c);
    *out = c;
    return 0;
}

void keel_client_free(struct keel_client *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->lock);
    c->stopping = 1;
    pthread_cond_broadcast(&c->room);
    pthread_mutex_unlock(&c->lock);
    event_active(c->wake, EV_READ, 0);
    pthread_join(c->tid, NULL);
    event_free(c->reconnect);
    event_free(c->wake);
    event_base_free(c->base);
    pthread_cond_destroy(&c->room);
    pthread_mutex_destroy(&c->lock);
    keel_buf_release(&c->frame);
    free(c->address);
    free(c);
}

int keel_client_send(struct keel_client *c, struct keel_msg *msg, uint64_t timeout_ms,
                     keel_reply_fn done, void *arg, struct keel_error *err)
{
    struct request *r = keel_calloc(1, sizeof(*r));
    struct timespec deadline = keel_cond_deadline(timeout_ms);
    int rc;

    r->c = c;
    r->done = done;
    r->arg = arg;
    keel_buf_init(&r->frame, 0);
    msg->hdr.flags &= (uint16_t)~KEEL_FLAG_REPLY;

    pthread_mutex_lock(&c->lock);
    r->id = c->next_id++;
    msg->hdr.request_id = r->id;
    rc = keel_proto_encode(&r->frame, msg, err);
    if (rc != 0)
        goto fail_locked;
    r->bytes = r->frame.len;
    /* Back-pressure: wait for room, but let a lone oversize request through. */
    while (!c->stopping && c->inflight > 0 && c->inflight + r->bytes > c->o.max_inflight) {
        if (pthread_cond_timedwait(&c->room, &c->lock, &deadline) == ETIMEDOUT) {
            rc = keel_err_set(err, KEEL_ETIMEDOUT,
                              "request to %s: %zu bytes already in flight, no room in %" PRIu64
                              " ms",
                              c->address, c->inflight, timeout_ms);
            goto fail_locked;
        }
    }
    if (c->stopping) {
        rc = keel_err_set(err, KEEL_ECANCELED, "client to %s is closing", c->address);
        goto fail_locked;
    }
    c->inflight += r->bytes;
    r->deadline_ms = keel_clock_mono_ms() + timeout_ms;
    if (c->queue_tail)
        c->queue_tail->next_q = r;
    else
        c->queue_head = r;
    c->queue_tail = r;
    pthread_mutex_unlock(&c->lock);
    event_active(c->wake, EV_READ, 0);
    return 0;

fail_locked:
    pthread_mutex_unlock(&c->lock);
    keel_buf_release(&r->frame);
    free(r);
    return rc;
}

struct sync_call {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int finished;
    int rc;
    struct keel_reply *reply;
    struct keel_error err;
};

static void sync_done(void *arg, int rc, struct keel_reply *reply, const struct keel_error *err)
{
    struct sync_call *s = arg;

    pthread_mutex_lock(&s->lock);
    s->rc = rc;
    s->reply = reply;
    if (err)
        s->err = *err;
    s->finished = 1;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
}

int keel_client_call(struct keel_client *c, struct keel_msg *msg, uint64_t timeout_ms,
                     struct keel_reply **reply, struct keel_error *err)
{
    struct sync_call s;
    int rc;

    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.lock, NULL);
    pthread_cond_init(&s.cond, NULL);
    rc = keel_client_send(c, msg, timeout_ms, sync_done, &s, err);
    if (rc == 0) {
        pthread_mutex_lock(&s.lock);
        while (!s.finished)
            pthread_cond_wait(&s.cond, &s.lock);
        pthread_mutex_unlock(&s.lock);
        rc = s.rc;
        if (rc == 0)
            *reply = s.reply;
        else if (err)
            *err = s.err;
    }
    pthread_cond_destroy(&s.cond);
    pthread_mutex_destroy(&s.lock);
    return rc;
}

int keel_client_connected(struct keel_client *c)
{
    return __atomic_load_n(&c->connected_flag, __ATOMIC_ACQUIRE);
}

int keel_client_peer(struct keel_client *c, struct keel_cert_identity *peer)
{
    if (!keel_client_connected(c))
        return KEEL_EUNAVAILABLE;
    pthread_mutex_lock(&c->lock);
    *peer = c->shown_peer;
    pthread_mutex_unlock(&c->lock);
    return 0;
}
