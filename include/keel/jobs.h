/*
 * jobs.h - a job's life cycle and the leasing of its data shards to workers.
 *
 * Pure logic: nothing here talks to etcd.  The coordinator's leader keeps a
 * job's state in `jobs/<job>/state` and each shard in `jobs/<job>/shards/<n>`,
 * encoded with the functions below, and calls them as workers come and go
 * and report progress.
 *
 * Job states:  pending -> running -> done | failed | stopped, and
 *              pending -> failed | stopped (a job stopped or found unusable
 *              before it started).  done, failed and stopped are final.
 *
 * A shard's position is (pass, batch): every batch before it has been
 * applied, the next one to compute is `batch` of pass `pass`.  It starts at
 * (0, 0) and only grows; (epochs, 0) means the shard is done.  On the wire
 * the same position is the push's `seq`: pass << 32 | batch
 * (keel_shard_seq()).
 *
 * Invariants of a struct keel_shard_table that these functions keep:
 *  - a worker (id and incarnation) owns at most one shard;
 *  - a done shard has no owner, and its position is (epochs, 0);
 *  - a shard's position never goes backwards, whoever owns it;
 *  - a lease lasts one pass: when the owner reports the start of a new pass
 *    the shard is freed, and the next assignment hands out the free shard
 *    with the fewest passes, so shards stay within a pass of each other
 *    even with more shards than workers.
 * Not thread-safe: one table per thread.
 */
#ifndef KEEL_JOBS_H
#define KEEL_JOBS_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/id.h"

#define KEEL_JOB_REASON_MAX 256 /* bytes of a reason, NUL included */
#define KEEL_JOBS_MAX_JSON  4096

enum keel_job_state {
    KEEL_JOB_PENDING = 1,
    KEEL_JOB_RUNNING = 2,
    KEEL_JOB_DONE = 3,
    KEEL_JOB_FAILED = 4,
    KEEL_JOB_STOPPED = 5,
};

/* "pending", "running", "done", "failed", "stopped"; "unknown" otherwise. */
const char *keel_job_state_name(enum keel_job_state s);

/* The state named `name`, or 0 when there is none. */
enum keel_job_state keel_job_state_parse(const char *name);

/* Non-zero when `from` -> `to` is one of the transitions above. */
int keel_job_state_can_move(enum keel_job_state from, enum keel_job_state to);

/* Non-zero for done, failed and stopped. */
int keel_job_state_is_final(enum keel_job_state s);

/* What `jobs/<job>/state` holds. */
struct keel_job_status {
    enum keel_job_state state;
    uint64_t changed_ms;              /* Unix time of the last transition, ms */
    char reason[KEEL_JOB_REASON_MAX]; /* why it failed or stopped; "" otherwise */
};

/* A pending job, changed at `now_ms`. */
void keel_job_status_init(struct keel_job_status *st, uint64_t now_ms);

/*
 * Move to `to` at `now_ms` with `reason` (NULL for none; cut to fit).
 * Errors: KEEL_EINVAL when the transition is not allowed ("job state:
 * cannot go from 'done' to 'running'"); `st` is then unchanged.
 */
int keel_job_status_move(struct keel_job_status *st, enum keel_job_state to, uint64_t now_ms,
                         const char *reason, struct keel_error *err);

/* {"changed_ms":N,"reason":"...","state":"running"} */
void keel_job_status_encode(const struct keel_job_status *st, struct keel_buf *out);

/* Decode untrusted JSON.  Errors: KEEL_ECORRUPT naming the field. */
int keel_job_status_decode(const void *data, size_t len, struct keel_job_status *st,
                           struct keel_error *err);

/* The position (pass, batch) as one number that orders the same way. */
static inline uint64_t keel_shard_seq(uint32_t pass, uint32_t batch)
{
    return (uint64_t)pass << 32 | batch;
}

/*
 * Where a shard of `nbatches` batches a pass (> 0) stands once every clock
 * below `clock` (> 0) is done, batch b of pass p being clock p * nb_max + b
 * (nb_max: the largest shard's batches a pass; the worker's numbering): the
 * seq of the shard's last batch at a clock below `clock`, which names the
 * position after it, keel_shard_seq(p, b + 1).
 */
static inline uint64_t keel_shard_seq_before(uint64_t clock, uint32_t nb_max, uint32_t nbatches)
{
    uint64_t last = clock - 1;
    uint32_t pass = (uint32_t)(last / nb_max), batch = (uint32_t)(last % nb_max);

    if (batch >= nbatches)
        batch = nbatches - 1;
    return keel_shard_seq(pass, batch + 1);
}

struct keel_shard {
    char owner[KEEL_ID_MAX + 1]; /* worker id, "" when nobody holds it */
    uint64_t incarnation;        /* the owner's incarnation; 0 when free */
    uint32_t pass, batch;        /* the position */
    int done;                    /* pass == epochs */
    /*
     * The lease's fencing token: raised at every grant and at every rewind
     * (keel_shards_rewind()), so that pushes and progress reports of an
     * earlier lease, even one held by the same worker, are told apart.
     */
    uint64_t lease;
};

struct keel_shard_table {
    uint32_t nshards;
    uint32_t epochs;
    struct keel_shard *shards; /* nshards entries, owned */
};

/* A live worker as membership reports it. */
struct keel_worker_ref {
    const char *id;
    uint64_t incarnation;
};

/* `nshards` (>= 1) free shards at (0, 0) of a job of `epochs` (>= 1) passes. */
void keel_shards_init(struct keel_shard_table *t, uint32_t nshards, uint32_t epochs);

void keel_shards_release(struct keel_shard_table *t);

/*
 * Bring the leases up to date with the live workers `live[0..nlive)`:
 * first every shard whose owner (id and incarnation) is not live is freed,
 * keeping its position; then each live worker that holds no shard gets a
 * free unfinished shard, the one with the fewest passes first (then the
 * lowest index), workers taken in id order.  Sets changed[n] to 1 for
 * every shard it changed when `changed` (nshards bytes) is non-NULL, and
 * returns how many it changed.  Entries of `live` with an invalid id or
 * listed twice are skipped.
 */
unsigned keel_shards_assign(struct keel_shard_table *t, const struct keel_worker_ref *live,
                            size_t nlive, unsigned char *changed);

/* The index of the shard worker `id` with `incarnation` holds, or -1. */
long keel_shards_owned_by(const struct keel_shard_table *t, const char *id, uint64_t incarnation);

/*
 * Record that the owner of shard `shard` has applied everything before
 * (pass, batch).  Reaching (epochs, 0) marks the shard done; reaching a new
 * pass frees it (the lease lasts one pass).  Repeating the recorded
 * position is a no-op.  Errors, leaving the table unchanged:
 *  KEEL_EINVAL   no such shard; a position past (epochs, 0); a position
 *                behind the recorded one ("shard 3: progress (1, 20) is
 *                behind the recorded (1, 25)"); a done shard;
 *  KEEL_EPERM    the reporter (id, incarnation) does not hold the shard.
 */
int keel_shards_progress(struct keel_shard_table *t, uint32_t shard, const char *worker,
                         uint64_t incarnation, uint32_t pass, uint32_t batch,
                         struct keel_error *err);

/*
 * Rewind the shards to where restored ranges are (the leader, after a range
 * restarted from a store that may lack acknowledged updates): floor[n] is
 * the lowest push seq of shard n (keel_worker_seq(): (pass, batch + 1) of
 * the last batch applied, 0 for none) any restored range holds.  A shard
 * ahead of that position goes back to it, done or not, keeping its owner;
 * every shard's lease token goes up, so that pushes and progress of the
 * leases before the rewind are refused.  Sets changed[n] for every shard
 * (all are written) when `changed` is non-NULL; returns how many moved back.
 */
unsigned keel_shards_rewind(struct keel_shard_table *t, const uint64_t *floor,
                            unsigned char *changed);

/* Non-zero when every shard is done: the job is done. */
int keel_shards_all_done(const struct keel_shard_table *t);

/* Shards done, and the sum of passes completed over all shards (for status). */
void keel_shards_summary(const struct keel_shard_table *t, uint32_t *done, uint64_t *passes);

/*
 * One shard as JSON, for `jobs/<job>/shards/<n>`:
 *   {"batch":17,"done":false,"incarnation":4,"owner":"w1","pass":2}
 * with "owner":null and no "incarnation" when free.
 */
void keel_shard_encode(const struct keel_shard *s, struct keel_buf *out);

/*
 * Decode untrusted JSON of a shard of a job of `epochs` passes: known keys
 * only, owner null or a valid id with an incarnation, pass <= epochs, a done
 * shard exactly at (epochs, 0) with no owner.  Errors: KEEL_ECORRUPT naming
 * the field ("shard: pass: 12 is past the job's 10 epochs").
 */
int keel_shard_decode(const void *data, size_t len, uint32_t epochs, struct keel_shard *s,
                      struct keel_error *err);

#endif
