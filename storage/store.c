/*
 * store.c - the LMDB environment: open, format stamp, growing map, transactions.
 */
#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include "alloc.h"
#include "keel/buf.h"
#include "log.h"
#include "keel/store.h"
#include "store_int.h"

/* A write that needs more than this many map growths gives up (2^40 from 2^16). */
#define MAX_GROWTHS 48

struct keel_store {
    MDB_env *env;
    char *dir;
    size_t map_max;
    int read_only;
    MDB_dbi dbi[KEEL_DB__COUNT];
    /*
     * Read transactions hold this shared; changing the map size holds it
     * exclusively, since LMDB allows that only while this process has no
     * transaction open.  Writers are serialized by write_lock, taken before
     * map_lock, so a growth never waits on another writer.
     */
    pthread_rwlock_t map_lock;
    pthread_mutex_t write_lock;
};

static const char *const db_names[] = {
#define KEEL__DB_NAME(name, str) str,
    KEEL_DB_MAP(KEEL__DB_NAME)
#undef KEEL__DB_NAME
};

const char *keel_store_db_name(enum keel_db db)
{
    if ((int)db < 0 || db >= KEEL_DB__COUNT)
        return "unknown";
    return db_names[db];
}

int keel_store_mdb_err(struct keel_error *err, int rc, const char *fmt, ...)
{
    char ctx[KEEL_ERROR_MSG_MAX];
    va_list ap;
    int code;

    switch (rc) {
    case MDB_NOTFOUND:
        code = KEEL_ENOTFOUND;
        break;
    case MDB_KEYEXIST:
        code = KEEL_EEXIST;
        break;
    case MDB_MAP_FULL:
        code = -ENOSPC;
        break;
    case MDB_CORRUPTED:
    case MDB_PAGE_NOTFOUND:
    case MDB_INVALID:
        code = KEEL_ECORRUPT;
        break;
    case MDB_VERSION_MISMATCH:
        code = KEEL_EFORMAT;
        break;
    default:
        code = rc > 0 ? -rc : KEEL_ESTORE;
        break;
    }
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof(ctx), fmt, ap);
    va_end(ap);
    return keel_err_set(err, code, "%s: %s", ctx, mdb_strerror(rc));
}

/* mkdir -p with mode 0700 for the components that are missing. */
static int make_dirs(const char *dir, struct keel_error *err)
{
    char *path = keel_strdup(dir);
    int rc = 0;

    for (char *p = path + 1;; p++) {
        if (*p != '/' && *p != '\0')
            continue;
        char c = *p;
        *p = '\0';
        if (mkdir(path, 0700) != 0 && errno != EEXIST) {
            rc = keel_err_set(err, -errno, "cannot create directory '%s': %s", path,
                              strerror(errno));
            break;
        }
        *p = c;
        if (c == '\0')
            break;
    }
    free(path);
    if (rc == 0) {
        struct stat st;
        if (stat(dir, &st) != 0)
            return keel_err_set(err, -errno, "cannot open store '%s': %s", dir, strerror(errno));
        if (!S_ISDIR(st.st_mode))
            return keel_err_set(err, -ENOTDIR, "cannot open store '%s': not a directory", dir);
    }
    return rc;
}

/*
 * Open every named database (creating them unless read-only) and check or
 * stamp the format version, in one write transaction (a read one when
 * read-only).
 */
static int open_databases(keel_store *s, struct keel_error *err)
{
    MDB_txn *txn;
    MDB_val key = {6, "format"}, val;
    unsigned char ver[4];
    int rc;

    rc = mdb_txn_begin(s->env, NULL, s->read_only ? MDB_RDONLY : 0, &txn);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot open store '%s'", s->dir);
    for (int i = 0; i < KEEL_DB__COUNT; i++) {
        rc = mdb_dbi_open(txn, db_names[i], s->read_only ? 0 : MDB_CREATE, &s->dbi[i]);
        if (rc == MDB_NOTFOUND && s->read_only) {
            rc = keel_err_set(err, KEEL_ENOTFOUND,
                              "cannot open store '%s': database '%s' is missing (not a Keel "
                              "store, or never opened for writing)",
                              s->dir, db_names[i]);
            goto abort;
        }
        if (rc != 0) {
            rc = keel_store_mdb_err(err, rc, "cannot open database '%s' of store '%s'", db_names[i],
                                    s->dir);
            goto abort;
        }
    }
    rc = mdb_get(txn, s->dbi[KEEL_DB_META], &key, &val);
    if (rc == MDB_NOTFOUND && !s->read_only) {
        keel_store_u32le(ver, KEEL_STORE_FORMAT);
        val.mv_size = sizeof(ver);
        val.mv_data = ver;
        rc = mdb_put(txn, s->dbi[KEEL_DB_META], &key, &val, 0);
        if (rc != 0) {
            rc = keel_store_mdb_err(err, rc, "cannot stamp the format of store '%s'", s->dir);
            goto abort;
        }
        KEEL_LOG_INFO("created store '%s' (format %u)", s->dir, KEEL_STORE_FORMAT);
    } else if (rc == MDB_NOTFOUND) {
        rc = keel_err_set(err, KEEL_EFORMAT, "store '%s' has no format version", s->dir);
        goto abort;
    } else if (rc != 0) {
        rc = keel_store_mdb_err(err, rc, "cannot read the format of store '%s'", s->dir);
        goto abort;
    } else if (val.mv_size != 4) {
        rc = keel_err_set(err, KEEL_ECORRUPT,
                          "store '%s': format version is %zu bytes long, expected 4", s->dir,
                          val.mv_size);
        goto abort;
    } else if (keel_load_u32le(val.mv_data) != KEEL_STORE_FORMAT) {
        rc = keel_err_set(err, KEEL_EFORMAT,
                          "store '%s' has format version %u; this build reads version %u", s->dir,
                          keel_load_u32le(val.mv_data), KEEL_STORE_FORMAT);
        goto abort;
    }
    /* Committing (also a read-only transaction) keeps the database handles. */
    rc = mdb_txn_commit(txn);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot initialize store '%s'", s->dir);
    return 0;

abort:
    mdb_txn_abort(txn);
    return rc;
}

int keel_store_open(keel_store **out, const char *dir, const struct keel_store_options *opts,
                    struct keel_error *err)
{
    struct keel_store_options def = {0};
    keel_store *s;
    MDB_envinfo info;
    size_t map_initial;
    int rc, dead = 0;
    unsigned flags = MDB_NOTLS;

    if (opts == NULL)
        opts = &def;
    map_initial = opts->map_initial ? opts->map_initial : KEEL_STORE_MAP_INITIAL;
    *out = NULL;
    if (dir == NULL || dir[0] == '\0')
        return keel_err_set(err, KEEL_EINVAL, "store directory is empty");
    if (!opts->read_only) {
        rc = make_dirs(dir, err);
        if (rc != 0)
            return rc;
    } else {
        flags |= MDB_RDONLY;
    }

    s = keel_calloc(1, sizeof(*s));
    s->dir = keel_strdup(dir);
    s->map_max = opts->map_max ? opts->map_max : KEEL_STORE_MAP_MAX;
    s->read_only = opts->read_only;
    if (map_initial > s->map_max)
        map_initial = s->map_max;
    pthread_rwlock_init(&s->map_lock, NULL);
    pthread_mutex_init(&s->write_lock, NULL);

    rc = mdb_env_create(&s->env);
    if (rc != 0) {
        rc = keel_store_mdb_err(err, rc, "cannot create the environment of store '%s'", dir);
        goto free_store;
    }
    mdb_env_set_maxdbs(s->env, KEEL_DB__COUNT + 4);
    mdb_env_set_maxreaders(s->env, 256);
    mdb_env_set_mapsize(s->env, map_initial);
    rc = mdb_env_open(s->env, dir, flags, 0600);
    if (rc != 0) {
        rc = keel_store_mdb_err(err, rc, "cannot open store '%s'", dir);
        goto close_env;
    }
    /* Slots of readers whose process died would pin old pages forever. */
    rc = mdb_reader_check(s->env, &dead);
    if (rc != 0) {
        rc = keel_store_mdb_err(err, rc, "cannot check the readers of store '%s'", dir);
        goto close_env;
    }
    if (dead > 0)
        KEEL_LOG_INFO("store '%s': cleared %d stale reader slot(s)", dir, dead);
    /* An existing store may be larger than map_initial: keep its size. */
    mdb_env_info(s->env, &info);
    if (info.me_mapsize > s->map_max)
        s->map_max = info.me_mapsize;
    rc = open_databases(s, err);
    if (rc != 0)
        goto close_env;
    *out = s;
    return 0;

close_env:
    mdb_env_close(s->env);
free_store:
    pthread_mutex_destroy(&s->write_lock);
    pthread_rwlock_destroy(&s->map_lock);
    free(s->dir);
    free(s);
    return rc;
}

void keel_store_close(keel_store *s)
{
    if (s == NULL)
        return;
    mdb_env_close(s->env);
    pthread_mutex_destroy(&s->write_lock);
    pthread_rwlock_destroy(&s->map_lock);
    free(s->dir);
    free(s);
}

const char *keel_store_dir(const keel_store *s)
{
    return s->dir;
}

MDB_dbi keel_store_dbi(const keel_store *s, enum keel_db db)
{
    return s->dbi[db];
}

int keel_store_tune_malloc(size_t keep)
{
#ifdef __GLIBC__
    if (keep == 0)
        keep = (size_t)512 << 20;
    if (keep > INT_MAX)
        keep = INT_MAX;
    /* Allocations below `keep` come from the heap, and the heap is not trimmed below it. */
    if (mallopt(M_MMAP_THRESHOLD, (int)(keep < ((size_t)32 << 20) ? keep : (size_t)32 << 20)) ==
            0 ||
        mallopt(M_TRIM_THRESHOLD, (int)keep) == 0)
        return -EINVAL;
    return 0;
#else
    (void)keep;
    return -ENOTSUP;
#endif
}

MDB_env *keel_store_env(keel_store *s)
{
    return s->env;
}

size_t keel_store_map_size(keel_store *s)
{
    MDB_envinfo info;

    mdb_env_info(s->env, &info);
    return info.me_mapsize;
}

/*
 * Adopt a map size another process set (new_size 0), or set a larger one.
 * Takes map_lock exclusively: waits for this process's readers to finish.
 */
static int set_map_size(keel_store *s, size_t new_size, struct keel_error *err)
{
    int rc;

    pthread_rwlock_wrlock(&s->map_lock);
    rc = mdb_env_set_mapsize(s->env, new_size);
    pthread_rwlock_unlock(&s->map_lock);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot resize the map of store '%s'", s->dir);
    return 0;
}

/* Double the map, up to map_max; -ENOSPC when it is already there. */
static int grow_map(keel_store *s, struct keel_error *err)
{
    size_t cur = keel_store_map_size(s), next;

    if (cur >= s->map_max)
        return keel_err_set(err, -ENOSPC,
                            "store '%s' is full: the map size limit of %zu MiB is reached", s->dir,
                            s->map_max >> 20);
    next = cur > s->map_max / 2 ? s->map_max : cur * 2;
    KEEL_LOG_INFO("store '%s': growing the map from %zu to %zu MiB", s->dir, cur >> 20, next >> 20);
    return set_map_size(s, next, err);
}

/* Begin a transaction, adopting a map another process grew. Caller holds what it needs. */
static int begin_txn(keel_store *s, unsigned flags, MDB_txn **txn, struct keel_error *err)
{
    int rc = mdb_txn_begin(s->env, NULL, flags, txn);

    if (rc == MDB_MAP_RESIZED)
        return MDB_MAP_RESIZED;
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "cannot begin a transaction on store '%s'", s->dir);
    return 0;
}

/*
 * A failed commit.  LMDB reports a short write (a full disk, a file size
 * limit) as EIO, so for write errors say how much room there was.
 */
static int commit_error(keel_store *s, int rc, struct keel_error *err)
{
    struct statvfs vfs;
    struct rlimit lim;
    char room[160] = "";

    if (rc == EIO || rc == ENOSPC || rc == EFBIG || rc == EDQUOT) {
        int n = 0;
        if (statvfs(s->dir, &vfs) == 0)
            n = snprintf(room, sizeof(room), " (disk full? %llu MiB free on its file system",
                         (unsigned long long)vfs.f_bavail * vfs.f_frsize >> 20);
        if (n > 0 && getrlimit(RLIMIT_FSIZE, &lim) == 0 && lim.rlim_cur != RLIM_INFINITY)
            n += snprintf(room + n, sizeof(room) - (size_t)n, "; file size limit %llu KiB",
                          (unsigned long long)lim.rlim_cur >> 10);
        if (n > 0 && (size_t)n < sizeof(room) - 1)
            snprintf(room + n, sizeof(room) - (size_t)n, ")");
    }
    rc = keel_store_mdb_err(err, rc, "cannot commit to store '%s'", s->dir);
    if (err != NULL && room[0] != '\0') {
        size_t len = strlen(err->msg);
        snprintf(err->msg + len, sizeof(err->msg) - len, "%s", room);
    }
    return rc;
}

int keel_store_write(keel_store *s, keel_store_fn fn, void *ctx, struct keel_error *err)
{
    MDB_txn *txn;
    int rc = 0, growths = 0;

    if (s->read_only)
        return keel_err_set(err, KEEL_EPERM, "store '%s' is open read-only", s->dir);
    pthread_mutex_lock(&s->write_lock);
    for (;;) {
        rc = begin_txn(s, 0, &txn, err);
        if (rc == MDB_MAP_RESIZED) {
            rc = set_map_size(s, 0, err);
            if (rc != 0)
                break;
            continue;
        }
        if (rc != 0)
            break;
        rc = fn(keel_txn_of(txn), ctx, err);
        if (rc == 0) {
            rc = mdb_txn_commit(txn);
            if (rc == 0)
                break;
            if (rc != MDB_MAP_FULL) {
                rc = commit_error(s, rc, err);
                break;
            }
            rc = -ENOSPC; /* the map filled while committing */
        } else {
            mdb_txn_abort(txn);
        }
        if (rc != -ENOSPC || growths++ >= MAX_GROWTHS)
            break;
        rc = grow_map(s, err);
        if (rc != 0)
            break;
    }
    pthread_mutex_unlock(&s->write_lock);
    if (rc == 0 && err != NULL)
        keel_error_init(err);
    return rc;
}

int keel_store_read_begin(keel_store *s, keel_txn **txn, struct keel_error *err)
{
    MDB_txn *mtxn;
    int rc;

    for (int tries = 0;; tries++) {
        pthread_rwlock_rdlock(&s->map_lock);
        rc = begin_txn(s, MDB_RDONLY, &mtxn, err);
        if (rc == 0) {
            *txn = keel_txn_of(mtxn);
            return 0;
        }
        pthread_rwlock_unlock(&s->map_lock);
        if (rc != MDB_MAP_RESIZED)
            return rc;
        if (tries >= MAX_GROWTHS)
            return keel_store_mdb_err(err, rc, "cannot begin a transaction on store '%s'", s->dir);
        rc = set_map_size(s, 0, err);
        if (rc != 0)
            return rc;
    }
}

void keel_store_read_end(keel_store *s, keel_txn *txn)
{
    mdb_txn_abort(keel_txn_mdb(txn));
    pthread_rwlock_unlock(&s->map_lock);
}

int keel_store_read(keel_store *s, keel_store_fn fn, void *ctx, struct keel_error *err)
{
    keel_txn *txn;
    int rc = keel_store_read_begin(s, &txn, err);

    if (rc != 0)
        return rc;
    rc = fn(txn, ctx, err);
    keel_store_read_end(s, txn);
    return rc;
}

int keel_store_get(keel_store *s, keel_txn *txn, enum keel_db db, const void *key, size_t klen,
                   MDB_val *val, struct keel_error *err)
{
    MDB_val k = {klen, (void *)key};
    int rc = mdb_get(keel_txn_mdb(txn), s->dbi[db], &k, val);

    if (rc == MDB_NOTFOUND)
        return keel_err_set(err, KEEL_ENOTFOUND, "store '%s': key not found in '%s'", s->dir,
                            db_names[db]);
    if (rc != 0)
        return keel_store_mdb_err(err, rc, "store '%s': cannot read '%s'", s->dir, db_names[db]);
    return 0;
}

int keel_store_put(keel_store *s, keel_txn *txn, enum keel_db db, const void *key, size_t klen,
                   const void *val, size_t vlen, struct keel_error *err)
{
    MDB_val k = {klen, (void *)key}, v = {vlen, (void *)val};
    int rc = mdb_put(keel_txn_mdb(txn), s->dbi[db], &k, &v, 0);

    if (rc != 0)
        return keel_store_mdb_err(err, rc, "store '%s': cannot write to '%s'", s->dir,
                                  db_names[db]);
    return 0;
}

int keel_store_del(keel_store *s, keel_txn *txn, enum keel_db db, const void *key, size_t klen,
                   struct keel_error *err)
{
    MDB_val k = {klen, (void *)key};
    int rc = mdb_del(keel_txn_mdb(txn), s->dbi[db], &k, NULL);

    if (rc != 0 && rc != MDB_NOTFOUND)
        return keel_store_mdb_err(err, rc, "store '%s': cannot delete from '%s'", s->dir,
                                  db_names[db]);
    return 0;
}
