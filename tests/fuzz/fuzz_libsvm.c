/*
 * fuzz_libsvm.c - libFuzzer target for the LIBSVM parser: the input is one
 * file.  See fuzz_dsparse.h for what is checked.
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
    int rc;

    memset(&seen, 0, sizeof(seen));
    keel_error_init(&err);
    p = keel_dsparse_new(KEEL_DATASET_LIBSVM, NULL, fuzz_check_record, &seen);
    rc = keel_dsparse_text(p, "input", keel_view_make(data, size), &err);
    if (rc == 0)
        rc = keel_dsparse_finish(p, &shape, &err);
    fuzz_check_result(rc, &err, &shape, &seen);
    keel_dsparse_free(p);
    return 0;
}
