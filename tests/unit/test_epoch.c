/*
 * test_epoch.c - receivers keep the highest epoch seen and refuse older ones.
 */
#include <pthread.h>
#include <string.h>

#include <criterion/criterion.h>

#include "keel/epoch.h"

Test(epoch, newer_and_equal_epochs_pass_older_are_refused)
{
    struct keel_epoch_tracker t;
    struct keel_error err;

    keel_error_init(&err);
    keel_epoch_init(&t, 0);
    cr_assert_eq(keel_epoch_highest(&t), 0);
    cr_assert_eq(keel_epoch_check(&t, 5, &err), 0);
    cr_assert_eq(keel_epoch_check(&t, 5, &err), 0);
    cr_assert_eq(keel_epoch_check(&t, 9, &err), 0);
    cr_assert_eq(keel_epoch_highest(&t), 9);
    cr_assert_eq(keel_epoch_check(&t, 7, &err), KEEL_EEPOCH);
    cr_assert_str_eq(err.msg, "stale epoch 7, newest seen is 9");
    cr_assert_eq(keel_epoch_highest(&t), 9, "a refused epoch lowered the mark");
}

Test(epoch, non_positive_epochs_are_invalid)
{
    struct keel_epoch_tracker t;

    keel_epoch_init(&t, 3);
    cr_assert_eq(keel_epoch_check(&t, 0, NULL), KEEL_EINVAL);
    cr_assert_eq(keel_epoch_check(&t, -4, NULL), KEEL_EINVAL);
    cr_assert_eq(keel_epoch_highest(&t), 3);
}

struct racer {
    struct keel_epoch_tracker *t;
    int64_t base;
};

static void *race(void *arg)
{
    struct racer *r = arg;

    for (int64_t i = 1; i <= 20000; i++)
        (void)keel_epoch_check(r->t, r->base + i * 4, NULL);
    return NULL;
}

Test(epoch, concurrent_checks_keep_the_maximum)
{
    struct keel_epoch_tracker t;
    struct racer r[4];
    pthread_t th[4];

    keel_epoch_init(&t, 0);
    for (int i = 0; i < 4; i++) {
        r[i].t = &t;
        r[i].base = i;
        pthread_create(&th[i], NULL, race, &r[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    cr_assert_eq(keel_epoch_highest(&t), 3 + 20000 * 4);
}
