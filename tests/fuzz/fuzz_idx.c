/*
 * fuzz_idx.c - libFuzzer target for the IDX parser.
 *
 * Input: a u16 little-endian length L, then L bytes of labels file (fewer if
 * the input is shorter), then the images file.  See fuzz_dsparse.h for what
 * is checked.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_dsparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_seen seen;
    struct keel_dataset_shape shape;
    struct keel_error err;
    keel_dsparse *p;
    size_t llen;
    int rc;

    if (size < 2)
        return 0;
    llen = (size_t)(data[0] | data[1] << 8);
    data += 2;
    size -= 2;
    if (llen > size)
        llen = size;
    memset(&seen, 0, sizeof(seen));
    keel_error_init(&err);
    p = keel_dsparse_new(KEEL_DATASET_IDX, NULL, fuzz_check_record, &seen);
    rc = keel_dsparse_idx(p, "images", keel_view_make(data + llen, size - llen), "labels",
                          keel_view_make(data, llen), &err);
    if (rc == 0)
        rc = keel_dsparse_finish(p, &shape, &err);
    fuzz_check_result(rc, &err, &shape, &seen);
    keel_dsparse_free(p);
    return 0;
}
