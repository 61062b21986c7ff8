/*
 * snapshot.c - range snapshots: encode, write in one transaction, load and
 * verify, restore with log replay.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xxhash.h>

#include "alloc.h"
#include "clock.h"
#include "keel/buf.h"
#include "log.h"
#include "keel/proto.h"
#include "keel/snapshot.h"
#include "keel/ulog.h"
#include "snapshot_int.h"
#include "store_int.h"
#include "ulog_int.h"

/* ---- byte layout ------------------------------------------------------ */

void keel__snap_head_encode(struct keel_buf *out, const struct keel__snap_head *h)
{
    size_t start = out->len;
    unsigned char *p =
        keel_buf_add_zero(out, KEEL__SNAP_HEAD_SIZE + (size_t)h->ntables * KEEL__SNAP_TABLE_SIZE);

    keel_store_u32le(p, KEEL__SNAP_MAGIC);
    keel_store_u16le(p + 4, KEEL__SNAP_VERSION);
    keel_store_u32le(p + 16, h->range);
    keel_store_u32le(p + 20, h->ntables);
    keel_store_u32le(p + 24, h->nblocks);
    keel_store_u32le(p + 28, h->nshards);
    keel_store_u64le(p + 32, h->lsn);
    keel_store_u64le(p + 40, h->created_ns);
    keel_store_u64le(p + 48, h->nrows);
    keel_store_u64le(p + 56, h->digest);
    for (uint32_t i = 0; i < h->ntables; i++) {
        unsigned char *t = p + KEEL__SNAP_HEAD_SIZE + (size_t)i * KEEL__SNAP_TABLE_SIZE;
        keel_store_u32le(t, h->dir[i].table_id);
        keel_store_u32le(t + 4, h->dir[i].width);
        keel_store_u32le(t + 8, h->dir[i].state_width);
        keel_store_u32le(t + 12, h->dir[i].nblocks);
        keel_store_u64le(t + 16, h->dir[i].nrows);
    }
    keel_store_u64le(p + 8, XXH3_64bits(p + 16, out->len - start - 16));
}

int keel__snap_head_decode(const void *data, size_t len, struct keel__snap_head *h,
                           struct keel_error *err)
{
    const unsigned char *p = data;
    uint64_t rows = 0, blocks = 0;

    memset(h, 0, sizeof(*h));
    if (len < KEEL__SNAP_HEAD_SIZE)
        return keel_err_set(err, KEEL_ETRUNCATED, "header of %zu bytes, expected at least %d", len,
                            KEEL__SNAP_HEAD_SIZE);
    if (keel_load_u32le(p) != KEEL__SNAP_MAGIC)
        return keel_err_set(err, KEEL_EMAGIC, "header: bad magic");
    if (keel_load_u16le(p + 4) != KEEL__SNAP_VERSION)
        return keel_err_set(err, KEEL_EVERSION, "header: unknown version %u",
                            (unsigned)keel_load_u16le(p + 4));
    if (keel_load_u16le(p + 6) != 0)
        return keel_err_set(err, KEEL_ERESERVED, "header: flags not zero");
    if (XXH3_64bits(p + 16, len - 16) != keel_load_u64le(p + 8))
        return keel_err_set(err, KEEL_ECHECKSUM, "header: checksum mismatch");
    h->range = keel_load_u32le(p + 16);
    h->ntables = keel_load_u32le(p + 20);
    h->nblocks = keel_load_u32le(p + 24);
    h->nshards = keel_load_u32le(p + 28);
    h->lsn = keel_load_u64le(p + 32);
    h->created_ns = keel_load_u64le(p + 40);
    h->nrows = keel_load_u64le(p + 48);
    h->digest = keel_load_u64le(p + 56);
    if (h->ntables > KEEL__SNAP_MAX_TABLES ||
        (len - KEEL__SNAP_HEAD_SIZE) != (size_t)h->ntables * KEEL__SNAP_TABLE_SIZE)
        return keel_err_set(err, KEEL_ECOUNT, "header: %" PRIu32 " tables do not fill %zu bytes",
                            h->ntables, len);
    if (h->nshards > KEEL__SNAP_MAX_SHARDS)
        return keel_err_set(err, KEEL_ECOUNT, "header: %" PRIu32 " shards is too many", h->nshards);
    KEEL_ALLOC_ARRAY(h->dir, h->ntables);
    for (uint32_t i = 0; i < h->ntables; i++) {
        const unsigned char *t = p + KEEL__SNAP_HEAD_SIZE + (size_t)i * KEEL__SNAP_TABLE_SIZE;
        struct keel__snap_dir *d = &h->dir[i];
        d->table_id = keel_load_u32le(t);
        d->width = keel_load_u32le(t + 4);
        d->state_width = keel_load_u32le(t + 8);
        d->nblocks = keel_load_u32le(t + 12);
        d->nrows = keel_load_u64le(t + 16);
        if (d->table_id > 0xFFFF || (i > 0 && d->table_id <= h->dir[i - 1].table_id) ||
            d->width == 0 || d->width > KEEL_PROTO_MAX_ROW_WIDTH ||
            d->state_width > KEEL_PROTO_MAX_ROW_WIDTH || d->nrows > (uint64_t)1 << 48 ||
            (d->nrows == 0) != (d->nblocks == 0) || d->nblocks > d->nrows) {
            free(h->dir);
            h->dir = NULL;
            return keel_err_set(err, KEEL_ECORRUPT, "header: table entry %" PRIu32 " is invalid",
                                i);
        }
        rows += d->nrows;
        blocks += d->nblocks;
    }
    if (rows != h->nrows || blocks != h->nblocks) {
        free(h->dir);
        h->dir = NULL;
        return keel_err_set(err, KEEL_ECORRUPT,
                            "header: table directory sums to %" PRIu64 " rows in %" PRIu64
                            " blocks, header says %" PRIu64 " in %" PRIu32,
                            rows, blocks, h->nrows, h->nblocks);
    }
    return 0;
}

size_t keel__block_size(uint32_t count, uint32_t width, uint32_t state_width)
{
    return KEEL__BLOCK_HEAD_SIZE + (size_t)count * (8 + 4 * ((size_t)width + state_width));
}

uint32_t keel__block_rows(uint32_t width, uint32_t state_width)
{
    size_t row = 8 + 4 * ((size_t)width + state_width);
    size_t n = (KEEL_SNAPSHOT_BLOCK_BYTES - KEEL__BLOCK_HEAD_SIZE) / row;

    return n == 0 ? 1 : (uint32_t)n;
}

uint64_t keel__block_fill(unsigned char *dst, const struct keel_snap_table *t, uint64_t first,
                          uint32_t count)
{
    size_t size = keel__block_size(count, t->width, t->state_width);
    unsigned char *p = dst + KEEL__BLOCK_HEAD_SIZE;
    uint64_t sum;

    keel_store_u32le(dst + 8, t->table_id);
    keel_store_u32le(dst + 12, t->width);
    keel_store_u32le(dst + 16, t->state_width);
    keel_store_u32le(dst + 20, count);
    memcpy(p, t->keys + first, (size_t)count * 8);
    p += (size_t)count * 8;
    memcpy(p, t->rows + first * t->width, (size_t)count * t->width * 4);
    p += (size_t)count * t->width * 4;
    if (t->state_width > 0)
        memcpy(p, t->state + first * t->state_width, (size_t)count * t->state_width * 4);
    sum = XXH3_64bits(dst + 8, size - 8);
    keel_store_u64le(dst, sum);
    return sum;
}

int keel__block_decode(const void *data, size_t len, struct keel__snap_block *b,
                       struct keel_error *err)
{
    const unsigned char *p = data;
    size_t row;

    memset(b, 0, sizeof(*b));
    if (len < KEEL__BLOCK_HEAD_SIZE)
        return keel_err_set(err, KEEL_ETRUNCATED, "block of %zu bytes is too short", len);
    b->checksum = keel_load_u64le(p);
    if (XXH3_64bits(p + 8, len - 8) != b->checksum)
        return keel_err_set(err, KEEL_ECHECKSUM, "block checksum mismatch");
    b->table_id = keel_load_u32le(p + 8);
    b->width = keel_load_u32le(p + 12);
    b->state_width = keel_load_u32le(p + 16);
    b->count = keel_load_u32le(p + 20);
    if (b->width == 0 || b->width > KEEL_PROTO_MAX_ROW_WIDTH ||
        b->state_width > KEEL_PROTO_MAX_ROW_WIDTH)
        return keel_err_set(err, KEEL_EROWWIDTH, "block row width %" PRIu32 "+%" PRIu32, b->width,
                            b->state_width);
    row = 8 + 4 * ((size_t)b->width + b->state_width);
    if (b->count == 0 || (len - KEEL__BLOCK_HEAD_SIZE) / row != b->count ||
        (len - KEEL__BLOCK_HEAD_SIZE) % row != 0)
        return keel_err_set(err, KEEL_ECOUNT, "block of %" PRIu32 " rows does not fill %zu bytes",
                            b->count, len);
    b->keys = p + KEEL__BLOCK_HEAD_SIZE;
    b->rows = b->keys + (size_t)b->count * 8;
    b->state = b->rows + (size_t)b->count * b->width * 4;
    return 0;
}

size_t keel__shard_encode(unsigned char *dst, size_t cap, const struct keel_shard_pos *sp)
{
    size_t wlen = strnlen(sp->worker_id, KEEL_ID_MAX);
    size_t size = KEEL__SHARD_HEAD_SIZE + wlen;

    if (cap < size)
        return 0;
    memset(dst, 0, KEEL__SHARD_HEAD_SIZE);
    keel_store_u32le(dst + 8, sp->shard);
    keel_store_u16le(dst + 12, (uint16_t)wlen);
    keel_store_u64le(dst + 16, sp->seq);
    keel_store_u64le(dst + 24, sp->incarnation);
    memcpy(dst + KEEL__SHARD_HEAD_SIZE, sp->worker_id, wlen);
    keel_store_u64le(dst, XXH3_64bits(dst + 8, size - 8));
    return size;
}

int keel__shard_decode(const void *data, size_t len, struct keel_shard_pos *sp, uint64_t *checksum,
                       struct keel_error *err)
{
    const unsigned char *p = data;
    size_t wlen;

    memset(sp, 0, sizeof(*sp));
    if (len < KEEL__SHARD_HEAD_SIZE)
        return keel_err_set(err, KEEL_ETRUNCATED, "shard entry of %zu bytes is too short", len);
    *checksum = keel_load_u64le(p);
    if (XXH3_64bits(p + 8, len - 8) != *checksum)
        return keel_err_set(err, KEEL_ECHECKSUM, "shard entry checksum mismatch");
    wlen = keel_load_u16le(p + 12);
    if (keel_load_u16le(p + 14) != 0)
        return keel_err_set(err, KEEL_ERESERVED, "shard entry reserved bytes not zero");
    if (wlen > KEEL_ID_MAX || len != KEEL__SHARD_HEAD_SIZE + wlen ||
        memchr(p + KEEL__SHARD_HEAD_SIZE, '\0', wlen) != NULL)
        return keel_err_set(err, KEEL_ESTRING, "shard entry worker id is malformed");
    sp->shard = keel_load_u32le(p + 8);
    sp->seq = keel_load_u64le(p + 16);
    sp->incarnation = keel_load_u64le(p + 24);
    memcpy(sp->worker_id, p + KEEL__SHARD_HEAD_SIZE, wlen);
    sp->worker_id[wlen] = '\0';
    return 0;
}

/* ---- snapshots in memory ---------------------------------------------- */

/*
 * Memory for a loaded table's arrays (freed with free()).  Large arrays are
 * 2 MiB aligned and advised as huge pages: a restore writes every byte of
 * them once, and faulting in 4 KiB pages would cost more than the copy.
 */
static void *table_array(uint64_t n, size_t elem)
{
    size_t size = keel_size_mul((size_t)n, elem);
    void *p;

    if (size < ((size_t)4 << 20))
        return keel_malloc(size);
    if (posix_memalign(&p, (size_t)2 << 20, size) != 0)
        return keel_malloc(size); /* aborts if there really is no memory */
#ifdef MADV_HUGEPAGE
    madvise(p, size, MADV_HUGEPAGE);
#endif
    return p;
}

void keel_snapshot_release(struct keel_snapshot *snap)
{
    if (snap->owned) {
        for (size_t i = 0; i < snap->ntables; i++) {
            free(snap->tables[i].keys);
            free(snap->tables[i].rows);
            free(snap->tables[i].state);
        }
        free(snap->tables);
        free(snap->shards);
    }
    memset(snap, 0, sizeof(*snap));
}

int keel_snapshot_check(const struct keel_snapshot *snap, struct keel_error *err)
{
    if (snap->ntables > KEEL__SNAP_MAX_TABLES)
        return keel_err_set(err, KEEL_EINVAL, "snapshot of range %" PRIu32 ": too many tables",
                            snap->range);
    if (snap->nshards > KEEL__SNAP_MAX_SHARDS)
        return keel_err_set(err, KEEL_EINVAL, "snapshot of range %" PRIu32 ": too many shards",
                            snap->range);
    for (size_t i = 0; i < snap->ntables; i++) {
        const struct keel_snap_table *t = &snap->tables[i];
        if (t->table_id > 0xFFFF || (i > 0 && t->table_id <= snap->tables[i - 1].table_id))
            return keel_err_set(err, KEEL_EINVAL,
                                "snapshot of range %" PRIu32 ": table %" PRIu32
                                " out of order or above 65535",
                                snap->range, t->table_id);
        if (t->width == 0 || t->width > KEEL_PROTO_MAX_ROW_WIDTH ||
            t->state_width > KEEL_PROTO_MAX_ROW_WIDTH || (t->state_width > 0 && !t->state))
            return keel_err_set(err, KEEL_EINVAL,
                                "snapshot of range %" PRIu32 ": table %" PRIu32
                                " has a bad row or state width",
                                snap->range, t->table_id);
        for (uint64_t r = 0; r < t->nrows; r++)
            if (KEEL_KEY_TABLE(t->keys[r]) != t->table_id ||
                (r > 0 && t->keys[r] <= t->keys[r - 1]))
                return keel_err_set(err, KEEL_EINVAL,
                                    "snapshot of range %" PRIu32 ": table %" PRIu32 ", row %" PRIu64
                                    ": key 0x%016" PRIx64 " not increasing or of another table",
                                    snap->range, t->table_id, r, t->keys[r]);
    }
    for (size_t i = 0; i < snap->nshards; i++) {
        const struct keel_shard_pos *sp = &snap->shards[i];
        if (i > 0 && sp->shard <= snap->shards[i - 1].shard)
            return keel_err_set(err, KEEL_EINVAL,
                                "snapshot of range %" PRIu32 ": shard %" PRIu32 " out of order",
                                snap->range, sp->shard);
        if (memchr(sp->worker_id, '\0', sizeof(sp->worker_id)) == NULL)
            return keel_err_set(err, KEEL_EINVAL,
                                "snapshot of range %" PRIu32 ": shard %" PRIu32
                                ": worker id not terminated",
                                snap->range, sp->shard);
    }
    return 0;
}

int64_t keel_snap_table_find(const struct keel_snap_table *t, uint64_t key)
{
    uint64_t lo = 0, hi = t->nrows;

    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (t->keys[mid] < key)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < t->nrows && t->keys[lo] == key ? (int64_t)lo : -1;
}

struct keel_snap_table *keel_snapshot_table(struct keel_snapshot *snap, uint32_t table_id)
{
    for (size_t i = 0; i < snap->ntables; i++)
        if (snap->tables[i].table_id == table_id)
            return &snap->tables[i];
    return NULL;
}

/* The index of the first shard entry >= shard. */
static size_t shard_lower(const struct keel_snapshot *snap, uint32_t shard)
{
    size_t lo = 0, hi = snap->nshards;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (snap->shards[mid].shard < shard)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static struct keel_shard_pos *shard_find(struct keel_snapshot *snap, uint32_t shard)
{
    size_t i = shard_lower(snap, shard);

    return i < snap->nshards && snap->shards[i].shard == shard ? &snap->shards[i] : NULL;
}

struct keel_shard_pos *keel_snapshot_shard(struct keel_snapshot *snap, uint32_t shard)
{
    size_t lo = shard_lower(snap, shard);

    if (lo < snap->nshards && snap->shards[lo].shard == shard)
        return &snap->shards[lo];
    KEEL_REALLOC_ARRAY(snap->shards, snap->nshards + 1);
    memmove(&snap->shards[lo + 1], &snap->shards[lo],
            (snap->nshards - lo) * sizeof(snap->shards[0]));
    snap->nshards++;
    memset(&snap->shards[lo], 0, sizeof(snap->shards[0]));
    snap->shards[lo].shard = shard;
    return &snap->shards[lo];
}

/* ---- writing ---------------------------------------------------------- */

/* Delete every key of `db` that starts with range (u32 BE) and has index >= from. */
static int delete_from(keel_store *s, keel_txn *txn, enum keel_db db, uint32_t range, uint32_t from,
                       struct keel_error *err)
{
    unsigned char key[8];
    MDB_val k = {sizeof(key), key}, v;
    MDB_cursor *cur;
    int rc;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, db), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "store '%s': cannot open '%s'", keel_store_dir(s),
                                  keel_store_db_name(db));
    keel__snap_key(key, range, from);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size >= 4 && keel_store_load_be32(k.mv_data) == range) {
        rc = mdb_cursor_del(cur, 0);
        if (rc == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "store '%s': cannot delete from '%s'", keel_store_dir(s),
                                  keel_store_db_name(db));
    return 0;
}

int keel_snapshot_put(keel_store *s, keel_txn *txn, const struct keel_snapshot *snap,
                      struct keel_error *err)
{
    struct keel__snap_head h = {0};
    struct keel_buf head = KEEL_BUF_INIT;
    XXH3_state_t *digest = XXH3_createState();
    unsigned char key[8], entry[KEEL__SHARD_HEAD_SIZE + KEEL_ID_MAX];
    uint32_t block = 0;
    int rc;

    rc = keel_snapshot_check(snap, err);
    if (rc != 0)
        goto out;
    XXH3_64bits_reset(digest);
    KEEL_ALLOC_ARRAY(h.dir, snap->ntables);
    for (size_t i = 0; i < snap->ntables; i++) {
        const struct keel_snap_table *t = &snap->tables[i];
        uint32_t per = keel__block_rows(t->width, t->state_width);
        uint32_t first_block = block;

        for (uint64_t r = 0; r < t->nrows; r += per) {
            uint32_t count = t->nrows - r < per ? (uint32_t)(t->nrows - r) : per;
            MDB_val k = {sizeof(key), key}, v;
            unsigned char sum[8];

            if (block == UINT32_MAX) {
                rc = keel_err_set(err, KEEL_EINVAL, "snapshot of range %" PRIu32 " is too big",
                                  snap->range);
                goto out;
            }
            keel__snap_key(key, snap->range, block);
            v.mv_size = keel__block_size(count, t->width, t->state_width);
            /* Reserve the value in the page and fill it in place: one copy. */
            rc = mdb_put(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_SNAP_ROWS), &k, &v,
                         MDB_RESERVE);
            if (rc != 0) {
                rc = keel_store_mdb_err(err, rc, "store '%s': cannot write range %" PRIu32,
                                        keel_store_dir(s), snap->range);
                goto out;
            }
            keel_store_u64le(sum, keel__block_fill(v.mv_data, t, r, count));
            XXH3_64bits_update(digest, sum, sizeof(sum));
            block++;
        }
        h.dir[i].table_id = t->table_id;
        h.dir[i].width = t->width;
        h.dir[i].state_width = t->state_width;
        h.dir[i].nblocks = block - first_block;
        h.dir[i].nrows = t->nrows;
        h.nrows += t->nrows;
    }
    /* The previous snapshot's blocks past the new ones, and its shard table. */
    rc = delete_from(s, txn, KEEL_DB_SNAP_ROWS, snap->range, block, err);
    if (rc == 0)
        rc = delete_from(s, txn, KEEL_DB_SHARD_POS, snap->range, 0, err);
    if (rc != 0)
        goto out;
    for (size_t i = 0; i < snap->nshards; i++) {
        size_t n = keel__shard_encode(entry, sizeof(entry), &snap->shards[i]);
        keel__snap_key(key, snap->range, snap->shards[i].shard);
        rc = keel_store_put(s, txn, KEEL_DB_SHARD_POS, key, sizeof(key), entry, n, err);
        if (rc != 0)
            goto out;
        XXH3_64bits_update(digest, entry, 8);
    }
    h.range = snap->range;
    h.ntables = (uint32_t)snap->ntables;
    h.nblocks = block;
    h.nshards = (uint32_t)snap->nshards;
    h.lsn = snap->lsn;
    h.created_ns = snap->created_ns ? snap->created_ns : keel_clock_wall_ns();
    h.digest = XXH3_64bits_digest(digest);
    keel__snap_head_encode(&head, &h);
    keel_store_be32(key, snap->range);
    rc = keel_store_put(s, txn, KEEL_DB_SNAP_HEAD, key, 4, head.buf, head.len, err);
    if (rc == 0)
        rc = keel_ulog_truncate_txn(s, txn, snap->range, snap->lsn, NULL, err);
out:
    XXH3_freeState(digest);
    free(h.dir);
    keel_buf_release(&head);
    return rc;
}

struct write_ctx {
    keel_store *s;
    const struct keel_snapshot *snaps;
    size_t n;
    int (*still)(void *ctx);
    void *ctx;
};

static int write_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct write_ctx *w = ctx;
    int rc = 0;

    if (w->still != NULL && !w->still(w->ctx))
        return keel_err_set(err, KEEL_ECANCELED, "store '%s': snapshots no longer wanted",
                            keel_store_dir(w->s));
    for (size_t i = 0; i < w->n && rc == 0; i++)
        rc = keel_snapshot_put(w->s, txn, &w->snaps[i], err);
    return rc;
}

int keel_snapshot_write(keel_store *s, const struct keel_snapshot *snap, struct keel_error *err)
{
    struct write_ctx w = {s, snap, 1, NULL, NULL};

    return keel_store_write(s, write_fn, &w, err);
}

int keel_snapshot_write_many(keel_store *s, const struct keel_snapshot *snaps, size_t n,
                             int (*still)(void *ctx), void *ctx, struct keel_error *err)
{
    struct write_ctx w = {s, snaps, n, still, ctx};

    return keel_store_write(s, write_fn, &w, err);
}

/* ---- the job that owns the range state ---------------------------------- */

#define OWNER_KEY "ranges_owner"

struct claim {
    keel_store *s;
    const char *owner;
    char *prev;
    size_t prevlen;
    unsigned dropped;
};

/* Delete range `range`'s snapshot and log; counts it in c->dropped if it had either. */
static int drop_range(struct claim *c, keel_txn *txn, uint32_t range, struct keel_error *err)
{
    unsigned char key[4];
    uint64_t records = 0;
    MDB_val v;
    int had, rc;

    keel_store_be32(key, range);
    rc = keel_store_get(c->s, txn, KEEL_DB_SNAP_HEAD, key, sizeof(key), &v, err);
    if (rc != 0 && rc != KEEL_ENOTFOUND)
        return rc;
    had = rc == 0;
    if ((rc = keel_store_del(c->s, txn, KEEL_DB_SNAP_HEAD, key, sizeof(key), err)) != 0 ||
        (rc = delete_from(c->s, txn, KEEL_DB_SNAP_ROWS, range, 0, err)) != 0 ||
        (rc = delete_from(c->s, txn, KEEL_DB_SHARD_POS, range, 0, err)) != 0 ||
        (rc = keel_ulog_truncate_txn(c->s, txn, range, UINT64_MAX, &records, err)) != 0)
        return rc;
    if (had || records)
        c->dropped++;
    return 0;
}

static int claim_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct claim *c = ctx;
    size_t n = strlen(c->owner);
    MDB_val v;
    int rc;

    c->dropped = 0;
    rc = keel_store_get(c->s, txn, KEEL_DB_META, OWNER_KEY, strlen(OWNER_KEY), &v, err);
    if (rc != 0 && rc != KEEL_ENOTFOUND)
        return rc;
    if (rc == 0 && v.mv_size == n && memcmp(v.mv_data, c->owner, n) == 0)
        return 0;
    if (rc == 0) {
        if (c->prevlen) {
            size_t m = v.mv_size < c->prevlen - 1 ? v.mv_size : c->prevlen - 1;

            memcpy(c->prev, v.mv_data, m);
            c->prev[m] = '\0';
        }
        for (uint32_t r = 0; r < KEEL_PROTO_NRANGES; r++)
            if ((rc = drop_range(c, txn, r, err)) != 0)
                return rc;
    }
    return keel_store_put(c->s, txn, KEEL_DB_META, OWNER_KEY, strlen(OWNER_KEY), c->owner, n, err);
}

int keel_snapshot_claim(keel_store *s, const char *owner, char *prev, size_t prevlen,
                        unsigned *dropped, struct keel_error *err)
{
    struct claim c = {s, owner, prev, prevlen, 0};
    size_t n = strlen(owner);
    int rc;

    if (prevlen)
        prev[0] = '\0';
    if (n == 0 || n > KEEL_SNAPSHOT_OWNER_MAX)
        return keel_err_set(err, KEEL_EINVAL, "range owner '%s' is not 1-%d bytes", owner,
                            KEEL_SNAPSHOT_OWNER_MAX);
    rc = keel_store_write(s, claim_fn, &c, err);
    if (dropped)
        *dropped = rc == 0 ? c.dropped : 0;
    return rc;
}

struct owner_read {
    keel_store *s;
    char *out;
    size_t len;
};

static int owner_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct owner_read *o = ctx;
    MDB_val v;
    int rc;

    rc = keel_store_get(o->s, txn, KEEL_DB_META, OWNER_KEY, strlen(OWNER_KEY), &v, err);
    if (rc == 0) {
        size_t m = v.mv_size < o->len - 1 ? v.mv_size : o->len - 1;

        memcpy(o->out, v.mv_data, m);
        o->out[m] = '\0';
    }
    return rc;
}

int keel_snapshot_owner(keel_store *s, char *out, size_t len, struct keel_error *err)
{
    struct owner_read o = {s, out, len};

    if (len == 0)
        return keel_err_set(err, KEEL_EINVAL, "no room for the range owner");
    out[0] = '\0';
    return keel_store_read(s, owner_fn, &o, err);
}

/* ---- reading ---------------------------------------------------------- */

static int read_head(keel_store *s, keel_txn *txn, uint32_t range, struct keel__snap_head *h,
                     struct keel_error *err)
{
    unsigned char key[4];
    MDB_val v;
    int rc;

    keel_store_be32(key, range);
    rc = keel_store_get(s, txn, KEEL_DB_SNAP_HEAD, key, sizeof(key), &v, err);
    if (rc == KEEL_ENOTFOUND)
        return keel_err_set(err, rc, "store '%s': range %" PRIu32 " has no snapshot",
                            keel_store_dir(s), range);
    if (rc != 0)
        return rc;
    rc = keel__snap_head_decode(v.mv_data, v.mv_size, h, err);
    if (rc == 0 && h->range != range) {
        free(h->dir);
        h->dir = NULL;
        rc = keel_err_set(err, KEEL_ECORRUPT, "header is of range %" PRIu32, h->range);
    }
    if (rc != 0)
        return keel_err_prefix(err, rc, "store '%s': snapshot of range %" PRIu32, keel_store_dir(s),
                               range);
    return 0;
}

int keel_snapshot_stat(keel_store *s, keel_txn *txn, uint32_t range,
                       struct keel_snapshot_info *info, struct keel_error *err)
{
    struct keel__snap_head h;
    int rc = read_head(s, txn, range, &h, err);

    if (rc != 0)
        return rc;
    memset(info, 0, sizeof(*info));
    info->range = range;
    info->lsn = h.lsn;
    info->created_ns = h.created_ns;
    info->nrows = h.nrows;
    info->ntables = h.ntables;
    info->nblocks = h.nblocks;
    info->nshards = h.nshards;
    for (uint32_t i = 0; i < h.ntables; i++)
        info->bytes += h.dir[i].nrows * (8 + 4 * ((uint64_t)h.dir[i].width + h.dir[i].state_width));
    free(h.dir);
    return 0;
}

int keel_snapshot_ranges(keel_store *s, keel_txn *txn, uint32_t **ranges, size_t *n,
                         struct keel_error *err)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc, op = MDB_FIRST;

    *ranges = NULL;
    *n = 0;
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_SNAP_HEAD), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "store '%s': cannot list snapshots", keel_store_dir(s));
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (k.mv_size != 4)
            continue;
        KEEL_REALLOC_ARRAY(*ranges, *n + 1);
        (*ranges)[(*n)++] = keel_store_load_be32(k.mv_data);
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND) {
        free(*ranges);
        *ranges = NULL;
        *n = 0;
        return keel_store_mdb_err(err, rc, "store '%s': cannot list snapshots", keel_store_dir(s));
    }
    return 0;
}

/* Sizes come from the store: refuse a header claiming more bytes than the map can hold. */
static int check_head_size(keel_store *s, uint32_t range, const struct keel__snap_head *h,
                           struct keel_error *err)
{
    uint64_t bytes = 0;

    for (uint32_t i = 0; i < h->ntables; i++)
        bytes += h->dir[i].nrows * (8 + 4 * ((uint64_t)h->dir[i].width + h->dir[i].state_width));
    if (bytes > keel_store_map_size(s))
        return keel_err_set(err, KEEL_ECORRUPT,
                            "store '%s': snapshot of range %" PRIu32 ": header claims %" PRIu64
                            " bytes, more than the store holds",
                            keel_store_dir(s), range, bytes);
    return 0;
}

/* Fill in what the header says and allocate each table's arrays (no rows yet). */
static void alloc_tables(struct keel_snapshot *snap, uint32_t range,
                         const struct keel__snap_head *h)
{
    snap->owned = 1;
    snap->range = range;
    snap->lsn = h->lsn;
    snap->created_ns = h->created_ns;
    snap->ntables = h->ntables;
    KEEL_ALLOC_ARRAY(snap->tables, h->ntables);
    for (uint32_t i = 0; i < h->ntables; i++) {
        struct keel_snap_table *t = &snap->tables[i];
        t->table_id = h->dir[i].table_id;
        t->width = h->dir[i].width;
        t->state_width = h->dir[i].state_width;
        t->nrows = 0; /* counts up as blocks arrive */
        t->keys = table_array(h->dir[i].nrows, 8);
        t->rows = table_array(h->dir[i].nrows, keel_size_mul(t->width, 4));
        if (t->state_width > 0)
            t->state = table_array(h->dir[i].nrows, keel_size_mul(t->state_width, 4));
    }
}

/*
 * Append block number `block` (the value `v`) to table `t`, whose entry in
 * the header's directory is `dir`, and add its checksum to `digest`.
 */
static int append_block(struct keel_snap_table *t, const struct keel__snap_dir *dir, uint32_t block,
                        const MDB_val *v, XXH3_state_t *digest, struct keel_error *err)
{
    struct keel__snap_block b;
    unsigned char sum[8];
    int rc;

    rc = keel__block_decode(v->mv_data, v->mv_size, &b, err);
    if (rc == 0 && (b.table_id != t->table_id || b.width != t->width ||
                    b.state_width != t->state_width || b.count > dir->nrows - t->nrows))
        rc = keel_err_set(err, KEEL_ECORRUPT,
                          "block does not match table %" PRIu32 " of the header", t->table_id);
    if (rc != 0) {
        keel_err_prefix(err, rc, "block %" PRIu32, block);
        return rc;
    }
    memcpy(t->keys + t->nrows, b.keys, (size_t)b.count * 8);
    memcpy(t->rows + t->nrows * t->width, b.rows, (size_t)b.count * t->width * 4);
    if (t->state_width > 0)
        memcpy(t->state + t->nrows * t->state_width, b.state, (size_t)b.count * t->state_width * 4);
    for (uint64_t r = t->nrows; r < t->nrows + b.count; r++)
        if (KEEL_KEY_TABLE(t->keys[r]) != t->table_id || (r > 0 && t->keys[r] <= t->keys[r - 1]))
            return keel_err_set(err, KEEL_ECORRUPT,
                                "block %" PRIu32 ": key 0x%016" PRIx64
                                " out of order or of another table",
                                block, t->keys[r]);
    t->nrows += b.count;
    keel_store_u64le(sum, b.checksum);
    XXH3_64bits_update(digest, sum, sizeof(sum));
    return 0;
}

/* Read the range's row blocks, in order, into the tables alloc_tables() made. */
static int load_rows(keel_store *s, keel_txn *txn, uint32_t range, const struct keel__snap_head *h,
                     struct keel_snapshot *snap, XXH3_state_t *digest, struct keel_error *err)
{
    MDB_cursor *cur;
    unsigned char key[8];
    MDB_val k = {sizeof(key), key}, v;
    uint32_t block = 0;
    int rc;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_SNAP_ROWS), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot read rows");
    keel__snap_key(key, range, 0);
    for (uint32_t i = 0; i < h->ntables; i++) {
        struct keel_snap_table *t = &snap->tables[i];
        for (uint32_t j = 0; j < h->dir[i].nblocks; j++, block++) {
            rc = mdb_cursor_get(cur, &k, &v, block == 0 ? MDB_SET_RANGE : MDB_NEXT);
            if (rc == 0 && (k.mv_size != 8 || keel_store_load_be32(k.mv_data) != range ||
                            keel_store_load_be32((unsigned char *)k.mv_data + 4) != block))
                rc = MDB_NOTFOUND;
            if (rc == MDB_NOTFOUND)
                rc = keel_err_set(err, KEEL_ECORRUPT, "block %" PRIu32 " is missing", block);
            else if (rc != 0)
                rc = keel_store_mdb_err(err, rc, "block %" PRIu32, block);
            else
                rc = append_block(t, &h->dir[i], block, &v, digest, err);
            if (rc != 0)
                goto out;
        }
        if (t->nrows != h->dir[i].nrows) {
            rc = keel_err_set(err, KEEL_ECORRUPT,
                              "table %" PRIu32 " has %" PRIu64 " rows, the header says %" PRIu64,
                              t->table_id, t->nrows, h->dir[i].nrows);
            goto out;
        }
    }
out:
    mdb_cursor_close(cur);
    return rc;
}

/* Read the range's exactly-once table (one entry per shard) into snap->shards. */
static int load_shards(keel_store *s, keel_txn *txn, uint32_t range,
                       const struct keel__snap_head *h, struct keel_snapshot *snap,
                       XXH3_state_t *digest, struct keel_error *err)
{
    MDB_cursor *cur;
    unsigned char key[8];
    MDB_val k = {sizeof(key), key}, v;
    int rc;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_SHARD_POS), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot read the shard table");
    KEEL_ALLOC_ARRAY(snap->shards, h->nshards);
    keel__snap_key(key, range, 0);
    for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
         rc == 0 && k.mv_size == 8 && keel_store_load_be32(k.mv_data) == range;
         rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
        uint64_t sum;
        unsigned char le[8];
        uint32_t shard = keel_store_load_be32((unsigned char *)k.mv_data + 4);

        if (snap->nshards == h->nshards) {
            rc = keel_err_set(err, KEEL_ECORRUPT, "more shard entries than the header's %" PRIu32,
                              h->nshards);
            goto out;
        }
        rc = keel__shard_decode(v.mv_data, v.mv_size, &snap->shards[snap->nshards], &sum, err);
        if (rc == 0 && snap->shards[snap->nshards].shard != shard)
            rc = keel_err_set(err, KEEL_ECORRUPT, "entry is of shard %" PRIu32,
                              snap->shards[snap->nshards].shard);
        if (rc != 0) {
            keel_err_prefix(err, rc, "shard %" PRIu32, shard);
            goto out;
        }
        snap->nshards++;
        keel_store_u64le(le, sum);
        XXH3_64bits_update(digest, le, sizeof(le));
    }
    if (rc != 0 && rc != MDB_NOTFOUND) {
        rc = keel_store_mdb_err(err, rc, "cannot read the shard table");
        goto out;
    }
    rc = 0;
    if (snap->nshards != h->nshards)
        rc = keel_err_set(err, KEEL_ECORRUPT, "%zu shard entries, the header says %" PRIu32,
                          snap->nshards, h->nshards);
out:
    mdb_cursor_close(cur);
    return rc;
}

int keel_snapshot_load(keel_store *s, keel_txn *txn, uint32_t range, struct keel_snapshot *snap,
                       struct keel_error *err)
{
    struct keel__snap_head h;
    XXH3_state_t *digest;
    int rc;

    memset(snap, 0, sizeof(*snap));
    rc = read_head(s, txn, range, &h, err);
    if (rc != 0)
        return rc;
    rc = check_head_size(s, range, &h, err);
    if (rc != 0) {
        free(h.dir);
        return rc;
    }
    alloc_tables(snap, range, &h);
    digest = XXH3_createState();
    XXH3_64bits_reset(digest);
    rc = load_rows(s, txn, range, &h, snap, digest, err);
    if (rc == 0)
        rc = load_shards(s, txn, range, &h, snap, digest, err);
    if (rc == 0 && XXH3_64bits_digest(digest) != h.digest)
        rc = keel_err_set(err, KEEL_ECHECKSUM,
                          "digest of blocks and shard entries does not match the header");
    XXH3_freeState(digest);
    free(h.dir);
    if (rc != 0) {
        keel_err_prefix(err, rc, "store '%s': snapshot of range %" PRIu32, keel_store_dir(s),
                        range);
        keel_snapshot_release(snap);
    }
    return rc;
}

struct load_ctx {
    keel_store *s;
    uint32_t range;
    struct keel_snapshot *snap;
};

static int load_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct load_ctx *l = ctx;

    return keel_snapshot_load(l->s, txn, l->range, l->snap, err);
}

int keel_snapshot_read(keel_store *s, uint32_t range, struct keel_snapshot *snap,
                       struct keel_error *err)
{
    struct load_ctx l = {s, range, snap};

    return keel_store_read(s, load_fn, &l, err);
}

/* ---- restore ---------------------------------------------------------- */

struct restore_ctx {
    keel_store *s;
    uint32_t range;
    struct keel_snapshot *snap;
    keel_apply_fn apply;
    void *ctx;
    struct keel_restore_stats stats;
};

static int replay_one(const struct keel_ulog_record *rec, void *ctx, struct keel_error *err)
{
    struct restore_ctx *r = ctx;
    struct keel_shard_pos *sp = shard_find(r->snap, rec->push.shard);
    int rc;

    if (sp != NULL && rec->push.seq <= sp->seq) {
        r->stats.duplicates++;
        KEEL_LOG_DEBUG("restore of range %" PRIu32 ": LSN %" PRIu64 " (shard %" PRIu32
                       ", seq %" PRIu64 ") already applied, skipped",
                       r->range, rec->lsn, rec->push.shard, rec->push.seq);
        return 0;
    }
    rc = r->apply(r->snap, rec, r->ctx, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "restore of range %" PRIu32 ", LSN %" PRIu64, r->range,
                               rec->lsn);
    sp = keel_snapshot_shard(r->snap, rec->push.shard);
    sp->seq = rec->push.seq;
    sp->incarnation = rec->push.incarnation;
    memcpy(sp->worker_id, rec->push.worker_id.ptr, rec->push.worker_id.len);
    sp->worker_id[rec->push.worker_id.len] = '\0';
    r->snap->lsn = rec->lsn;
    r->stats.replayed++;
    return 0;
}

static int restore_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct restore_ctx *r = ctx;
    int rc = keel_snapshot_load(r->s, txn, r->range, r->snap, err);

    if (rc == KEEL_ENOTFOUND) {
        if (err != NULL)
            keel_error_init(err);
        memset(r->snap, 0, sizeof(*r->snap));
        r->snap->owned = 1;
        r->snap->range = r->range;
    } else if (rc != 0) {
        return rc;
    }
    if (r->snap->lsn == UINT64_MAX)
        return 0;
    return keel_ulog_scan(r->s, txn, r->range, r->snap->lsn + 1, replay_one, r, err);
}

int keel_restore(keel_store *s, uint32_t range, struct keel_snapshot *snap, keel_apply_fn apply,
                 void *ctx, struct keel_restore_stats *stats, struct keel_error *err)
{
    struct restore_ctx r = {s, range, snap, apply, ctx, {0}};
    int rc;

    memset(snap, 0, sizeof(*snap));
    rc = keel_store_read(s, restore_fn, &r, err);
    if (rc != 0) {
        keel_snapshot_release(snap);
        return rc;
    }
    r.stats.lsn = snap->lsn;
    if (stats != NULL)
        *stats = r.stats;
    /* A range with nothing stored is the common case at first start: not worth a line each. */
    KEEL_LOG(snap->lsn ? KEEL_LOG_LEVEL_INFO : KEEL_LOG_LEVEL_DEBUG,
             "restored range %" PRIu32 " to LSN %" PRIu64 ": %" PRIu64
             " log record(s) replayed, %" PRIu64 " duplicate(s) skipped",
             range, snap->lsn, r.stats.replayed, r.stats.duplicates);
    return 0;
}

struct lsns_ctx {
    keel_store *s;
    uint64_t *lsns;
    uint32_t n;
};

static int lsns_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct lsns_ctx *c = ctx;

    for (uint32_t r = 0; r < c->n; r++) {
        struct keel_snapshot_info info;
        uint64_t last;
        int rc = keel_snapshot_stat(c->s, txn, r, &info, err);

        if (rc == KEEL_ENOTFOUND) {
            if (err != NULL)
                keel_error_init(err);
            info.lsn = 0;
        } else if (rc != 0) {
            return rc;
        }
        if ((rc = keel_ulog_last_lsn(c->s, txn, r, &last, err)) != 0)
            return rc;
        c->lsns[r] = last > info.lsn ? last : info.lsn;
    }
    return 0;
}

int keel_restore_lsns(keel_store *s, uint64_t *lsns, uint32_t n, struct keel_error *err)
{
    struct lsns_ctx c = {s, lsns, n};
    int rc;

    memset(lsns, 0, n * sizeof(*lsns));
    rc = keel_store_read(s, lsns_fn, &c, err);
    if (rc != 0)
        memset(lsns, 0, n * sizeof(*lsns));
    return rc;
}

/* ---- the packed form (replication) -------------------------------------- */

#define PACK_MAGIC    UINT32_C(0x4B50534B) /* 'K' 'S' 'P' 'K' */
#define PACK_VERSION  1
#define PACK_PREFIX   16
#define PACK_LEN_SIZE 4

/* Blocks of `nrows` rows of these widths, split as keel_snapshot_put() splits them. */
static uint64_t blocks_of(uint64_t nrows, uint32_t width, uint32_t state_width)
{
    uint32_t per = keel__block_rows(width, state_width);

    return nrows / per + (nrows % per != 0);
}

int keel_snapshot_pack(const struct keel_snapshot *snap, struct keel_buf *out,
                       struct keel_error *err)
{
    struct keel__snap_head h = {0};
    struct keel_buf head = KEEL_BUF_INIT;
    XXH3_state_t *digest;
    unsigned char entry[KEEL__SHARD_HEAD_SIZE + KEEL_ID_MAX];
    uint64_t blocks = 0;
    size_t total, headat;
    int rc;

    rc = keel_snapshot_check(snap, err);
    if (rc != 0)
        return rc;
    KEEL_ALLOC_ARRAY(h.dir, snap->ntables);
    total = PACK_PREFIX + KEEL__SNAP_HEAD_SIZE + snap->ntables * KEEL__SNAP_TABLE_SIZE;
    for (size_t i = 0; i < snap->ntables; i++) {
        const struct keel_snap_table *t = &snap->tables[i];
        uint64_t nb = blocks_of(t->nrows, t->width, t->state_width);

        blocks += nb;
        if (blocks >= UINT32_MAX) {
            free(h.dir);
            return keel_err_set(err, KEEL_EINVAL, "snapshot of range %" PRIu32 " is too big",
                                snap->range);
        }
        h.dir[i].table_id = t->table_id;
        h.dir[i].width = t->width;
        h.dir[i].state_width = t->state_width;
        h.dir[i].nblocks = (uint32_t)nb;
        h.dir[i].nrows = t->nrows;
        h.nrows += t->nrows;
        total = keel_size_add(total, keel_size_mul(nb, PACK_LEN_SIZE + KEEL__BLOCK_HEAD_SIZE));
        total = keel_size_add(total,
                              keel_size_mul(t->nrows, 8 + 4 * ((size_t)t->width + t->state_width)));
    }
    total = keel_size_add(total, keel_size_mul(snap->nshards, PACK_LEN_SIZE + sizeof(entry)));
    h.range = snap->range;
    h.ntables = (uint32_t)snap->ntables;
    h.nblocks = (uint32_t)blocks;
    h.nshards = (uint32_t)snap->nshards;
    h.lsn = snap->lsn;
    h.created_ns = snap->created_ns;

    /* The prefix, room for the header (its digest is known at the end), blocks, shard entries. */
    keel_buf_grow(out, total);
    {
        unsigned char *p = keel_buf_add_zero(out, PACK_PREFIX);
        keel_store_u32le(p, PACK_MAGIC);
        keel_store_u16le(p + 4, PACK_VERSION);
        keel_store_u32le(p + 8,
                         (uint32_t)(KEEL__SNAP_HEAD_SIZE + snap->ntables * KEEL__SNAP_TABLE_SIZE));
    }
    headat = out->len;
    keel_buf_add_zero(out, KEEL__SNAP_HEAD_SIZE + snap->ntables * KEEL__SNAP_TABLE_SIZE);
    digest = XXH3_createState();
    XXH3_64bits_reset(digest);
    for (size_t i = 0; i < snap->ntables; i++) {
        const struct keel_snap_table *t = &snap->tables[i];
        uint32_t per = keel__block_rows(t->width, t->state_width);

        for (uint64_t r = 0; r < t->nrows; r += per) {
            uint32_t count = t->nrows - r < per ? (uint32_t)(t->nrows - r) : per;
            size_t size = keel__block_size(count, t->width, t->state_width);
            unsigned char *p = keel_buf_add_zero(out, PACK_LEN_SIZE + size), sum[8];

            keel_store_u32le(p, (uint32_t)size);
            keel_store_u64le(sum, keel__block_fill(p + PACK_LEN_SIZE, t, r, count));
            XXH3_64bits_update(digest, sum, sizeof(sum));
        }
    }
    for (size_t i = 0; i < snap->nshards; i++) {
        size_t n = keel__shard_encode(entry, sizeof(entry), &snap->shards[i]);
        unsigned char len[PACK_LEN_SIZE];

        keel_store_u32le(len, (uint32_t)n);
        keel_buf_add(out, len, sizeof(len));
        keel_buf_add(out, entry, n);
        XXH3_64bits_update(digest, entry, 8);
    }
    h.digest = XXH3_64bits_digest(digest);
    XXH3_freeState(digest);
    keel__snap_head_encode(&head, &h);
    memcpy(out->buf + headat, head.buf, head.len);
    keel_buf_release(&head);
    free(h.dir);
    return 0;
}

/*
 * A piece of a packed snapshot did not decode: report it as damage (checksum
 * mismatches stay KEEL_ECHECKSUM, every other refusal is KEEL_ECORRUPT).
 */
static int unpack_fail(struct keel_error *err, int rc)
{
    rc = rc == KEEL_ECHECKSUM ? rc : KEEL_ECORRUPT;
    if (err != NULL)
        err->code = rc;
    return rc;
}

/* The next length-prefixed piece at *off: its bytes and length. */
static int unpack_piece(const unsigned char *p, size_t len, size_t *off, const char *what,
                        uint32_t index, MDB_val *v, struct keel_error *err)
{
    uint32_t n;

    if (len - *off < PACK_LEN_SIZE)
        return keel_err_set(err, KEEL_ECORRUPT, "%s %" PRIu32 ": length cut off at byte %zu", what,
                            index, *off);
    n = keel_load_u32le(p + *off);
    if (n > len - *off - PACK_LEN_SIZE)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "%s %" PRIu32 " at byte %zu: %" PRIu32 " bytes, %zu are left", what,
                            index, *off, n, len - *off - PACK_LEN_SIZE);
    v->mv_data = (void *)(p + *off + PACK_LEN_SIZE);
    v->mv_size = n;
    *off += PACK_LEN_SIZE + (size_t)n;
    return 0;
}

/* a + b, or UINT64_MAX when it overflows. */
static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

/*
 * Check the header's claims against the `avail` bytes after it and the
 * caller's bound, before anything is allocated.
 */
static int unpack_sizes(const struct keel__snap_head *h, size_t avail, uint64_t max_rows_bytes,
                        struct keel_error *err)
{
    uint64_t need = 0, rows_bytes = 0;

    for (uint32_t i = 0; i < h->ntables; i++) {
        const struct keel__snap_dir *d = &h->dir[i];
        uint64_t row = 8 + 4 * ((uint64_t)d->width + d->state_width);

        if (d->nblocks != blocks_of(d->nrows, d->width, d->state_width))
            return keel_err_set(err, KEEL_ECORRUPT,
                                "header: table %" PRIu32 " has %" PRIu64 " rows in %" PRIu32
                                " blocks, not as they are packed",
                                d->table_id, d->nrows, d->nblocks);
        if (d->nrows > avail / row)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "header: table %" PRIu32 " claims %" PRIu64
                                " rows, more than the %zu bytes present hold",
                                d->table_id, d->nrows, avail);
        rows_bytes = add_sat(rows_bytes, d->nrows * row);
    }
    need = add_sat(rows_bytes, (uint64_t)h->nblocks * (PACK_LEN_SIZE + KEEL__BLOCK_HEAD_SIZE));
    need = add_sat(need, (uint64_t)h->nshards * (PACK_LEN_SIZE + KEEL__SHARD_HEAD_SIZE));
    if (need > avail)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "header claims at least %" PRIu64
                            " bytes of blocks and shard entries, %zu are present",
                            need, avail);
    if (rows_bytes > max_rows_bytes)
        return keel_err_set(err, KEEL_EINVAL,
                            "%" PRIu64 " bytes of rows are more than the limit of %" PRIu64,
                            rows_bytes, max_rows_bytes);
    return 0;
}

/* Read the blocks, then the shard entries, at *off into the tables alloc_tables() made. */
static int unpack_body(const unsigned char *p, size_t len, size_t *off,
                       const struct keel__snap_head *h, struct keel_snapshot *snap,
                       XXH3_state_t *digest, struct keel_error *err)
{
    uint32_t block = 0;
    MDB_val v = {0, NULL};
    int rc;

    for (uint32_t i = 0; i < h->ntables; i++) {
        struct keel_snap_table *t = &snap->tables[i];
        uint32_t per = keel__block_rows(t->width, t->state_width);

        for (uint32_t j = 0; j < h->dir[i].nblocks; j++, block++) {
            uint64_t before = t->nrows, left = h->dir[i].nrows - t->nrows;
            uint64_t expect = left < per ? left : per;

            rc = unpack_piece(p, len, off, "block", block, &v, err);
            if (rc == 0)
                rc = append_block(t, &h->dir[i], block, &v, digest, err);
            if (rc != 0)
                return unpack_fail(err, rc);
            if (t->nrows - before != expect)
                return keel_err_set(err, KEEL_ECORRUPT,
                                    "block %" PRIu32 " holds %" PRIu64 " rows, not %" PRIu64
                                    " as they are packed",
                                    block, t->nrows - before, expect);
        }
        if (t->nrows != h->dir[i].nrows)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "table %" PRIu32 " has %" PRIu64 " rows, the header says %" PRIu64,
                                t->table_id, t->nrows, h->dir[i].nrows);
    }
    KEEL_ALLOC_ARRAY(snap->shards, h->nshards);
    for (uint32_t i = 0; i < h->nshards; i++) {
        struct keel_shard_pos *sp = &snap->shards[i];
        unsigned char le[8];
        uint64_t sum;

        rc = unpack_piece(p, len, off, "shard entry", i, &v, err);
        if (rc == 0)
            rc = keel__shard_decode(v.mv_data, v.mv_size, sp, &sum, err);
        if (rc != 0)
            return unpack_fail(err, keel_err_prefix(err, rc, "shard entry %" PRIu32, i));
        if (i > 0 && sp->shard <= sp[-1].shard)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "shard entry %" PRIu32 ": shard %" PRIu32
                                " does not follow shard %" PRIu32,
                                i, sp->shard, sp[-1].shard);
        snap->nshards++;
        keel_store_u64le(le, sum);
        XXH3_64bits_update(digest, le, sizeof(le));
    }
    if (*off != len)
        return keel_err_set(err, KEEL_ECORRUPT, "%zu bytes after the last shard entry", len - *off);
    return 0;
}

int keel_snapshot_unpack(const void *data, size_t len, uint64_t max_rows_bytes,
                         struct keel_snapshot *snap, struct keel_error *err)
{
    const unsigned char *p = data;
    struct keel__snap_head h;
    XXH3_state_t *digest;
    uint32_t hlen;
    size_t off;
    int rc;

    memset(snap, 0, sizeof(*snap));
    if (len < PACK_PREFIX)
        return keel_err_set(err, KEEL_ECORRUPT, "packed snapshot of %zu bytes is too short", len);
    if (keel_load_u32le(p) != PACK_MAGIC)
        return keel_err_set(err, KEEL_ECORRUPT, "packed snapshot: bad magic");
    if (keel_load_u16le(p + 4) != PACK_VERSION)
        return keel_err_set(err, KEEL_ECORRUPT, "packed snapshot: unknown version %u",
                            (unsigned)keel_load_u16le(p + 4));
    if (keel_load_u16le(p + 6) != 0 || keel_load_u32le(p + 12) != 0)
        return keel_err_set(err, KEEL_ECORRUPT, "packed snapshot: reserved bytes not zero");
    hlen = keel_load_u32le(p + 8);
    if (hlen > len - PACK_PREFIX)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "packed snapshot: header of %" PRIu32 " bytes, %zu are left", hlen,
                            len - PACK_PREFIX);
    rc = keel__snap_head_decode(p + PACK_PREFIX, hlen, &h, err);
    if (rc != 0)
        return unpack_fail(err, keel_err_prefix(err, rc, "packed snapshot"));
    off = PACK_PREFIX + (size_t)hlen;
    rc = unpack_sizes(&h, len - off, max_rows_bytes, err);
    if (rc != 0) {
        free(h.dir);
        return keel_err_prefix(err, rc, "packed snapshot of range %" PRIu32, h.range);
    }
    alloc_tables(snap, h.range, &h);
    digest = XXH3_createState();
    XXH3_64bits_reset(digest);
    rc = unpack_body(p, len, &off, &h, snap, digest, err);
    if (rc == 0 && XXH3_64bits_digest(digest) != h.digest)
        rc = keel_err_set(err, KEEL_ECHECKSUM,
                          "digest of blocks and shard entries does not match the header");
    XXH3_freeState(digest);
    if (rc != 0) {
        keel_err_prefix(err, rc, "packed snapshot of range %" PRIu32, h.range);
        keel_snapshot_release(snap);
    }
    free(h.dir);
    return rc;
}

static int install_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct write_ctx *w = ctx;
    uint64_t dropped = 0;
    int rc;

    /* Every record of the range, also those past the snapshot (a divergent tail). */
    rc = keel_ulog_truncate_txn(w->s, txn, w->snaps->range, UINT64_MAX, &dropped, err);
    if (rc == 0)
        rc = keel_snapshot_put(w->s, txn, w->snaps, err);
    if (rc == 0 && dropped)
        KEEL_LOG_DEBUG("install of range %" PRIu32 " at LSN %" PRIu64 ": %" PRIu64
                       " log record(s) dropped",
                       w->snaps->range, w->snaps->lsn, dropped);
    return rc;
}

int keel_snapshot_install(keel_store *s, const struct keel_snapshot *snap, struct keel_error *err)
{
    struct write_ctx w = {s, snap, 1, NULL, NULL};
    int rc = keel_snapshot_check(snap, err);

    if (rc == 0)
        rc = keel_store_write(s, install_fn, &w, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "install of range %" PRIu32, snap->range);
    return 0;
}
