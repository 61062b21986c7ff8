/*
 * train_runs.h - keel-bench-train's end-to-end runs: a job trained in one
 * process without the network, and the same job trained by a local Keel
 * cluster (bench/train-cluster.sh), each described by the same struct
 * train_run so that the two compare point for point.
 *
 * Both runs measure test accuracy at the points a Keel worker does: at the
 * end of each pass over a data shard (so shards x epochs times), on the
 * whole test dataset.  Times count from the start of training (the cluster:
 * from the job's move to running; its start-up is not counted) to the end of
 * each evaluation, and the run's end is the end of the last evaluation (the
 * cluster: the job's move to done).
 *
 * Single-threaded; the functions print progress on stderr.
 */
#ifndef KEEL_BENCH_TRAIN_RUNS_H
#define KEEL_BENCH_TRAIN_RUNS_H

#include <stddef.h>
#include <stdint.h>

#include "keel/err.h"

/* One test evaluation. */
struct train_eval {
    double t;        /* seconds since the start of training, at its end */
    double accuracy; /* 0..1 */
    uint32_t pass;   /* the pass (epoch, from 0) of the shard it ended */
};

struct train_run {
    int finished;             /* every epoch was trained (else stopped at the time limit) */
    uint32_t epochs;          /* asked for */
    uint32_t shards;          /* of the dataset: a worker evaluates after each */
    uint64_t records;         /* training records in one epoch */
    uint64_t examples;        /* training examples applied by the end */
    double seconds;           /* from the start to the end of training */
    double startup_s;         /* the cluster's start-up, not counted in `seconds` (0 in process) */
    uint64_t store_start;     /* the largest server store file before the job (0 in process) */
    uint64_t store_end;       /* ... and once it ended: its high-water mark */
    struct train_eval *evals; /* in time order */
    size_t nevals;
    double *ckpt_pause_ms; /* per checkpoint cut on a server: pushes past it held back */
    double *ckpt_bytes;    /* ... and the bytes of rows it copied */
    size_t nckpts;
};

/* What to train and where. */
struct train_setup {
    const char *job;      /* job spec file */
    uint32_t epochs;      /* 0: the job's */
    const char *data_dir; /* Fashion-MNIST's *-ubyte.gz files */
    const char *bin_dir;  /* keel-server, keel-worker, keel-coordinator, keelctl */
    const char *script;   /* bench/train-cluster.sh */
    unsigned servers;     /* of the cluster */
    unsigned replication; /* replicas of each range the cluster's job asks for; 0: the job's */
    const char *set;      /* "KEY=VALUE": a [job] setting of the cluster's job; NULL: none */
    const char *variant;  /* a name for the run's label ("bf16"); NULL: none */
    unsigned limit_s;     /* stop following a cluster's job after this many seconds */
    unsigned local_reps;  /* in-process trainings per call, 1..TRAIN_MAX_LOCAL_REPS */
};

#define TRAIN_MAX_LOCAL_REPS 5

/*
 * Train the job in this process: import the dataset into a temporary store
 * (keel_dataset_import(), the job's shard count, as the cluster's servers
 * hold it) and read every shard into memory, then, timed: the model the
 * servers would create (keel_jobspec_init_params()), and for each epoch,
 * each shard in index order (the order a single worker is leased them) and
 * each batch of it in record order, keel_worker_batch(), keel_model_grad()
 * and keel_optim_apply_rows() with the job's optimizer on every table; after
 * each shard, keel_worker_eval() over the test dataset.  The training is
 * repeated s->local_reps times (it is short, and deterministic: only its
 * times vary) and the repetition of median length is returned, so that a
 * burst of load on the machine does not make the baseline.
 * Errors: those of the job file, the import and the passes.
 */
int train_in_process(const struct train_setup *s, struct train_run *out, struct keel_error *err);

/*
 * Train the job on a fresh local cluster of s->servers servers and
 * `workers` workers: runs bench/train-cluster.sh and reads its result.
 * Errors: KEEL_EINVAL when the script failed or printed something else.
 */
int train_on_cluster(const struct train_setup *s, unsigned workers, struct train_run *out,
                     struct keel_error *err);

void train_run_release(struct train_run *r);

struct keel_buf;

/*
 * Run argv (argv[0] a path) with its stdout into `out` and its stderr
 * passed on, this process ignoring SIGINT and SIGTERM meanwhile (the child
 * handles them, and stops what it started).  Returns the exit status
 * (128 + N when killed by signal N), or -1 (errno) when it could not run.
 */
int train_run_capture(char *const argv[], struct keel_buf *out);

/* Seconds until the first evaluation at or above `target`, or NaN when none reached it. */
double train_time_to(const struct train_run *r, double target);

/*
 * The epochs trained by the first evaluation at or above `target` (the k-th
 * evaluation ends the k-th pass over a shard: k / shards epochs), or NaN.
 */
double train_epochs_to(const struct train_run *r, double target);

/*
 * The accuracy of the last evaluation of a finished run (NaN when the run
 * was stopped at its time limit, or measured nothing), and the best one.
 */
double train_final_accuracy(const struct train_run *r);
double train_best_accuracy(const struct train_run *r);

/* Training examples per second over the whole run. */
double train_examples_per_s(const struct train_run *r);

#endif
