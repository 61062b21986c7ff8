/*
 * member.c - registration of a node under its own lease, create-if-absent.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "alloc.h"
#include "clock.h"
#include "keel/id.h"
#include "keys.h"
#include "log.h"
#include "member.h"

/* How often a registration blocked by an existing key looks again. */
#define POLL_MS 250

struct keel_member {
    keel_etcd *c;
    char *cluster, *role, *id, *address;
    char *key;
    int64_t ttl_s;
    uint64_t wait_ms;
    keel_etcd_lease_lost_fn *on_lost;
    void *user;
    keel_etcd_lease *lease;
    int64_t old_lease; /* the lease of the registration before, 0 if none */
    uint64_t incarnation;
    int64_t start_time_ms;
    /* The keeper (keel_member_keep()): registers again whenever the lease is lost. */
    pthread_mutex_t mu;
    pthread_cond_t cv; /* monotonic clock */
    int lost;          /* under mu: the current lease was lost */
    int stopping;      /* under mu: keel_member_leave() wants the keeper gone */
    int keeping;       /* a keeper thread runs */
    pthread_t keeper;
    void (*on_rejoined)(void *user, uint64_t incarnation);
    void *rejoined_user;
};

/* The lease's keep-alive thread gave up: tell the owner, then the keeper. */
static void lease_lost(void *user, int64_t id, const char *why)
{
    keel_member *m = user;

    if (m->on_lost)
        m->on_lost(m->user, id, why);
    pthread_mutex_lock(&m->mu);
    m->lost = 1;
    pthread_cond_signal(&m->cv);
    pthread_mutex_unlock(&m->mu);
}

static int valid_role(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 32)
        return 0;
    for (; *s; s++)
        if (*s < 'a' || *s > 'z')
            return 0;
    return 1;
}

static char *member_value(const keel_member *m)
{
    json_t *o = json_pack("{s:s, s:s, s:s, s:I, s:I, s:I}", "role", m->role, "id", m->id, "address",
                          m->address, "incarnation", (json_int_t)m->incarnation, "start_time_ms",
                          (json_int_t)m->start_time_ms, "pid", (json_int_t)getpid());
    char *text;

    if (o == NULL || (text = json_dumps(o, JSON_COMPACT)) == NULL)
        abort(); /* only allocation can fail here */
    json_decref(o);
    return text;
}

/* "registered by 127.0.0.1:7000 (incarnation 12, pid 99, lease 123)" for a refusal. */
static void describe_holder(const struct keel_etcd_kv *kv, char *out, size_t n)
{
    struct keel_member_info info;

    if (keel_member_decode(kv->value, kv->value_len, &info, NULL) == 0) {
        snprintf(out, n, "by '%s' (incarnation %llu, pid %lld, lease %lld)", info.address,
                 (unsigned long long)info.incarnation, (long long)info.pid, (long long)kv->lease);
        keel_member_info_release(&info);
    } else {
        snprintf(out, n, "with an unreadable value (lease %lld)", (long long)kv->lease);
    }
}

/*
 * Create the key if absent, under m->lease.  Waits up to wait_ms for an
 * existing key to go; revokes our own previous lease if it still holds it.
 */
static int register_once(keel_member *m, struct keel_error *err)
{
    uint64_t deadline = keel_clock_mono_ms() + m->wait_ms;
    int64_t lease = keel_etcd_lease_id(m->lease);
    int waited = 0;

    /* Bounded: each round is a read (bounded by the client) and at most a POLL_MS wait. */
    for (unsigned round = 0; round < 100000; round++) {
        struct keel_etcd_txn_result r;
        struct keel_etcd_kv kv;
        keel_etcd_txn *t;
        int64_t rev = 0;
        char holder[256];
        char *value;
        int rc;

        rc = keel_etcd_get(m->c, m->key, &kv, &rev, err);
        if (rc == 0) {
            if (m->old_lease != 0 && kv.lease == m->old_lease) {
                /* Our own registration from before the loss: etcd still has it. */
                KEEL_LOG_INFO("member '%s': removing the previous registration (lease %lld)",
                              m->key, (long long)m->old_lease);
                keel_etcd_kv_release(&kv);
                rc = keel_etcd_revoke(m->c, m->old_lease, err);
                if (rc != 0 && rc != KEEL_ENOTFOUND)
                    return rc;
                m->old_lease = 0;
                continue;
            }
            if (kv.lease == lease) { /* our own write, seen after an unknown outcome */
                keel_etcd_kv_release(&kv);
                return 0;
            }
            describe_holder(&kv, holder, sizeof(holder));
            keel_etcd_kv_release(&kv);
            if (keel_clock_mono_ms() >= deadline)
                return keel_err_set(err, KEEL_EEXIST,
                                    "member '%s/%s' is already registered %s%s; is another node "
                                    "running with id '%s'?",
                                    m->role, m->id, holder,
                                    waited ? " and did not expire in time" : "", m->id);
            if (!waited)
                KEEL_LOG_INFO("member '%s/%s' is registered %s; waiting up to %llu ms for it "
                              "to expire",
                              m->role, m->id, holder, (unsigned long long)m->wait_ms);
            waited = 1;
            usleep(POLL_MS * 1000);
            continue;
        }
        if (rc != KEEL_ENOTFOUND)
            return rc;

        m->incarnation =
            (uint64_t)rev + 1 > m->incarnation ? (uint64_t)rev + 1 : m->incarnation + 1;
        value = member_value(m);
        t = keel_etcd_txn_new();
        keel_etcd_txn_compare(t, m->key, KEEL_ETCD_CREATE, KEEL_ETCD_EQUAL, 0);
        keel_etcd_txn_put(t, KEEL_ETCD_THEN, m->key, value, strlen(value), lease);
        rc = keel_etcd_txn_commit(m->c, t, &r, err);
        keel_etcd_txn_free(t);
        free(value);
        if (rc == KEEL_EINDOUBT) {
            /* Read back: the loop finds our own write or the key still absent. */
            KEEL_LOG_WARN("member '%s': %s", m->key, err ? err->msg : "outcome unknown");
            continue;
        }
        if (rc != 0)
            return rc;
        if (r.succeeded) {
            keel_etcd_txn_result_release(&r);
            return 0;
        }
        keel_etcd_txn_result_release(&r); /* someone created it in between: look again */
    }
    return keel_err_set(err, KEEL_EUNAVAILABLE, "member '%s': registration did not settle", m->key);
}

static int join(keel_member *m, struct keel_error *err)
{
    int rc;

    rc = keel_etcd_lease_new(m->c, m->ttl_s, lease_lost, m, &m->lease, err);
    if (rc != 0)
        return rc;
    rc = register_once(m, err);
    if (rc != 0) {
        (void)keel_etcd_lease_free(m->lease, 1, NULL);
        m->lease = NULL;
        return rc;
    }
    KEEL_LOG_INFO("registered as member '%s' (incarnation %llu, lease %lld, TTL %lld s)", m->key,
                  (unsigned long long)m->incarnation, (long long)keel_etcd_lease_id(m->lease),
                  (long long)keel_etcd_lease_ttl(m->lease));
    return 0;
}

int keel_member_join(keel_etcd *c, const struct keel_member_opts *o, keel_member **out,
                     struct keel_error *err)
{
    struct keel_buf key = KEEL_BUF_INIT;
    keel_member *m;
    int rc;

    *out = NULL;
    if (!valid_role(o->role))
        return keel_err_set(err, KEEL_EINVAL, "member role '%s' is not 1-32 of a-z", o->role);
    if (!keel_id_valid(o->id))
        return keel_err_set(err, KEEL_EINVAL, "member id '%s' is not 1-64 of A-Z a-z 0-9 - _",
                            o->id);
    if (!keel_id_valid(o->cluster))
        return keel_err_set(err, KEEL_EINVAL, "cluster name '%s' is not 1-64 of A-Z a-z 0-9 - _",
                            o->cluster);
    m = keel_calloc(1, sizeof(*m));
    m->c = c;
    m->cluster = keel_strdup(o->cluster);
    m->role = keel_strdup(o->role);
    m->id = keel_strdup(o->id);
    m->address = keel_strdup(o->address ? o->address : "");
    keel_key_member(&key, o->cluster, o->role, o->id);
    m->key = (char *)keel_buf_detach(&key, NULL);
    m->ttl_s = o->ttl_s;
    m->wait_ms = o->wait_ms;
    m->on_lost = o->on_lost;
    m->user = o->user;
    m->start_time_ms = keel_clock_wall_ms();
    pthread_mutex_init(&m->mu, NULL);
    keel_cond_init_mono(&m->cv);
    if ((rc = join(m, err)) != 0) {
        pthread_mutex_destroy(&m->mu);
        pthread_cond_destroy(&m->cv);
        free(m->cluster);
        free(m->role);
        free(m->id);
        free(m->address);
        free(m->key);
        free(m);
        return rc;
    }
    *out = m;
    return 0;
}

int keel_member_rejoin(keel_member *m, struct keel_error *err)
{
    if (m->lease) {
        m->old_lease = keel_etcd_lease_id(m->lease);
        (void)keel_etcd_lease_free(m->lease, 0, NULL);
        m->lease = NULL;
    }
    return join(m, err);
}

/* How long the keeper waits between two registrations that failed. */
#define KEEP_RETRY_MS 1000

static void *keeper_main(void *arg)
{
    keel_member *m = arg;
    struct keel_error err;
    unsigned failures = 0;

    pthread_mutex_lock(&m->mu);
    while (!m->stopping) {
        if (!m->lost) {
            pthread_cond_wait(&m->cv, &m->mu);
            continue;
        }
        /* Cleared first: a new lease lost right after it is taken sets it again. */
        m->lost = 0;
        pthread_mutex_unlock(&m->mu);
        keel_error_init(&err);
        if (keel_member_rejoin(m, &err) == 0) {
            if (failures > 0)
                KEEL_LOG_INFO("member '%s' registered again after %u failed tries", m->key,
                              failures);
            failures = 0;
            if (m->on_rejoined)
                m->on_rejoined(m->rejoined_user, m->incarnation);
            pthread_mutex_lock(&m->mu);
            continue;
        }
        /* etcd may be away for long: try again every second, saying so now and then. */
        if (failures++ % 30 == 0)
            KEEL_LOG_WARN("member '%s' cannot register again (try %u), trying every %d ms: %s",
                          m->key, failures, KEEP_RETRY_MS, err.msg);
        pthread_mutex_lock(&m->mu);
        m->lost = 1;
        if (!m->stopping)
            keel_cond_timedwait_ms(&m->cv, &m->mu, KEEP_RETRY_MS);
    }
    pthread_mutex_unlock(&m->mu);
    return NULL;
}

void keel_member_keep(keel_member *m, void (*on_rejoined)(void *user, uint64_t incarnation),
                      void *user)
{
    if (m->keeping)
        return;
    m->on_rejoined = on_rejoined;
    m->rejoined_user = user;
    pthread_mutex_lock(&m->mu);
    if (m->lease == NULL || !keel_etcd_lease_alive(m->lease))
        m->lost = 1; /* lost before the keeper started */
    pthread_mutex_unlock(&m->mu);
    pthread_create(&m->keeper, NULL, keeper_main, m);
    m->keeping = 1;
}

int keel_member_alive(const keel_member *m)
{
    return m->lease != NULL && keel_etcd_lease_alive(m->lease);
}

int64_t keel_member_lease(const keel_member *m)
{
    return m->lease ? keel_etcd_lease_id(m->lease) : 0;
}

uint64_t keel_member_incarnation(const keel_member *m)
{
    return m->incarnation;
}

const char *keel_member_key(const keel_member *m)
{
    return m->key;
}

int keel_member_leave(keel_member *m, struct keel_error *err)
{
    int rc = 0;

    if (m == NULL)
        return 0;
    if (m->keeping) {
        pthread_mutex_lock(&m->mu);
        m->stopping = 1;
        pthread_cond_signal(&m->cv);
        pthread_mutex_unlock(&m->mu);
        pthread_join(m->keeper, NULL);
    }
    if (m->lease)
        rc = keel_etcd_lease_free(m->lease, 1, err);
    if (rc == 0)
        KEEL_LOG_INFO("left as member '%s'", m->key);
    free(m->cluster);
    free(m->role);
    free(m->id);
    free(m->address);
    free(m->key);
    pthread_mutex_destroy(&m->mu);
    pthread_cond_destroy(&m->cv);
    free(m);
    return rc;
}

void keel_member_info_release(struct keel_member_info *m)
{
    free(m->role);
    free(m->id);
    free(m->address);
    memset(m, 0, sizeof(*m));
}

static int get_string(const json_t *o, const char *name, char **out, struct keel_error *err)
{
    const json_t *v = json_object_get(o, name);

    if (!json_is_string(v) || strlen(json_string_value(v)) != json_string_length(v))
        return keel_err_set(err, KEEL_ECORRUPT, "member value: '%s' is missing or not a string",
                            name);
    *out = keel_strdup(json_string_value(v));
    return 0;
}

static int get_int(const json_t *o, const char *name, int64_t *out, struct keel_error *err)
{
    const json_t *v = json_object_get(o, name);

    if (!json_is_integer(v) || json_integer_value(v) < 0)
        return keel_err_set(err, KEEL_ECORRUPT,
                            "member value: '%s' is missing or not a non-negative integer", name);
    *out = (int64_t)json_integer_value(v);
    return 0;
}

int keel_member_decode(const void *value, size_t len, struct keel_member_info *out,
                       struct keel_error *err)
{
    json_error_t jerr;
    json_t *o;
    int64_t inc = 0;
    int rc;

    memset(out, 0, sizeof(*out));
    o = json_loadb(value, len, JSON_REJECT_DUPLICATES, &jerr);
    if (!json_is_object(o)) {
        json_decref(o);
        return keel_err_set(err, KEEL_ECORRUPT, "member value is not a JSON object");
    }
    if ((rc = get_string(o, "role", &out->role, err)) ||
        (rc = get_string(o, "id", &out->id, err)) ||
        (rc = get_string(o, "address", &out->address, err)) ||
        (rc = get_int(o, "incarnation", &inc, err)) ||
        (rc = get_int(o, "start_time_ms", &out->start_time_ms, err)) ||
        (rc = get_int(o, "pid", &out->pid, err)))
        keel_member_info_release(out);
    else
        out->incarnation = (uint64_t)inc;
    json_decref(o);
    return rc;
}

int keel_member_suspect(keel_member *m, keel_etcd *c, const char *cluster, const char *id,
                        const char *by, struct keel_error *err)
{
    struct keel_buf key = KEEL_BUF_INIT;
    int64_t lease = keel_member_lease(m);
    int rc;

    if (lease == 0)
        return 0;
    keel_key_suspect(&key, cluster, id);
    rc = keel_etcd_put(c, keel_key_str(&key), by, strlen(by), lease, NULL, err);
    keel_buf_release(&key);
    return rc;
}

int keel_member_list(keel_etcd *c, const char *cluster, const char *role,
                     struct keel_member_info **out, size_t *n, struct keel_error *err)
{
    struct keel_buf prefix = KEEL_BUF_INIT;
    struct keel_etcd_kvs r;
    int rc;

    *out = NULL;
    *n = 0;
    keel_key_members(&prefix, cluster, role);
    rc = keel_etcd_range_prefix(c, (const char *)prefix.buf, NULL, &r, err);
    keel_buf_release(&prefix);
    if (rc != 0)
        return rc;
    KEEL_ALLOC_ARRAY(*out, r.n ? r.n : 1);
    for (size_t i = 0; i < r.n; i++) {
        struct keel_error e;

        keel_error_init(&e);
        if (keel_member_decode(r.kvs[i].value, r.kvs[i].value_len, &(*out)[*n], &e) != 0) {
            KEEL_LOG_WARN("skipping member '%s': %s", r.kvs[i].key, e.msg);
            continue;
        }
        (*out)[*n].lease = r.kvs[i].lease;
        (*out)[*n].create_revision = r.kvs[i].create_revision;
        (*n)++;
    }
    keel_etcd_kvs_release(&r);
    return 0;
}

void keel_member_list_free(struct keel_member_info *list, size_t n)
{
    for (size_t i = 0; i < n; i++)
        keel_member_info_release(&list[i]);
    free(list);
}
