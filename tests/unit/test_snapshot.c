/*
 * test_snapshot.c - range snapshots: round trips across several blocks,
 * replacement, log truncation, restore with duplicates skipped, damage found.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/snapshot.h"
#include "keel/store.h"
#include "keel/ulog.h"
#include "snapshot_int.h"
#include "store_int.h"
#include "ulog_int.h"

static char tmpdir[64];
static struct keel_error err;
static keel_store *store;

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/keel-test-snap-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    keel_error_init(&err);
    cr_assert_eq(keel_store_open(&store, tmpdir, NULL, &err), 0, "%s", err.msg);
}

static void teardown(void)
{
    char cmd[128];

    keel_store_close(store);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(snapshot, .init = setup, .fini = teardown);

/* Two tables: 1 with width 300 and 2 floats of state per row; 5 with width 3. */
struct fixture {
    struct keel_snap_table tables[2];
    struct keel_shard_pos shards[2];
    struct keel_snapshot snap;
};

static void fill_table(struct keel_snap_table *t, uint32_t id, uint32_t width, uint32_t sw,
                       uint64_t nrows, float salt)
{
    t->table_id = id;
    t->width = width;
    t->state_width = sw;
    t->nrows = nrows;
    t->keys = keel_calloc(nrows, 8);
    t->rows = keel_calloc(nrows * width, 4);
    t->state = sw ? keel_calloc(nrows * sw, 4) : NULL;
    for (uint64_t r = 0; r < nrows; r++) {
        t->keys[r] = (uint64_t)id << 48 | (r * 3 + 1);
        for (uint32_t c = 0; c < width; c++)
            t->rows[r * width + c] = salt + (float)r + (float)c / 1000.0f;
        for (uint32_t c = 0; c < sw; c++)
            t->state[r * sw + c] = -(float)r - (float)c;
    }
}

static void make_fixture(struct fixture *f, uint32_t range, uint64_t lsn, uint64_t rows1,
                         float salt)
{
    memset(f, 0, sizeof(*f));
    fill_table(&f->tables[0], 1, 300, 2, rows1, salt);
    fill_table(&f->tables[1], 5, 3, 0, 10, salt);
    f->shards[0].shard = 1;
    f->shards[0].seq = 10;
    f->shards[0].incarnation = 3;
    snprintf(f->shards[0].worker_id, sizeof(f->shards[0].worker_id), "w1");
    f->shards[1].shard = 4;
    f->shards[1].seq = 7;
    f->shards[1].incarnation = 1;
    snprintf(f->shards[1].worker_id, sizeof(f->shards[1].worker_id), "w2");
    f->snap.range = range;
    f->snap.lsn = lsn;
    f->snap.ntables = 2;
    f->snap.tables = f->tables;
    f->snap.nshards = 2;
    f->snap.shards = f->shards;
}

static void free_fixture(struct fixture *f)
{
    for (int i = 0; i < 2; i++) {
        free(f->tables[i].keys);
        free(f->tables[i].rows);
        free(f->tables[i].state);
    }
}

static void assert_same(const struct keel_snapshot *a, const struct keel_snapshot *b)
{
    cr_assert_eq(a->range, b->range);
    cr_assert_eq(a->lsn, b->lsn);
    cr_assert_eq(a->ntables, b->ntables);
    for (size_t i = 0; i < a->ntables; i++) {
        const struct keel_snap_table *x = &a->tables[i], *y = &b->tables[i];
        cr_assert_eq(x->table_id, y->table_id);
        cr_assert_eq(x->width, y->width);
        cr_assert_eq(x->state_width, y->state_width);
        cr_assert_eq(x->nrows, y->nrows);
        if (x->nrows == 0)
            continue; /* an empty table may have no arrays at all */
        cr_assert_eq(memcmp(x->keys, y->keys, x->nrows * 8), 0);
        cr_assert_eq(memcmp(x->rows, y->rows, x->nrows * x->width * 4), 0);
        if (x->state_width)
            cr_assert_eq(memcmp(x->state, y->state, x->nrows * x->state_width * 4), 0);
    }
    cr_assert_eq(a->nshards, b->nshards);
    for (size_t i = 0; i < a->nshards; i++) {
        cr_assert_eq(a->shards[i].shard, b->shards[i].shard);
        cr_assert_eq(a->shards[i].seq, b->shards[i].seq);
        cr_assert_eq(a->shards[i].incarnation, b->shards[i].incarnation);
        cr_assert_str_eq(a->shards[i].worker_id, b->shards[i].worker_id);
    }
}

Test(snapshot, round_trip_across_blocks)
{
    struct fixture f;
    struct keel_snapshot got;
    struct keel_snapshot_info info;
    keel_txn *txn;

    /* 2000 rows of 1208 bytes: a few 1 MiB blocks. */
    make_fixture(&f, 9, 77, 2000, 0.5f);
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_read(store, 9, &got, &err), 0, "%s", err.msg);
    assert_same(&f.snap, &got);
    cr_assert_neq(got.created_ns, 0);
    keel_snapshot_release(&got);

    cr_assert_eq(keel_store_read_begin(store, &txn, &err), 0);
    cr_assert_eq(keel_snapshot_stat(store, txn, 9, &info, &err), 0, "%s", err.msg);
    cr_assert_eq(info.nrows, 2010);
    cr_assert_eq(info.ntables, 2);
    cr_assert_geq(info.nblocks, 4);
    cr_assert_eq(info.lsn, 77);
    cr_assert_eq(keel_snapshot_stat(store, txn, 8, &info, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "range 8 has no snapshot") != NULL, "%s", err.msg);
    keel_store_read_end(store, txn);
    free_fixture(&f);
}

Test(snapshot, a_smaller_new_snapshot_replaces_the_old_entirely)
{
    struct fixture big, small;
    struct keel_snapshot got;
    uint32_t *ranges;
    size_t n;
    keel_txn *txn;

    make_fixture(&big, 2, 10, 3000, 1);
    make_fixture(&small, 2, 20, 5, 2);
    small.snap.nshards = 1;
    cr_assert_eq(keel_snapshot_write(store, &big.snap, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_write(store, &small.snap, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_read(store, 2, &got, &err), 0, "%s", err.msg);
    assert_same(&small.snap, &got);
    keel_snapshot_release(&got);

    /* No leftover block of the big one: count the range's blocks. */
    cr_assert_eq(keel_store_read_begin(store, &txn, &err), 0);
    MDB_stat st;
    mdb_stat(keel_txn_mdb(txn), keel_store_dbi(store, KEEL_DB_SNAP_ROWS), &st);
    cr_assert_eq(st.ms_entries, 2, "blocks left: %zu", st.ms_entries);
    mdb_stat(keel_txn_mdb(txn), keel_store_dbi(store, KEEL_DB_SHARD_POS), &st);
    cr_assert_eq(st.ms_entries, 1);
    cr_assert_eq(keel_snapshot_ranges(store, txn, &ranges, &n, &err), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(ranges[0], 2);
    free(ranges);
    keel_store_read_end(store, txn);
    free_fixture(&big);
    free_fixture(&small);
}

static uint64_t push_keys[2];
static float push_rows[2 * 3];

static struct keel_ulog_record push(uint32_t range, uint64_t lsn, uint32_t shard, uint64_t seq,
                                    float delta)
{
    struct keel_ulog_record r;

    memset(&r, 0, sizeof(r));
    r.range = range;
    r.lsn = lsn;
    r.push.worker_id.ptr = "w9";
    r.push.worker_id.len = 2;
    r.push.shard = shard;
    r.push.incarnation = 5;
    r.push.seq = seq;
    push_keys[0] = (uint64_t)5 << 48 | 1;
    push_keys[1] = (uint64_t)5 << 48 | 4;
    for (int i = 0; i < 6; i++)
        push_rows[i] = delta;
    r.push.data.table_id = 5;
    r.push.data.row_width = 3;
    r.push.data.nkeys = 2;
    r.push.data.keys = push_keys;
    r.push.data.rows = push_rows;
    return r;
}

/* The test's optimizer: add the pushed values to the rows. */
static int add_rows(struct keel_snapshot *snap, const struct keel_ulog_record *rec, void *ctx,
                    struct keel_error *e)
{
    struct keel_snap_table *t = keel_snapshot_table(snap, rec->push.data.table_id);

    if (t == NULL)
        return keel_err_set(e, KEEL_ENOTFOUND, "no table %u", rec->push.data.table_id);
    for (uint32_t i = 0; i < rec->push.data.nkeys; i++) {
        int64_t r = keel_snap_table_find(t, rec->push.data.keys[i]);
        if (r < 0)
            return keel_err_set(e, KEEL_ENOTFOUND, "no key");
        for (uint32_t c = 0; c < t->width; c++)
            t->rows[(uint64_t)r * t->width + c] += rec->push.data.rows[i * t->width + c];
    }
    return 0;
}

Test(snapshot, restore_replays_the_log_and_skips_duplicates)
{
    struct fixture f;
    struct keel_snapshot got;
    struct keel_restore_stats st;
    struct keel_ulog_record recs[7];

    make_fixture(&f, 3, 5, 4, 0);
    /* Records at or below the snapshot's LSN: truncated by the snapshot write. */
    recs[0] = push(3, 4, 1, 9, 100);
    cr_assert_eq(keel_ulog_append(store, recs, 1, &err), 0, "%s", err.msg);
    recs[0] = push(3, 5, 1, 10, 100);
    cr_assert_eq(keel_ulog_append(store, recs, 1, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);

    /* After it: a re-push shard 1 already has (seq 10), a new one (11), a
     * first push of shard 2 at seq 0, its duplicate, and shard 4 behind. */
    static const struct {
        uint32_t shard;
        uint64_t seq;
        float delta;
    } later[7] = {{1, 10, 1000}, {1, 11, 1}, {2, 0, 2},    {2, 0, 1000},
                  {4, 6, 1000},  {4, 8, 4},  {1, 11, 1000}};
    /* One append per record, as separate group commits would be; push()
     * reuses its arrays, so each record is appended before the next is made. */
    for (int i = 0; i < 7; i++) {
        recs[i] = push(3, 6 + (uint64_t)i, later[i].shard, later[i].seq, later[i].delta);
        cr_assert_eq(keel_ulog_append(store, &recs[i], 1, &err), 0, "%s", err.msg);
    }

    cr_assert_eq(keel_restore(store, 3, &got, add_rows, NULL, &st, &err), 0, "%s", err.msg);
    cr_assert_eq(st.replayed, 3);
    cr_assert_eq(st.duplicates, 4);
    cr_assert_eq(st.lsn, 11);
    cr_assert_eq(got.lsn, 11);
    /* Table 5 rows 1 and 4 (keys 5<<48|1 and |4 are rows 0 and 1) got 1+2+4. */
    struct keel_snap_table *t = keel_snapshot_table(&got, 5);
    cr_assert_not_null(t);
    for (int c = 0; c < 3; c++) {
        cr_assert_float_eq(t->rows[c], f.tables[1].rows[c] + 7, 1e-5);
        cr_assert_float_eq(t->rows[3 + c], f.tables[1].rows[3 + c] + 7, 1e-5);
        cr_assert_float_eq(t->rows[6 + c], f.tables[1].rows[6 + c], 1e-5);
    }
    cr_assert_eq(got.nshards, 3);
    cr_assert_eq(got.shards[0].seq, 11);
    cr_assert_str_eq(got.shards[0].worker_id, "w9");
    cr_assert_eq(got.shards[1].shard, 2);
    cr_assert_eq(got.shards[1].seq, 0);
    cr_assert_eq(got.shards[2].seq, 8);

    /* The restored state written as the next snapshot restores to itself. */
    cr_assert_eq(keel_snapshot_write(store, &got, &err), 0, "%s", err.msg);
    struct keel_snapshot again;
    cr_assert_eq(keel_restore(store, 3, &again, add_rows, NULL, &st, &err), 0, "%s", err.msg);
    cr_assert_eq(st.replayed, 0);
    cr_assert_eq(st.duplicates, 1, "LSN 12 is still in the log and a duplicate");
    assert_same(&got, &again);
    keel_snapshot_release(&again);
    keel_snapshot_release(&got);
    free_fixture(&f);
}

Test(snapshot, restore_of_a_range_without_snapshot_replays_everything)
{
    struct keel_snapshot got;
    struct keel_restore_stats st;
    struct keel_ulog_record r = push(6, 1, 0, 0, 1);

    cr_assert_eq(keel_ulog_append(store, &r, 1, &err), 0);
    cr_assert_eq(keel_restore(store, 6, &got, add_rows, NULL, &st, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "restore of range 6, LSN 1: no table 5") != NULL, "%s", err.msg);
}

Test(snapshot, restore_lsns_are_the_later_of_snapshot_and_log)
{
    struct fixture f;
    struct keel_ulog_record r;
    uint64_t lsns[9];

    cr_assert_eq(keel_restore_lsns(store, lsns, 9, &err), 0, "%s", err.msg);
    for (int i = 0; i < 9; i++)
        cr_assert_eq(lsns[i], 0, "an empty store holds nothing of range %d", i);
    /* Range 3: a snapshot at LSN 5, then log records 6 and 7. */
    make_fixture(&f, 3, 5, 4, 0);
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);
    for (uint64_t lsn = 6; lsn <= 7; lsn++) {
        r = push(3, lsn, 1, 10 + lsn, 1);
        cr_assert_eq(keel_ulog_append(store, &r, 1, &err), 0, "%s", err.msg);
    }
    /* Range 6: log records only; range 8: a snapshot only (range 9 is past n). */
    r = push(6, 4, 0, 0, 1);
    cr_assert_eq(keel_ulog_append(store, &r, 1, &err), 0, "%s", err.msg);
    free_fixture(&f);
    make_fixture(&f, 8, 2, 4, 0);
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);
    r = push(9, 30, 0, 0, 1);
    cr_assert_eq(keel_ulog_append(store, &r, 1, &err), 0, "%s", err.msg);

    cr_assert_eq(keel_restore_lsns(store, lsns, 9, &err), 0, "%s", err.msg);
    cr_assert_eq(lsns[3], 7);
    cr_assert_eq(lsns[6], 4);
    cr_assert_eq(lsns[8], 2);
    cr_assert_eq(lsns[0] + lsns[1] + lsns[2] + lsns[4] + lsns[5] + lsns[7], 0);
    free_fixture(&f);
}

struct put_then_fail {
    keel_store *s;
    const struct keel_snapshot *snap;
};

static int put_then_fail_fn(keel_txn *txn, void *ctx, struct keel_error *e)
{
    struct put_then_fail *p = ctx;
    int rc = keel_snapshot_put(p->s, txn, p->snap, e);

    return rc ? rc : keel_err_set(e, KEEL_ECANCELED, "stopped half way");
}

Test(snapshot, an_aborted_write_leaves_the_previous_snapshot)
{
    struct fixture a, b;
    struct keel_snapshot got;

    make_fixture(&a, 1, 10, 1000, 1);
    make_fixture(&b, 1, 20, 50, 2);
    cr_assert_eq(keel_snapshot_write(store, &a.snap, &err), 0, "%s", err.msg);
    struct put_then_fail p = {store, &b.snap};
    cr_assert_eq(keel_store_write(store, put_then_fail_fn, &p, &err), KEEL_ECANCELED);
    cr_assert_eq(keel_snapshot_read(store, 1, &got, &err), 0, "%s", err.msg);
    assert_same(&a.snap, &got);
    keel_snapshot_release(&got);
    free_fixture(&a);
    free_fixture(&b);
}

Test(snapshot, check_refuses_unsorted_keys_and_tables)
{
    struct fixture f;

    make_fixture(&f, 1, 1, 3, 0);
    f.tables[0].keys[2] = f.tables[0].keys[1];
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "table 1, row 2") != NULL, "%s", err.msg);
    f.tables[0].keys[2] = f.tables[0].keys[1] + 1;
    f.tables[1].table_id = 1;
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), KEEL_EINVAL);
    free_fixture(&f);
}

/* Damage the store through LMDB: flip a byte of block `block`, or delete it. */
struct damage {
    keel_store *s;
    enum keel_db db;
    uint32_t range;
    uint32_t index;
    size_t offset;
    int remove;
};

static int damage_fn(keel_txn *txn, void *ctx, struct keel_error *e)
{
    struct damage *d = ctx;
    unsigned char key[8];
    MDB_val v;
    int rc;

    keel_store_be32(key, d->range);
    keel_store_be32(key + 4, d->index);
    if (d->remove)
        return mdb_del(keel_txn_mdb(txn), keel_store_dbi(d->s, d->db), &(MDB_val){8, key}, NULL) ==
                       0
                   ? 0
                   : keel_err_set(e, KEEL_ENOTFOUND, "nothing to delete");
    rc = keel_store_get(d->s, txn, d->db, key, 8, &v, e);
    if (rc != 0)
        return rc;
    unsigned char *copy = keel_malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[d->offset % v.mv_size] ^= 0x01;
    rc = keel_store_put(d->s, txn, d->db, key, 8, copy, v.mv_size, e);
    free(copy);
    return rc;
}

Test(snapshot, damage_is_found_and_named)
{
    struct fixture f;
    struct keel_snapshot got;
    struct damage d = {store, KEEL_DB_SNAP_ROWS, 4, 1, 5000, 0};

    make_fixture(&f, 4, 1, 2000, 0);
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_store_write(store, damage_fn, &d, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_read(store, 4, &got, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "snapshot of range 4: block 1: block checksum mismatch") != NULL,
              "%s", err.msg);

    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);
    d.remove = 1;
    d.index = 2;
    cr_assert_eq(keel_store_write(store, damage_fn, &d, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_read(store, 4, &got, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "block 2 is missing") != NULL, "%s", err.msg);

    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);
    d.remove = 0;
    d.db = KEEL_DB_SHARD_POS;
    d.index = 4; /* shard 4 */
    d.offset = 20;
    cr_assert_eq(keel_store_write(store, damage_fn, &d, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_read(store, 4, &got, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "shard 4") != NULL, "%s", err.msg);
    free_fixture(&f);
}

/* Whether range `range` still has a snapshot or any log record. */
static int range_has_state(uint32_t range)
{
    struct keel_snapshot got;
    uint64_t lsn = 0;
    int snap = keel_snapshot_read(store, range, &got, &err) == 0;
    keel_txn *txn;

    if (snap)
        keel_snapshot_release(&got);
    cr_assert_eq(keel_store_read_begin(store, &txn, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ulog_last_lsn(store, txn, range, &lsn, &err), 0, "%s", err.msg);
    keel_store_read_end(store, txn);
    return snap || lsn != 0;
}

Test(snapshot, a_new_owner_drops_the_previous_jobs_ranges_and_log)
{
    struct fixture f;
    struct keel_ulog_record recs[2] = {push(3, 8, 0, 1, 1), push(200, 1, 0, 1, 1)};
    char prev[64];
    unsigned dropped = 99;

    /* The first claim of a store keeps what is there (nothing to compare with). */
    make_fixture(&f, 3, 7, 4, 0.5f);
    cr_assert_eq(keel_snapshot_write(store, &f.snap, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ulog_append(store, recs, 2, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_claim(store, "j1 sha256:aa", prev, sizeof(prev), &dropped, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(dropped, 0);
    cr_assert_str_eq(prev, "");
    cr_assert(range_has_state(3) && range_has_state(200));

    /* The same owner again (a restarted server): still nothing dropped. */
    cr_assert_eq(keel_snapshot_claim(store, "j1 sha256:aa", prev, sizeof(prev), &dropped, &err), 0);
    cr_assert_eq(dropped, 0);
    cr_assert(range_has_state(3) && range_has_state(200));

    /* Another job: range 3 (snapshot and log) and range 200 (log only) go. */
    cr_assert_eq(keel_snapshot_claim(store, "j2 sha256:bb", prev, sizeof(prev), &dropped, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(dropped, 2);
    cr_assert_str_eq(prev, "j1 sha256:aa");
    cr_assert_not(range_has_state(3));
    cr_assert_not(range_has_state(200));
    cr_assert_not(range_has_state(4));

    /* The change of owner survives a reopen; a cut-short prev stays terminated. */
    keel_store_close(store);
    cr_assert_eq(keel_store_open(&store, tmpdir, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_claim(store, "j3", prev, 4, &dropped, &err), 0, "%s", err.msg);
    cr_assert_str_eq(prev, "j2 ");
    cr_assert_eq(dropped, 0);
    cr_assert_eq(keel_snapshot_claim(store, "", prev, sizeof(prev), &dropped, &err), KEEL_EINVAL);
    free_fixture(&f);
}

/* ---- the packed form and install (primary-backup replication) ---------- */

/* Pack, unpack, compare every field (created_ns too), and pack again to the same bytes. */
static void assert_round_trip(const struct keel_snapshot *snap, struct keel_buf *packed)
{
    struct keel_snapshot got;
    struct keel_buf again = KEEL_BUF_INIT;

    keel_buf_reset(packed);
    cr_assert_eq(keel_snapshot_pack(snap, packed, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_unpack(packed->buf, packed->len, UINT64_MAX, &got, &err), 0, "%s",
                 err.msg);
    assert_same(snap, &got);
    cr_assert_eq(got.created_ns, snap->created_ns);
    cr_assert_eq(got.owned, 1);
    cr_assert_eq(keel_snapshot_pack(&got, &again, &err), 0, "%s", err.msg);
    cr_assert_eq(again.len, packed->len);
    cr_assert_eq(memcmp(again.buf, packed->buf, again.len), 0);
    keel_snapshot_release(&got);
    keel_buf_release(&again);
}

Test(snapshot, packed_form_round_trips)
{
    struct fixture f;
    struct keel_buf b = KEEL_BUF_INIT;

    /* Two tables (one with optimizer state), several 1 MiB blocks, two shards. */
    make_fixture(&f, 9, 77, 2000, 0.5f);
    f.snap.created_ns = 1700000000123456789u;
    f.shards[1].incarnation = UINT64_MAX;
    f.shards[1].seq = (uint64_t)1 << 40;
    snprintf(f.shards[1].worker_id, sizeof(f.shards[1].worker_id), "%064d", 7);
    assert_round_trip(&f.snap, &b);
    cr_assert_gt(b.len, 2 * KEEL_SNAPSHOT_BLOCK_BYTES);

    /* Without optimizer state, one table, no shards, created_ns 0 kept as 0. */
    f.snap.ntables = 1;
    f.snap.tables = &f.tables[1];
    f.snap.nshards = 0;
    f.snap.created_ns = 0;
    f.snap.lsn = UINT64_MAX;
    assert_round_trip(&f.snap, &b);

    /* A table without rows, and an empty range: no tables, no shards. */
    struct keel_snap_table empty_table = {7, 4, 1, 0, NULL, NULL, f.tables[0].state};
    f.snap.tables = &empty_table;
    assert_round_trip(&f.snap, &b);
    struct keel_snapshot empty = {.range = 12, .lsn = 3};
    assert_round_trip(&empty, &b);
    cr_assert_eq(b.len, 16 + 64);

    /* Pack appends and checks as a write does. */
    keel_buf_reset(&b);
    keel_buf_add(&b, "xyz", 3);
    free_fixture(&f);
    make_fixture(&f, 1, 1, 3, 0);
    cr_assert_eq(keel_snapshot_pack(&f.snap, &b, &err), 0, "%s", err.msg);
    struct keel_snapshot got;
    cr_assert_eq(memcmp(b.buf, "xyz", 3), 0);
    cr_assert_eq(keel_snapshot_unpack(b.buf + 3, b.len - 3, UINT64_MAX, &got, &err), 0, "%s",
                 err.msg);
    assert_same(&f.snap, &got);
    keel_snapshot_release(&got);
    f.tables[0].keys[2] = f.tables[0].keys[1];
    keel_buf_reset(&b);
    cr_assert_eq(keel_snapshot_pack(&f.snap, &b, &err), KEEL_EINVAL);
    cr_assert_eq(b.len, 0);
    free_fixture(&f);
    keel_buf_release(&b);
}

/* A small snapshot with everything: two tables (one with state), two blocks of one, shards. */
struct small {
    uint64_t keys1[3], keys2[2];
    float rows1[6], state1[3], rows2[2];
    struct keel_snap_table tables[2];
    struct keel_shard_pos shards[2];
    struct keel_snapshot snap;
};

static void make_small(struct small *s)
{
    memset(s, 0, sizeof(*s));
    for (int i = 0; i < 3; i++) {
        s->keys1[i] = (uint64_t)1 << 48 | (uint64_t)(2 * i + 1);
        s->rows1[2 * i] = (float)i;
        s->rows1[2 * i + 1] = -(float)i;
        s->state1[i] = 0.25f * (float)i;
    }
    s->keys2[0] = (uint64_t)3 << 48 | 5;
    s->keys2[1] = (uint64_t)3 << 48 | 6;
    s->rows2[0] = 1.5f;
    s->rows2[1] = 2.5f;
    s->tables[0] = (struct keel_snap_table){1, 2, 1, 3, s->keys1, s->rows1, s->state1};
    s->tables[1] = (struct keel_snap_table){3, 1, 0, 2, s->keys2, s->rows2, NULL};
    s->shards[0] = (struct keel_shard_pos){2, 40, 3, "w1"};
    s->shards[1] = (struct keel_shard_pos){6, 9, 1, "worker-2"};
    s->snap = (struct keel_snapshot){.range = 4,
                                     .lsn = 50,
                                     .created_ns = 123,
                                     .ntables = 2,
                                     .tables = s->tables,
                                     .nshards = 2,
                                     .shards = s->shards};
}

static void assert_refused(const unsigned char *data, size_t len, const char *what, size_t at)
{
    struct keel_snapshot got;
    int rc;

    memset(&got, 0xAB, sizeof(got));
    keel_error_init(&err);
    rc = keel_snapshot_unpack(data, len, UINT64_MAX, &got, &err);
    cr_assert(rc == KEEL_ECORRUPT || rc == KEEL_ECHECKSUM, "%s at %zu: %s (%s)", what, at,
              keel_err_name(rc), err.msg);
    cr_assert_neq(err.msg[0], '\0');
    cr_assert_eq(got.tables, NULL);
    cr_assert_eq(got.shards, NULL);
    cr_assert_eq(got.ntables, 0);
    cr_assert_eq(got.owned, 0);
}

Test(snapshot, every_truncation_flip_and_extra_byte_is_refused)
{
    struct small s;
    struct keel_buf b = KEEL_BUF_INIT;
    unsigned char *copy;

    make_small(&s);
    cr_assert_eq(keel_snapshot_pack(&s.snap, &b, &err), 0, "%s", err.msg);
    copy = keel_malloc(b.len + 8);
    for (size_t n = 0; n < b.len; n++) {
        memcpy(copy, b.buf, n);
        assert_refused(copy, n, "truncated", n);
    }
    for (size_t i = 0; i < b.len; i++)
        for (int bit = 0; bit < 8; bit++) {
            memcpy(copy, b.buf, b.len);
            copy[i] ^= (unsigned char)(1u << bit);
            assert_refused(copy, b.len, "bit flipped", i);
        }
    for (size_t i = 0; i < b.len; i++) {
        memcpy(copy, b.buf, b.len);
        copy[i] = (unsigned char)~copy[i];
        assert_refused(copy, b.len, "byte inverted", i);
    }
    memcpy(copy, b.buf, b.len);
    copy[b.len] = 0;
    assert_refused(copy, b.len + 1, "trailing byte", b.len);
    cr_assert(strstr(err.msg, "1 bytes after the last shard entry") != NULL, "%s", err.msg);

    /* The intact bytes, at an odd address, decode. */
    struct keel_snapshot got;
    memcpy(copy + 1, b.buf, b.len);
    cr_assert_eq(keel_snapshot_unpack(copy + 1, b.len, UINT64_MAX, &got, &err), 0, "%s", err.msg);
    assert_same(&s.snap, &got);
    keel_snapshot_release(&got);
    free(copy);
    keel_buf_release(&b);
}

Test(snapshot, unpack_names_the_damage)
{
    struct small s;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_snapshot got;
    size_t block0 = 16 + 64 + 2 * 24;

    make_small(&s);
    cr_assert_eq(keel_snapshot_pack(&s.snap, &b, &err), 0, "%s", err.msg);
    /* A row of the first block. */
    b.buf[block0 + 4 + 24 + 3 * 8] ^= 0x10;
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, UINT64_MAX, &got, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "packed snapshot of range 4: block 0: block checksum mismatch") !=
                  NULL,
              "%s", err.msg);
    b.buf[block0 + 4 + 24 + 3 * 8] ^= 0x10;
    /* The first block's length. */
    b.buf[block0] = 0xFF;
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, UINT64_MAX, &got, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "block 0 at byte 128: 255 bytes") != NULL, "%s", err.msg);
    /* The magic. */
    b.buf[0] = 'X';
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, UINT64_MAX, &got, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "bad magic") != NULL, "%s", err.msg);
    keel_buf_release(&b);
}

Test(snapshot, unpack_refuses_what_breaks_the_rules_even_when_resealed)
{
    struct small s;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_snapshot got;

    /* Keys out of order, shards out of order: pack refuses them, and so does unpack
     * of bytes made with every checksum right (the store's encoders, bypassing the check). */
    make_small(&s);
    s.keys1[2] = s.keys1[1];
    cr_assert_eq(keel_snapshot_pack(&s.snap, &b, &err), KEEL_EINVAL);

    /* Build the packed form by hand with the rule broken. */
    make_small(&s);
    s.keys2[1] = (uint64_t)2 << 48 | 9; /* of table 2, in table 3 */
    struct keel__snap_dir dir[2] = {{1, 2, 1, 1, 3}, {3, 1, 0, 1, 2}};
    struct keel__snap_head h = {4, 2, 2, 0, 50, 123, 5, 0, dir};
    XXH3_state_t *d = XXH3_createState();
    struct keel_buf head = KEEL_BUF_INIT;
    unsigned char sum[8], len[4];
    XXH3_64bits_reset(d);
    keel_buf_add_zero(&b, 16);
    keel_store_u32le(b.buf, 0x4B50534B);
    keel_store_u16le(b.buf + 4, 1);
    keel_store_u32le(b.buf + 8, 64 + 2 * 24);
    size_t headat = b.len;
    keel_buf_add_zero(&b, 64 + 2 * 24);
    for (int i = 0; i < 2; i++) {
        size_t size = keel__block_size((uint32_t)s.tables[i].nrows, s.tables[i].width,
                                       s.tables[i].state_width);
        keel_store_u32le(len, (uint32_t)size);
        keel_buf_add(&b, len, 4);
        keel_store_u64le(sum, keel__block_fill(keel_buf_add_zero(&b, size), &s.tables[i], 0,
                                               (uint32_t)s.tables[i].nrows));
        XXH3_64bits_update(d, sum, 8);
    }
    h.digest = XXH3_64bits_digest(d);
    XXH3_freeState(d);
    keel__snap_head_encode(&head, &h);
    memcpy(b.buf + headat, head.buf, head.len);
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, UINT64_MAX, &got, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "block 1: key 0x0002000000000009 out of order or of another table") !=
                  NULL,
              "%s", err.msg);
    cr_assert_eq(got.tables, NULL);

    /* With the key right, the same construction decodes: the test builds real packed bytes. */
    make_small(&s);
    s.snap.nshards = 0;
    struct keel_buf good = KEEL_BUF_INIT;
    cr_assert_eq(keel_snapshot_pack(&s.snap, &good, &err), 0, "%s", err.msg);
    s.keys2[1] = (uint64_t)2 << 48 | 9;
    cr_assert_eq(good.len, b.len);
    keel_buf_release(&good);
    keel_buf_release(&head);
    keel_buf_release(&b);
}

Test(snapshot, unpack_refuses_more_rows_than_the_limit_before_allocating)
{
    struct fixture f;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_snapshot got;
    /* Table 1: 2000 rows of 8 + 4 * 302 bytes; table 5: 10 rows of 8 + 12. */
    uint64_t bytes = 2000 * (8 + 4 * 302) + 10 * (8 + 12);

    make_fixture(&f, 6, 8, 2000, 1);
    cr_assert_eq(keel_snapshot_pack(&f.snap, &b, &err), 0, "%s", err.msg);
    memset(&got, 0xAB, sizeof(got));
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, bytes - 1, &got, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "packed snapshot of range 6: 2432200 bytes of rows are more than "
                              "the limit of 2432199") != NULL,
              "%s", err.msg);
    cr_assert_eq(got.tables, NULL);
    cr_assert_eq(got.owned, 0);
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, bytes, &got, &err), 0, "%s", err.msg);
    assert_same(&f.snap, &got);
    keel_snapshot_release(&got);

    /* A header claiming more rows than the bytes present is damage, whatever the limit. */
    struct small s;
    make_small(&s);
    keel_buf_reset(&b);
    cr_assert_eq(keel_snapshot_pack(&s.snap, &b, &err), 0, "%s", err.msg);
    keel_store_u64le(b.buf + 16 + 64 + 16, (uint64_t)1 << 40); /* table 1's rows */
    keel_store_u64le(b.buf + 16 + 48, ((uint64_t)1 << 40) + 2);
    keel_store_u64le(b.buf + 16 + 8, XXH3_64bits(b.buf + 32, 64 + 48 - 16));
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, UINT64_MAX, &got, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "in 1 blocks, not as they are packed") != NULL, "%s", err.msg);
    free_fixture(&f);
    keel_buf_release(&b);
}

static int count_record(const struct keel_ulog_record *rec, void *ctx, struct keel_error *e)
{
    (void)rec;
    (void)e;
    (*(int *)ctx)++;
    return 0;
}

Test(snapshot, install_replaces_the_snapshot_and_every_log_record)
{
    struct fixture old;
    struct small s;
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_snapshot got, sent;
    struct keel_restore_stats st;
    struct keel_ulog_record r;
    int n = 0;

    /* The backup's state: a big snapshot at LSN 10 and log records 11..14. */
    make_fixture(&old, 4, 10, 3000, 1);
    cr_assert_eq(keel_snapshot_write(store, &old.snap, &err), 0, "%s", err.msg);
    for (uint64_t lsn = 11; lsn <= 14; lsn++) {
        r = push(4, lsn, 1, lsn, 1);
        cr_assert_eq(keel_ulog_append(store, &r, 1, &err), 0, "%s", err.msg);
    }
    /* Another range's log is not touched. */
    r = push(5, 3, 1, 3, 1);
    cr_assert_eq(keel_ulog_append(store, &r, 1, &err), 0, "%s", err.msg);

    /* The primary's state at LSN 12: below the tail (13, 14 diverge) and above the snapshot. */
    make_small(&s);
    s.snap.lsn = 12;
    cr_assert_eq(keel_snapshot_pack(&s.snap, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_unpack(b.buf, b.len, UINT64_MAX, &sent, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_snapshot_install(store, &sent, &err), 0, "%s", err.msg);
    keel_snapshot_release(&sent);

    cr_assert_eq(keel_ulog_read(store, 4, 0, count_record, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(n, 0, "%d log records left", n);
    cr_assert_eq(keel_ulog_read(store, 5, 0, count_record, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(n, 1);
    cr_assert_eq(keel_restore(store, 4, &got, add_rows, NULL, &st, &err), 0, "%s", err.msg);
    cr_assert_eq(st.replayed, 0);
    cr_assert_eq(st.duplicates, 0);
    cr_assert_eq(got.lsn, 12);
    cr_assert_eq(got.created_ns, 123);
    assert_same(&s.snap, &got);
    keel_snapshot_release(&got);

    /* No block of the old snapshot is left; the range's log goes on after the installed LSN. */
    keel_txn *txn;
    MDB_stat ms;
    uint64_t last = 99;
    cr_assert_eq(keel_store_read_begin(store, &txn, &err), 0);
    mdb_stat(keel_txn_mdb(txn), keel_store_dbi(store, KEEL_DB_SNAP_ROWS), &ms);
    cr_assert_eq(ms.ms_entries, 2, "blocks: %zu", ms.ms_entries);
    mdb_stat(keel_txn_mdb(txn), keel_store_dbi(store, KEEL_DB_SHARD_POS), &ms);
    cr_assert_eq(ms.ms_entries, 2);
    cr_assert_eq(keel_ulog_last_lsn(store, txn, 4, &last, &err), 0);
    cr_assert_eq(last, 0);
    keel_store_read_end(store, txn);
    r = push(4, 13, 1, 13, 1);
    cr_assert_eq(keel_ulog_append(store, &r, 1, &err), 0, "%s", err.msg);

    /* Installing an empty range at a lower LSN also drops records above it, and survives a reopen.
     */
    struct keel_snapshot empty = {.range = 4, .lsn = 2};
    cr_assert_eq(keel_snapshot_install(store, &empty, &err), 0, "%s", err.msg);
    keel_store_close(store);
    cr_assert_eq(keel_store_open(&store, tmpdir, NULL, &err), 0, "%s", err.msg);
    n = 0;
    cr_assert_eq(keel_ulog_read(store, 4, 0, count_record, &n, &err), 0, "%s", err.msg);
    cr_assert_eq(n, 0);
    cr_assert_eq(keel_restore(store, 4, &got, add_rows, NULL, &st, &err), 0, "%s", err.msg);
    cr_assert_eq(got.lsn, 2);
    cr_assert_eq(got.ntables, 0);
    cr_assert_eq(got.nshards, 0);
    cr_assert_neq(got.created_ns, 0);
    keel_snapshot_release(&got);

    /* A snapshot that breaks the rules changes nothing. */
    make_small(&s);
    s.shards[1].shard = 1;
    cr_assert_eq(keel_snapshot_install(store, &s.snap, &err), KEEL_EINVAL);
    cr_assert(strstr(err.msg, "install of range 4") != NULL, "%s", err.msg);
    cr_assert_eq(keel_snapshot_read(store, 4, &got, &err), 0, "%s", err.msg);
    cr_assert_eq(got.lsn, 2);
    keel_snapshot_release(&got);
    free_fixture(&old);
    keel_buf_release(&b);
}

static int answer(void *ctx)
{
    return *(int *)ctx;
}

Test(snapshot, write_many_writes_all_in_one_transaction_or_none)
{
    struct fixture f[3];
    struct keel_snapshot snaps[3], got;
    int yes = 1, no = 0;

    for (int i = 0; i < 3; i++) {
        make_fixture(&f[i], (uint32_t)(10 + i), (uint64_t)(4 + i), 3, (float)i);
        snaps[i] = f[i].snap;
    }
    /* Not wanted any more: nothing is written. */
    cr_assert_eq(keel_snapshot_write_many(store, snaps, 3, answer, &no, &err), KEEL_ECANCELED);
    cr_assert_eq(keel_snapshot_read(store, 10, &got, &err), KEEL_ENOTFOUND);
    /* A bad one among them (keys not increasing): nothing is written either. */
    {
        struct fixture bad;

        make_fixture(&bad, 12, 6, 3, 2);
        bad.tables[0].keys[1] = bad.tables[0].keys[0];
        snaps[2] = bad.snap;
        cr_assert_neq(keel_snapshot_write_many(store, snaps, 3, NULL, NULL, &err), 0);
        cr_assert_eq(keel_snapshot_read(store, 10, &got, &err), KEEL_ENOTFOUND);
        free_fixture(&bad);
        snaps[2] = f[2].snap;
    }
    /* Wanted: every one is there, as written. */
    cr_assert_eq(keel_snapshot_write_many(store, snaps, 3, answer, &yes, &err), 0, "%s", err.msg);
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(keel_snapshot_read(store, (uint32_t)(10 + i), &got, &err), 0, "%s", err.msg);
        assert_same(&snaps[i], &got);
        keel_snapshot_release(&got);
        free_fixture(&f[i]);
    }
}
