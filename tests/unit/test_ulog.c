/*
 * test_ulog.c - update-log records: codec round trip, the decoder refusing
 * damaged bytes, append / read from an LSN / truncate in a real store.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <xxhash.h>

#include "alloc.h"
#include "keel/store.h"
#include "keel/ulog.h"
#include "store_int.h"
#include "ulog_int.h"

static char tmpdir[64];
static struct keel_error err;
static keel_store *store;

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/keel-test-ulog-XXXXXX");
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

TestSuite(ulog, .init = setup, .fini = teardown);

static uint64_t keys3[3] = {(uint64_t)2 << 48 | 1, (uint64_t)2 << 48 | 5, (uint64_t)2 << 48 | 9};
static float rows3[6] = {0.5f, -1, 2, 3, 4.25f, -8};

static struct keel_ulog_record make_rec(uint32_t range, uint64_t lsn, uint32_t shard, uint64_t seq)
{
    struct keel_ulog_record r;

    memset(&r, 0, sizeof(r));
    r.range = range;
    r.lsn = lsn;
    r.push.worker_id.ptr = "worker-7";
    r.push.worker_id.len = 8;
    r.push.shard = shard;
    r.push.incarnation = 42;
    r.push.seq = seq;
    r.push.clock = 17;
    r.push.data.table_id = 2;
    r.push.data.row_width = 2;
    r.push.data.nkeys = 3;
    r.push.data.keys = keys3;
    r.push.data.rows = rows3;
    return r;
}

/* Recompute the checksum after editing an encoded record. */
static void reseal(struct keel_buf *b)
{
    keel_store_u64le(b->buf + 8, XXH3_64bits(b->buf + 16, b->len - 16));
}

Test(ulog, record_round_trips)
{
    struct keel_buf b = KEEL_BUF_INIT, scratch = KEEL_BUF_INIT;
    struct keel_ulog_record in = make_rec(7, 1234, 3, 99), out;

    cr_assert_eq(keel_ulog_encode(&b, &in, &err), 0, "%s", err.msg);
    cr_assert_eq(b.len, KEEL_ULOG_HEADER_SIZE + 8 + 3 * 8 + 6 * 4);
    /* Decode from an odd address: the decoder must not need alignment. */
    unsigned char *odd = keel_malloc(b.len + 1);
    memcpy(odd + 1, b.buf, b.len);
    cr_assert_eq(keel_ulog_decode(odd + 1, b.len, &out, &scratch, &err), 0, "%s", err.msg);
    cr_assert_eq(out.range, 7);
    cr_assert_eq(out.lsn, 1234);
    cr_assert_eq(out.push.shard, 3);
    cr_assert_eq(out.push.seq, 99);
    cr_assert_eq(out.push.incarnation, 42);
    cr_assert_eq(out.push.clock, 17);
    cr_assert_eq(out.push.worker_id.len, 8);
    cr_assert_eq(memcmp(out.push.worker_id.ptr, "worker-7", 8), 0);
    cr_assert_eq(out.push.data.table_id, 2);
    cr_assert_eq(out.push.data.row_width, 2);
    cr_assert_eq(out.push.data.nkeys, 3);
    cr_assert_eq(memcmp(out.push.data.keys, keys3, sizeof(keys3)), 0);
    cr_assert_eq(memcmp(out.push.data.rows, rows3, sizeof(rows3)), 0);
    free(odd);
    keel_buf_release(&b);
    keel_buf_release(&scratch);
}

Test(ulog, every_truncation_and_every_flipped_byte_is_refused)
{
    struct keel_buf b = KEEL_BUF_INIT, scratch = KEEL_BUF_INIT;
    struct keel_ulog_record in = make_rec(1, 2, 3, 4), out;

    cr_assert_eq(keel_ulog_encode(&b, &in, &err), 0);
    for (size_t n = 0; n < b.len; n++)
        cr_assert_neq(keel_ulog_decode(b.buf, n, &out, &scratch, &err), 0, "length %zu", n);
    for (size_t i = 0; i < b.len; i++) {
        b.buf[i] ^= 0x10;
        cr_assert_neq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), 0, "byte %zu", i);
        b.buf[i] ^= 0x10;
    }
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), 0);
    keel_buf_release(&b);
    keel_buf_release(&scratch);
}

Test(ulog, decoder_names_what_is_wrong_even_with_a_good_checksum)
{
    struct keel_buf b = KEEL_BUF_INIT, scratch = KEEL_BUF_INIT;
    struct keel_ulog_record in = make_rec(1, 2, 3, 4), out;
    size_t keys_at = KEEL_ULOG_HEADER_SIZE + 8;

    cr_assert_eq(keel_ulog_encode(&b, &in, &err), 0);
    /* Keys out of order. */
    keel_store_u64le(b.buf + keys_at, (uint64_t)2 << 48 | 100);
    reseal(&b);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_EUNSORTED);
    cr_assert(strstr(err.msg, "offset 88") != NULL, "%s", err.msg);
    /* A key of another table. */
    keel_store_u64le(b.buf + keys_at, (uint64_t)3 << 48 | 1);
    reseal(&b);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_EINVAL);
    keel_store_u64le(b.buf + keys_at, keys3[0]);
    /* A count that does not fill the record. */
    keel_store_u32le(b.buf + 64, 4);
    reseal(&b);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_ECOUNT);
    keel_store_u32le(b.buf + 64, 3);
    /* Huge counts must not overflow into acceptance. */
    keel_store_u32le(b.buf + 64, UINT32_MAX);
    keel_store_u32le(b.buf + 60, 1u << 20);
    reseal(&b);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_ECOUNT);
    keel_store_u32le(b.buf + 64, 3);
    keel_store_u32le(b.buf + 60, 0);
    reseal(&b);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_EROWWIDTH);
    keel_store_u32le(b.buf + 60, 2);
    /* Worker id: empty, and a non-zero pad byte. */
    keel_store_u16le(b.buf + 68, 0);
    reseal(&b);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_ESTRING);
    keel_store_u16le(b.buf + 68, 7);
    reseal(&b);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_EPADDING);
    keel_store_u16le(b.buf + 68, 8);
    /* Version and magic. */
    keel_store_u16le(b.buf + 4, 2);
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_EVERSION);
    keel_store_u16le(b.buf + 4, 1);
    b.buf[0] = 'X';
    cr_assert_eq(keel_ulog_decode(b.buf, b.len, &out, &scratch, &err), KEEL_EMAGIC);
    keel_buf_release(&b);
    keel_buf_release(&scratch);
}

Test(ulog, encoder_refuses_bad_pushes)
{
    struct keel_buf b = KEEL_BUF_INIT;
    struct keel_ulog_record r = make_rec(1, 1, 1, 1);
    uint64_t bad[3] = {keys3[1], keys3[0], keys3[2]};

    r.push.worker_id.len = 0;
    cr_assert_eq(keel_ulog_encode(&b, &r, &err), KEEL_EINVAL);
    r = make_rec(1, 1, 1, 1);
    r.push.data.keys = bad;
    cr_assert_eq(keel_ulog_encode(&b, &r, &err), KEEL_EINVAL);
    cr_assert_eq(b.len, 0);
    keel_buf_release(&b);
}

struct collect {
    uint64_t lsns[64];
    uint64_t seqs[64];
    size_t n;
    size_t stop_after;
};

static int collect_fn(const struct keel_ulog_record *rec, void *ctx, struct keel_error *e)
{
    struct collect *c = ctx;

    c->lsns[c->n] = rec->lsn;
    c->seqs[c->n] = rec->push.seq;
    c->n++;
    return c->stop_after && c->n == c->stop_after ? 1 : 0;
}

Test(ulog, append_read_from_lsn_and_truncate)
{
    struct keel_ulog_record recs[10];
    struct collect c = {0};
    uint64_t deleted = 0, last;
    keel_txn *txn;

    for (int i = 0; i < 10; i++)
        recs[i] = make_rec(3, (uint64_t)i + 1, 0, (uint64_t)i * 10);
    cr_assert_eq(keel_ulog_append(store, recs, 10, &err), 0, "%s", err.msg);
    /* Neighbouring ranges must not leak into range 3's reads. */
    struct keel_ulog_record other[2] = {make_rec(2, 50, 0, 1), make_rec(4, 1, 0, 1)};
    cr_assert_eq(keel_ulog_append(store, other, 2, &err), 0, "%s", err.msg);

    cr_assert_eq(keel_ulog_read(store, 3, 5, collect_fn, &c, &err), 0, "%s", err.msg);
    cr_assert_eq(c.n, 6);
    for (size_t i = 0; i < c.n; i++) {
        cr_assert_eq(c.lsns[i], 5 + i);
        cr_assert_eq(c.seqs[i], (4 + i) * 10);
    }
    c.n = 0;
    c.stop_after = 2;
    cr_assert_eq(keel_ulog_read(store, 3, 0, collect_fn, &c, &err), 1);
    cr_assert_eq(c.n, 2);

    cr_assert_eq(keel_ulog_truncate(store, 3, 6, &deleted, &err), 0, "%s", err.msg);
    cr_assert_eq(deleted, 6);
    c.n = 0;
    c.stop_after = 0;
    cr_assert_eq(keel_ulog_read(store, 3, 0, collect_fn, &c, &err), 0);
    cr_assert_eq(c.n, 4);
    cr_assert_eq(c.lsns[0], 7);

    cr_assert_eq(keel_store_read_begin(store, &txn, &err), 0);
    cr_assert_eq(keel_ulog_last_lsn(store, txn, 3, &last, &err), 0);
    cr_assert_eq(last, 10);
    cr_assert_eq(keel_ulog_last_lsn(store, txn, 2, &last, &err), 0);
    cr_assert_eq(last, 50);
    cr_assert_eq(keel_ulog_last_lsn(store, txn, 4, &last, &err), 0);
    cr_assert_eq(last, 1);
    cr_assert_eq(keel_ulog_last_lsn(store, txn, 9, &last, &err), 0);
    cr_assert_eq(last, 0);
    keel_store_read_end(store, txn);
}

Test(ulog, duplicate_lsn_refuses_the_whole_batch)
{
    struct keel_ulog_record recs[3] = {make_rec(1, 1, 0, 1), make_rec(1, 2, 0, 2),
                                       make_rec(1, 1, 0, 3)};
    struct collect c = {0};

    cr_assert_eq(keel_ulog_append(store, recs, 3, &err), KEEL_EEXIST);
    cr_assert(strstr(err.msg, "LSN 1") != NULL, "%s", err.msg);
    cr_assert_eq(keel_ulog_read(store, 1, 0, collect_fn, &c, &err), 0);
    cr_assert_eq(c.n, 0, "a failed batch must leave nothing");
}

static int corrupt_fn(keel_txn *txn, void *ctx, struct keel_error *e)
{
    unsigned char key[KEEL_ULOG_KEY_SIZE], copy[4096];
    MDB_val v;
    int rc;

    keel_ulog_key(key, 1, 2);
    rc = keel_store_get(ctx, txn, KEEL_DB_LOG, key, sizeof(key), &v, e);
    if (rc != 0)
        return rc;
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size - 1] ^= 1;
    return keel_store_put(ctx, txn, KEEL_DB_LOG, key, sizeof(key), copy, v.mv_size, e);
}

Test(ulog, a_damaged_record_stops_the_read_naming_range_and_lsn)
{
    struct keel_ulog_record recs[3] = {make_rec(1, 1, 0, 1), make_rec(1, 2, 0, 2),
                                       make_rec(1, 3, 0, 3)};
    struct collect c = {0};

    cr_assert_eq(keel_ulog_append(store, recs, 3, &err), 0);
    cr_assert_eq(keel_store_write(store, corrupt_fn, store, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_ulog_read(store, 1, 0, collect_fn, &c, &err), KEEL_ECHECKSUM);
    cr_assert_eq(c.n, 1);
    cr_assert(strstr(err.msg, "log of range 1, LSN 2") != NULL, "%s", err.msg);
}
