/*
 * net.c - the listener: acceptor thread, I/O threads, connections.
 *
 * Threads: the acceptor runs an evconnlistener on its own event base and
 * hands each accepted socket to an I/O thread (round robin) through that
 * thread's queue and a user-triggered event.  Everything about a connection
 * happens on its I/O thread.  keel_conn_reply() from another thread puts the
 * frame on the connection's queue (conn->lock) and wakes the I/O thread,
 * which writes it: bufferevents are never touched by two threads.
 */
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>

#include "alloc.h"
#include "authz.h"
#include "clock.h"
#include "log.h"
#include "net.h"
#include "net_internal.h"

/* ---- shared with the client --------------------------------------------- */

static pthread_once_t net_once = PTHREAD_ONCE_INIT;

static void net_init_once(void)
{
    if (evthread_use_pthreads() != 0) {
        fprintf(stderr, "keel: cannot enable libevent threading\n");
        abort();
    }
    /* A peer that goes away mid-write must give EPIPE, not kill the process. */
    signal(SIGPIPE, SIG_IGN);
}

void keel__net_init(void)
{
    pthread_once(&net_once, net_init_once);
}

int keel__net_parse_addr(const char *text, struct sockaddr_in *sa, struct keel_error *err)
{
    const char *colon = strrchr(text, ':');
    char host[64];
    char *end;
    unsigned long port;
    size_t n;

    if (colon == NULL || colon == text || (n = (size_t)(colon - text)) >= sizeof(host))
        return keel_err_set(err, KEEL_EINVAL, "address '%s' is not host:port", text);
    memcpy(host, text, n);
    host[n] = '\0';
    errno = 0;
    port = strtoul(colon + 1, &end, 10);
    if (colon[1] == '\0' || *end != '\0' || errno != 0 || port > 65535)
        return keel_err_set(err, KEEL_EINVAL, "address '%s': bad port", text);
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_port = htons((uint16_t)port);
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    if (inet_pton(AF_INET, host, &sa->sin_addr) != 1)
        return keel_err_set(err, KEEL_EINVAL, "address '%s': '%s' is not an IPv4 address", text,
                            host);
    return 0;
}

int keel__net_take_frame(struct evbuffer *in, size_t max_frame, struct keel_buf *frame,
                         struct keel_frame_header *h, struct keel_error *err)
{
    unsigned char head[KEEL_PROTO_HEADER_SIZE];
    size_t len = evbuffer_get_length(in), total;
    int rc;

    memset(h, 0, sizeof(*h));
    if (len < KEEL_PROTO_HEADER_SIZE)
        return 0;
    evbuffer_copyout(in, head, sizeof(head));
    rc = keel_proto_header_decode(head, sizeof(head), max_frame, h, err);
    if (rc != 0)
        return rc;
    total = KEEL_PROTO_HEADER_SIZE + (size_t)h->body_len;
    if (len < total)
        return 0;
    keel_buf_reset(frame);
    keel_buf_grow(frame, total);
    evbuffer_remove(in, frame->buf, total);
    keel_buf_setlen(frame, total);
    return 1;
}

#define SOCKET_IO_MAX (256u << 10) /* bytes per read(2) or write(2) under TLS */

/*
 * libevent 2.1 makes the BIO method of its OpenSSL filters lazily, without a
 * lock: two threads making their first filter at once each make one and
 * one is leaked (seen by LeakSanitizer with two clients connecting at
 * once).  Filters are made only when a connection starts, so they are made
 * one at a time.
 */
static pthread_mutex_t filter_lock = PTHREAD_MUTEX_INITIALIZER;

struct bufferevent *keel__tls_bufferevent(struct event_base *base, int fd, SSL *ssl, int accepting,
                                          struct bufferevent **under)
{
    int opts = BEV_OPT_CLOSE_ON_FREE;
    struct bufferevent *sock, *tls;

    sock = bufferevent_socket_new(base, fd, opts);
    if (sock == NULL) {
        SSL_free(ssl);
        return NULL;
    }
    bufferevent_set_max_single_read(sock, SOCKET_IO_MAX);
    bufferevent_set_max_single_write(sock, SOCKET_IO_MAX);
    pthread_mutex_lock(&filter_lock);
    tls = bufferevent_openssl_filter_new(
        base, sock, ssl, accepting ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING, opts);
    pthread_mutex_unlock(&filter_lock);
    if (tls == NULL) {
        SSL_free(ssl);
        bufferevent_free(sock);
        return NULL;
    }
    *under = sock;
    return tls;
}

void keel__net_nodelay(int fd)
{
    int one = 1;

    /* Requests and replies are whole frames: send them now, not after an ACK. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

struct timeval keel__ms_to_tv(uint64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* ---- listener ------------------------------------------------------------ */

struct io_thread {
    struct keel_listener *l;
    pthread_t tid;
    struct event_base *base;
    struct event *wake;   /* user-triggered: new sockets in the queue */
    pthread_mutex_t lock; /* guards the queue */
    int *queue;
    size_t nqueue, aqueue;
    struct keel_conn *conns; /* open connections of this thread (its own list) */
};

struct keel_listener {
    struct keel_listener_options o;
    char *listen;
    struct keel_tls *tls;
    struct event_base *accept_base;
    struct evconnlistener *evl;
    pthread_t accept_tid;
    struct io_thread *threads;
    unsigned nthreads;
    unsigned next; /* round robin; acceptor thread only */
    unsigned port;
    unsigned nconns;           /* atomic */
    int stopping;              /* atomic; set by keel_listener_stop() */
    struct event *accept_stop; /* user-triggered on accept_base: break its loop */
    /* Accepting paused after EMFILE and the like (acceptor thread only). */
    struct event *accept_resume; /* timer: accept again */
    uint64_t pause_logged_ms;    /* monotonic ms of the last pause logged */
    unsigned pauses_unlogged;    /* pauses since then */
};

#define KEEL_ACCEPT_PAUSE_MS 100 /* accepting stops this long after EMFILE and the like */
#define KEEL_FD_RESERVE      64  /* descriptors kept for all but connections */

/* A reply made on another thread, waiting for the I/O thread to write it. */
struct outframe {
    struct outframe *next;
    unsigned char *data;
    size_t len;
};

struct keel_conn {
    unsigned refs; /* atomic */
    struct io_thread *t;
    pthread_mutex_t lock; /* guards open, outq and other threads' use of flush_ev */
    int open;             /* replies are still accepted */
    struct outframe *outq, **outq_tail;
    struct event *flush_ev;   /* user-triggered: outq has frames */
    struct bufferevent *bev;  /* TLS, over sock */
    struct bufferevent *sock; /* the socket; freed with bev */
    SSL *ssl;
    struct event *hs_timer;
    struct event *close_ev; /* closes after a final reply is flushed (or a deadline) */
    struct keel_cert_identity peer;
    int handshaken;
    int closing;    /* answered a fatal error: close once the output is flushed */
    int paused;     /* reading stopped for back-pressure */
    int idle_armed; /* the mid-frame read timeout is set */
    char addr[48];
    struct keel_buf frame;
    struct keel_conn *prev, *next;
};

void keel_listener_options_of(const struct keel_config *c, struct keel_listener_options *o)
{
    memset(o, 0, sizeof(*o));
    o->listen = c->listen;
    o->io_threads = c->io_threads;
    o->max_connections = c->max_connections;
    o->max_frame_size = (size_t)c->max_frame_size;
    o->handshake_timeout_ms = c->handshake_timeout_ms;
    o->idle_timeout_ms = c->idle_timeout_ms;
    o->max_output = 2 * (size_t)c->max_frame_size;
}

void keel_conn_ref(struct keel_conn *conn)
{
    __atomic_add_fetch(&conn->refs, 1, __ATOMIC_RELAXED);
}

void keel_conn_unref(struct keel_conn *conn)
{
    if (__atomic_sub_fetch(&conn->refs, 1, __ATOMIC_ACQ_REL) != 0)
        return;
    pthread_mutex_destroy(&conn->lock);
    keel_buf_release(&conn->frame);
    free(conn);
}

static const char *conn_name(const struct keel_conn *conn, char *buf, size_t n)
{
    if (conn->handshaken)
        snprintf(buf, n, "%s/%s@%s", keel_role_name(conn->peer.role), conn->peer.id, conn->addr);
    else
        snprintf(buf, n, "%s", conn->addr);
    return buf;
}

static void flushed_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg);

/* Close now: on the connection's I/O thread only. */
static void conn_close(struct keel_conn *conn)
{
    struct io_thread *t = conn->t;
    struct bufferevent *bev = conn->bev;
    struct outframe *q, *next;

    if (bev == NULL)
        return;
    conn->bev = NULL;
    pthread_mutex_lock(&conn->lock);
    conn->open = 0;
    q = conn->outq;
    conn->outq = NULL;
    conn->outq_tail = &conn->outq;
    pthread_mutex_unlock(&conn->lock);
    for (; q; q = next) {
        next = q->next;
        free(q->data);
        free(q);
    }
    event_free(conn->flush_ev);
    conn->flush_ev = NULL;
    if (conn->hs_timer) {
        event_free(conn->hs_timer);
        conn->hs_timer = NULL;
    }
    if (conn->close_ev) {
        evbuffer_remove_cb(bufferevent_get_output(conn->sock), flushed_cb, conn);
        event_free(conn->close_ev);
        conn->close_ev = NULL;
    }
    /* Close the socket now, without waiting for the TLS close_notify exchange. */
    SSL_set_shutdown(conn->ssl, SSL_RECEIVED_SHUTDOWN | SSL_SENT_SHUTDOWN);
    bufferevent_free(bev);
    if (conn->prev)
        conn->prev->next = conn->next;
    else
        t->conns = conn->next;
    if (conn->next)
        conn->next->prev = conn->prev;
    __atomic_sub_fetch(&t->l->nconns, 1, __ATOMIC_RELAXED);
    keel_conn_unref(conn);
}

static void free_frame(const void *data, size_t len, void *arg)
{
    free(arg);
}

/* On the I/O thread: move a frame's memory into the output. */
static void conn_put(struct keel_conn *conn, unsigned char *data, size_t len)
{
    if (conn->bev == NULL) {
        free(data);
        return;
    }
    evbuffer_add_reference(bufferevent_get_output(conn->bev), data, len, free_frame, data);
}

/* On the I/O thread: write what other threads queued, in order. */
static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct keel_conn *conn = arg;
    struct outframe *q, *next;

    pthread_mutex_lock(&conn->lock);
    q = conn->outq;
    conn->outq = NULL;
    conn->outq_tail = &conn->outq;
    pthread_mutex_unlock(&conn->lock);
    for (; q; q = next) {
        next = q->next;
        conn_put(conn, q->data, q->len);
        free(q);
    }
}

/* Write a whole frame encoded in `b`, taking its memory; any thread. */
static int conn_write(struct keel_conn *conn, struct keel_buf *b)
{
    struct outframe *f;
    size_t len;
    unsigned char *data = keel_buf_detach(b, &len);

    if (pthread_equal(pthread_self(), conn->t->tid)) {
        flush_cb(-1, 0, conn); /* keep the order of replies queued earlier */
        if (conn->bev == NULL) {
            free(data);
            return KEEL_EUNAVAILABLE;
        }
        conn_put(conn, data, len);
        return 0;
    }
    f = keel_malloc(sizeof(*f));
    f->next = NULL;
    f->data = data;
    f->len = len;
    pthread_mutex_lock(&conn->lock);
    if (!conn->open) {
        pthread_mutex_unlock(&conn->lock);
        free(data);
        free(f);
        return KEEL_EUNAVAILABLE;
    }
    *conn->outq_tail = f;
    conn->outq_tail = &f->next;
    event_active(conn->flush_ev, EV_READ, 0);
    pthread_mutex_unlock(&conn->lock);
    return 0;
}

int keel_conn_reply(struct keel_conn *conn, const struct keel_frame_header *req,
                    struct keel_msg *msg, struct keel_error *err)
{
    struct keel_buf b = KEEL_BUF_INIT;
    int rc;

    msg->hdr.request_id = req->request_id;
    msg->hdr.flags |= KEEL_FLAG_REPLY;
    rc = keel_proto_encode(&b, msg, err);
    if (rc == 0 && (rc = conn_write(conn, &b)) != 0)
        keel_err_set(err, rc, "connection closed before the reply");
    keel_buf_release(&b);
    return rc;
}

int keel_conn_reply_error(struct keel_conn *conn, const struct keel_frame_header *req, int code,
                          const char *message)
{
    struct keel_buf b = KEEL_BUF_INIT;
    int rc;

    keel_proto_encode_reject(&b, req, code, message);
    rc = conn_write(conn, &b);
    keel_buf_release(&b);
    return rc;
}

#define FLUSH_DEADLINE_MS 2000 /* a peer that does not read its last reply is cut off */

static void close_cb(evutil_socket_t fd, short what, void *arg)
{
    conn_close(arg);
}

/* The socket's output changed; once empty, the final reply has left: close. */
static void flushed_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
    struct keel_conn *conn = arg;

    if (evbuffer_get_length(buf) == 0 && conn->close_ev)
        event_active(conn->close_ev, EV_TIMEOUT, 0);
}

/* Answer with ERROR, stop reading, and close once the answer is on the wire. */
static void conn_fail(struct keel_conn *conn, const struct keel_frame_header *h, int code,
                      const char *why)
{
    struct timeval tv = keel__ms_to_tv(FLUSH_DEADLINE_MS);

    keel_conn_reply_error(conn, h, code, why);
    conn->closing = 1;
    bufferevent_disable(conn->bev, EV_READ);
    conn->close_ev = evtimer_new(conn->t->base, close_cb, conn);
    evbuffer_add_cb(bufferevent_get_output(conn->sock), flushed_cb, conn);
    evtimer_add(conn->close_ev, &tv);
    if (evbuffer_get_length(bufferevent_get_output(conn->bev)) == 0 &&
        evbuffer_get_length(bufferevent_get_output(conn->sock)) == 0)
        event_active(conn->close_ev, EV_TIMEOUT, 0);
}

/*
 * The handshake is done: read the peer's identity, or close.  Returns 0 when
 * the connection may be used.  Called from the CONNECTED event and from the
 * first read, whichever comes first (with TLS as a filter, data read in the
 * same pass as the handshake's end reaches the read callback first).
 */
static int conn_established(struct keel_conn *conn)
{
    struct keel_error err;
    char who[160];

    if (conn->handshaken)
        return 0;
    if (conn->hs_timer) {
        event_free(conn->hs_timer);
        conn->hs_timer = NULL;
    }
    keel_error_init(&err);
    if (keel_tls_peer(conn->ssl, &conn->peer, &err) != 0) {
        KEEL_LOG_WARN("refusing connection from %s: %s", conn->addr, err.msg);
        conn_close(conn);
        return -1;
    }
    conn->handshaken = 1;
    KEEL_LOG_DEBUG("connection from %s", conn_name(conn, who, sizeof(who)));
    return 0;
}

/* One whole, header-valid frame in conn->frame: decode, authorize, hand over. */
static void conn_dispatch(struct keel_conn *conn)
{
    struct keel_listener *l = conn->t->l;
    struct keel_error err;
    struct keel_msg msg;
    char who[160];
    int rc;

    keel_error_init(&err);
    rc = keel_proto_decode(conn->frame.buf, conn->frame.len, l->o.max_frame_size, &msg, &err);
    if (rc != 0) {
        KEEL_LOG_WARN("bad %s frame from %s: %s", keel_msg_type_name(msg.hdr.type),
                      conn_name(conn, who, sizeof(who)), err.msg);
        if (!(msg.hdr.flags & KEEL_FLAG_REPLY))
            keel_conn_reply_error(conn, &msg.hdr, rc, err.msg);
        return;
    }
    if (msg.hdr.flags & KEEL_FLAG_REPLY) {
        KEEL_LOG_WARN("unexpected reply %s from %s: dropped", keel_msg_type_name(msg.hdr.type),
                      conn_name(conn, who, sizeof(who)));
        return;
    }
    if (!keel_authz_allowed(conn->peer.role, msg.hdr.type)) {
        char why[128];

        snprintf(why, sizeof(why), "role %s may not send %s", keel_role_name(conn->peer.role),
                 keel_msg_type_name(msg.hdr.type));
        KEEL_LOG_WARN("refused %s from %s: %s", keel_msg_type_name(msg.hdr.type),
                      conn_name(conn, who, sizeof(who)), why);
        keel_conn_reply_error(conn, &msg.hdr, KEEL_EPERM, why);
        return;
    }
    rc = l->o.handler(l->o.handler_ctx, conn, &conn->peer, &msg, &err);
    if (rc != 0)
        keel_conn_reply_error(conn, &msg.hdr, rc, err.msg);
}

static void conn_read_cb(struct bufferevent *bev, void *arg)
{
    struct keel_conn *conn = arg;
    struct keel_listener *l = conn->t->l;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct keel_frame_header h;
    struct keel_error err;
    char who[160];
    int rc;

    keel_error_init(&err);
    keel_conn_ref(conn); /* a close below must not free conn under us */
    if (conn_established(conn) != 0)
        goto out;
    while (!conn->closing && conn->bev != NULL) {
        rc = keel__net_take_frame(in, l->o.max_frame_size, &conn->frame, &h, &err);
        if (rc == 1) {
            conn_dispatch(conn);
            continue;
        }
        if (rc == 0)
            break;
        conn_name(conn, who, sizeof(who));
        switch (rc) {
        case KEEL_EMAGIC:
            KEEL_LOG_WARN("%s is not speaking Keel (%s): closing", who, err.msg);
            conn_close(conn);
            goto out;
        case KEEL_EVERSION:
        case KEEL_EFRAMESIZE:
            KEEL_LOG_WARN("%s: %s: closing", who, err.msg);
            conn_fail(conn, &h, rc, err.msg);
            goto out;
        default:
            /* The frame's extent is known: skip it, answer, and carry on. */
            if (evbuffer_get_length(in) < KEEL_PROTO_HEADER_SIZE + (size_t)h.body_len)
                goto partial;
            evbuffer_drain(in, KEEL_PROTO_HEADER_SIZE + (size_t)h.body_len);
            KEEL_LOG_WARN("bad frame from %s: %s", who, err.msg);
            keel_conn_reply_error(conn, &h, rc, err.msg);
            continue;
        }
    }
partial:
    if (conn->bev == NULL || conn->closing)
        goto out;
    /*
     * Silence in the middle of a frame is bounded; between frames it is not.
     * The timer restarts with every read, so it is set once per frame.
     */
    if (evbuffer_get_length(in) > 0 && !conn->idle_armed) {
        struct timeval tv = keel__ms_to_tv(l->o.idle_timeout_ms);
        bufferevent_set_timeouts(bev, &tv, NULL);
        conn->idle_armed = 1;
    } else if (evbuffer_get_length(in) == 0 && conn->idle_armed) {
        bufferevent_set_timeouts(bev, NULL, NULL);
        conn->idle_armed = 0;
    }
    if (!conn->paused && evbuffer_get_length(bufferevent_get_output(bev)) > l->o.max_output) {
        conn->paused = 1;
        bufferevent_disable(bev, EV_READ);
        KEEL_LOG_DEBUG("%s reads slowly: pausing input", conn_name(conn, who, sizeof(who)));
    }
out:
    keel_conn_unref(conn);
}

static void conn_write_cb(struct bufferevent *bev, void *arg)
{
    struct keel_conn *conn = arg;

    if (conn->closing)
        return; /* close_ev takes it from here */
    if (conn->paused) {
        conn->paused = 0;
        bufferevent_enable(bev, EV_READ);
        conn_read_cb(bev, conn); /* frames may be waiting already */
    }
}

static void conn_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct keel_conn *conn = arg;
    struct keel_listener *l = conn->t->l;
    struct keel_error err;
    char who[160], why[256];
    const char *midframe;

    keel_error_init(&err);
    if (what & BEV_EVENT_CONNECTED) {
        conn_established(conn);
        return;
    }
    conn_name(conn, who, sizeof(who));
    midframe = evbuffer_get_length(bufferevent_get_input(bev)) > 0 ? " mid-frame" : "";
    if (what & BEV_EVENT_TIMEOUT) {
        KEEL_LOG_WARN("%s silent mid-frame for %" PRIu64 " ms: closing", who, l->o.idle_timeout_ms);
    } else if (!conn->handshaken) {
        KEEL_LOG_WARN(
            "TLS handshake with %s failed: %s", who,
            keel_tls_failure(conn->ssl, bufferevent_get_openssl_error(bev), why, sizeof(why)));
    } else if (what & BEV_EVENT_ERROR) {
        unsigned long e = bufferevent_get_openssl_error(bev);
        KEEL_LOG_INFO("connection from %s lost%s: %s", who, midframe,
                      e ? keel_tls_failure(NULL, e, why, sizeof(why))
                        : evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
    } else if (midframe[0]) {
        KEEL_LOG_INFO("connection from %s closed mid-frame", who);
    } else {
        KEEL_LOG_DEBUG("connection from %s closed", who);
    }
    conn_close(conn);
}

static void handshake_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    struct keel_conn *conn = arg;

    KEEL_LOG_WARN("TLS handshake with %s not done after %" PRIu64 " ms: closing", conn->addr,
                  conn->t->l->o.handshake_timeout_ms);
    conn_close(conn);
}

/* On the I/O thread: wrap an accepted socket in TLS. */
static void conn_open(struct io_thread *t, int fd)
{
    struct keel_listener *l = t->l;
    struct keel_conn *conn = keel_calloc(1, sizeof(*conn));
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    struct timeval tv = keel__ms_to_tv(l->o.handshake_timeout_ms);
    char ip[INET_ADDRSTRLEN] = "?";

    conn->refs = 1;
    conn->t = t;
    pthread_mutex_init(&conn->lock, NULL);
    conn->open = 1;
    conn->outq_tail = &conn->outq;
    keel_buf_init(&conn->frame, 0);
    if (getpeername(fd, (struct sockaddr *)&sa, &salen) == 0)
        inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof(ip));
    snprintf(conn->addr, sizeof(conn->addr), "%s:%u", ip, (unsigned)ntohs(sa.sin_port));
    evutil_make_socket_nonblocking(fd);
    keel__net_nodelay(fd);
    conn->ssl = keel_tls_ssl_new(l->tls);
    conn->bev = keel__tls_bufferevent(t->base, fd, conn->ssl, 1, &conn->sock);
    if (conn->bev == NULL) {
        KEEL_LOG_ERROR("cannot set up connection from %s", conn->addr);
        close(fd);
        __atomic_sub_fetch(&l->nconns, 1, __ATOMIC_RELAXED);
        keel_conn_unref(conn);
        return;
    }
    bufferevent_setcb(conn->bev, conn_read_cb, conn_write_cb, conn_event_cb, conn);
    conn->flush_ev = event_new(t->base, -1, 0, flush_cb, conn);
    bufferevent_setwatermark(conn->bev, EV_WRITE, l->o.max_output / 2, 0);
    bufferevent_enable(conn->bev, EV_READ | EV_WRITE);
    conn->hs_timer = evtimer_new(t->base, handshake_timeout_cb, conn);
    evtimer_add(conn->hs_timer, &tv);
    conn->next = t->conns;
    if (t->conns)
        t->conns->prev = conn;
    t->conns = conn;
}

static void io_wake_cb(evutil_socket_t unused, short what, void *arg)
{
    struct io_thread *t = arg;

    /*
     * Stopping is asked through this event, not event_base_loopbreak() from
     * outside: a loop that has not started yet would forget that break.
     */
    if (__atomic_load_n(&t->l->stopping, __ATOMIC_ACQUIRE)) {
        event_base_loopbreak(t->base);
        return;
    }
    for (;;) {
        int fd;

        pthread_mutex_lock(&t->lock);
        if (t->nqueue == 0) {
            pthread_mutex_unlock(&t->lock);
            return;
        }
        fd = t->queue[--t->nqueue];
        pthread_mutex_unlock(&t->lock);
        conn_open(t, fd);
    }
}

static void *io_main(void *arg)
{
    struct io_thread *t = arg;

    event_base_loop(t->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static void *accept_main(void *arg)
{
    struct keel_listener *l = arg;

    event_base_loop(l->accept_base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

static void accept_cb(struct evconnlistener *evl, evutil_socket_t fd, struct sockaddr *addr,
                      int socklen, void *arg)
{
    struct keel_listener *l = arg;
    struct io_thread *t;
    unsigned n = __atomic_add_fetch(&l->nconns, 1, __ATOMIC_RELAXED);

    if (n > l->o.max_connections) {
        char ip[INET_ADDRSTRLEN] = "?";

        __atomic_sub_fetch(&l->nconns, 1, __ATOMIC_RELAXED);
        if (addr->sa_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)addr)->sin_addr, ip, sizeof(ip));
        KEEL_LOG_WARN("connection limit of %u reached: closing a connection from %s",
                      l->o.max_connections, ip);
        evutil_closesocket(fd);
        return;
    }
    t = &l->threads[l->next++ % l->nthreads];
    pthread_mutex_lock(&t->lock);
    if (t->nqueue == t->aqueue) {
        t->aqueue = t->aqueue ? 2 * t->aqueue : 16;
        KEEL_REALLOC_ARRAY(t->queue, t->aqueue);
    }
    t->queue[t->nqueue++] = fd;
    pthread_mutex_unlock(&t->lock);
    event_active(t->wake, EV_READ, 0);
}

static void accept_stop_cb(evutil_socket_t fd, short what, void *arg)
{
    event_base_loopbreak(arg);
}

static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct keel_listener *l = arg;

    (void)fd;
    (void)what;
    evconnlistener_enable(l->evl);
}

/*
 * accept() failed.  Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS,
 * ENOMEM), the pending connection stays queued and every retry would fail
 * at once: stop accepting for KEEL_ACCEPT_PAUSE_MS instead of spinning, and
 * log at most one line every 10 s, with how many pauses it stands for.
 */
static void accept_error_cb(struct evconnlistener *evl, void *arg)
{
    struct keel_listener *l = arg;
    int e = EVUTIL_SOCKET_ERROR();
    int exhausted = e == EMFILE || e == ENFILE || e == ENOBUFS || e == ENOMEM;
    uint64_t now = keel_clock_mono_ms();
    char since[64] = "", pause[48] = "";

    if (exhausted) {
        struct timeval tv = keel__ms_to_tv(KEEL_ACCEPT_PAUSE_MS);

        evconnlistener_disable(evl);
        evtimer_add(l->accept_resume, &tv);
    }
    if (l->pause_logged_ms != 0 && now - l->pause_logged_ms < 10000) {
        l->pauses_unlogged++;
        return;
    }
    if (exhausted)
        snprintf(pause, sizeof(pause), ": not accepting for %d ms", KEEL_ACCEPT_PAUSE_MS);
    if (l->pauses_unlogged > 0)
        snprintf(since, sizeof(since), "; %u more since the last such line", l->pauses_unlogged);
    KEEL_LOG_WARN("accept failed: %s%s (%u connections open)%s", evutil_socket_error_to_string(e),
                  pause, __atomic_load_n(&l->nconns, __ATOMIC_RELAXED), since);
    l->pause_logged_ms = now;
    l->pauses_unlogged = 0;
}

/*
 * Every connection holds a descriptor: raise the soft RLIMIT_NOFILE to what
 * max_connections needs plus KEEL_FD_RESERVE for the rest of the process
 * (stores, etcd, clients), up to the hard limit; and if that is still too
 * few, lower max_connections to fit, with a warning, so that the connection
 * limit is met before the descriptors run out.
 */
static void fit_fd_limit(struct keel_listener_options *o)
{
    struct rlimit rl;
    rlim_t want = (rlim_t)o->max_connections + KEEL_FD_RESERVE, before;

    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    before = rl.rlim_cur;
    if (rl.rlim_cur < want && rl.rlim_cur != RLIM_INFINITY) {
        rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max > want ? want : rl.rlim_max;
        if (rl.rlim_cur > before && setrlimit(RLIMIT_NOFILE, &rl) == 0)
            KEEL_LOG_INFO("raised the open-file limit from %llu to %llu for %u connections",
                          (unsigned long long)before, (unsigned long long)rl.rlim_cur,
                          o->max_connections);
        else
            rl.rlim_cur = before;
    }
    if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
        unsigned fit = rl.rlim_cur > 2 * KEEL_FD_RESERVE ? (unsigned)(rl.rlim_cur - KEEL_FD_RESERVE)
                                                         : (unsigned)(rl.rlim_cur / 4);

        KEEL_LOG_WARN("max_connections %u does not fit the open-file limit of %llu (hard limit "
                      "%llu): accepting at most %u connections",
                      o->max_connections, (unsigned long long)rl.rlim_cur,
                      (unsigned long long)rl.rlim_max, fit ? fit : 1);
        o->max_connections = fit ? fit : 1;
    }
}

int keel_listener_start(const struct keel_listener_options *o, struct keel_tls *tls,
                        struct keel_listener **out, struct keel_error *err)
{
    struct keel_listener *l;
    struct sockaddr_in sa;
    socklen_t salen = sizeof(sa);
    int rc;

    keel__net_init();
    if ((rc = keel__net_parse_addr(o->listen, &sa, err)) != 0)
        return rc;
    if (o->io_threads == 0 || o->handler == NULL)
        return keel_err_set(err, KEEL_EINVAL, "listener needs I/O threads and a handler");
    l = keel_calloc(1, sizeof(*l));
    l->o = *o;
    fit_fd_limit(&l->o);
    l->listen = keel_strdup(o->listen);
    l->o.listen = l->listen;
    l->tls = tls;
    l->accept_base = event_base_new();
    l->evl = evconnlistener_new_bind(l->accept_base, accept_cb, l,
                                     LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE |
                                         LEV_OPT_CLOSE_ON_EXEC | LEV_OPT_THREADSAFE,
                                     512, (struct sockaddr *)&sa, sizeof(sa));
    if (l->evl == NULL) {
        int e = errno;

        event_base_free(l->accept_base);
        free(l->listen);
        free(l);
        return keel_err_set(err, -e, "cannot listen on '%s': %s", o->listen, strerror(e));
    }
    evconnlistener_set_error_cb(l->evl, accept_error_cb);
    l->accept_stop = event_new(l->accept_base, -1, 0, accept_stop_cb, l->accept_base);
    l->accept_resume = evtimer_new(l->accept_base, accept_resume_cb, l);
    getsockname(evconnlistener_get_fd(l->evl), (struct sockaddr *)&sa, &salen);
    l->port = ntohs(sa.sin_port);

    l->nthreads = o->io_threads;
    KEEL_ALLOC_ARRAY(l->threads, l->nthreads);
    for (unsigned i = 0; i < l->nthreads; i++) {
        struct io_thread *t = &l->threads[i];

        t->l = l;
        t->base = event_base_new();
        pthread_mutex_init(&t->lock, NULL);
        t->wake = event_new(t->base, -1, EV_PERSIST, io_wake_cb, t);
        event_add(t->wake, NULL);
        pthread_create(&t->tid, NULL, io_main, t);
    }
    pthread_create(&l->accept_tid, NULL, accept_main, l);
    KEEL_LOG_INFO("listening on %s:%u with %u I/O threads", inet_ntoa(sa.sin_addr), l->port,
                  l->nthreads);
    *out = l;
    return 0;
}

unsigned keel_listener_port(const struct keel_listener *l)
{
    return l->port;
}

unsigned keel_listener_connections(const struct keel_listener *l)
{
    return __atomic_load_n(&l->nconns, __ATOMIC_RELAXED);
}

void keel_listener_stop(struct keel_listener *l)
{
    if (l == NULL)
        return;
    __atomic_store_n(&l->stopping, 1, __ATOMIC_RELEASE);
    event_active(l->accept_stop, EV_READ, 0);
    pthread_join(l->accept_tid, NULL);
    event_free(l->accept_stop);
    event_free(l->accept_resume);
    evconnlistener_free(l->evl);
    event_base_free(l->accept_base);
    for (unsigned i = 0; i < l->nthreads; i++) {
        struct io_thread *t = &l->threads[i];

        event_active(t->wake, EV_READ, 0);
        pthread_join(t->tid, NULL);
        /* The thread has stopped: its connections are ours to close. */
        while (t->conns)
            conn_close(t->conns);
        for (size_t q = 0; q < t->nqueue; q++)
            close(t->queue[q]);
        free(t->queue);
        event_free(t->wake);
        event_base_free(t->base);
        pthread_mutex_destroy(&t->lock);
    }
    free(l->threads);
    free(l->listen);
    free(l);
}
