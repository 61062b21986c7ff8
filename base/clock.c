/*
 * clock.c - monotonic and wall-clock milliseconds; monotonic condition waits.
 */
#include <stdlib.h>
#include <time.h>

#include "clock.h"

uint64_t keel_clock_mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int64_t keel_clock_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t keel_clock_wall_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

void keel_cond_init_mono(pthread_cond_t *cond)
{
    pthread_condattr_t attr;

    if (pthread_condattr_init(&attr) != 0 ||
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC) != 0 ||
        pthread_cond_init(cond, &attr) != 0)
        abort();
    pthread_condattr_destroy(&attr);
}

struct timespec keel_cond_deadline(uint64_t ms)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

int keel_cond_timedwait_ms(pthread_cond_t *cond, pthread_mutex_t *mutex, uint64_t ms)
{
    struct timespec until = keel_cond_deadline(ms);

    return pthread_cond_timedwait(cond, mutex, &until);
}
