/*
 * test_checkpoint.c - manifests, signed checkpoints, verify/diff/export/
 * restore/prune, and the audit chain, on real LMDB stores.
 */
#include <errno.h>
#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/audit.h"
#include "keel/checkpoint.h"
#include "keel/proto.h"
#include "keel/snapshot.h"
#include "keel/store.h"
#include "keel/ulog.h"
#include "store_int.h"

static char tmpdir[64];
static char keypath[128];
static struct keel_error err;
static keel_store *store;
static struct keel_ckpt_key key;

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/keel-test-ckpt-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    keel_error_init(&err);
    cr_assert_eq(keel_store_open(&store, tmpdir, NULL, &err), 0, "%s", err.msg);
    snprintf(keypath, sizeof(keypath), "%s/cluster.key", tmpdir);
    cr_assert_eq(keel_ckpt_key_generate(keypath, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ckpt_key_load(&key, keypath, &err), 0, "%s", err.msg);
}

static void teardown(void)
{
    char cmd[128];

    keel_store_close(store);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(checkpoint, .init = setup, .fini = teardown);

/* Range r holds rows of table 1 (width 4) whose row index % 3 == r, values v + row. */
static void write_range(uint32_t range, uint64_t lsn, float v, uint64_t nrows)
{
    struct keel_snap_table t = {1, 4, 1, 0, NULL, NULL, NULL};
    struct keel_shard_pos sp = {7, lsn * 10, 2, "w1"};
    struct keel_snapshot snap = {range, lsn, 0, 1, &t, 1, &sp, 0};

    t.keys = keel_calloc(nrows, 8);
    t.rows = keel_calloc(nrows * 4, 4);
    t.state = keel_calloc(nrows, 4);
    for (uint64_t i = 0; i < nrows; i++) {
        uint64_t row = i * 3 + range;
        t.keys[t.nrows] = (uint64_t)1 << 48 | row;
        for (int c = 0; c < 4; c++)
            t.rows[t.nrows * 4 + c] = v + (float)row;
        t.state[t.nrows] = 0.5f;
        t.nrows++;
    }
    cr_assert_eq(keel_snapshot_write(store, &snap, &err), 0, "%s", err.msg);
    free(t.keys);
    free(t.rows);
    free(t.state);
}

static uint64_t take(uint64_t clock)
{
    struct keel_ckpt_params p = {"mnist", clock, {0}, NULL, 0, NULL};
    uint64_t id = 0;

    memset(p.spec_sha256, 0xab, 32);
    cr_assert_eq(keel_checkpoint_take(store, &key, &p, &id, &err), 0, "%s", err.msg);
    return id;
}

/* Change stored bytes through LMDB: flip one byte, or delete the key. */
struct tamper {
    enum keel_db db;
    unsigned char key[16];
    size_t klen;
    size_t offset; /* from the end when negative_offset */
    int from_end;
    int remove;
};

static int tamper_fn(keel_txn *txn, void *ctx, struct keel_error *e)
{
    struct tamper *t = ctx;
    MDB_val v;
    int rc;

    if (t->remove)
        return keel_store_del(store, txn, t->db, t->key, t->klen, e);
    rc = keel_store_get(store, txn, t->db, t->key, t->klen, &v, e);
    if (rc != 0)
        return rc;
    unsigned char *copy = keel_malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[t->from_end ? v.mv_size - 1 - t->offset : t->offset] ^= 0x04;
    rc = keel_store_put(store, txn, t->db, t->key, t->klen, copy, v.mv_size, e);
    free(copy);
    return rc;
}

static void tamper(struct tamper *t)
{
    cr_assert_eq(keel_store_write(store, tamper_fn, t, &err), 0, "%s", err.msg);
}

Test(checkpoint, key_files_are_checked)
{
    char path[160];
    FILE *f;
    struct keel_ckpt_key k;

    cr_assert_eq(keel_ckpt_key_generate(keypath, &err), -EEXIST);
    cr_assert(strstr(err.msg, keypath) != NULL, "%s", err.msg);
    snprintf(path, sizeof(path), "%s/short.key", tmpdir);
    f = fopen(path, "w");
    fputs("tooshort", f);
    fclose(f);
    cr_assert_eq(chmod(path, 0600), 0);
    cr_assert_eq(keel_ckpt_key_load(&k, path, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "holds 8 bytes") != NULL, "%s", err.msg);
    /* A key the group or others can read is refused, not warned about. */
    cr_assert_eq(chmod(keypath, 0640), 0);
    cr_assert_eq(keel_ckpt_key_load(&k, keypath, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "open to group or others (mode 640)") != NULL, "%s", err.msg);
    cr_assert_eq(chmod(keypath, 0604), 0);
    cr_assert_eq(keel_ckpt_key_load(&k, keypath, &err), KEEL_EINVAL);
    cr_assert_eq(chmod(keypath, 0600), 0);
    cr_assert_eq(keel_ckpt_key_load(&k, keypath, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ckpt_key_load(&k, "/nonexistent/key", &err), -ENOENT);
    struct stat st;
    cr_assert_eq(stat(keypath, &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);
    cr_assert_eq(st.st_size, 32);
}

Test(checkpoint, manifest_round_trips_and_refuses_damage)
{
    struct keel_ckpt_table tables[1] = {{3, 8, 0, 10, 1}};
    struct keel_shard_pos sp[1] = {{4, 99, 1, "w\"q"}};
    struct keel_ckpt_range r = {5, 77, 10, 1, {1, 2, 3}, 1, tables, 1, sp};
    struct keel_manifest m = {"job-x", 3, 12, {9}, 1234567, {8}, 1, &r, 1, sp, "s7"}, got;
    struct keel_buf b = KEEL_BUF_INIT;
    unsigned char mac[32];
    struct keel_view json;

    cr_assert_eq(keel_manifest_encode(&b, &m, &key, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_manifest_decode(b.buf, b.len, &got, mac, &json, &err), 0, "%s", err.msg);
    cr_assert_str_eq(got.job, "job-x");
    cr_assert_str_eq(got.server, "s7");
    cr_assert_eq(got.id, 3);
    cr_assert_eq(got.clock, 12);
    cr_assert_eq(got.created_ns, 1234567);
    cr_assert_eq(memcmp(got.spec_sha256, m.spec_sha256, 32), 0);
    cr_assert_eq(memcmp(got.prev_sha256, m.prev_sha256, 32), 0);
    cr_assert_eq(got.nranges, 1);
    cr_assert_eq(got.ranges[0].range, 5);
    cr_assert_eq(got.ranges[0].lsn, 77);
    cr_assert_eq(memcmp(got.ranges[0].sha256, r.sha256, 32), 0);
    cr_assert_eq(got.ranges[0].tables[0].width, 8);
    cr_assert_str_eq(got.ranges[0].shards[0].worker_id, "w\"q");
    cr_assert_eq(got.nshards, 1);
    cr_assert_eq(got.shards[0].seq, 99);
    cr_assert_eq(json.len, b.len - KEEL_MANIFEST_HEADER_SIZE);
    keel_manifest_release(&got);

    for (size_t n = 0; n < b.len; n++)
        cr_assert_neq(keel_manifest_decode(b.buf, n, &got, NULL, NULL, &err), 0, "length %zu", n);

    /* A field of the wrong type is named. */
    char *p = strstr((char *)b.buf + KEEL_MANIFEST_HEADER_SIZE, "\"lsn\":77");
    cr_assert_not_null(p);
    memcpy(p, "\"lsn\":\"\"", 8);
    cr_assert_eq(keel_manifest_decode(b.buf, b.len, &got, NULL, NULL, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "ranges[0]: 'lsn'") != NULL, "%s", err.msg);
    /* Broken JSON is named with its byte. */
    memcpy(p, "\"lsn\":{7", 8);
    cr_assert_eq(keel_manifest_decode(b.buf, b.len, &got, NULL, NULL, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "manifest JSON: byte") != NULL, "%s", err.msg);
    keel_buf_release(&b);
}

Test(checkpoint, take_verify_and_chain)
{
    uint64_t *ids;
    size_t n;
    struct keel_manifest m;

    cr_assert_eq(keel_checkpoint_take(store, &key,
                                      &(struct keel_ckpt_params){"j", 0, {0}, NULL, 0, NULL}, NULL,
                                      &err),
                 KEEL_ENOTFOUND);
    write_range(0, 10, 1, 2000);
    write_range(1, 11, 1, 2000);
    write_range(2, 12, 1, 5);
    cr_assert_eq(take(100), 1);
    cr_assert_eq(keel_checkpoint_verify(store, &key, 1, 1, &err), 0, "%s", err.msg);
    write_range(1, 20, 2, 2000);
    cr_assert_eq(take(200), 2);
    cr_assert_eq(keel_checkpoint_verify(store, &key, 2, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_checkpoint_list(store, &ids, &n, &err), 0);
    cr_assert_eq(n, 2);
    cr_assert_eq(ids[0], 1);
    cr_assert_eq(ids[1], 2);
    free(ids);

    cr_assert_eq(keel_checkpoint_manifest(store, 2, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m.nranges, 3);
    cr_assert_eq(m.ranges[1].lsn, 20);
    cr_assert_eq(m.ranges[1].rows, 2000);
    cr_assert_eq(m.clock, 200);
    cr_assert_eq(m.nshards, 1);
    cr_assert_eq(m.shards[0].seq, 200, "the job's progress is the highest seq of any range");
    keel_manifest_release(&m);

    cr_assert_eq(keel_checkpoint_verify(store, &key, 9, 1, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "no checkpoint 9") != NULL, "%s", err.msg);

    /* Another key does not verify. */
    struct keel_ckpt_key other = key;
    other.bytes[0] ^= 1;
    cr_assert_eq(keel_checkpoint_verify(store, &other, 1, 0, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "signature") != NULL, "%s", err.msg);

    uint64_t count;
    cr_assert_eq(keel_audit_verify(store, NULL, NULL, &count, &err), 0, "%s", err.msg);
    cr_assert_eq(count, 4, "taken, verified, taken, verified (unrecorded ones not): %lu",
                 (unsigned long)count);
}

Test(checkpoint, tampering_is_found_and_named)
{
    struct tamper t = {0};

    write_range(0, 10, 1, 2000);
    write_range(1, 11, 1, 2000);
    cr_assert_eq(take(1), 1);
    cr_assert_eq(take(2), 2);

    /* A flipped byte in a row of range 1 (last byte of its first block). */
    t.db = KEEL_DB_CKPT_ROWS;
    keel_store_be64(t.key, 2);
    keel_store_be32(t.key + 8, 1);
    keel_store_be32(t.key + 12, 0);
    t.klen = 16;
    t.from_end = 1;
    tamper(&t);
    cr_assert_neq(keel_checkpoint_verify(store, &key, 2, 1, &err), 0);
    cr_assert(strstr(err.msg, "checkpoint 2: range 1: block 0") != NULL, "%s", err.msg);
    tamper(&t); /* flip back */
    cr_assert_eq(keel_checkpoint_verify(store, &key, 2, 1, &err), 0, "%s", err.msg);

    /* A removed block. */
    t.remove = 1;
    tamper(&t);
    cr_assert_eq(keel_checkpoint_verify(store, &key, 2, 1, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "range 1: block 0 is missing") != NULL, "%s", err.msg);

    /* A flipped byte in manifest 1's JSON: its signature fails, and 2's chain too. */
    memset(&t, 0, sizeof(t));
    t.db = KEEL_DB_CKPT_MANIFEST;
    keel_store_be64(t.key, 1);
    t.klen = 8;
    t.offset = 60;
    tamper(&t);
    cr_assert_neq(keel_checkpoint_verify(store, &key, 1, 1, &err), 0);
    cr_assert(strstr(err.msg, "checkpoint 1") != NULL, "%s", err.msg);
}

Test(checkpoint, a_changed_row_keeping_its_block_checksum_fails_the_sha256)
{
    /* Rewrite a block with a valid XXH3 but changed value: only SHA-256 catches it. */
    write_range(0, 10, 1, 20);
    cr_assert_eq(take(1), 1);
    struct keel_manifest m;
    cr_assert_eq(keel_checkpoint_manifest(store, 1, &m, &err), 0);
    cr_assert_eq(m.ranges[0].blocks, 1);
    keel_manifest_release(&m);

    /* Replace checkpoint 1's block 0 by the rows of a different snapshot. */
    write_range(0, 10, 5, 20);
    cr_assert_eq(take(2), 2);
    MDB_txn *txn;
    unsigned char k2[16], k1[16];
    keel_store_be64(k2, 2);
    keel_store_be32(k2 + 8, 0);
    keel_store_be32(k2 + 12, 0);
    memcpy(k1, k2, 16);
    keel_store_be64(k1, 1);
    cr_assert_eq(mdb_txn_begin(keel_store_env(store), NULL, 0, &txn), 0);
    MDB_val v, k = {16, k2}, kk = {16, k1};
    cr_assert_eq(mdb_get(txn, keel_store_dbi(store, KEEL_DB_CKPT_ROWS), &k, &v), 0);
    unsigned char *copy = keel_malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    MDB_val nv = {v.mv_size, copy};
    cr_assert_eq(mdb_put(txn, keel_store_dbi(store, KEEL_DB_CKPT_ROWS), &kk, &nv, 0), 0);
    cr_assert_eq(mdb_txn_commit(txn), 0);
    free(copy);
    cr_assert_eq(keel_checkpoint_verify(store, &key, 1, 0, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "checkpoint 1: range 0: SHA-256 of the rows does not match") != NULL,
              "%s", err.msg);
}

struct names {
    char seen[16][16];
    int n;
};

static int collect_names(const struct keel_audit_record *r, void *c, struct keel_error *e)
{
    struct names *nm = c;

    if (nm->n < 16)
        snprintf(nm->seen[nm->n++], 16, "%s", keel_audit_event_name(r->event));
    return 0;
}

static int count_apply(struct keel_snapshot *snap, const struct keel_ulog_record *rec, void *ctx,
                       struct keel_error *e)
{
    (void)snap;
    (void)rec;
    (void)e;
    ++*(unsigned *)ctx;
    return 0;
}

/* A rollback puts every range's checkpoint in every store: here range 1 of one store into
 * another that holds a stale copy and a log for it. */
Test(checkpoint, a_checkpoint_restores_into_another_store)
{
    keel_store *other;
    char dir2[200], cmd[260];
    unsigned char only[KEEL_PROTO_NRANGES] = {0};
    struct keel_snapshot got;
    keel_store *mine = store;

    write_range(0, 10, 1, 4);
    write_range(1, 11, 1, 4);
    cr_assert_eq(take(1), 1);
    snprintf(dir2, sizeof(dir2), "%s/other", tmpdir);
    cr_assert_eq(mkdir(dir2, 0700), 0);
    cr_assert_eq(keel_store_open(&other, dir2, NULL, &err), 0, "%s", err.msg);
    store = other; /* write_range() writes to `store` */
    write_range(1, 99, 7, 2);
    write_range(2, 5, 7, 2);
    store = mine;
    {
        float g[8] = {0};
        uint64_t keys[2] = {(uint64_t)1 << 48 | 1, (uint64_t)1 << 48 | 4};
        struct keel_msg_push p;
        struct keel_ulog_record rec;

        memset(&p, 0, sizeof(p));
        p.worker_id = keel_str_of("w1");
        p.seq = 1;
        p.data = (struct keel_rows){1, 4, 2, keys, g, 0, NULL};
        rec = (struct keel_ulog_record){1, 100, p};
        cr_assert_eq(keel_ulog_append(other, &rec, 1, &err), 0, "%s", err.msg);
    }
    only[1] = 1;
    cr_assert_eq(keel_checkpoint_restore_into(store, &key, 1, other, only, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_read(other, 1, &got, &err), 0, "%s", err.msg);
    cr_assert_eq(got.lsn, 11, "range 1 is the checkpoint's");
    cr_assert_eq(got.tables[0].nrows, 4);
    cr_assert_float_eq(got.tables[0].rows[0], 1 + 1, 1e-6);
    keel_snapshot_release(&got);
    cr_assert_eq(keel_snapshot_read(other, 2, &got, &err), 0, "%s", err.msg);
    cr_assert_eq(got.lsn, 5, "a range not asked for is left as it was");
    keel_snapshot_release(&got);
    {
        struct keel_restore_stats st;

        memset(&got, 0, sizeof(got));
        unsigned applied = 0;

        cr_assert_eq(keel_restore(other, 1, &got, count_apply, &applied, &st, &err), 0, "%s",
                     err.msg);
        cr_assert_eq(applied, 0);
        cr_assert_eq(got.lsn, 11, "the stale log of range 1 is gone: nothing replayed");
        cr_assert_eq(st.replayed, 0);
        keel_snapshot_release(&got);
    }
    keel_store_close(other);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir2);
    cr_assert_eq(system(cmd), 0);
}

/* A server's ranges often hold none of a small table's rows: they export as nothing. */
Test(checkpoint, ranges_without_rows_export_as_nothing)
{
    char out[160], path[200];
    struct stat st;

    write_range(0, 3, 1, 0);
    write_range(1, 4, 1, 5);
    write_range(2, 5, 1, 0);
    cr_assert_eq(take(1), 1);
    cr_assert_eq(keel_checkpoint_verify(store, &key, 1, 0, &err), 0, "%s", err.msg);
    snprintf(out, sizeof(out), "%s/export", tmpdir);
    cr_assert_eq(keel_checkpoint_export(store, 1, out, &err), 0, "%s", err.msg);
    snprintf(path, sizeof(path), "%s/table_1.npy", out);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 128 + 5 * 4 * 4, "5 rows of 4 floats after the header");

    /* Only empty ranges: the table exports with no rows. */
    write_range(1, 6, 1, 0);
    cr_assert_eq(take(2), 2);
    snprintf(out, sizeof(out), "%s/export2", tmpdir);
    cr_assert_eq(keel_checkpoint_export(store, 2, out, &err), 0, "%s", err.msg);
    snprintf(path, sizeof(path), "%s/table_1.npy", out);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 128);
}

Test(checkpoint, diff_export_restore_prune)
{
    struct keel_ckpt_diff *d;
    size_t n, pruned;
    char out[160], path[200];
    struct stat st;
    uint64_t *ids;

    write_range(0, 10, 1, 100);
    write_range(1, 11, 1, 100);
    cr_assert_eq(take(1), 1);
    write_range(1, 30, 1.5f, 100); /* every row of range 1 moves by 0.5 */
    cr_assert_eq(take(2), 2);

    cr_assert_eq(keel_checkpoint_diff(store, 1, 2, &d, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(n, 1);
    cr_assert_eq(d[0].table_id, 1);
    cr_assert_eq(d[0].rows_a, 200);
    cr_assert_eq(d[0].rows_b, 200);
    cr_assert_eq(d[0].changed, 100);
    cr_assert_float_eq(d[0].l2, sqrt(100 * 4 * 0.25), 1e-9);
    free(d);

    snprintf(out, sizeof(out), "%s/export", tmpdir);
    cr_assert_eq(keel_checkpoint_export(store, 2, out, &err), 0, "%s", err.msg);
    snprintf(path, sizeof(path), "%s/table_1.npy", out);
    cr_assert_eq(stat(path, &st), 0);
    cr_assert_eq(st.st_size, 128 + 200 * 4 * 4);
    FILE *f = fopen(path, "rb");
    unsigned char hdr[128];
    cr_assert_eq(fread(hdr, 1, 128, f), 128);
    fclose(f);
    cr_assert_eq(memcmp(hdr, "\x93NUMPY\x01\x00", 8), 0);
    cr_assert(strstr((char *)hdr + 10, "'shape': (200, 4)") != NULL);
    cr_assert_eq(hdr[127], '\n');

    /* Roll back to 1: range 1's snapshot is checkpoint 1's again. */
    cr_assert_eq(keel_checkpoint_restore(store, &key, 1, &err), 0, "%s", err.msg);
    struct keel_snapshot snap;
    cr_assert_eq(keel_snapshot_read(store, 1, &snap, &err), 0, "%s", err.msg);
    cr_assert_eq(snap.lsn, 11);
    cr_assert_float_eq(snap.tables[0].rows[0], 1 + 1, 1e-6);
    keel_snapshot_release(&snap);

    cr_assert_eq(keel_checkpoint_prune(store, 1, &pruned, &err), 0, "%s", err.msg);
    cr_assert_eq(pruned, 1);
    cr_assert_eq(keel_checkpoint_list(store, &ids, &n, &err), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(ids[0], 2);
    free(ids);
    /* The oldest kept one still verifies although its predecessor is gone. */
    cr_assert_eq(keel_checkpoint_verify(store, &key, 2, 1, &err), 0, "%s", err.msg);

    struct names names = {0};
    cr_assert_eq(keel_audit_verify(store, collect_names, &names, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(names.n, 6);
    cr_assert_str_eq(names.seen[0], "taken");
    cr_assert_str_eq(names.seen[1], "taken");
    cr_assert_str_eq(names.seen[2], "exported");
    cr_assert_str_eq(names.seen[3], "restored");
    cr_assert_str_eq(names.seen[4], "pruned");
    cr_assert_str_eq(names.seen[5], "verified");
}

/* Export writes new files of its own: a link planted where a temporary file once went is not
 * followed. */
Test(checkpoint, export_never_writes_through_a_planted_link)
{
    char out[160], path[240], victim[200], buf[16] = {0};
    const char *names[] = {"table_1.npy.tmp", "table_1.keys.npy.tmp", "table_1.state.npy.tmp"};
    struct stat st;
    struct dirent *e;
    DIR *d;
    FILE *f;

    write_range(1, 4, 1, 5);
    cr_assert_eq(take(1), 1);
    snprintf(out, sizeof(out), "%s/export-links", tmpdir);
    cr_assert_eq(mkdir(out, 0755), 0);
    snprintf(victim, sizeof(victim), "%s/victim", tmpdir);
    f = fopen(victim, "w");
    cr_assert_not_null(f);
    fputs("untouched", f);
    fclose(f);
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", out, names[i]);
        cr_assert_eq(symlink(victim, path), 0);
    }
    cr_assert_eq(keel_checkpoint_export(store, 1, out, &err), 0, "%s", err.msg);
    f = fopen(victim, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(buf, sizeof(buf), f));
    fclose(f);
    cr_assert_str_eq(buf, "untouched", "export wrote through a planted link");
    snprintf(path, sizeof(path), "%s/table_1.npy", out);
    cr_assert_eq(lstat(path, &st), 0);
    cr_assert(S_ISREG(st.st_mode), "table_1.npy is not a regular file");
    cr_assert_eq(st.st_mode & 0777, 0644);
    /* Nothing left behind but the exports and the planted links. */
    d = opendir(out);
    cr_assert_not_null(d);
    while ((e = readdir(d)) != NULL) {
        size_t n = strlen(e->d_name);
        int npy = n > 4 && strcmp(e->d_name + n - 4, ".npy") == 0;
        int planted = n > 4 && strcmp(e->d_name + n - 4, ".tmp") == 0;

        cr_assert(e->d_name[0] == '.' || npy || planted, "left behind: %s", e->d_name);
    }
    closedir(d);
}

/*
 * A checkpoint of given copies (a server's ranges copied at the checkpoint's
 * clock) holds exactly those, whatever else the store's snapshots hold.
 */
Test(checkpoint, a_checkpoint_of_given_copies_holds_exactly_them)
{
    struct keel_snapshot mem[2] = {{0}};
    struct keel_ckpt_params p = {"mnist", 40, {0}, mem, 2, "s3"};
    struct keel_manifest m;
    uint64_t id = 0;

    for (uint32_t r = 0; r < 4; r++)
        write_range(r, 5, 1.0f, 100);
    /* The copies: ranges 1 and 3 as they were at LSN 3 (older than the store's). */
    for (unsigned i = 0; i < 2; i++) {
        write_range(i * 2 + 1, 3, 2.0f, 100);
        cr_assert_eq(keel_snapshot_read(store, i * 2 + 1, &mem[i], &err), 0, "%s", err.msg);
        write_range(i * 2 + 1, 5, 1.0f, 100);
    }
    cr_assert_eq(keel_checkpoint_take(store, &key, &p, &id, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_checkpoint_manifest(store, id, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(m.nranges, 2);
    cr_assert_eq(m.clock, 40);
    cr_assert_str_eq(m.server, "s3", "the manifest names the server that took it");
    cr_assert_eq(m.ranges[0].range, 1);
    cr_assert_eq(m.ranges[1].range, 3);
    cr_assert_eq(m.ranges[0].lsn, 3, "the copy's LSN, not the store's snapshot's");
    cr_assert_eq(m.ranges[0].shards[0].seq, 30);
    keel_manifest_release(&m);
    cr_assert_eq(keel_checkpoint_verify(store, &key, id, 0, &err), 0, "%s", err.msg);

    /* Out of order: refused, nothing written. */
    p.snaps = (const struct keel_snapshot[]){mem[1], mem[0]};
    cr_assert_eq(keel_checkpoint_take(store, &key, &p, &id, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "out of order") != NULL, "%s", err.msg);
    for (unsigned i = 0; i < 2; i++)
        keel_snapshot_release(&mem[i]);
}

/*
 * A shard's position in a checkpoint range is read over every table's
 * position id: a range of table 2 alone records shard 3 as id 3 + (1 << 16).
 */
Test(checkpoint, a_shards_position_is_read_over_every_table)
{
    struct keel_shard_pos sp[4] = {{keel_position_id(3, 2), 50, 1, "w1"},
                                   {keel_position_id(1, 1), 40, 1, "w2"},
                                   {keel_position_id(3, 1), 48, 1, "w1"},
                                   {keel_position_id(2, 3), 7, 1, "w3"}};
    struct keel_ckpt_range only2 = {0};
    struct keel_ckpt_range mixed = {0};

    cr_assert_eq(keel_position_shard(keel_position_id(3, 2)), 3);
    only2.nshards = 1;
    only2.shards = sp;
    cr_assert_eq(keel_ckpt_range_position(&only2, 3), 50, "table 2's position of shard 3");
    cr_assert_eq(keel_ckpt_range_position(&only2, 1), 0, "nothing of shard 1 here");
    mixed.nshards = 4;
    mixed.shards = sp;
    cr_assert_eq(keel_ckpt_range_position(&mixed, 3), 48, "the lowest over tables 1 and 2");
    cr_assert_eq(keel_ckpt_range_position(&mixed, 1), 40);
    cr_assert_eq(keel_ckpt_range_position(&mixed, 2), 7);
    cr_assert_eq(keel_ckpt_range_position(&mixed, 0), 0);
}
