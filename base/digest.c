/*
 * digest.c - SHA-256 of a buffer, and bytes as lowercase hex.
 */
#include <stdio.h>
#include <stdlib.h>

#include <openssl/evp.h>

#include "digest.h"

void keel_sha256(unsigned char out[KEEL_SHA256_SIZE], const void *data, size_t len)
{
    unsigned int n = 0;

    if (EVP_Digest(data, len, out, &n, EVP_sha256(), NULL) != 1 || n != KEEL_SHA256_SIZE) {
        fprintf(stderr, "keel: SHA-256 failed\n");
        abort();
    }
}

void keel_hex(char *out, const void *data, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    const unsigned char *d = data;

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[2 * n] = '\0';
}
