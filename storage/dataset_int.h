/*
 * dataset_int.h - decoders of what storage/dataset.c keeps in the store,
 * shared with the fuzz target (tests/fuzz/fuzz_dsstore.c).  Not a public
 * API: the layout is described in docs/datasets.md.
 *
 * Stored bytes can be damaged on disk, so the decoders trust nothing: every
 * count and offset is checked against the value's length.
 */
#ifndef KEEL_DATASET_INT_H
#define KEEL_DATASET_INT_H

#include <stddef.h>
#include <stdint.h>

#include "keel/dataset.h"

/* A decoded block of records; pointers into the value it came from. */
struct keel__ds_block {
    uint32_t k;                /* records in the block, at least 1 */
    const unsigned char *sums; /* k u64 checksums */
    const unsigned char *offs; /* k + 1 u32 offsets into data */
    const unsigned char *data;
    size_t data_len;
};

/* Decode a block value; 0, or -1 when it is malformed. */
int keel__dataset_block_decode(const void *value, size_t len, struct keel__ds_block *b);

/* Record i (< b->k) of a decoded block: its bytes, length and stored checksum. */
const unsigned char *keel__dataset_block_record(const struct keel__ds_block *b, uint32_t i,
                                                size_t *len, uint64_t *sum);

/*
 * Decode a dataset's metadata value (`what` names it in errors).
 * Errors: KEEL_ECHECKSUM, KEEL_ECORRUPT.
 */
int keel__dataset_meta_decode(const void *value, size_t len, const char *what,
                              struct keel_dataset_info *out, struct keel_error *err);

/* Decode a shard's info value.  Errors: KEEL_ECHECKSUM. */
int keel__dataset_shard_decode(const void *value, size_t len, const char *name, uint32_t shard,
                               struct keel_dataset_shard *out, struct keel_error *err);

#endif
