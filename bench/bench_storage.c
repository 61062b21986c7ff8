/*
 * bench_storage.c - keel-bench-storage: durable snapshot writes and restores.
 *
 * For 1M, 10M and 50M float32 parameters (one table, rows of ROW_WIDTH
 * floats, one uint64 key per row), measures:
 *   snapshot_write_N  keel_snapshot_write(): one LMDB transaction replacing
 *                     the range's previous snapshot, committed with fsync
 *   restore_N         keel_snapshot_read(): every block read, its XXH3
 *                     checksum verified, keys/rows copied out, digest checked
 * in MB/s of snapshot payload (keys + rows, 10^6 bytes).  The baselines are,
 * for the write, write(2) of the same bytes into a fresh file + fsync(2) +
 * close; for the restore, read(2) of that file into memory (from the page
 * cache, as the LMDB read is).  Both are timed in the same run, alternating.
 *
 * The writes are measured twice: first with the C library's default
 * allocator settings, then ("_tuned") after keel_store_tune_malloc(), which
 * keeps the memory of LMDB's dirty pages between transactions as a server
 * would (see store.h).
 *
 * All files live in a temporary directory (under $TMPDIR or /tmp) that is
 * removed at the end.  --quick measures 1M parameters only.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bench.h"
#include "alloc.h"
#include "log.h"
#include "keel/snapshot.h"
#include "keel/store.h"

#define ROW_WIDTH 64 /* floats per row: 256 bytes of row + 8 of key */

struct ctx {
    keel_store *store;
    struct keel_snapshot snap;
    struct keel_snap_table table;
    char sdir[1024]; /* the store */
    char path[1024]; /* the plain file */
    unsigned char *payload;
    size_t bytes;
    unsigned char *readbuf;
};

static void die(const char *what, const char *why)
{
    fprintf(stderr, "keel-bench-storage: %s: %s\n", what, why);
    exit(1);
}

static void snapshot_write(void *p, uint64_t iters)
{
    struct ctx *c = p;
    struct keel_error err;

    for (uint64_t i = 0; i < iters; i++) {
        c->snap.lsn++;
        if (keel_snapshot_write(c->store, &c->snap, &err) != 0)
            die("snapshot write", err.msg);
    }
}

static void plain_write(void *p, uint64_t iters)
{
    struct ctx *c = p;

    for (uint64_t i = 0; i < iters; i++) {
        int fd = open(c->path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        size_t off = 0;

        if (fd < 0)
            die(c->path, strerror(errno));
        while (off < c->bytes) {
            ssize_t n = write(fd, c->payload + off, c->bytes - off);
            if (n <= 0)
                die(c->path, strerror(errno));
            off += (size_t)n;
        }
        if (fsync(fd) != 0)
            die(c->path, strerror(errno));
        close(fd);
    }
}

static void restore(void *p, uint64_t iters)
{
    struct ctx *c = p;
    struct keel_error err;

    for (uint64_t i = 0; i < iters; i++) {
        struct keel_snapshot got;
        if (keel_snapshot_read(c->store, 0, &got, &err) != 0)
            die("snapshot read", err.msg);
        keel_bench_use(got.tables[0].rows);
        keel_snapshot_release(&got);
    }
}

static void plain_read(void *p, uint64_t iters)
{
    struct ctx *c = p;

    for (uint64_t i = 0; i < iters; i++) {
        int fd = open(c->path, O_RDONLY | O_CLOEXEC);
        size_t off = 0;

        if (fd < 0)
            die(c->path, strerror(errno));
        while (off < c->bytes) {
            ssize_t n = read(fd, c->readbuf + off, c->bytes - off);
            if (n <= 0)
                die(c->path, n == 0 ? "short file" : strerror(errno));
            off += (size_t)n;
        }
        close(fd);
        keel_bench_use(c->readbuf);
    }
}

/* Remove a store directory: LMDB's two files, then the directory. */
static void remove_store(const char *sdir)
{
    static const char *const files[] = {"data.mdb", "lock.mdb"};
    char f[4200];

    for (size_t i = 0; i < 2; i++) {
        snprintf(f, sizeof(f), "%s/%s", sdir, files[i]);
        unlink(f);
    }
    rmdir(sdir);
}

/* A store and the snapshot of `params` parameters, and the same bytes for the plain file. */
static void setup(struct ctx *c, const char *dir, uint64_t params, const char *label)
{
    struct keel_store_options so = {0};
    struct keel_error err;
    uint64_t nrows = params / ROW_WIDTH;

    memset(c, 0, sizeof(*c));
    snprintf(c->sdir, sizeof(c->sdir), "%s/store-%s", dir, label);
    snprintf(c->path, sizeof(c->path), "%s/plain-%s", dir, label);
    /* Room for two snapshots (the old one's pages are freed at commit). */
    so.map_initial = (size_t)((double)params * 4.2 * 3) + ((size_t)64 << 20);
    if (keel_store_open(&c->store, c->sdir, &so, &err) != 0)
        die("open", err.msg);
    c->table.table_id = 1;
    c->table.width = ROW_WIDTH;
    c->table.nrows = nrows;
    c->table.keys = keel_calloc(nrows, 8);
    c->table.rows = keel_calloc(nrows * ROW_WIDTH, 4);
    for (uint64_t r = 0; r < nrows; r++) {
        c->table.keys[r] = (uint64_t)1 << 48 | r;
        for (int k = 0; k < ROW_WIDTH; k++)
            c->table.rows[r * ROW_WIDTH + k] = (float)(r % 1000) * 0.001f + (float)k;
    }
    c->snap.range = 0;
    c->snap.ntables = 1;
    c->snap.tables = &c->table;
    /* The plain file holds the same bytes: the keys, then the rows. */
    c->bytes = nrows * 8 + nrows * ROW_WIDTH * 4;
    c->payload = keel_malloc(c->bytes);
    memcpy(c->payload, c->table.keys, nrows * 8);
    memcpy(c->payload + nrows * 8, c->table.rows, nrows * ROW_WIDTH * 4);
    c->readbuf = keel_malloc(c->bytes);
}

static void teardown(struct ctx *c)
{
    keel_store_close(c->store);
    unlink(c->path);
    remove_store(c->sdir);
    free(c->table.keys);
    free(c->table.rows);
    free(c->payload);
    free(c->readbuf);
}

static void measure(struct keel_bench *b, const char *dir, uint64_t params, const char *label,
                    int writes_only, const char *suffix)
{
    struct ctx c;
    char name[64];
    double t_fn, t_base, mb;

    setup(&c, dir, params, label);
    mb = (double)c.bytes / 1e6;
    struct keel_bench_fn w = {snapshot_write, &c}, pw = {plain_write, &c};
    keel_bench_compare(b, &w, &pw, &t_fn, &t_base);
    snprintf(name, sizeof(name), "snapshot_write_%s%s", label, suffix);
    keel_bench_record(b, name, mb / t_fn, "MB/s", mb / t_base);
    if (!writes_only) {
        struct keel_bench_fn r = {restore, &c}, pr = {plain_read, &c};
        keel_bench_compare(b, &r, &pr, &t_fn, &t_base);
        snprintf(name, sizeof(name), "restore_%s%s", label, suffix);
        keel_bench_record(b, name, mb / t_fn, "MB/s", mb / t_base);
    }
    teardown(&c);
}

int main(int argc, char **argv)
{
    static const struct {
        uint64_t params;
        const char *label;
    } sizes[] = {{1000000, "1M"}, {10000000, "10M"}, {50000000, "50M"}};
    struct keel_bench b;
    const char *tmp = getenv("TMPDIR");
    char dir[512];
    size_t n;
    int rc;

    rc = keel_bench_init(&b, "keel-bench-storage",
                         "durable LMDB snapshot writes and verified restores vs plain "
                         "write+fsync and read",
                         argc, argv);
    if (rc >= 0)
        return rc;
    keel_log_init("keel-bench-storage", KEEL_LOG_LEVEL_WARN, NULL);
    snprintf(dir, sizeof(dir), "%s/keel-bench-storage-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL)
        die(dir, strerror(errno));
    n = b.quick ? 1 : sizeof(sizes) / sizeof(sizes[0]);
    for (size_t i = 0; i < n; i++) {
        fprintf(stderr, "keel-bench-storage: %s parameters...\n", sizes[i].label);
        measure(&b, dir, sizes[i].params, sizes[i].label, 0, "");
    }
    /* Again with the C library keeping freed memory, as a server would set it up. */
    if (keel_store_tune_malloc(0) == 0)
        for (size_t i = 0; i < n; i++) {
            fprintf(stderr, "keel-bench-storage: %s parameters, malloc tuned...\n", sizes[i].label);
            measure(&b, dir, sizes[i].params, sizes[i].label, 0, "_tuned");
        }
    rmdir(dir);
    return keel_bench_finish(&b);
}
