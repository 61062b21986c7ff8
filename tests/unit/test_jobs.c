/*
 * test_jobs.c - job states and shard leases: the transition table, progress
 * rules, JSON forms, and a seeded random run of workers joining, dying and
 * reporting that must never give a shard two owners or lose progress.
 *
 * The random test prints its seed; set KEEL_TEST_SEED to replay one.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "keel/jobs.h"

static struct keel_error err;

static void setup(void)
{
    keel_error_init(&err);
}

TestSuite(jobs, .init = setup);

/* ---- job states ------------------------------------------------------------ */

Test(jobs, only_the_documented_transitions_are_allowed)
{
    /* allowed[from][to], states 1..5: pending running done failed stopped */
    static const int allowed[6][6] = {
        [KEEL_JOB_PENDING] =
            {[KEEL_JOB_RUNNING] = 1, [KEEL_JOB_FAILED] = 1, [KEEL_JOB_STOPPED] = 1},
        [KEEL_JOB_RUNNING] = {[KEEL_JOB_DONE] = 1, [KEEL_JOB_FAILED] = 1, [KEEL_JOB_STOPPED] = 1},
        /* a rollback makes an ended job pending again */
        [KEEL_JOB_DONE] = {[KEEL_JOB_PENDING] = 1},
        [KEEL_JOB_FAILED] = {[KEEL_JOB_PENDING] = 1},
        [KEEL_JOB_STOPPED] = {[KEEL_JOB_PENDING] = 1},
    };

    for (int from = 0; from <= 5; from++)
        for (int to = 0; to <= 5; to++)
            cr_assert_eq(
                keel_job_state_can_move((enum keel_job_state)from, (enum keel_job_state)to),
                allowed[from][to], "%s -> %s", keel_job_state_name((enum keel_job_state)from),
                keel_job_state_name((enum keel_job_state)to));
    cr_assert(keel_job_state_is_final(KEEL_JOB_DONE));
    cr_assert(keel_job_state_is_final(KEEL_JOB_STOPPED));
    cr_assert(!keel_job_state_is_final(KEEL_JOB_RUNNING));
}

Test(jobs, state_names_round_trip)
{
    for (int s = KEEL_JOB_PENDING; s <= KEEL_JOB_STOPPED; s++)
        cr_assert_eq((int)keel_job_state_parse(keel_job_state_name((enum keel_job_state)s)), s);
    cr_assert_eq(keel_job_state_parse("Running"), 0);
    cr_assert_str_eq(keel_job_state_name((enum keel_job_state)9), "unknown");
}

Test(jobs, status_moves_and_refuses_illegal_moves)
{
    struct keel_job_status st;

    keel_job_status_init(&st, 1000);
    cr_assert_eq(st.state, KEEL_JOB_PENDING);
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_DONE, 2000, NULL, &err), KEEL_EINVAL);
    cr_assert_str_eq(err.msg, "job state: cannot go from 'pending' to 'done'");
    cr_assert_eq(st.state, KEEL_JOB_PENDING);
    cr_assert_eq(st.changed_ms, 1000, "a refused move changes nothing");
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_RUNNING, 2000, NULL, &err), 0);
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_STOPPED, 3000, "stopped by the operator", &err),
                 0);
    cr_assert_str_eq(st.reason, "stopped by the operator");
    cr_assert_eq(st.changed_ms, 3000);
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_RUNNING, 4000, NULL, &err), KEEL_EINVAL);
    cr_assert_str_eq(err.msg, "job state: cannot go from 'stopped' to 'running'");
}

Test(jobs, status_json_round_trips)
{
    struct keel_job_status st, back;
    struct keel_buf b = KEEL_BUF_INIT;

    keel_job_status_init(&st, UINT64_C(1700000000123));
    cr_assert_eq(keel_job_status_move(&st, KEEL_JOB_FAILED, UINT64_C(1700000000999),
                                      "dataset \"x\" not found", &err),
                 0);
    keel_job_status_encode(&st, &b);
    cr_assert_str_eq((char *)b.buf, "{\"changed_ms\":1700000000999,\"reason\":\"dataset "
                                    "\\\"x\\\" not found\",\"state\":\"failed\"}");
    cr_assert_eq(keel_job_status_decode(b.buf, b.len, &back, &err), 0, "%s", err.msg);
    cr_assert_eq(back.state, KEEL_JOB_FAILED);
    cr_assert_eq(back.changed_ms, st.changed_ms);
    cr_assert_str_eq(back.reason, st.reason);
    keel_buf_release(&b);
}

struct bad_json {
    char text[200];
    char expect[96];
};

static struct bad_json bad_status[] = {
    {"", "job state: not JSON"},
    {"\"running\"", "job state: not JSON"},
    {"[\"running\"]", "job state: not a JSON object"},
    {"{\"changed_ms\":1,\"reason\":\"\",\"state\":\"paused\"}", "state: must be pending"},
    {"{\"changed_ms\":1,\"reason\":\"\"}", "state: must be"},
    {"{\"changed_ms\":-1,\"reason\":\"\",\"state\":\"done\"}", "changed_ms: must be an integer"},
    {"{\"changed_ms\":1,\"reason\":3,\"state\":\"done\"}", "reason: must be a string"},
    {"{\"changed_ms\":1,\"reason\":\"\",\"state\":\"done\",\"x\":0}", "unknown key 'x'"},
    {"{\"changed_ms\":1,\"reason\":\"\",\"state\":\"done\",\"state\":\"done\"}", "not JSON"},
};

ParameterizedTestParameters(jobs, status_decoder_refuses_bad_json)
{
    return cr_make_param_array(struct bad_json, bad_status,
                               sizeof(bad_status) / sizeof(bad_status[0]));
}

ParameterizedTest(struct bad_json *c, jobs, status_decoder_refuses_bad_json)
{
    struct keel_job_status st;
    struct keel_error e;

    keel_error_init(&e);
    cr_assert_eq(keel_job_status_decode(c->text, strlen(c->text), &st, &e), KEEL_ECORRUPT, "%s",
                 c->text);
    cr_assert(strstr(e.msg, c->expect), "for %s\nwant '%s'\ngot  '%s'", c->text, c->expect, e.msg);
}

/* ---- shard leases ---------------------------------------------------------- */

Test(jobs, each_worker_gets_one_shard_and_extra_workers_wait)
{
    struct keel_shard_table t;
    struct keel_worker_ref live[] = {{"w3", 1}, {"w1", 1}, {"w2", 1}};
    unsigned char changed[2];

    keel_shards_init(&t, 2, 3);
    cr_assert_eq(keel_shards_assign(&t, live, 3, changed), 2);
    cr_assert_str_eq(t.shards[0].owner, "w1", "workers are taken in id order");
    cr_assert_str_eq(t.shards[1].owner, "w2");
    cr_assert(changed[0] && changed[1]);
    cr_assert_eq(keel_shards_owned_by(&t, "w3", 1), -1);
    cr_assert_eq(keel_shards_assign(&t, live, 3, changed), 0, "nothing to do twice");
    keel_shards_release(&t);
}

Test(jobs, dead_worker_shard_goes_to_another_with_its_progress)
{
    struct keel_shard_table t;
    struct keel_worker_ref both[] = {{"w1", 7}, {"w2", 1}}, w1_only[] = {{"w1", 7}},
                           w2_only[] = {{"w2", 1}};

    keel_shards_init(&t, 1, 3);
    cr_assert_eq(keel_shards_assign(&t, w1_only, 1, NULL), 1);
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 7, 0, 40, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_shards_assign(&t, both, 2, NULL), 0);
    /* w1's lease ends: w2 takes the shard where w1 left it. */
    cr_assert_eq(keel_shards_assign(&t, w2_only, 1, NULL), 1);
    cr_assert_str_eq(t.shards[0].owner, "w2");
    cr_assert_eq(t.shards[0].pass, 0);
    cr_assert_eq(t.shards[0].batch, 40);
    /* A report from the dead owner is refused and changes nothing. */
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 7, 0, 45, &err), KEEL_EPERM);
    cr_assert(strstr(err.msg, "'w1' (incarnation 7) does not hold it"), "%s", err.msg);
    cr_assert_eq(t.shards[0].batch, 40);
    keel_shards_release(&t);
}

Test(jobs, a_restarted_worker_is_a_new_lease)
{
    struct keel_shard_table t;
    struct keel_worker_ref v1[] = {{"w1", 1}}, v2[] = {{"w1", 2}};

    keel_shards_init(&t, 1, 1);
    keel_shards_assign(&t, v1, 1, NULL);
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 0, 3, &err), 0);
    cr_assert_eq(keel_shards_assign(&t, v2, 1, NULL), 1);
    cr_assert_eq(t.shards[0].incarnation, 2);
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 0, 4, &err), KEEL_EPERM);
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 2, 0, 4, &err), 0, "%s", err.msg);
    keel_shards_release(&t);
}

Test(jobs, progress_never_goes_backwards)
{
    struct keel_shard_table t;
    struct keel_worker_ref w[] = {{"w1", 1}};

    keel_shards_init(&t, 4, 2);
    keel_shards_assign(&t, w, 1, NULL);
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 0, 25, &err), 0);
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 0, 20, &err), KEEL_EINVAL);
    cr_assert_str_eq(err.msg, "shard 0: progress (0, 20) is behind the recorded (0, 25)");
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 0, 25, &err), 0, "a repeat is a no-op");
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 2, 1, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "past the end (2, 0)"), "%s", err.msg);
    cr_assert_eq(keel_shards_progress(&t, 9, "w1", 1, 0, 1, &err), KEEL_EINVAL);
    cr_assert_eq(keel_shards_progress(&t, 1, "w1", 1, 0, 1, &err), KEEL_EPERM,
                 "a free shard takes no progress");
    cr_assert_eq(t.shards[0].batch, 25);
    keel_shards_release(&t);
}

Test(jobs, a_lease_lasts_one_pass_and_the_laggard_goes_first)
{
    struct keel_shard_table t;
    struct keel_worker_ref w[] = {{"w1", 1}};

    keel_shards_init(&t, 2, 2);
    keel_shards_assign(&t, w, 1, NULL);
    cr_assert_str_eq(t.shards[0].owner, "w1");
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 1, 0, &err), 0);
    cr_assert_str_eq(t.shards[0].owner, "", "the pass ended, so did the lease");
    keel_shards_assign(&t, w, 1, NULL);
    cr_assert_str_eq(t.shards[1].owner, "w1", "shard 1 is a pass behind");
    cr_assert_eq(keel_shards_progress(&t, 1, "w1", 1, 2, 0, &err), 0, "finishing jumps passes");
    cr_assert(t.shards[1].done);
    cr_assert(!keel_shards_all_done(&t));
    keel_shards_assign(&t, w, 1, NULL);
    cr_assert_str_eq(t.shards[0].owner, "w1");
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 2, 0, &err), 0);
    cr_assert(keel_shards_all_done(&t));
    cr_assert_eq(keel_shards_assign(&t, w, 1, NULL), 0, "done shards are not leased");
    cr_assert_eq(keel_shards_progress(&t, 0, "w1", 1, 2, 0, &err), 0, "a repeat of the end");
    keel_shards_release(&t);
}

Test(jobs, duplicate_or_invalid_workers_get_nothing)
{
    struct keel_shard_table t;
    struct keel_worker_ref w[] = {{"w1", 1}, {"w1", 2}, {"bad id", 1}, {NULL, 1}};

    keel_shards_init(&t, 3, 1);
    cr_assert_eq(keel_shards_assign(&t, w, 4, NULL), 0);
    keel_shards_release(&t);
}

Test(jobs, shard_json_round_trips)
{
    struct keel_shard s = {"w9", 12, 3, 77, 0, 4}, back;
    struct keel_shard fin = {"", 0, 5, 0, 1, 9};
    struct keel_buf b = KEEL_BUF_INIT;

    keel_shard_encode(&s, &b);
    cr_assert_str_eq(
        (char *)b.buf,
        "{\"batch\":77,\"done\":false,\"incarnation\":12,\"lease\":4,\"owner\":\"w9\",\"pass\":3}");
    cr_assert_eq(keel_shard_decode(b.buf, b.len, 5, &back, &err), 0, "%s", err.msg);
    cr_assert_str_eq(back.owner, "w9");
    cr_assert_eq(back.incarnation, 12);
    cr_assert_eq(back.pass, 3);
    cr_assert_eq(back.batch, 77);
    cr_assert_eq(back.done, 0);
    cr_assert_eq(back.lease, 4);
    keel_buf_reset(&b);
    keel_shard_encode(&fin, &b);
    cr_assert_str_eq((char *)b.buf,
                     "{\"batch\":0,\"done\":true,\"lease\":9,\"owner\":null,\"pass\":5}");
    cr_assert_eq(keel_shard_decode(b.buf, b.len, 5, &back, &err), 0, "%s", err.msg);
    cr_assert(back.done);
    cr_assert_eq(back.owner[0], '\0');
    keel_buf_release(&b);
}

Test(jobs, every_grant_raises_the_lease_token)
{
    struct keel_shard_table t;
    struct keel_worker_ref w1 = {"w1", 7};

    keel_shards_init(&t, 1, 2);
    cr_assert_eq(keel_shards_assign(&t, &w1, 1, NULL), 1);
    cr_assert_eq(t.shards[0].lease, 1);
    cr_assert_eq(keel_shards_assign(&t, NULL, 0, NULL), 1, "w1 is gone: the shard is freed");
    cr_assert_eq(keel_shards_assign(&t, &w1, 1, NULL), 1);
    cr_assert_eq(t.shards[0].lease, 2, "the same worker again is a new lease");
    keel_shards_release(&t);
}

Test(jobs, a_rewind_moves_shards_back_to_the_restored_floor_and_cuts_every_lease)
{
    struct keel_shard_table t;
    struct keel_worker_ref w[] = {{"w1", 1}, {"w2", 1}};
    unsigned char changed[3] = {0};
    uint64_t floor[3];

    keel_shards_init(&t, 3, 2);
    keel_shards_assign(&t, w, 2, NULL);
    t.shards[0].pass = 1, t.shards[0].batch = 4; /* w1 */
    t.shards[1].pass = 0, t.shards[1].batch = 7; /* w2 */
    t.shards[2].pass = 2, t.shards[2].done = 1;  /* finished */
    floor[0] = keel_shard_seq(0, 9);             /* batch 8 of pass 0 is the last applied */
    floor[1] = keel_shard_seq(0, 9);             /* ahead of the shard: stays */
    floor[2] = keel_shard_seq(1, 3);
    cr_assert_eq(keel_shards_rewind(&t, floor, changed), 2);
    cr_assert(t.shards[0].pass == 0 && t.shards[0].batch == 9);
    cr_assert_str_eq(t.shards[0].owner, "w1", "the owner keeps the shard, under a new token");
    cr_assert_eq(t.shards[0].lease, 2);
    cr_assert(t.shards[1].pass == 0 && t.shards[1].batch == 7, "never moved forward");
    cr_assert_eq(t.shards[1].lease, 2, "a lease that was not moved back is cut all the same");
    cr_assert(t.shards[2].pass == 1 && t.shards[2].batch == 3 && !t.shards[2].done,
              "a finished shard is trained again from the floor");
    cr_assert(changed[0] && changed[1] && changed[2]);
    floor[0] = floor[1] = 0;
    floor[2] = keel_shard_seq(7, 0); /* past the end: no rewind */
    cr_assert_eq(keel_shards_rewind(&t, floor, NULL), 2, "no position: from the beginning");
    cr_assert(t.shards[0].pass == 0 && t.shards[0].batch == 0);
    cr_assert(t.shards[2].pass == 1 && t.shards[2].batch == 3);
    keel_shards_release(&t);
}

static struct bad_json bad_shards[] = {
    {"[]", "shard: not a JSON object"},
    {"{\"batch\":0,\"done\":false,\"pass\":0}", "owner: must be null or"},
    {"{\"batch\":0,\"done\":false,\"owner\":\"a/b\",\"incarnation\":1,\"pass\":0}", "owner:"},
    {"{\"batch\":0,\"done\":false,\"owner\":\"w\",\"pass\":0}", "incarnation: missing"},
    {"{\"batch\":0,\"done\":false,\"owner\":null,\"incarnation\":1,\"pass\":0}",
     "incarnation: given without an owner"},
    {"{\"batch\":0,\"done\":false,\"owner\":null,\"pass\":6}", "pass: 6 is past the job's 5"},
    {"{\"batch\":0,\"done\":false,\"owner\":null,\"pass\":5}", "done: must be true exactly"},
    {"{\"batch\":0,\"done\":true,\"owner\":null,\"pass\":4}", "done: must be true exactly"},
    {"{\"batch\":3,\"done\":true,\"owner\":null,\"pass\":5}", "a done shard must be at batch 0"},
    {"{\"batch\":0,\"done\":true,\"incarnation\":1,\"owner\":\"w\",\"pass\":5}", "a done shard"},
    {"{\"batch\":4294967296,\"done\":false,\"owner\":null,\"pass\":0}", "batch: must be"},
    {"{\"batch\":1.5,\"done\":false,\"owner\":null,\"pass\":0}", "batch: must be"},
    {"{\"batch\":0,\"done\":0,\"owner\":null,\"pass\":0}", "done: must be true or false"},
    {"{\"batch\":0,\"done\":false,\"owner\":null,\"pass\":0,\"lease\":-1}", "lease: must be"},
    {"{\"batch\":0,\"done\":false,\"owner\":null,\"pass\":0,\"x\":1}", "unknown key 'x'"},
};

ParameterizedTestParameters(jobs, shard_decoder_refuses_bad_json)
{
    return cr_make_param_array(struct bad_json, bad_shards,
                               sizeof(bad_shards) / sizeof(bad_shards[0]));
}

ParameterizedTest(struct bad_json *c, jobs, shard_decoder_refuses_bad_json)
{
    struct keel_shard s;
    struct keel_error e;

    keel_error_init(&e);
    cr_assert_eq(keel_shard_decode(c->text, strlen(c->text), 5, &s, &e), KEEL_ECORRUPT, "%s",
                 c->text);
    cr_assert(strstr(e.msg, c->expect), "for %s\nwant '%s'\ngot  '%s'", c->text, c->expect, e.msg);
}

/* ---- seeded random run ----------------------------------------------------- */

#define NWORKERS 12

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

static unsigned below(uint64_t *s, unsigned n)
{
    return (unsigned)(rng_next(s) % n);
}

struct sim_worker {
    char id[16];
    uint64_t incarnation; /* 0 while dead */
    /* what the worker itself believes: its shard and where it is */
    long shard;
    uint32_t pass, batch;
};

static void check_leases(const struct keel_shard_table *t, const struct sim_worker *w,
                         const uint64_t *recorded, const char *ctx)
{
    for (uint32_t i = 0; i < t->nshards; i++) {
        const struct keel_shard *s = &t->shards[i];
        uint64_t at = keel_shard_seq(s->pass, s->batch);
        int owners = 0;

        cr_assert_eq(at, recorded[i], "%s: shard %u is at %" PRIx64 ", last accepted %" PRIx64, ctx,
                     i, at, recorded[i]);
        cr_assert_eq(s->done, s->pass == t->epochs, "%s: shard %u done flag", ctx, i);
        if (s->done)
            cr_assert_eq(s->owner[0], '\0', "%s: done shard %u has an owner", ctx, i);
        for (int k = 0; k < NWORKERS; k++)
            if (w[k].incarnation && strcmp(s->owner, w[k].id) == 0 &&
                s->incarnation == w[k].incarnation)
                owners++;
        if (s->owner[0] != '\0')
            cr_assert_eq(owners, 1, "%s: shard %u owner %s/%" PRIu64 " is not one live worker", ctx,
                         i, s->owner, s->incarnation);
    }
    for (int k = 0; k < NWORKERS; k++) {
        int held = 0;

        for (uint32_t i = 0; i < t->nshards; i++)
            held += strcmp(t->shards[i].owner, w[k].id) == 0;
        cr_assert_leq(held, 1, "%s: %s holds %d shards", ctx, w[k].id, held);
    }
}

/*
 * Workers join, die and come back (new incarnation); the leader reassigns
 * after every change; workers report progress in random steps, sometimes a
 * stale or backwards report.  Per shard the recorded position must equal the
 * last accepted report (nothing lost), never decrease, and a worker given a
 * shard resumes exactly there.  Returns the steps it took to finish.
 */
static unsigned run_job(uint64_t seed)
{
    uint64_t s = seed;
    struct keel_shard_table t;
    struct sim_worker w[NWORKERS];
    uint64_t recorded[64];
    uint32_t nshards = 1 + below(&s, 12), epochs = 1 + below(&s, 4);
    uint32_t batches[64];
    uint64_t next_inc = 1;
    char ctx[96];
    unsigned step;

    keel_shards_init(&t, nshards, epochs);
    memset(w, 0, sizeof(w));
    for (int k = 0; k < NWORKERS; k++) {
        snprintf(w[k].id, sizeof(w[k].id), "w%d", k);
        w[k].shard = -1;
    }
    for (uint32_t i = 0; i < nshards; i++) {
        recorded[i] = 0;
        batches[i] = 2 + below(&s, 6); /* batches per pass of the shard */
    }
    for (step = 0; step < 20000 && !keel_shards_all_done(&t); step++) {
        unsigned op = below(&s, 10);
        struct sim_worker *x = &w[below(&s, NWORKERS)];

        snprintf(ctx, sizeof(ctx), "seed %" PRIu64 " step %u", seed, step);
        if (op == 0 && !x->incarnation) { /* a worker registers */
            x->incarnation = next_inc++;
        } else if (op == 1 && x->incarnation) { /* a worker's lease ends */
            x->incarnation = 0;
            x->shard = -1;
        } else if (op == 2 && x->incarnation && below(&s, 4) == 0) { /* it restarts at once */
            x->incarnation = next_inc++;
            x->shard = -1;
        } else if (x->incarnation && x->shard >= 0) { /* it works and reports */
            uint32_t sh = (uint32_t)x->shard, pass = x->pass, batch = x->batch;
            unsigned kind = below(&s, 10);
            int rc;

            if (kind == 0 && (pass | batch) != 0) { /* a confused backwards report */
                rc = keel_shards_progress(&t, sh, x->id, x->incarnation, 0, 0, &err);
                cr_assert_eq(rc, KEEL_EINVAL, "%s: backwards report accepted", ctx);
            } else if (kind == 1) { /* a report under an old incarnation */
                rc = keel_shards_progress(&t, sh, x->id, x->incarnation + 1000, pass, batch + 1,
                                          &err);
                cr_assert_eq(rc, KEEL_EPERM, "%s: stale report accepted", ctx);
            } else {
                batch += 1 + below(&s, 3);
                if (batch >= batches[sh]) { /* the pass is over */
                    pass++;
                    batch = 0;
                }
                rc = keel_shards_progress(&t, sh, x->id, x->incarnation, pass, batch, &err);
                cr_assert_eq(rc, 0, "%s: %s's report refused: %s", ctx, x->id, err.msg);
                cr_assert_geq(keel_shard_seq(pass, batch), recorded[sh], "%s", ctx);
                recorded[sh] = keel_shard_seq(pass, batch);
                x->pass = pass;
                x->batch = batch;
                if (batch == 0) /* a new pass: the lease is over, ask again */
                    x->shard = -1;
            }
        }
        /* The leader reacts to every change. */
        {
            struct keel_worker_ref live[NWORKERS];
            size_t n = 0;

            for (int k = 0; k < NWORKERS; k++)
                if (w[k].incarnation)
                    live[n++] = (struct keel_worker_ref){w[k].id, w[k].incarnation};
            keel_shards_assign(&t, live, n, NULL);
        }
        /* Workers learn their leases and resume from the recorded position. */
        for (int k = 0; k < NWORKERS; k++) {
            long sh = w[k].incarnation ? keel_shards_owned_by(&t, w[k].id, w[k].incarnation) : -1;

            if (sh >= 0 && sh != w[k].shard) {
                w[k].shard = sh;
                w[k].pass = t.shards[sh].pass;
                w[k].batch = t.shards[sh].batch;
            }
        }
        check_leases(&t, w, recorded, ctx);
    }
    cr_assert(keel_shards_all_done(&t), "seed %" PRIu64 ": job not done after %u steps", seed,
              step);
    keel_shards_release(&t);
    return step;
}

Test(jobs, random_workers_never_share_a_shard_or_lose_progress)
{
    uint64_t t = (uint64_t)time(NULL), seed;
    const char *env = getenv("KEEL_TEST_SEED");
    unsigned total = 0;

    seed = env && *env ? strtoull(env, NULL, 0) : rng_next(&t) % 1000000007u;
    fprintf(stderr, "jobs random test: seed %" PRIu64 " (KEEL_TEST_SEED=%" PRIu64 " to replay)\n",
            seed, seed);
    for (unsigned i = 0; i < 200; i++)
        total += run_job(seed + i);
    fprintf(stderr, "jobs random test: 200 jobs finished in %u steps\n", total);
}
