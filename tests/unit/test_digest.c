/*
 * test_digest.c - SHA-256 of a buffer and bytes as hex.
 */
#include <string.h>

#include <criterion/criterion.h>

#include "digest.h"

Test(digest, sha256_of_abc_is_the_fips_vector)
{
    unsigned char d[KEEL_SHA256_SIZE];
    char hex[2 * KEEL_SHA256_SIZE + 1];

    keel_sha256(d, "abc", 3);
    keel_hex(hex, d, sizeof(d));
    cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

Test(digest, hex_is_lowercase_and_terminated)
{
    const unsigned char b[] = {0x00, 0x0f, 0xa5, 0xff};
    char hex[9];

    memset(hex, 'x', sizeof(hex));
    keel_hex(hex, b, sizeof(b));
    cr_assert_str_eq(hex, "000fa5ff");
    keel_hex(hex, b, 0);
    cr_assert_str_eq(hex, "");
}
