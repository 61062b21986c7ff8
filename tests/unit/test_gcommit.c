/*
 * test_gcommit.c - the storage thread's group-commit rule (server/gcommit.h):
 * an idle thread commits at once, a held commit waits at most the hold for
 * company, a full batch commits without waiting, and one commit is cut at
 * its bounds in queue order without ever leaving an entry behind for good.
 */
#include <criterion/criterion.h>

#include "gcommit.h"

static const struct keel_gcommit no_hold = {0, 4, 1000};
static const struct keel_gcommit hold5 = {5, 4, 1000};

Test(gcommit, nothing_queued_is_idle)
{
    cr_assert_eq(keel_gcommit_wait_ms(&no_hold, 0, 0, 0), KEEL_GCOMMIT_IDLE);
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 0, 0, 100), KEEL_GCOMMIT_IDLE);
}

Test(gcommit, idle_commit_is_immediate)
{
    /* One record, just queued: no waiting for company when nothing holds it. */
    cr_assert_eq(keel_gcommit_wait_ms(&no_hold, 1, 10, 0), 0);
    cr_assert_eq(keel_gcommit_wait_ms(&no_hold, 3, 10, 0), 0);
}

Test(gcommit, a_hold_waits_for_company_at_most_the_hold)
{
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 1, 10, 0), 5);
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 2, 20, 3), 2);
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 2, 20, 5), 0);
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 2, 20, 60000), 0);
}

Test(gcommit, a_full_batch_commits_without_waiting)
{
    /* by count */
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 3, 30, 0), 5);
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 4, 40, 0), 0);
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 9, 90, 0), 0);
    /* by bytes */
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 1, 999, 0), 5);
    cr_assert_eq(keel_gcommit_wait_ms(&hold5, 1, 1000, 0), 0);
}

Test(gcommit, one_commit_is_cut_at_its_bounds)
{
    /* Count: four entries join, the fifth waits for the next commit. */
    cr_assert(keel_gcommit_joins(&hold5, 0, 0, 10));
    cr_assert(keel_gcommit_joins(&hold5, 3, 30, 10));
    cr_assert_not(keel_gcommit_joins(&hold5, 4, 40, 10));
    /* Bytes: up to the bound exactly, not past it. */
    cr_assert(keel_gcommit_joins(&hold5, 1, 600, 400));
    cr_assert_not(keel_gcommit_joins(&hold5, 1, 600, 401));
}

Test(gcommit, the_first_entry_always_goes)
{
    /* An entry larger than the bound alone (a copy of a big range) is still committed. */
    cr_assert(keel_gcommit_joins(&no_hold, 0, 0, 1u << 30));
    cr_assert_not(keel_gcommit_joins(&no_hold, 1, 1u << 30, 1));
}

/* Draining a queue by the rule: every entry goes, in order, in commits within the bounds. */
Test(gcommit, a_queue_drains_in_order_within_bounds)
{
    static const uint64_t sizes[] = {100, 300, 700, 2000, 50, 50, 50, 50, 50, 900, 100};
    size_t n = sizeof(sizes) / sizeof(sizes[0]), i = 0, commits = 0;

    while (i < n) {
        size_t taken = 0;
        uint64_t bytes = 0;

        while (i < n && keel_gcommit_joins(&no_hold, taken, bytes, sizes[i])) {
            bytes += sizes[i++];
            taken++;
        }
        cr_assert_gt(taken, 0, "a commit took nothing: the queue would never drain");
        cr_assert(taken <= no_hold.max_acks);
        cr_assert(bytes <= no_hold.max_bytes || taken == 1);
        commits++;
    }
    /* {100,300} {700} {2000} {50,50,50,50} {50,900} {100} */
    cr_assert_eq(commits, 6);
}
