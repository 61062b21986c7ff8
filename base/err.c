/*
 * err.c - error names, messages and the error buffer.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "keel/err.h"

#define KEEL__ERR_MSG(name, msg) msg,
static const char *const keel_messages[] = {KEEL_ERRNO_MAP(KEEL__ERR_MSG)};
#undef KEEL__ERR_MSG

#define KEEL__ERR_NAME(name, msg) "KEEL_" #name,
static const char *const keel_names[] = {KEEL_ERRNO_MAP(KEEL__ERR_NAME)};
#undef KEEL__ERR_NAME

int keel_err_is_keel(int code)
{
    return code > KEEL__ERR_FIRST && code < KEEL__ERR_LAST;
}

void keel_error_init(struct keel_error *e)
{
    e->code = 0;
    e->msg[0] = '\0';
}

int keel_err_set(struct keel_error *e, int code, const char *fmt, ...)
{
    va_list ap;

    if (e == NULL)
        return code;
    e->code = code;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
    va_end(ap);
    return code;
}

int keel_err_prefix(struct keel_error *e, int fallback, const char *fmt, ...)
{
    char prefix[KEEL_ERROR_MSG_MAX];
    char joined[2 * KEEL_ERROR_MSG_MAX + 2];
    va_list ap;

    if (e == NULL)
        return fallback;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    snprintf(joined, sizeof(joined), "%s: %s", prefix, e->msg);
    memcpy(e->msg, joined, sizeof(e->msg) - 1);
    e->msg[sizeof(e->msg) - 1] = '\0';
    if (e->code == 0)
        e->code = fallback;
    return e->code;
}

const char *keel_strerror(int code)
{
    const char *s;

    if (code == 0)
        return "success";
    if (keel_err_is_keel(code))
        return keel_messages[code - KEEL__ERR_FIRST - 1];
    if (code < 0 && code > -4096) {
        s = strerrordesc_np(-code);
        if (s != NULL)
            return s;
    }
    return "unknown error";
}

const char *keel_err_name(int code)
{
    const char *s;

    if (code == 0)
        return "KEEL_OK";
    if (keel_err_is_keel(code))
        return keel_names[code - KEEL__ERR_FIRST - 1];
    if (code < 0 && code > -4096) {
        s = strerrorname_np(-code);
        if (s != NULL)
            return s;
    }
    return "UNKNOWN";
}
