/*
 * cstate.c - a cluster's keys read at one revision and sorted out (cstate.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/buf.h"
#include "keel/cstate.h"
#include "log.h"
#include "keel/progress.h"

void keel_cstate_release(struct keel_cstate *s)
{
    for (size_t i = 0; i < s->njobs; i++) {
        free(s->jobs[i].shards);
        free(s->jobs[i].progress);
        free(s->jobs[i].eval);
    }
    free(s->jobs);
    keel_member_list_free(s->members, s->nmembers);
    keel_etcd_kvs_release(&s->kvs);
    free(s->prefix);
    memset(s, 0, sizeof(*s));
}

const char *keel_cstate_rel(const struct keel_cstate *s, const struct keel_etcd_kv *kv)
{
    size_t n = s->prefix ? strlen(s->prefix) : 0;

    return n && strncmp(kv->key, s->prefix, n) == 0 ? kv->key + n : "";
}

const struct keel_cstate_job *keel_cstate_job(const struct keel_cstate *s, const char *name)
{
    for (size_t i = 0; i < s->njobs; i++)
        if (strcmp(s->jobs[i].name, name) == 0)
            return &s->jobs[i];
    return NULL;
}

const struct keel_member_info *keel_cstate_members(const struct keel_cstate *s, const char *role,
                                                   size_t *n)
{
    size_t first = 0, count = 0;

    while (first < s->nmembers && strcmp(s->members[first].role, role) != 0)
        first++;
    while (first + count < s->nmembers && strcmp(s->members[first + count].role, role) == 0)
        count++;
    *n = count;
    return count ? &s->members[first] : NULL;
}

/* members/<role>/<id>: decode, check it names itself, append. */
static void add_member(struct keel_cstate *s, const struct keel_etcd_kv *kv, const char *rest)
{
    struct keel_member_info info;
    struct keel_error err;
    const char *slash = strchr(rest, '/');

    keel_error_init(&err);
    if (slash == NULL)
        return;
    if (keel_member_decode(kv->value, kv->value_len, &info, &err) != 0) {
        KEEL_LOG_WARN("ignoring member '%s': %s", kv->key, err.msg);
        return;
    }
    if (strlen(info.role) != (size_t)(slash - rest) ||
        strncmp(info.role, rest, (size_t)(slash - rest)) != 0 || strcmp(info.id, slash + 1) != 0 ||
        !keel_id_valid(info.id)) {
        KEEL_LOG_WARN("ignoring member '%s': its value names '%s/%s'", kv->key, info.role, info.id);
        keel_member_info_release(&info);
        return;
    }
    info.lease = kv->lease;
    info.create_revision = kv->create_revision;
    KEEL_REALLOC_ARRAY(s->members, s->nmembers + 1);
    s->members[s->nmembers++] = info;
}

static struct keel_cstate_job *job_of(struct keel_cstate *s, const char *name, size_t len)
{
    struct keel_cstate_job *j;

    if (s->njobs > 0) {
        j = &s->jobs[s->njobs - 1]; /* keys are sorted: a job's keys come together */
        if (strlen(j->name) == len && memcmp(j->name, name, len) == 0)
            return j;
    }
    KEEL_REALLOC_ARRAY(s->jobs, s->njobs + 1);
    j = &s->jobs[s->njobs++];
    memset(j, 0, sizeof(*j));
    memcpy(j->name, name, len);
    j->name[len] = '\0';
    return j;
}

static void add_item(struct keel_cstate_item **items, size_t *n, uint32_t num, const char *worker,
                     const struct keel_etcd_kv *kv)
{
    struct keel_cstate_item *it;

    KEEL_REALLOC_ARRAY(*items, *n + 1);
    it = &(*items)[(*n)++];
    memset(it, 0, sizeof(*it));
    it->num = num;
    if (worker)
        snprintf(it->worker, sizeof(it->worker), "%s", worker);
    it->kv = kv;
}

static int cmp_item(const void *a, const void *b)
{
    const struct keel_cstate_item *x = a, *y = b;

    if (x->num != y->num)
        return x->num < y->num ? -1 : 1;
    return strcmp(x->worker, y->worker);
}

static void sort_items(struct keel_cstate_item *items, size_t n)
{
    if (n > 1)
        qsort(items, n, sizeof(*items), cmp_item);
}

/* jobs/<job>/<rest>: file the key under its job. */
static void add_job_key(struct keel_cstate *s, const struct keel_etcd_kv *kv, const char *path)
{
    const char *slash = strchr(path, '/');
    char name[KEEL_ID_MAX + 1], worker[KEEL_ID_MAX + 1];
    struct keel_cstate_job *j;
    const char *rest;
    uint32_t num;
    size_t len;

    if (slash == NULL || (len = (size_t)(slash - path)) == 0 || len > KEEL_ID_MAX)
        return;
    memcpy(name, path, len);
    name[len] = '\0';
    if (!keel_id_valid(name))
        return;
    rest = slash + 1;
    j = job_of(s, name, len);
    if (strcmp(rest, "spec") == 0) {
        j->spec_kv = kv;
    } else if (strcmp(rest, "state") == 0) {
        j->state_kv = kv;
    } else {
        switch (keel_job_key_parse(rest, &num, worker)) {
        case KEEL_JOB_KEY_SHARD:
            add_item(&j->shards, &j->nshards, num, NULL, kv);
            break;
        case KEEL_JOB_KEY_PROGRESS:
            add_item(&j->progress, &j->nprogress, num, NULL, kv);
            break;
        case KEEL_JOB_KEY_EVAL:
            add_item(&j->eval, &j->neval, num, worker, kv);
            break;
        case KEEL_JOB_KEY_OTHER:
            break;
        }
    }
}

static void decode_job(struct keel_cstate_job *j)
{
    struct keel_error err;

    keel_error_init(&err);
    if (j->spec_kv == NULL)
        snprintf(j->error, sizeof(j->error), "job '%s' has no spec", j->name);
    else if (keel_jobspec_decode(j->spec_kv->value, j->spec_kv->value_len, &j->spec, &err) != 0)
        snprintf(j->error, sizeof(j->error), "job '%s': %.180s", j->name, err.msg);
    else if (strcmp(j->spec.name, j->name) != 0)
        snprintf(j->error, sizeof(j->error), "job '%s': its spec names job '%s'", j->name,
                 j->spec.name);
    else
        j->spec_ok = 1;
    keel_error_init(&err);
    if (j->state_kv == NULL) {
        if (j->error[0] == '\0')
            snprintf(j->error, sizeof(j->error), "job '%s' has no state", j->name);
    } else if (keel_job_status_decode(j->state_kv->value, j->state_kv->value_len, &j->status,
                                      &err) != 0) {
        if (j->error[0] == '\0')
            snprintf(j->error, sizeof(j->error), "job '%s': %.180s", j->name, err.msg);
    } else {
        j->status_ok = 1;
    }
    sort_items(j->shards, j->nshards);
    sort_items(j->progress, j->nprogress);
    sort_items(j->eval, j->neval);
}

void keel_cstate_parse(struct keel_cstate *out, const char *cluster, struct keel_etcd_kvs *kvs)
{
    struct keel_buf prefix = KEEL_BUF_INIT;

    memset(out, 0, sizeof(*out));
    out->kvs = *kvs;
    memset(kvs, 0, sizeof(*kvs));
    keel_buf_addf(&prefix, "/keel/%s/", cluster);
    out->prefix = (char *)keel_buf_detach(&prefix, NULL);
    out->revision = out->kvs.revision;
    for (size_t i = 0; i < out->kvs.n; i++) {
        const struct keel_etcd_kv *kv = &out->kvs.kvs[i];
        const char *rel = keel_cstate_rel(out, kv);

        if (strncmp(rel, "election/coordinator/", 21) == 0) {
            if (out->leader == NULL || kv->create_revision < out->leader->create_revision)
                out->leader = kv;
        } else if (strcmp(rel, "leader") == 0) {
            out->leader_record = kv;
        } else if (strcmp(rel, "assignment") == 0) {
            out->assignment = kv;
        } else if (strncmp(rel, "members/", 8) == 0) {
            add_member(out, kv, rel + 8);
        } else if (strncmp(rel, "jobs/", 5) == 0) {
            add_job_key(out, kv, rel + 5);
        }
    }
    for (size_t i = 0; i < out->njobs; i++)
        decode_job(&out->jobs[i]);
}

int keel_cstate_read(keel_etcd *c, const char *cluster, struct keel_cstate *out,
                     struct keel_error *err)
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    struct keel_etcd_kvs kvs;
    int rc;

    memset(out, 0, sizeof(*out));
    memset(&kvs, 0, sizeof(kvs));
    keel_buf_addf(&prefix, "/keel/%s/", cluster);
    rc = keel_etcd_range_prefix(c, (const char *)prefix.buf, NULL, &kvs, err);
    keel_buf_release(&prefix);
    if (rc != 0) {
        keel_etcd_kvs_release(&kvs);
        return rc;
    }
    keel_cstate_parse(out, cluster, &kvs);
    return 0;
}

int keel_cstate_shards(const struct keel_cstate_job *j, struct keel_shard_table *t,
                       int64_t *mod_revs, struct keel_error *err)
{
    memset(t, 0, sizeof(*t));
    if (!j->spec_ok)
        return keel_err_set(err, KEEL_EINVAL, "job '%s': no usable spec", j->name);
    keel_shards_init(t, j->spec.shards, j->spec.epochs);
    if (mod_revs)
        memset(mod_revs, 0, sizeof(*mod_revs) * j->spec.shards);
    for (size_t i = 0; i < j->nshards; i++) {
        const struct keel_cstate_item *it = &j->shards[i];
        struct keel_error e;

        if (it->num >= t->nshards)
            continue;
        keel_error_init(&e);
        if (keel_shard_decode(it->kv->value, it->kv->value_len, t->epochs, &t->shards[it->num],
                              &e) != 0) {
            keel_shards_release(t);
            return keel_err_set(err, KEEL_ECORRUPT, "job '%s': shard %" PRIu32 ": %s", j->name,
                                it->num, e.msg);
        }
        if (mod_revs)
            mod_revs[it->num] = it->kv->mod_revision;
    }
    return 0;
}
