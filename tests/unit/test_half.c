/*
 * test_half.c - 16-bit floats (half.h): exact widening, narrowing that rounds
 * to nearest with ties to even, checked against a reference computed in
 * double, and the error bounds half.h states.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>

#include <criterion/criterion.h>

#include "keel/half.h"

/* The reference: round |x| to a multiple of its binade's step, `bits` of precision. */
static double ref_round(double x, int bits, int min_exp, double overflow)
{
    double a = fabs(x), step, q;
    int e;

    if (a >= overflow)
        return copysign(INFINITY, x);
    if (a == 0)
        return x;
    frexp(a, &e); /* a = m * 2^e, m in [0.5, 1) */
    e -= 1;       /* a in [2^e, 2^(e+1)) */
    if (e < min_exp)
        e = min_exp; /* subnormals: the step of the smallest binade */
    step = ldexp(1.0, e - (bits - 1));
    q = nearbyint(a / step) * step; /* the default rounding: to nearest, ties to even */
    return copysign(q, x);
}

static double ref_fp16(float x)
{
    return ref_round(x, 11, -14, 65520.0);
}

static double ref_bf16(float x)
{
    return ref_round(x, 8, -126, ldexp(1.0, 128) - ldexp(1.0, 128 - 9));
}

/* xorshift64: reproducible inputs. */
static uint64_t next(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

Test(half, every_fp16_value_widens_exactly_and_narrows_back_to_itself)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = keel_f32_from_fp16((uint16_t)h);
        uint32_t e = (h >> 10) & 0x1F, m = h & 0x3FF;

        if (e == 31 && m != 0) {
            cr_assert(isnan(f), "0x%04x is a NaN", h);
            cr_assert_eq(keel_fp16_from_f32(f) & 0x7C00, 0x7C00);
            cr_assert_neq(keel_fp16_from_f32(f) & 0x3FF, 0, "NaN 0x%04x stays a NaN", h);
            continue;
        }
        cr_assert_eq(keel_fp16_from_f32(f), h, "0x%04x -> %g -> 0x%04x", h, (double)f,
                     keel_fp16_from_f32(f));
    }
    cr_assert_eq(keel_f32_from_fp16(0x3C00), 1.0f);
    cr_assert_eq(keel_f32_from_fp16(0x7BFF), 65504.0f);
    cr_assert_eq(keel_f32_from_fp16(0x0001), 0x1p-24f);
    cr_assert_eq(keel_f32_from_fp16(0x0400), 0x1p-14f);
    cr_assert(isinf(keel_f32_from_fp16(0xFC00)) && keel_f32_from_fp16(0xFC00) < 0);
}

Test(half, every_bf16_value_widens_exactly_and_narrows_back_to_itself)
{
    for (uint32_t h = 0; h < 0x10000; h++) {
        float f = keel_f32_from_bf16((uint16_t)h);

        if (isnan(f)) {
            cr_assert(isnan(keel_f32_from_bf16(keel_bf16_from_f32(f))), "0x%04x stays a NaN", h);
            continue;
        }
        cr_assert_eq(keel_bf16_from_f32(f), h, "0x%04x -> %g -> 0x%04x", h, (double)f,
                     keel_bf16_from_f32(f));
    }
}

Test(half, fp16_rounds_to_nearest_with_ties_to_even_at_the_edges)
{
    static const struct {
        float in;
        uint16_t out;
    } cases[] = {
        {65504.0f, 0x7BFF},          /* the largest finite */
        {65519.996f, 0x7BFF},        /* just below the tie: down */
        {65520.0f, 0x7C00},          /* the tie above 65504 goes to even: infinity */
        {1e10f, 0x7C00},             /* far above: infinity */
        {-1e10f, 0xFC00},            /* and negative */
        {0x1p-25f, 0x0000},          /* half the smallest subnormal: ties to even, zero */
        {0x1.000002p-25f, 0x0001},   /* just above: the smallest subnormal */
        {0x1.8p-24f, 0x0002},        /* 1.5 steps: ties to even, 2 */
        {0x1.4p-24f, 0x0001},        /* 1.25 steps: down */
        {0x1.ffcp-15f, 0x0400},      /* the largest subnormal's neighbourhood rounds up */
        {1.0f + 0x1p-11f, 0x3C00},   /* halfway between 1 and 1 + 2^-10: even, 1 */
        {1.0f + 0x1.8p-10f, 0x3C02}, /* halfway between 1 + 2^-10 and 1 + 2^-9: even */
        {-2.0f, 0xC000},
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {INFINITY, 0x7C00},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        cr_assert_eq(keel_fp16_from_f32(cases[i].in), cases[i].out, "%a -> 0x%04x, expected 0x%04x",
                     (double)cases[i].in, keel_fp16_from_f32(cases[i].in), cases[i].out);
    cr_assert(isnan(keel_f32_from_fp16(keel_fp16_from_f32(NAN))));
}

Test(half, bf16_rounds_to_nearest_with_ties_to_even)
{
    cr_assert_eq(keel_bf16_from_f32(1.0f), 0x3F80);
    cr_assert_eq(keel_bf16_from_f32(1.0f + 0x1p-8f), 0x3F80, "the tie goes to even (down)");
    cr_assert_eq(keel_bf16_from_f32(1.0f + 0x1.8p-7f), 0x3F82, "the tie goes to even (up)");
    cr_assert_eq(keel_bf16_from_f32(1.0f + 0x1.2p-8f), 0x3F81, "above the tie: up");
    cr_assert_eq(keel_bf16_from_f32(FLT_MAX), 0x7F80, "FLT_MAX rounds to infinity");
    cr_assert_eq(keel_bf16_from_f32(-INFINITY), 0xFF80);
    cr_assert(isnan(keel_f32_from_bf16(keel_bf16_from_f32(NAN))));
}

/*
 * Random floats over the ranges gradients and parameters take: each agrees
 * with the reference, and the error is within half.h's bounds.
 */
Test(half, random_floats_match_the_reference_within_the_stated_bounds)
{
    uint64_t s = 0x9E3779B97F4A7C15u;

    for (int i = 0; i < 1000000; i++) {
        uint64_t r = next(&s);
        /* A float with a random significand and sign, exponent 2^-30 .. 2^20. */
        float x = ldexpf(1.0f + (float)(r & 0x7FFFFF) * 0x1p-23f, (int)((r >> 23) % 51) - 30);
        float h, b;

        if (r >> 63)
            x = -x;
        h = keel_f32_from_fp16(keel_fp16_from_f32(x));
        b = keel_f32_from_bf16(keel_bf16_from_f32(x));
        cr_assert_eq((double)h, ref_fp16(x), "fp16 of %a: %a, reference %a", (double)x, (double)h,
                     ref_fp16(x));
        cr_assert_eq((double)b, ref_bf16(x), "bf16 of %a: %a, reference %a", (double)x, (double)b,
                     ref_bf16(x));
        cr_assert_leq(fabs((double)b - x), ldexp(fabs(x), -8), "bf16 error of %a", (double)x);
        if (fabsf(x) >= 0x1p-14f && fabsf(x) <= 65504.0f)
            cr_assert_leq(fabs((double)h - x), ldexp(fabs(x), -11), "fp16 error of %a", (double)x);
        else if (fabsf(x) < 0x1p-14f)
            cr_assert_leq(fabs((double)h - x), 0x1p-25, "fp16 error of %a", (double)x);
    }
}

Test(half, arrays_narrow_and_widen_like_the_scalars)
{
    float in[5] = {0.1f, -3.5f, 1e-6f, 70000.0f, 1234.5f}, out[5];
    uint16_t h[5];

    for (unsigned enc = KEEL_ROWS_BF16; enc <= KEEL_ROWS_FP16; enc++) {
        keel_half_narrow((enum keel_rows_enc)enc, in, h, 5);
        keel_half_widen((enum keel_rows_enc)enc, h, out, 5);
        for (int i = 0; i < 5; i++) {
            uint16_t one =
                enc == KEEL_ROWS_BF16 ? keel_bf16_from_f32(in[i]) : keel_fp16_from_f32(in[i]);
            cr_assert_eq(h[i], one);
            cr_assert_eq(keel_f32_bits(out[i]),
                         keel_f32_bits(enc == KEEL_ROWS_BF16 ? keel_f32_from_bf16(one)
                                                             : keel_f32_from_fp16(one)));
        }
    }
    cr_assert_str_eq(keel_rows_enc_name(KEEL_ROWS_F32), "none");
    cr_assert_str_eq(keel_rows_enc_name(KEEL_ROWS_BF16), "bf16");
    cr_assert_str_eq(keel_rows_enc_name(KEEL_ROWS_FP16), "fp16");
    cr_assert_null(keel_rows_enc_name(3));
}
