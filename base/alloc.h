/*
 * alloc.h - allocation that never returns NULL.
 *
 * Keel treats running out of memory as fatal: every wrapper here prints one
 * line naming the size asked for and aborts, so callers never check for NULL.
 * Array sizes are multiplied with an overflow check first; an overflow is a
 * bug in the caller and aborts the same way.  Memory from these functions is
 * released with plain free().  All functions are thread-safe.
 */
#ifndef KEEL_ALLOC_H
#define KEEL_ALLOC_H

#include <stddef.h>

/* malloc(size); a size of 0 returns a unique non-NULL pointer. */
void *keel_malloc(size_t size);

/* calloc(n, size) with the product checked for overflow. */
void *keel_calloc(size_t n, size_t size);

/* realloc(p, size); `p` may be NULL. */
void *keel_realloc(void *p, size_t size);

/* realloc(p, n * size) with the product checked for overflow. */
void *keel_reallocarray(void *p, size_t n, size_t size);

/* strdup(s); `s` must not be NULL. */
char *keel_strdup(const char *s);

/* Copy of the first `n` bytes of `s`, NUL-terminated. */
char *keel_strndup(const char *s, size_t n);

/* Allocate an array of `n` elements of *p's type into p (zeroed). */
#define KEEL_ALLOC_ARRAY(p, n) ((p) = keel_calloc((n), sizeof(*(p))))

/* Resize the array p to `n` elements of *p's type (new tail not zeroed). */
#define KEEL_REALLOC_ARRAY(p, n) ((p) = keel_reallocarray((p), (n), sizeof(*(p))))

/* a + b, aborting on overflow: for sizes computed from trusted values. */
size_t keel_size_add(size_t a, size_t b);

/* a * b, aborting on overflow: for sizes computed from trusted values. */
size_t keel_size_mul(size_t a, size_t b);

#endif
