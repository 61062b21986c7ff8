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
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "keel/alloc.h"
#include "keel/model.h"
#include "keel/optim.h"

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
            if (keel_optim_apply_rows(&u->o, u->params.table[l], u->state[l], u->grads.table[l],
                                      keel_model_rows(&u->m, l), keel_model_row_width(&u->m, l),
                                      &err) != 0)
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

int main(int argc, char **argv)
{
    static const uint32_t batches[] = {64, 256};
    struct keel_bench b;
    int rc;

    rc = keel_bench_init(&b, "keel-bench-train",
                         "Training arithmetic: forward+backward examples/s against sgemm of the "
                         "same FLOPs, and optimizer updates against memcpy.",
                         argc, argv);
    if (rc >= 0)
        return rc;
    /* One BLAS thread: a worker runs one pass per core; and the figures
     * must not depend on what else is running on the other core. */
    openblas_set_num_threads(1);

    for (size_t i = 0; i < sizeof(batches) / sizeof(batches[0]); i++) {
        measure_pass(&b, "mlp_784_256_128_10", "mlp:784-256-128-10", batches[i]);
        measure_pass(&b, "softmax_784_10", "softmax:784-10", batches[i]);
    }
    measure_update(&b, "sgd");
    measure_update(&b, "adam");
    return keel_bench_finish(&b);
}
