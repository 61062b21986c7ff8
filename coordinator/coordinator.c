/*
 * coordinator.c - the coordinator's state machine (see coordinator.h).
 *
 * One thread runs the loop.  Other threads and signal handlers only write to
 * the wake-up eventfd and set flags: the keep-alive thread on lease loss,
 * keel_coordinator_stop() from a signal handler, keel_coordinator_wake() from
 * leader work.  A campaign blocks on etcd with that fd as its cancel fd, and
 * the leader waits on it between ticks, so every one of those events is
 * handled at once.
 */
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <jansson.h>

#include "alloc.h"
#include "clock.h"
#include "coordinator.h"
#include "keys.h"
#include "log.h"
#include "member.h"

/* Waits between attempts while etcd is unavailable (bounded by stop). */
#define RETRY_MIN_MS 200
#define RETRY_MAX_MS 2000
/* Retry time for the last calls at shutdown. */
#define SHUTDOWN_RETRY_MS 2000

struct keel_coordinator {
    struct keel_coordinator_opts o;
    struct keel_coordinator_hooks hooks;
    char *cluster, *id, *address;
    char *leader_key;
    int wake_fd;
    int stop;  /* atomic */
    int lost;  /* atomic: the current lease was reported lost */
    int state; /* atomic: enum keel_coordinator_state */
    keel_member *member;
    keel_election *election;
    int64_t elected_ms;
    int leading;        /* won the election and not stepped down since */
    int64_t epoch;      /* of the current or last leadership, for logs */
    int elected_called; /* hooks.elected ran for the current leadership */
    uint64_t record_ms; /* monotonic time the leader record was last written */
};

static void wake(keel_coordinator *co)
{
    uint64_t one = 1;

    /* An eventfd write only fails when the counter would overflow: then it is readable anyway. */
    (void)!write(co->wake_fd, &one, sizeof(one));
}

static void drain(keel_coordinator *co)
{
    uint64_t v;

    (void)!read(co->wake_fd, &v, sizeof(v));
}

/* Wait up to `ms` for a wake-up; returns 1 when woken. */
static int wait_wake(keel_coordinator *co, uint64_t ms)
{
    struct pollfd p = {co->wake_fd, POLLIN, 0};
    int rc = poll(&p, 1, ms > 60000 ? 60000 : (int)ms);

    if (rc > 0) {
        drain(co);
        return 1;
    }
    return 0;
}

static int stopping(const keel_coordinator *co)
{
    return __atomic_load_n(&co->stop, __ATOMIC_ACQUIRE);
}

static void set_state(keel_coordinator *co, enum keel_coordinator_state s)
{
    __atomic_store_n(&co->state, (int)s, __ATOMIC_RELEASE);
}

static void on_lease_lost(void *user, int64_t id, const char *why)
{
    keel_coordinator *co = user;

    (void)id;
    (void)why;
    __atomic_store_n(&co->lost, 1, __ATOMIC_RELEASE);
    wake(co);
}

static int lease_ok(const keel_coordinator *co)
{
    return !__atomic_load_n(&co->lost, __ATOMIC_ACQUIRE) && co->member &&
           keel_member_alive(co->member);
}

/* Wait before trying etcd again; the wait grows with `failures`.  Returns 1 if stopped. */
static int back_off(keel_coordinator *co, unsigned failures)
{
    uint64_t ms = RETRY_MIN_MS;

    for (unsigned i = 1; i < failures && ms < RETRY_MAX_MS; i++)
        ms *= 2;
    if (ms > RETRY_MAX_MS)
        ms = RETRY_MAX_MS;
    wait_wake(co, ms);
    return stopping(co);
}

int keel_coordinator_new(const struct keel_coordinator_opts *o,
                         const struct keel_coordinator_hooks *hooks, keel_coordinator **out,
                         struct keel_error *err)
{
    keel_coordinator *co;
    struct keel_buf key = KEEL_BUF_INIT;
    int rc;

    *out = NULL;
    if (o->etcd == NULL || o->cluster == NULL || o->cluster[0] == '\0' || o->id == NULL ||
        o->id[0] == '\0' || o->lease_ttl_s <= 0 || o->heartbeat_ms == 0)
        return keel_err_set(
            err, KEEL_EINVAL,
            "coordinator needs etcd, a cluster, an id, a lease TTL and a heartbeat");
    co = keel_calloc(1, sizeof(*co));
    co->o = *o;
    if (hooks)
        co->hooks = *hooks;
    co->cluster = keel_strdup(o->cluster);
    co->id = keel_strdup(o->id);
    co->address = keel_strdup(o->address ? o->address : "");
    co->o.cluster = co->cluster;
    co->o.id = co->id;
    co->o.address = co->address;
    keel_key_leader(&key, o->cluster);
    co->leader_key = (char *)keel_buf_detach(&key, NULL);
    co->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (co->wake_fd < 0) {
        rc = -errno;
        keel_coordinator_free(co);
        return keel_err_set(err, rc, "cannot create the coordinator's wake-up fd: %s",
                            strerror(-rc));
    }
    if ((rc = keel_election_new(o->etcd, o->cluster, o->id, &co->election, err)) != 0) {
        keel_coordinator_free(co);
        return rc;
    }
    *out = co;
    return 0;
}

void keel_coordinator_free(keel_coordinator *co)
{
    if (co == NULL)
        return;
    if (co->member)
        (void)keel_member_leave(co->member, NULL);
    keel_election_free(co->election);
    if (co->wake_fd >= 0)
        close(co->wake_fd);
    free(co->cluster);
    free(co->id);
    free(co->address);
    free(co->leader_key);
    free(co);
}

void keel_coordinator_stop(keel_coordinator *co)
{
    __atomic_store_n(&co->stop, 1, __ATOMIC_RELEASE);
    wake(co);
}

void keel_coordinator_wake(keel_coordinator *co)
{
    wake(co);
}

enum keel_coordinator_state keel_coordinator_state(const keel_coordinator *co)
{
    return (enum keel_coordinator_state)__atomic_load_n(&co->state, __ATOMIC_ACQUIRE);
}

const char *keel_coordinator_state_name(enum keel_coordinator_state s)
{
    switch (s) {
    case KEEL_COORD_JOINING:
        return "joining";
    case KEEL_COORD_CAMPAIGN:
        return "campaign";
    case KEEL_COORD_LEADING:
        return "leading";
    case KEEL_COORD_LOST:
        return "lost";
    case KEEL_COORD_STOPPING:
        return "stopping";
    }
    return "unknown";
}

/* ---- states ------------------------------------------------------------- */

static int do_join(keel_coordinator *co, struct keel_error *err)
{
    struct keel_member_opts mo = {co->cluster,       "coordinator",      co->id,        co->address,
                                  co->o.lease_ttl_s, co->o.join_wait_ms, on_lease_lost, co};
    unsigned failures = 0;

    while (!stopping(co)) {
        struct keel_error e;
        int rc;

        keel_error_init(&e);
        __atomic_store_n(&co->lost, 0, __ATOMIC_RELEASE);
        rc = co->member ? keel_member_rejoin(co->member, &e)
                        : keel_member_join(co->o.etcd, &mo, &co->member, &e);
        if (rc == 0)
            return 0;
        /* Waiting cannot fix a taken id, a bad option or a certificate etcd refuses. */
        if (rc == KEEL_EEXIST || rc == KEEL_EINVAL || rc == KEEL_ETLS || rc == KEEL_EPERM)
            return keel_err_set(err, rc, "%s", e.msg);
        if (failures++ == 0)
            KEEL_LOG_WARN("cannot register, will keep trying: %s", e.msg);
        if (back_off(co, failures))
            break;
    }
    return 0;
}

/*
 * Leadership ends: tell the hooks first (if they were told it began), then
 * forget the epoch.  Harmless when not leading.
 */
static void step_down(keel_coordinator *co, const char *why)
{
    if (!co->leading)
        return;
    if (co->elected_called && co->hooks.deposed)
        co->hooks.deposed(co->hooks.user, why);
    co->elected_called = 0;
    co->leading = 0;
    keel_election_step_down(co->election);
    KEEL_LOG_WARN("stepped down as leader (epoch %lld): %s", (long long)co->epoch, why);
}

/* The fenced leader record: who leads, since when, last heartbeat. */
static int write_leader_record(keel_coordinator *co, struct keel_error *err)
{
    json_t *o = json_pack("{s:s, s:I, s:s, s:I, s:I}", "id", co->id, "epoch",
                          (json_int_t)keel_election_epoch(co->election), "address", co->address,
                          "elected_ms", (json_int_t)co->elected_ms, "heartbeat_ms",
                          (json_int_t)keel_clock_wall_ms());
    char *text;
    int rc;

    if (o == NULL || (text = json_dumps(o, JSON_COMPACT)) == NULL)
        abort();
    json_decref(o);
    rc = keel_election_put(co->election, co->leader_key, text, strlen(text), err);
    free(text);
    return rc;
}

/* One leader tick; returns the next state. */
static enum keel_coordinator_state lead_tick(keel_coordinator *co)
{
    struct keel_error e;
    uint64_t now;
    int rc;

    if (!lease_ok(co)) {
        step_down(co, "lease lost");
        return KEEL_COORD_LOST;
    }
    keel_error_init(&e);
    now = keel_clock_mono_ms();
    /*
     * The record says "alive" once per heartbeat.  Ticks woken in between, for
     * leader work reacting to a change, need not repeat it (their own writes
     * are fenced): under a stream of progress reports that halves the writes.
     */
    rc = 0;
    if (!co->elected_called || now - co->record_ms >= co->o.heartbeat_ms / 2) {
        rc = write_leader_record(co, &e);
        if (rc == 0)
            co->record_ms = now;
    }
    if (rc == 0 && !co->elected_called) {
        /* Only once the record is written: that proves we lead in etcd's eyes. */
        co->elected_called = 1;
        if (co->hooks.elected)
            rc = co->hooks.elected(co->hooks.user, co->election, &e);
    } else if (rc == 0 && co->hooks.lead) {
        rc = co->hooks.lead(co->hooks.user, co->election, &e);
    }
    if (rc == KEEL_EEPOCH && keel_election_epoch(co->election) != 0) {
        /* A hook says "stale": believe etcd, not the hook. */
        struct keel_error v;

        keel_error_init(&v);
        if (keel_election_verify(co->election, &v) != KEEL_EEPOCH) {
            KEEL_LOG_WARN("leader work reported a stale epoch, but etcd says we lead: %s", e.msg);
            return KEEL_COORD_LEADING;
        }
    }
    if (rc == KEEL_EEPOCH || keel_election_epoch(co->election) == 0) {
        /* Fenced out: the store has another leader (or none); not a lease problem. */
        step_down(co, e.msg);
        return lease_ok(co) ? KEEL_COORD_CAMPAIGN : KEEL_COORD_LOST;
    }
    if (rc != 0)
        KEEL_LOG_WARN("leader tick: %s", e.msg);
    return KEEL_COORD_LEADING;
}

static enum keel_coordinator_state do_campaign(keel_coordinator *co)
{
    unsigned failures = 0;

    KEEL_LOG_INFO("campaigning in election '%s' with lease %lld", keel_election_name(co->election),
                  (long long)keel_member_lease(co->member));
    while (!stopping(co)) {
        struct keel_error e;
        int rc;

        if (!lease_ok(co))
            return KEEL_COORD_LOST;
        keel_error_init(&e);
        rc = keel_election_campaign(co->election, keel_member_lease(co->member), co->wake_fd, &e);
        if (rc == 0) {
            co->elected_ms = keel_clock_wall_ms();
            co->epoch = keel_election_epoch(co->election);
            co->leading = 1;
            co->elected_called = 0;
            KEEL_LOG_INFO("became leader of cluster '%s' with epoch %lld (leader key '%s')",
                          co->cluster, (long long)keel_election_epoch(co->election),
                          keel_election_key(co->election));
            return KEEL_COORD_LEADING;
        }
        if (rc == KEEL_ECANCELED) {
            drain(co); /* stop, lease loss or a wake-up: the loop's checks say which */
            continue;
        }
        if (rc == KEEL_ENOTFOUND)
            return KEEL_COORD_LOST; /* etcd says our lease is gone */
        if (failures++ == 0)
            KEEL_LOG_WARN("campaign failed, will keep trying: %s", e.msg);
        if (back_off(co, failures))
            break;
    }
    return KEEL_COORD_STOPPING;
}

static enum keel_coordinator_state do_lead(keel_coordinator *co)
{
    enum keel_coordinator_state next = lead_tick(co);

    while (next == KEEL_COORD_LEADING) {
        wait_wake(co, co->o.heartbeat_ms);
        if (stopping(co))
            return KEEL_COORD_STOPPING;
        next = lead_tick(co);
    }
    return next;
}

static void do_stop(keel_coordinator *co)
{
    struct keel_error e;

    /* Leave promptly even when etcd is gone: the lease then expires on its own. */
    keel_etcd_set_retry_timeout(co->o.etcd, SHUTDOWN_RETRY_MS);
    keel_error_init(&e);
    if (co->leading) {
        if (co->elected_called && co->hooks.deposed)
            co->hooks.deposed(co->hooks.user, "shutting down");
        co->leading = 0;
        co->elected_called = 0;
        if (keel_election_resign(co->election, &e) != 0)
            KEEL_LOG_WARN("cannot resign: %s", e.msg);
        else
            KEEL_LOG_INFO("resigned as leader (epoch %lld)", (long long)co->epoch);
    }
    if (co->member) {
        if (keel_member_leave(co->member, &e) != 0)
            KEEL_LOG_WARN("cannot revoke the lease, it will expire: %s", e.msg);
        co->member = NULL;
    }
}

int keel_coordinator_run(keel_coordinator *co, struct keel_error *err)
{
    enum keel_coordinator_state s = KEEL_COORD_JOINING;
    int rc = 0;

    while (s != KEEL_COORD_STOPPING) {
        set_state(co, s);
        if (stopping(co))
            break;
        switch (s) {
        case KEEL_COORD_JOINING:
            if ((rc = do_join(co, err)) != 0)
                goto out;
            s = KEEL_COORD_CAMPAIGN;
            break;
        case KEEL_COORD_CAMPAIGN:
            s = do_campaign(co);
            break;
        case KEEL_COORD_LEADING:
            s = do_lead(co);
            break;
        case KEEL_COORD_LOST:
            step_down(co, "lease lost");
            KEEL_LOG_WARN("lease lost: registering again with a new incarnation");
            s = KEEL_COORD_JOINING;
            break;
        case KEEL_COORD_STOPPING:
            break;
        }
    }
out:
    set_state(co, KEEL_COORD_STOPPING);
    do_stop(co);
    return rc;
}
