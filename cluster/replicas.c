/*
 * replicas.c - the JSON of a server's replica report (keel/replicas.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "json.h"
#include "keel/replicas.h"

/* A JSON integer in [lo, INT64_MAX]. */
static int get_int(json_t *v, uint64_t lo, uint64_t *out)
{
    if (!json_is_integer(v) || json_integer_value(v) < 0 || (uint64_t)json_integer_value(v) < lo)
        return -1;
    *out = (uint64_t)json_integer_value(v);
    return 0;
}

void keel_replica_report_encode(const struct keel_replica_report *r, struct keel_buf *out)
{
    json_t *root = json_object(), *ranges = json_array(), *lost = json_array();

    json_object_set_new(root, "incarnation", json_integer((json_int_t)r->incarnation));
    for (unsigned i = 0; i < KEEL_PROTO_NRANGES; i++)
        if (r->lost[i])
            json_array_append_new(lost, json_integer((json_int_t)i));
    json_object_set_new(root, "lost", lost);
    for (unsigned i = 0; i < KEEL_PROTO_NRANGES; i++) {
        if (r->terms[i] == 0)
            continue;
        json_t *e =
            json_pack("[I,I,I]", (json_int_t)i, (json_int_t)r->terms[i], (json_int_t)r->lsns[i]);

        for (unsigned k = 0; k < r->npledged[i] && k < KEEL_REPLICAS_MAX_PLEDGED; k++)
            json_array_append_new(e, json_string(r->pledged[i][k]));
        json_array_append_new(ranges, e);
    }
    json_object_set_new(root, "ranges", ranges);
    if (r->nfloor > 0) {
        json_t *restoring = json_array(), *floor = json_array();

        for (unsigned i = 0; i < KEEL_PROTO_NRANGES; i++)
            if (r->restoring[i] && r->terms[i] != 0)
                json_array_append_new(restoring, json_integer((json_int_t)i));
        for (uint32_t n = 0; n < r->nfloor && n < KEEL_REPLICAS_MAX_SHARDS; n++)
            json_array_append_new(floor, json_integer((json_int_t)r->floor[n]));
        json_object_set_new(root, "restoring", restoring);
        json_object_set_new(root, "floor", floor);
    }
    for (unsigned i = 0; i < KEEL_PROTO_NRANGES; i++) {
        json_t *stored;

        if (r->stored[i] == 0 || r->terms[i] != 0)
            continue;
        if ((stored = json_object_get(root, "stored")) == NULL)
            json_object_set_new(root, "stored", stored = json_array());
        json_array_append_new(stored, json_pack("[I,I]", (json_int_t)i, (json_int_t)r->stored[i]));
    }
    keel__json_dump_record(root, out);
}

/* "restoring" and "floor", both or neither: into r (whose terms are decoded). */
static int get_restoring(json_t *root, struct keel_replica_report *r, struct keel_error *err)
{
    json_t *restoring = json_object_get(root, "restoring"), *floor = json_object_get(root, "floor");
    json_t *e;
    size_t i;
    long prev = -1;

    if (restoring == NULL && floor == NULL)
        return 0;
    if (!json_is_array(restoring) || json_array_size(restoring) > KEEL_PROTO_NRANGES ||
        !json_is_array(floor) || json_array_size(floor) == 0 ||
        json_array_size(floor) > KEEL_REPLICAS_MAX_SHARDS)
        return keel__json_corrupt(err, "replicas",
                                  "restoring, floor: must be an array of at most %d ranges and "
                                  "one of 1-%d seqs, given together",
                                  KEEL_PROTO_NRANGES, KEEL_REPLICAS_MAX_SHARDS);
    json_array_foreach(restoring, i, e)
    {
        uint64_t range;

        if (get_int(e, 0, &range) != 0 || range >= KEEL_PROTO_NRANGES || (long)range <= prev ||
            r->terms[range] == 0)
            return keel__json_corrupt(err, "replicas",
                                      "restoring[%zu]: must be a range listed in ranges, the "
                                      "list increasing",
                                      i);
        prev = (long)range;
        r->restoring[range] = 1;
    }
    json_array_foreach(floor, i, e)
    {
        if (get_int(e, 0, &r->floor[i]) != 0)
            return keel__json_corrupt(err, "replicas", "floor[%zu]: must be an integer from 0", i);
    }
    r->nfloor = (uint32_t)json_array_size(floor);
    return 0;
}

/* "stored", if there: into r (whose terms are decoded). */
static int get_stored(json_t *root, struct keel_replica_report *r, struct keel_error *err)
{
    json_t *stored = json_object_get(root, "stored"), *e;
    size_t i;
    long prev = -1;

    if (stored == NULL)
        return 0;
    if (!json_is_array(stored) || json_array_size(stored) > KEEL_PROTO_NRANGES)
        return keel__json_corrupt(err, "replicas", "stored: must be an array of at most %d entries",
                                  KEEL_PROTO_NRANGES);
    json_array_foreach(stored, i, e)
    {
        uint64_t range, lsn;

        if (!json_is_array(e) || json_array_size(e) != 2 ||
            get_int(json_array_get(e, 0), 0, &range) != 0 || range >= KEEL_PROTO_NRANGES ||
            (long)range <= prev || r->terms[range] != 0 ||
            get_int(json_array_get(e, 1), 1, &lsn) != 0)
            return keel__json_corrupt(err, "replicas",
                                      "stored[%zu]: must be [range, lsn] with ranges increasing "
                                      "below %d, none listed in ranges, and an LSN of at least 1",
                                      i, KEEL_PROTO_NRANGES);
        prev = (long)range;
        r->stored[range] = lsn;
    }
    return 0;
}

/* The ids after an entry's three numbers: distinct valid ids, into r's pledges of `range`. */
static int get_pledged(json_t *e, struct keel_replica_report *r, unsigned range)
{
    if (range >= KEEL_PROTO_NRANGES)
        return -1;
    for (size_t k = 3; k < json_array_size(e); k++) {
        json_t *v = json_array_get(e, k);
        const char *id = json_is_string(v) ? json_string_value(v) : NULL;

        if (id == NULL || !keel_id_valid(id))
            return -1;
        for (unsigned j = 0; j < r->npledged[range]; j++)
            if (strcmp(r->pledged[range][j], id) == 0)
                return -1;
        snprintf(r->pledged[range][r->npledged[range]++], KEEL_ID_MAX + 1, "%s", id);
    }
    return 0;
}

int keel_replica_report_decode(const void *data, size_t len, struct keel_replica_report *r,
                               struct keel_error *err)
{
    static const char *const keys[] = {"incarnation", "lost",   "ranges", "restoring",
                                       "floor",       "stored", NULL};
    json_t *root, *ranges, *lost, *e;
    size_t i;
    long prev = -1;
    int rc = 0;

    memset(r, 0, sizeof(*r));
    if ((root = keel__json_load_record(data, len, KEEL_REPLICAS_MAX_JSON, "replicas", keys, 0,
                                       err)) == NULL)
        return KEEL_ECORRUPT;
    if ((rc = keel__json_get_uint(root, "replicas", "incarnation", INT64_MAX, &r->incarnation,
                                  err)) != 0)
        goto out;
    lost = json_object_get(root, "lost");
    if (!json_is_array(lost) || json_array_size(lost) > KEEL_PROTO_NRANGES) {
        rc = keel__json_corrupt(err, "replicas", "lost: must be an array of at most %d ranges",
                                KEEL_PROTO_NRANGES);
        goto out;
    }
    json_array_foreach(lost, i, e)
    {
        uint64_t range;

        if (get_int(e, 0, &range) != 0 || range >= KEEL_PROTO_NRANGES || (long)range <= prev) {
            rc = keel__json_corrupt(err, "replicas",
                                    "lost[%zu]: must be a range below %d, the list increasing", i,
                                    KEEL_PROTO_NRANGES);
            goto out;
        }
        prev = (long)range;
        r->lost[range] = 1;
    }
    prev = -1;
    ranges = json_object_get(root, "ranges");
    if (!json_is_array(ranges) || json_array_size(ranges) > KEEL_PROTO_NRANGES) {
        rc = keel__json_corrupt(err, "replicas", "ranges: must be an array of at most %d entries",
                                KEEL_PROTO_NRANGES);
        goto out;
    }
    json_array_foreach(ranges, i, e)
    {
        uint64_t range, term, lsn;

        if (!json_is_array(e) || json_array_size(e) < 3 ||
            json_array_size(e) > 3 + KEEL_REPLICAS_MAX_PLEDGED ||
            get_int(json_array_get(e, 0), 0, &range) != 0 || range >= KEEL_PROTO_NRANGES ||
            (long)range <= prev || get_int(json_array_get(e, 1), 1, &term) != 0 ||
            get_int(json_array_get(e, 2), 0, &lsn) != 0 ||
            get_pledged(e, r, (unsigned)range) != 0) {
            rc = keel__json_corrupt(err, "replicas",
                                    "ranges[%zu]: must be [range, term, lsn, pledged ids...] with "
                                    "ranges increasing below %d, a term of at least 1 and at most "
                                    "%d distinct ids",
                                    i, KEEL_PROTO_NRANGES, KEEL_REPLICAS_MAX_PLEDGED);
            goto out;
        }
        prev = (long)range;
        r->terms[range] = term;
        r->lsns[range] = lsn;
    }
    if ((rc = get_restoring(root, r, err)) == 0)
        rc = get_stored(root, r, err);
out:
    if (rc != 0)
        memset(r, 0, sizeof(*r));
    json_decref(root);
    return rc;
}
