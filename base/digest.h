/*
 * digest.h - SHA-256 of a buffer, and bytes as lowercase hex.
 *
 * For a digest taken in pieces, use OpenSSL's EVP_Digest* directly.
 */
#ifndef KEEL_DIGEST_H
#define KEEL_DIGEST_H

#include <stddef.h>

#define KEEL_SHA256_SIZE 32

/* SHA-256 of `len` bytes at `data` into `out`; aborts if OpenSSL fails. */
void keel_sha256(unsigned char out[KEEL_SHA256_SIZE], const void *data, size_t len);

/* `n` bytes as lowercase hex into `out` (2 * n + 1 bytes, NUL-terminated). */
void keel_hex(char *out, const void *data, size_t n);

#endif
