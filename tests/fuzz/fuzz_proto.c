/*
 * fuzz_proto.c - libFuzzer target for the frame decoder.
 *
 * Any input must decode or be refused with an error, never read out of
 * bounds (ASan watches).  What decodes must encode back to the very same
 * bytes: the format has exactly one encoding of each message (zero padding,
 * zero reserved fields, no trailing bytes), so a difference is a bug in
 * either direction.  The rows of a PUSH or PULL_REPLY that decoded, 32- or
 * 16-bit, are then widened to floats as a receiver does.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/proto.h"

#define FUZZ_MAX_FRAME (1u << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf in = KEEL_BUF_INIT, out = KEEL_BUF_INIT;
    struct keel_frame_header h;
    struct keel_msg m;
    struct keel_error err;
    int rc;

    /* Decoding needs 8-byte alignment; a keel_buf gives it. */
    keel_buf_add(&in, data, size);
    keel_error_init(&err);
    (void)keel_proto_header_decode(in.buf, in.len, FUZZ_MAX_FRAME, &h, NULL);
    rc = keel_proto_decode(in.buf, in.len, FUZZ_MAX_FRAME, &m, &err);
    if (rc == 0) {
        size_t frame_len = KEEL_PROTO_HEADER_SIZE + (size_t)m.hdr.body_len;

        if (keel_proto_encode(&out, &m, &err) != 0) {
            fprintf(stderr, "decoded frame does not re-encode: %s\n", err.msg);
            abort();
        }
        if (out.len != frame_len || memcmp(out.buf, in.buf, frame_len) != 0) {
            fprintf(stderr, "re-encoded %s differs from the input\n",
                    keel_msg_type_name(m.hdr.type));
            abort();
        }
        /* Every value of the rows, 32- or 16-bit, read as a receiver would (within the frame). */
        if (m.hdr.type == KEEL_MSG_PUSH || m.hdr.type == KEEL_MSG_PULL_REPLY) {
            const struct keel_rows *d =
                m.hdr.type == KEEL_MSG_PUSH ? &m.u.push.data : &m.u.pull_reply.data;
            float *values = malloc(((size_t)d->nkeys * d->row_width + 1) * sizeof(float));

            if (values == NULL)
                abort();
            keel_rows_widen(d, 0, d->nkeys, values);
            free(values);
        }
    } else if (err.msg[0] == '\0') {
        fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
        abort();
    }
    keel_buf_release(&in);
    keel_buf_release(&out);
    return 0;
}
