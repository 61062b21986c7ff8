/*
 * ps.c - a server's parameter ranges: push, pull, exactly-once, clocks.
 *
 * A held range is a struct keel_snapshot the range owns (malloc'ed arrays,
 * owned = 1): its tables with sorted keys, rows and optimizer state, its
 * per-shard positions and its LSN.  The same struct is what a snapshot
 * writes and what a restore fills, so nothing is converted on the way in
 * or out.
 */
#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "log.h"
#include "ps.h"
#include "keel/range.h"

#define MAX_TABLES KEEL_MODEL_MAX_LAYERS

struct range_state {
    pthread_mutex_t lock;
    int held;
    int primary; /* pushes and pulls are served; else a backup's copy, fed by REPLICATE */
    struct keel_snapshot snap;
};

struct worker_clock {
    char id[KEEL_ID_MAX + 1];
    uint64_t clock; /* clocks finished: the last push's clock + 1, or a training pull's clock */
    int live;       /* registered (members/worker/<id>) */
    int trained;    /* pushed or pulled for training here */
    int owner;      /* holds a lease of an unfinished shard, or trained since the leases said not */
};

struct keel_ps {
    struct keel_jobspec spec;
    struct keel_optim optim;
    struct keel_table_desc tables[MAX_TABLES];
    size_t ntables;
    uint32_t state_width[MAX_TABLES];
    struct range_state ranges[KEEL_PROTO_NRANGES];
    pthread_mutex_t clock_lock; /* guards the rest */
    struct worker_clock *workers;
    size_t nworkers;
    char (*members)[KEEL_ID_MAX + 1]; /* the registered workers, once told */
    size_t nmembers;
    int members_known;
    int leases_known; /* keel_ps_set_owners() was called: the clock set is the owners */
};

int keel_ps_optim_of(const struct keel_jobspec *spec, struct keel_optim *o, struct keel_error *err)
{
    int rc;

    if (spec->optimizer.type < KEEL_OPTIM_SGD || spec->optimizer.type > KEEL_OPTIM_ADAM)
        return keel_err_set(err, KEEL_EINVAL, "job '%s': unknown optimizer %d", spec->name,
                            (int)spec->optimizer.type);
    if ((rc = keel_optim_defaults(o, spec->optimizer.type, err)) != 0)
        return rc;
    o->lr = (float)spec->optimizer.lr;
    o->momentum = (float)spec->optimizer.momentum;
    o->beta1 = (float)spec->optimizer.beta1;
    o->beta2 = (float)spec->optimizer.beta2;
    o->epsilon = (float)spec->optimizer.epsilon;
    return keel_optim_check(o, err);
}

int keel_ps_new(const struct keel_jobspec *spec, struct keel_ps **out, struct keel_error *err)
{
    struct keel_ps *ps = keel_calloc(1, sizeof(*ps));
    int rc;

    ps->spec = *spec;
    if ((rc = keel_ps_optim_of(spec, &ps->optim, err)) != 0) {
        free(ps);
        return rc;
    }
    ps->ntables = keel_jobspec_tables(spec, ps->tables, MAX_TABLES);
    for (size_t i = 0; i < ps->ntables; i++)
        ps->state_width[i] = (uint32_t)keel_optim_state_width(&ps->optim, ps->tables[i].row_width);
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++)
        pthread_mutex_init(&ps->ranges[r].lock, NULL);
    pthread_mutex_init(&ps->clock_lock, NULL);
    *out = ps;
    return 0;
}

void keel_ps_free(struct keel_ps *ps)
{
    if (ps == NULL)
        return;
    for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
        keel_snapshot_release(&ps->ranges[r].snap);
        pthread_mutex_destroy(&ps->ranges[r].lock);
    }
    pthread_mutex_destroy(&ps->clock_lock);
    free(ps->workers);
    free(ps->members);
    free(ps);
}

/* Every row of the model whose key is in `range`, from the initializer. */
static void init_range(struct keel_ps *ps, unsigned range, struct keel_snapshot *snap)
{
    snap->range = range;
    snap->owned = 1;
    KEEL_ALLOC_ARRAY(snap->tables, ps->ntables);
    snap->ntables = ps->ntables;
    for (size_t i = 0; i < ps->ntables; i++) {
        const struct keel_table_desc *d = &ps->tables[i];
        struct keel_snap_table *t = &snap->tables[i];
        uint64_t n = 0;

        t->table_id = d->id;
        t->width = d->row_width;
        t->state_width = ps->state_width[i];
        for (uint64_t row = 0; row < d->rows; row++)
            n += keel_range_of(keel_key_make(d->id, row)) == range;
        KEEL_ALLOC_ARRAY(t->keys, n ? n : 1);
        KEEL_ALLOC_ARRAY(t->rows, n ? n * d->row_width : 1);
        KEEL_ALLOC_ARRAY(t->state, n && t->state_width ? n * t->state_width : 1);
        for (uint64_t row = 0; row < d->rows; row++) {
            uint64_t key = keel_key_make(d->id, row);

            if (keel_range_of(key) != range)
                continue;
            t->keys[t->nrows] = key;
            keel_jobspec_init_row(&ps->spec, d, row, t->rows + t->nrows * d->row_width);
            t->nrows++;
        }
    }
}

/* Gradients applied per keel_optim_apply_rows_finite() call: the row indices stay on the stack. */
#define APPLY_CHUNK 256

/*
 * Apply the rows of `push` (all in this range, keys ascending) to `snap`'s
 * rows; caller holds the lock.  `finite`: the caller has checked every
 * gradient (a push, before any range changed); else they are checked here.
 * Each key's row is found by a binary search over the rows after the
 * previous key's, and the rows are applied in chunks through the one batched
 * update path.  A key not in the range stops the apply there (a push's keys
 * were checked before; a log or a backup's stream holding one is broken).
 */
static int apply_rows(struct keel_ps *ps, struct keel_snapshot *snap,
                      const struct keel_msg_push *push, int finite, struct keel_error *err)
{
    const struct keel_rows *d = &push->data;
    struct keel_snap_table *t = keel_snapshot_table(snap, d->table_id);
    struct keel_optim o = ps->optim;
    uint32_t at[APPLY_CHUNK];
    uint64_t from = 0;

    if (t == NULL || t->width != d->row_width)
        return keel_err_set(err, KEEL_EINVAL, "no table %u of width %u in the model", d->table_id,
                            d->row_width);
    if (!finite) /* a bad gradient must change nothing */
        for (size_t i = 0; i < (size_t)d->nkeys * d->row_width; i++)
            if (!isfinite(d->rows[i]))
                return keel_err_set(err, KEEL_EINVAL, "gradient of key %llu is not finite",
                                    (unsigned long long)d->keys[i / d->row_width]);
    if (t->nrows > UINT32_MAX)
        return keel_err_set(err, KEEL_EINVAL, "table %u holds %llu rows in range %u", t->table_id,
                            (unsigned long long)t->nrows, snap->range);
    o.lr = (float)keel_jobspec_lr_at(&ps->spec, push->clock); /* the schedule's rate at its clock */
    for (uint32_t k0 = 0; k0 < d->nkeys; k0 += APPLY_CHUNK) {
        uint32_t n = d->nkeys - k0 < APPLY_CHUNK ? d->nkeys - k0 : APPLY_CHUNK;

        for (uint32_t k = 0; k < n; k++) {
            struct keel_snap_table rest = *t;
            int64_t found;

            rest.keys = t->keys + from;
            rest.nrows = t->nrows - from;
            if ((found = keel_snap_table_find(&rest, d->keys[k0 + k])) < 0)
                return keel_err_set(err, KEEL_EINVAL, "key %llu is not in range %u",
                                    (unsigned long long)d->keys[k0 + k], snap->range);
            from += (uint64_t)found;
            at[k] = (uint32_t)from++;
        }
        keel_optim_apply_rows_finite(&o, t->rows, t->state_width ? t->state : NULL, at,
                                     d->rows + (size_t)k0 * d->row_width, n, t->width);
    }
    return 0;
}

static int replay_cb(struct keel_snapshot *snap, const struct keel_ulog_record *rec, void *ctx,
                     struct keel_error *err)
{
    struct keel_ps *ps = ctx;

    if (snap->ntables == 0)
        init_range(ps, snap->range, snap);
    return apply_rows(ps, snap, &rec->push, 0, err); /* the log's records are checked again */
}

int keel_ps_open_range(struct keel_ps *ps, keel_store *store, unsigned range,
                       struct keel_restore_stats *out, struct keel_error *err)
{
    struct range_state *r = &ps->ranges[range];
    struct keel_restore_stats stats = {0};
    int rc = 0;

    pthread_mutex_lock(&r->lock);
    if (r->held)
        goto out;
    memset(&r->snap, 0, sizeof(r->snap));
    if (store != NULL) {
        rc = keel_restore(store, range, &r->snap, replay_cb, ps, &stats, err);
        if (rc != 0) {
            keel_snapshot_release(&r->snap);
            goto out;
        }
        r->snap.owned = 1;
    }
    if (r->snap.ntables == 0) {
        uint64_t lsn = r->snap.lsn;
        struct keel_shard_pos *shards = r->snap.shards;
        size_t nshards = r->snap.nshards;

        r->snap.shards = NULL;
        r->snap.nshards = 0;
        keel_snapshot_release(&r->snap);
        init_range(ps, range, &r->snap);
        r->snap.lsn = lsn;
        r->snap.shards = shards;
        r->snap.nshards = nshards;
    }
    r->held = 1;
    r->primary = 1;
out:
    pthread_mutex_unlock(&r->lock);
    if (out != NULL)
        *out = stats;
    return rc;
}

int keel_ps_holds(struct keel_ps *ps, unsigned range)
{
    int held;

    pthread_mutex_lock(&ps->ranges[range].lock);
    held = ps->ranges[range].held;
    pthread_mutex_unlock(&ps->ranges[range].lock);
    return held;
}

void keel_ps_close_range(struct keel_ps *ps, unsigned range)
{
    struct range_state *r = &ps->ranges[range];

    pthread_mutex_lock(&r->lock);
    keel_snapshot_release(&r->snap);
    r->held = 0;
    r->primary = 0;
    pthread_mutex_unlock(&r->lock);
}

int keel_ps_is_primary(struct keel_ps *ps, unsigned range)
{
    int primary;

    pthread_mutex_lock(&ps->ranges[range].lock);
    primary = ps->ranges[range].held && ps->ranges[range].primary;
    pthread_mutex_unlock(&ps->ranges[range].lock);
    return primary;
}

void keel_ps_set_primary(struct keel_ps *ps, unsigned range, int primary)
{
    pthread_mutex_lock(&ps->ranges[range].lock);
    ps->ranges[range].primary = ps->ranges[range].held && primary;
    pthread_mutex_unlock(&ps->ranges[range].lock);
}

/* Whether `snap` has the shape of this job's range `range` (tables, widths, keys). */
static int check_copy(const struct keel_ps *ps, unsigned range, const struct keel_snapshot *snap,
                      struct keel_error *err)
{
    if (snap->range != range || snap->ntables != ps->ntables)
        return keel_err_set(err, KEEL_EINVAL,
                            "copy of range %u: range %u with %zu tables, not "
                            "%zu",
                            range, snap->range, snap->ntables, ps->ntables);
    for (size_t i = 0; i < ps->ntables; i++) {
        const struct keel_snap_table *t = &snap->tables[i];

        if (t->table_id != ps->tables[i].id || t->width != ps->tables[i].row_width ||
            t->state_width != ps->state_width[i])
            return keel_err_set(err, KEEL_EINVAL,
                                "copy of range %u: table %" PRIu32 " is not the job's table %u "
                                "of width %" PRIu32,
                                range, t->table_id, ps->tables[i].id, ps->tables[i].row_width);
        for (uint64_t k = 0; k < t->nrows; k++)
            if (keel_range_of(t->keys[k]) != range ||
                keel_key_row(t->keys[k]) >= ps->tables[i].rows)
                return keel_err_set(err, KEEL_EINVAL,
                                    "copy of range %u: key %llu is not one of "
                                    "its rows",
                                    range, (unsigned long long)t->keys[k]);
    }
    return 0;
}

int keel_ps_install(struct keel_ps *ps, unsigned range, struct keel_snapshot *snap,
                    struct keel_error *err)
{
    struct range_state *r = &ps->ranges[range];
    int rc;

    if (range >= KEEL_PROTO_NRANGES || (rc = check_copy(ps, range, snap, err)) != 0)
        return range >= KEEL_PROTO_NRANGES ? keel_err_set(err, KEEL_EINVAL, "range %u", range) : rc;
    pthread_mutex_lock(&r->lock);
    keel_snapshot_release(&r->snap);
    r->snap = *snap;
    r->snap.owned = 1;
    r->held = 1;
    r->primary = 0;
    pthread_mutex_unlock(&r->lock);
    memset(snap, 0, sizeof(*snap));
    return 0;
}

int keel_ps_replicate(struct keel_ps *ps, unsigned range, uint64_t lsn,
                      const struct keel_msg_push *push, struct keel_error *err)
{
    const struct keel_rows *d = &push->data;
    struct range_state *r;
    struct keel_shard_pos *sp;
    int rc = 0;

    if (range >= KEEL_PROTO_NRANGES)
        return keel_err_set(err, KEEL_EINVAL, "replicate: range %u", range);
    for (uint32_t k = 0; k < d->nkeys; k++)
        if (keel_range_of(d->keys[k]) != range)
            return keel_err_set(err, KEEL_EINVAL, "replicate: key %llu is not in range %u",
                                (unsigned long long)d->keys[k], range);
    r = &ps->ranges[range];
    pthread_mutex_lock(&r->lock);
    if (!r->held || r->primary) {
        rc = keel_err_set(err, KEEL_EEPOCH, "range %u is %s here", range,
                          r->held ? "led" : "not copied");
        goto out;
    }
    if (lsn <= r->snap.lsn) {
        rc = 1; /* held already (a copy covered it) */
        goto out;
    }
    if (lsn != r->snap.lsn + 1) {
        rc = keel_err_set(err, KEEL_EUNAVAILABLE,
                          "range %u: update %" PRIu64 " does not follow %" PRIu64 " held here",
                          range, lsn, r->snap.lsn);
        goto out;
    }
    sp = keel_snapshot_shard(&r->snap, push->shard);
    if (sp->seq < push->seq) {
        if ((rc = apply_rows(ps, &r->snap, push, 0, err)) != 0)
            goto out;
        sp = keel_snapshot_shard(&r->snap, push->shard);
        sp->seq = push->seq;
        sp->incarnation = push->incarnation;
        snprintf(sp->worker_id, sizeof(sp->worker_id), "%.*s", (int)push->worker_id.len,
                 push->worker_id.ptr);
    }
    r->snap.lsn = lsn;
out:
    pthread_mutex_unlock(&r->lock);
    return rc;
}

void keel_ps_result_release(struct keel_ps_result *r)
{
    free(r->applied);
    free(r->owner);
    free(r->owner_rows);
    memset(r, 0, sizeof(*r));
}

/*
 * The exactly-once position of a push is kept per (shard, table): a worker
 * sends one PUSH per table of a batch, all with the batch's seq, and a range
 * may hold rows of several tables.  The position's id is the shard for table
 * 1 and the shard plus (table - 1) << 16 for the others, so a one-table
 * model's positions are just its shards.  Logged records carry the same id,
 * so replay after a restart skips exactly what was applied.
 */
static uint32_t position_id(uint32_t shard, uint32_t table_id)
{
    return keel_position_id(shard, table_id);
}

/* Whether worker `id` is registered, as far as this server was told (clock_lock held). */
static int is_member(const struct keel_ps *ps, struct keel_str id)
{
    if (!ps->members_known)
        return 1;
    for (size_t i = 0; i < ps->nmembers; i++)
        if (strlen(ps->members[i]) == id.len && memcmp(ps->members[i], id.ptr, id.len) == 0)
            return 1;
    return 0;
}

/* Worker `id`'s entry, made at clock 0 when there is none (clock_lock held). */
static struct worker_clock *worker_of(struct keel_ps *ps, struct keel_str id)
{
    struct worker_clock *w;

    if (id.len == 0 || id.len > KEEL_ID_MAX)
        return NULL;
    for (size_t i = 0; i < ps->nworkers; i++)
        if (strlen(ps->workers[i].id) == id.len && memcmp(ps->workers[i].id, id.ptr, id.len) == 0)
            return &ps->workers[i];
    KEEL_REALLOC_ARRAY(ps->workers, ps->nworkers + 1);
    w = &ps->workers[ps->nworkers++];
    memset(w, 0, sizeof(*w));
    memcpy(w->id, id.ptr, id.len);
    w->live = is_member(ps, id);
    return w;
}

/* Whether `w` is in the clock set (clock_lock held). */
static int in_clock_set(const struct keel_ps *ps, const struct worker_clock *w)
{
    return w->live && (ps->leases_known ? w->owner : w->trained);
}

/* Worker `id` trained at `clock`: move its clock forward to it (never back). */
static void worker_clock_set(struct keel_ps *ps, struct keel_str id, uint64_t clock)
{
    struct worker_clock *w;

    pthread_mutex_lock(&ps->clock_lock);
    if ((w = worker_of(ps, id)) != NULL) {
        w->trained = 1;
        w->owner = 1;
        if (clock > w->clock)
            w->clock = clock;
    }
    pthread_mutex_unlock(&ps->clock_lock);
}

void keel_ps_pulled(struct keel_ps *ps, struct keel_str worker, uint64_t clock)
{
    if (clock > 0) /* clock 0 never waits, and is what an evaluation pulls at */
        worker_clock_set(ps, worker, clock);
}

int keel_ps_push(struct keel_ps *ps, const struct keel_msg_push *push, struct keel_ps_result *out,
                 struct keel_error *err)
{
    const struct keel_rows *d = &push->data;
    uint32_t w = d->row_width;
    uint64_t *keys;
    float *rows;
    uint32_t *order;
    size_t nranges = 0, pos = 0;
    int rc = 0;

    memset(out, 0, sizeof(*out));
    out->duplicate = 1;
    if (push->seq == 0)
        return keel_err_set(err, KEEL_EINVAL, "push from '%.*s' has seq 0: positions start at 1",
                            (int)push->worker_id.len, push->worker_id.ptr);
    if (push->shard > 0xFFFF || d->table_id < 1 || d->table_id > 0xFFFF)
        return keel_err_set(err, KEEL_EINVAL, "push for shard %u of table %u: out of range",
                            push->shard, d->table_id);
    if (d->nkeys == 0)
        goto done;
    /*
     * Split the push by range, keeping key order within each range: counting
     * sort on the range, one allocation for all the per-range pushes.
     */
    {
        uint32_t count[KEEL_PROTO_NRANGES] = {0}, start[KEEL_PROTO_NRANGES];

        for (uint32_t k = 0; k < d->nkeys; k++)
            count[keel_range_of(d->keys[k])]++;
        for (unsigned r = 0; r < KEEL_PROTO_NRANGES; r++) {
            start[r] = (uint32_t)pos;
            pos += count[r];
            nranges += count[r] != 0;
        }
        KEEL_ALLOC_ARRAY(keys, d->nkeys);
        rows = keel_malloc(keel_size_mul(keel_size_mul(d->nkeys, w), sizeof(float)));
        KEEL_ALLOC_ARRAY(order, d->nkeys);
        out->owner = keys;
        out->owner_rows = rows;
        for (uint32_t k = 0; k < d->nkeys; k++)
            order[start[keel_range_of(d->keys[k])]++] = k;
        /* Rows sent as 16-bit floats are widened here: the server keeps and logs floats. */
        for (uint32_t i = 0; i < d->nkeys; i++) {
            keys[i] = d->keys[order[i]];
            keel_rows_widen(d, order[i], 1, rows + (size_t)i * w);
        }
        free(order);
    }
    KEEL_ALLOC_ARRAY(out->applied, nranges);
    /* Refuse a push that does not fit the model before anything changes. */
    {
        const struct keel_table_desc *t = NULL;

        for (size_t ti = 0; ti < ps->ntables; ti++)
            if (ps->tables[ti].id == d->table_id)
                t = &ps->tables[ti];
        if (t == NULL || t->row_width != w) {
            keel_ps_result_release(out);
            return keel_err_set(err, KEEL_EINVAL, "no table %u of width %u in the model",
                                d->table_id, w);
        }
        for (uint32_t k = 0; k < d->nkeys; k++)
            if (keel_key_table(d->keys[k]) != t->id || keel_key_row(d->keys[k]) >= t->rows) {
                keel_ps_result_release(out);
                return keel_err_set(err, KEEL_EINVAL, "key %llu is not a row of table %u",
                                    (unsigned long long)d->keys[k], t->id);
            }
    }
    /* Refuse a bad gradient before anything changes. */
    for (size_t i = 0; i < (size_t)d->nkeys * w; i++)
        if (!isfinite(rows[i])) {
            rc = keel_err_set(err, KEEL_EINVAL, "gradient of key %llu is not finite",
                              (unsigned long long)keys[i / w]);
            keel_ps_result_release(out); /* frees keys and rows */
            return rc;
        }
    /*
     * Lock every range the push touches, in ascending order (the order of
     * `keys` now), so that the push is applied to all of them or to none: a
     * range that is not held here refuses the whole push.
     */
    for (uint32_t i = 0; i < d->nkeys;) {
        unsigned range = keel_range_of(keys[i]);

        pthread_mutex_lock(&ps->ranges[range].lock);
        if (!ps->ranges[range].primary && rc == 0)
            rc = keel_err_set(err, KEEL_EREDIRECT, "range %u is not led here", range);
        while (i < d->nkeys && keel_range_of(keys[i]) == range)
            i++;
    }
    for (uint32_t i = 0; i < d->nkeys && rc == 0;) {
        unsigned range = keel_range_of(keys[i]);
        struct range_state *r = &ps->ranges[range];
        struct keel_ps_applied *a = &out->applied[out->napplied];
        uint32_t pos_id = position_id(push->shard, d->table_id);
        struct keel_shard_pos *sp = keel_snapshot_shard(&r->snap, pos_id);
        uint32_t j = i;

        while (j < d->nkeys && keel_range_of(keys[j]) == range)
            j++;
        if (sp->seq >= push->seq) { /* applied before: exactly once */
            i = j;
            continue;
        }
        a->range = range;
        a->push = *push;
        a->push.shard = pos_id; /* logged with its position id: see position_id() */
        a->push.data.nkeys = j - i;
        a->push.data.keys = keys + i;
        a->push.data.rows = rows + (size_t)i * w;
        a->push.data.enc = KEEL_ROWS_F32; /* widened above */
        a->push.data.half = NULL;
        /* Checked above: the keys are the model's and the gradients finite. */
        rc = apply_rows(ps, &r->snap, &a->push, 1, err);
        if (rc != 0)
            break;
        sp = keel_snapshot_shard(&r->snap, pos_id);
        sp->seq = push->seq;
        sp->incarnation = push->incarnation;
        snprintf(sp->worker_id, sizeof(sp->worker_id), "%.*s", (int)push->worker_id.len,
                 push->worker_id.ptr);
        a->lsn = ++r->snap.lsn;
        out->napplied++;
        out->duplicate = 0;
        if (a->lsn > out->lsn)
            out->lsn = a->lsn;
        i = j;
    }
    for (uint32_t i = 0; i < d->nkeys;) {
        unsigned range = keel_range_of(keys[i]);

        pthread_mutex_unlock(&ps->ranges[range].lock);
        while (i < d->nkeys && keel_range_of(keys[i]) == range)
            i++;
    }
    if (rc != 0) {
        keel_ps_result_release(out);
        return rc;
    }
done:
    worker_clock_set(ps, push->worker_id, push->clock + 1);
    return 0;
}

int keel_ps_check_pull(const struct keel_ps *ps, uint32_t table_id, uint32_t row_width,
                       uint32_t nkeys, uint64_t max_frame, struct keel_error *err)
{
    /* A reply's header and fixed fields, with room to spare; then 8 bytes a key, 4 a float. */
    const uint64_t fixed = KEEL_PROTO_HEADER_SIZE + 64;
    size_t i;

    for (i = 0; i < ps->ntables && ps->tables[i].id != table_id; i++)
        ;
    if (i == ps->ntables)
        return keel_err_set(err, KEEL_EINVAL, "job '%s' has no table %" PRIu32, ps->spec.name,
                            table_id);
    if (ps->tables[i].row_width != row_width)
        return keel_err_set(err, KEEL_EINVAL,
                            "table %" PRIu32 " of job '%s' has rows of %" PRIu32
                            " floats, not %" PRIu32,
                            table_id, ps->spec.name, ps->tables[i].row_width, row_width);
    if (fixed + (uint64_t)nkeys * (8 + 4 * (uint64_t)row_width) > max_frame)
        return keel_err_set(err, KEEL_EINVAL,
                            "a reply of %" PRIu32 " rows of %" PRIu32
                            " floats would not fit a frame of %" PRIu64 " bytes",
                            nkeys, row_width, max_frame);
    return 0;
}

int keel_ps_pull(struct keel_ps *ps, uint32_t table_id, uint32_t row_width, const uint64_t *keys,
                 uint32_t nkeys, float *rows, struct keel_error *err)
{
    for (uint32_t k = 0; k < nkeys; k++) {
        unsigned range = keel_range_of(keys[k]);
        struct range_state *r = &ps->ranges[range];
        struct keel_snap_table *t;
        int64_t at;

        pthread_mutex_lock(&r->lock);
        if (!r->primary) {
            pthread_mutex_unlock(&r->lock);
            return keel_err_set(err, KEEL_EREDIRECT, "range %u is not led here", range);
        }
        t = keel_snapshot_table(&r->snap, table_id);
        at = t && t->width == row_width ? keel_snap_table_find(t, keys[k]) : -1;
        if (at < 0) {
            pthread_mutex_unlock(&r->lock);
            return keel_err_set(err, KEEL_EINVAL, "no key %llu of width %u in table %u",
                                (unsigned long long)keys[k], row_width, table_id);
        }
        memcpy(rows + (size_t)k * row_width, t->rows + (size_t)at * row_width,
               (size_t)row_width * 4);
        pthread_mutex_unlock(&r->lock);
    }
    return 0;
}

uint64_t keel_ps_min_clock(struct keel_ps *ps)
{
    uint64_t min = UINT64_MAX;

    pthread_mutex_lock(&ps->clock_lock);
    for (size_t i = 0; i < ps->nworkers; i++)
        if (in_clock_set(ps, &ps->workers[i]) && ps->workers[i].clock < min)
            min = ps->workers[i].clock;
    pthread_mutex_unlock(&ps->clock_lock);
    return min == UINT64_MAX ? 0 : min;
}

int keel_ps_clock_ready(struct keel_ps *ps, uint64_t clock)
{
    uint64_t s = ps->spec.consistency == KEEL_CONSISTENCY_SSP ? ps->spec.staleness : 0;
    uint64_t min = UINT64_MAX;
    size_t live = 0;

    if (ps->spec.consistency == KEEL_CONSISTENCY_ASP)
        return 1;
    pthread_mutex_lock(&ps->clock_lock);
    for (size_t i = 0; i < ps->nworkers; i++) {
        if (!in_clock_set(ps, &ps->workers[i]))
            continue;
        live++;
        if (ps->workers[i].clock < min)
            min = ps->workers[i].clock;
    }
    pthread_mutex_unlock(&ps->clock_lock);
    return live == 0 || min + s >= clock;
}

void keel_ps_set_workers(struct keel_ps *ps, const char *const *ids, size_t n)
{
    pthread_mutex_lock(&ps->clock_lock);
    KEEL_REALLOC_ARRAY(ps->members, n ? n : 1);
    ps->nmembers = 0;
    for (size_t j = 0; j < n; j++)
        snprintf(ps->members[ps->nmembers++], sizeof(ps->members[0]), "%s", ids[j]);
    ps->members_known = 1;
    for (size_t i = 0; i < ps->nworkers; i++) {
        struct worker_clock *w = &ps->workers[i];
        int was = in_clock_set(ps, w);

        w->live = is_member(ps, keel_str_of(w->id));
        if (was && !in_clock_set(ps, w))
            KEEL_LOG_INFO("worker %s left the clock set at clock %llu: it is no longer registered",
                          w->id, (unsigned long long)w->clock);
    }
    pthread_mutex_unlock(&ps->clock_lock);
}

void keel_ps_set_owners(struct keel_ps *ps, const char *const *ids, size_t n)
{
    pthread_mutex_lock(&ps->clock_lock);
    for (size_t j = 0; j < n; j++) {
        struct worker_clock *w = worker_of(ps, keel_str_of(ids[j]));

        if (w != NULL && !w->owner && w->live)
            KEEL_LOG_INFO("worker %s joins the clock set at clock %llu: it holds a lease", w->id,
                          (unsigned long long)w->clock);
        if (w != NULL)
            w->owner = 2; /* listed: kept below */
    }
    for (size_t i = 0; i < ps->nworkers; i++) {
        struct worker_clock *w = &ps->workers[i];

        if (w->owner == 2) {
            w->owner = 1;
        } else if (w->owner || !ps->leases_known) {
            if (w->live && (w->owner || w->trained))
                KEEL_LOG_INFO("worker %s left the clock set at clock %llu: it holds no lease",
                              w->id, (unsigned long long)w->clock);
            w->owner = 0;
        }
    }
    ps->leases_known = 1;
    pthread_mutex_unlock(&ps->clock_lock);
}

static void copy_table(struct keel_snap_table *dst, const struct keel_snap_table *src)
{
    *dst = *src;
    dst->keys = keel_malloc(keel_size_mul(src->nrows, 8) + 8);
    dst->rows = keel_malloc(keel_size_mul(keel_size_mul(src->nrows, src->width), 4) + 4);
    dst->state = NULL;
    memcpy(dst->keys, src->keys, src->nrows * 8);
    memcpy(dst->rows, src->rows, src->nrows * src->width * 4);
    if (src->state_width) {
        dst->state = keel_malloc(keel_size_mul(keel_size_mul(src->nrows, src->state_width), 4) + 4);
        memcpy(dst->state, src->state, src->nrows * src->state_width * 4);
    }
}

int keel_ps_snapshot(struct keel_ps *ps, unsigned range, struct keel_snapshot *out,
                     struct keel_error *err)
{
    struct range_state *r = &ps->ranges[range];

    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&r->lock);
    if (!r->held) {
        pthread_mutex_unlock(&r->lock);
        return keel_err_set(err, KEEL_EREDIRECT, "range %u is not held here", range);
    }
    *out = r->snap;
    out->owned = 1;
    KEEL_ALLOC_ARRAY(out->tables, r->snap.ntables ? r->snap.ntables : 1);
    for (size_t i = 0; i < r->snap.ntables; i++)
        copy_table(&out->tables[i], &r->snap.tables[i]);
    KEEL_ALLOC_ARRAY(out->shards, r->snap.nshards ? r->snap.nshards : 1);
    if (r->snap.nshards)
        memcpy(out->shards, r->snap.shards, r->snap.nshards * sizeof(out->shards[0]));
    pthread_mutex_unlock(&r->lock);
    return 0;
}

uint64_t keel_ps_rows(struct keel_ps *ps, unsigned range)
{
    struct range_state *r = &ps->ranges[range];
    uint64_t n = 0;

    pthread_mutex_lock(&r->lock);
    for (size_t t = 0; r->held && t < r->snap.ntables; t++)
        n += r->snap.tables[t].nrows;
    pthread_mutex_unlock(&r->lock);
    return n;
}

void keel_ps_floor(struct keel_ps *ps, unsigned range, uint64_t *floor, uint32_t nshards)
{
    struct range_state *r = &ps->ranges[range];

    pthread_mutex_lock(&r->lock);
    for (size_t t = 0; r->held && t < r->snap.ntables; t++) {
        const struct keel_snap_table *tb = &r->snap.tables[t];

        if (tb->nrows == 0)
            continue; /* no push ever reaches this range for this table */
        for (uint32_t n = 0; n < nshards; n++) {
            uint32_t id = position_id(n, tb->table_id);
            uint64_t seq = 0;

            for (size_t i = 0; i < r->snap.nshards; i++)
                if (r->snap.shards[i].shard == id) {
                    seq = r->snap.shards[i].seq;
                    break;
                }
            if (seq < floor[n])
                floor[n] = seq;
        }
    }
    pthread_mutex_unlock(&r->lock);
}

uint64_t keel_ps_lsn(struct keel_ps *ps, unsigned range)
{
    uint64_t lsn;

    pthread_mutex_lock(&ps->ranges[range].lock);
    lsn = ps->ranges[range].snap.lsn;
    pthread_mutex_unlock(&ps->ranges[range].lock);
    return lsn;
}
