/*
 * keel_test_store.c - a helper for the storage integration tests: fills a
 * store with range snapshots, log records and checkpoints, damages it in
 * chosen places through LMDB itself, runs the SIGKILL crash loop, and fills
 * a store up to a small map limit.
 *
 *   keel-test-store fill --store DIR --key FILE [--ranges N] [--rows N]
 *                        [--checkpoints N]
 *   keel-test-store tamper --store DIR WHAT ID [RANGE]
 *       WHAT: row (flip a byte of the rows of checkpoint ID, range RANGE),
 *             manifest (flip a byte of manifest ID's JSON),
 *             audit (flip a byte of audit record ID),
 *             audit-remove (delete audit record ID)
 *   keel-test-store crash --store DIR --key FILE [--kills N] [--seed S]
 *   keel-test-store full --store DIR --key FILE --map-max BYTES
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "alloc.h"
#include "keel/audit.h"
#include "keel/checkpoint.h"
#include "log.h"
#include "keel/snapshot.h"
#include "keel/store.h"
#include "keel/ulog.h"
#include "snapshot_int.h"
#include "store_int.h"
#include "ulog_int.h"

#define PROG    "keel-test-store"
#define WIDTH   16
#define TABLE_A 1
#define TABLE_B 2

struct opts {
    const char *store;
    const char *key;
    uint32_t ranges;
    uint64_t rows;
    unsigned checkpoints;
    unsigned kills;
    unsigned long seed;
    size_t map_max;
};

static void usage(FILE *f)
{
    fprintf(f, "usage: " PROG " fill|tamper|crash|full --store DIR [options] [ARGS]\n"
               "  fill   --key FILE [--ranges N] [--rows N] [--checkpoints N]\n"
               "         snapshots of N ranges (tables 1 and 2), a log tail, N checkpoints\n"
               "  tamper row ID RANGE | manifest ID | audit SEQ | audit-remove SEQ\n"
               "         damage one place of the store through LMDB\n"
               "  crash  --key FILE [--kills N] [--seed S]\n"
               "         kill a writer with SIGKILL N times at random moments and check\n"
               "         after each kill that only whole snapshots and records are seen\n"
               "  full   --key FILE --map-max BYTES\n"
               "         grow snapshots until the map limit is reached; check the error and\n"
               "         that the previous checkpoint still verifies\n");
}

static int die(const char *what, const struct keel_error *err)
{
    fprintf(stderr, PROG ": %s: %s\n", what, err->msg);
    return 1;
}

/*
 * The content of a range at generation `lsn`: every row value and the shard
 * position are functions of (range, lsn), so a reader can tell a whole
 * snapshot from a mixture.
 */
static float value_of(uint32_t range, uint64_t lsn)
{
    return (float)(range * 100000u) + (float)(lsn % 100000u);
}

static void make_snapshot(struct keel_snapshot *snap, struct keel_snap_table *t,
                          struct keel_shard_pos *sp, uint32_t range, uint64_t lsn, uint64_t rows)
{
    float v = value_of(range, lsn);

    memset(snap, 0, sizeof(*snap));
    for (int i = 0; i < 2; i++) {
        struct keel_snap_table *x = &t[i];
        uint64_t n = i == 0 ? rows : rows / 4 + 1;

        x->table_id = i == 0 ? TABLE_A : TABLE_B;
        x->width = i == 0 ? WIDTH : 4;
        x->state_width = i == 0 ? 2 : 0;
        x->nrows = n;
        x->keys = keel_calloc(n, 8);
        x->rows = keel_calloc(n * x->width, 4);
        x->state = x->state_width ? keel_calloc(n * x->state_width, 4) : NULL;
        for (uint64_t r = 0; r < n; r++) {
            x->keys[r] = (uint64_t)x->table_id << 48 | (r * 256 + range);
            for (uint32_t c = 0; c < x->width; c++)
                x->rows[r * x->width + c] = v;
            for (uint32_t c = 0; c < x->state_width; c++)
                x->state[r * x->state_width + c] = -v;
        }
    }
    sp->shard = 3;
    sp->seq = lsn;
    sp->incarnation = 1;
    snprintf(sp->worker_id, sizeof(sp->worker_id), "w%u", range % 4);
    snap->range = range;
    snap->lsn = lsn;
    snap->ntables = 2;
    snap->tables = t;
    snap->nshards = 1;
    snap->shards = sp;
}

static void free_tables(struct keel_snap_table *t)
{
    for (int i = 0; i < 2; i++) {
        free(t[i].keys);
        free(t[i].rows);
        free(t[i].state);
    }
}

static int write_snapshot(keel_store *s, uint32_t range, uint64_t lsn, uint64_t rows,
                          struct keel_error *err)
{
    struct keel_snapshot snap;
    struct keel_snap_table t[2];
    struct keel_shard_pos sp;
    int rc;

    make_snapshot(&snap, t, &sp, range, lsn, rows);
    rc = keel_snapshot_write(s, &snap, err);
    free_tables(t);
    return rc;
}

/* Log records lsn first..first+n-1 of `range`, each a push whose values say its LSN. */
static int append_log(keel_store *s, uint32_t range, uint64_t first, unsigned n,
                      struct keel_error *err)
{
    struct keel_ulog_record recs[16];
    uint64_t keys[16][4];
    float rows[16][4 * WIDTH];
    int rc;

    for (unsigned i = 0; i < n && i < 16; i++) {
        memset(&recs[i], 0, sizeof(recs[i]));
        recs[i].range = range;
        recs[i].lsn = first + i;
        recs[i].push.worker_id.ptr = "w0";
        recs[i].push.worker_id.len = 2;
        recs[i].push.shard = 3;
        recs[i].push.incarnation = 1;
        recs[i].push.seq = first + i;
        recs[i].push.data.table_id = TABLE_A;
        recs[i].push.data.row_width = WIDTH;
        recs[i].push.data.nkeys = 4;
        for (int k = 0; k < 4; k++)
            keys[i][k] = (uint64_t)TABLE_A << 48 | ((uint64_t)k * 256 + range);
        for (int c = 0; c < 4 * WIDTH; c++)
            rows[i][c] = value_of(range, first + i);
        recs[i].push.data.keys = keys[i];
        recs[i].push.data.rows = rows[i];
    }
    rc = keel_ulog_append(s, recs, n < 16 ? n : 16, err);
    return rc;
}

static int take_checkpoint(keel_store *s, const struct keel_ckpt_key *key, uint64_t clock,
                           uint64_t *id, struct keel_error *err)
{
    struct keel_ckpt_params p = {"test-job", clock, {0}, NULL, 0, NULL};

    memset(p.spec_sha256, 0x5a, sizeof(p.spec_sha256));
    return keel_checkpoint_take(s, key, &p, id, err);
}

static int cmd_fill(const struct opts *o)
{
    struct keel_error err;
    struct keel_ckpt_key key;
    keel_store *s;
    uint64_t id;
    int rc = 0;

    keel_error_init(&err);
    if (keel_ckpt_key_load(&key, o->key, &err) != 0)
        return die("fill", &err);
    if (keel_store_open(&s, o->store, NULL, &err) != 0)
        return die("fill", &err);
    for (unsigned c = 1; c <= o->checkpoints && rc == 0; c++) {
        for (uint32_t r = 0; r < o->ranges && rc == 0; r++) {
            rc = append_log(s, r, (uint64_t)c * 100, 5, &err);
            if (rc == 0)
                rc = write_snapshot(s, r, (uint64_t)c * 100 + 4, o->rows, &err);
        }
        if (rc == 0)
            rc = take_checkpoint(s, &key, c * 10, &id, &err);
        if (rc == 0)
            printf("checkpoint %" PRIu64 "\n", id);
    }
    /* A log tail after the last snapshots. */
    for (uint32_t r = 0; r < o->ranges && rc == 0; r++)
        rc = append_log(s, r, (uint64_t)(o->checkpoints + 1) * 100, 3, &err);
    keel_store_close(s);
    return rc ? die("fill", &err) : 0;
}

struct tamper_ctx {
    keel_store *s;
    enum keel_db db;
    unsigned char key[16];
    size_t klen;
    size_t offset; /* from the end */
    int remove;
};

static int tamper_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct tamper_ctx *t = ctx;
    unsigned char *copy;
    MDB_val v;
    int rc;

    if (t->remove) {
        rc = keel_store_get(t->s, txn, t->db, t->key, t->klen, &v, err);
        return rc ? rc : keel_store_del(t->s, txn, t->db, t->key, t->klen, err);
    }
    rc = keel_store_get(t->s, txn, t->db, t->key, t->klen, &v, err);
    if (rc != 0)
        return rc;
    copy = keel_malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size - 1 - t->offset % v.mv_size] ^= 0x20;
    rc = keel_store_put(t->s, txn, t->db, t->key, t->klen, copy, v.mv_size, err);
    free(copy);
    return rc;
}

static int cmd_tamper(const struct opts *o, int argc, char **argv)
{
    struct tamper_ctx t;
    struct keel_error err;
    uint64_t id;
    int rc;

    memset(&t, 0, sizeof(t));
    keel_error_init(&err);
    if (argc < 2) {
        usage(stderr);
        return 64;
    }
    id = strtoull(argv[1], NULL, 10);
    if (strcmp(argv[0], "row") == 0 && argc == 3) {
        t.db = KEEL_DB_CKPT_ROWS;
        keel_store_be64(t.key, id);
        keel_store_be32(t.key + 8, (uint32_t)strtoul(argv[2], NULL, 10));
        keel_store_be32(t.key + 12, 0);
        t.klen = 16;
        t.offset = 5; /* inside the last row's optimizer state */
    } else if (strcmp(argv[0], "manifest") == 0) {
        t.db = KEEL_DB_CKPT_MANIFEST;
        keel_store_be64(t.key, id);
        t.klen = 8;
        t.offset = 30; /* inside the JSON */
    } else if (strcmp(argv[0], "audit") == 0 || strcmp(argv[0], "audit-remove") == 0) {
        t.db = KEEL_DB_AUDIT;
        keel_store_be64(t.key, id);
        t.klen = 8;
        t.offset = 0; /* the last byte of the detail */
        t.remove = strcmp(argv[0], "audit-remove") == 0;
    } else {
        usage(stderr);
        return 64;
    }
    if (keel_store_open(&t.s, o->store, NULL, &err) != 0)
        return die("tamper", &err);
    rc = keel_store_write(t.s, tamper_fn, &t, &err);
    keel_store_close(t.s);
    return rc ? die("tamper", &err) : 0;
}

/* ---- crash loop -------------------------------------------------------- */

#define CRASH_RANGES 4
#define CRASH_ROWS   3000

/* Where a range stands: its snapshot's LSN and its last logged LSN. */
static int range_state(keel_store *s, uint32_t range, uint64_t *snap_lsn, uint64_t *log_lsn,
                       struct keel_error *err)
{
    struct keel_snapshot_info info;
    keel_txn *txn;
    int rc = keel_store_read_begin(s, &txn, err);

    if (rc != 0)
        return rc;
    rc = keel_snapshot_stat(s, txn, range, &info, err);
    *snap_lsn = rc == 0 ? info.lsn : 0;
    if (rc == KEEL_ENOTFOUND)
        rc = 0;
    if (rc == 0)
        rc = keel_ulog_last_lsn(s, txn, range, log_lsn, err);
    keel_store_read_end(s, txn);
    return rc;
}

/* The child: write log records, snapshots and checkpoints until killed. */
static void crash_writer(const struct opts *o, const struct keel_ckpt_key *key, unsigned seed)
{
    struct keel_store_options so = {.map_initial = 1 << 20, .map_max = 0};
    struct keel_error err;
    keel_store *s;
    uint64_t next[CRASH_RANGES];
    int have_snapshot = 0; /* a checkpoint needs at least one range snapshot */

    keel_error_init(&err);
    srand(seed);
    if (keel_store_open(&s, o->store, &so, &err) != 0)
        _exit(die("crash writer", &err));
    for (uint32_t r = 0; r < CRASH_RANGES; r++) {
        uint64_t snap, log;
        if (range_state(s, r, &snap, &log, &err) != 0)
            _exit(die("crash writer", &err));
        next[r] = (log > snap ? log : snap) + 1;
        have_snapshot |= snap > 0;
    }
    for (uint64_t round = 0; round < 1000000; round++) {
        uint32_t r = (uint32_t)(rand() % CRASH_RANGES);
        unsigned n = 1 + (unsigned)(rand() % 8);
        uint64_t id;

        if (append_log(s, r, next[r], n, &err) != 0)
            _exit(die("crash writer: log", &err));
        next[r] += n;
        if (rand() % 3 == 0) {
            if (write_snapshot(s, r, next[r] - 1, CRASH_ROWS + (uint64_t)(rand() % 2000), &err) !=
                0)
                _exit(die("crash writer: snapshot", &err));
            have_snapshot = 1;
        }
        if (have_snapshot && rand() % 10 == 0 && take_checkpoint(s, key, round, &id, &err) != 0)
            _exit(die("crash writer: checkpoint", &err));
        if (rand() % 25 == 0 && keel_checkpoint_prune(s, 3, NULL, &err) != 0)
            _exit(die("crash writer: prune", &err));
    }
    keel_store_close(s);
    _exit(0);
}

struct log_check {
    uint32_t range;
    uint64_t expect;
};

static int check_record(const struct keel_ulog_record *rec, void *ctx, struct keel_error *err)
{
    struct log_check *c = ctx;
    float v = value_of(c->range, rec->lsn);

    if (rec->lsn != c->expect)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "range %" PRIu32 ": log LSN %" PRIu64 " where %" PRIu64 " was due",
                            c->range, rec->lsn, c->expect);
    for (uint32_t i = 0; i < rec->push.data.nkeys * rec->push.data.row_width; i++)
        if (rec->push.data.rows[i] != v)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "range %" PRIu32 ": log LSN %" PRIu64 " holds another's values",
                                c->range, rec->lsn);
    c->expect++;
    return 0;
}

/* After a kill: everything visible must be whole and consistent. */
static int crash_check(const struct opts *o, const struct keel_ckpt_key *key, unsigned *snapshots,
                       unsigned *checkpoints, struct keel_error *err)
{
    keel_store *s;
    uint64_t *ids = NULL;
    size_t nids = 0;
    int rc;

    rc = keel_store_open(&s, o->store, NULL, err);
    if (rc != 0)
        return rc;
    for (uint32_t r = 0; r < CRASH_RANGES && rc == 0; r++) {
        struct keel_snapshot snap;
        struct log_check lc = {r, 1};

        rc = keel_snapshot_read(s, r, &snap, err);
        if (rc == KEEL_ENOTFOUND) {
            rc = 0;
        } else if (rc == 0) {
            float v = value_of(r, snap.lsn);
            (*snapshots)++;
            for (size_t t = 0; t < snap.ntables && rc == 0; t++) {
                const struct keel_snap_table *x = &snap.tables[t];
                for (uint64_t i = 0; i < x->nrows * x->width && rc == 0; i++)
                    if (x->rows[i] != v)
                        rc = keel_err_set(err, KEEL_ECORRUPT,
                                          "range %" PRIu32 ": snapshot of LSN %" PRIu64
                                          " holds a row of another snapshot",
                                          r, snap.lsn);
                for (uint64_t i = 0; i < x->nrows * x->state_width && rc == 0; i++)
                    if (x->state[i] != -v)
                        rc = keel_err_set(err, KEEL_ECORRUPT, "range %" PRIu32 ": mixed state", r);
            }
            if (rc == 0 && (snap.nshards != 1 || snap.shards[0].seq != snap.lsn))
                rc = keel_err_set(err, KEEL_ECORRUPT,
                                  "range %" PRIu32 ": shard table is not the snapshot's", r);
            lc.expect = snap.lsn + 1;
            keel_snapshot_release(&snap);
        }
        /* The log after the snapshot: contiguous, whole records. */
        if (rc == 0)
            rc = keel_ulog_read(s, r, 0, check_record, &lc, err);
    }
    if (rc == 0)
        rc = keel_checkpoint_list(s, &ids, &nids, err);
    for (size_t i = 0; i < nids && rc == 0; i++) {
        rc = keel_checkpoint_verify(s, key, ids[i], 0, err);
        (*checkpoints)++;
    }
    free(ids);
    if (rc == 0)
        rc = keel_audit_verify(s, NULL, NULL, NULL, err);
    keel_store_close(s);
    return rc;
}

static int cmd_crash(const struct opts *o)
{
    struct keel_ckpt_key key;
    struct keel_error err;
    unsigned snapshots = 0, checkpoints = 0;
    unsigned long seed = o->seed ? o->seed : (unsigned long)time(NULL) ^ (unsigned long)getpid();
    double started;
    struct timespec ts;

    keel_error_init(&err);
    if (keel_ckpt_key_load(&key, o->key, &err) != 0)
        return die("crash", &err);
    printf("crash test: seed %lu, %u kills\n", seed, o->kills);
    fflush(stdout);
    srand((unsigned)seed);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    started = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    for (unsigned k = 1; k <= o->kills; k++) {
        unsigned child_seed = (unsigned)rand();
        /* Let the first kills come early (creation, first growth), later ones later. */
        useconds_t delay = (useconds_t)(1000 + rand() % (k < 5 ? 20000 : 150000));
        int status;
        pid_t pid = fork();

        if (pid < 0) {
            perror(PROG ": fork");
            return 1;
        }
        if (pid == 0)
            crash_writer(o, &key, child_seed);
        usleep(delay);
        kill(pid, SIGKILL);
        waitpid(pid, &status, 0);
        if (WIFEXITED(status)) {
            fprintf(stderr, PROG ": kill %u: the writer exited (status %d) before the kill\n", k,
                    WEXITSTATUS(status));
            return 1;
        }
        if (crash_check(o, &key, &snapshots, &checkpoints, &err) != 0) {
            fprintf(stderr, PROG ": kill %u (seed %lu, after %u us): %s\n", k, seed,
                    (unsigned)delay, err.msg);
            return 1;
        }
        if (k % 10 == 0) {
            printf("  %u kills checked\n", k);
            fflush(stdout);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &ts);
    printf("crash test: %u kills, every store consistent: %u snapshots and %u checkpoints "
           "verified in %.1f s\n",
           o->kills, snapshots, checkpoints,
           (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 - started);
    return 0;
}

/* ---- full map ---------------------------------------------------------- */

static int cmd_full(const struct opts *o)
{
    struct keel_store_options so = {.map_initial = 1 << 20, .map_max = o->map_max};
    struct keel_ckpt_key key;
    struct keel_error err;
    keel_store *s;
    uint64_t id, rows = 1000;
    int rc;

    keel_error_init(&err);
    if (keel_ckpt_key_load(&key, o->key, &err) != 0)
        return die("full", &err);
    if (keel_store_open(&s, o->store, &so, &err) != 0)
        return die("full", &err);
    rc = write_snapshot(s, 0, 1, rows, &err);
    if (rc == 0)
        rc = take_checkpoint(s, &key, 1, &id, &err);
    if (rc != 0) {
        keel_store_close(s);
        return die("full: the first checkpoint must fit", &err);
    }
    printf("checkpoint %" PRIu64 " taken\n", id);
    /* Grow the snapshot (and checkpoint it) until the store is full. */
    for (uint64_t lsn = 2; lsn < 64 && rc == 0; lsn++) {
        rows *= 2;
        rc = write_snapshot(s, 0, lsn, rows, &err);
        if (rc == 0)
            rc = take_checkpoint(s, &key, lsn, &id, &err);
    }
    if (rc == 0) {
        keel_store_close(s);
        fprintf(stderr, PROG ": full: the store never filled up\n");
        return 1;
    }
    printf("write failed: %s (%s)\n", err.msg, keel_err_name(rc));
    keel_store_close(s);
    return rc == -ENOSPC ? 0 : 1;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"store", required_argument, NULL, 's'},
        {"key", required_argument, NULL, 'k'},
        {"ranges", required_argument, NULL, 'r'},
        {"rows", required_argument, NULL, 'R'},
        {"checkpoints", required_argument, NULL, 'c'},
        {"kills", required_argument, NULL, 'K'},
        {"seed", required_argument, NULL, 'S'},
        {"map-max", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct opts o = {NULL, NULL, 3, 500, 2, 50, 0, 0};
    int opt;

    keel_log_init(PROG, KEEL_LOG_LEVEL_WARN, NULL);
    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 's':
            o.store = optarg;
            break;
        case 'k':
            o.key = optarg;
            break;
        case 'r':
            o.ranges = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'R':
            o.rows = strtoull(optarg, NULL, 10);
            break;
        case 'c':
            o.checkpoints = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'K':
            o.kills = (unsigned)strtoul(optarg, NULL, 10);
            break;
        case 'S':
            o.seed = strtoul(optarg, NULL, 10);
            break;
        case 'm':
            o.map_max = (size_t)strtoull(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 64;
        }
    }
    argc -= optind;
    argv += optind;
    if (argc < 1 || o.store == NULL) {
        usage(stderr);
        return 64;
    }
    if (strcmp(argv[0], "tamper") == 0)
        return cmd_tamper(&o, argc - 1, argv + 1);
    if (o.key == NULL) {
        fprintf(stderr, PROG ": --key FILE is required\n");
        return 64;
    }
    if (strcmp(argv[0], "fill") == 0)
        return cmd_fill(&o);
    if (strcmp(argv[0], "crash") == 0)
        return cmd_crash(&o);
    if (strcmp(argv[0], "full") == 0 && o.map_max > 0)
        return cmd_full(&o);
    usage(stderr);
    return 64;
}
