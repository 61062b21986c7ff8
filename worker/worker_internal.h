/*
 * worker_internal.h - keel-worker's state, shared by train.c (life cycle,
 * etcd, leases, the training loop) and request.c (requests to servers,
 * batches, evaluation).
 *
 * Threads:
 *  - the main thread waits for signals;
 *  - the training thread (train_main) owns everything under "training
 *    thread only" below: the job, the connections, the route;
 *  - the etcd watch thread keeps w->view, the cluster's keys, up to date
 *    (cview.h, under the view's own lock) and bumps w->generation when a key
 *    the worker follows changed (under w->lock);
 *  - the reporter thread writes progress to etcd (under w->rep_lock);
 *  - each keel_client has its own thread, which runs reply callbacks.
 */
#ifndef KEEL_WORKER_INTERNAL_H
#define KEEL_WORKER_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "keel/assign.h"
#include "keel/config.h"
#include "cview.h"
#include "etcd.h"
#include "keel/jobspec.h"
#include "member.h"
#include "keel/model.h"
#include "net.h"
#include "keel/progress.h"
#include "worker.h"

#define WK_EVAL_RECORDS 1000u /* test records per read and forward pass */

/* A connection to one server. */
struct wk_conn {
    char id[KEEL_ID_MAX + 1];
    char address[128];
    struct keel_client *client;
    uint64_t suspected_ms; /* monotonic ms of the last suspects/<id> written */
};

/*
 * The clock lead of pulls: for a pull of clock c, c minus the clock in the
 * reply (the slowest live worker's finished clocks as the answering server
 * counted them when it answered).  BSP allows 0, ssp:N allows N.
 */
struct wk_lead {
    int64_t max;    /* the largest lead seen; meaningful when pulls > 0 */
    uint64_t pulls; /* training pulls measured */
};

/* A shard position. */
struct wk_pos {
    uint32_t pass, batch;
    int known;
    uint64_t lease; /* the lease token it was reached under */
};

/* The job being worked on (training thread only). */
struct wk_job {
    char name[KEEL_ID_MAX + 1];
    int64_t spec_revision;
    struct keel_jobspec spec;
    struct keel_model model;
    keel_model_work *work;
    struct keel_model_params params, grads;
    struct keel_model_params pushed; /* the gradients of the push in flight (wk_push_start()) */
    uint32_t max_batch; /* rows of x: the larger of the batch size and the eval chunk */
    float *x;
    uint32_t *labels;
    int checked;          /* the dataset's shard count was checked against the spec */
    int failed;           /* a problem no retry can fix: idle until the job changes */
    struct wk_pos *floor; /* per shard: every batch before it was acknowledged */
    uint32_t nb_max;      /* batches per pass of the largest shard (shard 0) */
    uint64_t clock;       /* the clock of the batch being computed: keel_worker_clock() */
    uint64_t lease;       /* the token of the lease being worked on; its pushes carry it */
    uint32_t pull_enc;    /* what the pulls in flight ask for (wk_pull_all()) */
    struct wk_lead lead;  /* over every training pull of this job in this life */
};

struct wk {
    const struct keel_config *config;
    const char *cluster;
    const char *id;
    struct keel_tls *tls;
    keel_etcd *etcd;
    keel_member *member;
    keel_cview *view; /* every key of the cluster, kept up to date by a watch */
    atomic_int stopping;
    atomic_int member_lost;

    /* w->lock: the generation of the keys followed, the incarnation. */
    pthread_mutex_t lock;
    pthread_cond_t cond; /* the keys changed, the member was lost, or stopping */
    uint64_t generation; /* bumped when the assignment, a server or a job's key changes */
    uint64_t incarnation;

    /* Training thread only. */
    pthread_t train_tid;
    struct wk_conn *conns;
    size_t nconns;
    keel_assign *assign;
    int64_t assign_revision;
    struct keel_route route;
    char data_server[KEEL_ID_MAX + 1]; /* the server last read from */
    struct wk_job job;
    uint64_t total_batches, total_duplicates;

    /* w->rep_lock: the progress report the reporter thread writes. */
    pthread_t rep_tid;
    pthread_mutex_t rep_lock;
    pthread_cond_t rep_cond;
    int rep_stop;
    char rep_job[KEEL_ID_MAX + 1];
    uint32_t rep_shard;
    struct keel_progress rep_progress;
    uint64_t rep_want, rep_done; /* reports asked for and written */
    int rep_urgent;
};

/* ---- train.c ------------------------------------------------------------------- */

/* Copy the value of `key` (keys.h) as the view has it; 0, or KEEL_ENOTFOUND. */
int wk_key_copy(struct wk *w, const char *key, struct keel_buf *out, int64_t *mod_revision);

/* The ids of the registered servers, sorted; free with free() (one block). */
size_t wk_servers(struct wk *w, char (**ids)[KEEL_ID_MAX + 1]);

/*
 * The client of server `id` at the address it registered, made on first
 * use and remade when the address changes; NULL when it is not registered.
 */
struct keel_client *wk_conn_of(struct wk *w, const char *id);

/*
 * Server `id` did not answer and is not connected: write suspects/<id>
 * under this worker's lease (at most once a second per server), so that the
 * coordinator's leader checks it at once rather than after its lease TTL.
 */
void wk_suspect(struct wk *w, const char *id);

/*
 * Bring w->assign and w->route up to date with the assignment in etcd (the
 * watch's copy; with `fresh`, read from etcd itself).  Returns 1 when the
 * route changed, 0 when not, or an error (no assignment yet, a bad one).
 */
int wk_refresh_route(struct wk *w, int fresh, struct keel_error *err);

/* Whether w->job is still the running job (training thread). */
int wk_job_running(struct wk *w);

/* ---- request.c ------------------------------------------------------------------- */

/* Counts of one exchange with the servers. */
struct wk_xstats {
    unsigned acks, duplicates; /* pushes: ACKs, of which DUPLICATE */
    unsigned replies;          /* pulls: PULL_REPLYs */
    int64_t lead;              /* pulls: the largest clock lead over the replies */
};

/*
 * Pull every row of the model into w->job.params for iteration `clock` (0:
 * never waits); `st` (may be NULL) gets the replies' clock lead.  The rows
 * come in the job's compression, or with `exact` as 32-bit floats (the
 * test evaluation measures the model the servers hold).
 */
int wk_pull_all(struct wk *w, uint64_t clock, int exact, struct wk_xstats *st,
                struct keel_error *err);

/*
 * A push in flight.  wk_push_start() sends w->job.grads, named (shard, seq),
 * for iteration `clock`, to every primary, and swaps it with
 * w->job.pushed, which every send of the push (retries too) reads from
 * then: the next batch's gradients can be computed into w->job.grads while
 * the push is acknowledged.  wk_push_finish() sees it through (waits for
 * every ACK, sending again what failed, as a pull is) and frees it;
 * wk_push_drop() gives it up (it may or may not be applied: a later push of
 * the same position is answered as a duplicate).  One push at a time.
 */
struct wk_push;
struct wk_push *wk_push_start(struct wk *w, uint32_t shard, uint64_t seq, uint64_t clock);
int wk_push_finish(struct wk *w, struct wk_push *p, struct wk_xstats *st, struct keel_error *err);
void wk_push_drop(struct wk_push *p);

/* Records of a dataset shard, read from the servers with fail-over. */
struct wk_reader {
    char dataset[KEEL_ID_MAX + 1];
    uint32_t shard;
    uint64_t total; /* records in the shard, once known */
    int have_total;
    uint64_t first; /* records [first, first + n) are in `reply` */
    uint32_t n;
    struct keel_reply *reply;
    char server[KEEL_ID_MAX + 1];
};

void wk_reader_init(struct wk_reader *r, const char *dataset, uint32_t shard);
void wk_reader_release(struct wk_reader *r);

/*
 * Make sure the reader knows the shard's size, reading ahead from record
 * `from`.  KEEL_EINVAL when the shard does not exist.
 */
int wk_reader_open(struct wk *w, struct wk_reader *r, uint64_t from, struct keel_error *err);

/* Records [from, from + n) of the shard into w->job.x and w->job.labels. */
int wk_reader_fill(struct wk *w, struct wk_reader *r, uint64_t from, uint32_t n,
                   struct keel_error *err);

/*
 * Check that the job's dataset has exactly spec.shards shards (KEEL_EINVAL,
 * fatal for the job, when it has more or fewer), and set w->job.nb_max.
 */
int wk_check_dataset(struct wk *w, struct keel_error *err);

/*
 * The test accuracy of the model as the servers hold it now, over every
 * shard of the job's test dataset, into *e (e->examples 0 when the job has
 * no test dataset).
 */
int wk_evaluate(struct wk *w, struct keel_eval *e, struct keel_error *err);

#endif
