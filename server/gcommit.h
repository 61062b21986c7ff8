/*
 * gcommit.h - the group-commit rule of a server's storage thread: when what
 * is queued for the update log is committed, and how much goes into one
 * commit.  Pure arithmetic, no clock and no lock: the storage thread
 * (server.c) feeds it what is queued and how long the oldest has waited.
 *
 *  - Nothing queued: nothing to commit (KEEL_GCOMMIT_IDLE).
 *  - An idle thread commits at once: with `hold_ms` 0 (the default) a record
 *    never waits for company; what arrives while a commit is in flight
 *    gathers in the queue and goes into the next commit.
 *  - With `hold_ms` > 0 the oldest record waits at most that long for others
 *    to join, and a full batch (max_acks entries or max_bytes bytes) commits
 *    without waiting.
 *  - One commit takes entries in queue order until the next would pass
 *    max_acks or max_bytes; the first always goes, however large, so that
 *    every entry is committed.
 */
#ifndef KEEL_GCOMMIT_H
#define KEEL_GCOMMIT_H

#include <stddef.h>
#include <stdint.h>

#define KEEL_GCOMMIT_IDLE UINT64_MAX

/* The storage thread's defaults for the bounds of one commit. */
#define KEEL_GCOMMIT_MAX_ACKS  1024
#define KEEL_GCOMMIT_MAX_BYTES (64u << 20)

struct keel_gcommit {
    uint64_t hold_ms; /* [server] group_commit */
    size_t max_acks;  /* entries in one commit (pushes, replicated updates, copies) */
    uint64_t max_bytes;
};

/*
 * Milliseconds to wait before committing what is queued: `n` entries of
 * `bytes` bytes, the oldest queued `age_ms` ago.  0: commit now;
 * KEEL_GCOMMIT_IDLE: nothing is queued.
 */
uint64_t keel_gcommit_wait_ms(const struct keel_gcommit *g, size_t n, uint64_t bytes,
                              uint64_t age_ms);

/*
 * Whether the next queued entry, of `next_bytes` bytes, joins a commit that
 * has taken `n` entries of `bytes` bytes so far.
 */
int keel_gcommit_joins(const struct keel_gcommit *g, size_t n, uint64_t bytes, uint64_t next_bytes);

#endif
