/*
 * authz.c - the role/message-type table.
 */
#include "authz.h"

#define BIT(t) (1u << (t))

/* Indexed by enum keel_role; a bit per message type. */
static const unsigned allowed[] = {
    [KEEL_ROLE_COORDINATOR] = BIT(KEEL_MSG_HELLO) | BIT(KEEL_MSG_ADMIN),
    [KEEL_ROLE_SERVER] = BIT(KEEL_MSG_HELLO) | BIT(KEEL_MSG_REPLICATE) | BIT(KEEL_MSG_RANGE_COPY) |
                         BIT(KEEL_MSG_PULL) | BIT(KEEL_MSG_SHARD_READ),
    [KEEL_ROLE_WORKER] =
        BIT(KEEL_MSG_HELLO) | BIT(KEEL_MSG_PUSH) | BIT(KEEL_MSG_PULL) | BIT(KEEL_MSG_SHARD_READ),
    [KEEL_ROLE_ADMIN] = BIT(KEEL_MSG_HELLO) | BIT(KEEL_MSG_ADMIN),
};

int keel_authz_allowed(enum keel_role role, unsigned type)
{
    if (role < KEEL_ROLE_COORDINATOR || role > KEEL_ROLE_ADMIN || type > KEEL_MSG_TYPE_MAX)
        return 0;
    return (allowed[role] & BIT(type)) != 0;
}
