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
 * position (or past it, held back) in every range this server leads, and a
 * push or update of clock C - 1 or later has been seen (a lease this server
 * has not heard of yet would make its shard look still), the ranges led are
 * copied together under srv->lock, where no push is applied, and the held
 * pushes go on.  A server that holds no range yet (one just started) waits
 * for its ranges; a range past C when it comes (a restarted server's
 * store) is left out.
 *
 * A backup does not judge on its own: the shards its view calls leased may
 * differ from its primary's.  Every replicated update carries the number
 * of the last cut its primary copied the range at (srv->cut_mark), stamped
 * in the order the primary applied the updates, and the backup copies the
 * range just before the first update of the cut under way: the primary's
 * copy, to the update.  The checkpoint is written once every range held is
 * copied or left out (a backup waits at most until a push reaches the next
 * cut); the copies go to the store afterwards, on the storage thread.
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
    if (nb_max == 0 || (clock - 1) / nb_max >= s->spec.epochs ||
        clock / s->spec.checkpoint_interval >= CUT_MARK_UNKNOWN) {
        free(nbatches); /* past the job's last clock: its end takes the last checkpoint */
        return 0;
    }
    c->clock = clock;
    c->index = (uint32_t)(clock / s->spec.checkpoint_interval);
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
 * leased does not move: either way it stays where it is until the copy);
 * *past when a shard stands past it (no push past C is applied while the
 * cut is under way: the range was there before, a restarted server's store).
 */
static int range_at_cut(struct srv *s, unsigned r, int *past)
{
    struct cut *c = &s->cut;
    uint64_t floor[64], *f = floor;
    int at = 1;

    *past = 0;
    if (c->nshards > sizeof(floor) / sizeof(floor[0]))
        f = keel_malloc(c->nshards * sizeof(*f));
    for (uint32_t n = 0; n < c->nshards; n++)
        f[n] = UINT64_MAX;
    keel_ps_floor(s->ps, r, f, c->nshards);
    for (uint32_t n = 0; n < c->nshards; n++) {
        if (f[n] == UINT64_MAX)
            continue;
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
    int at = 1, held = 0;

    if (c->clock == 0 || c->open || s->ps == NULL)
        return;
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        int past;

        if (keel_ps_holds(s->ps, r) || c->state[r] != CUT_WAIT)
            held = 1;
        if (!to_copy(s, r) || !keel_ps_is_primary(s->ps, r))
            continue;
        if (!range_at_cut(s, r, &past))
            at = 0;
        else if (past)
            c->state[r] = CUT_OUT;
    }
    /*
     * Not before this server holds a range (one just started gets them from
     * its store and its primaries), nor before the job is seen at the cut.
     */
    if (!held || !at || c->seen + 1 < c->clock)
        return;
    /* At one moment: no push is applied while srv->lock is held. */
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        if (!keel_ps_holds(s->ps, r) || !keel_ps_is_primary(s->ps, r))
            continue;
        if (to_copy(s, r))
            copy_range(s, r);
        s->cut_mark[r] = c->index; /* the updates from now on follow this cut */
    }
    c->open = 1;
    if (c->held_since > 0)
        c->held_ms = keel_clock_mono_ms() - c->held_since;
}

int srv_cut_holds(struct srv *s, const struct keel_msg_push *p, struct keel_error *err)
{
    struct cut *c = &s->cut;
    uint64_t at = c->clock;

    if (p->clock > c->seen)
        c->seen = p->clock;
    /* Once the ranges led are copied, until the next cut begins (on the
     * storage thread), pushes go on up to the next cut's clock. */
    if (c->open)
        at += s->spec.checkpoint_interval;
    if (c->clock == 0 || p->clock < at)
        return 0;
    if (c->open)
        c->late = 1; /* the backups' copies wait no longer */
    else if (c->held_since == 0)
        c->held_since = keel_clock_mono_ms();
    c->nheld++;
    return keel_err_set(err, KEEL_EUNAVAILABLE,
                        "clock %" PRIu64 " is past the checkpoint at clock %" PRIu64
                        " this server is taking: it waits until every leased shard "
                        "has reached that clock",
                        p->clock, at);
}

void srv_cut_before(struct srv *s, unsigned range, uint32_t mark, uint64_t clock)
{
    struct cut *c = &s->cut;
    uint32_t prev;
    int past;

    if (range >= KEEL_PROTO_NRANGES)
        return;
    prev = s->cut_mark[range];
    s->cut_mark[range] = mark;
    if (clock > c->seen)
        c->seen = clock;
    if (c->clock == 0 || !to_copy(s, range) || mark < c->index)
        return; /* the primary has not copied it for this cut yet */
    /*
     * The first update after the primary's copy: the range stands where the
     * primary's copy does.  Any later one, or after a copy installed here
     * (which cut it follows is not known): the range is past it.
     */
    if (mark == c->index && prev < c->index && (range_at_cut(s, range, &past), !past))
        copy_range(s, range);
    else
        c->state[range] = CUT_OUT;
}

void srv_cut_installed(struct srv *s, unsigned range)
{
    struct cut *c = &s->cut;

    if (range >= KEEL_PROTO_NRANGES)
        return;
    s->cut_mark[range] = CUT_MARK_UNKNOWN;
    if (c->clock != 0 && c->state[range] == CUT_WAIT)
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
    /*
     * The ranges backed up wait for their primaries' copies, until the job is
     * at the next cut; one led here since the copies were taken is left out.
     */
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        if (to_copy(s, r)) {
            if (!c->late && !keel_ps_is_primary(s->ps, r))
                return 0;
            KEEL_LOG_DEBUG("job %s: checkpoint at clock %" PRIu64 ": range %u left out: led "
                           "here since the copies, or no update after its primary's copy came "
                           "before the next checkpoint's clock",
                           s->job, c->clock, r);
            c->state[r] = CUT_OUT;
        }
    *copies = keel_calloc(KEEL_PROTO_NRANGES, sizeof(**copies));
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        if (c->state[r] == CUT_COPIED) {
            (*copies)[k++] = c->copies[r];
            memset(&c->copies[r], 0, sizeof(c->copies[r]));
        }
    *n = k;
    return 1;
}
