/*
 * assignment.c - the assignment table as a value: accessors, equality and
 * its JSON form in etcd.  The rebalancer that changes the replica sets is
 * the coordinator's (coordinator/assign.c).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "alloc.h"
#include "assign_table.h"
#include "keel/id.h"

#define NR   KEEL_PROTO_NRANGES
#define MAXR KEEL_ASSIGN_MAX_REPLICATION
#define NONE KEEL_ASSIGN_NONE

keel_assign *keel_assign_new(unsigned replication)
{
    keel_assign *a;

    if (replication < 1 || replication > MAXR)
        return NULL;
    a = keel_calloc(1, sizeof(*a));
    a->replication = replication;
    a->servers = keel_calloc(1, sizeof(char *));
    return a;
}

void keel_assign_free(keel_assign *a)
{
    if (a == NULL)
        return;
    for (size_t i = 0; i < a->nservers; i++)
        free(a->servers[i]);
    free(a->servers);
    free(a);
}

keel_assign *keel_assign_clone(const keel_assign *a)
{
    keel_assign *c = keel_malloc(sizeof(*c));

    *c = *a;
    c->servers = keel_calloc(a->nservers ? a->nservers : 1, sizeof(char *));
    for (size_t i = 0; i < a->nservers; i++)
        c->servers[i] = keel_strdup(a->servers[i]);
    return c;
}

uint64_t keel_assign_epoch(const keel_assign *a)
{
    return a->epoch;
}

int keel_assign_set_epoch(keel_assign *a, uint64_t epoch)
{
    if (a->epoch == epoch)
        return 0;
    a->epoch = epoch;
    a->version++;
    return 1;
}

unsigned keel_assign_renew_terms(keel_assign *a, const unsigned char *ranges)
{
    unsigned n = 0;

    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        n += ranges[r] && a->count[r] > 0;
    if (n == 0)
        return 0;
    a->version++;
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        if (ranges[r] && a->count[r] > 0)
            a->term[r] = a->version;
    return n;
}

uint64_t keel_assign_version(const keel_assign *a)
{
    return a->version;
}

unsigned keel_assign_replication(const keel_assign *a)
{
    return a->replication;
}

size_t keel_assign_server_count(const keel_assign *a)
{
    return a->nservers;
}

const char *keel_assign_server(const keel_assign *a, size_t i)
{
    return i < a->nservers ? a->servers[i] : NULL;
}

size_t keel_assign_replicas(const keel_assign *a, unsigned range, const char **ids, size_t max)
{
    if (range >= NR)
        return 0;
    for (size_t i = 0; i < a->count[range] && i < max; i++)
        ids[i] = a->servers[a->replica[range][i]];
    return a->count[range];
}

const char *keel_assign_primary(const keel_assign *a, unsigned range)
{
    if (range >= NR || a->count[range] == 0)
        return NULL;
    return a->servers[a->replica[range][0]];
}

uint64_t keel_assign_term(const keel_assign *a, unsigned range)
{
    return range < NR ? a->term[range] : 0;
}

unsigned keel_assign_insync(const keel_assign *a, unsigned range)
{
    return range < NR ? a->insync[range] : 0;
}

long keel_assign_find_server(const keel_assign *a, const char *id)
{
    return keel_id_find((const char *const *)a->servers, a->nservers, id);
}

int keel_assign_in_set(const uint16_t *set, unsigned n, uint16_t s)
{
    for (unsigned i = 0; i < n; i++)
        if (set[i] == s)
            return 1;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

const char **keel_assign_sorted_ids(const char *const *live, size_t nlive, struct keel_error *err)
{
    const char **ids;

    if (nlive > KEEL_ASSIGN_MAX_SERVERS) {
        keel_err_set(err, KEEL_EINVAL, "assignment: %zu servers, at most %d are supported", nlive,
                     KEEL_ASSIGN_MAX_SERVERS);
        return NULL;
    }
    ids = keel_calloc(nlive ? nlive : 1, sizeof(*ids));
    for (size_t i = 0; i < nlive; i++) {
        if (live[i] == NULL || !keel_id_valid(live[i])) {
            keel_err_set(err, KEEL_EINVAL,
                         "assignment: server id '%s' is not 1-%d of [A-Za-z0-9_-]",
                         live[i] ? live[i] : "(null)", KEEL_ID_MAX);
            free(ids);
            return NULL;
        }
        ids[i] = live[i];
    }
    qsort(ids, nlive, sizeof(*ids), cmp_str);
    for (size_t i = 1; i < nlive; i++)
        if (strcmp(ids[i - 1], ids[i]) == 0) {
            keel_err_set(err, KEEL_EINVAL, "assignment: server id '%s' is listed twice", ids[i]);
            free(ids);
            return NULL;
        }
    return ids;
}

int keel_assign_position(const keel_assign *a, unsigned range, const char *id)
{
    long s = keel_assign_find_server(a, id);

    if (s < 0 || range >= NR)
        return -1;
    for (int i = 0; i < a->count[range]; i++)
        if (a->replica[range][i] == (uint16_t)s)
            return i;
    return -1;
}

int keel_assign_is_insync(const keel_assign *a, unsigned range, const char *id)
{
    int pos = keel_assign_position(a, range, id);

    return pos >= 0 && (unsigned)pos < a->insync[range];
}

void keel_assign_load(const keel_assign *a, const char *id, unsigned *replicas, unsigned *primaries)
{
    long s = keel_assign_find_server(a, id);
    unsigned nrep = 0, npri = 0;

    for (unsigned r = 0; s >= 0 && r < NR; r++)
        for (int i = 0; i < a->count[r]; i++)
            if (a->replica[r][i] == (uint16_t)s) {
                nrep++;
                npri += i == 0;
            }
    if (replicas)
        *replicas = nrep;
    if (primaries)
        *primaries = npri;
}

int keel_assign_equal(const keel_assign *a, const keel_assign *b)
{
    if (a->version != b->version || a->epoch != b->epoch || a->replication != b->replication ||
        a->nservers != b->nservers)
        return 0;
    for (size_t i = 0; i < a->nservers; i++)
        if (strcmp(a->servers[i], b->servers[i]) != 0)
            return 0;
    for (unsigned r = 0; r < NR; r++) {
        if (a->count[r] != b->count[r] || a->insync[r] != b->insync[r] || a->term[r] != b->term[r])
            return 0;
        for (int i = 0; i < a->count[r]; i++)
            if (a->replica[r][i] != b->replica[r][i])
                return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* JSON                                                                      */
/* ------------------------------------------------------------------------ */

void keel_assign_encode(const keel_assign *a, struct keel_buf *out)
{
    json_t *root = json_object(), *servers = json_array(), *ranges = json_array();
    json_t *insync = json_array(), *terms = json_array();
    char *text;

    for (size_t i = 0; i < a->nservers; i++)
        json_array_append_new(servers, json_string(a->servers[i]));
    for (unsigned r = 0; r < NR; r++) {
        json_t *set = json_array();

        for (unsigned k = 0; k < a->count[r]; k++)
            json_array_append_new(set, json_integer(a->replica[r][k]));
        json_array_append_new(ranges, set);
        json_array_append_new(insync, json_integer(a->insync[r]));
        json_array_append_new(terms, json_integer((json_int_t)a->term[r]));
    }
    json_object_set_new(root, "version", json_integer((json_int_t)a->version));
    if (a->epoch != 0) /* 0 (none said) is written as no key: one form per table */
        json_object_set_new(root, "epoch", json_integer((json_int_t)a->epoch));
    json_object_set_new(root, "replication", json_integer(a->replication));
    json_object_set_new(root, "servers", servers);
    json_object_set_new(root, "ranges", ranges);
    json_object_set_new(root, "insync", insync);
    json_object_set_new(root, "terms", terms);
    text = json_dumps(root, JSON_COMPACT | JSON_SORT_KEYS);
    if (text == NULL) {
        fprintf(stderr, "keel: out of memory encoding the assignment\n");
        abort();
    }
    keel_buf_add_str(out, text);
    free(text);
    json_decref(root);
}

static int bad(struct keel_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad(struct keel_error *err, const char *fmt, ...)
{
    char msg[KEEL_ERROR_MSG_MAX];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return keel_err_set(err, KEEL_ECORRUPT, "assignment: %s", msg);
}

/*
 * Range `r` of a table being decoded, whose servers are in: its replica set
 * `set`, in-sync count `insync` and term `term`.
 */
static int decode_range(keel_assign *a, unsigned r, json_t *set, json_t *insync, json_t *term,
                        struct keel_error *err)
{
    size_t n = json_is_array(set) ? json_array_size(set) : 0;
    json_int_t in = json_is_integer(insync) ? json_integer_value(insync) : -1;
    json_int_t t = json_is_integer(term) ? json_integer_value(term) : -1;

    /* Sets may be shorter or longer than the replication while a job runs
     * (keel_assign_failover()), but only a table without servers has empty ones. */
    if (a->nservers == 0 && (!json_is_array(set) || n != 0))
        return bad(err, "ranges[%u]: must be an empty array (the table has no server)", r);
    if (a->nservers > 0 && (!json_is_array(set) || n < 1 || n > MAXR))
        return bad(err, "ranges[%u]: must be an array of 1-%d server indexes", r, MAXR);
    for (size_t k = 0; k < n; k++) {
        json_t *x = json_array_get(set, k);
        json_int_t v = json_is_integer(x) ? json_integer_value(x) : -1;

        if (v < 0 || (size_t)v >= a->nservers)
            return bad(err, "ranges[%u][%zu]: must be an index below the server count %zu", r, k,
                       a->nservers);
        if (keel_assign_in_set(a->replica[r], (unsigned)k, (uint16_t)v))
            return bad(err, "ranges[%u][%zu]: server %lld is listed twice", r, k, (long long)v);
        a->replica[r][k] = (uint16_t)v;
    }
    a->count[r] = (uint8_t)n;
    if (n == 0 ? in != 0 : in < 1 || (size_t)in > n)
        return bad(err, "insync[%u]: must be an integer %s", r,
                   n == 0 ? "0 for an empty range" : "from 1 to the replica count");
    a->insync[r] = (uint8_t)in;
    if (t < 0 || (uint64_t)t > a->version || (n == 0 && t != 0))
        return bad(err, "terms[%u]: must be an integer %s", r,
                   n == 0 ? "0 for an empty range" : "from 0 to the version");
    a->term[r] = (uint64_t)t;
    return 0;
}

int keel_assign_decode(const void *data, size_t len, keel_assign **out, struct keel_error *err)
{
    json_t *root, *version, *replication, *servers, *ranges, *insync, *terms, *epoch;
    json_error_t jerr;
    keel_assign *a = NULL;
    size_t nservers;
    int rc;

    *out = NULL;
    if (len > KEEL_ASSIGN_MAX_JSON)
        return bad(err, "%zu bytes, more than the %u allowed", len, KEEL_ASSIGN_MAX_JSON);
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL)
        return bad(err, "not JSON: %s at offset %d", jerr.text, jerr.position);
    if (!json_is_object(root)) {
        rc = bad(err, "not a JSON object");
        goto fail;
    }
    version = json_object_get(root, "version");
    replication = json_object_get(root, "replication");
    servers = json_object_get(root, "servers");
    ranges = json_object_get(root, "ranges");
    insync = json_object_get(root, "insync");
    terms = json_object_get(root, "terms");
    epoch = json_object_get(root, "epoch");
    if (!version || !replication || !servers || !ranges || !insync || !terms ||
        json_object_size(root) != (epoch ? 7u : 6u)) {
        rc = bad(err, "must be an object of exactly insync, ranges, replication, servers, terms "
                      "and version, and optionally epoch");
        goto fail;
    }
    if (epoch && (!json_is_integer(epoch) || json_integer_value(epoch) < 1)) {
        rc = bad(err, "epoch: must be an integer >= 1 (no key for none)");
        goto fail;
    }
    if (!json_is_integer(version) || json_integer_value(version) < 0) {
        rc = bad(err, "version: must be an integer >= 0");
        goto fail;
    }
    if (!json_is_integer(replication) || json_integer_value(replication) < 1 ||
        json_integer_value(replication) > MAXR) {
        rc = bad(err, "replication: must be an integer 1-%d", MAXR);
        goto fail;
    }
    if (!json_is_array(servers) || json_array_size(servers) > KEEL_ASSIGN_MAX_SERVERS) {
        rc = bad(err, "servers: must be an array of at most %d ids", KEEL_ASSIGN_MAX_SERVERS);
        goto fail;
    }
    nservers = json_array_size(servers);
    a = keel_assign_new((unsigned)json_integer_value(replication));
    a->version = (uint64_t)json_integer_value(version);
    a->epoch = epoch ? (uint64_t)json_integer_value(epoch) : 0;
    free(a->servers);
    a->servers = keel_calloc(nservers ? nservers : 1, sizeof(char *));
    for (size_t i = 0; i < nservers; i++) {
        json_t *s = json_array_get(servers, i);

        if (!json_is_string(s) || !keel_id_valid(json_string_value(s))) {
            rc = bad(err, "servers[%zu]: must be an id of 1-%d of [A-Za-z0-9_-]", i, KEEL_ID_MAX);
            goto fail;
        }
        if (i > 0 && strcmp(a->servers[i - 1], json_string_value(s)) >= 0) {
            rc = bad(err, "servers[%zu]: '%s' is not after '%s' (ids must be sorted and unique)", i,
                     json_string_value(s), a->servers[i - 1]);
            goto fail;
        }
        a->servers[i] = keel_strdup(json_string_value(s));
        a->nservers = i + 1;
    }
    if (!json_is_array(ranges) || json_array_size(ranges) != NR) {
        rc = bad(err, "ranges: must be an array of %d replica sets", NR);
        goto fail;
    }
    if (!json_is_array(insync) || json_array_size(insync) != NR) {
        rc = bad(err, "insync: must be an array of %d counts", NR);
        goto fail;
    }
    if (!json_is_array(terms) || json_array_size(terms) != NR) {
        rc = bad(err, "terms: must be an array of %d versions", NR);
        goto fail;
    }
    for (unsigned r = 0; r < NR; r++) {
        rc = decode_range(a, r, json_array_get(ranges, r), json_array_get(insync, r),
                          json_array_get(terms, r), err);
        if (rc != 0)
            goto fail;
    }
    json_decref(root);
    *out = a;
    return 0;

fail:
    keel_assign_free(a);
    json_decref(root);
    return rc;
}
