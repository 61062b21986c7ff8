/*
 * assign.c - the rebalancer: keeps every range's replica set valid and
 * even with minimal movement (the table itself, its accessors and its JSON
 * form are cluster/assignment.c).
 *
 * A change is computed on a working copy ("struct work") indexed over the
 * union of the old servers and the new live ones, so the previous replica
 * sets stay visible while the new ones are built: every rule about continuity
 * and movement compares the two.  The steps, in order:
 *   1. drop servers that left; a range that lost its primary promotes the
 *      backup with the fewest primaries;
 *   2. trim ranges that have more than min(r, N) replicas (dropping the most
 *      loaded backups);
 *   3. fill ranges that have fewer, with the least loaded eligible servers;
 *   4. move replicas from the most to the least loaded server until every
 *      load is within floor/ceil of the mean;
 *   5. balance primaries by role swaps inside replica sets (no data moves),
 *      along shortest chains found by breadth-first search.
 * It runs while no job does, so there is no data to sync: every replica of
 * the result is in sync, and a range whose primary changed starts a term.
 * While a job runs, keel_assign_failover() (failover.c) changes the table.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "assign_table.h"
#include "log.h"

#define NR   KEEL_PROTO_NRANGES
#define MAXR KEEL_ASSIGN_MAX_REPLICATION
#define NONE KEEL_ASSIGN_NONE

/* ------------------------------------------------------------------------ */
/* The rebalancer                                                            */
/* ------------------------------------------------------------------------ */

/* A change in progress, over the union of old and live servers. */
struct work {
    size_t n;             /* servers in the union */
    const char **ids;     /* sorted union, borrowed */
    unsigned char *alive; /* in the new live set */
    unsigned char *fresh; /* not in the old table */
    unsigned *load;       /* replicas held in the new sets */
    unsigned *pri;        /* primaries held in the new sets */
    unsigned *nfresh;     /* replicas placed in this change, per server */
    unsigned nlive;
    unsigned reff; /* replicas per range: min(r, nlive) */
    uint8_t cnt[NR];
    uint16_t rep[NR][MAXR];
    uint8_t pcnt[NR]; /* the previous sets, in union indexes */
    uint16_t prev[NR][MAXR];
    unsigned char *member; /* [r * n + s]: IN_NEW and IN_PREV bits, for O(1) lookups */
    uint8_t nkept[NR];     /* members of the new set that were in the previous one */
    /* breadth-first search scratch */
    uint16_t *pred;       /* server we came from */
    uint16_t *pred_range; /* range that links them */
    uint16_t *queue;
};

#define IN_NEW  1u
#define IN_PREV 2u

static int in_new(const struct work *w, unsigned r, uint16_t s)
{
    return (w->member[r * w->n + s] & IN_NEW) != 0;
}

static int in_prev(const struct work *w, unsigned r, uint16_t s)
{
    return (w->member[r * w->n + s] & IN_PREV) != 0;
}

static void set_member(struct work *w, unsigned r, uint16_t s, int on)
{
    unsigned char *m = &w->member[r * w->n + s];

    if (on && !(*m & IN_NEW)) {
        *m |= IN_NEW;
        if (*m & IN_PREV)
            w->nkept[r]++;
        else
            w->nfresh[s]++;
    } else if (!on && (*m & IN_NEW)) {
        *m &= (unsigned char)~IN_NEW;
        if (*m & IN_PREV)
            w->nkept[r]--;
        else
            w->nfresh[s]--;
    }
}

/* Members of the new set of `r` that were replicas of it before. */
static unsigned prev_members(const struct work *w, unsigned r)
{
    return w->nkept[r];
}

/* Remove position `pos` of range `r`, keeping the order of the others. */
static void remove_at(struct work *w, unsigned r, unsigned pos)
{
    uint16_t s = w->rep[r][pos];

    w->load[s]--;
    set_member(w, r, s, 0);
    if (pos == 0)
        w->pri[s]--;
    memmove(&w->rep[r][pos], &w->rep[r][pos + 1], (w->cnt[r] - pos - 1) * sizeof(uint16_t));
    w->cnt[r]--;
    if (pos == 0 && w->cnt[r] > 0)
        w->pri[w->rep[r][0]]++;
}

/* Make position `pos` of range `r` the primary; the old primary moves to `pos`. */
static void swap_primary(struct work *w, unsigned r, unsigned pos)
{
    uint16_t old = w->rep[r][0], nu = w->rep[r][pos];

    w->rep[r][0] = nu;
    w->rep[r][pos] = old;
    w->pri[old]--;
    w->pri[nu]++;
}

static void append(struct work *w, unsigned r, uint16_t s)
{
    w->rep[r][w->cnt[r]++] = s;
    w->load[s]++;
    set_member(w, r, s, 1);
    if (w->cnt[r] == 1)
        w->pri[s]++;
}

/*
 * The backup of `r` to promote: a previous replica if there is one, then the
 * fewest primaries, the lowest load, the lowest index.  Returns its position.
 */
static unsigned best_backup(const struct work *w, unsigned r)
{
    unsigned best = 1;

    for (unsigned i = 2; i < w->cnt[r]; i++) {
        uint16_t a = w->rep[r][i], b = w->rep[r][best];
        int pa = in_prev(w, r, a), pb = in_prev(w, r, b);

        if (pa != pb) {
            if (pa)
                best = i;
            continue;
        }
        if (w->pri[a] != w->pri[b]) {
            if (w->pri[a] < w->pri[b])
                best = i;
            continue;
        }
        if (w->load[a] < w->load[b])
            best = i;
    }
    return best;
}

/* Step 1: servers that left are dropped; promotion where the primary left. */
static void drop_dead(struct work *w)
{
    /* Survivors are counted first, so that promotions see every range's load. */
    for (unsigned r = 0; r < NR; r++) {
        unsigned k = 0;

        for (unsigned i = 0; i < w->cnt[r]; i++) {
            if (w->alive[w->rep[r][i]])
                w->rep[r][k++] = w->rep[r][i];
            else
                set_member(w, r, w->rep[r][i], 0);
        }
        w->cnt[r] = (uint8_t)k;
        for (unsigned i = 0; i < k; i++)
            w->load[w->rep[r][i]]++;
        if (k > 0 && w->rep[r][0] == w->prev[r][0])
            w->pri[w->rep[r][0]]++;
    }
    /* A range whose primary left promotes the backup with the fewest primaries
     * (then the lowest load); every survivor is one of its previous backups. */
    for (unsigned r = 0; r < NR; r++) {
        unsigned best = 0;

        if (w->cnt[r] == 0 || w->rep[r][0] == w->prev[r][0])
            continue;
        for (unsigned i = 1; i < w->cnt[r]; i++) {
            uint16_t a = w->rep[r][i], b = w->rep[r][best];

            if (w->pri[a] < w->pri[b] || (w->pri[a] == w->pri[b] && w->load[a] < w->load[b]))
                best = i;
        }
        if (best != 0) {
            uint16_t s = w->rep[r][best];

            memmove(&w->rep[r][1], &w->rep[r][0], best * sizeof(uint16_t));
            w->rep[r][0] = s;
        }
        w->pri[w->rep[r][0]]++;
    }
}

/* Step 2: at most reff replicas; drop the most loaded backups. */
static void trim(struct work *w)
{
    for (unsigned r = 0; r < NR; r++) {
        while (w->cnt[r] > w->reff) {
            unsigned worst = 1;

            for (unsigned i = 2; i < w->cnt[r]; i++)
                if (w->load[w->rep[r][i]] >= w->load[w->rep[r][worst]])
                    worst = i;
            remove_at(w, r, worst);
        }
    }
}

/* Step 3: at least reff replicas; add the least loaded eligible servers. */
static void fill(struct work *w)
{
    for (unsigned r = 0; r < NR; r++) {
        while (w->cnt[r] < w->reff) {
            uint16_t best = NONE;

            for (size_t s = 0; s < w->n; s++) {
                if (!w->alive[s] || in_new(w, r, (uint16_t)s))
                    continue;
                if (best == NONE) {
                    best = (uint16_t)s;
                    continue;
                }
                if (w->cnt[r] == 0) { /* it will be the primary */
                    if (w->pri[s] < w->pri[best] ||
                        (w->pri[s] == w->pri[best] && w->load[s] < w->load[best]))
                        best = (uint16_t)s;
                } else if (w->load[s] < w->load[best] ||
                           (w->load[s] == w->load[best] && w->pri[s] < w->pri[best])) {
                    best = (uint16_t)s;
                }
            }
            if (best == NONE) /* cannot happen: reff <= live servers */
                break;
            append(w, r, best);
        }
    }
}

/*
 * Can the replica of `d` in range `r` move to `u`?  `u` must not hold `r`.
 * Strict: the set must keep one of its previous members (with r = 1 there is
 * only one, so a whole range moves).  Relaxed also lets the last previous
 * member go when the range's previous primary is alive, so the new replicas
 * can copy from it; only needed when several servers join at once.
 * Returns a preference (higher is better) or -1.
 */
static int move_score(const struct work *w, unsigned r, uint16_t d, uint16_t u, int relaxed)
{
    int d_prev, score = 0;
    unsigned pos = 0;

    if (in_new(w, r, u))
        return -1;
    while (pos < w->cnt[r] && w->rep[r][pos] != d)
        pos++;
    if (pos == w->cnt[r])
        return -1;
    d_prev = in_prev(w, r, d);
    if (d_prev && prev_members(w, r) == 1) {
        int prev_primary_alive = w->pcnt[r] > 0 && w->alive[w->prev[r][0]];

        if (!prev_primary_alive || (w->reff > 1 && !relaxed))
            return -1;
    }
    if (!d_prev)
        score += 4; /* moving a replica placed in this change copies nothing more */
    if (pos != 0)
        score += 2; /* keep primaries where they are */
    if (in_prev(w, r, u))
        score += 1; /* u still has the data */
    return score;
}

/* Move the replica of `d` in `r` to `u`; a primary hands its role to a backup. */
static void move_replica(struct work *w, unsigned r, uint16_t d, uint16_t u)
{
    unsigned pos = 0;

    while (w->rep[r][pos] != d)
        pos++;
    if (pos == 0 && w->cnt[r] > 1) {
        swap_primary(w, r, best_backup(w, r));
        pos = 0;
        while (w->rep[r][pos] != d)
            pos++;
    }
    if (pos == 0) { /* reff = 1: u takes the range over */
        w->rep[r][0] = u;
        w->pri[d]--;
        w->pri[u]++;
    } else {
        w->rep[r][pos] = u;
    }
    set_member(w, r, d, 0);
    set_member(w, r, u, 1);
    w->load[d]--;
    w->load[u]++;
}

struct order_key {
    const unsigned *key;        /* sort by this ascending */
    const unsigned char *fresh; /* then servers new to the table first */
};

static int cmp_by_key(const void *pa, const void *pb, void *ctx)
{
    const struct order_key *o = ctx;
    uint16_t a = *(const uint16_t *)pa, b = *(const uint16_t *)pb;

    if (o->key[a] != o->key[b])
        return o->key[a] < o->key[b] ? -1 : 1;
    if (o->fresh[a] != o->fresh[b])
        return o->fresh[a] ? -1 : 1;
    return a < b ? -1 : a > b;
}

/* Live servers sorted by `key` ascending, ties as cmp_by_key; returns the count. */
static size_t sorted_live(const struct work *w, const unsigned *key, uint16_t *out)
{
    struct order_key o = {key, w->fresh};
    size_t k = 0;

    for (size_t s = 0; s < w->n; s++)
        if (w->alive[s])
            out[k++] = (uint16_t)s;
    qsort_r(out, k, sizeof(uint16_t), cmp_by_key, &o);
    return k;
}

/* Move one replica from `d` to `u` if some range allows it; returns 1 if moved. */
static int trade(struct work *w, uint16_t d, uint16_t u, int relaxed)
{
    int best_score = -1;
    unsigned best_r = 0;

    for (unsigned r = 0; r < NR; r++) {
        int sc = move_score(w, r, d, u, relaxed);

        if (sc > best_score) {
            best_score = sc;
            best_r = r;
        }
    }
    if (best_score < 0)
        return 0;
    move_replica(w, best_r, d, u);
    return 1;
}

/* Is range `r` one of the links of the chain that ends at `x`? */
static int on_chain(const struct work *w, uint16_t x, unsigned r)
{
    for (uint16_t z = x; w->pred[z] != z; z = w->pred[z])
        if (w->pred_range[z] == r)
            return 1;
    return 0;
}

/*
 * Move replicas along a chain: `d` hands its replica of r1 to x1, x1 hands its
 * replica of r2 to x2, ... until a server takes one whose gain brings the
 * loads closer to [lo, hi] (d above hi and it below hi, or d above lo and it
 * below lo).  Breadth-first, so the chain is shortest; only its two ends
 * change load.  Like augmenting paths in a matching.
 *
 * With `old` = 0 only replicas placed in this change move (they copy nothing
 * more by moving again), so these chains place as many of the change's new
 * replicas as the replica sets allow before any old replica has to move.
 * With `old` = 1 any replica may move that move_score() allows (relaxed),
 * each range at most once per chain, so no range loses the last member that
 * holds its data; the fallback when no single move is left.  Returns 1 when
 * it moved.
 */
static int shift_chain_from(struct work *w, uint16_t d, unsigned lo, unsigned hi, int old)
{
    size_t head = 0, tail = 0;

    for (size_t s = 0; s < w->n; s++)
        w->pred[s] = NONE;
    w->pred[d] = d;
    w->queue[tail++] = d;
    while (head < tail) {
        uint16_t x = w->queue[head++];

        for (unsigned r = 0; r < NR && (old || w->nfresh[x] > 0); r++) {
            if (!in_new(w, r, x) || (!old && in_prev(w, r, x)) || (old && on_chain(w, x, r)))
                continue;
            for (size_t y = 0; y < w->n; y++) {
                if (!w->alive[y] || w->pred[y] != NONE || in_new(w, r, (uint16_t)y))
                    continue;
                if (old && move_score(w, r, x, (uint16_t)y, 1) < 0)
                    continue;
                w->pred[y] = x;
                w->pred_range[y] = (uint16_t)r;
                if ((w->load[d] > hi && w->load[y] < hi) || (w->load[d] > lo && w->load[y] < lo)) {
                    for (uint16_t z = (uint16_t)y; z != d; z = w->pred[z])
                        move_replica(w, w->pred_range[z], w->pred[z], z);
                    return 1;
                }
                w->queue[tail++] = (uint16_t)y;
            }
        }
    }
    return 0;
}

/*
 * Step 4: every load within [floor, ceil] of 256 * reff / nlive.  Chains of
 * this change's placements are tried first; else one replica moves from the
 * most loaded server to the least loaded one that can take it (among equals,
 * a server new to the table takes first), keeping continuity if possible;
 * when no single move is allowed, a chain of old replicas' moves.  Each step
 * lowers the sum of squared loads, so the loop ends.
 */
static void balance_replicas(struct work *w)
{
    unsigned total = NR * w->reff;
    unsigned lo = total / w->nlive, hi = (total + w->nlive - 1) / w->nlive;
    uint16_t *order = keel_calloc(w->n, sizeof(uint16_t));

    for (unsigned guard = 0; guard < NR * MAXR * 4; guard++) {
        size_t k = sorted_live(w, w->load, order);
        int moved = 0;

        if (w->load[order[k - 1]] <= hi && w->load[order[0]] >= lo)
            break;
        /* First relocate this change's own placements, then move old replicas. */
        for (size_t di = k; di-- > 0 && !moved;) {
            if (w->load[order[di]] <= lo)
                break;
            moved = shift_chain_from(w, order[di], lo, hi, 0);
        }
        for (int relaxed = 0; relaxed < 2 && !moved; relaxed++)
            for (size_t di = k; di-- > 0 && !moved;)
                for (size_t ui = 0; ui < di && !moved; ui++) {
                    uint16_t d = order[di], u = order[ui];

                    if (!((w->load[d] > hi && w->load[u] < hi) ||
                          (w->load[d] > lo && w->load[u] < lo)))
                        break;
                    moved = trade(w, order[di], order[ui], relaxed);
                }
        for (size_t di = k; di-- > 0 && !moved;) {
            if (w->load[order[di]] <= lo)
                break;
            moved = shift_chain_from(w, order[di], lo, hi, 1);
        }
        if (!moved) {
            KEEL_LOG_WARN("assignment: replica balance stuck (loads %u..%u, want %u..%u)",
                          w->load[order[0]], w->load[order[k - 1]], lo, hi);
            break;
        }
    }
    free(order);
}

/*
 * May the primary role of `r` pass to its backup `b`?  Strict: only to a
 * previous replica (it has the data), or anywhere when the range had no
 * previous replica alive.  Relaxed also allows a hand-over from the range's
 * previous primary, which stays in the set for the new one to copy from.
 */
static int swap_ok(const struct work *w, unsigned r, uint16_t b, int relaxed)
{
    if (in_prev(w, r, b) || prev_members(w, r) == 0)
        return 1;
    return relaxed && w->pcnt[r] > 0 && w->rep[r][0] == w->prev[r][0];
}

/*
 * Breadth-first search from `u` backwards along "u is a backup of a range
 * whose primary is p" for a server with at least pri[u] + 2 primaries; then
 * shift one primary along the path.  Returns 1 when it moved one.
 */
static int shift_primary_to(struct work *w, uint16_t u, int relaxed)
{
    size_t head = 0, tail = 0;

    for (size_t s = 0; s < w->n; s++)
        w->pred[s] = NONE;
    w->pred[u] = u;
    w->queue[tail++] = u;
    while (head < tail) {
        uint16_t x = w->queue[head++];

        for (unsigned r = 0; r < NR; r++) {
            uint16_t p;

            if (w->cnt[r] < 2 || w->rep[r][0] == x || !in_new(w, r, x) ||
                !swap_ok(w, r, x, relaxed))
                continue;
            p = w->rep[r][0];
            if (w->pred[p] != NONE)
                continue;
            w->pred[p] = x;
            w->pred_range[p] = (uint16_t)r;
            if (w->pri[p] >= w->pri[u] + 2) {
                /* Walk back from p to u, each link handing one primary down. */
                for (uint16_t y = p; y != u; y = w->pred[y]) {
                    unsigned rr = w->pred_range[y], pos = 1;

                    while (w->rep[rr][pos] != w->pred[y])
                        pos++;
                    swap_primary(w, rr, pos);
                }
                return 1;
            }
            w->queue[tail++] = p;
        }
    }
    return 0;
}

/* Step 5: primaries within [floor, ceil] of 256 / nlive where role swaps allow. */
static void balance_primaries(struct work *w)
{
    unsigned lo = NR / w->nlive, hi = (NR + w->nlive - 1) / w->nlive;
    uint16_t *order = keel_calloc(w->n, sizeof(uint16_t));

    if (w->reff < 2)
        goto out;
    for (unsigned guard = 0; guard < NR * NR; guard++) {
        size_t k = sorted_live(w, w->pri, order);
        int moved = 0;

        if (w->pri[order[k - 1]] <= hi && w->pri[order[0]] >= lo)
            break;
        for (int relaxed = 0; relaxed < 2 && !moved; relaxed++)
            for (size_t ui = 0; ui < k && !moved; ui++) {
                if (w->pri[order[ui]] + 2 > w->pri[order[k - 1]])
                    break;
                moved = shift_primary_to(w, order[ui], relaxed);
            }
        if (!moved) {
            KEEL_LOG_DEBUG("assignment: primaries %u..%u, want %u..%u: no swap chain left",
                           w->pri[order[0]], w->pri[order[k - 1]], lo, hi);
            break;
        }
    }
out:
    free(order);
}

int keel_assign_update(keel_assign *a, const char *const *live, size_t nlive,
                       struct keel_assign_stats *stats, struct keel_error *err)
{
    struct keel_assign_stats st;
    struct work *w;
    const char **ids;
    uint16_t *old_to_union, *union_to_new;
    size_t i, j, n;
    int changed;

    memset(&st, 0, sizeof(st));
    ids = keel_assign_sorted_ids(live, nlive, err);
    if (ids == NULL)
        return err ? err->code : KEEL_EINVAL;

    /* The union of the old servers and the live ones, both sorted. */
    w = keel_calloc(1, sizeof(*w));
    w->ids = keel_calloc(a->nservers + nlive + 1, sizeof(char *));
    w->alive = keel_calloc(a->nservers + nlive + 1, 1);
    w->fresh = keel_calloc(a->nservers + nlive + 1, 1);
    old_to_union = keel_calloc(a->nservers + 1, sizeof(uint16_t));
    for (i = 0, j = 0, n = 0; i < a->nservers || j < nlive; n++) {
        int c = i == a->nservers ? 1 : j == nlive ? -1 : strcmp(a->servers[i], ids[j]);

        if (c <= 0) {
            old_to_union[i] = (uint16_t)n;
            w->ids[n] = a->servers[i++];
        } else {
            w->ids[n] = ids[j];
            w->fresh[n] = 1;
        }
        if (c >= 0) {
            w->alive[n] = 1;
            w->nlive++;
            j++;
        }
    }
    w->n = n;
    w->load = keel_calloc(n + 1, sizeof(unsigned));
    w->pri = keel_calloc(n + 1, sizeof(unsigned));
    w->nfresh = keel_calloc(n + 1, sizeof(unsigned));
    w->pred = keel_calloc(n + 1, sizeof(uint16_t));
    w->pred_range = keel_calloc(n + 1, sizeof(uint16_t));
    w->queue = keel_calloc(n + 1, sizeof(uint16_t));
    w->member = keel_calloc(NR, n + 1);
    w->reff = a->replication < w->nlive ? a->replication : w->nlive;
    for (unsigned r = 0; r < NR; r++) {
        w->pcnt[r] = w->cnt[r] = a->count[r];
        for (unsigned k = 0; k < a->count[r]; k++) {
            uint16_t s = old_to_union[a->replica[r][k]];

            w->prev[r][k] = w->rep[r][k] = s;
            w->member[r * n + s] = IN_NEW | IN_PREV;
        }
        w->nkept[r] = a->count[r];
    }

    if (w->nlive > 0) {
        drop_dead(w);
        trim(w);
        fill(w);
        balance_replicas(w);
        balance_primaries(w);
    } else {
        memset(w->cnt, 0, sizeof(w->cnt));
        memset(w->member, 0, (size_t)NR * (n + 1));
    }

    /* What changed, in the union's indexes. */
    changed = a->nservers != w->nlive;
    for (unsigned r = 0; r < NR; r++) {
        for (unsigned k = 0; k < w->cnt[r]; k++)
            st.placed += !in_prev(w, r, w->rep[r][k]);
        for (unsigned k = 0; k < w->pcnt[r]; k++)
            st.removed += !in_new(w, r, w->prev[r][k]);
        if ((w->cnt[r] > 0) != (w->pcnt[r] > 0) ||
            (w->cnt[r] > 0 && w->rep[r][0] != w->prev[r][0])) {
            st.primary_changes++;
            if (w->pcnt[r] > 0 && !w->alive[w->prev[r][0]] && w->cnt[r] > 0)
                st.promoted++;
        }
        /* With no job running there is no data to sync: every replica is in sync. */
        if (w->cnt[r] != w->pcnt[r] || a->insync[r] != w->cnt[r] ||
            memcmp(w->rep[r], w->prev[r], w->cnt[r] * sizeof(uint16_t)) != 0)
            changed = 1;
    }
    for (i = 0; i < n && !changed; i++)
        changed = w->fresh[i] || !w->alive[i];

    /* Write the result back over the live servers only. */
    union_to_new = keel_calloc(n + 1, sizeof(uint16_t));
    {
        char **servers = keel_calloc(w->nlive ? w->nlive : 1, sizeof(char *));
        size_t k = 0;

        for (i = 0; i < n; i++)
            if (w->alive[i]) {
                union_to_new[i] = (uint16_t)k;
                servers[k++] = keel_strdup(w->ids[i]);
            }
        for (unsigned r = 0; r < NR; r++) {
            a->count[r] = a->insync[r] = w->cnt[r];
            for (unsigned q = 0; q < w->cnt[r]; q++)
                a->replica[r][q] = union_to_new[w->rep[r][q]];
            /* A new primary starts a term; a primary that stays keeps its own. */
            if (w->cnt[r] == 0)
                a->term[r] = 0;
            else if (w->pcnt[r] == 0 || w->rep[r][0] != w->prev[r][0])
                a->term[r] = a->version + 1;
        }
        for (i = 0; i < a->nservers; i++)
            free(a->servers[i]);
        free(a->servers);
        a->servers = servers;
        a->nservers = w->nlive;
    }
    if (changed)
        a->version++;
    st.changed = changed;
    if (stats)
        *stats = st;

    free(union_to_new);
    free(old_to_union);
    free(w->member);
    free(w->queue);
    free(w->pred_range);
    free(w->pred);
    free(w->nfresh);
    free(w->pri);
    free(w->load);
    free(w->fresh);
    free(w->alive);
    free(w->ids);
    free(w);
    free(ids);
    return 0;
}

int keel_assign_join(keel_assign *a, const char *id, struct keel_assign_stats *stats,
                     struct keel_error *err)
{
    const char **live;
    int rc;

    if (keel_assign_find_server(a, id) >= 0)
        return keel_err_set(err, KEEL_EEXIST, "assignment: server '%s' is already in the table",
                            id);
    live = keel_calloc(a->nservers + 1, sizeof(*live));
    for (size_t i = 0; i < a->nservers; i++)
        live[i] = a->servers[i];
    live[a->nservers] = id;
    rc = keel_assign_update(a, live, a->nservers + 1, stats, err);
    free(live);
    return rc;
}

int keel_assign_leave(keel_assign *a, const char *id, struct keel_assign_stats *stats,
                      struct keel_error *err)
{
    const char **live;
    long s = keel_assign_find_server(a, id);
    size_t k = 0;
    int rc;

    if (s < 0)
        return keel_err_set(err, KEEL_ENOTFOUND, "assignment: server '%s' is not in the table", id);
    live = keel_calloc(a->nservers, sizeof(*live));
    for (size_t i = 0; i < a->nservers; i++)
        if (i != (size_t)s)
            live[k++] = a->servers[i];
    rc = keel_assign_update(a, live, k, stats, err);
    free(live);
    return rc;
}

int keel_assign_set_replication(keel_assign *a, unsigned replication,
                                struct keel_assign_stats *stats, struct keel_error *err)
{
    const char **live;
    unsigned old = a->replication;
    int rc;

    if (replication < 1 || replication > MAXR)
        return keel_err_set(err, KEEL_EINVAL, "assignment: replication must be 1-%d, got %u", MAXR,
                            replication);
    a->replication = replication;
    live = keel_calloc(a->nservers ? a->nservers : 1, sizeof(*live));
    for (size_t i = 0; i < a->nservers; i++)
        live[i] = a->servers[i];
    rc = keel_assign_update(a, live, a->nservers, stats, err);
    free(live);
    if (rc != 0) {
        a->replication = old;
        return rc;
    }
    if (old != replication && !(stats && stats->changed)) {
        /* The replication itself is part of the table. */
        a->version++;
        if (stats)
            stats->changed = 1;
    }
    return 0;
}
