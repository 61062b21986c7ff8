/*
 * record.h - the encoding of one dataset record (a label and its features).
 *
 * docs/datasets.md describes every byte; this header is the C view of it.
 * A record is what a SHARD_DATA frame carries, opaque to the frame codec:
 *
 *   offset 0   u32  label      class index, below KEEL_RECORD_MAX_CLASSES
 *   offset 4   u8   encoding   enum keel_record_encoding
 *   offset 5   u8[3]           reserved, zero
 *   offset 8   u32  n          dense: number of features; sparse: number of pairs
 *   offset 12  payload         dense f32: n x f32
 *                              sparse f32: n x (u32 index, f32 value), indices
 *                                          0-based and strictly increasing
 *                              dense u8: n bytes, then zero bytes up to a
 *                                        multiple of 4
 *
 * All integers and floats are little-endian.  Every record is a multiple of 4
 * bytes long, so records placed back to back from a 4-byte aligned address
 * (as in a SHARD_DATA frame) all start 4-byte aligned; the decoder does not
 * rely on it and reads through unaligned loads.
 *
 * Invariants the decoder enforces on bytes from a file or a peer: the length
 * is exactly what the header says, the encoding is known, reserved and padding
 * bytes are zero, floats are finite, sparse indices increase strictly, and,
 * when the caller knows the dataset's number of features, a dense record has
 * exactly that many and a sparse index is below it.  The encoder refuses what
 * the decoder would refuse, so each record has exactly one encoding.
 *
 * No state: every function is thread-safe.
 */
#ifndef KEEL_RECORD_H
#define KEEL_RECORD_H

#include <stddef.h>
#include <stdint.h>

#include "keel/buf.h"
#include "keel/err.h"

#define KEEL_RECORD_HEADER_SIZE 12
#define KEEL_RECORD_MAX_BYTES   (UINT32_C(16) << 20)   /* a whole record, header included */
#define KEEL_RECORD_MAX_CLASSES (UINT32_C(1) << 24)    /* labels are below this */
#define KEEL_RECORD_MAX_INDEX   (UINT32_C(0x7FFFFFFF)) /* sparse indices are below this */

/* Feature encodings; the numbers are stored and on the wire. */
enum keel_record_encoding {
    KEEL_RECORD_DENSE_F32 = 1,
    KEEL_RECORD_SPARSE_F32 = 2,
    KEEL_RECORD_DENSE_U8 = 3,
};

/* A decoded record; `payload` points into the bytes it was decoded from. */
struct keel_record {
    uint32_t label;
    uint32_t encoding; /* enum keel_record_encoding */
    uint32_t n;        /* features (dense) or pairs (sparse) */
    const unsigned char *payload;
};

/* "dense-f32", "sparse-f32", "dense-u8" or "unknown". */
const char *keel_record_encoding_name(unsigned encoding);

/*
 * Bytes of a record of `encoding` with `n` features or pairs, or 0 when it
 * would exceed KEEL_RECORD_MAX_BYTES (or the encoding is unknown).
 */
size_t keel_record_size(unsigned encoding, uint32_t n);

/*
 * Append a record to `out`.  `values` holds n floats (dense f32), n pairs
 * given as `indices` + `values` (sparse f32), or n bytes `bytes` (dense u8).
 * Errors (with `out` unchanged): KEEL_EINVAL for a label not below
 * KEEL_RECORD_MAX_CLASSES, a non-finite value, an index not increasing or not
 * below KEEL_RECORD_MAX_INDEX; KEEL_EFRAMESIZE for a record over
 * KEEL_RECORD_MAX_BYTES.
 */
int keel_record_encode_dense_f32(struct keel_buf *out, uint32_t label, const float *values,
                                 uint32_t n, struct keel_error *err);
int keel_record_encode_sparse_f32(struct keel_buf *out, uint32_t label, const uint32_t *indices,
                                  const float *values, uint32_t n, struct keel_error *err);
int keel_record_encode_dense_u8(struct keel_buf *out, uint32_t label, const uint8_t *bytes,
                                uint32_t n, struct keel_error *err);

/*
 * Decode and check the `len` bytes at `data` (any alignment).  `nfeatures` is
 * the dataset's number of features, or 0 when unknown (then only the record's
 * own consistency is checked).  On success *r points into `data`.
 * Errors: KEEL_ESHORTBODY (shorter than the header or than its payload),
 * KEEL_EINVAL (unknown encoding, label out of range, non-finite value, a
 * dense n not matching `nfeatures`, a sparse index not below `nfeatures`),
 * KEEL_ERESERVED, KEEL_EPADDING, KEEL_EUNSORTED (sparse indices not strictly
 * increasing), KEEL_ETRAILING.
 */
int keel_record_decode(const void *data, size_t len, uint32_t nfeatures, struct keel_record *r,
                       struct keel_error *err);

/* Feature i of a dense record (i < r->n), as a float. */
float keel_record_dense_at(const struct keel_record *r, uint32_t i);

/* Pair i of a sparse record (i < r->n). */
void keel_record_sparse_at(const struct keel_record *r, uint32_t i, uint32_t *index, float *value);

/*
 * Write the record's features as `nfeatures` floats into `out`: zero where a
 * sparse record has no pair (or a dense one has fewer features), dense u8
 * values as 0.0 to 255.0, unscaled.  Features past `nfeatures` are dropped.
 * `r` must come from keel_record_decode().
 */
void keel_record_to_dense(const struct keel_record *r, float *out, uint32_t nfeatures);

#endif
