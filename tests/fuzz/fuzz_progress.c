/*
 * fuzz_progress.c - libFuzzer target for what workers write to etcd: progress
 * reports, evaluation results and the key names under jobs/<job>/.
 *
 * Every input goes to both decoders and, as a NUL-terminated string, to the
 * key parser.  What decodes must encode to JSON that decodes to the same
 * value and encodes to the same bytes; what is refused must say why; a key
 * that parses must name a number that prints back to the same digits.
 */
#include <inttypes.h>
 * fuzz_progress.c - libFuzzer target for the decoders of a worker's progress
 * and evaluation reports (keel/progress.h), which read JSON from etcd.
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

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const struct keel_buf *a, const struct keel_buf *b, const char *what)
{
    if (a->len != b->len || memcmp(a->buf, b->buf, a->len) != 0) {
        fprintf(stderr, "%s round trip changed:\n%s\n%s\n", what, (const char *)a->buf,
                (const char *)b->buf);
        abort();
    }
}

static void check_key(const uint8_t *data, size_t size)
{
    char *key = malloc(size + 1), worker[KEEL_ID_MAX + 1], again[128];
    enum keel_job_key kind;
    uint32_t num = 0;

    memcpy(key, data, size);
    key[size] = '\0';
    kind = keel_job_key_parse(key, &num, worker);
    switch (kind) {
    case KEEL_JOB_KEY_SHARD:
        snprintf(again, sizeof(again), "shards/%" PRIu32, num);
        break;
    case KEEL_JOB_KEY_PROGRESS:
        snprintf(again, sizeof(again), "progress/%" PRIu32, num);
        break;
    case KEEL_JOB_KEY_EVAL:
        if (!keel_id_valid(worker))
            abort();
        snprintf(again, sizeof(again), "eval/%" PRIu32 "/%s", num, worker);
        break;
    default:
        free(key);
        return;
    }
    if (strcmp(again, key) != 0) {
        fprintf(stderr, "key '%s' parsed as '%s'\n", key, again);
        abort();
    }
    free(key);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf a = KEEL_BUF_INIT, b = KEEL_BUF_INIT;
    struct keel_progress p, p2;
    struct keel_eval e, e2;
    struct keel_error err;

    keel_error_init(&err);
    if (keel_progress_decode(data, size, &p, &err) == 0) {
        keel_progress_encode(&p, &a);
        if (keel_progress_decode(a.buf, a.len, &p2, &err) != 0) {
            fprintf(stderr, "progress does not decode again: %s\n", err.msg);
            fprintf(stderr, "re-decoding progress failed: %s\n", err.msg);
            abort();
        }
        keel_progress_encode(&p2, &b);
        same(&a, &b, "progress");
    } else if (err.msg[0] == '\0') {
        abort();
    }

    } else if (err.msg[0] == '\0' || p.worker[0] != '\0') {
        abort();
    }
    keel_buf_reset(&a);
    keel_buf_reset(&b);
    keel_error_init(&err);
    if (keel_eval_decode(data, size, &e, &err) == 0) {
        keel_eval_encode(&e, &a);
        if (keel_eval_decode(a.buf, a.len, &e2, &err) != 0) {
            fprintf(stderr, "eval does not decode again: %s\n", err.msg);
            fprintf(stderr, "re-decoding eval failed: %s\n", err.msg);
            abort();
        }
        keel_eval_encode(&e2, &b);
        same(&a, &b, "eval");
    } else if (err.msg[0] == '\0') {
    } else if (err.msg[0] == '\0' || e.worker[0] != '\0') {
        abort();
    }
    keel_buf_release(&a);
    keel_buf_release(&b);

    check_key(data, size);
    return 0;
}
