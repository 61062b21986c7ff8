/*
 * checkpoint.c - take, verify, read, diff, export, restore and prune checkpoints.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "alloc.h"
#include "clock.h"
#include "digest.h"
#include "keel/audit.h"
#include "keel/checkpoint.h"
#include "log.h"
#include "keel/proto.h"
#include "snapshot_int.h"
#include "audit_int.h"
#include "store_int.h"
#include "ulog_int.h"

#define ROW_KEY_SIZE 16 /* checkpoint id u64 BE, range u32 BE, block u32 BE */

static void row_key(unsigned char *key, uint64_t id, uint32_t range, uint32_t block)
{
    keel_store_be64(key, id);
    keel_store_be32(key + 8, range);
    keel_store_be32(key + 12, block);
}

/*
 * Feed rows [first, first+count) of `t` to the canonical digest: per row, in
 * key order, the key (u64 LE), the row's floats, then its optimizer state.
 */
static void digest_rows(EVP_MD_CTX *md, const struct keel_snap_table *t, uint64_t first,
                        uint64_t count)
{
    for (uint64_t r = first; r < first + count; r++) {
        EVP_DigestUpdate(md, &t->keys[r], 8);
        EVP_DigestUpdate(md, &t->rows[r * t->width], (size_t)t->width * 4);
        if (t->state_width > 0)
            EVP_DigestUpdate(md, &t->state[r * t->state_width], (size_t)t->state_width * 4);
    }
}

/* The highest checkpoint id in the store, 0 when none. */
static int last_id(keel_store *s, keel_txn *txn, uint64_t *id, MDB_val *manifest,
                   struct keel_error *err)
{
    MDB_cursor *cur;
    MDB_val k, v;
    int rc;

    *id = 0;
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_CKPT_MANIFEST), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot read the checkpoints");
    rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot read the checkpoints");
    if (k.mv_size != 8)
        return keel_err_set(err, KEEL_ECORRUPT, "checkpoint key of %zu bytes", k.mv_size);
    *id = keel_store_load_be64(k.mv_data);
    if (manifest != NULL)
        *manifest = v;
    return 0;
}

/* Find the largest checkpoint id below `id`: *prev 0 when none. */
static int prev_id(keel_store *s, keel_txn *txn, uint64_t id, uint64_t *prev, MDB_val *manifest,
                   struct keel_error *err)
{
    unsigned char key[8];
    MDB_val k = {sizeof(key), key}, v;
    MDB_cursor *cur;
    int rc;

    *prev = 0;
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_CKPT_MANIFEST), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot read the checkpoints");
    keel_store_be64(key, id);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0)
        rc = mdb_cursor_get(cur, &k, &v, MDB_PREV);
    else if (rc == MDB_NOTFOUND)
        rc = mdb_cursor_get(cur, &k, &v, MDB_LAST);
    mdb_cursor_close(cur);
    if (rc == MDB_NOTFOUND)
        return 0;
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot read the checkpoints");
    if (k.mv_size == 8 && keel_store_load_be64(k.mv_data) < id) {
        *prev = keel_store_load_be64(k.mv_data);
        *manifest = v;
    }
    return 0;
}

/* ---- take ---------------------------------------------------------------- */

struct take_ctx {
    keel_store *s;
    const struct keel_ckpt_key *key;
    const struct keel_ckpt_params *p;
    uint64_t id;
    uint64_t rows;
    size_t nranges;
};

uint64_t keel_ckpt_range_position(const struct keel_ckpt_range *r, uint32_t shard)
{
    uint64_t at = UINT64_MAX;

    for (size_t k = 0; k < r->nshards; k++)
        if (keel_position_shard(r->shards[k].shard) == shard && r->shards[k].seq < at)
            at = r->shards[k].seq;
    return at == UINT64_MAX ? 0 : at;
}

/* Merge a range's shard table into the job's: the highest seq per shard wins. */
static void merge_shards(struct keel_manifest *m, const struct keel_shard_pos *sp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        size_t j = 0;
        while (j < m->nshards && m->shards[j].shard < sp[i].shard)
            j++;
        if (j < m->nshards && m->shards[j].shard == sp[i].shard) {
            if (sp[i].seq > m->shards[j].seq)
                m->shards[j] = sp[i];
            continue;
        }
        KEEL_REALLOC_ARRAY(m->shards, m->nshards + 1);
        memmove(&m->shards[j + 1], &m->shards[j], (m->nshards - j) * sizeof(m->shards[0]));
        m->shards[j] = sp[i];
        m->nshards++;
    }
}

/* Copy one loaded snapshot into the checkpoint's rows and describe it in *r. */
static int copy_range(keel_store *s, keel_txn *txn, uint64_t id, const struct keel_snapshot *snap,
                      struct keel_ckpt_range *r, struct keel_error *err)
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    unsigned char key[ROW_KEY_SIZE];
    uint32_t block = 0;
    unsigned int n = 32;
    int rc = 0;

    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    r->range = snap->range;
    r->lsn = snap->lsn;
    r->ntables = snap->ntables;
    KEEL_ALLOC_ARRAY(r->tables, snap->ntables);
    for (size_t i = 0; i < snap->ntables && rc == 0; i++) {
        const struct keel_snap_table *t = &snap->tables[i];
        uint32_t per = keel__block_rows(t->width, t->state_width), first = block;

        for (uint64_t row = 0; row < t->nrows; row += per, block++) {
            uint32_t count = t->nrows - row < per ? (uint32_t)(t->nrows - row) : per;
            MDB_val k = {sizeof(key), key}, v;

            row_key(key, id, snap->range, block);
            v.mv_size = keel__block_size(count, t->width, t->state_width);
            rc = mdb_put(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_CKPT_ROWS), &k, &v,
                         MDB_RESERVE);
            if (rc != 0) {
                rc = keel_store_mdb_err(err, rc, "checkpoint %" PRIu64 ": range %" PRIu32, id,
                                        snap->range);
                break;
            }
            keel__block_fill(v.mv_data, t, row, count);
        }
        digest_rows(md, t, 0, t->nrows);
        r->tables[i].table_id = t->table_id;
        r->tables[i].width = t->width;
        r->tables[i].state_width = t->state_width;
        r->tables[i].rows = t->nrows;
        r->tables[i].blocks = block - first;
        r->rows += t->nrows;
    }
    r->blocks = block;
    EVP_DigestFinal_ex(md, r->sha256, &n);
    EVP_MD_CTX_free(md);
    if (rc != 0)
        return rc;
    r->nshards = snap->nshards;
    KEEL_ALLOC_ARRAY(r->shards, snap->nshards);
    if (snap->nshards > 0)
        memcpy(r->shards, snap->shards, snap->nshards * sizeof(snap->shards[0]));
    return 0;
}

static int take_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct take_ctx *tc = ctx;
    keel_store *s = tc->s;
    struct keel_manifest m = {0};
    struct keel_buf env = KEEL_BUF_INIT;
    uint32_t *ranges = NULL;
    size_t nranges = 0;
    MDB_val prev = {0, NULL};
    unsigned char key[8];
    char detail[128];
    int rc;

    memset(&m, 0, sizeof(m));
    tc->rows = 0; /* the write may run this again with a larger map */
    if (tc->p->nsnaps > 0) {
        nranges = tc->p->nsnaps;
        KEEL_ALLOC_ARRAY(ranges, nranges);
        for (size_t i = 0; i < nranges; i++) {
            ranges[i] = tc->p->snaps[i].range;
            if (i > 0 && ranges[i] <= ranges[i - 1]) {
                rc = keel_err_set(err, KEEL_EINVAL,
                                  "checkpoint: the copies of ranges %" PRIu32 " and %" PRIu32
                                  " are out of order",
                                  ranges[i - 1], ranges[i]);
                free(ranges);
                return rc;
            }
        }
    } else if ((rc = keel_snapshot_ranges(s, txn, &ranges, &nranges, err)) != 0) {
        return rc;
    }
    if (nranges == 0) {
        free(ranges);
        return keel_err_set(err, KEEL_ENOTFOUND, "store '%s' has no range snapshot to checkpoint",
                            keel_store_dir(s));
    }
    rc = last_id(s, txn, &m.id, &prev, err);
    if (rc != 0)
        goto out;
    if (m.id > 0)
        keel_sha256(m.prev_sha256, prev.mv_data, prev.mv_size);
    m.id++;
    snprintf(m.job, sizeof(m.job), "%s", tc->p->job);
    if (tc->p->server != NULL)
        snprintf(m.server, sizeof(m.server), "%s", tc->p->server);
    m.clock = tc->p->clock;
    memcpy(m.spec_sha256, tc->p->spec_sha256, 32);
    m.created_ns = keel_clock_wall_ns();
    KEEL_ALLOC_ARRAY(m.ranges, nranges);
    for (size_t i = 0; i < nranges; i++) {
        struct keel_snapshot snap = {0};
        const struct keel_snapshot *from = &snap;

        if (tc->p->nsnaps > 0) {
            from = &tc->p->snaps[i];
        } else if ((rc = keel_snapshot_load(s, txn, ranges[i], &snap, err)) != 0) {
            keel_err_prefix(err, rc, "cannot checkpoint");
            goto out;
        }
        m.nranges++;
        rc = copy_range(s, txn, m.id, from, &m.ranges[i], err);
        if (rc == 0)
            merge_shards(&m, from->shards, from->nshards);
        keel_snapshot_release(&snap);
        if (rc != 0)
            goto out;
        tc->rows += m.ranges[i].rows;
    }
    rc = keel_manifest_encode(&env, &m, tc->key, err);
    if (rc != 0)
        goto out;
    keel_store_be64(key, m.id);
    rc = keel_store_put(s, txn, KEEL_DB_CKPT_MANIFEST, key, sizeof(key), env.buf, env.len, err);
    if (rc != 0)
        goto out;
    snprintf(detail, sizeof(detail), "%zu range(s), %" PRIu64 " row(s), clock %" PRIu64, nranges,
             tc->rows, m.clock);
    rc = keel_audit_append_txn(s, txn, KEEL_AUDIT_TAKEN, m.job, m.id, detail, NULL, err);
    tc->id = m.id;
    tc->nranges = nranges;
out:
    free(ranges);
    keel_buf_release(&env);
    keel_manifest_release(&m);
    return rc;
}

int keel_checkpoint_take(keel_store *s, const struct keel_ckpt_key *key,
                         const struct keel_ckpt_params *p, uint64_t *id, struct keel_error *err)
{
    struct take_ctx tc = {s, key, p, 0, 0, 0};
    int rc;

    if (p->job == NULL || p->job[0] == '\0' || strlen(p->job) > KEEL_CKPT_MAX_JOB)
        return keel_err_set(err, KEEL_EINVAL, "checkpoint: job name must be 1..%d bytes",
                            KEEL_CKPT_MAX_JOB);
    rc = keel_store_write(s, take_fn, &tc, err);
    if (rc != 0)
        return rc;
    KEEL_LOG_INFO("took checkpoint %" PRIu64 " of job '%s': %zu range(s), %" PRIu64 " row(s)",
                  tc.id, p->job, tc.nranges, tc.rows);
    if (id != NULL)
        *id = tc.id;
    return 0;
}

/* ---- list and read ------------------------------------------------------- */

struct list_ctx {
    keel_store *s;
    uint64_t *ids;
    size_t n;
};

static int list_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct list_ctx *l = ctx;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc, op = MDB_FIRST;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(l->s, KEEL_DB_CKPT_MANIFEST), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot list checkpoints");
    while ((rc = mdb_cursor_get(cur, &k, &v, op)) == 0) {
        op = MDB_NEXT;
        if (k.mv_size != 8)
            continue;
        KEEL_REALLOC_ARRAY(l->ids, l->n + 1);
        l->ids[l->n++] = keel_store_load_be64(k.mv_data);
    }
    mdb_cursor_close(cur);
    if (rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "cannot list checkpoints");
    return 0;
}

int keel_checkpoint_list(keel_store *s, uint64_t **ids, size_t *n, struct keel_error *err)
{
    struct list_ctx l = {s, NULL, 0};
    int rc = keel_store_read(s, list_fn, &l, err);

    if (rc != 0) {
        free(l.ids);
        l.ids = NULL;
        l.n = 0;
    }
    *ids = l.ids;
    *n = l.n;
    return rc;
}

static int get_manifest(keel_store *s, keel_txn *txn, uint64_t id, MDB_val *v,
                        struct keel_error *err)
{
    unsigned char key[8];
    int rc;

    keel_store_be64(key, id);
    rc = keel_store_get(s, txn, KEEL_DB_CKPT_MANIFEST, key, sizeof(key), v, err);
    if (rc == KEEL_ENOTFOUND)
        return keel_err_set(err, rc, "store '%s' has no checkpoint %" PRIu64, keel_store_dir(s),
                            id);
    return rc;
}

struct manifest_ctx {
    keel_store *s;
    uint64_t id;
    struct keel_manifest *m;
};

static int manifest_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct manifest_ctx *mc = ctx;
    MDB_val v;
    int rc = get_manifest(mc->s, txn, mc->id, &v, err);

    if (rc != 0)
        return rc;
    rc = keel_manifest_decode(v.mv_data, v.mv_size, mc->m, NULL, NULL, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "checkpoint %" PRIu64, mc->id);
    if (mc->m->id != mc->id) {
        keel_manifest_release(mc->m);
        return keel_err_set(err, KEEL_ECORRUPT,
                            "checkpoint %" PRIu64 ": manifest says it is checkpoint %" PRIu64,
                            mc->id, mc->m->id);
    }
    return 0;
}

int keel_checkpoint_manifest(keel_store *s, uint64_t id, struct keel_manifest *m,
                             struct keel_error *err)
{
    struct manifest_ctx mc = {s, id, m};

    memset(m, 0, sizeof(*m));
    return keel_store_read(s, manifest_fn, &mc, err);
}

/*
 * Load one range of a checkpoint into an owned snapshot, checking every block
 * against the manifest's table directory and feeding the canonical digest to
 * `md` when non-NULL.  Errors say "range R: ...".
 */
static int load_range(keel_store *s, keel_txn *txn, uint64_t id, const struct keel_ckpt_range *r,
                      struct keel_snapshot *snap, EVP_MD_CTX *md, struct keel_error *err)
{
    unsigned char key[ROW_KEY_SIZE];
    MDB_val k = {sizeof(key), key}, v;
    MDB_cursor *cur;
    uint32_t block = 0;
    int rc;

    memset(snap, 0, sizeof(*snap));
    snap->owned = 1;
    snap->range = r->range;
    snap->lsn = r->lsn;
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_CKPT_ROWS), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "range %" PRIu32, r->range);
    KEEL_ALLOC_ARRAY(snap->tables, r->ntables);
    row_key(key, id, r->range, 0);
    for (size_t i = 0; i < r->ntables; i++) {
        const struct keel_ckpt_table *ct = &r->tables[i];
        struct keel_snap_table *t = &snap->tables[i];

        snap->ntables++;
        t->table_id = ct->table_id;
        t->width = ct->width;
        t->state_width = ct->state_width;
        t->keys = keel_malloc(keel_size_mul(ct->rows, 8));
        t->rows = keel_malloc(keel_size_mul(keel_size_mul(ct->rows, ct->width), 4));
        if (ct->state_width > 0)
            t->state = keel_malloc(keel_size_mul(keel_size_mul(ct->rows, ct->state_width), 4));
        for (uint32_t j = 0; j < ct->blocks; j++, block++) {
            struct keel__snap_block b;
            uint64_t first = t->nrows;

            rc = mdb_cursor_get(cur, &k, &v, block == 0 ? MDB_SET_RANGE : MDB_NEXT);
            if (rc == 0 && (k.mv_size != ROW_KEY_SIZE || keel_store_load_be64(k.mv_data) != id ||
                            keel_store_load_be32((unsigned char *)k.mv_data + 8) != r->range ||
                            keel_store_load_be32((unsigned char *)k.mv_data + 12) != block))
                rc = MDB_NOTFOUND;
            if (rc == MDB_NOTFOUND) {
                rc = keel_err_set(err, KEEL_ECORRUPT,
                                  "range %" PRIu32 ": block %" PRIu32 " is missing", r->range,
                                  block);
                goto out;
            }
            if (rc != 0) {
                rc = keel_store_mdb_err(err, rc, "range %" PRIu32 ": block %" PRIu32, r->range,
                                        block);
                goto out;
            }
            rc = keel__block_decode(v.mv_data, v.mv_size, &b, err);
            if (rc == 0 && (b.table_id != t->table_id || b.width != t->width ||
                            b.state_width != t->state_width || b.count > ct->rows - t->nrows))
                rc = keel_err_set(err, KEEL_ECORRUPT,
                                  "does not match table %" PRIu32 " of the manifest", t->table_id);
            if (rc != 0) {
                keel_err_prefix(err, rc, "range %" PRIu32 ": block %" PRIu32, r->range, block);
                goto out;
            }
            memcpy(t->keys + first, b.keys, (size_t)b.count * 8);
            memcpy(t->rows + first * t->width, b.rows, (size_t)b.count * t->width * 4);
            if (t->state_width > 0)
                memcpy(t->state + first * t->state_width, b.state,
                       (size_t)b.count * t->state_width * 4);
            for (uint64_t row = first; row < first + b.count; row++)
                if (KEEL_KEY_TABLE(t->keys[row]) != t->table_id ||
                    (row > 0 && t->keys[row] <= t->keys[row - 1])) {
                    rc = keel_err_set(err, KEEL_ECORRUPT,
                                      "range %" PRIu32 ": block %" PRIu32 ": key 0x%016" PRIx64
                                      " out of order or of another table",
                                      r->range, block, t->keys[row]);
                    goto out;
                }
            t->nrows += b.count;
            if (md != NULL)
                digest_rows(md, t, first, b.count);
        }
        if (t->nrows != ct->rows) {
            rc = keel_err_set(err, KEEL_ECORRUPT,
                              "range %" PRIu32 ": table %" PRIu32 " has %" PRIu64
                              " rows, the manifest says %" PRIu64,
                              r->range, t->table_id, t->nrows, ct->rows);
            goto out;
        }
    }
    /* No block may follow the last one the manifest names. */
    rc = mdb_cursor_get(cur, &k, &v, block == 0 ? MDB_SET_RANGE : MDB_NEXT);
    if (rc == 0 && k.mv_size == ROW_KEY_SIZE && keel_store_load_be64(k.mv_data) == id &&
        keel_store_load_be32((unsigned char *)k.mv_data + 8) == r->range) {
        rc = keel_err_set(err, KEEL_ECORRUPT,
                          "range %" PRIu32 ": more blocks than the %" PRIu32 " the manifest says",
                          r->range, r->blocks);
        goto out;
    }
    rc = 0;
    KEEL_ALLOC_ARRAY(snap->shards, r->nshards);
    if (r->nshards > 0)
        memcpy(snap->shards, r->shards, r->nshards * sizeof(r->shards[0]));
    snap->nshards = r->nshards;
out:
    mdb_cursor_close(cur);
    if (rc != 0)
        keel_snapshot_release(snap);
    return rc;
}

/* ---- verify -------------------------------------------------------------- */

struct verify_ctx {
    keel_store *s;
    const struct keel_ckpt_key *key;
    uint64_t id;
    char job[KEEL_CKPT_MAX_JOB + 1];
};

static int verify_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct verify_ctx *vc = ctx;
    struct keel_manifest m = {0};
    struct keel_view json;
    unsigned char mac[32], want[32], digest[32];
    unsigned int n = 32;
    MDB_val v, pv;
    uint64_t prev;
    int rc;

    rc = get_manifest(vc->s, txn, vc->id, &v, err);
    if (rc != 0)
        return rc;
    rc = keel_manifest_decode(v.mv_data, v.mv_size, &m, mac, &json, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "checkpoint %" PRIu64 ": manifest", vc->id);
    snprintf(vc->job, sizeof(vc->job), "%s", m.job);
    if (HMAC(EVP_sha256(), vc->key->bytes, (int)vc->key->len, json.data, json.len, want, &n) ==
            NULL ||
        CRYPTO_memcmp(want, mac, 32) != 0) {
        rc = keel_err_set(err, KEEL_ECHECKSUM,
                          "checkpoint %" PRIu64
                          ": manifest signature does not match (altered, or another key)",
                          vc->id);
        goto out;
    }
    if (m.id != vc->id) {
        rc = keel_err_set(err, KEEL_ECORRUPT,
                          "checkpoint %" PRIu64 ": manifest says it is checkpoint %" PRIu64, vc->id,
                          m.id);
        goto out;
    }
    for (size_t i = 0; i < m.nranges; i++) {
        EVP_MD_CTX *md = EVP_MD_CTX_new();
        struct keel_snapshot snap = {0};

        EVP_DigestInit_ex(md, EVP_sha256(), NULL);
        rc = load_range(vc->s, txn, vc->id, &m.ranges[i], &snap, md, err);
        EVP_DigestFinal_ex(md, digest, &n);
        EVP_MD_CTX_free(md);
        if (rc != 0) {
            keel_err_prefix(err, rc, "checkpoint %" PRIu64, vc->id);
            goto out;
        }
        keel_snapshot_release(&snap);
        if (memcmp(digest, m.ranges[i].sha256, 32) != 0) {
            rc = keel_err_set(err, KEEL_ECHECKSUM,
                              "checkpoint %" PRIu64 ": range %" PRIu32
                              ": SHA-256 of the rows does not match the manifest",
                              vc->id, m.ranges[i].range);
            goto out;
        }
    }
    rc = prev_id(vc->s, txn, vc->id, &prev, &pv, err);
    if (rc != 0)
        goto out;
    if (prev != 0) {
        keel_sha256(digest, pv.mv_data, pv.mv_size);
        if (prev != vc->id - 1 || memcmp(digest, m.prev_sha256, 32) != 0) {
            rc = keel_err_set(err, KEEL_ECHECKSUM,
                              "checkpoint %" PRIu64
                              ": previous manifest digest does not match checkpoint %" PRIu64,
                              vc->id, prev);
            goto out;
        }
    }
out:
    keel_manifest_release(&m);
    return rc;
}

int keel_checkpoint_verify(keel_store *s, const struct keel_ckpt_key *key, uint64_t id, int record,
                           struct keel_error *err)
{
    struct verify_ctx vc = {s, key, id, ""};
    struct keel_error aerr;
    int rc = keel_store_read(s, verify_fn, &vc, err);

    if (record && rc != KEEL_ENOTFOUND) {
        keel_error_init(&aerr);
        int arc =
            keel_audit_append(s, KEEL_AUDIT_VERIFIED, vc.job, id,
                              rc == 0 ? "ok" : (err != NULL ? err->msg : "failed"), NULL, &aerr);
        if (arc != 0)
            KEEL_LOG_WARN("cannot record the verification in the audit chain: %s", aerr.msg);
    }
    return rc;
}

/* ---- tables: gather, diff, export ---------------------------------------- */

size_t keel_manifest_tables(const struct keel_manifest *m, uint32_t **ids)
{
    size_t n = 0;

    *ids = NULL;
    for (size_t i = 0; i < m->nranges; i++)
        for (size_t t = 0; t < m->ranges[i].ntables; t++) {
            uint32_t id = m->ranges[i].tables[t].table_id;
            size_t j = 0;
            while (j < n && (*ids)[j] < id)
                j++;
            if (j < n && (*ids)[j] == id)
                continue;
            KEEL_REALLOC_ARRAY(*ids, n + 1);
            memmove(&(*ids)[j + 1], &(*ids)[j], (n - j) * sizeof(**ids));
            (*ids)[j] = id;
            n++;
        }
    return n;
}

struct gather_ctx {
    keel_store *s;
    const struct keel_manifest *m;
    uint32_t table_id;
    struct keel_snap_table *out;
};

struct key_index {
    uint64_t key;
    uint64_t index;
};

static int cmp_key_index(const void *a, const void *b)
{
    const struct key_index *x = a, *y = b;

    return x->key < y->key ? -1 : x->key > y->key;
}

static int gather_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct gather_ctx *g = ctx;
    struct keel_snap_table all = {0}, *t = g->out;
    uint64_t cap = 0;
    int found = 0, rc = 0;

    for (size_t i = 0; i < g->m->nranges; i++) {
        const struct keel_ckpt_range *r = &g->m->ranges[i];
        struct keel_snapshot snap = {0};
        struct keel_snap_table *st;
        int has = 0;

        for (size_t j = 0; j < r->ntables; j++)
            has |= r->tables[j].table_id == g->table_id;
        if (!has)
            continue;
        rc = load_range(g->s, txn, g->m->id, r, &snap, NULL, err);
        if (rc != 0) {
            keel_err_prefix(err, rc, "checkpoint %" PRIu64, g->m->id);
            break;
        }
        st = keel_snapshot_table(&snap, g->table_id);
        if (!found) {
            all.table_id = st->table_id;
            all.width = st->width;
            all.state_width = st->state_width;
            found = 1;
        } else if (st->width != all.width || st->state_width != all.state_width) {
            keel_snapshot_release(&snap);
            rc = keel_err_set(err, KEEL_ECORRUPT,
                              "checkpoint %" PRIu64 ": table %" PRIu32
                              " has different widths in range %" PRIu32,
                              g->m->id, g->table_id, r->range);
            break;
        }
        if (st->nrows == 0) { /* a range that holds none of the table's rows */
            keel_snapshot_release(&snap);
            continue;
        }
        if (all.nrows + st->nrows > cap) {
            cap = (all.nrows + st->nrows) * 2;
            KEEL_REALLOC_ARRAY(all.keys, cap);
            all.rows = keel_reallocarray(all.rows, cap, (size_t)all.width * 4);
            if (all.state_width > 0)
                all.state = keel_reallocarray(all.state, cap, (size_t)all.state_width * 4);
        }
        memcpy(all.keys + all.nrows, st->keys, st->nrows * 8);
        memcpy(all.rows + all.nrows * all.width, st->rows, st->nrows * all.width * 4);
        if (all.state_width > 0)
            memcpy(all.state + all.nrows * all.state_width, st->state,
                   st->nrows * all.state_width * 4);
        all.nrows += st->nrows;
        keel_snapshot_release(&snap);
    }
    if (rc == 0 && !found)
        rc = keel_err_set(err, KEEL_ENOTFOUND, "checkpoint %" PRIu64 " has no table %" PRIu32,
                          g->m->id, g->table_id);
    if (rc != 0) {
        free(all.keys);
        free(all.rows);
        free(all.state);
        return rc;
    }
    /* Ranges interleave keys: sort the rows by key. */
    struct key_index *order = keel_calloc(all.nrows ? all.nrows : 1, sizeof(*order));
    for (uint64_t r = 0; r < all.nrows; r++) {
        order[r].key = all.keys[r];
        order[r].index = r;
    }
    qsort(order, all.nrows, sizeof(*order), cmp_key_index);
    *t = all;
    t->keys = keel_calloc(all.nrows ? all.nrows : 1, 8);
    t->rows = keel_calloc(all.nrows ? all.nrows : 1, (size_t)all.width * 4);
    t->state = all.state_width ? keel_calloc(all.nrows ? all.nrows : 1, (size_t)all.state_width * 4)
                               : NULL;
    for (uint64_t r = 0; r < all.nrows; r++) {
        uint64_t src = order[r].index;
        t->keys[r] = order[r].key;
        memcpy(t->rows + r * all.width, all.rows + src * all.width, (size_t)all.width * 4);
        if (all.state_width)
            memcpy(t->state + r * all.state_width, all.state + src * all.state_width,
                   (size_t)all.state_width * 4);
    }
    free(order);
    free(all.keys);
    free(all.rows);
    free(all.state);
    return 0;
}

int keel_checkpoint_table(keel_store *s, const struct keel_manifest *m, uint32_t table_id,
                          struct keel_snap_table *t, struct keel_error *err)
{
    struct gather_ctx g = {s, m, table_id, t};

    memset(t, 0, sizeof(*t));
    return keel_store_read(s, gather_fn, &g, err);
}

static void free_table(struct keel_snap_table *t)
{
    free(t->keys);
    free(t->rows);
    free(t->state);
    memset(t, 0, sizeof(*t));
}

/* Rows changed and the L2 norm of b - a, walking both tables in key order. */
static void diff_tables(const struct keel_snap_table *a, const struct keel_snap_table *b,
                        struct keel_ckpt_diff *d)
{
    uint64_t i = 0, j = 0;
    double sum = 0;
    uint32_t w = a->nrows ? a->width : b->width;

    d->rows_a = a->nrows;
    d->rows_b = b->nrows;
    if (a->nrows && b->nrows && a->width != b->width) {
        d->width_differs = 1;
        d->changed = a->nrows > b->nrows ? a->nrows : b->nrows;
        d->l2 = NAN;
        return;
    }
    while (i < a->nrows || j < b->nrows) {
        int cmp = i == a->nrows             ? 1
                  : j == b->nrows           ? -1
                  : a->keys[i] < b->keys[j] ? -1
                  : a->keys[i] > b->keys[j] ? 1
                                            : 0;
        const float *ra = cmp <= 0 ? a->rows + i * w : NULL;
        const float *rb = cmp >= 0 ? b->rows + j * w : NULL;
        int differs = cmp != 0;

        for (uint32_t c = 0; c < w; c++) {
            double x = ra ? ra[c] : 0, y = rb ? rb[c] : 0;
            if (x != y || (cmp == 0 && memcmp(&ra[c], &rb[c], 4) != 0))
                differs = 1;
            sum += (y - x) * (y - x);
        }
        d->changed += differs;
        if (cmp <= 0)
            i++;
        if (cmp >= 0)
            j++;
    }
    d->l2 = sqrt(sum);
}

int keel_checkpoint_diff(keel_store *s, uint64_t a, uint64_t b, struct keel_ckpt_diff **diffs,
                         size_t *n, struct keel_error *err)
{
    struct keel_manifest ma = {0}, mb = {0};
    uint32_t *ta = NULL, *tb = NULL, *all = NULL;
    size_t na, nb, nall = 0;
    int rc;

    *diffs = NULL;
    *n = 0;
    rc = keel_checkpoint_manifest(s, a, &ma, err);
    if (rc != 0)
        return rc;
    rc = keel_checkpoint_manifest(s, b, &mb, err);
    if (rc != 0) {
        keel_manifest_release(&ma);
        return rc;
    }
    na = keel_manifest_tables(&ma, &ta);
    nb = keel_manifest_tables(&mb, &tb);
    KEEL_ALLOC_ARRAY(all, na + nb + 1);
    for (size_t i = 0, j = 0; i < na || j < nb;) {
        if (j == nb || (i < na && ta[i] < tb[j]))
            all[nall++] = ta[i++];
        else if (i == na || tb[j] < ta[i])
            all[nall++] = tb[j++];
        else {
            all[nall++] = ta[i++];
            j++;
        }
    }
    KEEL_ALLOC_ARRAY(*diffs, nall + 1);
    for (size_t i = 0; i < nall; i++) {
        struct keel_snap_table x = {0}, y = {0};
        struct keel_ckpt_diff *d = &(*diffs)[i];

        d->table_id = all[i];
        rc = keel_checkpoint_table(s, &ma, all[i], &x, err);
        if (rc == KEEL_ENOTFOUND)
            rc = 0;
        if (rc == 0) {
            rc = keel_checkpoint_table(s, &mb, all[i], &y, err);
            if (rc == KEEL_ENOTFOUND)
                rc = 0;
        }
        if (rc == 0)
            diff_tables(&x, &y, d);
        free_table(&x);
        free_table(&y);
        if (rc != 0)
            break;
    }
    if (rc == 0) {
        *n = nall;
    } else {
        free(*diffs);
        *diffs = NULL;
    }
    free(ta);
    free(tb);
    free(all);
    keel_manifest_release(&ma);
    keel_manifest_release(&mb);
    return rc;
}

/*
 * Write a NumPy .npy (format 1.0) file: `dtype` "<f4" or "<u8", a 1-D array
 * when cols is 0, else 2-D (rows, cols), C order, from `data`.
 */
static int npy_write(const char *path, const char *dtype, uint64_t rows, uint64_t cols,
                     const void *data, size_t elem_size, struct keel_error *err)
{
    char header[256], tmp[4096];
    unsigned char pre[10];
    size_t hlen, total, bytes;
    const unsigned char *p = data;
    int fd, n;

    if (cols == 0)
        n = snprintf(header, sizeof(header),
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%" PRIu64 ",), }", dtype,
                     rows);
    else
        n = snprintf(header, sizeof(header),
                     "{'descr': '%s', 'fortran_order': False, 'shape': (%" PRIu64 ", %" PRIu64
                     "), }",
                     dtype, rows, cols);
    /* Pad with spaces and end with '\n' so that the data starts 64-byte aligned. */
    hlen = (size_t)n + 1;
    total = (10 + hlen + 63) / 64 * 64;
    memset(header + n, ' ', total - 10 - (size_t)n);
    header[total - 10 - 1] = '\n';
    hlen = total - 10;
    memcpy(pre, "\x93NUMPY", 6);
    pre[6] = 1;
    pre[7] = 0;
    keel_store_u16le(pre + 8, (uint16_t)hlen);
    /*
     * A new file of an unpredictable name (mkostemp: O_CREAT | O_EXCL), so a
     * name planted in the directory, a symbolic link say, is never written
     * through; renamed over `path` once complete.
     */
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s.XXXXXX", path) >= sizeof(tmp))
        return keel_err_set(err, KEEL_EINVAL, "path '%s' is too long", path);
    fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0)
        return keel_err_set(err, -errno, "cannot create a file beside '%s': %s", path,
                            strerror(errno));
    if (fchmod(fd, 0644) != 0)
        goto fail;
    bytes = keel_size_mul(keel_size_mul(rows, cols ? cols : 1), elem_size);
    if (write(fd, pre, sizeof(pre)) != (ssize_t)sizeof(pre) ||
        write(fd, header, hlen) != (ssize_t)hlen)
        goto fail;
    while (bytes > 0) {
        ssize_t w = write(fd, p, bytes > (1u << 30) ? (1u << 30) : bytes);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            goto fail;
        p += w;
        bytes -= (size_t)w;
    }
    if (fsync(fd) != 0)
        goto fail;
    close(fd);
    if (rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return keel_err_set(err, -e, "cannot rename '%s' to '%s': %s", tmp, path, strerror(e));
    }
    return 0;
fail : {
    int e = errno ? errno : EIO;
    close(fd);
    unlink(tmp);
    return keel_err_set(err, -e, "cannot write '%s': %s", path, strerror(e));
}
}

static int fsync_dir(const char *dir, struct keel_error *err)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), rc = 0;

    if (fd < 0)
        return keel_err_set(err, -errno, "cannot open directory '%s': %s", dir, strerror(errno));
    if (fsync(fd) != 0)
        rc = keel_err_set(err, -errno, "cannot sync directory '%s': %s", dir, strerror(errno));
    close(fd);
    return rc;
}

int keel_checkpoint_export(keel_store *s, uint64_t id, const char *dir, struct keel_error *err)
{
    struct keel_manifest m = {0};
    uint32_t *tables = NULL;
    size_t ntables;
    char path[4096], detail[256];
    int rc;

    rc = keel_checkpoint_manifest(s, id, &m, err);
    if (rc != 0)
        return rc;
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        rc = keel_err_set(err, -errno, "cannot create directory '%s': %s", dir, strerror(errno));
        goto out;
    }
    ntables = keel_manifest_tables(&m, &tables);
    for (size_t i = 0; i < ntables && rc == 0; i++) {
        struct keel_snap_table t = {0};

        rc = keel_checkpoint_table(s, &m, tables[i], &t, err);
        if (rc != 0)
            break;
        snprintf(path, sizeof(path), "%s/table_%" PRIu32 ".npy", dir, tables[i]);
        rc = npy_write(path, "<f4", t.nrows, t.width, t.rows, 4, err);
        if (rc == 0) {
            snprintf(path, sizeof(path), "%s/table_%" PRIu32 ".keys.npy", dir, tables[i]);
            rc = npy_write(path, "<u8", t.nrows, 0, t.keys, 8, err);
        }
        if (rc == 0 && t.state_width > 0) {
            snprintf(path, sizeof(path), "%s/table_%" PRIu32 ".state.npy", dir, tables[i]);
            rc = npy_write(path, "<f4", t.nrows, t.state_width, t.state, 4, err);
        }
        KEEL_LOG_INFO("exported table %" PRIu32 " of checkpoint %" PRIu64 ": %" PRIu64
                      " rows of %" PRIu32,
                      tables[i], id, t.nrows, t.width);
        free_table(&t);
    }
    if (rc == 0)
        rc = fsync_dir(dir, err);
    if (rc == 0) {
        snprintf(detail, sizeof(detail), "%zu table(s) to %s", ntables, dir);
        rc = keel_audit_append(s, KEEL_AUDIT_EXPORTED, m.job, id, detail, NULL, err);
    }
out:
    free(tables);
    keel_manifest_release(&m);
    return rc;
}

/* ---- restore and prune --------------------------------------------------- */

struct restore_ctx {
    keel_store *src, *dst;
    keel_txn *src_txn; /* a read transaction of src, when it is not dst */
    uint64_t id;
    const unsigned char *only; /* ranges to restore (NULL: all) */
};

/* In a write transaction of dst: the checkpoint's ranges (from src) become dst's snapshots. */
static int restore_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct restore_ctx *rc_ = ctx;
    keel_txn *from = rc_->src == rc_->dst ? txn : rc_->src_txn;
    struct keel_manifest m = {0};
    MDB_val v;
    char detail[96];
    size_t n = 0;
    int rc;

    rc = get_manifest(rc_->src, from, rc_->id, &v, err);
    if (rc != 0)
        return rc;
    rc = keel_manifest_decode(v.mv_data, v.mv_size, &m, NULL, NULL, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "checkpoint %" PRIu64, rc_->id);
    for (size_t i = 0; i < m.nranges && rc == 0; i++) {
        struct keel_snapshot snap = {0};

        if (rc_->only && (m.ranges[i].range >= KEEL_PROTO_NRANGES || !rc_->only[m.ranges[i].range]))
            continue;
        rc = load_range(rc_->src, from, rc_->id, &m.ranges[i], &snap, NULL, err);
        if (rc != 0)
            break;
        /* The log after the checkpoint is rolled back with the rows. */
        rc = keel_snapshot_put(rc_->dst, txn, &snap, err);
        if (rc == 0)
            rc = keel_ulog_truncate_txn(rc_->dst, txn, snap.range, UINT64_MAX, NULL, err);
        keel_snapshot_release(&snap);
        n++;
    }
    if (rc == 0) {
        if (rc_->src == rc_->dst)
            snprintf(detail, sizeof(detail), "%zu range(s) rolled back", n);
        else
            snprintf(detail, sizeof(detail), "%zu range(s) rolled back from another store", n);
        rc = keel_audit_append_txn(rc_->dst, txn, KEEL_AUDIT_RESTORED, m.job, rc_->id, detail, NULL,
                                   err);
    }
    keel_manifest_release(&m);
    return rc;
}

int keel_checkpoint_restore_into(keel_store *src, const struct keel_ckpt_key *key, uint64_t id,
                                 keel_store *dst, const unsigned char *only, struct keel_error *err)
{
    struct restore_ctx r = {src, dst, NULL, id, only};
    int rc = keel_checkpoint_verify(src, key, id, 0, err);

    if (rc != 0)
        return keel_err_prefix(err, rc, "will not restore");
    if (src != dst && (rc = keel_store_read_begin(src, &r.src_txn, err)) != 0)
        return rc;
    rc = keel_store_write(dst, restore_fn, &r, err);
    if (r.src_txn)
        keel_store_read_end(src, r.src_txn);
    if (rc == 0)
        KEEL_LOG_INFO("restored checkpoint %" PRIu64 " of '%s' into the range snapshots of '%s'",
                      id, keel_store_dir(src), keel_store_dir(dst));
    return rc;
}

int keel_checkpoint_restore(keel_store *s, const struct keel_ckpt_key *key, uint64_t id,
                            struct keel_error *err)
{
    return keel_checkpoint_restore_into(s, key, id, s, NULL, err);
}

struct prune_ctx {
    keel_store *s;
    size_t keep;
    size_t pruned;
};

static int delete_checkpoint(keel_store *s, keel_txn *txn, uint64_t id, struct keel_error *err)
{
    unsigned char key[ROW_KEY_SIZE];
    MDB_val k = {sizeof(key), key}, v;
    MDB_cursor *cur;
    int rc;

    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(s, KEEL_DB_CKPT_ROWS), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot prune checkpoint %" PRIu64, id);
    row_key(key, id, 0, 0);
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    while (rc == 0 && k.mv_size == ROW_KEY_SIZE && keel_store_load_be64(k.mv_data) == id) {
        rc = mdb_cursor_del(cur, 0);
        if (rc == 0)
            rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    }
    mdb_cursor_close(cur);
    if (rc != 0 && rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "cannot prune checkpoint %" PRIu64, id);
    keel_store_be64(key, id);
    return keel_store_del(s, txn, KEEL_DB_CKPT_MANIFEST, key, 8, err);
}

static int prune_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct prune_ctx *p = ctx;
    struct list_ctx l = {p->s, NULL, 0};
    int rc = list_fn(txn, &l, err);

    p->pruned = 0;
    for (size_t i = 0; rc == 0 && i + p->keep < l.n; i++) {
        char detail[64];
        MDB_val v;
        struct keel_manifest m = {0};
        char job[KEEL_CKPT_MAX_JOB + 1] = "";

        /* The job name for the audit record, when the manifest still decodes. */
        if (get_manifest(p->s, txn, l.ids[i], &v, NULL) == 0 &&
            keel_manifest_decode(v.mv_data, v.mv_size, &m, NULL, NULL, NULL) == 0) {
            snprintf(job, sizeof(job), "%s", m.job);
            keel_manifest_release(&m);
        }
        rc = delete_checkpoint(p->s, txn, l.ids[i], err);
        if (rc == 0) {
            snprintf(detail, sizeof(detail), "keep last %zu", p->keep);
            rc = keel_audit_append_txn(p->s, txn, KEEL_AUDIT_PRUNED, job, l.ids[i], detail, NULL,
                                       err);
        }
        if (rc == 0)
            p->pruned++;
    }
    free(l.ids);
    return rc;
}

int keel_checkpoint_prune(keel_store *s, size_t keep, size_t *pruned, struct keel_error *err)
{
    struct prune_ctx p = {s, keep, 0};
    int rc = keel_store_write(s, prune_fn, &p, err);

    if (rc == 0 && p.pruned > 0)
        KEEL_LOG_INFO("pruned %zu checkpoint(s) of '%s', kept the last %zu", p.pruned,
                      keel_store_dir(s), keep);
    if (pruned != NULL)
        *pruned = rc == 0 ? p.pruned : 0;
    return rc;
}
