/*
 * net_internal.h - what the listener (net.c) and the client (net_client.c)
 * share: start-up of libevent's threading, addresses, frame reassembly.
 */
#ifndef KEEL_NET_INTERNAL_H
#define KEEL_NET_INTERNAL_H

#include <netinet/in.h>
#include <stddef.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/proto.h"
#include "tls.h"

/* Once per process: libevent locking for pthreads, SIGPIPE ignored. */
void keel__net_init(void);

/* "host:port" (IPv4 literal or "localhost") into *sa.  Errors: KEEL_EINVAL. */
int keel__net_parse_addr(const char *text, struct sockaddr_in *sa, struct keel_error *err);

/*
 * Take the next whole frame off `in` into `frame` (reset first; its memory
 * is aligned, so the frame can be decoded in place), with its header in *h.
 * Returns 1 when a frame was taken, 0 when more bytes are needed (then *h is
 * valid if 32 bytes were there), or the header's decode error (*h as far as
 * it was read; nothing is taken off `in`).
 */
int keel__net_take_frame(struct evbuffer *in, size_t max_frame, struct keel_buf *frame,
                         struct keel_frame_header *h, struct keel_error *err);

/*
 * A TLS bufferevent over a socket bufferevent (OpenSSL as a filter): the
 * socket side moves data in large reads and writes, and many TLS records
 * are processed per system call instead of one record per read.  `fd` may be
 * -1 (connect later with bufferevent_socket_connect() on *under).  Freeing
 * the returned bufferevent frees the socket one and closes the socket.
 * Returns NULL when libevent cannot make them (then `ssl` is freed).  The
 * bufferevents are not thread-safe: only their event base's thread uses them.
 */
struct bufferevent *keel__tls_bufferevent(struct event_base *base, int fd, SSL *ssl, int accepting,
                                          struct bufferevent **under);

/* TCP_NODELAY on a socket: frames go out as soon as they are written. */
void keel__net_nodelay(int fd);

/* Milliseconds to a struct timeval. */
struct timeval keel__ms_to_tv(uint64_t ms);

#endif
