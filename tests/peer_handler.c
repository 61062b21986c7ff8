/*
 * peer_handler.c - see peer_handler.h.
 */
#include <pthread.h>
#include <stdlib.h>
#include <unistd.h>
#include <string.h>

#include "alloc.h"
#include "peer_handler.h"

struct held {
    struct keel_conn *conn;
    struct keel_frame_header req;
    struct keel_msg reply;
};

static void ack_of(const struct keel_msg *msg, unsigned lsn, struct keel_msg *reply)
{
    memset(reply, 0, sizeof(*reply));
    reply->hdr.type = KEEL_MSG_ACK;
    reply->u.ack.lsn = lsn;
    reply->u.ack.seq = msg->u.push.seq;
    reply->u.ack.shard = msg->u.push.shard;
    reply->u.ack.status = KEEL_ACK_APPLIED;
}

static void *reply_later(void *arg)
{
    struct held *h = arg;

    usleep(2000);
    keel_conn_reply(h->conn, &h->req, &h->reply, NULL);
    keel_conn_unref(h->conn);
    free(h);
    return NULL;
}

int peer_handler_fn(void *ctx, struct keel_conn *conn, const struct keel_cert_identity *peer,
                    const struct keel_msg *msg, struct keel_error *err)
{
    struct peer_handler *h = ctx;
    unsigned n = __atomic_add_fetch(&h->executed, 1, __ATOMIC_RELAXED);
    struct keel_msg reply;
    float *zeros;
    int rc;

    switch (msg->hdr.type) {
    case KEEL_MSG_PUSH:
        ack_of(msg, n, &reply);
        if (h->from_thread) {
            struct held *later = keel_malloc(sizeof(*later));
            pthread_t tid;

            keel_conn_ref(conn);
            later->conn = conn;
            later->req = msg->hdr;
            later->reply = reply;
            pthread_create(&tid, NULL, reply_later, later);
            pthread_detach(tid);
            return 0;
        }
        if (h->hold == 0)
            return keel_conn_reply(conn, &msg->hdr, &reply, err);
        /* Hold, then answer all in reverse order: replies out of order on purpose. */
        if (h->held == NULL)
            KEEL_ALLOC_ARRAY(h->held, h->hold);
        keel_conn_ref(conn);
        h->held[h->nheld].conn = conn;
        h->held[h->nheld].req = msg->hdr;
        h->held[h->nheld].reply = reply;
        if (++h->nheld == h->hold) {
            for (unsigned i = h->nheld; i-- > 0;) {
                keel_conn_reply(h->held[i].conn, &h->held[i].req, &h->held[i].reply, NULL);
                keel_conn_unref(h->held[i].conn);
            }
            h->nheld = 0;
        }
        return 0;
    case KEEL_MSG_PULL:
        zeros = keel_calloc((size_t)msg->u.pull.data.nkeys * msg->u.pull.data.row_width + 1,
                            sizeof(float));
        memset(&reply, 0, sizeof(reply));
        reply.hdr.type = KEEL_MSG_PULL_REPLY;
        reply.u.pull_reply.data = msg->u.pull.data;
        reply.u.pull_reply.data.rows = zeros;
        rc = keel_conn_reply(conn, &msg->hdr, &reply, err);
        free(zeros);
        return rc;
    case KEEL_MSG_ADMIN:
        memset(&reply, 0, sizeof(reply));
        reply.hdr.type = KEEL_MSG_ADMIN;
        reply.u.admin = msg->u.admin;
        return keel_conn_reply(conn, &msg->hdr, &reply, err);
    default:
        return keel_err_set(err, KEEL_ENOTIMPL, "test peer does not serve %s",
                            keel_msg_type_name(msg->hdr.type));
    }
}
