/*
 * peer_handler.h - the request handler the transport tests serve.
 *
 * PUSH: answered with ACK (seq and shard echoed, lsn = number of pushes
 *       executed so far); when `hold` is non-zero, the first `hold` pushes
 *       are kept unanswered and then all answered in reverse order.
 * PULL: answered with PULL_REPLY, rows of zeros.
 * ADMIN: answered with ADMIN carrying the same op and payload.
 * anything else that authorization let through: KEEL_ENOTIMPL.
 * With `from_thread`, each PUSH is answered from a new thread.
 * `executed` counts every request the handler ran (atomic).
 */
#ifndef KEEL_TEST_PEER_HANDLER_H
#define KEEL_TEST_PEER_HANDLER_H

#include "net.h"

struct held;

struct peer_handler {
    unsigned executed; /* atomic */
    unsigned hold;
    int from_thread; /* answer PUSH from a thread of its own, not the I/O thread */
    /* held pushes, guarded by their count reaching `hold` on one thread */
    struct held *held;
    unsigned nheld;
};

int peer_handler_fn(void *ctx, struct keel_conn *conn, const struct keel_cert_identity *peer,
                    const struct keel_msg *msg, struct keel_error *err);

#endif
