/*
 * fuzz_dsparse.h - what the dataset parser fuzz targets share: a callback
 * that checks every record the parser makes, and the checks after a parse.
 *
 * Whatever the input, a parse must succeed or fail with a message; every
 * record handed out must decode; after a successful parse the shape must
 * describe every record (count, labels below nclasses, dense records of
 * nfeatures features, sparse indices below nfeatures).
 */
#ifndef KEEL_FUZZ_DSPARSE_H
#define KEEL_FUZZ_DSPARSE_H

#include <stdio.h>
#include <stdlib.h>

#include "keel/dataset.h"

struct fuzz_seen {
    uint64_t n;
    uint32_t max_label;
    uint32_t dense_n;   /* features of dense records, 0 before the first */
    uint32_t max_index; /* largest sparse index + 1 */
    uint32_t encoding;
};

static inline int fuzz_check_record(void *ctx, uint64_t index, const unsigned char *rec, size_t len,
                                    struct keel_error *err)
{
    struct fuzz_seen *s = ctx;
    struct keel_record r;
    struct keel_error e;

    (void)err;
    if (index != s->n) {
        fprintf(stderr, "record %llu handed out as %llu\n", (unsigned long long)s->n,
                (unsigned long long)index);
        abort();
    }
    if (keel_record_decode(rec, len, 0, &r, &e) != 0) {
        fprintf(stderr, "record %llu does not decode: %s\n", (unsigned long long)index, e.msg);
        abort();
    }
    if (s->encoding && r.encoding != s->encoding) {
        fprintf(stderr, "record %llu changes the encoding\n", (unsigned long long)index);
        abort();
    }
    s->encoding = r.encoding;
    if (r.label > s->max_label)
        s->max_label = r.label;
    if (r.encoding == KEEL_RECORD_SPARSE_F32) {
        if (r.n) {
            uint32_t i;
            float v;

            keel_record_sparse_at(&r, r.n - 1, &i, &v);
            if (i + 1 > s->max_index)
                s->max_index = i + 1;
        }
    } else {
        if (s->n > 0 && r.n != s->dense_n) {
            fprintf(stderr, "record %llu has %u features, the first %u\n",
                    (unsigned long long)index, r.n, s->dense_n);
            abort();
        }
        s->dense_n = r.n;
    }
    s->n++;
    return 0;
}

/* After a parse that returned `rc`. */
static inline void fuzz_check_result(int rc, const struct keel_error *err,
                                     const struct keel_dataset_shape *shape,
                                     const struct fuzz_seen *s)
{
    if (rc != 0) {
        if (err->msg[0] == '\0') {
            fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
            abort();
        }
        return;
    }
    if (shape->nrecords != s->n || shape->nrecords == 0 || s->max_label >= shape->nclasses ||
        shape->encoding != s->encoding || s->max_index > shape->nfeatures ||
        (s->encoding != KEEL_RECORD_SPARSE_F32 && s->dense_n != shape->nfeatures)) {
        fprintf(stderr, "shape does not describe the records\n");
        abort();
    }
}

#endif
