/*
 * fuzz_dsstore.c - libFuzzer target for the decoders of dataset values read
 * back from the store (metadata, shard info, blocks of records), which a
 * damaged disk can hand over in any shape.
 *
 * Input: one byte choosing the decoder (0 metadata, 1 shard info, else a
 * block), then the value.  Whatever the value, it must decode or be refused
 * with a message; a decoded block's records must lie inside the value.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dataset_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_dataset_info info;
    struct keel_dataset_shard shard;
    struct keel__ds_block b;
    struct keel_error err;
    int rc;

    if (size < 1)
        return 0;
    keel_error_init(&err);
    switch (data[0]) {
    case 0:
        rc = keel__dataset_meta_decode(data + 1, size - 1, "fuzz", &info, &err);
        if (rc == 0 && (strlen(info.name) > KEEL_ID_MAX || info.nshards == 0))
            abort();
        break;
    case 1:
        rc = keel__dataset_shard_decode(data + 1, size - 1, "fuzz", 0, &shard, &err);
        break;
    default:
        rc = 0;
        if (keel__dataset_block_decode(data + 1, size - 1, &b) != 0)
            return 0;
        for (uint32_t i = 0; i < b.k; i++) {
            uint64_t sum;
            size_t len;
            const unsigned char *rec = keel__dataset_block_record(&b, i, &len, &sum);

            if (rec < data + 1 || len > (size_t)(data + size - rec)) {
                fprintf(stderr, "record %u lies outside the block\n", i);
                abort();
            }
            /* Touch every byte: ASan checks that they are inside the input. */
            for (size_t j = 0; j < len; j++)
                sum ^= rec[j];
            (void)sum;
        }
        return 0;
    }
    if (rc != 0 && err.msg[0] == '\0') {
        fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
        abort();
    }
    return 0;
}
