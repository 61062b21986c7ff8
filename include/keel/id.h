/*
 * id.h - the rule for names: node ids, job names, dataset names.
 *
 * An id is 1 to KEEL_ID_MAX characters of A-Z a-z 0-9 '-' '_' (the same rule
 * as `[node] id` in the configuration), so it can be used as an etcd key
 * component, a file name and a log word without quoting.  Thread-safe.
 */
#ifndef KEEL_ID_H
#define KEEL_ID_H

#include <stddef.h>
#include <string.h>

#define KEEL_ID_MAX 64

/* Non-zero when the NUL-terminated `s` is a valid id. */
static inline int keel_id_valid(const char *s)
{
    size_t n = 0;

    for (; s[n] != '\0'; n++) {
        char c = s[n];

        if (n >= KEEL_ID_MAX)
            return 0;
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return 0;
    }
    return n > 0;
}

/* The index of `id` in `sorted[0..n)` (ids in strcmp order), or -1.  Binary search. */
static inline long keel_id_find(const char *const *sorted, size_t n, const char *id)
{
    size_t lo = 0, hi = n;

    while (id != NULL && lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(sorted[mid], id);

        if (c == 0)
            return (long)mid;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

#endif
