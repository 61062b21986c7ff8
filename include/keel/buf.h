/*
 * buf.h - a growable byte buffer and a borrowed view.
 *
 * struct keel_buf invariants:
 *  - `buf` is never NULL: an empty buffer points at a shared static empty
 *    string, so `b.buf` can always be passed to functions taking a C string.
 *  - `buf[len]` is always '\0' (one byte past the data is reserved for it),
 *    which makes a buffer of text a valid C string; the data itself is binary
 *    safe and may hold NUL bytes.
 *  - `alloc` is 0 while `buf` is the static empty string; otherwise the
 *    buffer owns `alloc` bytes from keel_malloc().
 *  - Memory from keel_malloc() is aligned for any type, so a frame built at
 *    offset 0 of a buffer has its 8-byte fields aligned.
 *
 * A keel_buf is not thread-safe; it belongs to one thread at a time.
 * Growing may move `buf`: pointers into it are valid until the next call that
 * adds to the buffer.
 *
 * struct keel_view is a borrowed (data, len) pair, like MDB_val: it owns
 * nothing, and is valid for as long as the memory it points into.
 */
#ifndef KEEL_BUF_H
#define KEEL_BUF_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

struct keel_buf {
    size_t len;
    size_t alloc;
    unsigned char *buf;
};

struct keel_view {
    const unsigned char *data;
    size_t len;
};

extern unsigned char keel_buf_slopbuf[];
#define KEEL_BUF_INIT                                                                              \
    {                                                                                              \
        0, 0, keel_buf_slopbuf                                                                     \
    }

/* Initialize an empty buffer, reserving `hint` bytes when non-zero. */
void keel_buf_init(struct keel_buf *b, size_t hint);

/* Free the memory and leave `b` as after keel_buf_init(b, 0). */
void keel_buf_release(struct keel_buf *b);

/*
 * Take the memory out of `b`: returns a keel_malloc()ed pointer the caller
 * frees with free(), and stores its length in *len when `len` is non-NULL.
 * `b` is left empty.
 */
unsigned char *keel_buf_detach(struct keel_buf *b, size_t *len);

/* Make room for `extra` more bytes past len (aborts on overflow or OOM). */
void keel_buf_grow(struct keel_buf *b, size_t extra);

/* Set the length to `len`, which must be <= alloc - 1 (or 0). */
void keel_buf_setlen(struct keel_buf *b, size_t len);

/* Empty the buffer, keeping its memory. */
static inline void keel_buf_reset(struct keel_buf *b)
{
    keel_buf_setlen(b, 0);
}

/* Bytes left before the buffer must grow. */
static inline size_t keel_buf_avail(const struct keel_buf *b)
{
    return b->alloc ? b->alloc - b->len - 1 : 0;
}

/* Append `len` bytes; returns a pointer to where they now are. */
unsigned char *keel_buf_add(struct keel_buf *b, const void *data, size_t len);

/* Append `len` zero bytes; returns a pointer to them, for filling in place. */
unsigned char *keel_buf_add_zero(struct keel_buf *b, size_t len);

/* Append a NUL-terminated string without its NUL. */
void keel_buf_add_str(struct keel_buf *b, const char *s);

/* Append printf-style text. */
void keel_buf_addf(struct keel_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void keel_buf_vaddf(struct keel_buf *b, const char *fmt, va_list ap)
    __attribute__((format(printf, 2, 0)));

/* Drop the first `n` bytes (n <= len), moving the rest to the front. */
void keel_buf_consume(struct keel_buf *b, size_t n);

/* A view of the whole buffer, valid until the buffer next changes. */
static inline struct keel_view keel_buf_view(const struct keel_buf *b)
{
    struct keel_view v = {b->buf, b->len};
    return v;
}

/* A view of `len` bytes at `data`. */
static inline struct keel_view keel_view_make(const void *data, size_t len)
{
    struct keel_view v = {(const unsigned char *)data, len};
    return v;
}

/* Little-endian loads and stores that need no alignment. */
static inline uint16_t keel_load_u16le(const unsigned char *p)
{
    return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static inline uint32_t keel_load_u32le(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static inline uint64_t keel_load_u64le(const unsigned char *p)
{
    return (uint64_t)keel_load_u32le(p) | (uint64_t)keel_load_u32le(p + 4) << 32;
}

static inline void keel_store_u16le(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
}

static inline void keel_store_u32le(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static inline void keel_store_u64le(unsigned char *p, uint64_t v)
{
    keel_store_u32le(p, (uint32_t)v);
    keel_store_u32le(p + 4, (uint32_t)(v >> 32));
}

/*
 * Append integers in little-endian byte order.  Inline, with the room check
 * first: encoders call these for every field of every frame.
 */
static inline unsigned char *keel__buf_room(struct keel_buf *b, size_t n)
{
    unsigned char *p;

    if (keel_buf_avail(b) < n)
        keel_buf_grow(b, n);
    p = b->buf + b->len;
    b->len += n;
    b->buf[b->len] = '\0';
    return p;
}

static inline void keel_buf_add_u8(struct keel_buf *b, uint8_t v)
{
    *keel__buf_room(b, 1) = v;
}

static inline void keel_buf_add_u16le(struct keel_buf *b, uint16_t v)
{
    keel_store_u16le(keel__buf_room(b, 2), v);
}

static inline void keel_buf_add_u32le(struct keel_buf *b, uint32_t v)
{
    keel_store_u32le(keel__buf_room(b, 4), v);
}

static inline void keel_buf_add_u64le(struct keel_buf *b, uint64_t v)
{
    keel_store_u64le(keel__buf_room(b, 8), v);
}

#endif
