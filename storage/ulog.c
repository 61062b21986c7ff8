/*
 * ulog.c - update-log records: codec, append, scan, truncate.
 */
#include <inttypes.h>
#include <string.h>

#include <xxhash.h>

#include "alloc.h"
#include "keel/ulog.h"
#include "store_int.h"
#include "ulog_int.h"

#define TABLE_SHIFT 48
#define TABLE_MAX   0xFFFFu

static size_t pad8(size_t n)
{
    return (n + 7) & ~(size_t)7;
}

void keel_ulog_key(unsigned char *key, uint32_t range, uint64_t lsn)
{
    keel_store_be32(key, range);
    keel_store_be64(key + 4, lsn);
}

int keel_ulog_encode(struct keel_buf *out, const struct keel_ulog_record *rec,
                     struct keel_error *err)
{
    const struct keel_msg_push *p = &rec->push;
    const struct keel_rows *d = &p->data;
    size_t start = out->len, wpad, body;
    unsigned char *h;

    if (p->worker_id.len == 0 || p->worker_id.len > KEEL_ID_MAX ||
        memchr(p->worker_id.ptr, '\0', p->worker_id.len) != NULL)
        return keel_err_set(err, KEEL_EINVAL, "log record: worker id must be 1..%d bytes",
                            KEEL_ID_MAX);
    if (d->row_width == 0 || d->row_width > KEEL_PROTO_MAX_ROW_WIDTH)
        return keel_err_set(err, KEEL_EINVAL, "log record: row width %" PRIu32 " out of range",
                            d->row_width);
    if (d->table_id > TABLE_MAX)
        return keel_err_set(err, KEEL_EINVAL, "log record: table id %" PRIu32 " out of range",
                            d->table_id);
    for (uint32_t i = 0; i < d->nkeys; i++) {
        if ((d->keys[i] >> TABLE_SHIFT) != d->table_id || (i > 0 && d->keys[i] <= d->keys[i - 1]))
            return keel_err_set(err, KEEL_EINVAL,
                                "log record: key %" PRIu32 " (0x%016" PRIx64
                                ") not increasing or not in table %" PRIu32,
                                i, d->keys[i], d->table_id);
    }
    wpad = pad8(p->worker_id.len);
    body = (size_t)d->nkeys * 8 + (size_t)d->nkeys * d->row_width * 4;
    h = keel_buf_add_zero(out, KEEL_ULOG_HEADER_SIZE + wpad + body);
    keel_store_u32le(h + 0, KEEL_ULOG_MAGIC);
    keel_store_u16le(h + 4, KEEL_ULOG_VERSION);
    keel_store_u32le(h + 16, rec->range);
    keel_store_u32le(h + 20, p->shard);
    keel_store_u64le(h + 24, rec->lsn);
    keel_store_u64le(h + 32, p->seq);
    keel_store_u64le(h + 40, p->incarnation);
    keel_store_u64le(h + 48, p->clock);
    keel_store_u32le(h + 56, d->table_id);
    keel_store_u32le(h + 60, d->row_width);
    keel_store_u32le(h + 64, d->nkeys);
    keel_store_u16le(h + 68, (uint16_t)p->worker_id.len);
    memcpy(h + KEEL_ULOG_HEADER_SIZE, p->worker_id.ptr, p->worker_id.len);
    if (d->nkeys > 0) {
        memcpy(h + KEEL_ULOG_HEADER_SIZE + wpad, d->keys, (size_t)d->nkeys * 8);
        memcpy(h + KEEL_ULOG_HEADER_SIZE + wpad + (size_t)d->nkeys * 8, d->rows,
               (size_t)d->nkeys * d->row_width * 4);
    }
    keel_store_u64le(h + 8, XXH3_64bits(h + 16, out->len - start - 16));
    return 0;
}

int keel_ulog_decode(const void *data, size_t len, struct keel_ulog_record *rec,
                     struct keel_buf *scratch, struct keel_error *err)
{
    const unsigned char *p = data;
    uint32_t width, nkeys, table;
    size_t wlen, wpad, need, kbytes, rbytes;
    unsigned char *dst;
    uint64_t *keys;

    memset(rec, 0, sizeof(*rec));
    if (len < KEEL_ULOG_HEADER_SIZE)
        return keel_err_set(err, KEEL_ETRUNCATED, "%zu bytes, shorter than the %d-byte header", len,
                            KEEL_ULOG_HEADER_SIZE);
    if (keel_load_u32le(p) != KEEL_ULOG_MAGIC)
        return keel_err_set(err, KEEL_EMAGIC, "offset 0: bad magic 0x%08" PRIx32,
                            keel_load_u32le(p));
    if (keel_load_u16le(p + 4) != KEEL_ULOG_VERSION)
        return keel_err_set(err, KEEL_EVERSION, "offset 4: unknown record version %u",
                            (unsigned)keel_load_u16le(p + 4));
    if (keel_load_u16le(p + 6) != 0)
        return keel_err_set(err, KEEL_ERESERVED, "offset 6: flags 0x%04x not zero",
                            (unsigned)keel_load_u16le(p + 6));
    if (XXH3_64bits(p + 16, len - 16) != keel_load_u64le(p + 8))
        return keel_err_set(err, KEEL_ECHECKSUM, "offset 8: checksum mismatch");
    if (keel_load_u16le(p + 70) != 0)
        return keel_err_set(err, KEEL_ERESERVED, "offset 70: reserved bytes not zero");
    rec->range = keel_load_u32le(p + 16);
    rec->push.shard = keel_load_u32le(p + 20);
    rec->lsn = keel_load_u64le(p + 24);
    rec->push.seq = keel_load_u64le(p + 32);
    rec->push.incarnation = keel_load_u64le(p + 40);
    rec->push.clock = keel_load_u64le(p + 48);
    table = keel_load_u32le(p + 56);
    width = keel_load_u32le(p + 60);
    nkeys = keel_load_u32le(p + 64);
    wlen = keel_load_u16le(p + 68);
    if (table > TABLE_MAX)
        return keel_err_set(err, KEEL_EINVAL, "offset 56: table id %" PRIu32 " out of range",
                            table);
    if (width == 0 || width > KEEL_PROTO_MAX_ROW_WIDTH)
        return keel_err_set(err, KEEL_EROWWIDTH, "offset 60: row width %" PRIu32, width);
    if (wlen == 0 || wlen > KEEL_ID_MAX)
        return keel_err_set(err, KEEL_ESTRING, "offset 68: worker id length %zu not in 1..%d", wlen,
                            KEEL_ID_MAX);
    wpad = pad8(wlen);
    if (len - KEEL_ULOG_HEADER_SIZE < wpad)
        return keel_err_set(err, KEEL_ECOUNT, "offset %d: worker id past the end",
                            KEEL_ULOG_HEADER_SIZE);
    if (memchr(p + KEEL_ULOG_HEADER_SIZE, '\0', wlen) != NULL)
        return keel_err_set(err, KEEL_ESTRING, "offset %d: worker id holds a NUL byte",
                            KEEL_ULOG_HEADER_SIZE);
    for (size_t i = wlen; i < wpad; i++)
        if (p[KEEL_ULOG_HEADER_SIZE + i] != 0)
            return keel_err_set(err, KEEL_EPADDING, "offset %zu: padding not zero",
                                KEEL_ULOG_HEADER_SIZE + i);
    /* nkeys < 2^32 and width <= 2^20: the products fit in 64 bits. */
    kbytes = (size_t)nkeys * 8;
    rbytes = (size_t)nkeys * width * 4;
    need = kbytes + rbytes;
    if (need != len - KEEL_ULOG_HEADER_SIZE - wpad)
        return keel_err_set(err, KEEL_ECOUNT,
                            "offset 64: %" PRIu32 " keys of width %" PRIu32
                            " need %zu bytes, the record has %zu",
                            nkeys, width, need, len - KEEL_ULOG_HEADER_SIZE - wpad);
    rec->push.worker_id.ptr = (const char *)p + KEEL_ULOG_HEADER_SIZE;
    rec->push.worker_id.len = (uint32_t)wlen;

    /* Copy keys and rows into aligned memory. */
    keel_buf_reset(scratch);
    dst = keel_buf_add(scratch, p + KEEL_ULOG_HEADER_SIZE + wpad, need);
    keys = (uint64_t *)(void *)dst;
    for (uint32_t i = 0; i < nkeys; i++) {
        if ((keys[i] >> TABLE_SHIFT) != table)
            return keel_err_set(err, KEEL_EINVAL,
                                "offset %zu: key 0x%016" PRIx64 " not in table %" PRIu32,
                                KEEL_ULOG_HEADER_SIZE + wpad + (size_t)i * 8, keys[i], table);
        if (i > 0 && keys[i] <= keys[i - 1])
            return keel_err_set(err, KEEL_EUNSORTED, "offset %zu: keys not strictly increasing",
                                KEEL_ULOG_HEADER_SIZE + wpad + (size_t)i * 8);
    }
    rec->push.data.table_id = table;
    rec->push.data.row_width = width;
    rec->push.data.nkeys = nkeys;
    rec->push.data.keys = keys;
    rec->push.data.rows = (const float *)(const void *)(dst + kbytes);
    return 0;
}

int keel_ulog_put(keel_store *s, keel_txn *txn, const struct keel_ulog_record *recs, size_t n,
                  struct keel_buf *scratch, struct keel_error *err)
{
    MDB_dbi dbi = keel_store_dbi(s, KEEL_DB_LOG);
    unsigned char key[KEEL_ULOG_KEY_SIZE];
    int rc;

    for (size_t i = 0; i < n; i++) {
        MDB_val k = {sizeof(key), key}, v;

        keel_buf_reset(scratch);
        rc = keel_ulog_encode(scratch, &recs[i], err);
        if (rc != 0)
            return rc;
        keel_ulog_key(key, recs[i].range, recs[i].lsn);
        v.mv_size = scratch->len;
        v.mv_data = scratch->buf;
        rc = mdb_put(keel_txn_mdb(txn), dbi, &k, &v, MDB_NOOVERWRITE);
        if (rc == MDB_KEYEXIST)
            return keel_err_set(err, KEEL_EEXIST,
                                "log of range %" PRIu32 " already has LSN %" PRIu64, recs[i].range,
                                recs[i].lsn);
        if (rc != 0)
            return keel_store_mdb_err(err, rc, "store '%s': cannot append to the log",
                                      keel_store_dir(s));
    }
    return 0;
}

struct append_ctx {
    keel_store *s;
    const struct keel_ulog_record *recs;
    size_t n;
    struct keel_buf scratch;
};

static int append_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct append_ctx *a = ctx;

    return keel_ulog_put(a->s, txn, a->recs, a->n, &a->scratch, err);
}

int keel_ulog_append(keel_store *s, const struct keel_ulog_record *recs, size_t n,
                     struct keel_error *err)
{
    struct append_ctx a = {s, recs, n, KEEL_BUF_INIT};
    int rc = keel_store_write(s, append_fn, &a, err);

    keel_buf_release(&a.scratch);
    return rc;
}

int keel_ulog_scan(keel_store *s, keel_txn *txn, uint32_t range, uint64_t from_lsn, keel_ulog_fn fn,
                   void *ctx, struct keel_error *err)
{
    unsigned char key[KEEL_ULOG_KEY_SIZE];
    MDB_val k = {sizeof(key), key}, v;
    struct keel_buf scratch = KEEL_BUF_INIT;
    struct keel_ulog_record rec;
    MDB_cursor *cur;
    int rc, op = MDB_SET_RANGE;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_LOG), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "store '%s': cannot read the log", keel_store_dir(s));
    keel_ulog_key(key, range, from_lsn);
    for (;; op = MDB_NEXT) {
        uint64_t lsn;

        rc = mdb_cursor_get(cur, &k, &v, op);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            rc = keel_store_mdb_err(err, rc, "store '%s': cannot read the log", keel_store_dir(s));
            break;
        }
        if (k.mv_size != KEEL_ULOG_KEY_SIZE) {
            rc = keel_err_set(err, KEEL_ECORRUPT, "store '%s': log key of %zu bytes",
                              keel_store_dir(s), k.mv_size);
            break;
        }
        if (keel_store_load_be32(k.mv_data) != range)
            break;
        lsn = keel_store_load_be64((unsigned char *)k.mv_data + 4);
        rc = keel_ulog_decode(v.mv_data, v.mv_size, &rec, &scratch, err);
        if (rc == 0 && (rec.range != range || rec.lsn != lsn))
            rc = keel_err_set(err, KEEL_ECORRUPT, "record says range %" PRIu32 ", LSN %" PRIu64 "",
                              rec.range, rec.lsn);
        if (rc != 0) {
            keel_err_prefix(err, rc, "log of range %" PRIu32 ", LSN %" PRIu64, range, lsn);
            break;
        }
        rc = fn(&rec, ctx, err);
        if (rc != 0)
            break;
    }
    mdb_cursor_close(cur);
    keel_buf_release(&scratch);
    return rc;
}

struct scan_ctx {
    keel_store *s;
    uint32_t range;
    uint64_t from;
    keel_ulog_fn fn;
    void *ctx;
};

static int scan_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct scan_ctx *c = ctx;

    return keel_ulog_scan(c->s, txn, c->range, c->from, c->fn, c->ctx, err);
}

int keel_ulog_read(keel_store *s, uint32_t range, uint64_t from_lsn, keel_ulog_fn fn, void *ctx,
                   struct keel_error *err)
{
    struct scan_ctx c = {s, range, from_lsn, fn, ctx};

    return keel_store_read(s, scan_fn, &c, err);
}

int keel_ulog_truncate_txn(keel_store *s, keel_txn *txn, uint32_t range, uint64_t upto_lsn,
                           uint64_t *deleted, struct keel_error *err)
{
    unsigned char key[KEEL_ULOG_KEY_SIZE];
    MDB_val k = {sizeof(key), key}, v;
    MDB_cursor *cur;
    uint64_t n = 0;
    int rc;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_LOG), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "store '%s': cannot truncate the log",
                                  keel_store_dir(s));
    keel_ulog_key(key, range, 0);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0) {
        if (k.mv_size != KEEL_ULOG_KEY_SIZE || keel_store_load_be32(k.mv_data) != range ||
            keel_store_load_be64((unsigned char *)k.mv_data + 4) > upto_lsn)
            break;
        rc = mdb_cursor_del(cur, 0);
        if (rc != 0)
            break;
        n++;
        /* After a delete, MDB_NEXT yields the record that followed it. */
        rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "store '%s': cannot truncate the log",
                                  keel_store_dir(s));
    if (deleted != NULL)
        *deleted = n;
    return 0;
}

struct trunc_ctx {
    keel_store *s;
    uint32_t range;
    uint64_t upto;
    uint64_t *deleted;
};

static int trunc_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct trunc_ctx *t = ctx;

    return keel_ulog_truncate_txn(t->s, txn, t->range, t->upto, t->deleted, err);
}

int keel_ulog_truncate(keel_store *s, uint32_t range, uint64_t upto_lsn, uint64_t *deleted,
                       struct keel_error *err)
{
    struct trunc_ctx t = {s, range, upto_lsn, deleted};

    return keel_store_write(s, trunc_fn, &t, err);
}

int keel_ulog_last_lsn(keel_store *s, keel_txn *txn, uint32_t range, uint64_t *lsn,
                       struct keel_error *err)
{
    unsigned char key[KEEL_ULOG_KEY_SIZE];
    MDB_val k = {sizeof(key), key}, v;
    MDB_cursor *cur;
    int rc;

    *lsn = 0;
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_LOG), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "store '%s': cannot read the log", keel_store_dir(s));
    /* The first key past the range, then one step back. */
    keel_ulog_key(key, range, UINT64_MAX);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && k.mv_size == KEEL_ULOG_KEY_SIZE && keel_store_load_be32(k.mv_data) == range) {
        *lsn = keel_store_load_be64((unsigned char *)k.mv_data + 4);
        mdb_cursor_close(cur);
        return 0;
    }
    rc = mdb_cursor_get(cur, &k, &v, rc == MDB_NOTFOUND ? MDB_LAST : MDB_PREV);
    if (rc == 0 && k.mv_size == KEEL_ULOG_KEY_SIZE && keel_store_load_be32(k.mv_data) == range)
        *lsn = keel_store_load_be64((unsigned char *)k.mv_data + 4);
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "store '%s': cannot read the log", keel_store_dir(s));
    return 0;
}
