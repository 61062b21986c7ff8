/*
 * ps.h - a server's parameters for one job: ranges of rows, the optimizer,
 * exactly-once bookkeeping and worker clocks.  No network, no etcd: the
 * server (server/server.c) feeds it decoded requests and persists what it
 * returns.
 *
 * Invariants:
 *  - A range that the server holds has every row of every table whose key
 *    falls in it (the model is dense): rows are created from the job's
 *    initializer when the range is first opened with no stored snapshot.
 *  - Each range keeps, per data shard and table, the last position (seq, from 1)
 *    it applied (a worker pushes each table of a batch with the batch's seq).
 *    The position's id is shard + ((table - 1) << 16): for table 1 the shard.
 *    A push at or below that position changes nothing (a duplicate); above
 *    it, every row of the range in the push is updated and the position
 *    moves to the push's seq.  So a retried or replayed push is applied once.
 *  - Each applied push gets the range's next LSN; replay of the update log
 *    reproduces the rows exactly (the optimizer is deterministic).
 *  - Each range has its own lock; a push or pull touching several ranges
 *    takes them one at a time, in range order.
 */
#ifndef KEEL_PS_H
#define KEEL_PS_H

#include <stdint.h>

#include "keel/jobspec.h"
#include "keel/optim.h"
#include "keel/proto.h"
#include "keel/snapshot.h"
#include "keel/store.h"

struct keel_ps;

/* The optimizer a job spec asks for. */
int keel_ps_optim_of(const struct keel_jobspec *spec, struct keel_optim *o, struct keel_error *err);

/* State for `spec`'s model, holding no range yet.  Free with keel_ps_free(). */
int keel_ps_new(const struct keel_jobspec *spec, struct keel_ps **out, struct keel_error *err);
void keel_ps_free(struct keel_ps *ps);

/*
 * Take range `range`: from its snapshot and update log in `store` when there
 * are any (restore = snapshot + log replay), else from the initializer.
 * Idempotent: a range already held is left as it is.  `stats` (may be NULL)
 * gets what the restore did: all zero when the range started from the
 * initializer or was held already.
 */
int keel_ps_open_range(struct keel_ps *ps, keel_store *store, unsigned range,
                       struct keel_restore_stats *stats, struct keel_error *err);

/* Whether `range` is held. */
int keel_ps_holds(struct keel_ps *ps, unsigned range);

/* Drop a range (it moved to another server). */
void keel_ps_close_range(struct keel_ps *ps, unsigned range);

/*
 * Replication.  A held range is either led here (its primary: pushes and
 * pulls are served; keel_ps_open_range() opens ranges so) or a backup's copy
 * (only REPLICATE changes it; pushes and pulls are redirected).
 */
int keel_ps_is_primary(struct keel_ps *ps, unsigned range);

/* Lead a held range from now on (promotion), or stop leading it. */
void keel_ps_set_primary(struct keel_ps *ps, unsigned range, int primary);

/*
 * Make `snap` (owned, e.g. from keel_snapshot_unpack()) the range's state as
 * a backup's copy, replacing whatever was held: it must have the job's tables
 * with their widths, and only keys of the range (KEEL_EINVAL otherwise, and
 * nothing changes).  On success the arrays belong to the range and *snap is
 * zeroed.
 */
int keel_ps_install(struct keel_ps *ps, unsigned range, struct keel_snapshot *snap,
                    struct keel_error *err);

/*
 * Apply the primary's update `lsn` of a backup's range: `push` is the part of
 * a push in `range` with its position id in push->shard (as logged).  It must
 * follow the range's LSN (KEEL_EUNAVAILABLE for a gap); at or below it, 1 and
 * nothing changes (a copy covered it).  The same exactly-once rule as a push
 * applies, so the copy's rows stay equal to the primary's.  KEEL_EEPOCH when
 * the range is not a backup's copy here.
 */
int keel_ps_replicate(struct keel_ps *ps, unsigned range, uint64_t lsn,
                      const struct keel_msg_push *push, struct keel_error *err);

/* What a push did in one range, for the update log. */
struct keel_ps_applied {
    uint32_t range;
    uint64_t lsn;
    struct keel_msg_push push; /* the part of the push in this range; points into `owner`;
                                  its shard is the position id (shard and table) */
};

/* The result of keel_ps_push(); release with keel_ps_result_release(). */
struct keel_ps_result {
    int duplicate;                   /* every range had seen this (shard, seq) already */
    uint64_t lsn;                    /* the highest LSN given, 0 for a duplicate */
    struct keel_ps_applied *applied; /* one per range updated */
    size_t napplied;
    uint64_t *owner;   /* keys of the per-range pushes */
    float *owner_rows; /* their rows */
};

void keel_ps_result_release(struct keel_ps_result *r);

/*
 * Apply `push`: every key must be in a range this server holds (else
 * KEEL_EREDIRECT naming the range) and in a table of the model with the
 * push's row width (KEEL_EINVAL).  Non-finite gradients are refused
 * (KEEL_EINVAL) and change nothing.  The worker's clock moves to push->clock + 1.
 * On error *out holds nothing (no release needed).
 */
int keel_ps_push(struct keel_ps *ps, const struct keel_msg_push *push, struct keel_ps_result *out,
                 struct keel_error *err);

/*
 * Copy the rows of `keys` (table `table_id`, `row_width` floats each) into
 * rows[nkeys * row_width].  Errors as for keel_ps_push.
 */
int keel_ps_pull(struct keel_ps *ps, uint32_t table_id, uint32_t row_width, const uint64_t *keys,
                 uint32_t nkeys, float *rows, struct keel_error *err);

/*
 * Clocks.  A worker's clock is the number of clocks it has finished: one
 * past the highest clock it pushed, or the clock of a training pull (a
 * worker pulls for clock c once every clock before c is done), never going
 * back.  The clock set is the registered workers (keel_ps_set_workers) that
 * hold a lease of an unfinished shard (keel_ps_set_owners), or, until the
 * server is told of leases (a server used without a coordinator), the
 * registered workers that trained here.  A worker that pushes or pulls for
 * training counts as holding a lease until the next keel_ps_set_owners()
 * says otherwise (the leases in etcd may reach the server after its first
 * request).  An owner that has not trained here yet counts at clock 0, so
 * that nobody runs ahead of a worker that has not started.
 */

/*
 * Check a pull's peer-chosen sizes before anything is allocated for it:
 * table `table_id` is one of the job's, `row_width` is its width, and the
 * reply (nkeys keys and rows) fits a frame of `max_frame` bytes.
 * KEEL_EINVAL naming what is wrong.
 */
int keel_ps_check_pull(const struct keel_ps *ps, uint32_t table_id, uint32_t row_width,
                       uint32_t nkeys, uint64_t max_frame, struct keel_error *err);

/*
 * Whether a pull for clock `clock` may be answered now: always under ASP;
 * under BSP and SSP(s) when every worker of the clock set has finished
 * clock - s - 1 (s = 0 for BSP), i.e. its clock is at least clock - s.
 */
int keel_ps_clock_ready(struct keel_ps *ps, uint64_t clock);

/*
 * Worker `worker` pulls for training at `clock` (> 0; clock 0 is also what
 * an evaluation pulls at and changes nothing): its clock moves to `clock`.
 * Call it before keel_ps_clock_ready() for that pull.
 */
void keel_ps_pulled(struct keel_ps *ps, struct keel_str worker, uint64_t clock);

/* The registered workers: those not listed are out of the clock set from now on. */
void keel_ps_set_workers(struct keel_ps *ps, const char *const *ids, size_t n);

/*
 * The owners of the job's unfinished shards' leases (a worker may be listed
 * more than once): from now on the clock set is the registered ones of these.
 */
void keel_ps_set_owners(struct keel_ps *ps, const char *const *ids, size_t n);

/* The clock of the slowest worker of the clock set (0 when it is empty). */
uint64_t keel_ps_min_clock(struct keel_ps *ps);

/*
 * A copy of range `range` for a snapshot, taken under its lock; release
 * with keel_snapshot_release().
 */
int keel_ps_snapshot(struct keel_ps *ps, unsigned range, struct keel_snapshot *out,
                     struct keel_error *err);

/* The rows a held range has, over every table (0 when not held). */
uint64_t keel_ps_rows(struct keel_ps *ps, unsigned range);

/*
 * Lower floor[n] (n < nshards) to the last seq of shard n that held range
 * `range` applied, over each table it has rows of (0 when none was):
 * where a replay of the job's data must start again for this range.
 */
void keel_ps_floor(struct keel_ps *ps, unsigned range, uint64_t *floor, uint32_t nshards);

/* The range's current LSN. */
uint64_t keel_ps_lsn(struct keel_ps *ps, unsigned range);

#endif
