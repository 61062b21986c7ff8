/*
 * failover.c - the replica sets while a job runs (keel_assign_failover(),
 * keel_assign_balance_primaries()).
 *
 * Servers hold data then, so unlike the rebalancer (assign.c) no replica
 * moves for balance: a range whose primary died is led by a backup that is
 * in sync (it has every acknowledged update), a range with no in-sync replica
 * alive waits for one, missing backups are placed as syncing, and a syncing
 * backup joins the in-sync prefix once it reports a copy of the range's
 * current term and its primary pledges it.  Primaries are shared again only
 * by role swaps with such backups: see docs/coordinator.md.
 *
 * Like the rebalancer it works over the union of the table's servers and the
 * live ones: dead servers that a waiting range still names stay listed.
 */
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "assign_table.h"
#include "keel/id.h"
#include "keel/replicas.h"

#define NR   KEEL_PROTO_NRANGES
#define MAXR KEEL_ASSIGN_MAX_REPLICATION
#define NONE KEEL_ASSIGN_NONE

/* A change in progress, over the union of the table's servers and the live ones. */
struct fo {
    size_t n;             /* servers in the union */
    const char **ids;     /* sorted union, borrowed */
    unsigned char *alive; /* in the live list */
    unsigned *load;       /* replicas held in the new sets */
    unsigned *pri;        /* primaries held in the new sets */
    uint64_t version;     /* the new version, if anything changes */
    uint8_t cnt[NR];
    uint8_t insync[NR];
    uint16_t rep[NR][MAXR];
    uint64_t term[NR];
    unsigned char lost[NR]; /* no in-sync replica alive: left as it was */
    uint8_t pcnt[NR];       /* the previous sets, in union indexes */
    uint16_t prev[NR][MAXR];
};

/*
 * Step a: keep the live replicas of `r` in their order.  In-sync ones come
 * first, so when the primary died the first live in-sync backup leads, in a
 * new term.  With no in-sync replica alive the range waits as it is: a
 * syncing backup lacks acknowledged updates, and leading would lose them.
 */
static void drop_dead(struct fo *w, unsigned r)
{
    uint16_t keep[MAXR];
    unsigned k = 0, in = 0;

    for (unsigned i = 0; i < w->cnt[r]; i++)
        if (w->alive[w->rep[r][i]]) {
            keep[k] = w->rep[r][i];
            in += i < w->insync[r];
            k++;
        }
    if (k == w->cnt[r])
        return;
    if (in == 0) {
        w->lost[r] = 1;
        return;
    }
    if (keep[0] != w->rep[r][0])
        w->term[r] = w->version;
    memcpy(w->rep[r], keep, k * sizeof(uint16_t));
    w->cnt[r] = (uint8_t)k;
    w->insync[r] = (uint8_t)in;
}

/* Whether server `s` reports holding none of range `r`'s state. */
static int reports_lost(const struct keel_assign_synced *synced, const long *sidx, size_t nsynced,
                        unsigned r, uint16_t s)
{
    for (size_t j = 0; j < nsynced; j++)
        if (sidx[j] == (long)s && synced[j].lost != NULL && synced[j].lost[r])
            return 1;
    return 0;
}

/*
 * Step 0: an in-sync replica that lost the range's state (a wiped store) is
 * in sync no more; it goes first among the syncing backups.  The next
 * in-sync replica leads, live or not (a dead one makes the range wait for
 * it).  The last in-sync replica is left alone: the range is lost for good,
 * and the caller fails the job (keel_assign_lost()).
 */
static void demote_lost(struct fo *w, unsigned r, const struct keel_assign_synced *synced,
                        const long *sidx, size_t nsynced)
{
    for (unsigned i = 0; i < w->insync[r] && w->insync[r] > 1;) {
        uint16_t s = w->rep[r][i];

        if (!reports_lost(synced, sidx, nsynced, r, s)) {
            i++;
            continue;
        }
        memmove(&w->rep[r][i], &w->rep[r][i + 1], (w->insync[r] - 1 - i) * sizeof(uint16_t));
        w->rep[r][--w->insync[r]] = s;
        if (i == 0)
            w->term[r] = w->version;
    }
}

/* Step b, down: drop the last replicas (syncing ones first, never the primary). */
static void trim(struct fo *w, unsigned r, unsigned replication)
{
    while (w->cnt[r] > replication)
        w->load[w->rep[r][--w->cnt[r]]]--;
    if (w->insync[r] > w->cnt[r])
        w->insync[r] = w->cnt[r];
}

/* The live server outside the set of `r` holding the fewest replicas, then primaries. */
static uint16_t least_loaded(const struct fo *w, unsigned r)
{
    uint16_t best = NONE;

    for (size_t s = 0; s < w->n; s++) {
        if (!w->alive[s] || keel_assign_in_set(w->rep[r], w->cnt[r], (uint16_t)s))
            continue;
        if (best == NONE || w->load[s] < w->load[best] ||
            (w->load[s] == w->load[best] && w->pri[s] < w->pri[best]))
            best = (uint16_t)s;
    }
    return best;
}

/*
 * Step b, up: append syncing backups until `r` has `want` replicas (at most
 * the live servers, all outside a set whose replicas are all alive).  An
 * empty range has no data to sync: its first replica leads, in sync.
 */
static void fill(struct fo *w, unsigned r, unsigned want)
{
    while (w->cnt[r] < want) {
        uint16_t s = least_loaded(w, r);

        w->rep[r][w->cnt[r]++] = s;
        w->load[s]++;
        if (w->cnt[r] == 1) {
            w->pri[s]++;
            w->insync[r] = 1;
            w->term[r] = w->version;
        }
    }
}

/* Whether server `s` reports a copy of range `r` at its current term. */
static int has_term(const struct fo *w, unsigned r, uint16_t s,
                    const struct keel_assign_synced *synced, const long *sidx, size_t nsynced)
{
    for (size_t j = 0; j < nsynced; j++)
        if (sidx[j] == (long)s && synced[j].terms[r] == w->term[r])
            return 1;
    return 0;
}

/*
 * Whether the primary of `r` pledges backup `b` at the range's term: it
 * waits for it before any acknowledgement, so the backup may be promoted.
 */
static int pledged(const struct fo *w, unsigned r, uint16_t b,
                   const struct keel_assign_synced *synced, const long *sidx, size_t nsynced)
{
    for (size_t j = 0; j < nsynced; j++) {
        const struct keel_replica_report *p = synced[j].report;

        if (sidx[j] != (long)w->rep[r][0] || p == NULL || p->terms[r] != w->term[r])
            continue;
        for (unsigned k = 0; k < p->npledged[r] && k < KEEL_REPLICAS_MAX_PLEDGED; k++)
            if (strcmp(p->pledged[r][k], w->ids[b]) == 0)
                return 1;
    }
    return 0;
}

/*
 * Step c: a syncing backup joins the in-sync prefix once it holds the copy of
 * the current term and its primary pledges it.  Its own report alone is not
 * enough: its primary may not yet wait for it, and may acknowledge updates
 * it does not hold.
 */
static void catch_up(struct fo *w, unsigned r, const struct keel_assign_synced *synced,
                     const long *sidx, size_t nsynced)
{
    if (w->term[r] == 0) /* a report of term 0 means no copy */
        return;
    for (unsigned i = w->insync[r]; i < w->cnt[r]; i++) {
        uint16_t b = w->rep[r][i];

        if (!has_term(w, r, b, synced, sidx, nsynced) || !pledged(w, r, b, synced, sidx, nsynced))
            continue;
        memmove(&w->rep[r][w->insync[r] + 1], &w->rep[r][w->insync[r]],
                (i - w->insync[r]) * sizeof(uint16_t));
        w->rep[r][w->insync[r]++] = b;
    }
}

/* Merge the table's servers and the sorted live ids into w; `old_to_union` maps the former. */
static void merge_servers(struct fo *w, const keel_assign *a, const char **ids, size_t nlive,
                          uint16_t *old_to_union)
{
    size_t i = 0, j = 0, n = 0;

    while (i < a->nservers || j < nlive) {
        int c = i == a->nservers ? 1 : j == nlive ? -1 : strcmp(a->servers[i], ids[j]);

        if (c <= 0) {
            old_to_union[i] = (uint16_t)n;
            w->ids[n] = a->servers[i++];
        } else {
            w->ids[n] = ids[j];
        }
        if (c >= 0) {
            w->alive[n] = 1;
            j++;
        }
        n++;
    }
    w->n = n;
}

/* What changed between the previous sets and the new ones, for the caller. */
static void count_changes(const struct fo *w, struct keel_assign_stats *st)
{
    for (unsigned r = 0; r < NR; r++) {
        for (unsigned k = 0; k < w->cnt[r]; k++)
            st->placed += !keel_assign_in_set(w->prev[r], w->pcnt[r], w->rep[r][k]);
        for (unsigned k = 0; k < w->pcnt[r]; k++)
            st->removed += !keel_assign_in_set(w->rep[r], w->cnt[r], w->prev[r][k]);
        if (w->cnt[r] > 0 && (w->pcnt[r] == 0 || w->rep[r][0] != w->prev[r][0])) {
            st->primary_changes++;
            st->promoted += w->pcnt[r] > 0;
        }
    }
}

/*
 * Write the new sets back over the servers still in use (live or named by a
 * range), unless nothing changed.  Errors: KEEL_EINVAL when those are more
 * than a table lists; the table is then unchanged.
 */
static int write_back(const struct fo *w, keel_assign *a, unsigned replication,
                      struct keel_assign_stats *st, struct keel_error *err)
{
    uint16_t *union_to_new = keel_calloc(w->n + 1, sizeof(uint16_t));
    unsigned char *used = keel_calloc(w->n + 1, 1);
    char **servers;
    size_t k = 0;
    int changed = replication != a->replication;

    for (unsigned r = 0; r < NR; r++)
        for (unsigned q = 0; q < w->cnt[r]; q++)
            used[w->rep[r][q]] = 1;
    for (size_t s = 0; s < w->n; s++)
        if (used[s] || w->alive[s])
            union_to_new[s] = (uint16_t)k++;
    if (k > KEEL_ASSIGN_MAX_SERVERS) {
        free(used);
        free(union_to_new);
        return keel_err_set(err, KEEL_EINVAL,
                            "assignment: %zu servers live or holding a waiting range, at most %d "
                            "are supported",
                            k, KEEL_ASSIGN_MAX_SERVERS);
    }
    servers = keel_calloc(k ? k : 1, sizeof(char *));
    k = 0;
    for (size_t s = 0; s < w->n; s++)
        if (used[s] || w->alive[s])
            servers[k++] = keel_strdup(w->ids[s]);
    changed |= k != a->nservers;
    for (size_t i = 0; i < k && !changed; i++)
        changed = strcmp(servers[i], a->servers[i]) != 0;
    for (unsigned r = 0; r < NR && !changed; r++)
        changed = w->cnt[r] != w->pcnt[r] || w->insync[r] != a->insync[r] ||
                  w->term[r] != a->term[r] ||
                  memcmp(w->rep[r], w->prev[r], w->cnt[r] * sizeof(uint16_t)) != 0;
    st->changed = changed;
    if (changed) {
        for (size_t i = 0; i < a->nservers; i++)
            free(a->servers[i]);
        free(a->servers);
        a->servers = servers;
        a->nservers = k;
        a->replication = replication;
        a->version = w->version;
        for (unsigned r = 0; r < NR; r++) {
            a->count[r] = w->cnt[r];
            a->insync[r] = w->insync[r];
            a->term[r] = w->term[r];
            for (unsigned q = 0; q < w->cnt[r]; q++)
                a->replica[r][q] = union_to_new[w->rep[r][q]];
        }
    } else {
        for (size_t i = 0; i < k; i++)
            free(servers[i]);
        free(servers);
    }
    free(used);
    free(union_to_new);
    return 0;
}

int keel_assign_failover(keel_assign *a, unsigned replication, const char *const *live,
                         size_t nlive, const struct keel_assign_synced *synced, size_t nsynced,
                         struct keel_assign_stats *stats, struct keel_error *err)
{
    struct keel_assign_stats st;
    struct fo *w;
    const char **ids;
    uint16_t *old_to_union;
    long *sidx;
    unsigned want;
    int rc;

    memset(&st, 0, sizeof(st));
    if (replication < 1 || replication > MAXR)
        return keel_err_set(err, KEEL_EINVAL, "assignment: replication must be 1-%d, got %u", MAXR,
                            replication);
    ids = keel_assign_sorted_ids(live, nlive, err);
    if (ids == NULL)
        return err ? err->code : KEEL_EINVAL;

    w = keel_calloc(1, sizeof(*w));
    w->ids = keel_calloc(a->nservers + nlive + 1, sizeof(char *));
    w->alive = keel_calloc(a->nservers + nlive + 1, 1);
    old_to_union = keel_calloc(a->nservers + 1, sizeof(uint16_t));
    merge_servers(w, a, ids, nlive, old_to_union);
    w->load = keel_calloc(w->n + 1, sizeof(unsigned));
    w->pri = keel_calloc(w->n + 1, sizeof(unsigned));
    w->version = a->version + 1;
    for (unsigned r = 0; r < NR; r++) {
        w->pcnt[r] = w->cnt[r] = a->count[r];
        w->insync[r] = a->insync[r];
        w->term[r] = a->term[r];
        for (unsigned k = 0; k < a->count[r]; k++)
            w->prev[r][k] = w->rep[r][k] = old_to_union[a->replica[r][k]];
    }
    sidx = keel_calloc(nsynced + 1, sizeof(long));
    for (size_t j = 0; j < nsynced; j++)
        sidx[j] = keel_id_find(w->ids, w->n, synced[j].id);

    for (unsigned r = 0; r < NR; r++) {
        demote_lost(w, r, synced, sidx, nsynced);
        drop_dead(w, r);
    }
    /* Loads count every set, waiting ones too, before any is trimmed or filled. */
    for (unsigned r = 0; r < NR; r++)
        for (unsigned k = 0; k < w->cnt[r]; k++) {
            w->load[w->rep[r][k]]++;
            w->pri[w->rep[r][k]] += k == 0;
        }
    want = replication < nlive ? replication : (unsigned)nlive;
    for (unsigned r = 0; r < NR; r++)
        if (!w->lost[r])
            trim(w, r, replication);
    for (unsigned r = 0; r < NR; r++)
        if (!w->lost[r]) {
            fill(w, r, want);
            catch_up(w, r, synced, sidx, nsynced);
        }

    count_changes(w, &st);
    rc = write_back(w, a, replication, &st, err);
    if (rc == 0 && stats)
        *stats = st;

    free(sidx);
    free(old_to_union);
    free(w->pri);
    free(w->load);
    free(w->alive);
    free(w->ids);
    free(w);
    free(ids);
    return rc;
}

int keel_assign_lost(const keel_assign *a, unsigned range, const struct keel_assign_synced *synced,
                     size_t nsynced)
{
    if (range >= NR || a->insync[range] == 0)
        return 0;
    for (unsigned i = 0; i < a->insync[range]; i++) {
        const char *id = a->servers[a->replica[range][i]];
        size_t j;

        for (j = 0; j < nsynced; j++)
            if (strcmp(synced[j].id, id) == 0 && synced[j].lost != NULL && synced[j].lost[range])
                break;
        if (j == nsynced)
            return 0;
    }
    return 1;
}

/*
 * `n` ranges, those marked in changed[], have a new primary: when any, the
 * version rises once and each of them takes it as its term.  Returns n.
 */
static unsigned new_primaries(keel_assign *a, const unsigned char *changed, unsigned n,
                              struct keel_assign_stats *stats)
{
    if (n > 0) {
        a->version++;
        for (unsigned r = 0; r < NR; r++)
            if (changed[r])
                a->term[r] = a->version;
    }
    if (stats) {
        memset(stats, 0, sizeof(*stats));
        stats->changed = n > 0;
        stats->primary_changes = n;
    }
    return n;
}

static int is_live(const char *id, const char *const *live, size_t nlive)
{
    for (size_t j = 0; j < nlive; j++)
        if (live[j] != NULL && strcmp(live[j], id) == 0)
            return 1;
    return 0;
}

int keel_assign_waiting(const keel_assign *a, unsigned r, const char *const *live, size_t nlive)
{
    if (r >= NR || a->count[r] == 0 || a->insync[r] == 0)
        return 0;
    for (unsigned i = 0; i < a->insync[r]; i++)
        if (is_live(a->servers[a->replica[r][i]], live, nlive))
            return 0;
    return 1;
}

unsigned keel_assign_restore_from_stores(keel_assign *a, const char *const *live, size_t nlive,
                                         const struct keel_assign_synced *synced, size_t nsynced,
                                         const unsigned char *waited, const unsigned char *rowless,
                                         struct keel_assign_stats *stats)
{
    unsigned pri[KEEL_ASSIGN_MAX_SERVERS] = {0}, moved = 0;
    unsigned char changed[NR] = {0};

    for (unsigned r = 0; r < NR; r++)
        if (a->count[r] > 0 && a->replica[r][0] < KEEL_ASSIGN_MAX_SERVERS)
            pri[a->replica[r][0]]++;
    for (unsigned r = 0; r < NR; r++) {
        long best = -1;
        uint64_t best_lsn = 0;
        uint16_t set[MAXR];
        unsigned n = 0;

        if (!waited[r] || !keel_assign_waiting(a, r, live, nlive))
            continue;
        for (size_t j = 0; j < nsynced; j++) {
            const struct keel_replica_report *p = synced[j].report;
            long s;

            if (p == NULL || p->stored[r] == 0 || !is_live(synced[j].id, live, nlive) ||
                (s = keel_id_find((const char *const *)a->servers, a->nservers, synced[j].id)) < 0)
                continue;
            if (best < 0 || p->stored[r] > best_lsn ||
                (p->stored[r] == best_lsn &&
                 (pri[s] < pri[best] ||
                  (pri[s] == pri[best] && strcmp(a->servers[s], a->servers[best]) < 0)))) {
                best = s;
                best_lsn = p->stored[r];
            }
        }
        /* No row, no state: the live server leading the fewest ranges (ids are sorted). */
        for (size_t s = 0; best < 0 && rowless[r] && s < a->nservers; s++)
            if (is_live(a->servers[s], live, nlive))
                best = (long)s;
        for (size_t s = (size_t)best + 1; best >= 0 && rowless[r] && s < a->nservers; s++)
            if (is_live(a->servers[s], live, nlive) && pri[s] < pri[best])
                best = (long)s;
        if (best < 0)
            continue;
        set[n++] = (uint16_t)best;
        for (unsigned k = a->insync[r]; k < a->count[r]; k++)
            if (a->replica[r][k] != (uint16_t)best &&
                is_live(a->servers[a->replica[r][k]], live, nlive))
                set[n++] = a->replica[r][k];
        memcpy(a->replica[r], set, n * sizeof(uint16_t));
        a->count[r] = (uint8_t)n;
        a->insync[r] = 1;
        pri[best]++;
        changed[r] = 1;
        moved++;
    }
    return new_primaries(a, changed, moved, stats);
}

unsigned keel_assign_balance_primaries(keel_assign *a, const char *const *live, size_t nlive,
                                       struct keel_assign_stats *stats)
{
    unsigned char alive[KEEL_ASSIGN_MAX_SERVERS] = {0}, swapped[NR] = {0};
    unsigned pri[KEEL_ASSIGN_MAX_SERVERS] = {0}, total = 0, nalive = 0, hi, nswaps = 0;

    for (size_t i = 0; i < a->nservers && i < KEEL_ASSIGN_MAX_SERVERS; i++)
        for (size_t j = 0; j < nlive; j++)
            if (live[j] != NULL && strcmp(a->servers[i], live[j]) == 0) {
                alive[i] = 1;
                nalive++;
                break;
            }
    for (unsigned r = 0; r < NR; r++)
        if (a->count[r] > 0 && alive[a->replica[r][0]]) {
            pri[a->replica[r][0]]++;
            total++;
        }
    if (nalive < 2)
        return 0;
    hi = (total + nalive - 1) / nalive; /* ceil: the most primaries a server should lead */
    for (unsigned r = 0; r < NR; r++) {
        uint16_t p = a->count[r] ? a->replica[r][0] : NONE, b = NONE;
        unsigned k, bk = 0;

        if (p == NONE || !alive[p] || pri[p] <= hi)
            continue;
        for (k = 1; k < a->insync[r]; k++) {
            uint16_t s = a->replica[r][k];

            if (alive[s] && pri[s] + 1 < pri[p] && (b == NONE || pri[s] < pri[b])) {
                b = s;
                bk = k;
            }
        }
        if (b == NONE)
            continue;
        /* [b, p, the other in-sync backups, the syncing backups]: as many in sync. */
        {
            uint16_t set[MAXR];
            unsigned n = 0;

            set[n++] = b;
            set[n++] = p;
            for (k = 1; k < a->insync[r]; k++)
                if (k != bk)
                    set[n++] = a->replica[r][k];
            memcpy(a->replica[r], set, n * sizeof(uint16_t));
        }
        pri[p]--;
        pri[b]++;
        swapped[r] = 1;
        nswaps++;
    }
    return new_primaries(a, swapped, nswaps, stats);
}
