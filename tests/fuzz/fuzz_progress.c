/*
 * fuzz_progress.c - libFuzzer target for the decoders of a worker's progress
 * and evaluation reports (keel/progress.h) and of a server's replica report
 * (keel/replicas.h), which read JSON from etcd.
 *
 * The input goes to both decoders.  What decodes must encode to JSON that
 * decodes again and encodes to the same bytes; what is refused must say why
 * and leave no half-decoded value behind.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/progress.h"
#include "keel/replicas.h"

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
    struct keel_progress p, p2;
    struct keel_eval e, e2;
    static struct keel_replica_report r, r2;
    struct keel_error err;

    keel_error_init(&err);
    if (keel_progress_decode(data, size, &p, &err) == 0) {
        keel_progress_encode(&p, &a);
        if (keel_progress_decode(a.buf, a.len, &p2, &err) != 0) {
            fprintf(stderr, "re-decoding progress failed: %s\n", err.msg);
            abort();
        }
        keel_progress_encode(&p2, &b);
        same(&a, &b, "progress");
    } else if (err.msg[0] == '\0' || p.worker[0] != '\0') {
        abort();
    }
    keel_buf_reset(&a);
    keel_buf_reset(&b);
    keel_error_init(&err);
    if (keel_eval_decode(data, size, &e, &err) == 0) {
        keel_eval_encode(&e, &a);
        if (keel_eval_decode(a.buf, a.len, &e2, &err) != 0) {
            fprintf(stderr, "re-decoding eval failed: %s\n", err.msg);
            abort();
        }
        keel_eval_encode(&e2, &b);
        same(&a, &b, "eval");
    } else if (err.msg[0] == '\0' || e.worker[0] != '\0') {
        abort();
    }
    keel_buf_reset(&a);
    keel_buf_reset(&b);
    keel_error_init(&err);
    if (keel_replica_report_decode(data, size, &r, &err) == 0) {
        keel_replica_report_encode(&r, &a);
        if (keel_replica_report_decode(a.buf, a.len, &r2, &err) != 0) {
            fprintf(stderr, "re-decoding a replica report failed: %s\n", err.msg);
            abort();
        }
        keel_replica_report_encode(&r2, &b);
        same(&a, &b, "replicas");
    } else if (err.msg[0] == '\0' || r.incarnation != 0) {
        abort();
    }
    keel_buf_release(&a);
    keel_buf_release(&b);
    return 0;
}
