/*
 * test_record.c - the dataset record encoding: round trips of each encoding
 * and malformed records, each refused with its own error.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/parameterized.h>

#include "keel/record.h"

Test(record, dense_f32_round_trips)
{
    const float v[3] = {1.5f, -2.0f, 0.0f};
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_record r;
    struct keel_error err;
    float out[3];

    keel_error_init(&err);
    cr_assert_eq(keel_record_encode_dense_f32(&b, 7, v, 3, &err), 0, "%s", err.msg);
    cr_assert_eq(b.len, 12 + 12);
    cr_assert_eq(keel_record_size(KEEL_RECORD_DENSE_F32, 3), b.len);
    cr_assert_eq(keel_record_decode(b.buf, b.len, 3, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.label, 7);
    cr_assert_eq(r.encoding, KEEL_RECORD_DENSE_F32);
    cr_assert_eq(r.n, 3);
    cr_assert_eq(keel_record_dense_at(&r, 1), -2.0f);
    keel_record_to_dense(&r, out, 3);
    cr_assert_eq(memcmp(out, v, sizeof(v)), 0);
    keel_buf_release(&b);
}

Test(record, bytes_are_as_documented)
{
    const float v[1] = {1.0f};
    const unsigned char expect[16] = {5, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0x00, 0x00, 0x80, 0x3f};
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_eq(keel_record_encode_dense_f32(&b, 5, v, 1, NULL), 0);
    cr_assert_eq(b.len, sizeof(expect));
    cr_assert_eq(memcmp(b.buf, expect, sizeof(expect)), 0);
    keel_buf_release(&b);
}

Test(record, sparse_round_trips_and_expands_to_dense)
{
    const uint32_t idx[2] = {1, 4};
    const float v[2] = {0.5f, 3.0f};
    const float dense[6] = {0, 0.5f, 0, 0, 3.0f, 0};
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_record r;
    struct keel_error err;
    uint32_t i;
    float f, out[6];

    keel_error_init(&err);
    cr_assert_eq(keel_record_encode_sparse_f32(&b, 2, idx, v, 2, &err), 0, "%s", err.msg);
    cr_assert_eq(b.len, 12 + 16);
    cr_assert_eq(keel_record_decode(b.buf, b.len, 6, &r, &err), 0, "%s", err.msg);
    cr_assert_eq(r.encoding, KEEL_RECORD_SPARSE_F32);
    keel_record_sparse_at(&r, 1, &i, &f);
    cr_assert_eq(i, 4);
    cr_assert_eq(f, 3.0f);
    keel_record_to_dense(&r, out, 6);
    cr_assert_eq(memcmp(out, dense, sizeof(dense)), 0);
    /* A dataset with fewer features refuses the index. */
    cr_assert_eq(keel_record_decode(b.buf, b.len, 4, &r, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "index 4 not below 4"), "%s", err.msg);
    keel_buf_release(&b);
}

Test(record, dense_u8_is_padded_to_four_bytes)
{
    const uint8_t px[5] = {0, 17, 255, 3, 9};
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_record r;
    struct keel_error err;
    float out[5];

    keel_error_init(&err);
    cr_assert_eq(keel_record_encode_dense_u8(&b, 9, px, 5, &err), 0, "%s", err.msg);
    cr_assert_eq(b.len, 12 + 8);
    cr_assert_eq(b.buf[17], 0);
    cr_assert_eq(keel_record_decode(b.buf, b.len, 5, &r, &err), 0, "%s", err.msg);
    keel_record_to_dense(&r, out, 5);
    cr_assert_eq(out[2], 255.0f);
    cr_assert_eq(keel_record_dense_at(&r, 1), 17.0f);
    keel_buf_release(&b);
}

Test(record, encoder_refuses_what_the_decoder_would)
{
    const uint32_t idx[2] = {4, 4};
    const float v[2] = {1.0f, NAN};
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;

    cr_assert_eq(keel_record_encode_sparse_f32(&b, 0, idx, v, 2, &err), KEEL_EUNSORTED);
    cr_assert_eq(keel_record_encode_dense_f32(&b, 0, v, 2, &err), KEEL_EINVAL);
    cr_assert_eq(keel_record_encode_dense_f32(&b, KEEL_RECORD_MAX_CLASSES, v, 1, &err),
                 KEEL_EINVAL);
    cr_assert_eq(keel_record_encode_dense_u8(&b, 0, NULL, KEEL_RECORD_MAX_BYTES, &err),
                 KEEL_EFRAMESIZE);
    cr_assert_eq(b.len, 0);
    keel_buf_release(&b);
}

struct bad_record {
    char name[48];
    int offset; /* byte to overwrite, -1 for none */
    int width;  /* 1 or 4 */
    uint32_t value;
    int len_delta;
    int expect;
};

ParameterizedTestParameters(record, malformed_records_give_specific_errors)
{
    static struct bad_record cases[] = {
        {"shorter than the header", -1, 0, 0, -20, KEEL_ESHORTBODY},
        {"payload cut short", -1, 0, 0, -4, KEEL_ESHORTBODY},
        {"trailing bytes", -1, 0, 0, 4, KEEL_ETRAILING},
        {"unknown encoding", 4, 1, 9, 0, KEEL_EINVAL},
        {"encoding zero", 4, 1, 0, 0, KEEL_EINVAL},
        {"reserved byte set", 6, 1, 1, 0, KEEL_ERESERVED},
        {"label too large", 0, 4, 1u << 24, 0, KEEL_EINVAL},
        {"count past the data", 8, 4, 3, 0, KEEL_ESHORTBODY},
        {"count overflows", 8, 4, 0xFFFFFFFF, 0, KEEL_ESHORTBODY},
        {"indices not increasing", 20, 4, 1, 0, KEEL_EUNSORTED},
        {"index beyond the features", 20, 4, 10, 0, KEEL_EINVAL},
        {"value not finite", 16, 4, 0x7FC00000, 0, KEEL_EINVAL},
    };
    return cr_make_param_array(struct bad_record, cases, sizeof(cases) / sizeof(cases[0]));
}

ParameterizedTest(struct bad_record *c, record, malformed_records_give_specific_errors)
{
    const uint32_t idx[2] = {1, 3};
    const float v[2] = {1.0f, 2.0f};
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_record r;
    struct keel_error err;
    int rc;

    /* A valid sparse record of 2 pairs: 28 bytes, pair 1 at offset 20. */
    cr_assert_eq(keel_record_encode_sparse_f32(&b, 1, idx, v, 2, NULL), 0);
    keel_buf_add_zero(&b, 8);
    for (int i = 0; c->offset >= 0 && i < c->width; i++)
        b.buf[c->offset + i] = (unsigned char)(c->value >> (8 * i));
    keel_error_init(&err);
    rc = keel_record_decode(b.buf, (size_t)(28 + c->len_delta), 8, &r, &err);
    cr_assert_eq(rc, c->expect, "%s: got %s (%s)", c->name, keel_err_name(rc), err.msg);
    cr_assert_neq(err.msg[0], '\0', "%s: no message", c->name);
    keel_buf_release(&b);
}

Test(record, dense_count_must_match_the_dataset_and_padding_be_zero)
{
    const uint8_t px[3] = {1, 2, 3};
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_record r;
    struct keel_error err;

    cr_assert_eq(keel_record_encode_dense_u8(&b, 0, px, 3, NULL), 0);
    cr_assert_eq(keel_record_decode(b.buf, b.len, 4, &r, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "3 features, the dataset has 4"), "%s", err.msg);
    b.buf[15] = 1;
    cr_assert_eq(keel_record_decode(b.buf, b.len, 3, &r, &err), KEEL_EPADDING);
    keel_buf_release(&b);
}
