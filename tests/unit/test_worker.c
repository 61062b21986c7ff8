/*
 * test_worker.c - keel-worker's pure parts: keys grouped by the primary of
 * their range, the seq rule and positions, records into a dense batch, and
 * the JSON of progress and evaluation reports.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "keel/progress.h"
#include "keel/range.h"
#include "keel/record.h"
#include "worker.h"

static struct keel_error err;

static void setup(void)
{
    keel_error_init(&err);
}

TestSuite(worker, .init = setup);

static keel_assign *assignment(const char *const *servers, size_t n, unsigned replication)
{
    keel_assign *a = keel_assign_new(replication);

    cr_assert_not_null(a);
    cr_assert_eq(keel_assign_update(a, servers, n, NULL, &err), 0, "%s", err.msg);
    return a;
}

/* ---- routing ------------------------------------------------------------------ */

Test(worker, every_key_goes_to_the_primary_of_its_range_in_key_order)
{
    static const char *const servers[] = {"s2", "s1", "s3"};
    keel_assign *a = assignment(servers, 3, 2);
    struct keel_route_group *g;
    uint64_t keys[300];
    uint32_t rows[300];
    size_t ng, total = 0;

    for (uint32_t i = 0; i < 300; i++) {
        keys[i] = keel_key_make(7, i);
        rows[i] = i;
    }
    cr_assert_eq(keel_route_group(a, keys, rows, 300, &g, &ng, &err), 0, "%s", err.msg);
    cr_assert_eq(ng, 3, "300 keys spread over the three primaries");
    for (size_t s = 0; s < ng; s++) {
        if (s > 0)
            cr_assert_lt(strcmp(g[s - 1].server, g[s].server), 0, "groups in server id order");
        cr_assert_gt(g[s].nkeys, 0);
        for (uint32_t k = 0; k < g[s].nkeys; k++) {
            cr_assert_str_eq(keel_assign_primary(a, keel_range_of(g[s].keys[k])), g[s].server);
            cr_assert_eq(g[s].keys[k], keel_key_make(7, g[s].rows[k]), "a row goes with its key");
            if (k > 0)
                cr_assert_lt(g[s].keys[k - 1], g[s].keys[k], "keys ascending within a group");
        }
        total += g[s].nkeys;
    }
    cr_assert_eq(total, 300, "every key in exactly one group");
    keel_route_groups_free(g, ng);
    keel_assign_free(a);
}

Test(worker, no_primary_is_unavailable_and_allocates_nothing)
{
    keel_assign *a = keel_assign_new(1); /* no server: every range empty */
    struct keel_route_group *g = (void *)1;
    uint64_t key = keel_key_make(1, 0);
    uint32_t row = 0;
    size_t ng = 5;

    cr_assert_eq(keel_route_group(a, &key, &row, 1, &g, &ng, &err), KEEL_EUNAVAILABLE);
    cr_assert(strstr(err.msg, "has no primary") != NULL, "%s", err.msg);
    cr_assert_null(g);
    cr_assert_eq(ng, 0);
    cr_assert_eq(keel_route_group(a, &key, &row, 0, &g, &ng, &err), 0, "no keys: nothing to route");
    cr_assert_eq(ng, 0);
    keel_assign_free(a);
}

Test(worker, route_of_a_model_covers_every_row_and_lists_every_primary)
{
    static const char *const servers[] = {"a", "b", "c", "d"};
    keel_assign *a = assignment(servers, 4, 1);
    struct keel_model m;
    struct keel_route r;

    cr_assert_eq(keel_model_parse(&m, "mlp:784-256-128-10", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_route_build(&r, &m, a, &err), 0, "%s", err.msg);
    cr_assert_eq(r.ntables, 3);
    cr_assert_eq(r.version, keel_assign_version(a));
    cr_assert_eq(r.nprimaries, 4);
    for (size_t p = 0; p < 4; p++)
        cr_assert_str_eq(r.primaries[p], servers[p]);
    for (unsigned t = 0; t < 3; t++) {
        unsigned char *seen = calloc(keel_model_rows(&m, t), 1);
        uint32_t n = 0;

        for (size_t s = 0; s < r.ngroups[t]; s++)
            for (uint32_t k = 0; k < r.groups[t][s].nkeys; k++) {
                uint32_t row = r.groups[t][s].rows[k];

                cr_assert_lt(row, keel_model_rows(&m, t));
                cr_assert_eq(r.groups[t][s].keys[k], keel_model_key(keel_model_table_id(t), row));
                cr_assert(!seen[row], "table %u row %u routed twice", t + 1, row);
                seen[row] = 1;
                n++;
            }
        cr_assert_eq(n, keel_model_rows(&m, t), "table %u: every row routed", t + 1);
        free(seen);
    }
    keel_route_release(&r);
    keel_route_release(&r); /* safe on a released route */
    keel_assign_free(a);
}

Test(worker, a_small_table_still_lists_every_primary_for_the_clock)
{
    static const char *const servers[] = {"s1", "s2", "s3", "s4", "s5", "s6", "s7", "s8"};
    keel_assign *a = assignment(servers, 8, 1);
    struct keel_model m;
    struct keel_route r;
    size_t holding = 0;

    /* 3 rows cannot reach 8 servers, but every primary must still get a push per clock. */
    cr_assert_eq(keel_model_parse(&m, "softmax:4-3", &err), 0, "%s", err.msg);
    cr_assert_eq(keel_route_build(&r, &m, a, &err), 0, "%s", err.msg);
    cr_assert_eq(r.nprimaries, 8);
    for (size_t s = 0; s < r.ngroups[0]; s++)
        holding++;
    cr_assert_leq(holding, 3);
    keel_route_release(&r);
    keel_assign_free(a);
}

/* ---- positions ------------------------------------------------------------------ */

Test(worker, seq_names_the_position_after_the_batch_and_is_never_zero)
{
    const uint32_t nbatches = 7;
    uint64_t prev = 0;

    cr_assert_eq(keel_worker_seq(0, 0), 1, "the first batch has seq 1: servers refuse 0");
    for (uint32_t pass = 0; pass < 3; pass++)
        for (uint32_t b = 0; b < nbatches; b++) {
            uint64_t s = keel_worker_seq(pass, b);

            cr_assert_eq(s, keel_shard_seq(pass, b + 1));
            cr_assert_gt(s, prev, "seq strictly increasing at pass %u batch %u", pass, b);
            prev = s;
        }
    /* The last batch of a pass sits below the first of the next. */
    cr_assert_lt(keel_worker_seq(0, UINT32_MAX - 1), keel_worker_seq(1, 0));
}

Test(worker, positions_move_by_batch_and_roll_over_at_the_end_of_a_pass)
{
    uint32_t pass = 0, batch = 0;

    cr_assert_eq(keel_worker_nbatches(30000, 100), 300);
    cr_assert_eq(keel_worker_nbatches(30001, 100), 301);
    cr_assert_eq(keel_worker_nbatches(0, 100), 0);
    cr_assert_eq(keel_worker_nbatches(1, 100), 1);
    keel_worker_next(3, &pass, &batch);
    cr_assert(pass == 0 && batch == 1);
    keel_worker_next(3, &pass, &batch);
    cr_assert(pass == 0 && batch == 2);
    keel_worker_next(3, &pass, &batch);
    cr_assert(pass == 1 && batch == 0, "after the last batch: the next pass");
    /* The recorded position after a batch equals the seq of that batch. */
    pass = 4;
    batch = 1;
    {
        uint64_t s = keel_worker_seq(pass, batch);

        keel_worker_next(3, &pass, &batch);
        cr_assert_eq(keel_shard_seq(pass, batch), s);
    }
}

/* ---- batches --------------------------------------------------------------------- */

struct run_buf {
    struct keel_buf data;
    uint32_t offsets[16];
    uint32_t n;
};

static void add_record(struct run_buf *rb)
{
    rb->offsets[++rb->n] = (uint32_t)rb->data.len;
}

static struct keel_record_run as_run(const struct run_buf *rb)
{
    return (struct keel_record_run){rb->n, rb->offsets, rb->data.buf, rb->data.len};
}

Test(worker, records_of_every_encoding_become_dense_rows_with_pixels_scaled)
{
    struct run_buf rb = {KEEL_BUF_INIT, {0}, 0};
    const uint8_t px[4] = {0, 51, 255, 1};
    const float f[4] = {0.5f, -2.0f, 3.0f, 0.0f};
    const uint32_t idx[2] = {1, 3};
    const float val[2] = {7.0f, -1.5f};
    float x[3 * 4];
    uint32_t labels[3];
    struct keel_record_run run;

    cr_assert_eq(keel_record_encode_dense_u8(&rb.data, 2, px, 4, &err), 0);
    add_record(&rb);
    cr_assert_eq(keel_record_encode_dense_f32(&rb.data, 0, f, 4, &err), 0);
    add_record(&rb);
    cr_assert_eq(keel_record_encode_sparse_f32(&rb.data, 1, idx, val, 2, &err), 0);
    add_record(&rb);
    run = as_run(&rb);
    cr_assert_eq(keel_worker_batch(&run, 0, 3, 4, 3, x, labels, &err), 0, "%s", err.msg);
    cr_assert_eq(labels[0], 2);
    cr_assert_eq(labels[1], 0);
    cr_assert_eq(labels[2], 1);
    for (int j = 0; j < 4; j++)
        cr_assert_float_eq(x[j], px[j] / 255.0f, 1e-7, "pixel %d scaled to [0, 1]", j);
    cr_assert_eq(x[2], 1.0f, "255 becomes exactly 1");
    for (int j = 0; j < 4; j++)
        cr_assert_eq(x[4 + j], f[j], "dense f32 values as they are");
    cr_assert(x[8] == 0 && x[9] == 7.0f && x[10] == 0 && x[11] == -1.5f, "sparse expanded");
    /* A part of the run, from an offset. */
    cr_assert_eq(keel_worker_batch(&run, 1, 2, 4, 3, x, labels, &err), 0, "%s", err.msg);
    cr_assert_eq(labels[0], 0);
    cr_assert_eq(x[0], 0.5f);
    keel_buf_release(&rb.data);
}

Test(worker, bad_records_are_refused_naming_the_record)
{
    struct run_buf rb = {KEEL_BUF_INIT, {0}, 0};
    const float f3[3] = {1, 2, 3};
    const float f4[4] = {1, 2, 3, 4};
    float x[3 * 4];
    uint32_t labels[3];
    struct keel_record_run run;

    cr_assert_eq(keel_record_encode_dense_f32(&rb.data, 1, f4, 4, &err), 0);
    add_record(&rb);
    cr_assert_eq(keel_record_encode_dense_f32(&rb.data, 9, f4, 4, &err), 0); /* label 9 */
    add_record(&rb);
    cr_assert_eq(keel_record_encode_dense_f32(&rb.data, 1, f3, 3, &err), 0); /* 3 features */
    add_record(&rb);
    run = as_run(&rb);

    cr_assert_eq(keel_worker_batch(&run, 1, 1, 4, 3, x, labels, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "record 1: label 9 is not below the model's 3 classes") != NULL, "%s",
              err.msg);
    cr_assert_eq(keel_worker_batch(&run, 2, 1, 4, 3, x, labels, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "record 2: ") == err.msg, "%s", err.msg);
    cr_assert_eq(keel_worker_batch(&run, 2, 2, 4, 3, x, labels, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "are not all among the 3 received") != NULL, "%s", err.msg);
    cr_assert_eq(keel_worker_batch(&run, UINT32_MAX, 2, 4, 3, x, labels, &err), KEEL_EINVAL);

    /* Offsets that go backwards or past the data are refused, not followed. */
    rb.offsets[1] = (uint32_t)rb.data.len + 4;
    run = as_run(&rb);
    cr_assert_eq(keel_worker_batch(&run, 0, 1, 4, 3, x, labels, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "do not lie in the") != NULL, "%s", err.msg);
    rb.offsets[1] = 8;
    run = as_run(&rb);
    cr_assert_eq(keel_worker_batch(&run, 0, 1, 4, 3, x, labels, &err), KEEL_ESHORTBODY,
                 "a record cut short: %s", err.msg);
    keel_buf_release(&rb.data);
}

Test(worker, evaluation_sums_what_one_forward_pass_over_the_records_measures)
{
    struct run_buf rb = {KEEL_BUF_INIT, {0}, 0};
    struct keel_model m;
    struct keel_model_params params;
    struct keel_model_stats ms;
    struct keel_eval_sums sums = {0}, before;
    keel_model_work *w;
    float x[4 * 4], f[4];
    uint32_t labels[4];
    struct keel_record_run run;

    cr_assert_eq(keel_model_parse(&m, "mlp:4-5-3", &err), 0, "%s", err.msg);
    keel_model_params_init(&params, &m);
    keel_model_params_fill(&params, &m, 5);
    w = keel_model_work_new(&m, 4);
    for (uint32_t r = 0; r < 4; r++) {
        for (int j = 0; j < 4; j++)
            f[j] = (float)((int)(r * 5 + (uint32_t)j * 3) % 7 - 3);
        cr_assert_eq(keel_record_encode_dense_f32(&rb.data, r % 3, f, 4, &err), 0);
        add_record(&rb);
    }
    run = as_run(&rb);
    /* The reference: one forward pass over all four records. */
    cr_assert_eq(keel_worker_batch(&run, 0, 4, 4, 3, x, labels, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_model_eval(&m, w, &params, x, labels, 4, &ms, &err), 0, "%s", err.msg);
    /* In two parts, as the worker evaluates a test set read in chunks. */
    cr_assert_eq(keel_worker_eval(&m, w, &params, &run, 0, 3, x, labels, &sums, &err), 0, "%s",
                 err.msg);
    cr_assert_eq(sums.n, 3);
    cr_assert_eq(keel_worker_eval(&m, w, &params, &run, 3, 1, x, labels, &sums, &err), 0, "%s",
                 err.msg);
    cr_assert_eq(sums.n, 4);
    cr_assert_eq(sums.correct, ms.ncorrect);
    cr_assert_float_eq(sums.loss, ms.loss * 4, 1e-5, "summed loss %g, one pass %g", sums.loss,
                       ms.loss * 4);
    /* Records past the end of the run: refused, and nothing is added. */
    before = sums;
    cr_assert_eq(keel_worker_eval(&m, w, &params, &run, 3, 2, x, labels, &sums, &err), KEEL_EINVAL);
    cr_assert(sums.n == before.n && sums.correct == before.correct && sums.loss == before.loss);
    keel_model_work_free(w);
    keel_model_params_release(&params);
    keel_buf_release(&rb.data);
}

/* ---- progress and eval JSON ----------------------------------------------------- */

Test(worker, progress_encodes_canonically_and_round_trips)
{
    struct keel_progress p = {"w1", 42, 2, 17, 7}, q;
    struct keel_buf b = KEEL_BUF_INIT;

    keel_progress_encode(&p, &b);
    cr_assert_str_eq((const char *)b.buf,
                     "{\"batch\":17,\"incarnation\":42,\"lease\":7,\"pass\":2,\"worker\":\"w1\"}");
    cr_assert_eq(keel_progress_decode(b.buf, b.len, &q, &err), 0, "%s", err.msg);
    cr_assert_str_eq(q.worker, "w1");
    cr_assert(q.incarnation == 42 && q.pass == 2 && q.batch == 17 && q.lease == 7);
    keel_buf_release(&b);
}

Test(worker, eval_encodes_canonically_and_round_trips)
{
    struct keel_eval e = {"w2", 3, 0.8412, 0.4431, 10000, 1767225600000}, f;
    struct keel_buf b = KEEL_BUF_INIT;

    keel_eval_encode(&e, &b);
    cr_assert_str_eq((const char *)b.buf,
                     "{\"accuracy\":0.8412,\"examples\":10000,\"loss\":0.4431,\"pass\":3,"
                     "\"time_ms\":1767225600000,\"worker\":\"w2\"}");
    cr_assert_eq(keel_eval_decode(b.buf, b.len, &f, &err), 0, "%s", err.msg);
    cr_assert_str_eq(f.worker, "w2");
    cr_assert(f.pass == 3 && f.examples == 10000 && f.time_ms == 1767225600000ull);
    cr_assert_float_eq(f.accuracy, 0.8412, 1e-12);
    cr_assert_float_eq(f.loss, 0.4431, 1e-12);
    keel_buf_release(&b);
}

struct bad_json {
    char json[200];
    char error[80];
};

ParameterizedTestParameters(worker, bad_progress_is_refused_naming_the_field)
{
    static struct bad_json cases[] = {
        {"", "progress: not JSON"},
        {"[]", "progress: not a JSON object"},
        {"{\"batch\":1,\"incarnation\":2,\"lease\":1,\"pass\":0}", "progress: worker: missing"},
        {"{\"batch\":1,\"incarnation\":2,\"lease\":1,\"pass\":0,\"worker\":\"w1\",\"x\":1}",
         "progress: unknown key 'x'"},
        {"{\"batch\":1,\"incarnation\":2,\"pass\":0,\"worker\":\"w1\"}",
         "progress: lease: missing"},
        {"{\"batch\":1,\"incarnation\":2,\"lease\":-1,\"pass\":0,\"worker\":\"w1\"}",
         "progress: lease: must be an integer"},
        {"{\"batch\":-1,\"incarnation\":2,\"lease\":1,\"pass\":0,\"worker\":\"w1\"}",
         "progress: batch: must be an integer from 0 to 4294967295"},
        {"{\"batch\":1,\"incarnation\":2,\"lease\":1,\"pass\":4294967296,\"worker\":\"w1\"}",
         "progress: pass: must be an integer"},
        {"{\"batch\":1,\"incarnation\":\"2\",\"lease\":1,\"pass\":0,\"worker\":\"w1\"}",
         "progress: incarnation: must be an integer"},
        {"{\"batch\":1,\"incarnation\":2,\"lease\":1,\"pass\":0,\"worker\":\"w 1\"}",
         "progress: worker: must be an id"},
        {"{\"batch\":1,\"batch\":2,\"incarnation\":2,\"lease\":1,\"pass\":0,\"worker\":\"w1\"}",
         "progress: not JSON"},
    };
    return cr_make_param_array(struct bad_json, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_json *c, worker, bad_progress_is_refused_naming_the_field)
{
    struct keel_progress p;

    keel_error_init(&err);
    cr_assert_eq(keel_progress_decode(c->json, strlen(c->json), &p, &err), KEEL_ECORRUPT, "%s",
                 c->json);
    cr_assert(strstr(err.msg, c->error) == err.msg, "'%s' gives '%s'", c->json, err.msg);
    cr_assert_str_eq(p.worker, "", "nothing half-decoded is left");
}

ParameterizedTestParameters(worker, bad_eval_is_refused_naming_the_field)
{
    static struct bad_json cases[] = {
        {"{\"accuracy\":1.5,\"examples\":1,\"loss\":0.1,\"pass\":0,\"time_ms\":1,\"worker\":\"w\"}",
         "eval: accuracy: must be a number from 0 to 1"},
        {"{\"accuracy\":0.5,\"examples\":1,\"loss\":-1,\"pass\":0,\"time_ms\":1,\"worker\":\"w\"}",
         "eval: loss: must be a number from 0"},
        {"{\"accuracy\":0.5,\"examples\":0,\"loss\":1,\"pass\":0,\"time_ms\":1,\"worker\":\"w\"}",
         "eval: examples: must be at least 1"},
        {"{\"accuracy\":\"x\",\"examples\":1,\"loss\":1,\"pass\":0,\"time_ms\":1,\"worker\":\"w\"}",
         "eval: accuracy: must be a number"},
        {"{\"accuracy\":0.5,\"examples\":1,\"loss\":1,\"pass\":0,\"worker\":\"w\"}",
         "eval: time_ms: missing"},
        {"{\"accuracy\":0.5,\"examples\":1,\"loss\":1,\"pass\":0.5,\"time_ms\":1,\"worker\":\"w\"}",
         "eval: pass: must be an integer"},
    };
    return cr_make_param_array(struct bad_json, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_json *c, worker, bad_eval_is_refused_naming_the_field)
{
    struct keel_eval e;

    keel_error_init(&err);
    cr_assert_eq(keel_eval_decode(c->json, strlen(c->json), &e, &err), KEEL_ECORRUPT, "%s",
                 c->json);
    cr_assert(strstr(err.msg, c->error) == err.msg, "'%s' gives '%s'", c->json, err.msg);
}

Test(worker, oversized_reports_are_refused_before_parsing)
{
    char big[KEEL_PROGRESS_MAX_JSON + 2];
    struct keel_progress p;

    memset(big, ' ', sizeof(big));
    cr_assert_eq(keel_progress_decode(big, sizeof(big), &p, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "more than the 1024 allowed") != NULL, "%s", err.msg);
}

Test(worker, clocks_follow_the_data_position_so_shards_stay_in_step)
{
    /* Shard 0 has 5 batches a pass, another shard 4: they meet again at every pass. */
    cr_assert_eq(keel_worker_clock(5, 0, 0), 0);
    cr_assert_eq(keel_worker_clock(5, 0, 4), 4);
    cr_assert_eq(keel_worker_clock(5, 1, 0), 5, "pass 1 starts at the same clock for every shard");
    cr_assert_eq(keel_worker_clock(5, 2, 3), 13);
    /* Resuming at a recorded position gives the clock the batch had before. */
    for (uint32_t p = 0; p < 3; p++)
        for (uint32_t b = 0; b < 5; b++) {
            uint32_t np = p, nb = b;

            keel_worker_next(5, &np, &nb);
            cr_assert_eq(keel_worker_clock(5, np, nb), keel_worker_clock(5, p, b) + 1);
        }
}

/*
 * A checkpoint at clock C holds the batches at clocks below C: for each
 * shard, the seq of its last such batch (keel_shard_seq_before), the seq the
 * worker pushed that batch with.
 */
Test(worker, the_position_before_a_clock_is_the_last_batch_pushed_below_it)
{
    /* nb_max 5; a shard of 5 batches and one of 4. */
    for (uint32_t nb = 4; nb <= 5; nb++)
        for (uint32_t p = 0; p < 3; p++)
            for (uint32_t b = 0; b < nb; b++) {
                uint64_t c = keel_worker_clock(5, p, b);

                cr_assert_eq(keel_shard_seq_before(c + 1, 5, nb), keel_worker_seq(p, b),
                             "nb %u pass %u batch %u", nb, p, b);
            }
    /* Clock 5 (pass 1, batch 0) is one the 4-batch shard has no batch of: it stands
     * after its last batch of pass 0, as after clock 4. */
    cr_assert_eq(keel_shard_seq_before(5, 5, 4), keel_worker_seq(0, 3));
    cr_assert_eq(keel_shard_seq_before(5, 5, 5), keel_worker_seq(0, 4));
    cr_assert_eq(keel_shard_seq_before(6, 5, 4), keel_worker_seq(1, 0));
}
