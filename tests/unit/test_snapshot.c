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
