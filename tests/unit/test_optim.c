/*
 * test_optim.c - the server-side optimizers: each update rule against values
 * worked out by hand, their state layout, hyper-parameter parsing and the
 * refusal of non-finite gradients.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>

#include "keel/buf.h"
#include "keel/optim.h"

#define TOL 1e-6f

static struct keel_optim make(enum keel_optim_kind kind, float lr)
{
    struct keel_optim o;

    cr_assert_eq(keel_optim_defaults(&o, kind, NULL), 0);
    o.lr = lr;
    cr_assert_eq(keel_optim_check(&o, NULL), 0);
    return o;
}

static void step(const struct keel_optim *o, float *w, float *state, const float *g, uint32_t n)
{
    struct keel_error err = {0};

    cr_assert_eq(keel_optim_apply(o, w, state, g, n, &err), 0, "%s", err.msg);
}

static void assert_near(float got, float want, const char *what)
{
    cr_assert(fabsf(got - want) <= TOL * fmaxf(1.0f, fabsf(want)), "%s: got %.9g, want %.9g", what,
              (double)got, (double)want);
}

Test(optim, sgd_subtracts_lr_times_gradient)
{
    struct keel_optim o = make(KEEL_OPTIM_SGD, 0.1f);
    float w[2] = {1.0f, -2.0f};
    const float g1[2] = {0.5f, 0.25f}, g2[2] = {-1.0f, 0.0f};

    cr_assert_eq(keel_optim_state_width(&o, 2), 0);
    step(&o, w, NULL, g1, 2);
    assert_near(w[0], 0.95f, "w0 after 1"); /* 1 - 0.1 * 0.5 */
    assert_near(w[1], -2.025f, "w1 after 1");
    step(&o, w, NULL, g2, 2);
    assert_near(w[0], 1.05f, "w0 after 2"); /* 0.95 + 0.1 */
    assert_near(w[1], -2.025f, "w1 after 2");
}

Test(optim, momentum_accumulates_velocity)
{
    struct keel_optim o = make(KEEL_OPTIM_MOMENTUM, 0.1f);
    float w[1] = {1.0f}, v[1] = {0.0f};
    const float g[1] = {1.0f};

    cr_assert_eq(keel_optim_state_width(&o, 1), 1);
    cr_assert_float_eq(o.momentum, 0.9f, 1e-9);
    /* v1 = 1, w = 1 - 0.1 = 0.9; v2 = 0.9 + 1 = 1.9, w = 0.71; v3 = 2.71, w = 0.439 */
    step(&o, w, v, g, 1);
    assert_near(v[0], 1.0f, "v1");
    assert_near(w[0], 0.9f, "w1");
    step(&o, w, v, g, 1);
    assert_near(v[0], 1.9f, "v2");
    assert_near(w[0], 0.71f, "w2");
    step(&o, w, v, g, 1);
    assert_near(v[0], 2.71f, "v3");
    assert_near(w[0], 0.439f, "w3");
}

Test(optim, adagrad_scales_by_accumulated_squares)
{
    struct keel_optim o = make(KEEL_OPTIM_ADAGRAD, 0.1f);
    float w[1] = {1.0f}, a[1] = {0.0f};
    const float g1[1] = {2.0f}, g2[1] = {2.0f}, g3[1] = {-1.0f};

    cr_assert_eq(keel_optim_state_width(&o, 7), 7);
    step(&o, w, a, g1, 1); /* a = 4, w = 1 - 0.1 * 2 / 2 = 0.9 */
    assert_near(a[0], 4.0f, "a1");
    assert_near(w[0], 0.9f, "w1");
    step(&o, w, a, g2, 1); /* a = 8, w = 0.9 - 0.2 / sqrt(8) = 0.829289322 */
    assert_near(a[0], 8.0f, "a2");
    assert_near(w[0], 0.829289322f, "w2");
    step(&o, w, a, g3, 1); /* a = 9, w = 0.829289322 + 0.1 / 3 = 0.862622655 */
    assert_near(a[0], 9.0f, "a3");
    assert_near(w[0], 0.862622655f, "w3");
}

/*
 * Adam with the defaults (lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-8) on a row
 * of two, gradients (0.1, -3), (-0.2, -1), (0.3, 0.5).  Element 0 by hand:
 *  t=1: m = 0.1 * 0.1 = 0.01, v = 0.001 * 0.01 = 1e-5; m^ = 0.01 / 0.1 = 0.1,
 *       v^ = 1e-5 / 0.001 = 0.01; w = 0.5 - 1e-3 * 0.1 / (0.1 + 1e-8) = 0.499
 *       (the first step is lr times the gradient's sign);
 *  t=2: m = 0.009 - 0.02 = -0.011, v = 0.999e-5 + 4e-5 = 4.999e-5;
 *       m^ = -0.011 / 0.19 = -0.0578947, v^ = 4.999e-5 / 0.001999 = 0.0250075;
 *       w = 0.499 + 1e-3 * 0.0578947 / 0.158138 = 0.499366104;
 *  t=3: m = -0.0099 + 0.03 = 0.0201, v = 4.994001e-5 + 9e-5 = 1.3994001e-4;
 *       m^ = 0.0201 / 0.271 = 0.0741697, v^ = 1.3994001e-4 / 0.002997001 = 0.0466934;
 *       w = 0.499366104 - 1e-3 * 0.0741697 / 0.216087 = 0.499022863.
 */
Test(optim, adam_first_steps_with_bias_correction)
{
    struct keel_optim o;
    float w[2] = {0.5f, -1.0f}, s[5];
    const float g[3][2] = {{0.1f, -3.0f}, {-0.2f, -1.0f}, {0.3f, 0.5f}};
    const float want_w[3][2] = {
        {0.499f, -0.999f}, {0.499366104f, -0.998128936f}, {0.499022863f, -0.997563737f}};
    const float want_m[3][2] = {{0.01f, -0.3f}, {-0.011f, -0.37f}, {0.0201f, -0.283f}};
    const float want_v[3][2] = {
        {1e-5f, 0.009f}, {4.999e-5f, 0.009991f}, {1.3994001e-4f, 0.010231009f}};

    cr_assert_eq(keel_optim_parse(&o, "adam", NULL), 0);
    cr_assert_float_eq(o.lr, 1e-3f, 1e-12);
    cr_assert_eq(keel_optim_state_width(&o, 2), 5);
    memset(s, 0, sizeof(s));
    for (int t = 0; t < 3; t++) {
        step(&o, w, s, g[t], 2);
        cr_assert_eq(s[0], (float)(t + 1), "t is counted in state[0]");
        for (int j = 0; j < 2; j++) {
            assert_near(w[j], want_w[t][j], "w");
            assert_near(s[1 + j], want_m[t][j], "m");
            assert_near(s[3 + j], want_v[t][j], "v");
        }
    }
}

Test(optim, adam_step_count_saturates_at_float_precision)
{
    struct keel_optim o = make(KEEL_OPTIM_ADAM, 1e-3f);
    float w[1] = {0.0f}, s[3] = {16777216.0f, 0.0f, 0.0f};
    const float g[1] = {1.0f};

    step(&o, w, s, g, 1);
    cr_assert_eq(s[0], 16777216.0f);
    /* Corrections are 1: m = 0.1, v = 0.001, step = 1e-3 * 0.1 / sqrt(0.001). */
    assert_near(w[0], -1e-3f * 0.1f / sqrtf(0.001f), "w");
}

Test(optim, each_rows_state_is_its_own)
{
    struct keel_optim o = make(KEEL_OPTIM_ADAM, 0.01f);
    float rows[2][1] = {{1.0f}, {1.0f}}, states[2][3];
    const float g[1] = {0.5f};

    memset(states, 0, sizeof(states));
    step(&o, rows[0], states[0], g, 1);
    step(&o, rows[0], states[0], g, 1);
    step(&o, rows[1], states[1], g, 1);
    cr_assert_eq(states[0][0], 2.0f);
    cr_assert_eq(states[1][0], 1.0f);
    /* The first step of any row is lr in size, whatever other rows did. */
    assert_near(rows[1][0], 1.0f - 0.01f, "first step of row 1");
}

static void assert_rejected(enum keel_optim_kind kind, float bad)
{
    struct keel_optim o = make(kind, 0.1f);
    float w[3] = {1.0f, 2.0f, 3.0f}, s[7] = {1, 2, 3, 4, 5, 6, 7};
    float w0[3], s0[7];
    const float g[3] = {0.5f, bad, 0.5f};
    struct keel_error err = {0};

    memcpy(w0, w, sizeof(w));
    memcpy(s0, s, sizeof(s));
    cr_assert_eq(keel_optim_apply(&o, w, s, g, 3, &err), KEEL_EINVAL, "%s", keel_optim_name(kind));
    cr_assert(strstr(err.msg, "element 1") != NULL, "message: %s", err.msg);
    cr_assert_eq(memcmp(w, w0, sizeof(w)), 0, "row untouched");
    cr_assert_eq(memcmp(s, s0, sizeof(s)), 0, "state untouched");
}

Test(optim, non_finite_gradients_are_refused_untouched)
{
    enum keel_optim_kind kinds[] = {KEEL_OPTIM_SGD, KEEL_OPTIM_MOMENTUM, KEEL_OPTIM_ADAGRAD,
                                    KEEL_OPTIM_ADAM};

    for (size_t i = 0; i < 4; i++) {
        assert_rejected(kinds[i], NAN);
        assert_rejected(kinds[i], INFINITY);
        assert_rejected(kinds[i], -INFINITY);
    }
}

Test(optim, apply_rows_is_all_or_nothing)
{
    struct keel_optim o = make(KEEL_OPTIM_MOMENTUM, 0.5f);
    float rows[3 * 2] = {1, 1, 1, 1, 1, 1}, states[3 * 2] = {0};
    float grads[3 * 2] = {1, 1, 1, 1, 1, NAN};
    struct keel_error err = {0};

    cr_assert_eq(keel_optim_apply_rows(&o, rows, states, NULL, grads, 3, 2, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "row 2, element 1") != NULL, "message: %s", err.msg);
    for (int i = 0; i < 6; i++) {
        cr_assert_eq(rows[i], 1.0f);
        cr_assert_eq(states[i], 0.0f);
    }
    grads[5] = 2.0f;
    cr_assert_eq(keel_optim_apply_rows(&o, rows, states, NULL, grads, 3, 2, &err), 0, "%s",
                 err.msg);
    for (int i = 0; i < 5; i++)
        assert_near(rows[i], 0.5f, "updated row");
    assert_near(rows[5], 0.0f, "last element");
    assert_near(states[5], 2.0f, "its velocity");
}

/*
 * Gradients applied to scattered rows (`at`) update exactly those rows, as
 * one keel_optim_apply() per row would, bit for bit: also under Adam with rows
 * at different step counts (the bias corrections are shared only between
 * rows of the same count).
 */
Test(optim, apply_rows_at_indices_is_one_apply_per_row)
{
    enum { W = 3, N = 6, SW = 2 * W + 1 };
    static const enum keel_optim_kind kinds[] = {KEEL_OPTIM_SGD, KEEL_OPTIM_MOMENTUM,
                                                 KEEL_OPTIM_ADAGRAD, KEEL_OPTIM_ADAM};
    static const uint32_t at[4] = {4, 1, 5, 2};
    float grads[4 * W];

    for (int i = 0; i < 4 * W; i++)
        grads[i] = 0.25f * (float)(i - 5);
    for (size_t k = 0; k < 4; k++) {
        struct keel_optim o = make(kinds[k], 0.1f);
        size_t sw = keel_optim_state_width(&o, W);
        float rows[N * W], states[N * SW], want[N * W], want_states[N * SW];
        struct keel_error err = {0};

        for (int i = 0; i < N * W; i++)
            rows[i] = want[i] = 1.0f + 0.1f * (float)i;
        for (int i = 0; i < N * SW; i++)
            states[i] = want_states[i] = 0.0f;
        /* Adam: rows 1 and 2 at step 7, the others new; the same first element of state. */
        if (kinds[k] == KEEL_OPTIM_ADAM)
            for (int r = 1; r <= 2; r++)
                states[r * sw] = want_states[r * sw] = 7.0f;
        for (int i = 0; i < 4; i++)
            cr_assert_eq(keel_optim_apply(&o, want + at[i] * W,
                                          sw ? want_states + at[i] * sw : NULL, grads + i * W, W,
                                          &err),
                         0, "%s", err.msg);
        cr_assert_eq(keel_optim_apply_rows(&o, rows, sw ? states : NULL, at, grads, 4, W, &err), 0,
                     "%s", err.msg);
        cr_assert_eq(memcmp(rows, want, sizeof(rows)), 0, "%s: the rows",
                     keel_optim_name(kinds[k]));
        if (sw)
            cr_assert_eq(memcmp(states, want_states, (size_t)N * sw * sizeof(float)), 0,
                         "%s: the states", keel_optim_name(kinds[k]));
        cr_assert_eq(rows[0], 1.0f, "row 0 has no gradient: untouched");
        cr_assert_eq(rows[3 * W], 1.0f + 0.1f * 3 * W, "row 3 has no gradient: untouched");
    }
}

Test(optim, defaults)
{
    struct keel_optim o;

    cr_assert_eq(keel_optim_defaults(&o, KEEL_OPTIM_ADAM, NULL), 0);
    cr_assert_float_eq(o.lr, 1e-3f, 1e-12);
    cr_assert_float_eq(o.beta1, 0.9f, 1e-9);
    cr_assert_float_eq(o.beta2, 0.999f, 1e-9);
    cr_assert_float_eq(o.epsilon, 1e-8f, 1e-15);
    cr_assert_eq(keel_optim_defaults(&o, KEEL_OPTIM_SGD, NULL), 0);
    cr_assert_float_eq(o.lr, 0.01f, 1e-9);
    cr_assert_eq(keel_optim_defaults(&o, (enum keel_optim_kind)99, NULL), KEEL_EINVAL);
}

Test(optim, parse_sets_given_keys_and_keeps_defaults)
{
    struct keel_optim o;
    struct keel_error err = {0};

    cr_assert_eq(keel_optim_parse(&o, "adam:lr=0.0005,beta2=0.99", &err), 0, "%s", err.msg);
    cr_assert_eq(o.kind, KEEL_OPTIM_ADAM);
    cr_assert_float_eq(o.lr, 0.0005f, 1e-12);
    cr_assert_float_eq(o.beta1, 0.9f, 1e-9);
    cr_assert_float_eq(o.beta2, 0.99f, 1e-9);
    cr_assert_eq(keel_optim_parse(&o, "momentum:momentum=0.5", &err), 0, "%s", err.msg);
    cr_assert_eq(o.kind, KEEL_OPTIM_MOMENTUM);
    cr_assert_float_eq(o.momentum, 0.5f, 1e-9);
    cr_assert_float_eq(o.lr, 0.01f, 1e-9);
    cr_assert_eq(keel_optim_parse(&o, "sgd:lr=1e-1", &err), 0, "%s", err.msg);
    cr_assert_float_eq(o.lr, 0.1f, 1e-9);
}

Test(optim, parse_rejects_bad_text_naming_it)
{
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"nadam", "unknown optimizer 'nadam'"},
        {"", "unknown optimizer"},
        {"adam:", "expected KEY=VALUE"},
        {"adam:lr", "expected KEY=VALUE"},
        {"adam:lr=", "bad value"},
        {"adam:lr=fast", "bad value 'fast'"},
        {"adam:lr=0.1x", "bad value"},
        {"adam:lr=inf", "bad value"},
        {"adam:lr=-0.1", "learning rate"},
        {"adam:lr=0", "learning rate"},
        {"adam:beta1=1", "beta1"},
        {"adam:beta2=-0.5", "beta2"},
        {"adam:epsilon=0", "epsilon"},
        {"adam:momentum=0.9", "adam does not take 'momentum'"},
        {"sgd:beta1=0.9", "sgd does not take 'beta1'"},
        {"momentum:momentum=1.5", "momentum"},
        {"adam:gamma=2", "unknown key 'gamma'"},
        {"adam:lr=0.1,", "expected KEY=VALUE"},
    };

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct keel_optim o;
        struct keel_error err = {0};

        cr_assert_eq(keel_optim_parse(&o, bad[i].text, &err), KEEL_EINVAL, "'%s'", bad[i].text);
        cr_assert(strstr(err.msg, bad[i].want) != NULL, "'%s': message '%s' lacks '%s'",
                  bad[i].text, err.msg, bad[i].want);
    }
}

Test(optim, format_parses_back_to_the_same)
{
    static const char *const specs[] = {"sgd:lr=0.3", "momentum:lr=0.05,momentum=0.95",
                                        "adagrad:lr=0.2,epsilon=1e-06",
                                        "adam:lr=0.00123,beta1=0.8,beta2=0.9999,epsilon=1e-07"};

    for (size_t i = 0; i < 4; i++) {
        struct keel_optim a, b;
        struct keel_buf out = KEEL_BUF_INIT;

        cr_assert_eq(keel_optim_parse(&a, specs[i], NULL), 0, "%s", specs[i]);
        keel_optim_format(&a, &out);
        cr_assert_eq(keel_optim_parse(&b, (char *)out.buf, NULL), 0, "%s", (char *)out.buf);
        cr_assert_eq(memcmp(&a, &b, sizeof(a)), 0, "%s -> %s", specs[i], (char *)out.buf);
        keel_buf_release(&out);
    }
}

Test(optim, check_refuses_unknown_kind)
{
    struct keel_optim o;

    memset(&o, 0, sizeof(o));
    o.lr = 0.1f;
    cr_assert_eq(keel_optim_check(&o, NULL), KEEL_EINVAL);
}
