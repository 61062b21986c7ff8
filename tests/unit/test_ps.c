/*
 * test_ps.c - a server's parameter ranges: updates, exactly-once, clocks,
 * and restore from real LMDB (snapshot + update log).
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/model.h"
#include "keel/optim.h"
#include "ps.h"
#include "keel/range.h"
#include "keel/ulog.h"

/* softmax 4 -> 3: one table (id 1) of 3 rows of width 5. */
static const char spec_text[] = "[job]\nname = t\nmodel = softmax:4-3\ndataset = d\n"
                                "batch_size = 2\nepochs = 1\nconsistency = %s\nshards = 2\n"
                                "replication = 1\n[optimizer]\ntype = sgd\nlr = 0.5\n"
                                "[init]\nmethod = uniform\nseed = 7\n";

static struct keel_jobspec spec;
static struct keel_ps *ps;
static char dir[64];

static void make(const char *consistency)
{
    char text[512];
    struct keel_error err;

    snprintf(text, sizeof(text), spec_text, consistency);
    keel_jobspec_init(&spec);
    cr_assert_eq(keel_jobspec_parse(&spec, text, "test", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ps_new(&spec, &ps, &err), 0, "%s", err.msg);
}

static void open_all(keel_store *store)
{
    struct keel_error err;

    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        cr_assert_eq(keel_ps_open_range(ps, store, r, NULL, &err), 0, "%s", err.msg);
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/keel-ps-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    make("bsp");
}

static void teardown(void)
{
    char cmd[128];

    keel_ps_free(ps);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cannot remove %s\n", dir);
}

TestSuite(ps, .init = setup, .fini = teardown);

static const uint64_t keys3[] = {(UINT64_C(1) << 48) | 0, (UINT64_C(1) << 48) | 1,
                                 (UINT64_C(1) << 48) | 2};

static struct keel_msg_push push_of(uint32_t shard, uint64_t seq, const float *grads)
{
    struct keel_msg_push p;

    memset(&p, 0, sizeof(p));
    p.worker_id = keel_str_of("w1");
    p.shard = shard;
    p.seq = seq;
    p.incarnation = 1;
    p.clock = seq - 1;
    p.data = (struct keel_rows){1, 5, 3, keys3, grads, 0, NULL};
    return p;
}

static void pull3(float *rows)
{
    struct keel_error err;

    cr_assert_eq(keel_ps_pull(ps, 1, 5, keys3, 3, rows, &err), 0, "%s", err.msg);
}

Test(ps, push_applies_sgd_once_per_shard_position)
{
    float before[15], after[15], again[15], grads[15];
    struct keel_msg_push p;
    struct keel_ps_result res;
    struct keel_error err;

    open_all(NULL);
    for (int i = 0; i < 15; i++)
        grads[i] = (float)(i + 1) * 0.1f;
    pull3(before);
    p = push_of(0, 1, grads);
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    cr_assert_not(res.duplicate);
    cr_assert_geq(res.napplied, 1);
    keel_ps_result_release(&res);
    pull3(after);
    for (int i = 0; i < 15; i++)
        cr_assert_float_eq(after[i], before[i] - 0.5f * grads[i], 1e-6, "element %d", i);
    /* The same (shard, seq) again: acknowledged as a duplicate, rows unchanged. */
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    cr_assert(res.duplicate);
    cr_assert_eq(res.napplied, 0);
    keel_ps_result_release(&res);
    pull3(again);
    cr_assert_eq(memcmp(after, again, sizeof(after)), 0);
    /* An older position of the same shard is a duplicate too; another shard is not. */
    p = push_of(0, 1, grads);
    p.seq = 1;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
    cr_assert(res.duplicate);
    keel_ps_result_release(&res);
    p = push_of(1, 1, grads);
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
    cr_assert_not(res.duplicate);
    keel_ps_result_release(&res);
}

Test(ps, push_is_split_by_range_with_lsn_per_range)
{
    float grads[15] = {0};
    struct keel_msg_push p = push_of(0, 1, grads);
    struct keel_ps_result res;
    struct keel_error err;
    unsigned distinct = 0, seen[KEEL_PROTO_NRANGES] = {0};

    open_all(NULL);
    for (int k = 0; k < 3; k++)
        distinct += seen[keel_range_of(keys3[k])]++ == 0;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    cr_assert_eq(res.napplied, distinct);
    for (size_t i = 0; i < res.napplied; i++) {
        cr_assert_eq(res.applied[i].lsn, 1, "first push in its range gets LSN 1");
        for (uint32_t k = 0; k < res.applied[i].push.data.nkeys; k++)
            cr_assert_eq(keel_range_of(res.applied[i].push.data.keys[k]), res.applied[i].range);
    }
    keel_ps_result_release(&res);
}

Test(ps, range_not_held_is_a_redirect)
{
    float grads[15] = {0}, rows[15];
    struct keel_msg_push p = push_of(0, 1, grads);
    struct keel_ps_result res;
    struct keel_error err;

    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), KEEL_EREDIRECT);
    cr_assert_eq(keel_ps_pull(ps, 1, 5, keys3, 3, rows, &err), KEEL_EREDIRECT);
}

Test(ps, non_finite_gradient_changes_nothing)
{
    float grads[15] = {0}, before[15], after[15];
    struct keel_msg_push p;
    struct keel_ps_result res;
    struct keel_error err;

    open_all(NULL);
    pull3(before);
    grads[7] = NAN;
    p = push_of(0, 1, grads);
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), KEEL_EINVAL);
    keel_ps_result_release(&res);
    pull3(after);
    cr_assert_eq(memcmp(before, after, sizeof(before)), 0);
    /* seq 0 is not a position */
    grads[7] = 0;
    p = push_of(0, 1, grads);
    p.seq = 0;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), KEEL_EINVAL);
}

/* Push `p` and append what it applied to the store's update log, as the server does. */
static void push_logged(keel_store *store, const struct keel_msg_push *p)
{
    struct keel_ps_result res;
    struct keel_error err;

    cr_assert_eq(keel_ps_push(ps, p, &res, &err), 0, "%s", err.msg);
    for (size_t i = 0; i < res.napplied; i++) {
        struct keel_ulog_record rec = {res.applied[i].range, res.applied[i].lsn,
                                       res.applied[i].push};
        cr_assert_eq(keel_ulog_append(store, &rec, 1, &err), 0, "%s", err.msg);
    }
    keel_ps_result_release(&res);
}

Test(ps, restore_from_snapshot_and_log_reproduces_rows)
{
    keel_store *store;
    struct keel_error err;
    float grads[15], expect[15], got[15];

    cr_assert_eq(keel_store_open(&store, dir, NULL, &err), 0, "%s", err.msg);
    open_all(store);
    for (uint64_t seq = 1; seq <= 6; seq++) {
        struct keel_msg_push p;

        for (int i = 0; i < 15; i++)
            grads[i] = (float)((seq * 31 + (uint64_t)i) % 7) * 0.01f - 0.03f;
        p = push_of(0, seq, grads);
        push_logged(store, &p);
        if (seq == 3) { /* snapshot every range half way: the log after it is replayed */
            for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
                struct keel_snapshot snap;

                cr_assert_eq(keel_ps_snapshot(ps, r, &snap, &err), 0, "%s", err.msg);
                cr_assert_eq(keel_snapshot_write(store, &snap, &err), 0, "%s", err.msg);
                keel_snapshot_release(&snap);
            }
        }
    }
    pull3(expect);
    keel_ps_free(ps);

    make("bsp");
    open_all(store);
    pull3(got);
    for (int i = 0; i < 15; i++)
        cr_assert_float_eq(got[i], expect[i], 0, "element %d differs after restore", i);
    /* The restored position makes a re-sent push a duplicate. */
    {
        struct keel_msg_push p = push_of(0, 6, grads);
        struct keel_ps_result res;

        cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
        cr_assert(res.duplicate, "a push applied before the restart was applied again");
        keel_ps_result_release(&res);
    }
    keel_store_close(store);
}

/* SGD with lr 0.5 halved every 2 clocks: each push at its clock's rate, and so the replay. */
Test(ps, a_decaying_rate_applies_each_push_at_its_clock_and_replays_the_same)
{
    static const char text[] = "[job]\nname = t\nmodel = softmax:4-3\ndataset = d\n"
                               "batch_size = 2\nconsistency = asp\nshards = 2\nreplication = 1\n"
                               "[optimizer]\ntype = sgd\nlr = 0.5\nlr_decay = 0.5\n"
                               "lr_decay_every = 2\n[init]\nmethod = uniform\nseed = 7\n";
    static const uint64_t clocks[] = {0, 1, 2, 5}; /* rates 0.5, 0.5, 0.25, 0.125 */
    static const float rates[] = {0.5f, 0.5f, 0.25f, 0.125f};
    keel_store *store;
    struct keel_error err;
    float grads[15], rows[15], expect[15], got[15];

    keel_ps_free(ps);
    cr_assert_eq(keel_jobspec_parse(&spec, text, "test", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ps_new(&spec, &ps, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_store_open(&store, dir, NULL, &err), 0, "%s", err.msg);
    open_all(store);
    for (int i = 0; i < 15; i++)
        grads[i] = (float)(i + 1) * 0.1f;
    pull3(expect);
    for (size_t k = 0; k < 4; k++) {
        struct keel_msg_push p = push_of(0, k + 1, grads);

        p.clock = clocks[k];
        push_logged(store, &p);
        for (int i = 0; i < 15; i++)
            expect[i] -= rates[k] * grads[i];
        pull3(rows);
        for (int i = 0; i < 15; i++)
            cr_assert_float_eq(rows[i], expect[i], 1e-6, "push %zu (clock %" PRIu64 ") element %d",
                               k, clocks[k], i);
    }
    keel_ps_free(ps);
    cr_assert_eq(keel_ps_new(&spec, &ps, &err), 0, "%s", err.msg);
    open_all(store); /* no snapshot: every push comes back from the log */
    pull3(got);
    for (int i = 0; i < 15; i++)
        cr_assert_float_eq(got[i], rows[i], 0, "element %d differs after the replay", i);
    keel_store_close(store);
}

Test(ps, bsp_waits_for_every_live_worker_and_dead_ones_leave)
{
    float grads[15] = {0};
    struct keel_msg_push p = push_of(0, 1, grads);
    struct keel_ps_result res;
    struct keel_error err;
    const char *live[] = {"w1", "w2"};

    open_all(NULL);
    p.clock = 0; /* w1 finished clock 0 */
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
    keel_ps_result_release(&res);
    p.worker_id = keel_str_of("w2");
    p.shard = 1;
    p.clock = 0;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
    keel_ps_result_release(&res);
    keel_ps_set_workers(ps, live, 2);
    cr_assert(keel_ps_clock_ready(ps, 1), "both finished clock 0");
    p.worker_id = keel_str_of("w1");
    p.shard = 0;
    p.seq = 2;
    p.clock = 1;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
    keel_ps_result_release(&res);
    cr_assert_not(keel_ps_clock_ready(ps, 2), "BSP let w1 run ahead of w2");
    keel_ps_set_workers(ps, live, 1); /* w2 died */
    cr_assert(keel_ps_clock_ready(ps, 2), "a dead worker still holds the clock");
}

Test(ps, ssp_allows_the_bound_and_no_more)
{
    float grads[15] = {0};
    struct keel_msg_push p = push_of(0, 1, grads);
    struct keel_ps_result res;
    struct keel_error err;
    const char *live[] = {"w1", "w2"};

    keel_ps_free(ps);
    make("ssp:2");
    open_all(NULL);
    p.worker_id = keel_str_of("w2");
    p.clock = 0;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
    keel_ps_result_release(&res);
    p.worker_id = keel_str_of("w1");
    p.shard = 1;
    p.clock = 0;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0);
    keel_ps_result_release(&res);
    keel_ps_set_workers(ps, live, 2);
    /* slowest finished 1 clock: pulls for clocks up to 1 + 2 may go on */
    cr_assert(keel_ps_clock_ready(ps, 3));
    cr_assert_not(keel_ps_clock_ready(ps, 4));
}

/* A push of w (shard `shard`) for clock `clock`. */
static void push_clock(const char *w, uint32_t shard, uint64_t clock)
{
    static const float grads[15] = {0};
    struct keel_msg_push p = push_of(shard, clock + 1, grads);
    struct keel_ps_result res;
    struct keel_error err;

    p.worker_id = keel_str_of(w);
    p.clock = clock;
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    keel_ps_result_release(&res);
}

/* Every range open, w1 and w2 registered and each holding a shard lease. */
static void two_leased_workers(void)
{
    const char *ids[] = {"w1", "w2"};

    open_all(NULL);
    keel_ps_set_workers(ps, ids, 2);
    keel_ps_set_owners(ps, ids, 2);
}

Test(ps, bsp_holds_everyone_for_a_leased_worker_that_has_not_started)
{
    two_leased_workers();
    /* w1 is quick: it has finished clock 0 before w2 sent anything. */
    keel_ps_pulled(ps, keel_str_of("w1"), 0);
    cr_assert(keel_ps_clock_ready(ps, 0), "clock 0 never waits");
    push_clock("w1", 0, 0);
    keel_ps_pulled(ps, keel_str_of("w1"), 1);
    cr_assert_not(keel_ps_clock_ready(ps, 1),
                  "BSP let w1 start clock 1 before w2 finished clock 0");
    cr_assert_eq(keel_ps_min_clock(ps), 0, "w2 counts at clock 0 until it trains");
    /* An evaluation's pull (clock 0) says nothing of where w2 is. */
    keel_ps_pulled(ps, keel_str_of("w2"), 0);
    cr_assert_not(keel_ps_clock_ready(ps, 1));
    push_clock("w2", 1, 0);
    cr_assert(keel_ps_clock_ready(ps, 1), "both finished clock 0");
    cr_assert_eq(keel_ps_min_clock(ps), 1);
}

Test(ps, a_training_pull_moves_the_clock_and_never_back)
{
    two_leased_workers();
    /* w2 resumes a shard at clock 40 (a lease taken over at its recorded position). */
    keel_ps_pulled(ps, keel_str_of("w2"), 40);
    push_clock("w1", 0, 39);
    cr_assert(keel_ps_clock_ready(ps, 40), "w2 pulling for clock 40 has finished 40 clocks");
    cr_assert_not(keel_ps_clock_ready(ps, 41));
    /* A restarted worker replaying older clocks does not move back. */
    keel_ps_pulled(ps, keel_str_of("w2"), 12);
    push_clock("w2", 1, 12);
    cr_assert(keel_ps_clock_ready(ps, 40));
    cr_assert_eq(keel_ps_min_clock(ps), 40);
}

Test(ps, a_live_worker_without_a_lease_holds_nobody_back)
{
    const char *members[] = {"w1", "w2"}, *owners[] = {"w1"};

    open_all(NULL);
    keel_ps_set_workers(ps, members, 2);
    push_clock("w1", 0, 0);
    push_clock("w2", 1, 0); /* w2 trained, then its shard was done */
    push_clock("w1", 0, 1);
    cr_assert_not(keel_ps_clock_ready(ps, 2), "before the leases are known, w2 holds w1");
    keel_ps_set_owners(ps, owners, 1);
    cr_assert(keel_ps_clock_ready(ps, 2), "w2 holds no lease: it is out of the clock set");
    cr_assert_eq(keel_ps_min_clock(ps), 2);
    /* It trains again (a new lease not seen here yet): it is back in. */
    keel_ps_pulled(ps, keel_str_of("w2"), 1);
    cr_assert_not(keel_ps_clock_ready(ps, 2));
    /* Unregistered workers are out whatever their lease. */
    keel_ps_set_workers(ps, owners, 1);
    cr_assert(keel_ps_clock_ready(ps, 2));
}

Test(ps, ssp_lets_a_worker_start_a_leased_worker_s_clocks_ahead)
{
    const char *members[] = {"w1", "w2"};

    keel_ps_free(ps);
    make("ssp:2");
    open_all(NULL);
    keel_ps_set_workers(ps, members, 2);
    keel_ps_set_owners(ps, members, 2);
    push_clock("w1", 0, 0);
    push_clock("w1", 0, 1);
    keel_ps_pulled(ps, keel_str_of("w1"), 2);
    cr_assert(keel_ps_clock_ready(ps, 2), "ssp:2: clock 2 while w2 has finished none");
    push_clock("w1", 0, 2);
    keel_ps_pulled(ps, keel_str_of("w1"), 3);
    cr_assert_not(keel_ps_clock_ready(ps, 3), "ssp:2 let w1 start clock 3 with w2 at 0");
}

Test(ps, each_table_of_a_batch_is_applied_once)
{
    static const char mlp[] = "[job]\nname = t\nmodel = mlp:4-3-2\ndataset = d\nbatch_size = 2\n"
                              "epochs = 1\nconsistency = asp\nshards = 2\nreplication = 1\n"
                              "[optimizer]\ntype = sgd\nlr = 0.5\n[init]\nmethod = uniform\n"
                              "seed = 7\n";
    static const uint64_t keys2[] = {(UINT64_C(2) << 48) | 0, (UINT64_C(2) << 48) | 1};
    float g1[15], g2[8], before[8], after[8];
    struct keel_msg_push p;
    struct keel_ps_result res;
    struct keel_error err;

    keel_ps_free(ps);
    keel_jobspec_init(&spec);
    cr_assert_eq(keel_jobspec_parse(&spec, mlp, "test", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ps_new(&spec, &ps, &err), 0, "%s", err.msg);
    open_all(NULL);
    for (int i = 0; i < 15; i++)
        g1[i] = 0.25f;
    for (int i = 0; i < 8; i++)
        g2[i] = 0.5f;
    cr_assert_eq(keel_ps_pull(ps, 2, 4, keys2, 2, before, &err), 0, "%s", err.msg);
    /* One batch: a push per table, both with the batch's seq. */
    p = push_of(0, 1, g1);
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    cr_assert_not(res.duplicate);
    keel_ps_result_release(&res);
    p.data = (struct keel_rows){2, 4, 2, keys2, g2, 0, NULL};
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    cr_assert_not(res.duplicate, "the second table of the batch was taken for a duplicate");
    keel_ps_result_release(&res);
    cr_assert_eq(keel_ps_pull(ps, 2, 4, keys2, 2, after, &err), 0, "%s", err.msg);
    for (int i = 0; i < 8; i++)
        cr_assert_float_eq(after[i], before[i] - 0.25f, 1e-6, "element %d", i);
    /* The same table again at the same seq is the duplicate. */
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    cr_assert(res.duplicate);
    keel_ps_result_release(&res);
}

/*
 * The in-process training of the benchmark keeps the whole model in one
 * process: keel_jobspec_init_params() for the start, keel_optim_apply_rows()
 * for each gradient.  It must hold exactly what the servers hold after the
 * same pushes, bit for bit, or the comparison would not be of the same
 * training.
 */
Test(ps, the_model_in_one_process_is_what_the_servers_hold)
{
    static const char mlp[] = "[job]\nname = t\nmodel = mlp:6-5-3\ndataset = d\nbatch_size = 2\n"
                              "epochs = 1\nconsistency = asp\nshards = 1\nreplication = 1\n"
                              "[optimizer]\ntype = adam\nlr = 0.01\n[init]\nmethod = glorot\n"
                              "seed = 9\n";
    struct keel_model m;
    struct keel_model_params local;
    struct keel_optim o;
    float *state[2], *grads[2], pulled[5 * 7];
    uint64_t keys[5];
    struct keel_error err;

    keel_ps_free(ps);
    keel_jobspec_init(&spec);
    cr_assert_eq(keel_jobspec_parse(&spec, mlp, "test", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ps_new(&spec, &ps, &err), 0, "%s", err.msg);
    open_all(NULL);
    cr_assert_eq(
        keel_model_init(&m, spec.model.type, spec.model.sizes, spec.model.nlayers + 1, &err), 0,
        "%s", err.msg);
    cr_assert_eq(keel_ps_optim_of(&spec, &o, &err), 0, "%s", err.msg);
    keel_model_params_init(&local, &m);
    keel_jobspec_init_params(&spec, &local);
    for (unsigned l = 0; l < 2; l++) {
        size_t rows = keel_model_rows(&m, l), width = keel_model_row_width(&m, l);

        state[l] = keel_calloc(rows * keel_optim_state_width(&o, (uint32_t)width), sizeof(float));
        grads[l] = keel_calloc(rows * width, sizeof(float));
    }
    for (int step = 0; step <= 3; step++) {
        if (step > 0) { /* one batch: the same gradient pushed and applied locally */
            for (unsigned l = 0; l < 2; l++) {
                uint32_t rows = keel_model_rows(&m, l), width = keel_model_row_width(&m, l);
                struct keel_msg_push p;
                struct keel_ps_result res;

                for (size_t i = 0; i < (size_t)rows * width; i++)
                    grads[l][i] = (float)((int)((i * 7 + (size_t)step * 3 + l) % 11) - 5) * 0.01f;
                keel_model_keys(&m, l, keys);
                memset(&p, 0, sizeof(p));
                p.worker_id = keel_str_of("w1");
                p.incarnation = 1;
                p.seq = (uint64_t)step;
                p.clock = (uint64_t)step - 1;
                p.data = (struct keel_rows){
                    keel_model_table_id(l), width, rows, keys, grads[l], 0, NULL};
                cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
                keel_ps_result_release(&res);
                cr_assert_eq(keel_optim_apply_rows(&o, local.table[l], state[l], NULL, grads[l],
                                                   rows, width, &err),
                             0, "%s", err.msg);
            }
        }
        for (unsigned l = 0; l < 2; l++) {
            uint32_t rows = keel_model_rows(&m, l), width = keel_model_row_width(&m, l);

            keel_model_keys(&m, l, keys);
            cr_assert_eq(keel_ps_pull(ps, keel_model_table_id(l), width, keys, rows, pulled, &err),
                         0, "%s", err.msg);
            cr_assert(memcmp(pulled, local.table[l], (size_t)rows * width * sizeof(float)) == 0,
                      "table %u after %d push(es): the servers' rows differ from the local ones",
                      keel_model_table_id(l), step);
        }
    }
    for (unsigned l = 0; l < 2; l++) {
        free(state[l]);
        free(grads[l]);
    }
    keel_model_params_release(&local);
}

/*
 * A backup fed by a primary: a packed copy of each range installed, then the
 * primary's updates replayed at their LSNs.  The backup's rows and positions
 * equal the primary's; a gap, a stale LSN and a push to a backup's copy are
 * refused or ignored as ps.h says; promotion makes the copy serve pushes.
 */
Test(ps, a_backup_fed_copies_and_updates_holds_what_the_primary_holds)
{
    float grads[15], mine[15], theirs[15];
    struct keel_ps *backup;
    struct keel_ps_result res;
    struct keel_error err;
    struct keel_msg_push p;
    unsigned range = keel_range_of(keys3[0]);

    for (int i = 0; i < 15; i++)
        grads[i] = (float)(i % 7) * 0.05f - 0.1f;
    cr_assert_eq(keel_ps_new(&spec, &backup, &err), 0, "%s", err.msg);
    open_all(NULL);
    p = push_of(0, 1, grads);
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    keel_ps_result_release(&res);
    /* The copy: every range, packed and unpacked as it crosses the wire. */
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        struct keel_snapshot snap, got;
        struct keel_buf b = KEEL_BUF_INIT;

        cr_assert_eq(keel_ps_snapshot(ps, r, &snap, &err), 0, "%s", err.msg);
        cr_assert_eq(keel_snapshot_pack(&snap, &b, &err), 0, "%s", err.msg);
        cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, 1 << 20, &got, &err), 0, "%s", err.msg);
        cr_assert_eq(keel_ps_install(backup, r, &got, &err), 0, "%s", err.msg);
        keel_snapshot_release(&snap);
        keel_buf_release(&b);
    }
    cr_assert_not(keel_ps_is_primary(backup, range));
    /* A backup's copy serves no push. */
    cr_assert_eq(keel_ps_push(backup, &p, &res, &err), KEEL_EREDIRECT);
    /* Two more updates at the primary, replayed in order at the backup. */
    for (uint64_t seq = 2; seq <= 3; seq++) {
        p = push_of(0, seq, grads);
        cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
        for (size_t i = 0; i < res.napplied; i++) {
            const struct keel_ps_applied *a = &res.applied[i];

            if (seq == 3) /* a gap first: LSN + 1 is missing */
                cr_assert_eq(keel_ps_replicate(backup, a->range, a->lsn + 1, &a->push, &err),
                             KEEL_EUNAVAILABLE);
            cr_assert_eq(keel_ps_replicate(backup, a->range, a->lsn, &a->push, &err), 0, "%s",
                         err.msg);
            /* Again: held already, nothing changes. */
            cr_assert_eq(keel_ps_replicate(backup, a->range, a->lsn, &a->push, &err), 1);
            cr_assert_eq(keel_ps_lsn(backup, a->range), keel_ps_lsn(ps, a->range));
        }
        keel_ps_result_release(&res);
    }
    /* Promoted, the backup serves the same rows, and the next push at both gives the same. */
    keel_ps_set_primary(backup, range, 1);
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        keel_ps_set_primary(backup, r, 1);
    pull3(mine);
    cr_assert_eq(keel_ps_pull(backup, 1, 5, keys3, 3, theirs, &err), 0, "%s", err.msg);
    cr_assert_eq(memcmp(mine, theirs, sizeof(mine)), 0);
    p = push_of(0, 3, grads); /* a retry of what both hold: a duplicate at both */
    cr_assert_eq(keel_ps_push(backup, &p, &res, &err), 0, "%s", err.msg);
    cr_assert(res.duplicate);
    keel_ps_result_release(&res);
    /* A replicated update to a range the server leads is refused (fencing). */
    p = push_of(1, 1, grads);
    cr_assert_eq(keel_ps_push(ps, &p, &res, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ps_replicate(backup, res.applied[0].range, res.applied[0].lsn,
                                   &res.applied[0].push, &err),
                 KEEL_EEPOCH);
    keel_ps_result_release(&res);
    keel_ps_free(backup);
}

Test(ps, a_copy_of_another_shape_is_refused)
{
    struct keel_snapshot snap;
    struct keel_error err;
    unsigned range = keel_range_of(keys3[0]);

    open_all(NULL);
    cr_assert_eq(keel_ps_snapshot(ps, range, &snap, &err), 0, "%s", err.msg);
    snap.tables[0].width = 4; /* not the job's table */
    cr_assert_eq(keel_ps_install(ps, (range + 1) % KEEL_PROTO_NRANGES, &snap, &err), KEEL_EINVAL);
    cr_assert_eq(keel_ps_install(ps, range, &snap, &err), KEEL_EINVAL);
    snap.tables[0].width = 5;
    keel_snapshot_release(&snap);
}
