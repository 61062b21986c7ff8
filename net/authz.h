/*
 * authz.h - which role may send which request.
 *
 * One table (authz.c) decides, for a request arriving at a node, whether the
 * sender's role (from its certificate) may send that message type:
 *   worker:      HELLO, PUSH, PULL, SHARD_READ
 *   server:      HELLO, REPLICATE, PULL, SHARD_READ (catching up from a primary)
 *   coordinator: HELLO, ADMIN
 *   admin:       HELLO, ADMIN
 * Replies (frames with the REPLY flag) are never requests and are refused on
 * the serving side.  Pure and thread-safe.
 */
#ifndef KEEL_AUTHZ_H
#define KEEL_AUTHZ_H

#include "keel/proto.h"

/* Non-zero when `role` may send a request of `type`. */
int keel_authz_allowed(enum keel_role role, unsigned type);

#endif
