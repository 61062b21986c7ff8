/*
 * server_int.h - the inside of keel-server, shared by server/server.c (the
 * job's ranges, requests, the storage thread, etcd) and server/replica.c
 * (streams to backups, the backup's side, replica reports).
 *
 * srv->lock guards everything here but what struct keel_ps guards itself;
 * the functions below that say "srv->lock held" need it.
 */
#ifndef KEEL_SERVER_INT_H
#define KEEL_SERVER_INT_H

#include <pthread.h>
#include <stdint.h>

#include "keel/assign.h"
#include "keel/checkpoint.h"
#include "keel/dataset.h"
#include "keel/jobspec.h"
#include "keel/replicas.h"
#include "keel/store.h"
#include "keel/config.h"
#include "cview.h"
#include "etcd.h"
#include "member.h"
#include "net.h"
#include "ps.h"

/* What a pending acknowledgement answers. */
enum ack_kind {
    ACK_PUSH,      /* a worker's push to a primary */
    ACK_REPLICATE, /* a primary's update, on a backup */
    ACK_COPY,      /* a primary's copy of a range, on a backup */
    ACK_LOG,       /* log records only, already answered (durability = replicas) */
};

/* A range a push touched, and the LSN every in-sync backup must have before it is acknowledged. */
struct range_wait {
    uint32_t range;
    uint64_t lsn;
};

/*
 * A request applied in memory, waiting for its log records to be committed
 * (the storage thread) and, for a push, for every in-sync backup of the
 * ranges it touched to confirm it (release_waiting()).
 */
struct pending_ack {
    struct pending_ack *next;
    enum ack_kind kind;
    struct keel_conn *conn;
    struct keel_frame_header req;
    struct keel_ps_result result;
    char worker[KEEL_ID_MAX + 1]; /* the push's worker id: the frame is not kept */
    uint64_t seq;
    uint32_t shard;
    struct range_wait *waits; /* ACK_PUSH */
    size_t nwaits;
    uint64_t lsn;              /* ACK_REPLICATE, ACK_COPY: echoed in the ACK */
    uint64_t term;             /* ACK_COPY: the term the copy was taken at */
    struct keel_snapshot copy; /* ACK_COPY: installed in the store in log order */
    uint64_t bytes;            /* what it writes to the store (group commit's bound) */
};

#define MAX_BACKUPS (KEEL_ASSIGN_MAX_REPLICATION - 1)

/*
 * A primary's stream of one range to one backup: a RANGE_COPY first, then
 * every update in LSN order.  A failure (a lost connection, a refusal) starts
 * it again with a new copy; replies to an older start (gen) are ignored.
 */
enum stream_state {
    STREAM_COPY,    /* a copy must be sent */
    STREAM_COPYING, /* the copy is on its way; updates follow it */
    STREAM_LIVE,    /* the backup installed the copy */
};

struct stream {
    char backup[KEEL_ID_MAX + 1];
    uint64_t term;
    enum stream_state state;
    uint64_t acked;    /* the backup has every update of this start up to this LSN */
    uint64_t gen;      /* bumped at every start */
    uint64_t retry_at; /* monotonic ms: no copy before, after a failure */
    unsigned failures; /* in a row, for the log */
    int pledged;       /* reported as live at this term: waited for until it leaves the range */
};

/* A message for a backup, queued in the order it must be sent. */
struct outgoing {
    struct outgoing *next;
    char backup[KEEL_ID_MAX + 1];
    uint32_t range;
    uint64_t gen, lsn;
    struct keel_msg msg;
    struct keel_buf payload; /* RANGE_COPY: the packed range */
    uint64_t *keys;          /* REPLICATE: the update's keys, rows and worker id */
    float *rows;
    char worker[KEEL_ID_MAX + 1];
};

/* A connection to another server (sender thread only). */
struct peer {
    char id[KEEL_ID_MAX + 1];
    char address[128];
    struct keel_client *client;
};

/* A pull waiting for the slowest worker (BSP/SSP). */
/*
 * Pulls parked at once (each holds its keys until the clock allows it): a
 * worker parks a few per server (one per table group of its next batch), so
 * more than KEEL_PARKED_PER_CONN on one connection, or KEEL_PARKED_MAX in
 * all, is a misbehaving peer: the pull is refused (KEEL_EUNAVAILABLE).
 */
#define KEEL_PARKED_PER_CONN 64
#define KEEL_PARKED_MAX      4096

struct parked_pull {
    struct parked_pull *next;
    struct keel_conn *conn;
    struct keel_frame_header req;
    uint32_t table_id, row_width, nkeys;
    uint64_t clock;
    uint64_t *keys;
};

/*
 * A checkpoint cut at one clock C (cut.c): of every range this server leads,
 * a copy taken at one moment, when every leased shard stands at (or, held
 * back, past) its position before C, and no push of clock C or later was
 * applied.  Pushes of clock C or later wait (refused, to retry) until the
 * copies are taken.  A backup copies a range just before the first
 * replicated update its primary sent after its own copy (the update's
 * `cut`).  A range installed from a copy while the cut is under way is
 * left out of it, as is one past C.
 */
enum cut_state {
    CUT_WAIT,   /* not copied yet */
    CUT_COPIED, /* copies[range] holds it at the cut */
    CUT_OUT,    /* left out (past C, or installed from a copy during the cut) */
};

/* srv->cut_mark of a range installed from a copy: which cut it follows is not known. */
#define CUT_MARK_UNKNOWN UINT32_MAX

struct cut {
    uint64_t clock; /* C; 0: no cut under way */
    uint32_t index; /* C / checkpoint_interval: what REPLICATE's `cut` carries */
    uint64_t *seq;  /* by shard: its position once every clock below C is done */
    uint32_t nshards;
    uint8_t state[KEEL_PROTO_NRANGES];
    struct keel_snapshot *copies; /* [KEEL_PROTO_NRANGES] */
    int open;                     /* the ranges led are copied: pushes up to the next cut go on */
    int late;                     /* a push reached the next cut before the backups' copies */
    uint64_t began_ms;            /* monotonic, when the cut began */
    uint64_t seen;                /* the largest clock of a push or update seen since */
    uint64_t held_since;          /* monotonic ms the first push past C was held back; 0: none */
    uint64_t held_ms;             /* how long pushes past C were held back */
    uint64_t nheld;               /* refusals of pushes past C */
};

struct open_dataset {
    char name[KEEL_ID_MAX + 1];
    keel_dataset *ds;
};

struct srv {
    const struct keel_config *config;
    const char *cluster;
    keel_store *store;
    struct keel_tls *tls;
    struct keel_listener *listener;
    keel_etcd *etcd;
    keel_member *member;
    keel_cview *view; /* the cluster's keys, kept up to date by a watch */

    pthread_mutex_t lock;
    pthread_cond_t wake; /* the storage thread: work or stop */
    int stopping;
    struct keel_ps *ps; /* the running job's ranges, NULL when none */
    struct keel_jobspec spec;
    char job[KEEL_ID_MAX + 1];
    keel_assign *assign;
    uint64_t assign_version;
    struct pending_ack *acks, **acks_tail; /* applied, to be logged */
    size_t nacks;                          /* queued in acks, */
    uint64_t acks_bytes;                   /* their bytes, */
    uint64_t acks_since;                   /* and when the oldest was queued (monotonic ms) */
    struct pending_ack *waiting;           /* pushes logged, waiting for backups */
    struct parked_pull *parked;
    /* replication */
    struct stream streams[KEEL_PROTO_NRANGES][MAX_BACKUPS];
    uint8_t nstreams[KEEL_PROTO_NRANGES];
    unsigned installs[KEEL_PROTO_NRANGES]; /* copies received and not yet in the store */
    struct outgoing *out, **out_tail;
    pthread_cond_t out_wake; /* the sender thread: messages or stop */
    pthread_t sender_tid;
    struct peer *peers;
    size_t npeers;
    struct keel_replica_report report; /* what this server holds, for etcd */
    /* backups whose stream failed without an answer, to report (suspects/<id>) */
    struct suspect {
        char id[KEEL_ID_MAX + 1];
        uint64_t reported_ms; /* monotonic; 0: to report */
    } suspects[KEEL_ASSIGN_MAX_REPLICATION * 4];
    unsigned nsuspects;
    int store_had_job; /* the store held this job's ranges before it was taken up here */
    /*
     * The LSN the store holds of each range (keel_restore_lsns() when the job
     * is taken up, then the range's LSN each time it is closed); reported as
     * "stored" for ranges not held, so the leader can restore a range from here.
     */
    uint64_t stored[KEEL_PROTO_NRANGES];
    /*
     * Snapshots: the bytes of update-log records committed since the last
     * one, and of the state (rows, optimizer state, keys) it copied, under
     * lock; job_gen (atomic) changes whenever the job served does, so that
     * copies of one job are never written over the next one's store.
     */
    uint64_t log_bytes, state_bytes;
    uint64_t job_gen;
    /* wall ms when this server was promoted to lead the range, until its
     * first push there is acknowledged (logged once); 0: none pending */
    int64_t promoted_ms[KEEL_PROTO_NRANGES];
    /*
     * The row encodings (half.h) seen in this job: bit `enc` for pushes, bit
     * 4 + `enc` for pull replies; the first of each is logged.
     */
    unsigned enc_seen;
    int report_dirty;
    uint64_t report_at;              /* monotonic ms of the last report written */
    pthread_mutex_t report_lock;     /* held while a report is written: s->member stays */
    char **workers;                  /* live worker ids, as the view has them */
    char (*leases)[KEEL_ID_MAX + 1]; /* the running job's shards' owners ("": free), by shard */
    uint64_t *lease_tokens;          /* their fencing tokens (keel_shard.lease), by shard */
    uint32_t nleases;                /* 0: no lease of the job is known (no coordinator) */
    size_t nworkers;
    struct open_dataset *datasets;
    size_t ndatasets;
    pthread_t storage_tid;
    /* checkpoints */
    struct keel_ckpt_key ckpt_key; /* loaded from [server] checkpoint_key */
    int ckpt_keyed;                /* a key was configured and loaded */
    uint64_t ckpt_next;            /* the job's clock of the next checkpoint; 0: none */
    uint64_t ckpt_clock;           /* the highest slowest-worker clock seen */
    struct cut cut;                /* the checkpoint at ckpt_next, being cut (cut.c) */
    /* By range: the last cut it was copied at (led), or whose update came last (backed up). */
    uint32_t cut_mark[KEEL_PROTO_NRANGES];
};

/* ---- cut.c: checkpoints cut at one clock (srv->lock held) ------------------------ */

/* Begin the cut at clock `clock` (> 0) of the running job; 0 when it cannot be cut. */
int srv_cut_begin(struct srv *s, uint64_t clock);

/* The clock at which every batch of the job is done (0 when unknown here). */
uint64_t srv_cut_end_clock(struct srv *s);

/* Drop the cut under way, and the copies it took. */
void srv_cut_end(struct srv *s);

/* KEEL_EUNAVAILABLE when push `p` is past the cut and must wait for it; else 0. */
int srv_cut_holds(struct srv *s, const struct keel_msg_push *p, struct keel_error *err);

/*
 * A backup is about to apply a replicated update of `clock` to `range`,
 * which its primary sent after its copy at cut `mark`: copy it first if that
 * is the cut under way and this update the first after the primary's copy.
 */
void srv_cut_before(struct srv *s, unsigned range, uint32_t mark, uint64_t clock);

/* Take the copies once every leased shard stands at the cut; then pushes past it go on. */
void srv_cut_check(struct srv *s);

/* Range `range` was installed from a primary's copy: left out of the cut under way. */
void srv_cut_installed(struct srv *s, unsigned range);

/*
 * Whether the copies are taken; then they move to *copies (increasing
 * range, *n of them; the caller releases each and frees the array).
 */
int srv_cut_take(struct srv *s, struct keel_snapshot **copies, size_t *n);

/* ---- server.c ------------------------------------------------------------------- */

/* Dataset `name` of this server's store, opened once and kept (srv->lock held). */
keel_dataset *srv_dataset_of(struct srv *s, struct keel_str name, struct keel_error *err);

/* Answer `req` with KEEL_EREDIRECT and this server's assignment version (srv->lock held). */
int srv_redirect(struct srv *s, struct keel_conn *conn, const struct keel_frame_header *req,
                 const char *why);

/* Queue `a` for the storage thread, to be logged and answered on `conn` (srv->lock held). */
void srv_queue_pending(struct srv *s, struct pending_ack *a, struct keel_conn *conn,
                       const struct keel_frame_header *req);

/*
 * durability = replicas: move the log records of `a` (applied, about to be
 * answered without waiting for the disk) into an ACK_LOG entry queued for
 * the storage thread, leaving `a` its LSN and duplicate flag.  srv->lock held.
 */
void srv_log_behind(struct srv *s, struct pending_ack *a);

/* ---- replica.c: a primary's streams to its backups (srv->lock held) ---------------- */

/* The streams of `range` become one per backup in `backups`, at `term`. */
void repl_streams_set(struct srv *s, unsigned range, const char *const *backups, size_t n,
                      uint64_t term);

/* Queue a copy of every range whose stream needs one (and may have it now). */
void repl_start_copies(struct srv *s);

/* Queue update `a` (applied here as primary) for every backup streaming its range. */
void repl_forward(struct srv *s, const struct keel_ps_applied *a, const char *worker);

/* Answer every logged push whose backups all have it (or redirect it: no longer led here). */
void repl_release_waiting(struct srv *s);

void repl_pending_free(struct pending_ack *a);
void repl_send_ack(struct pending_ack *a, uint64_t lsn, int duplicate);

/* ---- replica.c: a backup's side (I/O threads) ------------------------------------ */

int repl_handle_replicate(struct srv *s, struct keel_conn *conn,
                          const struct keel_cert_identity *peer, const struct keel_msg *msg,
                          struct keel_error *err);
int repl_handle_range_copy(struct srv *s, struct keel_conn *conn,
                           const struct keel_cert_identity *peer, const struct keel_msg *msg,
                           struct keel_error *err);

/* ---- replica.c: threads ----------------------------------------------------------- */

/* Write replicas/<id> when it changed, and every 2 s during a job (storage thread). */
void repl_write_report(struct srv *s);

/* Report the backups that stopped answering to the leader (storage thread). */
void repl_report_suspects(struct srv *s);

/* The sender thread: sends the queued messages to the backups, in order. */
void *repl_sender_main(void *arg);

#endif
