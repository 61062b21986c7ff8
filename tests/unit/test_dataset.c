/*
 * test_dataset.c - datasets in a real LMDB store: import, round-robin shards,
 * reads for SHARD_DATA, immutability, atomicity (a failed or killed import
 * leaves nothing readers accept), and damage found by verify and by reads.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "keel/dataset.h"
#include "log.h"
#include "store_int.h"

static char tmpdir[64];
static char storedir[128];
static keel_store *store;
static struct keel_error err;

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/keel-test-dataset-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    snprintf(storedir, sizeof(storedir), "%s/node", tmpdir);
    keel_error_init(&err);
    keel_log_set_level(KEEL_LOG_LEVEL_WARN);
    cr_assert_eq(keel_store_open(&store, storedir, NULL, &err), 0, "%s", err.msg);
}

static void teardown(void)
{
    char cmd[128];

    keel_store_close(store);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(dataset, .init = setup, .fini = teardown);

/* Write a CSV of `n` records "label,i,-i" with label i % 3; returns its path. */
static const char *write_csv(const char *name, int n, const char *extra)
{
    static char path[160];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    f = fopen(path, "w");
    cr_assert_not_null(f);
    for (int i = 0; i < n; i++)
        fprintf(f, "%d,%d,%d\n", i % 3, i, -i);
    if (extra)
        fputs(extra, f);
    fclose(f);
    return path;
}

static int import_csv(const char *name, const char *path, uint32_t shards,
                      struct keel_dataset_info *info)
{
    struct keel_dataset_import_opts o = {.nshards = shards, .split = "train"};
    const char *files[1] = {path};

    keel_error_init(&err);
    return keel_dataset_import(store, name, KEEL_DATASET_CSV, files, 1, &o, info, &err);
}

/* Record `i` of the CSV: label i % 3, features (i, -i). */
static void assert_record(const unsigned char *rec, size_t len, int i)
{
    struct keel_record r;
    struct keel_error e;

    cr_assert_eq(keel_record_decode(rec, len, 2, &r, &e), 0, "%s", e.msg);
    cr_assert_eq(r.label, (uint32_t)(i % 3));
    cr_assert_eq(keel_record_dense_at(&r, 0), (float)i, "record %d", i);
    cr_assert_eq(keel_record_dense_at(&r, 1), (float)-i);
}

Test(dataset, import_deals_records_round_robin_to_shards)
{
    struct keel_dataset_info info, st;
    struct keel_shard_batch b;
    struct keel_msg_shard_data m;
    keel_dataset *ds;

    cr_assert_eq(import_csv("toy", write_csv("toy.csv", 10, NULL), 3, &info), 0, "%s", err.msg);
    cr_assert_eq(info.shape.nrecords, 10);
    cr_assert_eq(keel_dataset_stat(store, "toy", &st, &err), 0, "%s", err.msg);
    cr_assert(st.complete);
    cr_assert_eq(st.shape.nfeatures, 2);
    cr_assert_eq(st.shape.nclasses, 3);
    cr_assert_eq(st.shape.format, KEEL_DATASET_CSV);
    cr_assert_eq(st.nshards, 3);
    cr_assert_str_eq(st.split, "train");
    cr_assert_str_eq(st.sources, "toy.csv");
    cr_assert_eq(memcmp(st.digest, info.digest, 32), 0);

    cr_assert_eq(keel_dataset_open(store, "toy", &ds, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_dataset_shard_records(ds, 0), 4); /* records 0, 3, 6, 9 */
    cr_assert_eq(keel_dataset_shard_records(ds, 1), 3);
    cr_assert_eq(keel_dataset_shard_records(ds, 2), 3);
    cr_assert_eq(keel_dataset_shard_records(ds, 3), 0);
    keel_shard_batch_init(&b);
    cr_assert_eq(keel_dataset_read(ds, 0, 1, 100, 1 << 20, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(b.nrecords, 3);
    cr_assert_eq(b.first, 1);
    cr_assert_eq(b.total, 4);
    cr_assert(keel_shard_batch_message(&b, &m), "the batch ends the shard");
    cr_assert_eq(m.offsets[0], 0);
    cr_assert_eq(m.offsets[3], b.data.len);
    for (uint32_t i = 0; i < 3; i++)
        assert_record(m.data + m.offsets[i], m.offsets[i + 1] - m.offsets[i], (int)(3 * (i + 1)));

    /* max_records and the body limit cut the batch; a record too large is refused. */
    cr_assert_eq(keel_dataset_read(ds, 2, 0, 2, 1 << 20, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(b.nrecords, 2);
    cr_assert_eq(keel_shard_batch_message(&b, &m), 0);
    assert_record(m.data, m.offsets[1], 2);
    cr_assert_eq(keel_dataset_read(ds, 1, 0, 100, 24 + 12 + 2 * 20, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(b.nrecords, 2, "two records of 20 bytes fit in 24 + 4*3 + 40");
    cr_assert_eq(keel_dataset_read(ds, 1, 0, 100, 40, &b, &err), KEEL_EFRAMESIZE);
    cr_assert_eq(keel_dataset_read(ds, 1, 3, 100, 1 << 20, &b, &err), 0, "%s", err.msg);
    cr_assert_eq(b.nrecords, 0, "nothing past the end");
    cr_assert(keel_shard_batch_message(&b, &m));
    cr_assert_eq(keel_dataset_read(ds, 7, 0, 100, 1 << 20, &b, &err), KEEL_EINVAL);
    keel_shard_batch_release(&b);
    keel_dataset_close(ds);

    cr_assert_eq(keel_dataset_verify(store, "toy", NULL, NULL, 0, &err), 0, "%s", err.msg);
}

Test(dataset, reads_cross_block_boundaries)
{
    struct keel_shard_batch b;
    keel_dataset *ds;
    uint64_t got = 0;

    /* 20000 records of 20 bytes: several 64 KiB blocks per shard. */
    cr_assert_eq(import_csv("many", write_csv("many.csv", 20000, NULL), 2, NULL), 0, "%s", err.msg);
    cr_assert_eq(keel_dataset_open(store, "many", &ds, &err), 0, "%s", err.msg);
    cr_assert_gt(keel_dataset_shard(ds, 1)->nblocks, 1);
    keel_shard_batch_init(&b);
    while (got < keel_dataset_shard_records(ds, 1)) {
        cr_assert_eq(keel_dataset_read(ds, 1, got, 777, 1 << 20, &b, &err), 0, "%s", err.msg);
        cr_assert_gt(b.nrecords, 0);
        for (uint32_t i = 0; i < b.nrecords; i++) {
            const uint32_t *o = (const uint32_t *)(const void *)b.offsets.buf;

            assert_record(b.data.buf + o[i], o[i + 1] - o[i], (int)(2 * (got + i) + 1));
        }
        got += b.nrecords;
    }
    cr_assert_eq(got, 10000);
    keel_shard_batch_release(&b);
    keel_dataset_close(ds);
    cr_assert_eq(keel_dataset_verify(store, "many", NULL, NULL, 0, &err), 0, "%s", err.msg);
}

Test(dataset, digest_depends_on_content_not_on_name_or_shards)
{
    struct keel_dataset_info a, b, c;
    const char *path = write_csv("d.csv", 50, NULL);

    cr_assert_eq(import_csv("d1", path, 1, &a), 0, "%s", err.msg);
    cr_assert_eq(import_csv("d7", path, 7, &b), 0, "%s", err.msg);
    cr_assert_eq(memcmp(a.digest, b.digest, 32), 0);
    cr_assert_eq(import_csv("d51", write_csv("e.csv", 51, NULL), 1, &c), 0, "%s", err.msg);
    cr_assert_neq(memcmp(a.digest, c.digest, 32), 0);
}

Test(dataset, a_name_is_imported_once)
{
    const char *path = write_csv("x.csv", 5, NULL);
    struct keel_dataset_info info;

    cr_assert_eq(import_csv("x", path, 1, NULL), 0, "%s", err.msg);
    cr_assert_eq(import_csv("x", path, 2, NULL), KEEL_EEXIST);
    cr_assert(strstr(err.msg, "dataset 'x' already exists"), "%s", err.msg);
    cr_assert_eq(keel_dataset_stat(store, "x", &info, &err), 0, "%s", err.msg);
    cr_assert_eq(info.nshards, 1, "the first import stands");
    cr_assert_eq(import_csv("bad/name", path, 1, NULL), KEEL_EINVAL);
    cr_assert_eq(import_csv("y", path, 0, NULL), KEEL_EINVAL);
}

static int count_datasets(void *ctx, const struct keel_dataset_info *info)
{
    (*(int *)ctx)++;
    return 0;
}

Test(dataset, a_malformed_file_leaves_nothing)
{
    struct keel_dataset_info info;
    int n = 0;

    /* 3000 good lines, then a bad one: records were written before the error. */
    cr_assert_eq(import_csv("m", write_csv("m.csv", 3000, "1,2,x\n"), 2, NULL), KEEL_ECORRUPT);
    cr_assert(strstr(err.msg, "m.csv': line 3001: field 3: 'x' is not a number"), "%s", err.msg);
    cr_assert_eq(keel_dataset_stat(store, "m", &info, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "no dataset 'm'"), "%s", err.msg);
    cr_assert_eq(keel_dataset_list(store, count_datasets, &n, &err), 0);
    cr_assert_eq(n, 0);
    /* The name is free again. */
    cr_assert_eq(import_csv("m", write_csv("m2.csv", 10, NULL), 2, NULL), 0, "%s", err.msg);
}

/* Import a ~20 MB IDX dataset in a child that kills itself after the first batch. */
static void kill_self(void *ctx, uint64_t records, uint64_t bytes)
{
    raise(SIGKILL);
}

static void write_idx(const char *images, const char *labels, uint32_t n, uint32_t side)
{
    FILE *f = fopen(images, "w");
    unsigned char h[16] = {0, 0, 8, 3};

    cr_assert_not_null(f);
    for (int i = 0; i < 3; i++) {
        uint32_t v = i == 0 ? n : side;

        h[4 + 4 * i] = (unsigned char)(v >> 24);
        h[5 + 4 * i] = (unsigned char)(v >> 16);
        h[6 + 4 * i] = (unsigned char)(v >> 8);
        h[7 + 4 * i] = (unsigned char)v;
    }
    fwrite(h, 1, 16, f);
    for (uint64_t i = 0; i < (uint64_t)n * side * side; i++)
        fputc((int)(i % 251), f);
    fclose(f);
    f = fopen(labels, "w");
    cr_assert_not_null(f);
    h[3] = 1;
    fwrite(h, 1, 8, f);
    for (uint32_t i = 0; i < n; i++)
        fputc((int)(i % 10), f);
    fclose(f);
}

Test(dataset, a_killed_import_is_refused_then_replaced)
{
    char images[160], labels[160];
    const char *files[2] = {images, labels};
    struct keel_dataset_import_opts o = {.nshards = 4};
    struct keel_dataset_info info;
    keel_dataset *ds;
    pid_t pid;
    int status, n = 0;

    snprintf(images, sizeof(images), "%s/img", tmpdir);
    snprintf(labels, sizeof(labels), "%s/lab", tmpdir);
    write_idx(images, labels, 5000, 64); /* 5000 x 4 KiB */
    pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        keel_store *s;

        o.progress = kill_self;
        if (keel_store_open(&s, storedir, NULL, NULL) == 0)
            keel_dataset_import(s, "big", KEEL_DATASET_IDX, files, 2, &o, NULL, NULL);
        _exit(3);
    }
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_assert(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL, "the child died mid-import");

    cr_assert_eq(keel_dataset_stat(store, "big", &info, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "dataset 'big' is incomplete"), "%s", err.msg);
    cr_assert_eq(keel_dataset_open(store, "big", &ds, &err), KEEL_ENOTFOUND);
    cr_assert_eq(keel_dataset_verify(store, "big", NULL, NULL, 0, &err), KEEL_ENOTFOUND);
    cr_assert(strstr(err.msg, "incomplete"), "%s", err.msg);

    /* The next import of the name removes the remains and completes. */
    o.progress = NULL;
    cr_assert_eq(keel_dataset_import(store, "big", KEEL_DATASET_IDX, files, 2, &o, &info, &err), 0,
                 "%s", err.msg);
    cr_assert_eq(info.shape.nrecords, 5000);
    cr_assert_eq(info.shape.encoding, KEEL_RECORD_DENSE_U8);
    cr_assert_eq(keel_dataset_verify(store, "big", NULL, NULL, 0, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_dataset_list(store, count_datasets, &n, &err), 0);
    cr_assert_eq(n, 1, "exactly one dataset listed");
}

/* Flip one byte of the block holding record `index` of shard `shard` of dataset id 1. */
struct flip_ctx {
    uint32_t shard;
    size_t offset_from_end;
};

static int flip_txn(keel_txn *txn, void *ctx, struct keel_error *e)
{
    struct flip_ctx *c = ctx;
    unsigned char key[20] = {0};
    MDB_val k = {sizeof(key), key}, v;
    unsigned char *copy;
    int rc;

    keel_store_be64(key, 1);
    keel_store_be32(key + 8, c->shard);
    rc = keel_store_get(store, txn, KEEL_DB_DATASET_RECORDS, key, sizeof(key), &v, e);
    if (rc != 0)
        return rc;
    copy = malloc(v.mv_size);
    memcpy(copy, v.mv_data, v.mv_size);
    copy[v.mv_size - c->offset_from_end] ^= 0x01;
    rc = keel_store_put(store, txn, KEEL_DB_DATASET_RECORDS, k.mv_data, k.mv_size, copy, v.mv_size,
                        e);
    free(copy);
    return rc;
}

static void collect_problem(void *ctx, const char *problem)
{
    char *out = ctx;

    if (out[0] == '\0')
        snprintf(out, 256, "%s", problem);
}

Test(dataset, a_flipped_byte_is_named_by_verify_and_refused_by_reads)
{
    struct flip_ctx fc = {1, 1}; /* last byte of shard 1's first block: its last record */
    struct keel_shard_batch b;
    char first[256] = "";
    keel_dataset *ds;

    cr_assert_eq(import_csv("t", write_csv("t.csv", 9, NULL), 2, NULL), 0, "%s", err.msg);
    cr_assert_eq(keel_store_write(store, flip_txn, &fc, &err), 0, "%s", err.msg);
    /* Shard 1 holds records 1, 3, 5, 7: its last is record 7, index 3. */
    cr_assert_eq(keel_dataset_verify(store, "t", collect_problem, first, 10, &err), KEEL_ECHECKSUM);
    cr_assert_str_eq(first, "record 7 (shard 1, index 3): checksum mismatch");
    cr_assert(strstr(err.msg, "dataset 't': 2 problems, the first: record 7"), "%s", err.msg);

    cr_assert_eq(keel_dataset_open(store, "t", &ds, &err), 0, "%s", err.msg);
    keel_shard_batch_init(&b);
    cr_assert_eq(keel_dataset_read(ds, 1, 0, 2, 1 << 20, &b, &err), 0, "records before it read");
    cr_assert_eq(keel_dataset_read(ds, 1, 0, 10, 1 << 20, &b, &err), KEEL_ECHECKSUM);
    cr_assert(strstr(err.msg, "shard 1, record 3: checksum mismatch"), "%s", err.msg);
    cr_assert_eq(b.nrecords, 0, "nothing handed out from a failed read");
    keel_shard_batch_release(&b);
    keel_dataset_close(ds);
}

Test(dataset, a_read_batch_travels_in_a_shard_data_frame)
{
    struct keel_shard_batch b;
    struct keel_buf frame = KEEL_BUF_INIT;
    struct keel_msg m, out;
    keel_dataset *ds;

    cr_assert_eq(import_csv("f", write_csv("f.csv", 100, NULL), 4, NULL), 0, "%s", err.msg);
    cr_assert_eq(keel_dataset_open(store, "f", &ds, &err), 0, "%s", err.msg);
    keel_shard_batch_init(&b);
    /* Shard 3 holds records 3, 7, ..., 99: read its last 5 (indices 20..24). */
    cr_assert_eq(keel_dataset_read(ds, 3, 20, 64, 4096, &b, &err), 0, "%s", err.msg);
    memset(&m, 0, sizeof(m));
    m.hdr.type = KEEL_MSG_SHARD_DATA;
    m.hdr.flags = KEEL_FLAG_REPLY;
    if (keel_shard_batch_message(&b, &m.u.shard_data))
        m.hdr.flags |= KEEL_FLAG_LAST;
    cr_assert_eq(keel_proto_encode(&frame, &m, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_proto_decode(frame.buf, frame.len, 1 << 20, &out, &err), 0, "%s", err.msg);
    cr_assert_eq(out.hdr.flags, KEEL_FLAG_REPLY | KEEL_FLAG_LAST);
    cr_assert_eq(out.u.shard_data.nrecords, 5);
    cr_assert_eq(out.u.shard_data.first, 20);
    cr_assert_eq(out.u.shard_data.total, 25);
    for (uint32_t i = 0; i < 5; i++) {
        const struct keel_msg_shard_data *sd = &out.u.shard_data;

        assert_record(sd->data + sd->offsets[i], sd->offsets[i + 1] - sd->offsets[i],
                      (int)(4 * (20 + i) + 3));
    }
    keel_buf_release(&frame);
    keel_shard_batch_release(&b);
    keel_dataset_close(ds);
}
