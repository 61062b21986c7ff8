/*
 * fuzz_csv.c - libFuzzer target for the CSV parser.
 *
 * Input: one byte of options (bit 0: skip a header line, bit 1: label in the
 * last column), then the file.  See fuzz_dsparse.h for what is checked.
 */
#include <stdint.h>
#include <string.h>

#include "fuzz_dsparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_dsparse_opts opts;
    struct fuzz_seen seen;
    struct keel_dataset_shape shape;
    struct keel_error err;
    keel_dsparse *p;
    int rc;

    if (size < 1)
        return 0;
    memset(&opts, 0, sizeof(opts));
    opts.csv_header = data[0] & 1;
    opts.csv_label_last = (data[0] >> 1) & 1;
    memset(&seen, 0, sizeof(seen));
    keel_error_init(&err);
    p = keel_dsparse_new(KEEL_DATASET_CSV, &opts, fuzz_check_record, &seen);
    rc = keel_dsparse_text(p, "input", keel_view_make(data + 1, size - 1), &err);
    if (rc == 0)
        rc = keel_dsparse_finish(p, &shape, &err);
    fuzz_check_result(rc, &err, &shape, &seen);
    keel_dsparse_free(p);
    return 0;
}
