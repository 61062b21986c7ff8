/*
 * gcommit.c - the group-commit rule (gcommit.h).
 */
#include "gcommit.h"

static int full(const struct keel_gcommit *g, size_t n, uint64_t bytes)
{
    return n >= g->max_acks || bytes >= g->max_bytes;
}

uint64_t keel_gcommit_wait_ms(const struct keel_gcommit *g, size_t n, uint64_t bytes,
                              uint64_t age_ms)
{
    if (n == 0)
        return KEEL_GCOMMIT_IDLE;
    if (g->hold_ms == 0 || full(g, n, bytes) || age_ms >= g->hold_ms)
        return 0;
    return g->hold_ms - age_ms;
}

int keel_gcommit_joins(const struct keel_gcommit *g, size_t n, uint64_t bytes, uint64_t next_bytes)
{
    if (n == 0)
        return 1;
    return n < g->max_acks && bytes + next_bytes <= g->max_bytes;
}
