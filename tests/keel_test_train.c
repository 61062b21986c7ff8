/*
 * keel_test_train.c - a helper for the worker's integration test: prints the
 * values the coordinator's leader would write to etcd, and reads back what a
 * stopped server's store holds.
 *
 *   keel-test-train assign [--replication R] SERVER...   assignment JSON
 *   keel-test-train spec FILE.ini                        job spec JSON
 *   keel-test-train state STATE                          job state JSON
 *   keel-test-train shard --epochs E [--owner ID --incarnation K] [--pass P] [--batch B]
 *                                                        shard lease JSON
 *   keel-test-train dump --store DIR --spec FILE.ini     per range that applied pushes,
 *       restored from the store (snapshot + update-log replay) as keel-server would:
 *       "range R lsn L rows N tables T:N,... shard S seq Q worker W incarnation K ..."
 *       (tables: those it holds rows of, with how many; shard: each exactly-once
 *       position, its id shard + ((table - 1) << 16))
 *   keel-test-train seq PASS BATCH                       keel_shard_seq(PASS, BATCH)
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "keel/assign.h"
#include "keel/jobs.h"
#include "keel/jobspec.h"
#include "digest.h"
#include "ps.h"
#include "keel/snapshot.h"
#include "keel/store.h"

#define PROG "keel-test-train"

static int usage(FILE *f, int rc)
{
    fprintf(f, "usage: " PROG " assign [--replication R] SERVER...\n"
               "       " PROG " spec FILE.ini\n"
               "       " PROG " state pending|running|done|failed|stopped\n"
               "       " PROG " shard --epochs E [--owner ID --incarnation K] [--pass P]"
               " [--batch B]\n"
               "       " PROG " dump --store DIR --spec FILE.ini\n"
               "       " PROG " seq PASS BATCH\n"
               "Prints what the coordinator's leader would write to etcd, or what a stopped\n"
               "server's store holds, for the worker's integration test.\n");
    return rc;
}

static int fail(const struct keel_error *err)
{
    fprintf(stderr, PROG ": %s\n", err->msg);
    return 1;
}

static void put(struct keel_buf *b)
{
    fwrite(b->buf, 1, b->len, stdout);
    fputc('\n', stdout);
    keel_buf_release(b);
}

static int cmd_assign(int argc, char **argv)
{
    struct keel_error err;
    struct keel_buf out;
    unsigned replication = 1;
    keel_assign *a;
    int i = 1;

    keel_error_init(&err);
    if (argc > 2 && strcmp(argv[1], "--replication") == 0) {
        replication = (unsigned)atoi(argv[2]);
        i = 3;
    }
    if ((a = keel_assign_new(replication)) == NULL) {
        fprintf(stderr, PROG ": bad replication\n");
        return 64;
    }
    if (keel_assign_update(a, (const char *const *)argv + i, (size_t)(argc - i), NULL, &err) != 0) {
        keel_assign_free(a);
        return fail(&err);
    }
    keel_buf_init(&out, 0);
    keel_assign_encode(a, &out);
    put(&out);
    keel_assign_free(a);
    return 0;
}

static int cmd_spec(int argc, char **argv)
{
    struct keel_jobspec spec;
    struct keel_error err;
    struct keel_buf out;

    keel_error_init(&err);
    if (argc != 2)
        return usage(stderr, 64);
    if (keel_jobspec_load(&spec, argv[1], &err) != 0)
        return fail(&err);
    keel_buf_init(&out, 0);
    keel_jobspec_encode(&spec, &out);
    put(&out);
    return 0;
}

static int cmd_state(int argc, char **argv)
{
    struct keel_job_status st;
    struct keel_buf out;

    if (argc != 2 || keel_job_state_parse(argv[1]) == 0)
        return usage(stderr, 64);
    memset(&st, 0, sizeof(st));
    st.state = keel_job_state_parse(argv[1]);
    st.changed_ms = (uint64_t)keel_clock_wall_ms();
    keel_buf_init(&out, 0);
    keel_job_status_encode(&st, &out);
    put(&out);
    return 0;
}

static int cmd_shard(int argc, char **argv)
{
    static const struct option opts[] = {
        {"epochs", required_argument, NULL, 'e'},      {"owner", required_argument, NULL, 'o'},
        {"incarnation", required_argument, NULL, 'i'}, {"pass", required_argument, NULL, 'p'},
        {"batch", required_argument, NULL, 'b'},       {NULL, 0, NULL, 0},
    };
    struct keel_shard s;
    struct keel_buf out;
    uint32_t epochs = 0;
    int opt;

    memset(&s, 0, sizeof(s));
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (opt) {
        case 'e':
            epochs = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'o':
            snprintf(s.owner, sizeof(s.owner), "%s", optarg);
            break;
        case 'i':
            s.incarnation = strtoull(optarg, NULL, 10);
            break;
        case 'p':
            s.pass = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'b':
            s.batch = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        default:
            return usage(stderr, 64);
        }
    }
    if (epochs == 0)
        return usage(stderr, 64);
    s.done = s.pass >= epochs;
    if (s.done) {
        s.owner[0] = '\0';
        s.incarnation = 0;
    }
    keel_buf_init(&out, 0);
    keel_shard_encode(&s, &out);
    put(&out);
    return 0;
}

/* SHA-256 (hex, 16 digits shown) of a range's keys, rows and optimizer state: replicas compare
 * equal. */
static const char *range_digest(const struct keel_snapshot *snap)
{
    static char hex[KEEL_SHA256_SIZE * 2 + 1];
    unsigned char sum[KEEL_SHA256_SIZE];
    struct keel_buf b = KEEL_BUF_INIT;

    for (size_t t = 0; t < snap->ntables; t++) {
        const struct keel_snap_table *tb = &snap->tables[t];

        keel_buf_add(&b, tb->keys, tb->nrows * 8);
        keel_buf_add(&b, tb->rows, tb->nrows * tb->width * 4);
        if (tb->state_width)
            keel_buf_add(&b, tb->state, tb->nrows * tb->state_width * 4);
    }
    keel_sha256(sum, b.buf, b.len);
    keel_hex(hex, sum, 8);
    keel_buf_release(&b);
    return hex;
}

static int cmd_dump(int argc, char **argv)
{
    static const struct option opts[] = {
        {"store", required_argument, NULL, 's'},
        {"spec", required_argument, NULL, 'j'},
        {NULL, 0, NULL, 0},
    };
    struct keel_store_options so = {0};
    const char *store_dir = NULL, *spec_path = NULL;
    struct keel_jobspec spec;
    struct keel_error err;
    struct keel_ps *ps = NULL;
    keel_store *store = NULL;
    int opt, rc = 1;

    keel_error_init(&err);
    optind = 1;
    while ((opt = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (opt == 's')
            store_dir = optarg;
        else if (opt == 'j')
            spec_path = optarg;
        else
            return usage(stderr, 64);
    }
    if (store_dir == NULL || spec_path == NULL)
        return usage(stderr, 64);
    if (keel_jobspec_load(&spec, spec_path, &err) != 0 ||
        keel_store_open(&store, store_dir, &so, &err) != 0 || keel_ps_new(&spec, &ps, &err) != 0)
        goto out;
    /* Every range that applied pushes (LSN > 0) once restored from snapshot + log. */
    for (uint32_t range = 0; range < KEEL_PROTO_NRANGES; range++) {
        struct keel_snapshot snap;

        if (keel_ps_open_range(ps, store, range, NULL, &err) != 0)
            goto out;
        if (keel_ps_lsn(ps, range) == 0) {
            keel_ps_close_range(ps, range);
            continue;
        }
        if (keel_ps_snapshot(ps, range, &snap, &err) != 0)
            goto out;
        {
            uint64_t rows = 0;

            for (size_t t = 0; t < snap.ntables; t++)
                rows += snap.tables[t].nrows;
            printf("range %" PRIu32 " lsn %" PRIu64 " rows %" PRIu64, range, snap.lsn, rows);
            /* The tables it holds rows of, "tables 1:200,3:4": one push per table and batch. */
            printf(" tables ");
            for (size_t t = 0, first = 1; t < snap.ntables; t++) {
                if (snap.tables[t].nrows == 0)
                    continue;
                printf("%s%" PRIu32 ":%" PRIu64, first ? "" : ",", snap.tables[t].table_id,
                       snap.tables[t].nrows);
                first = 0;
            }
        }
        for (size_t s = 0; s < snap.nshards; s++)
            printf(" shard %" PRIu32 " seq %" PRIu64 " worker %s incarnation %" PRIu64,
                   snap.shards[s].shard, snap.shards[s].seq, snap.shards[s].worker_id,
                   snap.shards[s].incarnation);
        printf(" digest %s\n", range_digest(&snap));
        keel_snapshot_release(&snap);
        keel_ps_close_range(ps, range);
    }
    rc = 0;
out:
    if (rc != 0)
        fail(&err);
    keel_ps_free(ps);
    if (store)
        keel_store_close(store);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)
        return usage(argc < 2 ? stderr : stdout, argc < 2 ? 64 : 0);
    if (strcmp(argv[1], "assign") == 0)
        return cmd_assign(argc - 1, argv + 1);
    if (strcmp(argv[1], "spec") == 0)
        return cmd_spec(argc - 1, argv + 1);
    if (strcmp(argv[1], "state") == 0)
        return cmd_state(argc - 1, argv + 1);
    if (strcmp(argv[1], "shard") == 0)
        return cmd_shard(argc - 1, argv + 1);
    if (strcmp(argv[1], "dump") == 0)
        return cmd_dump(argc - 1, argv + 1);
    if (strcmp(argv[1], "seq") == 0 && argc == 4) {
        printf("%" PRIu64 "\n", keel_shard_seq((uint32_t)strtoul(argv[2], NULL, 10),
                                               (uint32_t)strtoul(argv[3], NULL, 10)));
        return 0;
    }
    return usage(stderr, 64);
}
