/*
 * half.h - 16-bit floats on the wire: bfloat16 and IEEE binary16 (fp16).
 *
 * A job may ask for its pulls and pushes to carry rows as 16-bit floats
 * (`compression = bf16 | fp16`, jobspec.h); servers keep and apply 32-bit
 * floats, so only the wire rounds.  Both narrowings round to nearest, ties to
 * even:
 *  - bfloat16 keeps float's 8-bit exponent and 8 bits of precision: every
 *    finite float within range keeps its sign and magnitude to a relative
 *    error of at most 2^-8; a value above bfloat16's largest finite one
 *    (3.3895e38) becomes infinity;
 *  - fp16 has a 5-bit exponent and 11 bits of precision: relative error at
 *    most 2^-11 for |x| in [2^-14, 65504]; below 2^-14 the absolute error is
 *    at most 2^-25 (subnormals); at or above 65520 the result is infinity,
 *    which a server refuses like any non-finite gradient.
 * Infinities stay infinities and NaNs stay NaNs (quiet).  Widening is exact.
 * Pure functions, thread-safe.
 */
#ifndef KEEL_HALF_H
#define KEEL_HALF_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* How a message's rows are packed (keel_rows.enc); the numbers are Keel's own. */
enum keel_rows_enc {
    KEEL_ROWS_F32 = 0,  /* 4-byte IEEE floats */
    KEEL_ROWS_BF16 = 1, /* 2-byte bfloat16 */
    KEEL_ROWS_FP16 = 2, /* 2-byte IEEE binary16 */
};

static inline uint32_t keel_f32_bits(float f)
{
    uint32_t u;

    memcpy(&u, &f, 4);
    return u;
}

static inline float keel_f32_of_bits(uint32_t u)
{
    float f;

    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t keel_bf16_from_f32(float f)
{
    uint32_t u = keel_f32_bits(f);

    if ((u & 0x7FFFFFFFu) > 0x7F800000u) /* NaN: keep it one, quiet */
        return (uint16_t)((u >> 16) | 0x0040u);
    u += 0x7FFFu + ((u >> 16) & 1u); /* round to nearest, ties to even */
    return (uint16_t)(u >> 16);
}

static inline float keel_f32_from_bf16(uint16_t h)
{
    return keel_f32_of_bits((uint32_t)h << 16);
}

uint16_t keel_fp16_from_f32(float f);
float keel_f32_from_fp16(uint16_t h);

/* n floats to n 16-bit values of encoding `enc` (BF16 or FP16), and back. */
void keel_half_narrow(enum keel_rows_enc enc, const float *src, uint16_t *dst, size_t n);
void keel_half_widen(enum keel_rows_enc enc, const uint16_t *src, float *dst, size_t n);

/* "none", "bf16", "fp16"; NULL for an unknown encoding. */
const char *keel_rows_enc_name(unsigned enc);

#endif
