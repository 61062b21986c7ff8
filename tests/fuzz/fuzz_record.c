/*
 * fuzz_record.c - libFuzzer target for the record decoder (what a worker
 * runs on records received in SHARD_DATA frames).
 *
 * Input: one byte giving the dataset's number of features (0: unknown),
 * then the record.  Any input must decode or be refused with a message; what
 * decodes must re-encode to the same bytes (each record has one encoding)
 * and expand to dense floats without reading out of bounds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf out = KEEL_BUF_INIT;
    struct keel_record r;
    struct keel_error err;
    uint32_t nfeatures;
    float *values = NULL, *dense;
    uint32_t *indices = NULL;
    int rc;

    if (size < 1)
        return 0;
    nfeatures = data[0];
    keel_error_init(&err);
    rc = keel_record_decode(data + 1, size - 1, nfeatures, &r, &err);
    if (rc != 0) {
        if (err.msg[0] == '\0') {
            fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
            abort();
        }
        return 0;
    }
    switch (r.encoding) {
    case KEEL_RECORD_DENSE_F32:
        KEEL_ALLOC_ARRAY(values, r.n);
        for (uint32_t i = 0; i < r.n; i++)
            values[i] = keel_record_dense_at(&r, i);
        rc = keel_record_encode_dense_f32(&out, r.label, values, r.n, &err);
        break;
    case KEEL_RECORD_SPARSE_F32:
        KEEL_ALLOC_ARRAY(values, r.n);
        KEEL_ALLOC_ARRAY(indices, r.n);
        for (uint32_t i = 0; i < r.n; i++)
            keel_record_sparse_at(&r, i, &indices[i], &values[i]);
        rc = keel_record_encode_sparse_f32(&out, r.label, indices, values, r.n, &err);
        break;
    default:
        rc = keel_record_encode_dense_u8(&out, r.label, r.payload, r.n, &err);
        break;
    }
    if (rc != 0 || out.len != size - 1 || memcmp(out.buf, data + 1, out.len) != 0) {
        fprintf(stderr, "decoded %s record does not re-encode to its bytes: %s\n",
                keel_record_encoding_name(r.encoding), err.msg);
        abort();
    }
    if (nfeatures) {
        KEEL_ALLOC_ARRAY(dense, nfeatures);
        keel_record_to_dense(&r, dense, nfeatures);
        free(dense);
    }
    free(values);
    free(indices);
    keel_buf_release(&out);
    return 0;
}
