/*
 * half.c - fp16 conversions and the array forms of both 16-bit encodings.
 *
 * fp16 narrowing works on the bits: the exponent is rebiased from 127 to 15
 * and the 13 low bits of the significand are rounded away (ties to even); a
 * value below fp16's smallest normal (2^-14) is rounded to a multiple of
 * 2^-24, the subnormal step, with its implicit bit made explicit.
 */
#include "keel/half.h"

uint16_t keel_fp16_from_f32(float f)
{
    uint32_t x = keel_f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000u);
    uint32_t ax = x & 0x7FFFFFFFu, q, rem, half;

    if (ax > 0x7F800000u) /* NaN */
        return (uint16_t)(sign | 0x7E00u | ((ax >> 13) & 0x1FFu));
    if (ax >= 0x477FF000u) /* 65520 and above, infinity too: rounds to infinity */
        return (uint16_t)(sign | 0x7C00u);
    if (ax < 0x38800000u) { /* below 2^-14: a subnormal or zero */
        uint32_t shift, m;

        if (ax <= 0x33000000u) /* at most 2^-25, half the step: rounds to zero */
            return sign;
        shift = 126u - (ax >> 23); /* 14..24 */
        m = (ax & 0x7FFFFFu) | 0x800000u;
        q = m >> shift;
        rem = m & ((1u << shift) - 1u);
        half = 1u << (shift - 1u);
        if (rem > half || (rem == half && (q & 1u)))
            q++;
        return (uint16_t)(sign | q); /* q may reach 0x400: the smallest normal */
    }
    ax -= 0x38000000u; /* exponent bias 127 -> 15 */
    q = ax >> 13;
    rem = ax & 0x1FFFu;
    if (rem > 0x1000u || (rem == 0x1000u && (q & 1u)))
        q++; /* a carry into the exponent is the right result */
    return (uint16_t)(sign | q);
}

float keel_f32_from_fp16(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1Fu, m = h & 0x3FFu;

    if (e == 0) { /* zero or subnormal: m * 2^-24, exact in a float */
        float v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    if (e == 31)
        return keel_f32_of_bits(sign | 0x7F800000u | (m << 13));
    return keel_f32_of_bits(sign | ((e + 112u) << 23) | (m << 13));
}

void keel_half_narrow(enum keel_rows_enc enc, const float *src, uint16_t *dst, size_t n)
{
    if (enc == KEEL_ROWS_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = keel_bf16_from_f32(src[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = keel_fp16_from_f32(src[i]);
}

void keel_half_widen(enum keel_rows_enc enc, const uint16_t *src, float *dst, size_t n)
{
    if (enc == KEEL_ROWS_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = keel_f32_from_bf16(src[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = keel_f32_from_fp16(src[i]);
}

const char *keel_rows_enc_name(unsigned enc)
{
    switch (enc) {
    case KEEL_ROWS_F32:
        return "none";
    case KEEL_ROWS_BF16:
        return "bf16";
    case KEEL_ROWS_FP16:
        return "fp16";
    }
    return NULL;
}
