/*
 * test_clock.c - the clocks and the monotonic condition waits.
 */
#include <errno.h>
#include <pthread.h>
#include <time.h>

#include <criterion/criterion.h>

#include "clock.h"

Test(clock, wall_ns_agrees_with_wall_ms)
{
    int64_t ms = keel_clock_wall_ms();
    uint64_t ns = keel_clock_wall_ns();

    cr_assert_geq((int64_t)(ns / 1000000), ms);
    cr_assert_lt((int64_t)(ns / 1000000), ms + 1000);
}

Test(clock, cond_deadline_is_ahead_on_the_monotonic_clock)
{
    struct timespec now, until;

    clock_gettime(CLOCK_MONOTONIC, &now);
    until = keel_cond_deadline(1500);
    cr_assert_lt(until.tv_nsec, 1000000000L);
    cr_assert_geq((until.tv_sec - now.tv_sec) * 1000 + (until.tv_nsec - now.tv_nsec) / 1000000,
                  1500);
    cr_assert_lt((until.tv_sec - now.tv_sec) * 1000 + (until.tv_nsec - now.tv_nsec) / 1000000,
                 2500);
}

Test(clock, timedwait_ms_times_out_after_about_ms)
{
    pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t cond;
    uint64_t start, took;
    int rc;

    keel_cond_init_mono(&cond);
    pthread_mutex_lock(&lock);
    start = keel_clock_mono_ms();
    do
        rc = keel_cond_timedwait_ms(&cond, &lock, 50);
    while (rc == 0); /* a spurious wakeup */
    took = keel_clock_mono_ms() - start;
    pthread_mutex_unlock(&lock);
    pthread_cond_destroy(&cond);
    cr_assert_eq(rc, ETIMEDOUT);
    cr_assert_geq(took, 49);
    cr_assert_lt(took, 5000);
}
