/*
 * cmd_checkpoint.c - `keelctl checkpoint`: list, show, verify, diff, export,
 * restore and prune the checkpoints in a node's store, print and verify the
 * audit chain, and make a cluster key.  Works offline on the store's
 * directory (--store DIR, or [node] data_dir from the configuration).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <jansson.h>

#include "keel/audit.h"
#include "keel/checkpoint.h"
#include "cli.h"
#include "digest.h"
#include "keel/store.h"
#include "keelctl.h"

#define CMD "keelctl checkpoint"

struct opts {
    const char *store;
    const char *key;
    const char *out;
    long keep;
    int json;
};

static void usage(FILE *f)
{
    fprintf(
        f, "usage: " CMD " [--store DIR] [--key FILE] [--json] SUBCOMMAND [ARGS]\n"
           "Inspect and manage the signed checkpoints in a node's store, offline.\n"
           "\n"
           "subcommands:\n"
           "  list                 the checkpoints: id, job, clock, time, ranges, rows\n"
           "  show ID              a checkpoint's manifest: ranges, digests, shard progress\n"
           "  verify ID            recompute every digest and the signature (needs --key);\n"
           "                       exits 1 naming the first range that fails\n"
           "  diff A B             per table: rows changed and the L2 norm of B - A\n"
           "  export ID --out DIR  one NumPy file per table: table_<id>.npy (float32,\n"
           "                       rows x width, in key order), table_<id>.keys.npy (uint64),\n"
           "                       table_<id>.state.npy (optimizer state, when any);\n"
           "                       verifies it first and writes nothing if it fails (needs --key)\n"
           "  restore ID           roll the store's range snapshots back to the checkpoint\n"
           "                       (verifies it first; needs --key)\n"
           "  prune --keep K       delete all but the K newest checkpoints\n"
           "  audit                print the audit chain and verify it\n"
           "  keygen --out FILE    write a new cluster key (32 random bytes, mode 0600)\n"
           "\n"
           "options:\n"
           "  --store DIR   the node's data directory (default: [node] data_dir)\n"
           "  --key FILE    the cluster key that signs manifests\n"
           "  --out PATH    output directory (export) or key file (keygen)\n"
           "  --keep K      checkpoints to keep (prune), at least 1\n"
           "  --json        print JSON instead of aligned tables\n"
           "  --help        this text\n"
           "Every state-changing action and every verification is recorded in the audit\n"
           "chain. Exit status: 0 success, 1 failure (verification included), 64 usage.\n");
}

static void format_time(char *buf, size_t cap, uint64_t ns)
{
    time_t t = (time_t)(ns / 1000000000u);
    struct tm tm;

    gmtime_r(&t, &tm);
    strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int fail(const char *what, const struct keel_error *err)
{
    fprintf(stderr, CMD " %s: %s\n", what, err->msg);
    return KEEL_EXIT_FAILURE;
}

static int parse_id(const char *s, uint64_t *id)
{
    char *end;
    unsigned long long v;

    if (s == NULL || s[0] < '0' || s[0] > '9')
        return -1;
    v = strtoull(s, &end, 10);
    if (*end != '\0' || v == 0)
        return -1;
    *id = v;
    return 0;
}

static int need_key(const struct opts *o, struct keel_ckpt_key *key, const char *sub)
{
    struct keel_error err;

    keel_error_init(&err);
    if (o->key == NULL) {
        fprintf(stderr, CMD " %s: --key FILE is required (the cluster key)\n", sub);
        return KEEL_EXIT_USAGE;
    }
    if (keel_ckpt_key_load(key, o->key, &err) != 0)
        return fail(sub, &err);
    return 0;
}

static int cmd_list(keel_store *s, const struct opts *o)
{
    struct keel_error err;
    uint64_t *ids;
    size_t n;
    json_t *arr = json_array();

    keel_error_init(&err);
    if (keel_checkpoint_list(s, &ids, &n, &err) != 0) {
        json_decref(arr);
        return fail("list", &err);
    }
    if (!o->json)
        printf("%-6s %-20s %10s  %-20s %6s %12s\n", "ID", "JOB", "CLOCK", "CREATED", "RANGES",
               "ROWS");
    for (size_t i = 0; i < n; i++) {
        struct keel_manifest m = {0};
        char when[32];
        uint64_t rows = 0;

        if (keel_checkpoint_manifest(s, ids[i], &m, &err) != 0) {
            if (o->json)
                json_array_append_new(
                    arr, json_pack("{s:I,s:s}", "id", (json_int_t)ids[i], "error", err.msg));
            else
                printf("%-6" PRIu64 " (unreadable: %s)\n", ids[i], err.msg);
            continue;
        }
        for (size_t r = 0; r < m.nranges; r++)
            rows += m.ranges[r].rows;
        format_time(when, sizeof(when), m.created_ns);
        if (o->json)
            json_array_append_new(arr, json_pack("{s:I,s:s,s:I,s:s,s:I,s:I}", "id",
                                                 (json_int_t)m.id, "job", m.job, "clock",
                                                 (json_int_t)m.clock, "created", when, "ranges",
                                                 (json_int_t)m.nranges, "rows", (json_int_t)rows));
        else
            printf("%-6" PRIu64 " %-20s %10" PRIu64 "  %-20s %6zu %12" PRIu64 "\n", m.id, m.job,
                   m.clock, when, m.nranges, rows);
        keel_manifest_release(&m);
    }
    free(ids);
    if (o->json)
        keelctl_print_json(arr);
    else
        json_decref(arr);
    return KEEL_EXIT_OK;
}

static int cmd_show(keel_store *s, const struct opts *o, uint64_t id)
{
    struct keel_error err;
    struct keel_manifest m = {0};
    char when[32], hex[65];

    keel_error_init(&err);
    if (keel_checkpoint_manifest(s, id, &m, &err) != 0)
        return fail("show", &err);
    format_time(when, sizeof(when), m.created_ns);
    if (o->json) {
        json_t *root = json_object(), *ranges = json_array(), *shards = json_array();
        json_object_set_new(root, "id", json_integer((json_int_t)m.id));
        json_object_set_new(root, "job", json_string(m.job));
        json_object_set_new(root, "server", json_string(m.server));
        json_object_set_new(root, "clock", json_integer((json_int_t)m.clock));
        json_object_set_new(root, "created", json_string(when));
        json_object_set_new(root, "created_ns", json_integer((json_int_t)m.created_ns));
        keel_hex(hex, m.spec_sha256, KEEL_SHA256_SIZE);
        json_object_set_new(root, "spec_sha256", json_string(hex));
        keel_hex(hex, m.prev_sha256, KEEL_SHA256_SIZE);
        json_object_set_new(root, "prev_sha256", json_string(hex));
        for (size_t i = 0; i < m.nranges; i++) {
            const struct keel_ckpt_range *r = &m.ranges[i];
            json_t *pos = json_array();

            /* The range's own positions: position id (shard + (table - 1) << 16) and seq. */
            for (size_t k = 0; k < r->nshards; k++)
                json_array_append_new(pos,
                                      json_pack("{s:I,s:I}", "id", (json_int_t)r->shards[k].shard,
                                                "seq", (json_int_t)r->shards[k].seq));
            keel_hex(hex, r->sha256, KEEL_SHA256_SIZE);
            json_array_append_new(
                ranges, json_pack("{s:I,s:I,s:I,s:I,s:I,s:s,s:o}", "range", (json_int_t)r->range,
                                  "lsn", (json_int_t)r->lsn, "rows", (json_int_t)r->rows, "tables",
                                  (json_int_t)r->ntables, "blocks", (json_int_t)r->blocks, "sha256",
                                  hex, "positions", pos));
        }
        for (size_t i = 0; i < m.nshards; i++)
            json_array_append_new(shards, json_pack("{s:I,s:I,s:s,s:I}", "shard",
                                                    (json_int_t)m.shards[i].shard, "seq",
                                                    (json_int_t)m.shards[i].seq, "worker",
                                                    m.shards[i].worker_id, "incarnation",
                                                    (json_int_t)m.shards[i].incarnation));
        json_object_set_new(root, "ranges", ranges);
        json_object_set_new(root, "shards", shards);
        keelctl_print_json(root);
        keel_manifest_release(&m);
        return KEEL_EXIT_OK;
    }
    printf("checkpoint   %" PRIu64 "\n", m.id);
    printf("job          %s\n", m.job);
    printf("server       %s\n", m.server[0] ? m.server : "(not named)");
    printf("clock        %" PRIu64 "\n", m.clock);
    printf("created      %s\n", when);
    keel_hex(hex, m.spec_sha256, KEEL_SHA256_SIZE);
    printf("spec sha256  %s\n", hex);
    keel_hex(hex, m.prev_sha256, KEEL_SHA256_SIZE);
    printf("previous     %s\n", hex);
    printf("\n%-6s %12s %12s %6s %6s  %s\n", "RANGE", "LSN", "ROWS", "TABLES", "BLOCKS", "SHA256");
    for (size_t i = 0; i < m.nranges; i++) {
        keel_hex(hex, m.ranges[i].sha256, KEEL_SHA256_SIZE);
        printf("%-6" PRIu32 " %12" PRIu64 " %12" PRIu64 " %6zu %6" PRIu32 "  %s\n",
               m.ranges[i].range, m.ranges[i].lsn, m.ranges[i].rows, m.ranges[i].ntables,
               m.ranges[i].blocks, hex);
    }
    printf("\n%-8s %14s  %-20s %12s\n", "SHARD", "SEQ", "WORKER", "INCARNATION");
    for (size_t i = 0; i < m.nshards; i++)
        printf("%-8" PRIu32 " %14" PRIu64 "  %-20s %12" PRIu64 "\n", m.shards[i].shard,
               m.shards[i].seq, m.shards[i].worker_id, m.shards[i].incarnation);
    keel_manifest_release(&m);
    return KEEL_EXIT_OK;
}

static int cmd_verify(keel_store *s, const struct opts *o, uint64_t id)
{
    struct keel_ckpt_key key;
    struct keel_error err;
    int rc = need_key(o, &key, "verify");

    if (rc != 0)
        return rc;
    keel_error_init(&err);
    rc = keel_checkpoint_verify(s, &key, id, 1, &err);
    if (o->json)
        keelctl_print_json(json_pack("{s:I,s:b,s:s}", "id", (json_int_t)id, "ok", rc == 0, "error",
                                     rc == 0 ? "" : err.msg));
    if (rc != 0)
        return fail("verify", &err);
    if (!o->json)
        printf("checkpoint %" PRIu64 ": ok (signature, every range's rows and SHA-256, chain)\n",
               id);
    return KEEL_EXIT_OK;
}

static int cmd_diff(keel_store *s, const struct opts *o, uint64_t a, uint64_t b)
{
    struct keel_error err;
    struct keel_ckpt_diff *d;
    size_t n;
    json_t *arr;

    keel_error_init(&err);
    if (keel_checkpoint_diff(s, a, b, &d, &n, &err) != 0)
        return fail("diff", &err);
    if (o->json) {
        arr = json_array();
        for (size_t i = 0; i < n; i++)
            json_array_append_new(
                arr, json_pack("{s:I,s:I,s:I,s:I,s:o,s:b}", "table", (json_int_t)d[i].table_id,
                               "rows_a", (json_int_t)d[i].rows_a, "rows_b", (json_int_t)d[i].rows_b,
                               "changed", (json_int_t)d[i].changed, "l2",
                               isnan(d[i].l2) ? json_null() : json_real(d[i].l2), "width_differs",
                               d[i].width_differs));
        keelctl_print_json(arr);
    } else {
        printf("%-6s %12s %12s %12s %14s\n", "TABLE", "ROWS_A", "ROWS_B", "CHANGED", "L2");
        for (size_t i = 0; i < n; i++)
            printf("%-6" PRIu32 " %12" PRIu64 " %12" PRIu64 " %12" PRIu64 " %14.6g%s\n",
                   d[i].table_id, d[i].rows_a, d[i].rows_b, d[i].changed, d[i].l2,
                   d[i].width_differs ? "  (row widths differ)" : "");
    }
    free(d);
    return KEEL_EXIT_OK;
}

struct audit_print {
    int json;
    json_t *arr;
};

static int print_audit(const struct keel_audit_record *r, void *ctx, struct keel_error *err)
{
    struct audit_print *p = ctx;
    char when[32], hex[65];

    format_time(when, sizeof(when), r->time_ns);
    keel_hex(hex, r->hash, KEEL_SHA256_SIZE);
    if (p->json)
        json_array_append_new(p->arr,
                              json_pack("{s:I,s:s,s:s,s:I,s:s,s:s,s:s}", "seq", (json_int_t)r->seq,
                                        "time", when, "event", keel_audit_event_name(r->event),
                                        "checkpoint", (json_int_t)r->checkpoint, "job", r->job,
                                        "detail", r->detail, "sha256", hex));
    else
        printf("%-6" PRIu64 " %-20s  %-9s %6" PRIu64 "  %-16s %.16s  %s\n", r->seq, when,
               keel_audit_event_name(r->event), r->checkpoint, r->job, hex, r->detail);
    return 0;
}

static int cmd_audit(keel_store *s, const struct opts *o)
{
    struct keel_error err;
    struct audit_print p = {o->json, json_array()};
    uint64_t count = 0;
    int rc;

    keel_error_init(&err);
    if (!o->json)
        printf("%-6s %-20s  %-9s %6s  %-16s %-16s  %s\n", "SEQ", "TIME", "EVENT", "CKPT", "JOB",
               "SHA256", "DETAIL");
    rc = keel_audit_verify(s, print_audit, &p, &count, &err);
    if (o->json) {
        json_t *root = json_pack("{s:o,s:b,s:s}", "records", p.arr, "ok", rc == 0, "error",
                                 rc == 0 ? "" : err.msg);
        keelctl_print_json(root);
    } else {
        json_decref(p.arr);
    }
    if (rc != 0)
        return fail("audit", &err);
    if (!o->json)
        printf("audit chain: %" PRIu64 " record(s), intact\n", count);
    return KEEL_EXIT_OK;
}

static int run_sub(keel_store *s, const struct opts *o, int argc, char **argv)
{
    const char *sub = argv[0];
    uint64_t a, b;
    struct keel_error err;
    struct keel_ckpt_key key;
    size_t pruned;
    int rc;

    keel_error_init(&err);
    if (strcmp(sub, "list") == 0 && argc == 1)
        return cmd_list(s, o);
    if (strcmp(sub, "audit") == 0 && argc == 1)
        return cmd_audit(s, o);
    if (strcmp(sub, "show") == 0 && argc == 2 && parse_id(argv[1], &a) == 0)
        return cmd_show(s, o, a);
    if (strcmp(sub, "verify") == 0 && argc == 2 && parse_id(argv[1], &a) == 0)
        return cmd_verify(s, o, a);
    if (strcmp(sub, "diff") == 0 && argc == 3 && parse_id(argv[1], &a) == 0 &&
        parse_id(argv[2], &b) == 0)
        return cmd_diff(s, o, a, b);
    if (strcmp(sub, "export") == 0 && argc == 2 && parse_id(argv[1], &a) == 0) {
        if (o->out == NULL) {
            fprintf(stderr, CMD " export: --out DIR is required\n");
            return KEEL_EXIT_USAGE;
        }
        rc = need_key(o, &key, "export");
        if (rc != 0)
            return rc;
        /* What is exported is what was signed: a damaged checkpoint writes no file. */
        if (keel_checkpoint_verify(s, &key, a, 0, &err) != 0) {
            keel_err_prefix(&err, err.code, "nothing exported");
            return fail("export", &err);
        }
        if (keel_checkpoint_export(s, a, o->out, &err) != 0)
            return fail("export", &err);
        if (o->json)
            keelctl_print_json(json_pack("{s:I,s:s}", "id", (json_int_t)a, "out", o->out));
        else
            printf("checkpoint %" PRIu64 " exported to %s\n", a, o->out);
        return KEEL_EXIT_OK;
    }
    if (strcmp(sub, "restore") == 0 && argc == 2 && parse_id(argv[1], &a) == 0) {
        rc = need_key(o, &key, "restore");
        if (rc != 0)
            return rc;
        if (keel_checkpoint_restore(s, &key, a, &err) != 0)
            return fail("restore", &err);
        printf("checkpoint %" PRIu64 " restored into the range snapshots\n", a);
        return KEEL_EXIT_OK;
    }
    if (strcmp(sub, "prune") == 0 && argc == 1) {
        if (o->keep < 1) {
            fprintf(stderr, CMD " prune: --keep K (at least 1) is required\n");
            return KEEL_EXIT_USAGE;
        }
        if (keel_checkpoint_prune(s, (size_t)o->keep, &pruned, &err) != 0)
            return fail("prune", &err);
        if (o->json)
            keelctl_print_json(
                json_pack("{s:I,s:I}", "pruned", (json_int_t)pruned, "kept", (json_int_t)o->keep));
        else
            printf("pruned %zu checkpoint(s), kept the newest %ld\n", pruned, o->keep);
        return KEEL_EXIT_OK;
    }
    fprintf(stderr, CMD ": bad arguments for '%s'\n", sub);
    usage(stderr);
    return KEEL_EXIT_USAGE;
}

int keelctl_cmd_checkpoint(const struct keel_config *config, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"store", required_argument, NULL, 's'},
        {"key", required_argument, NULL, 'k'},
        {"out", required_argument, NULL, 'O'},
        {"keep", required_argument, NULL, 'K'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = "checkpoint", .usage = usage, .shortopts = "h", .longopts = longopts};
    struct opts o = {NULL, NULL, NULL, 0, 0};
    struct keel_error err;
    keel_store *s;
    char *end;
    int opt, rc;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 's':
            o.store = optarg;
            break;
        case 'k':
            o.key = optarg;
            break;
        case 'O':
            o.out = optarg;
            break;
        case 'K':
            o.keep = strtol(optarg, &end, 10);
            if (*end != '\0' || o.keep < 1) {
                fprintf(stderr, CMD ": --keep must be a whole number of at least 1, got '%s'\n",
                        optarg);
                return KEEL_EXIT_USAGE;
            }
            break;
        case 'j':
            o.json = 1;
            break;
        }
    }
    if (opt < 0)
        return cl.exit;
    argc -= optind;
    argv += optind;
    if (argc < 1)
        return keelctl_usage_error(&cl, "no subcommand given");
    keel_error_init(&err);
    if (strcmp(argv[0], "keygen") == 0) {
        if (o.out == NULL || argc != 1) {
            fprintf(stderr, CMD " keygen: --out FILE is required\n");
            return KEEL_EXIT_USAGE;
        }
        if (keel_ckpt_key_generate(o.out, &err) != 0)
            return fail("keygen", &err);
        printf("wrote a new cluster key to %s\n", o.out);
        return KEEL_EXIT_OK;
    }
    if (o.store == NULL)
        o.store = config->data_dir && config->data_dir[0] ? config->data_dir : NULL;
    if (o.store == NULL) {
        fprintf(stderr, CMD ": --store DIR is required (or set [node] data_dir)\n");
        return KEEL_EXIT_USAGE;
    }
    /* Never create a store by mistake: it must exist already. */
    char mdb[4096];
    struct stat st;
    snprintf(mdb, sizeof(mdb), "%s/data.mdb", o.store);
    if (stat(mdb, &st) != 0) {
        fprintf(stderr, CMD " %s: no store in '%s': %s\n", argv[0], o.store, strerror(errno));
        return KEEL_EXIT_FAILURE;
    }
    if (keel_store_open(&s, o.store, NULL, &err) != 0)
        return fail(argv[0], &err);
    rc = run_sub(s, &o, argc, argv);
    keel_store_close(s);
    return rc;
}
