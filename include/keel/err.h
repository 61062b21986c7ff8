/*
 * err.h - Keel's error codes and the optional error buffer.
 *
 * Invariants:
 *  - 0 (KEEL_OK) is success; every error is a negative int.
 *  - System errors are reported as -errno (e.g. -ENOENT); Keel's own codes are
 *    below KEEL__ERR_BASE so they never collide with an errno value.
 *  - keel_strerror() and keel_err_name() never return NULL, also for codes they
 *    do not know; the strings are static and valid for the program's life.
 *
 * Functions that can fail take an optional `struct keel_error *` as their last
 * argument.  When it is non-NULL they fill it with the code and a sentence that
 * names the subject ("cannot open 'x.ini': No such file or directory"); when it
 * is NULL the detail is dropped and only the code is returned.
 */
#ifndef KEEL_ERR_H
#define KEEL_ERR_H

#include <stddef.h>

/*
 * The one list of Keel's own error codes: X(NAME, "message").
 * Append only; the numeric values are on the wire (ERROR frames), so an entry
 * is never removed or reordered.
 */
#define KEEL_ERRNO_MAP(X)                                                                          \
    X(EINVAL, "invalid argument")                                                                  \
    X(ECONFIG, "invalid configuration")                                                            \
    X(ENOTFOUND, "not found")                                                                      \
    X(EEXIST, "already exists")                                                                    \
    X(ETIMEDOUT, "timed out")                                                                      \
    X(EPERM, "permission denied")                                                                  \
    X(ENOTIMPL, "not implemented")                                                                 \
    X(ETRUNCATED, "truncated frame header")                                                        \
    X(EMAGIC, "bad frame magic")                                                                   \
    X(EVERSION, "unsupported protocol version")                                                    \
    X(ETYPE, "unknown message type")                                                               \
    X(EFLAGS, "unknown frame flags")                                                               \
    X(ERESERVED, "reserved field not zero")                                                        \
    X(EFRAMESIZE, "frame exceeds the maximum size")                                                \
    X(EBODYLEN, "body length past the end of the data")                                            \
    X(ESHORTBODY, "body shorter than its fields")                                                  \
    X(ETRAILING, "bytes after the end of the body's fields")                                       \
    X(ECOUNT, "element count does not fit in the body")                                            \
    X(EUNSORTED, "keys not strictly increasing")                                                   \
    X(EROWWIDTH, "row width is zero or too large")                                                 \
    X(ESTRING, "string field too long or malformed")                                               \
    X(EPADDING, "padding bytes not zero")                                                          \
    X(EOFFSETS, "record offsets not increasing or past the data")                                  \
    X(EEPOCH, "stale epoch")                                                                       \
    X(EREDIRECT, "not the primary for this range")                                                 \
    X(ECORRUPT, "data is corrupt")                                                                 \
    X(ECHECKSUM, "checksum mismatch")                                                              \
    X(ESTORE, "storage error")                                                                     \
    X(ETLS, "TLS error")                                                                           \
    X(EETCD, "etcd error")                                                                         \
    X(EUNAVAILABLE, "service unavailable")                                                         \
    X(ECANCELED, "operation canceled")                                                             \
    X(EFORMAT, "unsupported storage format version")                                               \
    X(EINDOUBT, "outcome of the write is unknown")

#define KEEL__ERR_BASE (-10000)

enum keel_err {
    KEEL_OK = 0,
    KEEL__ERR_FIRST = KEEL__ERR_BASE,
#define KEEL__ERR_ENUM(name, msg) KEEL_##name,
    KEEL_ERRNO_MAP(KEEL__ERR_ENUM)
#undef KEEL__ERR_ENUM
        KEEL__ERR_LAST
};

/* Size of the message in struct keel_error, including the NUL. */
#define KEEL_ERROR_MSG_MAX 256

/* Caller-owned detail of the last error; zero-initialize or keel_error_init(). */
struct keel_error {
    int code;                     /* 0 or a negative error code */
    char msg[KEEL_ERROR_MSG_MAX]; /* NUL-terminated, "" when code is 0 */
};

/* Reset `e` to "no error". */
void keel_error_init(struct keel_error *e);

/*
 * Record `code` and a printf-style message in `e` (which may be NULL) and
 * return `code`, so callers can write `return keel_err_set(err, ...)`.
 * A message longer than KEEL_ERROR_MSG_MAX-1 bytes is cut.
 */
int keel_err_set(struct keel_error *e, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Prefix the message already in `e` with a printf-style context and ": ",
 * keeping the code; returns e->code (or `fallback` when e is NULL).  Use it to
 * add the caller's subject as an error travels up: "config 'a.ini': line 3: ...".
 */
int keel_err_prefix(struct keel_error *e, int fallback, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A short sentence for `code`: Keel's message, or strerror(-code) for -errno. */
const char *keel_strerror(int code);

/* The symbolic name of `code`: "KEEL_EMAGIC", "ENOENT", "KEEL_OK", or "UNKNOWN". */
const char *keel_err_name(int code);

/* Non-zero when `code` is one of Keel's own codes (not -errno, not 0). */
int keel_err_is_keel(int code);

#endif
