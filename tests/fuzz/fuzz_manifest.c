/*
 * fuzz_manifest.c - libFuzzer target for the checkpoint manifest decoder
 * (binary envelope + JSON).
 *
 * Any input must decode or be refused with an error and a message, never
 * read out of bounds (ASan watches).  A manifest that decodes must survive
 * encode -> decode unchanged in every field, and its signature must verify
 * under the key it was re-signed with.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "keel/checkpoint.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void same(const struct keel_manifest *a, const struct keel_manifest *b)
{
    int ok = strcmp(a->job, b->job) == 0 && a->id == b->id && a->clock == b->clock &&
             a->created_ns == b->created_ns && memcmp(a->spec_sha256, b->spec_sha256, 32) == 0 &&
             memcmp(a->prev_sha256, b->prev_sha256, 32) == 0 && a->nranges == b->nranges &&
             a->nshards == b->nshards;

    for (size_t i = 0; ok && i < a->nranges; i++) {
        const struct keel_ckpt_range *x = &a->ranges[i], *y = &b->ranges[i];
        ok = x->range == y->range && x->lsn == y->lsn && x->rows == y->rows &&
             x->blocks == y->blocks && memcmp(x->sha256, y->sha256, 32) == 0 &&
             x->ntables == y->ntables && x->nshards == y->nshards;
        for (size_t t = 0; ok && t < x->ntables; t++)
            ok = memcmp(&x->tables[t], &y->tables[t], sizeof(x->tables[t])) == 0;
        for (size_t s = 0; ok && s < x->nshards; s++)
            ok = x->shards[s].shard == y->shards[s].shard && x->shards[s].seq == y->shards[s].seq &&
                 strcmp(x->shards[s].worker_id, y->shards[s].worker_id) == 0;
    }
    for (size_t s = 0; ok && s < a->nshards; s++)
        ok = a->shards[s].shard == b->shards[s].shard && a->shards[s].seq == b->shards[s].seq;
    if (!ok) {
        fprintf(stderr, "manifest changed through encode -> decode\n");
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_ckpt_key key = {{0}, 32};
    struct keel_manifest m, again;
    struct keel_buf out = KEEL_BUF_INIT;
    struct keel_error err;
    int rc;

    keel_error_init(&err);
    rc = keel_manifest_decode(data, size, &m, NULL, NULL, &err);
    if (rc != 0) {
        if (err.msg[0] == '\0') {
            fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
            abort();
        }
        return 0;
    }
    memset(key.bytes, 7, key.len);
    if (keel_manifest_encode(&out, &m, &key, &err) != 0) {
        fprintf(stderr, "decoded manifest does not re-encode: %s\n", err.msg);
        abort();
    }
    if (keel_manifest_decode(out.buf, out.len, &again, NULL, NULL, &err) != 0) {
        fprintf(stderr, "re-encoded manifest does not decode: %s\n", err.msg);
        abort();
    }
    same(&m, &again);
    keel_manifest_release(&again);
    keel_manifest_release(&m);
    keel_buf_release(&out);
    return 0;
}
