/*
 * test_audit.c - the hash-chained audit log: appends, the decoder, and every
 * kind of tampering found and named.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/audit.h"
#include "keel/store.h"
#include "store_int.h"

static char tmpdir[64];
static struct keel_error err;
static keel_store *store;

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/keel-test-audit-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    keel_error_init(&err);
    cr_assert_eq(keel_store_open(&store, tmpdir, NULL, &err), 0, "%s", err.msg);
    for (unsigned i = 1; i <= 6; i++) {
        uint64_t seq;
        char detail[32];
        snprintf(detail, sizeof(detail), "event %u", i);
        cr_assert_eq(keel_audit_append(store, 1 + (i - 1) % 5, "job", i, detail, &seq, &err), 0,
                     "%s", err.msg);
        cr_assert_eq(seq, i);
    }
}

static void teardown(void)
{
    char cmd[128];

    keel_store_close(store);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(audit, .init = setup, .fini = teardown);

struct edit {
    uint64_t seq;
    size_t offset;
    int remove;
};

static int edit_fn(keel_txn *txn, void *ctx, struct keel_error *e)
{
    struct edit *ed = ctx;
    unsigned char key[8];
    MDB_val v;
    int rc;

    keel_store_be64(key, ed->seq);
    if (ed->remove)
        return keel_store_del(store, txn, KEEL_DB_AUDIT, key, 8, e);
    rc = keel_store_get(store, txn, KEEL_DB_AUDIT, key, 8, &v, e);
    if (rc != 0)
        return rc;
    unsigned char *copy = keel_malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[ed->offset] ^= 0x01;
    rc = keel_store_put(store, txn, KEEL_DB_AUDIT, key, 8, copy, v.mv_size, e);
    free(copy);
    return rc;
}

static void edit(uint64_t seq, size_t offset, int remove)
{
    struct edit ed = {seq, offset, remove};

    cr_assert_eq(keel_store_write(store, edit_fn, &ed, &err), 0, "%s", err.msg);
}

static int count_fn(const struct keel_audit_record *rec, void *ctx, struct keel_error *e)
{
    int *n = ctx;

    (*n)++;
    return 0;
}

Test(audit, an_intact_chain_verifies)
{
    uint64_t count;
    int seen = 0;

    cr_assert_eq(keel_audit_verify(store, count_fn, &seen, &count, &err), 0, "%s", err.msg);
    cr_assert_eq(count, 6);
    cr_assert_eq(seen, 6);
    cr_assert_str_eq(keel_audit_event_name(KEEL_AUDIT_PRUNED), "pruned");
    cr_assert_str_eq(keel_audit_event_name(99), "unknown");
}

Test(audit, a_flipped_byte_in_the_detail_is_found)
{
    edit(3, KEEL_AUDIT_HEADER_SIZE + 4, 0);
    cr_assert_eq(keel_audit_verify(store, NULL, NULL, NULL, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "audit record 4: does not chain to record 3") != NULL, "%s", err.msg);
}

Test(audit, a_flipped_byte_in_the_last_record_is_found)
{
    edit(6, 20, 0);
    cr_assert_eq(keel_audit_verify(store, NULL, NULL, NULL, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "audit record 6") != NULL, "%s", err.msg);
}

Test(audit, a_damaged_header_is_named)
{
    edit(2, 0, 0);
    cr_assert_eq(keel_audit_verify(store, NULL, NULL, NULL, &err), KEEL_EMAGIC);
    cr_assert(strstr(err.msg, "audit record 2: offset 0: bad magic") != NULL, "%s", err.msg);
}

Test(audit, a_removed_record_is_named)
{
    edit(4, 0, 1);
    cr_assert_eq(keel_audit_verify(store, NULL, NULL, NULL, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "audit record 4 is missing") != NULL, "%s", err.msg);
}

Test(audit, a_removed_last_record_is_named)
{
    edit(6, 0, 1);
    cr_assert_eq(keel_audit_verify(store, NULL, NULL, NULL, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "audit record 6 is missing") != NULL, "%s", err.msg);
}

Test(audit, a_removed_first_record_is_named)
{
    edit(1, 0, 1);
    cr_assert_eq(keel_audit_verify(store, NULL, NULL, NULL, &err), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "audit record 1 is missing") != NULL, "%s", err.msg);
}

Test(audit, decoder_refuses_every_truncation)
{
    struct keel_audit_record rec = {0}, out;
    struct keel_buf b = KEEL_BUF_INIT;

    rec.seq = 9;
    rec.event = KEEL_AUDIT_TAKEN;
    snprintf(rec.job, sizeof(rec.job), "j");
    snprintf(rec.detail, sizeof(rec.detail), "some detail");
    keel_audit_encode(&b, &rec);
    for (size_t n = 0; n < b.len; n++)
        cr_assert_neq(keel_audit_decode(b.buf, n, &out, &err), 0, "length %zu", n);
    cr_assert_eq(keel_audit_decode(b.buf, b.len, &out, &err), 0, "%s", err.msg);
    cr_assert_str_eq(out.detail, "some detail");
    cr_assert_eq(out.seq, 9);
    keel_buf_release(&b);
}
