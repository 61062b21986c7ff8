/*
 * bench_train.c - keel-bench-train: the worker's and the server's arithmetic.
 *
 * Worker: examples per second of keel_model_grad() (forward, loss and every
 * gradient) on the reference MLP 784-256-128-10 and on softmax 784-10, at
 * batch 64 and 256, on one OpenBLAS thread.  The baseline is one plain
 * cblas_sgemm of the same floating-point operations at the same batch
 * ((batch x 784) times (784 x K), K chosen so that 2 * batch * 784 * K is
 * the pass's count), timed alongside: the rate the BLAS reaches on a single
 * matrix product of that size.  Its examples/s is that rate divided by the
 * pass's operations per example, so ratio = the pass's GFLOP/s over sgemm's.
 * The "_gflops" rows give the same comparison in GFLOP/s.
 *
 * A pass's operations count the three kinds of product per layer of
 * in x out weights, 2 * batch * in * out each: the forward product, the
 * weight gradient and the gradient for the layer below (none for the first
 * layer).  Bias adds, the ReLU, the softmax and the loss are not counted:
 * they are part of what the ratio shows.
 *
 * Server: parameters per second of keel_optim_apply_rows() with SGD and Adam
 * over every row of the reference MLP, against a memcpy of the bytes the
 * update reads (row, gradient and state): how close it gets to memory speed.
 *
 * End to end (train_runs.h): the example job (examples/fashion-mnist-mlp.ini)
 * trained on a local Keel cluster with 1 and with 2 workers, against the
 * same training in this process without the network, measured in the same
 * run: examples/s and the seconds until the test accuracy first reaches
 * 0.85 and 0.87.  The ratio is Keel's over the in-process figure: below 1
 * for examples/s, above 1 for the times (how many times longer Keel takes).
 */
#include <cblas.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "alloc.h"
#include "log.h"
#include "keel/jobspec.h"
#include "keel/model.h"
#include "keel/optim.h"
#include "train_runs.h"

static void die(const char *what)
{
    fprintf(stderr, "keel-bench-train: %s\n", what);
    exit(1);
}

/* ---- Worker: forward and backward ------------------------------------- */

struct pass {
    struct keel_model m;
    struct keel_model_params params, grads;
    keel_model_work *w;
    uint32_t batch;
    float *x;
    uint32_t *y;
    double flops; /* per batch */
    /* the sgemm baseline: (batch x 784) * (784 x k) */
    uint32_t k;
    float *b, *c;
};

static double pass_flops(const struct keel_model *m, uint32_t batch)
{
    double f = 0;

    for (unsigned l = 0; l < m->nlayers; l++) {
        double prod = 2.0 * batch * m->sizes[l] * m->sizes[l + 1];

        f += (l == 0 ? 2.0 : 3.0) * prod;
    }
    return f;
}

static void pass_init(struct pass *p, const char *spec, uint32_t batch)
{
    struct keel_error err = {0};
    uint32_t in;

    memset(p, 0, sizeof(*p));
    if (keel_model_parse(&p->m, spec, &err) != 0)
        die(err.msg);
    in = p->m.sizes[0];
    p->batch = batch;
    keel_model_params_init(&p->params, &p->m);
    keel_model_params_init(&p->grads, &p->m);
    keel_model_params_fill(&p->params, &p->m, 1);
    p->w = keel_model_work_new(&p->m, batch);
    p->x = keel_calloc((size_t)batch * in, sizeof(float));
    p->y = keel_calloc(batch, sizeof(uint32_t));
    for (size_t i = 0; i < (size_t)batch * in; i++)
        p->x[i] = (float)((i * 7919) % 256) / 255.0f;
    for (uint32_t i = 0; i < batch; i++)
        p->y[i] = i % p->m.sizes[p->m.nlayers];
    p->flops = pass_flops(&p->m, batch);
    p->k = (uint32_t)(p->flops / (2.0 * batch * in) + 0.5);
    p->b = keel_calloc((size_t)in * p->k, sizeof(float));
    p->c = keel_calloc((size_t)batch * p->k, sizeof(float));
    for (size_t i = 0; i < (size_t)in * p->k; i++)
        p->b[i] = (float)(i % 17) * 0.01f;
}

static void pass_release(struct pass *p)
{
    keel_model_params_release(&p->params);
    keel_model_params_release(&p->grads);
    keel_model_work_free(p->w);
    free(p->x);
    free(p->y);
    free(p->b);
    free(p->c);
}

static void run_grad(void *ctx, uint64_t iters)
{
    struct pass *p = ctx;
    struct keel_model_stats st;
    struct keel_error err = {0};

    for (uint64_t it = 0; it < iters; it++) {
        if (keel_model_grad(&p->m, p->w, &p->params, p->x, p->y, p->batch, &p->grads, &st, &err) !=
            0)
            die(err.msg);
        keel_bench_use(p->grads.table[0]);
    }
}

static void run_sgemm(void *ctx, uint64_t iters)
{
    struct pass *p = ctx;
    int in = (int)p->m.sizes[0];

    for (uint64_t it = 0; it < iters; it++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)p->batch, (int)p->k, in, 1.0f,
                    p->x, in, p->b, (int)p->k, 0.0f, p->c, (int)p->k);
        keel_bench_use(p->c);
    }
}

static void measure_pass(struct keel_bench *b, const char *label, const char *spec, uint32_t batch)
{
    struct pass p;
    struct keel_bench_fn fn = {run_grad, &p}, base = {run_sgemm, &p};
    double t_fn, t_base;
    char name[96];

    pass_init(&p, spec, batch);
    keel_bench_compare(b, &fn, &base, &t_fn, &t_base);
    snprintf(name, sizeof(name), "%s_b%u", label, (unsigned)batch);
    keel_bench_record(b, name, batch / t_fn, "ex/s", batch / t_base);
    snprintf(name, sizeof(name), "%s_b%u_gflops", label, (unsigned)batch);
    keel_bench_record(b, name, p.flops / t_fn / 1e9, "GFLOP/s", p.flops / t_base / 1e9);
    pass_release(&p);
}

/* ---- Server: optimizer updates ---------------------------------------- */

struct update {
    struct keel_model m;
    struct keel_optim o;
    struct keel_model_params params, grads;
    float *state[KEEL_MODEL_MAX_LAYERS];
    size_t nparams, bytes;    /* floats updated; bytes the update reads */
    unsigned char *src, *dst; /* the memcpy baseline */
};

static void update_init(struct update *u, const char *optim)
{
    struct keel_error err = {0};

    memset(u, 0, sizeof(*u));
    if (keel_model_parse(&u->m, "mlp:784-256-128-10", &err) != 0 ||
        keel_optim_parse(&u->o, optim, &err) != 0)
        die(err.msg);
    keel_model_params_init(&u->params, &u->m);
    keel_model_params_init(&u->grads, &u->m);
    keel_model_params_fill(&u->params, &u->m, 1);
    for (unsigned l = 0; l < u->m.nlayers; l++) {
        size_t rows = keel_model_rows(&u->m, l), width = keel_model_row_width(&u->m, l);
        size_t sw = keel_optim_state_width(&u->o, (uint32_t)width);

        u->state[l] = keel_calloc(keel_size_mul(rows, sw), sizeof(float));
        for (size_t k = 0; k < rows * width; k++)
            u->grads.table[l][k] = (float)((k % 13) - 6) * 1e-3f;
        u->nparams += rows * width;
        u->bytes += rows * (2 * width + sw) * sizeof(float);
    }
    u->src = keel_calloc(u->bytes, 1);
    u->dst = keel_calloc(u->bytes, 1);
}

static void update_release(struct update *u)
{
    for (unsigned l = 0; l < u->m.nlayers; l++)
        free(u->state[l]);
    keel_model_params_release(&u->params);
    keel_model_params_release(&u->grads);
    free(u->src);
    free(u->dst);
}

static void run_update(void *ctx, uint64_t iters)
{
    struct update *u = ctx;
    struct keel_error err = {0};

    for (uint64_t it = 0; it < iters; it++) {
        for (unsigned l = 0; l < u->m.nlayers; l++)
            if (keel_optim_apply_rows(&u->o, u->params.table[l], u->state[l], NULL,
                                      u->grads.table[l], keel_model_rows(&u->m, l),
                                      keel_model_row_width(&u->m, l), &err) != 0)
                die(err.msg);
        keel_bench_use(u->params.table[0]);
    }
}

static void run_memcpy(void *ctx, uint64_t iters)
{
    struct update *u = ctx;

    for (uint64_t it = 0; it < iters; it++) {
        memcpy(u->dst, u->src, u->bytes);
        keel_bench_use(u->dst);
    }
}

static void measure_update(struct keel_bench *b, const char *optim)
{
    struct update u;
    struct keel_bench_fn fn = {run_update, &u}, base = {run_memcpy, &u};
    double t_fn, t_base;
    char name[64];

    update_init(&u, optim);
    keel_bench_compare(b, &fn, &base, &t_fn, &t_base);
    snprintf(name, sizeof(name), "optim_%s_mlp", optim);
    keel_bench_record(b, name, (double)u.nparams / t_fn / 1e6, "Mparam/s",
                      (double)u.nparams / t_base / 1e6);
    update_release(&u);
}

/* ---- End to end: a cluster against one process -------------------------------------- */

#define MAX_WORKER_RUNS 4 /* entries of --workers */
#define MAX_RUNS        9 /* --runs */

/* The job changed one way, trained by one worker (--variants). */
struct variant {
    const char *name;     /* in the rows' names: keel_w1_NAME_examples_s */
    const char *set;      /* a [job] setting, or NULL */
    unsigned replication; /* 0: the job's */
};

static const struct variant variants[] = {
    {"bf16", "compression=bf16", 0},        {"fp16", "compression=fp16", 0},
    {"disk", "durability=disk", 0},         {"r2", NULL, 2},
    {"nockpt", "checkpoint_interval=0", 0},
};
#define NVARIANTS (sizeof(variants) / sizeof(variants[0]))

struct options {
    uint32_t epochs; /* 0: the job's (2 with --quick) */
    unsigned runs;
    unsigned workers[MAX_WORKER_RUNS];
    size_t nworkers;
    unsigned servers;
    unsigned limit_s; /* 0: the default for the mode */
    const char *job;
    int arithmetic_only, training_only;
    const struct variant *variants[NVARIANTS];
    size_t nvariants;
};

static const char options_help[] =
    "  --epochs N         epochs of each training run (default: the job's; 2 with --quick)\n"
    "  --runs N           train each configuration N times (1-9, default 1): medians\n"
    "  --workers LIST     worker counts of the Keel runs, e.g. 1,2 (default 1,2)\n"
    "  --servers N        servers of each Keel cluster (default 2)\n"
    "  --job FILE         the job spec (default examples/fashion-mnist-mlp.ini)\n"
    "  --variants LIST    the job changed one way, each trained by 1 worker, or none\n"
    "                     (default bf16,disk,r2,nockpt): bf16 and fp16 (compression),\n"
    "                     disk (durability = disk), r2 (replication 2), nockpt (no\n"
    "                     checkpoints)\n"
    "  --limit SECONDS    stop following a Keel job after SECONDS of training\n"
    "                     (default 480; 120 with --quick)\n"
    "  --arithmetic-only  only the forward/backward and optimizer rows (seconds)\n"
    "  --training-only    only the end-to-end training rows (minutes)\n";

/*
 * The next item of a comma-separated list at *p into item (empty when it is
 * empty or does not fit), and *p past it; 0 at the end of the list.
 */
static int next_item(const char **p, char *item, size_t n)
{
    size_t len;

    if (*p == NULL || **p == '\0')
        return 0;
    len = strcspn(*p, ",");
    snprintf(item, n, "%.*s", (int)(len < n ? len : 0), *p);
    *p += len;
    if (**p == ',')
        (*p)++;
    return 1;
}

static int parse_option(void *ctx, int argc, char **argv, int i)
{
    struct options *o = ctx;
    const char *opt = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
    unsigned v;

    if (strcmp(opt, "--arithmetic-only") == 0) {
        o->arithmetic_only = 1;
        return 1;
    }
    if (strcmp(opt, "--training-only") == 0) {
        o->training_only = 1;
        return 1;
    }
    if (strcmp(opt, "--epochs") == 0) {
        if (keel_bench_parse_uint("keel-bench-train", opt, val, 1, 1000, &v) != 0)
            return -1;
        o->epochs = v;
    } else if (strcmp(opt, "--runs") == 0) {
        if (keel_bench_parse_uint("keel-bench-train", opt, val, 1, MAX_RUNS, &o->runs) != 0)
            return -1;
    } else if (strcmp(opt, "--servers") == 0) {
        if (keel_bench_parse_uint("keel-bench-train", opt, val, 1, 8, &o->servers) != 0)
            return -1;
    } else if (strcmp(opt, "--limit") == 0) {
        if (keel_bench_parse_uint("keel-bench-train", opt, val, 10, 86400, &o->limit_s) != 0)
            return -1;
    } else if (strcmp(opt, "--job") == 0) {
        if (val == NULL || access(val, R_OK) != 0) {
            fprintf(stderr, "keel-bench-train: --job: cannot read '%s'\n", val ? val : "");
            return -1;
        }
        o->job = val;
    } else if (strcmp(opt, "--variants") == 0) {
        char item[16];
        const char *p = val;

        o->nvariants = 0;
        if (val != NULL && strcmp(val, "none") == 0)
            return 2;
        while (next_item(&p, item, sizeof(item))) {
            size_t k;

            for (k = 0; k < NVARIANTS && strcmp(variants[k].name, item) != 0; k++)
                ;
            if (k == NVARIANTS || o->nvariants == NVARIANTS) {
                fprintf(stderr,
                        "keel-bench-train: --variants: expected none or names from bf16, fp16,"
                        " disk, r2, got '%s'\n",
                        val);
                return -1;
            }
            o->variants[o->nvariants++] = &variants[k];
        }
        if (o->nvariants == 0) {
            fprintf(stderr, "keel-bench-train: --variants: expected none or names\n");
            return -1;
        }
    } else if (strcmp(opt, "--workers") == 0) {
        char item[16];
        const char *p = val;

        o->nworkers = 0;
        while (next_item(&p, item, sizeof(item))) {
            if (o->nworkers == MAX_WORKER_RUNS || item[0] == '\0') {
                fprintf(stderr,
                        "keel-bench-train: --workers: expected up to %d counts like 1,2,"
                        " got '%s'\n",
                        MAX_WORKER_RUNS, val);
                return -1;
            }
            if (keel_bench_parse_uint("keel-bench-train", opt, item, 1, 8,
                                      &o->workers[o->nworkers]) != 0)
                return -1;
            o->nworkers++;
        }
        if (o->nworkers == 0) {
            fprintf(stderr, "keel-bench-train: --workers: expected counts like 1,2\n");
            return -1;
        }
    } else {
        return 0;
    }
    return 2;
}

static int cmp_nan_last(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    if (isnan(x) || isnan(y))
        return isnan(x) - isnan(y);
    return (x > y) - (x < y);
}

/* The median, a missing value (NaN: a target not reached) counting as the largest. */
static double median_of(double *v, unsigned n)
{
    qsort(v, n, sizeof(*v), cmp_nan_last);
    if (n % 2)
        return v[n / 2];
    return (v[n / 2 - 1] + v[n / 2]) / 2; /* NaN when either is */
}

/*
 * The configurations' results: config 0 is in process, config c in 1..nworkers
 * has workers[c - 1], and the next ones are the variants, each with 1 worker.
 */
struct results {
    unsigned runs;
    size_t nconfigs;
    struct train_run (*r)[MAX_RUNS]; /* [config][run] */
};

typedef double (*metric_fn)(const struct train_run *r, double arg);

static double m_examples(const struct train_run *r, double arg)
{
    (void)arg;
    return train_examples_per_s(r);
}

static double m_final(const struct train_run *r, double arg)
{
    (void)arg;
    return train_final_accuracy(r);
}

/* How much the largest server store grew over the job, in MB. */
static double m_store_growth(const struct train_run *r, double arg)
{
    (void)arg;
    return r->store_end > r->store_start ? (double)(r->store_end - r->store_start) / 1e6 : 0.0;
}

static double m_best(const struct train_run *r, double arg)
{
    (void)arg;
    return train_best_accuracy(r);
}

static double median_metric(const struct results *res, size_t config, metric_fn f, double arg)
{
    double v[MAX_RUNS] = {0};

    for (unsigned i = 0; i < res->runs; i++)
        v[i] = f(&res->r[config][i], arg);
    return median_of(v, res->runs);
}

/* Config c's variant, or NULL. */
static const struct variant *config_variant(const struct options *o, size_t c)
{
    return c > o->nworkers ? o->variants[c - 1 - o->nworkers] : NULL;
}

/* Config c's workers (1 for a variant; 0 in process). */
static unsigned config_workers(const struct options *o, size_t c)
{
    return c == 0 ? 0 : c <= o->nworkers ? o->workers[c - 1] : 1;
}

/* The checkpoints cut in config `c`'s runs: pauses against a batch's time, bytes against the model.
 */
static void record_cuts(struct keel_bench *b, const struct options *o, const struct results *res,
                        size_t c, uint32_t batch, double params_mb)
{
    const struct variant *v = config_variant(o, c);
    double *pauses, bytes[MAX_RUNS] = {0}, batch_ms, mx = 0;
    size_t n = 0;
    char name[96], w[40];

    for (unsigned i = 0; i < res->runs; i++)
        n += res->r[c][i].nckpts;
    if (n == 0 || batch == 0)
        return;
    pauses = keel_calloc(n, sizeof(*pauses));
    n = 0;
    for (unsigned i = 0; i < res->runs; i++) {
        const struct train_run *r = &res->r[c][i];
        double sum = 0;

        for (size_t k = 0; k < r->nckpts; k++) {
            pauses[n++] = r->ckpt_pause_ms[k];
            sum += r->ckpt_bytes[k];
            if (r->ckpt_pause_ms[k] > mx)
                mx = r->ckpt_pause_ms[k];
        }
        bytes[i] = r->nckpts ? sum / (double)r->nckpts : NAN;
    }
    /* The baseline: one batch's time in this configuration. */
    batch_ms = 1000.0 * batch / median_metric(res, c, m_examples, 0);
    snprintf(w, sizeof(w), "%u%s%s", config_workers(o, c), v ? "_" : "", v ? v->name : "");
    snprintf(name, sizeof(name), "keel_w%s_ckpt_pause_median_ms", w);
    keel_bench_record(b, name, median_of(pauses, (unsigned)n), "ms", batch_ms);
    snprintf(name, sizeof(name), "keel_w%s_ckpt_pause_max_ms", w);
    keel_bench_record(b, name, mx, "ms", batch_ms);
    snprintf(name, sizeof(name), "keel_w%s_ckpt_mb", w);
    keel_bench_record(b, name, median_of(bytes, res->runs) / 1e6, "MB", params_mb);
    keel_bench_note(b, "%s: %zu checkpoint cut(s) on the servers", name, n);
    free(pauses);
}

/* "in process", "keel, 2 workers" or "keel, 1 worker, bf16". */
static void config_name(const struct options *o, size_t c, char *out, size_t n)
{
    const struct variant *v = config_variant(o, c);
    unsigned w = config_workers(o, c);

    if (c == 0)
        snprintf(out, n, "in process");
    else
        snprintf(out, n, "keel, %u worker%s%s%s", w, w == 1 ? "" : "s", v ? ", " : "",
                 v ? v->name : "");
}

/* One note per configuration: what it did, and when it reached each target. */
static void note_config(struct keel_bench *b, const struct options *o, const struct results *res,
                        size_t c, const double *targets, size_t ntargets)
{
    const struct train_run *first = &res->r[c][0];
    char name[64], line[512];
    size_t len;
    double startup[MAX_RUNS] = {0};

    config_name(o, c, name, sizeof(name));
    len = (size_t)snprintf(line, sizeof(line),
                           "%s: %" PRIu32 " epoch(s) of %" PRIu64 " records, %.0f examples/s%s",
                           name, first->epochs, first->records,
                           median_metric(res, c, m_examples, 0), res->runs > 1 ? " (median)" : "");
    for (size_t t = 0; t < ntargets && len < sizeof(line); t++) {
        double sec[MAX_RUNS] = {0}, ep[MAX_RUNS] = {0}, ms, me;

        for (unsigned i = 0; i < res->runs; i++) {
            sec[i] = train_time_to(&res->r[c][i], targets[t]);
            ep[i] = train_epochs_to(&res->r[c][i], targets[t]);
        }
        ms = median_of(sec, res->runs);
        me = median_of(ep, res->runs);
        if (isnan(ms))
            len += (size_t)snprintf(line + len, sizeof(line) - len,
                                    "; %.2f not reached in %" PRIu32 " epoch(s)%s", targets[t],
                                    first->epochs, first->finished ? "" : " (stopped early)");
        else
            len += (size_t)snprintf(line + len, sizeof(line) - len,
                                    "; %.2f after %.1f s (epoch %.2f)", targets[t], ms, me);
    }
    if (len < sizeof(line) && !isnan(median_metric(res, c, m_final, 0)))
        len += (size_t)snprintf(
            line + len, sizeof(line) - len, "; final test accuracy %.4f, best %.4f",
            median_metric(res, c, m_final, 0), median_metric(res, c, m_best, 0));
    else if (len < sizeof(line))
        len += (size_t)snprintf(line + len, sizeof(line) - len,
                                "; no final test accuracy (stopped early), best %.4f",
                                median_metric(res, c, m_best, 0));
    for (unsigned i = 0; i < res->runs && res->runs > 1 && len < sizeof(line); i++)
        len += (size_t)snprintf(line + len, sizeof(line) - len, "%s%.0f",
                                i == 0 ? "; examples/s of each run: " : ", ",
                                train_examples_per_s(&res->r[c][i]));
    keel_bench_note(b, "%s", line);
    if (c == 0)
        return;
    for (unsigned i = 0; i < res->runs; i++) {
        const struct train_run *r = &res->r[c][i];

        startup[i] = r->startup_s;
        if (!r->finished)
            keel_bench_note(
                b,
                "%s: run %u stopped at the time limit after %.0f s, with %.2f of %" PRIu32
                " epochs trained",
                name, i + 1, r->seconds, (double)r->examples / (double)r->records, r->epochs);
    }
    keel_bench_note(b, "%s: cluster start-up %.0f s%s, not counted", name,
                    median_of(startup, res->runs), res->runs > 1 ? " (median)" : "");
}

/*
 * With one worker, Keel trains exactly what the in-process run does (same
 * initial rows, batches, order and optimizer; every push applied before the
 * next pull), so the two measure the same accuracy at every evaluation.
 */
static void note_same_model(struct keel_bench *b, const struct options *o,
                            const struct results *res)
{
    for (size_t c = 1; c < res->nconfigs; c++) {
        const struct train_run *l = &res->r[0][0], *k = &res->r[c][0];
        size_t n = l->nevals < k->nevals ? l->nevals : k->nevals, same = 0;

        if (config_variant(o, c) != NULL || config_workers(o, c) != 1 || n == 0)
            continue;
        for (size_t i = 0; i < n; i++)
            same += l->evals[i].accuracy == k->evals[i].accuracy;
        keel_bench_note(b,
                        "keel, 1 worker: the same test accuracy as in process at %zu of %zu"
                        " evaluations%s",
                        same, n, same == n ? " (the same model, as expected)" : "");
    }
}

static int measure_training(struct keel_bench *b, const struct options *o)
{
    static const double full_targets[] = {0.85, 0.87}, quick_targets[] = {0.85};
    const double *targets = b->quick ? quick_targets : full_targets;
    size_t ntargets = b->quick ? 1 : 2;
    struct train_setup s;
    struct results res;
    struct keel_error err = {0};
    char bin[PATH_MAX], *slash;
    const char *data = getenv("KEEL_FASHION_MNIST_DIR");
    ssize_t n;
    int rc = 0;

    /* The cluster's binaries are this one's neighbours (build-bench/bin). */
    if ((n = readlink("/proc/self/exe", bin, sizeof(bin) - 1)) <= 0) {
        fprintf(stderr, "keel-bench-train: cannot find my own binary: %s\n", strerror(errno));
        return -1;
    }
    bin[n] = '\0';
    if ((slash = strrchr(bin, '/')) != NULL)
        *slash = '\0';
    memset(&s, 0, sizeof(s));
    s.job = o->job;
    s.epochs = o->epochs ? o->epochs : b->quick ? 2 : 0;
    s.data_dir = data && data[0] ? data : "/usr/share/datasets/fashion-mnist";
    s.bin_dir = bin;
    s.script = KEEL_SOURCE_DIR "/bench/train-cluster.sh";
    s.servers = o->servers;
    s.limit_s = o->limit_s ? o->limit_s : b->quick ? 120 : 480;
    s.local_reps = 3;

    memset(&res, 0, sizeof(res));
    res.runs = o->runs;
    res.nconfigs = 1 + o->nworkers + o->nvariants;
    res.r = keel_calloc(res.nconfigs, sizeof(*res.r));
    /* Runs alternate between the configurations, so that a change of load
     * during the benchmark affects them alike. */
    for (unsigned i = 0; i < res.runs && rc == 0; i++) {
        if (res.runs > 1)
            fprintf(stderr, "keel-bench-train: round %u of %u\n", i + 1, res.runs);
        if ((rc = train_in_process(&s, &res.r[0][i], &err)) != 0) {
            fprintf(stderr, "keel-bench-train: in process: %s\n", err.msg);
            break;
        }
        for (size_t c = 1; c < res.nconfigs && rc == 0; c++) {
            const struct variant *v = config_variant(o, c);
            struct train_setup sv = s;
            char name[64];

            if (v != NULL) {
                sv.set = v->set;
                sv.variant = v->name;
                sv.replication = v->replication;
            }
            if ((rc = train_on_cluster(&sv, config_workers(o, c), &res.r[c][i], &err)) != 0) {
                config_name(o, c, name, sizeof(name));
                fprintf(stderr, "keel-bench-train: %s: %s\n", name, err.msg);
            }
        }
    }
    if (rc == 0) {
        double base_ex = median_metric(&res, 0, m_examples, 0), params_mb = 0;
        uint32_t batch = 0;
        struct keel_jobspec js;
        struct keel_error jerr;
        double base_final = median_metric(&res, 0, m_final, 0);
        double base_t[2];
        char name[96];

        for (size_t t = 0; t < ntargets; t++) {
            double v[MAX_RUNS] = {0};

            for (unsigned i = 0; i < res.runs; i++)
                v[i] = train_time_to(&res.r[0][i], targets[t]);
            base_t[t] = median_of(v, res.runs);
        }
        keel_error_init(&jerr);
        if (keel_jobspec_load(&js, o->job, &jerr) == 0) {
            params_mb = (double)keel_model_nparams(&js.model) * 4 / 1e6;
            batch = js.batch_size;
        }
        for (size_t c = 1; c < res.nconfigs; c++) {
            const struct variant *cv = config_variant(o, c);
            char w[40];

            snprintf(w, sizeof(w), "%u%s%s", config_workers(o, c), cv ? "_" : "",
                     cv ? cv->name : "");
            snprintf(name, sizeof(name), "keel_w%s_examples_s", w);
            keel_bench_record(b, name, median_metric(&res, c, m_examples, 0), "ex/s", base_ex);
            for (size_t t = 0; t < ntargets; t++) {
                double v[MAX_RUNS] = {0};

                for (unsigned i = 0; i < res.runs; i++)
                    v[i] = train_time_to(&res.r[c][i], targets[t]);
                snprintf(name, sizeof(name), "keel_w%s_s_to_%.2f", w, targets[t]);
                keel_bench_record(b, name, median_of(v, res.runs), "s", base_t[t]);
            }
            snprintf(name, sizeof(name), "keel_w%s_final_accuracy", w);
            keel_bench_record(b, name, median_metric(&res, c, m_final, 0), "acc", base_final);
            /* Disk: the store's growth against the model's parameters (float32). */
            snprintf(name, sizeof(name), "keel_w%s_store_growth_mb", w);
            keel_bench_record(b, name, median_metric(&res, c, m_store_growth, 0), "MB", params_mb);
        }
        for (size_t c = 1; c < res.nconfigs; c++) {
            const struct variant *cv = config_variant(o, c);

            record_cuts(b, o, &res, c, batch, params_mb);
            /* Checkpoints' cost: one worker's rate with them against without. */
            if (cv != NULL && strcmp(cv->name, "nockpt") == 0)
                for (size_t one = 1; one < res.nconfigs; one++)
                    if (config_variant(o, one) == NULL && config_workers(o, one) == 1)
                        keel_bench_record(b, "keel_w1_vs_nockpt_examples_s",
                                          median_metric(&res, one, m_examples, 0), "ex/s",
                                          median_metric(&res, c, m_examples, 0));
        }
        /* Scaling: each worker count's rate against one worker's, same variant. */
        for (size_t c = 1; c < res.nconfigs; c++) {
            for (size_t one = 1; one < res.nconfigs; one++) {
                if (config_workers(o, c) <= 1 || config_variant(o, c) != config_variant(o, one) ||
                    config_workers(o, one) != 1)
                    continue;
                snprintf(name, sizeof(name), "keel_w%u_vs_w1_examples_s", config_workers(o, c));
                keel_bench_record(b, name, median_metric(&res, c, m_examples, 0), "ex/s",
                                  median_metric(&res, one, m_examples, 0));
            }
        }
        for (size_t c = 0; c < res.nconfigs; c++)
            note_config(b, o, &res, c, targets, ntargets);
        note_same_model(b, o, &res);
    }
    for (size_t c = 0; c < res.nconfigs; c++)
        for (unsigned i = 0; i < res.runs; i++)
            train_run_release(&res.r[c][i]);
    free(res.r);
    return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const uint32_t batches[] = {64, 256};
    struct options o = {0,
                        1,
                        {1, 2},
                        2,
                        2,
                        0,
                        KEEL_SOURCE_DIR "/examples/fashion-mnist-mlp.ini",
                        0,
                        0,
                        {&variants[0], &variants[2], &variants[3], &variants[4]},
                        4};
    struct keel_bench_opts opts = {options_help, parse_option, &o};
    struct keel_bench b;
    int rc, failed = 0;

    rc = keel_bench_init_opts(&b, "keel-bench-train",
                              "Training arithmetic: forward+backward examples/s against sgemm of"
                              " the same FLOPs,\nand optimizer updates against memcpy.  End to"
                              " end: a job trained by a local Keel\ncluster (1 and 2 workers)"
                              " against the same training in one process.",
                              &opts, argc, argv);
    if (rc >= 0)
        return rc;
    if (o.arithmetic_only && o.training_only) {
        fprintf(stderr, "keel-bench-train: --arithmetic-only and --training-only exclude each"
                        " other\n");
        return 64;
    }
    /* One BLAS thread: a worker runs one pass per core; and the figures
     * must not depend on what else is running on the other core. */
    openblas_set_num_threads(1);
    keel_log_set_level(KEEL_LOG_LEVEL_WARN);

    if (!o.training_only) {
        for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
            measure_pass(&b, "mlp_784_256_128_10", "mlp:784-256-128-10", batches[i]);
            measure_pass(&b, "softmax_784_10", "softmax:784-10", batches[i]);
        }
        measure_update(&b, "sgd");
        measure_update(&b, "adam");
    }
    if (!o.arithmetic_only && measure_training(&b, &o) != 0)
        failed = 1;
    rc = keel_bench_finish(&b);
    return failed ? 1 : rc;
}
