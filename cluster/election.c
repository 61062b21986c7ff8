/*
 * election.c - campaigning, the epoch, and writes fenced on the leader key.
 *
 * The fenced commit nests the caller's transaction inside one that compares
 * the leader key's create revision with the epoch:
 *     if create_revision(leader key) == epoch
 *     then { the caller's txn: its compares, then- and else-branch }
 *     else { get leader key }
 * so nothing of the caller's (not even its else-branch) runs once deposed.
 */
#include <stdlib.h>
#include <string.h>

#include "alloc.h"
#include "keel/buf.h"
#include "election.h"
#include "keys.h"
#include "log.h"

struct keel_election {
    keel_etcd *c;
    char *name;
    char *value;
    struct keel_etcd_leader leader; /* zeroed while not leading */
    int64_t epoch;                  /* atomic; 0 while not leading */
};

static void build_name(struct keel_buf *b, const char *cluster)
{
    keel_key_election(b, cluster);
}

int keel_election_new(keel_etcd *c, const char *cluster, const char *value, keel_election **out,
                      struct keel_error *err)
{
    struct keel_buf name = KEEL_BUF_INIT;
    keel_election *e;

    *out = NULL;
    if (cluster == NULL || cluster[0] == '\0' || value == NULL || value[0] == '\0')
        return keel_err_set(err, KEEL_EINVAL, "election needs a cluster name and a value");
    e = keel_calloc(1, sizeof(*e));
    e->c = c;
    build_name(&name, cluster);
    e->name = (char *)keel_buf_detach(&name, NULL);
    e->value = keel_strdup(value);
    *out = e;
    return 0;
}

void keel_election_free(keel_election *e)
{
    if (e == NULL)
        return;
    keel_etcd_leader_release(&e->leader);
    free(e->name);
    free(e->value);
    free(e);
}

const char *keel_election_name(const keel_election *e)
{
    return e->name;
}

int keel_election_campaign(keel_election *e, int64_t lease, int cancel_fd, struct keel_error *err)
{
    int rc;

    keel_election_step_down(e);
    rc = keel_etcd_campaign(e->c, e->name, e->value, strlen(e->value), lease, cancel_fd, &e->leader,
                            err);
    if (rc != 0)
        return rc;
    __atomic_store_n(&e->epoch, e->leader.rev, __ATOMIC_RELEASE);
    return 0;
}

int64_t keel_election_epoch(const keel_election *e)
{
    return __atomic_load_n(&e->epoch, __ATOMIC_ACQUIRE);
}

const char *keel_election_key(const keel_election *e)
{
    return e->leader.key ? e->leader.key : "";
}

void keel_election_step_down(keel_election *e)
{
    __atomic_store_n(&e->epoch, 0, __ATOMIC_RELEASE);
    keel_etcd_leader_release(&e->leader);
}

/* The leader key is gone or belongs to a later campaign: we are deposed. */
static int deposed(keel_election *e, const struct keel_etcd_kvs *now, struct keel_error *err)
{
    int64_t epoch = keel_election_epoch(e);
    int rc;

    if (now && now->n > 0)
        rc = keel_err_set(err, KEEL_EEPOCH,
                          "deposed: leader key '%s' now has create revision %lld, not our epoch "
                          "%lld",
                          keel_election_key(e), (long long)now->kvs[0].create_revision,
                          (long long)epoch);
    else
        rc = keel_err_set(err, KEEL_EEPOCH, "deposed: leader key '%s' of epoch %lld is gone",
                          keel_election_key(e), (long long)epoch);
    keel_election_step_down(e);
    return rc;
}

int keel_election_commit(keel_election *e, const keel_etcd_txn *t, struct keel_etcd_txn_result *out,
                         struct keel_error *err)
{
    struct keel_etcd_txn_result r;
    int64_t epoch = keel_election_epoch(e);
    keel_etcd_txn *fenced;
    int rc;

    if (out)
        memset(out, 0, sizeof(*out));
    if (epoch == 0)
        return keel_err_set(err, KEEL_EEPOCH, "not the leader: write refused");
    fenced = keel_etcd_txn_new();
    keel_etcd_txn_compare(fenced, e->leader.key, KEEL_ETCD_CREATE, KEEL_ETCD_EQUAL, epoch);
    keel_etcd_txn_nest(fenced, KEEL_ETCD_THEN, t);
    keel_etcd_txn_get(fenced, KEEL_ETCD_ELSE, e->leader.key, 0);
    rc = keel_etcd_txn_commit(e->c, fenced, &r, err);
    keel_etcd_txn_free(fenced);
    if (rc != 0)
        return rc;
    if (!r.succeeded) {
        rc =
            deposed(e, r.n == 1 && r.ops[0].op == KEEL_ETCD_OP_RANGE ? &r.ops[0].range : NULL, err);
        keel_etcd_txn_result_release(&r);
        return rc;
    }
    if (r.n != 1 || r.ops[0].op != KEEL_ETCD_OP_TXN) {
        keel_etcd_txn_result_release(&r);
        return keel_err_set(err, KEEL_EETCD, "fenced txn: reply lacks the nested result");
    }
    if (out) {
        *out = *r.ops[0].txn;
        out->revision = r.revision;
        free(r.ops[0].txn);
        r.ops[0].txn = NULL;
    }
    keel_etcd_txn_result_release(&r);
    return 0;
}

int keel_election_put(keel_election *e, const char *key, const void *value, size_t len,
                      struct keel_error *err)
{
    keel_etcd_txn *t = keel_etcd_txn_new();
    int rc;

    keel_etcd_txn_put(t, KEEL_ETCD_THEN, key, value, len, 0);
    rc = keel_election_commit(e, t, NULL, err);
    keel_etcd_txn_free(t);
    return rc;
}

int keel_election_verify(keel_election *e, struct keel_error *err)
{
    struct keel_etcd_kvs now = {0};
    struct keel_etcd_kv kv;
    int64_t epoch = keel_election_epoch(e);
    int rc;

    if (epoch == 0)
        return keel_err_set(err, KEEL_EEPOCH, "not the leader");
    rc = keel_etcd_get(e->c, e->leader.key, &kv, NULL, err);
    if (rc == KEEL_ENOTFOUND)
        return deposed(e, NULL, err);
    if (rc != 0)
        return rc;
    if (kv.create_revision != epoch) {
        now.n = 1;
        now.kvs = &kv;
        rc = deposed(e, &now, err);
    }
    keel_etcd_kv_release(&kv);
    return rc;
}

int keel_election_resign(keel_election *e, struct keel_error *err)
{
    int rc = 0;

    if (e->leader.key)
        rc = keel_etcd_resign(e->c, &e->leader, err);
    keel_election_step_down(e);
    return rc;
}

int keel_election_current(keel_etcd *c, const char *cluster, struct keel_etcd_kv *out,
                          struct keel_error *err)
{
    struct keel_buf name = KEEL_BUF_INIT;
    int rc;

    build_name(&name, cluster);
    rc = keel_etcd_election_leader(c, (const char *)name.buf, out, err);
    keel_buf_release(&name);
    return rc;
}
