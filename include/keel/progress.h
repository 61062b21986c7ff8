/*
 * progress.h - what a worker reports in etcd: shard progress and test
 * accuracy.  Written by keel-worker, read by the coordinator's leader (which
 * moves the shard, keel_shards_progress()) and by keelctl.
 *
 *   jobs/<job>/progress/<shard>
 *       {"batch":17,"incarnation":42,"lease":7,"pass":2,"worker":"w1"}
 *       every batch of the shard before (pass, batch) has been acknowledged
 *       by every server it was pushed to, under the shard's lease `lease`
 *       (its fencing token; a report of an earlier lease is ignored); a
 *       plain put, rewritten as the worker advances.
 *   jobs/<job>/eval/<pass>/<worker>
 *       {"accuracy":0.8412,"examples":10000,"loss":0.4431,"pass":2,
 *        "time_ms":1767225600000,"worker":"w1"}
 *       the test accuracy and mean cross-entropy of the model as the worker
 *       pulled it at the end of its pass `pass` (counted from 0) over a
 *       shard, on `examples` records of the job's test dataset; time_ms is
 *       the Unix time of the measurement in milliseconds.
 *
 * Both are canonical JSON (keys sorted, no whitespace).  The decoders take
 * untrusted bytes: known keys only, every field present and within bounds,
 * at most KEEL_PROGRESS_MAX_JSON bytes.  No state; thread-safe.
 */
#ifndef KEEL_PROGRESS_H
#define KEEL_PROGRESS_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"
#include "keel/id.h"

#define KEEL_PROGRESS_MAX_JSON 1024

struct keel_progress {
    char worker[KEEL_ID_MAX + 1];
    uint64_t incarnation; /* below 2^63 */
    uint32_t pass, batch; /* the next batch to compute */
    uint64_t lease;       /* the shard lease's fencing token, below 2^63 */
};

struct keel_eval {
    char worker[KEEL_ID_MAX + 1];
    uint32_t pass;
    double accuracy;   /* 0..1 */
    double loss;       /* mean cross-entropy in nats, finite, >= 0 */
    uint64_t examples; /* test records measured, >= 1 */
    uint64_t time_ms;  /* Unix time in ms, below 2^63 */
};

void keel_progress_encode(const struct keel_progress *p, struct keel_buf *out);

/* Errors: KEEL_ECORRUPT naming the field ("progress: pass: missing"). */
int keel_progress_decode(const void *data, size_t len, struct keel_progress *p,
                         struct keel_error *err);

void keel_eval_encode(const struct keel_eval *e, struct keel_buf *out);

/* Errors: KEEL_ECORRUPT naming the field ("eval: accuracy: must be a number from 0 to 1"). */
int keel_eval_decode(const void *data, size_t len, struct keel_eval *e, struct keel_error *err);

/* What a key below jobs/<job>/ is (keel_job_key_parse()). */
enum keel_job_key {
    KEEL_JOB_KEY_OTHER = 0,    /* spec, state, or a key this file does not know */
    KEEL_JOB_KEY_SHARD = 1,    /* shards/<n> */
    KEEL_JOB_KEY_PROGRESS = 2, /* progress/<n> */
    KEEL_JOB_KEY_EVAL = 3,     /* eval/<pass>/<worker> */
};

/*
 * Sort out the part of a key after "jobs/<job>/": shards/<n> and
 * progress/<n> give the number in `num`; eval/<pass>/<worker> gives the
 * pass in `num` and the worker id in `worker` (KEEL_ID_MAX + 1 bytes).
 * Numbers are decimal, without sign or leading zeros, and fit in 32 bits;
 * anything else is KEEL_JOB_KEY_OTHER.
 */
enum keel_job_key keel_job_key_parse(const char *rest, uint32_t *num, char *worker);

#endif
