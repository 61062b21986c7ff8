/*
 * fuzz_snapshot_pack.c - libFuzzer target for keel_snapshot_unpack(), the
 * decoder of a range's packed form as a backup receives it from the network.
 *
 * The first input byte says whether the checksums are recomputed first
 * (bit 0): every block's and shard entry's checksum, then the header's
 * digest of them and the header's own checksum, as far as the lengths in the
 * input reach, so that mutations get past the checksums to the rules behind
 * them.  The rest is the packed snapshot.  Any input must decode or be
 * refused with KEEL_ECORRUPT / KEEL_ECHECKSUM / KEEL_EINVAL and a message,
 * never read out of bounds (ASan watches), and leave *snap zeroed when
 * refused.  What decodes must pack again to exactly the same bytes.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "keel/snapshot.h"
#include "snapshot_int.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Rows a fuzz input may allocate: the input itself is a few KiB at most. */
#define FUZZ_MAX_ROWS_BYTES ((uint64_t)64 << 20)

/* Recompute the checksums of the packed form in p[0, n) where its lengths allow. */
static void reseal(unsigned char *p, size_t n)
{
    size_t off, hlen;
    unsigned char *head;
    uint64_t pieces;
    XXH3_state_t *digest;

    if (n < 16)
        return;
    hlen = keel_load_u32le(p + 8);
    if (hlen < KEEL__SNAP_HEAD_SIZE || hlen > n - 16)
        return;
    head = p + 16;
    off = 16 + hlen;
    pieces = (uint64_t)keel_load_u32le(head + 24) + keel_load_u32le(head + 28);
    digest = XXH3_createState();
    XXH3_64bits_reset(digest);
    for (uint64_t i = 0; i < pieces && n - off >= 4; i++) {
        size_t len = keel_load_u32le(p + off);
        unsigned char *piece = p + off + 4;

        if (len > n - off - 4)
            break;
        if (len >= 8) {
            keel_store_u64le(piece, XXH3_64bits(piece + 8, len - 8));
            XXH3_64bits_update(digest, piece, 8);
        }
        off += 4 + len;
    }
    keel_store_u64le(head + 56, XXH3_64bits_digest(digest));
    XXH3_freeState(digest);
    keel_store_u64le(head + 8, XXH3_64bits(head + 16, hlen - 16));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct keel_buf in = KEEL_BUF_INIT, out = KEEL_BUF_INIT;
    struct keel_snapshot snap;
    struct keel_error err;
    unsigned char *p;
    size_t n;
    int rc;

    if (size < 1)
        return 0;
    keel_buf_add(&in, "x", 1); /* an odd offset: no alignment may be assumed */
    keel_buf_add(&in, data + 1, size - 1);
    p = in.buf + 1;
    n = in.len - 1;
    if (data[0] & 1)
        reseal(p, n);
    keel_error_init(&err);
    rc = keel_snapshot_unpack(p, n, FUZZ_MAX_ROWS_BYTES, &snap, &err);
    if (rc != 0) {
        static const struct keel_snapshot zero;
        if (rc != KEEL_ECORRUPT && rc != KEEL_ECHECKSUM && rc != KEEL_EINVAL) {
            fprintf(stderr, "unpack returned %s: %s\n", keel_err_name(rc), err.msg);
            abort();
        }
        if (err.msg[0] == '\0' || err.code != rc) {
            fprintf(stderr, "error %s without a message\n", keel_err_name(rc));
            abort();
        }
        if (memcmp(&snap, &zero, sizeof(snap)) != 0) {
            fprintf(stderr, "refused unpack left the snapshot set\n");
            abort();
        }
    } else {
        rc = keel_snapshot_pack(&snap, &out, &err);
        if (rc != 0) {
            fprintf(stderr, "an unpacked snapshot does not pack: %s\n", err.msg);
            abort();
        }
        if (out.len != n || memcmp(out.buf, p, n) != 0) {
            fprintf(stderr, "re-packed snapshot differs from the input (%zu bytes, %zu in)\n",
                    out.len, n);
            abort();
        }
        keel_snapshot_release(&snap);
    }
    keel_buf_release(&in);
    keel_buf_release(&out);
    return 0;
}
