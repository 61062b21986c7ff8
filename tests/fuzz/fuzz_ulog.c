/*
 * fuzz_ulog.c - libFuzzer target for the update-log record decoder.
 *
 * The first input byte is a mode, the rest a record.  Mode bit 0 set: the
 * XXH3 checksum is recomputed before decoding, so that mutations get past it
 * and reach the structural checks behind it.  Any input must decode or be
 * refused with an error and a message, never read out of bounds (ASan
 * watches).  A record that decodes must encode back to the same bytes (the
 * encoding is unique: zero padding, zero reserved fields, exact length).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "keel/ulog.h"
#include "ulog_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf in = KEEL_BUF_INIT, out = KEEL_BUF_INIT, scratch = KEEL_BUF_INIT;
    struct keel_ulog_record rec;
    struct keel_error err;
    int rc;

    if (size < 1)
        return 0;
    /* An odd offset: the decoder must not need alignment. */
    keel_buf_add(&in, "x", 1);
    keel_buf_add(&in, data + 1, size - 1);
    if ((data[0] & 1) && in.len >= 1 + 16)
        keel_store_u64le(in.buf + 1 + 8, XXH3_64bits(in.buf + 1 + 16, in.len - 1 - 16));
    keel_error_init(&err);
    rc = keel_ulog_decode(in.buf + 1, in.len - 1, &rec, &scratch, &err);
    if (rc == 0) {
        if (keel_ulog_encode(&out, &rec, &err) != 0) {
            fprintf(stderr, "decoded record does not re-encode: %s\n", err.msg);
            abort();
        }
        if (out.len != in.len - 1 || memcmp(out.buf, in.buf + 1, out.len) != 0) {
            fprintf(stderr, "re-encoded record differs from the input\n");
            abort();
        }
    } else if (err.msg[0] == '\0') {
        fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
        abort();
    }
    keel_buf_release(&in);
    keel_buf_release(&out);
    keel_buf_release(&scratch);
    return 0;
}
