/*
 * json_internal.h - what the codecs of Keel's small JSON records in etcd
 * share (job state and shard lease in coordinator/jobs.c, progress and
 * evaluation reports in common/progress.c).  Not a public API.
 *
 * The records are canonical JSON: compact, keys sorted, no whitespace, so
 * that a record encodes to the same bytes every time.  Their decoders take
 * untrusted bytes: a size limit, no duplicate keys, known keys only, and
 * every refusal a KEEL_ECORRUPT naming the record and the field.  No state;
 * thread-safe.
 */
#ifndef KEEL_JSON_INTERNAL_H
#define KEEL_JSON_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "keel/buf.h"
#include "keel/err.h"

/*
 * Append `root` as canonical JSON (reals to 9 significant digits) to `out`
 * and drop the caller's reference to `root`.  Aborts when out of memory.
 */
void keel__json_dump_record(json_t *root, struct keel_buf *out);

/* Set `err` to KEEL_ECORRUPT with the message "WHAT: <fmt ...>"; returns KEEL_ECORRUPT. */
int keel__json_corrupt(struct keel_error *err, const char *what, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Parse `len` untrusted bytes (at most `max`) as the record `what` ("shard"):
 * one JSON object without duplicate keys whose keys are all in the
 * NULL-terminated `known` and, when `all_required`, holds every one of them.
 * Returns the object (the caller json_decref()s it), or NULL with `err` set.
 */
json_t *keel__json_load_record(const void *data, size_t len, size_t max, const char *what,
                               const char *const *known, int all_required, struct keel_error *err);

/* Field `key` of record `what` as an integer from 0 to `max` into *out; KEEL_ECORRUPT otherwise. */
int keel__json_get_uint(const json_t *root, const char *what, const char *key, uint64_t max,
                        uint64_t *out, struct keel_error *err);

#endif
