/*
 * fuzz_replicas.c - libFuzzer target for a server's replica report decoder
 * (keel/replicas.h), which the leader runs on what every server writes.
 *
 * Any input must decode or be refused with a message and a zeroed report,
 * never read out of bounds.  A report that decodes must encode to canonical
 * JSON that decodes to the same report and encodes to the same bytes again;
 * every restoring range is one it holds at a term, no stored range one it holds.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/replicas.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct keel_replica_report r, back, zero;
    struct keel_buf once = KEEL_BUF_INIT, twice = KEEL_BUF_INIT;
    struct keel_error err;

    keel_error_init(&err);
    if (keel_replica_report_decode(data, size, &r, &err) != 0) {
        if (err.msg[0] == '\0' || memcmp(&r, &zero, sizeof(r)) != 0) {
            fprintf(stderr, "refused without a message or with a report left\n");
            abort();
        }
        return 0;
    }
    for (unsigned i = 0; i < KEEL_PROTO_NRANGES; i++)
        if ((r.restoring[i] && r.terms[i] == 0) || (r.stored[i] != 0 && r.terms[i] != 0)) {
            fprintf(stderr, "range %u restores without a term, or is both held and stored\n", i);
            abort();
        }
    keel_replica_report_encode(&r, &once);
    if (keel_replica_report_decode(once.buf, once.len, &back, &err) != 0) {
        fprintf(stderr, "canonical form does not decode: %s\n%s\n", err.msg, once.buf);
        abort();
    }
    keel_replica_report_encode(&back, &twice);
    if (once.len != twice.len || memcmp(once.buf, twice.buf, once.len) != 0) {
        fprintf(stderr, "round trip changed the report\n");
        abort();
    }
    keel_buf_release(&once);
    keel_buf_release(&twice);
    return 0;
}
