/*
 * alloc.c - abort-on-failure allocation wrappers.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"

static void oom(size_t size)
{
    fprintf(stderr, "keel: out of memory allocating %zu bytes\n", size);
    abort();
}

static void overflow(size_t a, size_t b, const char *op)
{
    fprintf(stderr, "keel: size overflow computing %zu %s %zu\n", a, op, b);
    abort();
}

size_t keel_size_add(size_t a, size_t b)
{
    size_t r;

    if (__builtin_add_overflow(a, b, &r))
        overflow(a, b, "+");
    return r;
}

size_t keel_size_mul(size_t a, size_t b)
{
    size_t r;

    if (__builtin_mul_overflow(a, b, &r))
        overflow(a, b, "*");
    return r;
}

void *keel_malloc(size_t size)
{
    void *p = malloc(size ? size : 1);

    if (p == NULL)
        oom(size);
    return p;
}

void *keel_calloc(size_t n, size_t size)
{
    void *p;

    (void)keel_size_mul(n, size);
    p = calloc(n ? n : 1, size ? size : 1);
    if (p == NULL)
        oom(n * size);
    return p;
}

void *keel_realloc(void *p, size_t size)
{
    void *q = realloc(p, size ? size : 1);

    if (q == NULL)
        oom(size);
    return q;
}

void *keel_reallocarray(void *p, size_t n, size_t size)
{
    return keel_realloc(p, keel_size_mul(n, size));
}

char *keel_strdup(const char *s)
{
    return keel_strndup(s, strlen(s));
}

char *keel_strndup(const char *s, size_t n)
{
    size_t len = strnlen(s, n);
    char *p = keel_malloc(keel_size_add(len, 1));

    memcpy(p, s, len);
    p[len] = '\0';
    return p;
}
