/*
 * cstate.c - a cluster's keys read at one revision and sorted out (cstate.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/buf.h"
#include "etcd.h"
#include "keel/cstate.h"
#include "member.h"
#include "keys.h"
#include "log.h"

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
static void add_member(struct keel_cstate *s, const struct keel_etcd_kv *kv,
                       const struct keel_key *key)
{
    struct keel_member_info info;
    struct keel_error err;

    keel_error_init(&err);
    if (keel_member_decode(kv->value, kv->value_len, &info, &err) != 0) {
        KEEL_LOG_WARN("ignoring member '%s': %s", kv->key, err.msg);
        return;
    }
    if (strcmp(info.role, key->role) != 0 || strcmp(info.id, key->id) != 0) {
        KEEL_LOG_WARN("ignoring member '%s': its value names '%s/%s'", kv->key, info.role, info.id);
        keel_member_info_release(&info);
        return;
    }
    info.lease = kv->lease;
    info.create_revision = kv->create_revision;
    KEEL_REALLOC_ARRAY(s->members, s->nmembers + 1);
    s->members[s->nmembers++] = info;
}

static struct keel_cstate_job *job_of(struct keel_cstate *s, const char *name)
{
    size_t len = strlen(name);
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

/* jobs/<job>/...: file the key under its job. */
static void add_job_key(struct keel_cstate *s, const struct keel_etcd_kv *kv,
                        const struct keel_key *key)
{
    struct keel_cstate_job *j = job_of(s, key->job);

    switch (key->type) {
    case KEEL_KEY_JOB_SPEC:
        j->spec_kv = kv;
        break;
    case KEEL_KEY_JOB_STATE:
        j->state_kv = kv;
        break;
    case KEEL_KEY_JOB_SHARD:
        add_item(&j->shards, &j->nshards, key->num, NULL, kv);
        break;
    case KEEL_KEY_JOB_PROGRESS:
        add_item(&j->progress, &j->nprogress, key->num, NULL, kv);
        break;
    case KEEL_KEY_JOB_EVAL:
        add_item(&j->eval, &j->neval, key->num, key->id, kv);
        break;
    default:
        break;
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
    keel_key_prefix(&prefix, cluster);
    out->prefix = (char *)keel_buf_detach(&prefix, NULL);
    out->revision = out->kvs.revision;
    for (size_t i = 0; i < out->kvs.n; i++) {
        const struct keel_etcd_kv *kv = &out->kvs.kvs[i];
        struct keel_key key;

        switch (keel_key_parse_rel(keel_cstate_rel(out, kv), &key)) {
        case KEEL_KEY_CANDIDATE:
            if (out->leader == NULL || kv->create_revision < out->leader->create_revision)
                out->leader = kv;
            break;
        case KEEL_KEY_LEADER:
            out->leader_record = kv;
            break;
        case KEEL_KEY_ASSIGNMENT:
            out->assignment = kv;
            break;
        case KEEL_KEY_MEMBER:
            add_member(out, kv, &key);
            break;
        case KEEL_KEY_OTHER:
            break;
        default: /* a key of a job */
            add_job_key(out, kv, &key);
            break;
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
    keel_key_prefix(&prefix, cluster);
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
