/*
 * bench_assign.c - keel-bench-assign: what the coordinator's pure logic costs.
 *
 * Rows:
 *  - assign_join_N<n>_r3 / assign_leave_N<n>_r3: rebalancing the assignment
 *    table when one server joins a balanced table of n servers (or one of n
 *    leaves), in changes per second.  Each iteration copies the table and
 *    applies the change.  Baseline: copying the table and encoding it as
 *    JSON, which the leader does for every change it writes to etcd; a
 *    ratio above 1 means rebalancing costs less than encoding the result.
 *  - range_of: keys mapped to their range per second; baseline: summing
 *    the same keys, the least any pass over them costs.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "bench.h"
#include "keel/assign.h"
#include "keel/range.h"

#define NKEYS 4096

struct assign_ctx {
    keel_assign *base;
    const char *id; /* the server that joins or leaves */
    int join;
};

static void run_change(void *p, uint64_t iters)
{
    struct assign_ctx *c = p;

    for (uint64_t i = 0; i < iters; i++) {
        keel_assign *a = keel_assign_clone(c->base);
        int rc = c->join ? keel_assign_join(a, c->id, NULL, NULL)
                         : keel_assign_leave(a, c->id, NULL, NULL);

        if (rc != 0) {
            fprintf(stderr, "keel-bench-assign: change failed\n");
            exit(1);
        }
        keel_bench_use_u64(keel_assign_version(a));
        keel_assign_free(a);
    }
}

static void run_encode(void *p, uint64_t iters)
{
    struct assign_ctx *c = p;
    struct keel_buf b = KEEL_BUF_INIT;

    for (uint64_t i = 0; i < iters; i++) {
        keel_assign *a = keel_assign_clone(c->base);

        keel_buf_reset(&b);
        keel_assign_encode(a, &b);
        keel_bench_use(b.buf);
        keel_assign_free(a);
    }
    keel_buf_release(&b);
}

static uint64_t keys[NKEYS];

static void run_range_of(void *p, uint64_t iters)
{
    for (uint64_t i = 0; i < iters; i++) {
        uint64_t sum = 0;

        for (size_t k = 0; k < NKEYS; k++)
            sum += keel_range_of(keys[k]);
        keel_bench_use_u64(sum);
    }
    (void)p;
}

static void run_sum(void *p, uint64_t iters)
{
    for (uint64_t i = 0; i < iters; i++) {
        uint64_t sum = 0;

        keel_bench_use(keys);
        for (size_t k = 0; k < NKEYS; k++)
            sum += keys[k];
        keel_bench_use_u64(sum);
    }
    (void)p;
}

static void measure_change(struct keel_bench *b, unsigned n, int join)
{
    struct assign_ctx c;
    struct keel_bench_fn fn = {run_change, &c}, base = {run_encode, &c};
    char(*ids)[16] = calloc(n + 1, sizeof(*ids));
    const char **live = calloc(n + 1, sizeof(*live));
    double t_fn, t_base;
    char name[64];

    for (unsigned i = 0; i <= n; i++) {
        snprintf(ids[i], sizeof(ids[i]), "server-%04u", i);
        live[i] = ids[i];
    }
    c.base = keel_assign_new(3);
    c.join = join;
    if (keel_assign_update(c.base, live, n, NULL, NULL) != 0) {
        fprintf(stderr, "keel-bench-assign: cannot build a table of %u servers\n", n);
        exit(1);
    }
    c.id = join ? ids[n] : ids[n / 2];
    keel_bench_compare(b, &fn, &base, &t_fn, &t_base);
    snprintf(name, sizeof(name), "assign_%s_N%u_r3", join ? "join" : "leave", n);
    keel_bench_record(b, name, 1.0 / t_fn, "op/s", 1.0 / t_base);
    keel_assign_free(c.base);
    free(live);
    free(ids);
}

int main(int argc, char **argv)
{
    static const unsigned sizes[] = {8, 32, 128};
    struct keel_bench b;
    struct keel_bench_fn fn = {run_range_of, NULL}, base = {run_sum, NULL};
    double t_fn, t_base;
    int rc;

    rc = keel_bench_init(&b, "keel-bench-assign",
                         "Assignment rebalancing per join/leave against JSON encoding; "
                         "key->range mapping against a sum.",
                         argc, argv);
    if (rc >= 0)
        return rc;
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        measure_change(&b, sizes[i], 1);
        measure_change(&b, sizes[i], 0);
    }
    for (size_t k = 0; k < NKEYS; k++)
        keys[k] = keel_key_make(1 + k % 3, k * 7919);
    keel_bench_compare(&b, &fn, &base, &t_fn, &t_base);
    keel_bench_record(&b, "range_of", NKEYS / t_fn, "key/s", NKEYS / t_base);
    return keel_bench_finish(&b);
}
