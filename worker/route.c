/*
 * route.c - the pure parts of keel-worker: keys grouped by primary server,
 * and records into a dense batch.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/range.h"
#include "keel/record.h"
#include "worker.h"

/* ---- routing ------------------------------------------------------------------- */

void keel_route_groups_free(struct keel_route_group *g, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(g[i].keys);
        free(g[i].rows);
    }
    free(g);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

int keel_route_group(const keel_assign *a, const uint64_t *keys, const uint32_t *rows, uint32_t n,
                     struct keel_route_group **out, size_t *ngroups, struct keel_error *err)
{
    const char *by_range[KEEL_PROTO_NRANGES];
    const char **servers = NULL;
    struct keel_route_group *g = NULL;
    size_t ns = 0;

    *out = NULL;
    *ngroups = 0;
    if (n == 0)
        return 0;
    /* The distinct primaries of the keys' ranges, in id order. */
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        by_range[r] = NULL;
    KEEL_ALLOC_ARRAY(servers, n);
    for (uint32_t i = 0; i < n; i++) {
        unsigned r = keel_range_of(keys[i]);

        if (by_range[r] == NULL) {
            by_range[r] = keel_assign_primary(a, r);
            if (by_range[r] == NULL) {
                free(servers);
                return keel_err_set(err, KEEL_EUNAVAILABLE,
                                    "range %u has no primary in assignment version %" PRIu64, r,
                                    keel_assign_version(a));
            }
            servers[ns++] = by_range[r];
        }
    }
    qsort(servers, ns, sizeof(*servers), cmp_str);
    {
        size_t u = 0;

        for (size_t i = 0; i < ns; i++)
            if (u == 0 || strcmp(servers[u - 1], servers[i]) != 0)
                servers[u++] = servers[i];
        ns = u;
    }
    KEEL_ALLOC_ARRAY(g, ns);
    for (size_t s = 0; s < ns; s++)
        snprintf(g[s].server, sizeof(g[s].server), "%s", servers[s]);
    /* Count, allocate, fill: keys stay in their ascending order within a group. */
    for (uint32_t i = 0; i < n; i++) {
        const char *p = by_range[keel_range_of(keys[i])];
        const char **hit = bsearch(&p, servers, ns, sizeof(*servers), cmp_str);

        g[hit - servers].nkeys++;
    }
    for (size_t s = 0; s < ns; s++) {
        KEEL_ALLOC_ARRAY(g[s].keys, g[s].nkeys);
        KEEL_ALLOC_ARRAY(g[s].rows, g[s].nkeys);
        g[s].nkeys = 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        const char *p = by_range[keel_range_of(keys[i])];
        struct keel_route_group *d =
            &g[(const char **)bsearch(&p, servers, ns, sizeof(*servers), cmp_str) - servers];

        d->keys[d->nkeys] = keys[i];
        d->rows[d->nkeys] = rows[i];
        d->nkeys++;
    }
    free(servers);
    *out = g;
    *ngroups = ns;
    return 0;
}

void keel_route_release(struct keel_route *r)
{
    for (unsigned t = 0; t < r->ntables; t++)
        keel_route_groups_free(r->groups[t], r->ngroups[t]);
    free(r->primaries);
    memset(r, 0, sizeof(*r));
}

int keel_route_build(struct keel_route *r, const struct keel_model *m, const keel_assign *a,
                     struct keel_error *err)
{
    const char *prim[KEEL_PROTO_NRANGES];
    size_t np = 0;
    int rc = 0;

    memset(r, 0, sizeof(*r));
    r->version = keel_assign_version(a);
    for (unsigned l = 0; l < keel_model_ntables(m) && rc == 0; l++) {
        uint32_t n = keel_model_rows(m, l);
        uint64_t *keys;
        uint32_t *rows;

        KEEL_ALLOC_ARRAY(keys, n);
        KEEL_ALLOC_ARRAY(rows, n);
        keel_model_keys(m, l, keys);
        for (uint32_t i = 0; i < n; i++)
            rows[i] = i;
        rc = keel_route_group(a, keys, rows, n, &r->groups[l], &r->ngroups[l], err);
        r->ntables = l + 1;
        free(keys);
        free(rows);
    }
    if (rc != 0) {
        keel_route_release(r);
        return rc;
    }
    /* Every primary gets a push each iteration (its clock must advance), keys or not. */
    for (unsigned range = 0; range < KEEL_PROTO_NRANGES; range++) {
        const char *p = keel_assign_primary(a, range);

        if (p != NULL)
            prim[np++] = p;
    }
    qsort(prim, np, sizeof(*prim), cmp_str);
    KEEL_ALLOC_ARRAY(r->primaries, np ? np : 1);
    for (size_t i = 0; i < np; i++)
        if (r->nprimaries == 0 || strcmp(r->primaries[r->nprimaries - 1], prim[i]) != 0)
            snprintf(r->primaries[r->nprimaries++], sizeof(r->primaries[0]), "%s", prim[i]);
    return 0;
}

/* ---- batches ------------------------------------------------------------------- */

int keel_worker_batch(const struct keel_record_run *run, uint32_t from, uint32_t n,
                      uint32_t nfeatures, uint32_t nclasses, float *x, uint32_t *labels,
                      struct keel_error *err)
{
    if (from > run->nrecords || n > run->nrecords - from)
        return keel_err_set(err, KEEL_EINVAL,
                            "records %" PRIu32 "..%" PRIu64 " are not all among the %" PRIu32
                            " received",
                            from, (uint64_t)from + n, run->nrecords);
    for (uint32_t i = 0; i < n; i++) {
        uint32_t k = from + i;
        uint32_t lo = run->offsets[k], hi = run->offsets[k + 1];
        struct keel_record rec;
        float *row = x + (size_t)i * nfeatures;
        int rc;

        if (hi < lo || hi > run->data_len)
            return keel_err_set(err, KEEL_EINVAL,
                                "record %" PRIu32 ": offsets %" PRIu32 "..%" PRIu32
                                " do not lie in the %zu bytes received",
                                k, lo, hi, run->data_len);
        if ((rc = keel_record_decode(run->data + lo, hi - lo, nfeatures, &rec, err)) != 0)
            return keel_err_prefix(err, rc, "record %" PRIu32, k);
        if (rec.label >= nclasses)
            return keel_err_set(err, KEEL_EINVAL,
                                "record %" PRIu32 ": label %" PRIu32
                                " is not below the model's %" PRIu32 " classes",
                                k, rec.label, nclasses);
        keel_record_to_dense(&rec, row, nfeatures);
        if (rec.encoding == KEEL_RECORD_DENSE_U8)
            for (uint32_t j = 0; j < nfeatures; j++)
                row[j] /= 255.0f;
        labels[i] = rec.label;
    }
    return 0;
}

/* ---- test evaluation ----------------------------------------------------------- */

int keel_worker_eval(const struct keel_model *m, keel_model_work *w,
                     const struct keel_model_params *params, const struct keel_record_run *run,
                     uint32_t from, uint32_t n, float *x, uint32_t *labels,
                     struct keel_eval_sums *sums, struct keel_error *err)
{
    struct keel_model_stats ms;
    int rc;

    if ((rc = keel_worker_batch(run, from, n, m->sizes[0], m->sizes[m->nlayers], x, labels, err)) !=
        0)
        return rc;
    if ((rc = keel_model_eval(m, w, params, x, labels, n, &ms, err)) != 0)
        return rc;
    sums->loss += ms.loss * n;
    sums->correct += ms.ncorrect;
    sums->n += n;
    return 0;
}
