/*
 * record.c - encoder and decoder of dataset records (see keel/record.h).
 */
#include <inttypes.h>
#include <math.h>
#include <string.h>

#include "keel/record.h"

const char *keel_record_encoding_name(unsigned encoding)
{
    switch (encoding) {
    case KEEL_RECORD_DENSE_F32:
        return "dense-f32";
    case KEEL_RECORD_SPARSE_F32:
        return "sparse-f32";
    case KEEL_RECORD_DENSE_U8:
        return "dense-u8";
    }
    return "unknown";
}

size_t keel_record_size(unsigned encoding, uint32_t n)
{
    uint64_t payload;

    switch (encoding) {
    case KEEL_RECORD_DENSE_F32:
        payload = (uint64_t)n * 4;
        break;
    case KEEL_RECORD_SPARSE_F32:
        payload = (uint64_t)n * 8;
        break;
    case KEEL_RECORD_DENSE_U8:
        payload = ((uint64_t)n + 3) & ~UINT64_C(3);
        break;
    default:
        return 0;
    }
    if (payload > KEEL_RECORD_MAX_BYTES - KEEL_RECORD_HEADER_SIZE)
        return 0;
    return (size_t)payload + KEEL_RECORD_HEADER_SIZE;
}

static float load_f32(const unsigned char *p)
{
    uint32_t u = keel_load_u32le(p);
    float f;

    memcpy(&f, &u, sizeof(f));
    return f;
}

static void store_f32(unsigned char *p, float f)
{
    uint32_t u;

    memcpy(&u, &f, sizeof(u));
    keel_store_u32le(p, u);
}

/* Check what every encoder shares; returns the record's size through *size. */
static int check_head(unsigned encoding, uint32_t label, uint32_t n, size_t *size,
                      struct keel_error *err)
{
    if (label >= KEEL_RECORD_MAX_CLASSES)
        return keel_err_set(err, KEEL_EINVAL, "record: label %" PRIu32 " not below %" PRIu32, label,
                            KEEL_RECORD_MAX_CLASSES);
    *size = keel_record_size(encoding, n);
    if (*size == 0)
        return keel_err_set(err, KEEL_EFRAMESIZE,
                            "record: %" PRIu32 " %s features exceed %" PRIu32 " bytes", n,
                            keel_record_encoding_name(encoding), KEEL_RECORD_MAX_BYTES);
    return 0;
}

static unsigned char *put_head(struct keel_buf *out, unsigned encoding, uint32_t label, uint32_t n,
                               size_t size)
{
    unsigned char *p = keel_buf_add_zero(out, size);

    keel_store_u32le(p, label);
    p[4] = (unsigned char)encoding;
    keel_store_u32le(p + 8, n);
    return p + KEEL_RECORD_HEADER_SIZE;
}

int keel_record_encode_dense_f32(struct keel_buf *out, uint32_t label, const float *values,
                                 uint32_t n, struct keel_error *err)
{
    unsigned char *p;
    size_t size;
    int rc;

    if ((rc = check_head(KEEL_RECORD_DENSE_F32, label, n, &size, err)) != 0)
        return rc;
    for (uint32_t i = 0; i < n; i++)
        if (!isfinite(values[i]))
            return keel_err_set(err, KEEL_EINVAL, "record: feature %" PRIu32 " is not finite", i);
    p = put_head(out, KEEL_RECORD_DENSE_F32, label, n, size);
    for (uint32_t i = 0; i < n; i++)
        store_f32(p + 4 * (size_t)i, values[i]);
    return 0;
}

int keel_record_encode_sparse_f32(struct keel_buf *out, uint32_t label, const uint32_t *indices,
                                  const float *values, uint32_t n, struct keel_error *err)
{
    unsigned char *p;
    size_t size;
    int rc;

    if ((rc = check_head(KEEL_RECORD_SPARSE_F32, label, n, &size, err)) != 0)
        return rc;
    for (uint32_t i = 0; i < n; i++) {
        if (indices[i] >= KEEL_RECORD_MAX_INDEX)
            return keel_err_set(err, KEEL_EINVAL,
                                "record: pair %" PRIu32 ": index %" PRIu32 " not below %" PRIu32, i,
                                indices[i], KEEL_RECORD_MAX_INDEX);
        if (i > 0 && indices[i] <= indices[i - 1])
            return keel_err_set(err, KEEL_EUNSORTED,
                                "record: pair %" PRIu32 ": index %" PRIu32
                                " does not follow %" PRIu32,
                                i, indices[i], indices[i - 1]);
        if (!isfinite(values[i]))
            return keel_err_set(err, KEEL_EINVAL, "record: pair %" PRIu32 " is not finite", i);
    }
    p = put_head(out, KEEL_RECORD_SPARSE_F32, label, n, size);
    for (uint32_t i = 0; i < n; i++) {
        keel_store_u32le(p + 8 * (size_t)i, indices[i]);
        store_f32(p + 8 * (size_t)i + 4, values[i]);
    }
    return 0;
}

int keel_record_encode_dense_u8(struct keel_buf *out, uint32_t label, const uint8_t *bytes,
                                uint32_t n, struct keel_error *err)
{
    unsigned char *p;
    size_t size;
    int rc;

    if ((rc = check_head(KEEL_RECORD_DENSE_U8, label, n, &size, err)) != 0)
        return rc;
    p = put_head(out, KEEL_RECORD_DENSE_U8, label, n, size);
    if (n)
        memcpy(p, bytes, n);
    return 0;
}

int keel_record_decode(const void *data, size_t len, uint32_t nfeatures, struct keel_record *r,
                       struct keel_error *err)
{
    const unsigned char *p = data;
    size_t size;

    if (len < KEEL_RECORD_HEADER_SIZE)
        return keel_err_set(err, KEEL_ESHORTBODY, "record: %zu bytes, shorter than its header",
                            len);
    r->label = keel_load_u32le(p);
    r->encoding = p[4];
    r->n = keel_load_u32le(p + 8);
    r->payload = p + KEEL_RECORD_HEADER_SIZE;
    if (p[5] || p[6] || p[7])
        return keel_err_set(err, KEEL_ERESERVED, "record: reserved bytes not zero");
    if (r->encoding < KEEL_RECORD_DENSE_F32 || r->encoding > KEEL_RECORD_DENSE_U8)
        return keel_err_set(err, KEEL_EINVAL, "record: unknown encoding %" PRIu32, r->encoding);
    if (r->label >= KEEL_RECORD_MAX_CLASSES)
        return keel_err_set(err, KEEL_EINVAL, "record: label %" PRIu32 " not below %" PRIu32,
                            r->label, KEEL_RECORD_MAX_CLASSES);
    size = keel_record_size(r->encoding, r->n);
    if (size == 0 || size > len)
        return keel_err_set(err, KEEL_ESHORTBODY,
                            "record: %" PRIu32 " %s features need more than the %zu bytes there",
                            r->n, keel_record_encoding_name(r->encoding), len);
    if (size < len)
        return keel_err_set(err, KEEL_ETRAILING, "record: %zu bytes after its %zu", len - size,
                            size);
    if (nfeatures && r->encoding != KEEL_RECORD_SPARSE_F32 && r->n != nfeatures)
        return keel_err_set(err, KEEL_EINVAL,
                            "record: %" PRIu32 " features, the dataset has %" PRIu32, r->n,
                            nfeatures);
    switch (r->encoding) {
    case KEEL_RECORD_DENSE_F32:
        for (uint32_t i = 0; i < r->n; i++)
            if (!isfinite(load_f32(r->payload + 4 * (size_t)i)))
                return keel_err_set(err, KEEL_EINVAL, "record: feature %" PRIu32 " is not finite",
                                    i);
        break;
    case KEEL_RECORD_SPARSE_F32: {
        uint32_t limit = nfeatures ? nfeatures : KEEL_RECORD_MAX_INDEX;

        for (uint32_t i = 0; i < r->n; i++) {
            const unsigned char *q = r->payload + 8 * (size_t)i;
            uint32_t index = keel_load_u32le(q);

            if (i > 0 && index <= keel_load_u32le(q - 8))
                return keel_err_set(err, KEEL_EUNSORTED,
                                    "record: pair %" PRIu32 ": index %" PRIu32
                                    " does not follow %" PRIu32,
                                    i, index, keel_load_u32le(q - 8));
            if (index >= limit)
                return keel_err_set(err, KEEL_EINVAL,
                                    "record: pair %" PRIu32 ": index %" PRIu32
                                    " not below %" PRIu32,
                                    i, index, limit);
            if (!isfinite(load_f32(q + 4)))
                return keel_err_set(err, KEEL_EINVAL, "record: pair %" PRIu32 " is not finite", i);
        }
        break;
    }
    case KEEL_RECORD_DENSE_U8:
        for (size_t i = r->n; i < size - KEEL_RECORD_HEADER_SIZE; i++)
            if (r->payload[i])
                return keel_err_set(err, KEEL_EPADDING, "record: padding byte %zu not zero",
                                    KEEL_RECORD_HEADER_SIZE + i);
        break;
    }
    return 0;
}

float keel_record_dense_at(const struct keel_record *r, uint32_t i)
{
    if (r->encoding == KEEL_RECORD_DENSE_U8)
        return (float)r->payload[i];
    return load_f32(r->payload + 4 * (size_t)i);
}

void keel_record_sparse_at(const struct keel_record *r, uint32_t i, uint32_t *index, float *value)
{
    const unsigned char *q = r->payload + 8 * (size_t)i;

    *index = keel_load_u32le(q);
    *value = load_f32(q + 4);
}

void keel_record_to_dense(const struct keel_record *r, float *out, uint32_t nfeatures)
{
    uint32_t dense = r->n < nfeatures ? r->n : nfeatures;

    switch (r->encoding) {
    case KEEL_RECORD_DENSE_F32:
        for (uint32_t i = 0; i < dense; i++)
            out[i] = load_f32(r->payload + 4 * (size_t)i);
        break;
    case KEEL_RECORD_DENSE_U8:
        for (uint32_t i = 0; i < dense; i++)
            out[i] = (float)r->payload[i];
        break;
    case KEEL_RECORD_SPARSE_F32:
        dense = 0;
        for (uint32_t i = 0; i < r->n; i++) {
            uint32_t index;
            float value;

            keel_record_sparse_at(r, i, &index, &value);
            if (index >= nfeatures)
                break;
            while (dense < index)
                out[dense++] = 0.0f;
            out[dense++] = value;
        }
        break;
    }
    for (uint32_t i = dense; i < nfeatures; i++)
        out[i] = 0.0f;
}
