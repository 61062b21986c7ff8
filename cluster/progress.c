/*
 * progress.c - the JSON of a worker's shard progress and test accuracy.
 */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "json.h"
#include "keys.h"
#include "keel/progress.h"

static int get_worker(json_t *root, const char *what, char *out, struct keel_error *err)
{
    json_t *v = json_object_get(root, "worker");

    if (!json_is_string(v) || !keel_id_valid(json_string_value(v)))
        return keel__json_corrupt(err, what, "worker: must be an id of 1-%d of [A-Za-z0-9_-]",
                                  KEEL_ID_MAX);
    snprintf(out, KEEL_ID_MAX + 1, "%s", json_string_value(v));
    return 0;
}

/* A JSON number (an integer is taken too: 1 is a valid accuracy) in [lo, hi]. */
static int get_real(json_t *root, const char *what, const char *key, double lo, double hi,
                    double *out, struct keel_error *err)
{
    json_t *v = json_object_get(root, key);
    double x;

    if (!json_is_number(v))
        return keel__json_corrupt(err, what, "%s: must be a number", key);
    x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi)
        return keel__json_corrupt(err, what, "%s: must be a number from %g to %g", key, lo, hi);
    *out = x;
    return 0;
}

void keel_progress_encode(const struct keel_progress *p, struct keel_buf *out)
{
    json_t *root = json_object();

    json_object_set_new(root, "worker", json_string(p->worker));
    json_object_set_new(root, "incarnation", json_integer((json_int_t)p->incarnation));
    json_object_set_new(root, "pass", json_integer(p->pass));
    json_object_set_new(root, "batch", json_integer(p->batch));
    json_object_set_new(root, "lease", json_integer((json_int_t)p->lease));
    keel__json_dump_record(root, out);
}

int keel_progress_decode(const void *data, size_t len, struct keel_progress *p,
                         struct keel_error *err)
{
    static const char *const keys[] = {"worker", "incarnation", "pass", "batch", "lease", NULL};
    uint64_t inc = 0, pass = 0, batch = 0, lease = 0;
    json_t *root;
    int rc;

    memset(p, 0, sizeof(*p));
    if ((root = keel__json_load_record(data, len, KEEL_PROGRESS_MAX_JSON, "progress", keys, 1,
                                       err)) == NULL)
        return KEEL_ECORRUPT;
    if ((rc = get_worker(root, "progress", p->worker, err)) != 0 ||
        (rc = keel__json_get_uint(root, "progress", "incarnation", INT64_MAX, &inc, err)) != 0 ||
        (rc = keel__json_get_uint(root, "progress", "pass", UINT32_MAX, &pass, err)) != 0 ||
        (rc = keel__json_get_uint(root, "progress", "batch", UINT32_MAX, &batch, err)) != 0 ||
        (rc = keel__json_get_uint(root, "progress", "lease", INT64_MAX, &lease, err)) != 0) {
        memset(p, 0, sizeof(*p));
        goto out;
    }
    p->lease = lease;
    p->incarnation = inc;
    p->pass = (uint32_t)pass;
    p->batch = (uint32_t)batch;
out:
    json_decref(root);
    return rc;
}

void keel_eval_encode(const struct keel_eval *e, struct keel_buf *out)
{
    json_t *root = json_object();

    json_object_set_new(root, "worker", json_string(e->worker));
    json_object_set_new(root, "pass", json_integer(e->pass));
    json_object_set_new(root, "accuracy", json_real(e->accuracy));
    json_object_set_new(root, "loss", json_real(e->loss));
    json_object_set_new(root, "examples", json_integer((json_int_t)e->examples));
    json_object_set_new(root, "time_ms", json_integer((json_int_t)e->time_ms));
    keel__json_dump_record(root, out);
}

int keel_eval_decode(const void *data, size_t len, struct keel_eval *e, struct keel_error *err)
{
    static const char *const keys[] = {"worker",   "pass",    "accuracy", "loss",
                                       "examples", "time_ms", NULL};
    uint64_t pass = 0, examples = 0, time_ms = 0;
    json_t *root;
    int rc;

    memset(e, 0, sizeof(*e));
    if ((root = keel__json_load_record(data, len, KEEL_PROGRESS_MAX_JSON, "eval", keys, 1, err)) ==
        NULL)
        return KEEL_ECORRUPT;
    if ((rc = get_worker(root, "eval", e->worker, err)) != 0 ||
        (rc = keel__json_get_uint(root, "eval", "pass", UINT32_MAX, &pass, err)) != 0 ||
        (rc = get_real(root, "eval", "accuracy", 0.0, 1.0, &e->accuracy, err)) != 0 ||
        (rc = get_real(root, "eval", "loss", 0.0, HUGE_VAL, &e->loss, err)) != 0 ||
        (rc = keel__json_get_uint(root, "eval", "examples", INT64_MAX, &examples, err)) != 0 ||
        (rc = keel__json_get_uint(root, "eval", "time_ms", INT64_MAX, &time_ms, err)) != 0) {
        memset(e, 0, sizeof(*e));
        goto out;
    }
    if (examples == 0) {
        rc = keel__json_corrupt(err, "eval", "examples: must be at least 1");
        memset(e, 0, sizeof(*e));
        goto out;
    }
    e->pass = (uint32_t)pass;
    e->examples = examples;
    e->time_ms = time_ms;
out:
    json_decref(root);
    return rc;
}

/* ---- the keys below jobs/<job>/ ---- */

enum keel_job_key keel_job_key_parse(const char *rest, uint32_t *num, char *worker)
{
    struct keel_key k;

    memset(&k, 0, sizeof(k));
    switch (keel_key_parse_job_rest(rest, &k)) {
    case KEEL_KEY_JOB_SHARD:
        *num = k.num;
        return KEEL_JOB_KEY_SHARD;
    case KEEL_KEY_JOB_PROGRESS:
        *num = k.num;
        return KEEL_JOB_KEY_PROGRESS;
    case KEEL_KEY_JOB_EVAL:
        *num = k.num;
        snprintf(worker, KEEL_ID_MAX + 1, "%s", k.id);
        return KEEL_JOB_KEY_EVAL;
    default:
        return KEEL_JOB_KEY_OTHER;
    }
}
