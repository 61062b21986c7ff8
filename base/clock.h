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

#include <stdint.h>

/* Milliseconds of CLOCK_MONOTONIC. */
uint64_t keel_clock_mono_ms(void);

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). */
int64_t keel_clock_wall_ms(void);

#endif
