/*
 * make_storage_seeds.c - write the seed corpora of the storage fuzz targets:
 * valid log records (fuzz_ulog), manifests (fuzz_manifest), and snapshot
 * headers, row blocks, shard entries and audit records (fuzz_snapshot),
 * and packed range snapshots (fuzz_snapshot_pack), each with the target's
 * leading mode byte where it has one.
 *
 *   keel-make-storage-seeds FIXTURES_DIR
 * writes FIXTURES_DIR/{ulog,manifest,snapshot,snapshot_pack}-corpus/ (which
 * must exist).
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "snapshot_int.h"
#include "keel/audit.h"
#include "keel/checkpoint.h"
#include "keel/ulog.h"
#include "ulog_int.h"

static int write_seed(const char *dir, const char *corpus, const char *name, int mode,
                      const struct keel_buf *b)
{
    char path[4096];
    unsigned char m = (unsigned char)mode;
    FILE *f;
    int rc = 0;

    snprintf(path, sizeof(path), "%s/%s-corpus/%s.bin", dir, corpus, name);
    f = fopen(path, "wb");
    if (f == NULL || (mode >= 0 && fwrite(&m, 1, 1, f) != 1) ||
        fwrite(b->buf, 1, b->len, f) != b->len) {
        fprintf(stderr, "cannot write '%s': %s\n", path, strerror(errno));
        rc = 1;
    }
    if (f != NULL && fclose(f) != 0)
        rc = 1;
    return rc;
}

int main(int argc, char **argv)
{
    static uint64_t keys[3] = {(uint64_t)2 << 48 | 1, (uint64_t)2 << 48 | 7, (uint64_t)2 << 48 | 9};
    static float rows[6] = {0.5f, -1, 2, 4, 8, -16};
    static float state[3] = {1, 2, 3};
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_error err;
    int rc = 0;

    if (argc != 2 || strcmp(argv[1], "--help") == 0) {
        fprintf(stderr, "usage: %s FIXTURES_DIR\nwrite the storage fuzz seed corpora\n", argv[0]);
        return argc == 2 ? 0 : 64;
    }
    keel_error_init(&err);

    /* Log records: one per worker id length class, as-is and to reseal. */
    const char *workers[] = {"w", "worker-7", "a-much-longer-worker-identifier-12345"};
    for (int i = 0; i < 3; i++) {
        struct keel_ulog_record r;
        char name[32];
        memset(&r, 0, sizeof(r));
        r.range = 17;
        r.lsn = 1000 + (uint64_t)i;
        r.push.worker_id.ptr = workers[i];
        r.push.worker_id.len = (uint32_t)strlen(workers[i]);
        r.push.shard = 3;
        r.push.incarnation = 2;
        r.push.seq = 77;
        r.push.clock = 5;
        r.push.data.table_id = 2;
        r.push.data.row_width = (uint32_t)(i == 2 ? 1 : 2);
        r.push.data.nkeys = (uint32_t)(i == 0 ? 0 : 3);
        r.push.data.keys = keys;
        r.push.data.rows = rows;
        keel_buf_reset(&b);
        if (keel_ulog_encode(&b, &r, &err) != 0) {
            fprintf(stderr, "cannot encode a log record: %s\n", err.msg);
            return 1;
        }
        snprintf(name, sizeof(name), "record%d", i);
        rc |= write_seed(argv[1], "ulog", name, 0, &b);
        snprintf(name, sizeof(name), "record%d-reseal", i);
        rc |= write_seed(argv[1], "ulog", name, 1, &b);
    }

    /* A manifest with two ranges and shard progress. */
    struct keel_ckpt_table t1[2] = {{1, 4, 0, 10, 1}, {2, 8, 16, 3, 1}};
    struct keel_shard_pos sp[2] = {{0, 12, 1, "w1"}, {5, 40, 3, "w2"}};
    struct keel_ckpt_range ranges[2] = {{3, 100, 13, 2, {1}, 2, t1, 2, sp},
                                        {9, 50, 10, 1, {2}, 1, t1, 1, sp}};
    struct keel_manifest m = {"job", 4, 90, {3}, 1700000000000000000u, {4}, 2, ranges, 2, sp, "s1"};
    struct keel_ckpt_key key = {{0}, 32};
    keel_buf_reset(&b);
    if (keel_manifest_encode(&b, &m, &key, &err) != 0) {
        fprintf(stderr, "cannot encode a manifest: %s\n", err.msg);
        return 1;
    }
    rc |= write_seed(argv[1], "manifest", "manifest", -1, &b);
    m.nranges = 0;
    m.nshards = 0;
    keel_buf_reset(&b);
    keel_manifest_encode(&b, &m, &key, &err);
    rc |= write_seed(argv[1], "manifest", "empty", -1, &b);

    /* Snapshot header (kind 0), block (1), shard entry (2), audit record (3). */
    struct keel__snap_dir dir[2] = {{1, 2, 1, 1, 3}, {4, 1, 0, 1, 2}};
    struct keel__snap_head h = {5, 2, 2, 1, 99, 123, 5, 0xabcdef, dir};
    keel_buf_reset(&b);
    keel__snap_head_encode(&b, &h);
    rc |= write_seed(argv[1], "snapshot", "head", 0, &b);
    rc |= write_seed(argv[1], "snapshot", "head-reseal", 4, &b);

    struct keel_snap_table t = {2, 2, 1, 3, keys, rows, state};
    keel_buf_reset(&b);
    keel__block_fill(keel_buf_add_zero(&b, keel__block_size(3, 2, 1)), &t, 0, 3);
    rc |= write_seed(argv[1], "snapshot", "block", 1, &b);
    rc |= write_seed(argv[1], "snapshot", "block-reseal", 5, &b);

    unsigned char entry[KEEL__SHARD_HEAD_SIZE + KEEL_ID_MAX];
    keel_buf_reset(&b);
    keel_buf_add(&b, entry, keel__shard_encode(entry, sizeof(entry), &sp[1]));
    rc |= write_seed(argv[1], "snapshot", "shard", 2, &b);
    rc |= write_seed(argv[1], "snapshot", "shard-reseal", 6, &b);

    struct keel_audit_record a;
    memset(&a, 0, sizeof(a));
    a.seq = 3;
    a.time_ns = 1700000000000000000u;
    a.checkpoint = 2;
    a.event = KEEL_AUDIT_VERIFIED;
    snprintf(a.job, sizeof(a.job), "job");
    snprintf(a.detail, sizeof(a.detail), "ok");
    keel_buf_reset(&b);
    keel_audit_encode(&b, &a);
    rc |= write_seed(argv[1], "snapshot", "audit", 3, &b);

    /* Packed snapshots (mode 0: as they are, 1: checksums recomputed): two
     * tables, one with optimizer state, and two shards; one table, no
     * shards; an empty range. */
    static uint64_t keys4[2] = {(uint64_t)4 << 48 | 3, (uint64_t)4 << 48 | 8};
    static float rows4[2] = {-0.25f, 1e30f};
    struct keel_snap_table pt[2] = {{2, 2, 1, 3, keys, rows, state},
                                    {4, 1, 0, 2, keys4, rows4, NULL}};
    struct keel_snapshot ps = {5, 99, 1700000000000000000u, 2, pt, 2, sp, 0};
    keel_buf_reset(&b);
    if (keel_snapshot_pack(&ps, &b, &err) != 0) {
        fprintf(stderr, "cannot pack a snapshot: %s\n", err.msg);
        return 1;
    }
    rc |= write_seed(argv[1], "snapshot_pack", "packed", 0, &b);
    rc |= write_seed(argv[1], "snapshot_pack", "packed-reseal", 1, &b);
    ps.ntables = 1;
    ps.tables = &pt[1];
    ps.nshards = 0;
    keel_buf_reset(&b);
    keel_snapshot_pack(&ps, &b, &err);
    rc |= write_seed(argv[1], "snapshot_pack", "one-table", 0, &b);
    ps.ntables = 0;
    keel_buf_reset(&b);
    keel_snapshot_pack(&ps, &b, &err);
    rc |= write_seed(argv[1], "snapshot_pack", "empty", 0, &b);
    rc |= write_seed(argv[1], "snapshot_pack", "empty-reseal", 1, &b);

    keel_buf_release(&b);
    return rc;
}
