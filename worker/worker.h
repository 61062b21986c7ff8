/*
 * worker.h - keel-worker: training on a leased data shard.
 *
 * The worker's life (docs/training.md, "The worker"): register as
 * members/worker/<id>, watch the cluster's keys, and while a job is running
 * and a shard of it is leased to this worker (owner = id, incarnation = this
 * registration's), compute the shard's batches from its recorded position:
 * read the records from any server holding the dataset, pull every row of
 * the model from the primaries of their ranges, compute the gradient, push
 * it to the same primaries, report progress.  At the end of each pass over
 * the shard, measure the test accuracy and report it.
 *
 * This header also exposes the pure parts the worker is built from, so they
 * can be tested (and reused by the benchmark) without a network:
 *  - routing: the keys of each table grouped by the server that is primary
 *    of their range (keel_route_*);
 *  - positions and sequence numbers: (pass, batch) arithmetic;
 *  - batches: records as a SHARD_DATA frame carries them, into the dense
 *    float matrix and labels the model takes.
 * Thread safety: the pure functions keep no state and are thread-safe on
 * distinct outputs.
 */
#ifndef KEEL_WORKER_H
#define KEEL_WORKER_H

#include <stddef.h>
#include <stdint.h>

#include "keel/assign.h"
#include "keel/config.h"
#include "keel/err.h"
#include "keel/id.h"
#include "keel/jobs.h"
#include "keel/model.h"

/* Run keel-worker until SIGTERM/SIGINT; returns a process exit code (keel/cli.h). */
int keel_worker_run(const struct keel_config *config);

/* ---- routing ------------------------------------------------------------------ */

/* Keys of one table that one server is primary of. */
struct keel_route_group {
    char server[KEEL_ID_MAX + 1];
    uint32_t nkeys;
    uint64_t *keys; /* ascending */
    uint32_t *rows; /* rows[i]: the row of keys[i] in its table (its index in the packed table) */
};

/* Where every row of a model goes under one assignment. */
struct keel_route {
    uint64_t version; /* of the assignment it was built from */
    unsigned ntables;
    struct keel_route_group *groups[KEEL_MODEL_MAX_LAYERS]; /* per table, servers in id order */
    size_t ngroups[KEEL_MODEL_MAX_LAYERS];
    char (*primaries)[KEEL_ID_MAX + 1]; /* every server primary of some range, in id order */
    size_t nprimaries;
};

/*
 * Group `n` keys (ascending) and their rows by the primary of each key's
 * range (keel_range_of()) in `a`: stores a keel_malloc()ed array of groups,
 * ordered by server id, each with its keys still ascending, into *out and
 * their number into *ngroups (0 groups and *out NULL when n is 0).  Free
 * with keel_route_groups_free().
 * Errors: KEEL_EUNAVAILABLE when a key's range has no primary (naming the
 * range); nothing is allocated then.
 */
int keel_route_group(const keel_assign *a, const uint64_t *keys, const uint32_t *rows, uint32_t n,
                     struct keel_route_group **out, size_t *ngroups, struct keel_error *err);

void keel_route_groups_free(struct keel_route_group *g, size_t n);

/*
 * The route of every row of every table of `m` under `a` (keys from
 * keel_model_keys()).  Errors: those of keel_route_group(); `r` is then
 * left empty.  Release with keel_route_release().
 */
int keel_route_build(struct keel_route *r, const struct keel_model *m, const keel_assign *a,
                     struct keel_error *err);

/* Free what `r` owns and zero it; safe on a zeroed route. */
void keel_route_release(struct keel_route *r);

/* ---- positions --------------------------------------------------------------- */

/* Batches in one pass over a shard of `records` records: ceil(records / batch_size). */
static inline uint32_t keel_worker_nbatches(uint64_t records, uint32_t batch_size)
{
    uint64_t n = (records + batch_size - 1) / batch_size;

    return n > UINT32_MAX ? UINT32_MAX : (uint32_t)n;
}

/*
 * The seq that names batch `batch` of pass `pass` on the wire: the position
 * just after it, keel_shard_seq(pass, batch + 1).  Strictly increasing in
 * (pass, batch) and never 0, as servers require.  The last batch of pass p
 * (batch nbatches - 1) has seq keel_shard_seq(p, nbatches), which is below
 * that of batch 0 of pass p + 1, keel_shard_seq(p + 1, 1).
 */
static inline uint64_t keel_worker_seq(uint32_t pass, uint32_t batch)
{
    return keel_shard_seq(pass, batch + 1);
}

/*
 * The position after batch `batch` of pass `pass` in a shard of `nbatches`
 * batches: (pass, batch + 1), or (pass + 1, 0) after the last batch.
 */
static inline void keel_worker_next(uint32_t nbatches, uint32_t *pass, uint32_t *batch)
{
    if (*batch + 1 >= nbatches) {
        (*pass)++;
        *batch = 0;
    } else {
        (*batch)++;
    }
}

/*
 * The clock of batch `batch` of pass `pass`: pass * nb_max + batch, where
 * nb_max is the number of batches per pass of the job's largest shard (shard
 * 0: shards are dealt round-robin, so no other has more).  Every worker's
 * clock is the position of its data, whichever shard it works on: workers
 * under BSP move through their shards in step, a restarted worker (or one
 * that took a shard over) is at the clock of the position it resumes from
 * with nothing to line up, and a shard with one batch fewer than shard 0
 * ends one clock early, which BSP allows.
 */
static inline uint64_t keel_worker_clock(uint32_t nb_max, uint32_t pass, uint32_t batch)
{
    return (uint64_t)pass * nb_max + batch;
}

/* ---- batches ----------------------------------------------------------------- */

/*
 * Records as a SHARD_DATA frame carries them: nrecords records back to back
 * in `data`, record i being data[offsets[i] .. offsets[i + 1]).  Untrusted:
 * keel_worker_batch() checks every record.
 */
struct keel_record_run {
    uint32_t nrecords;
    const uint32_t *offsets; /* nrecords + 1, offsets[0] == 0, non-decreasing */
    const unsigned char *data;
    size_t data_len; /* bytes at data; offsets[nrecords] must not pass it */
};

/*
 * Decode records [from, from + n) of `run` into x (n rows of `nfeatures`
 * floats, row-major) and labels[0..n): each record is checked with
 * keel_record_decode() against `nfeatures`, expanded with
 * keel_record_to_dense(), and dense-u8 values (pixels 0..255) are scaled by
 * 1/255 so that every input lies in a range the initializers expect.
 * Errors: KEEL_EINVAL when [from, from + n) is not inside the run, offsets
 * go backwards or past data_len, or a label is not below `nclasses`; the
 * decoder's errors (KEEL_ESHORTBODY, KEEL_EINVAL for a record of another
 * number of features, ...).  The message names the record by its index in
 * the run; the caller adds where the run came from.
 */
int keel_worker_batch(const struct keel_record_run *run, uint32_t from, uint32_t n,
                      uint32_t nfeatures, uint32_t nclasses, float *x, uint32_t *labels,
                      struct keel_error *err);

/* ---- test evaluation --------------------------------------------------------- */

/* Sums over the test records evaluated so far; start from all zeros. */
struct keel_eval_sums {
    double loss;      /* sum of the records' cross-entropies, in nats */
    uint64_t correct; /* records whose argmax is their label */
    uint64_t n;       /* records evaluated */
};

/*
 * Evaluate the model on records [from, from + n) of `run`: decode them with
 * keel_worker_batch() into x (n rows of the model's s_0 floats) and labels,
 * run keel_model_eval() over them as one batch (so n is at most the work's
 * max_batch), and add their summed loss, correct count and number to *sums.
 * The worker's test evaluation is this over every record of the test
 * dataset, 1,000 at a time; the in-process training of the benchmark
 * measures its model the same way.  Accuracy is sums->correct / sums->n,
 * the mean loss sums->loss / sums->n.
 * Errors: those of keel_worker_batch() and keel_model_eval(), naming the
 * record by its index in the run; *sums is then unchanged.
 */
int keel_worker_eval(const struct keel_model *m, keel_model_work *w,
                     const struct keel_model_params *params, const struct keel_record_run *run,
                     uint32_t from, uint32_t n, float *x, uint32_t *labels,
                     struct keel_eval_sums *sums, struct keel_error *err);

#endif
