/*
 * test_store.c - the LMDB environment: creation, format version, growing map,
 * transactions that commit or leave nothing, stale reader slots.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "alloc.h"
#include "keel/buf.h"
#include "keel/store.h"
#include "store_int.h"

static char tmpdir[64];
static char dir[128];
static struct keel_error err;

static void setup(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/keel-test-store-XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
    snprintf(dir, sizeof(dir), "%s/a/b/node", tmpdir);
    keel_error_init(&err);
}

static void teardown(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(store, .init = setup, .fini = teardown);

/* A write of one value of `vlen` bytes all `fill`, failing with `fail` after it. */
struct write_ctx {
    keel_store *s;
    enum keel_db db;
    const char *key;
    size_t vlen;
    unsigned char fill;
    int fail;
};

static int put_kv(keel_txn *txn, void *ctx, struct keel_error *e)
{
    struct write_ctx *w = ctx;
    unsigned char *v = keel_malloc(w->vlen);
    int rc;

    memset(v, w->fill, w->vlen);
    rc = keel_store_put(w->s, txn, w->db, w->key, strlen(w->key), v, w->vlen, e);
    free(v);
    if (rc != 0)
        return rc;
    return w->fail ? keel_err_set(e, w->fail, "asked to fail") : 0;
}

static int do_write(keel_store *s, enum keel_db db, const char *key, size_t vlen,
                    unsigned char fill, int fail)
{
    struct write_ctx w = {s, db, key, vlen, fill, fail};

    return keel_store_write(s, put_kv, &w, &err);
}

struct get_ctx {
    keel_store *s;
    enum keel_db db;
    const char *key;
    size_t len;
    unsigned char first;
};

static int get_kv(keel_txn *txn, void *ctx, struct keel_error *e)
{
    struct get_ctx *g = ctx;
    MDB_val v;
    int rc = keel_store_get(g->s, txn, g->db, g->key, strlen(g->key), &v, e);

    if (rc != 0)
        return rc;
    g->len = v.mv_size;
    g->first = v.mv_size ? ((unsigned char *)v.mv_data)[0] : 0;
    return 0;
}

Test(store, open_creates_directory_and_every_database)
{
    keel_store *s;
    struct stat st;

    cr_assert_eq(keel_store_open(&s, dir, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(stat(dir, &st), 0);
    cr_assert(S_ISDIR(st.st_mode));
    cr_assert_str_eq(keel_store_dir(s), dir);
    for (int i = 0; i < KEEL_DB__COUNT; i++)
        cr_assert_str_neq(keel_store_db_name(i), "unknown");
    cr_assert_str_eq(keel_store_db_name(KEEL_DB_SNAP_ROWS), "snap_rows");
    cr_assert_str_eq(keel_store_db_name(KEEL_DB__COUNT), "unknown");
    cr_assert_eq(do_write(s, KEEL_DB_DATASETS, "x", 10, 7, 0), 0, "%s", err.msg);
    keel_store_close(s);

    /* Reopen, read-only too: the data and the format stamp are there. */
    struct keel_store_options ro = {.read_only = 1};
    cr_assert_eq(keel_store_open(&s, dir, &ro, &err), 0, "%s", err.msg);
    struct get_ctx g = {s, KEEL_DB_DATASETS, "x", 0, 0};
    cr_assert_eq(keel_store_read(s, get_kv, &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g.len, 10);
    cr_assert_eq(g.first, 7);
    cr_assert_eq(do_write(s, KEEL_DB_META, "y", 1, 0, 0), KEEL_EPERM);
    keel_store_close(s);
}

Test(store, open_refuses_a_file_as_directory)
{
    char path[160];
    keel_store *s;
    FILE *f;

    snprintf(path, sizeof(path), "%s/file", tmpdir);
    f = fopen(path, "w");
    cr_assert_not_null(f);
    fclose(f);
    cr_assert_neq(keel_store_open(&s, path, NULL, &err), 0);
    cr_assert_null(s);
    cr_assert(strstr(err.msg, path) != NULL, "%s", err.msg);
}

Test(store, read_only_open_of_missing_store_fails_clearly)
{
    struct keel_store_options ro = {.read_only = 1};
    keel_store *s;

    cr_assert_neq(keel_store_open(&s, dir, &ro, &err), 0);
    cr_assert(strstr(err.msg, dir) != NULL, "%s", err.msg);
}

static int put_version(keel_txn *txn, void *ctx, struct keel_error *e)
{
    unsigned char ver[4];

    keel_store_u32le(ver, 99);
    return keel_store_put(ctx, txn, KEEL_DB_META, "format", 6, ver, sizeof(ver), e);
}

Test(store, unknown_format_version_is_refused)
{
    keel_store *s;

    cr_assert_eq(keel_store_open(&s, dir, NULL, &err), 0, "%s", err.msg);
    /* Overwrite the stamp with a future version. */
    cr_assert_eq(keel_store_write(s, put_version, s, &err), 0, "%s", err.msg);
    keel_store_close(s);

    cr_assert_eq(keel_store_open(&s, dir, NULL, &err), KEEL_EFORMAT);
    cr_assert_null(s);
    cr_assert(strstr(err.msg, "format version 99") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, dir) != NULL, "%s", err.msg);
}

Test(store, failed_callback_writes_nothing)
{
    keel_store *s;

    cr_assert_eq(keel_store_open(&s, dir, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(do_write(s, KEEL_DB_AUDIT, "k", 100, 1, KEEL_EINVAL), KEEL_EINVAL);
    cr_assert_str_eq(err.msg, "asked to fail");
    struct get_ctx g = {s, KEEL_DB_AUDIT, "k", 0, 0};
    cr_assert_eq(keel_store_read(s, get_kv, &g, &err), KEEL_ENOTFOUND);
    keel_store_close(s);
}

Test(store, full_map_grows_and_the_write_succeeds)
{
    struct keel_store_options o = {.map_initial = 1 << 20, .map_max = 256 << 20};
    keel_store *s;

    cr_assert_eq(keel_store_open(&s, dir, &o, &err), 0, "%s", err.msg);
    cr_assert_eq(keel_store_map_size(s), 1 << 20);
    cr_assert_eq(do_write(s, KEEL_DB_SNAP_ROWS, "big", 8 << 20, 3, 0), 0, "%s", err.msg);
    cr_assert_geq(keel_store_map_size(s), 8 << 20);
    struct get_ctx g = {s, KEEL_DB_SNAP_ROWS, "big", 0, 0};
    cr_assert_eq(keel_store_read(s, get_kv, &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g.len, 8 << 20);
    cr_assert_eq(g.first, 3);
    keel_store_close(s);

    /* Reopening with a small initial size keeps the grown map. */
    cr_assert_eq(keel_store_open(&s, dir, &o, &err), 0, "%s", err.msg);
    cr_assert_geq(keel_store_map_size(s), 8 << 20);
    keel_store_close(s);
}

Test(store, map_limit_gives_enospc_and_keeps_previous_data)
{
    struct keel_store_options o = {.map_initial = 1 << 20, .map_max = 4 << 20};
    keel_store *s;

    cr_assert_eq(keel_store_open(&s, dir, &o, &err), 0, "%s", err.msg);
    cr_assert_eq(do_write(s, KEEL_DB_CKPT_ROWS, "old", 1 << 20, 5, 0), 0, "%s", err.msg);
    cr_assert_eq(do_write(s, KEEL_DB_CKPT_ROWS, "new", 16 << 20, 6, 0), -ENOSPC);
    cr_assert(strstr(err.msg, "is full") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, "4 MiB") != NULL, "%s", err.msg);
    cr_assert(strstr(err.msg, dir) != NULL, "%s", err.msg);
    struct get_ctx g = {s, KEEL_DB_CKPT_ROWS, "old", 0, 0};
    cr_assert_eq(keel_store_read(s, get_kv, &g, &err), 0, "%s", err.msg);
    cr_assert_eq(g.len, 1 << 20);
    cr_assert_eq(g.first, 5);
    g.key = "new";
    cr_assert_eq(keel_store_read(s, get_kv, &g, &err), KEEL_ENOTFOUND);
    /* A write that fits still works after the failure. */
    cr_assert_eq(do_write(s, KEEL_DB_CKPT_ROWS, "small", 100, 1, 0), 0, "%s", err.msg);
    keel_store_close(s);
}

Test(store, mdb_errors_are_translated)
{
    cr_assert_eq(keel_store_mdb_err(&err, MDB_NOTFOUND, "x"), KEEL_ENOTFOUND);
    cr_assert_eq(keel_store_mdb_err(&err, MDB_MAP_FULL, "store '%s'", "d"), -ENOSPC);
    cr_assert(strstr(err.msg, "store 'd': ") == err.msg, "%s", err.msg);
    cr_assert_eq(keel_store_mdb_err(&err, MDB_CORRUPTED, "x"), KEEL_ECORRUPT);
    cr_assert_eq(keel_store_mdb_err(&err, MDB_VERSION_MISMATCH, "x"), KEEL_EFORMAT);
    cr_assert_eq(keel_store_mdb_err(&err, EIO, "x"), -EIO);
    cr_assert_eq(keel_store_mdb_err(&err, MDB_BAD_TXN, "x"), KEEL_ESTORE);
}

static int count_reader(const char *msg, void *ctx)
{
    int *n = ctx;

    /* mdb_reader_list prints a header line, then one line per slot in use. */
    if (strstr(msg, "pid") == NULL && strstr(msg, "no active readers") == NULL)
        (*n)++;
    return 0;
}

static int hold_read(keel_txn *txn, void *ctx, struct keel_error *e)
{
    int *fd = ctx;
    char c = 'r';

    if (write(*fd, &c, 1) != 1)
        return -EIO;
    for (;;)
        pause(); /* killed here, with the read transaction open */
    return 0;
}

Test(store, stale_reader_slots_of_killed_processes_are_cleared)
{
    keel_store *s;
    int fds[2], readers = 0, status;
    pid_t pid;
    char c;

    cr_assert_eq(keel_store_open(&s, dir, NULL, &err), 0, "%s", err.msg);
    cr_assert_eq(pipe(fds), 0);
    pid = fork();
    if (pid == 0) {
        keel_store *cs;
        close(fds[0]);
        if (keel_store_open(&cs, dir, NULL, NULL) != 0)
            _exit(1);
        keel_store_read(cs, hold_read, &fds[1], NULL);
        _exit(2);
    }
    close(fds[1]);
    cr_assert_eq(read(fds[0], &c, 1), 1);
    close(fds[0]);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    mdb_reader_list(keel_store_env(s), count_reader, &readers);
    cr_assert_eq(readers, 1, "the killed reader's slot should still be taken");

    /* Another process opening the store clears the dead slot. */
    pid = fork();
    if (pid == 0) {
        keel_store *cs;
        _exit(keel_store_open(&cs, dir, NULL, NULL) == 0 ? 0 : 1);
    }
    waitpid(pid, &status, 0);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    readers = 0;
    mdb_reader_list(keel_store_env(s), count_reader, &readers);
    cr_assert_eq(readers, 0, "the slot was not cleared");
    keel_store_close(s);
}
