/*
 * cmd_rollback.c - `keelctl job rollback`: take an ended job back to the
 * checkpoints its servers took at one clock, and let it train again from
 * there.
 *
 * With the job's servers stopped, for every store named:
 *   1. find the newest checkpoint of the job at that clock, taken under the
 *      job's spec (its digest), and verify it with the cluster key;
 *   2. only when every store has one: restore into every store every range's
 *      checkpoint, from the store whose copy is newest (the range's snapshot
 *      becomes the checkpoint's, its update log is dropped), so that whichever
 *      server the assignment gives a range to finds its rows.
 * Then in etcd: the job's progress reports and the evaluations of the passes
 * to be trained again are deleted, and in one transaction, compared against
 * the state read, every shard is set free at the lowest position any restored
 * range holds for it and the job becomes pending again.  The leader leases
 * the shards from there; a range that is ahead of that position acknowledges
 * the pushes it has as duplicates, so no update is applied twice.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <jansson.h>

#include "alloc.h"
#include "keel/buf.h"
#include "keel/checkpoint.h"
#include "cli.h"
#include "clock.h"
#include "etcd.h"
#include "keel/jobs.h"
#include "keel/jobspec.h"
#include "keel/proto.h"
#include "keel/store.h"
#include "keelctl.h"
#include "keys.h"

#define WHAT       "job rollback"
#define MAX_STORES 64
#define MAX_SHARDS 120 /* the transaction holds every shard and the state: etcd's 128 ops */

static void usage(FILE *out)
{
    fprintf(out, "usage: keelctl job rollback --clock C --key FILE --store DIR [--store DIR ...]\n"
                 "                            [--json] NAME\n"
                 "Take the ended job NAME (done, failed or stopped) back to the checkpoints its\n"
                 "servers took at clock C, and make it pending again so that it trains on from\n"
                 "there.  Stop the job's servers first and name every one's store: each must hold\n"
                 "a checkpoint of NAME at clock C under the job's spec, verified with the cluster\n"
                 "key, before any is restored; every store then gets every range's checkpoint.\n"
                 "The shards restart at the lowest position a\n"
                 "restored range holds; ranges that are ahead take the replayed pushes they have\n"
                 "as duplicates.  Start the servers again afterwards.\n"
                 "\n"
                 "  -c, --clock C      the checkpoints' clock (keelctl checkpoint list)\n"
                 "  -s, --store DIR    a server's data directory; once per server\n"
                 "  -k, --key FILE     the cluster key that signs the checkpoints\n"
                 "  -j, --json         print a JSON object\n"
                 "  -h, --help         show this help\n");
}

struct opts {
    const char *name;
    const char *key;
    const char *stores[MAX_STORES];
    size_t nstores;
    uint64_t clock;
    int have_clock;
    int json;
};

static int parse(int argc, char **argv, struct opts *o)
{
    static const struct option longopts[] = {
        {"clock", required_argument, NULL, 'c'}, {"store", required_argument, NULL, 's'},
        {"key", required_argument, NULL, 'k'},   {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = WHAT, .usage = usage, .shortopts = "c:s:k:jh", .longopts = longopts};
    char *end;
    int opt;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 'c':
            errno = 0;
            o->clock = strtoull(optarg, &end, 10);
            if (errno || *end != '\0' || end == optarg || optarg[0] == '-')
                return keelctl_usage_error(&cl, "--clock: expected a clock, got '%s'", optarg);
            o->have_clock = 1;
            break;
        case 's':
            if (o->nstores == MAX_STORES)
                return keelctl_usage_error(&cl, "at most %d --store", MAX_STORES);
            o->stores[o->nstores++] = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'j':
            o->json = 1;
            break;
        }
    }
    if (opt < 0)
        return cl.exit == KEEL_EXIT_OK ? -1 : cl.exit;
    if (!o->have_clock)
        return keelctl_usage_error(&cl, "--clock is required");
    if (o->key == NULL)
        return keelctl_usage_error(&cl, "--key is required");
    if (o->nstores == 0)
        return keelctl_usage_error(&cl, "--store is required (once per server)");
    if (optind >= argc)
        return keelctl_usage_error(&cl, "NAME is required");
    if (argc - optind > 1)
        return keelctl_usage_error(&cl, "one NAME only, got '%s' too", argv[optind + 1]);
    o->name = argv[optind];
    if (!keel_id_valid(o->name))
        return keelctl_usage_error(&cl, "'%s' is not a job name", o->name);
    return 0;
}

/* One store: its checkpoint of the job at the clock. */
struct target {
    keel_store *s;
    uint64_t id;
};

/* Where a range's checkpoint comes from: the store whose copy has the highest LSN. */
struct source {
    int store; /* -1: in no checkpoint */
    uint64_t lsn;
};

/*
 * Find the newest checkpoint of job `o->name` at `o->clock` in `s`, check it
 * was taken under `digest`, verify it, and lower `pos` (per shard) to what
 * its ranges with rows hold.  Returns 0 or an exit code (message printed).
 */
static int pick(keel_store *s, const char *dir, const struct opts *o,
                const struct keel_ckpt_key *key, const unsigned char *digest, uint32_t nshards,
                uint64_t *pos, uint64_t *id, struct source *src, int self)
{
    struct keel_manifest m;
    struct keel_error err;
    uint64_t *ids = NULL;
    size_t n = 0;
    int rc = KEEL_EXIT_OK;

    keel_error_init(&err);
    *id = 0;
    if (keel_checkpoint_list(s, &ids, &n, &err) != 0)
        return keelctl_fail(WHAT, "%s: %s", dir, err.msg);
    for (size_t i = n; i-- > 0 && *id == 0;) {
        memset(&m, 0, sizeof(m));
        if (keel_checkpoint_manifest(s, ids[i], &m, &err) != 0) {
            free(ids);
            return keelctl_fail(WHAT, "%s: checkpoint %" PRIu64 ": %s", dir, ids[i], err.msg);
        }
        if (strcmp(m.job, o->name) == 0 && m.clock == o->clock)
            *id = ids[i];
        else
            keel_manifest_release(&m);
    }
    free(ids);
    if (*id == 0)
        return keelctl_fail(WHAT,
                            "%s has no checkpoint of job '%s' at clock %" PRIu64
                            " (keelctl checkpoint list --store %s)",
                            dir, o->name, o->clock, dir);
    if (memcmp(m.spec_sha256, digest, 32) != 0) {
        rc = keelctl_fail(WHAT, "%s: checkpoint %" PRIu64 " was taken under another spec of '%s'",
                          dir, *id, o->name);
    } else if (keel_checkpoint_verify(s, key, *id, 1, &err) != 0) {
        rc =
            keelctl_fail(WHAT, "%s: checkpoint %" PRIu64 " does not verify: %s", dir, *id, err.msg);
    } else {
        for (size_t r = 0; r < m.nranges; r++) {
            const struct keel_ckpt_range *cr = &m.ranges[r];

            /* A range in several stores' checkpoints comes from the newest copy. */
            if (cr->range < KEEL_PROTO_NRANGES &&
                (src[cr->range].store < 0 || cr->lsn > src[cr->range].lsn)) {
                src[cr->range].store = self;
                src[cr->range].lsn = cr->lsn;
            }
            if (cr->rows == 0)
                continue; /* took no push: says nothing of the shards */
            for (uint32_t sh = 0; sh < nshards; sh++) {
                /* Over every table's position id of the shard, not table 1's alone. */
                uint64_t at = keel_ckpt_range_position(cr, sh);

                if (at < pos[sh])
                    pos[sh] = at;
            }
        }
    }
    keel_manifest_release(&m);
    return rc;
}

/* Delete the progress reports and the evaluations of passes >= `from_pass`. */
static int forget_after(keel_etcd *etcd, const char *cluster, const char *job, uint32_t from_pass,
                        struct keel_error *err)
{
    struct keel_buf key = KEEL_BUF_INIT;
    struct keel_etcd_kvs kvs;
    int rc;

    keel_key_job_prefix(&key, cluster, job);
    keel_buf_add_str(&key, "progress/");
    rc = keel_etcd_delete(etcd, keel_key_str(&key), 1, NULL, NULL, err);
    keel_key_job_prefix(&key, cluster, job);
    keel_buf_add_str(&key, "eval/");
    memset(&kvs, 0, sizeof(kvs));
    if (rc == 0)
        rc = keel_etcd_range_prefix(etcd, keel_key_str(&key), NULL, &kvs, err);
    keel_buf_release(&key);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < kvs.n && rc == 0; i++) {
        struct keel_key k;

        if (keel_key_parse(kvs.kvs[i].key, cluster, &k) == KEEL_KEY_JOB_EVAL && k.num >= from_pass)
            rc = keel_etcd_delete(etcd, kvs.kvs[i].key, 0, NULL, NULL, err);
    }
    keel_etcd_kvs_release(&kvs);
    return rc;
}

/* Everything one rollback reads, decides and holds open, step to step. */
struct rollback {
    const struct keel_config *config;
    struct opts o;
    struct keel_ckpt_key key;
    keel_etcd *etcd;
    struct keel_etcd_kv state_kv, spec_kv;
    struct keel_job_status st;
    enum keel_job_state was;
    struct keel_jobspec spec;
    struct target t[MAX_STORES];
    size_t opened;
    struct source src[KEEL_PROTO_NRANGES];
    uint64_t *pos;      /* per shard: where it restarts */
    uint32_t from_pass; /* the lowest pass to be trained again */
    char reason[128];
};

/* The job: ended, with a spec of at most MAX_SHARDS shards. */
static int read_job(struct rollback *rb)
{
    struct keel_buf k = KEEL_BUF_INIT;
    struct keel_error err;
    int rc = KEEL_EXIT_OK;

    keel_error_init(&err);
    keel_key_job_state(&k, rb->config->cluster_name, rb->o.name);
    if ((rc = keel_etcd_get(rb->etcd, (const char *)k.buf, &rb->state_kv, NULL, &err)) != 0) {
        rc = rc == KEEL_ENOTFOUND ? keelctl_fail(WHAT, "no job '%s' in cluster '%s'", rb->o.name,
                                                 rb->config->cluster_name)
                                  : keelctl_etcd_fail(WHAT, rb->config, &err);
        goto out;
    }
    if (keel_job_status_decode(rb->state_kv.value, rb->state_kv.value_len, &rb->st, &err) != 0) {
        rc = keelctl_fail(WHAT, "job '%s': %s", rb->o.name, err.msg);
        goto out;
    }
    rb->was = rb->st.state;
    if (!keel_job_state_is_final(rb->was)) {
        rc = keelctl_fail(WHAT, "job '%s' is %s: stop it first (keelctl job stop %s)", rb->o.name,
                          keel_job_state_name(rb->was), rb->o.name);
        goto out;
    }
    keel_key_job_spec(&k, rb->config->cluster_name, rb->o.name);
    if (keel_etcd_get(rb->etcd, (const char *)k.buf, &rb->spec_kv, NULL, &err) != 0 ||
        keel_jobspec_decode(rb->spec_kv.value, rb->spec_kv.value_len, &rb->spec, &err) != 0) {
        rc = keelctl_fail(WHAT, "job '%s': its spec: %s", rb->o.name, err.msg);
        goto out;
    }
    if (rb->spec.shards > MAX_SHARDS)
        rc = keelctl_fail(WHAT, "job '%s' has %" PRIu32 " shards; rollback handles up to %d",
                          rb->o.name, rb->spec.shards, MAX_SHARDS);
out:
    keel_buf_release(&k);
    return rc;
}

/*
 * Open every store and pick its checkpoint; nothing is restored unless all
 * are there.  Sets where each shard restarts and the first pass to redo.
 */
static int pick_all(struct rollback *rb)
{
    unsigned char digest[KEEL_JOBSPEC_DIGEST_SIZE];
    struct keel_error err;
    int rc;

    keel_error_init(&err);
    keel_jobspec_digest(&rb->spec, digest);
    rb->pos = keel_malloc(rb->spec.shards * sizeof(*rb->pos));
    for (uint32_t sh = 0; sh < rb->spec.shards; sh++)
        rb->pos[sh] = UINT64_MAX;
    for (size_t i = 0; i < rb->o.nstores; i++) {
        char mdb[4200];
        struct stat sb;

        snprintf(mdb, sizeof(mdb), "%s/data.mdb", rb->o.stores[i]);
        if (stat(mdb, &sb) != 0)
            return keelctl_fail(WHAT, "no store in '%s': %s", rb->o.stores[i], strerror(errno));
        if (keel_store_open(&rb->t[i].s, rb->o.stores[i], NULL, &err) != 0)
            return keelctl_fail(WHAT, "%s", err.msg);
        rb->opened++;
        if ((rc = pick(rb->t[i].s, rb->o.stores[i], &rb->o, &rb->key, digest, rb->spec.shards,
                       rb->pos, &rb->t[i].id, rb->src, (int)i)) != 0)
            return rc;
    }
    for (uint32_t sh = 0; sh < rb->spec.shards; sh++) {
        if (rb->pos[sh] == UINT64_MAX)
            rb->pos[sh] = 0; /* no range holds rows: from the start */
        if ((uint32_t)(rb->pos[sh] >> 32) < rb->from_pass)
            rb->from_pass = (uint32_t)(rb->pos[sh] >> 32);
    }
    return KEEL_EXIT_OK;
}

/*
 * Every store gets every range's checkpoint, from the store that took it: the
 * assignment may have moved ranges since (servers that left and joined again while
 * the job was over), and whichever server leads a range then finds its rows.
 */
static int restore_all(struct rollback *rb)
{
    struct keel_error err;

    keel_error_init(&err);
    for (size_t i = 0; i < rb->o.nstores; i++) {
        for (size_t j = 0; j < rb->o.nstores; j++) {
            unsigned char only[KEEL_PROTO_NRANGES];
            int any = 0;

            for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
                any |= only[r] = rb->src[r].store == (int)j;
            if (any && keel_checkpoint_restore_into(rb->t[j].s, &rb->key, rb->t[j].id, rb->t[i].s,
                                                    only, &err) != 0)
                return keelctl_fail(WHAT, "%s: restoring checkpoint %" PRIu64 " of %s: %s",
                                    rb->o.stores[i], rb->t[j].id, rb->o.stores[j], err.msg);
        }
        if (!rb->o.json)
            printf("%s: every range restored to clock %" PRIu64 " (its checkpoint %" PRIu64
                   ", and the other stores')\n",
                   rb->o.stores[i], rb->o.clock, rb->t[i].id);
    }
    return KEEL_EXIT_OK;
}

/*
 * etcd: forget what the replay will report again, then set the shards free
 * at their positions and the job pending in one transaction, compared
 * against the state read.
 */
static int reset_job(struct rollback *rb)
{
    struct keel_buf k = KEEL_BUF_INIT, v = KEEL_BUF_INIT;
    struct keel_etcd_txn_result res;
    struct keel_error err;
    keel_etcd_txn *txn = NULL;
    int rc;

    keel_error_init(&err);
    memset(&res, 0, sizeof(res));
    if (forget_after(rb->etcd, rb->config->cluster_name, rb->o.name, rb->from_pass, &err) != 0) {
        rc = keelctl_etcd_fail(WHAT, rb->config, &err);
        goto out;
    }
    snprintf(rb->reason, sizeof(rb->reason), "rolled back to clock %" PRIu64, rb->o.clock);
    if (keel_job_status_move(&rb->st, KEEL_JOB_PENDING, (uint64_t)keel_clock_wall_ms(), rb->reason,
                             &err) != 0) {
        rc = keelctl_fail(WHAT, "job '%s': %s", rb->o.name, err.msg);
        goto out;
    }
    txn = keel_etcd_txn_new();
    keel_key_job_state(&k, rb->config->cluster_name, rb->o.name);
    keel_etcd_txn_compare(txn, (const char *)k.buf, KEEL_ETCD_MOD, KEEL_ETCD_EQUAL,
                          rb->state_kv.mod_revision);
    for (uint32_t sh = 0; sh < rb->spec.shards; sh++) {
        struct keel_shard s;

        memset(&s, 0, sizeof(s));
        s.pass = (uint32_t)(rb->pos[sh] >> 32);
        s.batch = (uint32_t)rb->pos[sh];
        keel_key_job_shard(&k, rb->config->cluster_name, rb->o.name, sh);
        keel_buf_reset(&v);
        keel_shard_encode(&s, &v);
        keel_etcd_txn_put(txn, KEEL_ETCD_THEN, (const char *)k.buf, v.buf, v.len, 0);
    }
    keel_key_job_state(&k, rb->config->cluster_name, rb->o.name);
    keel_buf_reset(&v);
    keel_job_status_encode(&rb->st, &v);
    keel_etcd_txn_put(txn, KEEL_ETCD_THEN, (const char *)k.buf, v.buf, v.len, 0);
    if ((rc = keel_etcd_txn_commit(rb->etcd, txn, &res, &err)) != 0) {
        rc = keelctl_etcd_fail(WHAT, rb->config, &err);
        goto out;
    }
    if (!res.succeeded)
        rc = keelctl_fail(WHAT,
                          "job '%s' changed in etcd meanwhile; the stores are restored: run the "
                          "same command again",
                          rb->o.name);
out:
    keel_etcd_txn_result_release(&res);
    keel_etcd_txn_free(txn);
    keel_buf_release(&k);
    keel_buf_release(&v);
    return rc;
}

/* What was done: the job's state and where each shard restarts. */
static int report(const struct rollback *rb)
{
    const uint64_t *pos = rb->pos;

    if (rb->o.json) {
        json_t *shards = json_array();

        for (uint32_t sh = 0; sh < rb->spec.shards; sh++)
            json_array_append_new(shards, json_pack("{s:I, s:I, s:I}", "shard", (json_int_t)sh,
                                                    "pass", (json_int_t)(pos[sh] >> 32), "batch",
                                                    (json_int_t)(uint32_t)pos[sh]));
        return keelctl_print_json(json_pack("{s:s, s:s, s:s, s:I, s:o}", "name", rb->o.name, "was",
                                            keel_job_state_name(rb->was), "state", "pending",
                                            "clock", (json_int_t)rb->o.clock, "shards", shards));
    }
    printf("job '%s' (was %s) is pending again, %s; shards restart at:", rb->o.name,
           keel_job_state_name(rb->was), rb->reason);
    for (uint32_t sh = 0; sh < rb->spec.shards; sh++)
        printf(" %" PRIu32 ":(%" PRIu32 ",%" PRIu32 ")", sh, (uint32_t)(pos[sh] >> 32),
               (uint32_t)pos[sh]);
    printf("\nstart the servers again; the leader leases the shards from there\n");
    return KEEL_EXIT_OK;
}

int keelctl_job_rollback(const struct keel_config *config, int argc, char **argv)
{
    struct rollback *rb = keel_calloc(1, sizeof(*rb));
    struct keel_error err;
    int rc;

    rb->config = config;
    rb->from_pass = UINT32_MAX;
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        rb->src[r] = (struct source){-1, 0};
    rc = parse(argc, argv, &rb->o);
    if (rc != 0) {
        rc = rc < 0 ? KEEL_EXIT_OK : rc;
        goto out;
    }
    keel_error_init(&err);
    if (keel_ckpt_key_load(&rb->key, rb->o.key, &err) != 0) {
        rc = keelctl_fail(WHAT, "--key: %s", err.msg);
        goto out;
    }
    if (keelctl_etcd_open(config, &rb->etcd, &err) != 0) {
        rc = keelctl_etcd_fail(WHAT, config, &err);
        goto out;
    }
    if ((rc = read_job(rb)) == 0 && (rc = pick_all(rb)) == 0 && (rc = restore_all(rb)) == 0 &&
        (rc = reset_job(rb)) == 0)
        rc = report(rb);
out:
    for (size_t i = 0; i < rb->opened; i++)
        keel_store_close(rb->t[i].s);
    free(rb->pos);
    keel_etcd_kv_release(&rb->state_kv);
    keel_etcd_kv_release(&rb->spec_kv);
    keel_etcd_free(rb->etcd);
    free(rb);
    return rc;
}
