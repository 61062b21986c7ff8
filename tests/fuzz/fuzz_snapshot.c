/*
 * fuzz_snapshot.c - libFuzzer target for the other decoders of bytes read
 * from a store: snapshot headers, row blocks, shard entries and audit
 * records.
 *
 * The first input byte picks the decoder (low two bits) and whether its
 * checksum is recomputed first (bit 2), so that mutations reach the checks
 * behind it; the rest is the value.  Any input must decode or be refused
 * with an error and a message, never read out of bounds (ASan watches).
 * What decodes must encode back to the same bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "snapshot_int.h"
#include "keel/audit.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_error(int rc, const struct keel_error *err)
{
    if (rc != 0 && err->msg[0] == '\0') {
        fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
        abort();
    }
}

static void check_same(const void *a, size_t alen, const void *b, size_t blen, const char *what)
{
    if (alen != blen || memcmp(a, b, alen) != 0) {
        fprintf(stderr, "re-encoded %s differs from the input\n", what);
        abort();
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf in = KEEL_BUF_INIT, out = KEEL_BUF_INIT;
    struct keel_error err;
    unsigned kind, reseal;
    unsigned char *p;
    size_t n;
    int rc;

    if (size < 1)
        return 0;
    kind = data[0] & 3;
    reseal = data[0] & 4;
    keel_buf_add(&in, "x", 1); /* an odd offset: no alignment may be assumed */
    keel_buf_add(&in, data + 1, size - 1);
    p = in.buf + 1;
    n = in.len - 1;
    keel_error_init(&err);
    switch (kind) {
    case 0: { /* snapshot header: checksum at 8 over [16, end) */
        struct keel__snap_head h;
        if (reseal && n >= 16)
            keel_store_u64le(p + 8, XXH3_64bits(p + 16, n - 16));
        rc = keel__snap_head_decode(p, n, &h, &err);
        check_error(rc, &err);
        if (rc == 0) {
            keel__snap_head_encode(&out, &h);
            check_same(out.buf, out.len, p, n, "snapshot header");
            free(h.dir);
        }
        break;
    }
    case 1: { /* row block: checksum at 0 over [8, end) */
        struct keel__snap_block b;
        if (reseal && n >= 8)
            keel_store_u64le(p, XXH3_64bits(p + 8, n - 8));
        rc = keel__block_decode(p, n, &b, &err);
        check_error(rc, &err);
        if (rc == 0) {
            /* Touch every byte the block says it holds. */
            uint64_t sum = XXH3_64bits(b.keys, (size_t)b.count * 8) ^
                           XXH3_64bits(b.rows, (size_t)b.count * b.width * 4) ^
                           XXH3_64bits(b.state, (size_t)b.count * b.state_width * 4);
            keel_buf_add(&out, &sum, sizeof(sum));
        }
        break;
    }
    case 2: { /* shard entry */
        struct keel_shard_pos sp;
        unsigned char again[KEEL__SHARD_HEAD_SIZE + KEEL_ID_MAX];
        uint64_t sum;
        if (reseal && n >= 8)
            keel_store_u64le(p, XXH3_64bits(p + 8, n - 8));
        rc = keel__shard_decode(p, n, &sp, &sum, &err);
        check_error(rc, &err);
        if (rc == 0)
            check_same(again, keel__shard_encode(again, sizeof(again), &sp), p, n, "shard entry");
        break;
    }
    default: { /* audit record (no checksum: chained by SHA-256) */
        struct keel_audit_record rec;
        rc = keel_audit_decode(p, n, &rec, &err);
        check_error(rc, &err);
        if (rc == 0) {
            keel_audit_encode(&out, &rec);
            check_same(out.buf, out.len, p, n, "audit record");
        }
        break;
    }
    }
    keel_buf_release(&in);
    keel_buf_release(&out);
    return 0;
}
