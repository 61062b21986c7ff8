/*
 * cview.c - a cluster's keys kept up to date by a watch (cview.h).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "cview.h"
#include "keys.h"

struct keel_cview {
    keel_etcd_stream *watch;
    char *cluster;
    keel_cview_fn *fn;
    void *user;
    pthread_mutex_t lock; /* guards everything below */
    int64_t revision;
    struct keel_etcd_kv *kvs; /* sorted by key */
    size_t n;
};

static void kv_copy(struct keel_etcd_kv *dst, const struct keel_etcd_kv *src)
{
    *dst = *src;
    dst->key = keel_malloc(src->key_len + 1);
    memcpy(dst->key, src->key, src->key_len);
    dst->key[src->key_len] = '\0';
    dst->value = keel_malloc(src->value_len + 1);
    memcpy(dst->value, src->value, src->value_len);
    dst->value[src->value_len] = '\0';
}

/* The index of `key`, or where it would go (*found 0). */
static size_t find(const keel_cview *v, const char *key, int *found)
{
    size_t lo = 0, hi = v->n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(v->kvs[mid].key, key);

        if (c == 0) {
            *found = 1;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *found = 0;
    return lo;
}

static void clear(keel_cview *v)
{
    for (size_t i = 0; i < v->n; i++)
        keel_etcd_kv_release(&v->kvs[i]);
    v->n = 0;
}

static void apply(keel_cview *v, const struct keel_etcd_event *ev)
{
    int found;
    size_t i = find(v, ev->kv.key, &found);

    if (ev->type == KEEL_ETCD_DELETE) {
        if (!found)
            return;
        keel_etcd_kv_release(&v->kvs[i]);
        memmove(&v->kvs[i], &v->kvs[i + 1], (v->n - i - 1) * sizeof(v->kvs[0]));
        v->n--;
        return;
    }
    if (found) {
        keel_etcd_kv_release(&v->kvs[i]);
    } else {
        KEEL_REALLOC_ARRAY(v->kvs, v->n + 1);
        memmove(&v->kvs[i + 1], &v->kvs[i], (v->n - i) * sizeof(v->kvs[0]));
        v->n++;
    }
    kv_copy(&v->kvs[i], &ev->kv);
}

static void on_watch(void *user, const struct keel_etcd_watch_batch *b)
{
    keel_cview *v = user;

    pthread_mutex_lock(&v->lock);
    if (b->reset)
        clear(v);
    for (size_t i = 0; i < b->n; i++)
        apply(v, &b->events[i]);
    v->revision = b->revision;
    pthread_mutex_unlock(&v->lock);
    if (v->fn)
        v->fn(v->user, v, b);
}

int keel_cview_start(keel_etcd *c, const char *cluster, keel_cview_fn *fn, void *user,
                     keel_cview **out, struct keel_error *err)
{
    struct keel_etcd_watch_opts wo = {0};
    struct keel_buf prefix = KEEL_BUF_INIT;
    keel_cview *v = keel_calloc(1, sizeof(*v));
    int rc;

    v->cluster = keel_strdup(cluster);
    v->fn = fn;
    v->user = user;
    pthread_mutex_init(&v->lock, NULL);
    *out = v; /* before the first callback, which may read it */
    keel_key_prefix(&prefix, cluster);
    wo.key = keel_key_str(&prefix);
    wo.prefix = 1;
    rc = keel_etcd_watch_start(c, &wo, on_watch, v, &v->watch, err);
    keel_buf_release(&prefix);
    if (rc != 0) {
        *out = NULL;
        v->watch = NULL;
        keel_cview_stop(v);
    }
    return rc;
}

void keel_cview_stop(keel_cview *v)
{
    if (v == NULL)
        return;
    if (v->watch)
        keel_etcd_stream_stop(v->watch);
    clear(v);
    free(v->kvs);
    free(v->cluster);
    pthread_mutex_destroy(&v->lock);
    free(v);
}

const char *keel_cview_cluster(const keel_cview *v)
{
    return v->cluster;
}

int64_t keel_cview_revision(keel_cview *v)
{
    int64_t rev;

    pthread_mutex_lock(&v->lock);
    rev = v->revision;
    pthread_mutex_unlock(&v->lock);
    return rev;
}

int keel_cview_get(keel_cview *v, const char *key, struct keel_buf *value, int64_t *mod_revision)
{
    int found;
    size_t i;

    pthread_mutex_lock(&v->lock);
    i = find(v, key, &found);
    if (found) {
        keel_buf_reset(value);
        keel_buf_add(value, v->kvs[i].value, v->kvs[i].value_len);
        if (mod_revision)
            *mod_revision = v->kvs[i].mod_revision;
    }
    pthread_mutex_unlock(&v->lock);
    return found ? 0 : KEEL_ENOTFOUND;
}

int keel_cview_each(keel_cview *v, const char *prefix,
                    int (*fn)(void *user, const struct keel_etcd_kv *kv), void *user)
{
    size_t plen = strlen(prefix);
    int found, rc = 0;

    pthread_mutex_lock(&v->lock);
    for (size_t i = find(v, prefix, &found);
         i < v->n && rc == 0 && strncmp(v->kvs[i].key, prefix, plen) == 0; i++)
        rc = fn(user, &v->kvs[i]);
    pthread_mutex_unlock(&v->lock);
    return rc;
}

void keel_cview_snapshot(keel_cview *v, struct keel_cstate *out)
{
    struct keel_etcd_kvs kvs;

    memset(&kvs, 0, sizeof(kvs));
    pthread_mutex_lock(&v->lock);
    KEEL_ALLOC_ARRAY(kvs.kvs, v->n ? v->n : 1);
    for (size_t i = 0; i < v->n; i++)
        kv_copy(&kvs.kvs[i], &v->kvs[i]);
    kvs.n = v->n;
    kvs.count = (int64_t)v->n;
    kvs.revision = v->revision;
    pthread_mutex_unlock(&v->lock);
    keel_cstate_parse(out, v->cluster, &kvs);
}
