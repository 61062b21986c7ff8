/*
 * net.h - Keel's transport: framed messages over mutual TLS on libevent.
 *
 * Server side (struct keel_listener): one acceptor thread and `io_threads`
 * I/O threads, each with its own event base; a connection lives on one I/O
 * thread for its life (the memcached model).  Each connection:
 *  - must finish its TLS handshake within handshake_timeout, and present a
 *    certificate with a keel:// identity (tls.h), or it is closed;
 *  - is read as a stream of frames: a frame is decoded only once all of it
 *    has arrived, into memory aligned for the decoder;
 *  - is closed when it stays silent in the middle of a frame for
 *    idle_timeout, or sends a bad magic, an oversize frame or another
 *    protocol version (the last two answered with an ERROR first);
 *  - has every request checked against the authorization table (authz.h)
 *    before the handler sees it: a refused request is answered with ERROR
 *    (KEEL_EPERM), logged with the peer's identity, and never executed;
 *  - stops being read while its output buffer is above max_output bytes
 *    (a slow reader cannot make the server buffer without limit).
 * Connections over max_connections are closed at accept, with a log line;
 * the open-file limit is raised to fit max_connections, or max_connections
 * lowered to fit it; when accept() runs out of descriptors anyway, accepting
 * pauses for 100 ms (and is logged at most every 10 s) instead of spinning.
 *
 * Client side (struct keel_client): one connection to one address, with its
 * own event-loop thread.  Many requests may be in flight at once, matched to
 * their replies by request id; each has its own timeout; a lost connection
 * fails the requests in flight (KEEL_EUNAVAILABLE) and is re-made with
 * jittered exponential backoff; submitting blocks while the bytes in flight
 * would pass max_inflight.
 */
#ifndef KEEL_NET_H
#define KEEL_NET_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/config.h"
#include "keel/err.h"
#include "keel/proto.h"
#include "tls.h"

/* ---- server ------------------------------------------------------------- */

struct keel_listener;
struct keel_conn;

/*
 * Called on the connection's I/O thread for every authorized request.
 * `msg` points into memory valid only during the call.  The handler answers
 * now or later with keel_conn_reply() (from any thread; take a reference with
 * keel_conn_ref() to answer after returning).  Returning an error code
 * instead makes the transport answer ERROR with that code and `err`'s text.
 */
typedef int (*keel_handler_fn)(void *ctx, struct keel_conn *conn,
                               const struct keel_cert_identity *peer, const struct keel_msg *msg,
                               struct keel_error *err);

struct keel_listener_options {
    const char *listen; /* "host:port"; port 0 picks a free one */
    unsigned io_threads;
    unsigned max_connections;
    size_t max_frame_size;
    uint64_t handshake_timeout_ms;
    uint64_t idle_timeout_ms;
    size_t max_output; /* per connection; reading pauses above it */
    keel_handler_fn handler;
    void *handler_ctx;
};

/* Options from the [net] and [node] sections of `config`. */
void keel_listener_options_of(const struct keel_config *config, struct keel_listener_options *o);

/*
 * Bind, listen and start the threads.  Errors: -errno from bind/listen
 * with the address named; KEEL_EINVAL for an address that does not parse.
 * The listener keeps a pointer to `tls` (which must outlive it).
 */
int keel_listener_start(const struct keel_listener_options *o, struct keel_tls *tls,
                        struct keel_listener **out, struct keel_error *err);

/* The port actually bound (useful with port 0). */
unsigned keel_listener_port(const struct keel_listener *l);

/* Connections open now. */
unsigned keel_listener_connections(const struct keel_listener *l);

/* Close every connection, stop and join the threads, free. */
void keel_listener_stop(struct keel_listener *l);

/*
 * Send a reply frame for the request `req` with body from `msg` (its header's
 * type and union member; the request id and REPLY flag are filled in here).
 * Thread-safe; a reply to a connection that has closed is dropped (returns
 * KEEL_EUNAVAILABLE).
 */
int keel_conn_reply(struct keel_conn *conn, const struct keel_frame_header *req,
                    struct keel_msg *msg, struct keel_error *err);

/* Answer `req` with ERROR(code, message). Thread-safe. */
int keel_conn_reply_error(struct keel_conn *conn, const struct keel_frame_header *req, int code,
                          const char *message);

/* Keep `conn` (not its socket) alive past the handler's return; thread-safe. */
void keel_conn_ref(struct keel_conn *conn);
void keel_conn_unref(struct keel_conn *conn);

/* ---- client ------------------------------------------------------------- */

struct keel_client;

struct keel_client_options {
    const char *address;        /* "host:port" */
    enum keel_role expect_role; /* the server's certificate must say this role; 0: any */
    size_t max_frame_size;
    size_t max_inflight; /* bytes of requests sent and not yet answered */
    uint64_t connect_timeout_ms;
    uint64_t backoff_min_ms, backoff_max_ms;
};

void keel_client_options_default(struct keel_client_options *o);

/*
 * Start the client's thread; it connects at once and keeps reconnecting.
 * The client keeps a pointer to `tls` (which must outlive it).
 */
int keel_client_new(const struct keel_client_options *o, struct keel_tls *tls,
                    struct keel_client **out, struct keel_error *err);

/* Fail what is in flight, close, join the thread, free. */
void keel_client_free(struct keel_client *c);

/* A reply frame and its decoded message, which points into `frame`. */
struct keel_reply {
    struct keel_buf frame;
    struct keel_msg msg;
};

void keel_reply_free(struct keel_reply *r);

/*
 * Called once per request, on the client's thread: rc 0 with the reply,
 * which the function then owns (keel_reply_free()), or an error
 * (KEEL_ETIMEDOUT; KEEL_EUNAVAILABLE when the connection was lost with the
 * request sent; KEEL_ECANCELED when the client is freed) with reply NULL.
 * A reply of type ERROR is delivered with rc 0: the caller reads its code.
 * The function must not block.
 */
typedef void (*keel_reply_fn)(void *arg, int rc, struct keel_reply *reply,
                              const struct keel_error *err);

/*
 * Send `msg` (its request id is assigned here) and call `done` with the
 * reply or an error within timeout_ms.  A request made while the client is
 * reconnecting waits for the connection, within the same timeout.  Blocks
 * while the bytes in flight are over max_inflight (up to the timeout).  Must
 * not be called from the client's own thread (from a keel_reply_fn).  Errors
 * returned directly (`done` is then never called): encoding errors;
 * KEEL_ETIMEDOUT when no room came within the timeout; KEEL_ECANCELED when
 * the client is being freed.
 */
int keel_client_send(struct keel_client *c, struct keel_msg *msg, uint64_t timeout_ms,
                     keel_reply_fn done, void *arg, struct keel_error *err);

/* Send and wait for the reply; on success *reply is the caller's to free. */
int keel_client_call(struct keel_client *c, struct keel_msg *msg, uint64_t timeout_ms,
                     struct keel_reply **reply, struct keel_error *err);

/* Whether the client has a connection with a finished handshake now. */
int keel_client_connected(struct keel_client *c);

/* The server's identity from its certificate (valid while connected). */
int keel_client_peer(struct keel_client *c, struct keel_cert_identity *peer);

#endif
