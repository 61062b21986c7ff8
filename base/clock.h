/*
 * clock.h - the two clocks Keel reads, in milliseconds.
 *
 * Monotonic time is for deadlines, timeouts and intervals within a process:
 * it never goes back and means nothing outside the process.  Wall time is
 * Unix time, for what is written down or shown to people (etcd records,
 * job states, ages): it may jump when the system clock is set.  Both are
 * thread-safe and cannot fail.
 */
#ifndef KEEL_CLOCK_H
#define KEEL_CLOCK_H

#include <pthread.h>
#include <stdint.h>
#include <time.h>

/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t keel_clock_mono_ms(void);

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t keel_clock_wall_ms(void);

/* Nanoseconds since the Unix epoch (CLOCK_REALTIME), for timestamps kept. */
uint64_t keel_clock_wall_ns(void);

/*
 * Condition variables waited on with a timeout run on CLOCK_MONOTONIC, so a
 * deadline does not move when the system clock is set.  Initialise them with
 * keel_cond_init_mono (aborts if the attribute cannot be set, as it cannot on
 * Linux); keel_cond_deadline is the absolute time `ms` from now on that clock,
 * for pthread_cond_timedwait, and keel_cond_timedwait_ms waits up to `ms`
 * (pthread_cond_timedwait's result: 0 or ETIMEDOUT).
 */
void keel_cond_init_mono(pthread_cond_t *cond);
struct timespec keel_cond_deadline(uint64_t ms);
int keel_cond_timedwait_ms(pthread_cond_t *cond, pthread_mutex_t *mutex, uint64_t ms);

#endif
