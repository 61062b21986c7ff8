/*
 * test_model.c - the dense models: spec parsing, the parameter layout, the
 * forward pass on values worked out by hand, finite-difference gradient
 * checks, the initializers' determinism and statistics, and learning in
 * process (no network) on synthetic data and on a slice of Fashion-MNIST
 * with the server-side Adam.
 */
#include <cblas.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/buf.h"
#include "keel/model.h"
#include "keel/optim.h"

#define FMNIST_DIR "/usr/share/datasets/fashion-mnist"

/* One BLAS thread: the tests run next to other builds on few cores. */
static void one_thread(void)
{
    openblas_set_num_threads(1);
}

static struct keel_model parse(const char *spec)
{
    struct keel_model m;
    struct keel_error err = {0};

    cr_assert_eq(keel_model_parse(&m, spec, &err), 0, "%s: %s", spec, err.msg);
    return m;
}

/* ---- Specs and layout ------------------------------------------------- */

Test(model, parse_and_format_round_trip)
{
    static const char *const specs[] = {"softmax:784-10", "mlp:784-256-128-10", "mlp:5-3",
                                        "mlp:1-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1"};

    for (size_t i = 0; i < sizeof(specs) / sizeof(specs[0]); i++) {
        struct keel_model m = parse(specs[i]);
        struct keel_buf out = KEEL_BUF_INIT;

        keel_model_format(&m, &out);
        cr_assert_str_eq((char *)out.buf, specs[i]);
        keel_buf_release(&out);
    }
}

Test(model, parse_rejects_bad_specs_naming_them)
{
    static const struct {
        const char *spec, *want;
    } bad[] = {
        {"cnn:1-2", "must be softmax:IN-OUT or mlp:"},
        {"784-10", "must be softmax:IN-OUT or mlp:"},
        {"mlp:", "layer sizes must be decimal numbers joined by '-'"},
        {"mlp:784", "needs 2 to 17"},
        {"mlp:784--10", "layer sizes must be decimal numbers joined by '-'"},
        {"mlp:784-10-", "layer sizes must be decimal numbers joined by '-'"},
        {"mlp:784-10x", "layer sizes must be decimal numbers joined by '-'"},
        {"mlp: 784-10", "layer sizes must be decimal numbers"},
        {"mlp:+784-10", "layer sizes must be decimal numbers"},
        {"mlp:0-10", "layer size 1 is 0"},
        {"mlp:784-0", "layer size 2 is 0"},
        {"mlp:65537-10", "layer size 1 is 65537, must be 1 to 65536"},
        {"mlp:99999999999999999999999-10", "layer sizes must be decimal numbers"},
        {"softmax:784-256-10", "exactly 2 layer sizes"},
        {"mlp:1-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1", "at most 17 layer sizes"},
        {"mlp:65536-65536-65536", "parameters"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct keel_model m;
        struct keel_error err = {0};

        cr_assert_eq(keel_model_parse(&m, bad[i].spec, &err), KEEL_EINVAL, "'%s'", bad[i].spec);
        cr_assert(strstr(err.msg, bad[i].want) != NULL, "'%s': message '%s' lacks '%s'",
                  bad[i].spec, err.msg, bad[i].want);
        cr_assert(strstr(err.msg, "model") != NULL, "'%s': '%s' names no model", bad[i].spec,
                  err.msg);
    }
}

Test(model, init_from_layer_sizes)
{
    const uint32_t sizes[] = {784, 256, 128, 10};
    struct keel_model m;
    struct keel_error err = {0};

    cr_assert_eq(keel_model_init(&m, KEEL_MODEL_TYPE_MLP, sizes, 4, &err), 0, "%s", err.msg);
    cr_assert_eq(m.nlayers, 3);
    cr_assert_eq(keel_model_init(&m, KEEL_MODEL_TYPE_SOFTMAX, sizes, 4, &err), KEEL_EINVAL);
    cr_assert_eq(keel_model_init(&m, KEEL_MODEL_TYPE_SOFTMAX, sizes, 2, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_model_init(&m, (enum keel_model_type)7, sizes, 2, &err), KEEL_EINVAL);
    cr_assert_eq(keel_model_init(&m, KEEL_MODEL_TYPE_MLP, sizes, 1, &err), KEEL_EINVAL);
}

Test(model, layout_of_the_reference_mlp)
{
    struct keel_model m = parse("mlp:784-256-128-10");
    uint64_t keys[256];

    cr_assert_eq(keel_model_ntables(&m), 3);
    cr_assert_eq(keel_model_table_id(0), 1);
    cr_assert_eq(keel_model_table_id(2), 3);
    cr_assert_eq(keel_model_rows(&m, 0), 256);
    cr_assert_eq(keel_model_row_width(&m, 0), 785);
    cr_assert_eq(keel_model_rows(&m, 1), 128);
    cr_assert_eq(keel_model_row_width(&m, 1), 257);
    cr_assert_eq(keel_model_rows(&m, 2), 10);
    cr_assert_eq(keel_model_row_width(&m, 2), 129);
    cr_assert_eq(keel_model_table_floats(&m, 0), 256 * 785);
    cr_assert_eq(keel_model_nparams(&m), 256 * 785 + 128 * 257 + 10 * 129);

    keel_model_keys(&m, 1, keys);
    cr_assert_eq(keys[0], UINT64_C(2) << 48);
    cr_assert_eq(keys[127], (UINT64_C(2) << 48) | 127);
    for (int i = 1; i < 128; i++)
        cr_assert_gt(keys[i], keys[i - 1], "keys ascending");
    cr_assert_eq(keel_model_key(3, 9), (UINT64_C(3) << 48) | 9);
}

/* ---- Forward pass ----------------------------------------------------- */

/*
 * softmax:2-2 with rows [w00 w01 b0] = [1 2 0.5] and [w10 w11 b1] = [-1 0 0]:
 * for x = (1, 1), z = (3.5, -1); for x = (0, -1), z = (-1.5, 0).
 */
Test(model, softmax_forward_by_hand_with_bias_last)
{
    struct keel_model m = parse("softmax:2-2");
    struct keel_model_params p;
    struct keel_model_stats st;
    keel_model_work *w = keel_model_work_new(&m, 4);
    const float table[6] = {1, 2, 0.5f, -1, 0, 0};
    const float x[4] = {1, 1, 0, -1};
    const uint32_t y[2] = {0, 0};
    const float *probs;
    double p00 = 1.0 / (1.0 + exp(-4.5)), p10 = 1.0 / (1.0 + exp(1.5));
    double want_loss = (-log(p00) - log(p10)) / 2;

    one_thread();
    keel_model_params_init(&p, &m);
    memcpy(p.table[0], table, sizeof(table));
    cr_assert_eq(keel_model_eval(&m, w, &p, x, y, 2, &st, NULL), 0);
    probs = keel_model_probs(w);
    cr_assert_float_eq(probs[0], p00, 1e-6);
    cr_assert_float_eq(probs[1], 1 - p00, 1e-6);
    cr_assert_float_eq(probs[2], p10, 1e-6);
    cr_assert_float_eq(probs[3], 1 - p10, 1e-6);
    cr_assert_float_eq(st.loss, want_loss, 1e-6);
    cr_assert_eq(st.ncorrect, 1, "sample 0 right, sample 1 wrong");
    cr_assert_eq(st.n, 2);
    keel_model_work_free(w);
    keel_model_params_release(&p);
}

/* relu(z) in the hidden layer, and the ReLU's zero for a negative input. */
Test(model, mlp_forward_by_hand)
{
    struct keel_model m = parse("mlp:1-2-2");
    struct keel_model_params p;
    struct keel_model_stats st;
    keel_model_work *w = keel_model_work_new(&m, 1);
    /* hidden h = relu(2x + 1, -x); logits (h0 + h1, 0). */
    const float t1[4] = {2, 1, -1, 0}, t2[6] = {1, 1, 0, 0, 0, 0};
    const float x1[1] = {1}, x2[1] = {-3};
    const uint32_t y[1] = {1};

    one_thread();
    keel_model_params_init(&p, &m);
    memcpy(p.table[0], t1, sizeof(t1));
    memcpy(p.table[1], t2, sizeof(t2));
    /* x = 1: h = (3, 0), z = (3, 0): loss = log(1 + e^3) */
    cr_assert_eq(keel_model_eval(&m, w, &p, x1, y, 1, &st, NULL), 0);
    cr_assert_float_eq(st.loss, log(1 + exp(3.0)), 1e-5);
    cr_assert_eq(st.ncorrect, 0);
    /* x = -3: h = (0, 3), z = (3, 0) again */
    cr_assert_eq(keel_model_eval(&m, w, &p, x2, y, 1, &st, NULL), 0);
    cr_assert_float_eq(st.loss, log(1 + exp(3.0)), 1e-5);
    keel_model_work_free(w);
    keel_model_params_release(&p);
}

Test(model, softmax_is_stable_for_huge_logits)
{
    struct keel_model m = parse("softmax:1-3");
    struct keel_model_params p;
    struct keel_model_stats st;
    keel_model_work *w = keel_model_work_new(&m, 1);
    const float t[6] = {1000, 0, -1000, 0, 0, 0}; /* z = (1000x, -1000x, 0) */
    const float x[1] = {1};
    const uint32_t y1[1] = {0}, y2[1] = {1};

    one_thread();
    keel_model_params_init(&p, &m);
    memcpy(p.table[0], t, sizeof(t));
    cr_assert_eq(keel_model_eval(&m, w, &p, x, y1, 1, &st, NULL), 0);
    cr_assert(isfinite(st.loss));
    cr_assert_float_eq(st.loss, 0.0, 1e-6);
    cr_assert_eq(keel_model_probs(w)[0], 1.0f);
    cr_assert_eq(st.ncorrect, 1);
    cr_assert_eq(keel_model_eval(&m, w, &p, x, y2, 1, &st, NULL), 0);
    cr_assert_float_eq(st.loss, 2000.0, 1e-3, "loss = z_max - z_y, not inf");
    keel_model_work_free(w);
    keel_model_params_release(&p);
}

Test(model, argmax_ties_go_to_the_lowest_class)
{
    struct keel_model m = parse("softmax:1-3");
    struct keel_model_params p;
    struct keel_model_stats st;
    keel_model_work *w = keel_model_work_new(&m, 1);
    const float x[1] = {1};
    const uint32_t y0[1] = {0}, y1[1] = {1};

    keel_model_params_init(&p, &m); /* all logits 0 */
    cr_assert_eq(keel_model_eval(&m, w, &p, x, y0, 1, &st, NULL), 0);
    cr_assert_eq(st.ncorrect, 1);
    cr_assert_float_eq(st.loss, log(3.0), 1e-6);
    cr_assert_eq(keel_model_eval(&m, w, &p, x, y1, 1, &st, NULL), 0);
    cr_assert_eq(st.ncorrect, 0);
    keel_model_work_free(w);
    keel_model_params_release(&p);
}

Test(model, bad_batches_are_refused)
{
    struct keel_model m = parse("mlp:2-3-4");
    struct keel_model other = parse("softmax:2-4");
    struct keel_model_params p, g;
    struct keel_model_stats st;
    struct keel_error err = {0};
    keel_model_work *w = keel_model_work_new(&m, 2), *wo = keel_model_work_new(&other, 2);
    const float x[6] = {0};
    const uint32_t y[3] = {0, 4, 1};

    keel_model_params_init(&p, &m);
    keel_model_params_init(&g, &m);
    cr_assert_eq(keel_model_eval(&m, w, &p, x, y, 0, &st, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "batch of 0") != NULL, "%s", err.msg);
    cr_assert_eq(keel_model_grad(&m, w, &p, x, y, 3, &g, &st, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "batch of 3 samples is not in 1..2") != NULL, "%s", err.msg);
    cr_assert_eq(keel_model_grad(&m, w, &p, x, y, 2, &g, &st, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "label 4 of sample 1") != NULL, "%s", err.msg);
    cr_assert_eq(st.n, 0, "stats zeroed on error");
    cr_assert_eq(keel_model_eval(&m, wo, &p, x, y, 1, &st, &err), KEEL_EINVAL);
    keel_model_work_free(w);
    keel_model_work_free(wo);
    keel_model_params_release(&p);
    keel_model_params_release(&g);
}

/* ---- Gradients -------------------------------------------------------- */

/* A deterministic float in [-1, 1) from `i` (splitmix64-style). */
static float det_uniform(uint64_t i)
{
    uint64_t z = i * UINT64_C(0x9e3779b97f4a7c15) + UINT64_C(0x1234567);

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    z ^= z >> 31;
    return (float)((double)(z >> 40) / (double)(1u << 24) * 2.0 - 1.0);
}

static double loss_of(const struct keel_model *m, keel_model_work *w,
                      const struct keel_model_params *p, const float *x, const uint32_t *y,
                      uint32_t n)
{
    struct keel_model_stats st;

    cr_assert_eq(keel_model_eval(m, w, p, x, y, n, &st, NULL), 0);
    return st.loss;
}

/*
 * A plain double-precision forward pass, written independently of the
 * library: the mean loss, and the smallest |pre-activation| of any hidden
 * unit over the batch (how close the batch is to a kink of a ReLU).
 */
static double reference_loss(const struct keel_model *m, const struct keel_model_params *p,
                             const float *x, const uint32_t *y, uint32_t n, double *min_abs_z)
{
    double loss = 0, a[2][64];

    *min_abs_z = INFINITY;
    for (uint32_t i = 0; i < n; i++) {
        double *in = a[0], *out = a[1], *tmp, max, sum = 0;

        for (uint32_t j = 0; j < m->sizes[0]; j++)
            in[j] = x[(size_t)i * m->sizes[0] + j];
        for (unsigned l = 0; l < m->nlayers; l++) {
            uint32_t s_in = m->sizes[l], s_out = m->sizes[l + 1];

            cr_assert_leq(s_out, 64);
            for (uint32_t r = 0; r < s_out; r++) {
                const float *row = p->table[l] + (size_t)r * (s_in + 1);
                double z = row[s_in];

                for (uint32_t j = 0; j < s_in; j++)
                    z += (double)row[j] * in[j];
                if (l + 1 < m->nlayers) {
                    *min_abs_z = fmin(*min_abs_z, fabs(z));
                    z = z > 0 ? z : 0;
                }
                out[r] = z;
            }
            tmp = in;
            in = out;
            out = tmp;
        }
        max = in[0];
        for (uint32_t k = 1; k < m->sizes[m->nlayers]; k++)
            max = fmax(max, in[k]);
        for (uint32_t k = 0; k < m->sizes[m->nlayers]; k++)
            sum += exp(in[k] - max);
        loss += log(sum) + max - in[y[i]];
    }
    return loss / n;
}

/*
 * Compare every analytic gradient with the central difference
 * (L(p + h) - L(p - h)) / 2h of the library's own float loss, per table:
 * relative error |num - ana| / (|num| + |ana|) over the table's vectors
 * below 1e-2, and every element within an absolute 2e-3 (float's rounding in
 * the loss, divided by 2h, is about 1e-4).  The parameters' seed is the first
 * that keeps every hidden pre-activation 0.02 away from the ReLU's kink, far
 * more than a step of h can move it, so that the loss is smooth there.
 */
static void gradient_check(const char *spec, uint32_t n)
{
    struct keel_model m = parse(spec);
    struct keel_model_params p, g;
    struct keel_model_stats st;
    keel_model_work *w = keel_model_work_new(&m, n);
    uint32_t s0 = m.sizes[0], classes = m.sizes[m.nlayers];
    float *x = keel_calloc((size_t)n * s0, sizeof(float));
    uint32_t *y = keel_calloc(n, sizeof(uint32_t));
    const float h = 1e-3f;
    double margin = 0, ref;
    uint64_t seed;

    one_thread();
    keel_model_params_init(&p, &m);
    keel_model_params_init(&g, &m);
    for (size_t i = 0; i < (size_t)n * s0; i++)
        x[i] = det_uniform(i + 99);
    for (uint32_t i = 0; i < n; i++)
        y[i] = i % classes;
    for (seed = 1; seed < 1000 && !(margin > 0.02); seed++) {
        keel_model_params_fill(&p, &m, seed);
        /* Non-zero biases, so that their gradients are tested off the origin too. */
        for (unsigned l = 0; l < m.nlayers; l++)
            for (uint32_t r = 0; r < keel_model_rows(&m, l); r++)
                p.table[l][(size_t)r * keel_model_row_width(&m, l) + m.sizes[l]] =
                    0.1f * det_uniform(1000 * l + r + seed);
        ref = reference_loss(&m, &p, x, y, n, &margin);
    }
    cr_assert_gt(margin, 0.02, "%s: no seed keeps the batch off the ReLU kinks", spec);

    cr_assert_eq(keel_model_grad(&m, w, &p, x, y, n, &g, &st, NULL), 0);
    cr_assert_float_eq(st.loss, ref, 1e-5, "%s: loss %g, reference %g", spec, st.loss, ref);
    for (unsigned l = 0; l < m.nlayers; l++) {
        size_t nf = keel_model_table_floats(&m, l);
        double diff2 = 0, sum2 = 0;

        for (size_t k = 0; k < nf; k++) {
            float saved = p.table[l][k];
            double lp, lm, num, ana = g.table[l][k];

            p.table[l][k] = saved + h;
            lp = loss_of(&m, w, &p, x, y, n);
            p.table[l][k] = saved - h;
            lm = loss_of(&m, w, &p, x, y, n);
            p.table[l][k] = saved;
            num = (lp - lm) / (2.0 * (double)h);
            cr_assert(fabs(num - ana) < 2e-3, "%s table %u float %zu: numeric %g, analytic %g",
                      spec, l + 1, k, num, ana);
            diff2 += (num - ana) * (num - ana);
            sum2 += (fabs(num) + fabs(ana)) * (fabs(num) + fabs(ana));
        }
        cr_assert(sum2 > 0, "%s table %u: gradient is all zero", spec, l + 1);
        cr_assert_lt(sqrt(diff2 / sum2), 1e-2, "%s table %u: relative error %g", spec, l + 1,
                     sqrt(diff2 / sum2));
        cr_log_info("%s table %u: relative error %.2e", spec, l + 1, sqrt(diff2 / sum2));
    }
    free(x);
    free(y);
    keel_model_work_free(w);
    keel_model_params_release(&p);
    keel_model_params_release(&g);
}

Test(model, softmax_gradient_matches_finite_differences)
{
    gradient_check("softmax:5-3", 4);
}

Test(model, mlp_gradient_matches_finite_differences)
{
    gradient_check("mlp:5-4-3", 6);
}

Test(model, deep_mlp_gradient_matches_finite_differences)
{
    gradient_check("mlp:5-4-4-3", 6);
}

/* The batch gradient is the mean of the per-sample gradients. */
Test(model, gradient_is_the_batch_mean)
{
    struct keel_model m = parse("mlp:3-4-2");
    struct keel_model_params p, gab, ga, gb;
    struct keel_model_stats st, sa, sb;
    keel_model_work *w = keel_model_work_new(&m, 2);
    const float x[6] = {0.5f, -1.0f, 2.0f, -0.3f, 0.8f, 0.1f};
    const uint32_t y[2] = {1, 0};

    one_thread();
    keel_model_params_init(&p, &m);
    keel_model_params_init(&gab, &m);
    keel_model_params_init(&ga, &m);
    keel_model_params_init(&gb, &m);
    keel_model_params_fill(&p, &m, 3);
    cr_assert_eq(keel_model_grad(&m, w, &p, x, y, 2, &gab, &st, NULL), 0);
    cr_assert_eq(keel_model_grad(&m, w, &p, x, y, 1, &ga, &sa, NULL), 0);
    cr_assert_eq(keel_model_grad(&m, w, &p, x + 3, y + 1, 1, &gb, &sb, NULL), 0);
    cr_assert_float_eq(st.loss, (sa.loss + sb.loss) / 2, 1e-6);
    for (unsigned l = 0; l < m.nlayers; l++)
        for (size_t k = 0; k < keel_model_table_floats(&m, l); k++)
            cr_assert_float_eq(gab.table[l][k], (ga.table[l][k] + gb.table[l][k]) / 2, 1e-6,
                               "table %u float %zu", l + 1, k);
    keel_model_work_free(w);
    keel_model_params_release(&p);
    keel_model_params_release(&gab);
    keel_model_params_release(&ga);
    keel_model_params_release(&gb);
}

/* ---- Initializers ----------------------------------------------------- */

static void init_row(const struct keel_initializer *ini, uint32_t table, uint64_t row, float *out,
                     uint32_t width)
{
    struct keel_error err = {0};

    cr_assert_eq(keel_initializer_row(ini, table, row, out, width, &err), 0, "%s", err.msg);
}

Test(init, rows_are_a_function_of_seed_table_and_row)
{
    struct keel_initializer ini = {.kind = KEEL_INITIALIZER_HE_NORMAL, .seed = 42, .fan_in = 64};
    float a[65], b[65], c[65];

    init_row(&ini, 1, 5, a, 65);
    for (uint64_t r = 0; r < 10; r++) /* other rows in between change nothing */
        init_row(&ini, 1, r, b, 65);
    init_row(&ini, 1, 5, b, 65);
    cr_assert_eq(memcmp(a, b, sizeof(a)), 0);

    init_row(&ini, 1, 6, c, 65);
    cr_assert_neq(memcmp(a, c, sizeof(a)), 0, "another row");
    init_row(&ini, 2, 5, c, 65);
    cr_assert_neq(memcmp(a, c, sizeof(a)), 0, "another table");
    ini.seed = 43;
    init_row(&ini, 1, 5, c, 65);
    cr_assert_neq(memcmp(a, c, sizeof(a)), 0, "another seed");
    /* A prefix of a wider row is the narrower row. */
    ini.seed = 42;
    init_row(&ini, 1, 5, c, 33);
    cr_assert_eq(memcmp(a, c, 33 * sizeof(float)), 0);
}

/*
 * Values pinned from an independent implementation of the generator
 * (splitmix64 words, Box-Muller in double), so that a change of it, which
 * would make servers of two versions disagree about new rows, fails here.
 */
Test(init, known_values_do_not_drift)
{
    struct keel_initializer uni = {.kind = KEEL_INITIALIZER_UNIFORM, .seed = 1, .scale = 1.0f};
    struct keel_initializer he = {
        .kind = KEEL_INITIALIZER_HE_NORMAL, .seed = 42, .fan_in = 4, .bias_last = 1};
    const float want_uni[3] = {0.162016436f, -0.534943759f, -0.424929947f};
    const float want_he[3] = {-0.0710884705f, 0.6580773f, -0.522519886f};
    float v[4];

    init_row(&uni, 1, 0, v, 3);
    for (int i = 0; i < 3; i++)
        cr_assert_float_eq(v[i], want_uni[i], 1e-7, "uniform %d: %.9g", i, (double)v[i]);
    init_row(&he, 3, 7, v, 4);
    for (int i = 0; i < 3; i++)
        cr_assert_float_eq(v[i], want_he[i], 1e-6, "he %d: %.9g", i, (double)v[i]);
    cr_assert_eq(v[3], 0.0f, "bias");
}

Test(init, bias_last_is_zero_and_zeros_are_zero)
{
    struct keel_initializer ini = {.kind = KEEL_INITIALIZER_GLOROT_NORMAL,
                                   .seed = 9,
                                   .fan_in = 4,
                                   .fan_out = 3,
                                   .bias_last = 1};
    float v[5];

    init_row(&ini, 3, 1, v, 5);
    cr_assert_eq(v[4], 0.0f);
    for (int i = 0; i < 4; i++)
        cr_assert_neq(v[i], 0.0f);
    ini.kind = KEEL_INITIALIZER_ZEROS;
    init_row(&ini, 3, 1, v, 5);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(v[i], 0.0f);
}

/* Mean and variance of `nrows` rows of `width` values of table 1. */
static void sample_stats(const struct keel_initializer *ini, uint32_t nrows, uint32_t width,
                         double *mean, double *var, double *within_sd, double sd)
{
    float *row = keel_calloc(width, sizeof(float));
    double s = 0, s2 = 0;
    size_t n = 0, within = 0;

    for (uint32_t r = 0; r < nrows; r++) {
        init_row(ini, 1, r, row, width);
        for (uint32_t j = 0; j < width; j++) {
            s += row[j];
            s2 += (double)row[j] * row[j];
            within += fabs(row[j]) < sd;
            n++;
        }
    }
    *mean = s / (double)n;
    *var = s2 / (double)n - *mean * *mean;
    *within_sd = (double)within / (double)n;
    free(row);
}

/* 200 rows x 500 = 100,000 values: the mean's sd is sd/316, the variance's 0.45%. */
Test(init, normals_have_the_right_mean_and_variance)
{
    struct keel_initializer he = {.kind = KEEL_INITIALIZER_HE_NORMAL, .seed = 5, .fan_in = 500};
    struct keel_initializer glorot = {
        .kind = KEEL_INITIALIZER_GLOROT_NORMAL, .seed = 5, .fan_in = 500, .fan_out = 300};
    double mean, var, within, sd;

    sd = sqrt(2.0 / 500);
    sample_stats(&he, 200, 500, &mean, &var, &within, sd);
    cr_assert_lt(fabs(mean), 0.02 * sd, "he mean %g", mean);
    cr_assert_lt(fabs(var / (sd * sd) - 1), 0.05, "he variance %g, want %g", var, sd * sd);
    cr_assert_lt(fabs(within - 0.6827), 0.01, "he: %g within one sd", within);

    sd = sqrt(2.0 / 800);
    sample_stats(&glorot, 200, 500, &mean, &var, &within, sd);
    cr_assert_lt(fabs(mean), 0.02 * sd, "glorot mean %g", mean);
    cr_assert_lt(fabs(var / (sd * sd) - 1), 0.05, "glorot variance %g, want %g", var, sd * sd);
    cr_assert_lt(fabs(within - 0.6827), 0.01, "glorot: %g within one sd", within);
}

/* Uniform on [-a, a]: in range, variance a^2 / 3, half the values within a/2. */
static void check_uniform(const struct keel_initializer *ini, double a)
{
    float row[500];
    double mean, var, within;

    for (uint32_t r = 0; r < 200; r++) {
        init_row(ini, 1, r, row, 500);
        for (int j = 0; j < 500; j++)
            cr_assert(fabsf(row[j]) <= (float)a, "%s: %g outside [-%g, %g]",
                      keel_initializer_name(ini->kind), (double)row[j], a, a);
    }
    sample_stats(ini, 200, 500, &mean, &var, &within, a / 2);
    cr_assert_lt(fabs(mean), 0.01 * a, "%s: mean %g", keel_initializer_name(ini->kind), mean);
    cr_assert_lt(fabs(var / (a * a / 3) - 1), 0.05, "%s: variance %g, want %g",
                 keel_initializer_name(ini->kind), var, a * a / 3);
    cr_assert_lt(fabs(within - 0.5), 0.01, "%s: %g within a/2", keel_initializer_name(ini->kind),
                 within);
}

Test(init, uniforms_are_in_range_with_the_right_variance)
{
    struct keel_initializer uni = {.kind = KEEL_INITIALIZER_UNIFORM, .seed = 11, .scale = 0.5f};
    struct keel_initializer glorot = {
        .kind = KEEL_INITIALIZER_GLOROT_UNIFORM, .seed = 12, .fan_in = 784, .fan_out = 256};
    struct keel_initializer he = {.kind = KEEL_INITIALIZER_HE_UNIFORM, .seed = 13, .fan_in = 128};

    check_uniform(&uni, 0.5);
    check_uniform(&glorot, sqrt(6.0 / (784 + 256)));
    check_uniform(&he, sqrt(6.0 / 128));
}

Test(init, invalid_initializers_are_refused)
{
    struct keel_initializer ini = {.kind = KEEL_INITIALIZER_UNIFORM, .scale = 0.0f};
    float v[3];
    struct keel_error err = {0};

    cr_assert_eq(keel_initializer_row(&ini, 1, 0, v, 3, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "scale") != NULL, "%s", err.msg);
    ini.scale = NAN;
    cr_assert_eq(keel_initializer_row(&ini, 1, 0, v, 3, &err), KEEL_EINVAL);
    ini.kind = KEEL_INITIALIZER_HE_NORMAL;
    cr_assert_eq(keel_initializer_row(&ini, 1, 0, v, 3, &err), KEEL_EINVAL);
    ini.kind = KEEL_INITIALIZER_HE_UNIFORM;
    cr_assert_eq(keel_initializer_row(&ini, 1, 0, v, 3, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "he_uniform initializer needs fan_in") != NULL, "%s", err.msg);
    ini.kind = KEEL_INITIALIZER_GLOROT_NORMAL;
    ini.fan_in = 3;
    cr_assert_eq(keel_initializer_row(&ini, 1, 0, v, 3, &err), KEEL_EINVAL);
    ini.kind = KEEL_INITIALIZER_GLOROT_UNIFORM;
    cr_assert_eq(keel_initializer_row(&ini, 1, 0, v, 3, &err), KEEL_EINVAL);
    ini.kind = (enum keel_initializer_kind)77;
    cr_assert_eq(keel_initializer_row(&ini, 1, 0, v, 3, &err), KEEL_EINVAL);
}

Test(init, parse_names)
{
    static const struct {
        const char *text;
        enum keel_initializer_kind kind;
    } good[] = {
        {"zeros", KEEL_INITIALIZER_ZEROS},
        {"glorot_uniform", KEEL_INITIALIZER_GLOROT_UNIFORM},
        {"he_uniform", KEEL_INITIALIZER_HE_UNIFORM},
        {"glorot_normal", KEEL_INITIALIZER_GLOROT_NORMAL},
        {"he_normal", KEEL_INITIALIZER_HE_NORMAL},
    };
    static const char *const bad[] = {
        "he",          "glorot", "normal",     "uniform", "uniform:-1", "uniform:", "uniform:1x",
        "uniform:nan", "ZEROS",  "he_normal ", ""};
    struct keel_initializer ini;
    struct keel_error err = {0};

    memset(&ini, 0, sizeof(ini));
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        cr_assert_eq(keel_initializer_parse(&ini, good[i].text, &err), 0, "%s", good[i].text);
        cr_assert_eq(ini.kind, good[i].kind, "%s", good[i].text);
        cr_assert_str_eq(keel_initializer_name(ini.kind), good[i].text);
    }
    cr_assert_eq(keel_initializer_parse(&ini, "uniform:0.05", &err), 0);
    cr_assert_eq(ini.kind, KEEL_INITIALIZER_UNIFORM);
    cr_assert_float_eq(ini.scale, 0.05f, 1e-9);
    cr_assert_str_eq(keel_initializer_name(ini.kind), "uniform");
    cr_assert_str_eq(keel_initializer_name((enum keel_initializer_kind)0), "unknown");
    cr_assert_str_eq(keel_initializer_name((enum keel_initializer_kind)7), "unknown");
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        cr_assert_eq(keel_initializer_parse(&ini, bad[i], &err), KEEL_EINVAL, "'%s'", bad[i]);
        cr_assert(strstr(err.msg, "initializer") != NULL, "'%s': %s", bad[i], err.msg);
    }
}

Test(init, model_defaults_are_he_then_glorot)
{
    struct keel_model m = parse("mlp:784-256-128-10");
    struct keel_initializer ini;

    keel_model_default_initializer(&m, 0, 1, &ini);
    cr_assert_eq(ini.kind, KEEL_INITIALIZER_HE_NORMAL);
    cr_assert_eq(ini.fan_in, 784);
    cr_assert(ini.bias_last);
    keel_model_default_initializer(&m, 2, 1, &ini);
    cr_assert_eq(ini.kind, KEEL_INITIALIZER_GLOROT_NORMAL);
    cr_assert_eq(ini.fan_in, 128);
    cr_assert_eq(ini.fan_out, 10);
}

/* ---- Learning, in process --------------------------------------------- */

struct dataset {
    uint32_t n, dim;
    float *x;    /* n * dim */
    uint32_t *y; /* n */
};

static void dataset_free(struct dataset *d)
{
    free(d->x);
    free(d->y);
}

/*
 * What a server holds for one model: the parameters and, next to every row,
 * its optimizer state, packed per table as rows are.
 */
struct trainer {
    struct keel_model m;
    struct keel_optim o;
    struct keel_model_params params, grads;
    float *state[KEEL_MODEL_MAX_LAYERS];
    keel_model_work *w;
    uint32_t batch;
};

static void trainer_init(struct trainer *t, const char *spec, const char *optim, uint32_t batch)
{
    struct keel_error err = {0};

    memset(t, 0, sizeof(*t));
    t->m = parse(spec);
    cr_assert_eq(keel_optim_parse(&t->o, optim, &err), 0, "%s", err.msg);
    keel_model_params_init(&t->params, &t->m);
    keel_model_params_init(&t->grads, &t->m);
    keel_model_params_fill(&t->params, &t->m, 2024);
    for (unsigned l = 0; l < t->m.nlayers; l++)
        t->state[l] = keel_calloc(
            keel_size_mul(keel_model_rows(&t->m, l),
                          keel_optim_state_width(&t->o, keel_model_row_width(&t->m, l))),
            sizeof(float));
    t->w = keel_model_work_new(&t->m, batch);
    t->batch = batch;
}

static void trainer_release(struct trainer *t)
{
    for (unsigned l = 0; l < t->m.nlayers; l++)
        free(t->state[l]);
    keel_model_params_release(&t->params);
    keel_model_params_release(&t->grads);
    keel_model_work_free(t->w);
}

/* One pass over `d` in order: gradient of each batch, then the optimizer on every row. */
static double train_epoch(struct trainer *t, const struct dataset *d)
{
    double loss = 0;
    uint32_t seen = 0;

    for (uint32_t i = 0; i < d->n; i += t->batch) {
        uint32_t n = d->n - i < t->batch ? d->n - i : t->batch;
        struct keel_model_stats st;
        struct keel_error err = {0};

        cr_assert_eq(keel_model_grad(&t->m, t->w, &t->params, d->x + (size_t)i * d->dim, d->y + i,
                                     n, &t->grads, &st, &err),
                     0, "%s", err.msg);
        for (unsigned l = 0; l < t->m.nlayers; l++)
            cr_assert_eq(keel_optim_apply_rows(&t->o, t->params.table[l], t->state[l], NULL,
                                               t->grads.table[l], keel_model_rows(&t->m, l),
                                               keel_model_row_width(&t->m, l), &err),
                         0, "%s", err.msg);
        loss += st.loss * n;
        seen += n;
    }
    return loss / seen;
}

static struct keel_model_stats evaluate(struct trainer *t, const struct dataset *d)
{
    struct keel_model_stats all = {0};

    for (uint32_t i = 0; i < d->n; i += t->batch) {
        uint32_t n = d->n - i < t->batch ? d->n - i : t->batch;
        struct keel_model_stats st;

        cr_assert_eq(keel_model_eval(&t->m, t->w, &t->params, d->x + (size_t)i * d->dim, d->y + i,
                                     n, &st, NULL),
                     0);
        all.loss += st.loss * n;
        all.ncorrect += st.ncorrect;
        all.n += n;
    }
    all.loss /= all.n;
    return all;
}

/*
 * `classes` Gaussian blobs in `dim` dimensions, centers at distance 4 from
 * the origin on random directions, unit noise: linearly separable well
 * beyond 95%.
 */
static void make_blobs(struct dataset *d, uint32_t n, uint32_t dim, uint32_t classes, uint64_t seed)
{
    struct keel_initializer noise = {.kind = KEEL_INITIALIZER_HE_NORMAL, .seed = seed, .fan_in = 2};
    struct keel_initializer centers = {
        .kind = KEEL_INITIALIZER_HE_NORMAL, .seed = 777, .fan_in = 2};
    float *c = keel_calloc((size_t)classes * dim, sizeof(float));

    d->n = n;
    d->dim = dim;
    d->x = keel_calloc((size_t)n * dim, sizeof(float));
    d->y = keel_calloc(n, sizeof(uint32_t));
    for (uint32_t k = 0; k < classes; k++) {
        double norm = 0;

        init_row(&centers, 1, k, c + (size_t)k * dim, dim);
        for (uint32_t j = 0; j < dim; j++)
            norm += (double)c[k * dim + j] * c[k * dim + j];
        for (uint32_t j = 0; j < dim; j++)
            c[k * dim + j] = (float)(4.0 * c[k * dim + j] / sqrt(norm));
    }
    for (uint32_t i = 0; i < n; i++) {
        float *xi = d->x + (size_t)i * dim;

        d->y[i] = (uint32_t)((i * 7 + 3) % classes);
        init_row(&noise, 1, i, xi, dim); /* sd 1 */
        for (uint32_t j = 0; j < dim; j++)
            xi[j] += c[d->y[i] * dim + j];
    }
    free(c);
}

static void learn_blobs(const char *spec)
{
    struct dataset train, test;
    struct trainer t;
    struct keel_model_stats before, after;
    double first = 0, last = 0;

    one_thread();
    make_blobs(&train, 2000, 20, 4, 1);
    make_blobs(&test, 500, 20, 4, 2);
    trainer_init(&t, spec, "adam:lr=0.01", 32);
    before = evaluate(&t, &test);
    for (int e = 0; e < 5; e++) {
        last = train_epoch(&t, &train);
        if (e == 0)
            first = last;
    }
    after = evaluate(&t, &test);
    cr_log_info("%s: test loss %.3f -> %.3f, accuracy %.3f -> %.3f, train loss %.3f -> %.3f", spec,
                before.loss, after.loss, (double)before.ncorrect / before.n,
                (double)after.ncorrect / after.n, first, last);
    cr_assert_lt(last, first, "training loss falls");
    cr_assert_lt(after.loss, before.loss / 2, "test loss falls");
    cr_assert_gt((double)after.ncorrect / after.n, 0.95, "test accuracy %g",
                 (double)after.ncorrect / after.n);
    trainer_release(&t);
    dataset_free(&train);
    dataset_free(&test);
}

Test(learn, softmax_separates_blobs)
{
    learn_blobs("softmax:20-4");
}

Test(learn, mlp_separates_blobs)
{
    learn_blobs("mlp:20-16-4");
}

/* ---- Fashion-MNIST ---------------------------------------------------- */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Read exactly `len` bytes from a gzip stream; 0 on success. */
static int gz_read_all(gzFile f, void *buf, size_t len)
{
    unsigned char *p = buf;

    while (len > 0) {
        unsigned chunk = len > (1u << 30) ? 1u << 30 : (unsigned)len;
        int got = gzread(f, p, chunk);

        if (got <= 0)
            return -1;
        p += got;
        len -= (size_t)got;
    }
    return 0;
}

/*
 * The first `n` images and labels of an IDX pair (big-endian header; images
 * magic 0x803 with count, rows, columns; labels magic 0x801 with count),
 * pixels scaled to [0, 1].
 */
static void load_idx(struct dataset *d, const char *images, const char *labels, uint32_t n)
{
    char path[512];
    unsigned char hdr[16], *pix, *lab;
    gzFile f;
    size_t npix;

    snprintf(path, sizeof(path), "%s/%s", FMNIST_DIR, images);
    f = gzopen(path, "rb");
    cr_assert_not_null(f, "cannot open '%s' (the dataset-fashion-mnist package)", path);
    cr_assert_eq(gz_read_all(f, hdr, 16), 0, "'%s': short header", path);
    cr_assert_eq(be32(hdr), 0x803, "'%s': bad magic", path);
    cr_assert_geq(be32(hdr + 4), n, "'%s': fewer than %u images", path, n);
    d->dim = be32(hdr + 8) * be32(hdr + 12);
    cr_assert_eq(d->dim, 784, "'%s': images are not 28x28", path);
    npix = (size_t)n * d->dim;
    pix = keel_malloc(npix);
    cr_assert_eq(gz_read_all(f, pix, npix), 0, "'%s': truncated", path);
    gzclose(f);

    snprintf(path, sizeof(path), "%s/%s", FMNIST_DIR, labels);
    f = gzopen(path, "rb");
    cr_assert_not_null(f, "cannot open '%s'", path);
    cr_assert_eq(gz_read_all(f, hdr, 8), 0, "'%s': short header", path);
    cr_assert_eq(be32(hdr), 0x801, "'%s': bad magic", path);
    cr_assert_geq(be32(hdr + 4), n, "'%s': fewer than %u labels", path, n);
    lab = keel_malloc(n);
    cr_assert_eq(gz_read_all(f, lab, n), 0, "'%s': truncated", path);
    gzclose(f);

    d->n = n;
    d->x = keel_calloc(npix, sizeof(float));
    d->y = keel_calloc(n, sizeof(uint32_t));
    for (size_t i = 0; i < npix; i++)
        d->x[i] = (float)pix[i] / 255.0f;
    for (uint32_t i = 0; i < n; i++) {
        cr_assert_lt(lab[i], 10, "'%s': label %u of item %u", path, lab[i], i);
        d->y[i] = lab[i];
    }
    free(pix);
    free(lab);
}

/* 5000 training images, 1000 test images, 3 epochs of Adam at batch 64. */
static void learn_fashion(const char *spec, double min_accuracy)
{
    struct dataset train, test;
    struct trainer t;
    struct keel_model_stats before, after;
    double first = 0, last = 0;

    one_thread();
    load_idx(&train, "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 5000);
    load_idx(&test, "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 1000);
    trainer_init(&t, spec, "adam", 64);
    before = evaluate(&t, &test);
    for (int e = 0; e < 3; e++) {
        last = train_epoch(&t, &train);
        if (e == 0)
            first = last;
    }
    after = evaluate(&t, &test);
    cr_log_info("%s on fashion-mnist: test loss %.3f -> %.3f, accuracy %.3f -> %.3f, train loss "
                "%.3f -> %.3f",
                spec, before.loss, after.loss, (double)before.ncorrect / before.n,
                (double)after.ncorrect / after.n, first, last);
    cr_assert_lt(last, first, "training loss falls");
    cr_assert_lt(after.loss, before.loss, "test loss falls");
    cr_assert_gt((double)after.ncorrect / after.n, min_accuracy, "test accuracy %g",
                 (double)after.ncorrect / after.n);
    trainer_release(&t);
    dataset_free(&train);
    dataset_free(&test);
}

Test(learn, softmax_learns_fashion_mnist)
{
    learn_fashion("softmax:784-10", 0.75);
}

Test(learn, reference_mlp_learns_fashion_mnist)
{
    learn_fashion("mlp:784-256-128-10", 0.78);
}
