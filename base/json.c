/*
 * json.c - encoding and strict decoding of the small JSON records Keel keeps
 * in etcd (json_internal.h).
 */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

void keel__json_dump_record(json_t *root, struct keel_buf *out)
{
    char *text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS | JSON_REAL_PRECISION(9));

    if (text == NULL) {
        fprintf(stderr, "keel: out of memory encoding JSON\n");
        abort();
    }
    keel_buf_add_str(out, text);
    free(text);
    json_decref(root);
}

int keel__json_corrupt(struct keel_error *err, const char *what, const char *fmt, ...)
{
    char msg[KEEL_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return keel_err_set(err, KEEL_ECORRUPT, "%s: %s", what, msg);
}

json_t *keel__json_load_record(const void *data, size_t len, size_t max, const char *what,
                               const char *const *known, int all_required, struct keel_error *err)
{
    json_error_t jerr;
    json_t *root, *v;
    const char *key;

    if (len > max) {
        keel__json_corrupt(err, what, "%zu bytes, more than the %zu allowed", len, max);
        return NULL;
    }
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        keel__json_corrupt(err, what, "not JSON: %s at offset %d", jerr.text, jerr.position);
        return NULL;
    }
    if (!json_is_object(root)) {
        keel__json_corrupt(err, what, "not a JSON object");
        goto fail;
    }
    json_object_foreach(root, key, v)
    {
        const char *const *k = known;

        while (*k && strcmp(*k, key) != 0)
            k++;
        if (*k == NULL) {
            keel__json_corrupt(err, what, "unknown key '%.64s'", key);
            goto fail;
        }
    }
    for (const char *const *k = known; all_required && *k; k++)
        if (json_object_get(root, *k) == NULL) {
            keel__json_corrupt(err, what, "%s: missing", *k);
            goto fail;
        }
    return root;
fail:
    json_decref(root);
    return NULL;
}

int keel__json_get_uint(const json_t *root, const char *what, const char *key, uint64_t max,
                        uint64_t *out, struct keel_error *err)
{
    const json_t *v = json_object_get(root, key);

    if (v == NULL)
        return keel__json_corrupt(err, what, "%s: missing", key);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) > max)
        return keel__json_corrupt(err, what, "%s: must be an integer from 0 to %" PRIu64, key, max);
    *out = (uint64_t)json_integer_value(v);
    return 0;
}
