/*
 * fuzz_jobs.c - libFuzzer target for the job state and shard decoders.
 *
 * The first byte picks the job's epochs for the shard decoder; the rest goes
 * to both decoders.  What decodes must encode to JSON that decodes to the
 * same value and encodes to the same bytes; what is refused must say why.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/jobs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const struct keel_buf *a, const struct keel_buf *b, const char *what)
{
    if (a->len != b->len || memcmp(a->buf, b->buf, a->len) != 0) {
        fprintf(stderr, "%s round trip changed:\n%s\n%s\n", what, (const char *)a->buf,
                (const char *)b->buf);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf a = KEEL_BUF_INIT, b = KEEL_BUF_INIT;
    struct keel_job_status st, st2;
    struct keel_shard sh, sh2;
    struct keel_error err;
    uint32_t epochs;

    if (size < 1)
        return 0;
    epochs = 1 + data[0] % 16;
    data++;
    size--;

    keel_error_init(&err);
    if (keel_job_status_decode(data, size, &st, &err) == 0) {
        keel_job_status_encode(&st, &a);
        if (keel_job_status_decode(a.buf, a.len, &st2, &err) != 0) {
            fprintf(stderr, "job state does not decode again: %s\n", err.msg);
            abort();
        }
        keel_job_status_encode(&st2, &b);
        same(&a, &b, "job state");
    } else if (err.msg[0] == '\0') {
        abort();
    }

    keel_buf_reset(&a);
    keel_buf_reset(&b);
    keel_error_init(&err);
    if (keel_shard_decode(data, size, epochs, &sh, &err) == 0) {
        keel_shard_encode(&sh, &a);
        if (keel_shard_decode(a.buf, a.len, epochs, &sh2, &err) != 0) {
            fprintf(stderr, "shard does not decode again: %s\n", err.msg);
            abort();
        }
        keel_shard_encode(&sh2, &b);
        same(&a, &b, "shard");
    } else if (err.msg[0] == '\0') {
        abort();
    }
    keel_buf_release(&a);
    keel_buf_release(&b);
    return 0;
}
