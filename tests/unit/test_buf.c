/*
 * test_buf.c - the growable byte buffer and little-endian helpers.
 */
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/buf.h"

Test(buf, empty_buffer_is_a_valid_empty_string)
{
    struct keel_buf b = KEEL_BUF_INIT;

    cr_assert_not_null(b.buf);
    cr_assert_eq(b.len, 0);
    cr_assert_str_eq((char *)b.buf, "");
    keel_buf_release(&b);
    cr_assert_str_eq((char *)b.buf, "");
}

Test(buf, add_grows_and_keeps_nul_terminator)
{
    struct keel_buf b;

    keel_buf_init(&b, 0);
    for (int i = 0; i < 1000; i++)
        keel_buf_add(&b, "abc", 3);
    cr_assert_eq(b.len, 3000);
    cr_assert_geq(b.alloc, 3001);
    cr_assert_eq(b.buf[b.len], '\0');
    cr_assert_eq(memcmp(b.buf + 2997, "abc", 3), 0);
    keel_buf_release(&b);
}

Test(buf, binary_data_with_nul_bytes_survives)
{
    struct keel_buf b = KEEL_BUF_INIT;
    const unsigned char data[] = {0, 1, 0, 2, 0};

    keel_buf_add(&b, data, sizeof(data));
    cr_assert_eq(b.len, 5);
    cr_assert_eq(memcmp(b.buf, data, 5), 0);
    keel_buf_release(&b);
}

Test(buf, addf_formats_long_text)
{
    struct keel_buf b = KEEL_BUF_INIT;
    char big[500];

    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    keel_buf_addf(&b, "%d-", 42);
    keel_buf_addf(&b, "%s", big);
    cr_assert_eq(b.len, 3 + 499);
    cr_assert_eq(strncmp((char *)b.buf, "42-xxx", 6), 0);
    keel_buf_release(&b);
}

Test(buf, little_endian_integers_round_trip)
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_buf_add_u8(&b, 0xAB);
    keel_buf_add_u16le(&b, 0x1234);
    keel_buf_add_u32le(&b, 0xDEADBEEF);
    keel_buf_add_u64le(&b, UINT64_C(0x0102030405060708));
    cr_assert_eq(b.len, 15);
    cr_assert_eq(b.buf[0], 0xAB);
    cr_assert_eq(b.buf[1], 0x34, "u16 is little-endian");
    cr_assert_eq(keel_load_u16le(b.buf + 1), 0x1234);
    cr_assert_eq(keel_load_u32le(b.buf + 3), 0xDEADBEEF);
    cr_assert_eq(b.buf[7], 0x08);
    cr_assert_eq(keel_load_u64le(b.buf + 7), UINT64_C(0x0102030405060708));
    keel_buf_release(&b);
}

Test(buf, consume_moves_the_rest_to_the_front)
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_buf_add_str(&b, "hello world");
    keel_buf_consume(&b, 6);
    cr_assert_str_eq((char *)b.buf, "world");
    cr_assert_eq(b.len, 5);
    keel_buf_consume(&b, 5);
    cr_assert_eq(b.len, 0);
    keel_buf_release(&b);
}

Test(buf, detach_hands_over_memory)
{
    struct keel_buf b = KEEL_BUF_INIT;
    unsigned char *p;
    size_t len;

    keel_buf_add_str(&b, "abc");
    p = keel_buf_detach(&b, &len);
    cr_assert_eq(len, 3);
    cr_assert_str_eq((char *)p, "abc");
    cr_assert_eq(b.len, 0);
    cr_assert_eq(b.alloc, 0);
    free(p);
    p = keel_buf_detach(&b, &len);
    cr_assert_eq(len, 0);
    cr_assert_str_eq((char *)p, "");
    free(p);
}

Test(buf, memory_is_aligned_for_frames)
{
    struct keel_buf b;

    keel_buf_init(&b, 100);
    cr_assert_eq((uintptr_t)b.buf % 8, 0);
    keel_buf_add_zero(&b, 1 << 20);
    cr_assert_eq((uintptr_t)b.buf % 8, 0);
    keel_buf_release(&b);
}

Test(buf, view_borrows_the_bytes)
{
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_view v;

    keel_buf_add_str(&b, "xyz");
    v = keel_buf_view(&b);
    cr_assert_eq(v.data, b.buf);
    cr_assert_eq(v.len, 3);
    v = keel_view_make("ab", 2);
    cr_assert_eq(v.len, 2);
    keel_buf_release(&b);
}

Test(buf, setlen_past_allocation_aborts, .signal = SIGABRT)
{
    struct keel_buf b = KEEL_BUF_INIT;

    keel_buf_add_str(&b, "abc");
    keel_buf_setlen(&b, b.alloc);
}

Test(alloc, array_size_overflow_aborts, .signal = SIGABRT)
{
    uint64_t *p;

    KEEL_ALLOC_ARRAY(p, SIZE_MAX / 4);
    free(p);
}

Test(alloc, strndup_cuts_and_terminates)
{
    char *s = keel_strndup("abcdef", 3);

    cr_assert_str_eq(s, "abc");
    free(s);
}
