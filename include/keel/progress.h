/*
 * progress.h - what workers report about a running job: shard progress and
 * evaluation results, as they write them to etcd.
 *
 * Under /keel/<cluster>/jobs/<job>/:
 *
 *   progress/<n>            {"batch":b,"incarnation":k,"pass":p,"worker":"w1"}
 *       written by the worker holding shard n (a plain put, no lease): every
 *       batch before (p, b) has been pushed and acknowledged, so (p, b) is the
 *       next batch to compute.  The leader applies it to the shard's lease
 *       (keel_shards_progress()) and writes jobs/<job>/shards/<n>.
 *   eval/<pass>/<worker>    {"accuracy":a,"loss":l,"pass":p,"worker":"w1",...}
 *       written by a worker after evaluating the model on the job's test
 *       dataset at the end of a pass; keelctl job show prints them, pass by
 *       pass, as the accuracy curve.
 *
 * Both values come from the network: the decoders check every field they
 * know (type, range, id syntax) and refuse the value with KEEL_ECORRUPT
 * naming the field.  Keys they do not know are ignored, so a worker may add
 * fields (a time, a record count) without breaking older readers.
 *
 * Pure functions, thread-safe on distinct arguments.
 * progress.h - what a worker reports in etcd: shard progress and test
 * accuracy.  Written by keel-worker, read by the coordinator's leader (which
 * moves the shard, keel_shards_progress()) and by keelctl.
 *
 *   jobs/<job>/progress/<shard>
 *       {"batch":17,"incarnation":42,"pass":2,"worker":"w1"}
 *       every batch of the shard before (pass, batch) has been acknowledged
 *       by every server it was pushed to; a plain put, rewritten as the
 *       worker advances.
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

#define KEEL_PROGRESS_MAX_JSON 4096 /* largest value either decoder accepts */

/* One progress report of a shard's holder. */
struct keel_progress {
    char worker[KEEL_ID_MAX + 1]; /* the reporting worker's id */
    uint64_t incarnation;         /* its incarnation (from its member record), >= 1 */
    uint32_t pass, batch;         /* the next batch to compute */
};

/* {"batch":b,"incarnation":k,"pass":p,"worker":"w1"}: keys sorted, no whitespace. */
void keel_progress_encode(const struct keel_progress *p, struct keel_buf *out);

/*
 * Decode a report of `len` bytes of untrusted JSON.  Required: "worker" (an
 * id), "incarnation" (1 to 2^63-1), "pass" and "batch" (0 to 2^32-1).
 * Errors: KEEL_ECORRUPT naming the field ("progress: pass: must be an
 * integer from 0 to 4294967295"); `p` is then zeroed.
 */
int keel_progress_decode(const void *data, size_t len, struct keel_progress *p,
                         struct keel_error *err);

/* One evaluation result of a worker at the end of a pass. */
struct keel_eval {
    char worker[KEEL_ID_MAX + 1];
    uint32_t pass;   /* the pass the result belongs to, as the worker numbers it */
    double accuracy; /* fraction of test records classified right, 0..1 */
    double loss;     /* mean cross-entropy, >= 0 */
};

/* {"accuracy":a,"loss":l,"pass":p,"worker":"w1"}: keys sorted, no whitespace. */
void keel_eval_encode(const struct keel_eval *e, struct keel_buf *out);

/*
 * Decode a result of `len` bytes of untrusted JSON.  Required: "worker" (an
 * id), "pass" (0 to 2^32-1), "accuracy" (a number from 0 to 1) and "loss" (a
 * finite number >= 0).  Errors: KEEL_ECORRUPT naming the field.
 */
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

#define KEEL_PROGRESS_MAX_JSON 1024

struct keel_progress {
    char worker[KEEL_ID_MAX + 1];
    uint64_t incarnation; /* below 2^63 */
    uint32_t pass, batch; /* the next batch to compute */
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

#endif
