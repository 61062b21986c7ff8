/*
 * audit.c - the hash-chained audit log.
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "alloc.h"
#include "clock.h"
#include "digest.h"
#include "keel/audit.h"
#include "audit_int.h"
#include "store_int.h"

#define HEAD_KEY     "audit_head"
#define HEAD_KEY_LEN 10
#define HEAD_SIZE    40 /* seq u64 LE + SHA-256 */

const char *keel_audit_event_name(unsigned event)
{
    switch (event) {
#define KEEL__AUDIT_NAME(name, num, str)                                                           \
    case num:                                                                                      \
        return str;
        KEEL_AUDIT_EVENT_MAP(KEEL__AUDIT_NAME)
#undef KEEL__AUDIT_NAME
    default:
        return "unknown";
    }
}

void keel_audit_encode(struct keel_buf *out, const struct keel_audit_record *rec)
{
    size_t jlen = strnlen(rec->job, KEEL_AUDIT_MAX_JOB);
    size_t dlen = strnlen(rec->detail, KEEL_AUDIT_MAX_DETAIL);
    unsigned char *p = keel_buf_add_zero(out, KEEL_AUDIT_HEADER_SIZE + jlen + dlen);

    keel_store_u32le(p, KEEL_AUDIT_MAGIC);
    keel_store_u16le(p + 4, KEEL_AUDIT_VERSION);
    keel_store_u16le(p + 6, (uint16_t)rec->event);
    keel_store_u64le(p + 8, rec->seq);
    keel_store_u64le(p + 16, rec->time_ns);
    keel_store_u64le(p + 24, rec->checkpoint);
    memcpy(p + 32, rec->prev, 32);
    keel_store_u16le(p + 64, (uint16_t)jlen);
    keel_store_u16le(p + 66, (uint16_t)dlen);
    memcpy(p + KEEL_AUDIT_HEADER_SIZE, rec->job, jlen);
    memcpy(p + KEEL_AUDIT_HEADER_SIZE + jlen, rec->detail, dlen);
}

int keel_audit_decode(const void *data, size_t len, struct keel_audit_record *rec,
                      struct keel_error *err)
{
    const unsigned char *p = data;
    size_t jlen, dlen;

    memset(rec, 0, sizeof(*rec));
    if (len < KEEL_AUDIT_HEADER_SIZE)
        return keel_err_set(err, KEEL_ETRUNCATED, "%zu bytes, shorter than the %d-byte header", len,
                            KEEL_AUDIT_HEADER_SIZE);
    if (keel_load_u32le(p) != KEEL_AUDIT_MAGIC)
        return keel_err_set(err, KEEL_EMAGIC, "offset 0: bad magic");
    if (keel_load_u16le(p + 4) != KEEL_AUDIT_VERSION)
        return keel_err_set(err, KEEL_EVERSION, "offset 4: unknown version %u",
                            (unsigned)keel_load_u16le(p + 4));
    rec->event = keel_load_u16le(p + 6);
    if (strcmp(keel_audit_event_name(rec->event), "unknown") == 0)
        return keel_err_set(err, KEEL_EINVAL, "offset 6: unknown event %u", rec->event);
    if (keel_load_u32le(p + 68) != 0)
        return keel_err_set(err, KEEL_ERESERVED, "offset 68: reserved bytes not zero");
    rec->seq = keel_load_u64le(p + 8);
    rec->time_ns = keel_load_u64le(p + 16);
    rec->checkpoint = keel_load_u64le(p + 24);
    memcpy(rec->prev, p + 32, 32);
    jlen = keel_load_u16le(p + 64);
    dlen = keel_load_u16le(p + 66);
    if (jlen > KEEL_AUDIT_MAX_JOB || dlen > KEEL_AUDIT_MAX_DETAIL)
        return keel_err_set(err, KEEL_ESTRING, "offset 64: job or detail too long");
    if (len - KEEL_AUDIT_HEADER_SIZE != jlen + dlen)
        return keel_err_set(err, KEEL_ECOUNT,
                            "offset 64: job (%zu) and detail (%zu) do not fill %zu bytes", jlen,
                            dlen, len - KEEL_AUDIT_HEADER_SIZE);
    if (memchr(p + KEEL_AUDIT_HEADER_SIZE, '\0', jlen + dlen) != NULL)
        return keel_err_set(err, KEEL_ESTRING, "offset %d: NUL byte in job or detail",
                            KEEL_AUDIT_HEADER_SIZE);
    memcpy(rec->job, p + KEEL_AUDIT_HEADER_SIZE, jlen);
    memcpy(rec->detail, p + KEEL_AUDIT_HEADER_SIZE + jlen, dlen);
    keel_sha256(rec->hash, data, len);
    return 0;
}

/* Read the chain head: *seq 0 and zero hash when the chain is empty. */
static int read_head(keel_store *s, keel_txn *txn, uint64_t *seq, unsigned char *hash,
                     struct keel_error *err)
{
    MDB_val v;
    int rc = keel_store_get(s, txn, KEEL_DB_META, HEAD_KEY, HEAD_KEY_LEN, &v, err);

    *seq = 0;
    memset(hash, 0, 32);
    if (rc == KEEL_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    if (v.mv_size != HEAD_SIZE)
        return keel_err_set(err, KEEL_ECORRUPT, "audit chain head is %zu bytes, expected %d",
                            v.mv_size, HEAD_SIZE);
    *seq = keel_load_u64le(v.mv_data);
    memcpy(hash, (unsigned char *)v.mv_data + 8, 32);
    return 0;
}

int keel_audit_append_txn(keel_store *s, keel_txn *txn, unsigned event, const char *job,
                          uint64_t checkpoint, const char *detail, uint64_t *seq,
                          struct keel_error *err)
{
    struct keel_audit_record rec;
    struct keel_buf b = KEEL_BUF_INIT;
    unsigned char key[8], head[HEAD_SIZE];
    int rc;

    memset(&rec, 0, sizeof(rec));
    rc = read_head(s, txn, &rec.seq, rec.prev, err);
    if (rc != 0)
        return keel_err_prefix(err, rc, "store '%s'", keel_store_dir(s));
    rec.seq++;
    rec.time_ns = keel_clock_wall_ns();
    rec.event = event;
    rec.checkpoint = checkpoint;
    snprintf(rec.job, sizeof(rec.job), "%s", job ? job : "");
    snprintf(rec.detail, sizeof(rec.detail), "%s", detail ? detail : "");
    keel_audit_encode(&b, &rec);
    keel_store_be64(key, rec.seq);
    rc = keel_store_put(s, txn, KEEL_DB_AUDIT, key, sizeof(key), b.buf, b.len, err);
    if (rc == 0) {
        keel_store_u64le(head, rec.seq);
        keel_sha256(head + 8, b.buf, b.len);
        rc = keel_store_put(s, txn, KEEL_DB_META, HEAD_KEY, HEAD_KEY_LEN, head, sizeof(head), err);
    }
    keel_buf_release(&b);
    if (rc == 0 && seq != NULL)
        *seq = rec.seq;
    return rc;
}

struct append_ctx {
    keel_store *s;
    unsigned event;
    const char *job;
    uint64_t checkpoint;
    const char *detail;
    uint64_t *seq;
};

static int append_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct append_ctx *a = ctx;

    return keel_audit_append_txn(a->s, txn, a->event, a->job, a->checkpoint, a->detail, a->seq,
                                 err);
}

int keel_audit_append(keel_store *s, unsigned event, const char *job, uint64_t checkpoint,
                      const char *detail, uint64_t *seq, struct keel_error *err)
{
    struct append_ctx a = {s, event, job, checkpoint, detail, seq};

    return keel_store_write(s, append_fn, &a, err);
}

struct verify_ctx {
    keel_store *s;
    keel_audit_fn fn;
    void *ctx;
    uint64_t count;
};

static int verify_fn(keel_txn *txn, void *ctx, struct keel_error *err)
{
    struct verify_ctx *vc = ctx;
    struct keel_audit_record rec;
    unsigned char prev[32] = {0}, head_hash[32];
    uint64_t expect = 1, head_seq;
    MDB_cursor *cur;
    MDB_val k, v;
    int rc, op = MDB_FIRST;

    rc = read_head(vc->s, txn, &head_seq, head_hash, err);
    if (rc != 0)
        return rc;
    rc = mdb_cursor_open(keel_txn_mdb(txn), keel_store_dbi(vc->s, KEEL_DB_AUDIT), &cur);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot read the audit chain");
    for (;; op = MDB_NEXT) {
        uint64_t seq;

        rc = mdb_cursor_get(cur, &k, &v, op);
        if (rc == MDB_NOTFOUND) {
            rc = 0;
            break;
        }
        if (rc != 0) {
            rc = keel_store_mdb_err(err, rc, "cannot read the audit chain");
            break;
        }
        if (k.mv_size != 8) {
            rc = keel_err_set(err, KEEL_ECORRUPT, "audit record %" PRIu64 ": key of %zu bytes",
                              expect, k.mv_size);
            break;
        }
        seq = keel_store_load_be64(k.mv_data);
        if (seq != expect) {
            rc = keel_err_set(err, KEEL_ECORRUPT,
                              "audit record %" PRIu64 " is missing (the next is %" PRIu64 ")",
                              expect, seq);
            break;
        }
        rc = keel_audit_decode(v.mv_data, v.mv_size, &rec, err);
        if (rc != 0) {
            keel_err_prefix(err, rc, "audit record %" PRIu64, seq);
            break;
        }
        if (rec.seq != seq) {
            rc =
                keel_err_set(err, KEEL_ECORRUPT,
                             "audit record %" PRIu64 ": stored under %" PRIu64 " but says %" PRIu64,
                             seq, seq, rec.seq);
            break;
        }
        if (memcmp(rec.prev, prev, 32) != 0) {
            if (seq == 1)
                rc = keel_err_set(err, KEEL_ECHECKSUM,
                                  "audit record 1: the first record must chain to zeros");
            else
                rc = keel_err_set(err, KEEL_ECHECKSUM,
                                  "audit record %" PRIu64 ": does not chain to record %" PRIu64
                                  " (one of them was altered)",
                                  seq, seq - 1);
            break;
        }
        memcpy(prev, rec.hash, 32);
        if (vc->fn != NULL) {
            rc = vc->fn(&rec, vc->ctx, err);
            if (rc != 0)
                break;
        }
        expect++;
    }
    mdb_cursor_close(cur);
    if (rc != 0)
        return rc;
    vc->count = expect - 1;
    if (head_seq != expect - 1) {
        if (head_seq > expect - 1)
            return keel_err_set(err, KEEL_ECORRUPT,
                                "audit record %" PRIu64
                                " is missing (the chain head says the last is %" PRIu64 ")",
                                expect, head_seq);
        return keel_err_set(err, KEEL_ECORRUPT,
                            "audit record %" PRIu64 ": past the chain head (%" PRIu64 ")",
                            head_seq + 1, head_seq);
    }
    if (memcmp(head_hash, prev, 32) != 0)
        return keel_err_set(err, KEEL_ECHECKSUM,
                            "audit record %" PRIu64 ": does not match the chain head (altered)",
                            head_seq);
    return 0;
}

int keel_audit_verify(keel_store *s, keel_audit_fn fn, void *ctx, uint64_t *count,
                      struct keel_error *err)
{
    struct verify_ctx vc = {s, fn, ctx, 0};
    int rc = keel_store_read(s, verify_fn, &vc, err);

    if (count != NULL)
        *count = vc.count;
    return rc;
}
