/*
 * cut.c - checkpoints cut at one clock: of every range a server holds, a
 * copy taken at one moment at the checkpoint's clock C (server_int.h,
 * struct cut).
 *
 * Every push and replicated update carries its batch's clock, and a shard's
 * batches have increasing clocks.  While the cut is under way a push of
 * clock C or later is refused (to retry), so no shard moves past its
 * position before C (keel_shard_seq_before()); a shard not leased to a
 * worker does not move at all.  Once every leased shard stands at that
 * position (or past it, held back) in every range held, and a push or
 * update of clock C - 1 or later has been seen (a lease this server has not
 * heard of yet would make its shard look still), the ranges are copied
 * together under srv->lock, where no push is applied, and the held pushes
 * go on.  A server that holds no range yet (one just started) waits for
 * them; ranges past C when they come (a restarted server's store) skip the
 * cut.  A backup copies a range before it applies the first
 * replicated update of clock C or later: its primary took its own copy
 * before it let that update in, and sends updates in order.  Only the
 * workers ahead of the cut wait, for as long as the slowest takes to reach
 * it; the copies are written to the store afterwards, on the storage
 * thread.
 *
 * Every function here runs with srv->lock held.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "keel/jobs.h"
#include "log.h"
#include "server_int.h"

void srv_cut_end(struct srv *s)
{
    struct cut *c = &s->cut;

    if (c->copies != NULL)
        for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
            keel_snapshot_release(&c->copies[r]);
    free(c->copies);
    free(c->seq);
    memset(c, 0, sizeof(*c));
}

/* Each shard's batches a pass, and the largest shard's, from the job's dataset here. */
static int shard_batches(struct srv *s, uint32_t *nbatches, uint32_t nshards, uint32_t *nb_max,
                         struct keel_error *err)
{
    keel_dataset *ds = srv_dataset_of(s, keel_str_of(s->spec.dataset), err);
    uint64_t b = s->spec.batch_size;

    if (ds == NULL)
        return -1;
    *nb_max = 0;
    for (uint32_t n = 0; n < nshards; n++) {
        uint64_t nb = (keel_dataset_shard_records(ds, n) + b - 1) / b;

        nbatches[n] = nb > UINT32_MAX ? UINT32_MAX : (uint32_t)nb;
        if (nbatches[n] > *nb_max)
            *nb_max = nbatches[n];
    }
    return 0;
}

uint64_t srv_cut_end_clock(struct srv *s)
{
    uint32_t nshards = s->spec.shards, nb_max = 0, *nbatches;
    struct keel_error err;
    uint64_t end = 0;

    keel_error_init(&err);
    nbatches = keel_calloc(nshards ? nshards : 1, sizeof(*nbatches));
    if (shard_batches(s, nbatches, nshards, &nb_max, &err) == 0)
        end = (uint64_t)s->spec.epochs * nb_max;
    free(nbatches);
    return end;
}

int srv_cut_begin(struct srv *s, uint64_t clock)
{
    struct cut *c = &s->cut;
    uint32_t nshards = s->spec.shards, nb_max = 0, *nbatches;
    struct keel_error err;

    srv_cut_end(s);
    keel_error_init(&err);
    nbatches = keel_calloc(nshards ? nshards : 1, sizeof(*nbatches));
    if (shard_batches(s, nbatches, nshards, &nb_max, &err) != 0) {
        KEEL_LOG_WARN("job %s: no checkpoint at clock %" PRIu64 ": this server cannot tell "
                      "where the shards stand at that clock: %s",
                      s->job, clock, err.msg);
        free(nbatches);
        return 0;
    }
    if (nb_max == 0 || (clock - 1) / nb_max >= s->spec.epochs) {
        free(nbatches); /* past the job's last clock: its end takes the last checkpoint */
        return 0;
    }
    c->clock = clock;
    c->nshards = nshards;
    c->seq = keel_calloc(nshards ? nshards : 1, sizeof(*c->seq));
    for (uint32_t n = 0; n < nshards; n++)
        c->seq[n] = nbatches[n] ? keel_shard_seq_before(clock, nb_max, nbatches[n]) : 0;
    free(nbatches);
    c->copies = keel_calloc(KEEL_PROTO_NRANGES, sizeof(*c->copies));
    c->began_ms = keel_clock_mono_ms();
    srv_cut_check(s);
    return 1;
}

static void copy_range(struct srv *s, unsigned r)
{
    struct cut *c = &s->cut;
    struct keel_error err;

    keel_error_init(&err);
    if (keel_ps_snapshot(s->ps, r, &c->copies[r], &err) != 0) {
        KEEL_LOG_ERROR("job %s: checkpoint at clock %" PRIu64 ": range %u left out: %s", s->job,
                       c->clock, r, err.msg);
        c->state[r] = CUT_OUT;
        return;
    }
    c->state[r] = CUT_COPIED;
}

/* A range this server holds that the cut copies: held, with rows, not copied or left out. */
static int to_copy(struct srv *s, unsigned r)
{
    return s->cut.state[r] == CUT_WAIT && keel_ps_holds(s->ps, r) && keel_ps_rows(s->ps, r) > 0;
}

/*
 * Whether every shard leased to a worker stands at or past its position
 * before C in range `r` (a shard past it is held back by the cut, one not
 * leased does not move: either way it stays where it is until the copy).
 */
static int range_at_cut(struct srv *s, unsigned r, int *past)
{
    struct cut *c = &s->cut;
    uint64_t floor[64], *f = floor;
    int at = 1;

    if (c->nshards > sizeof(floor) / sizeof(floor[0]))
        f = keel_malloc(c->nshards * sizeof(*f));
    for (uint32_t n = 0; n < c->nshards; n++)
        f[n] = UINT64_MAX;
    keel_ps_floor(s->ps, r, f, c->nshards);
    for (uint32_t n = 0; n < c->nshards; n++) {
        if (f[n] == UINT64_MAX)
            continue;
        /* No push past C is applied while the cut is under way: a position
         * past it was there before (a restarted server's store). */
        if (f[n] > c->seq[n])
            *past = 1;
        if (n < s->nleases && s->leases[n][0] != '\0' && f[n] < c->seq[n])
            at = 0;
    }
    if (f != floor)
        free(f);
    return at;
}

void srv_cut_check(struct srv *s)
{
    struct cut *c = &s->cut;

    int past = 0, at = 1, held = 0;

    if (c->clock == 0 || c->open || s->ps == NULL)
        return;
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES && !past; r++) {
        if (keel_ps_holds(s->ps, r) || c->state[r] != CUT_WAIT)
            held = 1;
        if (to_copy(s, r) && !range_at_cut(s, r, &past))
            at = 0;
    }
    /*
     * Nothing held yet (a server that has just started, before its ranges
     * are opened or copied to it): no push comes here, and what its ranges
     * will stand at is not known; the cut waits for them.
     */
    if (!held)
        return;
    if (past) {
        KEEL_LOG_DEBUG("job %s: no checkpoint at clock %" PRIu64 ": the ranges here are past it "
                       "already",
                       s->job, c->clock);
        c->past = 1;
        c->open = 1;
        return;
    }
    /*
     * Not before the job is seen at the cut: a push or replicated update of
     * clock C - 1 or later.  Until then a shard whose lease this server has
     * not seen yet (a job that has just started) would look still.
     */
    if (!at || c->seen + 1 < c->clock)
        return;
    /* At one moment: no push is applied while srv->lock is held. */
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        if (to_copy(s, r))
            copy_range(s, r);
    c->open = 1;
    if (c->held_since > 0)
        c->held_ms = keel_clock_mono_ms() - c->held_since;
}

int srv_cut_holds(struct srv *s, const struct keel_msg_push *p, struct keel_error *err)
{
    struct cut *c = &s->cut;

    uint64_t at = c->clock;

    /* Once the copies are taken, until the next cut begins (on the storage
     * thread), pushes go on up to the next cut's clock. */
    if (c->open)
        at += s->spec.checkpoint_interval;
    if (p->clock > c->seen)
        c->seen = p->clock;
    if (c->clock == 0 || p->clock < at)
        return 0;
    if (!c->open && c->held_since == 0)
        c->held_since = keel_clock_mono_ms();
    c->nheld++;
    return keel_err_set(err, KEEL_EUNAVAILABLE,
                        "clock %" PRIu64 " is past the checkpoint at clock %" PRIu64
                        " this server is taking: it waits until every leased shard "
                        "has reached that clock",
                        p->clock, at);
}

void srv_cut_before(struct srv *s, unsigned range, uint64_t clock)
{
    struct cut *c = &s->cut;

    if (clock > c->seen)
        c->seen = clock;
    /* Every update below the cut came first (the primary took its copy before it
     * let this one in): the range stands at the cut now. */
    if (c->clock != 0 && !c->open && clock >= c->clock && range < KEEL_PROTO_NRANGES &&
        to_copy(s, range))
        copy_range(s, range);
}

void srv_cut_installed(struct srv *s, unsigned range)
{
    struct cut *c = &s->cut;

    if (c->clock != 0 && !c->open && range < KEEL_PROTO_NRANGES && c->state[range] != CUT_COPIED)
        c->state[range] = CUT_OUT; /* the copy may be from past the cut */
}

int srv_cut_take(struct srv *s, struct keel_snapshot **copies, size_t *n)
{
    struct cut *c = &s->cut;
    size_t k = 0;

    if (c->clock == 0)
        return 0;
    srv_cut_check(s);
    if (!c->open)
        return 0;
    *n = 0;
    *copies = NULL;
    if (c->past)
        return 1;
    *copies = keel_calloc(KEEL_PROTO_NRANGES, sizeof(**copies));
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        if (c->state[r] == CUT_COPIED) {
            (*copies)[k++] = c->copies[r];
            memset(&c->copies[r], 0, sizeof(c->copies[r]));
        }
    *n = k;
    return 1;
}
