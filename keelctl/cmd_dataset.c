/*
 * cmd_dataset.c - `keelctl dataset`: import IDX, LIBSVM and CSV files into a
 * node's store as an immutable, sharded dataset; show, list and verify the
 * datasets a store holds.  The work is done by keel/dataset.h; this file
 * parses the command line and prints the results.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "cli.h"
#include "digest.h"
#include "keel/dataset.h"
#include "keel/store.h"
#include "keelctl.h"

#define MAX_REPORTS 20 /* problems verify prints before it only counts them */

static void usage_all(FILE *out)
{
    fprintf(out, "usage: keelctl dataset SUBCOMMAND [OPTIONS]\n"
                 "Import datasets into a node's store and inspect them.\n"
                 "\n"
                 "subcommands:\n"
                 "  import  parse IDX, LIBSVM or CSV files into a new, immutable dataset\n"
                 "  info    show a dataset's metadata and shards\n"
                 "  list    list the datasets in a store\n"
                 "  verify  re-read every record and check checksums and digests\n"
                 "\n"
                 "Run 'keelctl dataset SUBCOMMAND --help' for its options.\n");
}

static void usage_import(FILE *out)
{
    fprintf(out,
            "usage: keelctl dataset import --store DIR --name NAME --format idx|libsvm|csv\n"
            "                              [--shards N] [OPTIONS] FILES...\n"
            "Parse FILES into dataset NAME in the store in DIR (a node's data directory,\n"
            "created when missing).  Records are dealt round-robin to N shards.  A name\n"
            "is imported once: datasets are immutable.  Files may be gzip-compressed.\n"
            "  idx     two files: the images (or features) file, then the labels file\n"
            "  libsvm  one or more files of 'label index:value ...' lines\n"
            "  csv     one or more files of 'label,value,...' lines\n"
            "\n"
            "  -s, --store DIR          the store (default: node.data_dir)\n"
            "  -n, --name NAME          the dataset's name: 1-64 of A-Z a-z 0-9 . _ -\n"
            "  -f, --format FORMAT      idx, libsvm or csv\n"
            "  -N, --shards N           number of shards, 1-%d (default 1)\n"
            "      --split SPLIT        what the dataset is for, e.g. train or test\n"
            "      --features N         the number of features (default: from the data);\n"
            "                           with libsvm, indices above N are refused\n"
            "      --classes N          the number of classes (default: largest label + 1);\n"
            "                           labels of N or more are refused\n"
            "      --header             csv: skip the first line of each file\n"
            "      --label-column POS   csv: where the label is, first (default) or last\n"
            "  -q, --quiet              no progress lines\n"
            "  -h, --help               show this help\n",
            KEEL_DATASET_MAX_SHARDS);
}

static void usage_info(FILE *out)
{
    fprintf(out, "usage: keelctl dataset info --store DIR --name NAME [--json]\n"
                 "Show a dataset's format, shape, shards and content digest.\n"
                 "\n"
                 "  -s, --store DIR   the store (default: node.data_dir)\n"
                 "  -n, --name NAME   the dataset\n"
                 "  -j, --json        print one JSON object instead\n"
                 "  -h, --help        show this help\n");
}

static void usage_list(FILE *out)
{
    fprintf(out, "usage: keelctl dataset list --store DIR [--json]\n"
                 "List the datasets in a store, complete or not.\n"
                 "\n"
                 "  -s, --store DIR   the store (default: node.data_dir)\n"
                 "  -j, --json        print a JSON array instead\n"
                 "  -h, --help        show this help\n");
}

static void usage_verify(FILE *out)
{
    fprintf(out,
            "usage: keelctl dataset verify --store DIR --name NAME\n"
            "Re-read every record of a dataset and check its checksum, every shard's\n"
            "record count and SHA-256, and the content digest.  Exits 1 naming the\n"
            "first record that fails (and prints up to %d problems).\n"
            "\n"
            "  -s, --store DIR   the store (default: node.data_dir)\n"
            "  -n, --name NAME   the dataset\n"
            "  -h, --help        show this help\n",
            MAX_REPORTS);
}

static int fail(const char *sub, const struct keel_error *err)
{
    fprintf(stderr, "keelctl dataset %s: %s\n", sub, err->msg);
    return KEEL_EXIT_FAILURE;
}

/* A decimal number from 1 to max. */
static int parse_count(const char *s, unsigned long max, uint32_t *out)
{
    char *end;
    unsigned long v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || *s == '-' || *s == '+' || v < 1 || v > max)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* The store directory: --store, else node.data_dir. */
static const char *store_dir(const struct keel_config *config, const char *opt)
{
    if (opt)
        return opt;
    if (config->data_dir && config->data_dir[0])
        return config->data_dir;
    return NULL;
}

static int open_store(const char *sub, const char *dir, int read_only, keel_store **s)
{
    struct keel_store_options o = {0, 0, read_only};
    struct keel_error err;

    keel_error_init(&err);
    if (keel_store_open(s, dir, &o, &err) != 0)
        return fail(sub, &err);
    return KEEL_EXIT_OK;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void format_time(uint64_t t, char *out, size_t n)
{
    time_t tt = (time_t)t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* ---- import ------------------------------------------------------------- */

struct progress {
    const char *name;
    double start;
};

static void print_progress(void *ctx, uint64_t records, uint64_t bytes)
{
    struct progress *p = ctx;

    fprintf(stderr,
            "keelctl dataset import: '%s': %" PRIu64 " records, %.1f MiB written (%.1f s)\n",
            p->name, records, (double)bytes / (1 << 20), now() - p->start);
}

static int cmd_import(const struct keel_config *config, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"store", required_argument, NULL, 's'},
        {"name", required_argument, NULL, 'n'},
        {"format", required_argument, NULL, 'f'},
        {"shards", required_argument, NULL, 'N'},
        {"split", required_argument, NULL, 'S'},
        {"features", required_argument, NULL, 'F'},
        {"classes", required_argument, NULL, 'C'},
        {"header", no_argument, NULL, 'H'},
        {"label-column", required_argument, NULL, 'L'},
        {"quiet", no_argument, NULL, 'q'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {.what = "dataset import",
                                 .usage = usage_import,
                                 .shortopts = "s:n:f:N:qh",
                                 .longopts = longopts};
    struct keel_dataset_import_opts o;
    struct keel_dataset_info info;
    struct keel_error err;
    struct progress prog;
    const char *dir = NULL, *name = NULL;
    char digest[2 * KEEL_DATASET_DIGEST_SIZE + 1];
    keel_store *s;
    int opt, format = 0, quiet = 0, rc;

    memset(&o, 0, sizeof(o));
    o.nshards = 1;
    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 's':
            dir = optarg;
            break;
        case 'n':
            name = optarg;
            break;
        case 'f':
            format = keel_dataset_format_parse(optarg);
            if (format == 0)
                return keelctl_usage_error(&cl, "--format: must be idx, libsvm or csv, got '%s'",
                                           optarg);
            break;
        case 'N':
            if (parse_count(optarg, KEEL_DATASET_MAX_SHARDS, &o.nshards) != 0)
                return keelctl_usage_error(&cl, "--shards: must be 1-%d, got '%s'",
                                           KEEL_DATASET_MAX_SHARDS, optarg);
            break;
        case 'S':
            o.split = optarg;
            break;
        case 'F':
            if (parse_count(optarg, KEEL_RECORD_MAX_INDEX, &o.parse.nfeatures) != 0)
                return keelctl_usage_error(&cl, "--features: must be 1-%u, got '%s'",
                                           (unsigned)KEEL_RECORD_MAX_INDEX, optarg);
            break;
        case 'C':
            if (parse_count(optarg, KEEL_RECORD_MAX_CLASSES, &o.parse.nclasses) != 0)
                return keelctl_usage_error(&cl, "--classes: must be 1-%u, got '%s'",
                                           (unsigned)KEEL_RECORD_MAX_CLASSES, optarg);
            break;
        case 'H':
            o.parse.csv_header = 1;
            break;
        case 'L':
            if (strcmp(optarg, "first") == 0)
                o.parse.csv_label_last = 0;
            else if (strcmp(optarg, "last") == 0)
                o.parse.csv_label_last = 1;
            else
                return keelctl_usage_error(&cl, "--label-column: must be first or last, got '%s'",
                                           optarg);
            break;
        case 'q':
            quiet = 1;
            break;
        }
    }
    if (opt < 0)
        return cl.exit;
    dir = store_dir(config, dir);
    if (!dir)
        return keelctl_usage_error(&cl, "--store DIR is required");
    if (!name)
        return keelctl_usage_error(&cl, "--name NAME is required");
    if (!format)
        return keelctl_usage_error(&cl, "--format is required");
    if (optind >= argc)
        return keelctl_usage_error(&cl, "no file to import");
    if (format == KEEL_DATASET_IDX && argc - optind != 2)
        return keelctl_usage_error(
            &cl, "--format idx takes two files, the images then the labels; got %d", argc - optind);
    if ((o.parse.csv_header || o.parse.csv_label_last) && format != KEEL_DATASET_CSV)
        return keelctl_usage_error(&cl, "--header and --label-column are for csv");
    keel_error_init(&err);
    if (keel_dataset_name_check(name, &err) != 0)
        return keelctl_usage_error(&cl, "--name: %s", err.msg);

    if ((rc = open_store("import", dir, 0, &s)) != KEEL_EXIT_OK)
        return rc;
    prog.name = name;
    prog.start = now();
    if (!quiet) {
        o.progress = print_progress;
        o.progress_ctx = &prog;
        fprintf(stderr, "keelctl dataset import: '%s': reading %d file%s\n", name, argc - optind,
                argc - optind == 1 ? "" : "s");
    }
    rc = keel_dataset_import(s, name, (unsigned)format, (const char *const *)argv + optind,
                             (size_t)(argc - optind), &o, &info, &err);
    keel_store_close(s);
    if (rc != 0)
        return fail("import", &err);
    keel_hex(digest, info.digest, sizeof(info.digest));
    printf("imported '%s': %" PRIu64 " records, %" PRIu32 " features, %" PRIu32 " classes, %" PRIu32
           " shard%s, %s, in %.2f s\n"
           "digest sha256:%s\n",
           name, info.shape.nrecords, info.shape.nfeatures, info.shape.nclasses, info.nshards,
           info.nshards == 1 ? "" : "s", keel_record_encoding_name(info.shape.encoding),
           now() - prog.start, digest);
    return KEEL_EXIT_OK;
}

/* ---- info and list ------------------------------------------------------ */

/*
 * Options shared by info, list and verify (`what` is "dataset info"): --name
 * when `want_name`, --json when `json` is not NULL.  Returns 0 to go on, -1
 * after --help, or an exit code.
 */
static int parse_common(const char *what, void (*usage)(FILE *), int argc, char **argv,
                        int want_name, const char **dir, const char **name, int *json)
{
    static const struct option longopts[] = {
        {"store", required_argument, NULL, 's'},
        {"name", required_argument, NULL, 'n'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = what, .usage = usage, .shortopts = "s:n:jh", .longopts = longopts};
    int opt;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 's':
            *dir = optarg;
            break;
        case 'n':
            if (!want_name)
                return keelctl_usage_error(&cl, "unknown option '--name'");
            *name = optarg;
            break;
        case 'j':
            if (!json)
                return keelctl_usage_error(&cl, "unknown option '--json'");
            *json = 1;
            break;
        }
    }
    if (opt < 0)
        return cl.exit == KEEL_EXIT_OK ? -1 : cl.exit;
    if (optind < argc)
        return keelctl_usage_error(&cl, "unexpected argument '%s'", argv[optind]);
    if (!*dir)
        return keelctl_usage_error(&cl, "--store DIR is required");
    if (want_name && !*name)
        return keelctl_usage_error(&cl, "--name NAME is required");
    return 0;
}

static json_t *info_json(const struct keel_dataset_info *info)
{
    char digest[2 * KEEL_DATASET_DIGEST_SIZE + 1], created[32];
    json_t *o = json_object();

    format_time(info->created, created, sizeof(created));
    json_object_set_new(o, "name", json_string(info->name));
    json_object_set_new(o, "complete", json_boolean(info->complete));
    json_object_set_new(o, "format", json_string(keel_dataset_format_name(info->shape.format)));
    json_object_set_new(o, "split", json_string(info->split));
    json_object_set_new(o, "sources", json_string(info->sources));
    json_object_set_new(o, "encoding",
                        json_string(keel_record_encoding_name(info->shape.encoding)));
    json_object_set_new(o, "records", json_integer((json_int_t)info->shape.nrecords));
    json_object_set_new(o, "features", json_integer(info->shape.nfeatures));
    json_object_set_new(o, "classes", json_integer(info->shape.nclasses));
    json_object_set_new(o, "shards", json_integer(info->nshards));
    json_object_set_new(o, "bytes", json_integer((json_int_t)info->bytes));
    json_object_set_new(o, "created", json_string(created));
    if (info->complete) {
        keel_hex(digest, info->digest, sizeof(info->digest));
        json_object_set_new(o, "digest", json_string(digest));
    } else {
        json_object_set_new(o, "digest", json_null());
        json_object_set_new(o, "importer_pid", json_integer(info->importer_pid));
    }
    return o;
}

static int cmd_info(const struct keel_config *config, int argc, char **argv)
{
    const struct keel_dataset_info *info;
    const char *dir = NULL, *name = NULL;
    char digest[2 * KEEL_DATASET_DIGEST_SIZE + 1], created[32];
    struct keel_error err;
    keel_dataset *ds;
    keel_store *s;
    int json = 0, rc;

    dir = store_dir(config, NULL);
    rc = parse_common("dataset info", usage_info, argc, argv, 1, &dir, &name, &json);
    if (rc != 0)
        return rc < 0 ? KEEL_EXIT_OK : rc;
    if ((rc = open_store("info", dir, 1, &s)) != KEEL_EXIT_OK)
        return rc;
    keel_error_init(&err);
    if (keel_dataset_open(s, name, &ds, &err) != 0) {
        keel_store_close(s);
        return fail("info", &err);
    }
    info = keel_dataset_get_info(ds);
    if (json) {
        json_t *o = info_json(info), *arr = json_array();

        for (uint32_t sh = 0; sh < info->nshards; sh++) {
            const struct keel_dataset_shard *d = keel_dataset_shard(ds, sh);
            json_t *so = json_object();

            keel_hex(digest, d->sha, sizeof(d->sha));
            json_object_set_new(so, "shard", json_integer(sh));
            json_object_set_new(so, "records", json_integer((json_int_t)d->nrecords));
            json_object_set_new(so, "bytes", json_integer((json_int_t)d->bytes));
            json_object_set_new(so, "sha256", json_string(digest));
            json_array_append_new(arr, so);
        }
        json_object_set_new(o, "shard_list", arr);
        rc = keelctl_print_json(o);
    } else {
        keel_hex(digest, info->digest, sizeof(info->digest));
        format_time(info->created, created, sizeof(created));
        printf("name      %s\n"
               "format    %s\n"
               "split     %s\n"
               "sources   %s\n"
               "encoding  %s\n"
               "records   %" PRIu64 "\n"
               "features  %" PRIu32 "\n"
               "classes   %" PRIu32 "\n"
               "shards    %" PRIu32 " (round-robin)\n"
               "bytes     %" PRIu64 "\n"
               "created   %s\n"
               "digest    sha256:%s\n"
               "\n"
               "%5s  %10s  %12s  %s\n",
               info->name, keel_dataset_format_name(info->shape.format),
               info->split[0] ? info->split : "-", info->sources,
               keel_record_encoding_name(info->shape.encoding), info->shape.nrecords,
               info->shape.nfeatures, info->shape.nclasses, info->nshards, info->bytes, created,
               digest, "shard", "records", "bytes", "sha256");
        for (uint32_t sh = 0; sh < info->nshards; sh++) {
            const struct keel_dataset_shard *d = keel_dataset_shard(ds, sh);

            keel_hex(digest, d->sha, sizeof(d->sha));
            printf("%5" PRIu32 "  %10" PRIu64 "  %12" PRIu64 "  %s\n", sh, d->nrecords, d->bytes,
                   digest);
        }
        rc = KEEL_EXIT_OK;
    }
    keel_dataset_close(ds);
    keel_store_close(s);
    return rc;
}

struct list_state {
    int json;
    json_t *arr;
};

static int list_one(void *ctx, const struct keel_dataset_info *info)
{
    struct list_state *l = ctx;

    if (l->json) {
        json_array_append_new(l->arr, info_json(info));
        return 0;
    }
    printf("%-24s %-10s %-6s %10" PRIu64 " %9" PRIu32 " %8" PRIu32 " %7" PRIu32 "  %s\n",
           info->name, info->complete ? "complete" : "incomplete",
           keel_dataset_format_name(info->shape.format), info->shape.nrecords,
           info->shape.nfeatures, info->shape.nclasses, info->nshards,
           info->split[0] ? info->split : "-");
    return 0;
}

static int cmd_list(const struct keel_config *config, int argc, char **argv)
{
    const char *dir = NULL, *name = NULL;
    struct list_state l = {0, NULL};
    struct keel_error err;
    keel_store *s;
    int rc;

    dir = store_dir(config, NULL);
    rc = parse_common("dataset list", usage_list, argc, argv, 0, &dir, &name, &l.json);
    if (rc != 0)
        return rc < 0 ? KEEL_EXIT_OK : rc;
    if ((rc = open_store("list", dir, 1, &s)) != KEEL_EXIT_OK)
        return rc;
    keel_error_init(&err);
    if (l.json)
        l.arr = json_array();
    else
        printf("%-24s %-10s %-6s %10s %9s %8s %7s  %s\n", "name", "state", "format", "records",
               "features", "classes", "shards", "split");
    rc = keel_dataset_list(s, list_one, &l, &err);
    keel_store_close(s);
    if (rc != 0) {
        json_decref(l.arr);
        return fail("list", &err);
    }
    return l.json ? keelctl_print_json(l.arr) : KEEL_EXIT_OK;
}

/* ---- verify ------------------------------------------------------------- */

static void print_problem(void *ctx, const char *problem)
{
    fprintf(stderr, "keelctl dataset verify: '%s': %s\n", (const char *)ctx, problem);
}

static int cmd_verify(const struct keel_config *config, int argc, char **argv)
{
    const char *dir = NULL, *name = NULL;
    struct keel_dataset_info info;
    char digest[2 * KEEL_DATASET_DIGEST_SIZE + 1];
    struct keel_error err;
    keel_store *s;
    double start = now();
    int rc;

    dir = store_dir(config, NULL);
    rc = parse_common("dataset verify", usage_verify, argc, argv, 1, &dir, &name, NULL);
    if (rc != 0)
        return rc < 0 ? KEEL_EXIT_OK : rc;
    if ((rc = open_store("verify", dir, 1, &s)) != KEEL_EXIT_OK)
        return rc;
    keel_error_init(&err);
    rc = keel_dataset_verify(s, name, print_problem, (void *)name, MAX_REPORTS, &err);
    if (rc == 0)
        rc = keel_dataset_stat(s, name, &info, &err);
    keel_store_close(s);
    if (rc != 0)
        return fail("verify", &err);
    keel_hex(digest, info.digest, sizeof(info.digest));
    printf("dataset '%s' ok: %" PRIu64 " records in %" PRIu32 " shard%s, checksums and digests "
           "match (%.2f s)\n"
           "digest sha256:%s\n",
           name, info.shape.nrecords, info.nshards, info.nshards == 1 ? "" : "s", now() - start,
           digest);
    return KEEL_EXIT_OK;
}

int keelctl_cmd_dataset(const struct keel_config *config, int argc, char **argv)
{
    static const struct keelctl_sub subs[] = {
        {"import", cmd_import},
        {"info", cmd_info},
        {"list", cmd_list},
        {"verify", cmd_verify},
    };

    return keelctl_run_sub("dataset", subs, sizeof(subs) / sizeof(subs[0]), usage_all, config, argc,
                           argv);
}
