/*
 * test_failover.c - the assignment table while a job runs
 * (keel_assign_failover()): promotion of in-sync backups only, ranges that
 * wait for a lost primary, syncing backups placed and caught up, and the
 * table's terms and in-sync counts through its JSON form.
 *
 * Tables are written by hand as JSON: servers are one-letter ids, a replica
 * set is a string of them ("abc": a leads, b and c back it up).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "keel/assign.h"

#define NR   KEEL_PROTO_NRANGES
#define MAXR KEEL_ASSIGN_MAX_REPLICATION

/* One range's state: its set (letters, primary first), in-sync count and term. */
struct range_spec {
    unsigned range;
    const char *set;
    unsigned insync;
    uint64_t term;
};

/*
 * A table of `version` and `replication` over `servers` (sorted letters):
 * every range as `all` (its `range` ignored), except those in `except`.
 */
static keel_assign *table(uint64_t version, unsigned replication, const char *servers,
                          struct range_spec all, const struct range_spec *except, size_t nexcept)
{
    struct keel_buf b = KEEL_BUF_INIT;
    struct range_spec spec[NR];
    struct keel_error err;
    keel_assign *a = NULL;

    for (unsigned r = 0; r < NR; r++)
        spec[r] = all;
    for (size_t i = 0; i < nexcept; i++)
        spec[except[i].range] = except[i];
    keel_buf_add_str(&b, "{\"insync\":[");
    for (unsigned r = 0; r < NR; r++)
        keel_buf_addf(&b, "%s%u", r ? "," : "", spec[r].insync);
    keel_buf_add_str(&b, "],\"ranges\":[");
    for (unsigned r = 0; r < NR; r++) {
        keel_buf_add_str(&b, r ? ",[" : "[");
        for (const char *c = spec[r].set; *c; c++)
            keel_buf_addf(&b, "%s%ld", c == spec[r].set ? "" : ",",
                          (long)(strchr(servers, *c) - servers));
        keel_buf_add_str(&b, "]");
    }
    keel_buf_addf(&b, "],\"replication\":%u,\"servers\":[", replication);
    for (const char *c = servers; *c; c++)
        keel_buf_addf(&b, "%s\"%c\"", c == servers ? "" : ",", *c);
    keel_buf_add_str(&b, "],\"terms\":[");
    for (unsigned r = 0; r < NR; r++)
        keel_buf_addf(&b, "%s%" PRIu64, r ? "," : "", spec[r].term);
    keel_buf_addf(&b, "],\"version\":%" PRIu64 "}", version);
    keel_error_init(&err);
    cr_assert_eq(keel_assign_decode(b.buf, b.len, &a, &err), 0, "%s", err.msg);
    keel_buf_release(&b);
    return a;
}

/* The replica set of `range` as letters. */
static const char *set_of(const keel_assign *a, unsigned range)
{
    static char out[MAXR + 1];
    const char *ids[MAXR];
    size_t n = keel_assign_replicas(a, range, ids, MAXR);

    for (size_t i = 0; i < n; i++)
        out[i] = ids[i][0];
    out[n] = '\0';
    return out;
}

/* The server list as letters. */
static const char *servers_of(const keel_assign *a)
{
    static char out[64];
    size_t n = keel_assign_server_count(a);

    for (size_t i = 0; i < n; i++)
        out[i] = keel_assign_server(a, i)[0];
    out[n] = '\0';
    return out;
}

/* The server ids named by the letters of `letters`, for the live list. */
static size_t ids_of(const char *letters, const char **ids, char (*store)[2])
{
    size_t n = strlen(letters);

    for (size_t i = 0; i < n; i++) {
        store[i][0] = letters[i];
        store[i][1] = '\0';
        ids[i] = store[i];
    }
    return n;
}

static int failover(keel_assign *a, unsigned replication, const char *live,
                    const struct keel_assign_synced *synced, size_t nsynced,
                    struct keel_assign_stats *st)
{
    const char *ids[26];
    char store[26][2];
    size_t n = ids_of(live, ids, store);
    struct keel_error err;
    int rc;

    keel_error_init(&err);
    rc = keel_assign_failover(a, replication, ids, n, synced, nsynced, st, &err);
    cr_assert_eq(rc, 0, "%s", err.msg);
    return rc;
}

static void check_roundtrip(const keel_assign *a)
{
    struct keel_buf b = KEEL_BUF_INIT, b2 = KEEL_BUF_INIT;
    struct keel_error err;
    keel_assign *d = NULL;

    keel_error_init(&err);
    keel_assign_encode(a, &b);
    cr_assert_eq(keel_assign_decode(b.buf, b.len, &d, &err), 0, "%s", err.msg);
    cr_assert(keel_assign_equal(a, d), "decoded table differs");
    keel_assign_encode(d, &b2);
    cr_assert(b.len == b2.len && memcmp(b.buf, b2.buf, b.len) == 0, "not canonical");
    keel_assign_free(d);
    keel_buf_release(&b);
    keel_buf_release(&b2);
}

Test(failover, a_dead_primary_hands_over_to_the_first_live_insync_backup)
{
    static const struct range_spec except[] = {{9, "acb", 3, 2}, {10, "adb", 2, 3}};
    keel_assign *a = table(4, 3, "abcd", (struct range_spec){0, "abc", 3, 2}, except, 2);
    struct keel_assign_stats st;

    failover(a, 3, "bcd", NULL, 0, &st);
    cr_assert_eq(keel_assign_version(a), 5);
    cr_assert(st.changed);
    /* b leads in term 5, c stays in sync after it, d is placed as syncing. */
    cr_assert_str_eq(set_of(a, 0), "bcd");
    cr_assert_eq(keel_assign_term(a, 0), 5);
    cr_assert_eq(keel_assign_insync(a, 0), 2);
    cr_assert(keel_assign_is_insync(a, 0, "c"));
    cr_assert_not(keel_assign_is_insync(a, 0, "d"));
    /* The first live in-sync backup in set order, not in id order. */
    cr_assert_str_eq(set_of(a, 9), "cbd");
    cr_assert_eq(keel_assign_insync(a, 9), 2);
    /* d was in sync, b was not: d leads, b stays syncing; c is placed. */
    cr_assert_str_eq(set_of(a, 10), "dbc");
    cr_assert_eq(keel_assign_insync(a, 10), 1);
    cr_assert_eq(keel_assign_term(a, 10), 5);
    cr_assert_str_eq(servers_of(a), "bcd");
    cr_assert_eq(st.promoted, NR);
    cr_assert_eq(st.primary_changes, NR);
    cr_assert_eq(st.removed, NR);
    cr_assert_eq(st.placed, NR);
    check_roundtrip(a);
    keel_assign_free(a);
}

Test(failover, a_syncing_backup_is_never_promoted)
{
    static const struct range_spec except[] = {{3, "abc", 1, 2}};
    keel_assign *a = table(4, 3, "abcd", (struct range_spec){0, "abc", 3, 2}, except, 1);
    struct keel_assign_stats st;

    failover(a, 3, "bcd", NULL, 0, &st);
    cr_assert_eq(keel_assign_version(a), 5);
    /* Range 3 waits for a, exactly as it was. */
    cr_assert_str_eq(set_of(a, 3), "abc");
    cr_assert_eq(keel_assign_insync(a, 3), 1);
    cr_assert_eq(keel_assign_term(a, 3), 2);
    cr_assert_str_eq(keel_assign_primary(a, 3), "a");
    cr_assert_str_eq(servers_of(a), "abcd");
    cr_assert_str_eq(set_of(a, 0), "bcd");
    cr_assert_eq(st.promoted, NR - 1);
    check_roundtrip(a);
    keel_assign_free(a);
}

Test(failover, a_range_with_no_insync_replica_alive_waits_for_one)
{
    static const struct range_spec except[] = {{7, "abc", 2, 3}};
    keel_assign *a = table(4, 3, "abcde", (struct range_spec){0, "cde", 3, 1}, except, 1);
    struct keel_assign_stats st;

    failover(a, 2, "cde", NULL, 0, &st);
    cr_assert_eq(keel_assign_version(a), 5);
    cr_assert_eq(keel_assign_replication(a), 2);
    /* Kept whole, even above the new replication; a and b stay listed for it. */
    cr_assert_str_eq(set_of(a, 7), "abc");
    cr_assert_eq(keel_assign_insync(a, 7), 2);
    cr_assert_eq(keel_assign_term(a, 7), 3);
    cr_assert_str_eq(servers_of(a), "abcde");
    cr_assert_str_eq(set_of(a, 0), "cd");
    cr_assert_eq(keel_assign_term(a, 0), 1);
    cr_assert_eq(st.promoted, 0);
    check_roundtrip(a);

    /* Once a returns, the range goes on where it stopped; b is dropped. */
    failover(a, 2, "acde", NULL, 0, &st);
    cr_assert_eq(keel_assign_version(a), 6);
    cr_assert_str_eq(set_of(a, 7), "ac");
    cr_assert_eq(keel_assign_insync(a, 7), 1);
    cr_assert_eq(keel_assign_term(a, 7), 3);
    cr_assert_str_eq(servers_of(a), "acde");
    keel_assign_free(a);
}

Test(failover, a_dead_backup_is_replaced_by_a_syncing_one_on_the_least_loaded_server)
{
    /* c holds one replica, e none: e takes d's place. */
    static const struct range_spec except[] = {{0, "ad", 2, 4}, {1, "bc", 2, 4}};
    keel_assign *a = table(4, 2, "abcde", (struct range_spec){0, "ab", 2, 4}, except, 2);
    struct keel_assign_stats st;

    failover(a, 2, "abce", NULL, 0, &st);
    cr_assert_eq(keel_assign_version(a), 5);
    cr_assert_str_eq(set_of(a, 0), "ae");
    cr_assert_eq(keel_assign_insync(a, 0), 1);
    cr_assert_eq(keel_assign_term(a, 0), 4); /* the primary stays, so does its term */
    cr_assert_not(keel_assign_is_insync(a, 0, "e"));
    cr_assert_str_eq(set_of(a, 1), "bc");
    cr_assert_eq(keel_assign_insync(a, 1), 2);
    cr_assert_str_eq(set_of(a, 2), "ab");
    cr_assert_str_eq(servers_of(a), "abce");
    cr_assert_eq(st.placed, 1);
    cr_assert_eq(st.removed, 1);
    cr_assert_eq(st.promoted, 0);
    cr_assert_eq(st.primary_changes, 0);
    keel_assign_free(a);
}

Test(failover, a_backup_reporting_the_current_term_joins_the_insync_replicas)
{
    static const struct range_spec except[] = {{0, "abc", 1, 4}, {1, "abc", 1, 4}};
    keel_assign *a = table(6, 3, "abc", (struct range_spec){0, "abc", 3, 2}, except, 2);
    uint64_t c_terms[NR] = {0}, b_terms[NR] = {0};
    static struct keel_replica_report primary;
    struct keel_assign_synced synced[] = {{"c", c_terms, NULL, NULL},
                                          {"b", b_terms, NULL, NULL},
                                          {"a", primary.terms, NULL, &primary}};
    struct keel_assign_stats st;

    /* a leads ranges 0 and 1 in term 4 and pledges c for range 0, b for range 1. */
    memset(&primary, 0, sizeof(primary));
    primary.terms[0] = primary.terms[1] = 4;
    primary.npledged[0] = primary.npledged[1] = 1;
    snprintf(primary.pledged[0][0], sizeof(primary.pledged[0][0]), "c");
    snprintf(primary.pledged[1][0], sizeof(primary.pledged[1][0]), "b");
    /* Stale reports change nothing. */
    c_terms[0] = 3;
    b_terms[1] = 2;
    failover(a, 3, "abc", synced, 3, &st);
    cr_assert_not(st.changed);
    cr_assert_eq(keel_assign_version(a), 6);
    cr_assert_eq(keel_assign_insync(a, 0), 1);
    cr_assert_eq(keel_assign_insync(a, 1), 1);

    /* c holds the copy of term 4 but a does not pledge it yet: not in sync. */
    c_terms[0] = 4;
    primary.npledged[0] = 0;
    failover(a, 3, "abc", synced, 3, &st);
    cr_assert_not(st.changed, "a backup its primary does not wait for yet was put in sync");
    /* a pledges it: it moves right after the in-sync primary. */
    primary.npledged[0] = 1;
    failover(a, 3, "abc", synced, 3, &st);
    cr_assert(st.changed);
    cr_assert_eq(keel_assign_version(a), 7);
    cr_assert_str_eq(set_of(a, 0), "acb");
    cr_assert_eq(keel_assign_insync(a, 0), 2);
    cr_assert(keel_assign_is_insync(a, 0, "c"));
    cr_assert_not(keel_assign_is_insync(a, 0, "b"));
    cr_assert_eq(keel_assign_term(a, 0), 4);
    cr_assert_str_eq(set_of(a, 1), "abc");
    cr_assert_eq(keel_assign_insync(a, 1), 1);
    cr_assert_eq(st.placed, 0);
    cr_assert_eq(st.removed, 0);
    keel_assign_free(a);
}

Test(failover, a_promotion_is_checked_against_the_new_term)
{
    static const struct range_spec except[] = {{0, "abc", 2, 4}};
    keel_assign *a = table(6, 3, "abc", (struct range_spec){0, "abc", 3, 2}, except, 1);
    uint64_t c_terms[NR] = {0};
    static struct keel_replica_report primary;
    struct keel_assign_synced synced[] = {{"c", c_terms, NULL, NULL},
                                          {"b", primary.terms, NULL, &primary}};
    struct keel_assign_stats st;

    /* c holds range 0 as of term 4, but a died: b leads in term 7, c must copy again. */
    memset(&primary, 0, sizeof(primary));
    primary.npledged[0] = 1;
    snprintf(primary.pledged[0][0], sizeof(primary.pledged[0][0]), "c");
    primary.terms[0] = 4; /* b's pledge of the old term counts for nothing in the new one */
    c_terms[0] = 4;
    failover(a, 3, "bc", synced, 2, &st);
    cr_assert_str_eq(set_of(a, 0), "bc");
    cr_assert_eq(keel_assign_term(a, 0), 7);
    cr_assert_eq(keel_assign_insync(a, 0), 1);
    c_terms[0] = 7;
    failover(a, 3, "bc", synced, 2, &st);
    cr_assert_eq(keel_assign_insync(a, 0), 1, "b has not pledged c in term 7");
    primary.terms[0] = 7;
    failover(a, 3, "bc", synced, 2, &st);
    cr_assert_eq(keel_assign_insync(a, 0), 2);
    cr_assert_eq(keel_assign_version(a), 8);
    keel_assign_free(a);
}

Test(failover, raising_the_replication_places_syncing_backups)
{
    static const char *const live[] = {"a", "b", "c"};
    keel_assign *a = keel_assign_new(1);
    struct keel_assign_stats st;
    unsigned load[3] = {0};

    cr_assert_eq(keel_assign_update(a, live, 3, NULL, NULL), 0);
    cr_assert_eq(keel_assign_version(a), 1);
    failover(a, 2, "abc", NULL, 0, &st);
    cr_assert_eq(keel_assign_version(a), 2);
    cr_assert_eq(keel_assign_replication(a), 2);
    cr_assert_eq(st.placed, NR);
    cr_assert_eq(st.removed, 0);
    cr_assert_eq(st.primary_changes, 0);
    for (unsigned r = 0; r < NR; r++) {
        const char *s = set_of(a, r);

        cr_assert_eq(strlen(s), 2, "range %u: %s", r, s);
        cr_assert_neq(s[0], s[1]);
        cr_assert_eq(keel_assign_insync(a, r), 1);
        cr_assert_eq(keel_assign_term(a, r), 1);
        load[s[0] - 'a']++;
        load[s[1] - 'a']++;
    }
    /* Least loaded first: the replicas spread evenly. */
    for (int i = 0; i < 3; i++)
        cr_assert(load[i] >= 170 && load[i] <= 171, "%c holds %u", 'a' + i, load[i]);
    check_roundtrip(a);
    keel_assign_free(a);
}

Test(failover, an_empty_table_gets_primaries_in_sync)
{
    keel_assign *a = keel_assign_new(2);
    struct keel_assign_stats st;

    failover(a, 2, "ab", NULL, 0, &st);
    cr_assert_eq(keel_assign_version(a), 1);
    for (unsigned r = 0; r < NR; r++) {
        cr_assert_eq(strlen(set_of(a, r)), 2);
        cr_assert_eq(keel_assign_insync(a, r), 1);
        cr_assert_eq(keel_assign_term(a, r), 1);
    }
    cr_assert_eq(st.primary_changes, NR);
    cr_assert_eq(st.promoted, 0);
    keel_assign_free(a);
}

Test(failover, nothing_to_change_keeps_the_version)
{
    static const char *const live[] = {"a", "b", "c"};
    keel_assign *a = keel_assign_new(2), *before;
    struct keel_assign_stats st;

    cr_assert_eq(keel_assign_update(a, live, 3, NULL, NULL), 0);
    before = keel_assign_clone(a);
    failover(a, 2, "cab", NULL, 0, &st);
    cr_assert_not(st.changed);
    cr_assert_eq(st.placed + st.removed + st.primary_changes, 0);
    cr_assert(keel_assign_equal(a, before));
    keel_assign_free(before);
    keel_assign_free(a);
}

Test(failover, bad_input_leaves_the_table_unchanged)
{
    static const char *const bad_id[] = {"a", "b b"}, *const twice[] = {"a", "b", "a"};
    static const char *const live[] = {"a", "b"};
    keel_assign *a = table(4, 2, "abc", (struct range_spec){0, "ab", 2, 3}, NULL, 0);
    keel_assign *before = keel_assign_clone(a);
    struct keel_error err;

    keel_error_init(&err);
    cr_assert_eq(keel_assign_failover(a, 2, bad_id, 2, NULL, 0, NULL, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "'b b'"), "%s", err.msg);
    cr_assert_eq(keel_assign_failover(a, 2, twice, 3, NULL, 0, NULL, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "twice"), "%s", err.msg);
    cr_assert_eq(keel_assign_failover(a, 0, live, 2, NULL, 0, NULL, &err), KEEL_EINVAL);
    cr_assert_eq(keel_assign_failover(a, MAXR + 1, live, 2, NULL, 0, NULL, &err), KEEL_EINVAL);
    cr_assert(keel_assign_equal(a, before));
    keel_assign_free(before);
    keel_assign_free(a);
}

Test(failover, a_rebalance_afterwards_puts_every_replica_in_sync)
{
    static const struct range_spec except[] = {{5, "abc", 1, 2}};
    static const char *const live[] = {"a", "b", "c"};
    keel_assign *a = table(4, 3, "abc", (struct range_spec){0, "abc", 3, 2}, except, 1);
    struct keel_assign_stats st;

    cr_assert_eq(keel_assign_update(a, live, 3, &st, NULL), 0);
    cr_assert(st.changed);
    cr_assert_eq(keel_assign_version(a), 5);
    for (unsigned r = 0; r < NR; r++)
        cr_assert_eq(keel_assign_insync(a, r), 3, "range %u", r);
    cr_assert_eq(keel_assign_term(a, 5), strcmp(keel_assign_primary(a, 5), "a") ? 5 : 2);
    keel_assign_free(a);
}

/*
 * A primary that came back without a range's state (a wiped store) and says
 * so: with another in-sync replica it leaves the in-sync prefix and that one
 * leads (even a dead one: the range then waits for it); as the only in-sync
 * replica, the range is lost for good (keel_assign_lost()) and left alone.
 */
Test(failover, a_replica_that_lost_its_state_leaves_the_insync_set)
{
    static const struct range_spec except[] = {{5, "ab", 2, 2}, {6, "ac", 1, 2}};
    keel_assign *a = table(4, 2, "abc", (struct range_spec){0, "bc", 2, 2}, except, 2);
    uint64_t a_terms[NR] = {0};
    unsigned char a_lost[NR] = {0};
    struct keel_assign_synced synced[] = {{"a", a_terms, a_lost, NULL}};
    struct keel_assign_stats st;

    a_lost[5] = a_lost[6] = 1;
    /* Range 6 has no other in-sync replica: its state is gone. */
    cr_assert(keel_assign_lost(a, 6, synced, 1));
    cr_assert_not(keel_assign_lost(a, 5, synced, 1), "b is in sync and did not say so");
    cr_assert_not(keel_assign_lost(a, 7, synced, 1), "a holds no part of range 7");
    /* b is dead: range 5 is led by b, in a new term, and waits for it; a syncs again. */
    failover(a, 2, "ac", synced, 1, &st);
    cr_assert_str_eq(set_of(a, 5), "ba");
    cr_assert_eq(keel_assign_insync(a, 5), 1);
    cr_assert_eq(keel_assign_term(a, 5), keel_assign_version(a));
    cr_assert_not(keel_assign_is_insync(a, 5, "a"));
    /* Range 6 is left as it was: the leader fails the job instead. */
    cr_assert_str_eq(set_of(a, 6), "ac");
    cr_assert_eq(keel_assign_insync(a, 6), 1);
    cr_assert_eq(keel_assign_term(a, 6), 2);
    /* Without a lost report nothing of this happens. */
    a_lost[5] = 0;
    cr_assert_not(keel_assign_lost(a, 5, synced, 1));
    check_roundtrip(a);
    keel_assign_free(a);
}

/*
 * Primaries shared again while a job runs: role swaps with live in-sync
 * backups only; the old primary stays in sync, first among the backups, and
 * the range's term becomes the new version.
 */
Test(failover, primaries_are_shared_again_by_swaps_with_insync_backups)
{
    keel_assign *a = table(4, 2, "ab", (struct range_spec){0, "ab", 2, 3}, NULL, 0);
    struct keel_assign_stats st;
    unsigned led[2] = {0}, swapped = 0;

    cr_assert_eq(keel_assign_balance_primaries(a, (const char *const[]){"a", "b"}, 2, &st), 128);
    cr_assert(st.changed);
    cr_assert_eq(st.primary_changes, 128);
    cr_assert_eq(keel_assign_version(a), 5);
    for (unsigned r = 0; r < NR; r++) {
        const char *s = set_of(a, r);

        led[s[0] - 'a']++;
        if (s[0] == 'b') {
            swapped++;
            cr_assert_str_eq(s, "ba", "range %u: a follows b", r);
            cr_assert_eq(keel_assign_insync(a, r), 2, "range %u: both still in sync", r);
            cr_assert_eq(keel_assign_term(a, r), 5, "range %u: a new term", r);
        } else {
            cr_assert_eq(keel_assign_insync(a, r), 2);
            cr_assert_eq(keel_assign_term(a, r), 3, "range %u: untouched", r);
        }
    }
    cr_assert(led[0] == 128 && led[1] == 128, "a leads %u, b %u", led[0], led[1]);
    cr_assert_eq(keel_assign_balance_primaries(a, (const char *const[]){"a", "b"}, 2, &st), 0,
                 "balanced: nothing more to swap");
    cr_assert_not(st.changed);
    cr_assert_eq(keel_assign_version(a), 5);
    check_roundtrip(a);
    keel_assign_free(a);
}

Test(failover, only_live_insync_backups_take_over_a_primary)
{
    /* a leads everything; b is in sync but dead, c only syncing, d in sync in range 9. */
    static const struct range_spec except[] = {{9, "adc", 2, 3}};
    keel_assign *a = table(4, 3, "abcd", (struct range_spec){0, "abc", 2, 3}, except, 1);
    struct keel_assign_stats st;

    cr_assert_eq(keel_assign_balance_primaries(a, (const char *const[]){"a", "c", "d"}, 3, &st), 1);
    cr_assert_str_eq(set_of(a, 9), "dac");
    cr_assert_eq(keel_assign_insync(a, 9), 2);
    cr_assert_eq(keel_assign_term(a, 9), 5);
    cr_assert_str_eq(set_of(a, 0), "abc", "b is dead and c syncing: a keeps it");
    cr_assert_eq(keel_assign_term(a, 0), 3);
    keel_assign_free(a);
}

Test(failover, three_replicas_share_among_the_live_insync_backups)
{
    keel_assign *a = table(4, 3, "abc", (struct range_spec){0, "abc", 3, 3}, NULL, 0);
    unsigned led[3] = {0};

    cr_assert_gt(keel_assign_balance_primaries(a, (const char *const[]){"a", "b", "c"}, 3, NULL),
                 0);
    for (unsigned r = 0; r < NR; r++) {
        const char *s = set_of(a, r);

        led[s[0] - 'a']++;
        if (s[0] != 'a') {
            cr_assert_eq(keel_assign_insync(a, r), 3, "range %u: %s", r, s);
            cr_assert_eq(s[1], 'a', "range %u: %s, a first among the backups", r, s);
        }
    }
    for (int i = 0; i < 3; i++)
        cr_assert(led[i] >= 85 && led[i] <= 86, "%c leads %u", 'a' + i, led[i]);
    keel_assign_free(a);
}

/*
 * A range whose in-sync replicas are all dead, once it has waited long
 * enough, is led by the live server whose store holds the newest state of
 * it, alone in sync and in a new term; live syncing backups stay, dead
 * replicas leave; a range that no live store holds, or that has not waited
 * long enough, keeps waiting.
 */
Test(failover, a_range_waiting_too_long_is_restored_from_the_newest_store)
{
    static const struct range_spec except[] = {
        {3, "abd", 2, 2}, {4, "ab", 2, 2}, {5, "ab", 2, 2}, {6, "ab", 2, 2}, {8, "ab", 2, 2}};
    keel_assign *a = table(9, 3, "abcde", (struct range_spec){0, "cde", 3, 1}, except, 5);
    static struct keel_replica_report c_rep, d_rep, e_rep;
    struct keel_assign_synced synced[] = {{"c", c_rep.terms, NULL, &c_rep},
                                          {"d", d_rep.terms, NULL, &d_rep},
                                          {"e", e_rep.terms, NULL, &e_rep}};
    unsigned char waited[NR] = {0}, rowless[NR] = {0};
    const char *live[] = {"c", "d", "e"};
    struct keel_assign_stats st;

    cr_assert(keel_assign_waiting(a, 3, live, 3));
    cr_assert(keel_assign_waiting(a, 4, live, 3));
    cr_assert_not(keel_assign_waiting(a, 0, live, 3));
    /* Range 3: c's store is newer than e's; d (a live syncing backup) stores nothing. */
    c_rep.stored[3] = 40;
    e_rep.stored[3] = 12;
    /* Range 4: a tie between d and e, who lead no range: id order. */
    d_rep.stored[4] = 7;
    e_rep.stored[4] = 7;
    /* Range 5: nothing stores it.  Range 6: stored, but it has not waited long enough. */
    c_rep.stored[6] = 5;
    waited[3] = waited[4] = waited[5] = 1;
    waited[0] = 1; /* not waiting: its replicas are alive */
    /* Range 8: no store holds it, but the model has no row in it: nothing to lose. */
    waited[8] = rowless[8] = 1;

    cr_assert_eq(keel_assign_restore_from_stores(a, live, 3, synced, 3, waited, rowless, &st), 3);
    cr_assert(st.changed);
    cr_assert_eq(st.primary_changes, 3);
    cr_assert_eq(keel_assign_version(a), 10);
    cr_assert_str_eq(set_of(a, 3), "cd", "c leads; d stays a syncing backup; a and b leave");
    cr_assert_eq(keel_assign_insync(a, 3), 1);
    cr_assert_eq(keel_assign_term(a, 3), 10);
    cr_assert_str_eq(set_of(a, 4), "d");
    cr_assert_eq(keel_assign_insync(a, 4), 1);
    cr_assert_eq(keel_assign_term(a, 4), 10);
    cr_assert_str_eq(set_of(a, 5), "ab", "no store holds it: it waits");
    cr_assert_eq(keel_assign_term(a, 5), 2);
    cr_assert_str_eq(set_of(a, 6), "ab", "it has not waited long enough");
    /* c leads range 3 and every cde range, d leads range 4: e leads the fewest. */
    cr_assert_str_eq(set_of(a, 8), "e");
    cr_assert_eq(keel_assign_insync(a, 8), 1);
    cr_assert_eq(keel_assign_term(a, 8), 10);
    cr_assert_str_eq(set_of(a, 0), "cde");
    cr_assert_eq(keel_assign_term(a, 0), 1);
    check_roundtrip(a);

    /* A failover afterwards gives the restored ranges backups, out of sync. */
    failover(a, 3, "cde", synced, 3, &st);
    cr_assert_str_eq(set_of(a, 3), "cde");
    cr_assert_eq(keel_assign_insync(a, 3), 1);
    cr_assert_eq(keel_assign_term(a, 3), 10);

    /* Nothing waits long enough any more: nothing changes, the version stays. */
    uint64_t v = keel_assign_version(a);
    memset(waited, 0, sizeof(waited));
    cr_assert_eq(keel_assign_restore_from_stores(a, live, 3, synced, 3, waited, rowless, &st), 0);
    cr_assert_not(st.changed);
    cr_assert_eq(keel_assign_version(a), v);
    keel_assign_free(a);
}
