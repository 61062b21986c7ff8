/*
 * train_runs.c - keel-bench-train's end-to-end runs: in one process, and on
 * a local cluster through bench/train-cluster.sh (see train_runs.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench.h"
#include "alloc.h"
#include "keel/dataset.h"
#include "keel/jobspec.h"
#include "keel/model.h"
#include "keel/optim.h"
#include "ps.h"
#include "keel/store.h"
#include "worker.h"
#include "train_runs.h"

#define EVAL_RECORDS 1000u /* test records per forward pass, as the worker reads them */

extern char **environ;

void train_run_release(struct train_run *r)
{
    free(r->evals);
    free(r->ckpt_pause_ms);
    free(r->ckpt_bytes);
    memset(r, 0, sizeof(*r));
}

static void add_eval(struct train_run *r, double t, double accuracy, uint32_t pass)
{
    KEEL_REALLOC_ARRAY(r->evals, r->nevals + 1);
    r->evals[r->nevals++] = (struct train_eval){t, accuracy, pass};
}

double train_time_to(const struct train_run *r, double target)
{
    for (size_t i = 0; i < r->nevals; i++)
        if (r->evals[i].accuracy >= target)
            return r->evals[i].t;
    return NAN;
}

double train_epochs_to(const struct train_run *r, double target)
{
    for (size_t i = 0; i < r->nevals; i++)
        if (r->evals[i].accuracy >= target)
            return (double)(i + 1) / (r->shards ? r->shards : 1);
    return NAN;
}

double train_final_accuracy(const struct train_run *r)
{
    return r->finished && r->nevals ? r->evals[r->nevals - 1].accuracy : NAN;
}

double train_best_accuracy(const struct train_run *r)
{
    double best = NAN;

    for (size_t i = 0; i < r->nevals; i++)
        if (isnan(best) || r->evals[i].accuracy > best)
            best = r->evals[i].accuracy;
    return best;
}

double train_examples_per_s(const struct train_run *r)
{
    return r->seconds > 0 ? (double)r->examples / r->seconds : NAN;
}

/* ---- in one process ------------------------------------------------------------------ */

/* A dataset's shards, each read whole into memory. */
struct shards {
    uint32_t n;
    struct keel_shard_batch *b;
    struct keel_record_run *run;
};

static void shards_release(struct shards *s)
{
    for (uint32_t i = 0; i < s->n; i++)
        keel_shard_batch_release(&s->b[i]);
    free(s->b);
    free(s->run);
    memset(s, 0, sizeof(*s));
}

/* Import `images` and `labels` as dataset `name` in `nshards` and read every shard. */
static int load_dataset(keel_store *store, const char *name, const char *split, uint32_t nshards,
                        const char *images, const char *labels, struct shards *out,
                        struct keel_error *err)
{
    const char *files[2] = {images, labels};
    struct keel_dataset_import_opts o;
    keel_dataset *ds = NULL;
    int rc;

    memset(out, 0, sizeof(*out));
    memset(&o, 0, sizeof(o));
    o.nshards = nshards;
    o.split = split;
    if ((rc = keel_dataset_import(store, name, KEEL_DATASET_IDX, files, 2, &o, NULL, err)) != 0)
        return keel_err_prefix(err, rc, "importing '%s'", images);
    if ((rc = keel_dataset_open(store, name, &ds, err)) != 0)
        return rc;
    out->n = nshards;
    KEEL_ALLOC_ARRAY(out->b, nshards);
    KEEL_ALLOC_ARRAY(out->run, nshards);
    for (uint32_t i = 0; i < nshards; i++)
        keel_shard_batch_init(&out->b[i]);
    for (uint32_t i = 0; i < nshards && rc == 0; i++) {
        struct keel_msg_shard_data d;

        rc = keel_dataset_read(ds, i, 0, UINT32_MAX, SIZE_MAX, &out->b[i], err);
        if (rc == 0 && out->b[i].nrecords != out->b[i].total)
            rc = keel_err_set(err, KEEL_EINVAL,
                              "dataset '%s' shard %" PRIu32 ": read %" PRIu32 " of its %" PRIu64
                              " records",
                              name, i, out->b[i].nrecords, out->b[i].total);
        if (rc != 0)
            break;
        keel_shard_batch_message(&out->b[i], &d);
        out->run[i] =
            (struct keel_record_run){d.nrecords, d.offsets, d.data, d.offsets[d.nrecords]};
    }
    keel_dataset_close(ds);
    if (rc != 0)
        shards_release(out);
    return rc;
}

/* Remove the temporary store: its LMDB files, then the directories. */
static void remove_store(const char *dir, const char *store)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    char path[4300];

    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", store, files[i]);
        unlink(path);
    }
    if (rmdir(store) != 0 && errno != ENOENT)
        fprintf(stderr, "keel-bench-train: cannot remove '%s': %s\n", store, strerror(errno));
    if (rmdir(dir) != 0)
        fprintf(stderr, "keel-bench-train: cannot remove '%s': %s\n", dir, strerror(errno));
}

/* The model and optimizer of one job, in this process. */
struct local_model {
    struct keel_model m;
    struct keel_optim o;
    struct keel_model_params params, grads;
    float *state[KEEL_MODEL_MAX_LAYERS];
    keel_model_work *work;
    float *x;
    uint32_t *labels;
};

static void local_release(struct local_model *lm)
{
    for (unsigned l = 0; l < KEEL_MODEL_MAX_LAYERS; l++)
        free(lm->state[l]);
    keel_model_params_release(&lm->params);
    keel_model_params_release(&lm->grads);
    keel_model_work_free(lm->work);
    free(lm->x);
    free(lm->labels);
    memset(lm, 0, sizeof(*lm));
}

static int local_init(struct local_model *lm, const struct keel_jobspec *spec,
                      struct keel_error *err)
{
    uint32_t max_batch = spec->batch_size > EVAL_RECORDS ? spec->batch_size : EVAL_RECORDS;
    int rc;

    memset(lm, 0, sizeof(*lm));
    lm->m = spec->model;
    if ((rc = keel_ps_optim_of(spec, &lm->o, err)) != 0)
        return rc;
    keel_model_params_init(&lm->params, &lm->m);
    keel_model_params_init(&lm->grads, &lm->m);
    for (unsigned l = 0; l < lm->m.nlayers; l++) {
        size_t sw = keel_optim_state_width(&lm->o, keel_model_row_width(&lm->m, l));

        lm->state[l] =
            keel_calloc(sw ? keel_size_mul(keel_model_rows(&lm->m, l), sw) : 1, sizeof(float));
    }
    lm->work = keel_model_work_new(&lm->m, max_batch);
    KEEL_ALLOC_ARRAY(lm->x, keel_size_mul(max_batch, lm->m.sizes[0]));
    KEEL_ALLOC_ARRAY(lm->labels, max_batch);
    return 0;
}

/* The model's accuracy on every test record, EVAL_RECORDS at a time, shard by shard. */
static int local_eval(struct local_model *lm, const struct shards *test, double *accuracy,
                      struct keel_error *err)
{
    struct keel_eval_sums sums = {0};
    int rc;

    for (uint32_t s = 0; s < test->n; s++)
        for (uint32_t from = 0; from < test->run[s].nrecords; from += EVAL_RECORDS) {
            uint32_t n = test->run[s].nrecords - from;

            if ((rc = keel_worker_eval(&lm->m, lm->work, &lm->params, &test->run[s], from,
                                       n < EVAL_RECORDS ? n : EVAL_RECORDS, lm->x, lm->labels,
                                       &sums, err)) != 0)
                return keel_err_prefix(err, rc, "test shard %" PRIu32, s);
        }
    if (sums.n == 0)
        return keel_err_set(err, KEEL_EINVAL, "the test dataset has no records");
    *accuracy = (double)sums.correct / (double)sums.n;
    return 0;
}

/* One batch: gradient, then the optimizer on every table, as the servers apply a push. */
static int local_step(struct local_model *lm, const struct keel_jobspec *spec,
                      const struct keel_record_run *run, uint32_t from, uint32_t n, uint64_t clock,
                      struct keel_error *err)
{
    const struct keel_model *m = &lm->m;
    struct keel_model_stats ms;
    struct keel_optim o = lm->o;
    int rc;

    if ((rc = keel_worker_batch(run, from, n, m->sizes[0], m->sizes[m->nlayers], lm->x, lm->labels,
                                err)) != 0 ||
        (rc = keel_model_grad(m, lm->work, &lm->params, lm->x, lm->labels, n, &lm->grads, &ms,
                              err)) != 0)
        return rc;
    o.lr = (float)keel_jobspec_lr_at(spec, clock);
    for (unsigned l = 0; l < m->nlayers; l++)
        if ((rc = keel_optim_apply_rows(&o, lm->params.table[l], lm->state[l], NULL,
                                        lm->grads.table[l], keel_model_rows(m, l),
                                        keel_model_row_width(m, l), err)) != 0)
            return rc;
    return 0;
}

/* One timed training from the initial model; `out` has epochs, shards and records set. */
static int local_train(const struct keel_jobspec *spec, const struct shards *train,
                       const struct shards *test, struct train_run *out, struct keel_error *err)
{
    struct local_model lm;
    double t0, last_note = 0;
    uint32_t nb_max = 0;
    int rc;

    if ((rc = local_init(&lm, spec, err)) != 0)
        return rc;
    /* Timed from here: the model as the servers create it, then the passes. */
    t0 = keel_bench_now();
    keel_jobspec_init_params(spec, &lm.params);
    for (uint32_t sh = 0; sh < train->n; sh++) { /* a worker's clock counts in the longest shard */
        uint32_t nb = keel_worker_nbatches(train->run[sh].nrecords, spec->batch_size);

        nb_max = nb > nb_max ? nb : nb_max;
    }
    for (uint32_t pass = 0; pass < spec->epochs; pass++) {
        for (uint32_t sh = 0; sh < train->n; sh++) {
            const struct keel_record_run *run = &train->run[sh];
            uint32_t nb = keel_worker_nbatches(run->nrecords, spec->batch_size);
            double acc = 0, t;

            for (uint32_t b = 0; b < nb; b++) {
                uint64_t first = (uint64_t)b * spec->batch_size;
                uint32_t n =
                    (uint32_t)(run->nrecords - first < spec->batch_size ? run->nrecords - first
                                                                        : spec->batch_size);

                if ((rc = local_step(&lm, spec, run, (uint32_t)first, n,
                                     keel_worker_clock(nb_max, pass, b), err)) != 0) {
                    keel_err_prefix(err, rc, "shard %" PRIu32 " pass %" PRIu32 " batch %" PRIu32,
                                    sh, pass, b);
                    goto out;
                }
            }
            out->examples += run->nrecords;
            if ((rc = local_eval(&lm, test, &acc, err)) != 0)
                goto out;
            t = keel_bench_now() - t0;
            add_eval(out, t, acc, pass);
            if (t - last_note >= 5 || (pass + 1 == spec->epochs && sh + 1 == train->n)) {
                fprintf(stderr, "in process: %.1f s: epoch %.2f, test accuracy %.4f\n", t,
                        pass + (double)(sh + 1) / train->n, acc);
                last_note = t;
            }
        }
    }
    out->seconds = keel_bench_now() - t0;
    out->finished = 1;
out:
    local_release(&lm);
    return rc;
}

static int cmp_run_seconds(const void *a, const void *b)
{
    double x = ((const struct train_run *)a)->seconds, y = ((const struct train_run *)b)->seconds;

    return (x > y) - (x < y);
}

int train_in_process(const struct train_setup *s, struct train_run *out, struct keel_error *err)
{
    struct keel_jobspec spec;
    struct shards train = {0}, test = {0};
    struct train_run runs[TRAIN_MAX_LOCAL_REPS];
    unsigned reps = s->local_reps < 1                      ? 1
                    : s->local_reps > TRAIN_MAX_LOCAL_REPS ? TRAIN_MAX_LOCAL_REPS
                                                           : s->local_reps;
    unsigned done = 0;
    keel_store *store = NULL;
    char dir[4096], store_dir[4200], img[4200], lab[4200], timg[4200], tlab[4200];
    const char *tmp = getenv("TMPDIR");
    int rc;

    memset(out, 0, sizeof(*out));
    memset(runs, 0, sizeof(runs));
    if ((rc = keel_jobspec_load(&spec, s->job, err)) != 0)
        return rc;
    if (spec.test_dataset[0] == '\0')
        return keel_err_set(err, KEEL_EINVAL, "'%s': the job has no test dataset to measure",
                            s->job);
    if (s->epochs > 0)
        spec.epochs = s->epochs;
    snprintf(dir, sizeof(dir), "%s/keel-bench-train.XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        int e = errno;

        return keel_err_set(err, -e, "cannot make a directory '%s': %s", dir, strerror(e));
    }
    snprintf(store_dir, sizeof(store_dir), "%s/store", dir);
    snprintf(img, sizeof(img), "%s/train-images-idx3-ubyte.gz", s->data_dir);
    snprintf(lab, sizeof(lab), "%s/train-labels-idx1-ubyte.gz", s->data_dir);
    snprintf(timg, sizeof(timg), "%s/t10k-images-idx3-ubyte.gz", s->data_dir);
    snprintf(tlab, sizeof(tlab), "%s/t10k-labels-idx1-ubyte.gz", s->data_dir);
    fprintf(stderr, "in process: importing '%s' and '%s' in %" PRIu32 " shards\n", spec.dataset,
            spec.test_dataset, spec.shards);
    if ((rc = keel_store_open(&store, store_dir, NULL, err)) != 0 ||
        (rc = load_dataset(store, spec.dataset, "train", spec.shards, img, lab, &train, err)) !=
            0 ||
        (rc = load_dataset(store, spec.test_dataset, "test", spec.shards, timg, tlab, &test,
                           err)) != 0)
        goto out;
    for (done = 0; done < reps && rc == 0; done++) {
        struct train_run *r = &runs[done];

        r->epochs = spec.epochs;
        r->shards = spec.shards;
        for (uint32_t i = 0; i < train.n; i++)
            r->records += train.run[i].nrecords;
        fprintf(stderr,
                "in process: training %" PRIu32 " epoch(s) of %" PRIu64 " records, batch %" PRIu32
                " (%u of %u)\n",
                spec.epochs, r->records, spec.batch_size, done + 1, reps);
        rc = local_train(&spec, &train, &test, r, err);
    }
    if (rc == 0) {
        /* The repetition of median length: its evaluations are what it measured. */
        qsort(runs, reps, sizeof(runs[0]), cmp_run_seconds);
        *out = runs[reps / 2];
        memset(&runs[reps / 2], 0, sizeof(runs[0]));
    }
out:
    for (unsigned i = 0; i < TRAIN_MAX_LOCAL_REPS; i++)
        train_run_release(&runs[i]);
    shards_release(&train);
    shards_release(&test);
    keel_store_close(store);
    remove_store(dir, store_dir);
    return rc;
}

/* ---- on a cluster -------------------------------------------------------------------- */

int train_run_capture(char *const argv[], struct keel_buf *out)
{
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    sigset_t dflt;
    struct sigaction ign = {0}, old_int, old_term;
    int fd[2], status = 0, rc;
    pid_t pid;
    char chunk[4096];
    ssize_t n;

    if (pipe(fd) != 0)
        return -1;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, fd[1], STDOUT_FILENO);
    posix_spawn_file_actions_addclose(&fa, fd[0]);
    posix_spawn_file_actions_addclose(&fa, fd[1]);
    /* The script handles Ctrl-C itself (it stops its cluster); this process
     * waits for it meanwhile instead of leaving it behind. */
    posix_spawnattr_init(&attr);
    sigemptyset(&dflt);
    sigaddset(&dflt, SIGINT);
    sigaddset(&dflt, SIGTERM);
    posix_spawnattr_setsigdefault(&attr, &dflt);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGDEF);
    ign.sa_handler = SIG_IGN;
    sigaction(SIGINT, &ign, &old_int);
    sigaction(SIGTERM, &ign, &old_term);
    rc = posix_spawn(&pid, argv[0], &fa, &attr, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    posix_spawnattr_destroy(&attr);
    close(fd[1]);
    if (rc != 0) {
        close(fd[0]);
        sigaction(SIGINT, &old_int, NULL);
        sigaction(SIGTERM, &old_term, NULL);
        errno = rc;
        return -1;
    }
    while ((n = read(fd[0], chunk, sizeof(chunk))) != 0) {
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            break;
        keel_buf_add(out, chunk, (size_t)n);
    }
    close(fd[0]);
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    if (WIFSIGNALED(status))
        return 128 + WTERMSIG(status);
    return WEXITSTATUS(status);
}

static int json_u64(json_t *o, const char *key, uint64_t *v)
{
    json_t *j = json_object_get(o, key);

    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return -1;
    *v = (uint64_t)json_integer_value(j);
    return 0;
}

/* The checkpoint cuts the servers logged (absent or malformed: none). */
static void parse_cuts(json_t *o, struct train_run *out)
{
    json_t *pauses = json_object_get(o, "ckpt_pauses_ms"),
           *bytes = json_object_get(o, "ckpt_bytes");
    size_t n;

    if (!json_is_array(pauses) || !json_is_array(bytes) ||
        json_array_size(pauses) != json_array_size(bytes) || json_array_size(pauses) == 0)
        return;
    n = json_array_size(pauses);
    out->ckpt_pause_ms = keel_calloc(n, sizeof(double));
    out->ckpt_bytes = keel_calloc(n, sizeof(double));
    for (size_t i = 0; i < n; i++) {
        out->ckpt_pause_ms[i] = json_number_value(json_array_get(pauses, i));
        out->ckpt_bytes[i] = json_number_value(json_array_get(bytes, i));
    }
    out->nckpts = n;
}

/* The script's JSON into `out`. */
static int parse_cluster_run(const struct keel_buf *text, struct train_run *out,
                             struct keel_error *err)
{
    json_error_t je;
    json_t *o = json_loadb((const char *)text->buf, text->len, 0, &je), *evals, *fin;
    uint64_t epochs, records, start, end, examples, startup, shards = 0;
    size_t i;
    json_t *e;
    int rc = 0;

    if (o == NULL)
        return keel_err_set(err, KEEL_EINVAL, "train-cluster.sh printed no JSON: %s", je.text);
    evals = json_object_get(o, "evals");
    fin = json_object_get(o, "finished");
    if (json_u64(o, "epochs", &epochs) || json_u64(o, "records", &records) ||
        json_u64(o, "start_ms", &start) || json_u64(o, "end_ms", &end) ||
        json_u64(o, "examples", &examples) || json_u64(o, "startup_s", &startup) ||
        json_u64(o, "shards", &shards) || !json_is_array(evals) || !json_is_boolean(fin) ||
        end < start || epochs > UINT32_MAX || shards > UINT32_MAX) {
        rc = keel_err_set(err, KEEL_EINVAL, "train-cluster.sh printed an unexpected object");
        goto out;
    }
    out->finished = json_is_true(fin);
    out->epochs = (uint32_t)epochs;
    out->shards = (uint32_t)shards;
    out->records = records;
    out->examples = examples;
    out->seconds = (double)(end - start) / 1000.0;
    out->startup_s = (double)startup;
    if (json_u64(o, "store_start_bytes", &out->store_start) ||
        json_u64(o, "store_end_bytes", &out->store_end))
        out->store_start = out->store_end = 0;
    parse_cuts(o, out);
    json_array_foreach(evals, i, e)
    {
        json_t *acc = json_object_get(e, "accuracy");
        uint64_t t, pass;

        if (!json_is_number(acc) || json_u64(e, "time_ms", &t) || json_u64(e, "pass", &pass) ||
            pass > UINT32_MAX) {
            rc = keel_err_set(err, KEEL_EINVAL, "train-cluster.sh: evaluation %zu is malformed", i);
            goto out;
        }
        /* An evaluation written before the job ran or after it ended would be a bug. */
        if (t < start || t > end + 1000) {
            rc = keel_err_set(err, KEEL_EINVAL,
                              "train-cluster.sh: evaluation %zu at %" PRIu64
                              " ms is outside the run (%" PRIu64 "..%" PRIu64 ")",
                              i, t, start, end);
            goto out;
        }
        add_eval(out, (double)(t - start) / 1000.0, json_number_value(acc), (uint32_t)pass);
    }
out:
    json_decref(o);
    return rc;
}

int train_on_cluster(const struct train_setup *s, unsigned workers, struct train_run *out,
                     struct keel_error *err)
{
    char nw[16], ns[16], ne[16], nl[16], nr[16], label[96], suffix[40] = "";
    char *argv[] = {"/bin/bash", (char *)s->script,
                    "--bin",     (char *)s->bin_dir,
                    "--job",     (char *)s->job,
                    "--workers", nw,
                    "--servers", ns,
                    "--limit",   nl,
                    "--label",   label,
                    NULL,        NULL, /* --epochs E */
                    NULL,        NULL, /* --replication R */
                    NULL,        NULL, /* --set KEY=VALUE */
                    NULL};
    size_t argc = 14;
    struct keel_buf text;
    int status, rc;

    memset(out, 0, sizeof(*out));
    snprintf(nw, sizeof(nw), "%u", workers);
    snprintf(ns, sizeof(ns), "%u", s->servers);
    snprintf(nl, sizeof(nl), "%u", s->limit_s);
    snprintf(ne, sizeof(ne), "%" PRIu32, s->epochs);
    snprintf(nr, sizeof(nr), "%u", s->replication);
    if (s->variant != NULL)
        snprintf(suffix, sizeof(suffix), ", %s", s->variant);
    if (s->replication > 0)
        snprintf(label, sizeof(label), "keel, %u worker%s, replication %u%s", workers,
                 workers == 1 ? "" : "s", s->replication, suffix);
    else
        snprintf(label, sizeof(label), "keel, %u worker%s%s", workers, workers == 1 ? "" : "s",
                 suffix);
    if (s->epochs > 0) { /* else the job's own epochs */
        argv[argc++] = "--epochs";
        argv[argc++] = ne;
    }
    if (s->replication > 0) { /* else the job's own replication */
        argv[argc++] = "--replication";
        argv[argc++] = nr;
    }
    if (s->set != NULL) {
        argv[argc++] = "--set";
        argv[argc++] = (char *)s->set;
    }
    keel_buf_init(&text, 0);
    status = train_run_capture(argv, &text);
    if (status < 0)
        rc = keel_err_set(err, -errno, "cannot run '%s': %s", s->script, strerror(errno));
    else if (status != 0)
        rc = keel_err_set(err, KEEL_EINVAL, "'%s' failed (exit status %d; see above)", s->script,
                          status);
    else
        rc = parse_cluster_run(&text, out, err);
    keel_buf_release(&text);
    if (rc != 0)
        train_run_release(out);
    return rc;
}
