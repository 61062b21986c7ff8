/*
 * test_assign.c - the key -> range map and the assignment table: fixed
 * cases, seeded random sequences of joins and leaves checked against every
 * invariant after every step, and the JSON codec.
 *
 * The random tests print their seed; set KEEL_TEST_SEED to replay one.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "keel/assign.h"
#include "keel/range.h"

#define NR KEEL_PROTO_NRANGES

/* ---- helpers ------------------------------------------------------------ */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static unsigned rng_below(uint64_t *s, unsigned n)
{
    return (unsigned)(rng_next(s) % n);
}

static uint64_t test_seed(uint64_t fallback)
{
    const char *env = getenv("KEEL_TEST_SEED");

    return env && *env ? strtoull(env, NULL, 0) : fallback;
}

static unsigned min_u(unsigned a, unsigned b)
{
    return a < b ? a : b;
}

static unsigned ceil_div(unsigned a, unsigned b)
{
    return (a + b - 1) / b;
}

/* A set of server ids drawn from a pool of names. */
#define POOL 64
static char pool[POOL][16];

static void init_pool(void)
{
    for (int i = 0; i < POOL; i++)
        snprintf(pool[i], sizeof(pool[i]), "s%02d", i);
}

struct members {
    int live[POOL];
    unsigned n;
};

static size_t member_ids(const struct members *m, const char **ids)
{
    size_t k = 0;

    for (int i = 0; i < POOL; i++)
        if (m->live[i])
            ids[k++] = pool[i];
    return k;
}

/* Whether `id` is in replica set `set` of `n`. */
static int has(const char *const *set, size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(set[i], id) == 0)
            return 1;
    return 0;
}

/* The state of every invariant of a table, for the live set `m`. */
static void check_table(const keel_assign *a, const struct members *m, int check_primaries,
                        const char *ctx)
{
    const char *ids[POOL], *set[KEEL_ASSIGN_MAX_REPLICATION];
    size_t n = member_ids(m, ids);
    unsigned r = keel_assign_replication(a), reff = min_u(r, (unsigned)n);
    unsigned load[POOL] = {0}, pri[POOL] = {0};

    cr_assert_eq(keel_assign_server_count(a), n, "%s: server count", ctx);
    for (size_t i = 0; i < n; i++)
        cr_assert_str_eq(keel_assign_server(a, i), ids[i], "%s: server %zu", ctx, i);
    for (unsigned rg = 0; rg < NR; rg++) {
        size_t c = keel_assign_replicas(a, rg, set, KEEL_ASSIGN_MAX_REPLICATION);

        cr_assert_eq(c, reff, "%s: range %u has %zu replicas, want min(%u, %zu)", ctx, rg, c, r, n);
        for (size_t i = 0; i < c; i++) {
            int idx = atoi(set[i] + 1);

            cr_assert(m->live[idx], "%s: range %u on dead server %s", ctx, rg, set[i]);
            for (size_t j = 0; j < i; j++)
                cr_assert_str_neq(set[i], set[j], "%s: range %u lists %s twice", ctx, rg, set[i]);
            load[idx]++;
            pri[idx] += i == 0;
        }
    }
    if (n == 0)
        return;
    for (size_t i = 0; i < n; i++) {
        int idx = atoi(ids[i] + 1);
        unsigned lo = NR * reff / (unsigned)n, hi = ceil_div(NR * reff, (unsigned)n);
        unsigned lr, lp;

        cr_assert(load[idx] >= lo && load[idx] <= hi,
                  "%s: %s holds %u replicas, want %u..%u (N=%zu r=%u)", ctx, ids[i], load[idx], lo,
                  hi, n, r);
        cr_assert(load[idx] <= ceil_div(NR * r, (unsigned)n) + 1, "%s: issue bound", ctx);
        cr_assert(!check_primaries || pri[idx] <= ceil_div(NR, (unsigned)n) + 1,
                  "%s: %s is primary of %u ranges, bound %u (N=%zu r=%u)", ctx, ids[i], pri[idx],
                  ceil_div(NR, (unsigned)n) + 1, n, r);
        keel_assign_load(a, ids[i], &lr, &lp);
        cr_assert_eq(lr, load[idx], "%s: keel_assign_load replicas", ctx);
        cr_assert_eq(lp, pri[idx], "%s: keel_assign_load primaries", ctx);
    }
}

/* Primaries within the bound ceil(256/N) + 1. */
static int primaries_bounded(const keel_assign *a)
{
    size_t n = keel_assign_server_count(a);

    for (size_t i = 0; i < n; i++) {
        unsigned lp;

        keel_assign_load(a, keel_assign_server(a, i), NULL, &lp);
        if (lp > ceil_div(NR, (unsigned)n) + 1)
            return 0;
    }
    return 1;
}

/* Primaries within floor/ceil of 256/N (the target, not always the guarantee). */
static int primaries_even(const keel_assign *a)
{
    size_t n = keel_assign_server_count(a);

    for (size_t i = 0; i < n; i++) {
        unsigned lp;

        keel_assign_load(a, keel_assign_server(a, i), NULL, &lp);
        if (lp < NR / n || lp > ceil_div(NR, (unsigned)n))
            return 0;
    }
    return 1;
}

struct change_counts {
    unsigned placed, removed;
    unsigned placed_off_joiner; /* placements on a server that was in the old table */
};

/*
 * Compare a table before and after one change to live set `after` and check
 * promotion and continuity; return the movement counts.
 */
static struct change_counts check_change(const keel_assign *before, const keel_assign *after,
                                         const struct members *was, const struct members *now,
                                         int single, const char *ctx)
{
    struct change_counts cc = {0, 0, 0};
    unsigned reff_after = min_u(keel_assign_replication(after), now->n);

    for (unsigned rg = 0; rg < NR; rg++) {
        const char *b[KEEL_ASSIGN_MAX_REPLICATION], *a[KEEL_ASSIGN_MAX_REPLICATION];
        size_t nb = keel_assign_replicas(before, rg, b, KEEL_ASSIGN_MAX_REPLICATION);
        size_t na = keel_assign_replicas(after, rg, a, KEEL_ASSIGN_MAX_REPLICATION);
        int prev_alive = 0;

        for (size_t i = 0; i < na; i++)
            if (!has(b, nb, a[i])) {
                cc.placed++;
                if (was->live[atoi(a[i] + 1)])
                    cc.placed_off_joiner++;
            }
        for (size_t i = 0; i < nb; i++) {
            cc.removed += !has(a, na, b[i]);
            prev_alive |= now->live[atoi(b[i] + 1)];
        }
        if (nb == 0 || na == 0)
            continue;
        /* Promotion: the primary left and a backup survived -> a backup leads. */
        if (!now->live[atoi(b[0] + 1)]) {
            int backup_alive = 0;

            for (size_t i = 1; i < nb; i++)
                backup_alive |= now->live[atoi(b[i] + 1)];
            if (backup_alive)
                cr_assert(has(b + 1, nb - 1, a[0]),
                          "%s: range %u: primary %s left, new primary %s was not its backup", ctx,
                          rg, b[0], a[0]);
        }
        /* Continuity: the new primary had the data, or the old one is alive to copy from. */
        if (prev_alive)
            cr_assert(has(b, nb, a[0]) || now->live[atoi(b[0] + 1)],
                      "%s: range %u: new primary %s was no replica and old primary %s is gone", ctx,
                      rg, a[0], b[0]);
        /* One join or leave: the old primary even stays in the set, and so does some replica. */
        if (single && prev_alive && reff_after >= 2) {
            int kept = 0;

            cr_assert(has(b, nb, a[0]) || has(a + 1, na - 1, b[0]),
                      "%s: range %u: new primary %s was no replica and old primary %s left the set",
                      ctx, rg, a[0], b[0]);
            for (size_t i = 0; i < na; i++)
                kept |= has(b, nb, a[i]);
            cr_assert(kept, "%s: range %u kept none of its live replicas", ctx, rg);
        }
    }
    return cc;
}

/* Whether two tables are equal in everything but their versions. */
static int same_but_version(const keel_assign *x, const keel_assign *y)
{
    size_t n = keel_assign_server_count(x);

    if (n != keel_assign_server_count(y) ||
        keel_assign_replication(x) != keel_assign_replication(y))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (strcmp(keel_assign_server(x, i), keel_assign_server(y, i)) != 0)
            return 0;
    for (unsigned rg = 0; rg < NR; rg++) {
        const char *a[KEEL_ASSIGN_MAX_REPLICATION], *b[KEEL_ASSIGN_MAX_REPLICATION];
        size_t na = keel_assign_replicas(x, rg, a, KEEL_ASSIGN_MAX_REPLICATION);

        if (na != keel_assign_replicas(y, rg, b, KEEL_ASSIGN_MAX_REPLICATION))
            return 0;
        for (size_t i = 0; i < na; i++)
            if (strcmp(a[i], b[i]) != 0)
                return 0;
    }
    return 1;
}

/* Version: +1 when the table (version aside) changed, else the same. */
static void check_version(const keel_assign *before, const keel_assign *after,
                          const struct keel_assign_stats *st, const char *ctx)
{
    if (same_but_version(before, after)) {
        cr_assert_eq(keel_assign_version(after), keel_assign_version(before),
                     "%s: unchanged table got a new version", ctx);
        cr_assert(!st->changed, "%s", ctx);
    } else {
        cr_assert_eq(keel_assign_version(after), keel_assign_version(before) + 1,
                     "%s: changed table kept its version", ctx);
        cr_assert(st->changed, "%s", ctx);
    }
}

/* After a rebalance every replica is in sync, and only a new primary starts a term. */
static void check_terms(const keel_assign *before, const keel_assign *after, const char *ctx)
{
    for (unsigned rg = 0; rg < NR; rg++) {
        const char *set[KEEL_ASSIGN_MAX_REPLICATION];
        const char *pb = keel_assign_primary(before, rg), *pa = keel_assign_primary(after, rg);
        size_t c = keel_assign_replicas(after, rg, set, KEEL_ASSIGN_MAX_REPLICATION);
        uint64_t want = pa == NULL                     ? 0
                        : pb == NULL || strcmp(pa, pb) ? keel_assign_version(after)
                                                       : keel_assign_term(before, rg);

        cr_assert_eq(keel_assign_insync(after, rg), c, "%s: range %u: %u of %zu in sync", ctx, rg,
                     keel_assign_insync(after, rg), c);
        for (size_t i = 0; i < c; i++)
            cr_assert(keel_assign_is_insync(after, rg, set[i]), "%s: range %u: %s", ctx, rg,
                      set[i]);
        cr_assert_eq(keel_assign_term(after, rg), want,
                     "%s: range %u: term %" PRIu64 ", want %" PRIu64, ctx, rg,
                     keel_assign_term(after, rg), want);
    }
}

static void check_roundtrip(const keel_assign *a, const char *ctx)
{
    struct keel_buf b = KEEL_BUF_INIT, b2 = KEEL_BUF_INIT;
    struct keel_error err;
    keel_assign *d = NULL;

    keel_error_init(&err);
    keel_assign_encode(a, &b);
    cr_assert_eq(keel_assign_decode(b.buf, b.len, &d, &err), 0, "%s: decode: %s", ctx, err.msg);
    cr_assert(keel_assign_equal(a, d), "%s: decoded table differs", ctx);
    keel_assign_encode(d, &b2);
    cr_assert_eq(b.len, b2.len, "%s", ctx);
    cr_assert(memcmp(b.buf, b2.buf, b.len) == 0, "%s: encoding is not canonical", ctx);
    keel_assign_free(d);
    keel_buf_release(&b);
    keel_buf_release(&b2);
}

TestSuite(range);
TestSuite(assign, .init = init_pool);

/* ---- the key -> range map ----------------------------------------------- */

Test(range, keys_are_table_and_row)
{
    uint64_t k = keel_key_make(3, 12345);

    cr_assert_eq(k, (UINT64_C(3) << 48) | 12345);
    cr_assert_eq(keel_key_table(k), 3);
    cr_assert_eq(keel_key_row(k), 12345);
}

Test(range, rows_of_a_table_spread_evenly_over_all_ranges)
{
    unsigned hits[NR] = {0};
    const unsigned rows = 256 * 1000;

    for (unsigned t = 1; t <= 3; t++) {
        memset(hits, 0, sizeof(hits));
        for (unsigned row = 0; row < rows; row++) {
            unsigned r = keel_range_of(keel_key_make((uint16_t)t, row));

            cr_assert_lt(r, NR);
            hits[r]++;
        }
        /* 1000 expected per range; a binomial spread stays far inside +-15%. */
        for (unsigned r = 0; r < NR; r++)
            cr_assert(hits[r] > 850 && hits[r] < 1150, "table %u range %u has %u of %u rows", t, r,
                      hits[r], rows);
    }
}

Test(range, the_map_is_fixed)
{
    /* The map is part of the persistent format: these values must never change. */
    cr_assert_eq(keel_range_of(0), 0xaf);
    cr_assert_eq(keel_range_of(1), 0xc1);
    cr_assert_eq(keel_range_of(keel_key_make(2, 5)), 0x51);
    cr_assert_eq(keel_range_of(keel_key_make(1, 0)), 0x50);
}

/* ---- fixed cases -------------------------------------------------------- */

Test(assign, new_table_is_empty)
{
    keel_assign *a = keel_assign_new(3);

    cr_assert_not_null(a);
    cr_assert_eq(keel_assign_version(a), 0);
    cr_assert_eq(keel_assign_server_count(a), 0);
    cr_assert_null(keel_assign_primary(a, 0));
    cr_assert_null(keel_assign_new(0));
    cr_assert_null(keel_assign_new(KEEL_ASSIGN_MAX_REPLICATION + 1));
    keel_assign_free(a);
}

Test(assign, first_server_takes_every_range)
{
    keel_assign *a = keel_assign_new(3);
    struct keel_assign_stats st;
    unsigned rep, pri;

    cr_assert_eq(keel_assign_join(a, "s1", &st, NULL), 0);
    cr_assert_eq(keel_assign_version(a), 1);
    cr_assert_eq(st.placed, NR);
    keel_assign_load(a, "s1", &rep, &pri);
    cr_assert_eq(rep, NR);
    cr_assert_eq(pri, NR);
    cr_assert_str_eq(keel_assign_primary(a, 200), "s1");
    keel_assign_free(a);
}

Test(assign, three_servers_replication_two)
{
    static const char *const live[] = {"b", "a", "c"};
    keel_assign *a = keel_assign_new(2);
    struct keel_error err;
    unsigned rep, pri;

    keel_error_init(&err);
    cr_assert_eq(keel_assign_update(a, live, 3, NULL, &err), 0, "%s", err.msg);
    cr_assert_str_eq(keel_assign_server(a, 0), "a");
    for (int i = 0; i < 3; i++) {
        keel_assign_load(a, live[i], &rep, &pri);
        cr_assert(rep == 170 || rep == 171, "%s holds %u", live[i], rep);
        cr_assert(pri == 85 || pri == 86, "%s leads %u", live[i], pri);
    }
    keel_assign_free(a);
}

Test(assign, leaving_primary_is_replaced_by_its_backup)
{
    static const char *const live[] = {"s1", "s2", "s3", "s4"};
    keel_assign *a = keel_assign_new(2);
    keel_assign *before;
    struct keel_assign_stats st;
    unsigned held;

    cr_assert_eq(keel_assign_update(a, live, 4, NULL, NULL), 0);
    before = keel_assign_clone(a);
    keel_assign_load(a, "s2", &held, NULL);
    cr_assert_eq(keel_assign_leave(a, "s2", &st, NULL), 0);
    for (unsigned r = 0; r < NR; r++) {
        const char *b[2];

        keel_assign_replicas(before, r, b, 2);
        if (strcmp(b[0], "s2") == 0)
            cr_assert_str_eq(keel_assign_primary(a, r), b[1], "range %u", r);
        cr_assert_eq(keel_assign_position(a, r, "s2"), -1);
    }
    cr_assert_eq(st.placed, held, "a leave places exactly one replica per range it held");
    cr_assert_eq(st.removed, held);
    cr_assert_eq(keel_assign_version(a), keel_assign_version(before) + 1);
    keel_assign_free(before);
    keel_assign_free(a);
}

Test(assign, no_change_keeps_the_version)
{
    static const char *const live[] = {"s1", "s2"};
    keel_assign *a = keel_assign_new(2);
    struct keel_assign_stats st;

    cr_assert_eq(keel_assign_update(a, live, 2, NULL, NULL), 0);
    cr_assert_eq(keel_assign_version(a), 1);
    cr_assert_eq(keel_assign_update(a, live, 2, &st, NULL), 0);
    cr_assert_eq(keel_assign_version(a), 1);
    cr_assert(!st.changed);
    cr_assert_eq(st.placed + st.removed + st.primary_changes, 0);
    keel_assign_free(a);
}

Test(assign, last_server_leaving_empties_every_range)
{
    keel_assign *a = keel_assign_new(1);

    cr_assert_eq(keel_assign_join(a, "s1", NULL, NULL), 0);
    cr_assert_eq(keel_assign_leave(a, "s1", NULL, NULL), 0);
    cr_assert_eq(keel_assign_server_count(a), 0);
    cr_assert_null(keel_assign_primary(a, 5));
    cr_assert_eq(keel_assign_version(a), 2);
    check_roundtrip(a, "empty");
    keel_assign_free(a);
}

Test(assign, bad_ids_and_duplicates_are_refused)
{
    static const char *const dup[] = {"s1", "s2", "s1"};
    static const char *const bad[] = {"s1", "no/slash"};
    keel_assign *a = keel_assign_new(2);
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_eq(keel_assign_update(a, dup, 3, NULL, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "'s1' is listed twice"), "%s", err.msg);
    cr_assert_eq(keel_assign_update(a, bad, 2, NULL, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "'no/slash'"), "%s", err.msg);
    cr_assert_eq(keel_assign_version(a), 0, "a refused update changes nothing");
    cr_assert_eq(keel_assign_join(a, "s1", NULL, &err), 0);
    cr_assert_eq(keel_assign_join(a, "s1", NULL, &err), KEEL_EEXIST);
    cr_assert_eq(keel_assign_leave(a, "zz", NULL, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "'zz'"), "%s", err.msg);
    keel_assign_free(a);
}

Test(assign, replication_change_adds_and_drops_backups_only)
{
    static const char *const live[] = {"s1", "s2", "s3", "s4", "s5"};
    keel_assign *a = keel_assign_new(1);
    keel_assign *before;
    struct keel_assign_stats st;
    struct members m = {{0}, 0};

    for (int i = 1; i <= 5; i++) {
        m.live[i] = 1;
        m.n++;
        snprintf(pool[i], sizeof(pool[i]), "s%d", i);
    }
    cr_assert_eq(keel_assign_update(a, live, 5, NULL, NULL), 0);
    before = keel_assign_clone(a);
    cr_assert_eq(keel_assign_set_replication(a, 3, &st, NULL), 0);
    cr_assert_eq(st.placed, 2 * NR);
    cr_assert_eq(st.removed, 0);
    check_table(a, &m, 1, "r 1->3");
    for (unsigned r = 0; r < NR; r++)
        cr_assert_str_eq(keel_assign_primary(a, r), keel_assign_primary(before, r));
    keel_assign_free(before);
    before = keel_assign_clone(a);
    cr_assert_eq(keel_assign_set_replication(a, 2, &st, NULL), 0);
    cr_assert_eq(st.placed, 0);
    cr_assert_eq(st.removed, NR);
    check_table(a, &m, 1, "r 3->2");
    for (unsigned r = 0; r < NR; r++)
        cr_assert_str_eq(keel_assign_primary(a, r), keel_assign_primary(before, r));
    cr_assert_eq(keel_assign_set_replication(a, 0, NULL, NULL), KEEL_EINVAL);
    keel_assign_free(before);
    keel_assign_free(a);
}

/* ---- seeded random sequences -------------------------------------------- */

/*
 * Bounds on the old replicas a leave of pool[leaver] must move, besides the
 * one new replica per range the leaver held (live set `m` still has it), to
 * reach the new balance [lo, hi]:
 *  - lower: a survivor can gain at most one new replica per range of the
 *    leaver it is not already in, so whatever else it needs to reach lo must
 *    be old replicas moving to it;
 *  - upper (what the tests hold the rebalancer to): the survivors' total
 *    shortfall below lo before the leave; each old replica moved must make up
 *    for a unit of it that the leaver's replicas could not reach.
 */
struct leave_bounds {
    unsigned lower, shortfall;
};

static struct leave_bounds leave_extra_bounds(const keel_assign *a, const struct members *m,
                                              int leaver)
{
    struct leave_bounds lb = {0, 0};
    unsigned n = m->n - 1, r = keel_assign_replication(a), reff = min_u(r, n);
    unsigned lo, hi, deficit = 0, surplus = 0;

    if (n == 0 || n < r)
        return lb;
    lo = NR * reff / n;
    hi = ceil_div(NR * reff, n);
    for (int s = 0; s < POOL; s++) {
        unsigned held, can_gain = 0;

        if (!m->live[s] || s == leaver)
            continue;
        keel_assign_load(a, pool[s], &held, NULL);
        for (unsigned rg = 0; rg < NR; rg++)
            if (keel_assign_position(a, rg, pool[leaver]) >= 0 &&
                keel_assign_position(a, rg, pool[s]) < 0)
                can_gain++;
        if (held + can_gain < lo)
            deficit += lo - held - can_gain;
        if (held > hi)
            surplus += held - hi;
        if (held < lo)
            lb.shortfall += lo - held;
    }
    lb.lower = deficit > surplus ? deficit : surplus;
    return lb;
}

struct seq_totals {
    unsigned steps, joins, leaves, uneven_primaries, leaves_with_moves, max_leave_excess, settles;
};

/*
 * One sequence: a random replication, then `steps` random changes.  After
 * each: the table invariants, promotion and continuity, the version rule,
 * the JSON round trip, and the movement bounds:
 *   join:  every new replica is on the joining server, and there are at most
 *          ceil(256 * min(r, N) / N) of them (what balance needs it to hold);
 *   leave: one new replica per range the leaver held (none when N falls
 *          below r), plus old replicas moved to restore balance: at least
 *          the lower bound and at most the survivors' shortfall (above).
 */
static void run_sequence(uint64_t seed, unsigned steps, struct seq_totals *tot)
{
    uint64_t s = seed;
    unsigned r = 1 + rng_below(&s, KEEL_ASSIGN_MAX_REPLICATION);
    unsigned maxn = 2 + rng_below(&s, 30);
    keel_assign *a = keel_assign_new(r);
    struct members m = {{0}, 0};
    char ctx[160];

    for (unsigned step = 0; step < steps; step++) {
        struct members was = m;
        keel_assign *before = keel_assign_clone(a);
        struct keel_assign_stats st;
        struct keel_error err;
        unsigned op = rng_below(&s, 20), who = rng_below(&s, POOL);
        int join = -1, leave = -1;
        unsigned leaver_held = 0;
        struct leave_bounds lb = {0, 0};

        keel_error_init(&err);
        if (op == 0) { /* change the replication */
            r = 1 + rng_below(&s, KEEL_ASSIGN_MAX_REPLICATION);
            snprintf(ctx, sizeof(ctx), "seed %" PRIu64 " step %u: replication -> %u", seed, step,
                     r);
            cr_assert_eq(keel_assign_set_replication(a, r, &st, &err), 0, "%s: %s", ctx, err.msg);
        } else if (op == 1) { /* several changes at once */
            const char *ids[POOL];
            size_t n;

            for (unsigned k = 1 + rng_below(&s, 4); k > 0; k--) {
                who = rng_below(&s, POOL);
                if (m.live[who] || m.n < maxn) {
                    m.n += m.live[who] ? -1u : 1u;
                    m.live[who] = !m.live[who];
                }
            }
            n = member_ids(&m, ids);
            snprintf(ctx, sizeof(ctx), "seed %" PRIu64 " step %u: update to %zu servers", seed,
                     step, n);
            cr_assert_eq(keel_assign_update(a, ids, n, &st, &err), 0, "%s: %s", ctx, err.msg);
        } else {
            /* Joins while small, leaves when full, either in between. */
            int want_join = m.n == 0 || (m.n < maxn && rng_below(&s, 2) == 0);

            while (m.live[who] == want_join)
                who = rng_below(&s, POOL);
            if (m.live[who]) {
                leave = (int)who;
                keel_assign_load(a, pool[who], &leaver_held, NULL);
                lb = leave_extra_bounds(a, &m, (int)who);
                m.live[who] = 0;
                m.n--;
                snprintf(ctx, sizeof(ctx), "seed %" PRIu64 " step %u: %s leaves (N=%u r=%u)", seed,
                         step, pool[who], m.n, r);
                cr_assert_eq(keel_assign_leave(a, pool[who], &st, &err), 0, "%s: %s", ctx, err.msg);
                tot->leaves++;
            } else {
                join = (int)who;
                m.live[who] = 1;
                m.n++;
                snprintf(ctx, sizeof(ctx), "seed %" PRIu64 " step %u: %s joins (N=%u r=%u)", seed,
                         step, pool[who], m.n, r);
                cr_assert_eq(keel_assign_join(a, pool[who], &st, &err), 0, "%s: %s", ctx, err.msg);
                tot->joins++;
            }
        }
        check_table(a, &m, op != 1, ctx);
        check_version(before, a, &st, ctx);
        check_terms(before, a, ctx);
        {
            struct change_counts cc =
                check_change(before, a, &was, &m, join >= 0 || leave >= 0, ctx);
            unsigned reff = min_u(r, m.n);

            cr_assert_eq(cc.placed, st.placed, "%s: stats.placed", ctx);
            cr_assert_eq(cc.removed, st.removed, "%s: stats.removed", ctx);
            if (join >= 0) {
                cr_assert_eq(cc.placed_off_joiner, 0, "%s: a join placed replicas elsewhere", ctx);
                cr_assert_leq(cc.placed, ceil_div(NR * reff, m.n), "%s: join placed %u", ctx,
                              cc.placed);
            }
            if (leave >= 0) {
                unsigned need = m.n >= r ? leaver_held : 0;

                cr_assert_geq(cc.placed, need + lb.lower, "%s: fewer than necessary?", ctx);
                cr_assert_leq(cc.placed, need + lb.shortfall,
                              "%s: leave of a server holding %u placed %u, bound %u", ctx,
                              leaver_held, cc.placed, need + lb.shortfall);
                if (cc.placed > need) {
                    tot->leaves_with_moves++;
                    if (cc.placed - need - lb.lower > tot->max_leave_excess)
                        tot->max_leave_excess = cc.placed - need - lb.lower;
                }
            }
        }
        if (m.n > 0 && !primaries_even(a))
            tot->uneven_primaries++;
        if (!primaries_bounded(a)) {
            /* Several changes at once: promotions may pile primaries up; settling fixes it. */
            keel_assign *mid = keel_assign_clone(a);
            const char *ids[POOL];
            size_t n = member_ids(&m, ids);

            tot->settles++;
            cr_assert_eq(keel_assign_update(a, ids, n, &st, NULL), 0);
            strncat(ctx, " (settling)", sizeof(ctx) - strlen(ctx) - 1);
            check_table(a, &m, 1, ctx);
            check_version(mid, a, &st, ctx);
            check_terms(mid, a, ctx);
            check_change(mid, a, &m, &m, 0, ctx);
            cr_assert_eq(st.placed, 0, "%s: settling moved replicas", ctx);
            keel_assign_free(mid);
        }
        if (step % 10 == 9)
            check_roundtrip(a, ctx);
        tot->steps++;
        keel_assign_free(before);
    }
    keel_assign_free(a);
}

Test(assign, random_joins_and_leaves_keep_every_invariant, .timeout = 110)
{
    uint64_t t = (uint64_t)time(NULL), seed = test_seed(rng_next(&t) % 1000000007u);
    struct seq_totals tot = {0, 0, 0, 0, 0, 0, 0};
    const unsigned sequences = 200, steps = 50;

    fprintf(stderr, "assign random test: seed %" PRIu64 " (KEEL_TEST_SEED=%" PRIu64 " to replay)\n",
            seed, seed);
    for (unsigned i = 0; i < sequences; i++)
        run_sequence(seed + i, steps, &tot);
    fprintf(stderr,
            "assign random test: %u sequences, %u steps (%u joins, %u leaves); primaries off "
            "floor/ceil after %u steps; leaves that moved old replicas: %u (at most %u more "
            "than the lower bound); settling calls: %u\n",
            sequences, tot.steps, tot.joins, tot.leaves, tot.uneven_primaries,
            tot.leaves_with_moves, tot.max_leave_excess, tot.settles);
}

/*
 * Sequences whose balance once got stuck (N=4, r=2, several changes at once):
 * the only replicas the loaded server could give the light one were the last
 * copies of their ranges, so one replica has to travel along a chain instead.
 */
Test(assign, chains_of_old_replicas_restore_balance)
{
    static const uint64_t seeds[] = {153372952, 147099979};
    struct seq_totals tot = {0, 0, 0, 0, 0, 0, 0};

    for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++)
        run_sequence(seeds[i], 50, &tot);
    cr_assert_eq(tot.steps, 100);
}

Test(assign, rebalancing_puts_every_replica_in_sync_and_new_primaries_in_a_new_term)
{
    static const char *const two[] = {"s1", "s2"};
    keel_assign *a = keel_assign_new(2);
    unsigned handed = 0;

    cr_assert_eq(keel_assign_join(a, "s1", NULL, NULL), 0);
    for (unsigned rg = 0; rg < NR; rg++) {
        cr_assert_eq(keel_assign_term(a, rg), 1);
        cr_assert_eq(keel_assign_insync(a, rg), 1);
    }
    cr_assert_eq(keel_assign_update(a, two, 2, NULL, NULL), 0);
    cr_assert_eq(keel_assign_version(a), 2);
    for (unsigned rg = 0; rg < NR; rg++) {
        int to_s2 = strcmp(keel_assign_primary(a, rg), "s2") == 0;

        cr_assert_eq(keel_assign_insync(a, rg), 2, "range %u", rg);
        cr_assert(keel_assign_is_insync(a, rg, "s1") && keel_assign_is_insync(a, rg, "s2"));
        cr_assert_eq(keel_assign_term(a, rg), to_s2 ? 2 : 1, "range %u", rg);
        handed += to_s2;
    }
    cr_assert_geq(handed, NR / 2 - 1, "%u primaries handed to s2", handed);
    cr_assert_eq(keel_assign_term(a, NR), 0);
    cr_assert_eq(keel_assign_insync(a, NR), 0);
    cr_assert_not(keel_assign_is_insync(a, 0, "s3"));
    keel_assign_free(a);
}

/* ---- JSON --------------------------------------------------------------- */

Test(assign, encoding_is_canonical_json)
{
    keel_assign *a = keel_assign_new(1);
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_eq(keel_assign_join(a, "s1", NULL, NULL), 0);
    keel_assign_encode(a, &b);
    cr_assert(strncmp((char *)b.buf, "{\"insync\":[1,1,", 15) == 0, "%s", b.buf);
    cr_assert(strstr((char *)b.buf, "1,1],\"ranges\":[[0],[0],"), "%s", b.buf);
    cr_assert(strstr((char *)b.buf, "[0]],\"replication\":1,\"servers\":[\"s1\"],\"terms\":[1,1,"),
              "%s", b.buf);
    cr_assert(strstr((char *)b.buf, "1,1],\"version\":1}"), "%s", b.buf);
    keel_buf_release(&b);
    keel_assign_free(a);
}

struct bad_json {
    char text[200];
    char expect[64]; /* part of the error message */
};

static struct bad_json bad_json_cases[] = {
    {"", "not JSON"},
    {"[]", "not a JSON object"},
    {"{\"version\":1}", "exactly"},
    /* the form before in-sync counts and terms */
    {"{\"ranges\":[],\"replication\":1,\"servers\":[],\"version\":1}", "exactly"},
    {"{\"insync\":[],\"ranges\":[],\"replication\":1,\"servers\":[],\"version\":1}", "exactly"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":[],\"version\":1,"
     "\"x\":1}",
     "exactly"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":[],\"version\":-1}",
     "version"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":[],\"version\":"
     "\"1\"}",
     "version"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":0,\"servers\":[],\"version\":1}",
     "replication"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":6,\"servers\":[],\"version\":1}",
     "replication"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":{},\"version\":1}",
     "servers"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":[\"a "
     "b\"],\"version\":1}",
     "servers[0]"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":[\"b\",\"a\"],"
     "\"version\":1}",
     "servers[1]"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":[\"a\",\"a\"],"
     "\"version\":1}",
     "servers[1]"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"replication\":1,\"servers\":[\"a\"],\"version\":"
     "1}",
     "ranges:"},
    {"{\"insync\":[],\"terms\":[],\"ranges\":[],\"ranges\":[],\"replication\":1,\"servers\":[],"
     "\"version\":1}",
     "not JSON"},
};

ParameterizedTestParameters(assign, decoder_refuses_bad_tables)
{
    return cr_make_param_array(struct bad_json, bad_json_cases,
                               sizeof(bad_json_cases) / sizeof(bad_json_cases[0]));
}

ParameterizedTest(struct bad_json *c, assign, decoder_refuses_bad_tables)
{
    struct keel_error err;
    keel_assign *a = (keel_assign *)1;

    keel_error_init(&err);
    cr_assert_eq(keel_assign_decode(c->text, strlen(c->text), &a, &err), KEEL_ECORRUPT, "%s",
                 c->text);
    cr_assert_null(a);
    cr_assert(strstr(err.msg, c->expect), "'%s' gave '%s'", c->text, err.msg);
    cr_assert(strncmp(err.msg, "assignment: ", 12) == 0, "%s", err.msg);
}

/* Where the element of a JSON array that starts at `p` ends. */
static const char *element_end(const char *p)
{
    return *p == '[' ? strchr(p, ']') + 1 : p + strcspn(p, ",]");
}

/*
 * Replace element 7 of array `key` ("ranges", "insync" or "terms") in an
 * encoded 3-server r=2 table of version 1 by `value`, and decode the result.
 */
static int decode_patched(const char *key, const char *value, struct keel_error *err)
{
    static const char *const live[] = {"a", "b", "c"};
    keel_assign *a = keel_assign_new(2), *d = NULL;
    struct keel_buf b = KEEL_BUF_INIT, t = KEEL_BUF_INIT;
    char pattern[32];
    const char *p;
    int rc;

    cr_assert_eq(keel_assign_update(a, live, 3, NULL, NULL), 0);
    keel_assign_encode(a, &b);
    keel_buf_add(&b, "", 1);
    snprintf(pattern, sizeof(pattern), "\"%s\":[", key);
    p = strstr((char *)b.buf, pattern) + strlen(pattern);
    for (int i = 0; i < 7; i++)
        p = element_end(p) + 1;
    keel_buf_add(&t, b.buf, (size_t)(p - (char *)b.buf));
    keel_buf_add_str(&t, value);
    keel_buf_add_str(&t, element_end(p));
    rc = keel_assign_decode(t.buf, t.len, &d, err);
    keel_assign_free(d);
    keel_assign_free(a);
    keel_buf_release(&b);
    keel_buf_release(&t);
    return rc;
}

Test(assign, decoder_checks_every_replica_set)
{
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_eq(decode_patched("ranges", "[0,2]", &err), 0, "%s", err.msg);
    /* Longer than the replication: a range waiting after the replication fell. */
    cr_assert_eq(decode_patched("ranges", "[0,2,1]", &err), 0, "%s", err.msg);
    cr_assert_eq(decode_patched("ranges", "[0,3]", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "ranges[7][1]"), "%s", err.msg);
    cr_assert_eq(decode_patched("ranges", "[1,1]", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "listed twice"), "%s", err.msg);
    cr_assert_eq(decode_patched("ranges", "[]", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "ranges[7]:"), "%s", err.msg);
    cr_assert_eq(decode_patched("ranges", "[0,-1]", &err), KEEL_ECORRUPT);
    cr_assert_eq(decode_patched("ranges", "[0,1.0]", &err), KEEL_ECORRUPT);
    cr_assert_eq(decode_patched("ranges", "{}", &err), KEEL_ECORRUPT);
    /* Shorter than its in-sync count (2). */
    cr_assert_eq(decode_patched("ranges", "[1]", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "insync[7]"), "%s", err.msg);
}

Test(assign, decoder_checks_insync_counts_and_terms)
{
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_eq(decode_patched("insync", "1", &err), 0, "%s", err.msg);
    cr_assert_eq(decode_patched("terms", "0", &err), 0, "%s", err.msg);
    /* The primary is always in sync. */
    cr_assert_eq(decode_patched("insync", "0", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "insync[7]"), "%s", err.msg);
    cr_assert_eq(decode_patched("insync", "3", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "insync[7]"), "%s", err.msg);
    cr_assert_eq(decode_patched("insync", "\"2\"", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "insync[7]"), "%s", err.msg);
    cr_assert_eq(decode_patched("insync", "2,2", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "insync: must be an array of 256"), "%s", err.msg);
    /* A term is a version the table had. */
    cr_assert_eq(decode_patched("terms", "2", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "terms[7]"), "%s", err.msg);
    cr_assert_eq(decode_patched("terms", "-1", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "terms[7]"), "%s", err.msg);
    cr_assert_eq(decode_patched("terms", "1,1", &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "terms: must be an array of 256"), "%s", err.msg);
}

Test(assign, an_empty_range_has_no_insync_replica_and_term_0)
{
    static const char *const none[] = {"x"};
    keel_assign *a = keel_assign_new(1);
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    keel_assign *d = NULL;
    char *p;

    keel_error_init(&err);
    cr_assert_eq(keel_assign_update(a, none, 1, NULL, NULL), 0);
    cr_assert_eq(keel_assign_update(a, none, 0, NULL, NULL), 0);
    cr_assert_eq(keel_assign_version(a), 2);
    cr_assert_eq(keel_assign_insync(a, 0), 0);
    cr_assert_eq(keel_assign_term(a, 0), 0);
    check_roundtrip(a, "empty");
    keel_assign_encode(a, &b);
    keel_buf_add(&b, "", 1);
    p = strstr((char *)b.buf, "\"insync\":[0") + 10;
    *p = '1';
    cr_assert_eq(keel_assign_decode(b.buf, b.len - 1, &d, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "insync[0]"), "%s", err.msg);
    *p = '0';
    p = strstr((char *)b.buf, "\"terms\":[0") + 9;
    *p = '1';
    cr_assert_eq(keel_assign_decode(b.buf, b.len - 1, &d, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "terms[0]"), "%s", err.msg);
    keel_buf_release(&b);
    keel_assign_free(a);
}
