/*
 * cmd_job.c - `keelctl job`: submit a job spec to etcd, list the jobs, show
 * one (spec, state, shard leases, evaluation results), stop one.
 *
 * keelctl is not the coordinator's leader, so it does not write through the
 * leader's fence.  It writes only what an operator decides, each write a
 * transaction that cannot overwrite a concurrent change:
 *  - submit creates jobs/<job>/spec and jobs/<job>/state (pending) in one
 *    transaction, only if neither exists;
 *  - stop moves jobs/<job>/state to stopped in a transaction comparing the
 *    state's mod revision with the one it read (and reads again if the
 *    leader moved the job in between).
 * Everything else under jobs/<job>/ is the leader's and the workers'.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "alloc.h"
#include "keel/buf.h"
#include "clock.h"
#include "cli.h"
#include "keel/cstate.h"
#include "keel/dataset.h"
#include "keel/jobs.h"
#include "keel/jobspec.h"
#include "keel/progress.h"
#include "keel/store.h"
#include "keelctl.h"
#include "keys.h"

#define STOP_TRIES 5 /* reads of the state when the leader keeps moving it */

static void usage_all(FILE *out)
{
    fprintf(out, "usage: keelctl [--config FILE] job SUBCOMMAND [OPTIONS]\n"
                 "Training jobs, as etcd keeps them (the cluster of [cluster] name and etcd).\n"
                 "\n"
                 "subcommands:\n"
                 "  submit  validate a job spec file and submit it (state pending)\n"
                 "  list    every job with its state and progress\n"
                 "  show    one job: spec, state, shard leases, evaluation results\n"
                 "  stop    stop a pending or running job\n"
                 "  rollback  take an ended job back to its servers' checkpoints of one clock\n"
                 "            and make it pending again (servers stopped)\n"
                 "\n"
                 "Run 'keelctl job SUBCOMMAND --help' for its options.\n");
}

static void usage_submit(FILE *out)
{
    fprintf(out, "usage: keelctl job submit [--store DIR] [--json] FILE\n"
                 "Validate the job spec FILE and store it in etcd as a pending job; the\n"
                 "coordinator's leader starts it when no other job runs.  A job name is\n"
                 "submitted once: a second submit of the same name is refused.\n"
                 "\n"
                 "  -s, --store DIR   also check the datasets in this store: the training\n"
                 "                    dataset exists with exactly [job] shards shards, the\n"
                 "                    test dataset (if any) exists\n"
                 "  -j, --json        print a JSON object\n"
                 "  -h, --help        show this help\n");
}

static void usage_list(FILE *out)
{
    fprintf(out, "usage: keelctl job list [--json]\n"
                 "Every job with its state, shards done, passes done and when it last moved.\n"
                 "\n"
                 "  -j, --json   print a JSON array\n"
                 "  -h, --help   show this help\n");
}

static void usage_show(FILE *out)
{
    fprintf(out, "usage: keelctl job show [--json] NAME\n"
                 "A job's spec, its state with times and reason, its shard leases (owner,\n"
                 "position, done) and the evaluation results workers reported, pass by pass.\n"
                 "With --json also each shard's furthest position (of its lease record and its\n"
                 "worker's report), the newest pass's evaluation weighted by examples, and\n"
                 "the values in etcd that do not decode.\n"
                 "\n"
                 "  -j, --json   print a JSON object\n"
                 "  -h, --help   show this help\n");
}

static void usage_stop(FILE *out)
{
    fprintf(out, "usage: keelctl job stop [--reason TEXT] [--json] NAME\n"
                 "Stop a pending or running job: its state becomes stopped (final) and the\n"
                 "leader releases its shard leases.  Stopping a stopped job is not an error.\n"
                 "\n"
                 "  -r, --reason TEXT   why (default: stopped by the operator)\n"
                 "  -j, --json          print a JSON object\n"
                 "  -h, --help          show this help\n");
}

/*
 * Options shared by list/show/stop (`what` is "job list"): --json, --help,
 * --reason (stop), and `want_name` positional NAME.  Returns 0 to go on, -1
 * after --help, or an exit code.
 */
static int parse_opts(const char *what, void (*usage)(FILE *), int argc, char **argv, int want_name,
                      int *json, const char **name, const char **reason)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"reason", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = what, .usage = usage, .shortopts = "jr:h", .longopts = longopts};
    int opt;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 'j':
            *json = 1;
            break;
        case 'r':
            if (reason == NULL)
                return keelctl_usage_error(&cl, "unknown option '--reason'");
            *reason = optarg;
            break;
        }
    }
    if (opt < 0)
        return cl.exit == KEEL_EXIT_OK ? -1 : cl.exit;
    if (want_name) {
        if (optind >= argc)
            return keelctl_usage_error(&cl, "NAME is required");
        if (argc - optind > 1)
            return keelctl_usage_error(&cl, "one NAME only, got '%s' too", argv[optind + 1]);
        *name = argv[optind];
        if (!keel_id_valid(*name))
            return keelctl_usage_error(&cl, "'%s' is not a job name: 1-%d of A-Z a-z 0-9 - _",
                                       *name, KEEL_ID_MAX);
    } else if (optind < argc) {
        return keelctl_usage_error(&cl, "unexpected argument '%s'", argv[optind]);
    }
    return 0;
}

/* ---- submit ----------------------------------------------------------------- */

/* Check the spec's datasets against the store in `dir`.  Returns 0 or an exit code. */
static int check_datasets(const char *dir, const struct keel_jobspec *spec)
{
    struct keel_store_options so = {0, 0, 1};
    struct keel_dataset_info info = {0};
    struct keel_error err;
    keel_store *s;
    int rc = KEEL_EXIT_OK;

    keel_error_init(&err);
    memset(&info, 0, sizeof(info));
    if (keel_store_open(&s, dir, &so, &err) != 0)
        return keelctl_fail("job submit", "--store: %s", err.msg);
    if (keel_dataset_stat(s, spec->dataset, &info, &err) != 0)
        rc = keelctl_fail("job submit", "[job] dataset: %s", err.msg);
    else if (!info.complete)
        rc = keelctl_fail("job submit", "[job] dataset: '%s' in '%s' is not completely imported",
                          spec->dataset, dir);
    else if (info.nshards != spec->shards)
        rc = keelctl_fail("job submit",
                          "[job] shards: the job spec says %" PRIu32 ", but dataset '%s' in '%s' "
                          "was imported with %" PRIu32,
                          spec->shards, spec->dataset, dir, info.nshards);
    else if (spec->test_dataset[0] && keel_dataset_stat(s, spec->test_dataset, &info, &err) != 0)
        rc = keelctl_fail("job submit", "[job] test_dataset: %s", err.msg);
    keel_store_close(s);
    return rc;
}

/* The state of an existing job, for the refusal message. */
static void describe_existing(const struct keel_etcd_txn_result *r, char *out, size_t n)
{
    struct keel_job_status st;

    snprintf(out, n, "state unknown");
    for (size_t i = 0; i < r->n; i++) {
        const struct keel_etcd_kvs *kvs = &r->ops[i].range;
        char when[32];

        if (r->ops[i].op != KEEL_ETCD_OP_RANGE || kvs->n != 1 ||
            strstr(kvs->kvs[0].key, "/state") == NULL)
            continue;
        if (keel_job_status_decode(kvs->kvs[0].value, kvs->kvs[0].value_len, &st, NULL) == 0) {
            keelctl_format_time(st.changed_ms, when, sizeof(when));
            snprintf(out, n, "%s since %s", keel_job_state_name(st.state), when);
        }
    }
}

static int cmd_submit(const struct keel_config *config, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"store", required_argument, NULL, 's'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct keelctl_cmdline cl = {
        .what = "job submit", .usage = usage_submit, .shortopts = "s:jh", .longopts = longopts};
    struct keel_buf spec_key = KEEL_BUF_INIT, state_key = KEEL_BUF_INIT, spec_val = KEEL_BUF_INIT,
                    state_val = KEEL_BUF_INIT;
    struct keel_etcd_txn_result r;
    struct keel_job_status st;
    struct keel_jobspec spec;
    struct keel_error err;
    const char *store = NULL, *path;
    char digest[2 * KEEL_JOBSPEC_DIGEST_SIZE + 1], model[64], consistency[32];
    keel_etcd_txn *t = NULL;
    keel_etcd *etcd = NULL;
    int opt, json = 0, rc;

    while ((opt = keelctl_getopt(&cl, argc, argv)) > 0) {
        switch (opt) {
        case 's':
            store = optarg;
            break;
        case 'j':
            json = 1;
            break;
        }
    }
    if (opt < 0)
        return cl.exit;
    if (optind >= argc)
        return keelctl_usage_error(&cl, "FILE is required");
    if (argc - optind > 1)
        return keelctl_usage_error(&cl, "one FILE only, got '%s' too", argv[optind + 1]);
    path = argv[optind];
    keel_error_init(&err);
    memset(&r, 0, sizeof(r));
    if (keel_jobspec_load(&spec, path, &err) != 0)
        return keelctl_fail("job submit", "%s", err.msg);
    if (store && (rc = check_datasets(store, &spec)) != KEEL_EXIT_OK)
        return rc;
    /* A new id: a store holding an earlier job of this name is never taken for this one's. */
    if (keel_jobspec_new_uid(&spec, &err) != 0)
        return keelctl_fail("job submit", "%s", err.msg);

    keel_key_job_spec(&spec_key, config->cluster_name, spec.name);
    keel_key_job_state(&state_key, config->cluster_name, spec.name);
    keel_jobspec_encode(&spec, &spec_val);
    keel_job_status_init(&st, (uint64_t)keel_clock_wall_ms());
    keel_job_status_encode(&st, &state_val);
    if ((rc = keelctl_etcd_open(config, &etcd, &err)) != 0) {
        rc = keelctl_etcd_fail("job submit", config, &err);
        goto out;
    }
    t = keel_etcd_txn_new();
    keel_etcd_txn_compare(t, (const char *)spec_key.buf, KEEL_ETCD_CREATE, KEEL_ETCD_EQUAL, 0);
    keel_etcd_txn_compare(t, (const char *)state_key.buf, KEEL_ETCD_CREATE, KEEL_ETCD_EQUAL, 0);
    keel_etcd_txn_put(t, KEEL_ETCD_THEN, (const char *)spec_key.buf, spec_val.buf, spec_val.len, 0);
    keel_etcd_txn_put(t, KEEL_ETCD_THEN, (const char *)state_key.buf, state_val.buf, state_val.len,
                      0);
    keel_etcd_txn_get(t, KEEL_ETCD_ELSE, (const char *)state_key.buf, 0);
    rc = keel_etcd_txn_commit(etcd, t, &r, &err);
    if (rc == KEEL_EINDOUBT) {
        /* Read back: our spec, byte for byte, with a state means it was stored. */
        struct keel_etcd_kv kv;

        memset(&kv, 0, sizeof(kv));
        keel_error_init(&err);
        rc = keel_etcd_get(etcd, (const char *)spec_key.buf, &kv, NULL, &err);
        if (rc == 0 && kv.value_len == spec_val.len &&
            memcmp(kv.value, spec_val.buf, spec_val.len) == 0) {
            r.succeeded = 1;
        } else if (rc == 0 || rc == KEEL_ENOTFOUND) {
            rc = keelctl_fail("job submit",
                              "etcd did not say whether job '%s' was stored, and it is not: "
                              "submit again",
                              spec.name);
            keel_etcd_kv_release(&kv);
            goto out;
        }
        keel_etcd_kv_release(&kv);
    }
    if (rc != 0) {
        rc = keelctl_etcd_fail("job submit", config, &err);
        goto out;
    }
    if (!r.succeeded) {
        char what[96];

        describe_existing(&r, what, sizeof(what));
        rc = keelctl_fail("job submit",
                          "job '%s' already exists (%s); a job name is submitted once: choose "
                          "another [job] name",
                          spec.name, what);
        goto out;
    }
    keel_jobspec_digest_hex(&spec, digest);
    keel_jobspec_model_string(&spec, model, sizeof(model));
    keel_consistency_string(&spec, consistency, sizeof(consistency));
    if (json) {
        keelctl_print_json(json_pack(
            "{s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:i}", "name", spec.name, "uid", spec.uid,
            "state", "pending", "digest", digest, "model", model, "dataset", spec.dataset, "shards",
            (int)spec.shards, "epochs", (int)spec.epochs, "replication", (int)spec.replication));
    } else {
        printf("submitted job '%s': model %s, dataset '%s' (%" PRIu32 " shards), %" PRIu32
               " epoch%s, %s, replication %u; state pending\n"
               "uid %s\ndigest sha256:%s\n",
               spec.name, model, spec.dataset, spec.shards, spec.epochs,
               spec.epochs == 1 ? "" : "s", consistency, spec.replication, spec.uid, digest);
    }
    rc = KEEL_EXIT_OK;
out:
    keel_etcd_txn_result_release(&r);
    keel_etcd_txn_free(t);
    keel_etcd_free(etcd);
    keel_buf_release(&spec_key);
    keel_buf_release(&state_key);
    keel_buf_release(&spec_val);
    keel_buf_release(&state_val);
    return rc;
}

/* ---- list ------------------------------------------------------------------- */

/* Read the cluster's keys; prints the failure and returns an exit code on error. */
static int read_state(const struct keel_config *config, const char *what, struct keel_cstate *s)
{
    struct keel_error err;
    keel_etcd *etcd = NULL;
    int rc;

    keel_error_init(&err);
    memset(s, 0, sizeof(*s));
    if ((rc = keelctl_etcd_open(config, &etcd, &err)) == 0)
        rc = keel_cstate_read(etcd, config->cluster_name, s, &err);
    keel_etcd_free(etcd);
    if (rc != 0) {
        keel_cstate_release(s);
        return keelctl_etcd_fail(what, config, &err);
    }
    return KEEL_EXIT_OK;
}

static const char *state_of(const struct keel_cstate_job *j)
{
    return j->status_ok ? keel_job_state_name(j->status.state) : "unreadable";
}

/* The job's summary as JSON: what list and status print for each job. */
json_t *keelctl_job_json(const struct keel_cstate_job *j)
{
    struct keelctl_progress p;
    json_t *o;

    keelctl_job_progress(j, &p);
    o = json_pack("{s:s, s:s}", "name", j->name, "state", state_of(j));
    json_object_set_new(o, "changed_ms",
                        j->status_ok ? json_integer((json_int_t)j->status.changed_ms)
                                     : json_null());
    json_object_set_new(o, "reason", json_string(j->status_ok ? j->status.reason : j->error));
    json_object_set_new(o, "shards", json_integer(p.shards));
    json_object_set_new(o, "shards_done", json_integer(p.shards_done));
    json_object_set_new(o, "shards_leased", json_integer(p.leased));
    json_object_set_new(o, "epochs", json_integer(p.epochs));
    json_object_set_new(o, "passes_done", json_integer((json_int_t)p.passes_done));
    json_object_set_new(o, "passes_total", json_integer((json_int_t)p.passes_total));
    json_object_set_new(
        o, "progress",
        json_real(p.passes_total ? (double)p.passes_done / (double)p.passes_total : 0.0));
    if (j->error[0])
        json_object_set_new(o, "error", json_string(j->error));
    return o;
}

void keelctl_job_rows(const struct keel_cstate *s, FILE *out)
{
    int64_t now = keel_clock_wall_ms();

    fprintf(out, "%-24s %-10s %-12s %-14s %-9s %s\n", "NAME", "STATE", "SHARDS DONE", "PASSES DONE",
            "PROGRESS", "CHANGED");
    for (size_t i = 0; i < s->njobs; i++) {
        const struct keel_cstate_job *j = &s->jobs[i];
        struct keelctl_progress p;
        char done[32], passes[48], pct[16], age[32];

        if (j->spec_kv == NULL && j->state_kv == NULL)
            continue; /* only reports left of a job: not a job */
        keelctl_job_progress(j, &p);
        snprintf(done, sizeof(done), "%" PRIu32 "/%" PRIu32, p.shards_done, p.shards);
        snprintf(passes, sizeof(passes), "%" PRIu64 "/%" PRIu64, p.passes_done, p.passes_total);
        snprintf(pct, sizeof(pct), "%.0f%%",
                 p.passes_total ? 100.0 * (double)p.passes_done / (double)p.passes_total : 0.0);
        if (j->status_ok) {
            keelctl_format_age(now - (int64_t)j->status.changed_ms, age, sizeof(age));
            fprintf(out, "%-24s %-10s %-12s %-14s %-9s %s ago\n", j->name, state_of(j), done,
                    passes, pct, age);
        } else {
            fprintf(out, "%-24s %-10s %-12s %-14s %-9s %s\n", j->name, state_of(j), done, passes,
                    pct, j->error);
        }
    }
}

static int cmd_list(const struct keel_config *config, int argc, char **argv)
{
    struct keel_cstate s;
    int json = 0, rc;

    rc = parse_opts("job list", usage_list, argc, argv, 0, &json, NULL, NULL);
    if (rc != 0)
        return rc < 0 ? KEEL_EXIT_OK : rc;
    if ((rc = read_state(config, "job list", &s)) != KEEL_EXIT_OK)
        return rc;
    if (json) {
        json_t *a = json_array();

        for (size_t i = 0; i < s.njobs; i++)
            if (s.jobs[i].spec_kv || s.jobs[i].state_kv)
                json_array_append_new(a, keelctl_job_json(&s.jobs[i]));
        keelctl_print_json(a);
    } else if (s.njobs == 0) {
        printf("no jobs in cluster '%s'\n", config->cluster_name);
    } else {
        keelctl_job_rows(&s, stdout);
    }
    keel_cstate_release(&s);
    return KEEL_EXIT_OK;
}

/* ---- show ------------------------------------------------------------------- */

/* Mean accuracy and loss per pass, over the workers that reported. */
struct curve_point {
    uint32_t pass;
    unsigned n;
    double accuracy, loss;
};

static size_t eval_curve(const struct keel_cstate_job *j, struct curve_point *pts, json_t *all)
{
    size_t n = 0;

    for (size_t i = 0; i < j->neval; i++) {
        const struct keel_cstate_item *it = &j->eval[i];
        struct keel_eval ev;

        if (keel_eval_decode(it->kv->value, it->kv->value_len, &ev, NULL) != 0 ||
            ev.pass != it->num || strcmp(ev.worker, it->worker) != 0)
            continue;
        if (all)
            json_array_append_new(all,
                                  json_pack("{s:i, s:s, s:f, s:f}", "pass", (int)ev.pass, "worker",
                                            ev.worker, "accuracy", ev.accuracy, "loss", ev.loss));
        if (n == 0 || pts[n - 1].pass != ev.pass) {
            memset(&pts[n], 0, sizeof(pts[n]));
            pts[n++].pass = ev.pass;
        }
        pts[n - 1].n++;
        pts[n - 1].accuracy += ev.accuracy;
        pts[n - 1].loss += ev.loss;
    }
    for (size_t i = 0; i < n; i++) {
        pts[i].accuracy /= pts[i].n;
        pts[i].loss /= pts[i].n;
    }
    return n;
}

/* A shard's furthest known position: of its lease record and its worker's report. */
struct position {
    uint32_t pass, batch;
    char worker[KEEL_ID_MAX + 1]; /* who reported it; "" when nobody */
    int known;
};

static void further(struct position *p, uint32_t pass, uint32_t batch, const char *worker)
{
    if (!p->known || pass > p->pass || (pass == p->pass && batch > p->batch)) {
        p->pass = pass;
        p->batch = batch;
        if (worker[0] != '\0' || !p->known)
            snprintf(p->worker, sizeof(p->worker), "%s", worker);
        p->known = 1;
    } else if (pass == p->pass && batch == p->batch && worker[0] != '\0' && p->worker[0] == '\0') {
        snprintf(p->worker, sizeof(p->worker), "%s", worker);
    }
}

static void add_problem(json_t *problems, const struct keel_etcd_kv *kv, const char *why)
{
    json_array_append_new(problems, json_pack("{s:s, s:s}", "key", kv->key, "error", why));
}

/*
 * Per shard of the spec, the furthest of jobs/<job>/progress/<n> (the
 * worker's report) and jobs/<job>/shards/<n> (the leader's record): every
 * batch before it is applied.  Values that do not decode go to `problems`.
 */
static json_t *positions_json(const struct keel_cstate_job *j, json_t *problems)
{
    json_t *a = json_array();
    struct position *pos;
    struct keel_error err;

    if (!j->spec_ok)
        return a;
    pos = keel_calloc(j->spec.shards + 1, sizeof(*pos));
    for (size_t i = 0; i < j->nprogress; i++) {
        const struct keel_cstate_item *it = &j->progress[i];
        struct keel_progress pr;

        keel_error_init(&err);
        if (keel_progress_decode(it->kv->value, it->kv->value_len, &pr, &err) != 0)
            add_problem(problems, it->kv, err.msg);
        else if (it->num < j->spec.shards)
            further(&pos[it->num], pr.pass, pr.batch, pr.worker);
    }
    for (size_t i = 0; i < j->nshards; i++) {
        const struct keel_cstate_item *it = &j->shards[i];
        struct keel_shard sh;

        keel_error_init(&err);
        if (keel_shard_decode(it->kv->value, it->kv->value_len, j->spec.epochs, &sh, &err) != 0)
            add_problem(problems, it->kv, err.msg);
        else if (it->num < j->spec.shards)
            further(&pos[it->num], sh.pass, sh.batch, sh.owner);
    }
    for (uint32_t n = 0; n < j->spec.shards; n++)
        json_array_append_new(
            a, json_pack("{s:i, s:i, s:i, s:o}", "shard", (int)n, "pass", (int)pos[n].pass, "batch",
                         (int)pos[n].batch, "worker",
                         pos[n].worker[0] ? json_string(pos[n].worker) : json_null()));
    free(pos);
    return a;
}

/*
 * The newest pass with test evaluations: accuracy and loss averaged over the
 * workers that evaluated it, weighted by their examples; null when none.
 */
static json_t *latest_eval_json(const struct keel_cstate_job *j, json_t *problems)
{
    double acc = 0, loss = 0, weight = 0;
    uint64_t most = 0;
    uint32_t pass = 0;
    unsigned workers = 0;
    struct keel_error err;

    for (size_t i = 0; i < j->neval; i++) { /* sorted by pass: the newest come last */
        const struct keel_cstate_item *it = &j->eval[i];
        struct keel_eval ev;

        keel_error_init(&err);
        if (keel_eval_decode(it->kv->value, it->kv->value_len, &ev, &err) != 0) {
            add_problem(problems, it->kv, err.msg);
            continue;
        }
        if (workers == 0 || it->num != pass) {
            pass = it->num;
            acc = loss = weight = 0;
            most = 0;
            workers = 0;
        }
        workers++;
        acc += ev.accuracy * (double)ev.examples;
        loss += ev.loss * (double)ev.examples;
        weight += (double)ev.examples;
        if (ev.examples > most)
            most = ev.examples;
    }
    if (workers == 0)
        return json_null();
    return json_pack("{s:i, s:f, s:f, s:i, s:I}", "pass", (int)pass, "accuracy", acc / weight,
                     "loss", loss / weight, "workers", (int)workers, "examples", (json_int_t)most);
}

static json_t *show_json(const struct keel_cstate_job *j, const struct keel_shard_table *t,
                         int shards_ok)
{
    json_t *problems = json_array();
    json_t *o = keelctl_job_json(j), *shards = json_array(), *evals = json_array(),
           *curve = json_array();
    struct curve_point *pts = keel_calloc(j->neval + 1, sizeof(*pts));
    size_t npts;

    if (j->spec_ok) {
        char digest[2 * KEEL_JOBSPEC_DIGEST_SIZE + 1];
        json_error_t jerr;

        keel_jobspec_digest_hex(&j->spec, digest);
        json_object_set_new(o, "digest", json_string(digest));
        json_object_set_new(
            o, "spec",
            json_loadb((const char *)j->spec_kv->value, j->spec_kv->value_len, 0, &jerr));
    }
    for (uint32_t n = 0; shards_ok && n < t->nshards; n++) {
        const struct keel_shard *sh = &t->shards[n];
        json_t *x = json_pack("{s:i}", "shard", (int)n);

        json_object_set_new(x, "owner", sh->owner[0] ? json_string(sh->owner) : json_null());
        json_object_set_new(x, "incarnation",
                            sh->owner[0] ? json_integer((json_int_t)sh->incarnation) : json_null());
        json_object_set_new(x, "pass", json_integer(sh->pass));
        json_object_set_new(x, "batch", json_integer(sh->batch));
        json_object_set_new(x, "done", json_boolean(sh->done));
        json_array_append_new(shards, x);
    }
    json_object_set_new(o, "shard_leases", shards);
    npts = eval_curve(j, pts, evals);
    for (size_t i = 0; i < npts; i++)
        json_array_append_new(curve, json_pack("{s:i, s:i, s:f, s:f}", "pass", (int)pts[i].pass,
                                               "workers", (int)pts[i].n, "accuracy",
                                               pts[i].accuracy, "loss", pts[i].loss));
    json_object_set_new(o, "eval", evals);
    json_object_set_new(o, "accuracy_curve", curve);
    json_object_set_new(o, "positions", positions_json(j, problems));
    json_object_set_new(o, "latest_eval", latest_eval_json(j, problems));
    json_object_set_new(o, "problems", problems);
    free(pts);
    return o;
}

static void show_text(const struct keel_cstate_job *j, const struct keel_shard_table *t,
                      int shards_ok, const char *shard_error)
{
    struct curve_point *pts = keel_calloc(j->neval + 1, sizeof(*pts));
    struct keelctl_progress p;
    size_t npts;

    printf("job '%s'\n", j->name);
    if (j->spec_ok) {
        char digest[2 * KEEL_JOBSPEC_DIGEST_SIZE + 1], model[64], consistency[32];

        keel_jobspec_digest_hex(&j->spec, digest);
        keel_jobspec_model_string(&j->spec, model, sizeof(model));
        keel_consistency_string(&j->spec, consistency, sizeof(consistency));
        printf("  model        %s\n", model);
        printf("  dataset      %s (%" PRIu32 " shards)%s%s\n", j->spec.dataset, j->spec.shards,
               j->spec.test_dataset[0] ? ", test " : "", j->spec.test_dataset);
        printf("  optimizer    %s, lr %g", keel_optim_name(j->spec.optimizer.type),
               j->spec.optimizer.lr);
        if (j->spec.optimizer.lr_decay_every > 0)
            printf(", x%g every %" PRIu64 " clocks", j->spec.optimizer.lr_decay,
                   j->spec.optimizer.lr_decay_every);
        putchar('\n');
        printf("  training     batch %" PRIu32 ", %" PRIu32 " epoch%s, %s\n", j->spec.batch_size,
               j->spec.epochs, j->spec.epochs == 1 ? "" : "s", consistency);
        printf("  replication  %u\n", j->spec.replication);
        printf("  checkpoints  every %" PRIu64 " clocks\n", j->spec.checkpoint_interval);
        printf("  uid          %s\n",
               j->spec.uid[0] ? j->spec.uid : "(none: submitted before ids)");
        printf("  digest       sha256:%s\n", digest);
    }
    if (j->status_ok) {
        char when[32], age[32];

        keelctl_format_time(j->status.changed_ms, when, sizeof(when));
        keelctl_format_age(keel_clock_wall_ms() - (int64_t)j->status.changed_ms, age, sizeof(age));
        printf("  state        %s since %s (%s ago)%s%s\n", keel_job_state_name(j->status.state),
               when, age, j->status.reason[0] ? ": " : "", j->status.reason);
    }
    if (j->error[0])
        printf("  problem      %s\n", j->error);
    keelctl_job_progress(j, &p);
    if (j->spec_ok)
        printf("  progress     %" PRIu32 "/%" PRIu32 " shards done, %" PRIu64 "/%" PRIu64
               " passes, %" PRIu32 " leased\n",
               p.shards_done, p.shards, p.passes_done, p.passes_total, p.leased);
    if (shard_error)
        printf("  shards       unreadable: %s\n", shard_error);
    if (shards_ok) {
        printf("\n  %-6s %-24s %-12s %-6s %-10s %s\n", "SHARD", "OWNER", "INCARNATION", "PASS",
               "BATCH", "DONE");
        for (uint32_t n = 0; n < t->nshards; n++) {
            const struct keel_shard *sh = &t->shards[n];
            char inc[24] = "-";

            if (sh->owner[0])
                snprintf(inc, sizeof(inc), "%" PRIu64, sh->incarnation);
            printf("  %-6" PRIu32 " %-24s %-12s %-6" PRIu32 " %-10" PRIu32 " %s\n", n,
                   sh->owner[0] ? sh->owner : "-", inc, sh->pass, sh->batch,
                   sh->done ? "yes" : "no");
        }
    }
    npts = eval_curve(j, pts, NULL);
    if (npts > 0) {
        printf("\n  accuracy by pass (mean over the workers that reported):\n");
        printf("  %-6s %-8s %-9s %-8s\n", "PASS", "WORKERS", "ACCURACY", "LOSS");
        for (size_t i = 0; i < npts; i++) {
            char bar[41];
            int w = (int)(pts[i].accuracy * 40 + 0.5);

            memset(bar, '#', (size_t)w);
            bar[w] = '\0';
            printf("  %-6" PRIu32 " %-8u %-9.4f %-8.4f %s\n", pts[i].pass, pts[i].n,
                   pts[i].accuracy, pts[i].loss, bar);
        }
    }
    free(pts);
}

static int cmd_show(const struct keel_config *config, int argc, char **argv)
{
    const struct keel_cstate_job *j;
    struct keel_shard_table t;
    struct keel_cstate s;
    struct keel_error err;
    const char *name = NULL;
    int json = 0, rc, shards_ok;

    rc = parse_opts("job show", usage_show, argc, argv, 1, &json, &name, NULL);
    if (rc != 0)
        return rc < 0 ? KEEL_EXIT_OK : rc;
    if ((rc = read_state(config, "job show", &s)) != KEEL_EXIT_OK)
        return rc;
    j = keel_cstate_job(&s, name);
    if (j == NULL || (j->spec_kv == NULL && j->state_kv == NULL)) {
        keel_cstate_release(&s);
        return keelctl_fail("job show", "no job '%s' in cluster '%s'", name, config->cluster_name);
    }
    keel_error_init(&err);
    memset(&t, 0, sizeof(t));
    shards_ok = j->spec_ok && keel_cstate_shards(j, &t, NULL, &err) == 0;
    if (json)
        keelctl_print_json(show_json(j, &t, shards_ok));
    else
        show_text(j, &t, shards_ok, j->spec_ok && !shards_ok ? err.msg : NULL);
    if (shards_ok)
        keel_shards_release(&t);
    keel_cstate_release(&s);
    return KEEL_EXIT_OK;
}

/* ---- stop ------------------------------------------------------------------- */

static int cmd_stop(const struct keel_config *config, int argc, char **argv)
{
    struct keel_buf key = KEEL_BUF_INIT, val = KEEL_BUF_INIT;
    const char *name = NULL, *reason = "stopped by the operator";
    struct keel_error err;
    keel_etcd *etcd = NULL;
    int json = 0, rc;

    rc = parse_opts("job stop", usage_stop, argc, argv, 1, &json, &name, &reason);
    if (rc != 0)
        return rc < 0 ? KEEL_EXIT_OK : rc;
    keel_error_init(&err);
    if ((rc = keelctl_etcd_open(config, &etcd, &err)) != 0)
        return keelctl_etcd_fail("job stop", config, &err);
    keel_key_job_state(&key, config->cluster_name, name);
    rc = -1;
    for (int try = 0; try < STOP_TRIES && rc < 0; try++) {
        struct keel_etcd_txn_result r;
        struct keel_job_status st;
        struct keel_etcd_kv kv;
        enum keel_job_state was;
        keel_etcd_txn *t;

        memset(&kv, 0, sizeof(kv));
        keel_error_init(&err);
        if ((rc = keel_etcd_get(etcd, (const char *)key.buf, &kv, NULL, &err)) != 0) {
            rc = rc == KEEL_ENOTFOUND ? keelctl_fail("job stop", "no job '%s' in cluster '%s'",
                                                     name, config->cluster_name)
                                      : keelctl_etcd_fail("job stop", config, &err);
            break;
        }
        if (keel_job_status_decode(kv.value, kv.value_len, &st, &err) != 0) {
            rc = keelctl_fail("job stop", "job '%s': %s", name, err.msg);
            keel_etcd_kv_release(&kv);
            break;
        }
        was = st.state;
        if (was == KEEL_JOB_STOPPED) {
            if (json)
                keelctl_print_json(json_pack("{s:s, s:s, s:s}", "name", name, "state", "stopped",
                                             "was", "stopped"));
            else
                printf("job '%s' is already stopped\n", name);
            rc = KEEL_EXIT_OK;
            keel_etcd_kv_release(&kv);
            break;
        }
        if (keel_job_status_move(&st, KEEL_JOB_STOPPED, (uint64_t)keel_clock_wall_ms(), reason,
                                 NULL) != 0) {
            rc = keelctl_fail("job stop", "cannot stop job '%s': it is %s, which is final", name,
                              keel_job_state_name(was));
            keel_etcd_kv_release(&kv);
            break;
        }
        keel_buf_reset(&val);
        keel_job_status_encode(&st, &val);
        t = keel_etcd_txn_new();
        keel_etcd_txn_compare(t, (const char *)key.buf, KEEL_ETCD_MOD, KEEL_ETCD_EQUAL,
                              kv.mod_revision);
        keel_etcd_txn_put(t, KEEL_ETCD_THEN, (const char *)key.buf, val.buf, val.len, 0);
        keel_etcd_kv_release(&kv);
        memset(&r, 0, sizeof(r));
        rc = keel_etcd_txn_commit(etcd, t, &r, &err);
        keel_etcd_txn_free(t);
        if (rc == KEEL_EINDOUBT || (rc == 0 && !r.succeeded)) {
            rc = -1; /* read again: stopped by us, or moved by the leader meanwhile */
        } else if (rc != 0) {
            rc = keelctl_etcd_fail("job stop", config, &err);
        } else {
            if (json)
                keelctl_print_json(json_pack("{s:s, s:s, s:s, s:s}", "name", name, "state",
                                             "stopped", "was", keel_job_state_name(was), "reason",
                                             reason));
            else
                printf("stopped job '%s' (it was %s): %s\n", name, keel_job_state_name(was),
                       reason);
            rc = KEEL_EXIT_OK;
        }
        keel_etcd_txn_result_release(&r);
    }
    if (rc < 0)
        rc =
            keelctl_fail("job stop", "job '%s' kept changing while being stopped; try again", name);
    keel_etcd_free(etcd);
    keel_buf_release(&key);
    keel_buf_release(&val);
    return rc;
}

int keelctl_cmd_job(const struct keel_config *config, int argc, char **argv)
{
    static const struct keelctl_sub subs[] = {
        {"submit", cmd_submit},
        {"list", cmd_list},
        {"show", cmd_show},
        {"stop", cmd_stop},
        {"rollback", keelctl_job_rollback},
    };

    return keelctl_run_sub("job", subs, sizeof(subs) / sizeof(subs[0]), usage_all, config, argc,
                           argv);
}
