/*
 * bench_failover.c - keel-bench-failover: what replication costs, and how
 * long a range goes without an acknowledged push when its primary dies.
 *
 * Recovery (bench/failover-cluster.sh): a local cluster of 3 servers with a
 * 3 s lease TTL trains the job with replication 2; the server leading the
 * most ranges that hold rows of the model is SIGKILLed, and the time from
 * the kill to the first push a promoted backup acknowledges is measured (the
 * new primary logs it, with its wall-clock time, once per promotion), and
 * the time to the promotion itself.  The killed server is started again and
 * the next kill waits until every range is in sync and led by its share
 * again.  The baseline of these rows is the lease TTL: a dead server is only
 * noticed when its lease expires, so the ratio is the recovery in TTLs.
 *
 * Training rate (train_runs.h, the code path of keel-bench-train): the same
 * job, without faults, on 3 servers with replication 1, 2 and 3 (rounds of
 * the three in turn, medians), against the same training in this process
 * without the network.  Rows
 * keel_rN_examples_s have the in-process rate as their baseline;
 * keel_rN_vs_r1_examples_s have replication 1's, so their ratio is the
 * fraction of replication 1's rate that replication N keeps.
 *
 * Goals from the issue, reported in notes and never checked: a median
 * recovery under 1 s with a 3 s TTL, and replication 2 at most 25% slower
 * than replication 1.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "alloc.h"
#include "log.h"
#include "keel/buf.h"
#include "train_runs.h"

#define MAX_KILLS 100
#define NREPL     3
#define MAX_RUNS  9

struct options {
    unsigned kills;   /* 0: 10, 3 with --quick */
    unsigned epochs;  /* of the rate runs; 0: the job's, 1 with --quick */
    unsigned workers; /* of the rate runs */
    unsigned fo_workers;
    unsigned limit_s; /* 0: the default for the mode */
    unsigned runs;    /* rounds of the rate runs; 0: 3, 1 with --quick */
    const char *job;
    int failover_only, rate_only;
};

static const char options_help[] =
    "  --kills N          SIGKILLs of a primary (default 10; 3 with --quick)\n"
    "  --epochs N         epochs of each training-rate run (default: the job's; 1 with"
    " --quick)\n"
    "  --runs N           rounds of training-rate runs, 1-9: medians (default 3; 1 with"
    " --quick)\n"
    "  --workers N        workers of the training-rate runs (default 1)\n"
    "  --failover-workers N  workers training during the kills (default 2)\n"
    "  --job FILE         the job spec (default examples/fashion-mnist-softmax.ini)\n"
    "  --limit SECONDS    stop following a training-rate job after SECONDS (default 480;"
    " 120 with --quick)\n"
    "  --failover-only    only the recovery rows\n"
    "  --rate-only        only the training-rate rows\n";

static int parse_option(void *ctx, int argc, char **argv, int i)
{
    struct options *o = ctx;
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;

    if (strcmp(opt, "--failover-only") == 0) {
        o->failover_only = 1;
        return 1;
    }
    if (strcmp(opt, "--rate-only") == 0) {
        o->rate_only = 1;
        return 1;
    }
    if (strcmp(opt, "--kills") == 0) {
        if (keel_bench_parse_uint("keel-bench-failover", opt, val, 1, MAX_KILLS, &o->kills) != 0)
            return -1;
    } else if (strcmp(opt, "--epochs") == 0) {
        if (keel_bench_parse_uint("keel-bench-failover", opt, val, 1, 1000, &o->epochs) != 0)
            return -1;
    } else if (strcmp(opt, "--runs") == 0) {
        if (keel_bench_parse_uint("keel-bench-failover", opt, val, 1, MAX_RUNS, &o->runs) != 0)
            return -1;
    } else if (strcmp(opt, "--workers") == 0) {
        if (keel_bench_parse_uint("keel-bench-failover", opt, val, 1, 8, &o->workers) != 0)
            return -1;
    } else if (strcmp(opt, "--failover-workers") == 0) {
        if (keel_bench_parse_uint("keel-bench-failover", opt, val, 1, 8, &o->fo_workers) != 0)
            return -1;
    } else if (strcmp(opt, "--limit") == 0) {
        if (keel_bench_parse_uint("keel-bench-failover", opt, val, 10, 86400, &o->limit_s) != 0)
            return -1;
    } else if (strcmp(opt, "--job") == 0) {
        if (val == NULL || access(val, R_OK) != 0) {
            fprintf(stderr, "keel-bench-failover: --job: cannot read '%s'\n", val ? val : "");
            return -1;
        }
        o->job = val;
    } else {
        return 0;
    }
    return 2;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return (x > y) - (x < y);
}

/* The median and the largest of v[0..n) (sorted in place); NaN when n is 0. */
static void median_max(double *v, size_t n, double *median, double *max)
{
    if (n == 0) {
        *median = *max = NAN;
        return;
    }
    qsort(v, n, sizeof(*v), cmp_double);
    *median = n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
    *max = v[n - 1];
}

/* The directory of this binary (build-bench/bin): the cluster's binaries are there. */
static int bin_dir(char *bin, size_t n)
{
    ssize_t len = readlink("/proc/self/exe", bin, n - 1);
    char *slash;

    if (len <= 0) {
        fprintf(stderr, "keel-bench-failover: cannot find my own binary: %s\n", strerror(errno));
        return -1;
    }
    bin[len] = '\0';
    if ((slash = strrchr(bin, '/')) != NULL)
        *slash = '\0';
    return 0;
}

static int64_t json_int(json_t *o, const char *key)
{
    json_t *j = json_object_get(o, key);

    return json_is_integer(j) ? (int64_t)json_integer_value(j) : -1;
}

/* The job's path, relative to the source tree when it is in it. */
static const char *job_name(const char *job)
{
    size_t n = strlen(KEEL_SOURCE_DIR);

    return strncmp(job, KEEL_SOURCE_DIR "/", n + 1) == 0 ? job + n + 1 : job;
}

/* ---- recovery ------------------------------------------------------------------------- */

static int measure_failover(struct keel_bench *b, const struct options *o, const char *bin)
{
    unsigned kills = o->kills ? o->kills : b->quick ? 3 : 10;
    char nk[16], nw[16];
    char *argv[] = {"/bin/bash",
                    KEEL_SOURCE_DIR "/bench/failover-cluster.sh",
                    "--bin",
                    (char *)bin,
                    "--job",
                    (char *)o->job,
                    "--kills",
                    nk,
                    "--workers",
                    nw,
                    "--servers",
                    "3",
                    "--replication",
                    "2",
                    "--lease-ttl",
                    "3",
                    NULL};
    struct keel_buf text;
    json_t *root = NULL, *list;
    json_error_t je;
    double ack[MAX_KILLS], prom[MAX_KILLS], resync[MAX_KILLS], cmd[MAX_KILLS];
    size_t nack = 0, nprom = 0, nresync = 0, ncmd = 0, i;
    double ttl_s, med, max, pmed, pmax;
    json_t *k;
    int status, rc = -1;
    char victims[MAX_KILLS * 4 + 1] = "";

    snprintf(nk, sizeof(nk), "%u", kills);
    snprintf(nw, sizeof(nw), "%u", o->fo_workers);
    keel_buf_init(&text, 0);
    status = train_run_capture(argv, &text);
    if (status != 0) {
        fprintf(stderr, "keel-bench-failover: failover-cluster.sh %s %d\n",
                status < 0 ? "could not run:" : "failed, exit status", status < 0 ? errno : status);
        goto out;
    }
    root = json_loadb((const char *)text.buf, text.len, 0, &je);
    list = json_object_get(root, "kills");
    if (root == NULL || !json_is_array(list) || json_int(root, "ttl_ms") <= 0) {
        fprintf(stderr, "keel-bench-failover: failover-cluster.sh printed an unexpected result\n");
        goto out;
    }
    ttl_s = (double)json_int(root, "ttl_ms") / 1000.0;
    json_array_foreach(list, i, k)
    {
        int64_t t0 = json_int(k, "kill_ms"), a = json_int(k, "first_ack_ms");
        int64_t p = json_int(k, "promoted_ms"), y = json_int(k, "resynced_ms");
        json_t *v = json_object_get(k, "victim");

        if (i >= MAX_KILLS || t0 <= 0)
            break;
        if (a > 0)
            ack[nack++] = (double)(a - t0) / 1000.0;
        if (p > 0)
            prom[nprom++] = (double)(p - t0) / 1000.0;
        if (y > 0)
            resync[nresync++] = (double)(y - t0) / 1000.0;
        if (json_int(k, "kill_cmd_ms") >= 0)
            cmd[ncmd++] = (double)json_int(k, "kill_cmd_ms");
        if (json_is_string(v) && strlen(json_string_value(v)) < 4)
            snprintf(victims + strlen(victims), sizeof(victims) - strlen(victims), "%s%s",
                     i ? " " : "", json_string_value(v));
    }
    median_max(ack, nack, &med, &max);
    median_max(prom, nprom, &pmed, &pmax);
    keel_bench_record(b, "failover_kill_to_first_ack_median", med, "s", ttl_s);
    keel_bench_record(b, "failover_kill_to_first_ack_max", max, "s", ttl_s);
    keel_bench_record(b, "failover_kill_to_promotion_median", pmed, "s", ttl_s);
    keel_bench_record(b, "failover_kill_to_promotion_max", pmax, "s", ttl_s);
    keel_bench_note(b,
                    "failover: %zu SIGKILLs of the busiest primary (%s), 3 servers, replication 2,"
                    " %u worker(s), %s; lease TTL %.0f s (the baseline of the failover rows)",
                    json_array_size(list), victims, o->fo_workers, job_name(o->job), ttl_s);
    keel_bench_note(b,
                    "failover: kill to first acknowledged push at a promoted primary: %zu of %zu"
                    " measured, median %.2f s, max %.2f s; kill to promotion median %.2f s,"
                    " max %.2f s",
                    nack, json_array_size(list), med, max, pmed, pmax);
    if (nack > 0) {
        char line[1024];
        size_t len = 0;

        /* ack[] is sorted; list the kills in the order they happened. */
        json_array_foreach(list, i, k)
        {
            int64_t t0 = json_int(k, "kill_ms"), a = json_int(k, "first_ack_ms");

            if (len < sizeof(line))
                len += (size_t)snprintf(line + len, sizeof(line) - len, "%s%s", i ? ", " : "",
                                        a > 0 ? "" : "-");
            if (a > 0 && len < sizeof(line))
                len += (size_t)snprintf(line + len, sizeof(line) - len, "%.2f",
                                        (double)(a - t0) / 1000.0);
        }
        keel_bench_note(b, "failover: kill to first acknowledged push, each kill in order (s): %s",
                        line);
    }
    median_max(resync, nresync, &med, &max);
    median_max(cmd, ncmd, &pmed, &pmax);
    keel_bench_note(b,
                    "failover: the killed server restarted and every range in sync again %.1f s"
                    " after the kill (median; max %.1f s); the kill command took"
                    " %.0f ms (median) from the time taken to the signal",
                    med, max, pmed);
    keel_bench_note(b, "failover: goal from the issue (a reference, not checked): median under"
                       " 1 s with a 3 s lease TTL");
    rc = 0;
out:
    json_decref(root);
    keel_buf_release(&text);
    return rc;
}

/* ---- training rate by replication ----------------------------------------------------- */

static int measure_rate(struct keel_bench *b, const struct options *o, const char *bin)
{
    unsigned nruns = o->runs ? o->runs : b->quick ? 1 : 3, done = 0;
    struct train_setup s;
    struct train_run local, runs[MAX_RUNS][NREPL];
    struct keel_error err = {0};
    const char *data = getenv("KEEL_FASHION_MNIST_DIR");
    double base, rate[NREPL], v[MAX_RUNS], max;
    char name[64];
    int rc = 0;

    memset(&s, 0, sizeof(s));
    memset(&local, 0, sizeof(local));
    memset(runs, 0, sizeof(runs));
    s.job = o->job;
    s.epochs = o->epochs ? o->epochs : b->quick ? 1 : 0;
    s.data_dir = data && data[0] ? data : "/usr/share/datasets/fashion-mnist";
    s.bin_dir = bin;
    s.script = KEEL_SOURCE_DIR "/bench/train-cluster.sh";
    s.servers = 3;
    s.limit_s = o->limit_s ? o->limit_s : b->quick ? 120 : 480;
    s.local_reps = 3;
    if (train_in_process(&s, &local, &err) != 0) {
        fprintf(stderr, "keel-bench-failover: in process: %s\n", err.msg);
        return -1;
    }
    /* Rounds of replication 1, 2, 3 in turn, so that a change of load during
     * the benchmark affects them alike. */
    for (done = 0; done < nruns && rc == 0; done++) {
        if (nruns > 1)
            fprintf(stderr, "keel-bench-failover: round %u of %u\n", done + 1, nruns);
        for (unsigned r = 1; r <= NREPL && rc == 0; r++) {
            s.replication = r;
            if ((rc = train_on_cluster(&s, o->workers, &runs[done][r - 1], &err)) != 0)
                fprintf(stderr, "keel-bench-failover: replication %u: %s\n", r, err.msg);
        }
    }
    if (rc == 0) {
        base = train_examples_per_s(&local);
        for (unsigned r = 1; r <= NREPL; r++) {
            for (unsigned i = 0; i < nruns; i++)
                v[i] = train_examples_per_s(&runs[i][r - 1]);
            median_max(v, nruns, &rate[r - 1], &max);
            snprintf(name, sizeof(name), "keel_r%u_examples_s", r);
            keel_bench_record(b, name, rate[r - 1], "ex/s", base);
        }
        for (unsigned r = 2; r <= NREPL; r++) {
            snprintf(name, sizeof(name), "keel_r%u_vs_r1_examples_s", r);
            keel_bench_record(b, name, rate[r - 1], "ex/s", rate[0]);
        }
        keel_bench_note(b,
                        "rate: %s, %" PRIu32 " epoch(s) of %" PRIu64 " records, 3 servers,"
                        " %u worker(s), no faults, %u round(s)%s; in process %.0f examples/s"
                        " (the baseline of the keel_rN_examples_s rows)",
                        job_name(o->job), local.epochs, local.records, o->workers, nruns,
                        nruns > 1 ? " (medians)" : "", base);
        for (unsigned r = 1; r <= NREPL; r++) {
            char line[256];
            size_t len = 0;

            for (unsigned i = 0; i < nruns && len < sizeof(line); i++) {
                const struct train_run *k = &runs[i][r - 1];

                len += (size_t)snprintf(line + len, sizeof(line) - len, "%s%.0f%s", i ? ", " : "",
                                        train_examples_per_s(k),
                                        k->finished ? "" : " (stopped at the time limit)");
            }
            keel_bench_note(b,
                            "rate: replication %u: examples/s of each round %s; final test"
                            " accuracy %.4f (in process %.4f); cluster start-up %.0f s, not"
                            " counted",
                            r, line, train_final_accuracy(&runs[0][r - 1]),
                            train_final_accuracy(&local), runs[0][r - 1].startup_s);
        }
        keel_bench_note(b,
                        "rate: replication 2 keeps %.3f of replication 1's rate (%.0f%% slower);"
                        " goal from the issue (a reference, not checked): at most 25%% slower",
                        rate[1] / rate[0], 100.0 * (1.0 - rate[1] / rate[0]));
    }
    train_run_release(&local);
    for (unsigned i = 0; i < MAX_RUNS; i++)
        for (unsigned r = 0; r < NREPL; r++)
            train_run_release(&runs[i][r]);
    return rc;
}

int main(int argc, char **argv)
{
    struct options o = {0, 0, 1, 2, 0, 0, KEEL_SOURCE_DIR "/examples/fashion-mnist-softmax.ini",
                        0, 0};
    struct keel_bench_opts opts = {options_help, parse_option, &o};
    struct keel_bench b;
    char bin[PATH_MAX];
    int rc, failed = 0;

    rc = keel_bench_init_opts(&b, "keel-bench-failover",
                              "Failover on a local cluster of 3 servers (lease TTL 3 s,"
                              " replication 2): seconds from\nthe SIGKILL of a primary to the"
                              " first push acknowledged by a promoted backup.\nTraining rate with"
                              " replication 1, 2 and 3 against the same training in one process.",
                              &opts, argc, argv);
    if (rc >= 0)
        return rc;
    if (o.failover_only && o.rate_only) {
        fprintf(stderr,
                "keel-bench-failover: --failover-only and --rate-only exclude each other\n");
        return 64;
    }
    keel_log_set_level(KEEL_LOG_LEVEL_WARN);
    if (bin_dir(bin, sizeof(bin)) != 0)
        return 1;
    if (!o.rate_only && measure_failover(&b, &o, bin) != 0)
        failed = 1;
    if (!o.failover_only && !failed && measure_rate(&b, &o, bin) != 0)
        failed = 1;
    rc = keel_bench_finish(&b);
    return failed ? 1 : rc;
}
