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
                uint64_t at = 0;

                for (size_t k = 0; k < cr->nshards; k++)
                    if (cr->shards[k].shard == sh)
                        at = cr->shards[k].seq;
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

int keelctl_job_rollback(const struct keel_config *config, int argc, char **argv)
{
    struct opts o;
    struct target t[MAX_STORES];
    struct keel_ckpt_key key;
    struct source src[KEEL_PROTO_NRANGES];
    struct keel_jobspec spec;
    struct keel_job_status st;
    struct keel_etcd_kv state_kv, spec_kv;
    struct keel_etcd_txn_result res;
    struct keel_error err;
    struct keel_buf k = KEEL_BUF_INIT, v = KEEL_BUF_INIT;
    unsigned char digest[KEEL_JOBSPEC_DIGEST_SIZE];
    char reason[128];
    keel_etcd *etcd = NULL;
    keel_etcd_txn *txn = NULL;
    uint64_t *pos = NULL;
    enum keel_job_state was;
    uint32_t from_pass = UINT32_MAX;
    size_t opened = 0;
    int rc;

    memset(&o, 0, sizeof(o));
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        src[r] = (struct source){-1, 0};
    memset(&state_kv, 0, sizeof(state_kv));
    memset(&spec_kv, 0, sizeof(spec_kv));
    memset(&res, 0, sizeof(res));
    rc = parse(argc, argv, &o);
    if (rc != 0)
        return rc < 0 ? KEEL_EXIT_OK : rc;
    keel_error_init(&err);
    if (keel_ckpt_key_load(&key, o.key, &err) != 0)
        return keelctl_fail(WHAT, "--key: %s", err.msg);
    if (keelctl_etcd_open(config, &etcd, &err) != 0)
        return keelctl_etcd_fail(WHAT, config, &err);

    /* The job: ended, with a spec. */
    keel_key_job_state(&k, config->cluster_name, o.name);
    if ((rc = keel_etcd_get(etcd, (const char *)k.buf, &state_kv, NULL, &err)) != 0) {
        rc = rc == KEEL_ENOTFOUND
                 ? keelctl_fail(WHAT, "no job '%s' in cluster '%s'", o.name, config->cluster_name)
                 : keelctl_etcd_fail(WHAT, config, &err);
        goto out;
    }
    if (keel_job_status_decode(state_kv.value, state_kv.value_len, &st, &err) != 0) {
        rc = keelctl_fail(WHAT, "job '%s': %s", o.name, err.msg);
        goto out;
    }
    was = st.state;
    if (!keel_job_state_is_final(was)) {
        rc = keelctl_fail(WHAT, "job '%s' is %s: stop it first (keelctl job stop %s)", o.name,
                          keel_job_state_name(was), o.name);
        goto out;
    }
    keel_key_job_spec(&k, config->cluster_name, o.name);
    if (keel_etcd_get(etcd, (const char *)k.buf, &spec_kv, NULL, &err) != 0 ||
        keel_jobspec_decode(spec_kv.value, spec_kv.value_len, &spec, &err) != 0) {
        rc = keelctl_fail(WHAT, "job '%s': its spec: %s", o.name, err.msg);
        goto out;
    }
    if (spec.shards > MAX_SHARDS) {
        rc = keelctl_fail(WHAT, "job '%s' has %" PRIu32 " shards; rollback handles up to %d",
                          o.name, spec.shards, MAX_SHARDS);
        goto out;
    }
    keel_jobspec_digest(&spec, digest);

    /* Every store's checkpoint first; nothing is restored unless all are there. */
    pos = keel_malloc(spec.shards * sizeof(*pos));
    for (uint32_t sh = 0; sh < spec.shards; sh++)
        pos[sh] = UINT64_MAX;
    for (size_t i = 0; i < o.nstores; i++) {
        char mdb[4200];
        struct stat sb;

        snprintf(mdb, sizeof(mdb), "%s/data.mdb", o.stores[i]);
        if (stat(mdb, &sb) != 0) {
            rc = keelctl_fail(WHAT, "no store in '%s': %s", o.stores[i], strerror(errno));
            goto out;
        }
        if (keel_store_open(&t[i].s, o.stores[i], NULL, &err) != 0) {
            rc = keelctl_fail(WHAT, "%s", err.msg);
            goto out;
        }
        opened++;
        if ((rc = pick(t[i].s, o.stores[i], &o, &key, digest, spec.shards, pos, &t[i].id, src,
                       (int)i)) != 0)
            goto out;
    }
    for (uint32_t sh = 0; sh < spec.shards; sh++) {
        if (pos[sh] == UINT64_MAX)
            pos[sh] = 0; /* no range holds rows: from the start */
        if ((uint32_t)(pos[sh] >> 32) < from_pass)
            from_pass = (uint32_t)(pos[sh] >> 32);
    }
    /*
     * Every store gets every range's checkpoint, from the store that took it: the
     * assignment may have moved ranges since (servers that left and joined again while
     * the job was over), and whichever server leads a range then finds its rows.
     */
    for (size_t i = 0; i < o.nstores; i++) {
        for (size_t j = 0; j < o.nstores; j++) {
            unsigned char only[KEEL_PROTO_NRANGES];
            int any = 0;

            for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
                any |= only[r] = src[r].store == (int)j;
            if (any &&
                keel_checkpoint_restore_into(t[j].s, &key, t[j].id, t[i].s, only, &err) != 0) {
                rc = keelctl_fail(WHAT, "%s: restoring checkpoint %" PRIu64 " of %s: %s",
                                  o.stores[i], t[j].id, o.stores[j], err.msg);
                goto out;
            }
        }
        if (!o.json)
            printf("%s: every range restored to clock %" PRIu64 " (its checkpoint %" PRIu64
                   ", and the other stores')\n",
                   o.stores[i], o.clock, t[i].id);
    }

    /* etcd: forget what the replay will report again, then shards and state at once. */
    if (forget_after(etcd, config->cluster_name, o.name, from_pass, &err) != 0) {
        rc = keelctl_etcd_fail(WHAT, config, &err);
        goto out;
    }
    snprintf(reason, sizeof(reason), "rolled back to clock %" PRIu64, o.clock);
    if (keel_job_status_move(&st, KEEL_JOB_PENDING, (uint64_t)keel_clock_wall_ms(), reason, &err) !=
        0) {
        rc = keelctl_fail(WHAT, "job '%s': %s", o.name, err.msg);
        goto out;
    }
    txn = keel_etcd_txn_new();
    keel_key_job_state(&k, config->cluster_name, o.name);
    keel_etcd_txn_compare(txn, (const char *)k.buf, KEEL_ETCD_MOD, KEEL_ETCD_EQUAL,
                          state_kv.mod_revision);
    for (uint32_t sh = 0; sh < spec.shards; sh++) {
        struct keel_shard s;

        memset(&s, 0, sizeof(s));
        s.pass = (uint32_t)(pos[sh] >> 32);
        s.batch = (uint32_t)pos[sh];
        keel_key_job_shard(&k, config->cluster_name, o.name, sh);
        keel_buf_reset(&v);
        keel_shard_encode(&s, &v);
        keel_etcd_txn_put(txn, KEEL_ETCD_THEN, (const char *)k.buf, v.buf, v.len, 0);
    }
    keel_key_job_state(&k, config->cluster_name, o.name);
    keel_buf_reset(&v);
    keel_job_status_encode(&st, &v);
    keel_etcd_txn_put(txn, KEEL_ETCD_THEN, (const char *)k.buf, v.buf, v.len, 0);
    if ((rc = keel_etcd_txn_commit(etcd, txn, &res, &err)) != 0) {
        rc = keelctl_etcd_fail(WHAT, config, &err);
        goto out;
    }
    if (!res.succeeded) {
        rc = keelctl_fail(WHAT,
                          "job '%s' changed in etcd meanwhile; the stores are restored: run the "
                          "same command again",
                          o.name);
        goto out;
    }
    if (o.json) {
        json_t *shards = json_array();

        for (uint32_t sh = 0; sh < spec.shards; sh++)
            json_array_append_new(shards, json_pack("{s:I, s:I, s:I}", "shard", (json_int_t)sh,
                                                    "pass", (json_int_t)(pos[sh] >> 32), "batch",
                                                    (json_int_t)(uint32_t)pos[sh]));
        rc = keelctl_print_json(json_pack("{s:s, s:s, s:s, s:I, s:o}", "name", o.name, "was",
                                          keel_job_state_name(was), "state", "pending", "clock",
                                          (json_int_t)o.clock, "shards", shards));
    } else {
        printf("job '%s' (was %s) is pending again, %s; shards restart at:", o.name,
               keel_job_state_name(was), reason);
        for (uint32_t sh = 0; sh < spec.shards; sh++)
            printf(" %" PRIu32 ":(%" PRIu32 ",%" PRIu32 ")", sh, (uint32_t)(pos[sh] >> 32),
                   (uint32_t)pos[sh]);
        printf("\nstart the servers again; the leader leases the shards from there\n");
        rc = KEEL_EXIT_OK;
    }
out:
    keel_etcd_txn_result_release(&res);
    keel_etcd_txn_free(txn);
    for (size_t i = 0; i < opened; i++)
        keel_store_close(t[i].s);
    free(pos);
    keel_etcd_kv_release(&state_kv);
    keel_etcd_kv_release(&spec_kv);
    keel_buf_release(&k);
    keel_buf_release(&v);
    keel_etcd_free(etcd);
    return rc;
}
