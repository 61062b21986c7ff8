/*
 * buf.c - growable byte buffer.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/buf.h"

/* The shared empty buffer: never written, 8-byte aligned like any allocation. */
unsigned char keel_buf_slopbuf[8] __attribute__((aligned(8)));

void keel_buf_init(struct keel_buf *b, size_t hint)
{
    b->len = 0;
    b->alloc = 0;
    b->buf = keel_buf_slopbuf;
    if (hint)
        keel_buf_grow(b, hint);
}

void keel_buf_release(struct keel_buf *b)
{
    if (b->alloc)
        free(b->buf);
    keel_buf_init(b, 0);
}

unsigned char *keel_buf_detach(struct keel_buf *b, size_t *len)
{
    unsigned char *p;

    if (b->alloc == 0)
        keel_buf_grow(b, 0);
    p = b->buf;
    if (len)
        *len = b->len;
    keel_buf_init(b, 0);
    return p;
}

void keel_buf_grow(struct keel_buf *b, size_t extra)
{
    size_t need = keel_size_add(keel_size_add(b->len, extra), 1);
    size_t alloc;
    int fresh = b->alloc == 0;

    if (need <= b->alloc)
        return;
    alloc = b->alloc ? b->alloc : 64;
    while (alloc < need)
        alloc = alloc > SIZE_MAX / 2 ? need : alloc * 2;
    b->buf = keel_realloc(fresh ? NULL : b->buf, alloc);
    b->alloc = alloc;
    if (fresh)
        b->buf[0] = '\0';
}

void keel_buf_setlen(struct keel_buf *b, size_t len)
{
    if (b->alloc == 0) {
        if (len != 0) {
            fprintf(stderr, "keel: keel_buf_setlen(%zu) on an empty buffer\n", len);
            abort();
        }
        return;
    }
    if (len >= b->alloc) {
        fprintf(stderr, "keel: keel_buf_setlen(%zu) beyond %zu\n", len, b->alloc);
        abort();
    }
    b->len = len;
    b->buf[len] = '\0';
}

unsigned char *keel_buf_add(struct keel_buf *b, const void *data, size_t len)
{
    unsigned char *p;

    keel_buf_grow(b, len);
    p = b->buf + b->len;
    if (len)
        memcpy(p, data, len);
    keel_buf_setlen(b, b->len + len);
    return p;
}

unsigned char *keel_buf_add_zero(struct keel_buf *b, size_t len)
{
    unsigned char *p;

    keel_buf_grow(b, len);
    p = b->buf + b->len;
    memset(p, 0, len);
    keel_buf_setlen(b, b->len + len);
    return p;
}

void keel_buf_add_str(struct keel_buf *b, const char *s)
{
    keel_buf_add(b, s, strlen(s));
}

void keel_buf_vaddf(struct keel_buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    int n;

    keel_buf_grow(b, 64);
    va_copy(cp, ap);
    n = vsnprintf((char *)b->buf + b->len, keel_buf_avail(b) + 1, fmt, cp);
    va_end(cp);
    if (n < 0)
        return;
    if ((size_t)n > keel_buf_avail(b)) {
        keel_buf_grow(b, (size_t)n);
        n = vsnprintf((char *)b->buf + b->len, keel_buf_avail(b) + 1, fmt, ap);
        if (n < 0)
            return;
    }
    keel_buf_setlen(b, b->len + (size_t)n);
}

void keel_buf_addf(struct keel_buf *b, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    keel_buf_vaddf(b, fmt, ap);
    va_end(ap);
}

void keel_buf_consume(struct keel_buf *b, size_t n)
{
    if (n > b->len) {
        fprintf(stderr, "keel: keel_buf_consume(%zu) beyond length %zu\n", n, b->len);
        abort();
    }
    if (n == 0)
        return;
    memmove(b->buf, b->buf + n, b->len - n);
    keel_buf_setlen(b, b->len - n);
}
